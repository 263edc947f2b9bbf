"""API tokens: only SHA-256 hashes are stored; the row key is the hash, so a lookup is one point read.

A token may be restricted to OAuth apps and/or account ids (``apps``, ``accounts``: JSON lists on the row,
absent = no restriction); restrictions exist only on ``api``-scope tokens. What they allow is decided in
``shared.core.access``.

Verification from an instance-local cache (issue 14)
----------------------------------------------------
Every API call verifies its token, so :func:`find_token` answers from a per-instance cache keyed by the token's
SHA-256, with a bounded staleness of ``N = MC_AUTH_CACHE_SECONDS`` (default 5; 0 turns the cache off: one
point read per call, as before):

* **Found tokens** are kept for N seconds, counted from the moment the read *started*, so nothing older than
  N seconds is ever used. **Revocation is effective on every instance within N seconds**: a token deleted at
  time T is refused by any check that starts at T + N or later, anywhere; the instance that revokes
  (:func:`revoke_token`) forgets it at once. Restrictions (``apps``, ``accounts``) and scopes are fixed at
  minting, so the cached record is the stored one.
* **Unknown tokens** are remembered as unknown for N seconds too. That cannot delay a new token: a token is
  32 random bytes that nobody can present before its creation returned it, so no instance can hold an
  "unknown" entry for it (a token is never re-created once revoked).
* **A flood of made-up tokens** (each one new, so each a cache miss) is bounded per instance: reads for
  hashes this instance has not seen valid take from a token bucket (:data:`UNKNOWN_READS_PER_SECOND`,
  burst :data:`UNKNOWN_READ_BURST`); beyond it :class:`LookupsExhausted` is raised and the API answers 503
  with ``Retry-After: 1`` (``shared.web.auth``) rather than hammering the ``token`` partition of Table
  Storage that every instance shares. Tokens already seen valid here, even if their entry has expired,
  never wait for the bucket, so an attack does not lock out working clients; a brand-new token's first call
  on an instance under attack may have to retry after a second.
* Memory is bounded: at most :data:`MAX_ENTRIES` found and as many unknown hashes, least recently used
  dropped first (separate lists, so unknown tokens cannot push out valid ones).

Storage failures are never cached (the next call reads again). The admin bootstrap (``mcb_`` tokens) has its
own caches in ``shared.admin.bootstrap`` and never comes here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, get_args

from shared.schemas import TokenScope
from shared.settings import get_settings
from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, get_or_none, query, utcnow

TABLE = "apitokens"
PARTITION = "token"
TOKEN_PREFIX = "mc_"
BOOTSTRAP_PREFIX = "mcb_"  # the one-time admin bootstrap (shared.admin.bootstrap); never stored in this table
SCOPES: tuple[TokenScope, ...] = get_args(TokenScope)

MAX_ENTRIES = 10_000  # found tokens kept per instance, and as many unknown hashes
# Reads for hashes this instance has not seen valid (a made-up token, or a new one's first call here).
UNKNOWN_READS_PER_SECOND = 20.0
UNKNOWN_READ_BURST = 40.0

monotonic: Callable[[], float] = time.monotonic  # the cache's clock (tests may replace it)


class ApiToken(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("apps", "accounts")
    id: str
    name: str
    scopes: str  # comma-separated
    tokenHash: str
    created: datetime
    apps: list[str] | None = None  # None: every OAuth app
    accounts: list[str] | None = None  # None: every account

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)

    @property
    def restricted(self) -> bool:
        return self.apps is not None or self.accounts is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(name: str, scopes: tuple[str, ...] = ("api",), *, apps: Sequence[str] | None = None,
                 accounts: Sequence[str] | None = None) -> tuple[str, ApiToken]:
    """A random 32-byte token, returned once; the caller must show it and forget it.

    ``apps``/``accounts`` restrict it (``None``: no restriction; an empty list is refused, it would allow
    nothing); a restricted token has exactly the ``api`` scope."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    if (apps is not None and not apps) or (accounts is not None and not accounts):
        raise ValueError("a restriction lists at least one app or account (leave it out for none)")
    if (apps is not None or accounts is not None) and set(scopes) != {"api"}:
        raise ValueError("a token restricted to apps or accounts has only the api scope")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken(id=secrets.token_hex(8), name=name, scopes=",".join(sorted(set(scopes))),
                      tokenHash=hash_token(token), created=utcnow(),
                      apps=None if apps is None else list(dict.fromkeys(apps)),
                      accounts=None if accounts is None else list(dict.fromkeys(accounts)))
    with storage_errors():
        table(TABLE).create_entity(record.to_entity(PARTITION, record.tokenHash))
    return token, record  # no instance can hold an "unknown" entry for it: nobody could present it before now


