"""Issue 12, points 1-3: who a mailbox belongs to. Each test reproduces an attack (or the unsafe behaviour) over
the real flow (local host, Azurite, MSAL against the fake identity platform, the fake Exchange IMAP and Graph)
and shows it refused. The rules are in shared/signin/flow.py's docstring, "Who a mailbox belongs to".

The fakes resolve an address in the token's tenant only (a domain belongs to the tenant whose users' UPNs
carry it), as Exchange does; a user's ``email`` claim can be set to anything, as a tenant admin can.
"""

from __future__ import annotations

import pytest

from shared.core.access import UNRESTRICTED
from shared.settings import get_settings
from shared.signin.flow import credential_id, derived_account_id
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, links, principals
from shared.storage.tables.client import table
from shared.storage.tables.outbox import EVENT_PREFIX, EventRow
from tests.service import APP_REDIRECT, Service
from tools.azurite import free_port

FABRIKAM = "3c5a0b1e-0000-4000-8000-00000000fab1"  # another organisation (tenant)
CEO = "ceo@contoso.com"


# --- helpers ------------------------------------------------------------------------------------------------

@pytest.fixture
def graph_app(service, identity, graph, set_env):
    """A Graph (``api``) app next to the default imap app, with MC_GRAPH_URL on the fake Graph."""
    set_env(MC_GRAPH_URL=graph.url)
    return Service.create(service.url, identity, base_scopes="api")


@pytest.fixture
def strict_mailboxes(mailboxes):
    """Exchange as it is: a mailbox must exist, and another user's mailbox must be granted."""
    mailboxes.open_all = False
    return mailboxes


@pytest.fixture
def victim(identity):
    """The CEO of contoso (the default tenant): her UPN makes contoso.com a domain of that tenant."""
    return identity.add_user(CEO, email=CEO, name="The CEO")


@pytest.fixture
def mallory(identity):
    """A user of another tenant whose administrator set her ``mail`` (and so her ``email`` claim) to the CEO's
    address: the "nOAuth" setup."""
    return identity.add_user("mallory@fabrikam.example", tid=FABRIKAM, email=CEO)


def account_rows() -> list[dict]:
    return [r for r in table("accounts").list_entities() if r["RowKey"] == ""]


def events_of(account_id: str) -> list[EventRow]:
    return sorted((EventRow.from_entity(r) for r in table("accounts").query_entities(
        "PartitionKey eq @pk", parameters={"pk": account_id}) if r["RowKey"].startswith(EVENT_PREFIX)),
        key=lambda e: e.id)


def unreachable_imap(set_env) -> None:
    set_env(MC_IMAP_HOST=f"localhost:{free_port()}")  # nothing listens: the access check cannot run


def info(service, account_id: str) -> dict:
    response = service.api("GET", f"/v1/account/{account_id}")
    assert response.status_code == 200, response.text
    return response.json()


def credential_intact(service, user) -> bool:
    cred = principals.get_credential(credential_id(service.app.id, user.tid, user.oid))
    return cred is not None and bool(get_secret_store().get(cred.secretName))


# --- 1. the mailbox comes from proof, not from the email claim ------------------------------------------------

def test_spoofed_email_claim_does_not_pass_expected_email_when_the_imap_check_cannot_run(service, identity, victim,
                                                                                       mallory, set_env):
    """An imap app's check cannot run (outbound IMAP blocked): the old code took the mailbox from the ``email``
    claim, so Mallory passed ``expectedEmail`` = the CEO's address and got an account labelled with it."""
    unreachable_imap(set_env)
    result = service.sign_in(service.link(expectedEmail=CEO), mallory).result
    assert result["error"] == "email_mismatch", result
    assert CEO in result["error_description"] and "mallory@fabrikam.example" in result["error_description"]
    assert account_rows() == []


