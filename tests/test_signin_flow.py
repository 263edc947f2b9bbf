"""The hosted sign-in end to end: real HTTP through the local host, real Azurite, MSAL against the fake
Microsoft identity platform, the local secret store."""

from __future__ import annotations

import threading

import pytest

from shared.microsoft.identity import refresh
from shared.settings import get_settings
from shared.signin.flow import credential_id, derived_account_id
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, principals
from shared.storage.tables.client import table
from tests.invariants import stored_refresh_token
from tests.service import APP_REDIRECT, query, session

pytestmark = pytest.mark.both_secret_modes  # issue 14.3: both MC_SECRET_MODE values pass


def account_rows() -> list[dict]:
    """Account rows (the accounts table also holds each account's undelivered webhook event rows)."""
    return list(table("accounts").query_entities("RowKey eq ''"))


def index_rows(cred: str) -> list[str]:
    return principals.account_ids(cred)


def assert_refresh_token_works(service, cred: str) -> None:
    credential = principals.get_credential(cred)
    stored = stored_refresh_token(credential)
    tokens = refresh(service.app, service.client_secret, get_settings(), stored,
                     ["https://outlook.office.com/IMAP.AccessAsUser.All"])
    assert tokens.access_token


def test_own_mailbox(service, identity):
    user = identity.add_user("ada@contoso.com", email="ada@contoso.com", name="Ada Lovelace")
    result = service.sign_in(service.link(name="Ada"), user).result
    assert result["state"] == "new"
    account = accounts.get_account(result["account"])
    assert account.account == derived_account_id(user.tid, "ada@contoso.com")
    assert (account.email, account.delegated, account.signerUpn, account.signerOid) == \
        ("ada@contoso.com", False, "ada@contoso.com", user.oid)
    assert account.name == "Ada" and account.state == "connected"
    authorize = identity.authorize_requests[-1]
    assert authorize["prompt"] == "select_account"
    assert authorize["code_challenge_method"] == "S256"
    assert "offline_access" in authorize["scope"].split()
    cred = credential_id(service.app.id, user.tid, user.oid)
    assert account.credentialId == cred and index_rows(cred) == [account.account]
    assert_refresh_token_works(service, cred)


def test_shared_mailbox_is_signed_by_the_delegate(service, identity):
    user = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    link = service.link(email="support@contoso.com", delegated=True, expectedEmail="support@contoso.com")
    result = service.sign_in(link, user).result
    account = accounts.get_account(result["account"])
    assert (account.email, account.delegated, account.signerUpn) == ("support@contoso.com", True, "bob@contoso.com")
    assert "login_hint" not in identity.authorize_requests[-1]  # a shared mailbox cannot sign in


def test_one_signer_connects_three_mailboxes_with_one_credential(service, identity):
    user = identity.add_user("carol@contoso.com", email="carol@contoso.com")
    ids = set()
    for body in ({"email": "sales@contoso.com", "delegated": True},
                 {"email": "billing@contoso.com", "delegated": True},
                 {}):
        result = service.sign_in(service.link(**body), user).result
        assert result["state"] == "new"
        ids.add(result["account"])
    assert len(ids) == 3
    cred = credential_id(service.app.id, user.tid, user.oid)
    assert sorted(index_rows(cred)) == sorted(ids)
    assert {accounts.get_account(i).credentialId for i in ids} == {cred}
    secret_rows = [r["PartitionKey"] for r in table("secrets").list_entities()]
    named = [service.app.secretName, principals.get_credential(cred).secretName]  # "" in envelope mode: sealed
    assert sorted(secret_rows) == sorted(n for n in named if n)


def test_link_cannot_be_replayed_after_success(service, identity):
    user = identity.add_user("dan@contoso.com")
    link = service.link()
    assert service.sign_in(link, user).result["state"] == "new"
    again = service.sign_in(link, user)
    assert again.start.status_code == 409
    assert "already used" in again.start.text
    assert len(account_rows()) == 1


def test_same_mailbox_twice_is_the_same_account(service, identity):
    user = identity.add_user("erin@contoso.com")
    first = service.sign_in(service.link(), user).result
    second = service.sign_in(service.link(), user).result
    assert first["account"] == second["account"]
    assert (first["state"], second["state"]) == ("new", "existing")


