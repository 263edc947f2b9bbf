"""``POST /v1/authentication/form`` (EmailEngine's hosted-authentication form)."""

import azure.functions as func

from shared.auth import require_token
from shared.forms import create_form_link
from shared.http import api_handler, json_response, parse_json
from shared.models import FormRequest
from shared.settings import get_settings

bp = func.Blueprint()


@bp.route(route="v1/authentication/form", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api_handler
def authentication_form(req: func.HttpRequest) -> func.HttpResponse:
    require_token(req, "api")
    form = parse_json(req, FormRequest)
    return json_response(create_form_link(form, get_settings()))
