"""API authentication: ``Authorization: Bearer <api token>``, checked against the stored hashes.

Tokens are verified from an instance-local cache (``shared.storage.tables.apitokens.find_token``): a revoked
token stops working on every instance within ``MC_AUTH_CACHE_SECONDS`` (default 5; 0: a point read per call),
at once on the instance that revoked it. A flood of made-up tokens is answered 503 with ``Retry-After``
beyond a per-instance budget of Table reads, so it cannot overload the token table every instance reads.

A ``mcb_`` token is the one-time admin bootstrap of a private deployment (:mod:`shared.admin.bootstrap`, with
its own caches).

:func:`require_token` (run by ``shared.web.http.call_api`` before the handler) keeps the token it accepted on
the request; the handler gets the :class:`shared.core.access.Caller` from :func:`caller_of` and passes it to
the service, which enforces the token's restriction to OAuth apps or accounts. A restricted token is
refused on every route but ``api`` ones (403), whatever its stored scopes say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import azure.functions as func

from shared.errors import Busy, Forbidden, Unauthorized
from shared.storage.tables.apitokens import BOOTSTRAP_PREFIX, ApiToken, LookupsExhausted, find_token
from shared.web.logs import TOKEN_ATTRIBUTE as _TOKEN_ATTRIBUTE  # the accepted token record, kept on the request

if TYPE_CHECKING:  # pragma: no cover
    from shared.core.access import Caller


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
        try:
            record = find_token(token)
        except LookupsExhausted as exc:
            raise Busy("too many requests with unknown API tokens; retry shortly",
                       retry_after=exc.retry_after) from None
    if record is None:
        raise Unauthorized("the API token is not valid or was revoked",
                           headers={"WWW-Authenticate": 'Bearer realm="mailbox-connect", error="invalid_token"'})
    if scope not in record.scope_set:
        raise Forbidden(f"the API token lacks the {scope!r} scope")
    if scope != "api" and record.restricted:
        raise Forbidden(f"an API token restricted to apps or accounts cannot use {scope!r} operations")
    setattr(req, _TOKEN_ATTRIBUTE, record)
    return record


def caller_of(req: func.HttpRequest) -> Caller:
    """Who calls: the token :func:`require_token` accepted for this request. Fails closed (401) on a request
    that went through no token check (a handler of a public route must not ask)."""
    from shared.core.access import Caller

    record = getattr(req, _TOKEN_ATTRIBUTE, None)
    if not isinstance(record, ApiToken):
        raise Unauthorized("send Authorization: Bearer <api token>",
                           headers={"WWW-Authenticate": 'Bearer realm="mailbox-connect"'})
    return Caller.of(record)
