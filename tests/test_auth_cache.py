"""API tokens and OAuth apps from an instance-local cache with a bounded staleness (issue 14 point 1).

``MC_AUTH_CACHE_SECONDS`` (N) bounds how long an instance may keep using what it read: a token revoked, or an app
disabled, on one instance is refused by every other within N seconds, and at once by the instance that made the
change (``shared/storage/tables/apitokens.py``, ``shared/storage/tables/apps.py``).

The bound is proven with two real service processes (``tools.localhost`` each, one Azurite, one table prefix):
revoke on A, poll B with a deadline. The rest uses a fake clock against Azurite, so nothing here sleeps and
hopes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from bench.logs import ServiceProcess
from shared.core.apps import register_app, resolve_app
from shared.errors import InvalidInput
from shared.settings import get_settings
from shared.storage.tables import apitokens
from shared.storage.tables import apps as app_table
from shared.storage.tables.apitokens import PARTITION, TABLE, create_token, find_token, hash_token, revoke_token
from shared.storage.tables.client import table
from tools.azurite import free_port

N = 4.0  # MC_AUTH_CACHE_SECONDS of the two-process tests
SLACK = 1.0  # a poll's own duration and interval on a busy machine
REDIRECT = "https://app.example/connected"


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # this machine exports proxy and CA variables
    return session


def access_lines(service: ServiceProcess, since: int = 0) -> list[dict[str, str]]:
    """The fields of each request line (``shared.web.logs``) the service logged after ``since``."""
    return [dict(re.findall(r"(\w+)=(\S+)", record.lines[0].split(": ", 1)[1]))
            for record in service.since(since) if record.logger == "mailbox_connect.request"]


@pytest.fixture
def clock(monkeypatch) -> Iterator[list[float]]:
    """The caches' clock, moved by hand: ``clock[0] += seconds``."""
    now = [1000.0]
    monkeypatch.setattr(apitokens, "monotonic", lambda: now[0])
    monkeypatch.setattr(app_table, "monotonic", lambda: now[0])
    apitokens.clear_cache()
    app_table.clear_cache()
    yield now
    apitokens.clear_cache()
    app_table.clear_cache()


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every point read of an API token row (by hash)."""
    seen: list[str] = []
    original = apitokens._read

    def counting(digest: str):
        seen.append(digest)
        return original(digest)

    monkeypatch.setattr(apitokens, "_read", counting)
    return seen


@pytest.fixture
def cached(env, set_env, clock):
    set_env(MC_AUTH_CACHE_SECONDS=str(N))
    return clock


# --- two service processes --------------------------------------------------------------------------------


@pytest.fixture
def two_instances(env, set_env) -> Iterator[tuple[ServiceProcess, ServiceProcess, dict]]:
    """Processes A and B on one Azurite and one table prefix, an OAuth app, an admin and an api token."""
    import os

    set_env(MC_AUTH_CACHE_SECONDS=str(N), MC_ACCESS_CHECK="off")
    app = register_app(name="cache", client_id=secrets.token_hex(8), client_secret_value=secrets.token_urlsafe(24),
                       settings=get_settings())
    admin, _ = create_token("admin", ("api", "admin"))
    token, record = create_token("app", ("api",))
    started = []
    try:
        for _ in range(2):
            started.append(ServiceProcess(dict(os.environ), free_port()))
        for service in started:
            service.wait_listening()
        yield started[0], started[1], {"app": app, "admin": admin, "token": token, "record": record}
    finally:
        for service in started:
            service.stop()
    for service in started:  # the processes' logs never show a token, only its id
        assert not any(token in line or admin in line for line in service.text())


def form(service: ServiceProcess, token: str, **body) -> requests.Response:
    return _http().post(service.url + "/v1/authentication/form", headers={"Authorization": f"Bearer {token}"},
                        json={"redirectUrl": REDIRECT, **body}, timeout=30)


def poll_until(check: Callable[[], bool], since: float, limit: float) -> list[tuple[float, bool]]:
    """Call ``check`` every 50 ms until it is true; each attempt as (its start after ``since``, result). Fails
    when no attempt started within ``limit`` seconds of ``since`` came out true."""
    attempts: list[tuple[float, bool]] = []
    while True:
        started = time.monotonic() - since
        attempts.append((started, check()))
        if attempts[-1][1]:
            return attempts
        assert started < limit, f"still not refused {started:.2f}s after the change: {attempts}"
        time.sleep(0.05)


def test_a_token_revoked_on_one_instance_is_refused_by_another_within_the_bound(two_instances):
    a, b, ids = two_instances
    app_id, token = ids["app"].id, ids["token"]
    for service in (a, b):  # before: both accept
        assert form(service, token, type=app_id).status_code == 200
    mark = b.mark()
    primed = time.monotonic()
    assert form(b, token, type=app_id).status_code == 200  # B's token (and app) now come from its cache

    revoke = _http().delete(f"{a.url}/v1/tokens/{ids['record'].id}", timeout=30,
                            headers={"Authorization": f"Bearer {ids['admin']}"})
    assert revoke.status_code == 200, revoke.text
    revoked = time.monotonic()
    assert form(a, token, type=app_id).status_code == 401  # the instance that revoked forgets at once

    attempts = poll_until(lambda: form(b, token, type=app_id).status_code == 401, revoked, N + SLACK)
    assert attempts[-1][0] <= N + SLACK, attempts
    for _ in range(3):  # and stays refused
        assert form(b, token, type=app_id).status_code == 401
    # B served the primed request, and the ones before the refusal, from its cache: no Table call for the
    # token or the app (the line's call counts), and the first poll (well inside N) still saw the token.
    lines = access_lines(b, mark)
    assert lines[0]["status"] == "200" and lines[0]["table"] == "0", lines[0]
    if attempts[0][0] + (revoked - primed) < N / 2:
        assert attempts[0][1] is False, attempts  # still accepted: the cache, not a fresh read, answered
    refused = [line for line in lines if line["status"] == "401"]
    assert refused and "token" not in refused[0] and refused[0]["table"] == "1", refused[0]  # one read, then cached


def test_an_app_disabled_on_one_instance_is_refused_by_another_within_the_bound(two_instances):
    a, b, ids = two_instances
    app_id, token, admin = ids["app"].id, ids["token"], ids["admin"]
    for service in (a, b):
        assert form(service, token, type=app_id).status_code == 200
        assert form(service, token).status_code == 200  # the only enabled app, from the listing
    changed = _http().put(f"{a.url}/v1/oauth2/{app_id}", json={"enabled": False}, timeout=30,
                          headers={"Authorization": f"Bearer {admin}"})
    assert changed.status_code == 200 and changed.json()["enabled"] is False, changed.text
    disabled = time.monotonic()
    refused = form(a, token, type=app_id)
    assert (refused.status_code, refused.json()["code"]) == (400, "app_disabled")  # at once on A
    assert form(a, token).json()["code"] == "no_app"

    def b_refuses() -> bool:
        named, unnamed = form(b, token, type=app_id), form(b, token)
        return (named.status_code, unnamed.status_code) == (400, 400)

    attempts = poll_until(b_refuses, disabled, N + SLACK)
    assert attempts[-1][0] <= N + SLACK, attempts
    assert form(b, token, type=app_id).json()["code"] == "app_disabled"
    assert form(b, token).json()["code"] == "no_app"


# --- the token cache, on a fake clock -----------------------------------------------------------------------


def test_a_found_token_is_used_for_at_most_the_bound_then_read_again(cached, reads):
    token, record = create_token("t", ("api",))
    assert find_token(token).id == record.id and len(reads) == 1
    table(TABLE).delete_entity(PARTITION, hash_token(token))  # revoked by another instance
    cached[0] += N - 0.01
    assert find_token(token).id == record.id and len(reads) == 1  # still within the bound: no read
    cached[0] += 0.01
    assert find_token(token) is None and len(reads) == 2  # N seconds after the first read began: refused
    assert find_token(token) is None and len(reads) == 2  # and known unknown from now on


def test_the_revoking_instance_forgets_at_once(cached, reads):
    token, record = create_token("t", ("api",))
    assert find_token(token) is not None
    assert revoke_token(record.id)
    assert find_token(token) is None and len(reads) == 2


def test_zero_seconds_means_no_cache(env, set_env, clock, reads):
    set_env(MC_AUTH_CACHE_SECONDS="0")
    token, _ = create_token("t", ("api",))
    for expected in (1, 2, 3):
        assert find_token(token) is not None and len(reads) == expected
    table(TABLE).delete_entity(PARTITION, hash_token(token))
    assert find_token(token) is None


def test_a_read_under_way_while_this_instance_revokes_is_not_kept(cached, monkeypatch):
    token, record = create_token("t", ("api",))
    original = apitokens._read

    def read_then_revoke(digest: str):
        found = original(digest)  # the row as it was when the read began
        revoke_token(record.id)  # meanwhile, another request on this instance revokes it
        return found

    monkeypatch.setattr(apitokens, "_read", read_then_revoke)
    assert find_token(token) is not None  # the request that raced the revocation
    monkeypatch.setattr(apitokens, "_read", original)
    assert find_token(token) is None  # nothing stale was kept


def test_made_up_tokens_cost_reads_only_within_a_budget(cached, reads, monkeypatch):
    monkeypatch.setattr(apitokens, "UNKNOWN_READ_BURST", 5.0)
    monkeypatch.setattr(apitokens, "UNKNOWN_READS_PER_SECOND", 0.01)
    known, _ = create_token("known", ("api",))
    assert find_token(known) is not None  # seen valid here: 1 read of the budget
    for _ in range(4):
        assert find_token("mc_" + secrets.token_urlsafe(32)) is None
    assert len(reads) == 5
    with pytest.raises(apitokens.LookupsExhausted) as refused:
        find_token("mc_" + secrets.token_urlsafe(32))
    assert refused.value.retry_after >= 1 and len(reads) == 5  # no read beyond the budget
    cached[0] += N + 1  # the known token's entry expired: its refresh never waits for the budget
    assert find_token(known) is not None and len(reads) == 6
    bogus = "mc_" + secrets.token_urlsafe(32)
    cached[0] += 100  # refilled (0.01/s): one more read, and that answer is kept
    assert find_token(bogus) is None and find_token(bogus) is None and len(reads) == 7
    assert find_token("not-a-token") is None and find_token("mc_" + "x" * 200) is None and len(reads) == 7


def test_a_flood_of_made_up_tokens_is_answered_503_and_working_tokens_keep_working(service, set_env, monkeypatch):
    monkeypatch.setattr(apitokens, "UNKNOWN_READ_BURST", 3.0)
    monkeypatch.setattr(apitokens, "UNKNOWN_READS_PER_SECOND", 0.01)
    assert service.api("GET", "/v1/accounts").status_code == 200
    answers = [service.api("GET", "/v1/accounts", token="mc_" + secrets.token_urlsafe(32)) for _ in range(6)]
    assert [a.status_code for a in answers[:2]] == [401, 401]
    busy = answers[-1]
    assert busy.status_code == 503 and busy.json()["code"] == "unavailable" and int(busy.headers["Retry-After"]) >= 1
    assert service.api("GET", "/v1/accounts").status_code == 200


# --- the app cache, on a fake clock ------------------------------------------------------------------------


def _app(clock: list[float], name: str = "app"):
    app = register_app(name=name, client_id=secrets.token_hex(8), client_secret_value=secrets.token_urlsafe(24),
                       settings=get_settings())
    clock[0] += 0.001  # reads that start in the very tick of this instance's write are not kept
    return app


def _disable_elsewhere(app_id: str) -> None:
    """What another instance's PUT enabled=false writes (this instance's cache is not told)."""
    entity = table(app_table.TABLE).get_entity(app_table.PARTITION, app_id)
    entity["enabled"] = False
    table(app_table.TABLE).update_entity(entity)


def test_an_app_disabled_elsewhere_is_refused_within_the_bound(cached):
    app = _app(cached)
    assert resolve_app(app.id).id == app.id and resolve_app(None).id == app.id
    _disable_elsewhere(app.id)
    cached[0] += N - 0.01
    assert resolve_app(app.id).id == app.id and resolve_app(None).id == app.id  # cached, within the bound
    cached[0] += 0.01
    with pytest.raises(InvalidInput) as named:
        resolve_app(app.id)
    with pytest.raises(InvalidInput) as unnamed:
        resolve_app(None)
    assert (named.value.code, unnamed.value.code) == ("app_disabled", "no_app")


def test_warm_app_reads_cost_nothing_and_a_new_app_is_seen_at_once(cached, monkeypatch):
    first = _app(cached, "first")
    assert resolve_app(None).id == first.id and app_table.get_app(first.id) is not None  # listing cached
    calls: list[str] = []
    original = app_table.table

    def counting(name: str, *args, **kwargs):
        calls.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(app_table, "table", counting)
    for _ in range(5):
        assert resolve_app(None).id == first.id and resolve_app(first.id).id == first.id
    assert calls == []
    # Created by another instance (a row written behind this instance's back): the listing does not know it
    # yet, but asking for it by id reads it at once rather than calling it unknown.
    other = first.model_copy(update={"id": app_table.new_app_id(), "name": "other"})
    table(app_table.TABLE).create_entity(other.to_entity(app_table.PARTITION, other.id))
    assert resolve_app(other.id).id == other.id and len(calls) == 1
    cached[0] += N
    with pytest.raises(InvalidInput) as several:  # the listing refreshed: two apps now
        resolve_app(None)
    assert several.value.code == "app_required"


def test_the_instance_that_changes_an_app_sees_it_at_once(cached):
    app = _app(cached)
    assert resolve_app(app.id).enabled
    stored = app_table.get_app(app.id, fresh=True)
    assert app_table.replace_app(stored.model_copy(update={"enabled": False}))
    with pytest.raises(InvalidInput):
        resolve_app(app.id)
    app_table.delete_app(app.id)
    assert app_table.get_app(app.id) is None
    with pytest.raises(InvalidInput) as gone:
        resolve_app(None)
    assert gone.value.code == "no_app"
