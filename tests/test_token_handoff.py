"""The token hand-off end to end: ``GET /v1/account/{account}/oauth-token`` over real HTTP through the local
host, real Azurite, MSAL against the fake Microsoft identity platform, the local secret store (and once the
Key Vault fake)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest

from shared.core.account_state import mark_reauthentication_required
from shared.handoff.tokens import mark_connected
from shared.microsoft.identity import refresh
from shared.settings import get_settings
from shared.signin.flow import credential_id
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, principals
from shared.storage.tables.apitokens import create_token
from shared.storage.tables.records import utcnow
from tests.invariants import expire_access_tokens
from tests.invariants import stored_refresh_token as stored_token_of
from tests.service import Service, connect

pytestmark = pytest.mark.both_secret_modes  # issue 14.3: both MC_SECRET_MODE values pass

IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
SMTP_SCOPE = "https://outlook.office.com/SMTP.Send"


# --- helpers ------------------------------------------------------------------------------------------


def get_token(service, account: str, **kwargs):
    return service.api("GET", f"/v1/account/{account}/oauth-token", **kwargs)


def refreshes(identity) -> int:
    return sum(1 for r in identity.token_requests if r["grant_type"] == "refresh_token")


def credential_of(account: str):
    return principals.get_credential(accounts.get_account(account).credentialId)


def stored_refresh_token(account: str) -> str:
    return stored_token_of(credential_of(account))


def backdate(account: str, days: float) -> None:
    credential = credential_of(account)
    principals.upsert_credential(credential.model_copy(update={"tokenWrittenAt": utcnow() - timedelta(days=days)}))


class Counting:
    """Wrap a secret-store method of the process's store (the local host serves in this process)."""

    def __init__(self, monkeypatch, name: str) -> None:
        store = get_secret_store()
        self.calls: list[str] = []
        original = getattr(store, name)

        def wrapper(secret_name, *args, **kwargs):
            self.calls.append(secret_name)
            return original(secret_name, *args, **kwargs)

        monkeypatch.setattr(store, name, wrapper)


def assert_works(service, refresh_token: str) -> None:
    tokens = refresh(service.app, service.client_secret, get_settings(), refresh_token, [IMAP_SCOPE])
    assert tokens.access_token


def state_snapshot(account: str):
    """What a failed request must not change: the account row, and the credential as stored (a refresh claim taken
    and given back, ``shared.handoff.tokens``, is bookkeeping: it is left released)."""
    row = accounts.get_account(account)
    credential = credential_of(account)
    stored = credential.model_dump(exclude={"refreshClaim", "refreshClaimUntil"})
    assert credential.refreshClaim is None, "a failed refresh left its claim on the credential row"
    return row.etag, row.state, stored, stored_refresh_token(account)


# --- the answer ---------------------------------------------------------------------------------------

def test_own_mailbox(service, identity):
    user = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    account = connect(service, user)
    before = time.time()
    response = get_token(service, account)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["account"] == account and body["user"] == "ada@contoso.com"
    assert (body["provider"], body["tokenType"], body["delegated"]) == ("outlook", "Bearer", False)
    assert body["imap"] == {"host": "outlook.office365.com", "port": 993, "secure": True, "user": "ada@contoso.com"}
    assert body["smtp"] == {"host": "smtp.office365.com", "port": 587, "secure": False, "starttls": True,
                            "user": "ada@contoso.com", "from": "ada@contoso.com"}
    assert body["graph"] == {"baseUrl": "https://graph.microsoft.com/v1.0/me"}
    assert set(body["scopes"]) == {IMAP_SCOPE, SMTP_SCOPE} and body["registeredScopes"] == body["scopes"]
    expires = datetime.fromisoformat(body["expires"].replace("Z", "+00:00"))
    assert body["expires"].endswith("Z") and expires.tzinfo is not None
    assert before + 3500 < expires.timestamp() < time.time() + 3601

    claims = identity.lookup_access_token(body["accessToken"])  # the token works at the resource
    assert claims and (claims["oid"], claims["tid"], claims["aud"]) == (user.oid, user.tid, "https://outlook.office.com")
    assert claims["appid"] == service.app.clientId
    assert stored_refresh_token(account) not in response.text
    assert "refresh" not in response.text.lower()


