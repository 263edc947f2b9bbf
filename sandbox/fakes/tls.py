"""A throw-away test CA (trustme) and a threaded HTTPS server for the protocol fakes.

Clients are pointed at ``ca_bundle`` explicitly (MSAL's session, the Azure SDK's ``connection_verify``,
or ``MC_CA_BUNDLE``); nothing here touches the machine's trust store.
"""

from __future__ import annotations

import ssl
import tempfile
import threading
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme


@lru_cache(maxsize=1)
def test_ca() -> TestCA:
    return TestCA()


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        self._dir = Path(tempfile.mkdtemp(prefix="mc-test-ca-"))
        self.ca_bundle = str(self._dir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_bundle)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx


class HTTPSServer:
    """Serve ``handler`` over HTTPS on 127.0.0.1 in a daemon thread; ``url`` is ``https://localhost:PORT``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], ca: TestCA | None = None) -> None:
        self.ca = ca or test_ca()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = self.ca.server_context().wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HTTPSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
