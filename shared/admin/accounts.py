"""Accounts through the API (scope ``api``): list, read, rename, delete, re-authenticate.

Listing
    ``GET /v1/accounts`` pages over Table Storage continuation tokens in account-id order. ``nextCursor``
    is the continuation, base64url JSON signed with the link-signing key (purpose ``cursor``), so a cursor
    the service did not issue is a clear 400 instead of a storage error; cursors survive restarts, and a
    signing-key rotation during its grace period (``shared.storage.keys``). A page may hold fewer than
    ``pageSize`` accounts while ``nextCursor`` is set (a filtered query can return short pages); only
    ``nextCursor: null`` means the end. Filters: ``state`` and ``email`` (the mailbox, compared
    case-insensitively through the row's ``emailLower``).

Deleting (../shared/DESIGN.md, invariant 4: readers treat the account row as the truth)
    The account row is deleted first, under the ETag it was read with (the commit point: from then on the
    account is gone for every reader), then ``signin.unbind`` removes the (credential, account) index row
    and deletes the credential row and its refresh token only when no other account uses them. If that
    clean-up fails the answer is still 200 (the account is deleted) and the leftover index row is logged:
    it is harmless to readers, but keeps the credential alive until removed. A sign-in re-authorising the
    same account while it is being deleted can race the clean-up (as a re-bind in ``signin`` can); the
    account it writes then may need one more sign-in.

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

Restricted API tokens (``shared.core.access.Caller``)
    Every operation takes the caller. An account it may not see is answered exactly like an unknown one
    (404). The listing adds the restriction to the query, whatever the query parameters or the cursor say
    (a cursor is only a position): an app restriction is an ``appId`` clause of the Table filter; an account
    restriction lists the token's own account ids in order, one point read each (at most
    ``MAX_TOKEN_ACCOUNTS``), with ``state``/``email`` applied to the rows read, and the same kind of cursor
    (the next account id to read).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shared.checks import account_id_param
from shared.core import events
from shared.core.access import Caller
from shared.core.links import reauth_link_for
from shared.errors import Busy, InvalidInput
from shared.schemas import (
    AccountDeleted,
    AccountError,
    AccountInfo,
    AccountList,
    AccountListQuery,
    AccountUpdate,
    FormResponse,
    ReauthRequest,
    SignerInfo,
)
from shared.settings import Settings
from shared.signin import flow as signin
from shared.signing import BadSignature, b64url_decode, b64url_encode
from shared.storage.keys import RefreshingSigner, signer
from shared.storage.tables import accounts
from shared.storage.tables.accounts import AUTH_ERROR, Account
from shared.storage.tables.concurrency import ConcurrentChange, change_row
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.accounts")
MAX_ROUNDS = 5  # storage round trips to fill one page of a filtered listing
_META = ("syncFrom", "notifyFrom", "subconnections", "path")


# --- views --------------------------------------------------------------------------------------------

def info(account: Account) -> AccountInfo:
    last_error = None
    if account.state == AUTH_ERROR:
        last_error = AccountError(code=account.errorCode or "authentication_failed",
                                  description=account.errorDescription, at=account.errorAt)
    meta = {k: account.meta[k] for k in _META if account.meta.get(k) is not None}
    return AccountInfo(
        account=account.account, name=account.name, email=account.email, delegated=account.delegated,
        signer=SignerInfo(upn=account.signerUpn, tenant=account.signerTid, name=account.signerName),
        app=account.appId, state=account.state, lastError=last_error, accessCheck=account.access_status,
        expectedEmail=account.pinnedEmail, created=account.created, updated=account.updated, **meta,
    )


def _get(account_id: str, caller: Caller) -> Account:
    account = accounts.get_account(account_id_param(account_id))
    return caller.visible(account, account_id)  # 404 for an unknown account and for one the caller may not see


# --- cursors ------------------------------------------------------------------------------------------

def _cursor_signer(settings: Settings) -> RefreshingSigner:
    return signer(settings, "cursor")  # "<data>.<key id>.<mac>"; old cursors "<data>.<mac>" still verify


def encode_cursor(continuation: dict[str, Any], settings: Settings) -> str:
    data = b64url_encode(json.dumps({"pk": continuation.get("PartitionKey"), "rk": continuation.get("RowKey")},
                                    separators=(",", ":")).encode())
    return f"{data}.{_cursor_signer(settings).signature(data)}"


def _bad_cursor() -> InvalidInput:
    return InvalidInput("cursor is not a nextCursor of this service (or it expired); list again without it",
                        field="cursor", code="invalid_cursor")


def decode_cursor(cursor: str, settings: Settings) -> dict[str, str | None]:
    bad = _bad_cursor()
    data, _, sig = cursor.partition(".")
    try:
        _cursor_signer(settings).verify(data, sig)
        value = json.loads(b64url_decode(data))
    except (BadSignature, ValueError):
        raise bad from None
    if not isinstance(value, dict) or set(value) != {"pk", "rk"} or \
            not all(v is None or isinstance(v, str) for v in value.values()) or value["pk"] is None:
        raise bad
    return {"PartitionKey": value["pk"], "RowKey": value["rk"]}


# --- operations ---------------------------------------------------------------------------------------

def _filter(query: AccountListQuery, caller: Caller) -> tuple[str | None, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
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


def list_accounts(query: AccountListQuery, settings: Settings, *, caller: Caller) -> AccountList:
    if caller.accounts is not None:
        return _list_named(query, settings, caller, caller.accounts)
    continuation = decode_cursor(query.cursor, settings) if query.cursor else None
    filter_, params = _filter(query, caller)
    found: list[Account] = []
    for _ in range(MAX_ROUNDS):
        try:
            rows, continuation = accounts.query_page(filter_, params, query.pageSize - len(found), continuation)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 400 and query.cursor:
                raise _bad_cursor() from None  # storage refused a continuation we issued (e.g. table recreated)
            raise
        found.extend(rows)
        if continuation is None or len(found) >= query.pageSize:
            break
    cursor = encode_cursor(continuation, settings) if continuation else None
    return AccountList(accounts=[info(a) for a in found], nextCursor=cursor)


def _list_named(query: AccountListQuery, settings: Settings, caller: Caller, named: frozenset[str]) -> AccountList:
    """The listing of an account-restricted token: its own account ids in order, one point read each; the
    cursor is the next id to read (signed like every cursor)."""
    start = decode_cursor(query.cursor, settings)["PartitionKey"] if query.cursor else None
    ids = sorted(i for i in named if start is None or i >= start)
    found: list[Account] = []
    for index, account_id in enumerate(ids):
        account = accounts.get_account(account_id)
        if account is not None and caller.sees(account) and (query.state is None or account.state == query.state) \
                and (query.email is None or account.email.lower() == query.email.lower()):
            found.append(account)
        if len(found) >= query.pageSize:
            following = ids[index + 1:]
            cursor = encode_cursor({"PartitionKey": following[0]}, settings) if following else None
            return AccountList(accounts=[info(a) for a in found], nextCursor=cursor)
    return AccountList(accounts=[info(a) for a in found], nextCursor=None)


def get_account(account_id: str, *, caller: Caller) -> AccountInfo:
    return info(_get(account_id, caller))


def update_account(account_id: str, body: AccountUpdate, *, caller: Caller) -> AccountInfo:
    try:
        updated = change_row(lambda: _get(account_id, caller),
                             lambda current: current.model_copy(update={"name": body.name, "updated": utcnow()}),
                             accounts.replace_account)
    except ConcurrentChange:
        raise Busy("the account is being changed concurrently; retry", retry_after=1) from None
    assert updated is not None  # the change always writes
    return info(updated)


def delete_account(account_id: str, settings: Settings, *, caller: Caller) -> AccountDeleted:
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
    return AccountDeleted(account=current.account)


def reauth_link(account_id: str, body: ReauthRequest, settings: Settings, *, caller: Caller) -> FormResponse:
    return reauth_link_for(_get(account_id, caller), body.redirectUrl, body.expiresIn, settings)
