"""EmailEngine's accounts API (``../shared/emailengine-api.md``: "GET /v1/accounts", "GET/PUT/DELETE
/v1/account/{account}", "POST /v1/account with oauth2.auth.delegatedAccount"), driven with EmailEngine-shaped
requests against the real service (local host, Azurite, the fake Microsoft identity platform and Exchange).

Every statement of those sections is checked here, or its documented deliberate difference:

* listing: ``page`` (0-based), ``pageSize`` (<= 1000, default 20), ``state``, ``query``; ``{total, page, pages,
  accounts}``; items with ``account``, ``type``, ``state``, ``name``, ``email``, ``app``, ``lastError``; totals
  that stay right under concurrent sign-ins, deletes and changes of state (threads against the service), and
  for restricted tokens; a sign-in counted by the next webhook delivery run (not by the callback), once however
  often its events are processed; the cost bounds (``page_too_deep``, ``query_too_broad``) and the count's repair;
* one account: ``type``, ``oauth2`` (``provider``, ``auth.user``/``delegatedUser``/``delegatedAccount``),
  ``lastError``; 404; ``PUT`` answering ``{"account"}``; ``DELETE`` answering ``{account, deleted: true}`` and
  ``revoke=true`` (Microsoft has no per-app revocation: the service destroys its copy of the grant, and says so);
* ``POST /v1/account`` with ``oauth2.auth.delegatedAccount``: a shared mailbox connected with an existing
  account's sign-in after the mailbox access check proved access, refused when it does not.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from sandbox.fakes.webhooks import Clock
from shared.admin import accounts as admin_accounts
from shared.core import account_state
from shared.core.sweeper import run_sweeper
from shared.settings import get_settings
from shared.signin.flow import credential_id, derived_account_id
from shared.storage.secrets.base import SecretNotFound
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, counts, outbox, principals
from shared.storage.tables.accounts import AUTH_ERROR
from shared.storage.tables.client import table
from shared.webhooks.dispatcher import Dispatcher, RunReport
from tests.invariants import account_rows, back_at_app, prepare
from tests.service import Service, connect
from tests.test_management_api import write_account
from tests.test_races import complete, together

SHARED = "support@contoso.com"
ITEM_FIELDS = {"account", "type", "state", "name", "email", "app", "lastError"}
pytestmark = pytest.mark.timeout(300)


def listing(service: Service, token: str | None = None, **params) -> dict:
    response = service.api("GET", "/v1/accounts", token=token, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def every_id(service: Service, token: str | None = None, **params) -> list[str]:
    """Every account of the listing: page 0, then its nextCursor on (the scalable way)."""
    body = listing(service, token, **params)
    ids = [a["account"] for a in body["accounts"]]
    for _ in range(100):
        if body["nextCursor"] is None:
            return ids
        rest = {k: v for k, v in params.items() if k not in ("page", "cursor")}
        body = listing(service, token, **rest, cursor=body["nextCursor"])
        ids += [a["account"] for a in body["accounts"]]
    raise AssertionError("the listing did not end")


def error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["statusCode"] == status and body["code"] == code, body
    return body


def mint(service: Service, **body) -> str:
    response = service.api("POST", "/v1/tokens", json={"name": "restricted", **body})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def deliver(clock: Clock | None = None) -> RunReport:
    """One webhook delivery run, as the 10 s timer runs it: it counts the accounts of sign-ins (whose callback
    does not: ``shared.webhooks.dispatcher``), with or without webhook targets."""
    return Dispatcher(get_settings(), clock=clock or Clock()).run()


def member_state(account_id: str) -> str | None:
    """What the account's membership row (``shared.storage.tables.counts``) counts it as; None: no row."""
    row = table(counts.TABLE).query_entities("RowKey eq @rk", parameters={"rk": counts.member_key(account_id)})
    found = [str(r.get("state") or "") for r in row]
    assert len(found) <= 1, found
    return found[0] if found else None


def event_types(account_id: str) -> list[str]:
    rows = table("accounts").query_entities("PartitionKey eq @pk and RowKey gt @lo",
                                            parameters={"pk": account_id, "lo": "event:"})
    return [row["event"] for row in rows]


@pytest.fixture
def strict_mailboxes(mailboxes):
    """Exchange as it is: another user's mailbox opens only with Full Access granted."""
    mailboxes.open_all = False
    return mailboxes


# --- GET /v1/accounts: numbered pages -----------------------------------------------------------------------

