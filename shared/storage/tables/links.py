"""Used link nonces: a conditional insert claims a link for the one account it may produce."""

from __future__ import annotations

from datetime import datetime

from shared.storage.tables.client import table
from shared.storage.tables.records import Record, is_conflict, is_missing, utcnow

TABLE = "links"


class UsedLink(Record):
    account: str
    owner: str = ""  # the flow state of the sign-in that claimed it (a lost answer is recognised as ours)
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


def claim(nonce: str, account: str, expires_at: datetime, *, owner: str) -> bool:
    """True when this sign-in (``owner``, its flow state) holds the nonce; False when another one does.

    A claim whose insert landed but whose answer was lost (the SDK retries and meets its own row) is
    recognised by its owner instead of killing the link.
    """
    row = UsedLink(account=account, owner=owner, usedAt=utcnow(), expiresAt=expires_at)
    try:
        table(TABLE).create_entity(row.to_entity(nonce))
    except Exception as exc:
        if not is_conflict(exc):
            raise
        current = _get(nonce)
        return current is not None and current.owner == owner
    return True


def release(nonce: str, owner: str) -> None:
    """Undo our own claim (its sign-in failed before the account was written), so the link can be retried;
    another sign-in's claim is left alone. Conditioned on the row's ETag."""
    from azure.core import MatchConditions

    current = _get(nonce)
    if current is None or current.owner != owner:
        return
    table(TABLE).delete_entity(nonce, "", etag=current.etag, match_condition=MatchConditions.IfNotModified)


def _get(nonce: str) -> "UsedLink | None":
    try:
        return UsedLink.from_entity(table(TABLE).get_entity(nonce, ""))
    except Exception as exc:
        if is_missing(exc):
            return None
        raise
