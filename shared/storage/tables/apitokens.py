"""API tokens: only SHA-256 hashes are stored; the row key is the hash, so a lookup is one point read.

A token may be restricted to OAuth apps and/or account ids (``apps``, ``accounts``: JSON lists on the row,
absent = no restriction); restrictions exist only on ``api``-scope tokens. What they allow is decided in
``shared.core.access``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar, get_args

from shared.schemas import TokenScope
from shared.storage.errors import storage_errors
from shared.storage.tables.client import table
from shared.storage.tables.records import Record, get_or_none, query, utcnow

TABLE = "apitokens"
PARTITION = "token"
TOKEN_PREFIX = "mc_"
BOOTSTRAP_PREFIX = "mcb_"  # the one-time admin bootstrap (shared.admin.bootstrap); never stored in this table
SCOPES: tuple[TokenScope, ...] = get_args(TokenScope)


class ApiToken(Record):
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("apps", "accounts")
    id: str
    name: str
    scopes: str  # comma-separated
    tokenHash: str
    created: datetime
    apps: list[str] | None = None  # None: every OAuth app
    accounts: list[str] | None = None  # None: every account

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)

    @property
    def restricted(self) -> bool:
        return self.apps is not None or self.accounts is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(name: str, scopes: tuple[str, ...] = ("api",), *, apps: Sequence[str] | None = None,
                 accounts: Sequence[str] | None = None) -> tuple[str, ApiToken]:
    """A random 32-byte token, returned once; the caller must show it and forget it.

    ``apps``/``accounts`` restrict it (``None``: no restriction; an empty list is refused, it would allow
    nothing); a restricted token has exactly the ``api`` scope."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    if (apps is not None and not apps) or (accounts is not None and not accounts):
        raise ValueError("a restriction lists at least one app or account (leave it out for none)")
    if (apps is not None or accounts is not None) and set(scopes) != {"api"}:
        raise ValueError("a token restricted to apps or accounts has only the api scope")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken(id=secrets.token_hex(8), name=name, scopes=",".join(sorted(set(scopes))),
                      tokenHash=hash_token(token), created=utcnow(),
                      apps=None if apps is None else list(dict.fromkeys(apps)),
                      accounts=None if accounts is None else list(dict.fromkeys(accounts)))
    with storage_errors():
        table(TABLE).create_entity(record.to_entity(PARTITION, record.tokenHash))
    return token, record


def find_token(token: str) -> ApiToken | None:
    """The record of a presented token, or None. One point read; no caching, so revocation is immediate."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128 or not token.isascii():
        return None
    digest = hash_token(token)
    entity = get_or_none(table(TABLE), PARTITION, digest)
    if entity is None:
        return None
    record = ApiToken.from_entity(entity)
    return record if hmac.compare_digest(record.tokenHash, digest) else None


def admin_token_exists() -> bool:
    """Whether any token has the ``admin`` scope (ends the admin bootstrap). One query: every scope set but
    exactly ``api`` includes ``admin``; the Python check keeps that true if scopes are ever added."""
    rows = query(table(TABLE), "PartitionKey eq @pk and scopes ne @api", select=["scopes"],
                 parameters={"pk": PARTITION, "api": "api"}, results_per_page=100)
    return any("admin" in str(row.get("scopes") or "").split(",") for row in rows)


def list_tokens() -> list[ApiToken]:
    return [ApiToken.from_entity(e) for e in query(table(TABLE), f"PartitionKey eq '{PARTITION}'")]


def revoke_token(token_id: str) -> bool:
    for record in list_tokens():
        if record.id == token_id:
            with storage_errors():
                table(TABLE).delete_entity(PARTITION, record.tokenHash)
            return True
    return False
