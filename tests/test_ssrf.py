"""Webhook targets cannot be turned against the service's own network (issue 12 point 7, SSRF).

Two checks, one rule (``shared.checks.address_problem``): a target written as an internal address, in any
spelling, is refused when it is registered (400); and when the dispatcher connects, every address the host
name resolves to is checked and the socket goes to a checked address (``shared.webhooks.transport``), so a
name that resolves (or re-resolves: DNS rebinding) to an internal address is refused too, recorded as a failed
attempt with a clear ``lastError``. The resolver is the transport's hook: ``hooks.example`` resolves here to
whatever the test says, without DNS or /etc/hosts. A name resolving to an allowed address is still delivered
with the name's ``Host`` header, TLS SNI and certificate check (an HTTPS receiver with a certificate of the
test CA for that name, listening on 127.0.0.1: loopback is allowed in local development, refused in Azure).
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sandbox.fakes import tls
from sandbox.fakes.webhooks import Clock, Receiver
from shared.settings import get_settings
from shared.storage.tables import deliveries
from shared.webhooks.dispatcher import Dispatcher
from shared.webhooks.targets import forget_secrets
from shared.webhooks.transport import AddressPolicy, guarded_session
from tests.service import connect


@pytest.fixture(autouse=True)
def _fresh_secrets():
    forget_secrets()
    yield
    forget_secrets()


class TLSReceiver:
    """An HTTPS webhook receiver on 127.0.0.1 with a certificate for ``names`` (test CA); records the SNI
    name of every handshake and the Host header and body of every request."""

    def __init__(self, *names: str) -> None:
        self.sni: list[str | None] = []
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"host": self.headers.get("Host"), "body": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.test_ca().ca.issue_cert(*names).configure_cert(context)
        context.sni_callback = lambda sock, name, ctx: receiver.sni.append(name)  # type: ignore[assignment]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Resolver:
    """The transport's resolver hook: answers from a table the test changes, and counts the questions."""

    def __init__(self, **answers: list[str]) -> None:
        self.answers = {name.replace("_", "."): addresses for name, addresses in answers.items()}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        import socket

        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


def session_for(resolver: Resolver, *, loopback: bool = True):
    session = guarded_session(AddressPolicy(loopback=loopback, resolver=resolver))
    session.verify = tls.test_ca().ca_bundle  # the receivers' certificates come from the test CA
    return session


def register(service, url: str) -> dict:
    response = service.api("POST", "/v1/webhooks", json={"url": url})
    assert response.status_code == 201, response.text
    return response.json()


def rows_of(target: str) -> list[deliveries.Delivery]:
    return list(deliveries.of_target(target))


# --- registration ------------------------------------------------------------------------------------------

INTERNAL_TARGETS = [
    "https://10.0.0.1/hook", "https://172.16.5.4/hook", "https://192.168.0.10:8443/hook", "https://100.64.0.1/",
    "https://[fc00::1]/", "https://[fd12:3456::1]/", "https://169.254.169.254/metadata/instance",
    "https://168.63.129.16/machine", "https://[fd00:ec2::254]/latest", "https://2852039166/",
    "https://0xa9.0xfe.0xa9.0xfe/", "https://0251.0376.0251.0376/", "https://169.254.43518/",
    "https://[::ffff:169.254.169.254]/", "https://[::ffff:a9fe:a9fe]/", "https://[::ffff:10.0.0.1]/", "https://0/",
    "https://0.0.0.0/", "https://[::]/", "https://167772161/", "https://012.0.0.1/", "https://1.2.3.256/",
]


def test_an_internal_target_is_refused_when_it_is_registered(service):
    for url in INTERNAL_TARGETS:
        response = service.api("POST", "/v1/webhooks", json={"url": url})
        assert response.status_code == 400, (url, response.status_code, response.text)
        assert response.json()["field"] == "url", (url, response.text)
    listed = service.api("GET", "/v1/webhooks").json()["webhooks"]
    assert listed == [], listed


def test_in_azure_a_loopback_target_is_refused_when_registered_and_configured(service, set_env, caplog):
    set_env(WEBSITE_INSTANCE_ID="instance-1")  # App Service sets it: no longer local development
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "https://[::1]/hook",
                "https://0x7f.1/hook", "https://localhost/hook"):
        response = service.api("POST", "/v1/webhooks", json={"url": url})
        assert response.status_code == 400 and "loopback" in response.json()["message"], (url, response.text)
    from shared.webhooks.targets import settings_targets

    settings = get_settings().model_copy(update={"webhook_urls": "http://127.0.0.1:9/hook,https://hooks.example/"})
    assert [t.url for t in settings_targets(settings)] == ["https://hooks.example/"]
    assert "MC_WEBHOOK_URLS: a URL is ignored" in caplog.text


# --- connection time ---------------------------------------------------------------------------------------

@pytest.fixture
def tls_receiver():
    receiver = TLSReceiver("hooks.example")
    yield receiver
    receiver.stop()


def test_a_name_resolving_to_an_allowed_address_is_delivered_with_its_host_sni_and_certificate(
        service, identity, tls_receiver):
    hook = register(service, f"https://hooks.example:{tls_receiver.port}/in")
    account = connect(service, identity.add_user("ada@contoso.com"))
    resolver = Resolver(hooks_example=["127.0.0.1"])  # not resolvable by DNS at all: only the hook knows it
    report = Dispatcher(get_settings(), clock=Clock(), session=session_for(resolver)).run()
    assert report.delivered == 3 and report.failed == 0, report
    assert [r["body"]["event"] for r in tls_receiver.requests] == \
        ["accountAdded", "authenticationSuccess", "accountInitialized"]
    assert {r["host"] for r in tls_receiver.requests} == {f"hooks.example:{tls_receiver.port}"}
    assert tls_receiver.sni and set(tls_receiver.sni) == {"hooks.example"}
    assert tls_receiver.requests[0]["body"]["account"] == account
    assert rows_of(hook["id"]) == []


