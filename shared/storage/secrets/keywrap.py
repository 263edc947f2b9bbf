"""Envelope mode's key-encryption key (KEK): wrapping and unwrapping the 32-byte data keys.

Refresh tokens are sealed with data keys (AES-256-GCM); each data key is stored only *wrapped* by the KEK and
unwrapped once per instance. This module is that wrapping layer, behind the :class:`KeyWrapper` protocol:

* :class:`KeyVaultKeyWrapper` (production): an RSA key in Key Vault (``MC_DATA_KEY_NAME``, created by Bicep
  with the operations ``wrapKey`` and ``unwrapKey`` only), algorithm RSA-OAEP-256, through
  ``azure-keyvault-keys``' ``CryptographyClient``. The private key never leaves the vault.
* :class:`LocalKeyWrapper` (local runs without Key Vault): AES-256-GCM under ``MC_LOCAL_SECRET_KEY``.

``kek_id`` names the exact key that wrapped a data key, so it can always be unwrapped after the KEK is
rotated: for Key Vault the *versioned* key id ``https://<vault>/keys/<name>/<version>``, for the local key
``local:<first 8 hex digits of sha256(key)>``.

Key Vault behaviour (the requests, as the SDK makes them):

* ``wrap`` uses the key's latest version: a fresh client for ``{vault}/keys/{name}`` GETs the key (its public
  part; the role grants ``get``) and wraps locally with it, which is the SDK's way for an RSA key and is what
  Key Vault itself would compute; so one GET per wrap (wraps are rare: one per new data key), and a new KEK
  version is used from the next wrap on. Without ``get`` permission (403), or if that GET fails, the SDK asks
  the vault instead (``POST /keys/{name}//wrapkey``, empty version = latest) and the version is read from the
  answer's ``kid``.
* ``unwrap`` goes to the vault (``POST /keys/{name}/{version}/unwrapkey``), with the versioned id it is given.
  A ``kek_id`` that is not a version of this vault's key is refused before any request. The SDK GETs the
  key version once per client first (to try local crypto, which cannot unwrap with a public key); clients are
  kept per key version, so that GET happens once per KEK version per instance.
* Errors as for secrets (:func:`shared.storage.secrets.keyvault.call_with_retries`, the same loop): 429 / 5xx
  / network errors are retried within a budget, then :class:`SecretStoreUnavailable` with ``retry_after``;
  a credential failure is :class:`SecretStoreUnavailable`; any other answer (unknown key or version,
  permission, a wrapped value that does not unwrap) is :class:`SecretStoreError`. Messages carry the
  operation, the key name, the HTTP status and Key Vault's error code, never key material, and the SDK
  exception is not chained (its request holds the key). The SDK's own retries are off (``retry_total=0``).

The SDK and ``cryptography`` are imported in the constructors and methods, never at module import (cold
starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from shared.storage.secrets.base import SecretNotFound, SecretStoreError

if TYPE_CHECKING:  # pragma: no cover
    from azure.core.credentials import TokenCredential
    from azure.keyvault.keys.crypto import CryptographyClient

DATA_KEY_BYTES = 32
_KEY_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VERSION = re.compile(r"^[0-9A-Za-z]{1,64}$")
# Clients kept for unwrapping (one per KEK version); more versions than this in use at once is not expected.
_MAX_CLIENTS = 32


class KeyWrapper(Protocol):
    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """Wrap a 32-byte data key; returns (kek_id, wrapped): kek_id names the exact key version used."""

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """The data key back; raises SecretStoreError when it cannot be unwrapped (wrong key, tampered)."""


def _check_data_key(data_key: bytes) -> bytes:
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != DATA_KEY_BYTES:
        raise SecretStoreError(f"a data key is {DATA_KEY_BYTES} bytes")
    return bytes(data_key)


def _check_wrapped(wrapped: bytes) -> bytes:
    if not isinstance(wrapped, (bytes, bytearray)) or not wrapped:
        raise SecretStoreError("the wrapped data key must be non-empty bytes")
    return bytes(wrapped)


class KeyVaultKeyWrapper:
    """``KeyWrapper`` over one RSA key in Key Vault (RSA-OAEP-256).

    :param vault_url: ``https://<vault>.vault.azure.net`` (any URL in tests).
    :param key_name: the key's name (``MC_DATA_KEY_NAME``).
    :param credential: an azure-core ``TokenCredential`` (managed identity in Azure).
    :param connection_verify: CA bundle path for TLS (tests and the sandbox); ``None`` keeps the default.
    :param verify_challenge_resource: ``False`` only for a local fake (see ``KeyVaultSecretStore``).
    :param sleep: called with seconds to wait between retries (tests inject a recorder).
    :param max_attempts: attempts per request on 429 / 5xx / network errors.
    :param max_wait: total seconds one wrap or unwrap may spend sleeping.
    :param client_kwargs: extra keyword arguments for ``CryptographyClient`` (e.g. ``api_version``).
    """

    def __init__(
        self,
        vault_url: str,
        key_name: str,
        credential: TokenCredential,
        *,
        connection_verify: str | None = None,
        verify_challenge_resource: bool = True,
        sleep: Callable[[float], Any] = time.sleep,
        max_attempts: int = 4,
        max_wait: float = 10.0,
        connection_timeout: float = 5,
        read_timeout: float = 15,
        **client_kwargs: Any,
    ) -> None:
        from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not isinstance(key_name, str) or not _KEY_NAME.match(key_name):
            raise SecretStoreError("invalid Key Vault key name: only 0-9, a-z, A-Z and '-', 1 to 127 characters")
        self.vault_url = vault_url.rstrip("/")
        parts = urlsplit(self.vault_url)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise SecretStoreError("the vault URL must be https://<vault>.vault.azure.net")
        self._origin = (parts.hostname.lower(), parts.port or 443)
        self.key_name = key_name
        # Unversioned: the SDK resolves it to the latest version (GET /keys/{name}/).
        self.key_id = f"{self.vault_url}/keys/{key_name}"
        self._credential = credential
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._client_class = CryptographyClient
        self._algorithm = KeyWrapAlgorithm.rsa_oaep_256
        kwargs: dict[str, Any] = {
            "verify_challenge_resource": verify_challenge_resource,
            # Our own loop retries (call_with_retries); the SDK's policy would hide 429s.
            "retry_total": 0,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
        }
        if connection_verify:
            kwargs["connection_verify"] = connection_verify
        kwargs.update(client_kwargs)
        self._client_kwargs = kwargs
        self._lock = threading.Lock()
        self._unwrap_clients: dict[str, CryptographyClient] = {}

    # -- the KeyWrapper interface ----------------------------------------------------------------------

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        data_key = _check_data_key(data_key)
        # A fresh client each time: it resolves the latest key version (a rotated KEK is used at once).
        client = self._new_client(self.key_id)
        answered: list[str] = []

        def hook(response: Any) -> None:
            # The SDK reports the unversioned id when the vault wrapped (no GET permission); the answer's
            # ``kid`` names the version.
            http = response.http_response
            if http.status_code == 200 and urlsplit(http.request.url).path.endswith("/wrapkey"):
                try:
                    kid = json.loads(http.text()).get("kid")
                except (ValueError, AttributeError):
                    kid = None
                if isinstance(kid, str):
                    answered.append(kid)

        result = self._run(
            "wrap", lambda: client.wrap_key(self._algorithm, data_key, raw_response_hook=hook)
        )
        for candidate in (*answered, result.key_id):
            if candidate and self._version_of(candidate):
                return self._canonical(self._version_of(candidate) or ""), bytes(result.encrypted_key)
        raise SecretStoreError(f"Key Vault wrap {self.key_name}: the answer does not name a key version")

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        version = self._version_of(kek_id)
        if version is None:
            raise SecretStoreError(
                f"Key Vault unwrap {self.key_name}: the data key was wrapped by another key "
                f"({_shorten(kek_id)}), not a version of {self.key_id}"
            )
        wrapped = _check_wrapped(wrapped)
        client = self._unwrap_client(self._canonical(version))
        result = self._run("unwrap", lambda: client.unwrap_key(self._algorithm, wrapped))
        key = bytes(result.key)
        if len(key) != DATA_KEY_BYTES:
            raise SecretStoreError(
                f"Key Vault unwrap {self.key_name}: the unwrapped value is not a {DATA_KEY_BYTES}-byte data key"
            )
        return key

    # -- internals -------------------------------------------------------------------------------------

    def _new_client(self, key_id: str) -> CryptographyClient:
        return self._client_class(key_id, self._credential, **self._client_kwargs)

    def _unwrap_client(self, kek_id: str) -> CryptographyClient:
        with self._lock:
            client = self._unwrap_clients.get(kek_id)
            if client is None:
                if len(self._unwrap_clients) >= _MAX_CLIENTS:
                    self._unwrap_clients.clear()
                client = self._unwrap_clients[kek_id] = self._new_client(kek_id)
            return client

    def _run(self, op: str, fn: Callable[[], Any]) -> Any:
        from shared.storage.secrets.keyvault import Budget, HttpFailure, call_with_retries

        try:
            return call_with_retries(
                op, self.key_name, Budget(self._sleep, self._max_wait), fn, self._max_attempts, kind="key"
            )
        except SecretNotFound:
            raise SecretStoreError(
                f"Key Vault {op} {self.key_name}: no such key (or key version) in {self.vault_url}"
            ) from None
        except HttpFailure as exc:
            raise SecretStoreError(str(exc)) from None

    def _version_of(self, kek_id: Any) -> str | None:
        """The version in ``kek_id`` when it is a version of this vault's key, else ``None``."""
        if not isinstance(kek_id, str) or len(kek_id) > 2048:
            return None
        try:
            parts = urlsplit(kek_id)
            origin = ((parts.hostname or "").lower(), parts.port or 443)
        except ValueError:
            return None
        if parts.scheme != "https" or origin != self._origin or parts.query or parts.fragment:
            return None
        segs = parts.path.split("/")
        # ["", "keys", name, version]; Key Vault names are case-insensitive.
        if len(segs) != 4 or segs[0] != "" or segs[1] != "keys" or segs[2].lower() != self.key_name.lower():
            return None
        return segs[3] if _VERSION.match(segs[3]) else None

    def _canonical(self, version: str) -> str:
        return f"{self.key_id}/{version}"