def test_spoofed_email_claim_does_not_name_the_mailbox_of_a_graph_app(graph_app, identity, victim, mallory, graph):
    """A Graph app: the old check opened ``/me`` (Mallory's own mailbox) and labelled the account with the
    ``email`` claim, so the app believed it had the CEO's mailbox. Now the stated address must open by address in
    Mallory's tenant, which it cannot: the account is Mallory's own address."""
    result = graph_app.sign_in(graph_app.link(type=graph_app.app.id), mallory).result
    assert result["state"] == "new", result
    account = accounts.get_account(result["account"])
    assert account.email == "mallory@fabrikam.example" and account.signerTid == FABRIKAM
    assert account.account == derived_account_id(FABRIKAM, "mallory@fabrikam.example")
    assert [r["path"] for r in graph.requests] == \
        ["/v1.0/me", f"/v1.0/users/{CEO}/mailFolders/inbox", "/v1.0/me/mailFolders/inbox"]
    assert [r["status"] for r in graph.requests] in ([200, 403, 200], [200, 404, 200])  # not hers, not found
    refused = graph_app.sign_in(graph_app.link(type=graph_app.app.id, expectedEmail=CEO), mallory).result
    assert refused["error"] == "email_mismatch"


def test_spoofed_email_claim_cannot_take_over_an_account_with_its_reauthentication_link(graph_app, identity, victim,
                                                                                      mallory):
    """The takeover of the issue: the CEO's account's re-authentication link (``expectedEmail`` = her address)
    completed by Mallory of another tenant. The old code compared the ``email`` claim and moved the account to
    Mallory (and deleted the CEO's refresh token)."""
    own = graph_app.sign_in(graph_app.link(type=graph_app.app.id), victim).result["account"]
    url = graph_app.api("POST", f"/v1/account/{own}/reauth", json={"redirectUrl": APP_REDIRECT}).json()["url"]
    result = graph_app.sign_in(url, mallory).result
    assert result["error"] in ("email_mismatch", "tenant_mismatch") and result["account"] == own, result
    account = accounts.get_account(own)
    assert (account.signerOid, account.signerTid, account.email) == (victim.oid, victim.tid, CEO)
    assert credential_intact(graph_app, victim)
    assert principals.get_credential(credential_id(graph_app.app.id, FABRIKAM, mallory.oid)) is None


def test_with_the_check_off_the_email_claim_is_not_the_mailbox(service, identity, set_env):
    """``MC_ACCESS_CHECK=off``: nothing can prove an address, so only the UPN (or a verified email) names it."""
    set_env(MC_ACCESS_CHECK="off")
    user = identity.add_user("jdoe@contoso.com", email="someone.else@contoso.com")
    result = service.sign_in(service.link(), user).result
    assert accounts.get_account(result["account"]).email == "jdoe@contoso.com"


def test_a_verified_email_claim_names_the_mailbox(service, identity, set_env):
    set_env(MC_ACCESS_CHECK="off")
    user = identity.add_user("jdoe@contoso.com", email="john.doe@contoso.com", email_domain_verified=True)
    result = service.sign_in(service.link(expectedEmail="john.doe@contoso.com"), user).result
    assert accounts.get_account(result["account"]).email == "john.doe@contoso.com"


def test_the_primary_address_the_imap_check_opens_is_the_mailbox(service, identity, imap, strict_mailboxes):
    """The honest case: UPN and primary address differ, no ``xms_edov``. The IMAP login as the primary address
    succeeds in the signer's tenant, which proves it."""
    user = identity.add_user("jdoe@contoso.com", email="john.doe@contoso.com")
    result = service.sign_in(service.link(expectedEmail="john.doe@contoso.com"), user).result
    assert result["state"] == "new", result
    account = accounts.get_account(result["account"])
    assert account.email == "john.doe@contoso.com" and account.accessCheck == "ok"
    assert imap.logins == [{"user": "john.doe@contoso.com", "upn": "jdoe@contoso.com", "ok": True}]


def test_the_directory_mail_of_a_graph_app_is_the_mailbox(graph_app, identity, graph, strict_mailboxes):
    user = identity.add_user("jdoe@contoso.com", mail="john.doe@contoso.com")  # no email claim at all
    result = graph_app.sign_in(graph_app.link(type=graph_app.app.id), user).result
    assert accounts.get_account(result["account"]).email == "john.doe@contoso.com"
    assert [r["path"] for r in graph.requests] == ["/v1.0/me", "/v1.0/users/john.doe@contoso.com/mailFolders/inbox"]


