"""Errors that cross the HTTP edge, each with the status and the machine-readable code it answers with.

The body is EmailEngine's error envelope (``../shared/emailengine-api.md``, "Errors"): ``statusCode``,
``error`` (the HTTP reason phrase), ``message``, the machine code in ``code``, and on a 400 ``fields`` with
every invalid field (``[{"message", "key"}]``); ``field`` (the first invalid one) is this service's own.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

DEFAULT_RETRY_AFTER = 5  # seconds, when the failed dependency did not say


class ApiError(Exception):
    """A client-visible failure of the JSON API, answered in the envelope of the module docstring."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.fields = fields if fields is not None else ([{"message": message, "key": field}] if field else None)
        self.headers = dict(headers or {})
        if status == 503:  # every 503 says when to come back; Busy sets it, this is the safety net
            self.headers.setdefault("Retry-After", str(DEFAULT_RETRY_AFTER))

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"statusCode": self.status, "error": reason_phrase(self.status),
                                "message": self.message, "code": self.code}
        if self.field:
            body["field"] = self.field
        if self.fields:
            body["fields"] = self.fields
        return body


# EmailEngine (Node, Boom) spells a few phrases unlike Python's http module; the rest agree.
_NODE_PHRASES = {413: "Payload Too Large", 422: "Unprocessable Entity"}


def reason_phrase(status: int) -> str:
    """The ``error`` of the envelope: the reason phrase as EmailEngine's clients see it."""
    try:
        return _NODE_PHRASES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class InvalidInput(ApiError):
    """400: the request broke a rule; ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid_input",
                 fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(400, code, message, field=field, fields=fields)


class Unauthorized(ApiError):
    """401: no API token, or one that is not valid."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(401, "unauthorized", message, headers=headers)


class Forbidden(ApiError):
    """403: a valid API token without the scope the route needs."""

    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


class TokenRenewalFailed(ApiError):
    """403 ``OauthRenewError`` (EmailEngine's status and code): an account's access token could not be renewed;
    ``shared.handoff.tokens`` adds the details. Not ``Forbidden``: that one is about the API token."""

    def __init__(self, message: str) -> None:
        super().__init__(403, "OauthRenewError", message)


class NotFound(ApiError):
    """404: the named thing does not exist (or is not visible to the caller)."""

    def __init__(self, message: str, *, code: str = "not_found") -> None:
        super().__init__(404, code, message)


class Conflict(ApiError):
    """409: the request is valid but the current state refuses it; ``code`` says which state."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(409, code, message)


class PayloadTooLarge(ApiError):
    """413: the request body is larger than the service accepts."""

    def __init__(self, message: str) -> None:
        super().__init__(413, "payload_too_large", message)


class UnsupportedMediaType(ApiError):
    """415: the request body is not in a format the route accepts."""

    def __init__(self, message: str) -> None:
        super().__init__(415, "unsupported_media_type", message)


class Internal(ApiError):
    """500: an unexpected failure; the message is generic on purpose (details go to the log, never the client)."""

    def __init__(self, message: str = "an internal error occurred") -> None:
        super().__init__(500, "internal_error", message)


class BadGateway(ApiError):
    """502: an upstream service (Microsoft) refused a request for a reason retrying will not fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(502, code, message)


class Busy(ApiError):
    """503 with ``Retry-After``: nothing changed; the same request may succeed after the wait."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        wait = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
        seconds = str(max(1, math.ceil(wait)))  # whole seconds (RFC 9110), never 0: "retry at once" invites a storm
        super().__init__(503, "unavailable", message, headers={"Retry-After": seconds})


def unavailable(what: str, retry_after: float | None = None) -> Busy:
    """A transient dependency failure: 503 with Retry-After, nothing changed."""
    return Busy(f"{what} is temporarily unavailable; retry later", retry_after=retry_after)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying later: one the storage layer already classified as transient
    (``shared.storage.errors.StorageUnavailable``, marked ``transient``), or network failures and 5xx/429
    answers from Azure SDK clients that did not go through it (without importing the SDK)."""
    if getattr(type(exc), "transient", False) is True:
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ServiceRequestError", "ServiceResponseError", "ConnectionError", "TimeoutError"}:
        return True
    status = getattr(exc, "status_code", None)
    return "HttpResponseError" in names and isinstance(status, int) and (status >= 500 or status == 429)
