"""The secret-store interface and the naming rule every backend enforces (Key Vault's)."""

from __future__ import annotations

import re
from typing import Protocol

_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class SecretStoreError(RuntimeError):
    """A secret-store failure that retrying will not fix (bad name, permission, bad key)."""


class SecretNotFound(SecretStoreError):
    """No current value under that name."""


class SecretStoreUnavailable(SecretStoreError):
    """A transient failure (throttled after retries, network, 5xx): answer 503, change no state."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def validate_secret_name(name: str) -> str:
    """Key Vault's rule (``[0-9a-zA-Z-]``, 1-127 chars), checked before any I/O in every backend."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise SecretStoreError("invalid secret name: only 0-9, a-z, A-Z and '-', 1 to 127 characters")
    return name


class SecretStore(Protocol):
    def get(self, name: str) -> str:
        """The current value; ``SecretNotFound`` when there is none."""

    def set(self, name: str, value: str, *, tags: dict[str, str] | None = None) -> None:
        """Write a new current value (recovering a soft-deleted name first where the backend has one)."""

    def delete(self, name: str) -> None:
        """Remove the value; deleting a missing name is not an error."""