def test_a_stated_address_the_imap_check_refuses_falls_back_to_the_upn(service, identity, imap, victim, mallory):
    """Mallory's IMAP login as the CEO's address is refused in her tenant; her own mailbox (UPN) is connected."""
    result = service.sign_in(service.link(), mallory).result
    assert accounts.get_account(result["account"]).email == "mallory@fabrikam.example"
    assert [(login["user"], login["ok"]) for login in imap.logins] == \
        [(CEO, False), ("mallory@fabrikam.example", True)]


# --- 2. re-binding an existing account --------------------------------------------------------------------

def test_a_delegate_cannot_turn_an_own_mailbox_into_a_shared_one(service, identity, strict_mailboxes):
    """The issue's example: Bob has Full Access to ada@ and connects ada@ as a shared mailbox. The derived id
    is Ada's own account's: the old code flipped it to delegated, signed by Bob, and deleted Ada's credential."""
    ada = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    strict_mailboxes.grant(bob, "ada@contoso.com")
    own = service.sign_in(service.link(), ada).result["account"]
    link = service.link(email="ada@contoso.com", delegated=True)
    result = service.sign_in(link, bob).result
    assert result["error"] == "owner_mismatch" and result["account"] == own, result
    assert "ada@contoso.com" in result["error_description"] and "bob@contoso.com" in result["error_description"]
    account = accounts.get_account(own)
    assert (account.delegated, account.signerOid) == (False, ada.oid)
    assert credential_intact(service, ada)
    assert principals.get_credential(credential_id(service.app.id, bob.tid, bob.oid)) is None
    assert not links.is_used(query_nonce(link))  # nothing written: the link is still usable (by someone else)


def query_nonce(url: str) -> str:
    import json
    from urllib.parse import parse_qs, urlsplit

    from shared.signing import b64url_decode

    return json.loads(b64url_decode(parse_qs(urlsplit(url).query)["data"][0]))["nonce"]


def test_an_own_mailbox_cannot_be_moved_to_another_persons_mailbox(service, identity):
    """A link naming Ada's account id, completed by Carol for her own mailbox."""
    ada = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    carol = identity.add_user("carol@contoso.com", email="carol@contoso.com")
    assert service.sign_in(service.link(account="user-42"), ada).result["state"] == "new"
    result = service.sign_in(service.link(account="user-42"), carol).result
    assert result["error"] == "owner_mismatch"
    assert accounts.get_account("user-42").signerOid == ada.oid and credential_intact(service, ada)


def test_a_user_of_another_tenant_cannot_rebind_an_account(service, identity):
    """A link naming an account of contoso, completed by a user of fabrikam who can open a mailbox of the same
    address (the access check says ok): the old code re-bound the account across tenants."""
    alice = identity.add_user("alice@contoso.com")
    eve = identity.add_user("eve@fabrikam.example", tid=FABRIKAM)
    body = {"account": "team", "email": "team@shared.example", "delegated": True}
    assert service.sign_in(service.link(**body), alice).result["state"] == "new"
    link = service.link(**body)
    result = service.sign_in(link, eve).result
    assert result["error"] == "tenant_mismatch" and result["account"] == "team", result
    assert accounts.get_account("team").signerOid == alice.oid and credential_intact(service, alice)
    assert principals.get_credential(credential_id(service.app.id, FABRIKAM, eve.oid)) is None
    # Nothing was written: the same link works for a user of the right organisation.
    bob = identity.add_user("bob@contoso.com")
    assert service.sign_in(link, bob).result == {"account": "team", "state": "existing", "signerChanged": "true"}


