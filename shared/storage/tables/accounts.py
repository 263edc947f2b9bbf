"""Accounts: one row per account id (partition = account id, RowKey ""). The account row is the commit point.

The partition also holds the account's undelivered event rows (RowKey ``event:<id>``, see
``shared.storage.tables.outbox``), written in the same transaction as the account row change that caused them;
listings select ``RowKey eq ''``.

Counts (``shared.storage.tables.counts``): every write here that may change what is counted (an insert, a delete, a
change of ``state`` or ``appId``) syncs the account's count after it committed, best effort (a failure is logged;
``reconcile_counts``, run by the storage sweeper, catches up). A replace knows what changed from the row it
replaces: rows read here remember the app and state they were read with (``model_copy`` keeps that), and a row
built from scratch counts as changed.

The sign-in callback (``shared.signin.flow``) is the exception: it writes with ``count_now=False``, which skips
the sync (3 round trips, 4 requests, off the hot path), and leaves it to the webhook delivery run
(``shared.webhooks.dispatcher``, every 10 s), which calls ``sync_count`` for the account of every event it
processes: a sign-in always writes events in the same transaction as the row, and a sync run at any time after
the write brings the count to what the row says (``shared.storage.tables.counts``, "Keeping it in step"). A replace
of a row read here that changes its app still syncs the app it leaves at once (the delivery run knows only the app
the row has now); a sign-in's row is built from scratch, so a sign-in that moves an account to another app leaves
the old app's count to ``reconcile_counts``, as before. Every other writer keeps syncing at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from pydantic import PrivateAttr, computed_field

from shared.schemas import AccessCheck, AccountState
from shared.storage.errors import Conflict, NotFound, storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import (
    Record,
    delete_if_unchanged,
    get_or_none,
    query,
    update_if_unchanged,
    utcnow,
)

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.outbox import EventRow

TABLE = "accounts"
log = logging.getLogger("mailbox_connect.tables")
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
    # (appId, state) as read from storage; None for a row built in memory. Kept by model_copy.
    _stored: tuple[str, str] | None = PrivateAttr(None)

    @classmethod
    def from_entity(cls, entity: Any) -> Self:
        record = super().from_entity(entity)
        record._stored = (record.appId, record.state)
        return record

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


def insert_account(account: Account, events: Sequence[EventRow] = (), *, count_now: bool = True) -> bool:
    """True when created; False when the id exists already (the caller then updates it).

    ``events`` (``shared.storage.tables.outbox``) are written in the same transaction: all rows or none.
    ``count_now=False`` (the sign-in callback, with ``events``): no count sync here; the delivery run of the events
    syncs it (module docstring).
    """
    try:
        with storage_errors():
            if events:
                _transaction([("create", account.to_entity(account.account))], events)
            else:
                table(TABLE).create_entity(account.to_entity(account.account))
    except Conflict:
        return False
    if count_now:
        _recount(account.account, account.appId)
    return True


def replace_account(account: Account, events: Sequence[EventRow] = (), *, count_now: bool = True) -> bool:
    """Replace the row read as ``account`` (its etag); False when someone else changed it meanwhile.

    ``events`` are written in the same transaction (they share the account's partition). ``count_now=False``: as
    ``insert_account``'s, except that the app an account leaves is still synced here.
    """
    if not events:
        if update_if_unchanged(table(TABLE), account.to_entity(account.account), account.etag) is None:
            return False
    else:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        try:
            with storage_errors():
                _transaction([("update", account.to_entity(account.account),
                               {"mode": UpdateMode.REPLACE, "etag": account.etag,
                                "match_condition": MatchConditions.IfNotModified})], events)
        except (Conflict, NotFound):  # the ETag lost (412) or the row went away (404)
            return False
    if account._stored != (account.appId, account.state):  # the counted state may have changed
        if account._stored is not None and account._stored[0] != account.appId:
            _recount(account.account, account._stored[0])  # the delivery run syncs only the app the row has now
        if count_now:
            _recount(account.account, account.appId)
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


def scan_page(filter: str | None, parameters: dict[str, Any], page_size: int, continuation: dict[str, Any] | None,
              select: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """As ``query_page``, but only the ``select``ed properties of each row, as they are (a listing skipping rows
    or searching them: a narrow projection makes a page of 1,000 rows small)."""
    where = f"RowKey eq '' and ( {filter} )" if filter else "RowKey eq ''"
    pager: Any = table(TABLE).query_entities(where, parameters=parameters, results_per_page=page_size, select=select)
    pages = pager.by_page(continuation_token=continuation)
    with storage_errors():
        page: Any = next(pages, [])
    return [dict(entity) for entity in page], pages.continuation_token or None


def get_many(account_ids: Sequence[str]) -> dict[str, Account]:
    """The accounts that exist among ``account_ids``: point reads, up to 16 at a time."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    ids = list(dict.fromkeys(account_ids))
    if not ids:
        return {}
    context = contextvars.copy_context()  # the request's call counters (shared.web.logs) see the pool's reads
    with ThreadPoolExecutor(max_workers=min(16, len(ids))) as pool:
        found = list(pool.map(lambda account_id: context.copy().run(get_account, account_id), ids))
    return {account.account: account for account in found if account is not None}


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
        if not delete_if_unchanged(table(TABLE), account.account, "", account.etag):
            return False
    else:
        from azure.core import MatchConditions

        try:
            with storage_errors():
                _transaction([("delete", {"PartitionKey": account.account, "RowKey": ""},
                               {"etag": account.etag, "match_condition": MatchConditions.IfNotModified})], events)
        except (Conflict, NotFound):  # the ETag lost (412) or the row went away (404)
            return False
    _recount(account.account, account.appId)
    return True


# --- counts (shared.storage.tables.counts) ----------------------------------------------------------------------

def _counted_now(account_id: str) -> tuple[str, str] | None:
    account = get_account(account_id)
    return None if account is None else (account.appId, account.state)


def _recount(account_id: str, app_id: str) -> None:
    """Sync the account's count after a committed write; best effort (the write stands either way)."""
    from shared.storage.tables import counts

    try:
        counts.sync(app_id, account_id, lambda: _counted_now(account_id))
    except Exception as exc:  # noqa: BLE001 - reconcile_counts (the storage sweeper) catches up
        log.warning("account %s: its count could not be updated now (%s); the sweeper will", account_id,
                    type(exc).__name__)


def sync_count(account_id: str) -> None:
    """Sync the account's count under the app its row has now; nothing when the row is gone (its delete synced).
    Best effort, as ``_recount``. The webhook delivery run calls it for the account of every event it processes,
    which is how a sign-in (``count_now=False``) gets counted: 1 read more than ``_recount`` (the row's app)."""
    try:
        account = get_account(account_id)
    except Exception as exc:  # noqa: BLE001 - reconcile_counts (the storage sweeper) catches up
        log.warning("account %s: its count could not be updated now (%s); the sweeper will", account_id,
                    type(exc).__name__)
        return
    if account is not None:
        _recount(account_id, account.appId)


def count_accounts(app_ids: Sequence[str], state: str | None = None) -> int:
    """How many accounts the apps have, in ``state`` if given (``shared.storage.tables.counts``)."""
    from shared.storage.tables import counts

    return counts.count(app_ids, state)


def reconcile_counts(start: str, limit: int, app_ids: Sequence[str]) -> tuple[int, int, str | None]:
    """Compare up to ``limit`` accounts with an id after ``start`` (in id order) with their membership rows
    (``shared.storage.tables.counts``) and sync those that disagree; drop old tombstones in the same id range.
    Returns (accounts checked, accounts synced, the id to resume after, or None at the end of the table).

    Costs about one request per 1,000 accounts plus ``SHARDS`` range queries per app; a sync only for an
    account that disagrees. ``app_ids``: the apps whose membership rows are checked (those of the accounts
    read are added).
    """
    from shared.storage.tables import counts

    rows: dict[str, tuple[str, str]] = {}
    where = "RowKey eq '' and PartitionKey gt @start"
    pager = query(table(TABLE), where, parameters={"start": start}, select=["PartitionKey", "appId", "state"],
                  results_per_page=min(1000, limit))
    last: str | None = None
    for entity in pager:
        rows[entity["PartitionKey"]] = (str(entity.get("appId") or ""), str(entity.get("state") or ""))
        last = entity["PartitionKey"]
        if len(rows) >= limit:
            break
    end = None if last is None or len(rows) < limit else last
    members: dict[tuple[str, str], tuple[str, str, Any]] = {}
    for app in dict.fromkeys([*app_ids, *(app for app, _ in rows.values() if app)]):
        for account_id, state, etag, at in counts.members_between(app, start, end):  # (start, end]
            members[(app, account_id)] = (state, etag, at)
    stale = utcnow() - counts.TOMBSTONE_AGE
    synced = 0
    for key in dict.fromkeys([*((app, a) for a, (app, _) in rows.items()), *members]):
        app, account_id = key
        row, member = rows.get(account_id), members.get(key)
        want = row[1] if row is not None and row[0] == app else ""
        have = member[0] if member is not None else ""
        if want == have:
            if member is not None and not have and member[2] is not None and member[2] < stale:
                counts.drop_tombstone(app, account_id, member[1])
            continue
        try:
            synced += counts.sync(app, account_id, partial(_counted_now, account_id))
        except Exception as exc:  # noqa: BLE001 - the next walk tries again
            log.warning("account %s: count reconciliation failed (%s)", account_id, type(exc).__name__)
    return len(rows), synced, end
