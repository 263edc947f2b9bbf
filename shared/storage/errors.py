"""Storage failures in the project's own terms: ``NotFound``, ``Conflict`` and ``StorageUnavailable``.

The Azure SDK raises its own exception classes (``ResourceNotFoundError``, ``ResourceModifiedError``,
``TableTransactionError`` with a status, ``ServiceRequestError``, ...). They are translated once, where the
table modules call the SDK (:func:`storage_errors`, and the helpers in ``shared.storage.tables.records``
built on it), so nothing above ``shared.storage`` needs to know them:

``NotFound``
    the row (or table) does not exist (404).
``Conflict``
    the row exists already (409), or a write conditioned on an ETag lost the race (412: someone changed the
    row since it was read).
``StorageUnavailable``
    a transient failure: the network, a timeout, 5xx, 429. Nothing is known to have changed (a write whose
    answer was lost may still have landed); the same call may succeed later. The HTTP edge answers 503 with
    ``Retry-After`` (``shared.web.http.call_api``), and ``shared.errors.is_transient`` recognises it.

Anything else (a 400, a 403, a bug) is left as it is. The SDK is imported only when a call has failed:
this module costs nothing at start-up (cold start).
"""

from __future__ import annotations

from types import TracebackType


class StorageError(Exception):
    """A Table Storage call failed; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(StorageError):
    """The row (or its table) does not exist."""


class Conflict(StorageError):
    """The row exists already (409), or the ETag a write was conditioned on is no longer the row's (412)."""


class StorageUnavailable(StorageError):
    """Network failure, timeout, 5xx or 429: transient, retry later (``retry_after`` seconds if known)."""

    transient = True  # read by shared.errors.is_transient (a leaf: it cannot import this module)

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def translate(exc: BaseException) -> BaseException:
    """The project's own error for a failed storage call, or ``exc`` itself when it is none of the three."""
    if isinstance(exc, StorageError):
        return exc
    from azure.core.exceptions import (
        HttpResponseError,
        ResourceExistsError,
        ResourceModifiedError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    name = type(exc).__name__
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError)):
        return StorageUnavailable(f"storage unreachable ({name})")
    status = getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None
    if isinstance(status, int) and (status >= 500 or status == 429):
        return StorageUnavailable(f"storage answered HTTP {status} ({name})", status=status)
    if isinstance(exc, ResourceNotFoundError) or status == 404:  # 404 in a transaction: TableTransactionError
        return NotFound(f"not found ({name})", status=404)
    if isinstance(exc, (ResourceExistsError, ResourceModifiedError)) or status in (409, 412) or \
            getattr(exc, "error_code", None) == "EntityAlreadyExists":  # a transaction's create met a row
        return Conflict(f"conflict ({name})", status=status if status in (409, 412) else None)
    return exc


class _Boundary:
    """``with storage_errors():`` turns an SDK failure of the block into the project's own error (stateless)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:  # never swallows: re-raises, translated or not
        if isinstance(exc, Exception):
            mapped = translate(exc)
            if mapped is not exc:
                raise mapped from exc


_BOUNDARY = _Boundary()


def storage_errors() -> _Boundary:
    """Context manager: SDK failures inside become ``NotFound``, ``Conflict`` or ``StorageUnavailable``."""
    return _BOUNDARY
