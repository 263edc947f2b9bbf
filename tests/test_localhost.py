"""tools/localhost: routes, request/response mapping (cookies!), errors, concurrency, routePrefix, main()."""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import pytest
import requests

from tests import sample_app
from tools.localhost import azure_set_cookie_lines, query_params, read_route_prefix, serve

ROOT = Path(__file__).resolve().parent.parent


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # this machine exports proxy and CA variables
    return s


@pytest.fixture(scope="module")
def server():
    srv = serve(sample_app.app, port=0, route_prefix="").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with session() as s:
        yield s


def test_route_params_are_decoded_and_url_is_complete(server, client):
    r = client.get(f"{server.url}/v1/account/a%20b%40c%C3%A9?x=1")
    assert r.status_code == 200
    assert r.json() == {"route": "param", "account": "a b@cé", "url": f"{server.url}/v1/account/a%20b%40c%C3%A9?x=1"}
    # %2F is not decoded (as in Kestrel), so it cannot split a segment; a trailing slash is ignored.
    assert client.get(f"{server.url}/v1/account/x%2Fy/").json()["account"] == "x%2Fy"


def test_literal_segments_win_and_match_case_insensitively(server, client):
    assert client.get(f"{server.url}/v1/account/special").json() == {"route": "literal"}
    assert client.get(f"{server.url}/V1/Account/SPECIAL").json() == {"route": "literal"}
    assert client.get(f"{server.url}/v1/account/specials").json()["route"] == "param"


def test_constraints_optional_catch_all_and_complex_segments(server, client):
    assert client.get(f"{server.url}/items/42").json() == {"route": "int", "params": {"id": "42"}}
    assert client.get(f"{server.url}/items/abc").json() == {"route": "alpha", "params": {"name": "abc"}}
    assert client.get(f"{server.url}/items/abcdefg").status_code == 404  # maxlength(5)
    assert client.get(f"{server.url}/items/2147483648").status_code == 404  # not an int32, not alpha
    assert client.get(f"{server.url}/files").json() == {"params": {}}
    assert client.get(f"{server.url}/files/a.txt").json() == {"params": {"name": "a.txt"}}
    assert client.get(f"{server.url}/static/css/site.css").json() == {"params": {"path": "css/site.css"}}
    assert client.get(f"{server.url}/download/report.v2.pdf").json() == {"params": {"name": "report.v2", "ext": "pdf"}}


def test_post_echoes_json_body_query_and_headers(server, client):
    r = client.post(
        f"{server.url}/v1/account/acc-1/oauth-token?a=1&a=2&B=3&b=4&empty=&plus=x+y",
        json={"scopes": ["imap"]},
    )
    assert r.status_code == 200
    assert r.json() == {
        "account": "acc-1",
        "body": {"scopes": ["imap"]},
        # As the Functions host: repeated names joined with ",", names case-insensitive (first spelling
        # kept), empty values left out.
        "query": {"a": "1,2", "B": "3,4", "plus": "x y"},
        "content_type": "application/json",
        "x_multi": None,
    }


