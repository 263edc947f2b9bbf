"""The demo app of ``make run`` (sandbox mode): where a finished sign-in lands, and a sandbox control API.

A development tool, served by the ``make run`` process on plain ``http://localhost`` (loopback only), never
by ``function_app``. It plays the part of *your* application:

* ``GET /`` - buttons that create a sign-in link (the server calls ``POST /v1/authentication/form`` with
  the API token, then redirects the browser to the link), and the ``curl`` that does the same.
* ``GET /done`` - the ``redirectUrl`` of those links: shows ``account`` and ``state`` (or ``error`` and
  ``error_description``) and a button that fetches an access token for the account.
* ``POST /token`` - the server calls ``GET /v1/account/{account}/oauth-token`` with the API token and
  shows the JSON answer (or the error) as it came.
* Sandbox control API (JSON, ``Content-Type: application/json`` required, so a web page cannot call it):
  ``POST /sandbox/sign-in-as`` ``{"user": "bob@contoso.example"}`` (no page: every following sign-in is
  that user; ``{"user": null}`` brings the sign-in page back) and ``POST /sandbox/fail-next``
  ``{"endpoint": "authorize"|"token", "error": "access_denied"|...}`` (Microsoft's next answer is that
  error). ``GET /sandbox`` describes the sandbox (tenant, users, endpoints).

The API token stays in this process: the browser never sees it.
"""

from __future__ import annotations

import json
import logging
import threading
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from . import refuse_in_azure
from .server import SHARED_MAILBOXES, USERS, Sandbox

log = logging.getLogger("sandbox.demo")

