"""Lifecycle events: what happened to an account, recorded with the change itself (the outbox).

Producers (the sign-in, the token hand-off and keep-alive, account deletion) build events here and hand
them to the repository call that writes the account row (``shared.storage.tables.accounts``): the event rows go
into the account's partition in the **same transaction** as the row change, so an event exists exactly
when its change committed, and writing it cannot fail the request on its own. After the commit the
producer calls :func:`publish` (the fast path: index rows in the ``outbox`` table), which never raises.
Delivery is ``shared.webhooks.dispatcher``' business.

Events (``event``; names as EmailEngine's where it has the event):

``accountAdded``
    A sign-in created a new account. ``data``: ``account``, ``name``, ``email``, ``delegated``, ``app``,
    ``signer`` (``upn``, ``tenant``).
``accountInitialized``
    EmailEngine sends it when a new account is ready to use (after its first sync); clients wait for it. This
    service has no sync: an account is ready when its row commits, so the event is written in that same
    transaction, after ``accountAdded`` (and after the sign-in's ``authenticationSuccess``, EmailEngine's order):
    :func:`account_added_and_initialized`. ``data``: ``initialized: true`` (as EmailEngine), ``account``,
    ``email``, ``delegated``.
``authenticationSuccess``
    A sign-in completed (new or existing account), or a credential works again. ``data``: ``user`` (the
    mailbox), ``state`` (``new``/``existing``, sign-ins only), ``reason`` (``signIn``: this account's
    sign-in; ``credentialRepaired``: the signer signed in for another mailbox, or a token refresh worked
    again; ``mailboxAccessRestored``: after ``mailboxAccessLost``, the access check passes again), ``repaired``
    (the account was in ``authenticationError``, or had lost access, before), ``delegated``, ``signer``.
    Sign-ins also carry ``signerChanged`` (bool): true when the sign-in moved an existing account to another
    Microsoft user (``shared.signin.flow``, "Who a mailbox belongs to"); then ``signerChange`` says from whom to
    whom: ``{"from": {upn, tenant, oid}, "to": {upn, tenant, oid}}``, and ``previousEmail``/``previousDelegated``
    when the mailbox or its kind changed with it.
``authenticationError``
    The account's credential stopped working; sent once per account, on the transition into
    ``authenticationError`` (not on every failed refresh). ``data``: ``user``, ``response`` (Microsoft's
    error description), ``serverResponseCode`` (EmailEngine's classification: ``OauthRenewError``, the token
    could not be renewed), ``errorCode`` (Microsoft's OAuth error, e.g. ``invalid_grant``, or
    ``credential_missing``: the account rows' and the token hand-off's field of the same name), ``signer``,
    ``accounts`` (every account of the same credential, all affected), and, added at delivery,
    ``reauthUrl``/``reauthExpires``: a sign-in link that repairs this account (see ``shared.webhooks.dispatcher``).
``accountDeleted``
    ``DELETE /v1/account/{account}``. ``data``: ``account``, ``user``.
``mailboxAccessLost``
    The keep-alive's re-run of the mailbox access check (``shared.handoff.keepalive``) was refused: the signer
    can no longer open the mailbox (Full Access removed, the mailbox deleted, IMAP disabled), although the
    credential still works. Sent once, on the transition into ``accessCheck: "denied"``. ``data``: ``user``,
    ``delegated``, ``signer``, ``serverResponseCode`` (``mailbox_access_denied``), ``response`` (what to ask an
    administrator), ``previous`` (the ``accessCheck`` before: ``ok``, ``pending`` or ``off``). When access comes
    back, ``authenticationSuccess`` with ``reason: mailboxAccessRestored`` and ``repaired: true`` follows, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, get_args

from shared.schemas import EventType
from shared.storage.tables import outbox
from shared.storage.tables.accounts import Account
from shared.storage.tables.outbox import EventRow, new_event_id
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.events")

ACCOUNT_ADDED: Final[EventType] = "accountAdded"
ACCOUNT_INITIALIZED: Final[EventType] = "accountInitialized"
AUTHENTICATION_SUCCESS: Final[EventType] = "authenticationSuccess"
AUTHENTICATION_ERROR: Final[EventType] = "authenticationError"
ACCOUNT_DELETED: Final[EventType] = "accountDeleted"
MAILBOX_ACCESS_LOST: Final[EventType] = "mailboxAccessLost"
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# EmailEngine's serverResponseCode of a failed token renewal (the token hand-off's 403 has the same ``code``)
OAUTH_RENEW_ERROR: Final = "OauthRenewError"


def _event(kind: EventType, account_id: str, data: dict[str, Any]) -> EventRow:
    return EventRow(id=new_event_id(), event=kind, account=account_id, date=utcnow(), data=data)


def _signer(account: Account) -> dict[str, Any]:
    return {"upn": account.signerUpn, "tenant": account.signerTid}


def account_added(account: Account) -> EventRow:
    return _event(ACCOUNT_ADDED, account.account, {
        "account": account.account, "name": account.name, "email": account.email,
        "delegated": account.delegated, "app": account.appId, "signer": _signer(account),
    })


def account_initialized(account: Account) -> EventRow:
    return _event(ACCOUNT_INITIALIZED, account.account, {
        "initialized": True, "account": account.account, "email": account.email, "delegated": account.delegated,
    })


def account_added_and_initialized(account: Account,
                                  between: Callable[[], Sequence[EventRow]] = tuple) -> list[EventRow]:
    """The events of a new account, to write in the transaction that inserts its row: ``accountAdded``, then
    the events ``between()`` makes (a sign-in's ``authenticationSuccess``), then ``accountInitialized`` (the
    account is usable once its row commits; see the module docstring). Every producer of a new account uses
    this. ``between`` is called in the middle because event ids sort by creation: receivers order by them."""
    added = account_added(account)
    middle = list(between())
    return [added, *middle, account_initialized(account)]


def _principal(account: Account) -> dict[str, Any]:
    return {"upn": account.signerUpn, "tenant": account.signerTid, "oid": account.signerOid}


def signer_changed(before: Account, after: Account) -> bool:
    """Whether ``after`` is signed by another Microsoft user than ``before`` (tenant + object id)."""
    return (before.signerTid.lower(), before.signerOid.lower()) != (after.signerTid.lower(), after.signerOid.lower())


def authentication_success(account: Account, *, reason: str, state: str | None = None,
                           repaired: bool = False, previous: Account | None = None) -> EventRow:
    """``previous``: the row a sign-in replaced (sign-ins only), to report a change of signer."""
    data: dict[str, Any] = {"user": account.email, "reason": reason, "repaired": repaired,
                            "delegated": account.delegated, "signer": _signer(account)}
    if state:
        data["state"] = state
        data["signerChanged"] = previous is not None and signer_changed(previous, account)
    if previous is not None and data.get("signerChanged"):
        data["signerChange"] = {"from": _principal(previous), "to": _principal(account)}
        if previous.email.lower() != account.email.lower():
            data["previousEmail"] = previous.email
        if previous.delegated != account.delegated:
            data["previousDelegated"] = previous.delegated
    return _event(AUTHENTICATION_SUCCESS, account.account, data)


def authentication_error(account: Account, code: str, description: str, affected: Sequence[str]) -> EventRow:
    """``code``: Microsoft's OAuth error (``errorCode``); ``serverResponseCode`` is EmailEngine's classification."""
    return _event(AUTHENTICATION_ERROR, account.account, {
        "user": account.email, "response": description, "serverResponseCode": OAUTH_RENEW_ERROR, "errorCode": code,
        "delegated": account.delegated, "signer": _signer(account), "accounts": list(affected),
    })


def mailbox_access_lost(account: Account, previous: str) -> EventRow:
    """``previous``: the account's ``accessCheck`` before the refusal (ok, pending, off)."""
    ask = (f"ask an administrator to give {account.signerUpn} Full Access to {account.email} again"
           if account.delegated else f"ask an administrator to check the mailbox of {account.signerUpn}")
    return _event(MAILBOX_ACCESS_LOST, account.account, {
        "user": account.email, "delegated": account.delegated, "signer": _signer(account),
        "serverResponseCode": "mailbox_access_denied", "previous": previous,
        "response": f"{account.signerUpn} can no longer open the mailbox {account.email}; {ask}",
    })


def account_deleted(account: Account) -> EventRow:
    return _event(ACCOUNT_DELETED, account.account, {"account": account.account, "user": account.email})


def publish(events: Sequence[EventRow]) -> None:
    """The fast path, after the commit: index rows, so the next delivery run finds the events at once.

    Never raises. A lost write delays the events until the sweeper's scan finds their rows (minutes).
    """
    if not events:
        return
    try:
        outbox.add_index(list(events))
    except Exception as exc:  # noqa: BLE001 - the events are committed; the sweeper will find them
        log.warning("outbox index of %d event(s) not written (%s); the sweeper will pick them up",
                    len(events), type(exc).__name__)
