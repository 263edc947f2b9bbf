"""Cost benchmark: latency, throughput and outbound calls per operation, and the cold-start import cost.

    make bench                 # or: .venv/bin/python -m bench.run [--quick] [--json out.json]
    make bench BENCH_ARGS=--load   # or: .venv/bin/python -m bench.run --load [...]: bench.load, concurrent HTTP clients

Starts Azurite (in memory), the fake Microsoft identity platform, the Key Vault fake and the IMAP fake (the
sign-in's mailbox access check) in this process, and the service (``bench.server``: ``function_app`` on the
local host) in its own process with ``MC_KEY_VAULT_URL`` pointing at the Key Vault fake, so its calls can be
counted. One client, one request at a time (a closed loop), so requests per second is what one worker does
for one caller; a second run of the cheap operations with 4 clients shows what one worker does under load.

Per operation: median and p99 latency, requests per second, and the mean number of Table Storage, Key Vault
and Microsoft (HTTP) calls and IMAP logins it causes, counted in the service process by ``host:port``
(``bench.server``). Operations:

* form creation: ``POST /v1/authentication/form`` (API token check + link signing);
* hosted redirect: ``GET /accounts/new`` of a fresh link (used-link read, MSAL flow, sealed flow cookie);
* callback: ``GET /oauth`` back from Microsoft (code redemption, access check, secret, index, account...);
  every callback connects another shared mailbox of the same signer;
* warm token: ``GET /v1/account/{id}/oauth-token`` with the access token cached in the instance;
* token, another instance: the same after this instance's memory was emptied (the access token another instance
  left on the credential row: issue 14 point 4);
* cold token: the same with no live access token anywhere (a refresh with Microsoft);
* account list: ``GET /v1/accounts`` (the first page).

API tokens and OAuth apps come from the instance's cache (``MC_AUTH_CACHE_SECONDS``, default 5 s), warmed
before the measured requests; a call count such as 0.01 is the cache's refresh spread over the requests.

Log lines per request as deployed (``bench.logs``: the worker's logging set-up and host.json's filter) are
measured last, in their own service process.

Cold start: the time to import ``function_app`` (what the Functions worker does when an instance starts)
against importing ``azure.functions`` alone, each in a fresh interpreter, repeated, medians; plus the
biggest packages ``function_app`` adds (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
APP_REDIRECT = "https://app.example/connected"
COLUMNS = ("table", "keyvault", "microsoft", "imap")


# --- the services ------------------------------------------------------------------------------------------

@dataclass
class Stack:
    azurite: Any
    identity: Any
    keyvault: Any
    imap: Any
    server: subprocess.Popen
    url: str
    control: str
    token: str
    user: Any
    hosts: dict[str, str] = field(default_factory=dict)  # host:port -> column

    def stop(self) -> None:
        self.server.terminate()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
        for fake in (self.imap, self.keyvault, self.identity):
            fake.stop()
        self.azurite.stop()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import requests

    session = _session()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench.server exited with {proc.returncode}")
        try:
            session.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def _imap_without_nagle() -> None:
    """The IMAP fake answers a command in several small writes; with Nagle's algorithm each later write waits
    for the client's delayed ACK (~40 ms, three times per login). Real Exchange does not add that: set
    TCP_NODELAY on the fake's connections so the callback's numbers are the service's."""
    import socket

    import sandbox.fakes.imap as fake_imap

    handle = fake_imap._Handler.handle

    def handle_without_nagle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle(self)

    fake_imap._Handler.handle = handle_without_nagle


