"""``/v1/webhooks`` (scope ``admin``): register, list and delete targets; list, resend and discard dead letters."""

from __future__ import annotations

import logging
import re
import secrets

from shared.errors import Conflict, InvalidInput, NotFound
from shared.schemas import (
    DEAD_LETTER_ID_PATTERN,
    WEBHOOK_ID_PATTERN,
    DeadLetter,
    DeadLetterDeleted,
    DeadLetterList,
    DeadLetterResent,
    WebhookCreate,
    WebhookCreated,
    WebhookDeleted,
    WebhookInfo,
    WebhookList,
)
from shared.settings import Settings
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import deliveries, webhooks
from shared.storage.tables.deliveries import DEAD, PENDING, Delivery
from shared.storage.tables.records import utcnow
from shared.storage.tables.webhooks import WebhookRow
from shared.webhooks.dispatcher import Clock
from shared.webhooks.targets import Target, all_targets, api_target, forget_secrets, settings_targets

log = logging.getLogger("mailbox_connect.webhooks")


def _info(target: Target) -> WebhookInfo:
    return WebhookInfo(id=target.id, url=target.url, events=list(target.events), description=target.description,
                       source=target.source, created=target.created)


def create_webhook(body: WebhookCreate, settings: Settings) -> WebhookCreated:
    webhook_id = "wh" + secrets.token_hex(8)
    secret = "whsec_" + secrets.token_urlsafe(32)
    secret_name = f"webhook-{webhook_id}"
    get_secret_store(settings).set(secret_name, secret)  # first: a row never points at a missing secret
    row = WebhookRow(id=webhook_id, url=body.url, events=list(body.events), description=body.description,
                     secretName=secret_name, created=utcnow())
    webhooks.insert_webhook(row)
    log.info("webhook %s registered", webhook_id)
    return WebhookCreated(**_info(api_target(row)).model_dump(), secret=secret)


def list_webhooks(settings: Settings) -> WebhookList:
    return WebhookList(webhooks=[_info(t) for t in all_targets(settings)])


def delete_webhook(webhook_id: str | None, settings: Settings) -> WebhookDeleted:
    webhook_id = webhook_id or ""
    if any(t.id == webhook_id for t in settings_targets(settings)):
        raise Conflict("configured_in_settings", "this webhook comes from MC_WEBHOOK_URLS; change the "
                                                 "setting to remove it")
    row = webhooks.get_webhook(webhook_id) if _valid_id(webhook_id) else None
    if row is None:
        raise NotFound(f"no webhook with id {webhook_id!r}")
    webhooks.delete_webhook(row.id)  # the commit point: from now on nothing is sent to it
    for delivery in deliveries.of_target(row.id):
        deliveries.delete(delivery)
    try:
        get_secret_store(settings).delete(row.secretName)
    except Exception:  # noqa: BLE001 - the webhook is gone; an orphaned secret is harmless
        log.warning("webhook %s deleted; its secret could not be deleted", row.id, exc_info=True)
    forget_secrets()
    log.info("webhook %s deleted", row.id)
    return WebhookDeleted(id=row.id)


def _valid_id(webhook_id: str) -> bool:
    return re.match(WEBHOOK_ID_PATTERN, webhook_id) is not None


def _dead_letter(row: Delivery) -> DeadLetter:
    return DeadLetter(id=f"{row.target}.{row.eventId}", webhook=row.target, eventId=row.eventId,
                      event=row.event, account=row.account, attempts=row.attempts, created=row.created,
                      lastAttemptAt=row.lastAttemptAt, lastStatus=row.lastStatus, lastError=row.lastError,
                      deadAt=row.deadAt)


def list_dead_letters() -> DeadLetterList:
    rows = sorted(deliveries.dead(), key=lambda r: (r.eventId, r.target))
    return DeadLetterList(deadLetters=[_dead_letter(r) for r in rows])


def _get_dead(dead_letter_id: str | None) -> Delivery:
    if not dead_letter_id or not re.match(DEAD_LETTER_ID_PATTERN, dead_letter_id):
        raise InvalidInput("id: not a dead letter id (<webhook id>.<event id>)", field="id")
    target, _, event_id = dead_letter_id.partition(".")
    row = deliveries.get(target, event_id)
    if row is None or row.status != DEAD:
        raise NotFound(f"no dead letter with id {dead_letter_id!r}")
    return row


def resend_dead_letter(dead_letter_id: str | None, settings: Settings, clock: Clock = utcnow) -> DeadLetterResent:
    row = _get_dead(dead_letter_id)
    if not any(t.id == row.target for t in all_targets(settings)):
        raise Conflict("webhook_gone", "the webhook of this dead letter no longer exists")
    now = clock()
    resent = deliveries.replace(row.model_copy(update={
        "status": PENDING, "attempts": 0, "created": now, "nextAttemptAt": now, "deadAt": None, "claimedUntil": None,
    }))
    if resent is None:
        raise Conflict("conflict", "the dead letter changed meanwhile; list again")
    log.info("webhook %s: dead letter %s queued again", row.target, row.eventId)
    return DeadLetterResent(id=f"{row.target}.{row.eventId}", nextAttemptAt=now)


def discard_dead_letter(dead_letter_id: str | None) -> DeadLetterDeleted:
    row = _get_dead(dead_letter_id)
    deliveries.delete(row)
    return DeadLetterDeleted(id=f"{row.target}.{row.eventId}")
