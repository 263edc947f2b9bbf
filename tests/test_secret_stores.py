"""The secret stores: Key Vault (real SDK against the HTTPS fake), the local AES-GCM store (real Azurite),
and the factory that picks one. Sleep-free: the Key Vault store's ``sleep`` is a recorder."""

from __future__ import annotations

import base64
import secrets
import socket

import pytest

from sandbox.fakes.keyvault import FakeCredential, FakeKeyVault
from shared.settings import SettingsError, get_settings
from shared.storage.secrets.base import SecretNotFound, SecretStoreError, SecretStoreUnavailable
from shared.storage.secrets.factory import SecretStoreConfigError, get_secret_store, reset_secret_store
from shared.storage.secrets.keyvault import KeyVaultSecretStore
from shared.storage.secrets.local import LocalSecretStore, local_key_id
from shared.storage.tables.client import table

BAD_NAMES = ["a_b", "x" * 128, "", "a/b", "a.b", "caf\u00e9", "a b"]


def _forget_challenges() -> None:
    # The SDK caches each vault's challenge per process, keyed by host:port; a new fake may reuse a port.
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()


@pytest.fixture(scope="module")
def _vault():
    fake = FakeKeyVault().start()
    yield fake
    fake.stop()


@pytest.fixture
def kv(_vault):
    _vault.reset()
    _forget_challenges()  # every test starts with the 401 challenge round trip
    return _vault


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def store(kv, credential, sleeps) -> KeyVaultSecretStore:
    return KeyVaultSecretStore(
        kv.url, credential, connection_verify=kv.ca_bundle, sleep=sleeps, verify_challenge_resource=False
    )


# -- Key Vault store ---------------------------------------------------------------------------------------


def test_kv_round_trip_with_challenge(kv, store, credential):
    store.set("cred-1", "refresh-token-value", tags={"kind": "credential", "tid": "t1"})
    # The first request is the SDK's bodiless challenge probe; the 401 tells it the tenant and resource.
    assert kv.requests[:2] == [("PUT", "/secrets/cred-1"), ("PUT", "/secrets/cred-1")]
    scopes, kwargs = credential.calls[0]
    assert scopes == ("https://vault.azure.net/.default",)
    assert kwargs.get("tenant_id") == kv.tenant_id
    assert kv.tokens_seen and set(kv.tokens_seen) == {credential.token}

    current = kv.current("cred-1")
    assert current["value"] == "refresh-token-value"
    assert current["contentType"] == "text/plain"
    assert current["tags"] == {"kind": "credential", "tid": "t1"}
    assert store.get("cred-1") == "refresh-token-value"

    store.delete("cred-1")
    with pytest.raises(SecretNotFound):
        store.get("cred-1")
    assert "cred-1" in kv.deleted


def test_kv_one_request_per_call_when_warm(kv, store):
    store.set("warm", "v0")
    for op in (lambda: store.set("warm", "v1"), lambda: store.get("warm"), lambda: store.delete("warm")):
        before = kv.request_count()
        op()
        assert kv.request_count() - before == 1


def test_kv_overwrite_creates_new_version_and_get_returns_newest(kv, store):
    store.set("multi", "first")
    store.set("multi", "second")
    store.set("multi", "third")
    assert [v["value"] for v in kv.secrets["multi"]] == ["first", "second", "third"]
    assert len({v["version"] for v in kv.secrets["multi"]}) == 3
    assert store.get("multi") == "third"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_kv_invalid_name_rejected_before_any_request(kv, store, name):
    store.set("warm", "v")  # so the challenge is done and counts are steady
    before = kv.request_count()
    for call in (lambda: store.get(name), lambda: store.set(name, "v"), lambda: store.delete(name)):
        with pytest.raises(SecretStoreError, match="invalid secret name"):
            call()
    assert kv.request_count() == before


def test_fake_enforces_the_name_rule_itself(kv, credential):
    from azure.core.exceptions import HttpResponseError
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(kv.url, credential, connection_verify=kv.ca_bundle, verify_challenge_resource=False,
                          retry_total=0)
    with pytest.raises(HttpResponseError) as info:
        client.set_secret("a_b", "v")
    assert info.value.status_code == 400
    assert "BadParameter" in info.value.response.text()


def test_kv_missing_is_secret_not_found(store):
    with pytest.raises(SecretNotFound):
        store.get("never-written")


def test_kv_delete_missing_is_fine(kv, store):
    store.delete("never-written")
    store.set("gone", "v")
    store.delete("gone")
    store.delete("gone")  # already soft-deleted: 404, not an error


