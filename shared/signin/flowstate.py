"""The pending sign-in, kept in the browser: a signed ``state`` and an encrypted flow cookie (issue 14, point 2).

``GET /accounts/new`` writes nothing: what ``GET /oauth`` needs (MSAL's auth-code flow: ``state``, OIDC
``nonce``, PKCE ``code_verifier``, ``redirect_uri``, ``scope``; the OAuth app; the verified link; an expiry)
travels in the ``mc_signin_<hash of state>`` cookie (``HttpOnly``, ``SameSite=Lax``, ``Path=/oauth``), sealed
with AES-256-GCM:

* the cookie value is ``v1.<key id>.<base64url(12-byte IV | ciphertext | tag)>`` over the zlib-compressed JSON;
  the AES key is HKDF-SHA256 (info ``mailbox-connect/signin-flow``) of the signing key the key id names
  (``shared.storage.keys``: the ring that signs links), so a rotation works as for links: a cookie sealed
  with the previous key opens during the rotation's grace, a key id this instance does not hold makes it
  re-read the ring once (rate limited), and a cookie of a retired or foreign key is refused;
* the associated data is ``v1.<key id>.<state>``: a cookie is bound to its own sign-in (a cookie copied
  under another state's name does not open), and its key id cannot be swapped;
* the payload carries the expiry (``x``, epoch seconds: ``MC_FLOW_TTL_SECONDS`` after the start) and the
  link (its ``nonce`` is what the callback claims), so the flow is bound to that link.

A maximal link (8,192 characters of data) does not fit one cookie (about 4 KB per cookie in browsers): the
value is split over up to ``MAX_CHUNKS`` cookies (``<name>``, ``<name>_1``, ``<name>_2``) of at most
``CHUNK_CHARS`` characters; a usual link needs one (``docs/performance.md`` gives the sizes).

The ``state`` itself is signed (``<22 random characters><key id><mac>``, purpose ``signin-state``), so a
callback without the cookie can still be told apart: a state this service made (the cookie is missing: the
callback came to another browser, ``browser_mismatch``) or one it never made (``session_unknown``).

Refusals: :class:`FlowRefused` with ``kind`` ``browser_mismatch`` (no cookie, or one that does not open:
tampered, truncated, another sign-in's, a key this service does not hold) or ``session_unknown`` (a state
not made here); the caller checks the expiry (``session_expired``). Never an exception beyond these.
"""

from __future__ import annotations

import json
import secrets
import zlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.settings import Settings
from shared.signing import KEY_ID_LENGTH, BadSignature, b64url_decode, b64url_encode, key_id
from shared.storage.keys import signer, signing_keys

VERSION = "v1"
CHUNK_CHARS = 3800  # characters of one cookie's value (browsers keep about 4,096 bytes of name and value)
MAX_CHUNKS = 3  # 3 x 3,800 holds the largest link (8,192 characters of data) with the flow
_RANDOM_CHARS = 22  # 16 random bytes
_INFO = b"mailbox-connect/signin-flow"
FLOW_KEYS = ("state", "nonce", "code_verifier", "redirect_uri", "scope", "claims_challenge", "max_age")


class FlowRefused(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Flow:
    """What the callback needs of its sign-in (opened from the cookie)."""

    state: str
    app_id: str
    flow: dict[str, Any]  # for MSAL's acquire_token_by_auth_code_flow
    link: dict[str, Any]  # the verified link (validated again by the caller)
    expires: float  # epoch seconds


# --- the state -------------------------------------------------------------------------------------

def new_state(settings: Settings) -> str:
    """A fresh ``state``: random, then a signature over it (key id + mac; base64url only: no separator)."""
    value = b64url_encode(secrets.token_bytes(16))
    kid, _, mac = signer(settings, "signin-state").signature(value).partition(".")
    return value + kid + mac


def state_is_ours(state: str, settings: Settings) -> bool:
    value, kid, mac = state[:_RANDOM_CHARS], state[_RANDOM_CHARS:_RANDOM_CHARS + KEY_ID_LENGTH], \
        state[_RANDOM_CHARS + KEY_ID_LENGTH:]
    if not mac:
        return False
    try:
        signer(settings, "signin-state").verify(value, f"{kid}.{mac}")
    except (BadSignature, ValueError):
        return False
    return True


# --- the cookie ------------------------------------------------------------------------------------

def _aead(key: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key))


def seal(flow: Flow, settings: Settings) -> list[str]:
    """The cookie value(s) of ``flow``: one, or up to ``MAX_CHUNKS`` for a very large link."""
    key = signing_keys(settings).current
    kid = key_id(key)
    payload = {"x": int(flow.expires), "a": flow.app_id, "l": flow.link,
               "f": {k: flow.flow[k] for k in FLOW_KEYS if flow.flow.get(k) is not None}}
    body = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 9)
    iv = secrets.token_bytes(12)
    sealed = iv + _aead(key).encrypt(iv, body, f"{VERSION}.{kid}.{flow.state}".encode())
    value = f"{VERSION}.{kid}.{b64url_encode(sealed)}"
    chunks = [value[i:i + CHUNK_CHARS] for i in range(0, len(value), CHUNK_CHARS)]
    if len(chunks) > MAX_CHUNKS:  # cannot happen for a link decode() accepts; refuse rather than truncate
        raise ValueError("the sign-in flow does not fit its cookies")
    return chunks


def open_flow(state: str, chunks: list[str], settings: Settings) -> Flow:
    """The flow sealed in the cookie value(s) ``chunks`` for ``state``; :class:`FlowRefused` otherwise."""
    value = "".join(chunks)
    if not value:
        raise FlowRefused("browser_mismatch" if state_is_ours(state, settings) else "session_unknown")
    version, _, rest = value.partition(".")
    kid, _, text = rest.partition(".")
    if version != VERSION or not kid or not text or len(value) > MAX_CHUNKS * CHUNK_CHARS:
        raise FlowRefused("browser_mismatch")
    key = signing_keys(settings).accepted().get(kid)
    if key is None:  # another instance may already seal with a newer key (rate limited in the cache)
        key = signing_keys(settings, force=True).accepted().get(kid)
    if key is None:
        raise FlowRefused("browser_mismatch")
    try:
        sealed = b64url_decode(text)
        body = _aead(key).decrypt(sealed[:12], sealed[12:], f"{VERSION}.{kid}.{state}".encode())
        payload = json.loads(zlib.decompress(body))
        flow, link, app_id, expires = payload["f"], payload["l"], payload["a"], payload["x"]
        if not isinstance(flow, dict) or not isinstance(link, dict) or not isinstance(app_id, str) or \
                not isinstance(expires, int) or flow.get("state") != state:
            raise ValueError("malformed")
    except (InvalidTag, ValueError, KeyError, TypeError, zlib.error):
        raise FlowRefused("browser_mismatch") from None
    return Flow(state=state, app_id=app_id, flow=flow, link=link, expires=float(expires))