def test_numbered_pages_with_total_and_pages(service):
    ids = sorted(f"acct-{i:02d}" for i in range(45))
    for account_id in ids:
        write_account(service, account_id, f"{account_id}@contoso.com")

    first = listing(service, page=0)
    assert (first["total"], first["page"], first["pages"]) == (45, 0, 3)
    assert [a["account"] for a in first["accounts"]] == ids[:20]  # pageSize defaults to 20
    for item in first["accounts"]:
        assert ITEM_FIELDS <= set(item), item
        assert item["type"] == "outlook" and item["state"] == "connected" and item["lastError"] is None
        assert item["app"] == service.app.id and item["email"] == f"{item['account']}@contoso.com"
    assert [a["account"] for a in listing(service, page=1)["accounts"]] == ids[20:40]
    last = listing(service, page=2)
    assert [a["account"] for a in last["accounts"]] == ids[40:] and last["nextCursor"] is None
    beyond = listing(service, page=3)
    assert (beyond["total"], beyond["page"], beyond["pages"], beyond["accounts"]) == (45, 3, 3, [])

    assert listing(service)["page"] == 0  # no page: EmailEngine's default, page 0
    seven = listing(service, page=6, pageSize=7)
    assert (seven["pages"], [a["account"] for a in seven["accounts"]]) == (7, ids[42:])
    everything = listing(service, pageSize=1000)
    assert (everything["pages"], len(everything["accounts"])) == (1, 45)
    # every numbered page carries a cursor: go on from any page the scalable way
    assert every_id(service, page=1, pageSize=10) == ids[10:]

    error(service.api("GET", "/v1/accounts", params={"pageSize": 1001}), 400, "invalid_input")
    error(service.api("GET", "/v1/accounts", params={"page": -1}), 400, "invalid_input")
    error(service.api("GET", "/v1/accounts", params={"page": 0, "cursor": first["nextCursor"]}), 400, "invalid_input")


def test_a_numbered_page_starts_at_most_50000_accounts_in(service):
    write_account(service, "only", "only@contoso.com")
    body = error(service.api("GET", "/v1/accounts", params={"page": 50_001, "pageSize": 1}), 400, "page_too_deep")
    assert body["field"] == "page" and "nextCursor" in body["message"]
    deepest = listing(service, page=50, pageSize=1000)  # 50,000 in: allowed (and past the end here)
    assert (deepest["total"], deepest["accounts"], deepest["nextCursor"]) == (1, [], None)


def test_state_filter_and_its_total(service):
    for i in range(5):
        write_account(service, f"ok-{i}", f"ok{i}@contoso.com")
    for i in range(3):
        write_account(service, f"err-{i}", f"err{i}@contoso.com", state=AUTH_ERROR, errorCode="invalid_grant",
                      errorDescription="AADSTS700082: The refresh token has expired")
    errored = listing(service, page=0, state="authenticationError")
    assert (errored["total"], errored["pages"]) == (3, 1)
    assert [a["account"] for a in errored["accounts"]] == ["err-0", "err-1", "err-2"]
    item = errored["accounts"][0]
    assert item["state"] == "authenticationError"
    assert item["lastError"]["serverResponseCode"] == "OauthRenewError"
    assert item["lastError"]["response"] and item["lastError"]["code"] == "invalid_grant"
    assert listing(service, page=0, state="connected", pageSize=2)["total"] == 5
    assert listing(service, page=1, state="connected", pageSize=2)["accounts"][0]["account"] == "ok-2"
    # EmailEngine's other states: accepted, and no account here is ever in them
    for state in ("init", "connecting", "syncing", "connectError", "unset", "disconnected", "paused"):
        assert listing(service, state=state) == {"total": 0, "page": 0, "pages": 0, "accounts": [],
                                                 "nextCursor": None}
    error(service.api("GET", "/v1/accounts", params={"state": "broken"}), 400, "invalid_input")


def test_query_matches_id_name_or_address_ignoring_case(service):
    for account_id, email, name, state in (
            ("alpha-1", "sales@contoso.com", "Sales Team", "connected"),
            ("beta-2", "help@fabrikam.com", "Support Desk", "connected"),
            ("gamma-3", "Alpha.Person@contoso.com", "Somebody", "connected"),
            ("delta-4", "quiet@contoso.com", "ALPHA (old)", AUTH_ERROR),
            ("zeta-5", "nobody@contoso.com", "Nobody", "connected")):
        write_account(service, account_id, email, state=state)
        assert service.api("PUT", f"/v1/account/{account_id}", json={"name": name}).status_code == 200

    found = listing(service, page=0, query="alpha")
    assert (found["total"], found["pages"]) == (3, 1)  # id, address (case-insensitive) and name
    assert [a["account"] for a in found["accounts"]] == ["alpha-1", "delta-4", "gamma-3"]
    assert [a["account"] for a in listing(service, query="SUPP")["accounts"]] == ["beta-2"]  # name
    assert [a["account"] for a in listing(service, query="fabrikam")["accounts"]] == ["beta-2"]  # address
    assert listing(service, query="ALPHA", state="connected")["total"] == 2
    assert listing(service, query="no such text") == {"total": 0, "page": 0, "pages": 0, "accounts": [],
                                                      "nextCursor": None}
    second = listing(service, page=1, pageSize=1, query="alpha")
    assert (second["total"], second["pages"], [a["account"] for a in second["accounts"]]) == (3, 3, ["delta-4"])
    assert every_id(service, pageSize=1, query="alpha") == ["alpha-1", "delta-4", "gamma-3"]  # cursor continues


