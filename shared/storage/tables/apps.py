"""OAuth app registrations (``type`` in the form). The client secret itself lives in the secret store."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime
from typing import ClassVar, Optional

from shared.storage.tables.client import table
from shared.storage.tables.records import Record, is_missing, update_if_unchanged, utcnow

TABLE = "apps"
PARTITION = "app"
# Apps change rarely and are read on every hosted redirect; a short per-process cache saves a round trip.
CACHE_SECONDS = 30.0

_lock = threading.Lock()
_cache: dict[str, tuple[float, "OAuthApp"]] = {}


class OAuthApp(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("extraScopes",)
    id: str
    name: str
    provider: str = "outlook"
    clientId: str
    authority: str = "organizations"  # common | organizations | consumers | <tenant id or domain>
    cloud: str = "global"
    baseScopes: str = "imap"
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
    table(TABLE).create_entity(app.to_entity(PARTITION, app.id))
    _forget(app.id)


def get_app(app_id: str, *, fresh: bool = False) -> Optional[OAuthApp]:
    now = time.monotonic()
    if not fresh:
        with _lock:
            hit = _cache.get(app_id)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
    try:
        app = OAuthApp.from_entity(table(TABLE).get_entity(PARTITION, app_id))
    except Exception as exc:
        if is_missing(exc):
            return None
        raise
    with _lock:
        _cache[app_id] = (now, app)
    return app


def list_apps() -> list[OAuthApp]:
    return [OAuthApp.from_entity(e) for e in table(TABLE).query_entities(f"PartitionKey eq '{PARTITION}'")]


def delete_app(app_id: str) -> None:
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
