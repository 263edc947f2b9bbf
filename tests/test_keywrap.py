"""Envelope mode's key wrapping (shared/storage/secrets/keywrap.py): the Key Vault wrapper through the real
``azure-keyvault-keys`` SDK against the HTTPS fake, the local AES-GCM wrapper, and the factory that picks one.
Sleep-free: the Key Vault wrapper's ``sleep`` is a recorder."""

from __future__ import annotations

import base64
import hashlib
import secrets

import pytest

from sandbox.fakes.keyvault import FakeCredential
from shared.settings import SettingsError, get_settings
from shared.storage.secrets.base import SecretStoreError, SecretStoreUnavailable
from shared.storage.secrets.factory import (
    SecretStoreConfigError,
    get_key_wrapper,
    get_secret_store,
    reset_secret_store,
)
from shared.storage.secrets.keywrap import KeyVaultKeyWrapper, KeyWrapper, LocalKeyWrapper
from tests.test_cold_start import fresh, loaded

KEY = "mc-data-key"


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(autouse=True)
def _fresh():
    # The SDK caches each vault's challenge per process, keyed by host:port; a new fake may reuse a port.
    from azure.keyvault.keys._shared import http_challenge_cache

    http_challenge_cache.clear()
    reset_secret_store()
    yield
    reset_secret_store()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def wrapper(keyvault, sleeps) -> KeyVaultKeyWrapper:
    return KeyVaultKeyWrapper(keyvault.url, KEY, FakeCredential(), connection_verify=keyvault.ca_bundle,
                              verify_challenge_resource=False, sleep=sleeps)


def latest_kid(vault, name: str = KEY) -> str:
    return vault.keys[name][-1]["key"]["kid"]


def material(*values: bytes) -> list[str]:
    """The forms key material could take in a message."""
    out: list[str] = []
    for value in values:
        out += [value.hex(), base64.b64encode(value).decode().rstrip("="),
                base64.urlsafe_b64encode(value).decode().rstrip("="), repr(value)[2:-1][:40]]
    return out


def assert_clean(exc: BaseException, *values: bytes) -> None:
    text = str(exc)
    for form in material(*values):
        assert form not in text, f"key material in {text!r}"
    assert exc.__cause__ is None  # the SDK exception (whose request holds the key) is not chained


# -- Key Vault ----------------------------------------------------------------------------------------------


def test_round_trip_with_a_versioned_kek_id(keyvault, wrapper):
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    assert kek_id == latest_kid(keyvault) == f"{keyvault.url}/keys/{KEY}/{keyvault.keys[KEY][-1]['version']}"
    assert data_key not in wrapped and len(wrapped) == 256  # RSA-OAEP-256 under the fake's 2048-bit key
    assert wrapper.unwrap(kek_id, wrapped) == data_key
    # The wrap read the latest key (its public part) and wrapped locally; the unwrap went to the vault.
    assert ("POST", f"/keys/{KEY}/{kek_id.rsplit('/', 1)[1]}/unwrapkey") in keyvault.requests
    # Every wrap is fresh randomness (OAEP): the same data key wraps differently.
    assert wrapper.wrap(data_key)[1] != wrapped


def test_a_new_key_version_is_used_for_new_wraps_and_old_wraps_still_unwrap(keyvault, wrapper):
    old_key = secrets.token_bytes(32)
    old_id, old_wrapped = wrapper.wrap(old_key)
    new_kid = keyvault.create_key(KEY)  # rotation
    assert new_kid != old_id
    new_key = secrets.token_bytes(32)
    new_id, new_wrapped = wrapper.wrap(new_key)
    assert new_id == new_kid
    assert wrapper.unwrap(old_id, old_wrapped) == old_key
    assert wrapper.unwrap(new_id, new_wrapped) == new_key
    # Each wrapped key unwraps only with the version that wrapped it.
    with pytest.raises(SecretStoreError) as info:
        wrapper.unwrap(new_id, old_wrapped)
    assert not isinstance(info.value, SecretStoreUnavailable)


