"""Moving secrets between the two ``MC_SECRET_MODE`` forms, and re-sealing under a rotated data key.

``migrate`` (``python -m shared.cli migrate-secrets --to envelope|keyvault``) walks every credential row and
OAuth app row and rewrites the ones not in the target form, one row at a time, each write conditioned on the
ETag the row was read with; a row that changed meanwhile (a sign-in, a refresh) is read again and tried again.
Every row works in either form at every moment (``shared.storage.sealed``: reading follows the row), so a
deployment keeps serving during a migration, and running it again is harmless (rows already moved are kept).

Order of the writes, so that no moment loses a secret:

* to **envelope**: the row gains the sealed value (and forgets the secret's name) first; the Key Vault
  secret is deleted after, and only if the row still holds what was written;
* to **keyvault**: the secret is written first, then the row names it and drops the sealed value.

A credential whose refresh is under way (a live ``refreshClaim``) is left for a later pass: its claim holder
reads the refresh token after claiming, so the row must not change form under it. Set ``MC_SECRET_MODE`` to
the target first (new sign-ins then write the target form), then migrate.

``reseal_credential`` is the storage sweeper's background step after ``rotate-data-key``: a refresh token sealed
under an older data key is sealed again under the current one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shared.core.apps import client_secret_aad, forget_client_secret
from shared.settings import Settings
from shared.storage import sealed
from shared.storage.datakeys import data_keys
from shared.storage.secrets.base import SecretNotFound
from shared.storage.tables import apps, principals
from shared.storage.tables.apps import OAuthApp
from shared.storage.tables.principals import Credential

Mode = Literal["keyvault", "envelope"]
ATTEMPTS = 5

log = logging.getLogger("mailbox_connect.secrets")


@dataclass
class MigrationReport:
    moved: int = 0  # rows rewritten into the target form
    kept: int = 0  # rows already in it
    missing: int = 0  # rows whose secret does not exist (left as they are: their accounts need a sign-in)
    busy: int = 0  # rows still changing after ATTEMPTS reads (a refresh or sign-in under way): run again

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def migrate(settings: Settings, to: Mode, *, progress: Callable[[str], None] | None = None) -> MigrationReport:
    """Move every credential's refresh token and every app's client secret into the form of ``to``."""
    report = MigrationReport()
    for app in apps.list_apps():
        app_id = app.id
        _settle(report, _retry(lambda: apps.get_app(app_id, fresh=True),  # noqa: B023 - called at once
                               lambda a: _place_app(a, to, settings), first=app))
    for credential in principals.all_credentials():
        cred_id = credential.credentialId
        _settle(report, _retry(lambda: principals.get_credential(cred_id),  # noqa: B023 - called at once
                               lambda c: _place_credential(c, to, settings), first=credential))
        if progress is not None and (report.moved + report.kept) % 1000 == 0:
            progress(f"{report.moved + report.kept} rows")
    log.info("secrets migrated to %s: %s", to, report.as_dict())
    return report


def reseal_credential(credential: Credential, settings: Settings) -> bool:
    """Seal the credential's refresh token again under the current data key when it is under an older one; True
    when the row was rewritten (False: nothing to do, or the row changed meanwhile: the next run sees it)."""
    text = credential.sealedRefreshToken
    if not text or credential.refreshClaim or sealed.key_id_of(text) == data_keys().current_id(settings):
        return False
    aad = principals.refresh_aad(credential.credentialId)
    value = sealed.unseal(text, aad, settings)
    return principals.change_credential(credential, {"sealedRefreshToken": sealed.seal(value, aad, settings)}) \
        is not None


def _settle(report: MigrationReport, outcome: str) -> None:
    setattr(report, outcome, getattr(report, outcome) + 1)


def _retry(read: Callable[[], object], place: Callable[..., str], first: object = None) -> str:
    row = first if first is not None else read()
    for attempt in range(ATTEMPTS):
        if row is None:
            return "kept"  # deleted meanwhile: nothing left to move
        outcome = place(row)
        if outcome != "changed":
            return outcome
        time.sleep(0.05 * (attempt + 1))
        row = read()
    return "busy"


def _place_credential(credential: Credential, to: Mode, settings: Settings) -> str:
    if credential.refreshClaim and (credential.refreshClaimUntil or 0) > time.time():
        return "changed"
    aad = principals.refresh_aad(credential.credentialId)
    if to == "envelope" and credential.sealedRefreshToken and not credential.secretName:
        return "kept"
    if to == "keyvault" and not credential.sealedRefreshToken and credential.secretName:
        return "kept"
    try:
        value = sealed.get_secret(settings, secret_name=credential.secretName, sealed=credential.sealedRefreshToken,
                                  aad=aad)
    except SecretNotFound:
        return "missing"
    if to == "envelope":
        fields: dict[str, object] = {"sealedRefreshToken": sealed.seal(value, aad, settings), "secretName": ""}
        etag = principals.change_credential(credential, fields)
        if etag is None:
            return "changed"
        _drop_if_unnamed(credential.secretName, lambda: _names_secret(principals.get_credential(
            credential.credentialId)), settings)
        return "moved"
    name = principals.secret_name(credential.credentialId)
    sealed.put_secret(settings, name=name, aad=aad, value=value, mode="keyvault")
    if principals.change_credential(credential, {"secretName": name, "sealedRefreshToken": None}) is None:
        return "changed"
    return "moved"


def _place_app(app: OAuthApp, to: Mode, settings: Settings) -> str:
    aad = client_secret_aad(app.id)
    if to == "envelope" and app.sealedClientSecret and not app.secretName:
        return "kept"
    if to == "keyvault" and not app.sealedClientSecret and app.secretName:
        return "kept"
    try:
        value = sealed.get_secret(settings, secret_name=app.secretName, sealed=app.sealedClientSecret, aad=aad)
    except SecretNotFound:
        return "missing"
    if to == "envelope":
        changed = app.model_copy(update={"sealedClientSecret": sealed.seal(value, aad, settings), "secretName": ""})
    else:
        name = apps.client_secret_name(app.id)
        sealed.put_secret(settings, name=name, aad=aad, value=value, mode="keyvault")
        changed = app.model_copy(update={"secretName": name, "sealedClientSecret": None})
    changed.etag = app.etag
    if not apps.replace_app(changed):
        return "changed"
    forget_client_secret(app.id)
    if to == "envelope":
        _drop_if_unnamed(app.secretName, lambda: _app_names_secret(app.id), settings)
    return "moved"


def _names_secret(credential: Credential | None) -> str:
    return credential.secretName if credential is not None else ""


def _app_names_secret(app_id: str) -> str:
    app = apps.get_app(app_id, fresh=True)
    return app.secretName if app is not None else ""


def _drop_if_unnamed(name: str, named_now: Callable[[], str], settings: Settings) -> None:
    """Delete the secret the row no longer names, unless the row (read again) names it again."""
    if name and named_now() != name:
        sealed.drop_secret(settings, name)
