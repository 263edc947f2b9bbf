"""Log lines per request as deployed: ``python -m bench.logs [--requests N]`` (also part of ``make bench``).

The service runs as ``python -m tools.localhost`` in its own process. That is the Functions Python worker's
logging set-up: the worker sets the root logger to INFO and adds one handler on it that forwards every record
to the host, then imports ``function_app`` (which configures our loggers, ``shared.web.logs``); the local
host's ``logging.basicConfig(level=INFO)`` is the same root level with a stderr handler instead. The host then
filters by category with ``host.json`` ``logging.logLevel``: a record logged during a function's invocation
is category ``Function.<function name>.User``; the host's own per-invocation lines ("Executing ...",
"Executed ...", two per invocation) are category ``Function.<function name>``. :func:`passes` applies that
filter (longest matching prefix, then ``default``), so the numbers are what reaches Application Insights.

Per operation: log records and lines per request (a record of several lines, such as the Azure SDK's HTTP
logging policy's request dump, counts each line: each is text that is stored and paid for), before and after
the host.json filter, by logger; and the host's own lines that host.json lets through. The local host's
one line per request (logger ``localhost``) stands for the real host's two and is not counted as ours.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.azurite import stop_process

ROOT = Path(__file__).resolve().parent.parent
APP_REDIRECT = "https://app.example/connected"

# The Functions host's log levels (host.json) and Python's.
HOST_LEVELS = {"trace": 0, "debug": 1, "information": 2, "warning": 3, "error": 4, "critical": 5, "none": 6}
PYTHON_TO_HOST = {"DEBUG": 1, "INFO": 2, "WARNING": 3, "ERROR": 4, "CRITICAL": 5}

# A record's first line in tools.localhost's format: "%(asctime)s %(levelname)s %(name)s: %(message)s".
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+?): ")
# Python code that starts the local host with settings from the environment only (no local.settings.json).
LAUNCH = ("import sys, shared.settings as s; s.LOCAL_SETTINGS_FILE = s.PROJECT_ROOT / 'bench' / "
          "'no-local-settings.json'; from tools.localhost import main; main(sys.argv[1:])")


def host_log_levels(path: Path = ROOT / "host.json") -> dict[str, str]:
    config = json.loads(path.read_text(encoding="utf-8-sig"))
    return dict((config.get("logging") or {}).get("logLevel") or {})


def threshold(category: str, levels: dict[str, str]) -> int:
    """The host's minimum level for ``category``: the longest ``logLevel`` key that is the category or a
    dot-separated prefix of it, else ``default`` (else Information, the host's default)."""
    name = category
    while name:
        for key, value in levels.items():
            if key.lower() == name.lower():
                return HOST_LEVELS[value.lower()]
        name = name.rpartition(".")[0]
    return HOST_LEVELS[str(levels.get("default", "Information")).lower()]


def passes(level: str, function: str, levels: dict[str, str], *, user: bool = True) -> bool:
    """Whether a record at Python ``level`` logged during an invocation of ``function`` reaches the host's
    sinks (``user``: our code's records; else the host's own Executing/Executed lines)."""
    category = f"Function.{function}.User" if user else f"Function.{function}"
    return PYTHON_TO_HOST[level] >= threshold(category, levels)


@dataclass
class Record:
    level: str
    logger: str
    lines: list[str]


class ServiceProcess:
    """``function_app`` on ``tools.localhost`` in a child process, its stderr collected as log records."""

    def __init__(self, env: dict[str, str], port: int, *, timers: bool = False) -> None:
        args = [sys.executable, "-c", LAUNCH, "--port", str(port)] + ([] if timers else ["--no-timers"])
        self.url = f"http://localhost:{port}"
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._lock = threading.Lock()
        self.records: list[Record] = []
        self._listening = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            m = _RECORD.match(line)
            with self._lock:
                if m:
                    self.records.append(Record(m.group(1), m.group(2), [line]))
                elif self.records:
                    self.records[-1].lines.append(line)
                else:
                    self.records.append(Record("INFO", "(stderr)", [line]))
            if "Listening on http" in line:
                self._listening.set()

    def wait_listening(self, timeout: float = 60) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local host did not start:\n" + "\n".join(self.text()[-40:]))
        return self

    def mark(self) -> int:
        with self._lock:
            return len(self.records)

    def since(self, mark: int) -> list[Record]:
        with self._lock:
            return list(self.records[mark:])

    def wait_requests(self, mark: int, n: int, timeout: float = 30) -> list[Record]:
        """The records after ``mark`` once the local host has logged ``n`` requests (it logs each after writing
        the response, so a client can be ahead of the log)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.since(mark)
            if sum(1 for r in records if r.logger == "localhost" and " -> " in r.lines[0]) >= n:
                return records
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local host logged fewer than {n} requests in {timeout:.0f}s")
            time.sleep(0.02)

    def text(self) -> list[str]:
        with self._lock:
            return [line for r in self.records for line in r.lines]

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class LogCount:
    name: str
    function: str
    requests: int
    records: float  # per request, ours (not the local host's own line)
    lines: float
    lines_kept: float  # after host.json
    host_lines_kept: float  # the real host's Executing/Executed lines that host.json keeps, per request
    by_logger: dict[str, float] = field(default_factory=dict)  # lines per request


def count(name: str, function: str, records: list[Record], n: int, levels: dict[str, str]) -> LogCount:
    ours = [r for r in records if r.logger != "localhost"]
    by_logger: Counter = Counter()
    for r in ours:
        by_logger[r.logger] += len(r.lines)
    kept = sum(len(r.lines) for r in ours if passes(r.level, function, levels))
    host = 2 if passes("INFO", function, levels, user=False) else 0
    return LogCount(name, function, n, len(ours) / n, sum(len(r.lines) for r in ours) / n, kept / n, host,
                    {k: v / n for k, v in by_logger.most_common()})


def _session():
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def measure(requests_per_operation: int = 20) -> list[LogCount]:
    """Start Azurite, the fake identity platform and the service (deployed logging), run each operation
    ``requests_per_operation`` times after a warm-up, and count what it logged."""
    import shared.settings

    shared.settings.LOCAL_SETTINGS_FILE = ROOT / "bench" / "no-local-settings.json"
    from sandbox.fakes.identity import FakeIdentity
    from tools.azurite import free_port, start_azurite

    azurite = start_azurite()
    identity = FakeIdentity().start()
    service: ServiceProcess | None = None
    saved = dict(os.environ)
    try:
        port = free_port()
        url = f"http://localhost:{port}"
        env = {"MC_PUBLIC_URL": url, "MC_TABLES_CONNECTION_STRING": azurite.connection_string,
               "MC_TABLE_PREFIX": "l" + secrets.token_hex(4),
               "MC_LOCAL_SECRET_KEY": __import__("base64").b64encode(secrets.token_bytes(32)).decode(),
               "MC_SIGNING_KEY": secrets.token_urlsafe(32), "MC_AUTHORITY_HOST": identity.host,
               "MC_CA_BUNDLE": identity.ca_bundle, "MC_ACCESS_CHECK": "off"}
        for name in [n for n in os.environ if n.startswith("MC_")]:
            del os.environ[name]
        os.environ.update(env)
        from shared.core.apps import register_app
        from shared.settings import get_settings
        from shared.storage.tables.apitokens import create_token

        get_settings.cache_clear()
        client_id, client_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
        identity.add_client(client_id, client_secret, [f"{url}/oauth"])
        register_app(name="logs", client_id=client_id, client_secret_value=client_secret,
                     authority="organizations", base_scopes="imap", settings=get_settings())
        token, _ = create_token("logs", ("api", "admin"))
        service = ServiceProcess(dict(os.environ), port).wait_listening()
        return run_operations(service, token, requests_per_operation)
    finally:
        if service is not None:
            service.stop()
        identity.stop()
        azurite.stop()
        os.environ.clear()
        os.environ.update(saved)


def run_operations(service: ServiceProcess, token: str, n: int) -> list[LogCount]:
    http = _session()
    auth = {"Authorization": f"Bearer {token}"}

    def form(i: int = 0) -> str:
        answer = http.post(service.url + "/v1/authentication/form", headers=auth, timeout=30,
                           json={"redirectUrl": APP_REDIRECT, "email": f"shared{i}@contoso.com", "delegated": True})
        assert answer.status_code == 200, answer.text
        return answer.json()["url"]

    def accounts(i: int = 0) -> None:
        answer = http.get(service.url + "/v1/accounts", headers=auth, timeout=30)
        assert answer.status_code == 200, answer.text

    def bad_token(i: int = 0) -> None:
        answer = http.get(service.url + "/v1/accounts", timeout=30,
                          headers={"Authorization": "Bearer mc_" + secrets.token_urlsafe(32)})
        assert answer.status_code in (401, 503), answer.text  # 503: beyond the budget of unknown-token reads

    links = [form(i) for i in range(n + 1)]  # also the warm-up of form creation

    def redirect(i: int = 0) -> None:
        answer = _session().get(links[i + 1], allow_redirects=False, timeout=30)
        assert answer.status_code == 302, answer.text

    redirect(-1)
    accounts()
    bad_token()
    levels = host_log_levels()
    operations: list[tuple[str, str, Callable[[int], Any]]] = [
        ("form creation", "authentication_form", form),
        ("hosted redirect", "accounts_new", redirect),
        ("account list", "accounts_list", accounts),
        ("made-up API token (401, 503 past ~40)", "accounts_list", bad_token),
    ]
    results = []
    for name, function, operation in operations:
        time.sleep(0.2)  # let the warm-up's last records arrive
        before = service.mark()
        for i in range(n):
            operation(i)
        results.append(count(name, function, service.wait_requests(before, n), n, levels))
    return results


def report(results: list[LogCount]) -> str:
    lines = ["| operation | records | lines | lines after host.json | host's own lines after host.json | "
             "top loggers (lines) |", "|---|---:|---:|---:|---:|---|"]
    for r in results:
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(r.by_logger.items())[:4])
        lines.append(f"| {r.name} | {r.records:.1f} | {r.lines:.1f} | {r.lines_kept:.1f} | {r.host_lines_kept} | "
                     f"{top} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per operation")
    args = parser.parse_args(argv)
    print(report(measure(args.requests)))


if __name__ == "__main__":
    main()
