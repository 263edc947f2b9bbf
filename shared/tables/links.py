"""Used link nonces: a conditional insert claims a link for the one account it may produce."""

from __future__ import annotations

from datetime import datetime

from shared.tables.client import table
from shared.tables.records import Record, is_conflict, is_missing, utcnow

TABLE = "links"


class UsedLink(Record):
    account: str
    usedAt: datetime
    expiresAt: datetime  # after this the row may be purged: the signature check refuses the link anyway


def is_used(nonce: str) -> bool:
    try:
        table(TABLE).get_entity(nonce, "")
    except Exception as exc:
        if is_missing(exc):
            return False
        raise
    return True


def claim(nonce: str, account: str, expires_at: datetime) -> bool:
    """True when this caller claimed the nonce; False when another sign-in already did."""
    row = UsedLink(account=account, usedAt=utcnow(), expiresAt=expires_at)
    try:
        table(TABLE).create_entity(row.to_entity(nonce))
    except Exception as exc:
        if is_conflict(exc):
            return False
        raise
    return True


def release(nonce: str) -> None:
    """Undo a claim whose sign-in failed before its account was written, so the link can be retried."""
    try:
        table(TABLE).delete_entity(nonce, "")
    except Exception as exc:
        if not is_missing(exc):
            raise
