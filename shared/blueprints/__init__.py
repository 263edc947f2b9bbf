"""HTTP blueprints, one per area. Handlers parse, call a service function and render; nothing more.

Cold start: the Functions worker imports every blueprint (through ``function_app``) when an instance starts,
so a blueprint imports only ``azure.functions`` and the standard library at module level; each handler
imports what it needs (services, models, settings) when it first runs, so a token hand-off never loads
the OpenAPI builder or the webhook code. ``tests/test_cold_start.py`` guards this.
"""

import functools
from typing import Callable, Optional

import azure.functions as func

Handler = Callable[[func.HttpRequest], func.HttpResponse]


def api(scope: Optional[str]) -> Callable[[Handler], Handler]:
    """A JSON API handler: requires an API token with ``scope`` (``None``: public) and maps failures to
    clear 4xx/503 answers (:func:`shared.http.call_api`, imported on the first request)."""

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)  # keeps the signature the worker binds by: (req: func.HttpRequest)
        def handler(req: func.HttpRequest) -> func.HttpResponse:
            from shared.http import call_api

            return call_api(fn, req, scope)

        return handler

    return decorate
