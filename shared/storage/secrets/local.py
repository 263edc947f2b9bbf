"""The local secret store: AES-GCM encrypted rows in Table Storage, for runs without Azure.

Row layout (table ``<prefix>secrets``), one row per secret name:

==============  ==========================================================================
PartitionKey    the secret name (Key Vault's naming rule, checked before any I/O)
RowKey          ``""``
v               format version (1)
kid             id of the data key that encrypted the row (see below)
nonce           12 random bytes, fresh on every write
ct              AES-256-GCM ciphertext of the UTF-8 value, with the 16-byte tag appended
content_type    ``text/plain`` (as the Key Vault store writes)
tags            JSON object of the caller's tags (metadata, never the secret), or absent
==============  ==========================================================================

The associated data binds the format version, the key id and the secret name, so a row copied under
another name (or relabelled with another key id) fails to decrypt instead of yielding someone else's
refresh token. A wrong key, a tampered row or an unknown key id raise
``SecretStoreError("cannot decrypt ...")``, never a crash and never the value.

Where the key comes from
------------------------
Locally the 32-byte key is ``MC_LOCAL_SECRET_KEY`` (base64), and its key id is derived from the key
(``local-`` + a 16-hex-digit HMAC fingerprint), so rows written with another local key are recognised as
such. The store refuses to be constructed in Azure (``in_azure`` from the settings, and the Azure
environment markers checked again here), so it cannot be selected there by accident.

Envelope mode (a later step; the door is open)
----------------------------------------------
At volume (a million credentials over a hundred instances) one Key Vault secret per credential needs more
vault reads than a vault allows. Envelope mode is this same class with a different key source:

1. Keep one data-encryption key (DEK) in Key Vault: either a Key Vault *secret* holding the 32 random
   bytes, or a DEK wrapped by a Key Vault *key* (``unwrapKey``), the wrapped blob kept in settings or a
   table.
2. Each instance fetches or unwraps the DEK **once**, at first use, and constructs
   ``LocalSecretStore(dek, table("secrets"), key_id=<Key Vault id incl. version>,
   key_from_key_vault=True)``. That is one Key Vault call per instance; every read and write of a
   credential is then one Table Storage operation.
3. Rotation: write with the newest DEK (its key id goes into each row) and pass the older DEKs in
   ``previous_keys`` (``{key_id: key}``) so rows written before the rotation still decrypt; re-encrypt
   them lazily on their next write or in a sweep.

``key_from_key_vault=True`` is the only way past the Azure refusal, and it is never set from settings.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shared.settings import AZURE_MARKERS
from shared.storage.errors import NotFound, StorageUnavailable, translate
from shared.storage.secrets.base import (
    SecretNotFound,
    SecretStoreError,
    SecretStoreUnavailable,
    validate_secret_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from azure.data.tables import TableClient

FORMAT_VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
CONTENT_TYPE = "text/plain"
# Same cap as Key Vault's, so local runs fail where production would.
MAX_VALUE_BYTES = 25 * 1024
_AAD_PREFIX = b"mailbox-connect/secret"


def local_key_id(key: bytes) -> str:
    """A non-reversible fingerprint of a local key, used as the rows' key id."""
    return "local-" + hmac.new(key, b"mailbox-connect key id", hashlib.sha256).hexdigest()[:16]


def running_in_azure() -> bool:
    return any(os.environ.get(name) for name in AZURE_MARKERS)


