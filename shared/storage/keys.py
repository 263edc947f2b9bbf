"""The link- and cookie-signing key: ``MC_SIGNING_KEY`` locally, Key Vault secret ``mc-signing-key`` in Azure."""

from __future__ import annotations

import threading

from shared.settings import Settings, SettingsError, get_settings

SIGNING_KEY_SECRET = "mc-signing-key"

_lock = threading.Lock()
_cache: dict[tuple, bytes] = {}


def signing_key(settings: Settings | None = None) -> bytes:
    """Read once per process (one Key Vault call per instance in Azure)."""
    settings = settings or get_settings()
    cache_key = (settings.signing_key, settings.key_vault_url)
    with _lock:
        key = _cache.get(cache_key)
        if key is None:
            key = _load(settings)
            _cache[cache_key] = key
        return key


def _load(settings: Settings) -> bytes:
    if settings.signing_key:
        if settings.in_azure:
            raise SettingsError("MC_SIGNING_KEY must not be set in Azure: the key lives in Key Vault")
        value = settings.signing_key
    elif settings.key_vault_url:
        from shared.storage.secrets.factory import get_secret_store

        value = get_secret_store(settings).get(SIGNING_KEY_SECRET)
    else:
        raise SettingsError("set MC_SIGNING_KEY (local) or MC_KEY_VAULT_URL with secret mc-signing-key")
    key = value.encode("utf-8")
    if len(key) < 32:
        raise SettingsError("the signing key must be at least 32 characters")
    return key
