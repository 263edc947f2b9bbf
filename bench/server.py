"""The service under benchmark: ``function_app`` on the local host, in its own process, counting its outbound calls.

    python -m bench.server --port P --control-port C     (settings from the environment, MC_*)

Every HTTP request the service makes goes through ``requests`` (the Azure SDK's default transport for Table
Storage and Key Vault, and MSAL's session), so one wrapper around ``HTTPAdapter.send`` counts them all, by
``host:port``. The control port (loopback, plain JSON) answers ``GET /counts`` ({"host:port": n}), and
``POST /reset`` (zero the counts), ``POST /forget-tokens`` (empty the access-token cache: a cold hand-off).
Timer functions are not run: the benchmark counts what each HTTP operation costs.

Key Vault is the fake of ``sandbox.fakes.keyvault``: the process's Azure credential is replaced by its fake
credential, as the tests do. Nothing here is imported by the service itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

_lock = threading.Lock()
_counts: Counter = Counter()


def _count_requests() -> None:
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send

    def send(self, request, *args, **kwargs):
        with _lock:
            _counts[urlsplit(request.url).netloc] += 1
        return original(self, request, *args, **kwargs)

    HTTPAdapter.send = send


class _Control(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        with _lock:
            self._answer(dict(_counts))

    def do_POST(self) -> None:
        if self.path == "/reset":
            with _lock:
                _counts.clear()
        elif self.path == "/forget-tokens":  # this instance's memory only: as another instance would be
            from shared.handoff.tokens import reset_token_cache

            reset_token_cache()
        elif self.path == "/expire-tokens":  # everywhere: the shared cache on the credential rows too (uncounted)
            from shared.handoff.tokens import reset_token_cache

            with _lock:
                before = dict(_counts)
            reset_token_cache()
            _empty_shared_cache()
            with _lock:
                _counts.clear()
                _counts.update(before)
        self._answer({"ok": True})


def _empty_shared_cache() -> None:
    from azure.data.tables import UpdateMode

    from shared.storage.tables.client import table

    client = table("principals")
    for row in client.query_entities("RowKey eq 'credential'", select=["PartitionKey"]):
        client.update_entity({"PartitionKey": row["PartitionKey"], "RowKey": "credential", "accessTokens": "{}"},
                             mode=UpdateMode.MERGE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args(argv)

    import shared.settings

    shared.settings.LOCAL_SETTINGS_FILE = ROOT / "bench" / "no-local-settings.json"  # environment only
    import shared.storage.azure_credential
    from sandbox.fakes.keyvault import FakeCredential

    shared.storage.azure_credential.get_azure_credential = lambda settings: FakeCredential()
    _count_requests()
    control = ThreadingHTTPServer(("127.0.0.1", args.control_port), _Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()

    from tools.localhost import load_function_app, serve

    logging.basicConfig(level=logging.WARNING)  # the benchmark measures the service, not its log output
    server = serve(load_function_app(), "127.0.0.1", args.port, project_root=ROOT)
    logging.getLogger().setLevel(logging.WARNING)
    # start(), not serve_forever(): HTTP only. Timer functions (clean-up, keep-alive, ...) would add their
    # own calls to whatever operation is being counted.
    server.start()
    try:
        threading.Event().wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
