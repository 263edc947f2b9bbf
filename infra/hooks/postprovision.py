"""azd postprovision hook: create the signing key once, then print what the admin does next.

azd runs this after every ``azd provision`` / ``azd up`` (through postprovision.sh or .ps1) with the
outputs of infra/bicep/main.bicep in the environment. It:

1. makes sure Key Vault secret ``mc-signing-key`` exists (``signing_key.ensure``: created once with the
   admin's own login, never rotated by a re-provision; the value is never printed);
2. prints the OAuth redirect URI to register in Entra and the exact admin CLI commands that mint the first
   API token and register the first OAuth app against the deployed storage and Key Vault.

The admin CLI reads the same MC_* settings as the app. Environment variables win over local.settings.json,
and an empty value removes a setting, so the printed commands blank the local-only settings a developer's
local.settings.json may hold (a connection string to Azurite would otherwise take precedence).

``--skip-signing-key`` only prints (tests, or an admin without Key Vault rights).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

HOOKS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(HOOKS_DIR))

import signing_key  # noqa: E402  (a sibling script, not a package)

# Outputs of main.bicep the hook needs.
REQUIRED_OUTPUTS = ("MC_PUBLIC_URL", "MC_OAUTH_REDIRECT_URI", "MC_TABLES_ENDPOINT", "MC_KEY_VAULT_URL")
# Settings that must never reach Azure: blanked in the printed commands so a local.settings.json cannot
# point the CLI at Azurite or at the test fakes while MC_TABLES_ENDPOINT / MC_KEY_VAULT_URL point at Azure.
LOCAL_ONLY_SETTINGS = (
    "MC_TABLES_CONNECTION_STRING",
    "MC_LOCAL_SECRET_KEY",
    "MC_SIGNING_KEY",
    "MC_AUTHORITY_HOST",
    "MC_GRAPH_URL",
    "MC_IMAP_HOST",
    "MC_CA_BUNDLE",
    "MC_WEBHOOK_SECRET",
)


def cli_environment(env: dict[str, str]) -> list[tuple[str, str]]:
    """The variables the admin CLI needs to work against the deployed service, in print order."""
    pairs = [(name, "") for name in LOCAL_ONLY_SETTINGS]
    pairs += [
        ("MC_TABLES_ENDPOINT", env["MC_TABLES_ENDPOINT"]),
        ("MC_KEY_VAULT_URL", env["MC_KEY_VAULT_URL"]),
        ("MC_PUBLIC_URL", env["MC_PUBLIC_URL"]),
    ]
    if env.get("MC_TABLE_PREFIX"):
        pairs.append(("MC_TABLE_PREFIX", env["MC_TABLE_PREFIX"]))
    return pairs


def format_command(pairs: list[tuple[str, str]], argv: list[str], *, windows: bool = False) -> str:
    """One copy-pasteable command: ``VAR=value ... python -m shared.cli ...`` (PowerShell on Windows)."""
    if windows:
        def ps(value: str) -> str:
            return value if re.fullmatch(r"[A-Za-z0-9._-]+", value) else "'" + value.replace("'", "''") + "'"

        sets = "; ".join(f"$env:{name}='{value}'" for name, value in pairs if value)
        return f"{sets}; python {' '.join(ps(a) for a in argv)}"
    prefix = " ".join(f"{name}={shlex.quote(value) if value else ''}" for name, value in pairs)
    return f"{prefix} python {shlex.join(argv)}"


def next_steps(env: dict[str, str], *, windows: bool = False) -> str:
    pairs = cli_environment(env)
    tenant = env.get("AZURE_TENANT_ID") or "<tenant-id>"
    create_token = ["-m", "shared.cli", "create-token", "--name", "first-app", "--scopes", "api"]
    add_app = [
        "-m", "shared.cli", "add-app",
        "--name", "outlook",
        "--client-id", "<application-client-id>",
        "--client-secret", "-",
        "--authority", tenant,
        "--cloud", "global",
        "--base-scopes", "imap",
    ]
    url = env["MC_PUBLIC_URL"]
    lines = [
        "",
        "Mailbox Connect is provisioned.",
        "",
        f"  Service URL         {url}",
        f"  OAuth redirect URI  {env['MC_OAUTH_REDIRECT_URI']}",
        f"  Key Vault           {env.get('AZURE_KEY_VAULT_NAME', env['MC_KEY_VAULT_URL'])}",
        f"  Storage account     {env.get('AZURE_STORAGE_ACCOUNT_NAME', env['MC_TABLES_ENDPOINT'])}",
        "",
        "Next steps (docs/deploy.md has the details). Run the commands from the repository root, in the",
        "project's virtualenv (make deps; . .venv/bin/activate), logged in as this admin (az login or",
        "azd auth login): the CLI uses your own Entra login, which this deployment granted the roles it needs.",
        "",
        *([
            "   PowerShell cannot set an empty variable: move any local.settings.json out of the repository",
            "   root first, or its local-only settings (Azurite, test fakes) would win over the ones below.",
            "",
        ] if windows else []),
        "1. In Entra ID > App registrations, add the redirect URI above to your app (platform: Web).",
        "",
        "2. Mint the first API token (it is shown once; keep it in your app's secret store):",
        "",
        "   " + format_command(pairs, create_token, windows=windows),
        "",
        "3. Register the OAuth app (client id from step 1; --base-scopes api for Microsoft Graph). The CLI",
        "   reads the client secret from standard input (paste it, then Enter), so it stays out of your",
        "   shell history; it is stored in Key Vault. --authority: this tenant, organizations or common.",
        "",
        "   " + format_command(pairs, add_app, windows=windows),
        "",
        "4. Ask for a sign-in link (MC_API_TOKEN = the token from step 2, type = the id add-app printed):",
        "",
        f"   curl -sS -X POST {url}/v1/authentication/form \\",
        "     -H \"Authorization: Bearer $MC_API_TOKEN\" -H 'Content-Type: application/json' \\",
        "     -d '{\"account\": null, \"redirectUrl\": \"https://app.example.com/connected\", \"type\": \"<app-id>\"}'",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="azd postprovision hook for Mailbox Connect")
    parser.add_argument("--skip-signing-key", action="store_true",
                        help="do not touch Key Vault; only print the next steps")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    missing = [name for name in REQUIRED_OUTPUTS if not env.get(name)]
    if missing:
        print(f"postprovision: missing {', '.join(missing)}: run this hook through azd "
              "(azd hooks run postprovision) after azd provision.", file=sys.stderr)
        return 2

    if not args.skip_signing_key:
        try:
            client = signing_key.make_client(env["MC_KEY_VAULT_URL"])
            outcome = signing_key.ensure(client)
        except ImportError as exc:
            print(f"postprovision: cannot create the signing key: {exc}.\n"
                  "  Install the app's dependencies (make deps, or python -m pip install -r requirements.txt)\n"
                  "  and run: azd hooks run postprovision", file=sys.stderr)
            return 2
        print(f"  Key Vault secret {signing_key.SECRET_NAME}: {outcome}.")

    print(next_steps(env, windows=os.name == "nt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