@pytest.mark.parametrize("mode", ["on", "off"])
def test_rebinding_needs_a_positive_access_check(service, identity, imap, set_env, mode):
    """The check could not run (``on``) or is turned off: the old code moved the account anyway (fail-open)."""
    alice = identity.add_user("alice@contoso.com")
    bob = identity.add_user("bob@contoso.com")
    body = {"account": "team", "email": "team@contoso.com", "delegated": True}
    assert service.sign_in(service.link(**body), alice).result["state"] == "new"
    if mode == "on":
        unreachable_imap(set_env)
    else:
        set_env(MC_ACCESS_CHECK="off")
    link = service.link(**body)
    result = service.sign_in(link, bob).result
    assert result["error"] == "access_not_proven" and result["account"] == "team", result
    assert accounts.get_account("team").signerOid == alice.oid and credential_intact(service, alice)
    assert alice.upn in result["error_description"] and bob.upn in result["error_description"]
    if mode == "on":  # the check runs again: the same link works
        set_env(MC_IMAP_HOST=imap.address)
        assert service.sign_in(link, bob).result == {"account": "team", "state": "existing", "signerChanged": "true"}
    # The same signer may always sign in again, unproven or not.
    assert service.sign_in(service.link(**body), alice).result["state"] == "existing"


def test_an_account_stays_with_its_oauth_app(service, identity, graph_app):
    """A link of another OAuth app (e.g. made with a token restricted to that app) for the same mailbox lands on
    the derived id of the first app's account: the old code moved the account to the other app."""
    ada = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    own = service.sign_in(service.link(type=service.app.id), ada).result["account"]
    result = graph_app.sign_in(graph_app.link(type=graph_app.app.id), ada).result
    assert result["error"] == "app_mismatch" and "account" not in result, result
    assert accounts.get_account(own).appId == service.app.id and credential_intact(service, ada)


def test_the_app_is_told_that_the_signer_changed(service, identity):
    alice = identity.add_user("alice@contoso.com")
    bob = identity.add_user("bob@contoso.com")
    body = {"account": "team", "email": "team@contoso.com", "delegated": True}
    assert service.sign_in(service.link(**body), alice).result == {"account": "team", "state": "new"}
    assert service.sign_in(service.link(**body), alice).result == {"account": "team", "state": "existing"}
    moved = service.sign_in(service.link(**body), bob)
    assert moved.result == {"account": "team", "state": "existing", "signerChanged": "true"}
    signed_in = [e.data for e in events_of("team") if e.event == "authenticationSuccess"]
    assert [d["signerChanged"] for d in signed_in] == [False, False, True]
    assert signed_in[-1]["signerChange"] == {
        "from": {"upn": "alice@contoso.com", "tenant": alice.tid, "oid": alice.oid},
        "to": {"upn": "bob@contoso.com", "tenant": bob.tid, "oid": bob.oid}}
    assert info(service, "team")["signer"]["upn"] == "bob@contoso.com"


def test_expected_email_pins_the_delegate_for_every_later_sign_in(service, identity, strict_mailboxes):
    """EmailEngine's meaning of ``expectedEmail``: the authenticating principal. Bob connects the shared mailbox
    with ``expectedEmail`` = his own address (the old code refused it: it compared the shared address); later
    re-authentication links may not be completed by Carol, who also has Full Access."""
    bob = identity.add_user("bob@contoso.com")
    carol = identity.add_user("carol@contoso.com")
    strict_mailboxes.grant(bob, "support@contoso.com")
    strict_mailboxes.grant(carol, "support@contoso.com")
    link = service.link(account="support", email="support@contoso.com", delegated=True, expectedEmail=bob.upn)
    assert service.sign_in(link, bob).result == {"account": "support", "state": "new"}
    assert info(service, "support")["expectedEmail"] == bob.upn
    reauth = service.api("POST", "/v1/account/support/reauth", json={"redirectUrl": APP_REDIRECT}).json()["url"]
    result = service.sign_in(reauth, carol).result
    assert result["error"] == "email_mismatch" and bob.upn in result["error_description"], result
    assert accounts.get_account("support").signerOid == bob.oid
    # A plain form link for the same account is a re-authentication too; the pin holds there as well.
    result = service.sign_in(service.link(account="support", email="support@contoso.com", delegated=True), carol).result
    assert result["error"] == "email_mismatch"
    assert service.sign_in(reauth, bob).result == {"account": "support", "state": "existing"}
    assert accounts.get_account("support").pinnedEmail == bob.upn


