"""HMAC-SHA256 signing of opaque strings (links, list cursors), in the manner of itsdangerous.

Each use gets its own derived key (``purpose``), so a signature made for a cursor can never be
replayed as a link signature. Verification is constant-time.

Key rotation (:class:`KeyRing`, :class:`RingSigner`): a signature is ``<key id>.<mac>``, the mac over
``<key id>.<value>`` and the key id derived from the key (``key_id``: 8 base64url characters of an HMAC of the
key, so it reveals nothing about it). A
ring holds the current key, which signs, and optionally the previous one, still accepted until
``previous_until`` (the rotation's grace period), so links and cursors signed before a rotation keep working.
A bare ``<mac>`` (signed before key ids existed) is checked against the current key, then the previous one
within its grace. A key id the ring does not know raises :class:`UnknownKey` (a ``BadSignature``): the caller
may re-read the ring once (another instance may already sign with a newer key) and verify again
(``shared.storage.keys``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass


class BadSignature(ValueError):
    """The value was not signed with our key for this purpose (tampered, truncated, or foreign)."""


class UnknownKey(BadSignature):
    """The signature names a key id this ring does not hold (a newer key, or a retired or foreign one)."""


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url text, as ``b64url_encode`` writes it; anything else (padding, other
    characters) is refused, so one value has one spelling (a tampered-but-equivalent cookie does not open)."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


class Signer:
    def __init__(self, secret_key: bytes, purpose: str) -> None:
        if len(secret_key) < 16:
            raise ValueError("signing key too short")
        self._key = hmac.new(secret_key, b"mailbox-connect/" + purpose.encode(), hashlib.sha256).digest()

    def signature(self, value: str) -> str:
        return b64url_encode(hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).digest())

    def verify(self, value: str, signature: str) -> None:
        expected = self.signature(value)
        given = signature.encode("utf-8", "replace") if isinstance(signature, str) else None
        if given is None or not hmac.compare_digest(expected.encode(), given):
            raise BadSignature("signature does not match")


KEY_ID_LENGTH = 8


def key_id(secret_key: bytes) -> str:
    """A short public name of ``secret_key`` (it travels in signatures; it says nothing about the key)."""
    return b64url_encode(hmac.new(secret_key, b"mailbox-connect/key-id", hashlib.sha256).digest())[:KEY_ID_LENGTH]


@dataclass(frozen=True)
class KeyRing:
    """The current signing key, and the previous one while its grace period lasts (``previous_until``, epoch s)."""

    current: bytes
    previous: bytes | None = None
    previous_until: float | None = None

    def accepted(self, now: float | None = None) -> dict[str, bytes]:
        """Key id -> key of every key a signature may name now."""
        keys = {key_id(self.current): self.current}
        if self.previous is not None and self.previous_until is not None and \
                (time.time() if now is None else now) < self.previous_until:
            keys.setdefault(key_id(self.previous), self.previous)
        return keys

    def signer(self, purpose: str) -> RingSigner:
        return RingSigner(self, purpose)


class RingSigner:
    """``Signer``'s interface over a :class:`KeyRing`: signs with the current key as ``<key id>.<mac>``."""

    def __init__(self, ring: KeyRing, purpose: str) -> None:
        self.ring = ring
        self.purpose = purpose
        self._current = Signer(ring.current, purpose)
        self._kid = key_id(ring.current)

    def signature(self, value: str) -> str:
        # The key id is signed too: it cannot be stripped (to pass as a bare signature) or swapped.
        return f"{self._kid}.{self._current.signature(f'{self._kid}.{value}')}"

    def verify(self, value: str, signature: str, now: float | None = None) -> None:
        if not isinstance(signature, str):
            raise BadSignature("signature does not match")
        accepted = self.ring.accepted(now)
        kid, dot, mac = signature.partition(".")
        if dot:
            key = accepted.get(kid)
            if key is None:
                raise UnknownKey("signed with a key this service does not hold (now)")
            Signer(key, self.purpose).verify(f"{kid}.{value}", mac)
            return
        for key in accepted.values():  # made before key ids: the current key, or the previous one in its grace
            try:
                Signer(key, self.purpose).verify(value, signature)
                return
            except BadSignature:
                continue
        raise BadSignature("signature does not match")