def test_reauthorising_with_another_signer_rebinds_the_index(service, identity):
    alice = identity.add_user("alice@contoso.com")
    bob = identity.add_user("bob@contoso.com")
    body = {"account": "team-inbox", "email": "team@contoso.com", "delegated": True}
    assert service.sign_in(service.link(**body), alice).result == {"account": "team-inbox", "state": "new"}
    old = credential_id(service.app.id, alice.tid, alice.oid)
    old_secret = principals.get_credential(old).secretName

    # Issue 12 point 2: the app is told that the account moved to another signer.
    assert service.sign_in(service.link(**body), bob).result == {"account": "team-inbox", "state": "existing",
                                                                  "signerChanged": "true"}
    new = credential_id(service.app.id, bob.tid, bob.oid)
    assert accounts.get_account("team-inbox").credentialId == new
    assert index_rows(new) == ["team-inbox"]
    assert index_rows(old) == [] and principals.get_credential(old) is None
    from shared.storage.secrets.base import SecretNotFound
    if old_secret:  # keyvault mode (in envelope mode the sealed token went with its row)
        with pytest.raises(SecretNotFound):
            get_secret_store().get(old_secret)


def test_rebinding_keeps_a_credential_that_still_serves_other_accounts(service, identity):
    alice = identity.add_user("alice@contoso.com")
    bob = identity.add_user("bob@contoso.com")
    service.sign_in(service.link(account="a1", email="x@contoso.com", delegated=True), alice)
    service.sign_in(service.link(account="a2", email="y@contoso.com", delegated=True), alice)
    service.sign_in(service.link(account="a1", email="x@contoso.com", delegated=True), bob)
    old = credential_id(service.app.id, alice.tid, alice.oid)
    assert index_rows(old) == ["a2"]
    assert_refresh_token_works(service, old)


def _started_callbacks(service, identity, user, links):
    """Run each link up to the callback URL, each in its own browser; return (browser, callback) pairs."""
    pairs = []
    for link in links:
        browser = session()
        identity.sign_in_as(user)
        start = browser.get(link, allow_redirects=False)
        authorize = browser.get(start.headers["Location"], allow_redirects=False, verify=identity.ca_bundle)
        pairs.append((browser, authorize.headers["Location"]))
    return pairs


def _concurrently(calls):
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, fn):
        barrier.wait()
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_callbacks_for_one_mailbox_create_one_account(service, identity):
    user = identity.add_user("frank@contoso.com")
    pairs = _started_callbacks(service, identity, user, [service.link(), service.link(), service.link()])
    responses = _concurrently([lambda b=b, c=c: b.get(c, allow_redirects=False) for b, c in pairs])
    results = [query(r.headers["Location"]) for r in responses]
    assert len({r["account"] for r in results}) == 1
    assert sorted(r["state"] for r in results) == ["existing", "existing", "new"]
    assert len(account_rows()) == 1
    assert index_rows(credential_id(service.app.id, user.tid, user.oid)) == [results[0]["account"]]


def test_a_callback_is_consumed_once(service, identity):
    user = identity.add_user("gina@contoso.com")
    [(browser, callback)] = _started_callbacks(service, identity, user, [service.link()])
    responses = _concurrently([lambda: browser.get(callback, allow_redirects=False)] * 4)
    to_app = [r for r in responses if r.status_code == 302 and r.headers["Location"].startswith(APP_REDIRECT)]
    assert len(to_app) == 1 and query(to_app[0].headers["Location"])["state"] == "new"
    assert all(r.status_code == 400 and "not known" in r.text for r in responses if r not in to_app)
    assert len(account_rows()) == 1


def test_consent_denied_goes_back_to_the_app_and_the_link_still_works(service, identity):
    user = identity.add_user("hal@contoso.com")
    link = service.link(account="acct-1")
    identity.fail_next("authorize", "access_denied", "The user has denied access to the scope requested.")
    denied = service.sign_in(link, user).result
    assert denied["error"] == "access_denied" and denied["account"] == "acct-1"
    assert "denied" in denied["error_description"]
    assert account_rows() == []
    assert service.sign_in(link, user).result == {"account": "acct-1", "state": "new"}


