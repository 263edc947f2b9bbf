"""The leak check itself (``tests/leakcheck.py``): it runs over the whole suite, so prove here that it would
catch a leak, in a log record or a service response, of each kind of secret, and that it lets through
exactly what is allowed by design."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests import leakcheck
from tests.leakcheck import ACCESS_TOKEN, API_TOKEN, REFRESH_TOKEN, Capture, allowed_kinds, needles, scan

ROOT = Path(__file__).resolve().parent.parent


def test_allowed_kinds_are_exactly_the_two_documented_exceptions():
    assert allowed_kinds("GET", "/v1/account/abc/oauth-token") == {ACCESS_TOKEN}
    assert allowed_kinds("GET", "/V1/Account/abc/OAUTH-TOKEN?x=1") == {ACCESS_TOKEN}  # routes ignore case
    assert allowed_kinds("POST", "/v1/tokens") == {API_TOKEN}
    for method, target in [("GET", "/v1/tokens"), ("POST", "/v1/account/abc/oauth-token"), ("GET", "/oauth"),
                           ("POST", "/v1/authentication/form"), ("GET", "/v1/account/abc")]:
        assert allowed_kinds(method, target) == frozenset(), (method, target)


def test_scan_finds_whole_and_truncated_secrets_and_respects_exceptions():
    refresh = "1.A" + "r" * 10 + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "z" * 10
    access = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0." + "S1gnatureS1gnatureS1gnatureS1gnatureS1gnatureS1gnature"
    captures = [
        Capture("log", "ok", "nothing to see"),
        Capture("log", "whole", f"refresh failed for {refresh}"),
        Capture("log", "truncated", f"token={refresh[:40]}..."),
        Capture("response", "GET /v1/account/a/oauth-token -> 200", access, frozenset({ACCESS_TOKEN})),
        Capture("response", "GET /v1/account/a -> 200", access),
        Capture("response", "GET /v1/account/a/oauth-token -> 200", refresh, frozenset({ACCESS_TOKEN})),
    ]
    found = scan("t", captures, {refresh: REFRESH_TOKEN, access: ACCESS_TOKEN})
    assert sorted((f.secret_kind, f.where) for f in found) == sorted([
        (REFRESH_TOKEN, "log whole"), (REFRESH_TOKEN, "log truncated"),
        (ACCESS_TOKEN, "response GET /v1/account/a -> 200"),
        (REFRESH_TOKEN, "response GET /v1/account/a/oauth-token -> 200"),
    ])
    assert all(refresh not in f.excerpt and access not in f.excerpt for f in found)  # the report masks them


def test_short_or_repetitive_values_are_not_secrets():
    assert not leakcheck.is_secret_like("s2")
    assert not leakcheck.is_secret_like("0" * 40)
    assert leakcheck.is_secret_like("mc_" + "Ab1_-xYz9Q" * 4)
    assert needles("mc_" + "A" * 30 + "B" * 30)[1:] == ["A" * 24, "B" * 24]


INNER = '''
import logging
import os

import azure.functions as func

from sandbox.fakes.identity import FakeIdentity
from tools.localhost import serve


def test_a_log_line_with_a_refresh_token():
    fake = FakeIdentity()
    user = fake.add_user("x@contoso.com")
    token = fake.issue_refresh_token(user, "client", ["offline_access"])
    logging.getLogger("mailbox_connect.example").debug("refreshing with %s", token)


def test_a_log_line_with_the_signing_key(monkeypatch):
    monkeypatch.setenv("MC_SIGNING_KEY", "Signing-Key-0123456789-abcdefghij")
    logging.getLogger("some.library").info("key=%s", os.environ["MC_SIGNING_KEY"])


def test_responses(monkeypatch):
    from shared.storage.tables import apitokens

    monkeypatch.setattr("secrets.token_urlsafe", lambda n=32: "Xy7-q" * 9)
    # create_token is recorded; only the table write is skipped here (no Azurite in this inner run).
    monkeypatch.setattr(apitokens, "table", lambda name: type("T", (), {"create_entity": lambda self, e: None})())
    api_token, _ = apitokens.create_token("inner")
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="v1/tokens", methods=["POST"])
    def mint(req):  # allowed: the token is shown once
        return func.HttpResponse(api_token, status_code=201)

    @app.route(route="v1/echo", methods=["GET"])
    def echo(req):  # a leak
        return func.HttpResponse(headers={"Location": "https://app.example/?t=" + api_token}, status_code=302)

    import requests
    server = serve(app, "127.0.0.1", 0, route_prefix="").start()
    try:
        assert requests.post(server.url + "/v1/tokens").status_code == 201
        assert requests.get(server.url + "/v1/echo", allow_redirects=False).status_code == 302
    finally:
        server.stop()


def test_clean():
    logging.getLogger("x").debug("nothing secret here")
'''


def test_the_plugin_fails_a_run_that_leaks(tmp_path):
    """An inner pytest run with only the plugin: three leaking tests, one clean; the run must fail and name
    exactly the leaks (and not the API token in the answer of POST /v1/tokens)."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.leakcheck", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_inner.py")],
        cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "4 passed" in out and "SECRETS LEAKED" in out, out
    leaks = [line for line in out.splitlines() if line.startswith(str(tmp_path.name)) or "test_inner.py::" in line]
    leaks = [line for line in leaks if " in " in line]
    assert any("test_a_log_line_with_a_refresh_token" in leak and "refresh token in log mailbox_connect.example" in leak
               for leak in leaks), out
    assert any("test_a_log_line_with_the_signing_key" in leak and "signing key" in leak and "log some.library" in leak
               for leak in leaks), out
    assert any("test_responses" in leak and "API token in response GET /v1/echo" in leak for leak in leaks), out
    assert not any("POST /v1/tokens" in leak for leak in leaks), out
    assert not any("test_clean" in leak for leak in leaks), out
    assert "Xy7-q" * 9 not in out  # the report masks the secret
