"""Accounts: one row per account id (partition = account id, RowKey ""). The account row is the commit point.

The partition also holds the account's undelivered event rows (RowKey ``event:<id>``, see
``shared.storage.tables.outbox``), written in the same transaction as the account row change that caused them;
listings select ``RowKey eq ''``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Sequence

from pydantic import computed_field

from shared.storage.tables.client import table
from shared.storage.tables.records import Record, is_conflict, is_missing, is_precondition_failed

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.outbox import EventRow

TABLE = "accounts"
CONNECTED = "connected"
AUTH_ERROR = "authenticationError"


class Account(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("meta",)
    account: str
    email: str  # the mailbox: the signer's own address, or the shared mailbox for delegated accounts
    name: Optional[str] = None
    delegated: bool = False
    appId: str
    credentialId: str
    signerUpn: str
    signerTid: str
    signerOid: str
    signerName: Optional[str] = None
    state: str = CONNECTED
    errorCode: Optional[str] = None
    errorDescription: Optional[str] = None
    errorAt: Optional[datetime] = None
    meta: dict[str, Any] = {}
    created: datetime
    updated: datetime

    @computed_field  # stored with the row, so the e-mail filter can be an OData ``eq`` on it
    @property
    def emailLower(self) -> str:
        return self.email.lower()


def get_account(account_id: str) -> Optional[Account]:
    try:
        return Account.from_entity(table(TABLE).get_entity(account_id, ""))
    except Exception as exc:
        if is_missing(exc):
            return None
        raise


def insert_account(account: Account, events: Sequence["EventRow"] = ()) -> bool:
    """True when created; False when the id exists already (the caller then updates it).

    ``events`` (``shared.storage.tables.outbox``) are written in the same transaction: all rows or none.
    """
    try:
        if events:
            _transaction([("create", account.to_entity(account.account))], events)
        else:
            table(TABLE).create_entity(account.to_entity(account.account))
    except Exception as exc:
        if is_conflict(exc) or _code(exc) == "EntityAlreadyExists":
            return False
        raise
    return True


def replace_account(account: Account, events: Sequence["EventRow"] = ()) -> bool:
    """Replace the row read as ``account`` (its etag); False when someone else changed it meanwhile.

    ``events`` are written in the same transaction (they share the account's partition).
    """
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    try:
        if events:
            _transaction([("update", account.to_entity(account.account),
                           {"mode": UpdateMode.REPLACE, "etag": account.etag,
                            "match_condition": MatchConditions.IfNotModified})], events)
        else:
            table(TABLE).update_entity(account.to_entity(account.account), mode=UpdateMode.REPLACE,
                                       etag=account.etag, match_condition=MatchConditions.IfNotModified)
    except Exception as exc:
        if is_precondition_failed(exc) or _lost_race(exc):
            return False
        raise
    return True


def _transaction(operations: list[tuple], events: Sequence["EventRow"]) -> None:
    """One entity-group transaction: the account row's operation and its event rows (same partition)."""
    table(TABLE).submit_transaction([*operations, *(("create", e.entity()) for e in events)])


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _lost_race(exc: BaseException) -> bool:
    """A transaction whose ETag condition failed (412) or whose row went away meanwhile (404)."""
    return type(exc).__name__ == "TableTransactionError" and getattr(exc, "status_code", None) in (404, 412)


# --- management API: paged queries and deletion ---------------------------------------------------------

def query_page(filter: Optional[str], parameters: dict[str, Any], page_size: int,
               continuation: Optional[dict[str, Any]]) -> tuple[list[Account], Optional[dict[str, Any]]]:
    """One service page (at most ``page_size`` rows, maybe fewer or none) and the continuation of the next.

    Rows come in account-id order (the partition key). A row that no longer parses is skipped and logged,
    so one bad row cannot break a listing.
    """
    import logging

    client = table(TABLE)
    # Account rows only: event rows (shared.storage.tables.outbox) share the partitions, under other row keys.
    # (Spaces around the parentheses: the SDK substitutes @parameters word by word.)
    query = f"RowKey eq '' and ( {filter} )" if filter else "RowKey eq ''"
    pager = client.query_entities(query, parameters=parameters, results_per_page=page_size)
    pages = pager.by_page(continuation_token=continuation)
    rows: list[Account] = []
    for entity in next(pages, []):
        try:
            rows.append(Account.from_entity(entity))
        except ValueError:
            logging.getLogger("mailbox_connect.tables").warning("account row %r does not parse; skipped",
                                                                entity.get("PartitionKey"))
    return rows, pages.continuation_token or None


def first_account_of_app(app_id: str) -> Optional[str]:
    """The id of one account that uses the app, or None (a filtered scan; fine for rare admin calls)."""
    rows = table(TABLE).query_entities("RowKey eq '' and appId eq @app", parameters={"app": app_id}, select=["account"],
                                       results_per_page=1)
    for row in rows:
        return str(row.get("account") or "")
    return None


def delete_account(account: Account, events: Sequence["EventRow"] = ()) -> bool:
    """Delete the row read as ``account`` (its etag); False when it changed or went away meanwhile.

    ``events`` are written in the same transaction (they stay in the partition until delivered).
    """
    from azure.core import MatchConditions

    try:
        if events:
            _transaction([("delete", {"PartitionKey": account.account, "RowKey": ""},
                           {"etag": account.etag, "match_condition": MatchConditions.IfNotModified})], events)
        else:
            table(TABLE).delete_entity(account.account, "", etag=account.etag,
                                       match_condition=MatchConditions.IfNotModified)
    except Exception as exc:
        if is_precondition_failed(exc) or _lost_race(exc):
            return False
        raise
    return True
