"""The production secret store: Azure Key Vault secrets through ``azure-keyvault-secrets``.

Behaviour the rest of the service relies on:

* Names are checked with :func:`validate_secret_name` before any request is made.
* ``get`` is one GET, ``set`` one PUT and ``delete`` one DELETE in the normal case. The very first request
  of a vault URL in a process costs one extra round trip: the SDK sends it without a token to elicit
  Key Vault's ``401`` challenge (which names the tenant and resource), then resends it with a token.
* Writing a name that is soft-deleted answers ``409 Conflict`` with the inner code
  ``ObjectIsDeletedButRecoverable``: the store recovers the deleted secret (POST .../recover), waits until
  the recovered secret is readable (GET, as the SDK's own poller does, but with our bounded, injectable
  sleep) and writes again. A write racing a delete that is still in progress (``ObjectIsBeingDeleted``)
  waits briefly and tries again. Purging is never attempted: production vaults have purge protection.
* The SDK's own retry policy is switched off (``retry_total=0``) so behaviour is predictable; this class
  retries throttling (``429``, honouring ``Retry-After``), ``5xx`` and network errors itself, a bounded
  number of times and within a bounded total wait. When that budget runs out, or a ``Retry-After`` is
  longer than what is left of it, :class:`SecretStoreUnavailable` is raised with ``retry_after`` set
  (seconds), so the HTTP layer can answer 503 with a ``Retry-After`` of its own.
* Other failures (permission, disabled secret, bad request) raise :class:`SecretStoreError`; a missing
  secret raises :class:`SecretNotFound`. Messages carry the operation, the secret name, the HTTP status
  and Key Vault's error code, never the value, and the SDK exception is not chained (it holds the
  request, whose body is the secret).
* A failure to obtain a token (managed identity endpoint unreachable, etc.) is reported as
  :class:`SecretStoreUnavailable`: no state changed and the usual cause is transient.

The SDK is imported in the constructor, never at module import (cold starts).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shared.storage.secrets.base import (
    SecretNotFound,
    SecretStoreError,
    SecretStoreUnavailable,
    validate_secret_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPE = "text/plain"
DELETED_BUT_RECOVERABLE = "ObjectIsDeletedButRecoverable"
BEING_DELETED = "ObjectIsBeingDeleted"
BEING_RECOVERED = "ObjectIsBeingRecovered"
# Key Vault's limits: 25 KB per secret value; 15 tags of at most 512-char names and 256-char values.
MAX_VALUE_BYTES = 25 * 1024
MAX_TAGS = 15

DEFAULT_RETRY_AFTER = 5


class HttpFailure(SecretStoreError):
    """A non-retryable HTTP answer, with Key Vault's error codes (outer and inner). Raised by
    :func:`call_with_retries` for its caller to interpret; turned into a plain :class:`SecretStoreError`
    before it leaves a store or key wrapper."""

    def __init__(self, message: str, status: int | None, codes: tuple[str, ...]) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


class Budget:
    """The wait allowed for one store call (all its requests): a total sleep, shared by the retries."""

    def __init__(self, sleep: Callable[[float], Any], max_wait: float) -> None:
        self._sleep = sleep
        self.remaining = float(max_wait)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` when the budget allows it; ``False`` (no sleep) when it does not."""
        if seconds > self.remaining:
            return False
        self.remaining -= seconds
        if seconds > 0:
            self._sleep(seconds)
        return True


