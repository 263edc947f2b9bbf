"""Pending sign-ins, keyed by the OAuth ``state``; each is consumed at most once (ETag-conditioned update)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, get_or_none, update_if_unchanged

TABLE = "flows"


class PendingFlow(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("flow", "link")
    state: str
    appId: str
    flow: dict[str, Any]  # MSAL's auth-code-flow dict (PKCE verifier, nonce), handed back to MSAL
    link: dict[str, Any]  # the verified link data
    binding: str  # SHA-256 of the browser-binding cookie value
    expiresAt: datetime
    consumed: bool = False


def insert_flow(flow: PendingFlow) -> None:
    with storage_errors():
        table(TABLE).create_entity(flow.to_entity(flow.state))


def get_flow(state: str) -> PendingFlow | None:
    entity = get_or_none(table(TABLE), state, "")
    return None if entity is None else PendingFlow.from_entity(entity)


def claim_flow(flow: PendingFlow) -> bool:
    """Mark the flow consumed under the ETag it was read with: exactly one caller wins.

    A conditional *update* rather than a delete, because the SDK reports a delete of a row that is
    already gone as success, which would let two racing callbacks both win. The consumed row is deleted
    by ``forget_flow`` once the callback is done; unconsumed expired rows are left for a clean-up job
    (Table Storage has no TTL).
    """
    entity = {"PartitionKey": flow.state, "RowKey": "", "consumed": True}
    return update_if_unchanged(table(TABLE), entity, flow.etag, merge=True) is not None


def forget_flow(state: str) -> None:
    with storage_errors():
        table(TABLE).delete_entity(state, "")
