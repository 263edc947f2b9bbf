"""The signature of a webhook request: what we send and what a receiver checks (see ``shared.webhooks``)."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-MC-Signature", "X-MC-Timestamp"
EVENT_ID_HEADER, EVENT_HEADER = "X-MC-Event-Id", "X-MC-Event"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-MC-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(secret: str, timestamp: str, signature: str, body: bytes, *, tolerance: int = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: the timestamp is recent and one ``v1=`` signature matches (constant time)."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    expected = sign(secret, sent, body)
    return any(hmac.compare_digest(expected, s.strip()) for s in (signature or "").split(","))
