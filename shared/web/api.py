"""The decorator every JSON API handler wears: token scope check and error mapping, imported lazily, and the
request's one log line (``shared.web.logs``).

Blueprints import this module at start-up, so it imports only ``azure.functions`` and the standard library
(``shared.web.logs`` too, which configures logging then); :func:`shared.web.http.call_api` (pydantic, the
services) loads on the first request.
"""


import functools
from collections.abc import Callable

import azure.functions as func

from shared.web.logs import logged

Handler = Callable[[func.HttpRequest], func.HttpResponse]


def api(scope: str | None) -> Callable[[Handler], Handler]:
    """A JSON API handler: requires an API token with ``scope`` (``None``: public) and maps failures to
    clear 4xx/503 answers (:func:`shared.web.http.call_api`, imported on the first request); logs one line
    per request (:func:`shared.web.logs.logged`)."""

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)  # keeps the signature the worker binds by: (req: func.HttpRequest)
        def handler(req: func.HttpRequest) -> func.HttpResponse:
            from shared.web.http import call_api

            return call_api(fn, req, scope)

        return logged(handler)

    return decorate
