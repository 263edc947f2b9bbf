"""``POST /v1/authentication/form``: EmailEngine's form fields made into a signed link (``core.links.build_link``,
which also builds the re-authentication links of ``POST /v1/account/{account}/reauth`` and of webhooks).

The answer's ``link`` is the link's id: it comes back on the redirect (``link=``) and ``GET /v1/links/{link}``
tells which account that link produced (``shared.admin.links``).

The body is read as EmailEngine reads it (``shared.schemas.FormRequest``: empty strings as absent, ``account``
trimmed, one string for ``subconnections``/``path``, ISO dates). ``type`` false or absent: the only enabled
app, or, with several, a link that names none: the person picks one on the hosted chooser page
(``shared.signin.flow``), as on EmailEngine's.

A restricted API token (``shared.core.access``) creates links only for its own OAuth apps (``type`` must be
one of them; with exactly one, it is the default; with several and no ``type``, the chooser offers only
them: the link records them, signed) and, when restricted to accounts, only for one of its
accounts (``account`` is then required). A link naming an existing account the token may not see is
refused like an unknown account is elsewhere (404); an unknown account id is accepted, since the link
creates it, so this one answer does tell a restricted token that the id is taken.
"""

from __future__ import annotations

from shared.core.access import Caller, account_not_found
from shared.core.links import build_link
from shared.errors import InvalidInput
from shared.schemas import FormRequest, FormResponse
from shared.settings import Settings
from shared.storage.tables import accounts

META_FIELDS = ("syncFrom", "notifyFrom", "subconnections", "path")


def create_form_link(form: FormRequest, settings: Settings, caller: Caller) -> FormResponse:
    """No storage write: the link carries everything, signed. Reads at most the app (cached), and for a
    restricted token the account the form names."""
    app_id = _app_for(form.type, caller)
    _check_account(form.account, caller)
    return build_link(
        settings, redirect_url=form.redirectUrl, app_id=app_id, expires_in=form.expiresIn,
        account=form.account, name=form.name, email=form.email, delegated=form.delegated,
        expected_email=form.expectedEmail,
        meta={k: getattr(form, k) for k in META_FIELDS if getattr(form, k) is not None},
        allowed_apps=caller.apps,
    )


def _app_for(requested: str | None, caller: Caller) -> str | None:
    """The form's ``type`` within the caller's apps (answered like an unknown app when outside them); None:
    no preselection (``build_link`` takes the only enabled app of the caller's, or lets the person pick)."""
    if caller.apps is None:
        return requested
    if requested is not None:
        if requested not in caller.apps:
            raise InvalidInput(f"no OAuth app with id {requested!r}", field="type", code="unknown_app")
        return requested
    if len(caller.apps) == 1:
        return next(iter(caller.apps))
    return None


def _check_account(account_id: str | None, caller: Caller) -> None:
    if caller.accounts is not None:
        if account_id is None:
            raise InvalidInput("account: this API token is restricted to accounts; name one of them",
                               field="account", code="account_required")
        if not caller.may_name(account_id):
            raise account_not_found(account_id)
    if caller.restricted and account_id is not None:
        existing = accounts.get_account(account_id)
        if existing is not None and not caller.sees(existing):
            raise account_not_found(account_id)