class LocalKeyWrapper:
    """``KeyWrapper`` for local runs: AES-256-GCM under the 32-byte ``MC_LOCAL_SECRET_KEY``.

    ``wrapped`` is the 12-byte nonce followed by the ciphertext and its tag; the associated data binds the
    ``kek_id``. Refuses to be constructed in Azure (the Azure environment markers), like the local store.
    """

    NONCE_BYTES = 12

    def __init__(self, key: bytes) -> None:
        from shared.storage.secrets.local import running_in_azure

        if running_in_azure():
            raise SecretStoreError(
                "the local key wrapper cannot be used in Azure: set MC_KEY_VAULT_URL so data keys are wrapped "
                "by Key Vault (MC_LOCAL_SECRET_KEY is for local runs only)"
            )
        if not isinstance(key, (bytes, bytearray)) or len(key) != DATA_KEY_BYTES:
            raise SecretStoreError(f"the local key wrapper needs a {DATA_KEY_BYTES}-byte key")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.kek_id = "local:" + hashlib.sha256(bytes(key)).hexdigest()[:8]
        self._aead = AESGCM(bytes(key))
        self._aad = b"mailbox-connect/keywrap\x00" + self.kek_id.encode()

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        data_key = _check_data_key(data_key)
        nonce = os.urandom(self.NONCE_BYTES)
        return self.kek_id, nonce + self._aead.encrypt(nonce, data_key, self._aad)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if kek_id != self.kek_id:
            raise SecretStoreError(
                f"local unwrap: the data key was wrapped by another key ({_shorten(kek_id)}), "
                f"not {self.kek_id} (MC_LOCAL_SECRET_KEY changed?)"
            )
        wrapped = _check_wrapped(wrapped)
        if len(wrapped) != self.NONCE_BYTES + DATA_KEY_BYTES + 16:
            raise SecretStoreError("local unwrap: the wrapped data key has the wrong length")
        try:
            return self._aead.decrypt(wrapped[: self.NONCE_BYTES], wrapped[self.NONCE_BYTES :], self._aad)
        except InvalidTag:
            raise SecretStoreError("local unwrap: cannot unwrap the data key (tampered, or another key)") from None


def _shorten(value: Any) -> str:
    text = value if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 200 else text[:200] + "..."
