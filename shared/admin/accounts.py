"""Accounts through the API (scope ``api``): list, read, rename, delete, re-authenticate.

Listing
    ``GET /v1/accounts`` pages over Table Storage continuation tokens in account-id order. ``nextCursor``
    is the continuation, base64url JSON signed with the link-signing key (purpose ``cursor``), so a cursor
    the service did not issue is a clear 400 instead of a storage error; cursors survive restarts but not
    a signing-key rotation. A page may hold fewer than ``pageSize`` accounts while ``nextCursor`` is set
    (a filtered query can return short pages); only ``nextCursor: null`` means the end. Filters: ``state``
    and ``email`` (the mailbox, compared case-insensitively through the row's ``emailLower``).

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
    delegate (the account is then re-bound to that delegate's credential).

Webhooks
    A deletion writes the ``accountDeleted`` event in the same transaction as the row deletion
    (``shared.core.events``); a deletion that lost its ETag race writes nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shared.checks import account_id_param
from shared.core import events
from shared.core.links import reauth_link_for
from shared.errors import Busy, InvalidInput, NotFound
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
from shared.signing import BadSignature, Signer, b64url_decode, b64url_encode
from shared.storage.keys import signing_key
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
        app=account.appId, state=account.state, lastError=last_error, created=account.created,
        updated=account.updated, **meta,
    )


def _get(account_id: str) -> Account:
    account = accounts.get_account(account_id_param(account_id))
    if account is None:
        raise NotFound(f"no account with id {account_id!r}")
    return account


# --- cursors ------------------------------------------------------------------------------------------

def _cursor_signer(settings: Settings) -> Signer:
    return Signer(signing_key(settings), "cursor")


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

def _filter(query: AccountListQuery) -> tuple[str | None, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if query.state:
        clauses.append("state eq @state")
        params["state"] = query.state
    if query.email:
        clauses.append("emailLower eq @lower")
        params["lower"] = query.email.lower()
    return (" and ".join(clauses) or None), params


def list_accounts(query: AccountListQuery, settings: Settings) -> AccountList:
    continuation = decode_cursor(query.cursor, settings) if query.cursor else None
    filter_, params = _filter(query)
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


def get_account(account_id: str) -> AccountInfo:
    return info(_get(account_id))


def update_account(account_id: str, body: AccountUpdate) -> AccountInfo:
    try:
        updated = change_row(lambda: _get(account_id),
                             lambda current: current.model_copy(update={"name": body.name, "updated": utcnow()}),
                             accounts.replace_account)
    except ConcurrentChange:
        raise Busy("the account is being changed concurrently; retry", retry_after=1) from None
    assert updated is not None  # the change always writes
    return info(updated)


def delete_account(account_id: str, settings: Settings) -> AccountDeleted:
    try:  # the accountDeleted event is written with the deletion, in one transaction
        written = change_row(lambda: _get(account_id), lambda current: (current, [events.account_deleted(current)]),
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


def reauth_link(account_id: str, body: ReauthRequest, settings: Settings) -> FormResponse:
    return reauth_link_for(_get(account_id), body.redirectUrl, body.expiresIn, settings)
