"""The leak check itself (``tests/leakcheck.py``): it runs over the whole suite, so prove here that it would
catch a leak, in a log record or a service response, of each kind of secret, and that it lets through
exactly what is allowed by design."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import leakcheck
from tests.leakcheck import ACCESS_TOKEN, API_TOKEN, REFRESH_TOKEN, Capture, allowed_kinds, needles, scan

pytestmark = pytest.mark.both_secret_modes  # issue 14.3: both MC_SECRET_MODE values pass

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


# --- authorization codes and sign-in states (issue 12 point 11) ---------------------------------------------

def test_codes_and_states_are_secrets_in_every_log_but_client_request_lines():
    from tests.leakcheck import AUTH_CODE, SIGNIN_STATE, allowed_in_log, states_in

    code = "1.A" + "c0DEc0deC0DE" * 6
    state = "QwErTyUiOpAsDfGh"
    captures = [
        Capture("log", "mailbox_connect.signin", f"callback with code={code}",
                allowed_in_log("mailbox_connect.signin")),
        Capture("log", "azure.core.pipeline.policies.http_logging_policy", f"URL: flows(PartitionKey='{state}')",
                allowed_in_log("azure.core.pipeline.policies.http_logging_policy")),
        Capture("log", "urllib3.connectionpool", f'"GET /oauth?code={code}&state={state} HTTP/1.1" 302',
                allowed_in_log("urllib3.connectionpool")),  # a test's browser following the callback
        Capture("response", "GET /accounts/new -> 302", f"302\nLocation: https://login.example/a?state={state}",
                allowed_kinds("GET", "/accounts/new?data=x&sig=y")),
        Capture("response", "GET /oauth -> 302", f"302\nLocation: https://app.example/?state={state}",
                allowed_kinds("GET", "/oauth?code=x&state=y")),
    ]
    found = scan("t", captures, {code: AUTH_CODE, state: SIGNIN_STATE})
    assert sorted((f.secret_kind, f.where) for f in found) == sorted([
        (AUTH_CODE, "log mailbox_connect.signin"),
        (SIGNIN_STATE, "log azure.core.pipeline.policies.http_logging_policy"),
        (SIGNIN_STATE, "response GET /oauth -> 302"),
    ])
    assert states_in([("Location", f"https://login.example/authorize?client_id=c&state={state}"),
                      ("Set-Cookie", "x=1")]) == [state]


INNER_CODES = '''
import logging

import requests
import azure.functions as func

from sandbox.fakes.identity import FakeIdentity
from tools.localhost import serve


def test_a_log_line_with_an_authorization_code():
    fake = FakeIdentity().start()
    try:
        fake.add_client("client-1", "Client-Secret-0123456789", ["http://localhost:1/oauth"])
        fake.sign_in_as(fake.add_user("x@contoso.com"))
        answer = requests.get(f"{fake.url}/organizations/oauth2/v2.0/authorize", allow_redirects=False,
                              verify=fake.ca_bundle, params={
                                  "client_id": "client-1", "redirect_uri": "http://localhost:1/oauth",
                                  "response_type": "code", "scope": "offline_access", "state": "s" * 20,
                                  "code_challenge": "c" * 43, "code_challenge_method": "S256"})
        callback = answer.headers["Location"]
        logging.getLogger("mailbox_connect.signin").info("callback %s", callback)  # the deliberate leak
    finally:
        fake.stop()


def test_a_log_line_with_a_sign_in_state():
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    state = "Zx8-Qw7_Er6.Ty5~Ui4"

    @app.route(route="accounts/new", methods=["GET"])
    def start(req):  # allowed: the redirect to Microsoft carries the state
        location = "https://login.example/authorize?state=" + state
        return func.HttpResponse(status_code=302, headers={"Location": location})

    server = serve(app, "127.0.0.1", 0, route_prefix="").start()
    try:
        assert requests.get(server.url + "/accounts/new", allow_redirects=False).status_code == 302
    finally:
        server.stop()
    logging.getLogger("mailbox_connect.flows").warning("flow %s expired", state)  # the deliberate leak
'''


def test_the_plugin_fails_a_run_that_logs_an_authorization_code_or_a_state(tmp_path):
    """An inner run: a code the fake identity issued and a state the service redirected with, each logged
    once on purpose; the run fails and names both, and not the redirect that carried the state."""
    (tmp_path / "test_inner_codes.py").write_text(textwrap.dedent(INNER_CODES))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.leakcheck", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_inner_codes.py")],
        cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "2 passed" in out and "SECRETS LEAKED" in out, out
    leaks = [line for line in out.splitlines() if "test_inner_codes.py::" in line and " in " in line]
    assert any("test_a_log_line_with_an_authorization_code" in leak
               and "authorization code in log mailbox_connect.signin" in leak for leak in leaks), out
    assert any("test_a_log_line_with_a_sign_in_state" in leak and "sign-in state in log mailbox_connect.flows" in leak
               for leak in leaks), out
    assert not any("response GET /accounts/new" in leak for leak in leaks), out
    assert "Zx8-Qw7_Er6.Ty5~Ui4" not in out
