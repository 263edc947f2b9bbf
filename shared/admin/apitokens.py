"""API tokens through the API (``/v1/tokens``, scope ``admin``): mint (shown once), list, revoke.

Only SHA-256 hashes are stored (``shared.storage.tables.apitokens``); a list never shows a token or its hash.
Revocation deletes the row, and every request does a point read of its token (no caching), so a revoked
token is refused from the next request on. A token may revoke itself; the admin CLI can always mint a new
one (``python -m shared.cli create-token``).
"""

from __future__ import annotations

import re

from shared.errors import InvalidInput, NotFound
from shared.schemas import ID_PATTERN, ApiTokenCreate, ApiTokenCreated, ApiTokenDeleted, ApiTokenInfo, ApiTokenList
from shared.storage.tables import apitokens
from shared.storage.tables.apitokens import ApiToken


def _info(record: ApiToken) -> ApiTokenInfo:
    scopes = [s for s in sorted(record.scope_set) if s in apitokens.SCOPES]
    return ApiTokenInfo(id=record.id, name=record.name, scopes=scopes, created=record.created)


def check_token_id(value: str | None) -> str:
    if not value or not re.match(ID_PATTERN, value):
        raise InvalidInput("id: not a valid API token id", field="id")
    return value


def create_token(body: ApiTokenCreate) -> ApiTokenCreated:
    token, record = apitokens.create_token(body.name, tuple(body.scopes))
    return ApiTokenCreated(**_info(record).model_dump(), token=token)


def list_tokens() -> ApiTokenList:
    records = sorted(apitokens.list_tokens(), key=lambda r: (r.created, r.id))
    return ApiTokenList(tokens=[_info(r) for r in records])


def revoke_token(token_id: str) -> ApiTokenDeleted:
    if not apitokens.revoke_token(check_token_id(token_id)):
        raise NotFound(f"no API token with id {token_id!r}")
    return ApiTokenDeleted(id=token_id)
