"""azd postprovision hook: make Key Vault ready for the service, then print what the admin does next.

azd runs this after every ``azd provision`` / ``azd up`` through postprovision.sh or .ps1, which give it its
own virtualenv (``infra/hooks/.venv``, with ``infra/hooks/requirements.txt``), with the outputs of
infra/bicep/main.bicep and azd's environment values in the environment. It:

1. makes sure Key Vault secret ``mc-signing-key`` exists (``signing_key.ensure``: created once, never
   rotated by a re-provision, the value never printed), signed in as azd's own principal first
   (``azure_access``), waiting out the propagation of the role assignment this deployment just made;
2. with private networking (``MC_PRIVATE_NETWORKING=true``) does that through Azure Resource Manager, since
   this machine cannot reach the vault, and issues a one-time admin bootstrap token (``admin_bootstrap``)
   unless an earlier run did; ``--bootstrap-admin`` (or ``MC_BOOTSTRAP_ADMIN=true``, which also works through
   ``azd hooks run``) issues a new one in either mode;
3. prints the OAuth redirect URI and the next commands: the admin CLI's with public networking, or the
   HTTPS requests that use the bootstrap token.

Exit codes, and why. The hook must not stop ``azd up`` for a reason outside the admin's control. When the
work cannot be finished (Key Vault still answers 403 after the wait, sign-in or the network fails, or, in
postprovision.sh / .ps1, no usable Python, venv or pip), it prints a loud warning that says why, that the
service may lack its signing key until it has run (on a first deployment, sign-in links fail), and the one
command that finishes the job, ``azd hooks run postprovision``, and exits **0**, so ``azd up`` goes on to
deploy the code. Every step is idempotent, so that command is all it takes; a non-zero exit would instead
stop ``azd up`` before the deploy, for a role assignment that merely had not arrived yet.

* 0: done, or not finished with the warning above;
* 1: not finished, with ``MC_HOOK_STRICT=true`` (pipelines that must fail rather than deploy a service
  without its key);
* 2: misuse, which the admin controls: not run through azd (outputs missing), or a bad argument.

Why wrappers and not azd's own Python hooks (``run: postprovision.py`` with a requirements.txt beside it,
azd 1.23.15 and later): older azd versions reject a ``.py`` hook, and a missing Python would then fail the
hook and stop ``azd up``. The wrappers work with any azd that has ``azd hooks run`` (1.4.0 or later).

Settings (environment, or ``azd env set`` for the first two): ``MC_HOOK_RBAC_WAIT_SECONDS`` (how long a 403
is retried, default 600), ``MC_HOOK_STRICT``, and ``MC_BOOTSTRAP_ADMIN`` for one run only (kept in the azd
environment, every provision would issue a new bootstrap token). ``--skip-signing-key`` only prints (tests,
or an admin without Key Vault rights).

The admin CLI reads the same MC_* settings as the app. Environment variables win over local.settings.json,
and an empty value removes a setting, so the printed commands blank the local-only settings a developer's
local.settings.json may hold (a connection string to Azurite would otherwise take precedence).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOOKS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(HOOKS_DIR))

import admin_bootstrap  # noqa: E402  (sibling scripts, not a package)
import azure_access  # noqa: E402
import signing_key  # noqa: E402
from azure_access import AdminCredential, HookError, RbacWait  # noqa: E402

# Outputs of main.bicep the hook needs; with private networking also the coordinates of the vault in ARM.
REQUIRED_OUTPUTS = ("MC_PUBLIC_URL", "MC_OAUTH_REDIRECT_URI", "MC_TABLES_ENDPOINT", "MC_KEY_VAULT_URL")
PRIVATE_OUTPUTS = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_KEY_VAULT_NAME",
                   "AZURE_RESOURCE_MANAGER_ENDPOINT")
FINISH_COMMAND = "azd hooks run postprovision"
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


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


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


@dataclass
class Outcome:
    """What the Key Vault work did: a bootstrap issued now (token, expiry), one found from earlier, a problem."""

    issued: tuple[str, int] | None = None
    earlier: bool = False
    problem: str | None = None


def _sign_in_link_step(number: int, url: str, token_hint: str) -> list[str]:
    return [
        f"{number}. Ask for a sign-in link (MC_API_TOKEN = {token_hint}, type = the OAuth app's id):",
        "",
        f"   curl -sS -X POST {url}/v1/authentication/form \\",
        "     -H \"Authorization: Bearer $MC_API_TOKEN\" -H 'Content-Type: application/json' \\",
        "     -d '{\"account\": null, \"redirectUrl\": \"https://app.example.com/connected\", \"type\": \"<app-id>\"}'",
        "",
    ]


def _cli_steps(env: dict[str, str], windows: bool) -> list[str]:
    """Public networking: the admin CLI talks to the deployed storage and Key Vault with the admin's login."""
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
    return [
        "Run the commands from the repository root, in the project's virtualenv (make deps; . .venv/bin/activate),",
        "logged in as this admin (az login or azd auth login): the CLI uses your own Entra login, which this",
        "deployment granted the roles it needs.",
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
        *_sign_in_link_step(4, env["MC_PUBLIC_URL"], "the token from step 2"),
    ]


