"""A value read from storage and held by the process: read again at most every ``ttl`` seconds, at once (at most
every ``forced_min`` seconds) when a caller met something the held value does not know, and kept when it cannot
be read again. The signing key ring (``shared.storage.keys``) and the data-key ring (``shared.storage.datakeys``)
are held so: every instance picks up a rotation without a restart, made-up key ids cannot drive reads, and a
brief outage of Key Vault or Table Storage does not fail requests an instance could already serve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.settings import Settings

T = TypeVar("T")

log = logging.getLogger("mailbox_connect.keys")


@dataclass
class _Held(Generic[T]):
    value: T
    read_at: float  # clock() when read
    forced_at: float = float("-inf")  # clock() of the last read forced by something unknown


class Refreshing(Generic[T]):
    """One held value per ``slot`` (the settings it was read with). ``load`` reads it; ``on_change(old, new)`` is
    called when a read replaces a held value (to log a rotation)."""

    def __init__(self, load: Callable[[Settings], T], what: str, *, clock: Callable[[], float] = time.monotonic,
                 ttl: float, forced_min: float, on_change: Callable[[T, T], None] | None = None) -> None:
        self.load, self.what, self.on_change = load, what, on_change
        self.clock, self.ttl, self.forced_min = clock, ttl, forced_min
        self._lock = threading.Lock()
        self._held: dict[Hashable, _Held[T]] = {}

    def get(self, settings: Settings, slot: Hashable, *, force: bool = False) -> T:
        """The value; read again when older than ``ttl``, or when ``force`` (rate limited by ``forced_min``).

        While one caller reads it again, the others go on with the value held; a failed read keeps it (and is
        tried again after another ``ttl``). Only the very first read of a process can fail a request.
        """
        now = self.clock()
        with self._lock:
            held = self._held.get(slot)
            if held is not None:
                due = now - held.read_at >= self.ttl
                if force and now - held.forced_at >= self.forced_min:
                    held.forced_at = now
                    due = True
                if not due:
                    return held.value
                held.read_at = now  # the others keep the held value meanwhile
        try:
            value = self.load(settings)
        except Exception as exc:
            if held is None:
                raise
            log.warning("%s could not be read again (%s); keeping the one held", self.what, type(exc).__name__)
            return held.value
        with self._lock:
            if held is not None and self.on_change is not None:
                self.on_change(held.value, value)
            self._held[slot] = _Held(value, now, held.forced_at if held is not None else float("-inf"))
        return value

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
