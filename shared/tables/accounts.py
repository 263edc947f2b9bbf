"""Accounts: one row per account id (partition = account id). The account row is the commit point."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Optional

from pydantic import computed_field

from shared.tables.client import table
from shared.tables.records import Record, is_conflict, is_missing

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


def insert_account(account: Account) -> bool:
    """True when created; False when the id exists already (the caller then updates it)."""
    try:
        table(TABLE).create_entity(account.to_entity(account.account))
    except Exception as exc:
        if is_conflict(exc):
            return False
        raise
    return True


def replace_account(account: Account) -> bool:
    """Replace the row read as ``account`` (its etag); False when someone else changed it meanwhile."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    try:
        table(TABLE).update_entity(account.to_entity(account.account), mode=UpdateMode.REPLACE,
                                   etag=account.etag, match_condition=MatchConditions.IfNotModified)
    except Exception as exc:
        if type(exc).__name__ in ("ResourceModifiedError", "ResourceNotFoundError") or \
                getattr(exc, "status_code", None) == 412:
            return False
        raise
    return True


# --- management API: paged queries and deletion ---------------------------------------------------------

def query_page(filter: Optional[str], parameters: dict[str, Any], page_size: int,
               continuation: Optional[dict[str, Any]]) -> tuple[list[Account], Optional[dict[str, Any]]]:
    """One service page (at most ``page_size`` rows, maybe fewer or none) and the continuation of the next.

    Rows come in account-id order (the partition key). A row that no longer parses is skipped and logged,
    so one bad row cannot break a listing.
    """
    import logging

    client = table(TABLE)
    if filter:
        pager = client.query_entities(filter, parameters=parameters, results_per_page=page_size)
    else:
        pager = client.list_entities(results_per_page=page_size)
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
    rows = table(TABLE).query_entities("appId eq @app", parameters={"app": app_id}, select=["account"],
                                       results_per_page=1)
    for row in rows:
        return str(row.get("account") or "")
    return None


def delete_account(account: Account) -> bool:
    """Delete the row read as ``account`` (its etag); False when it changed or went away meanwhile."""
    from azure.core import MatchConditions

    try:
        table(TABLE).delete_entity(account.account, "", etag=account.etag,
                                   match_condition=MatchConditions.IfNotModified)
    except Exception as exc:
        if type(exc).__name__ in ("ResourceModifiedError", "ResourceNotFoundError") or \
                getattr(exc, "status_code", None) == 412:
            return False
        raise
    return True
