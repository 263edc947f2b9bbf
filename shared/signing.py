"""HMAC-SHA256 signing of opaque strings (links, browser-binding cookies), in the manner of itsdangerous.

Each use gets its own derived key (``purpose``), so a signature made for a cookie can never be
replayed as a link signature. Verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class BadSignature(ValueError):
    """The value was not signed with our key for this purpose (tampered, truncated, or foreign)."""


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not text.isascii():
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
