"""``POST /v1/authentication/form``: EmailEngine's form fields made into a signed link (``core.links.build_link``,
which also builds the re-authentication links of ``POST /v1/account/{account}/reauth`` and of webhooks)."""

from __future__ import annotations

from shared.core.links import build_link
from shared.schemas import FormRequest, FormResponse
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
