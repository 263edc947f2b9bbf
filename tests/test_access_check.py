"""The mailbox access check at sign-in, over the real flow: the local host, Azurite, MSAL against the fake
identity platform, and the fake Exchange IMAP and Graph servers (tests/fakes) deciding who opens what."""

from __future__ import annotations

import logging

import pytest

from shared.microsoft import access_check
from shared.settings import get_settings, load_settings
from shared.signin.flow import credential_id
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, principals
from shared.storage.tables.accounts import AUTH_ERROR, CONNECTED
from shared.storage.tables.client import table
from shared.webhooks.dispatcher import Dispatcher
from tests.service import Service
from tools.azurite import free_port

SHARED = "support@contoso.com"


@pytest.fixture
def strict_mailboxes(mailboxes):
    """Exchange as it is: a mailbox must exist, and another user's mailbox must be granted."""
    mailboxes.open_all = False
    return mailboxes


@pytest.fixture
def graph_app(service, identity, graph, set_env):
    """A Graph (``api``) app next to the default imap app, with MC_GRAPH_URL on the fake Graph."""
    set_env(MC_GRAPH_URL=graph.url)
    return Service.create(service.url, identity, base_scopes="api")


def rows(name: str) -> list[dict]:
    """Every row of a table; of ``accounts`` the account rows only (not their webhook event rows)."""
    return [r for r in table(name).list_entities() if name != "accounts" or r["RowKey"] == ""]


def assert_nothing_stored(*apps: Service) -> None:
    assert rows("accounts") == []
    assert rows("principals") == []
    assert rows("links") == []
    assert sorted(r["PartitionKey"] for r in rows("secrets")) == sorted(a.app.secretName for a in apps)


# --- imap apps: an XOAUTH2 login as the shared address -----------------------------------------------

