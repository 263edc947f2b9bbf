"""OAuth apps (scope ``admin``): ``/v1/oauth2`` (create, list) and ``/v1/oauth2/{app}`` (read, update, delete)."""

import azure.functions as func

from shared.web.api import api

bp = func.Blueprint()


@bp.route(route="v1/oauth2", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def oauth_apps_create(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apps as service
    from shared.schemas import OAuthAppCreate
    from shared.settings import get_settings
    from shared.web.http import json_response, parse_json

    body = parse_json(req, OAuthAppCreate)
    return json_response(service.create_app(body, get_settings()), 201)


@bp.route(route="v1/oauth2", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def oauth_apps_list(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apps as service
    from shared.settings import get_settings
    from shared.web.http import json_response

    return json_response(service.list_apps(get_settings()))


@bp.route(route="v1/oauth2/{app}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def oauth_apps_get(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apps as service
    from shared.settings import get_settings
    from shared.web.http import json_response

    return json_response(service.get_app(req.route_params.get("app"), get_settings()))


@bp.route(route="v1/oauth2/{app}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def oauth_apps_update(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apps as service
    from shared.schemas import OAuthAppUpdate
    from shared.settings import get_settings
    from shared.web.http import json_response, parse_json

    app_id = service.check_app_id(req.route_params.get("app"))
    body = parse_json(req, OAuthAppUpdate)
    return json_response(service.update_app(app_id, body, get_settings()))


@bp.route(route="v1/oauth2/{app}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@api("admin")
def oauth_apps_delete(req: func.HttpRequest) -> func.HttpResponse:
    from shared.admin import apps as service
    from shared.settings import get_settings
    from shared.web.http import json_response

    return json_response(service.delete_app(req.route_params.get("app"), get_settings()))
