"""Sealed values and where a secret lives (``MC_SECRET_MODE``; issue 14, points 3 and 4).

Sealing
    ``seal(value, aad)`` is AES-256-GCM under the current data key (``shared.storage.datakeys``):
    ``e1.<key id>.<base64url(12-byte nonce | ciphertext | tag)>``. The associated data is ``e1.<key id>.<aad>``,
    where ``aad`` names the row and field the value belongs to (``rt:<credential id>``, ``at:<credential
    id>:<scopes>``, ``cs:<app id>``): a ciphertext copied to another row or field, or with its key id changed,
    does not open. ``unseal`` raises :class:`Unsealable` for anything that does not open (tampered, another
    row's, a key id the ring does not hold); callers decide what that means (a refresh token that does not
    open marks its accounts ``authenticationError``; an access token that does not open is a cache miss).

Where a secret lives
    ``MC_SECRET_MODE=keyvault`` (the default; DESIGN.md's one secret per credential): the value is a secret-store
    secret (Key Vault in Azure) and the row keeps its name (``secretName``). ``envelope``: the value is sealed
    on the row itself (``sealed``) and no secret is written. Reading follows the row, not the mode: a row
    with a sealed value opens it, else the named secret is read. So rows of both kinds work in either mode,
    which is what lets ``python -m shared.cli migrate-secrets`` move a running deployment either way, one
    row at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shared.settings import Settings
from shared.signing import b64url_decode, b64url_encode
from shared.storage.secrets.base import SecretStoreError

VERSION = "e1"
_NONCE = 12


class Unsealable(SecretStoreError):
    """A sealed value that does not open (tampered, another row's, or a data key not in the ring)."""


def seal(value: str, aad: str, settings: Settings) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from shared.storage.datakeys import data_keys

    kid, key = data_keys().current(settings)
    nonce = os.urandom(_NONCE)
    body = AESGCM(key).encrypt(nonce, value.encode("utf-8"), f"{VERSION}.{kid}.{aad}".encode())
    return f"{VERSION}.{kid}.{b64url_encode(nonce + body)}"


def key_id_of(sealed: str) -> str | None:
    """The data key id a sealed value names (None when it is not one)."""
    parts = sealed.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == VERSION and parts[1] else None


def unseal(sealed: str, aad: str, settings: Settings) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from shared.storage.datakeys import UnknownDataKey, data_keys

    kid = key_id_of(sealed)
    if kid is None:
        raise Unsealable("not a sealed value")
    try:
        raw = b64url_decode(sealed.split(".", 2)[2])
    except (ValueError, TypeError):
        raise Unsealable("a sealed value that is not base64url") from None
    if len(raw) < _NONCE + 16:
        raise Unsealable("a sealed value too short to open")
    try:
        key = data_keys().key(settings, kid)
    except UnknownDataKey:
        raise Unsealable(f"sealed under data key {kid!r}, which the ring does not hold") from None
    try:
        return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], f"{VERSION}.{kid}.{aad}".encode()).decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise Unsealable("a sealed value that does not open (tampered, or another row's)") from None


# --- where a secret lives -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """How a row refers to its secret: a secret-store name (keyvault) or the sealed value (envelope)."""

    secretName: str  # "" when the value is sealed on the row
    sealed: str | None


def put_secret(settings: Settings, *, name: str, aad: str, value: str, mode: str | None = None) -> Placement:
    """Store ``value`` as ``mode`` (default: ``MC_SECRET_MODE``) says (keyvault: writes the secret ``name`` now;
    envelope: seals, no I/O but a data key the first time) and say what the row must hold."""
    if (mode or settings.secret_mode) == "envelope":
        return Placement("", seal(value, aad, settings))
    from shared.storage.secrets.factory import get_secret_store

    get_secret_store(settings).set(name, value)
    return Placement(name, None)


def get_secret(settings: Settings, *, secret_name: str, sealed: str | None, aad: str) -> str:
    """The value a row refers to: its sealed value when it has one, else its secret (``SecretNotFound``)."""
    if sealed:
        return unseal(sealed, aad, settings)
    if not secret_name:
        from shared.storage.secrets.base import SecretNotFound

        raise SecretNotFound("the row holds neither a sealed value nor a secret name")
    from shared.storage.secrets.factory import get_secret_store

    return get_secret_store(settings).get(secret_name)


def drop_secret(settings: Settings, secret_name: str) -> None:
    """Delete the secret a row named (nothing to do for a sealed value: it goes with its row)."""
    if secret_name:
        from shared.storage.secrets.factory import get_secret_store

        get_secret_store(settings).delete(secret_name)
