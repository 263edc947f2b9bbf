"""Issue 12 point 12: access to a mailbox can be lost after sign-in (Full Access removed). The keep-alive re-runs
the mailbox access check on its schedule (``shared.handoff.keepalive.recheck_access``) against the same fakes
the sign-in uses (IMAP and Graph, one permission table), marks the account ``accessCheck: "denied"`` and sends
``mailboxAccessLost`` once per transition; when access comes back, ``authenticationSuccess`` with
``reason: mailboxAccessRestored``, once. "Later" is the keep-alive's injectable clock."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from shared.handoff import keepalive
from shared.handoff.keepalive import recheck_access, run_keepalive
from shared.settings import get_settings
from shared.storage.tables import accounts
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.service import Service, connect

SHARED = "support@contoso.com"


def at(hours: float):
    moment = utcnow() + timedelta(hours=hours)
    return lambda: moment


def events_of(account: str) -> list[tuple[str, dict]]:
    rows = table("accounts").query_entities("PartitionKey eq @a and RowKey ne ''", parameters={"a": account})
    return sorted(((r["event"], json.loads(r["data"]) if isinstance(r.get("data"), str) else r.get("data"))
                   for r in rows), key=lambda e: e[0])


def kinds(account: str) -> list[str]:
    return [kind for kind, _ in events_of(account)]


@pytest.fixture
def strict_mailboxes(mailboxes):
    mailboxes.open_all = False
    return mailboxes


@pytest.fixture
def graph_app(service, identity, graph, set_env):
    set_env(MC_GRAPH_URL=graph.url)
    return Service.create(service.url, identity, base_scopes="api")


def lose_and_restore(app: Service, identity, mailboxes, *, link: dict) -> None:
    bob = identity.add_user("bob@contoso.com", email="bob@contoso.com")
    mailboxes.grant(bob, SHARED)
    account = connect(app, bob, email=SHARED, delegated=True, **link)
    assert accounts.get_account(account).access_status == "ok"
    before = kinds(account)

    # Within a day of the last check nothing is re-checked.
    assert recheck_access(get_settings(), clock=at(1)).checked == 0

    mailboxes.revoke(bob, SHARED)  # an administrator removes Full Access
    first = recheck_access(get_settings(), clock=at(25))
    assert first.lost == [account] and first.checked == 1, first
    row = accounts.get_account(account)
    assert row.accessCheck == "denied" and row.state == "connected"
    lost = [data for kind, data in events_of(account) if kind == "mailboxAccessLost"]
    assert len(lost) == 1 and len(kinds(account)) == len(before) + 1, events_of(account)
    assert lost[0]["user"] == SHARED and lost[0]["previous"] == "ok" and lost[0]["delegated"] is True
    assert lost[0]["serverResponseCode"] == "mailbox_access_denied" and "bob@contoso.com" in lost[0]["response"]

    # The next hourly run checks again (a denied mailbox at every run) but sends nothing new. (The check records
    # the real time; the clock passed is the run's.)
    again = recheck_access(get_settings(), clock=at(1))
    assert again.checked == 1 and again.lost == []
    assert kinds(account).count("mailboxAccessLost") == 1

    mailboxes.grant(bob, SHARED)  # access is back
    back = recheck_access(get_settings(), clock=at(1))
    assert back.restored == [account]
    assert accounts.get_account(account).accessCheck == "ok"
    restored = [d for k, d in events_of(account)
                if k == "authenticationSuccess" and d["reason"] == "mailboxAccessRestored"]
    assert len(restored) == 1 and restored[0]["repaired"] is True
    assert recheck_access(get_settings(), clock=at(1)).checked == 0  # proven again: next check in a day
    assert kinds(account).count("mailboxAccessLost") == 1


def test_imap_mailbox_access_lost_and_restored(service, identity, imap, strict_mailboxes):
    lose_and_restore(service, identity, strict_mailboxes, link={})
    assert [login["ok"] for login in imap.logins] == [True, False, False, True]


def test_graph_mailbox_access_lost_and_restored(graph_app, identity, graph, strict_mailboxes):
    lose_and_restore(graph_app, identity, strict_mailboxes, link={"type": graph_app.app.id})
    assert [r["status"] for r in graph.requests] == [200, 403, 403, 200]


def test_the_keepalive_run_includes_the_recheck(service, identity, imap, strict_mailboxes):
    ada = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    account = connect(service, ada)
    strict_mailboxes.remove_mailbox("ada@contoso.com")  # no licence any more, or IMAP disabled for her
    report = run_keepalive(get_settings(), clock=at(25))
    assert report.access.lost == [account]
    assert kinds(account).count("mailboxAccessLost") == 1
    data = dict(events_of(account))["mailboxAccessLost"]
    assert data["delegated"] is False and data["previous"] == "ok"


def test_a_check_that_cannot_run_records_nothing(service, identity, imap, strict_mailboxes):
    carol = identity.add_user("carol@contoso.com", email="carol@contoso.com")
    account = connect(service, carol)
    checked_at = accounts.get_account(account).accessCheckedAt
    imap.fail_next("drop_on_auth")
    report = recheck_access(get_settings(), clock=at(25))
    assert report.unproven == 1 and report.lost == []
    row = accounts.get_account(account)
    assert row.accessCheck == "ok" and row.accessCheckedAt == checked_at
    assert "mailboxAccessLost" not in kinds(account)


def test_no_recheck_when_the_access_check_is_off(service, identity, imap, strict_mailboxes, set_env):
    dan = identity.add_user("dan@contoso.com", email="dan@contoso.com")
    connect(service, dan)
    set_env(MC_ACCESS_CHECK="off")
    logins = len(imap.logins)
    report = recheck_access(get_settings(), clock=at(48))
    assert report.checked == 0 and report.stopped.startswith("off") and len(imap.logins) == logins


def test_accounts_needing_a_sign_in_are_not_rechecked(service, identity, imap, strict_mailboxes):
    from shared.core.account_state import mark_reauthentication_required

    eve = identity.add_user("eve@contoso.com", email="eve@contoso.com")
    account = connect(service, eve)
    mark_reauthentication_required(accounts.get_account(account).credentialId, "invalid_grant", "revoked")
    logins = len(imap.logins)
    assert recheck_access(get_settings(), clock=at(25)).checked == 0 and len(imap.logins) == logins


def test_a_run_takes_at_most_its_quota(service, identity, imap, strict_mailboxes):
    users = [identity.add_user(f"q{i}@contoso.com", email=f"q{i}@contoso.com") for i in range(3)]
    for user in users:
        connect(service, user)
    first = recheck_access(get_settings(), clock=at(25), max_per_run=2)
    assert first.checked == 2 and first.stopped == "quota"
    second = recheck_access(get_settings(), clock=at(25), max_per_run=2)
    assert second.checked == 1 and second.stopped is None


def test_a_webhook_can_subscribe_to_the_event(service):
    response = service.api("POST", "/v1/webhooks", json={"url": "https://app.example/hook",
                                                         "events": ["mailboxAccessLost"]})
    assert response.status_code in (200, 201), response.text
    assert response.json()["events"] == ["mailboxAccessLost"]
    assert "mailboxAccessLost" in keepalive.__doc__
