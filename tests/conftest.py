"""Shared fixtures: one real Azurite per test session, a fresh set of tables per test (table prefix)."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator

import pytest

from shared.settings import get_settings
from shared.storage.tables.client import reset_clients
from tools.azurite import Azurite, start_azurite

pytest_plugins = ["tests.leakcheck"]  # no secret in any log record or service response of the run

# Settings a developer's shell or local.settings.json might carry must not leak into tests.
_OURS = ("MC_", "AZURE_CLIENT_ID", "WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = start_azurite()
    yield server
    server.stop()


@pytest.fixture
def table_prefix() -> str:
    return "t" + secrets.token_hex(6)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_secret_modes`` run once per ``MC_SECRET_MODE`` (issue 14, point 3: both pass the same
    tests); the others run in the default mode. ``secret_mode_only`` exempts a test about one mode's own storage
    (Key Vault secrets written, a secret store throttled): its counterpart in the other mode is named beside it."""
    if metafunc.definition.get_closest_marker("both_secret_modes") and "secret_mode" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("secret_mode_only")
        if only is None:
            metafunc.parametrize("secret_mode", ["keyvault", "envelope"], indirect=True)


@pytest.fixture(autouse=True)
def secret_mode(request: pytest.FixtureRequest) -> str:
    """``MC_SECRET_MODE`` of the test (``env`` sets it): ``keyvault``, unless marked ``both_secret_modes``."""
    return getattr(request, "param", "keyvault")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, azurite: Azurite, table_prefix: str, tmp_path,
        secret_mode: str) -> dict[str, str]:
    """A clean local configuration on Azurite; tests add or override keys through ``set_env``."""
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name, raising=False)
    # No local.settings.json from the developer's checkout: point the loader at an empty folder.
    monkeypatch.setattr("shared.settings.LOCAL_SETTINGS_FILE", tmp_path / "local.settings.json")
    values = {
        "MC_PUBLIC_URL": "http://localhost:7071",
        "MC_TABLES_CONNECTION_STRING": azurite.connection_string,
        "MC_TABLE_PREFIX": table_prefix,
        "MC_LOCAL_SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "MC_SIGNING_KEY": secrets.token_urlsafe(32),
        "MC_SECRET_MODE": secret_mode,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    _reset()
    yield values
    _reset()


def _reset() -> None:
    from shared.handoff.tokens import reset_token_cache
    from shared.microsoft.identity import _http_cache
    from shared.storage.datakeys import reset_data_keys
    from shared.storage.keys import reset_keys
    from shared.storage.secrets.factory import reset_secret_store
    from shared.storage.tables.counts import reset_count_cache

    get_settings.cache_clear()
    reset_keys()  # the signing key ring read from a Key Vault fake of an earlier test
    reset_data_keys()  # the data keys (envelope mode) of an earlier test's tables
    reset_count_cache()  # account counts read by an earlier test
    reset_clients()
    reset_secret_store()
    _http_cache.clear()  # MSAL discovery is keyed by URL, and fakes of different tests may reuse a port
    reset_token_cache()  # access tokens cached in memory by an earlier test


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]):
    def apply(**values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        _reset()

    return apply


# --- the service over real HTTP, with a fake Microsoft ---------------------------------------------

@pytest.fixture
def identity():
    from sandbox.fakes.identity import FakeIdentity

    fake = FakeIdentity().start()
    yield fake
    fake.stop()


@pytest.fixture
def service_env() -> dict[str, str | None]:
    """Extra settings for ``service``; a test module overrides this fixture (e.g. to use Key Vault)."""
    return {}


@pytest.fixture
def keyvault(monkeypatch):
    """The Key Vault fake (with the data-key KEK ``mc-data-key``, as Bicep creates it), and the process's Azure
    credential replaced by a fake one."""
    from sandbox.fakes.keyvault import FakeCredential, FakeKeyVault

    vault = FakeKeyVault().start()
    vault.create_key("mc-data-key")
    monkeypatch.setattr("shared.storage.azure_credential.get_azure_credential", lambda settings: FakeCredential())
    yield vault
    vault.stop()


@pytest.fixture
def mailboxes():
    """Exchange's mailbox permissions, shared by the IMAP and Graph fakes. Open to everyone by default (tests
    that are not about permissions connect any mailbox); set ``open_all = False`` and ``grant`` to test them."""
    from sandbox.fakes.graph import Mailboxes

    return Mailboxes(open_all=True)


@pytest.fixture
def imap(identity, mailboxes):
    """Fake Exchange IMAP for the sign-in's mailbox access check (``service`` points MC_IMAP_HOST at it)."""
    from sandbox.fakes.imap import FakeImap

    fake = FakeImap(identity, mailboxes).start()
    yield fake
    fake.stop()


@pytest.fixture
def graph(identity, mailboxes):
    """Fake Graph mail folders; a test that wants it sets ``MC_GRAPH_URL=graph.url`` (``service`` does not,
    because MC_GRAPH_URL also changes the Graph base URL the token hand-off reports)."""
    from sandbox.fakes.graph import FakeGraph

    fake = FakeGraph(identity, mailboxes).start()
    yield fake
    fake.stop()


@pytest.fixture
def service(env, set_env, identity, imap, service_env):
    """The function app on the local host, configured against Azurite, the fake identity platform and the
    fake IMAP server (the mailbox access check of imap apps logs in there)."""
    from tests.service import Service
    from tools.azurite import free_port
    from tools.localhost import load_function_app, serve

    port = free_port()
    set_env(MC_PUBLIC_URL=f"http://localhost:{port}", MC_AUTHORITY_HOST=identity.host,
            MC_CA_BUNDLE=identity.ca_bundle, MC_IMAP_HOST=imap.address, **service_env)
    server = serve(load_function_app(), "127.0.0.1", port)
    server.start()
    try:
        yield Service.create(f"http://localhost:{port}", identity)
    finally:
        server.stop()


# --- webhooks (tests/test_webhooks.py, tests/test_ee_handoff_webhooks.py) ----------------------------------

@pytest.fixture
def fresh_webhook_caches() -> Iterator[None]:
    """No access token or webhook secret remembered from another test."""
    from shared.handoff.tokens import reset_token_cache
    from shared.webhooks.targets import forget_secrets

    reset_token_cache()
    forget_secrets()
    yield
    reset_token_cache()


@pytest.fixture
def receiver() -> Iterator[object]:
    """A webhook receiver on 127.0.0.1 (sandbox/fakes/webhooks.py), stopped after the test."""
    from sandbox.fakes.webhooks import Receiver

    r = Receiver().start()
    yield r
    r.stop()
