"""The sandbox (``make run`` without Microsoft): the interactive sign-in page of the fake, the browser
listener on plain http, the demo app, ``tools/run_local`` end to end, and that none of it runs in Azure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import msal
import pytest
import requests

from sandbox import SandboxRefused, running_in_azure
from sandbox.demo import DemoApp
from sandbox.fakes.identity import FakeIdentity
from sandbox.server import CLIENT_ID, SHARED_MAILBOXES, TENANT_ID, USERS, Sandbox
from tests.service import query, session
from tools import run_local

ROOT = Path(__file__).resolve().parent.parent
REDIRECT = "http://localhost:7071/oauth"
IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")


def http() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        sb.identity.add_client(CLIENT_ID, sb.client_secret, [REDIRECT], name="Test app")
        yield sb


def msal_app(sb: Sandbox) -> msal.ConfidentialClientApplication:
    s = http()
    s.verify = sb.identity.ca_bundle
    return msal.ConfidentialClientApplication(CLIENT_ID, client_credential=sb.client_secret,
                                              authority=f"{sb.identity.url}/organizations", http_client=s,
                                              instance_discovery=False, token_cache=msal.TokenCache())


def sign_in_page(sb: Sandbox, **kwargs) -> tuple[dict, requests.Response]:
    flow = msal_app(sb).initiate_auth_code_flow([IMAP], redirect_uri=REDIRECT, **kwargs)
    return flow, http().get(flow["auth_uri"], allow_redirects=False)


def answer(sb: Sandbox, page: requests.Response, choice: str) -> requests.Response:
    """Submit the sign-in page's form as a browser would."""
    request = page.text.split('name="request" value="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    action = urlsplit(page.url)._replace(query="").geturl()
    return http().post(action, data={"request": request, "choice": choice}, allow_redirects=False)


# ----------------------------------------------------------------------------- the interactive fake

def test_browser_endpoints_are_plain_http_and_the_rest_stays_on_https(sandbox):
    config = http().get(f"{sandbox.identity.url}/organizations/v2.0/.well-known/openid-configuration",
                        verify=sandbox.identity.ca_bundle).json()
    assert config["authorization_endpoint"] == f"{sandbox.identity.browser_url}/organizations/oauth2/v2.0/authorize"
    assert config["authorization_endpoint"].startswith("http://localhost:")
    assert config["token_endpoint"].startswith(sandbox.identity.url + "/") and sandbox.identity.url.startswith("https:")
    assert config["end_session_endpoint"].startswith(sandbox.identity.browser_url)
    # The plain-http listener serves nothing but the browser's endpoints.
    for path in ("organizations/v2.0/.well-known/openid-configuration", "organizations/discovery/v2.0/keys"):
        assert http().get(f"{sandbox.identity.browser_url}/{path}").status_code == 404
    assert http().post(f"{sandbox.identity.browser_url}/organizations/oauth2/v2.0/token",
                       data={"grant_type": "refresh_token"}).status_code == 404


def test_sign_in_page_lists_users_mailboxes_and_permissions(sandbox):
    _, page = sign_in_page(sandbox, prompt="select_account")
    assert page.status_code == 200 and page.url.startswith(sandbox.identity.browser_url)
    text = page.text
    assert "Pick an account" in text and "Test app" in text and "Sandbox" in text
    for user in USERS:
        assert f"Sign in as {user.name}" in text and user.upn in text
    assert "support@contoso.example, sales@contoso.example" in text
    assert text.count("Cannot open any shared mailbox") == 2  # ada and carol
    assert "Read and write mail over IMAP" in text and "Cancel (deny consent)" in text
    assert "<script" not in text and "http://" not in text.split("<body>", 1)[1].split('name="request"')[0]
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert sandbox.identity.last_authorize["prompt"] == "select_account"


def test_login_hint_puts_that_user_first(sandbox):
    _, page = sign_in_page(sandbox, login_hint="carol@contoso.example")
    assert page.text.index("Sign in as Carol Jones") < page.text.index("Sign in as Ada Lovelace")
    assert "suggested by the app" in page.text


def test_choosing_a_user_signs_them_in(sandbox):
    flow, page = sign_in_page(sandbox)
    bob = sandbox.users["bob@contoso.example"]
    response = answer(sandbox, page, bob.oid)
    assert response.status_code == 302 and response.headers["Location"].startswith(REDIRECT + "?")
    params = query(response.headers["Location"])
    result = msal_app(sandbox).acquire_token_by_auth_code_flow(flow, params)
    claims = result["id_token_claims"]
    assert (claims["preferred_username"], claims["oid"], claims["tid"]) == ("bob@contoso.example", bob.oid, TENANT_ID)
    assert result["refresh_token"]
    assert len(sandbox.identity.authorize_requests) == 1  # the answer is not a second request


def test_cancel_denies_consent(sandbox):
    flow, page = sign_in_page(sandbox)
    response = answer(sandbox, page, "cancel")
    assert response.status_code == 302
    params = query(response.headers["Location"])
    assert params["error"] == "access_denied" and params["error_subcode"] == "cancel"
    assert params["state"] == flow["state"] and params["error_description"].startswith("AADSTS65004")


def test_a_tampered_answer_is_validated_again(sandbox):
    _, page = sign_in_page(sandbox)
    request = page.text.split('name="request" value="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    evil = {k: v[0] for k, v in parse_qs(request).items()} | {"redirect_uri": "https://evil.example/cb"}
    action = urlsplit(page.url)._replace(query="").geturl()
    response = http().post(action, data={"request": urlencode(evil), "choice": sandbox.users[USERS[0].upn].oid},
                           allow_redirects=False)
    assert response.status_code == 400 and "AADSTS50011" in response.text
    response = answer(sandbox, page, "no-such-user")
    assert response.status_code == 400 and "Location" not in response.headers


def test_auto_sign_in_for_scripts(sandbox):
    sandbox.sign_in_as("carol@contoso.example")
    _, response = sign_in_page(sandbox)
    assert response.status_code == 302 and "code=" in response.headers["Location"]
    sandbox.sign_in_as(None)
    assert sign_in_page(sandbox)[1].status_code == 200
    with pytest.raises(KeyError):
        sandbox.sign_in_as("mallory@contoso.example")


def test_non_interactive_fake_still_signs_in_without_a_page():
    with FakeIdentity() as fake:
        assert fake.browser_url == fake.url
        fake.add_user("x@contoso.com")
        fake.add_client("c", "s", [REDIRECT])
        config = http().get(f"{fake.url}/common/v2.0/.well-known/openid-configuration", verify=fake.ca_bundle).json()
        assert config["authorization_endpoint"] == f"{fake.url}/common/oauth2/v2.0/authorize"


# ----------------------------------------------------------------------------- never in Azure

@pytest.mark.parametrize("marker", ["WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME"])
def test_the_sandbox_refuses_to_start_in_azure(monkeypatch, marker):
    monkeypatch.setenv(marker, "x")
    assert running_in_azure()
    with pytest.raises(SandboxRefused, match="refuses to run in Azure"):
        Sandbox()
    with pytest.raises(SandboxRefused):
        FakeIdentity().start()
    with pytest.raises(SandboxRefused):
        DemoApp(service_url="http://localhost:1", api_token="t")
    with pytest.raises(SystemExit, match="refuses to run in Azure"):
        run_local.main(["--sandbox"])


def test_run_local_refuses_sandbox_mode_in_azure_before_starting_anything():
    env = {**os.environ, "WEBSITE_INSTANCE_ID": "abc"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tools.run_local", "--sandbox"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "refuses to run in Azure" in result.stderr
    assert "Azurite" not in result.stdout and time.monotonic() - started < 30


def test_the_sandbox_is_not_deployed():
    lines = {line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert "sandbox" in lines
    # ... and the deployed code never imports it.
    for path in [ROOT / "function_app.py", *(ROOT / "shared").rglob("*.py")]:
        text = path.read_text()
        assert "import sandbox" not in text and "from sandbox" not in text, path


# ----------------------------------------------------------------------------- choosing sandbox mode

@pytest.mark.parametrize("flag, values, environ, real_apps, expected", [
    (True, {}, {}, True, True),
    (False, {}, {}, None, False),
    (None, {"MC_SANDBOX": "1"}, {}, True, True),
    (None, {"MC_SANDBOX": "1"}, {"MC_SANDBOX": "off"}, None, False),
    (None, {}, {"MC_AUTHORITY_HOST": "login.example"}, None, False),
    (None, {}, {}, True, False),
    (None, {}, {}, False, True),
    (None, {"MC_AUTHORITY_HOST": ""}, {}, None, True),
])
def test_sandbox_choice(flag, values, environ, real_apps, expected):
    assert run_local.sandbox_choice(flag, values, environ, real_apps)[0] is expected


def test_sandbox_choice_rejects_a_bad_setting():
    with pytest.raises(SystemExit, match="MC_SANDBOX"):
        run_local.sandbox_choice(None, {"MC_SANDBOX": "maybe"}, {}, None)


# ----------------------------------------------------------------------------- with the service

@pytest.fixture
def demo_stack(env, set_env):  # env also clears MSAL's discovery cache
    """The service on the local host, pointed at a sandbox, with the sandbox app and the demo app."""
    from shared.settings import get_settings
    from shared.storage.tables.apitokens import create_token
    from tools.azurite import free_port
    from tools.localhost import load_function_app, serve

    with Sandbox() as sb:
        port = free_port()
        set_env(MC_PUBLIC_URL=f"http://localhost:{port}", **sb.service_env())
        server = serve(load_function_app(), "127.0.0.1", port).start()
        app = sb.ensure_app(get_settings())
        token, _ = create_token("sandbox-tests", ("api",))
        demo = DemoApp(service_url=f"http://localhost:{port}", api_token=token, app_id=app.id, sandbox=sb).start()
        try:
            yield sb, demo, app
        finally:
            demo.stop()
            server.stop()


def follow(browser, url: str, *, until: str, limit: int = 8) -> requests.Response:
    """Follow redirects by hand (the test Browser keeps the service's cookies) until ``until``."""
    for _ in range(limit):
        response = browser.get(url, allow_redirects=False, timeout=30)
        if url.startswith(until) or response.status_code not in (302, 303):
            return response
        url = response.headers["Location"]
    raise AssertionError("too many redirects")


def test_demo_app_walks_the_flow_and_fetches_a_token(demo_stack):
    sb, demo, app = demo_stack
    control = http().post(f"{demo.url}/sandbox/sign-in-as", json={"user": "bob@contoso.example"})
    assert control.json() == {"interactive": False, "user": "bob@contoso.example"}
    browser = session()
    start = browser.post(f"{demo.url}/connect", data={"email": SHARED_MAILBOXES[1], "delegated": "true"},
                         allow_redirects=False)
    assert start.status_code == 303 and "/accounts/new?" in start.headers["Location"]
    done = follow(browser, start.headers["Location"], until=demo.redirect_url)
    assert done.status_code == 200 and "Mailbox connected" in done.text
    account = query(done.url)["account"]
    assert query(done.url)["state"] == "new"
    token_page = http().post(f"{demo.url}/token", data={"account": account})
    assert token_page.status_code == 200 and account in token_page.text
    assert "The service answered" in token_page.text

    from shared.storage.tables import accounts
    row = accounts.get_account(account)
    assert (row.email, row.delegated, row.signerUpn, row.appId) == (SHARED_MAILBOXES[1], True, "bob@contoso.example",
                                                                     app.id)


def test_demo_app_shows_an_error_coming_back(demo_stack):
    sb, demo, _ = demo_stack
    http().post(f"{demo.url}/sandbox/sign-in-as", json={"user": "ada@contoso.example"})
    assert http().post(f"{demo.url}/sandbox/fail-next", json={"error": "access_denied"}).status_code == 200
    browser = session()
    start = browser.post(f"{demo.url}/connect", data={"email": ""}, allow_redirects=False)
    done = follow(browser, start.headers["Location"], until=demo.redirect_url)
    assert query(done.url)["error"] == "access_denied" and "not connected" in done.text


def test_the_sandbox_enforces_who_can_open_which_mailbox(demo_stack):
    sb, demo, _ = demo_stack
    assert {"MC_IMAP_HOST", "MC_GRAPH_URL"} <= set(sb.service_env()) and "MC_ACCESS_CHECK" not in sb.service_env()
    results = {}
    for upn, mailbox in [("carol@contoso.example", SHARED_MAILBOXES[0]), ("ada@contoso.example", ""),
                         ("bob@contoso.example", SHARED_MAILBOXES[1])]:
        sb.sign_in_as(upn)
        browser = session()
        start = browser.post(f"{demo.url}/connect", data={"email": mailbox, "delegated": "true" if mailbox else ""},
                             allow_redirects=False)
        results[upn] = query(follow(browser, start.headers["Location"], until=demo.redirect_url).url)
    assert results["carol@contoso.example"]["error"] == "mailbox_access_denied"
    assert results["ada@contoso.example"]["state"] == "new" and results["bob@contoso.example"]["state"] == "new"
    assert [(login["user"], login["ok"]) for login in sb.imap.logins] == [
        (SHARED_MAILBOXES[0], False), ("ada@contoso.example", True), (SHARED_MAILBOXES[1], True)]


def test_without_the_mailbox_fakes_the_access_check_is_off():
    with Sandbox(mailboxes=False) as sb:
        assert sb.service_env()["MC_ACCESS_CHECK"] == "off"
        assert sb.service_env({"MC_ACCESS_CHECK": "strict"}).get("MC_ACCESS_CHECK") is None


def test_control_api_wants_json(demo_stack):
    _, demo, _ = demo_stack
    assert http().post(f"{demo.url}/sandbox/sign-in-as", data={"user": "x"}).status_code == 415
    assert http().post(f"{demo.url}/sandbox/sign-in-as", json={"user": "nobody@x"}).status_code == 400
    assert http().get(f"{demo.url}/sandbox").json()["tenant"]["domain"] == "contoso.example"


def test_ensure_app_reuses_the_sandbox_app_of_an_earlier_run(demo_stack):
    from shared.settings import get_settings
    from shared.storage.tables.apps import list_apps

    sb, _, app = demo_stack
    with Sandbox() as again:
        assert again.ensure_app(get_settings()).id == app.id
        assert again.client_secret == sb.client_secret
    assert [a.id for a in list_apps()] == [app.id]


# ----------------------------------------------------------------------------- make run, as CI would

def test_run_local_in_sandbox_mode_for_ci(tmp_path):
    """``python -m tools.run_local --sandbox --sign-in-as ...``: print, serve, connect with plain HTTP."""
    from tools.azurite import free_port

    info_file = tmp_path / "info.json"
    port, demo_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MC_", "WEBSITE_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.run_local", "--sandbox", "--local-host", "--tables-port", "0",
         "--port", str(port), "--demo-port", str(demo_port), "--sign-in-as", "ada@contoso.example",
         "--info-file", str(info_file)],
        cwd=ROOT, env=env, stdout=(tmp_path / "out").open("w"), stderr=(tmp_path / "err").open("w"),
    )
    try:
        deadline = time.monotonic() + 60
        while not info_file.exists():
            assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
            assert time.monotonic() < deadline, "run_local did not become ready"
            time.sleep(0.1)
        info = json.loads(info_file.read_text())
        assert info["sandbox"] is True and info["serviceUrl"] == f"http://localhost:{port}"
        assert info["demoUrl"] == f"http://localhost:{demo_port}"
        form = http().post(f"{info['serviceUrl']}/v1/authentication/form",
                           headers={"Authorization": f"Bearer {info['token']}"},
                           json={"redirectUrl": info["redirectUrl"], "type": info["appId"]})
        assert form.status_code == 200, form.text
        done = follow(session(), form.json()["url"], until=info["redirectUrl"])
        assert query(done.url)["state"] == "new", done.url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert proc.returncode == 0, err[-2000:]
    assert "SANDBOX mode" in out and info["token"] in out and "curl -s -X POST" in out
