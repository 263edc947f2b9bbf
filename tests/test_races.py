"""Races with real concurrency: parallel HTTP requests (threads released together by a ``threading.Barrier``)
against the local host (a threaded server, as a Functions instance runs several invocations at once), real
Azurite and the fake Microsoft identity platform.

Each sign-in runs in its own ``tests.service.Browser`` (its own cookie jar, as separate browsers), and is
stopped at Microsoft's redirect back to ``/oauth`` so that only the callbacks race.

"Consistent" (``tests.invariants.check_consistency``), from ../shared/DESIGN.md invariants 1-5 and what
``shared/admin/accounts.py`` and the README document:

* the account row is the truth. An existing account is either **whole** (its credential row, its
  (credential, account) index row and the credential's secret all exist) and its token hand-off answers 200,
  or **degraded** by the documented narrow race of a delete or re-bind with a sign-in of the same credential
  ("the account then asks for re-authentication at its next token request"; "the account it writes then may
  need one more sign-in"): then the hand-off answers 403 ``OauthRenewError``, never a 5xx or a
  token, and one more sign-in makes it whole again;
* an index row whose account is gone or points at another credential is a leftover: harmless to readers
  (they check that the account points back) but it keeps its credential alive. Counted and reported;
  a credential row without any index row and a secret without a credential row likewise (unreachable);
* a deleted account answers 404 everywhere.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from shared.microsoft.identity import refresh
from shared.settings import get_settings
from shared.signin.flow import credential_id
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import principals
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.invariants import (
    Pending,
    account_rows,
    back_at_app,
    check_consistency,
    credential_rows,
    expire_access_tokens,
    index_rows,
    prepare,
    stored_refresh_token,
)
from tests.service import APP_REDIRECT

IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
ROUNDS = 12
pytestmark = [pytest.mark.timeout(300), pytest.mark.both_secret_modes]


# --- helpers (the invariant checks and sign-in helpers live in tests/invariants.py) -------------------

def together(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions in parallel threads, released at the same moment; their results in order."""
    barrier = threading.Barrier(len(actions))

    def run(action):
        barrier.wait(timeout=60)
        return action()

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(run, actions))


def complete(pending: Pending):
    return lambda: pending.browser.get(pending.callback, allow_redirects=False, timeout=60)


# --- 1. twenty callbacks for one mailbox ---------------------------------------------------------------

def test_twenty_parallel_callbacks_for_one_mailbox_create_one_account(service, identity):
    """Invariant 1: connecting the same mailbox twenty times at once yields one account. Every callback goes
    back to the app: all name the same account, exactly one with ``state=new``; a callback that lost the race
    for the account row too often may answer ``error=temporarily_unavailable`` (its link nonce is released,
    so the same link then works, as the error says)."""
    user = identity.add_user("race@contoso.com", email="race@contoso.com")
    links = [service.link(name="Race") for _ in range(20)]
    pending = [prepare(service, link, user) for link in links]
    results = [back_at_app(a) for a in together(*(complete(p) for p in pending))]
    retry = [link for link, r in zip(links, results, strict=True) if r.get("error") == "temporarily_unavailable"]
    done = [r for r in results if "error" not in r]
    assert len(done) + len(retry) == 20, [r for r in results if r.get("error") != "temporarily_unavailable"]
    assert len({r["account"] for r in done}) == 1
    assert Counter(r["state"] for r in done) == {"new": 1, "existing": len(done) - 1}
    for link in retry:  # the documented way out of a lost race: the same link again
        again = back_at_app(complete(prepare(service, link, user))())
        assert again == {"account": done[0]["account"], "state": "existing"}, again

    [row] = account_rows()
    cred = credential_id(service.app.id, user.tid, user.oid)
    assert row["PartitionKey"] == done[0]["account"] and row["credentialId"] == cred
    assert index_rows() == [(cred, row["PartitionKey"])]
    assert list(credential_rows()) == [cred]
    assert len(list(table("links").list_entities())) == 20  # every link produced (the same) account once
    found = check_consistency(service)
    assert found.whole == [row["PartitionKey"]] and not found.leftover_index_rows
    if retry:
        print(f"20 parallel callbacks: {len(retry)} answered temporarily_unavailable and worked on retry")


# --- 2. one signer, ten mailboxes ------------------------------------------------------------------------

def test_one_signer_connects_ten_mailboxes_in_parallel_with_one_credential(service, identity):
    """Ten shared mailboxes connected at once by one delegate: ten accounts, ten index rows, one credential
    row and one stored refresh token (plus the app's client secret)."""
    user = identity.add_user("delegate@contoso.com", email="delegate@contoso.com")
    links = [service.link(email=f"shared{i}@contoso.com", delegated=True) for i in range(10)]
    pending = [prepare(service, link, user) for link in links]
    results = [back_at_app(a) for a in together(*(complete(p) for p in pending))]
    assert [r.get("state") for r in results] == ["new"] * 10, results
    ids = {r["account"] for r in results}
    assert len(ids) == 10

    cred = credential_id(service.app.id, user.tid, user.oid)
    assert sorted(index_rows()) == sorted((cred, account) for account in ids)
    assert list(credential_rows()) == [cred]
    assert {row["credentialId"] for row in account_rows()} == {cred}
    stored = sorted(r["PartitionKey"] for r in table("secrets").list_entities())
    named = [service.app.secretName, principals.get_credential(cred).secretName]  # "" when sealed (envelope)
    assert stored == sorted(n for n in named if n)
    assert_works(service, stored_refresh_token(principals.get_credential(cred)))
    found = check_consistency(service)
    assert sorted(found.whole) == sorted(ids)