def test_kv_delete_then_set_recovers_then_writes(kv, store, sleeps):
    store.set("reused", "old-value")
    store.delete("reused")
    before = kv.request_count()
    store.set("reused", "new-value")
    assert kv.requests[before:] == [
        ("PUT", "/secrets/reused"),  # 409 ObjectIsDeletedButRecoverable
        ("POST", "/deletedsecrets/reused/recover"),
        ("GET", "/secrets/reused/"),  # recovered and readable
        ("PUT", "/secrets/reused"),
    ]
    assert store.get("reused") == "new-value"
    assert "reused" not in kv.deleted
    assert [v["value"] for v in kv.secrets["reused"]] == ["old-value", "new-value"]
    assert not any(path.startswith("/deletedsecrets/") and m == "DELETE" for m, path in kv.requests)  # no purge
    assert sleeps == []


def test_kv_recover_accepts_the_flat_error_shape(kv, store):
    kv.flat_conflict_code = True
    store.set("flat", "a")
    store.delete("flat")
    store.set("flat", "b")
    assert store.get("flat") == "b"


def test_kv_recovery_in_progress_is_polled_with_injected_sleep(kv, store, sleeps):
    kv.recovery_lag = 2  # the recovered secret answers 404 to the next two reads
    store.set("slow", "a")
    store.delete("slow")
    store.set("slow", "b")
    assert len(sleeps) == 2
    assert store.get("slow") == "b"


def test_kv_write_during_deletion_waits_then_recovers(kv, store, sleeps):
    kv.deletion_lag = 1  # the next request on the name sees the deletion still running (409 ObjectIsBeingDeleted)
    store.set("racing", "a")
    store.delete("racing")
    store.set("racing", "b")
    assert len(sleeps) == 1
    assert store.get("racing") == "b"


def test_kv_recover_refused_while_delete_still_running_waits_and_retries(kv, store, sleeps):
    store.set("busy", "a")
    store.delete("busy")
    kv.fail_next(1, 409, code="Conflict", inner="ObjectIsBeingDeleted", method="POST")
    before = kv.request_count()
    store.set("busy", "b")
    assert kv.requests[before:] == [
        ("PUT", "/secrets/busy"),
        ("POST", "/deletedsecrets/busy/recover"),  # 409: the delete is still being processed
        ("PUT", "/secrets/busy"),
        ("POST", "/deletedsecrets/busy/recover"),
        ("GET", "/secrets/busy/"),
        ("PUT", "/secrets/busy"),
    ]
    assert sleeps == [0.5]
    assert store.get("busy") == "b"


def test_kv_recovery_that_never_finishes_is_unavailable(kv, store, sleeps):
    kv.recovery_lag = 1000
    store.set("stuck", "a")
    store.delete("stuck")
    with pytest.raises(SecretStoreUnavailable) as info:
        store.set("stuck", "b")
    assert info.value.retry_after
    assert sum(sleeps) <= 10


def test_kv_purge_is_forbidden_by_purge_protection(kv, credential):
    from azure.core.exceptions import HttpResponseError
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(kv.url, credential, connection_verify=kv.ca_bundle, verify_challenge_resource=False,
                          retry_total=0)
    client.set_secret("p", "v")
    deleted = client.begin_delete_secret("p").result()
    assert deleted.recovery_id and deleted.scheduled_purge_date and deleted.deleted_date
    assert client.get_deleted_secret("p").name == "p"
    with pytest.raises(HttpResponseError) as info:
        client.purge_deleted_secret("p")
    assert info.value.status_code == 403
    assert [s.name for s in client.list_properties_of_secrets()] == []


def test_kv_throttled_once_honours_retry_after(kv, store, sleeps):
    store.set("t", "v1")
    kv.throttle_next(1, retry_after=2)
    before = kv.request_count()
    store.set("t", "v2")
    assert sleeps == [2]
    assert kv.request_count() - before == 2
    assert store.get("t") == "v2"


def test_kv_persistent_throttling_is_unavailable_with_retry_after(kv, store, sleeps):
    store.set("t", "v1")
    kv.throttle_next(100, retry_after=3)
    before = kv.request_count()
    with pytest.raises(SecretStoreUnavailable) as info:
        store.get("t")
    assert info.value.retry_after == 3
    assert kv.request_count() - before == 4  # max_attempts
    assert sleeps == [3, 3, 3]


def test_kv_retry_after_beyond_budget_fails_fast(kv, store, sleeps):
    store.set("t", "v1")
    kv.throttle_next(1, retry_after=60)
    with pytest.raises(SecretStoreUnavailable) as info:
        store.set("t", "v2")
    assert info.value.retry_after == 60
    assert sleeps == []


