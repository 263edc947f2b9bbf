"""OAuth apps through the API (``/v1/oauth2``, scope ``admin``).

* The client secret goes to the secret store (secret first, then the row: the row is the commit point, so a
  crash in between leaves only an unused secret) and is never returned: reads show ``"clientSecret":
  "******"``.
* Updates are partial and ETag-conditioned (retried on a concurrent change). A new ``clientSecret`` is
  written as a new version of the app's secret, then this instance's cached copy is dropped
  (``forget_client_secret``); other instances pick it up within ``oauth_apps.SECRET_CACHE_SECONDS`` or at
  once when Microsoft answers ``invalid_client``. This instance's app cache is dropped on every write;
  other instances see app changes (disable, delete, update) within ``MC_AUTH_CACHE_SECONDS``
  (``shared.storage.tables.apps``).
* Changing ``cloud``, ``authority`` or ``clientId`` of an app that has accounts is allowed (an admin fixing a
  registration), but existing refresh tokens belong to the old registration: such accounts need a new
  sign-in.
* Delete is refused (409 ``app_in_use``) while any account uses the app; otherwise the row goes first (the
  commit point), then the secret. A sign-in in flight for a deleted app ends with ``app_unavailable``.
  The in-use check and the delete are two steps: a sign-in completing between them would leave an account
  whose app is gone; its token hand-off answers 409 ``app_unavailable`` and the account can be deleted.
"""

from __future__ import annotations

import logging
import re

from shared.core.apps import forget_client_secret, with_client_secret
from shared.errors import Busy, Conflict, InvalidInput, NotFound
from shared.schemas import ID_PATTERN, OAuthAppCreate, OAuthAppDeleted, OAuthAppInfo, OAuthAppList, OAuthAppUpdate
from shared.settings import Settings
from shared.storage import sealed
from shared.storage.tables import accounts
from shared.storage.tables import apps as app_table
from shared.storage.tables.apps import OAuthApp
from shared.storage.tables.concurrency import ConcurrentChange, change_row
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.apps")


def info(app: OAuthApp, settings: Settings) -> OAuthAppInfo:
    return OAuthAppInfo(
        id=app.id, provider="outlook", name=app.name, clientId=app.clientId, authority=app.authority,
        cloud=app.cloud, baseScopes=app.baseScopes, extraScopes=list(app.extraScopes), enabled=app.enabled,
        redirectUrl=settings.oauth_redirect_uri, created=app.created, updated=app.updated,
    )


def check_app_id(value: str | None) -> str:
    if not value or not re.match(ID_PATTERN, value):
        raise InvalidInput("app: not a valid OAuth app id", field="app")
    return value


def _get(app_id: str) -> OAuthApp:
    app = app_table.get_app(check_app_id(app_id), fresh=True)
    if app is None:
        raise NotFound(f"no OAuth app with id {app_id!r}")
    return app


def create_app(body: OAuthAppCreate, settings: Settings) -> OAuthAppInfo:
    app_id = app_table.new_app_id()
    now = utcnow()
    app = OAuthApp(
        id=app_id, name=body.name, provider=body.provider, clientId=body.clientId, authority=body.authority,
        cloud=body.cloud, baseScopes=body.baseScopes, extraScopes=list(body.extraScopes), enabled=body.enabled,
        created=now, updated=now,
    )
    app = with_client_secret(app, body.clientSecret, settings)
    app_table.insert_app(app)
    log.info("OAuth app %s created", app_id)
    return info(app, settings)


def list_apps(settings: Settings) -> OAuthAppList:
    apps = sorted(app_table.list_apps(), key=lambda a: (a.created, a.id))
    return OAuthAppList(apps=[info(a, settings) for a in apps])


def get_app(app_id: str, settings: Settings) -> OAuthAppInfo:
    return info(_get(app_id), settings)


def update_app(app_id: str, body: OAuthAppUpdate, settings: Settings) -> OAuthAppInfo:
    changes = {name: getattr(body, name) for name in body.model_fields_set if name != "clientSecret"}
    placed: dict[str, object] = {}

    def change(current: OAuthApp) -> OAuthApp:
        if "clientSecret" in body.model_fields_set and not placed:  # once, before the first write
            stored = with_client_secret(current, body.clientSecret, settings)
            placed.update(secretName=stored.secretName, sealedClientSecret=stored.sealedClientSecret)
            forget_client_secret(current.id)
        return current.model_copy(update={**changes, **placed, "updated": utcnow()})

    try:
        updated = change_row(lambda: _get(app_id), change, app_table.replace_app)
    except ConcurrentChange:
        raise Busy("the OAuth app is being changed concurrently; retry", retry_after=1) from None
    assert updated is not None  # the change always writes
    forget_client_secret(updated.id)
    log.info("OAuth app %s updated (%s)", app_id, ", ".join(sorted(body.model_fields_set)) or "nothing")
    return info(updated, settings)


def delete_app(app_id: str, settings: Settings) -> OAuthAppDeleted:
    app = _get(app_id)
    used_by = accounts.first_account_of_app(app.id)
    if used_by is not None:
        raise Conflict("app_in_use",
                       f"accounts still use this OAuth app (for example {used_by!r}); delete those accounts or "
                       "disable the app (PUT with \"enabled\": false) instead")
    app_table.delete_app(app.id)
    forget_client_secret(app.id)
    try:
        sealed.drop_secret(settings, app.secretName)
    except Exception:  # noqa: BLE001 - the app is gone (commit point); a leftover secret is unreachable
        log.warning("OAuth app %s deleted, but its client secret %s could not be deleted", app.id, app.secretName)
    log.info("OAuth app %s deleted", app_id)
    return OAuthAppDeleted(id=app.id)
