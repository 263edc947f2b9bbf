"""The admin bootstrap (``shared/admin/bootstrap.py``): the first admin token of a private deployment comes in
through the API with a one-time ``mcb_`` token whose hash the postprovision hook put in the secret store.

Real HTTP through the local host, real Azurite, the local secret store or the Key Vault fake driven by the
real ``azure-keyvault-secrets`` client. Clocks are injected (``bootstrap.now``, ``bootstrap.monotonic``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.admin import bootstrap
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables.apitokens import create_token, hash_token, revoke_token
from shared.storage.tables.client import table
from tests.leakcheck import _KEY

BOOTSTRAP_TOKEN = "admin bootstrap token"  # leakcheck kinds that no response or log may ever carry
BOOTSTRAP_HASH = "admin bootstrap hash"
OAUTH_APP = {"name": "Contoso mail", "clientId": "11111111-2222-3333-4444-555555555555",
             "clientSecret": "s3cr3t-Value~with.chars_0123456789"}
BOTH_STORES = pytest.mark.parametrize("store_kind", ["local", "keyvault"], indirect=True)


class Clock:
    """Wall time for the expiry, monotonic time for the cache; both move only when told."""

    def __init__(self) -> None:
        self.wall = float(int(time.time()))
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def store_kind(request) -> str:
    return getattr(request, "param", "local")


@pytest.fixture
def service_env(request, store_kind: str) -> dict[str, str | None]:
    if store_kind == "keyvault":
        vault = request.getfixturevalue("keyvault")
        return {"MC_KEY_VAULT_URL": vault.url, "MC_LOCAL_SECRET_KEY": None}
    return {}


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(bootstrap, "now", lambda: fake.wall)
    monkeypatch.setattr(bootstrap, "monotonic", lambda: fake.mono)
    bootstrap.reset_cache()
    yield fake
    bootstrap.reset_cache()


@pytest.fixture
def fresh(service, clock):
    """A deployment as the hook leaves it: no API token at all (the harness's admin token is removed)."""
    table("apitokens").delete_entity("token", hash_token(service.token))
    return service


@pytest.fixture
def reads(fresh, monkeypatch) -> list[str]:
    """Every read of the bootstrap secret at the store the service uses."""
    store = get_secret_store()
    original = store.get
    calls: list[str] = []

    def counting(name: str) -> str:
        if name == bootstrap.SECRET_NAME:
            calls.append(name)
        return original(name)

    monkeypatch.setattr(store, "get", counting)
    return calls


@pytest.fixture
def issue(request, clock):
    """What the hook does: a token shown once, ``v1:<expiry>:<sha256>`` in the store. Returns the token."""

    def make(expires_in: float = 3600) -> str:
        token = "mcb_" + secrets.token_urlsafe(32)
        watch(request, token)
        get_secret_store().set(bootstrap.SECRET_NAME, bootstrap.bootstrap_secret_value(token, clock.wall + expires_in))
        return token

    return make


def watch(request, token: str) -> None:
    """Tell the leak check about the bootstrap token and its hash: neither may appear in a log or response."""
    check = request.config.stash[_KEY]
    check.add_secret(token, BOOTSTRAP_TOKEN)
    check.add_secret(hashlib.sha256(token.encode()).hexdigest(), BOOTSTRAP_HASH)


def bogus() -> str:
    return "mcb_" + secrets.token_urlsafe(32)


def unknown_token_answer(service) -> tuple[int, Any, str]:
    response = service.api("GET", "/v1/tokens", token="mc_" + secrets.token_urlsafe(32))
    return response.status_code, response.json(), response.headers["WWW-Authenticate"]


def assert_refused(service, token: str, method: str = "GET", path: str = "/v1/tokens", **kwargs: Any) -> None:
    """The same 401 as an unknown API token: nothing tells a bootstrap token apart."""
    response = service.api(method, path, token=token, **kwargs)
    answer = (response.status_code, response.json(), response.headers.get("WWW-Authenticate"))
    assert answer == unknown_token_answer(service)
    assert answer[0] == 401


# --- the format the hook writes ------------------------------------------------------------------------

def test_the_secret_value_format_is_exactly_the_documented_one():
    token = bogus()
    value = bootstrap.bootstrap_secret_value(token, 1_900_000_000.7)
    assert value == f"v1:1900000000:{hashlib.sha256(token.encode('utf-8')).hexdigest()}"
    assert re.fullmatch(r"v1:[0-9]+:[0-9a-f]{64}", value)
    assert bootstrap.parse_secret_value(value) == bootstrap.BootstrapSecret(1_900_000_000, value.split(":")[2])
    for bad in ("mc_" + secrets.token_urlsafe(32), "mcb_short", "mcb_" + "a" * 44, "mcb_" + "a" * 42 + "!"):
        with pytest.raises(ValueError):
            bootstrap.bootstrap_secret_value(bad, 1_900_000_000)


# --- what a valid bootstrap can and cannot do ----------------------------------------------------------

@BOTH_STORES
def test_a_valid_bootstrap_mints_an_admin_token_that_then_works(fresh, issue, reads):
    boot = issue()
    app = fresh.api("POST", "/v1/oauth2", token=boot, json=OAUTH_APP)
    assert app.status_code == 201, app.text
    minted = fresh.api("POST", "/v1/tokens", token=boot, json={"name": "first admin", "scopes": ["admin"]})
    assert minted.status_code == 201, minted.text
    admin = minted.json()["token"]
    assert admin.startswith("mc_") and minted.json()["scopes"] == ["admin"]

    listed = fresh.api("GET", "/v1/tokens", token=admin)
    assert listed.status_code == 200
    assert [t["name"] for t in listed.json()["tokens"]] == ["first admin"]  # the bootstrap is no stored token
    assert fresh.api("GET", f"/v1/oauth2/{app.json()['id']}", token=admin).status_code == 200
    api = fresh.api("POST", "/v1/tokens", token=admin, json={"name": "app", "scopes": ["api"]}).json()["token"]
    assert fresh.api("GET", "/v1/accounts", token=api).status_code == 200

    assert_refused(fresh, boot)  # spent: an admin token exists now
    assert len(reads) == 1  # every bootstrap call above used the one cached read


def test_the_bootstrap_has_the_admin_scope_only(fresh, issue):
    boot = issue()
    for method, path in (("GET", "/v1/accounts"), ("GET", "/v1/account/acct"),
                         ("GET", "/v1/account/acct/oauth-token"), ("POST", "/v1/authentication/form")):
        response = fresh.api(method, path, token=boot, json={"redirectUrl": "https://app.example/x"})
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "forbidden" and "'api'" in response.json()["message"]
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200  # still unspent: no admin token yet


def test_the_bootstrap_is_refused_once_an_admin_token_exists(fresh, issue):
    boot = issue()
    create_token("app", ("api",))  # an api-only token does not end the bootstrap
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200
    _, admin = create_token("minted with the CLI", ("admin",))
    assert_refused(fresh, boot)
    assert_refused(fresh, boot, "POST", "/v1/tokens", json={"name": "second", "scopes": ["admin"]})
    assert revoke_token(admin.id)  # no admin token left: the bootstrap works again until it expires
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200


# --- everything else is an unknown token ---------------------------------------------------------------

def test_an_absent_secret_refuses_every_bootstrap_token(fresh, reads):
    assert_refused(fresh, bogus(), "POST", "/v1/tokens", json={"name": "x", "scopes": ["admin"]})
    assert reads == [bootstrap.SECRET_NAME]


def test_a_wrong_token_is_refused(fresh, issue):
    boot = issue()
    assert_refused(fresh, bogus())
    assert_refused(fresh, boot[:-1] + ("A" if boot[-1] != "A" else "B"))
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200


def test_an_expired_bootstrap_is_refused(fresh, issue, clock):
    assert_refused(fresh, issue(expires_in=-1))
    clock.advance(bootstrap.CACHE_SECONDS)
    boot = issue(expires_in=bootstrap.CACHE_SECONDS + 60)
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200
    clock.advance(60)  # the secret is still cached; the expiry is checked on every request
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200
    clock.advance(bootstrap.CACHE_SECONDS)
    assert_refused(fresh, boot)


def test_malformed_tokens_cost_no_read(fresh, issue, reads):
    issue()
    for token in ("mcb_", "mcb_short", "mcb_" + "a" * 44, "mcb_" + "a" * 42 + "!", "mcb_" + "é" * 43):
        response = fresh.api("GET", "/v1/tokens", headers={"Authorization": f"Bearer {token}".encode()})
        assert response.status_code == 401
    assert reads == []


def test_a_malformed_secret_is_refused_and_logged_without_its_value(fresh, request, clock, caplog):
    token = bogus()
    watch(request, token)
    digest, expiry = hashlib.sha256(token.encode()).hexdigest(), int(clock.wall) + 3600
    malformed = [
        token,  # the hook stored the token instead of its hash
        digest,
        f"v2:{expiry}:{digest}",
        f"v1:{expiry}:{digest.upper()}",
        f"v1:{expiry}:{digest}\n",
        f" v1:{expiry}:{digest}",
        f"v1:{expiry}:{digest}:x",
        f"v1:{expiry}.0:{digest}",
        f"v1:-{expiry}:{digest}",
        f"v1::{digest}",
        f"v1:{expiry}:{digest[:-1]}",
        f"V1:{expiry}:{digest}",
    ]
    store = get_secret_store()
    for value in malformed:
        store.set(bootstrap.SECRET_NAME, value)
        clock.advance(bootstrap.CACHE_SECONDS)
        caplog.clear()
        assert_refused(fresh, token)
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelname == "WARNING" and "malformed" in r.getMessage()]
        assert len(warnings) == 1, value
        assert digest not in warnings[0] and token not in warnings[0]
    store.set(bootstrap.SECRET_NAME, f"v1:{expiry}:{digest}")
    clock.advance(bootstrap.CACHE_SECONDS)
    assert fresh.api("GET", "/v1/tokens", token=token).status_code == 200  # the same token, well stored


