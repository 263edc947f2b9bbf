"""The pages a person's browser visits: ``/accounts/new`` (to Microsoft) and ``/oauth`` (back to the app)."""

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from shared.signin.flow import Redirect

bp = func.Blueprint()
log = logging.getLogger("mailbox_connect.hosted")


@bp.route(route="accounts/new", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def accounts_new(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.signin import flow as signin

    return _hosted(lambda: signin.start(req.params.get("data"), req.params.get("sig"), get_settings()))


@bp.route(route="oauth", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def oauth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.signin import flow as signin

    params = {k: v for k, v in req.params.items() if isinstance(v, str)}
    return _hosted(lambda: signin.complete(params, parse_cookies(req.headers.get("cookie")), get_settings()))


def _hosted(action: Callable[[], "Redirect"]) -> func.HttpResponse:
    from shared.errors import is_transient
    from shared.signin.flow import HostedError
    from shared.signin.pages import SECURITY_HEADERS

    try:
        result = action()
    except HostedError as exc:
        response = page_response(exc.kind, mailbox=exc.mailbox, retry_url=exc.retry_url)
        return _with_cookies(response, exc.cookies)
    except Exception as exc:  # noqa: BLE001 - a person gets a page, never a stack trace
        if not is_transient(exc):
            log.exception("unhandled error on a hosted page")
        return page_response("unavailable")
    response = func.HttpResponse(status_code=302, headers={**SECURITY_HEADERS, "Location": result.location})
    return _with_cookies(response, result.cookies)


def page_response(kind: str, **details: str | None) -> func.HttpResponse:
    from shared.errors import DEFAULT_RETRY_AFTER
    from shared.signin.pages import SECURITY_HEADERS, page

    html, status = page(kind, **details)
    headers = dict(SECURITY_HEADERS)
    if status == 503:  # every 503 says when to come back, a page for a person too
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER)
    return func.HttpResponse(html, status_code=status, headers=headers, mimetype="text/html", charset="utf-8")


def _with_cookies(response: func.HttpResponse, cookies: list[str]) -> func.HttpResponse:
    for cookie in cookies:
        response.headers.add("Set-Cookie", cookie)
    return response


def parse_cookies(header: str | None) -> dict[str, str]:
    """Lenient, unlike ``http.cookies``: one malformed cookie from elsewhere must not hide ours."""
    cookies: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies
