"""API tokens through the API (``/v1/tokens``, scope ``admin``): mint (shown once), list, revoke.

Only SHA-256 hashes are stored (``shared.storage.tables.apitokens``); a list never shows a token or its hash.
Revocation deletes the row: the instance that revokes refuses the token from the next request on, every other
instance within ``MC_AUTH_CACHE_SECONDS`` (tokens are verified from an instance-local cache; 0 turns it off).
A token may revoke itself; the admin CLI can always mint a new one (``python -m shared.cli create-token``).

Restricted tokens (``apps`` and/or ``accounts``; enforced through ``shared.core.access.Caller``) have only
the ``api`` scope: asking for ``admin`` with a restriction is a 400, since an admin token could mint itself
an unrestricted one. The apps must exist when the token is minted (a typo would otherwise make a token that
sees nothing); accounts need not, so a token can be minted for an account id before it is connected.
"""

from __future__ import annotations

import re

from shared.errors import InvalidInput, NotFound
from shared.schemas import ID_PATTERN, ApiTokenCreate, ApiTokenCreated, ApiTokenDeleted, ApiTokenInfo, ApiTokenList
from shared.storage.tables import apitokens
from shared.storage.tables import apps as app_table
from shared.storage.tables.apitokens import ApiToken


def _info(record: ApiToken) -> ApiTokenInfo:
    scopes = [s for s in sorted(record.scope_set) if s in apitokens.SCOPES]
    return ApiTokenInfo(id=record.id, name=record.name, scopes=scopes, apps=record.apps, accounts=record.accounts,
                        created=record.created)


def check_token_id(value: str | None) -> str:
    if not value or not re.match(ID_PATTERN, value):
        raise InvalidInput("id: not a valid API token id", field="id")
    return value


def create_token(body: ApiTokenCreate) -> ApiTokenCreated:
    if body.apps is not None or body.accounts is not None:
        if set(body.scopes) != {"api"}:
            raise InvalidInput("scopes: a token restricted to apps or accounts can only have the api scope",
                               field="scopes", code="restricted_admin_token")
        for index, app_id in enumerate(body.apps or ()):
            if app_table.get_app(app_id) is None:
                raise InvalidInput(f"apps.{index}: no OAuth app with id {app_id!r}", field=f"apps.{index}",
                                   code="unknown_app")
    token, record = apitokens.create_token(body.name, tuple(body.scopes), apps=body.apps, accounts=body.accounts)
    return ApiTokenCreated(**_info(record).model_dump(), token=token)


def list_tokens() -> ApiTokenList:
    records = sorted(apitokens.list_tokens(), key=lambda r: (r.created, r.id))
    return ApiTokenList(tokens=[_info(r) for r in records])


def revoke_token(token_id: str) -> ApiTokenDeleted:
    if not apitokens.revoke_token(check_token_id(token_id)):
        raise NotFound(f"no API token with id {token_id!r}")
    return ApiTokenDeleted(id=token_id)