# --- cost: a flood of mcb_ tokens, and the mc_ hot path ------------------------------------------------

@BOTH_STORES
@pytest.mark.parametrize("secret", ["absent", "present"])
def test_a_flood_of_bogus_tokens_reads_the_secret_once_per_period(fresh, issue, reads, clock, secret):
    if secret == "present":
        issue()
    tokens = [bogus() for _ in range(60)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda t: fresh.api("GET", "/v1/tokens", token=t).status_code, tokens))
    assert statuses == [401] * len(tokens)
    assert len(reads) == 1
    clock.advance(bootstrap.CACHE_SECONDS - 1)
    assert_refused(fresh, bogus())
    assert len(reads) == 1
    clock.advance(1)
    assert_refused(fresh, bogus())
    assert len(reads) == 2


@BOTH_STORES
def test_mc_tokens_never_read_the_bootstrap_secret(fresh, issue, reads, store_kind, request):
    issue()
    admin, _ = create_token("admin", ("admin",))
    api, _ = create_token("app", ("api",))
    revoked, record = create_token("old", ("api", "admin"))
    revoke_token(record.id)
    assert fresh.api("GET", "/v1/tokens", token=admin).status_code == 200
    assert fresh.api("GET", "/v1/accounts", token=api).status_code == 200
    assert fresh.api("GET", "/v1/accounts", token=admin).status_code == 403
    for token in (revoked, "mc_" + secrets.token_urlsafe(32), "not-a-token"):
        assert fresh.api("GET", "/v1/tokens", token=token).status_code == 401
    assert reads == []
    if store_kind == "keyvault":
        vault = request.getfixturevalue("keyvault")
        assert [r for r in vault.requests if r == ("GET", f"/secrets/{bootstrap.SECRET_NAME}")] == []


