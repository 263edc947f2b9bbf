"""The pages a person's browser visits: ``/accounts/new`` (to Microsoft) and ``/oauth`` (back to the app)."""

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

from shared.web.logs import logged

if TYPE_CHECKING:
    from shared.signin.flow import Chooser, Redirect

bp = func.Blueprint()
log = logging.getLogger("mailbox_connect.hosted")

# No authorization code or sign-in state in any log line the service writes. Ours never carry a query string,
# a code or a state (the sign-in logs account ids and outcomes; these pages never log a URL or a Location; the
# request line of shared.web.logs has the path only). The libraries that would (the Azure SDK's HTTP logging
# policy: storage URLs, and a pending sign-in's row is keyed by its state; MSAL: the token request with the
# code at DEBUG; urllib3: request lines) are capped in shared.web.logs, imported above, so when the function
# app is imported. ``tests/leakcheck.py`` treats codes and states as secrets in every log record of the run.


@bp.route(route="accounts/new", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@logged
def accounts_new(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.signin import flow as signin

    params = _text_params(req)
    # `app`: the person's pick on the app chooser (a link that names no OAuth app; shared.signin.flow)
    return _hosted(lambda: signin.start(params.get("data"), params.get("sig"), get_settings(), params.get("app")))


@bp.route(route="oauth", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@logged
def oauth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.signin import flow as signin

    params = _text_params(req)
    return _hosted(lambda: signin.complete(params, parse_cookies(req.headers.get("cookie")), get_settings()))


def _text_params(req: func.HttpRequest) -> dict[str, str]:
    """The query as well-formed text: an unpaired surrogate (which the Functions host does not produce, but a
    host or a test might) becomes U+FFFD, as invalid UTF-8 does; it can then only fail to match, never fail
    to encode half-way through a sign-in."""
    return {k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            for k, v in req.params.items() if isinstance(k, str) and isinstance(v, str)}


def _hosted(action: Callable[[], "Redirect | Chooser"]) -> func.HttpResponse:
    from shared.errors import is_transient
    from shared.signin.flow import Chooser, HostedError

    try:
        result = action()
    except HostedError as exc:
        response = page_response(exc.kind, mailbox=exc.mailbox, retry_url=exc.retry_url)
        return _with_cookies(response, exc.cookies)
    except Exception as exc:  # noqa: BLE001 - a person gets a page, never a stack trace
        if not is_transient(exc):
            log.exception("unhandled error on a hosted page")
        return page_response("unavailable")
    if isinstance(result, Chooser):
        return chooser_response(result)
    response = func.HttpResponse(status_code=302, headers={**_security_headers(), "Location": result.location})
    return _with_cookies(response, result.cookies)


def page_response(kind: str, **details: str | None) -> func.HttpResponse:
    from shared.errors import DEFAULT_RETRY_AFTER
    from shared.signin.pages import page

    html, status = page(kind, **details)
    headers = _security_headers()
    if status == 503:  # every 503 says when to come back, a page for a person too
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER)
    return func.HttpResponse(html, status_code=status, headers=headers, mimetype="text/html", charset="utf-8")


def chooser_response(result: "Chooser") -> func.HttpResponse:
    """The app chooser page (200), with the hosted pages' headers (its links carry the signed link: no-store,
    no referrer)."""
    from shared.signin.pages import chooser

    html = chooser(result.choices, mailbox=result.mailbox, stale=result.stale)
    return func.HttpResponse(html, status_code=200, headers=_security_headers(), mimetype="text/html",
                             charset="utf-8")


def _security_headers() -> dict[str, str]:
    """The hosted pages' headers; HSTS when ``MC_PUBLIC_URL`` is https (Azure: TLS ends in front of the host,
    so the request itself may look like http; the public URL is where browsers are sent). Never fails: a
    settings error leaves HSTS out rather than the page."""
    from shared.settings import get_settings
    from shared.signin.pages import security_headers

    try:
        https = get_settings().public_url.lower().startswith("https://")
    except Exception:  # noqa: BLE001 - the page must still render
        https = False
    return security_headers(https)


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
