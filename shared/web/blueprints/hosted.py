"""The pages a person's browser visits: ``/accounts/new`` (to Microsoft) and ``/oauth`` (back to the app)."""

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from shared.signin.flow import Redirect

bp = func.Blueprint()
log = logging.getLogger("mailbox_connect.hosted")

# No authorization code or sign-in state in any log line the service writes. Ours never carry a query string,
# a code or a state (the sign-in logs account ids and outcomes; these pages never log a URL or a Location),
# but two libraries would, at levels the Functions host forwards to Application Insights once logging is
# turned up: the Azure SDK's HttpLoggingPolicy logs every storage request URL at INFO, and a pending
# sign-in's row is keyed by its state (``flows(PartitionKey='<state>')``); MSAL's token cache logs the token
# request, authorization code included, at DEBUG. Their loggers are capped here, when the function app is
# imported (so in every worker, before the first request); a level set higher elsewhere is kept.
# ``tests/leakcheck.py`` treats codes and states as secrets in every log record of the test run.
LIBRARY_LOG_LEVELS = {
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,  # request URLs (row keys)
    "msal": logging.INFO,  # the token request at DEBUG, with the authorization code
}


def quiet_library_loggers() -> None:
    for name, level in LIBRARY_LOG_LEVELS.items():
        logger = logging.getLogger(name)
        if logger.level < level:  # NOTSET (0) too: an explicit level holds even if the root is lowered later
            logger.setLevel(level)


quiet_library_loggers()


@bp.route(route="accounts/new", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def accounts_new(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.signin import flow as signin

    params = _text_params(req)
    return _hosted(lambda: signin.start(params.get("data"), params.get("sig"), get_settings()))


@bp.route(route="oauth", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
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


def _hosted(action: Callable[[], "Redirect"]) -> func.HttpResponse:
    from shared.errors import is_transient
    from shared.signin.flow import HostedError

    try:
        result = action()
    except HostedError as exc:
        response = page_response(exc.kind, mailbox=exc.mailbox, retry_url=exc.retry_url)
        return _with_cookies(response, exc.cookies)
    except Exception as exc:  # noqa: BLE001 - a person gets a page, never a stack trace
        if not is_transient(exc):
            log.exception("unhandled error on a hosted page")
        return page_response("unavailable")
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
