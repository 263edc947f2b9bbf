"""Accounts (scope ``api``): ``GET /v1/accounts``, ``POST /v1/account`` (a shared mailbox with an existing account's
sign-in), ``GET|PUT|DELETE /v1/account/{account}`` and ``POST /v1/account/{account}/reauth`` (see
``shared.admin.accounts``)."""

from typing import Any

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()

# Added by platforms in front of Functions (function keys); never a filter of ours.
_IGNORED_QUERY = frozenset({"code"})


def _account_body(info: Any) -> dict[str, Any]:
    """An account as JSON: without unset fields, but ``lastError`` always (null when there is none), as
    EmailEngine answers it."""
    body: dict[str, Any] = info.model_dump(mode="json", exclude_none=True)
    body.setdefault("lastError", None)
    return body


@bp.route(route="v1/accounts", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def accounts_list(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import accounts as service
    from shared.schemas import AccountListQuery
    from shared.settings import get_settings
    from shared.web.auth import caller_of
    from shared.web.http import json_response, validate

    # The Functions host joins a repeated name with "," and drops empty values; both then fail validation
    # (or fall back to the default) rather than being half-understood.
    params = {k: v for k, v in req.params.items() if k.lower() not in _IGNORED_QUERY}
    query = validate(AccountListQuery, params)
    result = service.list_accounts(query, get_settings(), caller=caller_of(req))
    body = result.model_dump(mode="json", exclude_none=True)
    body["accounts"] = [_account_body(a) for a in result.accounts]
    body["nextCursor"] = result.nextCursor  # explicit null on the last page
    return json_response(body)


@bp.route(route="v1/account", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def accounts_create(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import accounts as service
    from shared.schemas import AccountCreate
    from shared.settings import get_settings
    from shared.web.auth import caller_of
    from shared.web.http import json_response, parse_json

    body = parse_json(req, AccountCreate)
    return json_response(service.create_delegated(body, get_settings(), caller=caller_of(req)))


@bp.route(route="v1/account/{account}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def accounts_get(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import accounts as service
    from shared.web.auth import caller_of
    from shared.web.http import json_response

    return json_response(_account_body(service.get_account(req.route_params.get("account"), caller=caller_of(req))))


@bp.route(route="v1/account/{account}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def accounts_update(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import accounts as service
    from shared.checks import account_id_param
    from shared.schemas import AccountUpdate
    from shared.web.auth import caller_of
    from shared.web.http import json_response, parse_json

    account_id = account_id_param(req.route_params.get("account"))
    body = parse_json(req, AccountUpdate)
    return json_response(_account_body(service.update_account(account_id, body, caller=caller_of(req))))


@bp.route(route="v1/account/{account}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def accounts_delete(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import accounts as service
    from shared.schemas import AccountDeleteQuery
    from shared.settings import get_settings
    from shared.web.auth import caller_of
    from shared.web.http import json_response, validate

    params = {k: v for k, v in req.params.items() if k.lower() not in _IGNORED_QUERY}
    query = validate(AccountDeleteQuery, params)
    return json_response(service.delete_account(req.route_params.get("account"), get_settings(),
                                                caller=caller_of(req), revoke=query.revoke))


@bp.route(route="v1/account/{account}/reauth", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def accounts_reauth(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import accounts as service
    from shared.checks import account_id_param
    from shared.schemas import ReauthRequest
    from shared.settings import get_settings
    from shared.web.auth import caller_of
    from shared.web.http import json_response, parse_json

    account_id = account_id_param(req.route_params.get("account"))
    body = parse_json(req, ReauthRequest)
    return json_response(service.reauth_link(account_id, body, get_settings(), caller=caller_of(req)))