def test_shared_mailbox_logs_in_as_the_mailbox_and_sends_as_the_delegate(service, identity):
    user = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    account = connect(service, user, email="support@contoso.com", delegated=True)
    body = get_token(service, account).json()
    assert body["user"] == "bob@contoso.com" and body["delegated"] is True  # the principal, as EmailEngine
    assert body["imap"]["user"] == "support@contoso.com"
    assert (body["smtp"]["user"], body["smtp"]["from"]) == ("bob@contoso.com", "support@contoso.com")
    assert body["graph"]["baseUrl"] == "https://graph.microsoft.com/v1.0/users/support@contoso.com"
    assert identity.lookup_access_token(body["accessToken"])["upn"] == "bob@contoso.com"


def test_graph_app_shared_mailbox_gets_a_graph_token_with_shared_scopes(service, identity, set_env):
    graph_app = Service.create(service.url, identity, base_scopes="api")
    set_env(MC_GRAPH_URL="https://graph.example.test/")
    user = identity.add_user("cy@contoso.com")
    account = connect(graph_app, user, email="team@contoso.com", delegated=True, type=graph_app.app.id)
    body = get_token(graph_app, account).json()
    assert "https://graph.microsoft.com/Mail.ReadWrite.Shared" in body["scopes"]
    assert body["graph"]["baseUrl"] == "https://graph.example.test/v1.0/users/team@contoso.com"
    assert identity.lookup_access_token(body["accessToken"])["aud"] == "https://graph.microsoft.com"


# --- caching ------------------------------------------------------------------------------------------

def test_warm_request_calls_neither_the_secret_store_nor_microsoft(service, identity, monkeypatch):
    user = identity.add_user("dan@contoso.com")
    account = connect(service, user)
    first = get_token(service, account).json()
    assert refreshes(identity) == 1
    gets = Counting(monkeypatch, "get")
    for _ in range(3):
        again = get_token(service, account).json()
        assert again["accessToken"] == first["accessToken"] and again["expires"] == first["expires"]
    assert refreshes(identity) == 1 and gets.calls == []


def test_short_lived_tokens_are_not_cached(service, identity):
    identity.access_token_lifetime = 120  # below the 5-minute margin
    account = connect(service, identity.add_user("eve@contoso.com"))
    a, b = get_token(service, account).json(), get_token(service, account).json()
    assert a["accessToken"] != b["accessToken"] and refreshes(identity) == 2


def test_fifty_parallel_requests_cause_one_refresh(service, identity, monkeypatch, secret_mode):
    account = connect(service, identity.add_user("fay@contoso.com"))
    backdate(account, 2)  # the one refresh also rotates: exactly one write
    before = credential_of(account).tokenWrittenAt
    sets = Counting(monkeypatch, "set")
    barrier = threading.Barrier(50)
    results: list = [None] * 50

    def run(i: int) -> None:
        barrier.wait()
        results[i] = get_token(service, account)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.status_code == 200 for r in results), [getattr(r, "text", r) for r in results]
    assert len({r.json()["accessToken"] for r in results}) == 1
    assert refreshes(identity) == 1
    assert len(sets.calls) == (1 if secret_mode == "keyvault" else 0)  # envelope: sealed on the row
    assert credential_of(account).tokenWrittenAt > before  # rotated once
    assert_works(service, stored_refresh_token(account))


# --- refresh-token rotation ---------------------------------------------------------------------------

@pytest.mark.secret_mode_only  # envelope mode: tests/test_envelope.py (every refresh stores the newest token)
def test_refresh_token_is_written_at_most_once_a_day(service, identity, monkeypatch):
    account = connect(service, identity.add_user("gus@contoso.com", name="Gus"))
    original, credential = stored_refresh_token(account), credential_of(account)
    sets = Counting(monkeypatch, "set")

    for n in (1, 2):  # a fresh token (signed in just now): refreshes do not write
        assert get_token(service, account).status_code == 200
        expire_access_tokens()  # as if the access token had expired
        assert refreshes(identity) == n
    assert sets.calls == [] and stored_refresh_token(account) == original
    # The row holds the access token every instance shares (it changes), never a newer refresh token yet.
    unchanged = credential_of(account)
    assert (unchanged.tokenWrittenAt, unchanged.secretName, unchanged.sealedRefreshToken) == \
        (credential.tokenWrittenAt, credential.secretName, credential.sealedRefreshToken)

    backdate(account, 1.5)
    assert get_token(service, account).status_code == 200
    assert sets.calls == [credential.secretName]
    rotated, after = stored_refresh_token(account), credential_of(account)
    assert rotated != original
    assert abs((after.tokenWrittenAt - utcnow()).total_seconds()) < 60
    assert (after.upn, after.name, after.appId, after.tid, after.oid, after.secretName, sorted(after.scopes)) == \
        (credential.upn, credential.name, credential.appId, credential.tid, credential.oid, credential.secretName,
         sorted(credential.scopes))
    assert_works(service, rotated)

    expire_access_tokens()
    assert get_token(service, account).status_code == 200
    assert len(sets.calls) == 1  # written again only a day later


