"""``POST /v1/authentication/form`` (EmailEngine's hosted-authentication form)."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/authentication/form", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api("api")
def authentication_form(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin.forms import create_form_link
    from shared.schemas import FormRequest
    from shared.settings import get_settings
    from shared.web.auth import caller_of
    from shared.web.http import json_response, parse_json

    form = parse_json(req, FormRequest)
    return json_response(create_form_link(form, get_settings(), caller_of(req)))