def test_the_certificate_is_checked_for_the_name_not_for_the_address(service, identity, tls_receiver):
    hook = register(service, f"https://other.example:{tls_receiver.port}/in")  # its certificate: hooks.example
    connect(service, identity.add_user("ada@contoso.com"))
    report = Dispatcher(get_settings(), clock=Clock(),
                        session=session_for(Resolver(other_example=["127.0.0.1"]))).run()
    assert report.delivered == 0 and report.failed == 1, report
    assert tls_receiver.requests == []
    [row] = [r for r in rows_of(hook["id"]) if r.attempts]
    assert row.attempts == 1 and row.lastStatus is None and "SSLError" in (row.lastError or ""), row


@pytest.mark.parametrize("addresses", [["10.0.0.5"], ["169.254.169.254"], ["168.63.129.16"], ["fd00:ec2::254"],
                                       ["::ffff:169.254.169.254"], ["100.64.0.7"], ["0.0.0.0"],
                                       ["127.0.0.1", "10.0.0.5"]])
def test_a_name_resolving_to_an_internal_address_is_refused_at_connection_time(
        service, identity, tls_receiver, addresses):
    # Registered while it resolved somewhere harmless (registration does not resolve); now it points inside.
    hook = register(service, f"https://hooks.example:{tls_receiver.port}/in")
    connect(service, identity.add_user("ada@contoso.com"))
    resolver = Resolver(hooks_example=addresses)
    report = Dispatcher(get_settings(), clock=Clock(), session=session_for(resolver)).run()  # never raises
    assert report.delivered == 0 and report.failed == 1, report  # one probe per failing target per run
    assert tls_receiver.requests == [] and tls_receiver.sni == []  # nothing reached even 127.0.0.1
    assert resolver.asked == ["hooks.example"]
    rows = sorted(rows_of(hook["id"]), key=lambda r: r.attempts, reverse=True)
    assert rows[0].attempts == 1 and rows[0].lastStatus is None, rows[0]
    assert (rows[0].lastError or "").startswith("refused: hooks.example resolves to"), rows[0].lastError
    assert "public addresses only" in (rows[0].lastError or "")


def test_rebinding_after_a_delivery_is_refused_on_the_next_connection(service, identity, tls_receiver):
    hook = register(service, f"https://hooks.example:{tls_receiver.port}/in")
    resolver = Resolver(hooks_example=["127.0.0.1"])
    clock = Clock()
    connect(service, identity.add_user("ada@contoso.com"))
    assert Dispatcher(get_settings(), clock=clock, session=session_for(resolver)).run().delivered == 3
    resolver.answers["hooks.example"] = ["169.254.169.254"]  # the owner of the name re-points it
    connect(service, identity.add_user("bob@contoso.com"))
    report = Dispatcher(get_settings(), clock=clock, session=session_for(resolver)).run()  # a new connection
    assert report.delivered == 0 and report.failed == 1, report
    assert len(tls_receiver.requests) == 3
    assert any("link-local" in (r.lastError or "") for r in rows_of(hook["id"]))


def test_in_azure_the_dispatcher_refuses_loopback_receivers(service, identity, monkeypatch):
    receiver = Receiver().start()
    try:
        hook = register(service, receiver.url)  # http://127.0.0.1:<port>/hook, fine in local development
        connect(service, identity.add_user("ada@contoso.com"))
        # In Azure the secret would come from Key Vault; here only the address policy is under test.
        monkeypatch.setattr("shared.webhooks.dispatcher.secret_of", lambda target, settings: "whsec_test_secret")
        in_azure = get_settings().model_copy(update={"in_azure": True})
        report = Dispatcher(in_azure, clock=Clock()).run()  # the process's shared session for Azure
        assert report.delivered == 0 and report.failed == 1, report
        assert receiver.received == []
        [error] = {r.lastError for r in rows_of(hook["id"]) if r.attempts}
        assert error == "refused: the target is a loopback address; webhooks are sent to public addresses only"
        # The same rows, locally: delivered.
        clock = Clock()
        clock.advance(hours=2)
        assert Dispatcher(get_settings(), clock=clock).run().delivered == 3
        assert len(receiver.received) == 3
    finally:
        receiver.stop()


def test_the_default_resolver_is_the_systems_and_every_answer_is_checked(monkeypatch):
    """No hook: the production session asks ``socket.getaddrinfo`` (patched here) and refuses its answer."""
    import socket

    from shared.webhooks.transport import ForbiddenAddress

    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        return real("169.254.169.254" if host == "hooks.example" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    session = guarded_session(AddressPolicy(loopback=True))
    with pytest.raises(ForbiddenAddress, match="hooks.example resolves to a link-local address"):
        session.post("https://hooks.example/in", data=b"{}", timeout=5)
    receiver = Receiver().start()
    try:  # a name the system resolves to loopback: delivered in local development
        answer = session.post(f"http://localhost:{receiver.port}/hook", data=b"{}", timeout=5)
        assert answer.status_code == 200 and receiver.received[0].headers["host"] == f"localhost:{receiver.port}"
        with pytest.raises(ForbiddenAddress, match="localhost resolves to a loopback address"):
            guarded_session(AddressPolicy(loopback=False)).post(f"http://localhost:{receiver.port}/hook", timeout=5)
    finally:
        receiver.stop()
