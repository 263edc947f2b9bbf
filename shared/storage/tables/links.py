"""Used link nonces: a conditional insert claims a link for the one account it may produce."""

from __future__ import annotations

from datetime import datetime

from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, create_if_absent, get_or_none, utcnow

TABLE = "links"


class UsedLink(Record):
    account: str
    owner: str = ""  # the flow state of the sign-in that claimed it (a lost answer is recognised as ours)
    usedAt: datetime
    expiresAt: datetime  # after this the row may be purged: the signature check refuses the link anyway


def is_used(nonce: str) -> bool:
    return get_or_none(table(TABLE), nonce, "") is not None


def claim(nonce: str, account: str, expires_at: datetime, *, owner: str) -> bool:
    """True when this sign-in (``owner``, its flow state) holds the nonce; False when another one does.

    A claim whose insert landed but whose answer was lost (the SDK retries and meets its own row) is
    recognised by its owner instead of killing the link.
    """
    row = UsedLink(account=account, owner=owner, usedAt=utcnow(), expiresAt=expires_at)
    if create_if_absent(table(TABLE), row.to_entity(nonce)):
        return True
    current = _get(nonce)
    return current is not None and current.owner == owner


def release(nonce: str, owner: str) -> None:
    """Undo our own claim (its sign-in failed before the account was written), so the link can be retried;
    another sign-in's claim is left alone. Conditioned on the row's ETag."""
    from azure.core import MatchConditions

    current = _get(nonce)
    if current is None or current.owner != owner:
        return
    with storage_errors():
        table(TABLE).delete_entity(nonce, "", etag=current.etag, match_condition=MatchConditions.IfNotModified)


def _get(nonce: str) -> UsedLink | None:
    entity = get_or_none(table(TABLE), nonce, "")
    return None if entity is None else UsedLink.from_entity(entity)