def test_without_get_permission_the_vault_wraps_and_names_the_version(keyvault, wrapper):
    keyvault.fail_next(1, 403, code="Forbidden", method="GET")  # no keys/read: the SDK asks the vault to wrap
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    assert ("POST", f"/keys/{KEY}//wrapkey") in keyvault.requests  # what the SDK sends for an unversioned id
    assert kek_id == latest_kid(keyvault)
    assert wrapper.unwrap(kek_id, wrapped) == data_key


def test_tampered_wrapped_key_is_refused(keyvault, wrapper):
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(SecretStoreError) as info:
        wrapper.unwrap(kek_id, tampered)
    assert not isinstance(info.value, SecretStoreUnavailable)
    assert "400" in str(info.value) and "BadParameter" in str(info.value)
    assert_clean(info.value, data_key, wrapped, tampered)
    for bad in (b"", "not bytes"):
        with pytest.raises(SecretStoreError):
            wrapper.unwrap(kek_id, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("make_id", [
    lambda url, version: f"https://other.vault.azure.net/keys/{KEY}/{version}",
    lambda url, version: f"{url}/keys/another-key/{version}",
    lambda url, version: f"{url}/keys/{KEY}",
    lambda url, version: f"{url}/keys/{KEY}/",
    lambda url, version: f"{url}/keys/{KEY}/{version}/extra",
    lambda url, version: f"{url}/secrets/{KEY}/{version}",
    lambda url, version: f"{url}/keys/{KEY}/{version}?x=1",
    lambda url, version: url.replace("https://", "http://") + f"/keys/{KEY}/{version}",
    lambda url, version: url.replace("https://localhost", "https://127.0.0.1") + f"/keys/{KEY}/{version}",
    lambda url, version: "local:0123abcd",
    lambda url, version: "",
])
def test_a_kek_id_of_another_vault_or_key_is_refused_without_a_request(keyvault, wrapper, make_id):
    kek_id, wrapped = wrapper.wrap(secrets.token_bytes(32))
    before = keyvault.request_count()
    with pytest.raises(SecretStoreError, match="another key"):
        wrapper.unwrap(make_id(keyvault.url, kek_id.rsplit("/", 1)[1]), wrapped)
    assert keyvault.request_count() == before


def test_kek_id_host_and_name_compare_case_insensitively(keyvault, wrapper):
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    version = kek_id.rsplit("/", 1)[1]
    assert wrapper.unwrap(f"{keyvault.url.replace('localhost', 'LOCALHOST')}/keys/MC-Data-Key/{version}",
                          wrapped) == data_key


def test_an_unknown_version_or_key_is_an_error_not_unavailable(keyvault, wrapper, sleeps):
    kek_id, wrapped = wrapper.wrap(secrets.token_bytes(32))
    with pytest.raises(SecretStoreError, match="no such key") as info:
        wrapper.unwrap(f"{keyvault.url}/keys/{KEY}/{'0' * 32}", wrapped)
    assert not isinstance(info.value, SecretStoreUnavailable)
    missing = KeyVaultKeyWrapper(keyvault.url, "not-created", FakeCredential(), connection_verify=keyvault.ca_bundle,
                                 verify_challenge_resource=False, sleep=sleeps)
    with pytest.raises(SecretStoreError, match="not-created") as info:
        missing.wrap(secrets.token_bytes(32))
    assert not isinstance(info.value, SecretStoreUnavailable)
    assert sleeps == []


def test_throttling_once_is_absorbed(keyvault, wrapper, sleeps):
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    assert wrapper.unwrap(kek_id, wrapped) == data_key  # the client for this version has read the key
    keyvault.throttle_next(1, retry_after=2)
    assert wrapper.unwrap(kek_id, wrapped) == data_key
    assert sleeps == [2.0]  # Retry-After honoured, by our loop (the SDK's retries are off)
    unwraps = [r for r in keyvault.requests if r[1].endswith("/unwrapkey")]
    assert len(unwraps) == 3


def test_throttling_during_a_wrap_is_absorbed(keyvault, wrapper, sleeps):
    keyvault.fail_next(2, 429, code="Throttled")  # the key read (the SDK moves on) and the vault's wrap
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    assert kek_id == latest_kid(keyvault) and wrapper.unwrap(kek_id, wrapped) == data_key
    assert len(sleeps) == 1


def test_persistent_503_is_unavailable_with_retry_after(keyvault, wrapper, sleeps):
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    keyvault.fail_next(100, 503)
    with pytest.raises(SecretStoreUnavailable) as info:
        wrapper.unwrap(kek_id, wrapped)
    assert info.value.retry_after and info.value.retry_after >= 1
    assert "HTTP 503" in str(info.value) and "4 attempt" in str(info.value)
    assert len(sleeps) == 3 and sum(sleeps) <= 10
    assert_clean(info.value, data_key, wrapped)
    with pytest.raises(SecretStoreUnavailable) as info:
        wrapper.wrap(data_key)
    assert info.value.retry_after
    assert_clean(info.value, data_key)


def test_a_credential_failure_is_unavailable(keyvault):
    from azure.core.exceptions import ClientAuthenticationError

    class Broken:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("managed identity endpoint unreachable")

    broken = KeyVaultKeyWrapper(keyvault.url, KEY, Broken(), connection_verify=keyvault.ca_bundle,  # type: ignore[arg-type]
                                verify_challenge_resource=False, sleep=lambda s: None)
    data_key = secrets.token_bytes(32)
    with pytest.raises(SecretStoreUnavailable, match="token") as info:
        broken.wrap(data_key)
    assert info.value.retry_after
    assert_clean(info.value, data_key)


def test_only_32_byte_data_keys_are_wrapped(keyvault, wrapper):
    before = keyvault.request_count()
    for bad in (b"", b"x" * 31, b"x" * 33, "x" * 32):
        with pytest.raises(SecretStoreError, match="32 bytes"):
            wrapper.wrap(bad)  # type: ignore[arg-type]
    assert keyvault.request_count() == before


def test_constructor_refusals():
    with pytest.raises(SecretStoreError, match="key name"):
        KeyVaultKeyWrapper("https://v.vault.azure.net", "bad_name", FakeCredential())
    with pytest.raises(SecretStoreError, match="https"):
        KeyVaultKeyWrapper("http://v.vault.azure.net", KEY, FakeCredential())
    with pytest.raises(ValueError):
        KeyVaultKeyWrapper("https://v.vault.azure.net", KEY, FakeCredential(), max_attempts=0)


def test_the_wrapper_satisfies_the_protocol(wrapper):
    def use(w: KeyWrapper) -> KeyWrapper:
        return w

    assert use(wrapper) is wrapper and use(LocalKeyWrapper(secrets.token_bytes(32)))


# -- local --------------------------------------------------------------------------------------------------


def test_local_round_trip_and_kek_id():
    key = secrets.token_bytes(32)
    local = LocalKeyWrapper(key)
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = local.wrap(data_key)
    assert kek_id == "local:" + hashlib.sha256(key).hexdigest()[:8]
    assert data_key not in wrapped and local.wrap(data_key)[1] != wrapped  # a fresh nonce each time
    assert local.unwrap(kek_id, wrapped) == data_key
    assert LocalKeyWrapper(key).unwrap(kek_id, wrapped) == data_key  # same key, another instance


def test_local_refusals(monkeypatch):
    key = secrets.token_bytes(32)
    local = LocalKeyWrapper(key)
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = local.wrap(data_key)
    other = LocalKeyWrapper(secrets.token_bytes(32))
    with pytest.raises(SecretStoreError, match="another key") as info:
        other.unwrap(kek_id, wrapped)
    assert_clean(info.value, data_key, wrapped, key)
    for tampered in (bytes([wrapped[0] ^ 1]) + wrapped[1:], wrapped[:-1] + bytes([wrapped[-1] ^ 1]),
                     wrapped[:-1], wrapped + b"x"):
        with pytest.raises(SecretStoreError) as info:
            local.unwrap(kek_id, tampered)
        assert_clean(info.value, data_key, wrapped, key)
    with pytest.raises(SecretStoreError):
        local.unwrap(f"{kek_id}0", wrapped)
    for bad_key in (b"", b"k" * 16, b"k" * 33, "k" * 32):
        with pytest.raises(SecretStoreError, match="32-byte"):
            LocalKeyWrapper(bad_key)  # type: ignore[arg-type]
    with pytest.raises(SecretStoreError, match="32 bytes"):
        local.wrap(b"short")
    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "x")
    with pytest.raises(SecretStoreError, match="Azure"):
        LocalKeyWrapper(key)


