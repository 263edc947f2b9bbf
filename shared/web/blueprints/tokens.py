"""``GET /v1/account/{account}/oauth-token``: a fresh access token for one mailbox (see ``shared.handoff.tokens``)."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/account/{account}/oauth-token", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def account_oauth_token(req: func.HttpRequest) -> func.HttpResponse:
    from shared.checks import account_id_param
    from shared.handoff.tokens import hand_off
    from shared.settings import get_settings
    from shared.web.auth import caller_of
    from shared.web.http import json_response

    account_id = account_id_param(req.route_params.get("account"))
    result = hand_off(account_id, get_settings(), caller=caller_of(req))
    return json_response(result.model_dump(mode="json", by_alias=True, exclude_none=True))
