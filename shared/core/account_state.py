"""Account state shared by the sign-in and the hand-off: ``connected`` and ``authenticationError``.

A change of state writes its webhook event in the same transaction as the account row
(``shared.core.events``): into ``authenticationError`` once (not on every failed refresh), back to
``connected`` as ``authenticationSuccess`` with ``reason: credentialRepaired``. Rows are changed under their
ETag, re-read on conflict, and only while the account is still bound to the credential in question.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.core import events
from shared.storage.tables import accounts, principals
from shared.storage.tables.accounts import AUTH_ERROR, CONNECTED, Account
from shared.storage.tables.concurrency import ConcurrentChange, change_row
from shared.storage.tables.outbox import EventRow
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.tokens")


def mark_reauthentication_required(credential_id: str, code: str, description: str,
                                   also: tuple[str, ...] = ()) -> int:
    """Set ``authenticationError`` on every account of the credential; returns how many rows changed."""
    now = utcnow()

    def change(account: Account) -> Account | None:
        if account.state == AUTH_ERROR and account.errorCode == code:
            return None  # already marked: keep the first errorAt
        return account.model_copy(update={
            "state": AUTH_ERROR, "errorCode": code, "errorDescription": description,
            "errorAt": account.errorAt if account.state == AUTH_ERROR and account.errorAt else now,
            "updated": now,
        })

    ids = list(dict.fromkeys([*principals.account_ids(credential_id), *also]))

    def event(before: Account, after: Account) -> EventRow | None:
        # Once per account, on the transition: a credential failing again and again sends nothing new.
        return None if before.state == AUTH_ERROR else events.authentication_error(after, code, description, ids)

    changed = sum(update_account(account_id, credential_id, change, event) for account_id in ids)
    principals.flag_broken(credential_id, code)  # so the next sign-in knows to repair the other accounts
    return changed


def mark_connected(credential_id: str) -> int:
    """Flip every ``authenticationError`` account of the credential back to ``connected``.

    Best effort and never raises: call it after a successful sign-in (the sign-in rewrote the refresh
    token, so the credential works again for every mailbox it reaches). A failure is logged; the token
    endpoint heals such accounts itself on their next request. Returns how many accounts changed.
    """
    now = utcnow()

    def change(account: Account) -> Account | None:
        if account.state != AUTH_ERROR:
            return None
        return account.model_copy(update={"state": CONNECTED, "errorCode": None, "errorDescription": None,
                                          "errorAt": None, "updated": now})

    def event(before: Account, after: Account) -> EventRow:
        return events.authentication_success(after, reason="credentialRepaired", repaired=True)

    try:
        principals.clear_broken(credential_id)
        return sum(update_account(account_id, credential_id, change, event)
                   for account_id in principals.account_ids(credential_id))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not mark the accounts of credential %s connected: %s", credential_id, type(exc).__name__)
        return 0


def update_account(account_id: str, credential_id: str, change: Callable[[Account], Account | None],
            event: Callable[[Account, Account], EventRow | None] | None = None) -> bool:
    """Apply ``change`` to the account row under its ETag, re-reading on conflict; False when unchanged.

    ``event(before, after)`` may return the webhook event of the change: it is written in the same
    transaction as the row (``shared.core.events``) and published after it.
    """
    def changed(account: Account | None) -> tuple[Account, list[EventRow]] | None:
        if account is None or account.credentialId != credential_id:
            return None  # deleted, or re-bound to another signer: not this credential's business
        updated = change(account)
        if updated is None:
            return None
        updated.etag = account.etag
        return updated, [e for e in [event(account, updated) if event else None] if e is not None]

    try:
        written = change_row(lambda: accounts.get_account(account_id), changed,
                             lambda row: accounts.replace_account(*row))
    except ConcurrentChange:
        log.warning("account %s kept changing; its state was not updated", account_id)
        return False
    if written is None:
        return False
    events.publish(written[1])
    return True
