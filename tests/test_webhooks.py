"""Webhooks end to end: events written with the account change (outbox), fanned out and delivered by the
dispatcher (``shared.webhooks.dispatcher``) to real HTTP receivers on 127.0.0.1, signed, retried with backoff on an
injected clock (24 hours without waiting), dead-lettered and re-sent, and swept up after a lost fast path.

The service runs on the local host (real Azurite, the fake Microsoft); the dispatcher runs in the test's
thread with a ``Clock`` the test moves, exactly as the timer function runs it with the real time."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from sandbox.fakes.webhooks import Clock, Receiver
from shared.core.links import decode
from shared.settings import get_settings
from shared.storage.tables import deliveries, outbox
from shared.storage.tables.client import table
from shared.webhooks.dispatcher import MAX_AGE, Dispatcher, RunReport
from shared.webhooks.signature import verify_signature
from tests.invariants import expire_access_tokens
from tests.service import APP_REDIRECT, connect, query

pytestmark = pytest.mark.usefixtures("fresh_webhook_caches")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def register(service, url: str, **body) -> dict:
    response = service.api("POST", "/v1/webhooks", json={"url": url, **body})
    assert response.status_code == 201, response.text
    return response.json()


def dispatch(clock: Clock, **kwargs) -> RunReport:
    return Dispatcher(get_settings(), clock=clock, **kwargs).run()


def event_rows() -> list[dict]:
    return [r for r in table("accounts").list_entities() if r["RowKey"].startswith(outbox.EVENT_PREFIX)]


def assert_signed(received, secret: str, clock: Clock) -> dict:
    headers = received.headers
    assert verify_signature(secret, headers["x-mc-timestamp"], headers["x-mc-signature"], received.body,
                            now=clock().timestamp())
    assert not verify_signature("another secret", headers["x-mc-timestamp"], headers["x-mc-signature"],
                                received.body, now=clock().timestamp())
    assert not verify_signature(secret, headers["x-mc-timestamp"], headers["x-mc-signature"],
                                received.body + b" ", now=clock().timestamp())
    assert not verify_signature(secret, headers["x-mc-timestamp"], headers["x-mc-signature"], received.body,
                                now=clock().timestamp() + 301), "a replay after 5 minutes must be refused"
    body = received.json
    assert headers["x-mc-event-id"] == body["id"] and headers["x-mc-event"] == body["event"]
    assert headers["content-type"].startswith("application/json")
    return body


# --- the events and their payloads --------------------------------------------------------------------------

def test_account_lifecycle_events_are_signed_and_in_order(service, identity, receiver, clock):
    hook = register(service, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["events"] == [] and hook["source"] == "api"
    listed = service.api("GET", "/v1/webhooks").json()["webhooks"]
    assert [w["id"] for w in listed] == [hook["id"]] and "secret" not in listed[0]

    bob = identity.add_user("bob@contoso.com", name="Bob")
    account = connect(service, bob, name="Bob's mailbox")
    # Committed with the account row, in its partition; nothing was sent by the request itself.
    assert sorted(r["event"] for r in event_rows()) == ["accountAdded", "accountInitialized", "authenticationSuccess"]
    assert {r["PartitionKey"] for r in event_rows()} == {account}
    assert receiver.received == []

    report = dispatch(clock)
    assert (report.fanned_out, report.delivered, report.failed) == (3, 3, 0)
    added, success, initialized = [assert_signed(r, hook["secret"], clock) for r in receiver.received]
    assert [added["event"], success["event"], initialized["event"]] == \
        ["accountAdded", "authenticationSuccess", "accountInitialized"]
    assert added["id"] < success["id"] < initialized["id"] and added["date"] <= success["date"]
    assert added["account"] == account and added["serviceUrl"] == service.url
    assert added["data"] == {"account": account, "name": "Bob's mailbox", "email": "bob@contoso.com",
                             "delegated": False, "app": service.app.id,
                             "signer": {"upn": "bob@contoso.com", "tenant": bob.tid}}
    assert success["data"]["state"] == "new" and success["data"]["reason"] == "signIn"
    assert success["data"]["repaired"] is False and success["data"]["user"] == "bob@contoso.com"
    assert event_rows() == [] and outbox.pending() == [] and deliveries.due(clock() + MAX_AGE) == []

    assert connect(service, bob, account=account) == account  # signing in again: existing
    service.api("DELETE", f"/v1/account/{account}").raise_for_status()
    dispatch(clock)
    again, deleted = [assert_signed(r, hook["secret"], clock) for r in receiver.received[3:]]
    assert again["event"] == "authenticationSuccess" and again["data"]["state"] == "existing"
    assert deleted == {**deleted, "event": "accountDeleted", "account": account,
                       "data": {"account": account, "user": "bob@contoso.com"}}
    assert len({r.event_id for r in receiver.received}) == 5
    assert dispatch(clock).delivered == 0  # nothing left


def readme_verify():
    """The receiver's ``verify`` function exactly as the README shows it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = next(block.split("\n", 1)[1] for block in text.split("```")[1::2]
                if block.startswith("python") and "def verify(" in block)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own README
    return namespace["verify"]