class LocalSecretStore:
    """``SecretStore`` over one table, values sealed with AES-256-GCM.

    :param key: the 32-byte data key.
    :param table_client: an ``azure.data.tables.TableClient`` for the secrets table.
    :param in_azure: ``settings.in_azure``; ``True`` makes the constructor refuse (as does running in
        Azure whatever is passed), unless ``key_from_key_vault`` (envelope mode, see the module docs).
    :param key_id: the id written into rows; derived from the key when omitted.
    :param previous_keys: ``{key_id: key}`` of older keys, for reading rows written before a rotation.
    """

    def __init__(
        self,
        key: bytes,
        table_client: TableClient,
        *,
        in_azure: bool = False,
        key_id: str | None = None,
        previous_keys: Mapping[str, bytes] | None = None,
        key_from_key_vault: bool = False,
    ) -> None:
        if (in_azure or running_in_azure()) and not key_from_key_vault:
            raise SecretStoreError(
                "the local secret store cannot be used in Azure: set MC_KEY_VAULT_URL so secrets go to "
                "Key Vault (MC_LOCAL_SECRET_KEY is for local runs only)"
            )
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise SecretStoreError(f"the local secret store needs a {KEY_BYTES}-byte key")
        self.key_id = key_id or local_key_id(bytes(key))
        self._aead = AESGCM(bytes(key))
        self._decrypt_with: dict[str, Any] = {}
        for kid, old in (previous_keys or {}).items():
            if not isinstance(old, (bytes, bytearray)) or len(old) != KEY_BYTES:
                raise SecretStoreError(f"previous key {kid!r} is not {KEY_BYTES} bytes")
            self._decrypt_with[kid] = AESGCM(bytes(old))
        self._decrypt_with[self.key_id] = self._aead
        self._table = table_client

    # -- the SecretStore interface ---------------------------------------------------------------------

    def get(self, name: str) -> str:
        validate_secret_name(name)
        entity = self._call("get", name, lambda: self._table.get_entity(partition_key=name, row_key=""))
        return self._open(name, entity)

    def set(self, name: str, value: str, *, tags: dict[str, str] | None = None) -> None:
        validate_secret_name(name)
        if not isinstance(value, str):
            raise SecretStoreError("secret value must be a string")
        data = value.encode("utf-8")
        if len(data) > MAX_VALUE_BYTES:
            raise SecretStoreError(f"secret value too large (the limit is {MAX_VALUE_BYTES} bytes)")
        nonce = os.urandom(NONCE_BYTES)
        entity: dict[str, Any] = {
            "PartitionKey": name,
            "RowKey": "",
            "v": FORMAT_VERSION,
            "kid": self.key_id,
            "nonce": nonce,
            "ct": self._aead.encrypt(nonce, data, _aad(FORMAT_VERSION, self.key_id, name)),
            "content_type": CONTENT_TYPE,
        }
        if tags:
            entity["tags"] = json.dumps({str(k): "" if v is None else str(v) for k, v in tags.items()})
        from azure.data.tables import UpdateMode

        self._call("set", name, lambda: self._table.upsert_entity(entity, mode=UpdateMode.REPLACE))

    def delete(self, name: str) -> None:
        validate_secret_name(name)
        try:
            self._call("delete", name, lambda: self._table.delete_entity(partition_key=name, row_key=""))
        except SecretNotFound:
            pass

    def get_tags(self, name: str) -> dict[str, str]:
        """The tags written with the current value (for tests and tools; not part of the protocol)."""
        validate_secret_name(name)
        entity = self._call("get", name, lambda: self._table.get_entity(partition_key=name, row_key=""))
        try:
            tags = json.loads(entity.get("tags") or "{}")
        except ValueError:
            return {}
        return tags if isinstance(tags, dict) else {}

    # -- internals -------------------------------------------------------------------------------------

    def _open(self, name: str, entity: Mapping[str, Any]) -> str:
        from cryptography.exceptions import InvalidTag

        version = entity.get("v")
        kid = entity.get("kid")
        nonce = _as_bytes(entity.get("nonce"))
        ct = _as_bytes(entity.get("ct"))
        if version != FORMAT_VERSION or not isinstance(kid, str) or nonce is None or ct is None:
            raise SecretStoreError(f"cannot decrypt secret {name}: the stored row is not in a known format")
        aead = self._decrypt_with.get(kid)
        if aead is None:
            raise SecretStoreError(
                f"cannot decrypt secret {name}: it was written with key {kid}, which this store does not hold "
                f"(current key {self.key_id}; was MC_LOCAL_SECRET_KEY changed?)"
            )
        try:
            plain = aead.decrypt(nonce, ct, _aad(version, kid, name))
        except (InvalidTag, ValueError):
            raise SecretStoreError(
                f"cannot decrypt secret {name}: wrong key, or the row was altered or copied from another name"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretStoreError(f"cannot decrypt secret {name}: the value is not UTF-8") from None

    @staticmethod
    def _call(op: str, name: str, fn: Callable[[], Any]) -> Any:
        """The secret table's failures as the secret store's errors, through the storage boundary's translation."""
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            return fn()
        except AzureError as exc:
            error, where = translate(exc), f"secret table {op} {name}"
            if isinstance(error, NotFound):
                raise SecretNotFound(f"no secret named {name}") from None
            if isinstance(error, StorageUnavailable) or not isinstance(exc, HttpResponseError):
                raise SecretStoreUnavailable(f"{where}: {type(exc).__name__}", retry_after=5) from None
            raise SecretStoreError(f"{where}: HTTP {exc.status_code}") from None


def _aad(version: int, kid: str, name: str) -> bytes:
    return b"\x00".join((_AAD_PREFIX, str(version).encode(), kid.encode("utf-8"), name.encode("utf-8")))


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return None
