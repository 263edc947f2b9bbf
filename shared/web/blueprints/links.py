"""``GET /v1/links/{link}`` (scope ``api``): which account a sign-in link produced, to verify the redirect back
(see ``shared.admin.links``)."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/links/{link}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def link_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin.links import link_status as status
    from shared.web.auth import caller_of
    from shared.web.http import json_response

    return json_response(status(req.route_params.get("link"), caller_of(req)))