def test_the_readme_verification_accepts_real_deliveries_only(service, identity, receiver, clock):
    verify = readme_verify()
    hook = register(service, receiver.url, events=["accountAdded"])
    connect(service, identity.add_user("rea@contoso.com"))
    Dispatcher(get_settings()).run()  # the real clock: the README checks the timestamp against time.time()
    got = receiver.received[0]
    headers = {"X-MC-Timestamp": got.headers["x-mc-timestamp"], "X-MC-Signature": got.headers["x-mc-signature"]}
    assert verify(hook["secret"], headers, got.body)
    assert not verify(hook["secret"], headers, got.body.replace(b"accountAdded", b"accountDeleted"))
    assert not verify("whsec_other", headers, got.body)
    stale = {**headers, "X-MC-Timestamp": str(int(headers["X-MC-Timestamp"]) - 600)}
    assert not verify(hook["secret"], stale, got.body)


def test_settings_targets_event_filters_and_the_api(service, identity, receiver, clock, set_env):
    configured = Receiver().start()
    try:
        set_env(MC_WEBHOOK_URLS=f"{configured.url}, {configured.url}", MC_WEBHOOK_SECRET="configured-secret-0123")
        only_deleted = register(service, receiver.url, events=["accountDeleted", "accountDeleted"],
                                description="deletions")
        assert only_deleted["events"] == ["accountDeleted"]
        listed = {w["source"]: w for w in service.api("GET", "/v1/webhooks").json()["webhooks"]}
        assert listed["settings"]["url"] == configured.url and listed["settings"]["events"] == []
        assert listed["api"]["description"] == "deletions"
        refused = service.api("DELETE", f"/v1/webhooks/{listed['settings']['id']}")
        assert refused.status_code == 409 and refused.json()["code"] == "configured_in_settings"

        account = connect(service, identity.add_user("ann@contoso.com"))
        service.api("DELETE", f"/v1/account/{account}").raise_for_status()
        dispatch(clock)
        assert configured.events() == ["accountAdded", "authenticationSuccess", "accountInitialized", "accountDeleted"]
        for got in configured.received:
            assert_signed(got, "configured-secret-0123", clock)
        assert receiver.events() == ["accountDeleted"]
        assert receiver.received[0].event_id == configured.received[3].event_id  # one event, two targets
    finally:
        configured.stop()


