"""The hosted sign-in: ``start`` (``GET /accounts/new``) and ``complete`` (``GET /oauth``).

Write order in ``complete`` makes a crash harmless (../shared/DESIGN.md, invariant 4): claim the link nonce, store
the refresh token (``shared.storage.sealed``: a secret in keyvault mode, sealed on the row in envelope mode), the
credential row and the index row in one transaction (``principals.bind``), then the account row with its events
(the commit point), then clean up the old binding. A failure before the commit releases the nonce so the same link
can be retried.

Table calls (issue 14, point 5): the account read, the link claim, the binding transaction, the account
transaction, the link's completion and the outbox index: six (keyvault mode adds ``_ensure_binding``'s read). The
old credential row is not read: when the account signed into was in ``authenticationError``, its credential's
accounts are reconnected at once; the credential's other broken accounts, and the account counts, are brought in
step by the next webhook delivery run, which processes the sign-in's event (``shared.webhooks.dispatcher``).

Before the first write, the mailbox access check (``shared.microsoft.access_check``, ``MC_ACCESS_CHECK``) opens the
mailbox with the access token just obtained; when the mailbox refuses the signer, nothing is written and
the app gets ``error=mailbox_access_denied`` or ``mailbox_not_found``.

Who a mailbox belongs to (issue 12, points 1-3; the README's "Trust rules" says the same for app developers)
    *Which mailbox* (``_prove_mailbox``). The signer is ``tid`` + ``oid``. A shared mailbox is the link's
    address, and the access check opens it with the signer's token. An own mailbox is decided from proof,
    never from a claim a tenant administrator can set (the id_token's ``email`` is sourced from the
    directory's ``mail``, which may name any address in any domain: the "nOAuth" spoofing):

    1. addresses proven without asking anyone: the ``email`` claim only when ``xms_edov`` (an optional claim)
       says its domain owner is verified, and the sign-in name (``preferred_username``: the UPN, whose domain
       the tenant verified; not for a B2B guest, whose id_token carries ``idp``);
    2. ``api`` apps hold a Graph token: the signer's directory record (``GET /me``: ``id`` must be ``oid``,
       ``userPrincipalName`` is proven, ``mail`` is the stated primary address). ``imap`` apps' tokens are
       for Outlook: they have no ``/me``; their IMAP login, as the address, is the proof;
    3. the stated primary address (``/me``'s ``mail``, else the ``email`` claim) is the mailbox when it is
       proven (1, 2), or when the access check opens it *by that address* (IMAP ``user=<address>``; Graph
       ``/users/{address}/mailFolders/inbox``): Exchange resolves an address only among the recipients of
       the token's own tenant, so an address of another organisation cannot be opened. A stated address
       the check refuses is not used; the mailbox is then the first proven address (1, 2), which the check
       opens as the signer's own (IMAP as that address, Graph ``/me``);
    4. when the check cannot run (``on``: unavailable; ``off``) only proven addresses (1, 2) are used; with
       none (a guest without a directory record) the sign-in is refused with ``unverified_mailbox``.

    So addresses never cross tenants: a derived account id is tenant + proven mailbox, and an existing
    account never moves to another tenant (below). ``expectedEmail`` is met by the proven mailbox or by an
    address proven to be the signer's own (EmailEngine's meaning: it pins the authenticating principal, for
    a delegated mailbox the delegate), and it is stored on the account (``pinnedEmail``, shown by the API
    as ``expectedEmail``): every later sign-in for that account must meet it too.

    *Re-binding* (``_rebind_refusal``). A sign-in that lands on an existing account (its id in the link, or
    the derived id) by another signer than the account's moves the account only when all of these hold;
    else the app gets an error and nothing is written (the link nonce is not claimed, the link stays usable):

    * (any signer) the account stays with its OAuth app: a sign-in through another app is refused with
      ``error=app_mismatch`` (an API token restricted to one app must not move another app's account);
    * same tenant, else ``error=tenant_mismatch``;
    * an own mailbox (``delegated: false``) stays its owner's: another signer may only re-bind it as the
      same own mailbox (a re-created user), never turn it into a delegated one or into another mailbox, else
      ``error=owner_mismatch`` (the example of the issue: Bob, with Full Access to ada@, connecting ada@ as
      a shared mailbox, would otherwise take Ada's own account and delete her credential);
    * the access check positively proved that the new signer opens the mailbox (``ok``; never ``skipped`` or
      ``off``), else ``error=access_not_proven`` (the same link works once the check can run);
    * a pinned ``expectedEmail`` is met (``error=email_mismatch``; this applies to the same signer too).

    The rules are checked on the row read before any write and again, under the row's ETag, in the commit
    (a row that changed meanwhile is judged as it is then; a refusal there undoes the writes). A re-binding
    that passes goes back to the app as ``state=existing&signerChanged=true`` (``state`` stays one of
    EmailEngine's two values, so a client that knows only new|existing still sees a working, existing
    account) and its ``authenticationSuccess`` webhook carries ``signerChanged: true`` and ``signerChange``
    (from/to: upn, tenant, oid). The previous signer's index row goes, and its credential with its refresh
    token when no other account uses it.

    *Unproven access* (``MC_ACCESS_CHECK=on`` and a check that cannot run). A brand-new account is still
    created, marked ``accessCheck: "pending"`` (``meta.accessCheck: "skipped"`` as before); the API shows
    it, and ``shared.core.mailbox_access.prove_access`` (the keep-alive) finishes the proof later. A
    re-binding is never let through unproven (above). ``strict`` refuses every unproven sign-in; ``off``
    marks accounts ``accessCheck: "off"`` and makes re-binding to another signer impossible (delete the
    account and connect it again).

Webhook events (``shared.core.events``): the account row is written together with ``accountAdded``,
``authenticationSuccess`` and ``accountInitialized`` (new account: ``events.account_added_and_initialized``) or
``authenticationSuccess`` (existing) in one transaction; the
accounts flipped back to ``connected`` get ``authenticationSuccess`` with ``reason: credentialRepaired``.
The account's ``meta.redirectUrl`` keeps the link's redirectUrl, for the re-authentication link of a
later ``authenticationError`` webhook (unless ``MC_REAUTH_REDIRECT_URL`` is set).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlencode

from pydantic import ValidationError

from shared.checks import with_query
from shared.clouds import scopes_for
from shared.core import events
from shared.core import links as linkcodec
from shared.core.apps import client_secret, enabled_apps, forget_client_secret
from shared.errors import Busy, is_transient
from shared.microsoft.access_check import (
    DENIED,
    NOT_FOUND,
    OK,
    AccessResult,
    check_mailbox_access,
    read_directory_record,
)
from shared.microsoft.identity import (
    IdentityError,
    IdentityUnavailable,
    Tokens,
    email_verified,
    proven_addresses,
    redeem_code,
    sign_in_name,
    start_flow,
)
from shared.schemas import AccessCheck, LinkData
from shared.settings import Settings
from shared.signin import flowstate
from shared.signin.pages import Choice
from shared.storage import sealed
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, apps, links, principals
from shared.storage.tables.accounts import AUTH_ERROR, Account
from shared.storage.tables.concurrency import ConcurrentChange, change_row
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
    """A failure reported to the app: ``redirectUrl?error=..&error_description=..`` (and ``account``: the
    link's, or ``account`` here, an existing account of the app the sign-in landed on)."""

    def __init__(self, code: str, description: str, account: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.description = description
        self.account = account


# --- ids -------------------------------------------------------------------------------------------

def credential_id(app_id: str, tid: str, oid: str) -> str:
    """Derived from the signer, so it is stable, unique per (app, tenant, user), and a valid secret name."""
    return hashlib.sha256(f"{app_id}:{tid.lower()}:{oid.lower()}".encode()).hexdigest()[:40]


def derived_account_id(tid: str, mailbox: str) -> str:
    """Connecting the same mailbox twice without an account id yields the same account."""
    return hashlib.sha256(f"{tid.lower()}:{mailbox.lower()}".encode()).hexdigest()[:32]


def _cookie_name(state: str) -> str:
    return COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def _chunk_name(name: str, index: int) -> str:
    """The cookie holding part ``index`` of a flow too large for one (``flowstate``: a very long link)."""
    return name if index == 0 else f"{name}_{index}"


def _cookie(name: str, value: str, max_age: int, settings: Settings) -> str:
    secure = "" if settings.insecure_localhost else "; Secure"
    return f"{name}={value}; Max-Age={max_age}; Path=/oauth; HttpOnly; SameSite=Lax{secure}"


# --- GET /accounts/new --------------------------------------------------------------------------------

def start(data: str | None, sig: str | None, settings: Settings, choice: str | None = None) -> Redirect | Chooser:
    """Verify the link, start MSAL's auth-code flow, seal it into this browser's cookie (``flowstate``).

    Storage: one point read (is the link used?) and no write; the OAuth app is read only when this instance's
    cache (``MC_AUTH_CACHE_SECONDS``) does not hold it.

    A link that names no OAuth app (EmailEngine's ``type`` false or absent while several apps are enabled)
    first needs the person's pick (``_pick_app``): the chooser page, whose options open this same link with
    ``&app=<id>`` (``choice``)."""
    try:
        link = linkcodec.decode(data, sig, settings)
    except linkcodec.LinkError as exc:
        raise HostedError(f"link_{exc.kind}") from None
    mailbox = link.email
    if links.is_used(link.nonce):
        raise HostedError("link_used", mailbox=mailbox)
    app_id = link.type
    if app_id is None:
        assert data is not None and sig is not None  # decode() verified them
        picked = _pick_app(link, data, sig, choice, settings)
        if isinstance(picked, Chooser):
            return picked
        if picked is None:
            return _to_app(link, "app_unavailable", "none of the OAuth apps this link may use is enabled")
        app_id = picked
        link = link.model_copy(update={"type": picked})  # the flow (and a retry link) carries the pick
    try:
        app = apps.get_app(app_id)
        if app is None or not app.enabled:
            raise AppError("app_unavailable", "the OAuth app of this link is no longer available")
        scopes = scopes_for(app.cloud, app.baseScopes, delegated=link.delegated, extra=tuple(app.extraScopes))
        # Never hint a shared mailbox: it cannot sign in. An own mailbox may be hinted.
        hint = link.loginHint or (None if link.delegated else link.expectedEmail)
        flow = start_flow(app, client_secret(app, settings), settings, scopes, state=flowstate.new_state(settings),
                          login_hint=hint, domain_hint=link.domainHint)
    except AppError as exc:
        return _to_app(link, exc.code, exc.description)
    except (IdentityUnavailable, SecretStoreUnavailable):
        raise HostedError("unavailable", mailbox=mailbox, retry_url=linkcodec.link_url(link, settings)) from None
    expires = utcnow() + timedelta(seconds=settings.flow_ttl_seconds)
    sealed = flowstate.seal(flowstate.Flow(state=flow["state"], app_id=app.id, flow=flow,
                                           link=link.model_dump(mode="json", exclude_none=True),
                                           expires=expires.timestamp()), settings)
    name = _cookie_name(flow["state"])
    cookies = [_cookie(_chunk_name(name, i), value, settings.flow_ttl_seconds, settings)
               for i, value in enumerate(sealed)]
    return Redirect(flow["auth_uri"], cookies)


@dataclass
class Chooser:
    """The answer of ``/accounts/new`` for a link that names no OAuth app while several may be used: the hosted
    page where the person picks one (``pages.chooser``, sent by ``shared.web.blueprints.hosted``)."""

    choices: list[Choice]
    mailbox: str | None = None
    stale: bool = False  # the URL named an app that is not (or no longer) one of the choices


def _pick_app(link: LinkData, data: str, sig: str, choice: str | None, settings: Settings) -> str | Chooser | None:
    """The app of a link that names none (EmailEngine's app selection), or the page to pick it, or None when no
    app may be used any more.

    The candidates are the enabled apps, only those the link was limited to (``apps``: the OAuth apps of the
    restricted API token that made it) when it says so. Each option of the page opens this same signed link
    with ``&app=<id>``; ``app`` is only ever compared with the candidates, so the person can pick among them
    and change nothing else (the rest is under the signature). One candidate: no page. A link naming an
    existing account of a candidate app goes straight to that app (another would only end in
    ``app_mismatch``)."""
    candidates = enabled_apps(link.apps)
    ids = [app.id for app in candidates]
    if not candidates:
        return None
    if len(candidates) == 1:
        return ids[0]
    if link.account:
        existing = accounts.get_account(link.account)
        if existing is not None and existing.appId in ids:
            return existing.appId
    if choice in ids:
        return choice
    base = f"{settings.public_url}/accounts/new?"
    return Chooser([Choice(app.name, app.cloud, base + urlencode({"data": data, "sig": sig, "app": app.id}))
                    for app in candidates], mailbox=link.email, stale=bool(choice))


# --- GET /oauth ---------------------------------------------------------------------------------------

def complete(params: dict[str, str], cookies: dict[str, str], settings: Settings) -> Redirect:
    """Finish the sign-in of ``state`` from its sealed flow cookie (``flowstate``); nothing was stored at the start.

    Refusals before the app is known are hosted pages: a state this service never made (``session_unknown``), no
    cookie or one that does not open (``browser_mismatch``: another browser, tampered, another sign-in's, a key
    not held), an expired flow (``session_expired``, with a retry link). No storage is read until the cookie
    opened.

    A callback is consumed once, without a flow row to consume. The cookie stays valid until it expires, so the
    same callback (state + cookie + code) may arrive again, or several times at once; what stops it:

    1. Microsoft's one-time code: a replay, or callbacks racing each other, send the same code, and all but the
       first are refused with AADSTS54005 (already redeemed), which ends on the ``session_unknown`` page. (The
       callback no longer reads the used-link row before redeeming: issue 14 point 5; ``GET /accounts/new``
       still tells a person with a used link before they sign in);
    2. the link claim itself (``links.claim``, a conditional insert): a callback that finds the link claimed by
       its own sign-in ends on ``session_unknown`` too, one of another sign-in of the link on ``link_used`` at
       the app (``_refuse_used_link``). A claim's ``owner`` is the state's random part plus a token of this
       one callback, so a replay is never taken for the claim's own lost answer;
    3. the account commit (ETag): single use is enforced there whatever happened before.

    A callback whose sign-in failed before the commit released its claim (the link may be retried); its replay
    meets Microsoft's refusal of the spent code (1), never a second sign-in. Every callback that reaches the app
    clears the cookie; one that failed on storage tells the app ``temporarily_unavailable``, and the link works
    again.
    """
    state = params.get("state") or ""
    if not _STATE.fullmatch(state):  # fullmatch: "$" of match() would let a trailing newline through
        raise HostedError("session_unknown")
    name = _cookie_name(state)
    chunks = [cookies.get(_chunk_name(name, i), "") for i in range(flowstate.MAX_CHUNKS)]
    clear = [_cookie(_chunk_name(name, i), "", 0, settings)
             for i in range(flowstate.MAX_CHUNKS) if i == 0 or chunks[i]]
    try:
        pending = flowstate.open_flow(state, chunks, settings)
    except flowstate.FlowRefused as exc:
        # A missing cookie, or one that does not open (tampered, another sign-in's, a key not held): the page
        # names neither the link nor the mailbox (pages.py "browser_mismatch": open the link again from where
        # it came); a state this service never made is "session_unknown".
        raise HostedError(exc.kind, cookies=clear if exc.kind == "browser_mismatch" and any(chunks) else []) \
            from None
    try:  # sealed by an older version: a link it accepted may break today's rules (e.g. a lone surrogate)
        link = LinkData.model_validate(pending.link)
    except ValidationError:
        raise HostedError("link_invalid", cookies=clear) from None
    if pending.expires <= utcnow().timestamp():
        raise HostedError("session_expired", mailbox=link.email, retry_url=_retry_url(link, settings), cookies=clear)
    # From here the app's redirectUrl is known: every failure goes back there (../shared/DESIGN.md, the flow).
    try:
        redirect = _finish(pending, link, params, settings, clear)
    except AppError as exc:
        redirect = _to_app(link, exc.code, exc.description, exc.account)
    except HostedError:
        raise  # the sign-in was completed by another callback: nothing of this one to report to the app
    except Exception as exc:  # noqa: BLE001 - storage or a bug: the app gets a clear error, never a 500
        if is_transient(exc):
            log.warning("sign-in: a dependency failed (%s); the link can be retried", type(exc).__name__)
            redirect = _to_app(link, "temporarily_unavailable", "a service we depend on failed; try the link again")
        else:
            log.exception("sign-in: unexpected error")
            redirect = _to_app(link, "server_error", "the sign-in could not be completed; try the link again")
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
    """Back to the app with an error. EmailEngine keeps the person on its own page instead; apps need to know
    (README, "Back to the app"). Like the success redirect, it keeps redirectUrl's own query and ``#fragment``
    (``with_query``)."""
    params = {"error": code, "error_description": description}
    target = account or link.account
    if target:
        params["account"] = target
    params["link"] = link.nonce  # the link's id (the form's `link`), so the app knows which of its links failed
    return Redirect(with_query(link.redirectUrl, params))


def _finish(pending: flowstate.Flow, link: LinkData, params: dict[str, str], settings: Settings,
            clear: list[str]) -> Redirect:
    if params.get("error"):
        code = params["error"][:64]
        description = (params.get("error_description") or code).strip().splitlines()[0][:300]
        raise AppError(code, description)
    if not params.get("code"):
        raise AppError("invalid_request", "the sign-in response carried no authorization code")
    app = apps.get_app(pending.app_id)
    if app is None:
        raise AppError("app_unavailable", "the OAuth app of this link is no longer available")
    try:
        tokens = redeem_code(app, client_secret(app, settings), settings, pending.flow, params)
    except IdentityError as exc:
        if exc.code_already_redeemed:  # a replayed (or parallel) callback: its sign-in was done by the first
            raise HostedError("session_unknown", cookies=clear) from None
        if exc.code == "invalid_client":
            forget_client_secret(app.id)
        raise AppError(exc.code, exc.description) from None
    except (IdentityUnavailable, SecretStoreUnavailable):
        raise AppError("temporarily_unavailable", "Microsoft could not be reached; try the link again") from None
    if not tokens.refresh_token:
        raise AppError("consent_required", "Microsoft returned no refresh token (offline access was not granted)")

    claims = tokens.claims
    tid, oid = claims["tid"], claims["oid"]
    if link.delegated and not link.email:  # the form requires it for a delegated link; never signed without
        raise AppError("invalid_request", "the sign-in link names no shared mailbox")
    # Before any write: which mailbox, proven how (module docstring, "Who a mailbox belongs to"). A refused
    # mailbox leaves nothing behind and the link stays usable.
    proof = _prove_mailbox(app, tokens, link, settings)
    mailbox, upn, access = proof.mailbox, proof.upn, proof.access
    if link.expectedEmail and not proof.matches(link.expectedEmail):
        raise AppError("email_mismatch", f"signed in as {upn}, whose proven mailbox is {mailbox}, but the link "
                                         f"expects {link.expectedEmail}")
    account_id = link.account or derived_account_id(tid, mailbox)
    cred_id = credential_id(app.id, tid, oid)
    now = utcnow()
    account = Account(
        account=account_id, email=mailbox, name=link.name or claims.get("name"), delegated=link.delegated,
        appId=app.id, credentialId=cred_id, signerUpn=upn, signerTid=tid, signerOid=oid,
        signerName=claims.get("name"), created=now, updated=now,
        accessCheck=proof.access_mark, accessCheckedAt=now if proof.access_mark == "ok" else None,
        pinnedEmail=link.expectedEmail,
        # redirectUrl: where a re-authentication link of an authenticationError webhook sends the user
        meta={**link.meta, "accessCheck": access, "redirectUrl": link.redirectUrl},
    )
    # An existing account may move to this signer only under the re-binding rules: checked here, before any
    # write, and again under the row's ETag at the commit (the read is also the commit's first attempt).
    existing = accounts.get_account(account_id)
    if existing is not None and (refusal := _rebind_refusal(existing, account, proof)) is not None:
        _log_refusal(existing, account, refusal)
        raise refusal

    owner = f"{pending.state[:22]}.{secrets.token_urlsafe(9)}"  # this callback (see complete's docstring)
    try:
        claimed = links.claim(link.nonce, account_id, datetime.fromtimestamp(link.exp, UTC),
                              owner=owner, credential=cred_id)
    except Exception:
        _best_effort("release the link", links.release, link.nonce, owner)  # the insert may have landed
        raise
    if not claimed:
        _refuse_used_link(pending, link, clear)
        raise AppError("link_used", "this sign-in link was already used")  # released meanwhile: still refused
    stored: _Stored | None = None
    try:
        stored = _store_credential(app.id, cred_id, tid, oid, upn, claims.get("name"), tokens, account_id, mailbox,
                                   settings)
        state, previous = _commit(account, proof, existing)
    except BaseException as exc:
        _undo_before_commit(link.nonce, owner, cred_id, account_id, stored, settings)
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
    if stored.credential.secretName:  # keyvault mode: the secret is outside the binding's transaction
        _best_effort("check the binding", _ensure_binding, stored, account_id, mailbox, settings)
    if existing is not None and existing.state == AUTH_ERROR:
        _mark_connected(cred_id)  # the accounts of this credential that were marked work again
    signer_changed = previous is not None and events.signer_changed(previous, account)
    log.info("account %s %s (delegated=%s, access check %s%s)", account_id, state, link.delegated, access,
             f"; signer changed from {previous.signerUpn} to {upn}" if previous is not None and signer_changed
             else "")
    # What the app verifies the redirect against (GET /v1/links/{link}, shared.admin.links).
    _best_effort("mark the link completed", _complete_link, link, state, app.id)
    back = {"account": account_id, "state": state, "link": link.nonce}
    if signer_changed:  # state stays "existing" (EmailEngine clients know new|existing); the flag says more
        back["signerChanged"] = "true"
    return Redirect(with_query(link.redirectUrl, back))


def _refuse_used_link(pending: flowstate.Flow, link: LinkData, clear: list[str]) -> None:
    """Stop a callback whose link is claimed: by another callback of this same sign-in (a replay, or the same
    callback sent twice at once: the ``session_unknown`` page, as when a flow row was consumed), or by another
    sign-in of the link (``link_used`` to the app). One point read (``links.get_used``)."""
    holder = links.get_used(link.nonce)
    if holder is None:
        return
    if holder.owner.startswith(f"{pending.state[:22]}."):
        raise HostedError("session_unknown", cookies=clear)
    raise AppError("link_used", "this sign-in link was already used")


def _complete_link(link: LinkData, state: str, app_id: str) -> None:
    links.complete(link.nonce, state=state, app=app_id, link_expires=datetime.fromtimestamp(link.exp, UTC))


@dataclass(frozen=True)
class _Proof:
    """What a sign-in proved before any write: the mailbox and the signer's own addresses."""

    mailbox: str
    access: str  # the access check: ok | skipped (could not run) | off (meta.accessCheck)
    upn: str  # the signer's UPN (the directory's when Graph's /me was read)
    own: frozenset[str]  # lower-cased addresses proven to be the signer's own (expectedEmail's principal)
    how: str  # shared (the link's) | opened | verifiedEmail | directory | upn

    def matches(self, address: str) -> bool:
        """``expectedEmail``: the mailbox, or an address proven to be the signer's own (EmailEngine's meaning:
        the authenticating principal; for an own mailbox both are the same person)."""
        wanted = address.strip().lower()
        return wanted == self.mailbox.lower() or wanted in self.own

    @property
    def access_mark(self) -> AccessCheck:
        return "ok" if self.access == "ok" else "off" if self.access == "off" else "pending"


def _prove_mailbox(app: OAuthApp, tokens: Tokens, link: LinkData, settings: Settings) -> _Proof:
    """Decide the mailbox from proof (module docstring, "Who a mailbox belongs to"); raise AppError to stop.

    A shared mailbox is the link's address, proven by the access check. An own mailbox is the signer's
    primary address as the directory states it (Graph ``/me``'s ``mail``, else the ``email`` claim) when that
    is proven: verified (``xms_edov``), the UPN, or opened by the access check by that address in the
    signer's tenant. Otherwise it is the first address proven without asking anyone (the verified
    ``email``, the UPN, the directory's UPN), which the access check then opens as the signer's own mailbox.
    """
    claims, mode, label = tokens.claims, settings.access_check, link.account or "(new)"
    upn = sign_in_name(claims)
    raw_email = claims.get("email")
    email = raw_email.strip() if isinstance(raw_email, str) and "@" in raw_email else None
    verified = email.lower() if email and email_verified(claims) else None
    proven = [(a, "verifiedEmail" if a.lower() == verified else "upn") for a in proven_addresses(claims)]
    if link.delegated:
        assert link.email is not None  # checked by the caller
        access = _check_access(app, tokens, link.email, upn, True, label, settings)
        return _Proof(link.email, access, upn, frozenset(a.lower() for a, _ in proven), "shared")

    stated = email
    if app.baseScopes == "api" and mode != "off":  # only an api app's token is for Graph
        read = read_directory_record(app, tokens.access_token, settings)
        if read.record is None:  # Graph cannot say who this is: the check cannot run
            return _first_proven(proven, _unavailable(read, f"of {upn}", label, mode), upn, email)
        if read.record.id.lower() != str(claims["oid"]).lower():
            raise AppError("invalid_token", "Microsoft Graph's record of the signer is another user than the sign-in's")
        upn = read.record.user_principal_name
        proven.append((upn, "directory"))
        stated = read.record.mail or stated
    own = frozenset(a.lower() for a, _ in proven)
    if mode == "off":
        return _first_proven(proven, "off", upn, stated)
    if stated and stated.lower() not in own:  # stated only by a claim: proven only if the check opens it
        result = check_mailbox_access(app, tokens.access_token, stated, upn, settings, delegated=False,
                                      by_address=True)
        if result.outcome == OK:  # Exchange found it among the recipients of the signer's own tenant
            return _Proof(stated, "ok", upn, own | {stated.lower()}, "opened")
        if result.outcome not in (DENIED, NOT_FOUND):
            return _first_proven(proven, _unavailable(result, stated, label, mode), upn, stated)
        log.info("sign-in of %s: %s, stated only by a claim, is no mailbox this signer opens (%s); not used",
                 upn, stated, result.detail)
        if not proven:
            raise AppError(*_refusal(result.outcome, result.method, stated, upn, False))
    address, how = _pick(proven, stated, upn)
    access = _check_access(app, tokens, address, upn, False, label, settings)
    return _Proof(address, access, upn, own, how)


def _pick(proven: list[tuple[str, str]], stated: str | None, upn: str) -> tuple[str, str]:
    """The stated address when it is proven, else the first proven one; none at all refuses the sign-in."""
    for address, how in proven:
        if stated and address.lower() == stated.lower():
            return address, how
    if not proven:
        raise AppError("unverified_mailbox",
                       f"no verified address of {upn}'s mailbox: " + (f"{stated} is stated only by an unverified "
                       "claim, and " if stated else "") + "the mailbox access check could not confirm one; "
                       "try the link again")
    return proven[0]


def _first_proven(proven: list[tuple[str, str]], access: str, upn: str, stated: str | None = None) -> _Proof:
    """The own mailbox when the check did not run (``off``) or could not prove the stated address."""
    address, how = _pick(proven, stated, upn)
    return _Proof(address, access, upn, frozenset(a.lower() for a, _ in proven), how)


def _rebind_refusal(current: Account, new: Account, proof: _Proof) -> AppError | None:
    """Why ``new`` (this sign-in) may not replace ``current``, or None. The rules (module docstring): the
    account stays with its OAuth app; another signer needs the same tenant, for someone's own mailbox the
    same own mailbox, and a positive access check; an address pinned by ``expectedEmail`` must be proven by
    every sign-in."""
    if current.appId != new.appId:  # not named: the account may belong to an app this link's maker cannot see
        return AppError("app_mismatch", f"the mailbox {new.email} is connected through another OAuth app; delete "
                                        "that account first, or connect it with another account id")
    if events.signer_changed(current, new):
        if current.signerTid.lower() != new.signerTid.lower():
            return AppError("tenant_mismatch",
                            f"the account {current.account} belongs to another Microsoft 365 organisation than "
                            f"{new.signerUpn}; sign in with a user of that organisation", current.account)
        if not current.delegated and (new.delegated or new.email.lower() != current.email.lower()):
            return AppError("owner_mismatch",
                            f"the account {current.account} is the own mailbox of {current.signerUpn}; "
                            f"{new.signerUpn} cannot take it over (only its owner signs in for it again; "
                            f"connect {new.email} with another account id)", current.account)
        if proof.access != "ok":
            why = ("the mailbox access check is turned off (MC_ACCESS_CHECK=off)" if proof.access == "off"
                   else "the mailbox access check could not run; try the link again")
            return AppError("access_not_proven",
                            f"the account {current.account} is connected by {current.signerUpn}; moving it to "
                            f"{new.signerUpn} needs proof that {new.signerUpn} can open {new.email}, and {why}",
                            current.account)
    if current.pinnedEmail and not proof.matches(current.pinnedEmail):
        return AppError("email_mismatch",
                        f"the account {current.account} is pinned to {current.pinnedEmail} (the expectedEmail of "
                        f"its sign-in); signed in as {new.signerUpn}, whose proven mailbox is {new.email}",
                        current.account)
    return None


def _log_refusal(current: Account, new: Account, refusal: AppError) -> None:
    log.warning("account %s: sign-in of %s (tenant %s) refused: %s (the account is signed by %s, tenant %s)",
                current.account, new.signerUpn, new.signerTid, refusal.code, current.signerUpn, current.signerTid)


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
    return _unavailable(result, mailbox, account_id, mode)


def _unavailable(result: AccessResult, mailbox: str, account_id: str, mode: str) -> str:
    """A check that could not run: ``strict`` refuses the sign-in, ``on`` lets a new account through unproven
    (``skipped``; a re-binding is refused later by ``_rebind_refusal``)."""
    log.warning("account %s: the mailbox access check could not run over %s: %s; %s", account_id, result.method,
                result.detail, "sign-in refused (MC_ACCESS_CHECK=strict)" if mode == "strict"
                else "account stored unchecked (meta.accessCheck=skipped, accessCheck=pending)")
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
                      tokens: Tokens, account_id: str, mailbox: str, settings: Settings) -> _Stored:
    """The refresh token where ``MC_SECRET_MODE`` says (keyvault: the secret first, so a row never names a missing
    secret; envelope: sealed on the row), then the credential row and the account's index row in one
    transaction (``principals.bind``): an ``unbind`` racing it sees both or neither."""
    placement = sealed.put_secret(settings, name=principals.secret_name(cred_id), aad=principals.refresh_aad(cred_id),
                                  value=tokens.refresh_token or "")
    credential = Credential(credentialId=cred_id, appId=app_id, tid=tid, oid=oid, upn=upn, name=name,
                            scopes=tokens.scopes, secretName=placement.secretName,
                            sealedRefreshToken=placement.sealed, tokenWrittenAt=utcnow())
    etag, index_etag = principals.bind(credential, account_id, mailbox)
    return _Stored(credential, etag, index_etag, tokens.refresh_token or "")


@dataclass
class _Stored:
    credential: Credential
    etag: str | None
    index_etag: str | None
    refresh_token: str = field(repr=False)


def _ensure_binding(stored: _Stored, account_id: str, mailbox: str, settings: Settings) -> None:
    """Keyvault mode, after the commit: if the credential row changed under us, an ``unbind`` (an account delete
    or a re-bind racing this sign-in) may have deleted the secret this account now points at (the secret
    cannot join the row's transaction). Write the binding again; the account row is the truth. One point read
    when nothing happened. (Envelope mode needs none of this: the token is on the row, written with the index
    row in one transaction.)"""
    current = principals.get_credential(stored.credential.credentialId)
    if current is not None and current.etag == stored.etag:
        return
    account = accounts.get_account(account_id)
    if account is None or account.credentialId != stored.credential.credentialId:
        return  # deleted or re-bound after our commit: that writer's unbind owns the clean-up
    log.warning("account %s: its credential changed during the sign-in; writing the binding again", account_id)
    if current is None or current.secretName == stored.credential.secretName:
        get_secret_store(settings).set(stored.credential.secretName, stored.refresh_token)
    if current is None:
        principals.bind(stored.credential, account_id, mailbox)
    else:
        principals.add_account(stored.credential.credentialId, account_id, mailbox)


def _commit(account: Account, proof: _Proof, known: Account | None) -> tuple[str, Account | None]:
    """``_commit_account``, where a failure whose write may still have landed (a lost answer) is settled by
    reading the row back: our write is recognised by its ``updated`` timestamp and credential. ``known`` is
    the row read before the writes (the previous row, when the lost answer leaves no other)."""
    try:
        return _commit_account(account, proof, known, count_now=False)
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
        if current.created == account.created:
            return "new", None
        return "existing", known if known is not None and known.created == current.created else None


def _undo_before_commit(nonce: str, owner: str, cred_id: str, account_id: str, stored: _Stored | None,
                        settings: Settings) -> None:
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
        # Only the index row as we wrote it (its ETag): a sign-in of the same signer and account racing this one
        # may have written it again, and its commit needs it.
        index_etag = stored.index_etag if stored is not None else None
        _best_effort("take back the new binding", unbind, cred_id, account_id, settings, index_etag)


def _commit_account(account: Account, proof: _Proof | None = None,
                    known: Account | None = None, *, count_now: bool = True) -> tuple[str, Account | None]:
    """Insert, or replace the existing row under its ETag; retried (with a short random wait, up to
    ``COMMIT_ATTEMPTS`` times) when a concurrent write wins, then 503. The first attempt uses ``known`` (the
    row read before the writes; None: insert without reading, so a new account costs one write). ``proof``
    defaults to what the row itself says (its mailbox, signer and ``accessCheck``).

    Replacing an existing row applies the re-binding rules (``_rebind_refusal``) to the row as it is now, so
    a row that changed since ``known`` cannot slip past them; a refusal raises its AppError (the caller
    undoes its writes). An address pinned by ``expectedEmail`` is kept; an earlier positive access check of
    the same signer and mailbox is kept when this one could not run.

    The sign-in's events (``accountAdded`` + ``authenticationSuccess`` + ``accountInitialized``, or
    ``authenticationSuccess``, which reports a change of signer) are written in the same transaction as the
    row (``shared.core.events``), then published.
    """
    proven = proof or _Proof(account.email, {"ok": "ok", "off": "off"}.get(account.access_status, "skipped"),
                             account.signerUpn, frozenset({account.signerUpn.lower()}), "row")

    def change(current: Account | None) -> _Commit:
        if current is None:  # no row (yet): insert ours
            return _Commit("new", account, events.account_added_and_initialized(
                account, lambda: [events.authentication_success(account, reason="signIn", state="new")]))
        refusal = _rebind_refusal(current, account, proven)
        if refusal is not None:
            _log_refusal(current, account, refusal)
            raise refusal
        kept: dict[str, object] = {}
        if account.accessCheck == "pending" and current.access_status == "ok" and \
                not events.signer_changed(current, account) and current.email.lower() == account.email.lower():
            kept = {"accessCheck": "ok", "accessCheckedAt": current.accessCheckedAt}
        merged = account.model_copy(update={
            "created": current.created,
            "name": account.name or current.name,
            "meta": {**current.meta, **account.meta},
            "pinnedEmail": account.pinnedEmail or current.pinnedEmail,
            **kept,
        })
        merged.etag = current.etag
        return _Commit("existing", merged, [events.authentication_success(
            merged, reason="signIn", state="existing", repaired=current.state == AUTH_ERROR, previous=current)],
            current)

    def write(commit: _Commit) -> bool:
        # count_now=False (the callback, via _commit): the webhook delivery run of these events syncs the account
        # count (shared.storage.tables.accounts, "Counts"): 4 Table requests fewer here. POST /v1/account: at once.
        if commit.previous is None:
            return accounts.insert_account(commit.row, commit.events, count_now=count_now)
        return accounts.replace_account(commit.row, commit.events, count_now=count_now)

    def spread(attempt: int) -> None:  # contention: spread the retries
        time.sleep(random.uniform(0, min(0.1, 0.005 * 2 ** attempt)))

    try:
        commit = change_row(lambda: accounts.get_account(account.account), change, write,
                            attempts=COMMIT_ATTEMPTS, first=lambda: known, pause=spread)
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


def unbind(cred_id: str, account_id: str, settings: Settings, index_etag: str | None = None) -> None:
    """Remove one index row; delete the credential and its secret when no account uses it any more.

    The credential row is deleted under its ETag, so a sign-in that rewrote it meanwhile keeps it, and
    not while the account row points at this credential again. A sign-in racing this from the other
    side repairs its binding after its commit (``_ensure_binding``).
    """
    if not principals.remove_account(cred_id, account_id, index_etag):
        return  # the index row was written again by another sign-in of this account: it is theirs now
    credential = principals.get_credential(cred_id)
    if credential is None or principals.account_ids(cred_id):
        return
    current = accounts.get_account(account_id)
    if current is not None and current.credentialId == cred_id:
        # A sign-in re-bound the account to this credential after the caller read it: keep both.
        principals.add_account(cred_id, account_id, current.email)
        return
    if principals.delete_credential_row(credential):
        sealed.drop_secret(settings, credential.secretName)