class LookupsExhausted(Exception):
    """Too many reads of unknown tokens on this instance just now; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many unknown API tokens on this instance")
        self.retry_after = retry_after


def find_token(token: str, cache_seconds: float | None = None) -> ApiToken | None:
    """The record of a presented token, or None: from this instance's cache when it was read less than
    ``cache_seconds`` ago (default ``MC_AUTH_CACHE_SECONDS``; 0: always one point read). See the module's
    docstring for the bound on staleness. Raises :class:`LookupsExhausted` when an unknown token would need a
    read beyond this instance's budget."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128 or not token.isascii():
        return None
    digest = hash_token(token)
    settings = get_settings()
    ttl = settings.auth_cache_seconds if cache_seconds is None else cache_seconds
    if ttl <= 0:
        return _read(digest)
    cache = _cache_of((settings.tables_connection_string, settings.tables_endpoint, settings.table_name(TABLE)))
    now = monotonic()
    with _lock:
        found = cache.found.get(digest)
        if found is not None and now - found[0] < ttl:
            cache.found.move_to_end(digest)
            return found[1]
        unknown = cache.unknown.get(digest)
        if unknown is not None and now - unknown < ttl:
            return None
        if found is None:  # never seen valid here: a made-up token costs a read only within the budget
            wait = cache.take(now)
            if wait:
                raise LookupsExhausted(wait)
    record = _read(digest)  # a storage failure propagates and caches nothing
    with _lock:
        if _forgotten.get(digest, float("-inf")) >= now:
            pass  # created or revoked here while this read was under way: the next call reads again
        elif record is None:
            cache.found.pop(digest, None)
            _remember(cache.unknown, digest, now)
        else:
            cache.unknown.pop(digest, None)
            _remember(cache.found, digest, (now, record))
    return record


def _read(digest: str) -> ApiToken | None:
    entity = get_or_none(table(TABLE), PARTITION, digest)
    if entity is None:
        return None
    record = ApiToken.from_entity(entity)
    return record if hmac.compare_digest(record.tokenHash, digest) else None


@dataclass
class _Cache:
    """One table's cache: found records and unknown hashes (each with the monotonic time its read started),
    and the token bucket of reads for unknown hashes."""

    found: OrderedDict[str, tuple[float, ApiToken]] = field(default_factory=OrderedDict)
    unknown: OrderedDict[str, float] = field(default_factory=OrderedDict)
    budget: float | None = None  # reads left in the bucket (None: full)
    refilled: float | None = None

    def take(self, now: float) -> float:
        """Take one read from the bucket: 0 when allowed, else the seconds until one is available."""
        if self.budget is None or self.refilled is None:
            self.budget = UNKNOWN_READ_BURST
        else:
            self.budget = min(UNKNOWN_READ_BURST, self.budget + (now - self.refilled) * UNKNOWN_READS_PER_SECOND)
        self.refilled = now
        if self.budget >= 1:
            self.budget -= 1
            return 0.0
        return max(0.1, (1 - self.budget) / UNKNOWN_READS_PER_SECOND)


_lock = threading.Lock()
_caches: dict[tuple[str | None, str | None, str], _Cache] = {}
_forgotten: OrderedDict[str, float] = OrderedDict()  # hash -> when this instance created or revoked it


def _cache_of(scope: tuple[str | None, str | None, str]) -> _Cache:
    """The cache of one table (storage account + table name: tests and tools switch storage in one process)."""
    with _lock:
        cache = _caches.get(scope)
        if cache is None:
            cache = _caches[scope] = _Cache()
        return cache


def _remember(entries: OrderedDict, key: str, value: object) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > MAX_ENTRIES:
        entries.popitem(last=False)


def _forget(digest: str) -> None:
    """Drop a hash from every cache of this instance (its row was just created or deleted here)."""
    with _lock:
        for cache in _caches.values():
            cache.found.pop(digest, None)
            cache.unknown.pop(digest, None)
        _remember(_forgotten, digest, monotonic())


def clear_cache() -> None:
    """Forget every cached token (tests)."""
    with _lock:
        _caches.clear()
        _forgotten.clear()


def admin_token_exists() -> bool:
    """Whether any token has the ``admin`` scope (ends the admin bootstrap). One query: every scope set but
    exactly ``api`` includes ``admin``; the Python check keeps that true if scopes are ever added."""
    rows = query(table(TABLE), "PartitionKey eq @pk and scopes ne @api", select=["scopes"],
                 parameters={"pk": PARTITION, "api": "api"}, results_per_page=100)
    return any("admin" in str(row.get("scopes") or "").split(",") for row in rows)


def list_tokens() -> list[ApiToken]:
    return [ApiToken.from_entity(e) for e in query(table(TABLE), f"PartitionKey eq '{PARTITION}'")]


def revoke_token(token_id: str) -> bool:
    """Delete the token's row; this instance forgets it at once, the others within ``MC_AUTH_CACHE_SECONDS``."""
    for record in list_tokens():
        if record.id == token_id:
            try:
                with storage_errors():
                    table(TABLE).delete_entity(PARTITION, record.tokenHash)
            finally:  # even when the answer was lost: the row may be gone
                _forget(record.tokenHash)
            return True
    return False
