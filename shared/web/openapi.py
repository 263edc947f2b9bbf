"""The OpenAPI 3.1 document of the service, generated from the pydantic models the handlers use.

``OPERATIONS`` lists every HTTP route with its models; schemas come from ``model_json_schema`` (JSON Schema
2020-12, OpenAPI 3.1's dialect) with their ``$defs`` moved to ``components/schemas``. ``tests/test_openapi.py``
checks that every route registered on ``function_app.app`` is listed here with the same methods (and
nothing else), and that the document validates as OpenAPI 3.1. Served at ``GET /v1/openapi.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared import schemas as m
from shared.schemas import ErrorBody, FormRequest, FormResponse

VERSION = "1.0.0"
REF = "#/components/schemas/{model}"

_ERRORS = {
    400: "Bad input: invalid JSON, an unknown field, or an invalid value (`field` names it)",
    401: "No API token, or a token that is not valid or was revoked",
    403: "The API token lacks the scope this operation needs (a token restricted to apps or accounts has only `api`)",
    404: "Not found",
    409: "Conflict with the current state (see `error`)",
    410: "Gone",
    413: "The body is too large",
    415: "The body is not application/json",
    502: "Microsoft refused the request",
    503: "A dependency is temporarily unavailable; retry after `Retry-After` seconds",
}

_PATH_PARAMS = {
    "account": "The account id",
    "app": "The OAuth app id",
    "id": "The API token id",
    "webhook": "The webhook id",
    "deadletter": "The dead letter id (`<webhook id>.<event id>`)",
    "link": "The link id (`link` of the form's answer and of the redirect back)",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    scope: str | None  # None: no API token
    response: type[BaseModel] | None = None
    status: int = 200
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    description: str = ""
    error_models: dict[int, type[BaseModel]] = field(default_factory=dict)
    raw_response: dict[str, Any] | None = None  # for non-JSON answers (hosted pages)


OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/v1/authentication/form", "createAuthenticationForm",
              "Create a hosted sign-in link (EmailEngine's form)", "authentication", "api",
              FormResponse, request=FormRequest, errors=(400, 404, 413, 415),
              description="No storage write: the link carries every field, signed, and expires. Keep the answer's "
                          "`link` with your user and verify the redirect back with `GET /v1/links/{link}`. "
                          "A token restricted to apps or accounts creates links only for them (404 for an "
                          "existing account outside them)."),
    Operation("GET", "/v1/links/{link}", "getLinkStatus", "Verify the redirect back: the account a link produced",
              "authentication", "api", m.LinkStatus, errors=(400, 404),
              description="Answers which account the sign-in of this link wrote, so an app can check the "
                          "redirect's `account` (and `state`) against the link it made for this user instead of "
                          "trusting the URL. 404 when the link is unknown, did not (yet) produce an account, or "
                          "its account is outside the token's restriction. Kept at least a day after the sign-in."),
    Operation("GET", "/v1/accounts", "listAccounts", "List accounts (numbered pages or a cursor)", "accounts", "api",
              m.AccountList, query=m.AccountListQuery, errors=(400,),
              description="Without `cursor`: EmailEngine's numbered page `page` (0-based) with `total`, `page` and "
                          "`pages` (a page starts at most 50,000 accounts in: 400 `page_too_deep`; `query` searches "
                          "at most 50,000: 400 `query_too_broad`). Every answer has `nextCursor`: pass it as "
                          "`cursor` to go on (no count, no limit); a cursor page may hold fewer than `pageSize` "
                          "accounts while `nextCursor` is set, only `nextCursor: null` ends the listing."),
    Operation("POST", "/v1/account", "createDelegatedAccount",
              "Connect a shared mailbox with the sign-in of an existing account", "accounts", "api",
              m.AccountCreated, request=m.AccountCreate, errors=(400, 404, 409, 413, 415),
              description="EmailEngine's `oauth2.auth.delegatedAccount`: no new sign-in. The mailbox access check "
                          "must prove, with a fresh token of that account's credential, that its signer opens "
                          "`oauth2.auth.delegatedUser`: 403 `mailbox_access_denied`/`mailbox_not_found` when it "
                          "refuses, 503 `access_not_proven` when it cannot run (409 when checks are off). 404: "
                          "`delegatedAccount` unknown (or outside the token's restriction); 409: an existing "
                          "account of that id may not move to this signer (the sign-in's codes), or "
                          "`consent_required`; 403 `OauthRenewError`: the credential no longer renews."),
    Operation("GET", "/v1/account/{account}", "getAccount", "Read an account", "accounts", "api",
              m.AccountInfo, errors=(400, 404)),
    Operation("PUT", "/v1/account/{account}", "updateAccount", "Update an account's name and settings", "accounts",
              "api", m.AccountInfo, request=m.AccountUpdate, errors=(400, 404, 413, 415),
              description="Answers the account (`account` first, EmailEngine's answer)."),
    Operation("DELETE", "/v1/account/{account}", "deleteAccount", "Delete an account", "accounts", "api",
              m.AccountDeleted, query=m.AccountDeleteQuery, errors=(400, 404),
              description="The stored refresh token is deleted with the last account that uses it. `revoke=true`: "
                          "`revoked` says whether it was (Microsoft itself has no endpoint to revoke one app's "
                          "grant; see the README)."),
    Operation("POST", "/v1/account/{account}/reauth", "reauthenticateAccount",
              "Create a sign-in link that re-authorises an account", "accounts", "api", FormResponse,
              request=m.ReauthRequest, errors=(400, 404, 409, 413, 415),
              description="The link keeps the account's id, mailbox, app and `delegated`, and hints the "
                          "current signer (`login_hint`, `domain_hint`). The redirect back carries "
                          "`state=existing` (and `signerChanged=true` when another person signed in and "
                          "was allowed to take the account over: README, \"Who a mailbox belongs to\")."),
    Operation("GET", "/v1/account/{account}/oauth-token", "getAccountOAuthToken",
              "Get a fresh access token for the mailbox", "accounts", "api", m.OAuthTokenResponse,
              errors=(400, 404, 409),
              error_models={403: m.OauthRenewErrorBody},
              description="EmailEngine's fields (`user`: the signer, also for a shared mailbox; `expires` with "
                          "milliseconds; `cached`) beside the `imap`/`smtp`/`graph` blocks. 403 `OauthRenewError` "
                          "(EmailEngine's): the token could not be renewed; `authenticationFailed: true`: the user "
                          "must sign in again (`POST /v1/account/{account}/reauth`), `false`: Microsoft refused "
                          "the OAuth app (`errorCode`, e.g. `invalid_client`). 409 `app_unavailable`: the app "
                          "was deleted."),
    Operation("POST", "/v1/oauth2", "createOAuthApp", "Register an OAuth app", "oauth2", "admin",
              m.OAuthAppInfo, status=201, request=m.OAuthAppCreate, errors=(400, 413, 415)),
    Operation("GET", "/v1/oauth2", "listOAuthApps", "List OAuth apps", "oauth2", "admin", m.OAuthAppList),
    Operation("GET", "/v1/oauth2/{app}", "getOAuthApp", "Read an OAuth app", "oauth2", "admin", m.OAuthAppInfo,
              errors=(400, 404)),
    Operation("PUT", "/v1/oauth2/{app}", "updateOAuthApp", "Update an OAuth app (partial)", "oauth2", "admin",
              m.OAuthAppInfo, request=m.OAuthAppUpdate, errors=(400, 404, 413, 415)),
    Operation("DELETE", "/v1/oauth2/{app}", "deleteOAuthApp", "Delete an unused OAuth app", "oauth2", "admin",
              m.OAuthAppDeleted, errors=(400, 404, 409),
              description="409 `app_in_use` while accounts use the app."),
    Operation("POST", "/v1/tokens", "createApiToken", "Mint an API token (shown once)", "tokens", "admin",
              m.ApiTokenCreated, status=201, request=m.ApiTokenCreate, errors=(400, 413, 415),
              description="`apps` and/or `accounts` restrict an `api` token: every route then answers only for "
                          "those accounts (others are 404, listings leave them out) and forms only for those "
                          "apps. A restricted token cannot have the `admin` scope (400)."),
    Operation("GET", "/v1/tokens", "listApiTokens", "List API tokens (never the tokens)", "tokens", "admin",
              m.ApiTokenList),
    Operation("DELETE", "/v1/tokens/{id}", "revokeApiToken", "Revoke an API token", "tokens", "admin",
              m.ApiTokenDeleted, errors=(400, 404),
              description="Refused from the next request on."),
    Operation("POST", "/v1/webhooks", "createWebhook", "Register a webhook (its secret is shown once)", "webhooks",
              "admin", m.WebhookCreated, status=201, request=m.WebhookCreate, errors=(400, 413, 415),
              description="Events are POSTed as JSON (see `webhooks` in this document), signed twice with the "
                          "secret: EmailEngine's `X-EE-Wh-Signature` (base64url HMAC-SHA256 of the raw body) and "
                          "`X-MC-Signature: v1=<hex HMAC-SHA256(secret, timestamp + \".\" + body)>` with "
                          "`X-MC-Timestamp` (refuses replays); `X-EE-Wh-Event-Id` = `X-MC-Event-Id` is the event "
                          "id to dedupe on. Undelivered events "
                          "are retried with exponential backoff for 24 hours, then kept as dead letters."),
    Operation("GET", "/v1/webhooks", "listWebhooks", "List webhooks (API and settings)", "webhooks", "admin",
              m.WebhookList),
    Operation("DELETE", "/v1/webhooks/{webhook}", "deleteWebhook", "Delete a webhook", "webhooks", "admin",
              m.WebhookDeleted, errors=(404, 409),
              description="Its undelivered events and dead letters are dropped. 409 `configured_in_settings` for "
                          "a webhook from `MC_WEBHOOK_URLS`."),
    Operation("GET", "/v1/webhooks/deadletters", "listDeadLetters", "List events that could not be delivered",
              "webhooks", "admin", m.DeadLetterList),
    Operation("POST", "/v1/webhooks/deadletters/{deadletter}/resend", "resendDeadLetter",
              "Send a dead letter again", "webhooks", "admin", m.DeadLetterResent, status=202, errors=(400, 404, 409),
              description="Queued at once, with a new 24-hour retry window; same event id and body."),
    Operation("DELETE", "/v1/webhooks/deadletters/{deadletter}", "discardDeadLetter", "Discard a dead letter",
              "webhooks", "admin", m.DeadLetterDeleted, errors=(400, 404)),
    Operation("GET", "/v1/openapi.json", "getOpenApiDocument", "This document", "meta", None,
              raw_response={"description": "The OpenAPI 3.1 document",
                            "content": {"application/json": {"schema": {"type": "object"}}}}),
    Operation("GET", "/accounts/new", "startSignIn", "Hosted: open a sign-in link (browser)", "hosted", None,
              description="Verifies the link and redirects the browser to Microsoft. A link that names no OAuth "
                          "app while several may be used first answers the app chooser page (200): its options "
                          "open the same link with `app=<id>`.",
              raw_response={"description": "Redirect to Microsoft's sign-in page",
                            "headers": {"Location": {"schema": {"type": "string"}}}}),
    Operation("GET", "/oauth", "completeSignIn", "Hosted: Microsoft's redirect back (browser)", "hosted", None,
              description="Finishes the sign-in and redirects to the app's redirectUrl with "
                          "`account` and `state=new|existing`, or `error` and `error_description` (and `link`), "
                          "keeping the redirectUrl's own query parameters and `#fragment`.",
              raw_response={"description": "Redirect to the app's redirectUrl",
                            "headers": {"Location": {"schema": {"type": "string"}}}}),
)

_HOSTED_QUERY = {
    "/accounts/new": [("data", "The signed link data"), ("sig", "The link signature"),
                      ("app", "The OAuth app picked on the app chooser page (only for a link that names none)")],
    "/oauth": [("code", "Authorization code"), ("state", "OAuth state"), ("error", "OAuth error"),
               ("error_description", "OAuth error description")],
}


SchemaKey = tuple[type[BaseModel], JsonSchemaMode]
Refs = dict[SchemaKey, dict[str, Any]]  # (model, mode) -> {"$ref": ...}


def _schemas() -> tuple[Refs, dict[str, Any]]:
    wanted: list[SchemaKey] = [(ErrorBody, "serialization"), (m.WebhookEvent, "serialization")]
    for op in OPERATIONS:
        if op.request:
            wanted.append((op.request, "validation"))
        if op.query:
            wanted.append((op.query, "validation"))
        if op.response:
            wanted.append((op.response, "serialization"))
        wanted += [(model, "serialization") for model in op.error_models.values()]
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=REF)
    return {key: refs[key] for key in unique}, top.get("$defs", {})


def _query_parameters(op: Operation, refs: Refs, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    if op.query is not None:
        name = refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[1]
        model = schemas.pop(name)  # inlined as parameters; not a body schema
        required = set(model.get("required", ()))
        params = []
        for prop, schema in model["properties"].items():
            schema = dict(schema)
            description = schema.pop("description", None)
            schema.pop("title", None)
            branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
            if "anyOf" in schema and len(branches) == 1:  # Optional[X]: a query parameter is absent, not null
                schema = {**{k: v for k, v in schema.items() if k not in ("anyOf", "default")}, **branches[0]}
            param = {"name": prop, "in": "query", "required": prop in required, "schema": schema}
            if description:
                param["description"] = description
            params.append(param)
        return params
    return [{"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
            for n, d in _HOSTED_QUERY.get(op.path, [])]


def _error(status: int, schema_ref: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": _ERRORS[status],
                                "content": {"application/json": {"schema": schema_ref}}}
    if status == 503:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}
    return response


def _webhooks(refs: Refs) -> dict[str, Any]:
    """OpenAPI 3.1 ``webhooks``: what the service POSTs to a registered webhook."""
    headers = [
        ("X-EE-Wh-Signature", "EmailEngine's signature: base64url (unpadded) HMAC-SHA256(secret, raw body)"),
        ("X-EE-Wh-Event-Id", "EmailEngine's name of the event id (the same as `X-MC-Event-Id`)"),
        ("X-EE-Wh-Attempts-Made", "EmailEngine's: attempts made before this one (0 for the first)"),
        ("X-MC-Event-Id", "The event id: the same on every retry; dedupe on it"),
        ("X-MC-Event", "The event type"),
        ("X-MC-Timestamp", "Unix seconds when this attempt was signed; reject if more than 5 minutes off"),
        ("X-MC-Signature", "`v1=<hex HMAC-SHA256(secret, X-MC-Timestamp + \".\" + raw body)>`"),
        ("X-MC-Attempt", "1 for the first attempt"),
    ]
    return {"lifecycleEvent": {"post": {
        "operationId": "lifecycleEvent",
        "summary": "An account was added and initialized, signed in, lost its credential or access, or deleted",
        "description": "Answer 2xx within 10 seconds. Anything else is retried with exponential backoff (10 s "
                       "doubling up to 1 hour) for 24 hours; then the event is a dead letter "
                       "(`GET /v1/webhooks/deadletters`). Delivery is at least once: dedupe by `id`.",
        "parameters": [{"name": n, "in": "header", "required": True, "description": d, "schema": {"type": "string"}}
                       for n, d in headers],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": refs[(m.WebhookEvent, "serialization")]}}},
        "responses": {"200": {"description": "Received (any 2xx)"}},
        "security": [],
    }}}


@lru_cache(maxsize=4)
def _document(server_url: str) -> dict[str, Any]:
    refs, schemas = _schemas()
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
        description = op.description
        if op.scope:
            description = (description + "\n\n" if description else "") + f"Needs an API token with scope `{op.scope}`."
            operation["x-required-scope"] = op.scope
        else:
            operation["security"] = []
        if description:
            operation["description"] = description
        parameters = [{"name": name, "in": "path", "required": True, "description": _PATH_PARAMS[name],
                       "schema": {"type": "string"}} for name in re.findall(r"{(\w+)}", op.path)]
        parameters += _query_parameters(op, refs, schemas)
        if parameters:
            operation["parameters"] = parameters
        if op.request is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(op.request, "validation")]}}}
        if op.raw_response is not None:
            success = op.raw_response
        elif op.response is not None:
            success = {"description": {200: "OK", 201: "Created", 202: "Accepted"}[op.status],
                       "content": {"application/json": {"schema": refs[(op.response, "serialization")]}}}
        else:
            raise ValueError(f"{op.operation_id}: neither a response model nor a raw response")
        responses: dict[str, Any] = {str(302 if op.tag == "hosted" else op.status): success}
        statuses = set(op.errors) | ({401, 403, 503} if op.scope else set())
        if op.tag == "hosted":
            html = {"text/html": {"schema": {"type": "string"}}}
            responses["400"] = {"description": "A hosted error page", "content": html}
            if op.path == "/accounts/new":
                responses["200"] = {"description": "The app chooser page", "content": html}
        else:
            for status in sorted(statuses):
                ref = refs[(op.error_models[status], "serialization")] if status in op.error_models else error_ref
                if status in op.error_models:
                    ref = {"anyOf": [ref, error_ref]}
                responses[str(status)] = _error(status, ref)
        operation["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mailbox Connect",
            "version": VERSION,
            "description": "Hosted authentication for Microsoft 365 mailboxes (own and shared), with "
                           "EmailEngine's field names. Every `/v1` call needs `Authorization: Bearer <api token>` "
                           "except this document; errors are `{\"error\", \"message\", \"field\"?}`.",
        },
        "servers": [{"url": server_url}],
        "webhooks": _webhooks(refs),
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "An API token (`mc_...`) with scope `api` or `admin`, or the one-time admin bootstrap "
                               "token (`mcb_...`: scope `admin` only, until an admin token exists)"}},
        },
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document for a deployment at ``server_url`` (built once per URL and process)."""
    return _document(server_url.rstrip("/"))
