"""Fault injection for ``tests/test_faults.py``: a fault-injecting HTTP proxy in front of Azurite, faults of the
Key Vault and Microsoft fakes at the connection level, short client timeouts, and an Azurite that keeps its
data on disk so it can be stopped and started again.

``FaultProxy`` sits between the service's Table SDK client and Azurite (``MC_TABLES_CONNECTION_STRING`` points
at it). It parses each HTTP request, matches it against the armed ``Rule`` (method + regex on the path, e.g.
``PUT`` on ``principals(PartitionKey='..',RowKey='credential')``) and, from the rule's ``skip``-th match on,
``times`` times (``None``: until ``clear()``), applies a fault:

``503`` / ``500`` / ``429``
    answered by the proxy with Table Storage's JSON error (``ServerBusy``; 429 with ``Retry-After``); the
    request never reaches Azurite.
``reset``
    the connection is closed with a TCP RST before anything is forwarded.
``timeout``
    the request **is forwarded** (Azurite applies the write) and the answer is withheld until the client gives
    up (its read timeout): the write landed, the caller cannot know.
``down``
    from this request on, *every* request is reset (Azurite gone mid-run), until ``clear()``.

The SDK's real retry policy runs against these answers (``retry_total=3``; GET/PUT/DELETE are retried on
network errors, POST/PATCH only on 500/503/504, any method when ``Retry-After`` is sent), so a blip
(``times=1``) may be absorbed and a persistent fault surfaces. ``hits`` records every fault applied, so a test
can prove its rule matched.

Nothing here logs a request body (it may carry a sealed secret).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import select
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tools.azurite import ROOT, Azurite, _wait_listening, connection_string

STATUS_FAULTS = {"500": 500, "503": 503, "429": 429}
FAULTS = ("500", "503", "429", "reset", "timeout", "down")
RETRY_AFTER = "0.05"  # seconds, for 429s (small: the SDK honours it between its retries)
_HOLD_MAX = 30.0  # a withheld answer is dropped at the latest after this long (the client gave up long before)


@dataclass
class Rule:
    """Fault ``fault`` for requests whose method is ``method`` and whose unquoted path matches ``path``."""

    method: str
    path: str  # regex, searched in the unquoted path (without the query)
    fault: str
    skip: int = 0  # matching requests let through before the first fault
    times: int | None = None  # faults to apply; None: until cleared
    body: str | None = None  # regex the body must contain too (tells the $batch of one table from another's)
    matched: int = 0
    applied: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")
        self._regex = re.compile(self.path)
        self._body = re.compile(self.body.encode()) if self.body else None

    def take(self, method: str, path: str, body: bytes = b"") -> bool:
        if method.upper() != self.method.upper() or not self._regex.search(path):
            return False
        if self._body is not None and not self._body.search(body):
            return False
        self.matched += 1
        if self.matched <= self.skip or (self.times is not None and self.applied >= self.times):
            return False
        self.applied += 1
        return True


@dataclass
class Hit:
    method: str
    path: str
    fault: str


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream_port`` (see the module docstring)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.down = False
        self.hits: list[Hit] = []
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome) of every request, for debugging
        self._release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True, name="fault-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- test controls --------------------------------------------------------------------------------

    def arm(self, method: str, path: str, fault: str, *, skip: int = 0, times: int | None = None,
            body: str | None = None) -> Rule:
        rule = Rule(method, path, fault, skip=skip, times=times, body=body)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Forget every rule, end an outage and release withheld answers."""
        with self.lock:
            self.rules.clear()
            self.down = False
            self._release.set()
            self._release = threading.Event()

    # -- request handling (proxy threads) --------------------------------------------------------------

    def decide(self, method: str, path: str, body: bytes) -> tuple[str | None, threading.Event]:
        with self.lock:
            fault = "down" if self.down else None
            if fault is None:
                for rule in self.rules:
                    if rule.take(method, path, body):
                        fault = rule.fault
                        self.hits.append(Hit(method, path, fault))
                        if fault == "down":
                            self.down = True
                        break
            return fault, self._release

    def record(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.log.append((method, path, outcome))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    proxy: FaultProxy


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
               "trailer", "upgrade"}


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        proxy = self.server.proxy
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                path = unquote(urlsplit(target).path)
                fault, release = proxy.decide(method, path, body)
                if fault in ("reset", "down"):
                    proxy.record(method, path, fault)
                    _reset(sock)
                    return
                if fault in STATUS_FAULTS:
                    proxy.record(method, path, fault)
                    sock.sendall(_error_response(STATUS_FAULTS[fault]))
                    continue
                status, reason, answer_headers, answer = self._forward(method, target, headers, body)
                if fault == "timeout":
                    proxy.record(method, path, f"timeout (upstream answered {status})")
                    _hold(sock, release)
                    _reset(sock)
                    return
                proxy.record(method, path, str(status))
                sock.sendall(_serialize(status, reason, answer_headers, answer))
        except (OSError, ValueError, http.client.HTTPException):
            return
        finally:
            with contextlib.suppress(OSError):
                reader.close()

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        # A fresh upstream connection per request: nothing to go stale when Azurite closes idle connections.
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.proxy.upstream_port, timeout=30)
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in ("connection", "keep-alive", "proxy-connection"):
                    upstream.putheader(name, value)
            upstream.putheader("Connection", "close")
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            answer = response.read()
            return response.status, response.reason, list(response.getheaders()), answer
        finally:
            upstream.close()


