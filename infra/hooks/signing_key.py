"""Create the link- and cookie-signing key once: Key Vault secret ``mc-signing-key``.

Why here and not in the Bicep template: a secret written by a template passes through a template
parameter (``newGuid()`` defaults included), and every ``azd provision`` would re-run it and silently
rotate the key. This script runs on the admin's machine with the admin's own Entra login (the identity
azd used; see azure_access.py), so the value goes straight from this process to Key Vault: it is never
printed, logged, written to disk, or part of any deployment, parameter or output.

It creates the key when the vault has none, leaves an existing key alone (so re-running ``azd provision``
never invalidates links in flight), and recovers a soft-deleted one (purge protection forbids purging).
The admin's role is assigned by the same deployment and can take minutes to apply, so a 403 is retried
(``azure_access.RbacWait``). With private networking the key is written through Azure Resource Manager
(``azure_access.ArmSecrets``). The postprovision hook calls :func:`ensure`; by hand:

    infra/hooks/.venv/bin/python infra/hooks/signing_key.py --vault-url "$(azd env get-value MC_KEY_VAULT_URL)"

Rotation is the admin CLI's job (``python -m shared.cli rotate-signing-key``): it rewrites the secret as a
key ring (the new key, and this one accepted for a grace period), which every instance picks up within
minutes without a restart; see docs/deploy.md. ``ensure`` leaves a ring alone like a plain key.

The value is 64 URL-safe characters from ``secrets.token_urlsafe(48)`` (384 bits); the app uses the
secret's text as the HMAC key (``shared/storage/keys.py``, at least 32 characters).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from azure_access import RbacWait, admin_credential, deleted_but_recoverable, open_secrets  # noqa: E402

SECRET_NAME = "mc-signing-key"
CONTENT_TYPE = "text/plain"
TAGS = {"purpose": "mailbox-connect link and cookie signing key"}


def new_key() -> str:
    return secrets.token_urlsafe(48)


def ensure(client: Any, wait: RbacWait | None = None) -> str:
    """Make sure ``mc-signing-key`` exists. Returns ``"present"``, ``"created"`` or ``"recovered"``."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    wait = wait or RbacWait()
    try:
        wait(lambda: client.get_secret(SECRET_NAME))
        return "present"
    except ResourceNotFoundError:
        pass
    try:
        wait(lambda: client.set_secret(SECRET_NAME, new_key(), content_type=CONTENT_TYPE, tags=TAGS))
        return "created"
    except HttpResponseError as exc:
        if not deleted_but_recoverable(exc):
            raise
    # Deleted but recoverable (soft delete): bring the old key back rather than inventing a new one.
    client.begin_recover_deleted_secret(SECRET_NAME).wait()
    return "recovered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vault-url", default=os.environ.get("MC_KEY_VAULT_URL", ""),
                        help="Key Vault URL (default: $MC_KEY_VAULT_URL)")
    args = parser.parse_args(argv)
    if not args.vault_url:
        parser.error("set MC_KEY_VAULT_URL or pass --vault-url (azd env get-value MC_KEY_VAULT_URL)")
    env = {**os.environ, "MC_KEY_VAULT_URL": args.vault_url}
    client = open_secrets(env, admin_credential(env), private=False)
    print(f"  Key Vault secret {SECRET_NAME}: {ensure(client)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