# -- factory ------------------------------------------------------------------------------------------------


def test_factory_picks_local_with_the_local_secret_key_and_caches_it(env):
    wrapper = get_key_wrapper()
    assert isinstance(wrapper, LocalKeyWrapper)
    assert get_key_wrapper() is wrapper
    key = base64.b64decode(env["MC_LOCAL_SECRET_KEY"])
    assert wrapper.kek_id == "local:" + hashlib.sha256(key).hexdigest()[:8]
    kek_id, wrapped = wrapper.wrap(b"d" * 32)
    get_settings.cache_clear()  # new settings object -> new wrapper, same key -> unwraps the same
    again = get_key_wrapper()
    assert again is not wrapper and again.unwrap(kek_id, wrapped) == b"d" * 32
    reset_secret_store()
    assert get_key_wrapper() is not again


@pytest.mark.parametrize("value", [None, "not base64!", base64.b64encode(b"sixteen bytes!!!").decode()])
def test_factory_local_key_refusals_are_the_stores(set_env, value):
    set_env(MC_LOCAL_SECRET_KEY=value)
    with pytest.raises(SecretStoreConfigError, match="MC_LOCAL_SECRET_KEY") as wrapper_error:
        get_key_wrapper()
    with pytest.raises(SecretStoreConfigError) as store_error:
        get_secret_store()
    assert str(wrapper_error.value) == str(store_error.value)
    assert isinstance(wrapper_error.value, SettingsError)