def test_kv_server_errors_are_retried_then_unavailable(kv, store, sleeps):
    store.set("e", "v1")
    kv.fail_next(1, status=500)
    store.set("e", "v2")
    assert len(sleeps) == 1
    kv.fail_next(100, status=503)
    with pytest.raises(SecretStoreUnavailable) as info:
        store.set("e", "secret-must-not-leak")
    assert "secret-must-not-leak" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert info.value.retry_after


def test_kv_network_error_is_unavailable(credential, sleeps):
    _forget_challenges()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = KeyVaultSecretStore(f"https://localhost:{port}", credential, sleep=sleeps, verify_challenge_resource=False)
    with pytest.raises(SecretStoreUnavailable):
        store.get("anything")
    assert len(sleeps) == 3


def test_kv_credential_failure_is_unavailable(kv, sleeps):
    from azure.core.exceptions import ClientAuthenticationError

    class Broken:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("managed identity endpoint not reachable")

    store = KeyVaultSecretStore(kv.url, Broken(), connection_verify=kv.ca_bundle, sleep=sleeps,
                                verify_challenge_resource=False)
    with pytest.raises(SecretStoreUnavailable):
        store.get("x")


def test_kv_challenge_resource_is_verified_by_default(kv, credential, sleeps):
    store = KeyVaultSecretStore(kv.url, credential, connection_verify=kv.ca_bundle, sleep=sleeps)
    with pytest.raises(SecretStoreError, match="challenge"):
        store.get("x")
    assert credential.calls == []  # no token was requested for a host outside vault.azure.net


def test_kv_value_and_tag_limits(kv, store):
    before = kv.request_count()
    with pytest.raises(SecretStoreError, match="too large"):
        store.set("big", "x" * (25 * 1024 + 1))
    with pytest.raises(SecretStoreError, match="tags"):
        store.set("tags", "v", tags={f"k{i}": "v" for i in range(16)})
    assert kv.request_count() == before


# -- local store -------------------------------------------------------------------------------------------


def _key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def secrets_table(env):
    return table("secrets")


def test_local_round_trip(secrets_table):
    store = LocalSecretStore(_key(), secrets_table)
    with pytest.raises(SecretNotFound):
        store.get("cred-1")
    store.set("cred-1", "refresh \u2603 token", tags={"kind": "credential"})
    assert store.get("cred-1") == "refresh \u2603 token"
    assert store.get_tags("cred-1") == {"kind": "credential"}
    store.set("cred-1", "newer")
    assert store.get("cred-1") == "newer"
    store.delete("cred-1")
    store.delete("cred-1")
    with pytest.raises(SecretNotFound):
        store.get("cred-1")


def test_local_ciphertext_does_not_contain_plaintext(secrets_table):
    key = _key()
    store = LocalSecretStore(key, secrets_table)
    value = "M.C123_BAY.0.U.-plaintext-refresh-token-" + secrets.token_hex(16)
    store.set("cred-2", value)
    row1 = dict(secrets_table.get_entity("cred-2", ""))
    store.set("cred-2", value)
    row2 = dict(secrets_table.get_entity("cred-2", ""))
    for row in (row1, row2):
        blob = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
        assert value.encode() not in blob
        assert value not in repr(row)
        assert row["kid"] == local_key_id(key) and row["v"] == 1
        assert len(row["nonce"]) == 12
    assert row1["nonce"] != row2["nonce"] and row1["ct"] != row2["ct"]


def test_local_wrong_key_fails_cleanly(secrets_table):
    LocalSecretStore(_key(), secrets_table).set("cred-3", "value")
    with pytest.raises(SecretStoreError, match="cannot decrypt") as info:
        LocalSecretStore(_key(), secrets_table).get("cred-3")
    assert "value" not in str(info.value).replace("cannot decrypt secret cred-3", "")
    # Same key id, different key: the tag check fails (not a crash).
    row = dict(secrets_table.get_entity("cred-3", ""))
    with pytest.raises(SecretStoreError, match="cannot decrypt"):
        LocalSecretStore(_key(), secrets_table, key_id=row["kid"]).get("cred-3")


def test_local_rotation_reads_old_rows(secrets_table):
    old = _key()
    LocalSecretStore(old, secrets_table).set("cred-r", "before rotation")
    rotated = LocalSecretStore(_key(), secrets_table, previous_keys={local_key_id(old): old})
    assert rotated.get("cred-r") == "before rotation"


