"""Used link nonces: a conditional insert claims a link for the one account it may produce.

A used-link row enforces single use until its link expires (the signature check refuses an expired link
anyway); the sweeper (``shared.core.sweeper``) deletes it some time after that, and takes over a claim whose
sign-in died before it could either commit the account or release the claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, create_if_absent, delete_if_unchanged, get_or_none, query, utcnow

TABLE = "links"
USED_ROW = ""


class UsedLink(Record):
    account: str
    owner: str = ""  # the claiming callback: its state's random part + "." + a token of that callback (flow.py)
    # The credential the claiming sign-in writes: what the sweeper checks when the claim turns out dead (its
    # sign-in could neither commit nor release it), since a secret may have been written before the failure.
    credential: str = ""
    usedAt: datetime
    expiresAt: datetime  # after this the row may be purged: the signature check refuses the link anyway
    # Set after the sign-in's commit (``complete``): what GET /v1/links/{link} answers (shared.admin.links).
    completedAt: datetime | None = None
    state: str | None = None  # "new" or "existing", as on the redirect
    app: str | None = None


def is_used(nonce: str) -> bool:
    return get_or_none(table(TABLE), nonce, "") is not None


def claim(nonce: str, account: str, expires_at: datetime, *, owner: str, credential: str = "") -> bool:
    """True when this callback (``owner``) holds the nonce; False when another one does.

    A claim whose insert landed but whose answer was lost (the SDK retries and meets its own row) is
    recognised by its owner instead of killing the link.
    """
    row = UsedLink(account=account, owner=owner, credential=credential, usedAt=utcnow(), expiresAt=expires_at)
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


def get_used(nonce: str) -> UsedLink | None:
    """The used-link row of a link id (its nonce), or None: one point read (``GET /v1/links/{link}``)."""
    return _get(nonce)


VERIFY_WINDOW = timedelta(days=1)  # a completed link's row is kept at least this long for the app to verify


def complete(nonce: str, *, state: str, app: str, link_expires: datetime) -> None:
    """After the sign-in's commit: record on our claim that it produced its account (``state``: new or
    existing), and keep the row at least ``VERIFY_WINDOW`` for the app's check. One unconditional merge: the
    claim is ours (nothing else writes a claim whose account exists); a row that is gone raises."""
    from azure.data.tables import UpdateMode

    now = utcnow()
    entity = {"PartitionKey": nonce, "RowKey": USED_ROW, "completedAt": now, "state": state, "app": app,
              "expiresAt": max(link_expires, now + VERIFY_WINDOW)}
    with storage_errors():
        table(TABLE).update_entity(entity, mode=UpdateMode.MERGE)


# --- the sweeper (shared.core.sweeper) -------------------------------------------------------------------

def expired(before: datetime) -> Iterator[tuple[str, str | None]]:
    """(nonce, etag) of the used-link rows whose link expired before ``before``."""
    for entity in query(table(TABLE), "expiresAt lt @before", parameters={"before": before},
                        select=["PartitionKey"]):
        yield entity["PartitionKey"], (getattr(entity, "metadata", None) or {}).get("etag")


def stale_claims(used_before: datetime) -> Iterator[tuple[str, UsedLink]]:
    """(nonce, row) of used-link rows claimed before ``used_before`` (whether their account exists is the
    caller's question)."""
    for entity in query(table(TABLE), "usedAt lt @before", parameters={"before": used_before}):
        yield entity["PartitionKey"], UsedLink.from_entity(entity)


def delete_row(nonce: str, etag: str | None) -> bool:
    """Delete a used-link row under the ETag it was read with; False when it changed meanwhile."""
    return delete_if_unchanged(table(TABLE), nonce, "", etag)