# --- 3. delete racing a re-authentication ----------------------------------------------------------------

@pytest.mark.parametrize("resigner", ["same signer", "another signer"])
def test_delete_racing_reauthentication_ends_consistent(service, identity, resigner):
    """``DELETE /v1/account/{id}`` and the callback of a re-authentication of the same account, released
    together (the delete a little later each round, from 0 to a callback's duration), twelve rounds. Each round
    ends consistent (module docstring); a degraded account is repaired by one more sign-in; every outcome is
    counted and printed."""
    alice = identity.add_user("alice@contoso.com", email="alice@contoso.com")
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    signer = alice if resigner == "same signer" else bob
    body = {"account": "team", "email": "team@contoso.com", "delegated": True}
    outcomes: Counter = Counter()
    for round_ in range(ROUNDS):
        # Start each round from a whole account signed by alice, and a re-authentication ready to complete.
        started = time.monotonic()
        first = back_at_app(complete(prepare(service, service.link(**body), alice))())
        callback_time = time.monotonic() - started
        assert first["account"] == "team" and "error" not in first, first
        reauth = service.api("POST", "/v1/account/team/reauth", json={"redirectUrl": APP_REDIRECT})
        assert reauth.status_code == 200, reauth.text
        pending = prepare(service, reauth.json()["url"], signer)

        # The delete starts a little later each round, so it meets the callback at every step of its writes.
        delay = callback_time * round_ / ROUNDS

        def delete(delay: float = delay):  # bound now: called by together() within this round
            time.sleep(delay)
            return service.api("DELETE", "/v1/account/team")

        deleted, signed_in = together(delete, complete(pending))
        assert deleted.status_code in (200, 404), (deleted.status_code, deleted.text)
        result = back_at_app(signed_in)
        assert "error" not in result and result["account"] == "team", result
        found = check_consistency(service)
        outcome = ("deleted" if not account_rows() else
                   f"re-authorised ({result['state']})" + (", degraded" if found.degraded else ""))
        outcomes[outcome] += 1
        outcomes["leftover index rows"] += len(found.leftover_index_rows)
        outcomes["unused credentials"] += len(found.unused_credentials)
        if found.degraded:  # the documented repair: one more sign-in
            repaired = back_at_app(complete(prepare(service, service.link(**body), signer))())
            assert "error" not in repaired, repaired
            assert check_consistency(service).whole == ["team"]
        assert not found.leftover_index_rows, found  # no failure was injected: clean-up always ran
        if account_rows():
            assert service.api("DELETE", "/v1/account/team").status_code == 200
        assert service.api("GET", "/v1/account/team").status_code == 404
    print(f"delete vs re-authentication ({resigner}):", dict(outcomes))


# --- 4. fifty token requests ------------------------------------------------------------------------------

def test_fifty_parallel_token_requests_refresh_once_and_keep_a_valid_refresh_token(service, identity, monkeypatch,
                                                                                  secret_mode):
    """Fifty hand-offs at once for one account whose refresh token is due for rotation: one refresh (at most
    a handful), at most one rotation write, every answer 200, and the stored refresh token still works."""
    user = identity.add_user("tokens@contoso.com", email="tokens@contoso.com")
    account = back_at_app(complete(prepare(service, service.link(), user))())["account"]
    cred = credential_id(service.app.id, user.tid, user.oid)
    credential = principals.get_credential(cred)
    principals.upsert_credential(credential.model_copy(update={"tokenWrittenAt": utcnow() - timedelta(days=2)}))
    expire_access_tokens()

    store = get_secret_store()
    writes: list[str] = []
    original_set = store.set
    monkeypatch.setattr(store, "set", lambda name, value, **kw: (writes.append(name), original_set(name, value, **kw)))
    refreshes_before = sum(1 for r in identity.token_requests if r["grant_type"] == "refresh_token")

    answers = together(*[lambda: service.api("GET", f"/v1/account/{account}/oauth-token")] * 50)
    assert [a.status_code for a in answers] == [200] * 50, [a.text for a in answers if a.status_code != 200][:3]
    refreshes = sum(1 for r in identity.token_requests if r["grant_type"] == "refresh_token") - refreshes_before
    assert 1 <= refreshes <= 3, refreshes
    assert len({a.json()["accessToken"] for a in answers}) <= refreshes
    # Rotated once: keyvault mode writes the secret; envelope mode seals it into the credential row's write.
    assert writes == ([principals.secret_name(cred)] if secret_mode == "keyvault" else []), writes
    rotated = principals.get_credential(cred)
    assert utcnow() - rotated.tokenWrittenAt < timedelta(minutes=1)
    assert_works(service, stored_refresh_token(rotated))
    print(f"50 parallel token requests: {refreshes} refresh(es), {len(writes)} rotation write(s)")


def assert_works(service, refresh_token: str) -> None:
    tokens = refresh(service.app, service.client_secret, get_settings(), refresh_token, [IMAP_SCOPE])
    assert tokens.access_token
