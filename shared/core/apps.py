"""OAuth apps as the sign-in sees them: resolving a form's ``type`` and fetching the client secret."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import get_args

from shared.clouds import CLOUDS, BaseScopes, Cloud
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.storage import sealed
from shared.storage.tables import apps as app_table
from shared.storage.tables.apps import OAuthApp

SECRET_CACHE_SECONDS = 300.0  # a rotated client secret is picked up within this time

_lock = threading.Lock()
_secrets: dict[tuple[str, str, str], tuple[float, str]] = {}


def enabled_apps(allowed: Collection[str] | None = None) -> list[OAuthApp]:
    """The enabled apps (only those in ``allowed``, when given), by name: what the person may pick from when a
    link names no app (``shared.signin.flow``, the app chooser). One query of the apps table, or none with
    this instance's listing cached (``shared.storage.tables.apps``: at most ``MC_AUTH_CACHE_SECONDS`` old)."""
    apps = [a for a in app_table.list_apps(cached=True) if a.enabled and (allowed is None or a.id in allowed)]
    return sorted(apps, key=lambda a: (a.name.casefold(), a.id))


def resolve_app(app_id: str | None) -> OAuthApp:
    """The enabled app a form names, or the only enabled app when it names none. From this instance's cache of
    apps (``shared.storage.tables.apps``): a disabled or deleted app is refused everywhere within
    ``MC_AUTH_CACHE_SECONDS``; with a warm cache no Table call."""
    if app_id:
        app = app_table.get_app(app_id)
        if app is None:
            raise InvalidInput(f"no OAuth app with id {app_id!r}", field="type", code="unknown_app")
        if not app.enabled:
            raise InvalidInput(f"the OAuth app {app_id!r} is disabled", field="type", code="app_disabled")
        return app
    enabled = [a for a in app_table.list_apps(cached=True) if a.enabled]
    if len(enabled) == 1:
        return enabled[0]
    if not enabled:
        raise InvalidInput("no OAuth app is configured; register one first", field="type", code="no_app")
    raise InvalidInput("several OAuth apps are enabled; name one in type", field="type", code="app_required")


def client_secret(app: OAuthApp, settings: Settings) -> str:
    """Cached per instance, so a warm hosted redirect makes no secret-store call."""
    key = (app.id, app.secretName, app.sealedClientSecret or "")
    now = time.monotonic()
    with _lock:
        hit = _secrets.get(key)
    if hit and now - hit[0] < SECRET_CACHE_SECONDS:
        return hit[1]
    value = sealed.get_secret(settings, secret_name=app.secretName, sealed=app.sealedClientSecret,
                              aad=client_secret_aad(app.id))
    with _lock:
        _secrets[key] = (now, value)
    return value


def client_secret_aad(app_id: str) -> str:
    """The associated data of an app's sealed client secret (``shared.storage.sealed``)."""
    return f"cs:{app_id}"


def with_client_secret(app: OAuthApp, value: str, settings: Settings) -> OAuthApp:
    """Store ``value`` as ``MC_SECRET_MODE`` says (keyvault: the secret is written now, before the row, so a row
    never names a missing secret; envelope: sealed) and return the row that refers to it."""
    placement = sealed.put_secret(settings, name=app_table.client_secret_name(app.id), aad=client_secret_aad(app.id),
                                  value=value)
    return app.model_copy(update={"secretName": placement.secretName, "sealedClientSecret": placement.sealed})


def forget_client_secret(app_id: str) -> None:
    with _lock:
        for key in [k for k in _secrets if k[0] == app_id]:
            del _secrets[key]


def register_app(*, name: str, client_id: str, client_secret_value: str, authority: str = "organizations",
                 cloud: Cloud = "global", base_scopes: BaseScopes = "imap", extra_scopes: tuple[str, ...] = (),
                 settings: Settings) -> OAuthApp:
    """Secret first, then the row (the commit point): a crash in between leaves only an unused secret.

    ``cloud`` and ``base_scopes`` are checked again here: the CLI and scripts pass strings."""
    from shared.storage.tables.records import utcnow

    if cloud not in CLOUDS:
        raise ValueError(f"cloud must be one of {', '.join(CLOUDS)}")
    if base_scopes not in get_args(BaseScopes):
        raise ValueError(f"base scopes must be one of {', '.join(get_args(BaseScopes))}")
    if not client_id or not client_secret_value:
        raise ValueError("client id and client secret are required")
    app_id = app_table.new_app_id()
    now = utcnow()
    app = OAuthApp(id=app_id, name=name, clientId=client_id, authority=authority, cloud=cloud,
                   baseScopes=base_scopes, extraScopes=list(extra_scopes),
                   created=now, updated=now)
    app = with_client_secret(app, client_secret_value, settings)
    app_table.insert_app(app)
    return app
