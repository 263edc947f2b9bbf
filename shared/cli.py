"""Admin CLI: ``python -m shared.cli <command>``. Reads the same MC_* settings as the service.

Locally it works against Azurite and the local secret store (local.settings.json); against Azure, export
``MC_TABLES_ENDPOINT`` and ``MC_KEY_VAULT_URL`` and it uses your own ``az login`` identity.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from typing import get_args

from shared.clouds import BaseScopes, Cloud


def _create_token(args: argparse.Namespace) -> int:
    from shared.storage.tables.apitokens import create_token

    scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    token, record = create_token(args.name, scopes)
    print(json.dumps({"id": record.id, "name": record.name, "scopes": list(record.scope_set), "token": token}))
    print("Store this token now: it is shown once and cannot be read back.", file=sys.stderr)
    return 0


def _add_app(args: argparse.Namespace) -> int:
    from shared.core.apps import register_app
    from shared.settings import get_settings

    secret = args.client_secret
    if secret in (None, "-"):
        secret = sys.stdin.readline().strip()
    app = register_app(name=args.name, client_id=args.client_id, client_secret_value=secret,
                       authority=args.authority, cloud=args.cloud, base_scopes=args.base_scopes,
                       extra_scopes=tuple(args.extra_scope or ()), settings=get_settings())
    print(json.dumps({"id": app.id, "name": app.name, "clientId": app.clientId, "authority": app.authority,
                      "cloud": app.cloud, "baseScopes": app.baseScopes}))
    print(f"Use \"type\": \"{app.id}\" in POST /v1/authentication/form.", file=sys.stderr)
    return 0


def _list_apps(args: argparse.Namespace) -> int:
    from shared.storage.tables.apps import list_apps

    for app in list_apps():
        print(json.dumps({"id": app.id, "name": app.name, "clientId": app.clientId, "enabled": app.enabled,
                          "cloud": app.cloud, "baseScopes": app.baseScopes}))
    return 0


def _ensure_signing_key(args: argparse.Namespace) -> int:
    """Create Key Vault secret ``mc-signing-key`` once (Azure); never prints the key."""
    from shared.storage.keys import SIGNING_KEY_SECRET
    from shared.storage.secrets.base import SecretNotFound
    from shared.storage.secrets.factory import get_secret_store

    store = get_secret_store()
    try:
        store.get(SIGNING_KEY_SECRET)
        exists = True
    except SecretNotFound:
        exists = False
    if exists and not args.rotate:
        print(f"{SIGNING_KEY_SECRET} exists; nothing to do (use --rotate to replace it)")
        return 0
    store.set(SIGNING_KEY_SECRET, secrets.token_urlsafe(48))
    print(f"{SIGNING_KEY_SECRET} written; restart the function app so every instance reads it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create-token", help="mint an API token (printed once)")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", default="api", help="comma-separated: api, admin (default api)")
    p.set_defaults(run=_create_token)

    p = sub.add_parser("add-app", help="register a Microsoft OAuth app; prints the id to use as 'type'")
    p.add_argument("--name", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", help="the client secret, or '-' (default) to read it from stdin")
    p.add_argument("--authority", default="organizations", help="common | organizations | <tenant id>")
    p.add_argument("--cloud", default="global", choices=get_args(Cloud))
    p.add_argument("--base-scopes", default="imap", choices=get_args(BaseScopes))
    p.add_argument("--extra-scope", action="append", help="an extra scope (repeatable)")
    p.set_defaults(run=_add_app)

    p = sub.add_parser("list-apps", help="list registered OAuth apps (never their secrets)")
    p.set_defaults(run=_list_apps)

    p = sub.add_parser("ensure-signing-key", help="create the link-signing key in Key Vault (Azure)")
    p.add_argument("--rotate", action="store_true", help="replace an existing key (invalidates open links)")
    p.set_defaults(run=_ensure_signing_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
