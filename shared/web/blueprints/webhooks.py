"""Webhooks (scope ``admin``): ``POST|GET /v1/webhooks``, ``DELETE /v1/webhooks/{webhook}``, and the dead
letters: ``GET /v1/webhooks/deadletters``, ``POST /v1/webhooks/deadletters/{deadletter}/resend``,
``DELETE /v1/webhooks/deadletters/{deadletter}`` (see ``shared.webhooks.dispatcher``)."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/webhooks", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def webhooks_create(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import webhooks
    from shared.schemas import WebhookCreate
    from shared.settings import get_settings
    from shared.web.http import json_response, parse_json

    body = parse_json(req, WebhookCreate)
    return json_response(webhooks.create_webhook(body, get_settings()), 201)


@bp.route(route="v1/webhooks", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def webhooks_list(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import webhooks
    from shared.settings import get_settings
    from shared.web.http import json_response

    return json_response(webhooks.list_webhooks(get_settings()))


@bp.route(route="v1/webhooks/{webhook}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def webhooks_delete(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import webhooks
    from shared.settings import get_settings
    from shared.web.http import json_response

    return json_response(webhooks.delete_webhook(req.route_params.get("webhook"), get_settings()))


@bp.route(route="v1/webhooks/deadletters", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def webhooks_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import webhooks
    from shared.web.http import json_response

    return json_response(webhooks.list_dead_letters())


@bp.route(route="v1/webhooks/deadletters/{deadletter}/resend", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def webhooks_dead_letter_resend(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import webhooks
    from shared.settings import get_settings
    from shared.web.http import json_response

    return json_response(webhooks.resend_dead_letter(req.route_params.get("deadletter"), get_settings()), 202)


@bp.route(route="v1/webhooks/deadletters/{deadletter}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def webhooks_dead_letter_discard(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import webhooks
    from shared.web.http import json_response

    return json_response(webhooks.discard_dead_letter(req.route_params.get("deadletter")))
