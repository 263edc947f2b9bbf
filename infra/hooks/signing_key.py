"""Create the link- and cookie-signing key once: Key Vault secret ``mc-signing-key``.

Why here and not in the Bicep template: a secret written by a template passes through a template
parameter (``newGuid()`` defaults included), and every ``azd provision`` would re-run it and silently
rotate the key. This script runs on the admin's machine with the admin's own Entra login (``azd auth
login`` or ``az login``; the template grants the admin Key Vault Secrets Officer), so the value goes
straight from this process to Key Vault: it is never printed, logged, written to disk, or part of any
deployment, parameter or output.

It creates the key when the vault has none, leaves an existing key alone (so re-running ``azd provision``
never invalidates links in flight), and recovers a soft-deleted one (purge protection forbids purging).
The admin's Key Vault role is assigned by the same deployment and can take minutes to reach Key Vault,
so a 403 is retried for a while. The postprovision hook calls :func:`ensure`; by hand:

    MC_KEY_VAULT_URL=$(azd env get-value MC_KEY_VAULT_URL) .venv/bin/python infra/hooks/signing_key.py

Rotation is the admin CLI's job (``python -m shared.cli ensure-signing-key --rotate``, then restart the
function app); see docs/deploy.md.

The value is 64 URL-safe characters from ``secrets.token_urlsafe(48)`` (384 bits); the app uses the
secret's text as the HMAC key (``shared/keys.py``, at least 32 characters).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from typing import Any, Callable

SECRET_NAME = "mc-signing-key"
CONTENT_TYPE = "text/plain"
TAGS = {"purpose": "mailbox-connect link and cookie signing key"}
# A role assignment made by the same `azd provision` can take minutes to reach Key Vault.
RBAC_PROPAGATION_WAIT = 300.0


def new_key() -> str:
    return secrets.token_urlsafe(48)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _deleted_but_recoverable(exc: BaseException) -> bool:
    """Key Vault's 409 for a soft-deleted name (inner error code ObjectIsDeletedButRecoverable)."""
    if _status(exc) != 409:
        return False
    error = getattr(exc, "error", None)
    inner = getattr(error, "innererror", None) or {}
    codes = {getattr(error, "code", None), inner.get("code") if isinstance(inner, dict) else None}
    return "ObjectIsDeletedButRecoverable" in codes or "ObjectIsDeletedButRecoverable" in str(exc)


def _with_rbac_wait(call: Callable[[], Any], sleep: Callable[[float], Any], max_wait: float) -> Any:
    """Run ``call``, retrying a 403 while the admin's fresh role assignment propagates."""
    waited = 0.0
    delay = 10.0
    while True:
        try:
            return call()
        except Exception as exc:  # azure.core.exceptions.HttpResponseError and subclasses
            if _status(exc) != 403 or waited + delay > max_wait:
                raise
            print(
                f"  Key Vault answered 403; waiting {delay:.0f}s for the role assignment to propagate ...",
                file=sys.stderr,
            )
            sleep(delay)
            waited += delay


def ensure(client: Any, *, sleep: Callable[[float], Any] = time.sleep, max_wait: float = RBAC_PROPAGATION_WAIT) -> str:
    """Make sure ``mc-signing-key`` exists. Returns ``"present"``, ``"created"`` or ``"recovered"``."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    try:
        _with_rbac_wait(lambda: client.get_secret(SECRET_NAME), sleep, max_wait)
        return "present"
    except ResourceNotFoundError:
        pass
    try:
        _with_rbac_wait(
            lambda: client.set_secret(SECRET_NAME, new_key(), content_type=CONTENT_TYPE, tags=TAGS),
            sleep,
            max_wait,
        )
        return "created"
    except HttpResponseError as exc:
        if not _deleted_but_recoverable(exc):
            raise
    # Deleted but recoverable (soft delete): bring the old key back rather than inventing a new one.
    client.begin_recover_deleted_secret(SECRET_NAME).wait()
    return "recovered"


def make_client(vault_url: str) -> Any:
    """A SecretClient authenticated as the admin (azd login, az login, or environment credentials)."""
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    credential = DefaultAzureCredential(
        exclude_managed_identity_credential=True,
        exclude_interactive_browser_credential=True,
    )
    return SecretClient(vault_url=vault_url, credential=credential)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vault-url", default=os.environ.get("MC_KEY_VAULT_URL", ""),
                        help="Key Vault URL (default: $MC_KEY_VAULT_URL)")
    args = parser.parse_args(argv)
    if not args.vault_url:
        parser.error("set MC_KEY_VAULT_URL or pass --vault-url (azd env get-value MC_KEY_VAULT_URL)")
    try:
        client = make_client(args.vault_url)
    except ImportError as exc:
        print(f"signing_key: {exc}. Install the app's dependencies first: "
              "python -m pip install -r requirements.txt", file=sys.stderr)
        return 2
    print(f"  Key Vault secret {SECRET_NAME}: {ensure(client)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