def test_factory_refuses_local_in_azure(set_env):
    set_env(WEBSITE_INSTANCE_ID="x")
    with pytest.raises(SecretStoreConfigError, match="MC_KEY_VAULT_URL is required in Azure"):
        get_key_wrapper()


def test_factory_picks_key_vault_with_the_data_key_name(keyvault, set_env):
    set_env(MC_KEY_VAULT_URL=keyvault.url, MC_CA_BUNDLE=keyvault.ca_bundle)
    assert get_settings().data_key_name == KEY
    wrapper = get_key_wrapper()
    assert isinstance(wrapper, KeyVaultKeyWrapper) and wrapper.key_name == KEY
    assert get_key_wrapper() is wrapper
    data_key = secrets.token_bytes(32)
    kek_id, wrapped = wrapper.wrap(data_key)
    assert kek_id == latest_kid(keyvault) and wrapper.unwrap(kek_id, wrapped) == data_key

    other = keyvault.create_key("other-kek")
    set_env(MC_DATA_KEY_NAME="other-kek")
    wrapper = get_key_wrapper()
    assert wrapper.wrap(data_key)[0] == other


def test_factory_key_vault_in_azure_keeps_challenge_verification(keyvault, set_env):
    set_env(MC_KEY_VAULT_URL=keyvault.url, MC_CA_BUNDLE=keyvault.ca_bundle, WEBSITE_INSTANCE_ID="x")
    with pytest.raises(SecretStoreError, match="challenge"):  # a loopback "vault" gets no token in Azure
        get_key_wrapper().wrap(secrets.token_bytes(32))


def test_data_key_name_setting_is_checked(set_env):
    set_env(MC_DATA_KEY_NAME="bad_name")
    with pytest.raises(Exception, match="MC_DATA_KEY_NAME"):
        get_settings()


# -- cold start ---------------------------------------------------------------------------------------------


def test_cold_start_imports_neither_the_keys_sdk_nor_cryptography():
    modules, _ = fresh("import function_app, shared.storage.secrets.keywrap")
    assert not loaded(modules, "azure.keyvault.keys")
    assert not loaded(modules, "cryptography")
