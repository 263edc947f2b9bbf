"""Signed sign-in links: ``POST /v1/authentication/form`` (EmailEngine's form fields) and re-authentication
links for an existing account (``POST /v1/account/{account}/reauth``) are both built by ``build_link``."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Optional

from shared.errors import ApiError
from shared.linkcodec import link_url, new_nonce
from shared.models import FormRequest, FormResponse, LinkData
from shared.oauth_apps import resolve_app
from shared.redirects import InvalidRedirect, validate_redirect_url
from shared.settings import Settings

META_FIELDS = ("syncFrom", "notifyFrom", "subconnections", "path")


def create_form_link(form: FormRequest, settings: Settings) -> FormResponse:
    """No storage write: the link carries everything, signed. Reads at most the app (cached)."""
    return build_link(
        settings, redirect_url=form.redirectUrl, app_id=form.type, expires_in=form.expiresIn,
        account=form.account, name=form.name, email=form.email, delegated=form.delegated,
        expected_email=form.expectedEmail,
        meta={k: getattr(form, k) for k in META_FIELDS if getattr(form, k) is not None},
    )


def build_link(settings: Settings, *, redirect_url: str, app_id: Optional[str], expires_in: Optional[int] = None,
               account: Optional[str] = None, name: Optional[str] = None, email: Optional[str] = None,
               delegated: bool = False, expected_email: Optional[str] = None,
               meta: Optional[dict[str, Any]] = None, login_hint: Optional[str] = None,
               domain_hint: Optional[str] = None) -> FormResponse:
    """Validate the redirect URL and the lifetime, resolve the app, sign the link.

    ``login_hint``/``domain_hint`` are only set by re-authentication links (the current signer, never a
    shared mailbox). Errors name the request field (``redirectUrl``, ``expiresIn``, ``type``).
    """
    try:
        validate_redirect_url(redirect_url, settings.redirect_origins)
    except InvalidRedirect as exc:
        raise ApiError(400, "invalid_redirect_url", str(exc), field="redirectUrl") from None
    ttl = expires_in or settings.link_ttl_seconds
    if ttl > settings.link_max_ttl_seconds:
        raise ApiError(400, "invalid_input", f"expiresIn: at most {settings.link_max_ttl_seconds} seconds",
                       field="expiresIn")
    app = resolve_app(app_id)
    now = int(time.time())
    link = LinkData(
        account=account, name=name, email=email, delegated=delegated,
        redirectUrl=redirect_url, type=app.id, expectedEmail=expected_email, meta=meta or {},
        loginHint=login_hint, domainHint=domain_hint,
        nonce=new_nonce(), iat=now, exp=now + ttl,
    )
    expires = datetime.fromtimestamp(link.exp, timezone.utc).isoformat().replace("+00:00", "Z")
    return FormResponse(url=link_url(link, settings), expires=expires)