PAGE_HEADERS = {
    # No form-action: "/connect" answers with a redirect to the service (and on to the sign-in page),
    # which Chromium checks against form-action too.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class DemoApp:
    """Serve the demo app on ``127.0.0.1:port`` (0: a free port) in a daemon thread."""

    def __init__(self, *, service_url: str, api_token: str, app_id: str | None = None,
                 sandbox: Sandbox | None = None, port: int = 0) -> None:
        refuse_in_azure("the sandbox demo app")
        self.service_url = service_url.rstrip("/")
        self.api_token = api_token
        self.app_id = app_id
        self.sandbox = sandbox
        handler = type("DemoHandler", (_Handler,), {"demo": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://localhost:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def redirect_url(self) -> str:
        return f"{self.url}/done"

    def start(self) -> DemoApp:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="sandbox-demo")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DemoApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- calls to the service (server side, with the API token)
    def _http(self):
        import requests

        session = requests.Session()
        session.trust_env = False  # no proxy for localhost, whatever the shell exports
        session.headers["Authorization"] = f"Bearer {self.api_token}"
        return session

    def form_body(self, email: str | None = None, delegated: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"redirectUrl": self.redirect_url}
        if email:
            body["email"] = email
        if delegated:
            body["delegated"] = True
        if self.app_id:
            body["type"] = self.app_id
        return body

    def create_link(self, email: str | None = None, delegated: bool = False) -> tuple[int, Any]:
        with self._http() as http:
            response = http.post(f"{self.service_url}/v1/authentication/form",
                                 json=self.form_body(email, delegated), timeout=30)
        return response.status_code, _json_or_text(response)

    def fetch_token(self, account: str) -> tuple[int, Any]:
        with self._http() as http:
            response = http.get(f"{self.service_url}/v1/account/{quote(account, safe='')}/oauth-token", timeout=60)
        return response.status_code, _json_or_text(response)

    def curl_for_link(self, email: str | None = None, delegated: bool = False, token: str | None = None) -> str:
        body = json.dumps(self.form_body(email, delegated))
        return (f"curl -s -X POST {self.service_url}/v1/authentication/form \\\n"
                f"  -H \"Authorization: Bearer {token or self.api_token}\" -H \"Content-Type: application/json\" \\\n"
                f"  -d '{body}'")


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


# ------------------------------------------------------------------------------------------- pages

def _layout(title: str, content: str) -> bytes:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>
:root{{color-scheme:light dark}}
body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f1ea;color:#1d1b16}}
header{{background:#2f4f3a;color:#fff;padding:.6rem 1.25rem}} header strong{{font-size:1.05rem}}
main{{max-width:46rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;border-radius:8px;
  box-shadow:0 1px 4px #0002}}
h1{{font-size:1.4rem;margin-top:0}} h2{{font-size:1.1rem;margin-top:1.5rem}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}} dt{{font-weight:600}}
dd{{margin:0;overflow-wrap:anywhere}}
pre{{background:#f3f3f3;padding:.75rem;border-radius:4px;overflow:auto;font-size:.85rem;white-space:pre-wrap;
  word-break:break-all}}
button{{padding:.5rem 1rem;border:0;border-radius:4px;background:#2f6f4a;color:#fff;font:inherit;cursor:pointer;
  margin:.25rem .25rem .25rem 0}}
button:focus-visible,a:focus-visible{{outline:3px solid #f5a623;outline-offset:2px}}
.ok{{color:#1d6b35;font-weight:600}} .err{{color:#a31b0b;font-weight:600}}
table{{border-collapse:collapse}} td,th{{text-align:left;padding:.25rem .75rem .25rem 0;vertical-align:top}}
@media (prefers-color-scheme:dark){{body{{background:#16181b;color:#e7e4dc}} main{{background:#202328}}
  pre{{background:#2a2e35}} .ok{{color:#7ad39a}} .err{{color:#ff9c8a}}}}
</style>
</head>
<body>
<header><strong>Demo app</strong> - plays your application in the Mailbox Connect sandbox</header>
<main>
{content}
</main>
</body>
</html>""".encode()


def _users_table() -> str:
    rows = "".join(
        f"<tr><td>{escape(u.name)}</td><td>{escape(u.upn)}</td>"
        f"<td>{escape(', '.join(u.shared_mailboxes) or 'none')}</td></tr>" for u in USERS)
    return ("<table><thead><tr><th>Test user</th><th>Signs in as</th><th>Shared mailboxes they can open</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def home_page(demo: DemoApp) -> bytes:
    shared_buttons = "".join(
        f'<button type="submit" name="email" value="{escape(m, quote=True)}">Connect shared mailbox '
        f'{escape(m)}</button>' for m in SHARED_MAILBOXES)
    content = f"""<h1>Connect a mailbox</h1>
<p>Each button asks Mailbox Connect for a sign-in link (<code>POST /v1/authentication/form</code>, with the
API token, from this app's server) and sends your browser to it. On the sandbox sign-in page you pick a
test user; you come back here with the new account.</p>
<form method="post" action="/connect">
<button type="submit" name="email" value="">Connect your own mailbox</button>
</form>
<form method="post" action="/connect">
<input type="hidden" name="delegated" value="true">
{shared_buttons}
</form>
<h2>Test users</h2>
{_users_table()}
<h2>The same with curl</h2>
<pre>{escape(demo.curl_for_link(SHARED_MAILBOXES[0], True, token="$TOKEN"))}</pre>"""
    return _layout("Demo app - connect a mailbox", content)


def done_page(query: dict[str, str]) -> bytes:
    account, state = query.get("account"), query.get("state")
    error = query.get("error")
    if error:
        rows = f"<dt>error</dt><dd>{escape(error)}</dd>"
        rows += f"<dt>error_description</dt><dd>{escape(query.get('error_description', ''))}</dd>"
        if account:
            rows += f"<dt>account</dt><dd>{escape(account)}</dd>"
        content = (f'<h1 class="err">The mailbox was not connected</h1>\n'
                   f"<p>Mailbox Connect sent your browser back to this app with an error:</p><dl>{rows}</dl>"
                   f'<p><a href="/">Start again</a></p>')
        return _layout("Demo app - not connected", content)
    if not account:
        return _layout("Demo app", '<h1>Nothing to show</h1><p>This page is where sign-ins land. '
                                   '<a href="/">Connect a mailbox</a>.</p>')
    content = f"""<h1 class="ok">Mailbox connected</h1>
<p>Mailbox Connect sent your browser back to this app's <code>redirectUrl</code> with:</p>
<dl><dt>account</dt><dd id="account">{escape(account)}</dd><dt>state</dt><dd id="state">{escape(state or '')}</dd></dl>
<p>The app keeps the account id. Whenever it needs to open the mailbox, it asks for an access token:</p>
<form method="post" action="/token">
<input type="hidden" name="account" value="{escape(account, quote=True)}">
<button type="submit">Fetch an access token (GET /v1/account/&hellip;/oauth-token)</button>
</form>
<p><a href="/">Connect another mailbox</a></p>"""
    return _layout("Demo app - connected", content)


def token_page(account: str, status: int, body: Any) -> bytes:
    shown = json.dumps(body, indent=2) if not isinstance(body, str) else body
    verdict = '<p class="ok">The service answered 200.</p>' if status == 200 else (
        f'<p class="err">The service answered {status}.</p>')
    content = f"""<h1>Access token for account {escape(account)}</h1>
<p><code>GET /v1/account/{escape(account)}/oauth-token</code> called by this app's server with the API token:</p>
{verdict}
<pre id="response">{escape(shown)}</pre>
<form method="post" action="/token"><input type="hidden" name="account" value="{escape(account, quote=True)}">
<button type="submit">Fetch again</button></form>
<p><a href="/">Connect another mailbox</a></p>"""
    return _layout("Demo app - access token", content)


# ------------------------------------------------------------------------------------------- HTTP

class _Handler(BaseHTTPRequestHandler):
    demo: DemoApp
    server_version = "SandboxDemo/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s - " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**PAGE_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self._body().decode(errors="replace"), keep_blank_values=True).items()}

    def do_GET(self) -> None:  # noqa: N802
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if split.path == "/":
            return self._send(200, home_page(self.demo))
        if split.path == "/done":
            return self._send(200, done_page(query))
        if split.path == "/sandbox" and self.demo.sandbox is not None:
            return self._json(200, self.demo.sandbox.describe())
        self._send(404, _layout("Not found", '<h1>Not found</h1><p><a href="/">Demo app</a></p>'))

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith("/sandbox/"):
            return self._control(path)
        form = self._form()
        if path == "/connect":
            status, body = self.demo.create_link(form.get("email") or None, form.get("delegated") == "true")
            if status == 200 and isinstance(body, dict) and body.get("url"):
                return self._send(303, b"", headers={"Location": body["url"]})
            return self._send(502, _layout("Demo app - no link", (
                f'<h1 class="err">No sign-in link</h1><p>The form API answered {status}:</p>'
                f'<pre>{escape(json.dumps(body, indent=2) if not isinstance(body, str) else body)}</pre>')))
        if path == "/token":
            account = form.get("account", "")
            if not account:
                return self._send(400, _layout("Demo app", "<h1>No account</h1>"))
            status, body = self.demo.fetch_token(account)
            return self._send(200, token_page(account, status, body))
        self._send(404, _layout("Not found", "<h1>Not found</h1>"))

    def _control(self, path: str) -> None:
        sandbox = self.demo.sandbox
        if sandbox is None:
            return self._json(404, {"error": "not_found", "message": "no sandbox in this process"})
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json(415, {"error": "unsupported_media_type", "message": "send application/json"})
        try:
            data = json.loads(self._body() or b"{}")
            if not isinstance(data, dict):
                raise ValueError("a JSON object is expected")
            if path == "/sandbox/sign-in-as":
                sandbox.sign_in_as(data.get("user"))
                return self._json(200, {"interactive": sandbox.identity.interactive, "user": data.get("user")})
            if path == "/sandbox/fail-next":
                sandbox.identity.fail_next(str(data.get("endpoint", "authorize")), str(data["error"]),
                                           data.get("description"), count=int(data.get("count", 1)))
                return self._json(200, {"ok": True})
        except (KeyError, ValueError, TypeError) as exc:
            return self._json(400, {"error": "bad_request", "message": str(exc).strip("'\"")})
        self._json(404, {"error": "not_found"})