def test_repeated_request_headers_are_joined(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/account/a/oauth-token")
        for name, value in [("Content-Type", "application/json"), ("X-Multi", "one"), ("X-Multi", "two"),
                            ("Content-Length", "2")]:
            conn.putheader(name, value)
        conn.endheaders(b"{}")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["x_multi"] == "one,two"
    finally:
        conn.close()


def test_unknown_route_is_404_and_wrong_method_is_405(server, client):
    r = client.get(f"{server.url}/no/such/route")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    r = client.get(f"{server.url}/v1/account/acc-1/oauth-token")
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert r.json()["code"] == "method_not_allowed"


def test_every_set_cookie_is_sent_as_its_own_header_like_the_real_host(server, client):
    r = client.get(f"{server.url}/cookies")
    assert r.status_code == 200
    assert r.text == "two cookies"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    # Rewritten exactly as worker (SimpleCookie -> RpcHttpCookie) + host (ASP.NET Cookies.Append) do.
    assert r.raw.headers.getlist("Set-Cookie") == [
        "mc_flow=abc123; domain=; path=/; samesite=lax; httponly",
        "mc_pref=a%2Fb%3D; max-age=60; domain=; path=; secure",
    ]


def test_a_cookie_simplecookie_cannot_parse_is_dropped_with_a_warning(server, client, caplog):
    with caplog.at_level(logging.WARNING, logger="localhost"):
        r = client.get(f"{server.url}/cookies/partitioned")
    assert r.status_code == 200
    assert "Set-Cookie" not in r.headers
    assert any("mc_gone" in rec.getMessage() and "dropped" in rec.getMessage() for rec in caplog.records)


def test_cookie_rewrite_details():
    assert azure_set_cookie_lines('s="q v"; Path=/p; Domain=example.com; SameSite=None; Secure') == [
        "s=q%20v; domain=example.com; path=/p; secure; samesite=none"
    ]
    assert azure_set_cookie_lines("old=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/") == [
        "old=; expires=Thu, 01 Jan 1970 00:00:00 GMT; max-age=0; domain=; path=/"
    ]


def test_query_params_mapping():
    assert query_params("") == {}
    assert query_params("a=1&A=2&a=&b=&c=%2C") == {"a": "1,2,", "c": ","}


def test_redirect_is_not_followed_and_keeps_location(server, client):
    r = client.get(f"{server.url}/redirect", allow_redirects=False)
    assert r.status_code == 302
    assert r.headers["Location"] == "https://app.example/done?account=a1&state=new"


def test_exception_is_a_generic_500_and_the_server_keeps_serving(server, client, caplog):
    with caplog.at_level(logging.ERROR, logger="localhost"):
        r = client.get(f"{server.url}/boom")
    assert r.status_code == 500
    assert "secret detail" not in r.text
    assert r.json()["code"] == "internal_error"
    failed = [rec for rec in caplog.records if rec.exc_info]
    assert failed and failed[0].exc_info[0] is RuntimeError  # the traceback is logged
    assert client.get(f"{server.url}/v1/account/still-here").status_code == 200


def test_async_context_and_str_handlers(server, client):
    assert client.get(f"{server.url}/async/7").json() == {"n": "7", "async": True}
    body = client.get(f"{server.url}/context").json()
    assert body["function_name"] == "with_context"
    uuid.UUID(body["invocation_id"])
    r = client.get(f"{server.url}/text")
    assert (r.status_code, r.text, r.headers["Content-Type"]) == (200, "plain", "text/plain; charset=utf-8")


def test_chunked_request_body_is_refused(server, client):
    r = client.post(f"{server.url}/v1/account/a/oauth-token", data=iter([b"{}"]))
    assert r.status_code == 411


def test_twenty_parallel_requests(server):
    # A barrier of 20: no request can finish until all 20 are being handled at the same time.
    sample_app.BARRIER = threading.Barrier(20, timeout=15)
    try:
        def call(_: int) -> int:
            with session() as s:
                return s.get(f"{server.url}/parallel", timeout=30).status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(call, range(20)))
    finally:
        sample_app.BARRIER = None
    assert statuses == [200] * 20


def test_non_http_functions_other_than_timers_are_listed_not_served(server):
    assert server.not_served == [("jobs", "queueTrigger")]
    assert "jobs: queueTrigger (not served by the local host)" in server.describe()
    # start() without timers=True: timers are listed, and run only when a test says so
    assert "cleanup: timerTrigger [0 */5 * * * *] (not scheduled: run_timer())" in server.describe()


def test_run_timer_runs_a_timer_function_now_in_the_callers_thread(server):
    sample_app.TIMER_RUNS.clear()
    assert server.run_timer("cleanup") is None
    assert server.run_timer("ticker", past_due=True) == "ticked"  # async: on the host's event loop
    assert [(n, p) for n, p, _ in sample_app.TIMER_RUNS] == [("cleanup", False), ("ticker", True)]
    assert sample_app.TIMER_RUNS[0][2] == threading.current_thread().name
    with pytest.raises(KeyError):
        server.run_timer("missing")