def start_stack(auth_cache_seconds: float | None = None, secret_mode: str = "keyvault") -> Stack:
    import shared.settings

    shared.settings.LOCAL_SETTINGS_FILE = ROOT / "bench" / "no-local-settings.json"  # environment only
    from sandbox.fakes.graph import Mailboxes
    from sandbox.fakes.identity import FakeIdentity
    from sandbox.fakes.imap import FakeImap
    from sandbox.fakes.keyvault import FakeCredential, FakeKeyVault
    from tools.azurite import free_port, start_azurite

    _imap_without_nagle()
    azurite = start_azurite()
    identity = FakeIdentity().start()
    keyvault = FakeKeyVault().start()
    keyvault.create_key("mc-data-key")  # envelope mode's KEK (MC_DATA_KEY_NAME's default), as Bicep creates it
    imap = FakeImap(identity, Mailboxes(open_all=True)).start()
    port, control_port = free_port(), free_port()
    url = f"http://localhost:{port}"
    env = {
        "MC_PUBLIC_URL": url,
        "MC_TABLES_CONNECTION_STRING": azurite.connection_string,
        "MC_TABLE_PREFIX": "b" + secrets.token_hex(4),
        "MC_KEY_VAULT_URL": keyvault.url,
        "MC_SIGNING_KEY": secrets.token_urlsafe(32),
        "MC_AUTHORITY_HOST": identity.host,
        "MC_CA_BUNDLE": identity.ca_bundle,
        "MC_IMAP_HOST": imap.address,
        "MC_SECRET_MODE": secret_mode,
    }
    if auth_cache_seconds is not None:  # default: the service's own (MC_AUTH_CACHE_SECONDS, 5 s)
        env["MC_AUTH_CACHE_SECONDS"] = str(auth_cache_seconds)
    for name in [n for n in os.environ if n.startswith("MC_")]:
        del os.environ[name]
    os.environ.update(env)

    # This process registers the app (client secret into the Key Vault fake) and mints the API token.
    import shared.storage.azure_credential
    from shared.core.apps import register_app
    from shared.settings import get_settings
    from shared.storage.tables.apitokens import create_token

    shared.storage.azure_credential.get_azure_credential = lambda settings: FakeCredential()
    get_settings.cache_clear()
    client_id, client_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    identity.add_client(client_id, client_secret, [f"{url}/oauth"])
    register_app(name="bench", client_id=client_id, client_secret_value=client_secret, authority="organizations",
                 base_scopes="imap", settings=get_settings())
    token, _ = create_token("bench", ("api", "admin"))
    user = identity.add_user("delegate@contoso.com", email="delegate@contoso.com")

    server = subprocess.Popen([sys.executable, "-m", "bench.server", "--port", str(port), "--control-port",
                               str(control_port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    stack = Stack(azurite, identity, keyvault, imap, server, url, f"http://127.0.0.1:{control_port}", token, user)
    stack.hosts = {f"127.0.0.1:{azurite.port}": "table", urlsplit(keyvault.url).netloc: "keyvault",
                   identity.host: "microsoft"}
    try:
        _wait_http(url + "/v1/openapi.json", server)
    except BaseException:
        stack.stop()
        raise
    return stack


# --- measuring -----------------------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    latencies: list[float]  # seconds
    elapsed: float
    calls: dict[str, float]
    clients: int = 1
    per_item: list[dict[str, float]] = field(default_factory=list)  # calls of each request, when asked

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed


def _session():
    import requests

    session = requests.Session()
    session.trust_env = False  # this machine exports proxy and CA variables
    return session


class Bench:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = _session()

    def control(self, path: str) -> dict:
        if path == "/counts":
            return self.http.get(self.stack.control + path, timeout=10).json()
        return self.http.post(self.stack.control + path, timeout=10).json()

    def _calls(self, counts: dict[str, int], imap: int, n: int) -> dict[str, float]:
        calls = dict.fromkeys(COLUMNS, 0.0)
        for host, count in counts.items():
            column = self.stack.hosts.get(host)
            if column:
                calls[column] += count / n
        calls["imap"] = imap / n
        return calls

    def counted(self, name: str, prepare: Callable[[int], Any], run: Callable[[Any], None], n: int,
                between: Callable[[], None] | None = None, per_item: bool = False) -> Result:
        """Prepare ``n`` inputs (not measured), then time ``run`` on each, counting the service's calls
        (``per_item``: also each request's own calls, read between requests)."""
        inputs = [prepare(i) for i in range(n)]
        imap_before = self.stack.imap.connections
        self.control("/reset")
        latencies, busy, items = [], 0.0, []
        for item in inputs:
            if between is not None:
                between()
            started = time.perf_counter()
            run(item)
            latencies.append(time.perf_counter() - started)
            busy += latencies[-1]
            if per_item:
                imap_now = self.stack.imap.connections
                items.append(self._calls(self.control("/counts"), imap_now - imap_before, 1))
                self.control("/reset")
                imap_before = imap_now
        if per_item:
            calls = {c: sum(i[c] for i in items) / n for c in COLUMNS}
        else:
            calls = self._calls(self.control("/counts"), self.stack.imap.connections - imap_before, n)
        return Result(name, latencies, busy, calls, per_item=items)

    def concurrent(self, name: str, run: Callable[[Any], None], inputs: list, clients: int) -> Result:
        latencies: list[float] = []
        lock = threading.Lock()

        def one(item):
            started = time.perf_counter()
            run(item)
            with lock:
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, inputs))
        return Result(name, latencies, time.perf_counter() - started, {}, clients)

    # -- operations

    def form(self, i: int, session=None) -> str:
        answer = (session or self.http).post(
            self.stack.url + "/v1/authentication/form", timeout=30,
            headers={"Authorization": f"Bearer {self.stack.token}"},
            json={"redirectUrl": APP_REDIRECT, "email": f"shared{i}@contoso.com", "delegated": True})
        assert answer.status_code == 200, answer.text
        return answer.json()["url"]

    def start(self, link: str):
        from tests.service import Browser

        browser = Browser()
        answer = browser.get(link, allow_redirects=False, timeout=30)
        assert answer.status_code == 302, answer.text
        return browser, answer.headers["Location"]

    def authorize(self, started) -> tuple[Any, str]:
        browser, location = started
        answer = browser.get(location, allow_redirects=False, timeout=30, verify=self.stack.identity.ca_bundle)
        assert answer.status_code == 302, answer.text
        return browser, answer.headers["Location"]

    def callback(self, pending) -> str:
        browser, callback = pending
        answer = browser.get(callback, allow_redirects=False, timeout=60)
        location = answer.headers.get("Location", "")
        assert answer.status_code == 302 and "account=" in location and "error=" not in location, \
            (answer.status_code, location, answer.text[:300])
        return parse_qs(urlsplit(location).query)["account"][0]

    def accounts(self, i: int = 0, session=None) -> None:
        answer = (session or self.http).get(self.stack.url + "/v1/accounts", timeout=30,
                                            headers={"Authorization": f"Bearer {self.stack.token}"})
        assert answer.status_code == 200, answer.text

    def hand_off(self, account: str, session=None) -> None:
        answer = (session or self.http).get(f"{self.stack.url}/v1/account/{account}/oauth-token", timeout=30,
                                            headers={"Authorization": f"Bearer {self.stack.token}"})
        assert answer.status_code == 200, answer.text


def run_operations(bench: Bench, n: int) -> list[Result]:
    identity = bench.stack.identity
    identity.sign_in_as(bench.stack.user)
    # Warm the instance: first uses create tables, read the client secret, fetch Microsoft's discovery, ...
    warm_link = bench.form(10_000)
    warm_account = bench.callback(bench.authorize(bench.start(warm_link)))
    bench.hand_off(warm_account)

    bench.accounts()
    results = [bench.counted("form creation", lambda i: i, bench.form, n)]
    links = [bench.form(i) for i in range(n)]
    results.append(bench.counted("hosted redirect", lambda i: links[i], bench.start, n))

    callbacks = n // 2
    signers = [identity.add_user(f"user{i}@contoso.com", email=f"user{i}@contoso.com") for i in range(callbacks)]

    def signed_in_as(user, link):
        identity.sign_in_as(user)
        return bench.authorize(bench.start(link))

    own = [bench.form(30_000 + i) for i in range(callbacks)]
    accounts: list[str] = []
    results.append(bench.counted("callback, new signer", lambda i: signed_in_as(signers[i], own[i]),
                                 lambda pending: accounts.append(bench.callback(pending)), callbacks, per_item=True))
    shared = [bench.form(20_000 + i) for i in range(callbacks)]
    results.append(bench.counted(f"callback, one signer's 1st..{callbacks}th mailbox",
                                 lambda i: signed_in_as(bench.stack.user, shared[i]), bench.callback, callbacks,
                                 per_item=True))
    bench.hand_off(accounts[0])  # the sign-in does not fill the access-token cache: the first hand-off does
    results.append(bench.counted("warm token", lambda i: accounts[0], bench.hand_off, n))
    results.append(bench.counted("account list", lambda i: i, bench.accounts, n))
    for account in accounts:  # a token on every credential row, left by "another instance" (this one, now)
        bench.hand_off(account)
    results.append(bench.counted("token, another instance", lambda i: accounts[i % len(accounts)], bench.hand_off,
                                 callbacks, between=lambda: bench.control("/forget-tokens")))
    results.append(bench.counted("cold token", lambda i: accounts[i % len(accounts)], bench.hand_off, callbacks,
                                 between=lambda: bench.control("/expire-tokens")))
    # One worker under load: 4 clients at once (a session each), the cheap operations.
    sessions = threading.local()

    def session():
        if not hasattr(sessions, "s"):
            sessions.s = _session()
        return sessions.s

    results.append(bench.concurrent("form creation", lambda i: bench.form(i, session()), list(range(n)), 4))
    results.append(bench.concurrent("warm token", lambda a: bench.hand_off(a, session()), [accounts[0]] * n, 4))
    results.append(bench.concurrent("account list", lambda i: bench.accounts(i, session()), list(range(n)), 4))
    return results


# --- cold start ----------------------------------------------------------------------------------------------

IMPORT_TIMER = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"


def import_seconds(statement: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}
    out = subprocess.run([sys.executable, "-c", IMPORT_TIMER.format(statement=statement)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "azure" and len(parts) > 1 else parts[0]


def import_tree_ms(module: str) -> dict[str, float]:
    """Per package, the cumulative time (ms) of its imports in ``python -X importtime -c 'import module'``,
    counted where the import tree first enters the package (so its own dependencies are included once)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stderr
    pending: dict[int, list[dict]] = {}
    for line in err.splitlines():  # a module's line comes after the lines of the modules it imported
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if not m:
            continue
        depth = len(m.group(2)) // 2
        node = {"name": m.group(3), "ms": int(m.group(1)) / 1000, "children": pending.pop(depth + 1, [])}
        pending.setdefault(depth, []).append(node)
    totals: dict[str, float] = {}

    def walk(node: dict, outer: frozenset) -> None:
        package = _package(node["name"])
        if package not in outer:
            totals[package] = totals.get(package, 0.0) + node["ms"]
        for child in node["children"]:
            walk(child, outer | {package})

    for root in pending.get(0, []):
        walk(root, frozenset())
    return totals


def import_breakdown(module: str, baseline: str, top: int = 8) -> list[tuple[str, float]]:
    """The packages importing ``module`` adds to ``baseline``, biggest first (cumulative ms)."""
    base, full = import_tree_ms(baseline), import_tree_ms(module)
    added = {p: t for p, t in full.items() if p not in base and p != module}
    return sorted(added.items(), key=lambda kv: -kv[1])[:top]


def cold_start(repeat: int) -> dict[str, Any]:
    statements = {"azure.functions": "import azure.functions", "function_app": "import function_app",
                  "pydantic": "import azure.functions; from pydantic import BaseModel"}
    times: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(repeat):  # interleaved, so each sees the same machine state
        for name, statement in statements.items():
            times[name].append(import_seconds(statement))
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    return {"azure_functions_ms": median["azure.functions"], "function_app_ms": median["function_app"],
            "with_pydantic_ms": median["pydantic"], "repeat": repeat,
            "added_by": import_breakdown("function_app", "azure.functions")}


# --- report -------------------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def report(results: list[Result], cold: dict[str, Any], info: dict[str, str], n: int) -> str:
    lines = [f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, {info['platform']}",
             f"Samples: {n} per operation ({n // 2} callbacks and cold tokens); one client unless noted", "",
             "| operation | clients | median ms | p99 ms | req/s | Table | Key Vault | Microsoft | IMAP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        calls = " | ".join(f"{r.calls[c]:.2f}" if r.calls else "" for c in COLUMNS)
        lines.append(f"| {r.name} | {r.clients} | {r.median_ms:.1f} | {r.p99_ms:.1f} | {r.rps:.0f} | {calls} |")
    for r in results:
        if r.per_item:
            tables = [item["table"] for item in r.per_item]
            lines.append(f"\n{r.name}: Table calls per request: 1st {tables[0]:.0f}, last ({len(tables)}th) "
                         f"{tables[-1]:.0f}, min {min(tables):.0f}, median {statistics.median(tables):.0f}, "
                         f"max {max(tables):.0f}")
    added = cold["function_app_ms"] - cold["azure_functions_ms"]
    lines += ["", f"Cold start (median of {cold['repeat']} fresh interpreters): import azure.functions "
                  f"{cold['azure_functions_ms']:.0f} ms; import function_app {cold['function_app_ms']:.0f} ms "
                  f"(+{added:.0f} ms, +{100 * added / cold['azure_functions_ms']:.0f}%)",
              f"import azure.functions + pydantic's BaseModel (no models of ours): {cold['with_pydantic_ms']:.0f} ms",
              "Added by function_app (cumulative import ms): "
              + ", ".join(f"{p} {t:.0f}" for p, t in cold["added_by"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="requests per operation (callbacks: half)")
    parser.add_argument("--repeat", type=int, default=9, help="fresh interpreters per import measurement")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 samples, 3 imports")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--auth-cache-seconds", type=float, default=None,
                        help="MC_AUTH_CACHE_SECONDS of the service (0: API tokens and apps read on every request)")
    parser.add_argument("--no-logs", action="store_true", help="skip the log lines per request")
    parser.add_argument("--secret-mode", choices=("keyvault", "envelope"), default="keyvault",
                        help="MC_SECRET_MODE of the service (where refresh tokens live)")
    parser.add_argument("--load", action="store_true",
                        help="load mode instead: concurrent HTTP clients (bench.load; its options follow)")
    args, rest = parser.parse_known_args(argv)
    if args.load:
        from bench.load import main as load_main

        load_main(rest + (["--json", args.json] if args.json else [])
                  + (["--auth-cache-seconds", str(args.auth_cache_seconds)] if args.auth_cache_seconds is not None
                     else []))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.quick:
        args.samples, args.repeat = 20, 3
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import logging

    logging.basicConfig(level=logging.WARNING)
    info = machine()
    cold = cold_start(args.repeat)  # first, while the machine is quiet
    stack = start_stack(args.auth_cache_seconds, args.secret_mode)
    try:
        results = run_operations(Bench(stack), args.samples)
    finally:
        stack.stop()
    from bench.logs import measure as measure_logs
    from bench.logs import report as log_report

    log_counts = [] if args.no_logs else measure_logs(min(args.samples, 50))
    text = report(results, cold, info, args.samples)
    if log_counts:
        text += "\n\nLog lines per request as deployed (bench.logs):\n" + log_report(log_counts)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "cold_start": cold,
            "operations": [{"name": r.name, "clients": r.clients, "median_ms": r.median_ms, "p99_ms": r.p99_ms,
                            "rps": r.rps, "calls": r.calls} for r in results],
            "log_lines": [vars(c) for c in log_counts]}, indent=2))


if __name__ == "__main__":
    main()