def _bootstrap_steps(env: dict[str, str], outcome: Outcome, windows: bool) -> list[str]:
    """The admin API over HTTPS with the bootstrap token: all an admin outside the private network can reach."""
    url = env["MC_PUBLIC_URL"]
    lines = ["1. In Entra ID > App registrations, add the redirect URI above to your app (platform: Web).", ""]
    if outcome.issued:
        token, expires = outcome.issued
        tenant = env.get("AZURE_TENANT_ID") or "<tenant-id>"
        return lines + admin_bootstrap.instructions(url, token, expires, tenant, first=2, windows=windows) + [
            "", *_sign_in_link_step(5, url, "the token from step 4")]
    again = (f"$env:MC_BOOTSTRAP_ADMIN='true'; {FINISH_COMMAND}; Remove-Item Env:MC_BOOTSTRAP_ADMIN" if windows
             else f"MC_BOOTSTRAP_ADMIN=true {FINISH_COMMAND}")
    if outcome.earlier:
        return lines + [
            "2. Mint your admin API token with the admin bootstrap token an earlier run of this hook printed (Key",
            f"   Vault secret {admin_bootstrap.SECRET_NAME} holds its hash; it works for 24 hours, until the first",
            "   admin token exists). Lost or expired? Issue a new one (it replaces the old one):",
            "",
            f"   {again}",
            "",
        ]
    return lines + [
        "2. Once this hook has finished, it prints an admin bootstrap token and the requests that use it.",
        "",
    ]


def next_steps(env: dict[str, str], *, windows: bool = False, private: bool = False,
               outcome: Outcome | None = None) -> str:
    outcome = outcome or Outcome()
    lines = [
        "",
        "Mailbox Connect is provisioned.",
        "",
        f"  Service URL         {env['MC_PUBLIC_URL']}",
        f"  OAuth redirect URI  {env['MC_OAUTH_REDIRECT_URI']}",
        f"  Key Vault           {env.get('AZURE_KEY_VAULT_NAME', env['MC_KEY_VAULT_URL'])}",
        f"  Storage account     {env.get('AZURE_STORAGE_ACCOUNT_NAME', env['MC_TABLES_ENDPOINT'])}",
        "  Networking          " + ("private: storage and Key Vault only inside the virtual network" if private
                                     else "public"),
        "",
        "Next steps (docs/deploy.md has the details).",
        "",
    ]
    if private or outcome.issued:
        lines += _bootstrap_steps(env, outcome, windows)
    else:
        lines += _cli_steps(env, windows)
    return "\n".join(lines)


# --- Key Vault --------------------------------------------------------------------------------------------

def explain_forbidden(exc: Exception, env: dict[str, str], admin: AdminCredential, wait: RbacWait,
                      private: bool) -> str:
    """Why a 403 outlasted the wait, naming the principal that got it and the one the roles went to."""
    scope = (f"{azure_access.arm_endpoint(env)}/.default" if private
             else azure_access.vault_scope(env["MC_KEY_VAULT_URL"]))
    who = admin.principal(scope)
    if azure_access.firewall_refusal(exc):
        return (f"Key Vault refused this machine's network (signed in as {who}): the vault is reachable only from\n"
                "its own network. Deploy with private networking (the hook then writes through Azure Resource\n"
                "Manager), or run the hook from a machine inside that network.")
    granted = env.get("AZURE_PRINCIPAL_ID", "")
    oid = str(admin.claims.get("oid", ""))
    granted_to = f"AZURE_PRINCIPAL_ID={granted}" if granted else "unknown (AZURE_PRINCIPAL_ID is not set)"
    lines = [
        f"{wait.service} still answered 403 Forbidden after {wait.elapsed():.0f}s of waiting for the role assignment",
        f"(MC_HOOK_RBAC_WAIT_SECONDS={wait.max_wait:.0f} sets how long).",
        f"  Signed in as:      {who}",
        f"  Roles granted to:  {granted_to}",
    ]
    if granted and oid and oid.lower() != granted.lower():
        lines += [
            "These differ: the hook is signed in as someone else than the principal the deployment granted its",
            "roles to. Sign in as that principal (azd auth login; also az login if azd is not signed in), or run",
            "azd provision signed in as the identity above, so the roles go to it.",
        ]
    elif granted:
        lines.append("They are the same: the role assignment has not reached the service yet. Wait a few minutes.")
    elif admin.used == "azd auth login":
        lines += [
            "The roles went to the principal azd was signed in as during azd provision: normally this one, so",
            "the assignment has not reached the service yet (wait a few minutes), unless another login provisioned.",
        ]
    else:
        lines += [
            f"azd's own sign-in did not work here, so the hook used {admin.used}; the roles went to the principal",
            "azd was signed in as during azd provision. Sign in as that principal: azd auth login.",
        ]
    return "\n".join(lines)


