"""``GET /v1/openapi.json``: the OpenAPI 3.1 document (no API token needed; see ``shared.web.openapi``)."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api(None)
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.web.http import json_response
    from shared.web.openapi import openapi_document as build

    return json_response(build(get_settings().public_url), headers={"Cache-Control": "public, max-age=300"})
