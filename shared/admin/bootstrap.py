"""The admin bootstrap: the first admin API token of a deployment whose storage the admin cannot reach.

With private networking, Table Storage and Key Vault answer only inside the app's VNet, so the admin CLI
(``python -m shared.cli create-token``) cannot run from the admin's machine. The azd postprovision hook
then writes, through Azure's control plane, a Key Vault secret holding the *hash* of a one-time bootstrap
token, and prints the token once. The admin calls the API with it (``Authorization: Bearer mcb_...``) to
mint real tokens (``POST /v1/tokens``) and register OAuth apps (``POST /v1/oauth2``).

The secret (the hook runs without this package, so the format is spelled out here exactly)
-------------------------------------------------------------------------------------------
* Name: ``mc-admin-bootstrap`` (in the local secret store locally, in Key Vault in Azure).
* Token: ``"mcb_" + secrets.token_urlsafe(32)``: ``mcb_`` then exactly 43 characters of ``[A-Za-z0-9_-]``.
* Value: ``v1:<expires>:<hash>`` in ASCII, nothing before or after (no whitespace, no newline), where
  ``<expires>`` is the expiry as Unix seconds (UTC), decimal digits only, and ``<hash>`` is the
  lower-case hex SHA-256 (64 characters) of the token's UTF-8 bytes (the whole token, ``mcb_`` included).
  In Python: ``f"v1:{int(expires_at)}:{hashlib.sha256(token.encode()).hexdigest()}"``, which is what
  :func:`bootstrap_secret_value` returns. The token itself is never stored.

Anything else (another version, a missing field, upper-case hex, the token stored instead of its hash)
is malformed: the bootstrap is refused and a warning is logged, without the value.

What a valid bootstrap token is
-------------------------------
A well-formed ``mcb_`` token whose SHA-256 matches the secret's (``hmac.compare_digest``), before the
expiry, while **no API token with the ``admin`` scope exists**. It then acts as a token named
``bootstrap`` with the scope ``admin`` only: never ``api``, so it cannot read accounts or fetch a
mailbox's access tokens. Every other case (absent secret, malformed, wrong hash, expired, an admin token
exists) answers the same 401 as an unknown API token.

Decisions
---------
* **Refused once an admin token exists** (one Table query, on this path only, after the hash matched):
  the bootstrap's job is done when the first admin token is minted, so a bootstrap token that leaks
  later (shell history, CI log) is useless even before its expiry. Revoking every admin token opens the
  bootstrap again until it expires: a recovery path, not a hole, since whoever holds it set the secret.
* **Cost of ``mcb_`` tokens is bounded**: the secret read (its value, or its absence) is cached per
  instance for :data:`CACHE_SECONDS`, one read at a time (a lock, so concurrent requests wait for the
  one read rather than each making one). A flood of bogus ``mcb_`` tokens therefore costs at most one
  Key Vault read per instance per period; Key Vault's 4,000 operations per 10 s per vault are shared
  with sign-ins and token hand-offs. The expiry is checked on every request, against the cached value.
* **A failed read is cached too**, for :data:`FAILURE_SECONDS`, and answered 503 with ``Retry-After``
  (never 500): a throttled vault is not pushed harder by retries of the bootstrap path. A secret store
  refusal that retrying will not fix (e.g. no permission yet) is also a 503, logged as a warning: the
  admin retries once the role assignment has propagated.
* ``mc_`` tokens never come here (:func:`shared.web.auth.require_token` branches on the prefix), so the hot
  path makes no extra call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import unavailable
from shared.settings import Settings, get_settings
from shared.storage.tables.apitokens import BOOTSTRAP_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from shared.storage.tables.apitokens import ApiToken

log = logging.getLogger("mailbox_connect")

SECRET_NAME = "mc-admin-bootstrap"
FORMAT_VERSION = "v1"
BOOTSTRAP_NAME = "bootstrap"
# Long enough that a flood costs one vault read per instance per 30 s (negligible against 4,000 per 10 s),
# short enough that a secret the hook has just written or rotated is seen within half a minute.
CACHE_SECONDS = 30.0
# A failed read (throttled, unreachable) is not retried for this long, so the bootstrap path adds no load
# to a vault that is already struggling; short, because the admin is waiting to retry.
FAILURE_SECONDS = 5.0

_TOKEN = re.compile(re.escape(BOOTSTRAP_PREFIX) + r"[A-Za-z0-9_-]{43}")  # "mcb_" + token_urlsafe(32)
_VALUE = re.compile(r"v1:([0-9]{1,12}):([0-9a-f]{64})")

# Injectable clocks (tests replace them): wall time for the expiry, monotonic time for the cache.
now: Callable[[], float] = time.time
monotonic: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class BootstrapSecret:
    """The parsed secret: when the bootstrap expires and the SHA-256 hex of its token."""

    expires_at: int
    token_hash: str


@dataclass(frozen=True)
class _Entry:
    """One cached read: the secret (None: absent or malformed) or a failure's Retry-After, until when."""

    settings: Settings
    secret: BootstrapSecret | None
    retry_after: int | None
    until: float


_lock = threading.Lock()
_cached: _Entry | None = None


def hash_bootstrap_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bootstrap_secret_value(token: str, expires_at: int | float) -> str:
    """The value the hook stores under :data:`SECRET_NAME`: ``v1:<unix expiry>:<sha256 hex of token>``."""
    if not is_bootstrap_token(token):
        raise ValueError("a bootstrap token is 'mcb_' followed by 43 URL-safe characters")
    return f"{FORMAT_VERSION}:{int(expires_at)}:{hash_bootstrap_token(token)}"


def is_bootstrap_token(token: str) -> bool:
    """Checked before any I/O: garbage after ``mcb_`` costs nothing."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


def parse_secret_value(value: str) -> BootstrapSecret | None:
    """The secret, or None when the value is not exactly the documented format."""
    match = _VALUE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return BootstrapSecret(expires_at=int(match.group(1)), token_hash=match.group(2))


def authenticate(token: str, settings: Settings | None = None) -> ApiToken | None:
    """The bootstrap's admin-only token record, or None (answered as an unknown token: 401).

    Raises a 503 :class:`shared.errors.ApiError` when the secret store cannot be read.
    """
    if not is_bootstrap_token(token):
        return None
    secret = _read_secret(settings or get_settings())
    if secret is None or not hmac.compare_digest(hash_bootstrap_token(token), secret.token_hash):
        return None
    if now() >= secret.expires_at:
        log.info("admin bootstrap refused: it expired at %d", secret.expires_at)
        return None
    from shared.storage.tables.apitokens import admin_token_exists

    if admin_token_exists():
        log.warning("admin bootstrap refused: an admin API token exists, so the bootstrap is spent")
        return None
    log.info("admin bootstrap accepted (scope admin)")
    return _bootstrap_record()


def reset_cache() -> None:
    """Forget the cached read (tests; an operator never needs it: the cache lasts seconds)."""
    global _cached
    with _lock:
        _cached = None


def _read_secret(settings: Settings) -> BootstrapSecret | None:
    """The cached secret, read at most once per period and instance; a cached failure raises again."""
    global _cached
    with _lock:
        entry = _cached
        if entry is None or entry.settings is not settings or monotonic() >= entry.until:
            entry = _load(settings)
            _cached = entry
    if entry.retry_after is not None:
        raise unavailable("the secret store", entry.retry_after)
    return entry.secret


def _load(settings: Settings) -> _Entry:
    """One read of the secret store, turned into a cache entry (never raises a store error)."""
    from shared.storage.secrets.base import SecretNotFound, SecretStoreError, SecretStoreUnavailable
    from shared.storage.secrets.factory import get_secret_store

    started = monotonic()
    try:
        value = get_secret_store(settings).get(SECRET_NAME)
    except SecretNotFound:
        return _Entry(settings, None, None, started + CACHE_SECONDS)
    except SecretStoreUnavailable as exc:
        log.warning("admin bootstrap: the secret store is unavailable (%s)", exc)
        return _failure(settings, started, exc.retry_after)
    except SecretStoreError as exc:  # e.g. no permission yet: retrying later may work, a 500 never helps
        log.warning("admin bootstrap: cannot read secret %s (%s)", SECRET_NAME, exc)
        return _failure(settings, started, None)
    secret = parse_secret_value(value)
    if secret is None:
        log.warning("admin bootstrap: secret %s is malformed (expected v1:<unix expiry>:<sha256 hex>)",
                    SECRET_NAME)
    return _Entry(settings, secret, None, started + CACHE_SECONDS)


def _failure(settings: Settings, started: float, retry_after: int | None) -> _Entry:
    seconds = max(1, int(retry_after or FAILURE_SECONDS))
    return _Entry(settings, None, seconds, started + min(float(seconds), FAILURE_SECONDS))


def _bootstrap_record() -> ApiToken:
    from shared.storage.tables.apitokens import ApiToken
    from shared.storage.tables.records import utcnow

    # No hash on the record: nothing that might render it can show the secret's.
    return ApiToken(id=BOOTSTRAP_NAME, name=BOOTSTRAP_NAME, scopes="admin", tokenHash="", created=utcnow())