def test_newly_granted_scopes_are_written_at_once(service, identity, monkeypatch, secret_mode):
    account = connect(service, identity.add_user("hal@contoso.com"))
    credential = credential_of(account)
    principals.upsert_credential(credential.model_copy(update={"scopes": [IMAP_SCOPE]}))
    sets = Counting(monkeypatch, "set")
    assert get_token(service, account).status_code == 200
    assert len(sets.calls) == (1 if secret_mode == "keyvault" else 0)  # envelope: sealed into the row's write
    assert set(credential_of(account).scopes) == {IMAP_SCOPE, SMTP_SCOPE}


# --- re-authentication --------------------------------------------------------------------------------

def test_revoked_token_marks_every_account_of_the_credential_and_a_new_sign_in_restores_them(service, identity):
    user = identity.add_user("ivy@contoso.com", email="ivy@contoso.com")
    own = connect(service, user)
    shared = connect(service, user, email="sales@contoso.com", delegated=True)
    other = connect(service, identity.add_user("jo@contoso.com"))  # another signer: untouched
    assert get_token(service, own).status_code == 200

    identity.revoke(user)
    expire_access_tokens()  # as if the access token had expired
    response = get_token(service, own)
    assert response.status_code == 403
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert (body["code"], body["authenticationFailed"], body["account"], body["state"], body["errorCode"]) == \
        ("OauthRenewError", True, own, "authenticationError", "invalid_grant")
    assert "sign-in link" in body["message"] and body["errorDescription"].startswith("AADSTS50173")
    for account_id in (own, shared):
        row = accounts.get_account(account_id)
        assert (row.state, row.errorCode) == ("authenticationError", "invalid_grant")
        assert row.errorDescription.startswith("AADSTS50173") and row.errorAt is not None
    assert accounts.get_account(other).state == "connected"

    calls = refreshes(identity)
    again = get_token(service, shared)  # known broken: answered without asking Microsoft again
    assert again.status_code == 403 and again.json()["account"] == shared
    assert refreshes(identity) == calls

    assert service.sign_in(service.link(account=own), user).result == {"account": own, "state": "existing"}
    assert accounts.get_account(own).state == "connected"
    response = get_token(service, shared)  # the credential works again: the shared mailbox recovers too
    assert response.status_code == 200, response.text
    for account_id in (own, shared):
        row = accounts.get_account(account_id)
        assert (row.state, row.errorCode, row.errorDescription, row.errorAt) == ("connected", None, None, None)
    assert get_token(service, own).status_code == 200


@pytest.mark.parametrize("error", ["interaction_required", "consent_required"])
def test_interaction_and_consent_errors_require_reauthentication(service, identity, error):
    account = connect(service, identity.add_user("kim@contoso.com"))
    identity.fail_next("token", error)
    response = get_token(service, account)
    assert response.status_code == 403 and response.json()["errorCode"] == error
    assert accounts.get_account(account).state == "authenticationError"


@pytest.mark.secret_mode_only  # envelope mode: tests/test_envelope.py (a sealed token that does not open)
def test_a_missing_secret_requires_reauthentication(service, identity):
    account = connect(service, identity.add_user("lee@contoso.com"))
    get_secret_store().delete(credential_of(account).secretName)
    response = get_token(service, account)
    assert response.status_code == 403 and response.json()["errorCode"] == "credential_missing"
    assert accounts.get_account(account).errorCode == "credential_missing"


def test_a_broken_account_is_still_tried_and_flips_back_when_the_refresh_works(service, identity):
    user = identity.add_user("max@contoso.com")
    own = connect(service, user)
    shared = connect(service, user, email="ops@contoso.com", delegated=True)
    cred = credential_id(service.app.id, user.tid, user.oid)
    assert mark_reauthentication_required(cred, "interaction_required", "MFA needed") == 2
    response = get_token(service, own)
    assert response.status_code == 200
    assert {accounts.get_account(a).state for a in (own, shared)} == {"connected"}


def test_mark_connected_flips_only_this_credentials_broken_accounts(service, identity):
    user = identity.add_user("ned@contoso.com")
    own = connect(service, user)
    other = connect(service, identity.add_user("oli@contoso.com"))
    cred = credential_id(service.app.id, user.tid, user.oid)
    other_cred = accounts.get_account(other).credentialId
    mark_reauthentication_required(cred, "invalid_grant", "revoked")
    mark_reauthentication_required(other_cred, "invalid_grant", "revoked")
    assert mark_connected(cred) == 1
    assert accounts.get_account(own).state == "connected"
    assert accounts.get_account(other).state == "authenticationError"
    assert mark_connected(cred) == 0


