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


def unavailable(what: str, retry_after: Optional[int] = None) -> ApiError:
    """A transient dependency failure: 503 with Retry-After, nothing changed."""
    seconds = str(max(1, int(retry_after or 5)))
    return ApiError(503, "unavailable", f"{what} is temporarily unavailable; retry later",
                    headers={"Retry-After": seconds})


def is_transient(exc: BaseException) -> bool:
    """Network failures and 5xx/429 answers from Azure SDK clients (without importing the SDK)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ServiceRequestError", "ServiceResponseError", "ConnectionError", "TimeoutError"}:
        return True
    status = getattr(exc, "status_code", None)
    return "HttpResponseError" in names and isinstance(status, int) and (status >= 500 or status == 429)
