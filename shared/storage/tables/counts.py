"""How many accounts there are, per OAuth app and state, kept correct under concurrent writes (``GET /v1/accounts``'s
``total``). Table Storage cannot count: a count is a scan of every row. So the count is kept as it changes.

Rows (table ``accountcounts``), partitioned by app and shard: PartitionKey ``<app id>~<shard>``, where the shard
(``SHARDS`` of them) is a hash of the account id, so an account always lands in the same partition:

* ``count``: ``total`` and one property per state (``connected``, ``authenticationError``): the number of accounts
  of this app and shard;
* ``a:<account id>``: the account's membership: the ``state`` it is counted under, or ``""`` when it is not
  counted (a tombstone: the account is gone, or belongs to another app).

A membership row and its shard's count row share a partition, so both change in one entity-group transaction: a
count moves only together with the membership row that explains it, each conditioned on the ETag it was read
with. Counting an account twice, or un-counting it twice, is therefore impossible: the second writer's
transaction fails and it starts again from the rows as they are.

Keeping it in step (``sync``)
    The account row (table ``accounts``, one partition per account) is the truth, and it cannot join a
    transaction with these rows. So after every write that may change what is counted (an insert, a delete, a
    change of state; ``shared.storage.tables.accounts`` calls it), the writer *syncs* the account: it reads the
    membership and count rows (two point reads, in parallel), **then** reads the account row, and writes the membership
    row as the account row says, with the count moved by the difference, in one transaction conditioned on both
    ETags. The membership row is written even when nothing changed, so two syncs of one account always conflict
    and the later one re-reads. Why this converges under any interleaving: of all the syncs of an account, the
    last one to commit read the membership row after every earlier commit (else its ETag would have lost), so
    it read the account row after the last write whose sync committed before it, and every later write has a
    sync of its own that runs after it. So when the writers are done, the membership row (and with it the
    count) says what the account row says. Syncs of one shard also meet on its count row, so ``SHARDS``
    partitions spread concurrent sign-ins of one app.

    Who syncs, and when: every writer syncs right after its write, except the sign-in callback (the hot path:
    the sync would be 4 of its Table requests). Its write always carries event rows in the same transaction
    (``shared.core.events``), and the webhook delivery run (``shared.webhooks.dispatcher``, every 10 s, with or
    without webhook targets) syncs the account of every event it processes. Since a sync is right whenever it runs
    after the write, and any number of syncs converge, this is the same guarantee, later: after a sign-in,
    ``total`` includes the new account once the next delivery run has processed its event (<= 10 s); other
    writes (API delete, changes of state, ``POST /v1/account``) count at once.

When a sync cannot finish
    A crash between the account write and its sync, or storage failing for the sync only (or, after a sign-in, a
    lost delivery run), leaves the count off by that account until the storage sweeper's reconciliation
    (``shared.storage.tables.accounts.reconcile_counts``, a bounded walk over the accounts compared with their
    membership rows, resuming where it stopped) syncs it.
    The same walk counts the accounts of a deployment upgraded from a version without counts, and deletes
    tombstones older than ``TOMBSTONE_AGE`` (no sync lives that long, so none can still hold their ETag).

Costs
    Per insert, delete or change of state: 3 round trips (4 requests) after the write: the membership and count
    rows (two point reads in parallel), the account row, the transaction; more only under contention. Other
    writes (a rename, an access check) cost nothing. The sign-in callback pays none of them: the delivery run
    pays them instead, plus one read of the account row (its app), once per account per run, off the request
    path; it also syncs (needlessly, harmlessly) the accounts of events other writers have synced already.
    Per count: one point read per shard and app (``SHARDS`` x apps, issued in parallel). Rows: one per account
    and app ever counted (tombstones are swept), plus ``SHARDS`` per app.
"""

from __future__ import annotations

import contextvars
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Final, get_args

from shared.schemas import AccountState
from shared.settings import get_settings
from shared.storage.errors import Conflict, NotFound, storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.concurrency import ConcurrentChange
from shared.storage.tables.records import delete_if_unchanged, get_or_none, query, utcnow

TABLE = "accountcounts"
SHARDS: Final = 8
COUNT_ROW: Final = "count"
MEMBER_PREFIX: Final = "a:"
SYNC_ATTEMPTS = 16
TOMBSTONE_AGE = timedelta(hours=1)
STATES: Final[tuple[str, ...]] = get_args(AccountState)
NOT_COUNTED: Final = ""

Current = Callable[[], "tuple[str, str] | None"]  # the account row now: (app id, state), or None


def shard_of(account_id: str) -> int:
    return int.from_bytes(hashlib.sha256(account_id.encode()).digest()[:4], "big") % SHARDS


def partition(app_id: str, shard: int) -> str:
    return f"{app_id}~{shard:02d}"


def member_key(account_id: str) -> str:
    return MEMBER_PREFIX + account_id


# --- keeping the count ----------------------------------------------------------------------------------------

def sync(app_id: str, account_id: str, current: Current, *, attempts: int = SYNC_ATTEMPTS) -> bool:
    """Make the account's membership row under ``app_id`` (and its shard's count) say what ``current()`` says;
    True when the count changed. ``current`` reads the account row (module docstring: it must be called after
    the membership row was read). Raises ``ConcurrentChange`` when every attempt lost its race, and storage
    errors as they come."""
    client = table(TABLE)
    pk, rk = partition(app_id, shard_of(account_id)), member_key(account_id)
    for attempt in range(attempts):
        if attempt:  # contention on the shard's count row: spread the retries
            time.sleep(random.uniform(0, min(0.2, 0.004 * 2 ** attempt)))
        member, counter = _read(client, pk, rk)
        now = current()  # after the membership row: see the module docstring
        want = now[1] if now is not None and now[0] == app_id else NOT_COUNTED
        have = str(member.get("state") or NOT_COUNTED) if member is not None else NOT_COUNTED
        operations = [_write(member, {"PartitionKey": pk, "RowKey": rk, "account": account_id, "state": want,
                                      "at": utcnow()})]
        if want != have:
            operations.append(_write(counter, _moved(pk, counter, have, want)))
        try:
            with storage_errors():
                client.submit_transaction(operations)
        except (Conflict, NotFound):  # another sync of this account or shard got there first
            continue
        if want != have:
            _forget(pk)  # this instance's next count reads the shard again
        return want != have
    raise ConcurrentChange(f"the count of account {account_id!r} kept changing: {attempts} attempts lost")


