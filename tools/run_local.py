"""``make run``: Azurite in memory, local.settings.json with fresh keys, then the service on :7071.

    python -m tools.run_local [--sandbox | --no-sandbox] [--port 7071] [--demo-port 7072]
                              [--tables-port 10002] [--sign-in-as USER] [--info-file PATH] [--local-host]

Sandbox mode (the default when no real Microsoft app is set up): a local stand-in for Microsoft (the
``sandbox`` package) is started, the service is pointed at it (``MC_AUTHORITY_HOST``, ``MC_CA_BUNDLE``),
a sandbox OAuth app is registered and an API token minted; the token, a ``curl`` that creates a sign-in
link and the demo app's address are printed. Sign-ins land on the demo app (``sandbox/demo.py``).

Sandbox or not, first match wins:

1. ``--sandbox`` / ``--no-sandbox``;
2. ``MC_SANDBOX`` (environment, else local.settings.json ``Values``): ``1``/``true``/``on`` or ``0``/``false``/``off``;
3. off when ``MC_AUTHORITY_HOST`` is set (you point the service at an identity platform yourself);
4. off when Table Storage is already running (not started by us) and holds an enabled OAuth app that is
   not the sandbox's (you registered a real Entra app);
5. on.

``--sign-in-as bob@contoso.example`` skips the sign-in page (every sign-in is that user), for scripts and
CI; ``--info-file`` writes the token, app id and URLs as JSON once the service listens (with Core Tools:
once it is starting; wait for the port). ``--tables-port 0`` starts a private Azurite on a free port instead
of using (or starting) the one on 10002.

Uses Core Tools (``func start``) when it is installed and our small local host otherwise (``--local-host``
forces the latter). Sandbox mode refuses to start in Azure.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools.azurite import ROOT, connection_string, start_azurite

SETTINGS = ROOT / "local.settings.json"
EXAMPLE = ROOT / "local.settings.example.json"
PORT = 7071
DEMO_PORT = 7072
TABLES_PORT = 10002
PY = ".venv/bin/python"
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def ensure_local_settings() -> dict[str, str]:
    """Create local.settings.json from the example on first run, with generated local keys."""
    if not SETTINGS.exists():
        data = json.loads(EXAMPLE.read_text())
        data.pop("Comments", None)
        values = data["Values"]
        values["MC_LOCAL_SECRET_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()
        values["MC_SIGNING_KEY"] = secrets.token_urlsafe(48)
        SETTINGS.write_text(json.dumps(data, indent=2) + "\n")
        SETTINGS.chmod(0o600)
        print(f"created {SETTINGS.name} with fresh local keys")
    return json.loads(SETTINGS.read_text())["Values"]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_or(port: int) -> int:
    """``port`` when it is free, else any free port (the address is printed either way)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sandbox_choice(flag: bool | None, values: dict[str, str], environ: dict[str, str],
                   real_apps: bool | None) -> tuple[bool, str]:
    """(sandbox on?, why). ``real_apps``: whether an already running Table Storage holds a non-sandbox
    app (None: we start Azurite ourselves, so it holds nothing)."""
    if flag is not None:
        return flag, "--sandbox" if flag else "--no-sandbox"
    setting = (environ.get("MC_SANDBOX") or values.get("MC_SANDBOX") or "").strip().lower()
    if setting in _ON:
        return True, "MC_SANDBOX"
    if setting in _OFF:
        return False, "MC_SANDBOX"
    if setting:
        raise SystemExit(f"MC_SANDBOX must be 1 or 0, not {setting!r}")
    if environ.get("MC_AUTHORITY_HOST") or values.get("MC_AUTHORITY_HOST"):
        return False, "MC_AUTHORITY_HOST is set"
    if real_apps:
        return False, "a Microsoft OAuth app is registered"
    return True, "no Microsoft app is set up"


def _has_real_apps() -> bool:
    from sandbox.server import CLIENT_ID
    from shared.storage.tables.apps import list_apps

    try:
        return any(app.enabled and app.clientId != CLIENT_ID for app in list_apps())
    except Exception:  # noqa: BLE001 - an unreadable store holds nothing we know of
        return False


def next_steps(port: int) -> str:
    return f"""
Mailbox Connect is running on http://localhost:{port} (no sandbox: real Microsoft sign-in)

Next steps (in another terminal):
  1. Mint an API token:          {PY} -m shared.cli create-token --name dev
  2. Register your Entra app:    {PY} -m shared.cli add-app --name dev --client-id <id> \\
                                   --authority organizations --base-scopes imap
                                 (the client secret is read from stdin; redirect URI to register: http://localhost:{port}/oauth)
  3. Create a sign-in link:
     curl -s -X POST http://localhost:{port}/v1/authentication/form \\
       -H "Authorization: Bearer <token>" -H "Content-Type: application/json" \\
       -d '{{"redirectUrl": "http://localhost:3000/done", "email": "you@contoso.com"}}'
  4. Open the returned url in a browser and sign in.
Press Ctrl+C to stop.
"""


