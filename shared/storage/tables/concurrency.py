"""The one optimistic-concurrency loop: read a row, change it, write it only if nobody else did meanwhile.

Table Storage has no locks. A row is changed under the ETag it was read with (``update_if_unchanged``,
``accounts.replace_account``, ...); when another writer got there first, the write reports the lost race
(False) and the loop starts again from a fresh read, a bounded number of times::

    written = change_row(read=lambda: accounts.get_account(account_id),
                         change=lambda current: current.model_copy(update={...}),
                         write=accounts.replace_account)

The three steps are the caller's, so one loop serves rows written alone or together with their webhook
events (``write`` may be a transaction), deletes as well as replaces, and insert-or-replace (``first``):

``read()``
    the current state (a row, or None when there is none: ``change`` decides what that means). It may raise
    (a missing row the caller answers 404 for).
``change(current)``
    what to write (anything ``write`` understands: a row, a row and its events, ...), or None to write
    nothing (the row is gone, or already as wanted): ``change_row`` then returns None.
``write(payload)``
    True when written; False when the race was lost (the ETag no longer matched, or the row went away).

Returns the payload that was written. When every attempt lost its race it raises ``ConcurrentChange``;
the caller turns that into its own answer (a 503 with ``Retry-After``, or "not changed").
The happy path costs one read and one write, like the loop written out by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from shared.storage.errors import Conflict

ATTEMPTS = 8  # reads and writes before giving up; enough for a handful of writers of one row

S = TypeVar("S")  # what read() returns
P = TypeVar("P")  # what change() produces and write() stores


class ConcurrentChange(Conflict):
    """Every attempt lost its ETag race: the row kept changing under us. Nothing was written."""


def change_row(read: Callable[[], S], change: Callable[[S], P | None], write: Callable[[P], bool], *,
               attempts: int = ATTEMPTS, first: Callable[[], S] | None = None,
               pause: Callable[[int], None] | None = None) -> P | None:
    """Read, change, write-if-unchanged; start again from a fresh read when the write lost its race.

    ``first`` replaces ``read`` on the first attempt (a state already known, so no round trip: e.g. "no row
    yet", to try an insert before reading anything). ``pause(attempt)`` runs before each retry (attempt
    1, 2, ...), e.g. a short random wait under contention. Raises ``ConcurrentChange`` after ``attempts``
    lost races.
    """
    for attempt in range(attempts):
        if attempt and pause is not None:
            pause(attempt)
        current = first() if attempt == 0 and first is not None else read()
        payload = change(current)
        if payload is None:
            return None
        if write(payload):
            return payload
    raise ConcurrentChange(f"the row kept changing: {attempts} attempts lost their race")
