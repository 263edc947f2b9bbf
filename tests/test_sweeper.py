"""Issue 12 point 8: what one link can write is bounded, and the storage sweeper (``shared.core.sweeper``) deletes
what sign-ins leave behind: used-link rows of expired links, dead link claims (the link works again), credentials
no account points at (row, index rows, secret). Since issue 14 point 2 opening a link writes nothing at all (the
pending sign-in is an encrypted cookie, ``shared.signin.flowstate``), so there are no flow rows to bound or sweep.
The sweeper runs "later" through its injectable clock instead of waiting; the storage-down cases of the fault
matrix are in tests/test_faults.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.core.sweeper import run_sweeper
from shared.settings import get_settings
from shared.signin.flow import credential_id, derived_account_id
from shared.storage.secrets.base import SecretNotFound
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, links, principals
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.invariants import problems, stored_refresh_token, survey
from tests.service import APP_REDIRECT, Browser, connect, query

pytestmark = pytest.mark.both_secret_modes  # issue 14.3: both MC_SECRET_MODE values pass

TTL = timedelta(seconds=15 * 60)  # MC_FLOW_TTL_SECONDS' default


def later(after: timedelta = TTL + timedelta(minutes=1)):
    moment = utcnow() + after
    return lambda: moment


def stored_rows() -> dict[str, int]:
    return {name: len(list(table(name).list_entities())) for name in ("flows", "links", "accounts", "principals")}


def secret_exists(name: str) -> bool:
    """A secret under ``name`` (a row without a name, envelope mode, has none: its token is sealed on it)."""
    if not name:
        return False
    try:
        get_secret_store().get(name)
        return True
    except SecretNotFound:
        return False


def start(link: str) -> tuple[Browser, str]:
    """Open the link in a new browser; (browser, Microsoft's authorize URL)."""
    browser = Browser()
    response = browser.get(link, allow_redirects=False, timeout=30)
    assert response.status_code == 302, response.text[:300]
    return browser, response.headers["Location"]


def finish(service, browser: Browser, authorize: str) -> dict[str, str] | str:
    """Sign in at Microsoft and follow the callback: the app's query, or the hosted page's title."""
    callback = browser.get(authorize, allow_redirects=False, timeout=30, verify=service.identity.ca_bundle)
    done = browser.get(callback.headers["Location"], allow_redirects=False, timeout=30)
    location = done.headers.get("Location", "")
    if location.startswith(APP_REDIRECT):
        return query(location)
    return done.text.split("<title>")[1].split("</title>")[0]


# --- bounded writes per link -----------------------------------------------------------------------------------

def test_a_link_opened_many_times_writes_nothing_and_every_attempt_works(service, identity):
    """Issue 14 point 2: ``GET /accounts/new`` stores nothing (no flow row, no slot), however often a link is opened;
    each browser holds its own sealed flow, so any of the attempts can finish (the first to finish uses the link)."""
    user = identity.add_user("many@contoso.com", email="many@contoso.com")
    identity.sign_in_as(user)
    link = service.link()
    before = stored_rows()
    opened = [start(link) for _ in range(12)]
    assert stored_rows() == before, "opening a link writes no row"

    result = finish(service, *opened[0])  # the oldest attempt works: nothing was evicted
    assert isinstance(result, dict), result
    assert (result.get("account"), result.get("state")) == (derived_account_id(user.tid, user.email), "new")
    again = finish(service, *opened[-1])  # another attempt of the same link: the link is used now
    assert isinstance(again, dict) and again.get("error") == "link_used", again


# --- the sweeper ------------------------------------------------------------------------------------------------

def test_used_link_rows_are_kept_until_the_link_expired(service, identity):
    user = identity.add_user("used@contoso.com")
    link = service.link(expiresIn=3600)
    connect_with(service, link, user)
    assert len(list(table("links").list_entities())) == 1

    run_sweeper(get_settings(), clock=later(timedelta(minutes=50)))
    assert len(list(table("links").list_entities())) == 1, "it still enforces single use"
    assert Browser().get(link, allow_redirects=False, timeout=30).status_code == 409

    # After the link expired (and the app's verification window of the completed link, links.VERIFY_WINDOW):
    keep = max(timedelta(hours=1), getattr(links, "VERIFY_WINDOW", timedelta(0)))
    report = run_sweeper(get_settings(), clock=later(keep + timedelta(minutes=5)))
    assert report.links == 1 and list(table("links").list_entities()) == []


def connect_with(service, link: str, user) -> str:
    result = service.sign_in(link, user).result
    assert "error" not in result, result
    return result["account"]


def test_a_dead_claim_is_taken_over_and_the_link_works_again(service, identity):
    """A sign-in that claimed the link and died before its commit or its release (storage down, a crash)."""
    user = identity.add_user("dead@contoso.com", email="dead@contoso.com")
    link = service.link()
    nonce = link_nonce(link)
    account = derived_account_id(user.tid, user.email)
    cred = credential_id(service.app.id, user.tid, user.oid)
    # What such a sign-in leaves: the claim, and the secret written before the failure (no credential row yet).
    assert links.claim(nonce, account, utcnow() + timedelta(days=1), owner="dead-state", credential=cred)
    get_secret_store().set(principals.secret_name(cred), "a refresh token nobody can reach")
    assert Browser().get(link, allow_redirects=False, timeout=30).status_code == 409  # dead

    report = run_sweeper(get_settings())  # too young: its sign-in may still be running
    assert report.claims == 0 and links.is_used(nonce)
    assert secret_exists(principals.secret_name(cred))

    report = run_sweeper(get_settings(), clock=later())
    assert report.claims == 1 and report.credentials == 1
    assert not links.is_used(nonce) and not secret_exists(principals.secret_name(cred))
    assert problems(survey()) == []
    assert connect_with(service, link, user) == account  # the same link works again
    assert problems(survey()) == []


def test_claims_whose_account_exists_are_kept(service, identity):
    """Whatever else a claim row says, one whose account exists keeps its link used (invariant 3)."""
    user = identity.add_user("kept@contoso.com")
    link = service.link()
    account = connect_with(service, link, user)
    other = service.link()  # a second claim of the same account that recorded no completion
    assert links.claim(link_nonce(other), account, utcnow() + timedelta(days=1), owner="another-state")
    report = run_sweeper(get_settings(), clock=later())
    assert report.claims == 0 and links.is_used(link_nonce(link)) and links.is_used(link_nonce(other))
    assert Browser().get(link, allow_redirects=False, timeout=30).status_code == 409
    assert Browser().get(other, allow_redirects=False, timeout=30).status_code == 409


def forget_used_links() -> None:
    """As if the links had expired and their rows were swept: the credential scan alone is tested."""
    for row in list(table("links").list_entities()):
        table("links").delete_entity(row["PartitionKey"], row["RowKey"])


def link_nonce(link: str) -> str:
    from shared.core.links import decode

    params = query(link)
    return decode(params["data"], params["sig"], get_settings()).nonce


def test_credentials_no_account_points_at_are_deleted(service, identity):
    """A credential whose last account went away while its clean-up failed (``unbind`` could not run)."""
    ada, bob = identity.add_user("ada@contoso.com"), identity.add_user("bob@contoso.com")
    own = connect(service, ada)
    connect(service, bob)
    ada_cred = credential_id(service.app.id, ada.tid, ada.oid)
    bob_cred = credential_id(service.app.id, bob.tid, bob.oid)
    secret = principals.get_credential(ada_cred).secretName
    accounts.delete_account(accounts.get_account(own))  # the row only: index row, credential row and secret stay
    forget_used_links()

    assert run_sweeper(get_settings()).credentials == 0, "younger than the flow TTL: a sign-in may be under way"
    assert principals.get_credential(ada_cred) is not None

    report = run_sweeper(get_settings(), clock=later())
    assert report.credentials == 1 and report.index_rows == 1
    assert principals.get_credential(ada_cred) is None and principals.account_ids(ada_cred) == []
    assert not secret_exists(secret)
    assert principals.get_credential(bob_cred) is not None, "a credential in use is kept"
    assert problems(survey()) == []


def test_leftover_index_rows_go_and_the_credential_in_use_stays(service, identity):
    carol = identity.add_user("carol@contoso.com")
    own = connect(service, carol)
    cred = credential_id(service.app.id, carol.tid, carol.oid)
    principals.add_account(cred, "gone-account", "gone@contoso.com")  # an unbind that did not finish

    report = run_sweeper(get_settings(), clock=later())
    assert report.index_rows == 1 and report.credentials == 0
    assert principals.account_ids(cred) == [own]
    assert service.api("GET", f"/v1/account/{own}/oauth-token").status_code == 200
    assert problems(survey()) == []


def test_a_sign_in_rewriting_the_credential_meanwhile_wins(service, identity, monkeypatch):
    """The sweeper removed an index row whose account does not point back yet, and then sees that the credential
    row changed (a sign-in of the same signer is writing its binding): it puts the row back and deletes nothing."""
    dan = identity.add_user("dan@contoso.com")
    own = connect(service, dan)
    cred = credential_id(service.app.id, dan.tid, dan.oid)
    accounts.delete_account(accounts.get_account(own))
    forget_used_links()
    remove = principals.remove_account

    def remove_while_a_sign_in_writes(credential_id: str, account_id: str) -> None:
        remove(credential_id, account_id)
        current = principals.get_credential(credential_id)
        principals.upsert_credential(current.model_copy(update={"tokenWrittenAt": utcnow()}))

    monkeypatch.setattr(principals, "remove_account", remove_while_a_sign_in_writes)
    report = run_sweeper(get_settings(), clock=later())
    assert report.credentials == 0 and report.index_rows == 0
    assert principals.account_ids(cred) == [own], "the index row is written back"
    assert principals.get_credential(cred) is not None
    assert stored_refresh_token(principals.get_credential(cred))


def test_the_credential_scan_is_bounded_and_resumes(service, identity):
    users = [identity.add_user(f"s{i}@contoso.com") for i in range(3)]
    for user in users:
        accounts.delete_account(accounts.get_account(connect(service, user)))
    forget_used_links()
    first = run_sweeper(get_settings(), clock=later(), max_credentials=2)
    assert (first.checked, first.credentials, first.stopped) == (2, 2, "quota")
    second = run_sweeper(get_settings(), clock=later(), max_credentials=2)
    assert (second.checked, second.credentials, second.stopped) == (1, 1, None)
    assert list(table("principals").list_entities()) == []


def test_an_outage_stops_the_run_without_raising(service, identity, monkeypatch):
    from shared.storage.errors import StorageUnavailable

    def down(before):
        raise StorageUnavailable("storage answered HTTP 503")

    monkeypatch.setattr(links, "stale_claims", down)
    assert run_sweeper(get_settings()).stopped.startswith("unavailable")


@pytest.mark.timeout(60)
def test_the_timer_is_registered_and_runs(service, identity):
    from tools.azurite import free_port
    from tools.localhost import load_function_app, serve

    server = serve(load_function_app(), "127.0.0.1", free_port())
    try:
        assert "storage_sweeper" in server.timers
        account = connect(service, identity.add_user("timer@contoso.com"))
        before = stored_rows()
        assert server.run_timer("storage_sweeper") is None
        assert stored_rows() == before and accounts.get_account(account) is not None  # live: kept
    finally:
        server.stop()