def test_webhook_api_validates_and_deletes(service, receiver, clock, identity):
    for body, field in [({"url": "http://example.com/hook"}, "url"), ({"url": "ftp://example.com"}, "url"),
                        ({"url": "https://user:pw@example.com/"}, "url"), ({"url": "https://example.com/#x"}, "url"),
                        ({"url": "https://169.254.169.254/metadata"}, "url"), ({"url": "https://[ff02::1]/"}, "url"),
                        ({"url": "https://example.com", "events": ["messageNew"]}, "events.0"),
                        ({"url": "https://example.com", "secret": "mine"}, "secret")]:
        response = service.api("POST", "/v1/webhooks", json=body)
        assert response.status_code == 400 and response.json()["field"] == field, (body, response.text)
    assert service.api("POST", "/v1/webhooks", json={"url": "http://localhost:9/x"}).status_code == 201
    assert service.api("DELETE", "/v1/webhooks/wh0000000000000000").status_code == 404
    assert service.api("DELETE", "/v1/webhooks/Not-An-Id!").status_code == 404
    assert service.api("GET", "/v1/webhooks", token=_api_only_token()).status_code == 403

    # Deleting a webhook drops its undelivered events at once.
    hook = register(service, "http://127.0.0.1:9/unreachable")
    connect(service, identity.add_user("cid@contoso.com"))
    dispatch(clock)
    assert {d.target for d in deliveries.due(clock() + MAX_AGE)} >= {hook["id"]}
    assert service.api("DELETE", f"/v1/webhooks/{hook['id']}").json() == {"id": hook["id"], "deleted": True}
    assert hook["id"] not in {d.target for d in deliveries.due(clock() + MAX_AGE)}


def _api_only_token() -> str:
    from shared.storage.tables.apitokens import create_token

    return create_token("api only", ("api",))[0]


# --- retries, backoff, dead letters ---------------------------------------------------------------------

def run_until_settled(clock: Clock, target: str, limit: int = 100) -> int:
    """Run, then move the clock to each next attempt of ``target``'s deliveries and run, until none is
    pending; returns how many runs followed the first."""
    dispatch(clock)
    for runs in range(limit):
        pending = [d for d in deliveries.of_target(target) if d.status == deliveries.PENDING]
        if not pending:
            return runs
        clock.to(min(d.nextAttemptAt for d in pending))
        dispatch(clock)
    raise AssertionError(f"still pending after {limit} runs")


def test_retries_back_off_exponentially_for_24_hours_then_dead_letter_and_resend(service, identity, receiver, clock):
    receiver.answer = lambda got: 500
    hook = register(service, receiver.url, events=["accountAdded"])
    account = connect(service, identity.add_user("dan@contoso.com"))
    start = clock()
    run_until_settled(clock, hook["id"])

    attempts = receiver.received
    assert len({a.event_id for a in attempts}) == 1 and len({a.body for a in attempts}) == 1  # same event, same body
    assert [int(a.headers["x-mc-attempt"]) for a in attempts] == list(range(1, len(attempts) + 1))
    stamps = [int(a.headers["x-mc-timestamp"]) for a in attempts]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):  # 10 s doubling to 1 h, minus at most 10 % jitter (whole seconds)
        nominal = min(10 * 2 ** (n - 1), 3600)
        assert nominal * 0.9 - 1 <= gap <= nominal, (n, gap, gaps)
    assert stamps[-1] - int(start.timestamp()) >= 24 * 3600, "gave up before 24 hours"
    assert stamps[-2] - int(start.timestamp()) < 24 * 3600 <= stamps[-1] - int(start.timestamp())
    assert 25 <= len(attempts) <= 40, len(attempts)
    for got in attempts:
        assert verify_signature(hook["secret"], got.headers["x-mc-timestamp"], got.headers["x-mc-signature"],
                                got.body, now=int(got.headers["x-mc-timestamp"]))

    dead = service.api("GET", "/v1/webhooks/deadletters").json()["deadLetters"]
    assert len(dead) == 1
    letter = dead[0]
    assert letter["webhook"] == hook["id"] and letter["account"] == account and letter["event"] == "accountAdded"
    assert letter["attempts"] == len(attempts) and letter["lastStatus"] == 500 and letter["lastError"] == "HTTP 500"
    clock.advance(days=3)
    assert dispatch(clock).delivered == 0  # dead letters are not retried on their own

    receiver.answer = lambda got: 204
    assert service.api("POST", "/v1/webhooks/deadletters/nope/resend").status_code == 400
    assert service.api("POST", f"/v1/webhooks/deadletters/{hook['id']}.{'0' * 28}/resend").status_code == 404
    resent = service.api("POST", f"/v1/webhooks/deadletters/{letter['id']}/resend")
    assert resent.status_code == 202 and resent.json()["status"] == "pending"
    assert dispatch(clock).delivered == 1
    assert receiver.received[-1].body == attempts[0].body and receiver.received[-1].headers["x-mc-attempt"] == "1"
    assert service.api("GET", "/v1/webhooks/deadletters").json() == {"deadLetters": []}
    assert service.api("POST", f"/v1/webhooks/deadletters/{letter['id']}/resend").status_code == 404


