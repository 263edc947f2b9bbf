"""Errors that cross the HTTP edge, each with the status and the machine-readable code it answers with."""

from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    """A client-visible failure of the JSON API: ``{"error": code, "message": ..., "field"?: ...}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        body = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidInput(ApiError):
    """400: the request broke a rule; ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: Optional[str] = None, code: str = "invalid_input") -> None:
        super().__init__(400, code, message, field=field)


class Unauthorized(ApiError):
    """401: no API token, or one that is not valid."""

    def __init__(self, message: str, *, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(401, "unauthorized", message, headers=headers)


class Forbidden(ApiError):
    """403: a valid API token without the scope the route needs."""

    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


class NotFound(ApiError):
    """404: the named thing does not exist (or is not visible to the caller)."""

    def __init__(self, message: str, *, code: str = "not_found") -> None:
        super().__init__(404, code, message)


class Conflict(ApiError):
    """409: the request is valid but the current state refuses it; ``code`` says which state."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(409, code, message)


class Busy(ApiError):
    """503 with ``Retry-After``: nothing changed; the same request may succeed after the wait."""

    def __init__(self, message: str, *, retry_after: Optional[int] = None) -> None:
        seconds = str(max(1, int(retry_after or 5)))
        super().__init__(503, "unavailable", message, headers={"Retry-After": seconds})


def unavailable(what: str, retry_after: Optional[int] = None) -> Busy:
    """A transient dependency failure: 503 with Retry-After, nothing changed."""
    return Busy(f"{what} is temporarily unavailable; retry later", retry_after=retry_after)


def is_transient(exc: BaseException) -> bool:
    """Network failures and 5xx/429 answers from Azure SDK clients (without importing the SDK)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ServiceRequestError", "ServiceResponseError", "ConnectionError", "TimeoutError"}:
        return True
    status = getattr(exc, "status_code", None)
    return "HttpResponseError" in names and isinstance(status, int) and (status >= 500 or status == 429)
