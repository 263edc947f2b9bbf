"""The link- and cursor-signing keys: ``MC_SIGNING_KEY`` locally, Key Vault secret ``mc-signing-key`` in Azure.

The secret holds either one key (its text, at least 32 characters: what the postprovision hook writes,
``infra/hooks/signing_key.py``) or a key ring, JSON written by ``python -m shared.cli rotate-signing-key``::

    {"current": "<new key>", "previous": "<old key>", "previousUntil": <epoch seconds>}

The current key signs; the previous one is still accepted until ``previousUntil`` (the grace period: by
default ``MC_LINK_MAX_TTL_SECONDS`` plus an hour, so every link signed before the rotation works until it
expires). One secret, one write: a rotation can never be seen half done. Signatures name their key
(``shared.signing``: ``<key id>.<mac>``); a signature without a key id (made before key ids existed) is
checked against the current key and the previous one in its grace.

Every instance picks up a rotation without a restart: the ring is read again at most every
``REFRESH_SECONDS`` (5 minutes; one Key Vault read per instance per 5 minutes) on use, and at once when a
signature names a key id the instance does not know (another instance already signs with the new key),
at most every ``FORCED_REFRESH_SECONDS`` (so made-up key ids cannot drive Key Vault reads). Until an instance
has read the new ring it signs with the old key, which the new ring still accepts: nothing breaks on either side.
A ring that cannot be read again (Key Vault briefly down) keeps the one already held.

Locally ``MC_SIGNING_KEY`` is the one key (read with the settings; rotating it means a restart and drops open
links). ``MC_SIGNING_KEY`` is refused in Azure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from shared.settings import Settings, SettingsError, get_settings
from shared.signing import KeyRing, RingSigner, UnknownKey, key_id
from shared.storage.refreshing import Refreshing

SIGNING_KEY_SECRET = "mc-signing-key"
REFRESH_SECONDS = 300.0  # an instance re-reads the key ring at most this often (on use)
FORCED_REFRESH_SECONDS = 10.0  # ... and at most this often when a signature names a key it does not hold
MIN_KEY_LENGTH = 32

log = logging.getLogger("mailbox_connect.keys")


def parse_ring(value: str) -> KeyRing:
    """The secret's text as a key ring: a plain key, or the JSON of ``ring_text``. ``SettingsError`` if unusable."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            current = data["current"]
            previous = data.get("previous")
            until = data.get("previousUntil")
            if not isinstance(current, str) or not (previous is None or isinstance(previous, str)) or \
                    not (until is None or (isinstance(until, (int, float)) and not isinstance(until, bool))):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise SettingsError(f"secret {SIGNING_KEY_SECRET} is neither a key nor a key ring "
                                '({"current", "previous", "previousUntil"})') from None
        ring = KeyRing(current.encode(), previous.encode() if previous else None,
                       float(until) if previous and until is not None else None)
    else:
        ring = KeyRing(value.encode("utf-8"))
    for key in (ring.current, ring.previous):
        if key is not None and len(key) < MIN_KEY_LENGTH:
            raise SettingsError(f"the signing key must be at least {MIN_KEY_LENGTH} characters")
    return ring


def ring_text(ring: KeyRing) -> str:
    """The secret's text for ``ring`` (``parse_ring`` reads it back)."""
    data: dict[str, object] = {"current": ring.current.decode()}
    if ring.previous is not None:
        data["previous"] = ring.previous.decode()
        data["previousUntil"] = int(ring.previous_until or 0)
    return json.dumps(data, separators=(",", ":"))


def rotated(ring: KeyRing, new_key: str, *, grace_seconds: float, now: float | None = None) -> KeyRing:
    """``ring`` after a rotation to ``new_key``: today's current key becomes the previous one for ``grace_seconds``
    (a previous key still in its grace is dropped: the caller decides whether that is acceptable)."""
    now = time.time() if now is None else now
    return KeyRing(new_key.encode(), ring.current, now + grace_seconds)


def _rotation_logged(old: KeyRing, new: KeyRing) -> None:
    if old.current != new.current:
        log.info("the signing key was rotated: signing with key id %s from now", key_id(new.current))


class KeyCache:
    """The key ring of one process (one instance), re-read at most every ``ttl`` seconds of ``clock``
    (``shared.storage.refreshing``). The module keeps one (:func:`signing_keys`); tests build several to play
    several instances."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, ttl: float = REFRESH_SECONDS,
                 forced_min: float = FORCED_REFRESH_SECONDS) -> None:
        self._rings: Refreshing[KeyRing] = Refreshing(lambda s: _load(s), "the signing key ring", clock=clock, ttl=ttl,
                                                      forced_min=forced_min, on_change=_rotation_logged)

    @property
    def clock(self) -> Callable[[], float]:
        return self._rings.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:  # tests move an instance's clock
        self._rings.clock = value

    def ring(self, settings: Settings, *, force: bool = False) -> KeyRing:
        """The ring; read again when older than ``ttl``, or when ``force`` (a signature names a key id this instance
        does not hold; rate limited)."""
        return self._rings.get(settings, (settings.signing_key, settings.key_vault_url, settings.in_azure),
                               force=force)

    def signer(self, settings: Settings, purpose: str) -> RefreshingSigner:
        return RefreshingSigner(self, settings, purpose)

    def clear(self) -> None:
        self._rings.clear()


class RefreshingSigner:
    """``shared.signing.Signer``'s interface over the process's key ring: signs with the current key; a signature
    naming a key this instance does not hold yet makes it re-read the ring once before refusing."""

    def __init__(self, cache: KeyCache, settings: Settings, purpose: str) -> None:
        self.cache, self.settings, self.purpose = cache, settings, purpose

    def _signer(self, force: bool = False) -> RingSigner:
        return self.cache.ring(self.settings, force=force).signer(self.purpose)

    def signature(self, value: str) -> str:
        return self._signer().signature(value)

    def verify(self, value: str, signature: str) -> None:
        try:
            self._signer().verify(value, signature)
        except UnknownKey:
            self._signer(force=True).verify(value, signature)


_keys = KeyCache()


def signing_keys(settings: Settings | None = None, *, force: bool = False) -> KeyRing:
    """The process's key ring (see the module docstring for when it is read again); ``force``: a key id it does
    not hold was met, read it again now (rate limited: ``FORCED_REFRESH_SECONDS``)."""
    return _keys.ring(settings or get_settings(), force=force)


def signing_key(settings: Settings | None = None) -> bytes:
    """The current key (the one that signs)."""
    return signing_keys(settings).current


def signer(settings: Settings, purpose: str) -> RefreshingSigner:
    """What links (``link``) and list cursors (``cursor``) are signed and verified with."""
    return _keys.signer(settings, purpose)


def reset_keys() -> None:
    """Forget the ring held by this process (tests)."""
    _keys.clear()


def _load(settings: Settings) -> KeyRing:
    if settings.signing_key:
        if settings.in_azure:
            raise SettingsError("MC_SIGNING_KEY must not be set in Azure: the key lives in Key Vault")
        value = settings.signing_key
    elif settings.key_vault_url:
        from shared.storage.secrets.factory import get_secret_store

        value = get_secret_store(settings).get(SIGNING_KEY_SECRET)
    else:
        raise SettingsError("set MC_SIGNING_KEY (local) or MC_KEY_VAULT_URL with secret mc-signing-key")
    if settings.signing_key:
        key = value.encode("utf-8")
        if len(key) < MIN_KEY_LENGTH:
            raise SettingsError(f"the signing key must be at least {MIN_KEY_LENGTH} characters")
        return KeyRing(key)
    return parse_ring(value)
