"""Webhook targets registered through the API (``/v1/webhooks``): one row each in partition ``webhook``.

The signing secret is not here: it is in the secret store under ``secretName`` (``wh-<id>``). Targets
configured in settings (``MC_WEBHOOK_URLS``) have no row; ``shared.webhooks.dispatcher`` merges the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Optional

from shared.storage.tables.client import table
from shared.storage.tables.records import Record, is_missing

TABLE = "webhooks"
PARTITION = "webhook"


class WebhookRow(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("events",)
    id: str
    url: str
    events: list[str] = []  # empty: every event
    description: Optional[str] = None
    secretName: str
    created: datetime


def insert_webhook(row: WebhookRow) -> None:
    table(TABLE).create_entity(row.to_entity(PARTITION, row.id))


def get_webhook(webhook_id: str) -> Optional[WebhookRow]:
    try:
        return WebhookRow.from_entity(table(TABLE).get_entity(PARTITION, webhook_id))
    except Exception as exc:
        if is_missing(exc):
            return None
        raise


def list_webhooks() -> list[WebhookRow]:
    rows = table(TABLE).query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION})
    return [WebhookRow.from_entity(e) for e in rows]


def delete_webhook(webhook_id: str) -> None:
    try:
        table(TABLE).delete_entity(PARTITION, webhook_id)
    except Exception as exc:
        if not is_missing(exc):
            raise
