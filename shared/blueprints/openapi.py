"""``GET /v1/openapi.json``: the OpenAPI 3.1 document (no API token needed; see ``shared.openapi``)."""

import azure.functions as func

from shared.http import api_handler, json_response
from shared.settings import get_settings

bp = func.Blueprint()


@bp.route(route="v1/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api_handler
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    from shared.openapi import openapi_document as build  # imported on first use, not at cold start

    return json_response(build(get_settings().public_url), headers={"Cache-Control": "public, max-age=300"})