def test_query_searches_a_bounded_number_of_accounts_per_numbered_page(service, monkeypatch):
    for i in range(6):
        write_account(service, f"q-{i}", f"q{i}@contoso.com")
    monkeypatch.setattr(admin_accounts, "SCAN_PAGE", 2)
    monkeypatch.setattr(admin_accounts, "MAX_SCAN", 3)
    body = error(service.api("GET", "/v1/accounts", params={"query": "q-"}), 400, "query_too_broad")
    assert body["field"] == "query"
    # a cursor page has no count: it searches a few requests and may come back short, never refused
    start = admin_accounts.encode_after("", get_settings())
    assert every_id(service, cursor=start, query="q-", pageSize=2) == [f"q-{i}" for i in range(6)]


# --- totals: restricted tokens, concurrency, repair -----------------------------------------------------------

def test_restricted_tokens_get_totals_of_what_they_see(service, identity):
    from tests.test_restricted_tokens import second_app

    app_b = second_app(service, identity)
    for i in range(4):
        write_account(service, f"a-{i}", f"a{i}@contoso.com")
    for i in range(3):
        connect(service, identity.add_user(f"b{i}@contoso.com"), account=f"b-{i}", type=app_b.id)
    deliver()  # counts the sign-ins
    assert listing(service, page=0)["total"] == 7
    only_b = mint(service, apps=[app_b.id])
    body = listing(service, only_b, page=0, pageSize=2)
    assert (body["total"], body["pages"], [a["account"] for a in body["accounts"]]) == (3, 2, ["b-0", "b-1"])
    assert every_id(service, only_b, pageSize=2) == ["b-0", "b-1", "b-2"]
    assert listing(service, only_b, query="a-")["total"] == 0

    named = mint(service, accounts=["a-1", "a-3", "b-0", "missing"])  # one does not exist
    body = listing(service, named, page=0, pageSize=2)
    assert (body["total"], body["pages"], [a["account"] for a in body["accounts"]]) == (3, 2, ["a-1", "a-3"])
    assert [a["account"] for a in listing(service, named, page=1, pageSize=2)["accounts"]] == ["b-0"]
    assert every_id(service, named, pageSize=1) == ["a-1", "a-3", "b-0"]
    both = mint(service, apps=[service.app.id], accounts=["a-1", "b-0"])
    assert listing(service, both, page=0)["total"] == 1


def test_totals_stay_right_under_concurrent_sign_ins_deletes_and_changes_of_state(service, identity):
    """Sign-ins of new accounts (and four at once of one mailbox), deletes and changes of state, all released
    together against the service: afterwards every total (all, per state, per app) is the number of rows."""
    doomed = [write_account(service, f"old-{i}", f"old{i}@contoso.com").account for i in range(8)]
    flipping = [write_account(service, f"flip-{i}", f"flip{i}@contoso.com") for i in range(6)]
    delegate = identity.add_user("delegate@contoso.com", email="delegate@contoso.com")
    pending = [prepare(service, service.link(email=f"shared{i}@contoso.com", delegated=True), delegate)
               for i in range(10)]
    same = identity.add_user("same@contoso.com", email="same@contoso.com")
    pending += [prepare(service, service.link(name="Same"), same) for _ in range(4)]
    before = listing(service, page=0)["total"]
    assert before == 14

    def flip(row):  # the token hand-off's marking, as when Microsoft refuses the refresh token
        return lambda: account_state.mark_reauthentication_required(row.credentialId, "invalid_grant", "revoked",
                                                                    also=(row.account,))

    actions = [complete(p) for p in pending]
    actions += [lambda a=a: service.api("DELETE", f"/v1/account/{a}") for a in doomed]
    actions += [flip(row) for row in flipping] + [flip(row) for row in flipping[:3]]  # twice at once: no effect
    results = together(*actions)

    signed = [back_at_app(r) for r in results[:len(pending)]]
    assert all(r.get("state") in ("new", "existing") or r.get("error") == "temporarily_unavailable" for r in signed)
    assert [r.status_code for r in results[len(pending):len(pending) + len(doomed)]] == [200] * len(doomed)
    # deletes and changes of state counted at once; the sign-ins not yet: the delivery run of their events does
    assert accounts.count_accounts([service.app.id]) == 6
    deliver()
    rows = account_rows()
    by_state = Counter(row["state"] for row in rows)
    assert by_state["authenticationError"] == 6
    assert listing(service, page=0, pageSize=1)["total"] == len(rows) == len(every_id(service))
    assert len(rows) == 6 + len({r["account"] for r in signed if "error" not in r})
    for state in ("connected", "authenticationError"):
        assert listing(service, page=0, pageSize=1, state=state)["total"] == by_state[state], state
    assert accounts.count_accounts([service.app.id]) == len(rows)