@pytest.mark.parametrize("error", ["invalid_grant", "interaction_required", "consent_required"])
def test_code_redemption_errors_go_back_to_the_app(service, identity, error):
    user = identity.add_user("ivy@contoso.com")
    identity.fail_next("token", error, "AADSTS70000: something went wrong.\r\nTrace ID: abc")
    result = service.sign_in(service.link(), user).result
    assert result["error"] == error
    assert "Trace ID" not in result["error_description"]
    assert account_rows() == []


@pytest.mark.parametrize("claims", [{"aud": "someone-else"}, {"iss": "https://evil.example/x/v2.0"},
                                    {"exp": 1000}])
def test_bad_id_token_claims_are_refused(service, identity, claims):
    user = identity.add_user("jack@contoso.com")
    identity.wrong_claims_next(**claims)
    result = service.sign_in(service.link(), user).result
    assert result["error"] == "invalid_token"
    assert account_rows() == [] and list(table("principals").list_entities()) == []


def test_microsoft_outage_during_redemption_leaves_the_link_usable(service, identity):
    user = identity.add_user("kim@contoso.com")
    link = service.link()
    identity.fail_next("token", "temporarily_unavailable", status=503)
    assert service.sign_in(link, user).result["error"] == "temporarily_unavailable"
    assert account_rows() == []
    retry = service.sign_in(link, user).result
    assert retry.get("state") == "new", (retry, identity.token_requests)


def test_expected_email_is_enforced(service, identity):
    user = identity.add_user("liam@contoso.com", email="liam@contoso.com")
    result = service.sign_in(service.link(expectedEmail="someone.else@contoso.com"), user).result
    assert result["error"] == "email_mismatch" and "someone.else@contoso.com" in result["error_description"]
    assert account_rows() == []


def test_callback_in_another_browser_is_refused(service, identity):
    user = identity.add_user("mia@contoso.com")
    [(_, callback)] = _started_callbacks(service, identity, user, [service.link()])
    other = session().get(callback, allow_redirects=False)
    assert other.status_code == 400 and "same browser" in other.text
    assert account_rows() == []


def test_unknown_state_is_a_hosted_page(service):
    response = session().get(service.url + "/oauth?code=abc&state=unknownstate123", allow_redirects=False)
    assert response.status_code == 400 and "not known" in response.text


def test_hosted_pages_send_security_headers(service):
    response = session().get(service.url + "/accounts/new?data=x&sig=y", allow_redirects=False)
    assert response.status_code == 400 and "not valid" in response.text
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in response.text and "http" not in response.text.split("<body>")[1]


def test_the_redirect_to_microsoft_binds_the_browser(service, identity):
    identity.add_user("noah@contoso.com")
    start = session().get(service.link(), allow_redirects=False)
    assert start.status_code == 302
    assert start.headers["Location"].startswith(identity.url + "/organizations/oauth2/v2.0/authorize?")
    assert start.headers["Referrer-Policy"] == "no-referrer"
    [cookie] = start.raw.headers.getlist("Set-Cookie")
    attributes = {a.strip().partition("=")[0].lower(): a.strip().partition("=")[2] for a in cookie.split(";")[1:]}
    assert attributes["path"] == "/oauth" and attributes["samesite"].lower() == "lax" and "httponly" in attributes
    assert int(attributes["max-age"]) == get_settings().flow_ttl_seconds
    assert "secure" not in attributes  # plain-http localhost only


def test_expired_link_is_a_hosted_page(service):
    import time

    from shared.core import links as linkcodec
    from shared.schemas import LinkData

    now = int(time.time())
    link = LinkData(redirectUrl=APP_REDIRECT, type=service.app.id, nonce="n", iat=now - 100, exp=now - 1)
    response = session().get(linkcodec.link_url(link, get_settings()), allow_redirects=False)
    assert response.status_code == 410 and "expired" in response.text


def test_tampered_link_is_a_hosted_page(service):
    url = service.link()
    tampered = url.replace("sig=", "sig=A")
    response = session().get(tampered, allow_redirects=False)
    assert response.status_code == 400 and "not valid" in response.text
