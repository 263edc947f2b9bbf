"""Per-target delivery state: one row per (webhook target, event), partitioned by target.

A row is created when an event is fanned out to a target (``create`` ignores a row that exists, so a
second fan-out of the same event is harmless), claimed under its ETag before each attempt, deleted once
the target answered 2xx, and kept as a dead letter (``status = "dead"``) when retries ran out. ``body``
is the exact JSON the target receives (the same on every attempt), so a signature covers what was stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from shared.storage.tables.client import table
from shared.storage.tables.records import (
    Record,
    create_if_absent,
    delete_if_present,
    get_or_none,
    query,
    update_if_unchanged,
)

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
    lastAttemptAt: datetime | None = None
    lastStatus: int | None = None  # the target's HTTP status; None when it could not be reached
    lastError: str | None = None
    deadAt: datetime | None = None
    claimedUntil: datetime | None = None  # a runner is sending it (nextAttemptAt is pushed as far)

    def entity(self) -> dict:
        return self.to_entity(self.target, self.eventId)


def create(delivery: Delivery) -> bool:
    """False when the row exists already (the event was fanned out to this target before)."""
    return create_if_absent(table(TABLE), delivery.entity())


def get(target: str, event_id: str) -> Delivery | None:
    entity = get_or_none(table(TABLE), target, event_id)
    return None if entity is None else Delivery.from_entity(entity)


def replace(delivery: Delivery) -> Delivery | None:
    """Write the row read as ``delivery`` under its ETag; the row with its new ETag, or None if it changed."""
    result = update_if_unchanged(table(TABLE), delivery.entity(), delivery.etag)
    if result is None:
        return None
    updated = delivery.model_copy()
    updated.etag = result.get("etag")
    return updated


def delete(delivery: Delivery) -> None:
    """Delete the row (delivered, discarded, or its target is gone); a missing row is fine."""
    delete_if_present(table(TABLE), delivery.target, delivery.eventId)


def due(now: datetime, limit: int = 1000) -> list[Delivery]:
    """Pending deliveries whose next attempt is due, across all targets (a filtered scan: the table only
    holds undelivered events and dead letters)."""
    return _query("status eq @pending and nextAttemptAt le @now", {"pending": PENDING, "now": now}, limit)


def dead(limit: int = 1000) -> list[Delivery]:
    return _query("status eq @dead", {"dead": DEAD}, limit)


def _query(where: str, parameters: dict[str, Any], limit: int) -> list[Delivery]:
    rows = query(table(TABLE), where, parameters=parameters, results_per_page=min(limit, 1000))
    return [Delivery.from_entity(entity) for entity in islice(rows, limit)]


def of_target(target: str) -> Iterator[Delivery]:
    for entity in query(table(TABLE), "PartitionKey eq @pk", parameters={"pk": target}):
        yield Delivery.from_entity(entity)