def test_a_sign_in_is_counted_by_the_next_delivery_run_not_by_the_callback(service, identity):
    """The callback skips the count's sync (4 Table requests); the delivery run of its events, with no webhook
    configured, does it. Other writes count at once."""
    write_account(service, "old", "old@contoso.com")
    ann = identity.add_user("ann@contoso.com")
    account = connect(service, ann, account="ann")
    assert member_state(account) is None and accounts.count_accounts([service.app.id]) == 1
    # listed, not yet counted (pageSize=1: a page that lists more rows than the count says shows those rows)
    assert listing(service, page=0, pageSize=1)["total"] == 1 and len(every_id(service)) == 2
    assert len(outbox.pending()) == 3  # accountAdded, authenticationSuccess, accountInitialized

    report = deliver()
    assert (report.fanned_out, report.counted) == (3, 1)  # no target: fanned out to no one, and counted
    assert member_state(account) == "connected" and outbox.pending() == [] and event_types(account) == []
    assert listing(service, page=0)["total"] == 2 == accounts.count_accounts([service.app.id])
    assert listing(service, page=0, state="connected")["total"] == 2

    connect(service, ann, account="ann")  # a repeated sign-in: counted already, and still once after its run
    assert deliver().counted == 1 and accounts.count_accounts([service.app.id]) == 2
    assert service.api("DELETE", f"/v1/account/{account}").status_code == 200  # a delete: at once
    assert listing(service, page=0)["total"] == 1 and member_state(account) == ""
    assert deliver().counted == 1 and accounts.count_accounts([service.app.id]) == 1  # its event: no change


def test_processing_a_sign_ins_events_again_does_not_count_it_twice(service, identity, monkeypatch):
    """At least once: a run that stops before its clean-up leaves the events to be processed again (by the next
    run, two runs at once, the sweeper); each syncs the account again, and the count stays one."""
    account = connect(service, identity.add_user("bo@contoso.com"), account="bo")
    monkeypatch.setattr(outbox, "delete_event", lambda *a: None)  # fanned out, never cleaned up
    monkeypatch.setattr(outbox, "remove_index", lambda *a: None)
    clock = Clock()
    assert deliver(clock).counted == 1 and accounts.count_accounts([service.app.id]) == 1
    assert deliver(clock).counted == 1 and accounts.count_accounts([service.app.id]) == 1  # the same events again
    reports = together(lambda: deliver(clock), lambda: deliver(clock))  # two runs at once
    assert [(r.fanned_out, r.counted) for r in reports] == [(3, 1), (3, 1)]
    clock.advance(minutes=3)
    assert Dispatcher(get_settings(), clock=clock).sweep() == 3  # and the sweeper's scan finds them once more
    assert accounts.count_accounts([service.app.id]) == 1
    monkeypatch.undo()
    assert deliver(clock).counted == 1 and outbox.pending() == [] and event_types(account) == []
    assert member_state(account) == "connected"
    assert listing(service, page=0)["total"] == 1 == accounts.count_accounts([service.app.id])
    assert listing(service, page=0, state="connected")["total"] == 1