# --- the secret store failing --------------------------------------------------------------------------

@pytest.mark.parametrize("store_kind", ["keyvault"], indirect=True)
def test_key_vault_down_is_a_503_and_not_retried_at_once(fresh, issue, reads, clock, keyvault):
    boot = issue()
    api, _ = create_token("app", ("api",))
    keyvault.throttle_next(100, retry_after=30)  # longer than the store may wait: it gives up at once
    down = fresh.api("POST", "/v1/tokens", token=boot, json={"name": "first admin", "scopes": ["admin"]})
    assert down.status_code == 503, down.text
    assert down.json()["code"] == "unavailable" and down.headers["Retry-After"] == "30"
    assert fresh.api("GET", "/v1/tokens", token=bogus()).status_code == 503  # the cached failure
    assert len(reads) == 1
    assert fresh.api("GET", "/v1/accounts", token=api).status_code == 200  # mc_ tokens are unaffected

    keyvault.throttle_next(0)
    clock.advance(bootstrap.FAILURE_SECONDS)
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200
    assert len(reads) == 2


@pytest.mark.parametrize("store_kind", ["keyvault"], indirect=True)
def test_a_key_vault_refusal_is_a_503_too(fresh, issue, clock, keyvault):
    boot = issue()
    keyvault.fail_next(1, 403, code="Forbidden", method="GET")  # e.g. the role assignment not yet effective
    refused = fresh.api("GET", "/v1/tokens", token=boot)
    assert refused.status_code == 503 and refused.json()["code"] == "unavailable", refused.text
    assert refused.headers["Retry-After"] == str(int(bootstrap.FAILURE_SECONDS))
    clock.advance(bootstrap.FAILURE_SECONDS)
    assert fresh.api("GET", "/v1/tokens", token=boot).status_code == 200