def test_dead_letters_can_be_discarded(service, identity, receiver, clock):
    receiver.answer = lambda got: 503
    hook = register(service, receiver.url, events=["accountAdded"])
    connect(service, identity.add_user("eve@contoso.com"))
    run_until_settled(clock, hook["id"])
    letter = service.api("GET", "/v1/webhooks/deadletters").json()["deadLetters"][0]
    assert service.api("DELETE", f"/v1/webhooks/deadletters/{letter['id']}").json()["deleted"] is True
    assert service.api("GET", "/v1/webhooks/deadletters").json() == {"deadLetters": []}
    assert service.api("DELETE", f"/v1/webhooks/deadletters/{letter['id']}").status_code == 404


def test_a_receiver_down_for_an_hour_then_up_gets_every_event_once(service, identity, clock):
    down = Receiver()  # its port is reserved, nothing listens: connection refused
    hook = register(service, down.url)
    users = [identity.add_user(f"user{i}@contoso.com") for i in range(3)]
    accounts = [connect(service, u) for u in users]
    service.api("DELETE", f"/v1/account/{accounts[0]}").raise_for_status()
    produced = {r["RowKey"].removeprefix(outbox.EVENT_PREFIX) for r in event_rows()}
    assert len(produced) == 10  # 3 x (accountAdded + authenticationSuccess + accountInitialized) + accountDeleted

    start = clock()
    report, runs = dispatch(clock), 1
    assert (report.fanned_out, report.delivered, report.failed) == (10, 0, 1)  # one probe per run, not 10
    while clock() - start < timedelta(hours=1):
        clock.to(min(d.nextAttemptAt for d in deliveries.of_target(hook["id"])))
        report = dispatch(clock)
        assert report.delivered == 0 and report.failed == 1
        runs += 1
    assert all(d.status == deliveries.PENDING for d in deliveries.of_target(hook["id"]))

    up = Receiver(port=down.port).start()
    try:
        settled = run_until_settled(clock, hook["id"])
        got = up.received
        assert sorted(r.event_id for r in got) == sorted(produced), "every event exactly once"
        assert settled == 1, "the first probe that succeeds takes every waiting event along"
        assert list(deliveries.of_target(hook["id"])) == []
        for r in got:
            assert_signed(r, hook["secret"], clock)
    finally:
        up.stop()
    print(f"receiver down 1 h: {runs} probe runs, then {len(got)} events in {settled} run(s)")


def test_a_receiver_failing_forever_does_not_hold_up_the_others(service, identity, receiver, clock):
    failing = Receiver(answer=lambda got: 500).start()
    try:
        bad = register(service, failing.url)
        register(service, receiver.url)
        for i in range(3):
            connect(service, identity.add_user(f"f{i}@contoso.com"))
        report = dispatch(clock)
        assert report.delivered == 9 and report.failed == 1
        assert len(receiver.received) == 9 and len(failing.received) == 1
        pending = list(deliveries.of_target(bad["id"]))
        assert len(pending) == 9 and sum(d.attempts for d in pending) == 1
        connect(service, identity.add_user("late@contoso.com"))
        clock.advance(seconds=10)
        dispatch(clock)
        assert len(receiver.received) == 12  # the healthy receiver keeps getting new events at once
    finally:
        failing.stop()