class KeyVaultSecretStore:
    """``SecretStore`` over one Key Vault.

    :param vault_url: ``https://<vault>.vault.azure.net`` (any URL in tests).
    :param credential: an azure-core ``TokenCredential`` (managed identity in Azure).
    :param connection_verify: CA bundle path for TLS (tests and the sandbox); ``None`` keeps the default.
    :param sleep: called with seconds to wait between retries (tests inject a recorder).
    :param verify_challenge_resource: keep ``True`` in production; ``False`` lets the SDK accept a
        challenge whose resource (``https://vault.azure.net``) is not the vault's own domain, which is
        what a local fake on ``localhost`` sends.
    :param max_attempts: attempts per request on 429 / 5xx / network errors.
    :param max_wait: total seconds one store call may spend sleeping (throttling, recovery).
    :param client_kwargs: extra keyword arguments for ``SecretClient`` (e.g. ``api_version``).
    """

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        *,
        connection_verify: str | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        verify_challenge_resource: bool = True,
        max_attempts: int = 4,
        max_wait: float = 10.0,
        connection_timeout: float = 5,
        read_timeout: float = 15,
        **client_kwargs: Any,
    ) -> None:
        from azure.keyvault.secrets import SecretClient

        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.vault_url = vault_url.rstrip("/")
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        kwargs: dict[str, Any] = {
            "verify_challenge_resource": verify_challenge_resource,
            # Our own loop retries; the SDK's policy would sleep on its own clock and hide 429s.
            "retry_total": 0,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
        }
        if connection_verify:
            kwargs["connection_verify"] = connection_verify
        kwargs.update(client_kwargs)
        self._client = SecretClient(self.vault_url, credential, **kwargs)

    # -- the SecretStore interface ---------------------------------------------------------------------

    def get(self, name: str) -> str:
        validate_secret_name(name)
        budget = self._budget()
        try:
            secret = self._call("get", name, budget, lambda: self._client.get_secret(name))
        except HttpFailure as exc:
            raise self._public(exc) from None
        return secret.value if secret.value is not None else ""

    def set(self, name: str, value: str, *, tags: dict[str, str] | None = None) -> None:
        validate_secret_name(name)
        _check_value(value)
        tags = _check_tags(tags)
        budget = self._budget()
        recovered = False
        delay = 0.5
        while True:
            try:
                self._call(
                    "set",
                    name,
                    budget,
                    lambda: self._client.set_secret(name, value, content_type=CONTENT_TYPE, tags=tags),
                )
                return
            except HttpFailure as exc:
                if exc.status == 409 and DELETED_BUT_RECOVERABLE in exc.codes and not recovered:
                    log.info("secret %s is soft-deleted; recovering it before writing", name)
                    if self._recover(name, budget):
                        recovered = True
                        continue
                    # The vault is still finishing the delete: wait below, then write (and recover) again.
                if exc.status == 409 and (
                    BEING_DELETED in exc.codes or BEING_RECOVERED in exc.codes or DELETED_BUT_RECOVERABLE in exc.codes
                ):
                    # A delete (or recovery) of this name is still being processed by the vault.
                    if budget.wait(delay):
                        delay = min(delay * 2, 4.0)
                        continue
                    raise SecretStoreUnavailable(
                        f"Key Vault set {name}: a delete or recovery of this name is still in progress",
                        retry_after=DEFAULT_RETRY_AFTER,
                    ) from None
                raise self._public(exc) from None

    def delete(self, name: str) -> None:
        validate_secret_name(name)
        budget = self._budget()
        try:
            # One DELETE; the returned poller is not waited on (soft delete completes in the background).
            self._call("delete", name, budget, lambda: self._client.begin_delete_secret(name))
        except SecretNotFound:
            return
        except HttpFailure as exc:
            if exc.status == 409 and BEING_DELETED in exc.codes:
                return
            raise self._public(exc) from None

    # -- internals -------------------------------------------------------------------------------------

    def _budget(self) -> Budget:
        return Budget(self._sleep, self._max_wait)

    def _recover(self, name: str, budget: Budget) -> bool:
        """Recover a soft-deleted secret and wait (bounded) until it is readable again.

        ``False`` when the vault refused with 409 (its delete of the name is still being processed): the
        caller waits and writes again, which leads back here once the delete is complete.
        """
        try:
            # One POST; the SDK's poller is not used (it sleeps on its own clock): we poll below.
            self._call("recover", name, budget, lambda: self._client.begin_recover_deleted_secret(name))
        except SecretNotFound:
            # Nothing deleted under that name any more (recovered or purged meanwhile): just write.
            return True
        except HttpFailure as exc:
            if exc.status == 409:
                return False
            raise self._public(exc) from None
        delay = 0.5
        while True:
            try:
                self._call("recover", name, budget, lambda: self._client.get_secret(name))
                return True
            except SecretNotFound:
                pass
            except HttpFailure as exc:
                if exc.status == 403:
                    # Recovered but not readable (e.g. disabled, or no get permission): the write decides.
                    return True
                raise self._public(exc) from None
            if not budget.wait(delay):
                raise SecretStoreUnavailable(
                    f"Key Vault set {name}: recovery of the soft-deleted secret is still in progress",
                    retry_after=DEFAULT_RETRY_AFTER,
                )
            delay = min(delay * 2, 4.0)

    def _call(self, op: str, name: str, budget: Budget, fn: Callable[[], T]) -> T:
        return call_with_retries(op, name, budget, fn, self._max_attempts)

    @staticmethod
    def _public(exc: HttpFailure) -> SecretStoreError:
        return SecretStoreError(str(exc))