def test_the_sweeper_repairs_counts_a_crash_or_an_older_version_left(service, monkeypatch):
    for i in range(3):
        write_account(service, f"kept-{i}", f"kept{i}@contoso.com")
    gone = write_account(service, "gone", "gone@contoso.com")
    # rows written without their count: by a version before counts, or by a writer that died before its sync
    for i in range(2):
        entity = gone.model_copy(update={"account": f"raw-{i}", "email": f"raw{i}@contoso.com"}).to_entity(f"raw-{i}")
        table("accounts").create_entity(entity)
    table("accounts").delete_entity("gone", "")  # deleted, its count never synced
    assert accounts.count_accounts([service.app.id]) == 4 and len(account_rows()) == 5
    assert listing(service, page=0, pageSize=1)["total"] == 4  # wrong until the sweeper's next run

    monkeypatch.setattr(counts, "TOMBSTONE_AGE", timedelta(0))
    report = run_sweeper(get_settings())
    assert (report.counted, report.recounted) == (5, 3)
    assert listing(service, page=0, pageSize=1)["total"] == 5 == accounts.count_accounts([service.app.id])
    again = run_sweeper(get_settings())  # the next pass finds nothing to repair, and drops the tombstone
    assert (again.counted, again.recounted) == (5, 0)
    members = [row for row in table(counts.TABLE).list_entities() if row["RowKey"].startswith(counts.MEMBER_PREFIX)]
    assert sorted(row["account"] for row in members) == ["kept-0", "kept-1", "kept-2", "raw-0", "raw-1"]


def test_counts_are_kept_per_instance_for_a_bounded_time(service, set_env, monkeypatch):
    """MC_COUNT_CACHE_SECONDS (issue 14): a listing reads the count rows once per that many seconds; a count another
    instance changes shows once they have passed, one this instance changes at once. The cache's clock is the
    test's (no sleeping)."""
    import time

    clock = type("Clock", (), {"now": 1000.0, "monotonic": lambda self: self.now, "sleep": staticmethod(time.sleep)})()
    monkeypatch.setattr(counts, "time", clock)
    set_env(MC_COUNT_CACHE_SECONDS="5")
    for i in range(2):
        write_account(service, f"c-{i}", f"c{i}@contoso.com")
    clock.now += 0.01  # the clock moves on after this instance's own count changes
    assert listing(service, page=0, pageSize=1)["total"] == 2
    reads: list[str] = []
    point_read = counts.get_or_none
    monkeypatch.setattr(counts, "get_or_none", lambda client, pk, rk: reads.append(pk) or point_read(client, pk, rk))
    assert listing(service, page=0, pageSize=1)["total"] == 2
    assert reads == [], "warm: no count row read"

    write_account_elsewhere(service, "c-2", "c2@contoso.com")
    clock.now += 4.9
    assert listing(service, page=0, pageSize=1)["total"] == 2  # this instance's count, inside the bound
    clock.now += 0.2
    assert listing(service, page=0, pageSize=1)["total"] == 3  # past the bound: read again
    # This instance deletes one: its own change counts at once.
    assert service.api("DELETE", "/v1/account/c-0").status_code == 200
    clock.now += 0.01
    assert listing(service, page=0, pageSize=1)["total"] == 2
    assert accounts.count_accounts([service.app.id]) == 2


def write_account_elsewhere(service, account_id: str, email: str):
    """An account written and counted by another instance: the rows change, this process's cache is not told."""
    forgotten = dict(counts._forgotten)
    row = write_account(service, account_id, email)
    with counts._cache_lock:  # undo this process's own invalidation: as if the sync ran on another instance
        counts._forgotten.clear()
        counts._forgotten.update(forgotten)
    return row


# --- GET /v1/account/{account} --------------------------------------------------------------------------------

def test_an_account_reads_as_emailengine_describes_it(service, identity):
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com", name="Bob")
    own = connect(service, bob, account="bob", name="Bob")
    shared = connect(service, bob, account="support", email=SHARED, delegated=True, name="Support")

    info = service.api("GET", f"/v1/account/{own}").json()
    assert {k: info[k] for k in ("account", "type", "name", "email", "state", "app", "lastError")} == {
        "account": "bob", "type": "outlook", "name": "Bob", "email": "bob@contoso.com", "state": "connected",
        "app": service.app.id, "lastError": None}
    assert info["oauth2"] == {"provider": service.app.id, "auth": {"user": "bob@contoso.com"}}
    assert info["signer"]["upn"] == "bob@contoso.com" and info["accessCheck"] == "ok"  # this service's own

    info = service.api("GET", f"/v1/account/{shared}").json()
    assert (info["type"], info["email"], info["delegated"]) == ("outlook", SHARED, True)
    assert info["oauth2"] == {"provider": service.app.id, "auth": {"user": "bob@contoso.com", "delegatedUser": SHARED}}

    account_state.mark_reauthentication_required(credential_id(service.app.id, bob.tid, bob.oid), "invalid_grant",
                                                 "AADSTS50173: The provided grant has expired")
    broken = service.api("GET", f"/v1/account/{shared}").json()
    assert broken["state"] == "authenticationError"
    assert broken["lastError"]["serverResponseCode"] == "OauthRenewError"
    assert broken["lastError"]["description"] == "AADSTS50173: The provided grant has expired"
    assert "invalid_grant" in broken["lastError"]["response"] and broken["lastError"]["code"] == "invalid_grant"
    assert broken["lastError"]["at"]

    error(service.api("GET", "/v1/account/nobody"), 404, "not_found")