# --- durability: the outbox survives crashes -------------------------------------------------------------

def test_events_whose_fast_path_was_lost_are_swept_up(service, identity, receiver, clock, monkeypatch):
    register(service, receiver.url)

    def crash(events):  # the process died between the commit and the index write
        raise ConnectionError("simulated crash after commit")

    monkeypatch.setattr(outbox, "add_index", crash)
    account = connect(service, identity.add_user("fay@contoso.com"))
    monkeypatch.undo()
    assert outbox.pending() == [] and len(event_rows()) == 3

    assert dispatch(clock).fanned_out == 0 and receiver.received == []  # the fast path knows nothing
    sweeper = Dispatcher(get_settings(), clock=clock)
    assert sweeper.sweep() == 0, "younger than the grace period: left to the fast path"
    clock.advance(minutes=3)
    assert sweeper.sweep() == 3
    dispatch(clock)
    assert receiver.events() == ["accountAdded", "authenticationSuccess", "accountInitialized"]
    assert {r.json["account"] for r in receiver.received} == {account}
    assert event_rows() == []


def test_a_crash_between_fan_out_and_clean_up_delivers_once(service, identity, receiver, clock, monkeypatch):
    register(service, receiver.url)
    connect(service, identity.add_user("gus@contoso.com"))
    real_delete = outbox.delete_event
    monkeypatch.setattr(outbox, "delete_event", lambda *a: (_ for _ in ()).throw(ConnectionError("crash")))
    with pytest.raises(ConnectionError):
        dispatch(clock)
    monkeypatch.setattr(outbox, "delete_event", real_delete)
    assert len(event_rows()) == 3 and len(outbox.pending()) == 3  # nothing was cleaned up
    dispatch(clock)  # fans the first event out again (a no-op), then delivers
    clock.advance(minutes=3)
    Dispatcher(get_settings(), clock=clock).sweep()
    dispatch(clock)
    assert sorted(receiver.events()) == ["accountAdded", "accountInitialized", "authenticationSuccess"]
    assert len({r.event_id for r in receiver.received}) == len(receiver.received) == 3
    assert event_rows() == [] and outbox.pending() == []


def test_a_request_never_waits_for_or_fails_with_a_receiver(service, identity, monkeypatch):
    """No delivery happens on the request path, and a broken outbox index does not fail the sign-in."""
    register(service, "http://127.0.0.1:9/never")
    monkeypatch.setattr(outbox, "add_index", lambda events: (_ for _ in ()).throw(RuntimeError("storage down")))
    account = connect(service, identity.add_user("hal@contoso.com"))
    assert service.api("DELETE", f"/v1/account/{account}").status_code == 200


# --- authenticationError: once, with a re-authentication link -----------------------------------------------