def call_with_retries(
    op: str, name: str, budget: Budget, fn: Callable[[], T], max_attempts: int, *, kind: str = "secret"
) -> T:
    """Run one Key Vault SDK call (``fn``) with our retry policy; map every azure-core error to ours.

    Used by :class:`KeyVaultSecretStore` and by the key wrapper (``keywrap.py``); ``op`` and ``name`` (an
    operation and a secret or key name, never a value) make the messages. 429 / 5xx / network errors are
    retried up to ``max_attempts`` times within ``budget``, then :class:`SecretStoreUnavailable`
    (``retry_after`` set); a credential failure is :class:`SecretStoreUnavailable`; a 404 is
    :class:`SecretNotFound` (``no {kind} named {name}``); any other HTTP answer is :class:`HttpFailure`
    (status and Key Vault's codes). The SDK exception is never chained (it holds the request, whose body may
    be a secret or a key).
    """
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    backoff = 0.5
    for attempt in range(1, max_attempts + 1):
        last = attempt == max_attempts
        try:
            return fn()
        except ResourceNotFoundError:
            raise SecretNotFound(f"no {kind} named {name}") from None
        except HttpResponseError as exc:
            status = exc.status_code
            codes = _error_codes(exc)
            if status is None and isinstance(exc, ClientAuthenticationError):
                # Raised by the credential itself (no HTTP answer from the vault).
                raise SecretStoreUnavailable(
                    f"Key Vault {op} {name}: cannot obtain a token for Key Vault "
                    f"({type(exc).__name__})",
                    retry_after=DEFAULT_RETRY_AFTER,
                ) from None
            if status == 429 or (status is not None and status >= 500):
                retry_after = _retry_after(exc)
                wait = retry_after if retry_after is not None else backoff
                what = "throttled" if status == 429 else f"HTTP {status}"
                if last or not budget.wait(wait):
                    raise SecretStoreUnavailable(
                        f"Key Vault {op} {name}: {what} after {attempt} attempt(s)",
                        retry_after=_ceil(retry_after if retry_after is not None else DEFAULT_RETRY_AFTER),
                    ) from None
                log.warning("Key Vault %s %s: %s, retrying in %.1fs", op, name, what, wait)
                backoff = min(backoff * 2, 4.0)
                continue
            code = "/".join(codes) or "no error code"
            raise HttpFailure(f"Key Vault {op} {name}: HTTP {status} ({code})", status, codes) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            if last or not budget.wait(backoff):
                raise SecretStoreUnavailable(
                    f"Key Vault {op} {name}: cannot reach the vault ({type(exc).__name__})",
                    retry_after=DEFAULT_RETRY_AFTER,
                ) from None
            log.warning("Key Vault %s %s: %s, retrying", op, name, type(exc).__name__)
            backoff = min(backoff * 2, 4.0)
        except ValueError as exc:
            # The SDK's challenge check: the vault's challenge names a resource the vault URL is not
            # under (a misconfigured MC_KEY_VAULT_URL, or a non-vault host). Retrying cannot fix it.
            raise SecretStoreError(
                f"Key Vault {op} {name}: the vault's authentication challenge was refused "
                f"({type(exc).__name__}); check MC_KEY_VAULT_URL"
            ) from None
        except AzureError as exc:
            # Anything else from the pipeline (e.g. an undecodable answer): nothing was changed
            # that we know of, and the cause is on the wire, so report it as transient.
            raise SecretStoreUnavailable(
                f"Key Vault {op} {name}: {type(exc).__name__}", retry_after=DEFAULT_RETRY_AFTER
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        raise SecretStoreError("secret value must be a string")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise SecretStoreError(f"secret value too large (Key Vault's limit is {MAX_VALUE_BYTES} bytes)")


def _check_tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    if tags is None:
        return None
    if len(tags) > MAX_TAGS:
        raise SecretStoreError(f"at most {MAX_TAGS} tags per secret")
    out: dict[str, str] = {}
    for key, val in tags.items():
        if not isinstance(key, str) or not key or len(key) > 512:
            raise SecretStoreError("tag names must be 1 to 512 characters")
        val = "" if val is None else str(val)
        if len(val) > 256:
            raise SecretStoreError(f"tag {key!r}: values are at most 256 characters")
        out[key] = val
    return out


def _error_codes(exc: Any) -> tuple[str, ...]:
    """Key Vault's ``error.code`` and every nested ``innererror.code`` (the specific reason lives there)."""
    codes: list[str] = []
    body: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = json.loads(response.text())
        except Exception:  # noqa: BLE001 - a body that is not JSON simply has no codes
            body = None
    node = body.get("error") if isinstance(body, dict) else None
    depth = 0
    while isinstance(node, dict) and depth < 5:
        code = node.get("code")
        if isinstance(code, str) and code:
            codes.append(code)
        node = node.get("innererror") or node.get("innerError")
        depth += 1
    if not codes:
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None)
        if isinstance(code, str) and code:
            codes.append(code)
    return tuple(codes)


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds)


def _ceil(seconds: float) -> int:
    return max(1, int(math.ceil(seconds)))
