"""``GET /v1/account/{account}/oauth-token``: a fresh access token for one mailbox (see ``shared.tokens``)."""

import azure.functions as func

from shared.blueprints import api

bp = func.Blueprint()


@bp.route(route="v1/account/{account}/oauth-token", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def account_oauth_token(req: func.HttpRequest) -> func.HttpResponse:
    from shared.http import json_response
    from shared.settings import get_settings
    from shared.tokens import hand_off, parse_account_id

    account_id = parse_account_id(req.route_params.get("account"))
    result = hand_off(account_id, get_settings())
    return json_response(result.model_dump(mode="json", by_alias=True, exclude_none=True))
