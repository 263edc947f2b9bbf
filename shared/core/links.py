"""Sign-in links: ``data`` is base64url JSON of ``LinkData``, ``sig`` its HMAC-SHA256 (see ``shared.signing``).

Creating a link writes nothing: everything the sign-in needs travels inside the signed data, and the
nonce is recorded only when the link produces an account.

The nonce is also the link's public id (``link`` in the form's answer and on the redirect back,
``GET /v1/links/{link}``): it is readable in the link's data anyway, and without the signature it opens nothing.

A link names its OAuth app (``type``), except one made while several apps are enabled and the form named none
(EmailEngine's ``type`` false or absent): the person then picks one at ``/accounts/new`` (the app chooser,
``shared.signin.flow``), among the enabled apps or only those in the link's signed ``apps`` (the apps of the
restricted API token that made it). The pick (``&app=``) is outside the signature and can select nothing else.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError

from shared.checks import InvalidRedirect, validate_redirect_url
from shared.core.apps import enabled_apps, resolve_app
from shared.errors import Conflict, InvalidInput
from shared.schemas import FormResponse, LinkData
from shared.settings import Settings
from shared.signing import BadSignature, b64url_decode, b64url_encode
from shared.storage.keys import RefreshingSigner, signer
from shared.storage.tables import apps as app_table
from shared.storage.tables.accounts import Account

MAX_DATA_LENGTH = 8192


class LinkError(ValueError):
    """``kind`` is ``invalid`` (tampered, truncated, foreign) or ``expired``."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _signer(settings: Settings) -> RefreshingSigner:
    """The key ring's signer (``shared.storage.keys``): ``sig`` is ``<key id>.<mac>``; a link signed before a
    key rotation still opens during the rotation's grace period, and one signed before key ids existed (a bare
    ``<mac>``) is checked against the current and the previous key."""
    return signer(settings, "link")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def encode(link: LinkData, settings: Settings) -> tuple[str, str]:
    data = b64url_encode(json.dumps(link.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode())
    return data, _signer(settings).signature(data)


def link_url(link: LinkData, settings: Settings) -> str:
    data, sig = encode(link, settings)
    return f"{settings.public_url}/accounts/new?{urlencode({'data': data, 'sig': sig})}"


def decode(data: str | None, sig: str | None, settings: Settings, now: float | None = None) -> LinkData:
    """Verify first (constant time), parse second, then check expiry."""
    if not data or not sig or len(data) > MAX_DATA_LENGTH or len(sig) > 128:
        raise LinkError("invalid")
    try:
        _signer(settings).verify(data, sig)
        link = LinkData.model_validate(json.loads(b64url_decode(data)))
    except (BadSignature, ValueError, ValidationError):
        raise LinkError("invalid") from None
    if link.exp <= (time.time() if now is None else now):
        raise LinkError("expired")
    return link


# --- building links (the form, re-authentication) ---------------------------------------------------------

def build_link(settings: Settings, *, redirect_url: str, app_id: str | None, expires_in: int | None = None,
               account: str | None = None, name: str | None = None, email: str | None = None,
               delegated: bool = False, expected_email: str | None = None,
               meta: dict[str, Any] | None = None, login_hint: str | None = None,
               domain_hint: str | None = None, allowed_apps: Collection[str] | None = None) -> FormResponse:
    """Validate the redirect URL and the lifetime, resolve the app, sign the link.

    ``app_id`` None (EmailEngine's ``type`` false or absent): the only enabled app (of ``allowed_apps``, a
    restricted API token's, when given); with several, the link names none and the person picks one at
    ``/accounts/new`` (``shared.signin.flow``), among ``allowed_apps`` when given (signed into the link as
    ``apps``). ``login_hint``/``domain_hint`` are only set by re-authentication links (the current signer,
    never a shared mailbox). Errors name the request field (``redirectUrl``, ``expiresIn``, ``type``).
    """
    try:
        validate_redirect_url(redirect_url, settings.redirect_origins)
    except InvalidRedirect as exc:
        raise InvalidInput(str(exc), field="redirectUrl", code="invalid_redirect_url") from None
    ttl = expires_in or settings.link_ttl_seconds
    if ttl > settings.link_max_ttl_seconds:
        raise InvalidInput(f"expiresIn: at most {settings.link_max_ttl_seconds} seconds", field="expiresIn")
    chosen, choices = _app_of_link(app_id, allowed_apps)
    now = int(time.time())
    link = LinkData(
        account=account, name=name, email=email, delegated=delegated,
        redirectUrl=redirect_url, type=chosen, apps=choices, expectedEmail=expected_email, meta=meta or {},
        loginHint=login_hint, domainHint=domain_hint,
        nonce=new_nonce(), iat=now, exp=now + ttl,
    )
    data, sig = encode(link, settings)
    if len(data) > MAX_DATA_LENGTH:  # decode() refuses it: the person would get a link that never opens
        raise InvalidInput(f"the link would carry more than {MAX_DATA_LENGTH} characters of data; send fewer or "
                           "shorter values (path, subconnections, redirectUrl, name)", code="link_too_long")
    expires = datetime.fromtimestamp(link.exp, UTC).isoformat().replace("+00:00", "Z")
    url = f"{settings.public_url}/accounts/new?{urlencode({'data': data, 'sig': sig})}"
    return FormResponse(url=url, expires=expires, link=link.nonce)


def _app_of_link(app_id: str | None, allowed: Collection[str] | None) -> tuple[str | None, list[str] | None]:
    """(``type``, ``apps``) of a new link: the named app (enabled), else the only enabled one (of ``allowed``),
    else (None, the allowed apps or None for every enabled app): the person picks at ``/accounts/new``."""
    if app_id:
        return resolve_app(app_id).id, None
    enabled = enabled_apps(allowed)
    if len(enabled) == 1:
        return enabled[0].id, None
    if not enabled:
        message = ("no OAuth app is configured; register one first" if allowed is None
                   else "none of this API token's OAuth apps is enabled")
        raise InvalidInput(message, field="type", code="no_app")
    return None, None if allowed is None else sorted(allowed)


def reauth_link_for(account: Account, redirect_url: str, expires_in: int | None, settings: Settings) -> FormResponse:
    """The re-authentication link of ``account`` (also put into ``authenticationError`` webhooks)."""
    app = app_table.get_app(account.appId)
    if app is None:
        raise Conflict("app_unavailable", "the account's OAuth app was deleted; connect the mailbox again "
                                          "with another app (POST /v1/authentication/form)")
    if not app.enabled:
        raise Conflict("app_disabled", f"the account's OAuth app {app.id!r} is disabled; enable it first")
    return build_link(
        settings, redirect_url=redirect_url, app_id=app.id, expires_in=expires_in,
        account=account.account, name=account.name, email=account.email, delegated=account.delegated,
        expected_email=None if account.delegated else account.email,
        login_hint=account.signerUpn, domain_hint=account.signerTid,
    )