def test_a_rebinding_that_slips_past_the_first_read_is_refused_at_the_commit(service, identity, monkeypatch):
    """The rules hold under the row's ETag: Ada's own account appears between the callback's first read and its
    commit (a concurrent sign-in); Bob's delegated sign-in for ada@ is refused there and its writes are undone."""
    from shared.signin import flow
    from shared.storage.tables.accounts import Account
    from shared.storage.tables.records import utcnow

    ada = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    account_id = derived_account_id(ada.tid, "ada@contoso.com")
    store = flow._store_credential

    def store_then_race(*args, **kwargs):
        stored = store(*args, **kwargs)
        now = utcnow()
        accounts.insert_account(Account(
            account=account_id, email="ada@contoso.com", appId=service.app.id, delegated=False,
            credentialId=credential_id(service.app.id, ada.tid, ada.oid), signerUpn=ada.upn, signerTid=ada.tid,
            signerOid=ada.oid, accessCheck="ok", created=now, updated=now))
        return stored

    monkeypatch.setattr(flow, "_store_credential", store_then_race)
    link = service.link(email="ada@contoso.com", delegated=True)
    result = service.sign_in(link, bob).result
    assert result["error"] == "owner_mismatch", result
    assert accounts.get_account(account_id).signerOid == ada.oid
    bob_cred = credential_id(service.app.id, bob.tid, bob.oid)
    assert principals.account_ids(bob_cred) == [] and principals.get_credential(bob_cred) is None
    assert not links.is_used(query_nonce(link))


# --- 3. an access check that cannot run ------------------------------------------------------------------------

def test_a_new_account_whose_check_could_not_run_is_marked_pending_until_proven(service, identity, imap, set_env):
    """The old code stored such an account exactly like a checked one (only ``meta.accessCheck`` in storage said
    otherwise, and the API did not show it)."""
    bob = identity.add_user("bob@contoso.com")
    unreachable_imap(set_env)
    result = service.sign_in(service.link(email="support@contoso.com", delegated=True), bob).result
    assert result["state"] == "new"
    assert info(service, result["account"])["accessCheck"] == "pending"

    from shared.core.mailbox_access import prove_access
    from shared.handoff.tokens import hand_off

    set_env(MC_IMAP_HOST=imap.address)  # later, with the account's own token (as the keep-alive holds it)
    account = accounts.get_account(result["account"])
    token = hand_off(account.account, get_settings(), caller=UNRESTRICTED).accessToken
    assert prove_access(account, token, get_settings()).outcome == "ok"
    assert info(service, result["account"])["accessCheck"] == "ok"
    assert imap.logins[-1] == {"user": "support@contoso.com", "upn": "bob@contoso.com", "ok": True}


def test_prove_access_records_a_refusal(service, identity, imap, mailboxes):
    bob = identity.add_user("bob@contoso.com")
    account_id = service.sign_in(service.link(email="support@contoso.com", delegated=True), bob).result["account"]
    from shared.core.mailbox_access import prove_access
    from shared.handoff.tokens import hand_off

    mailboxes.open_all = False  # Full Access removed
    mailboxes.add_mailbox("support@contoso.com")
    account = accounts.get_account(account_id)
    seen = []
    token = hand_off(account_id, get_settings(), caller=UNRESTRICTED).accessToken
    result = prove_access(account, token, get_settings(),
                          events_for=lambda before, after: seen.append((before.access_status, after.accessCheck)) or [])
    assert result.outcome == "denied" and seen == [("ok", "denied")]
    assert info(service, account_id)["accessCheck"] == "denied"


def test_a_same_signer_sign_in_that_cannot_check_keeps_the_earlier_proof(service, identity, set_env):
    bob = identity.add_user("bob@contoso.com")
    body = {"account": "team", "email": "team@contoso.com", "delegated": True}
    assert service.sign_in(service.link(**body), bob).result["state"] == "new"
    unreachable_imap(set_env)
    assert service.sign_in(service.link(**body), bob).result == {"account": "team", "state": "existing"}
    assert info(service, "team")["accessCheck"] == "ok"