def _read(client: Any, pk: str, rk: str) -> tuple[Any | None, Any | None]:
    """The membership row and the shard's count row: two point reads, side by side (one query with ``or`` on the
    RowKey would scan the whole partition)."""
    member, counter = _pool().map(lambda key: get_or_none(client, pk, key), (rk, COUNT_ROW))
    return member, counter


def _write(read: Any | None, entity: dict[str, Any]) -> tuple:
    """A transaction operation: create the row when it was not there, else replace it under its ETag."""
    if read is None:
        return ("create", entity)
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    return ("update", entity, {"mode": UpdateMode.REPLACE, "etag": read.metadata["etag"],
                               "match_condition": MatchConditions.IfNotModified})


def _moved(pk: str, counter: Any | None, have: str, want: str) -> dict[str, Any]:
    names = dict.fromkeys(["total", *STATES, *(name for name in (have, want) if name)])
    values = {name: int((counter or {}).get(name) or 0) for name in names}
    if have:
        values["total"] -= 1
        values[have] -= 1
    if want:
        values["total"] += 1
        values[want] += 1
    return {"PartitionKey": pk, "RowKey": COUNT_ROW, **values}


# --- reading it -----------------------------------------------------------------------------------------------

def count(app_ids: Iterable[str], state: str | None = None) -> int:
    """How many accounts the apps have (in ``state``, if given): ``SHARDS`` point reads per app, in parallel, each
    kept by this instance for ``MC_COUNT_CACHE_SECONDS`` (issue 14: a listing page costs its query, not 8 reads
    per app). A count this instance changed is read again at once; another instance's change shows within that
    many seconds (a sign-in's own count waits for the next delivery run anyway: module docstring)."""
    keys = [partition(app, shard) for app in dict.fromkeys(app_ids) for shard in range(SHARDS)]
    if not keys:
        return 0
    settings = get_settings()
    client = table(TABLE, settings)
    field = state or "total"
    scope = (settings.tables_connection_string, settings.tables_endpoint, settings.table_name(TABLE))
    ttl = settings.count_cache_seconds

    def read(pk: str) -> int:
        started = time.monotonic()
        with _cache_lock:
            hit = _cache.get((scope, pk))
        if hit is not None and started - hit[0] < ttl and hit[0] > _forgotten.get(pk, float("-inf")):
            row = hit[1]
        else:
            row = get_or_none(client, pk, COUNT_ROW)
            row = dict(row) if row is not None else None
            if ttl > 0:
                with _cache_lock:
                    if len(_cache) > 10_000:
                        _cache.clear()
                    _cache[(scope, pk)] = (started, row)
        return int(row.get(field) or 0) if row is not None else 0

    context = contextvars.copy_context()  # the request's call counters (shared.web.logs) see the pool's reads
    return max(0, sum(_pool().map(lambda pk: context.copy().run(read, pk), keys)))


_cache_lock = threading.Lock()
_cache: dict[tuple[tuple, str], tuple[float, dict | None]] = {}  # (scope, partition) -> (read started, count row)
_forgotten: dict[str, float] = {}  # partition -> when this instance last changed its count


def _forget(pk: str) -> None:
    with _cache_lock:
        if len(_forgotten) > 10_000:
            _forgotten.clear()
            _cache.clear()
        _forgotten[pk] = time.monotonic()


def reset_count_cache() -> None:
    """Forget every count this instance holds (tests)."""
    with _cache_lock:
        _cache.clear()
        _forgotten.clear()


_readers: list[ThreadPoolExecutor] = []
_readers_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One small pool per process for the parallel point reads (threads are made once, not per listing)."""
    with _readers_lock:
        if not _readers:
            _readers.append(ThreadPoolExecutor(max_workers=16, thread_name_prefix="counts"))
        return _readers[0]


# --- reconciliation (shared.storage.tables.accounts.reconcile_counts) -------------------------------------------

def members_between(app_id: str, after: str, through: str | None) -> Iterator[tuple[str, str, str, datetime | None]]:
    """The membership rows of the app whose account id is in (after, through] (``through`` None: no end): (account
    id, counted state or "", ETag, when written), every shard, in no particular order."""
    client = table(TABLE)
    if through is None:
        where, high = "RowKey lt @high", MEMBER_PREFIX[:-1] + chr(ord(MEMBER_PREFIX[-1]) + 1)
    else:
        where, high = "RowKey le @high", member_key(through)
    for shard in range(SHARDS):
        rows = query(client, f"PartitionKey eq @pk and RowKey gt @low and {where}",
                     parameters={"pk": partition(app_id, shard), "low": member_key(after), "high": high})
        for row in rows:
            yield (str(row.get("account") or row["RowKey"][len(MEMBER_PREFIX):]), str(row.get("state") or ""),
                   row.metadata["etag"], row.get("at"))


def drop_tombstone(app_id: str, account_id: str, etag: str) -> bool:
    """Delete a membership row that counts nothing, under the ETag it was read with."""
    return delete_if_unchanged(table(TABLE), partition(app_id, shard_of(account_id)), member_key(account_id), etag)
