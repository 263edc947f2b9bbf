"""Pending sign-ins, keyed by the OAuth ``state``; each is consumed at most once (ETag-conditioned update).

What one link can write is bounded: every ``GET /accounts/new`` of a valid link starts a sign-in and stores a
flow row, so a link opened 200 times would otherwise leave 200 rows. A new flow first takes one of its link's
``MAX_LIVE_FLOWS`` slots (rows ``PartitionKey = link nonce, RowKey = slot:<i>`` in this table): a free one, an
expired one, else the oldest, whose flow is then evicted (deleted: its callback finds no session). So a link
has at most that many live flow rows however often it is opened, and the person's latest attempt always
works. Flow rows and slots carry ``expiresAt``; the sweeper (``shared.core.sweeper``) deletes the expired ones,
consumed or not (Table Storage has no TTL).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from shared.storage.errors import StorageUnavailable, storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import (
    Record,
    create_if_absent,
    delete_if_present,
    delete_if_unchanged,
    get_or_none,
    query,
    update_if_unchanged,
    utcnow,
)

TABLE = "flows"
SLOT_PREFIX = "slot:"
MAX_LIVE_FLOWS = 4  # live flows per link: parallel tabs, a re-opened link, a mail scanner's prefetch
log = logging.getLogger("mailbox_connect.flows")


class PendingFlow(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("flow", "link")
    state: str
    appId: str
    flow: dict[str, Any]  # MSAL's auth-code-flow dict (PKCE verifier, nonce), handed back to MSAL
    link: dict[str, Any]  # the verified link data
    binding: str  # SHA-256 of the browser-binding cookie value
    expiresAt: datetime
    consumed: bool = False


class FlowSlot(Record):
    """One of a link's live-flow slots: free once ``expiresAt`` (its flow's) has passed."""

    state: str
    startedAt: datetime
    expiresAt: datetime


def insert_flow(flow: PendingFlow) -> None:
    """Store a new pending sign-in in one of its link's slots; the live flow it evicts (the link's oldest, when
    every slot is live) is deleted, so at most ``MAX_LIVE_FLOWS`` flows of one link are stored at once."""
    nonce = flow.link.get("nonce")
    evicted = take_slot(nonce, flow.state, flow.expiresAt) if isinstance(nonce, str) and nonce else None
    with storage_errors():
        table(TABLE).create_entity(flow.to_entity(flow.state))
    if evicted:
        try:
            delete_if_present(table(TABLE), evicted, "")
        except Exception as exc:  # noqa: BLE001 - it expires anyway, and the sweeper deletes it then
            log.warning("an evicted flow row was not deleted (%s)", type(exc).__name__)


def _slots(nonce: str) -> dict[int, FlowSlot]:
    where = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
    params = {"pk": nonce, "lo": SLOT_PREFIX, "hi": SLOT_PREFIX[:-1] + chr(ord(SLOT_PREFIX[-1]) + 1)}
    slots: dict[int, FlowSlot] = {}
    for entity in query(table(TABLE), where, parameters=params):
        index = str(entity["RowKey"])[len(SLOT_PREFIX):]
        if index.isdigit() and int(index) < MAX_LIVE_FLOWS:
            slots[int(index)] = FlowSlot.from_entity(entity)
    return slots


def take_slot(nonce: str, state: str, expires_at: datetime, now: datetime | None = None) -> str | None:
    """Reserve a slot of link ``nonce`` for the flow ``state``: the state of the live flow it evicts, or None.

    One partition query and one conditional write (insert of a free slot, or replace under the ETag of an
    expired or the oldest one): two starts racing for a slot do not both get it, the loser picks again.
    ``StorageUnavailable`` when it keeps losing (a link opened many times at once).
    """
    now = now or utcnow()
    row = FlowSlot(state=state, startedAt=now, expiresAt=expires_at)
    for _ in range(2 * MAX_LIVE_FLOWS):
        slots = _slots(nonce)
        free = next((i for i in range(MAX_LIVE_FLOWS) if i not in slots), None)
        if free is not None:
            if create_if_absent(table(TABLE), row.to_entity(nonce, f"{SLOT_PREFIX}{free}")):
                return None
            continue
        index, current = min(slots.items(), key=lambda item: (item[1].expiresAt > now, item[1].startedAt))
        if update_if_unchanged(table(TABLE), row.to_entity(nonce, f"{SLOT_PREFIX}{index}"), current.etag) is not None:
            return None if current.expiresAt <= now or current.state == state else current.state
    raise StorageUnavailable("the link's sign-in slots kept changing; try again")


def get_flow(state: str) -> PendingFlow | None:
    entity = get_or_none(table(TABLE), state, "")
    return None if entity is None else PendingFlow.from_entity(entity)


def claim_flow(flow: PendingFlow) -> bool:
    """Mark the flow consumed under the ETag it was read with: exactly one caller wins.

    A conditional *update* rather than a delete, because the SDK reports a delete of a row that is
    already gone as success, which would let two racing callbacks both win. The consumed row is deleted
    by ``forget_flow`` once the callback is done; expired rows (consumed or not) are deleted by the sweeper.
    """
    entity = {"PartitionKey": flow.state, "RowKey": "", "consumed": True}
    return update_if_unchanged(table(TABLE), entity, flow.etag, merge=True) is not None


def forget_flow(state: str) -> None:
    with storage_errors():
        table(TABLE).delete_entity(state, "")


# --- the sweeper (shared.core.sweeper) -------------------------------------------------------------------

def expired(before: datetime) -> Iterator[tuple[str, str, str | None]]:
    """(partition key, row key, etag) of the flow rows and slots that expired before ``before``. An expired flow
    is never used (its callback answers "took too long"), so deleting it changes nothing for anyone."""
    for entity in query(table(TABLE), "expiresAt lt @before", parameters={"before": before},
                        select=["PartitionKey", "RowKey"]):
        yield entity["PartitionKey"], entity["RowKey"], (getattr(entity, "metadata", None) or {}).get("etag")


def delete_expired(partition_key: str, row_key: str, etag: str | None) -> bool:
    return delete_if_unchanged(table(TABLE), partition_key, row_key, etag)