def _read_request(reader: Any) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    line = reader.readline(65537)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lowered = {k.lower(): v for k, v in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        raise ValueError("chunked request bodies are not supported by the fault proxy")
    length = int(lowered.get("content-length") or 0)
    body = reader.read(length) if length else b""
    return method, target, headers, body


def _serialize(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
    lines += [f"Content-Length: {len(body)}", "Connection: keep-alive"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _error_response(status: int) -> bytes:
    code = {503: "ServerBusy", 500: "InternalError", 429: "TooManyRequests"}[status]
    reason = {503: "Service Unavailable", 500: "Internal Server Error", 429: "Too Many Requests"}[status]
    body = json.dumps({"odata.error": {"code": code, "message": {
        "lang": "en-US", "value": f"Injected fault: {code}."}}}).encode()
    headers = [("Content-Type", "application/json;odata=minimalmetadata;streaming=true;charset=utf-8"),
               ("x-ms-error-code", code)]
    if status == 429:
        headers.append(("Retry-After", RETRY_AFTER))
    return _serialize(status, reason, headers, body)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _hold(sock: socket.socket, release: threading.Event) -> None:
    """Withhold the answer until the client closes its end (its read timeout), a ``clear()`` or ``_HOLD_MAX``."""
    deadline = time.monotonic() + _HOLD_MAX
    while not release.is_set() and time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.02)
        if readable:
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return  # the client gave up and closed the connection
            except OSError:
                return
            return  # the client sent something else on a connection it should have abandoned: drop it


# --- paths of the service's Table requests -----------------------------------------------------------------

def entity(table: str, partition: str = "[^']*", row: str = "[^']*") -> str:
    """Regex of one entity's path in table ``table`` (without the test's prefix)."""
    return rf"/[a-z0-9]*{table}\(PartitionKey='{partition}',RowKey='{row}'\)$"


def collection(table: str) -> str:
    """Regex of a table's collection path (inserts: ``POST /<prefix><table>``)."""
    return rf"/[a-z0-9]*{table}$"


BATCH = r"/\$batch$"


# --- short client timeouts (the code's defaults are for production) --------------------------------------

@dataclass
class Timeouts:
    """What ``fast_clients`` set; ``read`` bounds how long a ``timeout`` fault costs per attempt."""

    read: float = 0.5
    connect: float = 1.0
    backoff: float = 0.02  # the Table SDK's retry_backoff_factor (exponential; the code uses the SDK default 0.8)
    microsoft: float = 0.5
    access_check: float = 0.5
    key_vault_read: float = 0.25  # the store tries 4 times: a vault that never answers costs 4 of these
    key_vault_wait: float = 0.05  # cap of each sleep of the Key Vault store's own retry loop


def fast_clients(monkeypatch: pytest.MonkeyPatch, timeouts: Timeouts = Timeouts()) -> Timeouts:
    """Shorten the clients' timeouts and back-offs; keep their retry counts (the behaviour under test).

    None of these has a setting (``MC_*``): the Table client's ``connection_timeout=5, read_timeout=15`` and
    the SDK's default back-off (``shared/storage/tables/client.py``), MSAL's ``timeout=15``
    (``shared/microsoft/identity.py``; MSAL ignores it, see ``test_calls_to_microsoft_carry_a_timeout``: the cap
    here is the only timeout),
    the Key Vault store's ``read_timeout``/``max_wait`` (``shared/storage/secrets/keyvault.py``, not passed by the
    factory) and ``access_check.TIMEOUT_SECONDS``. So they are patched here.
    """
    import azure.data.tables as tables_sdk

    from shared.microsoft import access_check, identity
    from shared.storage.secrets.keyvault import KeyVaultSecretStore

    original = tables_sdk.TableServiceClient

    class FastTableServiceClient(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(read_timeout=timeouts.read, connection_timeout=timeouts.connect,
                          retry_backoff_factor=timeouts.backoff)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tables_sdk, "TableServiceClient", FastTableServiceClient)

    defaults = dict(KeyVaultSecretStore.__init__.__kwdefaults__)
    defaults.update(read_timeout=timeouts.key_vault_read, connection_timeout=timeouts.connect,
                    sleep=lambda seconds: time.sleep(min(seconds, timeouts.key_vault_wait)))
    monkeypatch.setattr(KeyVaultSecretStore.__init__, "__kwdefaults__", defaults)

    plain_session = identity.http_session

    def capped_session(settings: Any) -> Any:
        return _CappedSession(plain_session(settings), timeouts.microsoft)

    monkeypatch.setattr(identity, "http_session", capped_session)
    monkeypatch.setattr(access_check, "TIMEOUT_SECONDS", timeouts.access_check)
    return timeouts


class _CappedSession:
    """The process's ``requests`` session for MSAL, with every timeout capped (MSAL passes ``timeout=15``)."""

    def __init__(self, session: Any, cap: float) -> None:
        self._session, self._cap = session, cap

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = min(float(kwargs.get("timeout") or self._cap), self._cap)
        return getattr(self._session, name)(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get", *args, **kwargs)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("post", *args, **kwargs)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("request", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


# --- connection-level faults of the HTTPS fakes (Key Vault, Microsoft) ---------------------------------------

class _Dropped(Exception):
    """Raised inside a fake's request handler: the server thread ends and the connection closes unanswered."""


@contextlib.contextmanager
def _quiet_handler_errors(server: Any) -> Iterator[None]:
    """socketserver prints a traceback for an exception in a handler; ours are intended."""
    original = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], _Dropped):
            original(request, client_address)

    server.handle_error = handle_error
    try:
        yield
    finally:
        server.handle_error = original


class ConnectionFault:
    """Wrap one request-handling method of a fake (``obj.name``) with ``reset`` or ``timeout`` faults.

    ``reset``: the request is not handled, the connection closes without an answer. ``timeout``: the request
    *is* handled (a secret written, an authorization code redeemed), then the answer is withheld until
    ``clear()`` or ``_HOLD_MAX``, so the client's read timeout fires. ``when(*args)`` picks the requests.
    """

    def __init__(self, obj: Any, name: str, server: Any, when: Callable[..., bool] = lambda *a: True) -> None:
        self.obj, self.name, self.server, self.when = obj, name, server, when
        self.fault: str | None = None
        self.times: int | None = None
        self.applied = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._original = getattr(obj, name)
        self._quiet = _quiet_handler_errors(server)
        self._quiet.__enter__()
        setattr(obj, name, self._wrapped)

    def arm(self, fault: str, times: int | None = None) -> None:
        if fault not in ("reset", "timeout"):
            raise ValueError(fault)
        with self._lock:
            self.fault, self.times, self.applied = fault, times, 0

    def clear(self) -> None:
        with self._lock:
            self.fault = None
            self._release.set()
            self._release = threading.Event()

    def close(self) -> None:
        self.clear()
        setattr(self.obj, self.name, self._original)
        self._quiet.__exit__(None, None, None)

    def _take(self, args: tuple) -> tuple[str | None, threading.Event]:
        with self._lock:
            if self.fault is None or not self.when(*args) or (self.times is not None and self.applied >= self.times):
                return None, self._release
            self.applied += 1
            return self.fault, self._release

    def _wrapped(self, *args: Any, **kwargs: Any) -> Any:
        fault, release = self._take(args)
        if fault == "reset":
            raise _Dropped("injected: connection dropped")
        result = self._original(*args, **kwargs)
        if fault == "timeout":
            release.wait(_HOLD_MAX)
            raise _Dropped("injected: answer withheld")
        return result


# --- an Azurite that keeps its data on disk (so it can be stopped and started again) ----------------------

@dataclass
class DiskAzurite:
    """``azurite-table --location <dir>`` on a fixed port; ``stop()`` and ``start()`` keep the data."""

    location: Path
    port: int
    server: Azurite | None = field(default=None)

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def start(self) -> DiskAzurite:
        binary = ROOT / "node_modules" / ".bin" / "azurite-table"
        proc = subprocess.Popen(
            [str(binary), "--location", str(self.location), "--disableTelemetry", "--skipApiVersionCheck",
             "--silent", "--tableHost", "127.0.0.1", "--tablePort", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        try:
            _wait_listening(self.port, proc)
        except Exception:
            proc.kill()
            proc.wait()
            raise
        self.server = Azurite(self.port, proc)
        return self

    def stop(self) -> None:
        """Stop as Ctrl-C does. (Azurite saves its database on SIGINT; on SIGTERM, which ``Azurite.stop`` sends,
        it exits without saving, and writes of the last few seconds (its autosave interval) are lost.)"""
        if self.server is not None:
            proc = self.server.proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.server = None

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

