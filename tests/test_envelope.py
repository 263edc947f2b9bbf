"""Issue 14, points 3 and 4: envelope mode (``MC_SECRET_MODE=envelope``) and the access-token cache every instance
shares, against real Azurite, the identity fake and the Key Vault fake (keys: wrap and unwrap).

What only envelope mode has (the behaviour both modes share runs in both: the modules marked ``both_secret_modes``):
sealed values on the rows, data-key rotation and background re-sealing, the migration both ways, Key Vault out of
the hand-off's path, and what a sealed value that does not open does.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from shared.core.secret_placement import migrate
from shared.core.sweeper import run_sweeper
from shared.handoff import tokens
from shared.microsoft.identity import refresh
from shared.settings import get_settings
from shared.storage import datakeys, sealed
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, apps, principals
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.invariants import expire_access_tokens, refresh_tokens_in_tables, stored_refresh_token
from tests.service import Service, connect

IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"


def get_token(service, account: str):
    return service.api("GET", f"/v1/account/{account}/oauth-token")


def refreshes(identity) -> int:
    return sum(1 for r in identity.token_requests if r["grant_type"] == "refresh_token")


def credential_of(account: str):
    return principals.get_credential(accounts.get_account(account).credentialId)


def secret_rows() -> set[str]:
    return {row["PartitionKey"] for row in table("secrets").list_entities()}


@pytest.fixture
def envelope(set_env, service):
    set_env(MC_SECRET_MODE="envelope")
    return service


# --- what is stored --------------------------------------------------------------------------------------------

def test_a_sign_in_seals_the_refresh_token_on_the_row_and_writes_no_secret(envelope, identity):
    before = secret_rows()  # the fixture's OAuth app was registered in keyvault mode: its client secret
    account = connect(envelope, identity.add_user("ada@contoso.com"))
    credential = credential_of(account)
    assert credential.secretName == "" and credential.sealedRefreshToken.startswith("e1.")
    assert secret_rows() == before  # no refresh token in the secret store
    assert refresh_tokens_in_tables(identity, get_settings().table_prefix) == []  # ciphertext only
    assert get_token(envelope, account).status_code == 200


def test_a_sealed_value_opens_only_on_its_own_row(envelope, identity):
    """The associated data names the row: a sealed refresh token copied onto another credential does not open
    there (an attacker with write access to the table cannot move a token to another signer's accounts)."""
    ada = connect(envelope, identity.add_user("ada@contoso.com"))
    bob = connect(envelope, identity.add_user("bob@contoso.com"))
    stolen = credential_of(ada).sealedRefreshToken
    victim = credential_of(bob)
    principals.change_credential(victim, {"sealedRefreshToken": stolen, "accessTokens": {}})
    tokens.reset_token_cache()
    calls = refreshes(identity)
    response = get_token(envelope, bob)
    assert response.status_code == 403, response.text
    body = response.json()
    assert (body["code"], body["authenticationFailed"], body["errorCode"]) == \
        ("OauthRenewError", True, "credential_unreadable")
    assert accounts.get_account(bob).state == "authenticationError"
    assert refreshes(identity) == calls  # nothing was sent to Microsoft
    assert get_token(envelope, ada).status_code == 200  # the owner is untouched


@pytest.mark.parametrize("damage", ["tampered", "unknown-key", "not-sealed"])
def test_a_refresh_token_that_does_not_open_marks_the_account_never_a_500(envelope, identity, damage):
    account = connect(envelope, identity.add_user("cy@contoso.com"))
    credential = credential_of(account)
    text = credential.sealedRefreshToken
    broken = {"tampered": text[:-6] + ("AAAAAA" if not text.endswith("AAAAAA") else "BBBBBB"),
              "unknown-key": "e1.0badbeef." + text.split(".", 2)[2],
              "not-sealed": "x"}[damage]
    principals.change_credential(credential, {"sealedRefreshToken": broken, "accessTokens": {}})
    tokens.reset_token_cache()
    response = get_token(envelope, account)
    assert response.status_code == 403 and response.json()["errorCode"] == "credential_unreadable"
    row = accounts.get_account(account)
    assert (row.state, row.errorCode) == ("authenticationError", "credential_unreadable")
    # A new sign-in repairs it.
    connect(envelope, identity.find_user("cy@contoso.com"))
    assert accounts.get_account(account).state == "connected"
    assert get_token(envelope, account).status_code == 200


def test_every_refresh_stores_the_newest_refresh_token_in_the_same_write(envelope, identity, monkeypatch):
    """Envelope mode's counterpart of keyvault mode's once-a-day rotation: sealing the newest token into the write
    of the access token costs nothing more, so it is stored every time, and no secret store is called."""
    account = connect(envelope, identity.add_user("dee@contoso.com"))
    first = stored_refresh_token(credential_of(account))
    store = get_secret_store()
    monkeypatch.setattr(store, "set", lambda *a, **k: pytest.fail("envelope mode wrote a secret"))
    assert get_token(envelope, account).status_code == 200
    second = stored_refresh_token(credential_of(account))
    assert second != first
    expire_access_tokens()
    assert get_token(envelope, account).status_code == 200
    third = stored_refresh_token(credential_of(account))
    assert third not in (first, second)
    assert refresh(envelope.app, envelope.client_secret, get_settings(), third, [IMAP_SCOPE]).access_token


# --- one refresh for every instance (point 4) -----------------------------------------------------------------

def test_instances_share_one_refresh_per_token_lifetime(envelope, identity):
    """Twenty "instances" (threads calling the refresh beneath this process's lock: nothing in memory is shared
    between them but the row) ask at once for a credential with no live access token: Microsoft is asked once, and
    all get the token the winner left on the row."""
    account_id = connect(envelope, identity.add_user("eve@contoso.com"))
    account = accounts.get_account(account_id)
    app = apps.get_app(account.appId)
    scopes = tokens.token_scopes(app, account)
    expire_access_tokens()
    calls = refreshes(identity)
    barrier = threading.Barrier(20)
    got: list[object] = [None] * 20

    def instance(i: int) -> None:
        barrier.wait()
        got[i] = tokens._refresh(account, app, scopes, get_settings())

    threads = [threading.Thread(target=instance, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert refreshes(identity) == calls + 1
    assert len({g.access_token for g in got}) == 1  # type: ignore[union-attr]
    assert sum(1 for g in got if not g.shared) == 1  # type: ignore[union-attr]  # the winner's own
    assert credential_of(account_id).refreshClaim in (None, "")  # released by the winner's write


def test_another_instance_uses_the_shared_token_without_key_vault_or_microsoft(envelope, identity):
    account = connect(envelope, identity.add_user("fay@contoso.com"))
    first = get_token(envelope, account).json()
    tokens.forget_access_tokens()  # another instance: nothing in memory
    calls = refreshes(identity)
    second = get_token(envelope, account).json()
    assert second["accessToken"] == first["accessToken"] and second["cached"] is True
    assert refreshes(identity) == calls


def test_a_claim_left_by_a_dead_instance_is_taken_over_when_it_runs_out(envelope, identity, monkeypatch):
    account = connect(envelope, identity.add_user("gil@contoso.com"))
    expire_access_tokens()
    monkeypatch.setattr(tokens, "CLAIM_SECONDS", 1.0)
    credential = credential_of(account)
    principals.change_credential(credential, {"refreshClaim": "dead-instance", "refreshClaimUntil": time.time() + 1.0})
    started = time.monotonic()
    response = get_token(envelope, account)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started >= 0.9  # it waited for the claim, then took it over
    assert credential_of(account).refreshClaim in (None, "")


# --- Key Vault: data keys wrapped by its key -------------------------------------------------------------------

@pytest.fixture
def kv_envelope(env, set_env, identity, keyvault):
    """The service with Key Vault (secrets and the data-key KEK) and MC_SECRET_MODE=envelope."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    from tools.azurite import free_port
    from tools.localhost import load_function_app, serve

    http_challenge_cache.clear()
    port = free_port()
    set_env(MC_PUBLIC_URL=f"http://localhost:{port}", MC_AUTHORITY_HOST=identity.host,
            MC_CA_BUNDLE=identity.ca_bundle, MC_KEY_VAULT_URL=keyvault.url, MC_LOCAL_SECRET_KEY=None,
            MC_SECRET_MODE="envelope", MC_ACCESS_CHECK="off")
    server = serve(load_function_app(), "127.0.0.1", port)
    server.start()
    try:
        yield Service.create(f"http://localhost:{port}", identity)
    finally:
        server.stop()


def vault_calls(vault) -> list[tuple[str, str]]:
    with vault.lock:
        return list(vault.requests)


def test_key_vault_calls_do_not_grow_with_credentials(kv_envelope, identity, keyvault):
    """Key Vault is called to wrap the first data key and to unwrap it once per instance: ten sign-ins and
    twenty cold hand-offs afterwards add no Key Vault call (keyvault mode makes one per sign-in and per cold
    hand-off)."""
    connect(kv_envelope, identity.add_user("u0@contoso.com"))  # creates the ring: the wrap
    before = len(vault_calls(keyvault))
    ids = [connect(kv_envelope, identity.add_user(f"u{i}@contoso.com")) for i in range(1, 11)]
    for account in ids:
        expire_access_tokens()
        assert get_token(kv_envelope, account).status_code == 200
        expire_access_tokens()
        assert get_token(kv_envelope, account).status_code == 200
    assert vault_calls(keyvault)[before:] == []
    assert not any("/secrets/rt-" in path for _, path in vault_calls(keyvault))


def test_key_vault_down_with_the_data_key_held_keeps_hand_offs_working(kv_envelope, identity, keyvault):
    account = connect(kv_envelope, identity.add_user("hal@contoso.com"))
    assert get_token(kv_envelope, account).status_code == 200
    keyvault.fail_next(1000, 503, code="ServiceUnavailable")
    try:
        expire_access_tokens()
        response = get_token(kv_envelope, account)
        assert response.status_code == 200, response.text  # a refresh: Microsoft and Table Storage only
        assert response.json()["cached"] is False
        # A new instance has no data key yet: unwrapping needs Key Vault, so it answers 503 and changes nothing.
        datakeys.reset_data_keys()
        expire_access_tokens(new_process=True)
        before = accounts.get_account(account).etag
        cold = get_token(kv_envelope, account)
        assert cold.status_code == 503 and int(cold.headers["Retry-After"]) >= 1, cold.text
        assert accounts.get_account(account).etag == before
        assert accounts.get_account(account).state == "connected"
    finally:
        keyvault.fail_next(0)
    assert get_token(kv_envelope, account).status_code == 200


# --- rotation and re-sealing ------------------------------------------------------------------------------------

def test_a_rotated_data_key_seals_new_values_and_the_sweeper_reseals_old_ones(envelope, identity):
    account = connect(envelope, identity.add_user("ivy@contoso.com"))
    old_kid = sealed.key_id_of(credential_of(account).sealedRefreshToken)
    new_kid = datakeys.rotate(get_settings())
    assert new_kid != old_kid
    # Old ciphertext keeps opening; new sign-ins seal under the new key.
    tokens.reset_token_cache()
    assert get_token(envelope, account).status_code == 200
    other = connect(envelope, identity.add_user("jay@contoso.com"))
    assert sealed.key_id_of(credential_of(other).sealedRefreshToken) == new_kid
    # Put ivy's row back under the old key (as a row the refresh did not touch), then sweep.
    value = stored_refresh_token(credential_of(account))
    ring = datakeys.load_ring(get_settings())
    old = datakeys.Ring(old_kid, ring.keys)
    table(datakeys.TABLE).update_entity(datakeys.ring_entity(old))
    datakeys.reset_data_keys()
    resealed_old = sealed.seal(value, principals.refresh_aad(credential_of(account).credentialId), get_settings())
    principals.change_credential(credential_of(account), {"sealedRefreshToken": resealed_old,
                                                          "tokenWrittenAt": utcnow() - timedelta(hours=1)})
    table(datakeys.TABLE).update_entity(datakeys.ring_entity(datakeys.Ring(new_kid, ring.keys)))
    datakeys.reset_data_keys()
    assert sealed.key_id_of(credential_of(account).sealedRefreshToken) == old_kid
    report = run_sweeper(get_settings())
    assert report.resealed >= 1
    assert sealed.key_id_of(credential_of(account).sealedRefreshToken) == new_kid
    assert stored_refresh_token(credential_of(account)) == value
    expire_access_tokens()
    assert get_token(envelope, account).status_code == 200


def test_two_instances_creating_the_ring_at_once_agree_on_one_key(env, identity):
    """Real concurrency: eight "instances" (their own DataKeys) find no ring and create one at once; one conditional
    insert wins and every instance seals with its key."""
    settings = get_settings()
    barrier = threading.Barrier(8)
    found: list[str | None] = [None] * 8

    def instance(i: int) -> None:
        keys = datakeys.DataKeys()
        barrier.wait()
        found[i] = keys.current(settings)[0]

    threads = [threading.Thread(target=instance, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(found)) == 1 and found[0] is not None
    assert datakeys.load_ring(settings).current == found[0]


# --- the migration, both ways -----------------------------------------------------------------------------------

def test_migration_to_envelope_and_back_loses_no_credential(service, identity, set_env):
    ids = [connect(service, identity.add_user(f"m{i}@contoso.com")) for i in range(3)]
    shared = connect(service, identity.find_user("m0@contoso.com"), email="sales@contoso.com", delegated=True)
    ids.append(shared)
    kv_names = {credential_of(a).secretName for a in ids} | {service.app.secretName}
    assert all(kv_names) and kv_names <= secret_rows()

    set_env(MC_SECRET_MODE="envelope")
    report = migrate(get_settings(), "envelope")
    assert (report.moved, report.missing, report.busy) == (4, 0, 0)  # 3 credentials + the app
    assert secret_rows().isdisjoint(kv_names)  # the secrets are gone
    for account in ids:
        assert credential_of(account).secretName == "" and credential_of(account).sealedRefreshToken
        expire_access_tokens(new_process=True)
        assert get_token(service, account).status_code == 200
    assert apps.get_app(service.app.id, fresh=True).sealedClientSecret
    connect(service, identity.add_user("after@contoso.com"))  # sign-ins use the sealed client secret
    assert migrate(get_settings(), "envelope").moved == 0  # again: nothing left to move

    set_env(MC_SECRET_MODE="keyvault")
    back = migrate(get_settings(), "keyvault")
    assert (back.moved, back.missing, back.busy) == (5, 0, 0)
    for account in ids:
        credential = credential_of(account)
        assert credential.secretName and not credential.sealedRefreshToken
        expire_access_tokens(new_process=True)
        assert get_token(service, account).status_code == 200
    app = apps.get_app(service.app.id, fresh=True)
    assert app.secretName and not app.sealedClientSecret
    assert refresh_tokens_in_tables(identity, get_settings().table_prefix) == []
