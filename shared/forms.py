"""``POST /v1/authentication/form``: turn EmailEngine's form fields into a signed, expiring sign-in link."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from shared.errors import ApiError
from shared.linkcodec import link_url, new_nonce
from shared.models import FormRequest, FormResponse, LinkData
from shared.oauth_apps import resolve_app
from shared.redirects import InvalidRedirect, validate_redirect_url
from shared.settings import Settings

META_FIELDS = ("syncFrom", "notifyFrom", "subconnections", "path")


def create_form_link(form: FormRequest, settings: Settings) -> FormResponse:
    """No storage write: the link carries everything, signed. Reads at most the app (cached)."""
    try:
        validate_redirect_url(form.redirectUrl, settings.redirect_origins)
    except InvalidRedirect as exc:
        raise ApiError(400, "invalid_redirect_url", str(exc), field="redirectUrl") from None
    ttl = form.expiresIn or settings.link_ttl_seconds
    if ttl > settings.link_max_ttl_seconds:
        raise ApiError(400, "invalid_input", f"expiresIn: at most {settings.link_max_ttl_seconds} seconds",
                       field="expiresIn")
    app = resolve_app(form.type)
    now = int(time.time())
    link = LinkData(
        account=form.account, name=form.name, email=form.email, delegated=form.delegated,
        redirectUrl=form.redirectUrl, type=app.id, expectedEmail=form.expectedEmail,
        meta={k: getattr(form, k) for k in META_FIELDS if getattr(form, k) is not None},
        nonce=new_nonce(), iat=now, exp=now + ttl,
    )
    expires = datetime.fromtimestamp(link.exp, timezone.utc).isoformat().replace("+00:00", "Z")
    return FormResponse(url=link_url(link, settings), expires=expires)
