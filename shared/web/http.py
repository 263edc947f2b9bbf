"""Small helpers shared by the blueprints: JSON in, JSON out, errors as ``{"error", "message", "field"}``.

Handlers stay thin: ``call_api`` (behind ``shared.web.blueprints.api``) checks the API token and turns
``ApiError``, validation errors and transient dependency failures into clear 4xx/503 answers, so a bad
request never surfaces as a 500. Handlers import this module on their first call, not at start-up;
pydantic, the secret store and the token tables are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
import math
import re
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
MAX_DEPTH = 32  # arrays and objects nested deeper are refused before parsing (no RecursionError, no 500)
MAX_NUMBER_DIGITS = 64  # no field needs more; Python itself refuses ints of more than 4,300 digits
# A JSON string (an unterminated one runs to the end, so the scan stays linear) or a bracket.
_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
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
    return validate(model, loads(raw))


def loads(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 ``invalid_json`` that says what is wrong with it.

    Refused before or while parsing, so bad input never reaches a handler as a 500: invalid UTF-8 or JSON,
    nesting deeper than ``MAX_DEPTH`` (the parser would raise ``RecursionError``), numbers of more than
    ``MAX_NUMBER_DIGITS`` digits or that are not finite (``1e999``, ``NaN``, ``Infinity``: not JSON), and a
    body that is not an object. Strings are checked by the request models (``shared.schemas``: no unpaired
    surrogates or non-characters).
    """
    def bad(message: str) -> InvalidInput:
        return InvalidInput(message, code="invalid_json")

    depth = 0
    for token in _STRING_OR_BRACKET.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise bad(f"the body nests arrays and objects deeper than {MAX_DEPTH} levels")
        elif bracket in (b"]", b"}"):
            depth -= 1

    def number(text: str) -> int | float:
        if len(text.lstrip("-").replace(".", "").split("e")[0].split("E")[0]) > MAX_NUMBER_DIGITS:
            raise OverflowError
        value = float(text) if any(c in text for c in ".eE") else int(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise OverflowError
        return value

    def constant(name: str) -> None:
        raise OverflowError

    try:
        data = json.loads(raw.decode("utf-8"), parse_int=number, parse_float=number, parse_constant=constant)
    except OverflowError:
        raise bad(f"the body has a number that is not finite or has more than {MAX_NUMBER_DIGITS} digits") from None
    except RecursionError:  # the depth check above makes this unreachable; a 400, never a 500, regardless
        raise bad("the body nests arrays and objects too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise bad("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad("the body must be a JSON object")
    return data


def validate(model: type[M], data: Any) -> M:
    """``model.model_validate(data)``, its first validation error as a 400 answer."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    """A 400 naming the first invalid field (``code``, ``message``, ``field``) and listing every one (``fields``)."""
    found = [_invalid(e) for e in exc.errors(include_url=False, include_input=False)]
    code, message, field = found[0]
    fields = [{"message": m, "key": f} for _, m, f in found if f] or None
    return InvalidInput(message, field=field, code=code, fields=fields)


def _invalid(error: Any) -> tuple[str, str, str | None]:
    """(code, message, field) of one pydantic error."""
    field = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__") or None
    if field is None and error.get("type") == "invalid_text":  # a model-level check that names the field
        field = str((error.get("ctx") or {}).get("field") or "") or None
        return "invalid_text", error.get("msg", "invalid text"), field
    if error.get("type") == "extra_forbidden":
        return "unknown_field", f"unknown field: {field}", field
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    return "invalid_input", f"{field}: {message}" if field else message, field


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
