"""Data keys of envelope mode (issue 14, point 3): 256-bit AES keys, stored wrapped by a Key Vault key.

Where they live
    One row, table ``datakeys`` (PartitionKey ``ring``, RowKey ``""``): ``current`` (the key id that seals new
    ciphertext) and ``keys``, JSON ``{<key id>: {"kek": <Key Vault key version that wrapped it>, "wrapped":
    <base64>, "created": <ISO time>}}``. A data key is never stored in clear: it is wrapped (RSA-OAEP-256) by
    the Key Vault key ``MC_DATA_KEY_NAME`` (``shared.storage.secrets.keywrap``; locally by
    ``MC_LOCAL_SECRET_KEY``), and unwrapped by Key Vault once per key and instance. So Key Vault sees
    O(instances) calls, never O(credentials).

Creating and rotating without downtime
    The first instance that needs a key and finds no ring makes one: a random key, wrapped, written with a
    conditional insert. Two instances racing both wrap a key, one insert wins and the loser reads the winner's
    ring, so every instance seals with the same key from the first ciphertext on. ``rotate`` (``python -m
    shared.cli rotate-data-key``) adds a new key and makes it current in one ETag-conditioned write; old keys
    stay in the ring, so every ciphertext keeps opening, and the storage sweeper re-seals rows under an old key
    in the background (``shared.core.sweeper``). Every ciphertext names its key id (``shared.storage.sealed``).

Each instance
    holds the ring and the keys it unwrapped; it reads the ring again at most every ``REFRESH_SECONDS``, and
    at once (at most every ``FORCED_REFRESH_SECONDS``) when a ciphertext names a key id it does not hold
    (another instance rotated). A ring that cannot be read again (storage briefly down) keeps the one held;
    keys already unwrapped need no Key Vault: with Key Vault down, every key this instance has used keeps
    working.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.settings import Settings
from shared.storage.refreshing import Refreshing
from shared.storage.secrets.base import SecretStoreError
from shared.storage.tables.client import table
from shared.storage.tables.records import create_if_absent, get_or_none, update_if_unchanged, utcnow

TABLE = "datakeys"
RING_PARTITION = "ring"
RING_ROW = ""
REFRESH_SECONDS = 300.0
FORCED_REFRESH_SECONDS = 10.0
ROTATE_ATTEMPTS = 8

log = logging.getLogger("mailbox_connect.datakeys")


class UnknownDataKey(SecretStoreError):
    """A ciphertext names a data key the ring does not hold (retired, or another deployment's)."""


@dataclass(frozen=True)
class WrappedKey:
    kek: str
    wrapped: bytes
    created: str


@dataclass(frozen=True)
class Ring:
    current: str
    keys: dict[str, WrappedKey]
    etag: str | None = None


def parse_ring(entity: dict) -> Ring:
    """The row as a ``Ring``; ``SecretStoreError`` when it is not one (never shows key material)."""
    try:
        raw = json.loads(entity["keys"])
        keys = {kid: WrappedKey(str(v["kek"]), base64.b64decode(v["wrapped"], validate=True), str(v.get("created", "")))
                for kid, v in raw.items()}
        current = str(entity["current"])
        if current not in keys:
            raise KeyError(current)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        raise SecretStoreError(f"the data-key ring (table {TABLE}) is unreadable") from None
    etag = (getattr(entity, "metadata", None) or {}).get("etag")
    return Ring(current, keys, etag)


def ring_entity(ring: Ring) -> dict:
    keys = {kid: {"kek": k.kek, "wrapped": base64.b64encode(k.wrapped).decode(), "created": k.created}
            for kid, k in ring.keys.items()}
    return {"PartitionKey": RING_PARTITION, "RowKey": RING_ROW, "current": ring.current,
            "keys": json.dumps(keys, separators=(",", ":"))}


def new_key_id() -> str:
    return secrets.token_hex(4)


def _wrapped_new_key(settings: Settings) -> tuple[str, bytes, WrappedKey]:
    from shared.storage.secrets.factory import get_key_wrapper

    key = os.urandom(32)
    kek, wrapped = get_key_wrapper(settings).wrap(key)
    return new_key_id(), key, WrappedKey(kek, wrapped, utcnow().isoformat())


def _rotation_logged(old: Ring, new: Ring) -> None:
    if old.current != new.current:
        log.info("data key rotated: sealing with key id %s from now", new.current)


class DataKeys:
    """The data keys of one process (one instance): the ring held as ``shared.storage.refreshing`` holds values,
    and the keys it unwrapped. Tests build several to play several instances."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, ttl: float = REFRESH_SECONDS,
                 forced_min: float = FORCED_REFRESH_SECONDS) -> None:
        self._rings: Refreshing[Ring] = Refreshing(lambda settings: load_ring(settings, create=True),
                                                   "the data-key ring", clock=clock, ttl=ttl, forced_min=forced_min,
                                                   on_change=_rotation_logged)
        self._lock = threading.Lock()
        self._unwrapped: dict[tuple, bytes] = {}  # (slot, key id) -> key

    def current(self, settings: Settings) -> tuple[str, bytes]:
        """The key id and key that seal new ciphertext (creating the ring on first use)."""
        ring = self._ring(settings)
        return ring.current, self._unwrap(settings, ring, ring.current)

    def key(self, settings: Settings, kid: str) -> bytes:
        """The key ``kid``; ``UnknownDataKey`` when the ring does not hold it, even after reading it again."""
        ring = self._ring(settings)
        if kid not in ring.keys:
            ring = self._ring(settings, force=True)
            if kid not in ring.keys:
                raise UnknownDataKey(f"no data key {kid!r} in the ring")
        return self._unwrap(settings, ring, kid)

    def current_id(self, settings: Settings) -> str:
        return self._ring(settings).current

    def clear(self) -> None:
        self._rings.clear()
        with self._lock:
            self._unwrapped.clear()

    @staticmethod
    def _slot(settings: Settings) -> tuple:
        return (settings.tables_connection_string, settings.tables_endpoint, settings.table_prefix,
                settings.key_vault_url, settings.local_secret_key)

    def _ring(self, settings: Settings, *, force: bool = False) -> Ring:
        return self._rings.get(settings, self._slot(settings), force=force)

    def _unwrap(self, settings: Settings, ring: Ring, kid: str) -> bytes:
        slot = (self._slot(settings), kid)
        with self._lock:
            key = self._unwrapped.get(slot)
        if key is not None:
            return key
        from shared.storage.secrets.factory import get_key_wrapper

        wrapped = ring.keys[kid]
        key = get_key_wrapper(settings).unwrap(wrapped.kek, wrapped.wrapped)
        if len(key) != 32:
            raise SecretStoreError(f"data key {kid!r} is not a 256-bit key")
        with self._lock:
            self._unwrapped[slot] = key
        return key


def load_ring(settings: Settings, *, create: bool = False) -> Ring:
    """The ring as stored (one point read); with ``create``, make it when there is none (see the module docs)."""
    client = table(TABLE, settings)
    entity = get_or_none(client, RING_PARTITION, RING_ROW)
    if entity is not None:
        return parse_ring(entity)
    if not create:
        raise SecretStoreError(f"no data-key ring yet (table {TABLE})")
    kid, _, wrapped = _wrapped_new_key(settings)
    if create_if_absent(client, ring_entity(Ring(kid, {kid: wrapped}))):
        log.info("created the data-key ring (key id %s)", kid)
    entity = get_or_none(client, RING_PARTITION, RING_ROW)  # ours, or the ring of the instance that won the race
    if entity is None:
        raise SecretStoreError(f"the data-key ring (table {TABLE}) vanished while it was being created")
    return parse_ring(entity)


def rotate(settings: Settings) -> str:
    """Add a new data key and make it current (ETag-conditioned, retried on a concurrent change); its key id."""
    client = table(TABLE, settings)
    for _ in range(ROTATE_ATTEMPTS):
        ring = load_ring(settings, create=True)
        kid, _, wrapped = _wrapped_new_key(settings)
        new = Ring(kid, {**ring.keys, kid: wrapped})
        if update_if_unchanged(client, ring_entity(new), ring.etag) is not None:
            _keys.clear()
            log.info("data key rotated to key id %s (%d keys in the ring)", kid, len(new.keys))
            return kid
    raise SecretStoreError("the data-key ring kept changing during the rotation; try again")


_keys = DataKeys()


def data_keys() -> DataKeys:
    """The process's data keys."""
    return _keys


def reset_data_keys() -> None:
    """Forget the ring and keys held by this process (tests)."""
    _keys.clear()
