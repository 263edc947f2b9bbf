"""The credential keep-alive (``shared.handoff.keepalive``): old credentials are refreshed and their new refresh
token stored, fresh ones are left alone, revoked ones are reported once, and a run stays within its
budget. Old means ``tokenWrittenAt`` backdated by rewriting the credential row: no waiting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.handoff.keepalive import run_keepalive
from shared.handoff.tokens import reset_token_cache
from shared.settings import get_settings
from shared.signin.flow import credential_id
from shared.storage.secrets.base import SecretStoreUnavailable
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, principals
from shared.storage.tables.accounts import AUTH_ERROR, CONNECTED
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.invariants import expire_access_tokens, stored_refresh_token
from tests.service import connect

pytestmark = pytest.mark.both_secret_modes  # issue 14.3: both MC_SECRET_MODE values pass


def cred(service, user) -> str:
    return credential_id(service.app.id, user.tid, user.oid)


def backdate(credential: str, days: float) -> None:
    row = principals.get_credential(credential)
    principals.upsert_credential(row.model_copy(update={"tokenWrittenAt": utcnow() - timedelta(days=days)}))


def refreshes(identity) -> int:
    return sum(1 for r in identity.token_requests if r["grant_type"] == "refresh_token")


def error_events() -> list[dict]:
    return [r for r in table("accounts").list_entities() if r.get("event") == "authenticationError"]


def test_old_credentials_are_refreshed_and_fresh_ones_left_alone(service, identity):
    old_user, fresh_user = identity.add_user("old@contoso.com"), identity.add_user("fresh@contoso.com")
    connect(service, old_user)
    fresh_account = connect(service, fresh_user)
    old, fresh = cred(service, old_user), cred(service, fresh_user)
    backdate(old, 31)
    backdate(fresh, 29)  # inside MC_KEEPALIVE_DAYS (30)
    before = {c: (stored_refresh_token(principals.get_credential(c)), principals.get_credential(c))
              for c in (old, fresh)}
    calls = refreshes(identity)

    report = run_keepalive(get_settings())
    assert report.refreshed == [old] and report.revoked == [] and report.failed == [] and report.stopped is None
    assert refreshes(identity) == calls + 1, "one refresh, for the old credential only"
    rotated = principals.get_credential(old)
    assert stored_refresh_token(rotated) != before[old][0], "the new refresh token is stored"
    assert utcnow() - rotated.tokenWrittenAt < timedelta(minutes=1)
    untouched = principals.get_credential(fresh)
    assert stored_refresh_token(untouched) == before[fresh][0] and untouched.etag == before[fresh][1].etag
    # The new token works for the hand-off, and a second run has nothing to do.
    expire_access_tokens()
    account_id = accounts.get_account(fresh_account).account
    assert service.api("GET", f"/v1/account/{account_id}/oauth-token").status_code == 200
    assert run_keepalive(get_settings()).refreshed == []


def test_revoked_credentials_are_reported_once(service, identity):
    pat = identity.add_user("pat@contoso.com")
    own = connect(service, pat)
    shared = connect(service, pat, email="desk@contoso.com", delegated=True)
    credential = cred(service, pat)
    backdate(credential, 45)
    identity.revoke(pat)

    first = run_keepalive(get_settings())
    assert first.revoked == [credential] and first.refreshed == []
    for account in (own, shared):
        row = accounts.get_account(account)
        assert row.state == AUTH_ERROR and row.errorCode == "invalid_grant"
    assert sorted(e["PartitionKey"] for e in error_events()) == sorted([own, shared])
    assert principals.get_credential(credential).brokenCode == "invalid_grant"

    calls = refreshes(identity)
    reset_token_cache()  # a new process: no in-memory memory of the failure
    second = run_keepalive(get_settings())
    assert second.revoked == [] and second.skipped == 1
    assert refreshes(identity) == calls, "a known-revoked credential is not tried again"
    assert len(error_events()) == 2, "the authenticationError webhook is produced once"

    # A new sign-in rewrites the credential: the mark is gone, the accounts are connected again.
    connect(service, pat, account=own)
    assert not principals.get_credential(credential).broken
    assert {accounts.get_account(a).state for a in (own, shared)} == {CONNECTED}


def test_a_run_takes_at_most_its_quota_and_the_next_run_the_rest(service, identity):
    users = [identity.add_user(f"q{i}@contoso.com") for i in range(3)]
    for user in users:
        connect(service, user)
        backdate(cred(service, user), 60)
    first = run_keepalive(get_settings(), max_per_run=2)
    assert len(first.refreshed) == 2 and first.stopped == "quota"
    second = run_keepalive(get_settings(), max_per_run=2)
    assert len(second.refreshed) == 1 and second.stopped is None
    assert set(first.refreshed + second.refreshed) == {cred(service, u) for u in users}


@pytest.mark.secret_mode_only  # keyvault mode's secret store (envelope mode stores the token with the row)
def test_a_throttled_secret_store_stops_the_run_and_the_next_run_retries(service, identity, monkeypatch):
    users = [identity.add_user(f"t{i}@contoso.com") for i in range(2)]
    for user in users:
        connect(service, user)
        backdate(cred(service, user), 60)
    store = get_secret_store()
    writes: list[str] = []

    def throttled(name, value, **kwargs):
        writes.append(name)
        raise SecretStoreUnavailable("429 Too Many Requests", retry_after=10)

    monkeypatch.setattr(store, "set", throttled)
    report = run_keepalive(get_settings())
    assert report.stopped == "secret store unavailable" and report.refreshed == [] and len(writes) == 1
    assert {accounts.get_account(a).state for a in accounts_of(users, service)} == {CONNECTED}
    monkeypatch.undo()
    assert len(run_keepalive(get_settings()).refreshed) == 2, "nothing was marked: all retried"


def accounts_of(users, service) -> list[str]:
    return [a for u in users for a in principals.account_ids(cred(service, u))]


def test_the_keepalive_days_setting(service, identity, set_env):
    user = identity.add_user("days@contoso.com")
    connect(service, user)
    backdate(cred(service, user), 10)
    assert run_keepalive(get_settings()).refreshed == []
    set_env(MC_KEEPALIVE_DAYS="7")
    assert run_keepalive(get_settings()).refreshed == [cred(service, user)]