def test_timers_run_on_their_schedule_when_asked():
    sample_app.TIMER_RUNS.clear()
    sample_app.TICKED.clear()
    with serve(sample_app.app, port=0, route_prefix="").start(timers=True) as srv:
        assert "ticker: timerTrigger [* * * * * *] (run on its schedule)" in srv.describe()
        assert sample_app.TICKED.wait(10), "run_on_startup / the every-second schedule never ran"
        sample_app.TICKED.clear()
        assert sample_app.TICKED.wait(10), "the every-second schedule did not run again"
    runs = list(sample_app.TIMER_RUNS)
    assert {n for n, _, _ in runs} == {"ticker"}  # cleanup's next occurrence is minutes away
    assert len(runs) >= 2
    assert all(thread.startswith("localhost-asyncio") for _, _, thread in runs)


@pytest.mark.parametrize("expression, after, expected", [
    ("*/10 * * * * *", "2025-01-01T00:00:05", "2025-01-01T00:00:10"),
    ("0 */5 * * * *", "2025-01-01T00:04:59", "2025-01-01T00:05:00"),
    ("0 17 * * * *", "2025-01-01T00:17:00", "2025-01-01T01:17:00"),
    ("30 */10 * * * *", "2025-01-01T23:59:59", "2025-01-02T00:00:30"),
    ("0 30 9 * * 1-5", "2025-01-03T10:00:00", "2025-01-06T09:30:00"),  # Friday -> Monday
    ("0 0 0 29 Feb *", "2025-03-01T00:00:00", "2028-02-29T00:00:00"),
    ("0 0 12 * * sun", "2025-01-01T00:00:00", "2025-01-05T12:00:00"),
    ("0 0,30 8-9 * * *", "2025-01-01T08:30:00", "2025-01-01T09:00:00"),
])
def test_ncrontab_schedules(expression, after, expected):
    from datetime import datetime

    from tools.localhost import Schedule

    start = datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert Schedule(expression).next_after(start) == datetime.fromisoformat(expected).replace(tzinfo=UTC)


@pytest.mark.parametrize("expression", ["* * * * *", "60 * * * * *", "0 0 0 31 2 *", "*/0 * * * * *", "x * * * * *"])
def test_bad_schedules_are_refused(expression):
    from tools.localhost import Schedule

    with pytest.raises(ValueError):
        Schedule(expression).next_after(__import__("datetime").datetime(2025, 1, 1))


def test_route_prefix_from_host_json(tmp_path):
    assert read_route_prefix(tmp_path) == "api"  # no host.json: the Functions host's default
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    assert read_route_prefix(tmp_path) == "api"
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))
    assert read_route_prefix(tmp_path) == ""
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"http": {"routePrefix": "/custom/"}}}))
    assert read_route_prefix(tmp_path) == "custom"

    # The same app served again (get_functions() twice) under the prefix host.json names.
    with serve(sample_app.app, port=0, project_root=tmp_path) as srv, session() as s:
        assert s.get(f"{srv.url}/custom/v1/account/x").json()["account"] == "x"
        assert s.get(f"{srv.url}/v1/account/x").status_code == 404
    with serve(sample_app.app, port=0, route_prefix="api") as srv, session() as s:
        assert s.get(f"{srv.url}/api/v1/account/x").status_code == 200
        assert s.get(f"{srv.url}/v1/account/x").status_code == 404


def test_main_serves_function_app_from_the_current_directory(tmp_path):
    (tmp_path / "function_app.py").write_text("from tests.sample_app import app  # noqa: F401\n")
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.localhost", "--port", "0"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        seen, url = [], None
        while url is None:
            line = lines.get(timeout=30)  # the host logs "Listening on <url>" once its socket listens
            assert line is not None, "local host exited:\n" + "".join(seen)
            seen.append(line)
            if m := re.search(r"Listening on (http://\S+)", line):
                url = m.group(1)
        assert any("cleanup: timerTrigger [0 */5 * * * *] (run on its schedule)" in line for line in seen)
        with session() as s:
            assert s.get(f"{url}/v1/account/from-main").json()["account"] == "from-main"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