def prepare_key_vault(env: dict[str, str], admin: AdminCredential, client: Any, wait: RbacWait, *,
                      private: bool, bootstrap: bool, now: float) -> Outcome:
    """The signing key, then the admin bootstrap when asked for (or, privately, when there is none yet)."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    try:
        print(f"  Key Vault secret {signing_key.SECRET_NAME}: {signing_key.ensure(client, wait)}.")
        outcome = Outcome()
        if bootstrap or (private and not admin_bootstrap.exists(client, wait)):
            outcome.issued = admin_bootstrap.issue(client, wait, now)
            print(f"  Key Vault secret {admin_bootstrap.SECRET_NAME}: written (the bootstrap token's hash).")
        else:
            outcome.earlier = private
        if admin.used:
            print(f"  Signed in as {azure_access.describe_principal(admin.claims)} with {admin.used}.")
        return outcome
    except HookError as exc:
        return Outcome(problem=str(exc))
    except ClientAuthenticationError as exc:  # before AzureError: no sign-in worked, or a 401
        return Outcome(problem=exc.message)
    except AzureError as exc:
        if azure_access.status_of(exc) == 403:
            return Outcome(problem=explain_forbidden(exc, env, admin, wait, private))
        return Outcome(problem=f"{wait.service} failed: {exc.message}")


def not_done(problem: str, env: dict[str, str]) -> int:
    """The loud warning of an unfinished run; 0 so azd up goes on (1 with MC_HOOK_STRICT=true)."""
    bar = "=" * 100
    print("\n".join([
        "", bar,
        "WARNING: the postprovision hook did NOT finish.",
        "",
        *("  " + line for line in problem.splitlines()),
        "",
        f"Until it has run, the service may have no signing key (Key Vault secret {signing_key.SECRET_NAME}): on a",
        "first deployment its sign-in links and hosted pages fail. Fix the above, then finish the job from the",
        "repository root with:",
        "",
        f"    {FINISH_COMMAND}",
        bar, "",
    ]), file=sys.stderr, flush=True)
    return 1 if is_true(env.get("MC_HOOK_STRICT")) else 0


def main(argv: list[str] | None = None, *, credential: AdminCredential | None = None, store: Any = None,
         sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic,
         now: Callable[[], float] = time.time) -> int:
    """``credential``, ``store``, ``sleep``, ``clock`` and ``now`` replace the real ones in tests."""
    parser = argparse.ArgumentParser(description="azd postprovision hook for Mailbox Connect")
    parser.add_argument("--skip-signing-key", action="store_true",
                        help="do not touch Key Vault; only print the next steps")
    parser.add_argument("--bootstrap-admin", action="store_true",
                        help="issue a new one-time admin bootstrap token (also: MC_BOOTSTRAP_ADMIN=true)")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    private = is_true(env.get("MC_PRIVATE_NETWORKING"))
    missing = [name for name in REQUIRED_OUTPUTS + (PRIVATE_OUTPUTS if private else ()) if not env.get(name)]
    if missing:
        print(f"postprovision: missing {', '.join(missing)}: run this hook through azd "
              f"({FINISH_COMMAND}) after azd provision.", file=sys.stderr)
        return 2

    outcome = Outcome()
    if not args.skip_signing_key:
        try:
            admin = credential or azure_access.admin_credential(env)
            client = store or azure_access.open_secrets(env, admin, private=private)
        except ImportError as exc:
            outcome.problem = (f"cannot import the Azure SDK ({exc}). Run the hook through postprovision.sh / "
                               ".ps1, which install\ninfra/hooks/requirements.txt into infra/hooks/.venv.")
        else:
            wait = RbacWait(max_wait=azure_access.rbac_wait_seconds(env), sleep=sleep, clock=clock,
                            service="Azure Resource Manager" if private else "Key Vault")
            outcome = prepare_key_vault(env, admin, client, wait, private=private, now=now(),
                                        bootstrap=args.bootstrap_admin or is_true(env.get("MC_BOOTSTRAP_ADMIN")))

    print(next_steps(env, windows=os.name == "nt", private=private, outcome=outcome), flush=True)
    return not_done(outcome.problem, env) if outcome.problem else 0

if __name__ == "__main__":
    sys.exit(main())
