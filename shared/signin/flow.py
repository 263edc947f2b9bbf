"""The hosted sign-in: ``start`` (``GET /accounts/new``) and ``complete`` (``GET /oauth``).

Write order in ``complete`` makes a crash harmless (../shared/DESIGN.md, invariant 4): claim the link nonce, write
the refresh token, the index row and the credential row, then the account row (the commit point), then
clean up the old binding. A failure before the commit releases the nonce so the same link can be retried.

Before the first write, the mailbox access check (``shared.microsoft.access_check``, ``MC_ACCESS_CHECK``) opens the
mailbox with the access token just obtained; when the mailbox refuses the signer, nothing is written and
the app gets ``error=mailbox_access_denied`` or ``mailbox_not_found``. After the commit, the other
accounts of the same credential are flipped back to ``connected`` (the refresh token works again).

Webhook events (``shared.core.events``): the account row is written together with ``accountAdded`` and
``authenticationSuccess`` (new account) or ``authenticationSuccess`` (existing) in one transaction; the
accounts flipped back to ``connected`` get ``authenticationSuccess`` with ``reason: credentialRepaired``.
The account's ``meta.redirectUrl`` keeps the link's redirectUrl, for the re-authentication link of a
later ``authenticationError`` webhook (unless ``MC_REAUTH_REDIRECT_URL`` is set).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from shared.checks import with_query
from shared.clouds import scopes_for
from shared.core import events
from shared.core import links as linkcodec
from shared.core.apps import client_secret, forget_client_secret
from shared.errors import Busy, is_transient
from shared.microsoft.access_check import DENIED, NOT_FOUND, OK, check_mailbox_access
from shared.microsoft.identity import IdentityError, IdentityUnavailable, Tokens, redeem_code, start_flow
from shared.schemas import LinkData
from shared.settings import Settings
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, apps, flows, links, principals
from shared.storage.tables.accounts import AUTH_ERROR, Account
from shared.storage.tables.concurrency import ConcurrentChange, change_row
from shared.storage.tables.flows import PendingFlow
from shared.storage.tables.principals import Credential
from shared.storage.tables.records import utcnow

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.apps import OAuthApp
    from shared.storage.tables.outbox import EventRow

log = logging.getLogger("mailbox_connect.signin")
COOKIE_PREFIX = "mc_signin_"
COMMIT_ATTEMPTS = 16  # writes of the account row (insert, then replaces) before giving up (parallel callbacks)
_STATE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


@dataclass
class Redirect:
    location: str
    cookies: list[str] = field(default_factory=list)


class HostedError(Exception):
    """A failure shown on a hosted page because the app's redirectUrl is unknown or must not be trusted."""

    def __init__(self, kind: str, *, mailbox: str | None = None, retry_url: str | None = None,
                 cookies: list[str] | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.mailbox = mailbox
        self.retry_url = retry_url
        self.cookies = cookies or []


class AppError(Exception):
    """A failure reported to the app: ``redirectUrl?error=..&error_description=..``."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(code)
        self.code = code
        self.description = description


# --- ids -------------------------------------------------------------------------------------------

def credential_id(app_id: str, tid: str, oid: str) -> str:
    """Derived from the signer, so it is stable, unique per (app, tenant, user), and a valid secret name."""
    return hashlib.sha256(f"{app_id}:{tid.lower()}:{oid.lower()}".encode()).hexdigest()[:40]


def credential_secret_name(cred_id: str) -> str:
    return f"rt-{cred_id}"


def derived_account_id(tid: str, mailbox: str) -> str:
    """Connecting the same mailbox twice without an account id yields the same account."""
    return hashlib.sha256(f"{tid.lower()}:{mailbox.lower()}".encode()).hexdigest()[:32]


def _cookie_name(state: str) -> str:
    return COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def _cookie(name: str, value: str, max_age: int, settings: Settings) -> str:
    secure = "" if settings.insecure_localhost else "; Secure"
    return f"{name}={value}; Max-Age={max_age}; Path=/oauth; HttpOnly; SameSite=Lax{secure}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- GET /accounts/new --------------------------------------------------------------------------------

def start(data: str | None, sig: str | None, settings: Settings) -> Redirect:
    """Verify the link, start MSAL's auth-code flow, store it, bind it to this browser."""
    try:
        link = linkcodec.decode(data, sig, settings)
    except linkcodec.LinkError as exc:
        raise HostedError(f"link_{exc.kind}") from None
    mailbox = link.email
    if links.is_used(link.nonce):
        raise HostedError("link_used", mailbox=mailbox)
    try:
        app = apps.get_app(link.type)
        if app is None or not app.enabled:
            raise AppError("app_unavailable", "the OAuth app of this link is no longer available")
        scopes = scopes_for(app.cloud, app.baseScopes, delegated=link.delegated, extra=tuple(app.extraScopes))
        # Never hint a shared mailbox: it cannot sign in. An own mailbox may be hinted.
        hint = link.loginHint or (None if link.delegated else link.expectedEmail)
        flow = start_flow(app, client_secret(app, settings), settings, scopes,
                          login_hint=hint, domain_hint=link.domainHint)
    except AppError as exc:
        return _to_app(link, exc.code, exc.description)
    except (IdentityUnavailable, SecretStoreUnavailable):
        raise HostedError("unavailable", mailbox=mailbox, retry_url=linkcodec.link_url(link, settings)) from None
    binding = secrets.token_urlsafe(32)
    flows.insert_flow(PendingFlow(
        state=flow["state"], appId=app.id, flow=flow, link=link.model_dump(mode="json"),
        binding=_digest(binding), expiresAt=utcnow() + timedelta(seconds=settings.flow_ttl_seconds),
    ))
    cookie = _cookie(_cookie_name(flow["state"]), binding, settings.flow_ttl_seconds, settings)
    return Redirect(flow["auth_uri"], [cookie])


# --- GET /oauth ---------------------------------------------------------------------------------------

def complete(params: dict[str, str], cookies: dict[str, str], settings: Settings) -> Redirect:
    state = params.get("state") or ""
    if not _STATE.match(state):
        raise HostedError("session_unknown")
    name = _cookie_name(state)
    clear = [_cookie(name, "", 0, settings)]
    pending = flows.get_flow(state)
    if pending is None or pending.consumed:
        raise HostedError("session_unknown", cookies=clear)
    link = LinkData.model_validate(pending.link)
    binding = cookies.get(name, "")
    if not binding or not hmac.compare_digest(_digest(binding), pending.binding):
        raise HostedError("browser_mismatch", mailbox=link.email, retry_url=_retry_url(link, settings))
    if pending.expiresAt <= utcnow():
        raise HostedError("session_expired", mailbox=link.email, retry_url=_retry_url(link, settings), cookies=clear)
    # From here the app's redirectUrl is known: every failure goes back there (../shared/DESIGN.md, the flow).
    try:
        if not flows.claim_flow(pending):
            raise HostedError("session_unknown", cookies=clear)
        redirect = _finish(pending, link, params, settings)
    except AppError as exc:
        redirect = _to_app(link, exc.code, exc.description)
    except HostedError:
        raise  # the flow was consumed by another callback: nothing of this one to report to the app
    except Exception as exc:  # noqa: BLE001 - storage or a bug: the app gets a clear error, never a 500
        if is_transient(exc):
            log.warning("sign-in: a dependency failed (%s); the link can be retried", type(exc).__name__)
            redirect = _to_app(link, "temporarily_unavailable", "a service we depend on failed; try the link again")
        else:
            log.exception("sign-in: unexpected error")
            redirect = _to_app(link, "server_error", "the sign-in could not be completed; try the link again")
    _best_effort("forget the flow", flows.forget_flow, state)
    redirect.cookies.extend(clear)
    return redirect


def _best_effort(what: str, fn: Callable[..., object], *args: object) -> None:
    """Clean-up after the outcome is decided: a failure is logged, never turned into an error."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        log.warning("sign-in: could not %s (%s)", what, type(exc).__name__)


def _retry_url(link: LinkData, settings: Settings) -> str | None:
    return None if link.exp <= time.time() else linkcodec.link_url(link, settings)


def _to_app(link: LinkData, code: str, description: str, account: str | None = None) -> Redirect:
    params = {"error": code, "error_description": description}
    target = account or link.account
    if target:
        params["account"] = target
    return Redirect(with_query(link.redirectUrl, params))


def _finish(pending: PendingFlow, link: LinkData, params: dict[str, str], settings: Settings) -> Redirect:
    if params.get("error"):
        code = params["error"][:64]
        description = (params.get("error_description") or code).strip().splitlines()[0][:300]
        raise AppError(code, description)
    if not params.get("code"):
        raise AppError("invalid_request", "the sign-in response carried no authorization code")
    app = apps.get_app(pending.appId)
    if app is None:
        raise AppError("app_unavailable", "the OAuth app of this link is no longer available")
    try:
        tokens = redeem_code(app, client_secret(app, settings), settings, pending.flow, params)
    except IdentityError as exc:
        if exc.code == "invalid_client":
            forget_client_secret(app.id)
        raise AppError(exc.code, exc.description) from None
    except (IdentityUnavailable, SecretStoreUnavailable):
        raise AppError("temporarily_unavailable", "Microsoft could not be reached; try the link again") from None
    if not tokens.refresh_token:
        raise AppError("consent_required", "Microsoft returned no refresh token (offline access was not granted)")

    claims = tokens.claims
    tid, oid = claims["tid"], claims["oid"]
    upn = str(claims.get("preferred_username") or claims.get("upn") or claims.get("email") or oid)
    own_address = str(claims.get("email") or upn)
    mailbox = own_address
    if link.delegated:
        if not link.email:  # the form requires it for a delegated link; never signed without
            raise AppError("invalid_request", "the sign-in link names no shared mailbox")
        mailbox = link.email
    if link.expectedEmail and mailbox.lower() != link.expectedEmail.lower():
        raise AppError("email_mismatch", f"signed in as {upn}, but the link expects {link.expectedEmail}")
    account_id = link.account or derived_account_id(tid, mailbox)
    cred_id = credential_id(app.id, tid, oid)
    # Before any write: a refused mailbox leaves nothing behind and the link stays usable.
    access = _check_access(app, tokens, mailbox, upn, link.delegated, account_id, settings)

    try:
        claimed = links.claim(link.nonce, account_id, datetime.fromtimestamp(link.exp, UTC),
                              owner=pending.state)
    except Exception:
        _best_effort("release the link", links.release, link.nonce, pending.state)  # the insert may have landed
        raise
    if not claimed:
        raise AppError("link_used", "this sign-in link was already used")
    now = utcnow()
    account = Account(
        account=account_id, email=mailbox, name=link.name or claims.get("name"), delegated=link.delegated,
        appId=app.id, credentialId=cred_id, signerUpn=upn, signerTid=tid, signerOid=oid,
        signerName=claims.get("name"), created=now, updated=now,
        # redirectUrl: where a re-authentication link of an authenticationError webhook sends the user
        meta={**link.meta, "accessCheck": access, "redirectUrl": link.redirectUrl},
    )
    try:
        stored = _store_credential(app.id, cred_id, tid, oid, upn, claims.get("name"), tokens, settings)
        principals.add_account(cred_id, account_id, mailbox)
        state, previous = _commit(account)
    except BaseException as exc:
        _undo_before_commit(link.nonce, pending.state, cred_id, account_id, settings)
        if isinstance(exc, SecretStoreUnavailable):
            raise AppError("temporarily_unavailable",
                           "the credential could not be stored; try the link again") from None
        if isinstance(exc, Busy):  # the account row kept changing under us
            raise AppError("temporarily_unavailable",
                           "the account is being changed right now; try the link again") from None
        raise
    # Committed: the outcome is decided, and clean-up failures must not turn it into an error.
    if previous is not None and previous.credentialId != cred_id:
        _best_effort("unbind the previous credential", unbind, previous.credentialId, account_id, settings)
    _best_effort("check the binding", _ensure_binding, stored, account_id, mailbox, settings)
    if stored.was_broken:
        _mark_connected(cred_id)
    log.info("account %s %s (delegated=%s, access check %s)", account_id, state, link.delegated, access)
    return Redirect(with_query(link.redirectUrl, {"account": account_id, "state": state}))


def _check_access(app: OAuthApp, tokens: Tokens, mailbox: str, upn: str, delegated: bool, account_id: str,
                  settings: Settings) -> str:
    """Run the mailbox access check per ``MC_ACCESS_CHECK``; raise AppError when the sign-in must stop.

    Returns the mark kept on the account as ``meta.accessCheck``: ``ok``, ``skipped`` (could not run) or ``off``.
    """
    mode = settings.access_check
    if mode == "off":
        return "off"
    result = check_mailbox_access(app, tokens.access_token, mailbox, upn, settings, delegated=delegated)
    if result.outcome == OK:
        return "ok"
    if result.outcome in (DENIED, NOT_FOUND):
        log.info("account %s: mailbox access check refused the sign-in: %s (%s)", account_id, result.outcome,
                 result.detail)
        raise AppError(*_refusal(result.outcome, result.method, mailbox, upn, delegated))
    log.warning("account %s: the mailbox access check could not run over %s: %s; %s", account_id, result.method,
                result.detail, "sign-in refused (MC_ACCESS_CHECK=strict)" if mode == "strict"
                else "account stored unchecked (meta.accessCheck=skipped)")
    if mode == "strict":
        raise AppError("temporarily_unavailable",
                       f"access to the mailbox {mailbox} could not be checked right now; try the link again")
    return "skipped"


def _refusal(outcome: str, method: str, mailbox: str, upn: str, delegated: bool) -> tuple[str, str]:
    """The error code and a description for the app that names the mailbox, the signer and what to do."""
    ask = (f"ask your administrator to give {upn} Full Access to the mailbox {mailbox}, then use the link again"
           if delegated else "ask your administrator to check that this user has an Exchange Online mailbox"
           + (" with IMAP enabled" if method == "imap" else ""))
    if outcome == NOT_FOUND:
        what = (f"the mailbox {mailbox} does not exist or is not enabled for Microsoft Graph (signed in as {upn})"
                if delegated else f"{upn} has no mailbox that Microsoft Graph can open")
        return "mailbox_not_found", f"{what}; {ask}"
    if method == "imap":
        what = (f"{upn} cannot open the mailbox {mailbox}: its IMAP login was refused (no Full Access "
                "permission, no such mailbox, or IMAP disabled for it)" if delegated
                else f"the IMAP login of {upn} to the mailbox {mailbox} was refused")
    else:
        what = (f"{upn} has no permission to open the mailbox {mailbox}" if delegated
                else f"Microsoft Graph refused {upn} access to the mailbox {mailbox}")
    return "mailbox_access_denied", f"{what}; {ask}"


def _mark_connected(cred_id: str) -> None:
    """Best effort: accounts of this credential marked ``authenticationError`` work again (never raises)."""
    from shared.core.account_state import mark_connected

    mark_connected(cred_id)


def _store_credential(app_id: str, cred_id: str, tid: str, oid: str, upn: str, name: str | None,
                      tokens: Tokens, settings: Settings) -> _Stored:
    """Secret first, then the credential row; remembers whether the old row said the credential was broken."""
    before = principals.get_credential(cred_id)
    secret_name = credential_secret_name(cred_id)
    get_secret_store(settings).set(secret_name, tokens.refresh_token or "")
    credential = Credential(credentialId=cred_id, appId=app_id, tid=tid, oid=oid, upn=upn, name=name,
                            scopes=tokens.scopes, secretName=secret_name, tokenWrittenAt=utcnow())
    etag = principals.upsert_credential(credential)
    return _Stored(credential, etag, bool(before and before.broken), tokens.refresh_token or "")


@dataclass
class _Stored:
    credential: Credential
    etag: str | None
    was_broken: bool
    refresh_token: str = field(repr=False)


def _ensure_binding(stored: _Stored, account_id: str, mailbox: str, settings: Settings) -> None:
    """After the commit: if the credential row changed under us, an ``unbind`` (an account delete or a
    re-bind racing this sign-in) may have removed the index row, the row and the secret this account now
    points at. Write them again; the account row is the truth. One point read when nothing happened."""
    current = principals.get_credential(stored.credential.credentialId)
    if current is not None and current.etag == stored.etag:
        return
    account = accounts.get_account(account_id)
    if account is None or account.credentialId != stored.credential.credentialId:
        return  # deleted or re-bound after our commit: that writer's unbind owns the clean-up
    log.warning("account %s: its credential changed during the sign-in; writing the binding again", account_id)
    get_secret_store(settings).set(stored.credential.secretName, stored.refresh_token)
    principals.add_account(stored.credential.credentialId, account_id, mailbox)
    if current is None:
        principals.upsert_credential(stored.credential)


def _commit(account: Account) -> tuple[str, Account | None]:
    """``_commit_account``, where a failure whose write may still have landed (a lost answer) is settled by
    reading the row back: our write is recognised by its ``updated`` timestamp and credential."""
    try:
        return _commit_account(account)
    except Exception as exc:
        if not is_transient(exc):
            raise
        try:
            current = accounts.get_account(account.account)
        except Exception:  # noqa: BLE001 - still unknown: report the original failure
            raise exc from None
        if current is None or current.credentialId != account.credentialId or current.updated != account.updated:
            raise
        log.warning("account %s: the commit's answer was lost, but the write landed", account.account)
        return ("new" if current.created == account.created else "existing"), None


def _undo_before_commit(nonce: str, owner: str, cred_id: str, account_id: str, settings: Settings) -> None:
    """A failure before the commit: free the link for a retry and take back a binding no account uses.

    Best effort (storage may be what failed); ``unbind`` keeps the credential when the account row points at
    it (a re-authorisation by the same signer) or when other accounts use it.
    """
    _best_effort("release the link", links.release, nonce, owner)
    try:
        current = accounts.get_account(account_id)
    except Exception as exc:  # noqa: BLE001
        log.warning("sign-in: could not check the account after a failure (%s)", type(exc).__name__)
        return
    if current is None or current.credentialId != cred_id:
        _best_effort("take back the new binding", unbind, cred_id, account_id, settings)


def _commit_account(account: Account) -> tuple[str, Account | None]:
    """Insert, or replace the existing row under its ETag; retried (with a short random wait, up to
    ``COMMIT_ATTEMPTS`` times) when a concurrent write wins, then 503.

    The sign-in's events (``accountAdded`` + ``authenticationSuccess``, or ``authenticationSuccess``) are
    written in the same transaction as the row (``shared.core.events``), then published.
    """
    def change(current: Account | None) -> _Commit:
        if current is None:  # no row (yet): insert ours
            return _Commit("new", account, [events.account_added(account),
                                            events.authentication_success(account, reason="signIn", state="new")])
        merged = account.model_copy(update={
            "created": current.created,
            "name": account.name or current.name,
            "meta": {**current.meta, **account.meta},
        })
        merged.etag = current.etag
        return _Commit("existing", merged, [events.authentication_success(
            merged, reason="signIn", state="existing", repaired=current.state == AUTH_ERROR)], current)

    def write(commit: _Commit) -> bool:
        if commit.previous is None:
            return accounts.insert_account(commit.row, commit.events)
        return accounts.replace_account(commit.row, commit.events)

    def spread(attempt: int) -> None:  # contention: spread the retries
        time.sleep(random.uniform(0, min(0.1, 0.005 * 2 ** attempt)))

    try:  # the first attempt inserts without reading: a new account costs one write
        commit = change_row(lambda: accounts.get_account(account.account), change, write,
                            attempts=COMMIT_ATTEMPTS, first=lambda: None, pause=spread)
    except ConcurrentChange:
        raise Busy("the account is being changed concurrently; retry", retry_after=1) from None
    assert commit is not None  # the change always writes
    events.publish(commit.events)
    return commit.state, commit.previous


class _Commit(NamedTuple):
    """What ``_commit_account`` writes: the row, its events, and the row it replaces (None: an insert)."""

    state: str  # "new" or "existing"
    row: Account
    events: list[EventRow]
    previous: Account | None = None


def unbind(cred_id: str, account_id: str, settings: Settings) -> None:
    """Remove one index row; delete the credential and its secret when no account uses it any more.

    The credential row is deleted under its ETag, so a sign-in that rewrote it meanwhile keeps it, and
    not while the account row points at this credential again. A sign-in racing this from the other
    side repairs its binding after its commit (``_ensure_binding``).
    """
    principals.remove_account(cred_id, account_id)
    credential = principals.get_credential(cred_id)
    if credential is None or principals.account_ids(cred_id):
        return
    current = accounts.get_account(account_id)
    if current is not None and current.credentialId == cred_id:
        # A sign-in re-bound the account to this credential after the caller read it: keep both.
        principals.add_account(cred_id, account_id, current.email)
        return
    if principals.delete_credential_row(credential):
        get_secret_store(settings).delete(credential.secretName)
