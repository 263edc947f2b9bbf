"""Small helpers shared by the blueprints: JSON in, JSON out, errors as ``{"error", "message", "field"}``.

Handlers stay thin: ``call_api`` (behind ``shared.web.blueprints.api``) checks the API token and turns
``ApiError``, validation errors and transient dependency failures into clear 4xx/503 answers, so a bad
request never surfaces as a 500. Handlers import this module on their first call, not at start-up;
pydantic, the secret store and the token tables are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import azure.functions as func

from shared.errors import (
    ApiError,
    Internal,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    is_transient,
    unavailable,
)

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

log = logging.getLogger("mailbox_connect")
M = TypeVar("M", bound="BaseModel")
MAX_BODY = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    from pydantic import BaseModel

    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json", exclude_none=True)
    return func.HttpResponse(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        headers={"X-Content-Type-Options": "nosniff", **NO_STORE, **(headers or {})},
        mimetype="application/json",
        charset="utf-8",
    )


def error_response(error: ApiError) -> func.HttpResponse:
    return json_response(error.body(), error.status, error.headers)


def parse_json(req: func.HttpRequest, model: type[M]) -> M:
    content_type = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_json")
    return validate(model, data)


def validate(model: type[M], data: Any) -> M:
    """``model.model_validate(data)``, its first validation error as a 400 answer."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__") or None
    if first.get("type") == "extra_forbidden":
        return InvalidInput(f"unknown field: {field}", field=field, code="unknown_field")
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return InvalidInput(f"{field}: {message}" if field else message, field=field)


def call_api(fn: Callable[[func.HttpRequest], func.HttpResponse], req: func.HttpRequest,
             scope: str | None) -> func.HttpResponse:
    """Run a JSON API handler: require an API token with ``scope`` (``None``: public), map known failures to
    clear answers; log (never echo) anything unexpected."""
    from shared.storage.errors import StorageUnavailable
    from shared.storage.secrets.base import SecretStoreUnavailable

    try:
        if scope is not None:
            from shared.web.auth import require_token

            require_token(req, scope)
        return fn(req)
    except ApiError as exc:
        return error_response(exc)
    except SecretStoreUnavailable as exc:
        return error_response(unavailable("the secret store", exc.retry_after))
    except StorageUnavailable as exc:  # Table Storage unreachable, 5xx or 429 (shared.storage.errors)
        log.warning("transient dependency failure: %s", type(exc.__cause__ or exc).__name__)
        return error_response(unavailable("a storage dependency", exc.retry_after))
    except Exception as exc:  # noqa: BLE001 - the edge: classify, never leak details
        if is_transient(exc):
            log.warning("transient dependency failure: %s", type(exc).__name__)
            return error_response(unavailable("a storage dependency"))
        log.exception("unhandled error in %s", fn.__name__)
        return error_response(Internal())
