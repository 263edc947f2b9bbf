"""Accounts through the API (scope ``api``): list, read, update, delete, re-authenticate, and connect a shared
mailbox with the sign-in of an existing account (``POST /v1/account``).

Listing (``GET /v1/accounts``): two ways of paging on one endpoint
    *Numbered pages* (EmailEngine's; any request without ``cursor``): ``page`` (0-based, default 0) of ``pageSize``
    (1 to 1000, default 20), answered with ``total``, ``page``, ``pages`` and ``accounts``, in account-id order.
    *Cursor* (this service's scalable way): ``cursor`` = the ``nextCursor`` of an earlier answer (numbered pages
    carry one too, so a client can switch at any page), answered with ``accounts`` and ``nextCursor`` only.
    A cursor is a position in id order signed with the link-signing key (purpose ``cursor``): a Table Storage
    continuation (``{"pk", "rk"}``) or "after this id" (``{"after"}``), so a cursor the service did not issue is
    a clear 400 instead of a storage error; cursors survive restarts and a signing-key rotation during its
    grace period (``shared.storage.keys``). A cursor page may hold fewer than ``pageSize`` accounts while
    ``nextCursor`` is set (a filtered query can return short pages); only ``nextCursor: null`` means the end.

    Filters: ``state`` (EmailEngine's states; only ``connected`` and ``authenticationError`` occur here, any other
    lists nothing), ``email`` (the mailbox, exact, case-insensitive via the row's ``emailLower``) and ``query``:
    the accounts whose **id, name or mailbox address contains** the text, ignoring case (EmailEngine's
    substring match). Table Storage cannot search text, so ``query`` is applied to the rows as they are read.

    What a numbered page costs (Table Storage has neither a count nor an offset):
    * ``total`` without ``query``/``email``: the counts kept per app, shard and state
      (``shared.storage.tables.counts``): ``SHARDS`` point reads per OAuth app, in parallel, whatever the
      number of accounts. (Keeping them costs 3 round trips, 4 requests, per new account, delete or change of
      state.)
    * ``page=N``: the ``N * pageSize`` rows before it are read and skipped, keys only, 1,000 per request:
      about ``N * pageSize / 1000`` requests. A numbered page may start at most ``MAX_SCAN`` (50,000) rows in,
      else 400 ``page_too_deep``: go on with ``nextCursor`` (each cursor page costs what it returns).
    * with ``query`` or ``email``: every row matching the other filters is read (id, name and address only,
      1,000 per request) to count the matches and find the page; then the page's accounts (point reads). At
      most ``MAX_SCAN`` rows are searched, else 400 ``query_too_broad`` (narrow it with ``state``, or page with
      ``cursor``: a cursor page searches at most ``MAX_ROUNDS`` requests and may come back short).
    ``total`` is exact when it is read; accounts added or deleted between two pages shift the pages, as in
    EmailEngine.

Restricted API tokens (``shared.core.access.Caller``)
    Every operation takes the caller. An account it may not see is answered exactly like an unknown one (404).
    The listing adds the restriction to the query, whatever the query parameters or the cursor say (a cursor
    is only a position): an app restriction is an ``appId`` clause of the Table filter, and ``total`` the
    counts of those apps; an account restriction reads the token's own accounts (at most ``MAX_TOKEN_ACCOUNTS``
    point reads, in parallel), so ``total`` counts those of its list that exist (and pass the filters).

Reading (``GET /v1/account/{account}``): EmailEngine's fields (``type``: ``outlook``, or ``delegated`` for an
    account made by ``POST /v1/account`` with ``delegatedAccount`` and no ``oauth2.provider``, as EmailEngine types
    such an account; ``oauth2.provider`` = the app, ``oauth2.auth.user`` = the signer, ``delegatedUser`` = the
    shared mailbox, ``delegatedAccount`` = the account it was made from; ``lastError`` = EmailEngine's
    ``{response, description, serverResponseCode: "OauthRenewError"}`` plus ``code`` and ``at``, or null) and
    this service's (``signer``, ``accessCheck``, ``expectedEmail``, ``delegated``, ``created``, ``updated``).

Updating (``PUT``): ``name`` and the settings EmailEngine stores on an account that mean something here
    (``syncFrom``, ``notifyFrom``, ``subconnections``, ``path``, ``locale``, ``tz``; kept in ``meta``, null
    clears); EmailEngine's IMAP-sync settings (``copy``, ``logs``, ``proxy``, ``smtpEhloName``, ``imapIndexer``)
    are accepted and ignored; the mailbox, the pinned ``expectedEmail``, credentials and per-account webhooks are
    400s (``shared.schemas.AccountUpdate``). The answer is the account (``account`` first, as EmailEngine's).

Deleting (../shared/DESIGN.md, invariant 4: readers treat the account row as the truth)
    The account row is deleted first, under the ETag it was read with (the commit point: from then on the
    account is gone for every reader), then ``signin.unbind`` removes the (credential, account) index row
    and deletes the credential row and its refresh token only when no other account uses them. If that
    clean-up fails the answer is still 200 (the account is deleted) and the leftover index row is logged:
    it is harmless to readers, but keeps the credential alive until removed. A sign-in re-authorising the
    same account while it is being deleted can race the clean-up (as a re-bind in ``signin`` can); the
    account it writes then may need one more sign-in.

    ``?revoke=true`` (EmailEngine: "also revoke the provider grant"): Microsoft has no endpoint that revokes one
    app's refresh token (Entra v2 has no token revocation endpoint; Graph's ``revokeSignInSessions`` signs the
    user out of *every* app and needs an administrator's permission), so the grant at Microsoft stays until it
    lapses (90 days unused) or the user or an administrator removes the app's consent. What the service can
    do, it does on every delete: its only copy of the refresh token goes with the last account that uses it.
    With ``revoke=true`` the answer says whether that happened (``revoked``); it is false while other accounts
    still use the same sign-in (deleting one of them must not break the others, which a restricted token
    might not even see).

Connecting a shared mailbox with an existing sign-in (``POST /v1/account`` with ``oauth2.auth.delegatedAccount``)
    EmailEngine's way to add a shared mailbox without a new sign-in. The source account (visible to the caller)
    lends its credential; the new account is the shared mailbox ``delegatedUser`` (= ``email``), signed by the
    same person. The same trust rules as a sign-in (README, "Trust rules"): the mailbox access check must
    **positively** prove, with a fresh access token of that credential (``shared.handoff.tokens``: cached,
    refreshed and rotated as for a token request), that the signer opens the mailbox; a refusal is 403
    ``mailbox_access_denied``/``mailbox_not_found``, a check that cannot run 503 ``access_not_proven`` (409 when
    checks are off). Then it is written like a sign-in (``shared.signin.flow``): the index row, then the account
    row (insert, or replace an existing one under the re-binding rules: same app and tenant, never someone's own
    mailbox; a refusal is 409 with the sign-in's code), with ``accountAdded`` + ``authenticationSuccess`` (or
    ``authenticationSuccess``) in the same transaction. The answer is EmailEngine's ``{"account", "state":
    "new"|"existing"}``. A restricted token must see the source account, and the new id must be within its
    restriction (an account-restricted token must name it in ``account``). For an ``api`` app the credential
    must hold the shared-mailbox Graph scopes (``Mail.ReadWrite.Shared``...), which a delegated sign-in grants:
    409 ``consent_required`` otherwise (asking Microsoft for scopes never consented to would fail like a
    revoked grant and mark every account of the credential).

Re-authentication
    ``POST /v1/account/{account}/reauth`` returns a fresh signed link (``shared.core.links.reauth_link_for``) for
    the same account id, mailbox, ``delegated`` flag, name and OAuth app, with ``loginHint`` = the current
    signer's UPN (never the shared mailbox) and ``domainHint`` = the signer's tenant id. For an own
    mailbox the link also sets ``expectedEmail`` to the mailbox, so a different person cannot take the
    account over by picking another Microsoft account; a shared mailbox may be re-authorised by another
    delegate (the account is then re-bound to that delegate's credential, under the re-binding rules of
    ``shared.signin.flow``: same tenant, access positively proven, the app told with ``signerChanged=true``).

Webhooks
    A deletion writes the ``accountDeleted`` event in the same transaction as the row deletion
    (``shared.core.events``); a deletion that lost its ETag race writes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, get_args

from shared.checks import account_id_param
from shared.clouds import CLOUDS
from shared.core import events
from shared.core.access import Caller, account_not_found
from shared.core.links import reauth_link_for
from shared.errors import Busy, Conflict, Forbidden, InvalidInput
from shared.schemas import (
    ACCOUNT_SETTINGS,
    AccountAuth,
    AccountCreate,
    AccountCreated,
    AccountDeleted,
    AccountError,
    AccountInfo,
    AccountList,
    AccountListQuery,
    AccountOAuth2,
    AccountState,
    AccountUpdate,
    FormResponse,
    ReauthRequest,
    SignerInfo,
)
from shared.settings import Settings
from shared.signin import flow as signin
from shared.signing import BadSignature, b64url_decode, b64url_encode
from shared.storage.keys import RefreshingSigner, signer
from shared.storage.tables import accounts, apps, principals
from shared.storage.tables.accounts import AUTH_ERROR, Account
from shared.storage.tables.concurrency import ConcurrentChange, change_row
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.accounts")
MAX_ROUNDS = 5  # storage round trips to fill one cursor page of a filtered listing
MAX_SCAN = 50_000  # rows a numbered page may skip (page x pageSize) or search (query, email)
SCAN_PAGE = 1000  # rows per request when skipping or searching (Table Storage's maximum)
_STATES = frozenset(get_args(AccountState))
_META = ACCOUNT_SETTINGS  # EmailEngine settings kept in the account's meta


class MailboxRefused(Forbidden):
    """403 ``mailbox_access_denied`` / ``mailbox_not_found``: the mailbox access check refused the signer (the
    sign-in's codes for the same refusal). Not about the API token: the code says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AccessNotProven(Busy):
    """503 ``access_not_proven`` with ``Retry-After``: the mailbox access check could not run; nothing written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=30)
        self.code = "access_not_proven"


# --- views --------------------------------------------------------------------------------------------

def last_error(account: Account) -> AccountError | None:
    """EmailEngine's ``lastError`` of an account in ``authenticationError`` (its code for a failed token renewal),
    with Microsoft's error in ``code``; None otherwise."""
    if account.state != AUTH_ERROR:
        return None
    code = account.errorCode or "authentication_failed"
    description = account.errorDescription or None
    response = f"Token request failed for outlook (refresh_token): {code}" + (f" - {description}" if description
                                                                              else "")
    return AccountError(response=response, description=description, serverResponseCode="OauthRenewError",
                        code=code, at=account.errorAt)


def info(account: Account) -> AccountInfo:
    meta = {k: account.meta[k] for k in _META if account.meta.get(k) is not None}
    source = account.meta.get("delegatedAccount")
    auth = AccountAuth(user=account.signerUpn, delegatedUser=account.email if account.delegated else None,
                       delegatedAccount=source if isinstance(source, str) else None)
    return AccountInfo(
        account=account.account, type="delegated" if account.meta.get("type") == "delegated" else "outlook",
        name=account.name, email=account.email, delegated=account.delegated,
        signer=SignerInfo(upn=account.signerUpn, tenant=account.signerTid, name=account.signerName),
        app=account.appId, state=account.state, lastError=last_error(account),
        oauth2=AccountOAuth2(provider=account.appId, auth=auth), accessCheck=account.access_status,
        expectedEmail=account.pinnedEmail, created=account.created, updated=account.updated, **meta,
    )


def _get(account_id: str, caller: Caller) -> Account:
    account = accounts.get_account(account_id_param(account_id))
    return caller.visible(account, account_id)  # 404 for an unknown account and for one the caller may not see


# --- cursors ------------------------------------------------------------------------------------------

def _cursor_signer(settings: Settings) -> RefreshingSigner:
    return signer(settings, "cursor")  # "<data>.<key id>.<mac>"; old cursors "<data>.<mac>" still verify


def _signed(value: dict[str, Any], settings: Settings) -> str:
    data = b64url_encode(json.dumps(value, separators=(",", ":")).encode())
    return f"{data}.{_cursor_signer(settings).signature(data)}"


def encode_cursor(continuation: dict[str, Any], settings: Settings) -> str:
    """A cursor at a Table Storage continuation (the next row of the query to read)."""
    return _signed({"pk": continuation.get("PartitionKey"), "rk": continuation.get("RowKey")}, settings)


def encode_after(account_id: str, settings: Settings) -> str:
    """A cursor at the first account whose id sorts after ``account_id``."""
    return _signed({"after": account_id}, settings)


def _bad_cursor() -> InvalidInput:
    return InvalidInput("cursor is not a nextCursor of this service (or it expired); list again without it",
                        field="cursor", code="invalid_cursor")


def decode_cursor(cursor: str, settings: Settings) -> dict[str, str | None]:
    """``{"PartitionKey", "RowKey"}`` (a continuation) or ``{"after": id}``; a 400 for anything else."""
    bad = _bad_cursor()
    data, _, sig = cursor.partition(".")
    try:
        _cursor_signer(settings).verify(data, sig)
        value = json.loads(b64url_decode(data))
    except (BadSignature, ValueError):
        raise bad from None
    if isinstance(value, dict) and set(value) == {"after"} and isinstance(value["after"], str):
        return {"after": value["after"]}
    if not isinstance(value, dict) or set(value) != {"pk", "rk"} or \
            not all(v is None or isinstance(v, str) for v in value.values()) or value["pk"] is None:
        raise bad
    return {"PartitionKey": value["pk"], "RowKey": value["rk"]}


# --- listing ------------------------------------------------------------------------------------------

def _filter(query: AccountListQuery, caller: Caller, after: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """The Table filter of the query's server-side conditions (``query`` is matched on the rows read)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if after is not None:
        clauses.append("PartitionKey gt @after")
        params["after"] = after
    if query.state:
        clauses.append("state eq @state")
        params["state"] = query.state
    if query.email:
        clauses.append("emailLower eq @lower")
        params["lower"] = query.email.lower()
    if caller.apps is not None:  # the token's apps (at most MAX_TOKEN_APPS: Table filters allow 15 comparisons)
        names = {f"app{i}": app for i, app in enumerate(sorted(caller.apps))}
        clauses.append("( " + " or ".join(f"appId eq @{name}" for name in names) + " )")
        params.update(names)
    return (" and ".join(clauses) or None), params


def _matches(text: str | None, account_id: str, name: Any, email: Any) -> bool:
    """``query``: the text in the id, the name or the mailbox address, ignoring case (``casefold``)."""
    if not text:
        return True
    needle = text.casefold()
    return any(needle in str(value).casefold() for value in (account_id, name, email) if value)


def list_accounts(query: AccountListQuery, settings: Settings, *, caller: Caller) -> AccountList:
    numbered = query.cursor is None
    page = query.page or 0
    if query.state is not None and query.state not in _STATES:  # an EmailEngine state no account here has
        return AccountList(accounts=[], nextCursor=None, **({"total": 0, "page": page, "pages": 0} if numbered
                                                            else {}))
    if caller.accounts is not None:
        return _list_named(query, settings, caller, caller.accounts)
    if not numbered:
        return _continue(query, settings, caller)
    if query.query or query.email:
        return _search(query, settings, caller)
    return _numbered(query, settings, caller)


def _numbered(query: AccountListQuery, settings: Settings, caller: Caller) -> AccountList:
    """A numbered page without a text search: ``total`` from the counts, the rows before the page skipped."""
    page, size = query.page or 0, query.pageSize
    offset = page * size
    if offset > MAX_SCAN:
        raise InvalidInput(f"page: a numbered page starts at most {MAX_SCAN} accounts in (page x pageSize); go on "
                           "from an earlier page's nextCursor", field="page", code="page_too_deep")
    # The app list from the instance cache (at most MC_AUTH_CACHE_SECONDS old): an app registered on another
    # instance is counted within that bound, shorter than any sign-in that could give it an account.
    app_ids = sorted(caller.apps) if caller.apps is not None else [a.id for a in apps.list_apps(cached=True)]
    total = accounts.count_accounts(app_ids, query.state)
    filter_, params = _filter(query, caller)
    continuation: dict[str, Any] | None = None
    skipped, rounds, limit = 0, 0, MAX_SCAN // SCAN_PAGE + MAX_ROUNDS * 4
    while skipped < offset:
        if rounds >= limit:  # a filter so sparse that storage keeps answering empty pages
            raise InvalidInput("page: too many requests to reach this page; go on from an earlier page's "
                               "nextCursor", field="page", code="page_too_deep")
        keys, continuation = accounts.scan_page(filter_, params, min(SCAN_PAGE, offset - skipped), continuation,
                                                ["PartitionKey"])
        skipped, rounds = skipped + len(keys), rounds + 1
        if continuation is None:
            break
    found: list[Account] = []
    if offset == 0 or (skipped >= offset and continuation is not None):
        while rounds < limit:
            rows, continuation = accounts.query_page(filter_, params, size - len(found), continuation)
            found.extend(rows)
            rounds += 1
            if continuation is None or len(found) >= size:
                break
    else:
        continuation = None  # the page is past the end
    cursor = encode_cursor(continuation, settings) if continuation else None
    if found:  # a count that lags (a sync still to come) never hides a listed row
        total = max(total, offset + len(found))
    return AccountList(total=total, page=page, pages=_pages(total, size), accounts=[info(a) for a in found],
                       nextCursor=cursor)


def _pages(total: int, size: int) -> int:
    return math.ceil(total / size)


def _search(query: AccountListQuery, settings: Settings, caller: Caller) -> AccountList:
    """A numbered page with ``query`` or ``email``: the matches are counted over every candidate row."""
    page, size = query.page or 0, query.pageSize
    filter_, params = _filter(query, caller)
    matches: list[str] = []
    continuation: dict[str, Any] | None = None
    read = 0
    while True:
        rows, continuation = accounts.scan_page(filter_, params, SCAN_PAGE, continuation,
                                                ["PartitionKey", "name", "email"])
        read += len(rows)
        matches += [r["PartitionKey"] for r in rows
                    if _matches(query.query, r["PartitionKey"], r.get("name"), r.get("email"))]
        if continuation is None:
            break
        if read >= MAX_SCAN:
            raise InvalidInput(f"query: searching more than {MAX_SCAN} accounts for one numbered page; narrow it "
                               "with state, or page with cursor", field="query", code="query_too_broad")
    chosen = matches[page * size:(page + 1) * size]
    found = accounts.get_many(chosen)
    listed = [found[i] for i in chosen if i in found and caller.sees(found[i])]
    more = (page + 1) * size < len(matches)
    return AccountList(total=len(matches), page=page, pages=_pages(len(matches), size),
                       accounts=[info(a) for a in listed],
                       nextCursor=encode_after(chosen[-1], settings) if more and chosen else None)


def _continue(query: AccountListQuery, settings: Settings, caller: Caller) -> AccountList:
    """A cursor page: from the cursor's position, at most ``MAX_ROUNDS`` requests; may come back short."""
    assert query.cursor is not None
    position = decode_cursor(query.cursor, settings)
    continuation: dict[str, Any] | None = None if "after" in position else dict(position)
    filter_, params = _filter(query, caller, after=position.get("after"))
    found: list[Account] = []
    for _ in range(MAX_ROUNDS):
        try:
            rows, continuation = accounts.query_page(filter_, params, query.pageSize - len(found), continuation)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 400:
                raise _bad_cursor() from None  # storage refused a continuation we issued (e.g. table recreated)
            raise
        found.extend(r for r in rows if _matches(query.query, r.account, r.name, r.email))
        if continuation is None or len(found) >= query.pageSize:
            break
    cursor = encode_cursor(continuation, settings) if continuation else None
    return AccountList(accounts=[info(a) for a in found], nextCursor=cursor)


def _list_named(query: AccountListQuery, settings: Settings, caller: Caller, named: frozenset[str]) -> AccountList:
    """The listing of an account-restricted token: its own accounts (point reads, in parallel), in id order.
    Numbered pages count those that exist and pass the filters; a cursor is the next id to list."""
    start: str | None = None
    after: str | None = None
    if query.cursor:
        position = decode_cursor(query.cursor, settings)
        start, after = position.get("PartitionKey"), position.get("after")
    ids = sorted(i for i in named if (start is None or i >= start) and (after is None or i > after))
    found = accounts.get_many(ids)
    listed = [found[i] for i in ids if i in found and _wanted(found[i], query, caller)]
    size = query.pageSize
    if query.cursor is None:
        page = query.page or 0
        chosen = listed[page * size:(page + 1) * size]
        more = (page + 1) * size < len(listed)
        return AccountList(total=len(listed), page=page, pages=_pages(len(listed), size),
                           accounts=[info(a) for a in chosen],
                           nextCursor=encode_after(chosen[-1].account, settings) if more and chosen else None)
    chosen = listed[:size]
    cursor = encode_after(chosen[-1].account, settings) if len(listed) > size else None
    return AccountList(accounts=[info(a) for a in chosen], nextCursor=cursor)


def _wanted(account: Account, query: AccountListQuery, caller: Caller) -> bool:
    return caller.sees(account) and (query.state is None or account.state == query.state) \
        and (query.email is None or account.email.lower() == query.email.lower()) \
        and _matches(query.query, account.account, account.name, account.email)


# --- one account --------------------------------------------------------------------------------------

def get_account(account_id: str, *, caller: Caller) -> AccountInfo:
    return info(_get(account_id, caller))


def update_account(account_id: str, body: AccountUpdate, *, caller: Caller) -> AccountInfo:
    given = body.model_fields_set

    def change(current: Account) -> Account:
        meta = dict(current.meta)
        for key in _META:
            if key in given:
                value = getattr(body, key)
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
        update: dict[str, Any] = {"meta": meta, "updated": utcnow()}
        if "name" in given:
            update["name"] = body.name
        return current.model_copy(update=update)

    try:
        updated = change_row(lambda: _get(account_id, caller), change, accounts.replace_account)
    except ConcurrentChange:
        raise Busy("the account is being changed concurrently; retry", retry_after=1) from None
    assert updated is not None  # the change always writes
    return info(updated)


def delete_account(account_id: str, settings: Settings, *, caller: Caller, revoke: bool = False) -> AccountDeleted:
    try:  # the accountDeleted event is written with the deletion, in one transaction
        written = change_row(lambda: _get(account_id, caller),
                             lambda current: (current, [events.account_deleted(current)]),
                             lambda deletion: accounts.delete_account(*deletion))
    except ConcurrentChange:
        raise Busy("the account is being changed concurrently; retry", retry_after=1) from None
    assert written is not None  # the change always writes
    current, deleted = written
    events.publish(deleted)
    try:
        signin.unbind(current.credentialId, current.account, settings)
    except Exception:  # noqa: BLE001 - the account is deleted (commit point); clean-up is best effort
        log.warning("account %s deleted; its index row under credential %s could not be cleaned up",
                    current.account, current.credentialId, exc_info=True)
    log.info("account %s deleted", current.account)
    if not revoke:
        return AccountDeleted(account=current.account)
    try:
        revoked = principals.get_credential(current.credentialId) is None
    except Exception:  # noqa: BLE001 - the account is deleted; whether the grant went is unknown
        revoked = False
    return AccountDeleted(account=current.account, revoked=revoked)


def reauth_link(account_id: str, body: ReauthRequest, settings: Settings, *, caller: Caller) -> FormResponse:
    return reauth_link_for(_get(account_id, caller), body.redirectUrl, body.expiresIn, settings)


# --- POST /v1/account with oauth2.auth.delegatedAccount --------------------------------------------------

def create_delegated(body: AccountCreate, settings: Settings, *, caller: Caller) -> AccountCreated:
    """Connect the shared mailbox ``oauth2.auth.delegatedUser`` with the credential of the account
    ``oauth2.auth.delegatedAccount`` (module docstring)."""
    from shared.handoff import tokens
    from shared.microsoft.access_check import DENIED, NOT_FOUND, OK, check_mailbox_access

    auth = body.oauth2.auth
    source = caller.visible(accounts.get_account(auth.delegatedAccount), auth.delegatedAccount)
    mailbox = auth.delegatedUser
    if body.oauth2.provider is not None and body.oauth2.provider != source.appId:
        raise InvalidInput(f"oauth2.provider: the account {source.account} signs in through the OAuth app "
                           f"{source.appId}", field="oauth2.provider")
    if auth.user is not None and auth.user.strip().lower() != source.signerUpn.lower():
        raise InvalidInput(f"oauth2.auth.user: the account {source.account} is signed in by {source.signerUpn}",
                           field="oauth2.auth.user")
    if mailbox.lower() in {source.signerUpn.lower(), *([] if source.delegated else [source.email.lower()])}:
        raise InvalidInput(f"oauth2.auth.delegatedUser: {mailbox} is the own mailbox of {source.signerUpn}; it is "
                           "connected by signing in", field="oauth2.auth.delegatedUser")
    if body.expectedEmail and body.expectedEmail.lower() not in {mailbox.lower(), source.signerUpn.lower()}:
        raise Conflict("email_mismatch", f"expectedEmail: {body.expectedEmail} is neither the mailbox {mailbox} "
                                         f"nor its principal {source.signerUpn}")
    account_id = body.account or signin.derived_account_id(source.signerTid, mailbox)
    if account_id == source.account:
        raise InvalidInput(f"account: {account_id} is the account whose sign-in is used (delegatedAccount); name "
                           "another", field="account")
    if not caller.may_name(account_id):
        raise InvalidInput("account: this API token is restricted to its accounts; name one of them in account",
                           field="account")
    existing = accounts.get_account(account_id)
    if existing is not None and not caller.sees(existing):  # as for a form: the one place a taken id shows
        raise account_not_found(account_id)
    app = apps.get_app(source.appId)
    if app is None:
        raise Conflict("app_unavailable", "the OAuth app of the account no longer exists")
    credential = principals.get_credential(source.credentialId)
    if credential is None:
        raise Conflict("credential_missing", f"the sign-in of the account {source.account} is gone; sign in again "
                                             "with a link from POST /v1/account/{account}/reauth")
    now = utcnow()
    settings_given = {k: getattr(body, k) for k in _META if getattr(body, k) is not None}
    account = Account(
        account=account_id, email=mailbox, name=body.name, delegated=True, appId=source.appId,
        credentialId=source.credentialId, signerUpn=source.signerUpn, signerTid=source.signerTid,
        signerOid=source.signerOid, signerName=source.signerName, created=now, updated=now,
        accessCheck="ok", accessCheckedAt=now, pinnedEmail=body.expectedEmail,
        meta={**settings_given, "accessCheck": "ok", "delegatedAccount": source.account,
              "type": "delegated" if body.oauth2.provider is None else "outlook",
              **({"redirectUrl": source.meta["redirectUrl"]} if source.meta.get("redirectUrl") else {})},
    )
    scopes = tokens.token_scopes(app, account)
    missing = _not_granted(scopes, credential.scopes, CLOUDS[app.cloud].graph_url)
    if missing:
        raise Conflict("consent_required", f"the sign-in of {source.signerUpn} did not grant {', '.join(missing)}, "
                                           "which a shared mailbox needs; connect one shared mailbox through a "
                                           "sign-in link (delegated: true) to grant them")
    if settings.access_check == "off":
        raise Conflict("access_not_proven", f"connecting {mailbox} with the sign-in of {source.signerUpn} needs "
                                            "proof that they can open it, and the mailbox access check is turned "
                                            "off (MC_ACCESS_CHECK=off); use a sign-in link (delegated: true)")
    token = tokens.access_token_for(source, app, scopes, settings)
    result = check_mailbox_access(app, token, mailbox, source.signerUpn, settings, delegated=True)
    if result.outcome in (DENIED, NOT_FOUND):
        log.info("POST /v1/account %s: the access check refused %s for %s: %s (%s)", account_id, mailbox,
                 source.signerUpn, result.outcome, result.detail)
        code = "mailbox_not_found" if result.outcome == NOT_FOUND else "mailbox_access_denied"
        raise MailboxRefused(code, f"{source.signerUpn} cannot open the mailbox {mailbox} ({result.detail}); ask "
                                   f"an administrator to give {source.signerUpn} Full Access to it, then try again")
    if result.outcome != OK:
        raise AccessNotProven(f"access to the mailbox {mailbox} could not be checked right now ({result.detail}); "
                              "try again")
    return _commit_delegated(account, source, settings)


def _commit_delegated(account: Account, source: Account, settings: Settings) -> AccountCreated:
    """Write like a sign-in: the index row, then the account row (the commit point) with its events."""
    principals.add_account(account.credentialId, account.account, account.email)
    try:
        state, previous = signin._commit_account(account)
    except signin.AppError as exc:  # the re-binding rules refused to replace an existing account
        _take_back(account, settings)
        raise Conflict(exc.code, exc.description) from None
    except BaseException:
        _take_back(account, settings)
        raise
    if previous is not None and previous.credentialId != account.credentialId:
        try:
            signin.unbind(previous.credentialId, account.account, settings)
        except Exception:  # noqa: BLE001 - committed; a leftover index row is the sweeper's
            log.warning("account %s: the previous credential's index row could not be removed", account.account)
    if principals.get_credential(account.credentialId) is None:  # the source's last account went meanwhile
        from shared.core.account_state import mark_reauthentication_required

        mark_reauthentication_required(account.credentialId, "credential_missing",
                                       "the sign-in this account was created with was deleted meanwhile")
    log.info("account %s %s with the credential of account %s (access check ok)", account.account, state,
             source.account)
    return AccountCreated(account=account.account, state="new" if state == "new" else "existing")


def _take_back(account: Account, settings: Settings) -> None:
    """Before the commit failed: remove the index row unless the account row points at the credential."""
    try:
        current = accounts.get_account(account.account)
        if current is None or current.credentialId != account.credentialId:
            signin.unbind(account.credentialId, account.account, settings)
    except Exception:  # noqa: BLE001 - best effort; the sweeper removes leftover index rows
        log.warning("account %s: could not take back the index row after a failed commit", account.account)


def _not_granted(wanted: list[str], granted: list[str], graph_url: str) -> list[str]:
    """The scopes of ``wanted`` that ``granted`` (what Microsoft granted the credential) lacks. Entra reports
    Graph's scopes by their short names (``Mail.Read``), other resources' with theirs (``https://.../IMAP...``)."""
    def short(scope: str) -> str:
        scope = scope.strip().lower()
        prefix = graph_url.rstrip("/").lower() + "/"
        return scope[len(prefix):] if scope.startswith(prefix) else scope

    have = {short(s) for s in granted}
    if not have:  # a credential row written before scopes were recorded: let Microsoft decide
        return []
    return [s for s in wanted if short(s) not in have]
