"""Webhook targets registered through the API (``/v1/webhooks``): one row each in partition ``webhook``.

The signing secret is not here: it is in the secret store under ``secretName`` (``wh-<id>``). Targets
configured in settings (``MC_WEBHOOK_URLS``) have no row; ``shared.webhooks.dispatcher`` merges the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, delete_if_present, get_or_none, query

TABLE = "webhooks"
PARTITION = "webhook"


class WebhookRow(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("events",)
    id: str
    url: str
    events: list[str] = []  # empty: every event
    description: str | None = None
    secretName: str
    created: datetime


def insert_webhook(row: WebhookRow) -> None:
    with storage_errors():
        table(TABLE).create_entity(row.to_entity(PARTITION, row.id))


def get_webhook(webhook_id: str) -> WebhookRow | None:
    entity = get_or_none(table(TABLE), PARTITION, webhook_id)
    return None if entity is None else WebhookRow.from_entity(entity)


def list_webhooks() -> list[WebhookRow]:
    rows = query(table(TABLE), "PartitionKey eq @pk", parameters={"pk": PARTITION})
    return [WebhookRow.from_entity(e) for e in rows]


def delete_webhook(webhook_id: str) -> None:
    delete_if_present(table(TABLE), PARTITION, webhook_id)
