"""OAuth app registrations (``type`` in the form). The client secret itself lives in the secret store."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime
from typing import ClassVar

from shared.clouds import BaseScopes, Cloud
from shared.schemas import Provider
from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, get_or_none, query, update_if_unchanged

TABLE = "apps"
PARTITION = "app"
# Apps change rarely and are read on every hosted redirect; a short per-process cache saves a round trip.
CACHE_SECONDS = 30.0

_lock = threading.Lock()
_cache: dict[str, tuple[float, OAuthApp]] = {}


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
    secretName: str
    created: datetime
    updated: datetime


def new_app_id() -> str:
    return secrets.token_hex(8)


def client_secret_name(app_id: str) -> str:
    return f"app-{app_id}-client-secret"


def insert_app(app: OAuthApp) -> None:
    with storage_errors():
        table(TABLE).create_entity(app.to_entity(PARTITION, app.id))
    _forget(app.id)


def get_app(app_id: str, *, fresh: bool = False) -> OAuthApp | None:
    now = time.monotonic()
    if not fresh:
        with _lock:
            hit = _cache.get(app_id)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
    entity = get_or_none(table(TABLE), PARTITION, app_id)
    if entity is None:
        return None
    app = OAuthApp.from_entity(entity)
    with _lock:
        _cache[app_id] = (now, app)
    return app


def list_apps() -> list[OAuthApp]:
    return [OAuthApp.from_entity(e) for e in query(table(TABLE), f"PartitionKey eq '{PARTITION}'")]


def delete_app(app_id: str) -> None:
    with storage_errors():
        table(TABLE).delete_entity(PARTITION, app_id)
    _forget(app_id)


def _forget(app_id: str) -> None:
    with _lock:
        _cache.pop(app_id, None)


def clear_cache() -> None:
    with _lock:
        _cache.clear()


# --- management API ---------------------------------------------------------------------------------------

def replace_app(app: OAuthApp) -> bool:
    """Replace the row read as ``app`` (its etag); False when someone else changed or deleted it meanwhile."""
    try:
        return update_if_unchanged(table(TABLE), app.to_entity(PARTITION, app.id), app.etag) is not None
    finally:
        _forget(app.id)
