"""Load mode: drive the service over HTTP with concurrent keep-alive clients, as an outside client sees it.

    .venv/bin/python -m bench.load [--duration 5] [--connections 1,8] [--tool auto|wrk|python|both]
    .venv/bin/python -m bench.run --load [...]        # the same
    make bench BENCH_ARGS=--load

Starts the same stack as ``bench.run`` (Azurite in memory, the fakes, ``bench.server``: ``function_app`` on
``tools/localhost.py`` in its own process, SDK loggers at WARNING), signs one mailbox in, then for each
operation and number of connections runs a load generator for ``--duration`` seconds after a 1 s warm-up:

* **wrk** (``--latency``, one thread per 4 connections) where installed;
* **python**: this module's asyncio generator, one keep-alive connection per client on a raw socket
  (HTTP/1.1, one request at a time per connection), per-request latency from writing the request to
  reading the last body byte. It costs ~0.1 ms of CPU per request, far less than ``requests`` (~1 ms).

Operations: form creation (``POST /v1/authentication/form``), hosted redirect (``GET /accounts/new`` of a
valid link, not following the 302; links from a pool made beforehand, each used once while they last),
account list (``GET /v1/accounts``), warm token hand-off (``GET /v1/account/{id}/oauth-token``).

What bounds each number: the CPU seconds (user + system, ``/proc/<pid>/stat``) the service process, Azurite
and the load generator used during the measured window, as a share of one core and per request. The machine
has ``nproc`` cores; when service + Azurite + generator reach it, the machine is the bound. Service RSS
(``VmRSS``) after each run and its peak (``VmHWM``).

``--compare`` also measures form creation at one client with ``requests.Session`` (``bench.run``'s client)
and with the raw client, against the same process, to show what the client itself adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


# --- process accounting ------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15 of stat)


def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and its children (Azurite is ``npx``/``node``: the work is in a child)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo.extend(int(c) for c in children)
    return pids


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


# --- the requests -----------------------------------------------------------------------------------------

@dataclass
class Op:
    name: str
    method: str
    paths: list[str]  # cycled; one entry for a fixed request
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    expect: int = 200


def request_bytes(op: Op, path: str, host: str) -> bytes:
    lines = [f"{op.method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in op.headers.items()]
    if op.body or op.method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(op.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + op.body


@dataclass
class Run:
    operation: str
    tool: str
    connections: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    service_cpu: float = 0.0  # seconds in the window
    azurite_cpu: float = 0.0
    generator_cpu: float = 0.0
    rss_kb: int = 0
    hwm_kb: int = 0
    calls: dict[str, float] = field(default_factory=dict)  # per request: table, keyvault, microsoft

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def _client(host: str, port: int, op: Op, start_index: int, step: int, stop_at: float, record_from: float,
                  latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    hostname = f"{host}:{port}"
    fixed = request_bytes(op, op.paths[0], hostname) if len(op.paths) == 1 else None
    i = start_index
    try:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            data = fixed or request_bytes(op, op.paths[i % len(op.paths)], hostname)
            i += step
            started = time.perf_counter()
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            elapsed = time.perf_counter() - started
            status = int(head[9:12])
            if started >= record_from:
                latencies.append(elapsed)
                if status != op.expect:
                    errors[0] += 1
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def python_load(url: str, op: Op, connections: int, duration: float, warmup: float) -> tuple[list[float], int, float]:
    """Returns latencies (s) after the warm-up, errors, and the measured window's length."""
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]

    async def main() -> float:
        t0 = time.perf_counter()
        record_from, stop_at = t0 + warmup, t0 + warmup + duration
        await asyncio.gather(*(_client(parts.hostname or "127.0.0.1", parts.port or 80, op, k, connections,
                                       stop_at, record_from, latencies, errors) for k in range(connections)))
        return time.perf_counter() - record_from

    window = asyncio.run(main())
    return latencies, errors[0], window


WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local n = 0
local counter = 0
wrk.method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
if body ~= "" then wrk.body = body end
local hdrs = os.getenv("BENCH_HEADERS")
for k, v in string.gmatch(hdrs, "([^:\\n]+):%s*([^\\n]+)") do wrk.headers[k] = v end
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  n = id
end
request = function()
  n = n + 8
  return wrk.format(nil, paths[(n % #paths) + 1])
end
"""


def _wrk_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk_load(url: str, op: Op, connections: int, duration: float, warmup: float) -> tuple[str, float]:
    """Runs wrk (a warm-up run, then the measured run); returns its output and its CPU seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    (workdir / "paths.txt").write_text("\n".join(op.paths) + "\n")
    (workdir / "script.lua").write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_PATHS": str(workdir / "paths.txt"), "BENCH_METHOD": op.method,
           "BENCH_BODY": op.body.decode(), "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in op.headers.items())}
    threads = max(1, min(connections, (connections + 3) // 4))
    base = ["wrk", "-t", str(threads), "-c", str(connections), "--latency", "-s", str(workdir / "script.lua")]
    if warmup > 0:
        subprocess.run(base + ["-d", f"{max(1, round(warmup))}s", url], env=env, capture_output=True, check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(base + ["-d", f"{max(1, round(duration))}s", url], env=env, capture_output=True,
                         text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(workdir, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu


def parse_wrk(out: str) -> dict[str, float]:
    result: dict[str, float] = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if m:
        result["requests"] = int(m.group(1))
        result["seconds"] = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        result[f"p{q}"] = _wrk_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(m.group(1)) if m else 0
    return result


# --- the stack and the operations --------------------------------------------------------------------------

def prepare(stack, links_needed: int) -> dict[str, Op]:
    from bench.run import APP_REDIRECT, Bench, _session

    bench = Bench(stack)
    stack.identity.sign_in_as(stack.user)
    account = bench.callback(bench.authorize(bench.start(bench.form(10_000))))
    bench.hand_off(account)  # fills the instance's access-token cache: later hand-offs are warm
    bench.accounts()
    local = threading.local()

    def form(i: int) -> str:
        if not hasattr(local, "s"):
            local.s = _session()
        return bench.form(i, local.s)

    with ThreadPoolExecutor(4) as pool:
        links = list(pool.map(form, range(links_needed)))
    auth = {"Authorization": f"Bearer {stack.token}"}
    body = json.dumps({"redirectUrl": APP_REDIRECT, "email": "shared1@contoso.com", "delegated": True}).encode()

    def path(link: str) -> str:
        parts = urlsplit(link)
        return parts.path + ("?" + parts.query if parts.query else "")

    return {
        "form creation": Op("form creation", "POST", ["/v1/authentication/form"], body,
                            {**auth, "Content-Type": "application/json"}),
        "hosted redirect": Op("hosted redirect", "GET", [path(link) for link in links], expect=302),
        "account list": Op("account list", "GET", ["/v1/accounts"], headers=auth),
        "warm token": Op("warm token", "GET", [f"/v1/account/{account}/oauth-token"], headers=auth),
    }


def _control(stack, path: str) -> dict:
    import requests

    session = requests.Session()
    session.trust_env = False
    if path == "/counts":
        return session.get(stack.control + path, timeout=10).json()
    return session.post(stack.control + path, timeout=10).json()


def measure(stack, op: Op, tool: str, connections: int, duration: float, warmup: float) -> Run:
    """One run; the service's outbound calls are counted by ``bench.server`` from the window's start."""
    server, azurite = stack.server.pid, stack.azurite.proc.pid
    url = stack.url.replace("localhost", "127.0.0.1")
    if tool == "wrk":
        # wrk's warm-up is its own run; the CPU window is the measured run only.
        if warmup > 0:
            wrk_load(url, op, connections, warmup, 0)
        _control(stack, "/reset")
        s0, a0 = cpu_seconds(server), tree_cpu(azurite)
        out, gen = wrk_load(url, op, connections, duration, 0)
        s1, a1 = cpu_seconds(server), tree_cpu(azurite)
        w = parse_wrk(out)
        run = Run(op.name, "wrk", connections, int(w.get("requests", 0)), int(w["errors"]),
                  w.get("seconds", duration), w["p50"], w["p99"])
    else:
        # The window starts after the warm-up: sample CPU from a thread at that moment.
        marks: dict[str, float] = {}

        def sample_at(delay: float) -> None:
            time.sleep(delay)
            _control(stack, "/reset")
            marks.update(s0=cpu_seconds(server), a0=tree_cpu(azurite), g0=time.process_time())

        sampler = threading.Thread(target=sample_at, args=(warmup,))
        sampler.start()
        latencies, errors, window = python_load(url, op, connections, duration, warmup)
        s1, a1, g1 = cpu_seconds(server), tree_cpu(azurite), time.process_time()
        sampler.join()
        s0, a0, gen = marks["s0"], marks["a0"], g1 - marks["g0"]
        run = Run(op.name, "python", connections, len(latencies), errors, window,
                  _percentile(latencies, 50) * 1000, _percentile(latencies, 99) * 1000)
    mem = memory_kb(server)
    counts = _control(stack, "/counts")
    run.calls = {column: sum(n for host, n in counts.items() if stack.hosts.get(host) == column) / max(1, run.requests)
                 for column in ("table", "keyvault", "microsoft")}
    run.service_cpu, run.azurite_cpu, run.generator_cpu = s1 - s0, a1 - a0, gen
    run.rss_kb, run.hwm_kb = mem.get("VmRSS", 0), mem.get("VmHWM", 0)
    return run


def compare_clients(stack, n: int = 300) -> dict[str, float]:
    """Form creation at one client: requests.Session (bench.run's client) vs the raw client, same process;
    medians in ms and the client's own CPU per request."""
    from bench.run import Bench

    bench = Bench(stack)
    for i in range(50):
        bench.form(i)
    lat = []
    c0 = time.process_time()
    for i in range(n):
        t = time.perf_counter()
        bench.form(i)
        lat.append(time.perf_counter() - t)
    requests_cpu = (time.process_time() - c0) / n
    op = Op("form creation", "POST", ["/v1/authentication/form"], json.dumps(
        {"redirectUrl": "https://app.example/connected", "email": "shared1@contoso.com", "delegated": True}).encode(),
        {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"})
    c0 = time.process_time()
    raw, _, _ = python_load(stack.url.replace("localhost", "127.0.0.1"), op, 1, 2.0, 0.5)
    raw_cpu = (time.process_time() - c0) / max(1, len(raw))
    result = {"requests_session_p50_ms": statistics.median(lat) * 1000,
              "requests_session_cpu_ms": requests_cpu * 1000,
              "raw_p50_ms": statistics.median(raw) * 1000, "raw_cpu_ms": raw_cpu * 1000}
    # The same operation against ``python -m tools.localhost`` as ``make run`` starts it: the worker's logging
    # (root at INFO, a stderr handler), timer functions on their schedules; same Azurite, same settings.
    from bench.logs import ServiceProcess
    from tools.azurite import free_port

    port = free_port()
    service = ServiceProcess(dict(os.environ), port, timers=True).wait_listening()
    try:
        url = f"http://127.0.0.1:{port}"
        python_load(url, op, 1, 1.0, 0)  # warm: imports, caches
        c0 = cpu_seconds(service.proc.pid)
        local, _, window = python_load(url, op, 1, 3.0, 0)
        result["localhost_raw_p50_ms"] = statistics.median(local) * 1000
        result["localhost_cpu_ms"] = 1000 * (cpu_seconds(service.proc.pid) - c0) / max(1, len(local))
        if shutil.which("wrk"):
            out, _ = wrk_load(url, op, 1, 3.0, 1.0)
            result["localhost_wrk_p50_ms"] = parse_wrk(out)["p50"]
        result["localhost_log_lines"] = len(service.text())
        result["localhost_requests"] = len(local)
    finally:
        service.stop()
    return result


def report(runs: list[Run], cores: int) -> str:
    lines = ["| operation | tool | conns | req/s | p50 ms | p99 ms | errors | Table/req | KV/req | MS/req | "
             "service CPU | Azurite CPU | generator CPU | service CPU ms/req | service RSS MB (peak) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        def share(cpu: float, r: Run = r) -> str:
            return f"{100 * cpu / r.seconds:.0f} %" if r.seconds else ""

        per = 1000 * r.service_cpu / r.requests if r.requests else float("nan")
        lines.append(f"| {r.operation} | {r.tool} | {r.connections} | {r.rps:.0f} | {r.p50_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.errors} | "
                     + " | ".join(f"{r.calls.get(c, 0):.2f}" for c in ("table", "keyvault", "microsoft"))
                     + f" | {share(r.service_cpu)} | {share(r.azurite_cpu)} | "
                     f"{share(r.generator_cpu)} | {per:.2f} | {r.rss_kb / 1024:.0f} ({r.hwm_kb / 1024:.0f}) |")
    lines.append(f"\nCPU: share of one core during the measured window ({cores} cores: {cores * 100} % is the "
                 "machine).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument("--connections", default="1,8", help="comma-separated connection counts")
    parser.add_argument("--tool", choices=("auto", "wrk", "python", "both"), default="auto",
                        help="auto: wrk where installed, else the Python generator")
    parser.add_argument("--operations", default="form creation,hosted redirect,account list,warm token")
    parser.add_argument("--compare", action="store_true", help="also: requests.Session vs raw client, 1 client")
    parser.add_argument("--auth-cache-seconds", type=float, default=None)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import logging

    logging.basicConfig(level=logging.WARNING)
    has_wrk = shutil.which("wrk") is not None
    tools = {"auto": ["wrk" if has_wrk else "python"], "wrk": ["wrk"], "python": ["python"],
             "both": ["wrk", "python"] if has_wrk else ["python"]}[args.tool]
    if "wrk" in tools and not has_wrk:
        parser.error("wrk is not installed (apt-get install wrk), use --tool python")
    connections = [int(c) for c in args.connections.split(",")]
    operations = [o.strip() for o in args.operations.split(",")]
    from bench.run import machine, start_stack

    info = machine()
    # Links for the hosted redirect: each used once while they last (a guess at the rate, then cycled).
    links = int(min(4000, 400 * (args.duration + args.warmup) * len(connections) * len(tools)))
    stack = start_stack(args.auth_cache_seconds)
    runs: list[Run] = []
    compared: dict[str, float] = {}
    try:
        ops = prepare(stack, links if "hosted redirect" in operations else 0)
        for name in operations:
            for conns in connections:
                for tool in tools:
                    run = measure(stack, ops[name], tool, conns, args.duration, args.warmup)
                    runs.append(run)
                    print(f"  {name}, {tool}, {conns} conns: {run.rps:.0f} req/s, p50 {run.p50_ms:.1f} ms",
                          file=sys.stderr, flush=True)
        if args.compare:
            compared = compare_clients(stack)
    finally:
        stack.stop()
    print(f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, {info['platform']}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.duration:.0f} s per run after "
          f"{args.warmup:.0f} s warm-up")
    print(report(runs, int(info["nproc"])))
    if compared:
        print("\nForm creation, 1 client, same service process: requests.Session (bench.run's client) p50 "
              f"{compared['requests_session_p50_ms']:.2f} ms ({compared['requests_session_cpu_ms']:.2f} ms client "
              f"CPU/request); raw keep-alive socket p50 {compared['raw_p50_ms']:.2f} ms "
              f"({compared['raw_cpu_ms']:.2f} ms client CPU/request)")
        if "localhost_raw_p50_ms" in compared:
            print("Form creation, 1 client, against `python -m tools.localhost` (make run's logging at INFO, "
                  "timers on): "
                  f"raw client p50 {compared['localhost_raw_p50_ms']:.2f} ms, wrk p50 "
                  f"{compared.get('localhost_wrk_p50_ms', float('nan')):.2f} ms, service CPU "
                  f"{compared['localhost_cpu_ms']:.2f} ms/request, {compared['localhost_log_lines']} log lines "
                  f"for ~{compared['localhost_requests']} measured requests (and the warm-ups)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": [asdict(r) | {"rps": r.rps} for r in runs],
                                               "compare": compared}, indent=2))


if __name__ == "__main__":
    main()
