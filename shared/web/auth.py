"""API authentication: ``Authorization: Bearer <api token>``, checked against stored hashes on every call.

A ``mcb_`` token is the one-time admin bootstrap of a private deployment (:mod:`shared.admin.bootstrap`)."""

from __future__ import annotations

import azure.functions as func

from shared.errors import Forbidden, Unauthorized
from shared.storage.tables.apitokens import BOOTSTRAP_PREFIX, ApiToken, find_token


def require_token(req: func.HttpRequest, scope: str = "api") -> ApiToken:
    header = req.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <api token>",
                           headers={"WWW-Authenticate": 'Bearer realm="mailbox-connect"'})
    token = token.strip()
    if token.startswith(BOOTSTRAP_PREFIX):  # the one-time admin bootstrap; mc_ tokens never pay for it
        from shared.admin.bootstrap import authenticate

        record = authenticate(token)
    else:
        record = find_token(token)
    if record is None:
        raise Unauthorized("the API token is not valid or was revoked",
                           headers={"WWW-Authenticate": 'Bearer realm="mailbox-connect", error="invalid_token"'})
    if scope not in record.scope_set:
        raise Forbidden(f"the API token lacks the {scope!r} scope")
    return record