def test_delegated_mailbox_with_access_is_connected(service, identity, imap, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com")
    strict_mailboxes.grant(bob, SHARED)
    result = service.sign_in(service.link(email=SHARED, delegated=True), bob).result
    assert result["state"] == "new"
    account = accounts.get_account(result["account"])
    assert account.email == SHARED and account.meta["accessCheck"] == "ok"
    assert imap.logins == [{"user": SHARED, "upn": "bob@contoso.com", "ok": True}]


def test_delegated_mailbox_without_access_is_refused_and_nothing_is_stored(service, identity, imap,
                                                                          strict_mailboxes):
    bob = identity.add_user("bob@contoso.com")
    strict_mailboxes.add_mailbox(SHARED)
    link = service.link(account="support", email=SHARED, delegated=True)
    result = service.sign_in(link, bob).result
    assert result["error"] == "mailbox_access_denied" and result["account"] == "support"
    description = result["error_description"]
    assert SHARED in description and "bob@contoso.com" in description and "Full Access" in description
    assert imap.logins == [{"user": SHARED, "upn": "bob@contoso.com", "ok": False}]
    assert_nothing_stored(service)

    strict_mailboxes.grant("bob@contoso.com", SHARED)  # the admin grants access; the same link now works
    assert service.sign_in(link, bob).result == {"account": "support", "state": "new"}
    assert accounts.get_account("support").signerUpn == "bob@contoso.com"


def test_a_refused_mailbox_leaves_the_signers_other_accounts_and_credential_alone(service, identity,
                                                                                 strict_mailboxes):
    bob = identity.add_user("bob@contoso.com")
    own = service.sign_in(service.link(), bob).result["account"]
    cred = credential_id(service.app.id, bob.tid, bob.oid)
    before = principals.get_credential(cred)
    secret = get_secret_store().get(before.secretName)

    strict_mailboxes.add_mailbox(SHARED)
    result = service.sign_in(service.link(email=SHARED, delegated=True), bob).result
    assert result["error"] == "mailbox_access_denied"
    assert [r["account"] for r in rows("accounts")] == [own]
    assert principals.account_ids(cred) == [own]
    after = principals.get_credential(cred)
    assert after.etag == before.etag and get_secret_store().get(after.secretName) == secret


def test_reauthorising_with_a_signer_who_cannot_open_the_mailbox_keeps_the_old_binding(service, identity,
                                                                                     strict_mailboxes):
    alice = identity.add_user("alice@contoso.com")
    bob = identity.add_user("bob@contoso.com")
    strict_mailboxes.grant(alice, SHARED)
    body = {"account": "team", "email": SHARED, "delegated": True}
    assert service.sign_in(service.link(**body), alice).result["state"] == "new"
    refused = service.sign_in(service.link(**body), bob).result
    assert refused["error"] == "mailbox_access_denied" and refused["account"] == "team"
    account = accounts.get_account("team")
    assert account.signerUpn == "alice@contoso.com"
    assert principals.account_ids(credential_id(service.app.id, bob.tid, bob.oid)) == []
    assert principals.get_credential(credential_id(service.app.id, bob.tid, bob.oid)) is None


def test_own_mailbox_logs_in_as_the_signer(service, identity, imap, strict_mailboxes):
    ada = identity.add_user("ada@contoso.com")
    result = service.sign_in(service.link(), ada).result
    assert result["state"] == "new"
    assert imap.logins == [{"user": "ada@contoso.com", "upn": "ada@contoso.com", "ok": True}]


def test_own_mailbox_the_imap_server_refuses_is_refused(service, identity, strict_mailboxes):
    ada = identity.add_user("ada@contoso.com")
    strict_mailboxes.remove_mailbox("ada@contoso.com")  # no licence, or IMAP disabled for her
    result = service.sign_in(service.link(), ada).result
    assert result["error"] == "mailbox_access_denied" and "ada@contoso.com" in result["error_description"]
    assert_nothing_stored(service)


# --- api apps: Graph mail folders -------------------------------------------------------------------

def test_graph_delegated_mailbox_with_access_is_connected(graph_app, identity, graph, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com")
    strict_mailboxes.grant(bob.oid, SHARED)  # grants by object id count too
    result = graph_app.sign_in(graph_app.link(email=SHARED, delegated=True, type=graph_app.app.id), bob).result
    assert result["state"] == "new"
    assert [(r["path"], r["upn"], r["status"]) for r in graph.requests] == \
        [(f"/v1.0/users/{SHARED}/mailFolders/inbox", "bob@contoso.com", 200)]


def test_graph_delegated_mailbox_without_access_is_refused(graph_app, service, identity, graph, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com")
    strict_mailboxes.add_mailbox(SHARED)
    result = graph_app.sign_in(graph_app.link(email=SHARED, delegated=True, type=graph_app.app.id), bob).result
    assert result["error"] == "mailbox_access_denied"
    assert SHARED in result["error_description"] and "bob@contoso.com" in result["error_description"]
    assert [r["status"] for r in graph.requests] == [403]
    assert_nothing_stored(service, graph_app)


def test_graph_unknown_mailbox_is_not_found(graph_app, service, identity, graph, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com")
    link = graph_app.link(email="nobody@contoso.com", delegated=True, type=graph_app.app.id)
    result = graph_app.sign_in(link, bob).result
    assert result["error"] == "mailbox_not_found"
    assert "nobody@contoso.com" in result["error_description"] and "bob@contoso.com" in result["error_description"]
    assert [r["status"] for r in graph.requests] == [404]
    assert_nothing_stored(service, graph_app)


def test_graph_own_mailbox_is_checked_with_me(graph_app, service, identity, graph, strict_mailboxes):
    ada = identity.add_user("ada@contoso.com")
    carl = identity.add_user("carl@contoso.com")
    strict_mailboxes.remove_mailbox("carl@contoso.com")
    assert graph_app.sign_in(graph_app.link(type=graph_app.app.id), ada).result["state"] == "new"
    refused = graph_app.sign_in(graph_app.link(type=graph_app.app.id), carl).result
    assert refused["error"] == "mailbox_not_found" and "carl@contoso.com" in refused["error_description"]
    # Each own mailbox: the signer's directory record first (issue 12 point 1: the address comes from it), then
    # the mailbox itself.
    assert [(r["path"], r["status"]) for r in graph.requests] == \
        [("/v1.0/me", 200), ("/v1.0/me/mailFolders/inbox", 200), ("/v1.0/me", 200), ("/v1.0/me/mailFolders/inbox", 404)]


# --- the setting, and checks that cannot run ----------------------------------------------------------

def test_check_off_stores_without_checking(service, identity, imap, strict_mailboxes, set_env):
    set_env(MC_ACCESS_CHECK="off")
    bob = identity.add_user("bob@contoso.com")
    result = service.sign_in(service.link(email=SHARED, delegated=True), bob).result
    assert result["state"] == "new"
    assert accounts.get_account(result["account"]).meta["accessCheck"] == "off"
    assert imap.logins == [] and imap.connections == 0


def _unreachable_imap(set_env) -> None:
    set_env(MC_IMAP_HOST=f"localhost:{free_port()}")  # nothing listens there: connection refused


def test_unreachable_imap_does_not_block_and_is_logged(service, identity, set_env, caplog):
    _unreachable_imap(set_env)
    bob = identity.add_user("bob@contoso.com")
    with caplog.at_level(logging.WARNING, logger="mailbox_connect.signin"):
        result = service.sign_in(service.link(email=SHARED, delegated=True), bob).result
    assert result["state"] == "new"
    account = accounts.get_account(result["account"])
    assert account.meta["accessCheck"] == "skipped" and account.state == CONNECTED
    [record] = [r for r in caplog.records if "could not run" in r.getMessage()]
    assert record.levelno == logging.WARNING and "imap" in record.getMessage()
    assert "stored unchecked" in record.getMessage()


@pytest.mark.parametrize("fault", ["drop", "hang", "drop_on_auth", "hang_on_auth"])
def test_imap_faults_do_not_block(service, identity, imap, monkeypatch, fault, caplog):
    monkeypatch.setattr(access_check, "TIMEOUT_SECONDS", 1.0)
    imap.fail_next(fault)
    bob = identity.add_user("bob@contoso.com")
    with caplog.at_level(logging.WARNING, logger="mailbox_connect.signin"):
        result = service.sign_in(service.link(email=SHARED, delegated=True), bob).result
    assert result["state"] == "new"
    assert accounts.get_account(result["account"]).meta["accessCheck"] == "skipped"
    assert any("could not run" in r.getMessage() for r in caplog.records)


def test_strict_refuses_when_the_check_cannot_run_and_the_link_can_be_retried(service, identity, imap, set_env):
    set_env(MC_ACCESS_CHECK="strict")
    _unreachable_imap(set_env)
    bob = identity.add_user("bob@contoso.com")
    link = service.link(email=SHARED, delegated=True)
    result = service.sign_in(link, bob).result
    assert result["error"] == "temporarily_unavailable" and SHARED in result["error_description"]
    assert_nothing_stored(service)
    set_env(MC_IMAP_HOST=imap.address)  # IMAP is back
    retry = service.sign_in(link, bob).result
    assert retry["state"] == "new"
    assert accounts.get_account(retry["account"]).meta["accessCheck"] == "ok"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_graph_errors_do_not_block(graph_app, identity, graph, status):
    graph.fail_next(status)
    bob = identity.add_user("bob@contoso.com")
    result = graph_app.sign_in(graph_app.link(email=SHARED, delegated=True, type=graph_app.app.id), bob).result
    assert result["state"] == "new"
    assert accounts.get_account(result["account"]).meta["accessCheck"] == "skipped"


def test_graph_timeout_does_not_block(graph_app, identity, graph, monkeypatch):
    monkeypatch.setattr(access_check, "TIMEOUT_SECONDS", 1.0)
    graph.delay_next(5)
    bob = identity.add_user("bob@contoso.com")
    result = graph_app.sign_in(graph_app.link(email=SHARED, delegated=True, type=graph_app.app.id), bob).result
    assert result["state"] == "new"
    assert accounts.get_account(result["account"]).meta["accessCheck"] == "skipped"


def test_graph_strict_refuses_on_a_server_error(graph_app, service, identity, graph, set_env):
    set_env(MC_ACCESS_CHECK="strict")
    graph.fail_next(503)
    bob = identity.add_user("bob@contoso.com")
    result = graph_app.sign_in(graph_app.link(email=SHARED, delegated=True, type=graph_app.app.id), bob).result
    assert result["error"] == "temporarily_unavailable"
    assert_nothing_stored(service, graph_app)


def test_a_denied_mailbox_is_not_a_reason_to_retry_in_strict_mode(service, identity, strict_mailboxes, set_env):
    set_env(MC_ACCESS_CHECK="strict")
    strict_mailboxes.add_mailbox(SHARED)
    bob = identity.add_user("bob@contoso.com")
    assert service.sign_in(service.link(email=SHARED, delegated=True), bob).result["error"] == "mailbox_access_denied"


# --- after a successful sign-in ---------------------------------------------------------------------------

def test_a_successful_sign_in_reconnects_the_credentials_other_accounts(service, identity):
    from shared.core.account_state import mark_reauthentication_required

    bob = identity.add_user("bob@contoso.com")
    first = service.sign_in(service.link(email="a@contoso.com", delegated=True), bob).result["account"]
    cred = credential_id(service.app.id, bob.tid, bob.oid)
    assert mark_reauthentication_required(cred, "invalid_grant", "the refresh token was revoked") == 1
    assert accounts.get_account(first).state == AUTH_ERROR
    second = service.sign_in(service.link(email="b@contoso.com", delegated=True), bob).result["account"]
    assert accounts.get_account(second).state == CONNECTED
    # The callback no longer reads the old credential row (issue 14 point 5): the next delivery run reconnects the
    # credential's other accounts, off the hot path.
    assert accounts.get_account(first).state == AUTH_ERROR
    report = Dispatcher(get_settings()).run()
    reconnected = accounts.get_account(first)
    assert reconnected.state == CONNECTED and reconnected.errorCode is None
    assert report.fanned_out >= 1


def test_repairing_a_broken_account_reconnects_its_credential_at_once(service, identity):
    from shared.core.account_state import mark_reauthentication_required

    bob = identity.add_user("bob@contoso.com")
    first = service.sign_in(service.link(email="a@contoso.com", delegated=True), bob).result["account"]
    second = service.sign_in(service.link(email="b@contoso.com", delegated=True), bob).result["account"]
    cred = credential_id(service.app.id, bob.tid, bob.oid)
    assert mark_reauthentication_required(cred, "invalid_grant", "the refresh token was revoked") == 2
    again = service.sign_in(service.link(account=first, email="a@contoso.com", delegated=True), bob).result
    assert again["account"] == first
    assert {accounts.get_account(a).state for a in (first, second)} == {CONNECTED}  # no delivery run needed


# --- the module on its own ------------------------------------------------------------------------------

@pytest.fixture
def no_local_settings(monkeypatch, tmp_path):
    monkeypatch.setattr("shared.settings.LOCAL_SETTINGS_FILE", tmp_path / "local.settings.json")


def test_settings_values(no_local_settings):
    assert load_settings({}).access_check == "on"
    assert load_settings({"MC_ACCESS_CHECK": " Strict "}).access_check == "strict"
    with pytest.raises(ValueError):
        load_settings({"MC_ACCESS_CHECK": "maybe"})
    with pytest.raises(ValueError):
        load_settings({"MC_IMAP_HOST": "imap.example.com:99x"})


@pytest.mark.parametrize("value, expected", [
    (None, ("outlook.office365.com", 993)),
    ("localhost:1993", ("localhost", 1993)),
    ("imap.example.test", ("imap.example.test", 993)),
    ("[::1]:2993", ("::1", 2993)),
])
def test_imap_endpoint(value, expected, no_local_settings):
    from shared.storage.tables.apps import OAuthApp

    settings = load_settings({"MC_IMAP_HOST": value} if value else {})
    app = OAuthApp.model_construct(cloud="global", baseScopes="imap")
    assert access_check.imap_endpoint(app, settings) == expected
    china = OAuthApp.model_construct(cloud="china", baseScopes="imap")
    assert access_check.imap_endpoint(china, load_settings({}))[0] == "partner.outlook.cn"


def test_xoauth2_initial_response():
    assert access_check.xoauth2("support@contoso.com", "tok") == \
        b"user=support@contoso.com\x01auth=Bearer tok\x01\x01"


def test_results_never_carry_the_token(identity, imap, graph, mailboxes, env):
    """Whatever the outcome, the detail that goes to the logs does not contain the access token."""
    from shared.storage.tables.apps import OAuthApp

    token = "secret-token-value-" + "x" * 40
    settings = load_settings({"MC_IMAP_HOST": imap.address, "MC_GRAPH_URL": graph.url,
                              "MC_CA_BUNDLE": imap.ca_bundle})
    for base in ("imap", "api"):
        app = OAuthApp.model_construct(cloud="global", baseScopes=base)
        result = access_check.check_mailbox_access(app, token, SHARED, "bob@contoso.com", settings)
        # IMAP says NO to a token it does not know; Graph's 401 means the check could not run.
        assert result.outcome == {"imap": access_check.DENIED, "api": access_check.UNAVAILABLE}[base]
        assert token not in result.detail and "secret-token" not in repr(result)
