"""Finishing the proof of mailbox access after sign-in: :func:`prove_access`.

A sign-in whose mailbox access check could not run (``MC_ACCESS_CHECK=on``, IMAP or Graph unreachable) still
creates a brand-new account, marked ``accessCheck: "pending"`` (``shared.signin.flow``, "Who a mailbox belongs
to"): it works, but it cannot be moved to another signer, and the API shows that access is not proven. Whoever
next holds a fresh access token of the account's credential (the keep-alive, ``shared.handoff.keepalive``)
calls :func:`prove_access` with it; the result is recorded on the account row:

* ``ok``: the signer opened the mailbox (``accessCheck: "ok"``, ``accessCheckedAt`` now);
* ``denied`` / ``not_found``: the signer cannot open it (``accessCheck: "denied"``), e.g. Full Access removed;
* ``unavailable``: nothing is recorded; try again later.

The token must be one for the app's mailbox resource, as the token hand-off issues it for the account
(``shared.handoff.tokens.hand_off``: Outlook for ``imap`` apps, Graph for ``api`` apps). An own mailbox is
opened as the signer's own (Graph ``/me``; IMAP as the account's address), a shared one by its address.

The row is written under its ETag (retried on a concurrent change) and only while it still points at the
same credential (a re-bound account is the new signer's business). ``events_for(before, after)`` may return
webhook events (e.g. ``mailboxAccessLost`` on ok -> denied) to write in the same transaction as the change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.core import events
from shared.microsoft.access_check import DENIED, NOT_FOUND, OK, UNAVAILABLE, AccessResult, check_mailbox_access
from shared.schemas import AccessCheck
from shared.settings import Settings
from shared.storage.tables import accounts, apps
from shared.storage.tables.accounts import Account
from shared.storage.tables.concurrency import ConcurrentChange, change_row
from shared.storage.tables.records import utcnow

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.outbox import EventRow

log = logging.getLogger("mailbox_connect.access")

EventsFor = Callable[[Account, Account], Sequence["EventRow"]]


def prove_access(account: Account, access_token: str, settings: Settings, *,
                 events_for: EventsFor | None = None) -> AccessResult:
    """Check that the account's signer opens its mailbox with ``access_token``; record the outcome.

    Runs whatever ``accessCheck`` says (a caller re-checking proven accounts, as the keep-alive does, uses
    it too). Never raises for Microsoft's trouble (``unavailable``); storage errors propagate. Returns the
    check's result (``outcome``: ok, denied, not_found, unavailable).
    """
    app = apps.get_app(account.appId)
    if app is None:
        return AccessResult(UNAVAILABLE, "none", "the account's OAuth app no longer exists")
    result = check_mailbox_access(app, access_token, account.email, account.signerUpn, settings,
                                  delegated=account.delegated)
    if result.outcome == OK:
        record_access(account, "ok", events_for)
    elif result.outcome in (DENIED, NOT_FOUND):
        record_access(account, "denied", events_for)
    else:
        log.info("account %s: mailbox access still unproven (%s)", account.account, result.detail)
    return result


def record_access(account: Account, mark: AccessCheck, events_for: EventsFor | None = None) -> Account | None:
    """Write ``accessCheck = mark`` (and ``accessCheckedAt``) on the account row; None when the row is gone or
    points at another credential now. ``events_for`` as in :func:`prove_access`."""

    def change(current: Account | None) -> tuple[Account, Sequence[EventRow]] | None:
        if current is None or current.credentialId != account.credentialId:
            return None
        now = utcnow()
        after = current.model_copy(update={"accessCheck": mark, "accessCheckedAt": now})
        after.etag = current.etag
        return after, (events_for(current, after) if events_for is not None else ())

    def write(payload: tuple[Account, Sequence[EventRow]]) -> bool:
        return accounts.replace_account(*payload)

    try:
        written = change_row(lambda: accounts.get_account(account.account), change, write)
    except ConcurrentChange:
        log.warning("account %s: access check result not recorded (the row kept changing)", account.account)
        return None
    if written is None:
        return None
    after, produced = written
    if produced:
        events.publish(produced)
    if account.access_status != mark:
        log.info("account %s: mailbox access %s -> %s", account.account, account.access_status, mark)
    return after