def sandbox_steps(port: int, token: str, demo: Any, why: str) -> str:
    from sandbox.server import SHARED_MAILBOXES, USERS

    curl = demo.curl_for_link(SHARED_MAILBOXES[0], True, token="$TOKEN").replace("\n", "\n  ")
    def mailboxes(user: Any) -> str:
        return "can open " + ", ".join(user.shared_mailboxes) if user.shared_mailboxes else "no shared mailboxes"

    users = "\n".join(f"    {u.upn:<24} {mailboxes(u)}" for u in USERS)
    return f"""
Mailbox Connect is running on http://localhost:{port} in SANDBOX mode ({why}):
Microsoft is replaced by a local sandbox with the test tenant contoso.example. No Microsoft account needed.

API token (shown once):
  {token}

Create a sign-in link for a shared mailbox:
  TOKEN={token}
  {curl}

Open the returned "url" in a browser: the sandbox sign-in page lists the test users
{users}
and after the sign-in you land on the demo app, which shows the account and fetches its access token.
Or start from the demo app: {demo.url}/

Press Ctrl+C to stop.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.run_local", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sandbox", dest="sandbox", action="store_true", default=None,
                       help="use the local sandbox instead of Microsoft")
    group.add_argument("--no-sandbox", dest="sandbox", action="store_false", help="use real Microsoft sign-in")
    parser.add_argument("--port", type=int, default=PORT, help=f"the service's port (default {PORT})")
    parser.add_argument("--demo-port", type=int, default=DEMO_PORT,
                        help=f"the sandbox demo app's port (default {DEMO_PORT}, another if taken)")
    parser.add_argument("--tables-port", type=int, default=TABLES_PORT,
                        help=f"Azurite's table port (default {TABLES_PORT}, reused when running; 0: a private one)")
    parser.add_argument("--sign-in-as", metavar="USER", help="sandbox: no sign-in page, always this user (CI)")
    parser.add_argument("--info-file", type=Path, help="write token, app id and URLs here as JSON when ready")
    parser.add_argument("--local-host", action="store_true", help="use tools/localhost.py even if func is installed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sandbox or args.sign_in_as:
        _refuse_in_azure()  # before anything is started or written
    values = ensure_local_settings()
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if not os.environ.get("MC_PUBLIC_URL") and values.get("MC_PUBLIC_URL", "").rstrip("/") in ("", f"http://localhost:{PORT}"):
        os.environ["MC_PUBLIC_URL"] = f"http://localhost:{args.port}"  # follow --port unless set to elsewhere

    stack: list[Any] = []  # things to stop, last first
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        tables_running = bool(args.tables_port) and _port_open(args.tables_port)
        if tables_running:
            print(f"Table Storage already listening on 127.0.0.1:{args.tables_port}; using it")
        else:
            azurite = start_azurite(args.tables_port or None)
            stack.append(azurite)
            print(f"Azurite (Table service, in memory) on 127.0.0.1:{azurite.port}")
        if args.tables_port != TABLES_PORT:  # UseDevelopmentStorage=true means port 10002
            os.environ["MC_TABLES_CONNECTION_STRING"] = connection_string(args.tables_port or azurite.port)
        real_apps = _has_real_apps() if tables_running and args.sandbox is None else None
        use_sandbox, why = sandbox_choice(args.sandbox, values, dict(os.environ), real_apps)

        info: dict[str, Any] = {"serviceUrl": f"http://localhost:{args.port}", "sandbox": use_sandbox}
        banner = next_steps(args.port)
        if use_sandbox:
            banner = _start_sandbox(args, why, stack, info)

        from tools.localhost import configure_logging

        configure_logging()
        logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every storage request at INFO
        if shutil.which("func") and not args.local_host:
            print(banner, flush=True)
            _write_info(args.info_file, info)
            return subprocess.call(["func", "start", "--port", str(args.port)], cwd=ROOT)
        from tools.localhost import load_function_app, serve

        server = serve(load_function_app(), "127.0.0.1", args.port)
        print(banner, flush=True)
        _write_info(args.info_file, info)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return 0
    finally:
        for item in reversed(stack):
            try:
                item.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                print(f"could not stop {type(item).__name__}: {exc}", file=sys.stderr)


def _refuse_in_azure() -> None:
    from sandbox import SandboxRefused, refuse_in_azure

    try:
        refuse_in_azure("sandbox mode")
    except SandboxRefused as exc:
        raise SystemExit(f"error: {exc}") from None


def _start_sandbox(args: argparse.Namespace, why: str, stack: list[Any], info: dict[str, Any]) -> str:
    _refuse_in_azure()
    from sandbox.demo import DemoApp
    from sandbox.server import Sandbox
    from shared.settings import get_settings
    from shared.storage.tables.apitokens import create_token

    sandbox = Sandbox(interactive=not args.sign_in_as).start()
    stack.append(sandbox)
    if args.sign_in_as:
        sandbox.sign_in_as(args.sign_in_as)
    os.environ.update(sandbox.service_env(dict(os.environ)))
    get_settings.cache_clear()
    settings = get_settings()
    app = sandbox.ensure_app(settings)
    token, _ = create_token("sandbox", ("api", "admin"))
    demo = DemoApp(service_url=settings.public_url, api_token=token, app_id=app.id, sandbox=sandbox,
                   port=_free_or(args.demo_port)).start()
    stack.append(demo)
    info.update(token=token, appId=app.id, demoUrl=demo.url, redirectUrl=demo.redirect_url,
                controlUrl=f"{demo.url}/sandbox", **{"identity": sandbox.describe()})
    return sandbox_steps(args.port, token, demo, why)


def _write_info(path: Path | None, info: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.chmod(0o600)  # it holds an API token
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
