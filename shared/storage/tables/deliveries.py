"""Per-target delivery state: one row per (webhook target, event), partitioned by target.

A row is created when an event is fanned out to a target (``create`` ignores a row that exists, so a
second fan-out of the same event is harmless), claimed under its ETag before each attempt, deleted once
the target answered 2xx, and kept as a dead letter (``status = "dead"``) when retries ran out. ``body``
is the exact JSON the target receives (the same on every attempt), so a signature covers what was stored.
"""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from typing import Any, Iterator, Optional

from shared.storage.tables.client import table
from shared.storage.tables.records import Record, is_conflict, is_missing, update_if_unchanged

TABLE = "deliveries"
PENDING = "pending"
DEAD = "dead"


class Delivery(Record):
    target: str
    eventId: str
    event: str
    account: str
    body: str
    status: str = PENDING
    attempts: int = 0
    created: datetime  # when the event was fanned out to this target: the retry window starts here
    nextAttemptAt: datetime
    lastAttemptAt: Optional[datetime] = None
    lastStatus: Optional[int] = None  # the target's HTTP status; None when it could not be reached
    lastError: Optional[str] = None
    deadAt: Optional[datetime] = None
    claimedUntil: Optional[datetime] = None  # a runner is sending it (nextAttemptAt is pushed as far)

    def entity(self) -> dict:
        return self.to_entity(self.target, self.eventId)


def create(delivery: Delivery) -> bool:
    """False when the row exists already (the event was fanned out to this target before)."""
    try:
        table(TABLE).create_entity(delivery.entity())
    except Exception as exc:
        if is_conflict(exc):
            return False
        raise
    return True


def get(target: str, event_id: str) -> Optional[Delivery]:
    try:
        return Delivery.from_entity(table(TABLE).get_entity(target, event_id))
    except Exception as exc:
        if is_missing(exc):
            return None
        raise


def replace(delivery: Delivery) -> Optional[Delivery]:
    """Write the row read as ``delivery`` under its ETag; the row with its new ETag, or None if it changed."""
    result = update_if_unchanged(table(TABLE), delivery.entity(), delivery.etag)
    if result is None:
        return None
    updated = delivery.model_copy()
    updated.etag = result.get("etag")
    return updated


def delete(delivery: Delivery) -> None:
    """Delete the row (delivered, discarded, or its target is gone); a missing row is fine."""
    try:
        table(TABLE).delete_entity(delivery.target, delivery.eventId)
    except Exception as exc:
        if not is_missing(exc):
            raise


def due(now: datetime, limit: int = 1000) -> list[Delivery]:
    """Pending deliveries whose next attempt is due, across all targets (a filtered scan: the table only
    holds undelivered events and dead letters)."""
    return _query("status eq @pending and nextAttemptAt le @now", {"pending": PENDING, "now": now}, limit)


def dead(limit: int = 1000) -> list[Delivery]:
    return _query("status eq @dead", {"dead": DEAD}, limit)


def _query(query: str, parameters: dict[str, Any], limit: int) -> list[Delivery]:
    rows = table(TABLE).query_entities(query, parameters=parameters, results_per_page=min(limit, 1000))
    return [Delivery.from_entity(entity) for entity in islice(rows, limit)]


def of_target(target: str) -> Iterator[Delivery]:
    for entity in table(TABLE).query_entities("PartitionKey eq @pk", parameters={"pk": target}):
        yield Delivery.from_entity(entity)