def test_local_row_copied_to_another_name_fails(secrets_table):
    store = LocalSecretStore(_key(), secrets_table)
    store.set("victim", "victims-token")
    row = dict(secrets_table.get_entity("victim", ""))
    row["PartitionKey"] = "attacker"
    secrets_table.upsert_entity(row)
    with pytest.raises(SecretStoreError, match="cannot decrypt"):
        store.get("attacker")
    assert store.get("victim") == "victims-token"


def test_local_invalid_names_do_no_io(env):
    class NoIO:
        def __getattr__(self, name):
            raise AssertionError(f"table accessed: {name}")

    store = LocalSecretStore(_key(), NoIO())
    for name in BAD_NAMES:
        calls = (lambda name=name: store.get(name), lambda name=name: store.set(name, "v"),
                 lambda name=name: store.delete(name))
        for call in calls:
            with pytest.raises(SecretStoreError, match="invalid secret name"):
                call()


def test_local_refuses_in_azure(secrets_table, set_env):
    with pytest.raises(SecretStoreError, match="cannot be used in Azure"):
        LocalSecretStore(_key(), secrets_table, in_azure=True)
    set_env(WEBSITE_INSTANCE_ID="x")
    assert get_settings().in_azure
    # Even when the caller claims otherwise, the Azure markers in the environment win.
    with pytest.raises(SecretStoreError, match="cannot be used in Azure"):
        LocalSecretStore(_key(), secrets_table, in_azure=False)
    with pytest.raises(SecretStoreError, match="MC_KEY_VAULT_URL"):
        get_secret_store()


def test_local_rejects_bad_keys(secrets_table):
    for key in (b"", b"short", secrets.token_bytes(16), "not bytes"):
        with pytest.raises(SecretStoreError):
            LocalSecretStore(key, secrets_table)  # type: ignore[arg-type]


# -- factory ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_factory():
    reset_secret_store()
    yield
    reset_secret_store()


def test_factory_picks_local_store_and_caches_it(env):
    store = get_secret_store()
    assert isinstance(store, LocalSecretStore)
    assert get_secret_store() is store
    store.set("via-factory", "v")
    assert get_secret_store().get("via-factory") == "v"
    get_settings.cache_clear()  # new settings object -> new store, same key and table -> same data
    again = get_secret_store()
    assert again is not store and again.get("via-factory") == "v"
    reset_secret_store()
    assert get_secret_store() is not again


@pytest.mark.parametrize("value", [None, "not base64!", base64.b64encode(b"sixteen bytes!!!").decode()])
def test_factory_local_key_must_be_32_bytes(set_env, value):
    set_env(MC_LOCAL_SECRET_KEY=value)
    with pytest.raises(SecretStoreConfigError, match="MC_LOCAL_SECRET_KEY") as info:
        get_secret_store()
    assert isinstance(info.value, SecretStoreError) and isinstance(info.value, SettingsError)


def test_factory_picks_key_vault(kv, set_env, monkeypatch):
    credential = FakeCredential()
    monkeypatch.setattr("shared.storage.azure_credential.get_azure_credential", lambda settings: credential)
    set_env(MC_KEY_VAULT_URL=kv.url, MC_CA_BUNDLE=kv.ca_bundle)
    store = get_secret_store()
    assert isinstance(store, KeyVaultSecretStore)
    assert get_secret_store() is store
    store.set("via-factory", "v")
    assert store.get("via-factory") == "v"
    assert kv.current("via-factory")["contentType"] == "text/plain"
    assert credential.calls


def test_factory_key_vault_in_azure_keeps_challenge_verification(kv, set_env, monkeypatch):
    credential = FakeCredential()
    monkeypatch.setattr("shared.storage.azure_credential.get_azure_credential", lambda settings: credential)
    set_env(MC_KEY_VAULT_URL=kv.url, MC_CA_BUNDLE=kv.ca_bundle, WEBSITE_INSTANCE_ID="x")
    store = get_secret_store()  # Key Vault is allowed in Azure ...
    assert isinstance(store, KeyVaultSecretStore)
    with pytest.raises(SecretStoreError, match="challenge"):  # ... but a loopback "vault" gets no token there
        store.get("x")
    assert credential.calls == []


def test_factory_rejects_non_https_vault_url(set_env):
    set_env(MC_KEY_VAULT_URL="http://localhost:1234")
    with pytest.raises(SecretStoreConfigError, match="MC_KEY_VAULT_URL"):
        get_secret_store()


def test_kv_store_is_usable_from_many_threads(kv, store):
    from concurrent.futures import ThreadPoolExecutor

    names = [f"thread-{i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.set(n, n + "-value"), names))
        values = list(pool.map(store.get, names))
    assert values == [n + "-value" for n in names]