# --- transient failures -------------------------------------------------------------------------------

def test_microsoft_unavailable_is_503_and_changes_nothing(service, identity):
    account = connect(service, identity.add_user("pia@contoso.com"))
    backdate(account, 2)  # a successful refresh would write: the failure must not
    before = state_snapshot(account)
    identity.fail_next("token", "temporarily_unavailable", status=503)
    response = get_token(service, account)
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1 and response.json()["code"] == "unavailable"
    assert response.headers["Cache-Control"] == "no-store"
    assert state_snapshot(account) == before
    assert get_token(service, account).status_code == 200


@pytest.mark.secret_mode_only  # envelope mode: tests/test_envelope.py (Key Vault down, data key held or not)
def test_secret_store_unavailable_is_503_and_changes_nothing(service, identity, monkeypatch):
    account = connect(service, identity.add_user("quinn@contoso.com"))
    before = state_snapshot(account)

    def throttled(name):
        raise SecretStoreUnavailable("throttled", retry_after=7)

    monkeypatch.setattr(get_secret_store(), "get", throttled)
    calls = refreshes(identity)
    response = get_token(service, account)
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"
    assert refreshes(identity) == calls
    monkeypatch.undo()
    assert state_snapshot(account) == before


# --- the edge -----------------------------------------------------------------------------------------

def test_unknown_account_is_404(service):
    response = get_token(service, "nobody")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert response.headers["Cache-Control"] == "no-store"


def test_malformed_account_id_is_400(service):
    response = get_token(service, "x" * 257)  # account ids: at most 256 (EmailEngine's limit)
    assert response.status_code == 400 and response.json()["field"] == "account"


def test_api_token_is_required(service, identity):
    account = connect(service, identity.add_user("ray@contoso.com"))
    assert get_token(service, account, token=False).status_code == 401
    assert get_token(service, account, token="mc_not-a-token").status_code == 401
    admin_only, _ = create_token("admin only", ("admin",))
    assert get_token(service, account, token=admin_only).status_code == 403
    assert refreshes(identity) == 0


# --- Key Vault ----------------------------------------------------------------------------------------

@pytest.fixture
def kv_service(env, set_env, identity, monkeypatch):
    """The service with the Key Vault fake as its secret store."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    from sandbox.fakes.keyvault import FakeCredential, FakeKeyVault
    from tools.azurite import free_port
    from tools.localhost import load_function_app, serve

    vault = FakeKeyVault().start()
    vault.create_key("mc-data-key")  # the access tokens every instance shares are sealed under its data keys
    http_challenge_cache.clear()
    monkeypatch.setattr("shared.storage.azure_credential.get_azure_credential", lambda settings: FakeCredential())
    port = free_port()
    set_env(MC_PUBLIC_URL=f"http://localhost:{port}", MC_AUTHORITY_HOST=identity.host,
            MC_CA_BUNDLE=identity.ca_bundle, MC_KEY_VAULT_URL=vault.url)
    server = serve(load_function_app(), "127.0.0.1", port)
    server.start()
    try:
        yield Service.create(f"http://localhost:{port}", identity), vault
    finally:
        server.stop()
        vault.stop()


@pytest.mark.secret_mode_only  # envelope mode: tests/test_envelope.py
def test_key_vault_warm_path_and_throttling(kv_service, identity):
    service, vault = kv_service
    account = connect(service, identity.add_user("sam@contoso.com"))
    secret_name = credential_of(account).secretName
    secret_path = f"/secrets/{secret_name}"

    def reads() -> int:
        with vault.lock:
            return sum(1 for method, path in vault.requests if method == "GET" and path.startswith(secret_path))

    first = get_token(service, account)
    assert first.status_code == 200 and reads() == 1
    with vault.lock:
        seen = len(vault.requests)
    assert get_token(service, account).json()["accessToken"] == first.json()["accessToken"]
    with vault.lock:
        assert len(vault.requests) == seen  # warm: not one Key Vault request

    expire_access_tokens()
    before = accounts.get_account(account).etag
    vault.throttle_next(10, retry_after=60)  # longer than the store's retry budget: fails fast
    response = get_token(service, account)
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    assert accounts.get_account(account).etag == before
    vault.throttle_next(0)
    assert get_token(service, account).status_code == 200
