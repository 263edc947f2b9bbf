"""The event outbox: event rows in the accounts table, and the ``outbox`` index table (the fast path).

Event rows (the durable record)
    Live in the **accounts** table, in the partition of the account they are about (PartitionKey = account
    id, RowKey = ``event:<event id>``), so ``shared.storage.tables.accounts`` writes them in the same entity-group
    transaction as the account row change that caused them: the event exists if and only if the change
    committed. Event ids sort by time (``<ms since epoch><sequence><random>``, 28 hex digits), so a
    partition lists its events in order. The row holds the event's type, account, date and ``data``; the delivery side
    (``shared.webhooks.dispatcher``) fans it out to the webhook targets and then deletes it.

Index rows (the fast path)
    Finding event rows in the accounts table is a full scan (they are spread over every account's
    partition). So after the commit the producer also writes one row per event to the ``outbox`` table
    (one partition ``pending``, RowKey = event id, pointing at the event row). That write is best effort:
    when it is lost (crash, storage hiccup) the event row is still there, and the sweeper's scan
    (``scan_events``) finds it a few minutes later.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, delete_if_present, get_or_none, query

ACCOUNTS_TABLE = "accounts"  # where event rows live (shared.storage.tables.accounts.TABLE)
TABLE = "outbox"
PENDING = "pending"
EVENT_PREFIX = "event:"
_EVENT_END = EVENT_PREFIX[:-1] + chr(ord(EVENT_PREFIX[-1]) + 1)  # "event;": the first key after the prefix


_id_lock = threading.Lock()
_last_id = [0, 0]  # (milliseconds, sequence) of the last id made in this process


def new_event_id(now: float | None = None) -> str:
    """Sortable by creation (milliseconds, 12 hex digits; then a 16-bit sequence, so ids made in one process
    keep their order within a millisecond and when the clock steps back) and unique (48 random bits)."""
    millis = int((time.time() if now is None else now) * 1000)
    with _id_lock:
        if millis <= _last_id[0]:
            millis, sequence = _last_id[0], _last_id[1] + 1
            if sequence > 0xFFFF:
                millis, sequence = millis + 1, 0
        else:
            sequence = 0
        _last_id[:] = [millis, sequence]
    return f"{millis:012x}{sequence:04x}{secrets.token_hex(6)}"


class EventRow(Record):
    """One event, in the partition of its account (see the module docstring)."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("data",)
    id: str
    event: str
    account: str
    date: datetime
    data: dict[str, Any] = {}

    @property
    def row_key(self) -> str:
        return EVENT_PREFIX + self.id

    def entity(self) -> dict[str, Any]:
        return self.to_entity(self.account, self.row_key)


class IndexRow(Record):
    eventPk: str
    eventRk: str


# --- event rows (accounts table) --------------------------------------------------------------------------

def get_event(partition: str, row_key: str) -> EventRow | None:
    entity = get_or_none(table(ACCOUNTS_TABLE), partition, row_key)
    return None if entity is None else EventRow.from_entity(entity)


def delete_event(partition: str, row_key: str) -> None:
    """Delete an event row once it has been fanned out (a missing row is fine)."""
    delete_if_present(table(ACCOUNTS_TABLE), partition, row_key)


def scan_events(created_before: datetime, limit: int = 1000) -> Iterator[EventRow]:
    """Event rows older than ``created_before``, across all accounts: a full scan, for the sweeper only."""
    rows = query(
        table(ACCOUNTS_TABLE), "RowKey gt @lo and RowKey lt @hi and date lt @before",
        parameters={"lo": EVENT_PREFIX, "hi": _EVENT_END, "before": created_before},
        results_per_page=min(limit, 1000),
    )
    for count, entity in enumerate(rows):
        if count >= limit:
            return
        yield EventRow.from_entity(entity)


# --- index rows (outbox table) ----------------------------------------------------------------------------

def add_index(events: list[EventRow]) -> None:
    """The fast path: one index row per event (one transaction: they share the ``pending`` partition)."""
    if not events:
        return
    from azure.data.tables import UpdateMode

    operations = [("upsert", IndexRow(eventPk=e.account, eventRk=e.row_key).to_entity(PENDING, e.id),
                   {"mode": UpdateMode.REPLACE}) for e in events]
    with storage_errors():
        table(TABLE).submit_transaction(operations)


def pending(limit: int = 500) -> list[tuple[str, IndexRow]]:
    """(event id, index row) in event-id order, at most ``limit``."""
    rows = query(table(TABLE), "PartitionKey eq @pk", parameters={"pk": PENDING}, results_per_page=min(limit, 1000))
    found = []
    for entity in rows:
        found.append((str(entity["RowKey"]), IndexRow.from_entity(entity)))
        if len(found) >= limit:
            break
    return found


def remove_index(event_id: str) -> None:
    delete_if_present(table(TABLE), PENDING, event_id)