def test_authentication_error_is_sent_once_with_a_reauth_link_and_repair_follows(service, identity, receiver, clock):
    hook = register(service, receiver.url, events=["authenticationError", "authenticationSuccess"])
    ivy = identity.add_user("ivy@contoso.com")
    own = connect(service, ivy, redirectUrl=APP_REDIRECT + "?app=ivy")
    shared = connect(service, ivy, email="team@contoso.com", delegated=True)
    dispatch(clock)
    receiver.received.clear()

    identity.revoke(ivy)
    assert service.api("GET", f"/v1/account/{own}/oauth-token").status_code == 403
    expire_access_tokens(new_process=True)
    assert service.api("GET", f"/v1/account/{shared}/oauth-token").status_code == 403  # fails again: no new event
    dispatch(clock)
    errors = [assert_signed(r, hook["secret"], clock) for r in receiver.received]
    assert sorted(e["account"] for e in errors) == sorted([own, shared]), "one event per account, once"
    by_account = {e["account"]: e["data"] for e in errors}
    data = by_account[own]
    assert (data["serverResponseCode"], data["errorCode"]) == ("OauthRenewError", "invalid_grant") and data["response"]
    assert sorted(data["accounts"]) == sorted([own, shared]) and data["user"] == "ivy@contoso.com"
    link = data["reauthUrl"]
    assert link.startswith(service.url + "/accounts/new?") and data["reauthExpires"]
    params = query(link)
    carried = decode(params["data"], params["sig"], get_settings())
    assert carried.account == own and carried.redirectUrl == APP_REDIRECT + "?app=ivy"
    assert by_account[shared]["reauthUrl"] and query(by_account[shared]["reauthUrl"])["data"] != params["data"]

    # The app sends the link; the user signs in again: both accounts work again, and the app hears it.
    receiver.received.clear()
    browser_result = service.sign_in(link, ivy)
    assert query(browser_result.location)["account"] == own
    dispatch(clock)
    repaired = {r.json["account"]: r.json["data"] for r in receiver.received}
    assert set(repaired) == {own, shared}
    assert repaired[own]["reason"] == "signIn" and repaired[own]["repaired"] is True
    assert repaired[shared]["reason"] == "credentialRepaired" and repaired[shared]["repaired"] is True


def test_reauth_redirect_url_setting_wins(service, identity, receiver, clock, set_env):
    register(service, receiver.url, events=["authenticationError"])
    jay = identity.add_user("jay@contoso.com")
    account = connect(service, jay)
    set_env(MC_REAUTH_REDIRECT_URL="https://app.example/reconnect")
    identity.revoke(jay)
    assert service.api("GET", f"/v1/account/{account}/oauth-token").status_code == 403
    dispatch(clock)
    params = query(receiver.received[0].json["data"]["reauthUrl"])
    assert decode(params["data"], params["sig"], get_settings()).redirectUrl == "https://app.example/reconnect"


# --- the timer function on the local host's schedule -----------------------------------------------------

def test_the_delivery_timer_delivers_on_its_schedule(env, set_env, identity, imap, receiver):
    """The real path: the local host runs ``webhook_delivery`` every 10 s; a sign-in reaches the receiver."""
    import time

    from tests.service import Service
    from tools.azurite import free_port
    from tools.localhost import load_function_app, serve

    port = free_port()
    set_env(MC_PUBLIC_URL=f"http://localhost:{port}", MC_AUTHORITY_HOST=identity.host,
            MC_CA_BUNDLE=identity.ca_bundle, MC_IMAP_HOST=imap.address, MC_WEBHOOK_URLS=receiver.url,
            MC_WEBHOOK_SECRET="timer-secret-0123456789")
    server = serve(load_function_app(), "127.0.0.1", port).start(timers=True)
    try:
        assert {"webhook_delivery", "webhook_sweeper", "credential_keepalive"} <= set(server.timers)
        service = Service.create(f"http://localhost:{port}", identity)
        committed = time.monotonic()
        connect(service, identity.add_user("kim@contoso.com"))
        got = receiver.wait_for(3, timeout=30)
        latency = got[2].at - committed
        assert [r.json["event"] for r in got] == ["accountAdded", "authenticationSuccess", "accountInitialized"]
        print(f"webhook latency after the sign-in: {latency:.1f}s (timer every 10 s)")
        assert server.run_timer("webhook_sweeper") is None and server.run_timer("credential_keepalive") is None
    finally:
        server.stop()
    assert json.loads(got[0].body)["serviceUrl"] == f"http://localhost:{port}"
    assert APP_REDIRECT  # the default app redirect is unchanged by webhooks
