"""A one-time admin bootstrap: the first admin API token without reaching Table Storage or Key Vault.

With private networking the admin's machine cannot reach the service's storage or vault, so the admin CLI
cannot mint the first token. Instead the hook makes a random bootstrap token (``mcb_`` + 32 random bytes),
writes ONLY its SHA-256 to Key Vault secret ``mc-admin-bootstrap`` as ``v1:<unix expiry>:<sha256 hex>``
(24 hours), and prints the token once with the requests that use it over HTTPS: ``POST /v1/tokens`` to mint
a real admin token, then ``POST /v1/oauth2`` with that admin token to register the OAuth app. The service
(shared/bootstrap.py, which spells out this format) accepts an ``mcb_`` token, with scope ``admin`` only,
while that secret is unexpired, its hash matches and no admin token exists yet.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import time
from typing import Any

from azure_access import RbacWait, put_secret

SECRET_NAME = "mc-admin-bootstrap"
TOKEN_PREFIX = "mcb_"
LIFETIME_SECONDS = 24 * 3600


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def secret_value(token: str, expires: int) -> str:
    """What Key Vault keeps: a version tag, the expiry, and the token's hash (never the token)."""
    return f"v1:{expires}:{hashlib.sha256(token.encode('utf-8')).hexdigest()}"


def exists(client: Any, wait: RbacWait) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        wait(lambda: client.get_secret(SECRET_NAME))
    except ResourceNotFoundError:
        return False
    return True


def issue(client: Any, wait: RbacWait, now: float) -> tuple[str, int]:
    """Write a new bootstrap (replacing any earlier one); returns the token, to be shown once, and its expiry."""
    token, expires = new_token(), int(now) + LIFETIME_SECONDS
    put_secret(client, SECRET_NAME, secret_value(token, expires), wait)
    return token, expires


def _app_body(tenant: str) -> dict[str, str]:
    return {"name": "outlook", "clientId": "<application-client-id>", "clientSecret": "SECRET",
            "authority": tenant, "cloud": "global", "baseScopes": "imap"}


def instructions(url: str, token: str, expires: int, tenant: str, *, first: int = 1,
                 windows: bool = False) -> list[str]:
    """The token (once) and the exact requests that use it, as steps ``first`` to ``first + 2``."""
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
    admin = json.dumps({"name": "admin", "scopes": ["admin"]})
    api = json.dumps({"name": "first-app", "scopes": ["api"]})
    mint, register, for_app = (
        f"{first}. Mint your admin API token (shown once; keep it in your secret store). The bootstrap token",
        f"{first + 1}. Register the OAuth app with your admin token (client id from Entra; the client secret",
        f"{first + 2}. Mint an API token for your app:",
    )
    mint_more = "   works until this first admin token exists, and never again:"
    lines = [f"Admin bootstrap token (admin scope, valid until {until}; shown only now, Key Vault keeps only its",
             "hash):", ""]
    if windows:
        app = "; ".join(f"{k} = " + ("$secret" if v == "SECRET" else "'" + v.replace("'", "''") + "'")
                        for k, v in _app_body(tenant).items())

        def post(path: str, bearer: str, body: str) -> str:
            return (f"   Invoke-RestMethod -Method Post -Uri '{url}{path}' -ContentType 'application/json' `\n"
                    f"     -Headers @{{ Authorization = \"Bearer $env:{bearer}\" }} -Body {body}")

        return lines + [
            f"   $env:MC_BOOTSTRAP_TOKEN = '{token}'", "",
            mint, mint_more, "", post("/v1/tokens", "MC_BOOTSTRAP_TOKEN", f"'{admin}'"), "",
            register, "   is read at a prompt, so it stays out of your shell history):", "",
            f"   $env:MC_ADMIN_TOKEN = '<the token of step {first}>'",
            "   $secret = Read-Host 'Client secret'",
            post("/v1/oauth2", "MC_ADMIN_TOKEN", f"(ConvertTo-Json @{{ {app} }})"), "",
            for_app, "", post("/v1/tokens", "MC_ADMIN_TOKEN", f"'{api}'"),
        ]
    app = json.dumps(_app_body(tenant)).replace('"SECRET"', '"%s"')
    curl = "curl -sS -X POST -H 'Content-Type: application/json'"
    return lines + [
        f"   export MC_BOOTSTRAP_TOKEN={shlex.quote(token)}", "",
        mint, mint_more, "",
        f"   {curl} -H \"Authorization: Bearer $MC_BOOTSTRAP_TOKEN\" \\",
        f"     -d {shlex.quote(admin)} {shlex.quote(url + '/v1/tokens')}", "",
        register, "   is read at a silent prompt, so it stays out of your shell history and of the process list):", "",
        f"   export MC_ADMIN_TOKEN='<the token of step {first}>'",
        "   read -rs MC_CLIENT_SECRET",
        f"   printf {shlex.quote(app)} \"$MC_CLIENT_SECRET\" | \\",
        f"     {curl} -H \"Authorization: Bearer $MC_ADMIN_TOKEN\" -d @- {shlex.quote(url + '/v1/oauth2')}", "",
        for_app, "",
        f"   {curl} -H \"Authorization: Bearer $MC_ADMIN_TOKEN\" \\",
        f"     -d {shlex.quote(api)} {shlex.quote(url + '/v1/tokens')}",
    ]
