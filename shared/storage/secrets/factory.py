"""Choosing and caching the process's secret store.

* ``MC_KEY_VAULT_URL`` set: :class:`~shared.storage.secrets.keyvault.KeyVaultSecretStore`, authenticated with
  :func:`shared.storage.azure_credential.get_azure_credential` (looked up at call time, so tests can monkeypatch
  it) and trusting ``MC_CA_BUNDLE`` when set. Key Vault's challenge names ``https://vault.azure.net`` as
  its resource; the SDK checks that the vault URL is under that domain. The check is relaxed only for a
  loopback vault URL outside Azure (a local fake), never in Azure.
* Otherwise the local encrypted store (:class:`~shared.storage.secrets.local.LocalSecretStore`) with the key in
  ``MC_LOCAL_SECRET_KEY`` (base64 of 32 bytes), over the ``secrets`` table. In Azure (``settings.in_azure``)
  this refuses with :class:`SecretStoreConfigError`; the store class refuses again on its own.

The store is built once per process and settings object (``get_settings()`` is itself cached);
``reset_secret_store()`` forgets it (tests, after changing the environment).

Envelope mode's key wrapper (:func:`get_key_wrapper`) is chosen the same way and cached alike:
``MC_KEY_VAULT_URL`` set: :class:`~shared.storage.secrets.keywrap.KeyVaultKeyWrapper` with the Key Vault key
``MC_DATA_KEY_NAME`` (default ``mc-data-key``); otherwise
:class:`~shared.storage.secrets.keywrap.LocalKeyWrapper` with ``MC_LOCAL_SECRET_KEY`` (same refusals).
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlparse

from shared.settings import Settings, SettingsError, get_settings
from shared.storage.secrets.base import SecretStore, SecretStoreError

if TYPE_CHECKING:  # pragma: no cover
    from azure.core.credentials import TokenCredential

    from shared.storage.secrets.keywrap import KeyWrapper

SECRETS_TABLE = "secrets"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class SecretStoreConfigError(SecretStoreError, SettingsError):
    """The secret store cannot be configured from these settings (names the setting to fix)."""


_lock = threading.Lock()
_built: dict[str, tuple[Settings, object]] = {}  # what -> (the settings it was built for, it)
T = TypeVar("T")


def _once(what: str, settings: Settings | None, build: Callable[[Settings], T]) -> T:
    """``build(settings)``, made once per process and settings object (``get_settings()`` is itself cached)."""
    settings = settings or get_settings()
    with _lock:
        held = _built.get(what)
        if held is not None and held[0] is settings:
            return cast(T, held[1])
        value = build(settings)
        _built[what] = (settings, value)
        return value


def get_secret_store(settings: Settings | None = None) -> SecretStore:
    """The process's secret store for ``settings`` (default: ``get_settings()``), built on first use."""
    return _once("store", settings, build_secret_store)


def get_key_wrapper(settings: Settings | None = None) -> KeyWrapper:
    """The process's key wrapper (envelope mode's KEK) for ``settings``, built on first use."""
    return _once("wrapper", settings, build_key_wrapper)


def reset_secret_store() -> None:
    """Forget the cached store and key wrapper (tests switch settings between runs)."""
    with _lock:
        _built.clear()


def build_key_wrapper(settings: Settings) -> KeyWrapper:
    """A new key wrapper for ``settings`` (uncached)."""
    from shared.storage.secrets.keywrap import KeyVaultKeyWrapper, LocalKeyWrapper

    if settings.key_vault_url:
        url, credential, options = _key_vault_client_args(settings)
        return KeyVaultKeyWrapper(url, settings.data_key_name, credential, **options)
    return LocalKeyWrapper(_local_key(settings))


def build_secret_store(settings: Settings) -> SecretStore:
    """A new store for ``settings`` (uncached)."""
    if settings.key_vault_url:
        return _key_vault_store(settings)
    return _local_store(settings)


def _key_vault_store(settings: Settings) -> SecretStore:
    from shared.storage.secrets.keyvault import KeyVaultSecretStore

    url, credential, options = _key_vault_client_args(settings)
    return KeyVaultSecretStore(url, credential, **options)


def _key_vault_client_args(settings: Settings) -> tuple[str, TokenCredential, dict[str, Any]]:
    """The vault URL (checked), the credential and the client options shared by the store and the wrapper."""
    from shared.storage import azure_credential

    url = settings.key_vault_url or ""
    parsed = urlparse(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise SecretStoreConfigError("MC_KEY_VAULT_URL must be an https URL, e.g. https://<vault>.vault.azure.net")
    local_fake = not settings.in_azure and parsed.hostname.lower() in _LOOPBACK
    options: dict[str, Any] = {
        "connection_verify": settings.ca_bundle or None,
        "verify_challenge_resource": not local_fake,
    }
    return url, azure_credential.get_azure_credential(settings), options


def _local_store(settings: Settings) -> SecretStore:
    key = _local_key(settings)
    from shared.storage.secrets.local import LocalSecretStore
    from shared.storage.tables.client import table

    return LocalSecretStore(key, table(SECRETS_TABLE, settings), in_azure=settings.in_azure)


def _local_key(settings: Settings) -> bytes:
    """The 32 bytes of ``MC_LOCAL_SECRET_KEY``; refuses in Azure, when unset and when malformed."""
    if settings.in_azure:
        raise SecretStoreConfigError(
            "MC_KEY_VAULT_URL is required in Azure: the local secret store (MC_LOCAL_SECRET_KEY) is for "
            "local runs only"
        )
    raw = settings.local_secret_key
    if not raw:
        raise SecretStoreConfigError(
            "set MC_KEY_VAULT_URL (Key Vault) or MC_LOCAL_SECRET_KEY (local runs: base64 of 32 random bytes)"
        )
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretStoreConfigError("MC_LOCAL_SECRET_KEY must be base64 of 32 random bytes") from None
    if len(key) != 32:
        raise SecretStoreConfigError(
            f"MC_LOCAL_SECRET_KEY must be base64 of 32 random bytes (it decodes to {len(key)} bytes)"
        )
    return key
