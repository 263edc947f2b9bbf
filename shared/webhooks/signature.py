"""The signature of a webhook request: what we send and what a receiver checks (see ``shared.webhooks``).

Two signatures of the same raw body travel on every request, each with the target's secret:

* ``X-EE-Wh-Signature``: EmailEngine's, so a receiver written for EmailEngine verifies unchanged:
  base64url (no padding, as Node's ``digest("base64url")``) of HMAC-SHA256(secret, raw body). It covers no
  time, so it does not stop a replay; dedupe by ``X-EE-Wh-Event-Id`` (the event ``id``).
* ``X-MC-Signature: v1=<hex HMAC-SHA256(secret, "<X-MC-Timestamp>." + raw body)>``: this service's, bound to
  the time of the attempt, so a receiver can refuse replays (``verify_signature``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-MC-Signature", "X-MC-Timestamp"
EVENT_ID_HEADER, EVENT_HEADER = "X-MC-Event-Id", "X-MC-Event"
EE_SIGNATURE_HEADER, EE_EVENT_ID_HEADER = "X-EE-Wh-Signature", "X-EE-Wh-Event-Id"  # EmailEngine's names
EE_ATTEMPTS_HEADER = "X-EE-Wh-Attempts-Made"  # EmailEngine's: attempts before this one


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-MC-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def sign_ee(secret: str, body: bytes) -> str:
    """The ``X-EE-Wh-Signature`` value of ``body``: base64url, unpadded, of HMAC-SHA256(secret, body)."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


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


def verify_ee_signature(secret: str, signature: str, body: bytes) -> bool:
    """What an EmailEngine receiver does with ``X-EE-Wh-Signature`` (constant time; padding tolerated)."""
    given = (signature or "").strip().rstrip("=").encode("utf-8")
    return hmac.compare_digest(sign_ee(secret, body).encode("ascii"), given)
