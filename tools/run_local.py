"""``make run``: Azurite in memory, local.settings.json with fresh keys, then the service on :7071.

Uses Core Tools (``func start``) when it is installed and our small local host otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tools.azurite import ROOT, start_azurite

SETTINGS = ROOT / "local.settings.json"
EXAMPLE = ROOT / "local.settings.example.json"
PORT = 7071


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


def next_steps() -> str:
    py = ".venv/bin/python"
    return f"""
Mailbox Connect is running on http://localhost:{PORT}

Next steps (in another terminal):
  1. Mint an API token:          {py} -m shared.cli create-token --name dev
  2. Register your Entra app:    {py} -m shared.cli add-app --name dev --client-id <id> --authority organizations --base-scopes imap
                                 (the client secret is read from stdin; redirect URI to register: http://localhost:{PORT}/oauth)
  3. Create a sign-in link:
     curl -s -X POST http://localhost:{PORT}/v1/authentication/form \\
       -H "Authorization: Bearer <token>" -H "Content-Type: application/json" \\
       -d '{{"redirectUrl": "http://localhost:3000/done", "email": "you@contoso.com"}}'
  4. Open the returned url in a browser and sign in.
Press Ctrl+C to stop.
"""


def main() -> int:
    ensure_local_settings()
    azurite = None
    if _port_open(10002):
        print("Table Storage already listening on 127.0.0.1:10002; using it")
    else:
        azurite = start_azurite(10002)
        print("Azurite (Table service, in memory) on 127.0.0.1:10002")
    try:
        if shutil.which("func"):
            print(next_steps())
            return subprocess.call(["func", "start", "--port", str(PORT)], cwd=ROOT)
        from tools.localhost import load_function_app, serve

        os.chdir(ROOT)
        server = serve(load_function_app(), "127.0.0.1", PORT)
        print(next_steps())
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        if azurite:
            azurite.stop()


if __name__ == "__main__":
    raise SystemExit(main())
