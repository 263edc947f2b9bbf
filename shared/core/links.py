"""Sign-in links: ``data`` is base64url JSON of ``LinkData``, ``sig`` its HMAC-SHA256 (see ``shared.signing``).

Creating a link writes nothing: everything the sign-in needs travels inside the signed data, and the
nonce is recorded only when the link produces an account.

The nonce is also the link's public id (``link`` in the form's answer and on the redirect back,
``GET /v1/links/{link}``): it is readable in the link's data anyway, and without the signature it opens nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError

from shared.checks import InvalidRedirect, validate_redirect_url
from shared.core.apps import resolve_app
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
               domain_hint: str | None = None) -> FormResponse:
    """Validate the redirect URL and the lifetime, resolve the app, sign the link.

    ``login_hint``/``domain_hint`` are only set by re-authentication links (the current signer, never a
    shared mailbox). Errors name the request field (``redirectUrl``, ``expiresIn``, ``type``).
    """
    try:
        validate_redirect_url(redirect_url, settings.redirect_origins)
    except InvalidRedirect as exc:
        raise InvalidInput(str(exc), field="redirectUrl", code="invalid_redirect_url") from None
    ttl = expires_in or settings.link_ttl_seconds
    if ttl > settings.link_max_ttl_seconds:
        raise InvalidInput(f"expiresIn: at most {settings.link_max_ttl_seconds} seconds", field="expiresIn")
    app = resolve_app(app_id)
    now = int(time.time())
    link = LinkData(
        account=account, name=name, email=email, delegated=delegated,
        redirectUrl=redirect_url, type=app.id, expectedEmail=expected_email, meta=meta or {},
        loginHint=login_hint, domainHint=domain_hint,
        nonce=new_nonce(), iat=now, exp=now + ttl,
    )
    expires = datetime.fromtimestamp(link.exp, UTC).isoformat().replace("+00:00", "Z")
    return FormResponse(url=link_url(link, settings), expires=expires, link=link.nonce)


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
