"""Sign-in links: ``data`` is base64url JSON of ``LinkData``, ``sig`` its HMAC-SHA256 (see ``shared.signing``).

Creating a link writes nothing: everything the sign-in needs travels inside the signed data, and the
nonce is recorded only when the link produces an account.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Optional
from urllib.parse import urlencode

from pydantic import ValidationError

from shared.keys import signing_key
from shared.models import LinkData
from shared.settings import Settings
from shared.signing import BadSignature, Signer, b64url_decode, b64url_encode

MAX_DATA_LENGTH = 8192


class LinkError(ValueError):
    """``kind`` is ``invalid`` (tampered, truncated, foreign) or ``expired``."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _signer(settings: Settings) -> Signer:
    return Signer(signing_key(settings), "link")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def encode(link: LinkData, settings: Settings) -> tuple[str, str]:
    data = b64url_encode(json.dumps(link.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode())
    return data, _signer(settings).signature(data)


def link_url(link: LinkData, settings: Settings) -> str:
    data, sig = encode(link, settings)
    return f"{settings.public_url}/accounts/new?{urlencode({'data': data, 'sig': sig})}"


def decode(data: Optional[str], sig: Optional[str], settings: Settings, now: Optional[float] = None) -> LinkData:
    """Verify first (constant time), parse second, then check expiry."""
    if not data or not sig or len(data) > MAX_DATA_LENGTH or len(sig) > 128:
        raise LinkError("invalid")
    try:
        _signer(settings).verify(data, sig)
        link = LinkData.model_validate(json.loads(b64url_decode(data)))
    except (BadSignature, ValueError, ValidationError):
        raise LinkError("invalid") from None
    if link.exp <= (time.time() if now is None else now):
        raise LinkError("expired")
    return link
