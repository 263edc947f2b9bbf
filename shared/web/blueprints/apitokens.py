"""API tokens (scope ``admin``): ``POST /v1/tokens``, ``GET /v1/tokens``, ``DELETE /v1/tokens/{id}``."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/tokens", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def api_tokens_create(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apitokens as service
    from shared.schemas import ApiTokenCreate
    from shared.web.http import json_response, parse_json

    body = parse_json(req, ApiTokenCreate)
    return json_response(service.create_token(body), 201)


@bp.route(route="v1/tokens", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def api_tokens_list(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apitokens as service
    from shared.web.http import json_response

    return json_response(service.list_tokens())


@bp.route(route="v1/tokens/{id}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def api_tokens_revoke(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apitokens as service
    from shared.web.http import json_response

    return json_response(service.revoke_token(req.route_params.get("id")))