# --- PUT /v1/account/{account} --------------------------------------------------------------------------------

def test_update_answers_the_account_and_keeps_emailengines_settings(service, identity):
    account = connect(service, identity.add_user("cleo@contoso.com"), account="cleo", name="Cleo")
    body = {"name": "Cleo (work)", "syncFrom": "2024-01-01", "notifyFrom": "2024-02-01T00:00:00Z",
            "subconnections": "INBOX", "path": ["INBOX", "Sent"], "locale": "fr", "tz": "Europe/Tallinn",
            "copy": False, "logs": True, "proxy": "socks5://proxy.example:1080", "smtpEhloName": "mx.example",
            "imapIndexer": "fast"}  # the last five configure EmailEngine's IMAP sync: accepted, ignored
    response = service.api("PUT", f"/v1/account/{account}", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert next(iter(answer)) == "account" and answer["account"] == "cleo"  # EmailEngine: {"account": id}
    read = service.api("GET", f"/v1/account/{account}").json()
    assert {k: read[k] for k in ("name", "syncFrom", "notifyFrom", "subconnections", "path", "locale", "tz")} == {
        "name": "Cleo (work)", "syncFrom": "2024-01-01", "notifyFrom": "2024-02-01T00:00:00Z",
        "subconnections": ["INBOX"], "path": ["INBOX", "Sent"], "locale": "fr", "tz": "Europe/Tallinn"}
    assert not {"copy", "logs", "proxy", "smtpEhloName", "imapIndexer"} & set(read)

    cleared = service.api("PUT", f"/v1/account/{account}", json={"syncFrom": None, "path": "*"}).json()
    assert "syncFrom" not in cleared and "path" not in cleared and cleared["name"] == "Cleo (work)"
    # the mailbox, the pin, credentials and per-account webhooks come from a sign-in or are not supported
    for field, value in (("email", "x@contoso.com"), ("expectedEmail", "x@contoso.com"),
                         ("webhooks", "https://hooks.example/x"), ("imap", {"host": "imap.example"}),
                         ("oauth2", {"provider": service.app.id})):
        body = error(service.api("PUT", f"/v1/account/{account}", json={"name": "n", field: value}), 400,
                     "unknown_field")
        assert body["field"] == field
    error(service.api("PUT", f"/v1/account/{account}", json={"syncFrom": "yesterday"}), 400, "invalid_input")
    error(service.api("PUT", "/v1/account/nobody", json={"name": "x"}), 404, "not_found")


# --- DELETE /v1/account/{account} -----------------------------------------------------------------------------

def test_delete_answers_emailengines_shape_and_revoke_destroys_the_grant_held_here(service, identity):
    dora = identity.add_user("dora@contoso.com")
    own = connect(service, dora, account="dora")
    shared = connect(service, dora, account="dora-shared", email=SHARED, delegated=True)
    secret = principals.secret_name(credential_id(service.app.id, dora.tid, dora.oid))

    response = service.api("DELETE", f"/v1/account/{own}")
    assert response.status_code == 200 and response.json() == {"account": "dora", "deleted": True}
    # revoke=true while another account uses the same sign-in: that one keeps working, and the answer says so
    other = connect(service, dora, account="dora-again")
    assert service.api("DELETE", f"/v1/account/{other}", params={"revoke": "true"}).json() == {
        "account": "dora-again", "deleted": True, "revoked": False}
    assert service.api("GET", f"/v1/account/{shared}/oauth-token").status_code == 200
    # the last account: the refresh token (this service's only copy of the grant) is destroyed
    assert service.api("DELETE", f"/v1/account/{shared}", params={"revoke": "Y"}).json() == {
        "account": "dora-shared", "deleted": True, "revoked": True}
    with pytest.raises(SecretNotFound):
        get_secret_store().get(secret)
    assert principals.get_credential(credential_id(service.app.id, dora.tid, dora.oid)) is None

    error(service.api("DELETE", "/v1/account/dora"), 404, "not_found")
    third = connect(service, dora, account="dora-3")
    error(service.api("DELETE", f"/v1/account/{third}", params={"revoke": "maybe"}), 400, "invalid_input")
    assert service.api("DELETE", f"/v1/account/{third}", params={"revoke": "false"}).json() == {
        "account": "dora-3", "deleted": True}


# --- POST /v1/account with oauth2.auth.delegatedAccount ---------------------------------------------------

def delegated_body(service: Service, **overrides) -> dict:
    body = {"account": "support", "name": "Support", "email": SHARED,
            "oauth2": {"provider": service.app.id, "auth": {"user": "bob@contoso.com", "delegatedUser": SHARED,
                                                            "delegatedAccount": "bob"}}}
    body.update(overrides)
    return body


def test_a_shared_mailbox_connects_with_an_existing_accounts_sign_in(service, identity, imap, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    connect(service, bob, account="bob")
    strict_mailboxes.grant(bob, SHARED)
    total = listing(service, page=0)["total"]
    imap.logins.clear()

    response = service.api("POST", "/v1/account", json=delegated_body(service))
    assert response.status_code == 200, response.text
    assert response.json() == {"account": "support", "state": "new"}
    assert imap.logins == [{"user": SHARED, "upn": "bob@contoso.com", "ok": True}]  # proven before anything
    info = service.api("GET", "/v1/account/support").json()
    assert {k: info[k] for k in ("type", "email", "name", "delegated", "state", "accessCheck")} == {
        "type": "outlook", "email": SHARED, "name": "Support", "delegated": True, "state": "connected",
        "accessCheck": "ok"}
    assert info["oauth2"] == {"provider": service.app.id, "auth": {
        "user": "bob@contoso.com", "delegatedUser": SHARED, "delegatedAccount": "bob"}}
    cred = credential_id(service.app.id, bob.tid, bob.oid)
    assert accounts.get_account("support").credentialId == cred  # the same credential, no new sign-in
    assert sorted(principals.account_ids(cred)) == ["bob", "support"]
    assert {"accountAdded", "authenticationSuccess"} <= set(event_types("support"))  # as a sign-in writes them
    assert listing(service, page=0)["total"] == total + 1
    token = service.api("GET", "/v1/account/support/oauth-token")
    assert token.status_code == 200 and token.json()["imap"]["user"] == SHARED

    again = service.api("POST", "/v1/account", json=delegated_body(service, name="Support desk"))
    assert again.json() == {"account": "support", "state": "existing"}
    assert service.api("GET", "/v1/account/support").json()["name"] == "Support desk"
    # the credential is shared, not the account: the source can go, the shared mailbox keeps working
    assert service.api("DELETE", "/v1/account/bob").status_code == 200
    assert service.api("GET", "/v1/account/support/oauth-token").status_code == 200


def test_without_an_account_id_or_provider_as_older_emailengine_clients_send_it(service, identity, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    connect(service, bob, account="bob")
    strict_mailboxes.grant(bob, "team@contoso.com")
    body = {"account": "", "name": "Team", "oauth2": {"auth": {"delegatedUser": "team@contoso.com",
                                                                "delegatedAccount": "bob"}}}
    response = service.api("POST", "/v1/account", json=body)
    assert response.status_code == 200, response.text
    account = response.json()["account"]
    assert account == derived_account_id(bob.tid, "team@contoso.com")  # as a sign-in derives it
    info = service.api("GET", f"/v1/account/{account}").json()
    assert info["type"] == "delegated" and info["app"] == service.app.id  # EmailEngine's type without a provider
    assert listing(service, query="team")["accounts"][0]["type"] == "delegated"


def test_refused_when_the_access_check_does_not_prove_access(service, identity, imap, strict_mailboxes, set_env):
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    connect(service, bob, account="bob")
    before = (sorted(r["PartitionKey"] for r in account_rows()), listing(service, page=0)["total"])

    denied = error(service.api("POST", "/v1/account", json=delegated_body(service)), 403, "mailbox_access_denied")
    assert SHARED in denied["message"] and "bob@contoso.com" in denied["message"]
    assert imap.logins[-1] == {"user": SHARED, "upn": "bob@contoso.com", "ok": False}
    set_env(MC_IMAP_HOST="localhost:9")  # the check cannot run: not proven, not connected
    unproven = service.api("POST", "/v1/account", json=delegated_body(service))
    assert error(unproven, 503, "access_not_proven") and unproven.headers["Retry-After"]
    set_env(MC_ACCESS_CHECK="off")
    error(service.api("POST", "/v1/account", json=delegated_body(service)), 409, "access_not_proven")
    assert (sorted(r["PartitionKey"] for r in account_rows()), listing(service, page=0)["total"]) == before
    cred = credential_id(service.app.id, bob.tid, bob.oid)
    assert principals.account_ids(cred) == ["bob"]  # no index row left behind
    assert accounts.get_account("bob").state == "connected"


def test_the_request_is_checked_against_the_source_account(service, identity, strict_mailboxes):
    from tests.test_restricted_tokens import second_app

    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    connect(service, bob, account="bob")
    strict_mailboxes.grant(bob, SHARED)
    post = lambda body, token=None: service.api("POST", "/v1/account", json=body, token=token)  # noqa: E731
    auth = delegated_body(service)["oauth2"]["auth"]

    error(post(delegated_body(service, oauth2={"auth": {**auth, "delegatedAccount": "nobody"}})), 404, "not_found")
    app_b = second_app(service, identity)
    body = error(post(delegated_body(service, oauth2={"provider": app_b.id, "auth": auth})), 400, "invalid_input")
    assert body["field"] == "oauth2.provider"
    body = error(post(delegated_body(service, oauth2={"auth": {**auth, "user": "eve@contoso.com"}})), 400,
                 "invalid_input")
    assert body["field"] == "oauth2.auth.user"
    error(post(delegated_body(service, email="other@contoso.com")), 400, "invalid_input")
    own = {**auth, "delegatedUser": "bob@contoso.com"}
    error(post(delegated_body(service, email=None, oauth2={"auth": own})), 400, "invalid_input")
    error(post(delegated_body(service, imap={"host": "imap.example"})), 400, "invalid_input")
    assert error(post(delegated_body(service, account="bob")), 400, "invalid_input")["field"] == "account"
    error(post({**delegated_body(service), "webhooks": "https://hooks.example"}), 400, "unknown_field")

    # restricted tokens: the source must be visible, the new account within the restriction
    only_b = mint(service, apps=[app_b.id])
    error(post(delegated_body(service), only_b), 404, "not_found")
    named = mint(service, accounts=["bob", "support"])
    body = error(post(delegated_body(service, account=None), named), 400, "invalid_input")
    assert body["field"] == "account"
    assert post(delegated_body(service), named).json() == {"account": "support", "state": "new"}
    # the sign-in's re-binding rules: someone's own mailbox is never taken over, even with Full Access
    connect(service, identity.add_user("carol@contoso.com"), account="carol", type=service.app.id)
    strict_mailboxes.grant(bob, "carol@contoso.com")
    error(post(delegated_body(service, account="carol", email="carol@contoso.com",
                              oauth2={"auth": {**auth, "delegatedUser": "carol@contoso.com"}})), 409, "owner_mismatch")
    assert accounts.get_account("carol").signerUpn == "carol@contoso.com"


def test_an_api_app_needs_the_shared_mailbox_scopes_of_a_delegated_sign_in(service, identity, graph, set_env,
                                                                           strict_mailboxes):
    set_env(MC_GRAPH_URL=graph.url)
    api_app = Service.create(service.url, identity, base_scopes="api")
    ann = identity.add_user("ann@contoso.com", email="ann@contoso.com")
    connect(api_app, ann, account="ann", type=api_app.app.id)
    strict_mailboxes.grant(ann, SHARED)
    body = {"account": "ann-support", "name": "Support", "email": SHARED,
            "oauth2": {"provider": api_app.app.id, "auth": {"delegatedUser": SHARED, "delegatedAccount": "ann"}}}

    refused = error(api_app.api("POST", "/v1/account", json=body), 409, "consent_required")
    assert "Mail.ReadWrite.Shared" in refused["message"]
    assert accounts.get_account("ann").state == "connected"  # never asked Microsoft for what was not granted
    # one shared mailbox through a sign-in link grants the .Shared scopes; then no more sign-ins are needed
    strict_mailboxes.grant(ann, "first@contoso.com")
    connect(api_app, ann, account="ann-first", email="first@contoso.com", delegated=True, type=api_app.app.id)
    created = api_app.api("POST", "/v1/account", json=body)
    assert created.status_code == 200 and created.json() == {"account": "ann-support", "state": "new"}, created.text
    other = {**body, "account": "ann-other", "email": "other@contoso.com",
             "oauth2": {"auth": {"delegatedUser": "other@contoso.com", "delegatedAccount": "ann"}}}
    error(api_app.api("POST", "/v1/account", json=other), 403, "mailbox_not_found")


def test_a_broken_source_sign_in_answers_oauth_renew_error(service, identity, strict_mailboxes):
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    connect(service, bob, account="bob")
    strict_mailboxes.grant(bob, SHARED)
    identity.revoke(bob)
    body = error(service.api("POST", "/v1/account", json=delegated_body(service)), 403, "OauthRenewError")
    assert body["authenticationFailed"] is True
    # nothing written; the refused refresh marked the source, as a token request of it would have
    assert accounts.get_account("support") is None and accounts.get_account("bob").state == "authenticationError"
