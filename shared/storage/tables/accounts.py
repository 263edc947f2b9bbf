"""Accounts: one row per account id (partition = account id, RowKey ""). The account row is the commit point.

The partition also holds the account's undelivered event rows (RowKey ``event:<id>``, see
``shared.storage.tables.outbox``), written in the same transaction as the account row change that caused them;
listings select ``RowKey eq ''``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pydantic import computed_field

from shared.schemas import AccessCheck, AccountState
from shared.storage.errors import Conflict, NotFound, storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import (
    Record,
    delete_if_unchanged,
    get_or_none,
    query,
    update_if_unchanged,
)

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.outbox import EventRow

TABLE = "accounts"
CONNECTED: Final[AccountState] = "connected"
AUTH_ERROR: Final[AccountState] = "authenticationError"


class Account(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("meta",)
    account: str
    email: str  # the mailbox: the signer's own address, or the shared mailbox for delegated accounts
    name: str | None = None
    delegated: bool = False
    appId: str
    credentialId: str
    signerUpn: str
    signerTid: str
    signerOid: str
    signerName: str | None = None
    state: AccountState = CONNECTED
    errorCode: str | None = None
    errorDescription: str | None = None
    errorAt: datetime | None = None
    # Trust (shared/signin/flow.py, "Who a mailbox belongs to"): whether the signer was proven to open the
    # mailbox (None: a row written before the field, see ``access_status``) and when that was last decided,
    # and the address pinned by a sign-in's expectedEmail (every later sign-in for the account must prove it).
    accessCheck: AccessCheck | None = None
    accessCheckedAt: datetime | None = None
    pinnedEmail: str | None = None
    meta: dict[str, Any] = {}
    created: datetime
    updated: datetime

    @property
    def access_status(self) -> AccessCheck:
        """``accessCheck``, or for an older row its ``meta.accessCheck`` (ok, skipped, off) translated."""
        if self.accessCheck is not None:
            return self.accessCheck
        old = self.meta.get("accessCheck")
        return "ok" if old == "ok" else "off" if old == "off" else "pending"

    @computed_field  # type: ignore[prop-decorator]  # stored with the row: the e-mail filter is an OData ``eq``
    @property
    def emailLower(self) -> str:
        return self.email.lower()


def get_account(account_id: str) -> Account | None:
    entity = get_or_none(table(TABLE), account_id, "")
    return None if entity is None else Account.from_entity(entity)


def insert_account(account: Account, events: Sequence[EventRow] = ()) -> bool:
    """True when created; False when the id exists already (the caller then updates it).

    ``events`` (``shared.storage.tables.outbox``) are written in the same transaction: all rows or none.
    """
    try:
        with storage_errors():
            if events:
                _transaction([("create", account.to_entity(account.account))], events)
            else:
                table(TABLE).create_entity(account.to_entity(account.account))
    except Conflict:
        return False
    return True


def replace_account(account: Account, events: Sequence[EventRow] = ()) -> bool:
    """Replace the row read as ``account`` (its etag); False when someone else changed it meanwhile.

    ``events`` are written in the same transaction (they share the account's partition).
    """
    if not events:
        return update_if_unchanged(table(TABLE), account.to_entity(account.account), account.etag) is not None
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    try:
        with storage_errors():
            _transaction([("update", account.to_entity(account.account),
                           {"mode": UpdateMode.REPLACE, "etag": account.etag,
                            "match_condition": MatchConditions.IfNotModified})], events)
    except (Conflict, NotFound):  # the ETag lost (412) or the row went away (404)
        return False
    return True


def _transaction(operations: list[tuple], events: Sequence[EventRow]) -> None:
    """One entity-group transaction: the account row's operation and its event rows (same partition)."""
    table(TABLE).submit_transaction([*operations, *(("create", e.entity()) for e in events)])


# --- management API: paged queries and deletion ---------------------------------------------------------

def query_page(filter: str | None, parameters: dict[str, Any], page_size: int,
               continuation: dict[str, Any] | None) -> tuple[list[Account], dict[str, Any] | None]:
    """One service page (at most ``page_size`` rows, maybe fewer or none) and the continuation of the next.

    Rows come in account-id order (the partition key). A row that no longer parses is skipped and logged,
    so one bad row cannot break a listing.
    """
    import logging

    client = table(TABLE)
    # Account rows only: event rows (shared.storage.tables.outbox) share the partitions, under other row keys.
    # (Spaces around the parentheses: the SDK substitutes @parameters word by word.)
    where = f"RowKey eq '' and ( {filter} )" if filter else "RowKey eq ''"
    pager: Any = client.query_entities(where, parameters=parameters, results_per_page=page_size)
    pages = pager.by_page(continuation_token=continuation)  # Tables' continuation tokens are dicts
    with storage_errors():
        page: Any = next(pages, [])  # the one service call
    rows: list[Account] = []
    for entity in page:
        try:
            rows.append(Account.from_entity(entity))
        except ValueError:
            logging.getLogger("mailbox_connect.tables").warning("account row %r does not parse; skipped",
                                                                entity.get("PartitionKey"))
    return rows, pages.continuation_token or None


def first_account_of_app(app_id: str) -> str | None:
    """The id of one account that uses the app, or None (a filtered scan; fine for rare admin calls)."""
    rows = query(table(TABLE), "RowKey eq '' and appId eq @app", parameters={"app": app_id}, select=["account"],
                 results_per_page=1)
    for row in rows:
        return str(row.get("account") or "")
    return None


def delete_account(account: Account, events: Sequence[EventRow] = ()) -> bool:
    """Delete the row read as ``account`` (its etag); False when it changed or went away meanwhile.

    ``events`` are written in the same transaction (they stay in the partition until delivered).
    """
    if not events:
        return delete_if_unchanged(table(TABLE), account.account, "", account.etag)
    from azure.core import MatchConditions

    try:
        with storage_errors():
            _transaction([("delete", {"PartitionKey": account.account, "RowKey": ""},
                           {"etag": account.etag, "match_condition": MatchConditions.IfNotModified})], events)
    except (Conflict, NotFound):  # the ETag lost (412) or the row went away (404)
        return False
    return True
