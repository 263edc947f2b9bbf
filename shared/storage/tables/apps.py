"""OAuth app registrations (``type`` in the form). The client secret itself lives in the secret store.

Apps change rarely and are read by every form, hosted redirect, callback and token hand-off, so reads come from
an instance-local cache no older than ``N = MC_AUTH_CACHE_SECONDS`` (default 5; 0: no cache), counted from
the moment the read started (issue 14):

* :func:`list_apps` with ``cached=True`` keeps the listing (one query of the table) for N seconds: a form
  that names no app makes no Table call with a warm cache;
* :func:`get_app` answers from that listing, or from its own point read of the app kept N seconds; an app the
  listing does not know (created on another instance since) is read at once, never answered "unknown" from
  the cache.

So an app disabled, deleted or changed on one instance is seen by every other within N seconds, and at once
by the instance that changed it (every write here drops this instance's cached apps; a read that was under
way during the write is not kept). ``fresh=True`` and ``list_apps()`` without ``cached`` always read.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import ClassVar

from shared.clouds import BaseScopes, Cloud
from shared.schemas import Provider
from shared.settings import get_settings
from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, get_or_none, query, update_if_unchanged

TABLE = "apps"
PARTITION = "app"

monotonic: Callable[[], float] = time.monotonic  # the cache's clock (tests may replace it)

Scope = tuple[str | None, str | None, str]  # storage account and table name: tools and tests switch storage
_lock = threading.Lock()
_listings: dict[Scope, tuple[float, dict[str, OAuthApp]]] = {}  # when the query started, apps by id
_cache: dict[tuple[Scope, str], tuple[float, OAuthApp]] = {}  # point reads: when each started
_changed = float("-inf")  # when this instance last wrote an app: reads started before are not kept


class OAuthApp(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("extraScopes",)
    id: str
    name: str
    provider: Provider = "outlook"
    clientId: str
    authority: str = "organizations"  # common | organizations | consumers | <tenant id or domain>
    cloud: Cloud = "global"
    baseScopes: BaseScopes = "imap"
    extraScopes: list[str] = []
    enabled: bool = True
    # Where the client secret is (shared.storage.sealed): its secret-store name (keyvault mode), or sealed here
    # (envelope mode; secretName is then "").
    secretName: str = ""
    sealedClientSecret: str | None = None
    created: datetime
    updated: datetime


def new_app_id() -> str:
    return secrets.token_hex(8)


def client_secret_name(app_id: str) -> str:
    return f"app-{app_id}-client-secret"


def insert_app(app: OAuthApp) -> None:
    try:
        with storage_errors():
            table(TABLE).create_entity(app.to_entity(PARTITION, app.id))
    finally:
        _forget(app.id)


def _scope() -> tuple[Scope, float]:
    settings = get_settings()
    return ((settings.tables_connection_string, settings.tables_endpoint, settings.table_name(TABLE)),
            settings.auth_cache_seconds)


def get_app(app_id: str, *, fresh: bool = False) -> OAuthApp | None:
    """The app, or None: from this instance's cache when read less than ``MC_AUTH_CACHE_SECONDS`` ago (unless
    ``fresh``), else one point read. An unknown id is always read (it may have been created elsewhere)."""
    scope, ttl = _scope()
    started = monotonic()
    if not fresh and ttl > 0:
        with _lock:
            listing = _listings.get(scope)
            if listing is not None and started - listing[0] < ttl and app_id in listing[1]:
                return listing[1][app_id]
            hit = _cache.get((scope, app_id))
            if hit is not None and started - hit[0] < ttl:
                return hit[1]
    entity = get_or_none(table(TABLE), PARTITION, app_id)
    if entity is None:
        return None
    app = OAuthApp.from_entity(entity)
    if ttl > 0:
        with _lock:
            if started > _changed:
                _cache[(scope, app_id)] = (started, app)
    return app


def list_apps(*, cached: bool = False) -> list[OAuthApp]:
    """Every app (one query of the table). ``cached``: this instance's listing when made less than
    ``MC_AUTH_CACHE_SECONDS`` ago (what forms and the hosted pages use; the management API always reads)."""
    scope, ttl = _scope()
    started = monotonic()
    if cached and ttl > 0:
        with _lock:
            listing = _listings.get(scope)
        if listing is not None and started - listing[0] < ttl:
            return list(listing[1].values())
    apps = [OAuthApp.from_entity(e) for e in query(table(TABLE), f"PartitionKey eq '{PARTITION}'")]
    if ttl > 0:
        with _lock:
            if started > _changed:
                _listings[scope] = (started, {app.id: app for app in apps})
    return apps


def delete_app(app_id: str) -> None:
    try:
        with storage_errors():
            table(TABLE).delete_entity(PARTITION, app_id)
    finally:
        _forget(app_id)


def _forget(app_id: str) -> None:
    """This instance wrote the app: drop every cached app (listings hold it too), and keep no read that
    started before now."""
    global _changed
    with _lock:
        _changed = monotonic()
        _listings.clear()
        _cache.clear()


def clear_cache() -> None:
    with _lock:
        _listings.clear()
        _cache.clear()


# --- management API ---------------------------------------------------------------------------------------

def replace_app(app: OAuthApp) -> bool:
    """Replace the row read as ``app`` (its etag); False when someone else changed or deleted it meanwhile."""
    try:
        return update_if_unchanged(table(TABLE), app.to_entity(PARTITION, app.id), app.etag) is not None
    finally:
        _forget(app.id)
