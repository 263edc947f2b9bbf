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
    from pydantic import ValidationError

    from shared.admin.apitokens import create_token
    from shared.errors import ApiError
    from shared.schemas import ApiTokenCreate

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:  # the API's rules: names, scopes, and a restriction (--app, --account) only on an api token
        body = ApiTokenCreate.model_validate({"name": args.name, "scopes": scopes, "apps": args.app,
                                              "accounts": args.account})
        created = create_token(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    except ApiError as exc:
        raise ValueError(exc.message) from None
    print(json.dumps(created.model_dump(mode="json", exclude_none=True, exclude={"created"})))
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
    """Create Key Vault secret ``mc-signing-key`` once (Azure); never prints the key. ``--rotate``: as
    ``rotate-signing-key`` (open links keep working through the grace period)."""
    from shared.storage.keys import SIGNING_KEY_SECRET
    from shared.storage.secrets.base import SecretNotFound
    from shared.storage.secrets.factory import get_secret_store

    if args.rotate:
        return _rotate_signing_key(args)
    store = get_secret_store()
    try:
        store.get(SIGNING_KEY_SECRET)
        print(f"{SIGNING_KEY_SECRET} exists; nothing to do (rotate it with rotate-signing-key)")
        return 0
    except SecretNotFound:
        pass
    store.set(SIGNING_KEY_SECRET, secrets.token_urlsafe(48))
    print(f"{SIGNING_KEY_SECRET} written")
    return 0


def _rotate_signing_key(args: argparse.Namespace) -> int:
    """A new current key in ``mc-signing-key``; today's key stays accepted for the grace period. Every instance
    signs with the new key within ``shared.storage.keys.REFRESH_SECONDS`` (no restart). Never prints a key."""
    import time

    from shared.settings import get_settings
    from shared.storage.keys import REFRESH_SECONDS, SIGNING_KEY_SECRET, parse_ring, ring_text, rotated
    from shared.storage.secrets.factory import get_secret_store

    settings = get_settings()
    if not settings.key_vault_url:
        raise ValueError("the signing key to rotate is Key Vault secret mc-signing-key: set MC_KEY_VAULT_URL "
                         "(locally the key is MC_SIGNING_KEY: change it and restart; open links stop working)")
    grace = getattr(args, "grace_seconds", None)
    grace = settings.link_max_ttl_seconds + 3600 if grace is None else grace
    if grace < 0:
        raise ValueError("--grace-seconds: 0 or more")
    store = get_secret_store(settings)
    ring = parse_ring(store.get(SIGNING_KEY_SECRET))
    now = time.time()
    if ring.previous is not None and ring.previous_until is not None and now < ring.previous_until and \
            not getattr(args, "force", False):
        left = int(ring.previous_until - now)
        raise ValueError(f"the previous key is still accepted for {left} s (links signed with it are open); "
                         "rotate after that, or pass --force to drop it now")
    store.set(SIGNING_KEY_SECRET, ring_text(rotated(ring, secrets.token_urlsafe(48), grace_seconds=grace, now=now)))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + grace))
    print(f"{SIGNING_KEY_SECRET} rotated: every instance signs with the new key within {int(REFRESH_SECONDS)} s "
          f"(no restart); the previous key is accepted until {until}")
    return 0


def _rotate_data_key(args: argparse.Namespace) -> int:
    """A new current data key for envelope mode (``shared.storage.datakeys``); old keys stay in the ring, so every
    ciphertext keeps opening, and the storage sweeper seals rows again under the new key. Never prints a key."""
    from shared.settings import get_settings
    from shared.storage.datakeys import REFRESH_SECONDS, rotate

    kid = rotate(get_settings())
    print(f"data key rotated: new key id {kid}; every instance seals with it within {int(REFRESH_SECONDS)} s, and "
          "the storage sweeper re-seals older refresh tokens in the background")
    return 0


def _migrate_secrets(args: argparse.Namespace) -> int:
    """Move every refresh token and client secret into the form of ``--to`` (``shared.core.secret_placement``)."""
    from shared.core.secret_placement import migrate
    from shared.settings import get_settings

    settings = get_settings()
    if settings.secret_mode != args.to:
        print(f"note: MC_SECRET_MODE is {settings.secret_mode}; set it to {args.to} on the function app too, so "
              "new sign-ins write that form", file=sys.stderr)
    report = migrate(settings, args.to, progress=lambda text: print(text, file=sys.stderr))
    print(json.dumps({"to": args.to, **report.as_dict()}))
    return 1 if report.busy else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create-token", help="mint an API token (printed once)")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", default="api", help="comma-separated: api, admin (default api)")
    p.add_argument("--app", action="append", metavar="APP_ID",
                   help="restrict the token to this OAuth app (repeatable; scope api only)")
    p.add_argument("--account", action="append", metavar="ACCOUNT_ID",
                   help="restrict the token to this account (repeatable; scope api only)")
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
    p.add_argument("--rotate", action="store_true", help="rotate an existing key (as rotate-signing-key)")
    p.set_defaults(run=_ensure_signing_key)

    p = sub.add_parser("rotate-signing-key", help="a new link-signing key in Key Vault; the previous one stays "
                                                  "accepted for a grace period, so open links keep working")
    p.add_argument("--grace-seconds", type=int, default=None,
                   help="how long the previous key is accepted (default MC_LINK_MAX_TTL_SECONDS + 3600)")
    p.add_argument("--force", action="store_true", help="rotate although the previous key is still in its grace "
                                                        "(links signed with it stop working)")
    p.set_defaults(run=_rotate_signing_key)

    p = sub.add_parser("rotate-data-key", help="a new envelope-mode data key (old ciphertext keeps opening; the "
                                               "sweeper re-seals it in the background)")
    p.set_defaults(run=_rotate_data_key)

    p = sub.add_parser("migrate-secrets", help="move refresh tokens and client secrets between Key Vault secrets "
                                               "(keyvault) and sealed Table rows (envelope); safe to run again")
    p.add_argument("--to", required=True, choices=("keyvault", "envelope"))
    p.set_defaults(run=_migrate_secrets)
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
