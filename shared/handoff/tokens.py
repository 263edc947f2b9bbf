"""Access-token hand-off: ``GET /v1/account/{account}/oauth-token`` (EmailEngine's endpoint, extended).

The app asks for a fresh access token for one mailbox and gets EmailEngine's fields (``account``, ``user``: the
signer's UPN, also for a shared mailbox, as EmailEngine's ``oauth2.auth.user``; ``provider``, ``app``,
``accessToken``, ``registeredScopes``, ``expires`` with milliseconds, ``cached``: true when the token came from
this process's cache) and, beside them, what it needs to use the token for that mailbox (the ``imap``/``smtp``
login names and hosts, the ``graph`` base URL). The refresh token never leaves the
secret store's side of this module: it is read, handed to MSAL, and the newest one written back; it is
never cached in memory, logged, or put in a response or an error.

Access tokens
    Come from MSAL (:func:`shared.microsoft.identity.refresh`) with the credential's refresh token, and are cached in
    this process per (credential, scope set) until ``REFRESH_MARGIN`` (5 min) before they expire. A warm
    request reads the API token and the account row (so a deleted or re-bound account is seen at once)
    but makes no secret-store call and no call to Microsoft. Refreshes are single-flight per credential
    inside one process: one lock per credential, so 50 parallel requests cause one refresh and 49 cache
    hits. The scope set is the app's (``scopes_for`` of its cloud and base scopes, with the ``.Shared``
    Graph scopes for a shared mailbox), restricted to the first scope's resource, because one access token
    covers one resource (Entra answers ``invalid_scope`` otherwise).

Refresh-token rotation
    Microsoft returns a new refresh token on every refresh and the old one stays valid. The new one is
    written (secret store, then the credential row's ``tokenWrittenAt``/``scopes``; other fields are kept
    from a fresh read of the row) only when the stored one is older than ``ROTATE_AFTER`` (one day) or
    Microsoft granted scopes the row does not list yet (recorded as the union, so two accounts of one
    credential asking different scope sets do not write in turn). A row rewritten by someone else since
    it was read (a new sign-in) wins: the write is skipped. Two instances rotating at once both store
    valid tokens (every refresh token issued stays valid), so whichever write lands last is fine. A failed
    rotation write is logged and the request still succeeds: the stored token is still valid and the next
    refresh tries again.

Re-authentication (status **403**, ``code: "OauthRenewError"``, ``authenticationFailed: true``)
    ``invalid_grant``, ``interaction_required`` or ``consent_required`` from the refresh, or a credential
    whose row or secret is gone, mean only the user can fix it by signing in again. Every account of the
    credential is marked ``state="authenticationError"`` with ``errorCode``, ``errorDescription``,
    ``errorAt`` (ETag-conditioned, retried on conflict; an account already marked with the same code keeps
    its first ``errorAt``) and the answer is EmailEngine's: 403 with ``code: "OauthRenewError"`` and
    ``authenticationFailed: true`` (what EmailEngine clients look for; a 403 of a token lacking the ``api``
    scope has ``code: "forbidden"`` instead, so an app can tell the two apart). The body also carries
    ``account``, ``state`` (``authenticationError``), ``errorCode`` (Microsoft's OAuth error, or
    ``credential_missing``) and ``errorDescription``.
    Before marking, the credential row is read again: if a sign-in rewrote it meanwhile, the refresh is
    retried once with the new token instead, so a race with a sign-in does not mark a repaired account.

Accounts already in ``authenticationError``
    Still tried (users sometimes fix the cause, e.g. an MFA or consent problem, without signing in here),
    but at most once per ``RETRY_BROKEN_AFTER`` seconds per credential and process: a failure is
    remembered with the credential row's ETag, and until it expires the answer is that 403 without calling
    Microsoft, unless the row changed (a new sign-in wrote a new token), which retries at once. The
    in-memory access-token cache is not used for such an account. A success flips every account of the
    credential back to ``connected`` (:func:`mark_connected`, which the sign-in calls too).

Webhooks and the keep-alive
    A change of an account's state writes its webhook event in the same transaction as the row
    (``shared.core.events``): into ``authenticationError`` (once, not on every failed refresh) and back to
    ``connected`` (``authenticationSuccess``, ``reason: credentialRepaired``). :func:`keep_alive` is the
    hand-off's refresh for a credential nobody used lately (``shared.handoff.keepalive``), with a mandatory rotation.

Other answers
    Unknown account: 404 ``not_found``; a malformed id: 400. Transient failures (Microsoft 5xx or
    unreachable, secret store throttled or unavailable, Table Storage transient) answer 503 with
    ``Retry-After`` and change no state (EmailEngine's endpoint answers 403 ``OauthRenewError`` to those too;
    a 503 tells the app to retry, not to send the user to sign in again). Microsoft refusing the app itself
    (``invalid_client``, after one retry with a re-read client secret; ``unauthorized_client``,
    ``invalid_scope``, ...): also 403
    ``OauthRenewError`` (EmailEngine answers every failed renewal so, and its clients branch on that code), but
    with ``authenticationFailed: false`` and Microsoft's ``errorCode``: the accounts are not marked, a new
    sign-in would not help, the app's administrator must fix the OAuth app. An account whose OAuth app was
    deleted: 409 ``app_unavailable``. A disabled app still hands out
    tokens for the accounts it already has (disabling stops new sign-ins; delete the app to stop hand-off).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from shared.clouds import CLOUDS, RESERVED_SCOPES, scopes_for
from shared.core import account_state
from shared.core.access import Caller
from shared.core.apps import client_secret, forget_client_secret
from shared.errors import Conflict, TokenRenewalFailed, unavailable
from shared.microsoft import identity
from shared.microsoft.identity import IdentityError, IdentityUnavailable
from shared.schemas import GraphSettings, ImapSettings, OAuthTokenResponse, SmtpSettings
from shared.settings import Settings
from shared.storage.secrets.base import SecretNotFound
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, apps, principals
from shared.storage.tables.accounts import AUTH_ERROR, CONNECTED, Account
from shared.storage.tables.apps import OAuthApp
from shared.storage.tables.principals import Credential
from shared.storage.tables.records import utcnow

log = logging.getLogger("mailbox_connect.tokens")

REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached access token is no longer handed out
ROTATE_AFTER = timedelta(days=1)  # write the newest refresh token when the stored one is older than this
RETRY_BROKEN_AFTER = 60.0  # seconds between refresh attempts of a credential that needs re-authentication
LOCK_WAIT = 45.0  # seconds a request waits for another request's refresh of the same credential
CACHE_MAX = 20_000  # access tokens kept per process (least recently used dropped first)
REAUTH_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required"})
CREDENTIAL_MISSING = "credential_missing"
_OIDC = frozenset(RESERVED_SCOPES) | {"email"}


# --- errors -------------------------------------------------------------------------------------------

class OauthRenewError(TokenRenewalFailed):
    """403 ``OauthRenewError`` (EmailEngine's answer when the access token cannot be renewed).

    Besides the envelope (``shared.errors``): ``authenticationFailed`` (EmailEngine's flag: true when only a new
    sign-in of the user repairs it), ``account``, ``errorCode`` (Microsoft's OAuth error, or
    ``credential_missing``) and ``errorDescription`` (Microsoft's text).
    """

    authentication_failed = True

    def __init__(self, account_id: str, code: str, description: str, message: str) -> None:
        super().__init__(message)
        self.account = account_id
        self.error_code = code
        self.error_description = description

    def body(self) -> dict[str, Any]:
        return {**super().body(), "authenticationFailed": self.authentication_failed, "account": self.account,
                "errorCode": self.error_code, "errorDescription": self.error_description}


class ReauthenticationRequired(OauthRenewError):
    """403 ``OauthRenewError``, ``authenticationFailed: true``: only a new sign-in of the user repairs the
    account's credential; the body also says ``state: authenticationError``."""

    def __init__(self, account_id: str, code: str, description: str) -> None:
        super().__init__(account_id, code, description,
                         "Failed to renew the access token: the mailbox's Microsoft sign-in is no longer valid; send "
                         "the user through a new sign-in link for this account (POST /v1/account/{account}/reauth, "
                         "or POST /v1/authentication/form with this account id), then retry")

    def body(self) -> dict[str, Any]:
        return {**super().body(), "state": AUTH_ERROR}


class TokenRefused(OauthRenewError):
    """403 ``OauthRenewError``, ``authenticationFailed: false``: Microsoft refused the token request for a reason
    a new sign-in does not fix (the OAuth app's configuration: ``invalid_client``, ``invalid_scope``, ...); the
    accounts are not marked."""

    authentication_failed = False

    def __init__(self, account_id: str, code: str, description: str) -> None:
        super().__init__(account_id, code, description,
                         f"Failed to renew the access token: Microsoft refused the OAuth app's token request "
                         f"({code}): {description}; an administrator must fix the app, a new sign-in does not help")


# --- in-process caches --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Cached:
    access_token: str
    expires_at: float  # epoch seconds
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class _Failure:
    at: float  # monotonic
    etag: str | None  # the credential row's ETag when it failed; a new sign-in changes it
    code: str
    description: str


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[str, frozenset[str]], _Cached] = OrderedDict()
_failures: dict[str, _Failure] = {}


class _KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=timeout):
                raise unavailable("a token refresh of this mailbox")
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)


_locks = _KeyedLocks()


def reset_token_cache() -> None:
    """Forget every cached access token and remembered failure of this process (tests)."""
    with _cache_lock:
        _cache.clear()
        _failures.clear()


def _cached(key: tuple[str, frozenset[str]], now: float) -> _Cached | None:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is None:
            return None
        if hit.expires_at - REFRESH_MARGIN <= now:
            del _cache[key]
            return None
        _cache.move_to_end(key)
        return hit


def _remember(key: tuple[str, frozenset[str]], token: _Cached, now: float) -> None:
    if token.expires_at - REFRESH_MARGIN <= now:
        return  # too short-lived to be worth caching
    with _cache_lock:
        _cache[key] = token
        _cache.move_to_end(key)
        while len(_cache) > CACHE_MAX:
            _cache.popitem(last=False)
        _failures.pop(key[0], None)


def _forget_credential(credential_id: str) -> None:
    with _cache_lock:
        for key in [k for k in _cache if k[0] == credential_id]:
            del _cache[key]


def _remember_failure(credential_id: str, failure: _Failure) -> None:
    with _cache_lock:
        if len(_failures) >= CACHE_MAX:
            cutoff = time.monotonic() - RETRY_BROKEN_AFTER
            for key in [k for k, f in _failures.items() if f.at < cutoff]:
                del _failures[key]
        _failures[credential_id] = failure


def _recent_failure(credential_id: str, etag: str | None) -> _Failure | None:
    with _cache_lock:
        failure = _failures.get(credential_id)
    if failure is None or time.monotonic() - failure.at >= RETRY_BROKEN_AFTER or failure.etag != etag:
        return None
    return failure


# --- the hand-off -------------------------------------------------------------------------------------

def hand_off(account_id: str, settings: Settings, *, caller: Caller) -> OAuthTokenResponse:
    """A usable access token for the account, and how to use it; raises ``ApiError`` (see module docs).
    An account the caller's API token may not see (``shared.core.access``) is answered as unknown (404)."""
    account = caller.visible(accounts.get_account(account_id), account_id)
    app = apps.get_app(account.appId)
    if app is None:
        raise Conflict("app_unavailable", "the OAuth app of this account no longer exists; connect the "
                                          "mailbox again with another app")
    scopes = token_scopes(app, account)
    key = (account.credentialId, frozenset(scopes))
    if account.state == CONNECTED:
        hit = _cached(key, time.time())
        if hit is not None:
            return _response(account, app, hit, settings, cached=True)
    with _locks.hold(account.credentialId, LOCK_WAIT):
        if account.state == CONNECTED:
            hit = _cached(key, time.time())  # another request refreshed while this one waited
            if hit is not None:
                return _response(account, app, hit, settings, cached=True)
        token = _refresh(account, app, scopes, settings)
        _remember(key, token, time.time())
    if account.state != CONNECTED:
        mark_connected(account.credentialId)
    return _response(account, app, token, settings, cached=False)


def keep_alive(credential: Credential, settings: Settings) -> str:
    """Refresh one credential nobody used lately and store the new refresh token (``shared.handoff.keepalive``).

    The same path as a token request of one of its accounts (lock, refresh, rotation, marking), with the
    rotation write mandatory: its failure raises. Returns ``refreshed``, ``no_account`` (no account uses
    the credential) or ``app_missing``; raises ``ReauthenticationRequired`` (the accounts are marked and
    their ``authenticationError`` webhook produced, on the transition), ``TokenRefused``, ``ApiError`` 503
    (Microsoft unavailable) or ``SecretStoreUnavailable``.
    """
    account = None
    for account_id in principals.account_ids(credential.credentialId):
        candidate = accounts.get_account(account_id)
        if candidate is not None and candidate.credentialId == credential.credentialId:
            account = candidate
            break
    if account is None:
        return "no_account"
    app = apps.get_app(account.appId)
    if app is None:
        return "app_missing"
    scopes = token_scopes(app, account)
    with _locks.hold(credential.credentialId, LOCK_WAIT):
        token = _refresh(account, app, scopes, settings, strict_rotation=True)
        _remember((credential.credentialId, frozenset(scopes)), token, time.time())
    if account.state != CONNECTED:
        mark_connected(credential.credentialId)
    return "refreshed"


def access_token_for(source: Account, app: OAuthApp, scopes: list[str], settings: Settings) -> str:
    """An access token of ``source``'s credential for ``scopes`` (``POST /v1/account`` with ``delegatedAccount``
    checks another mailbox with it): the hand-off's cache, lock, refresh and rotation, and its failures
    (``ReauthenticationRequired`` marks the credential's accounts, as a token request of ``source`` would).
    Ask only for scopes the credential was granted: a scope never consented to fails like a revoked grant."""
    key = (source.credentialId, frozenset(scopes))
    hit = _cached(key, time.time()) if source.state == CONNECTED else None
    if hit is None:
        with _locks.hold(source.credentialId, LOCK_WAIT):
            hit = _cached(key, time.time()) if source.state == CONNECTED else None
            if hit is None:
                hit = _refresh(source, app, scopes, settings)
                _remember(key, hit, time.time())
        if source.state != CONNECTED:
            mark_connected(source.credentialId)
    return hit.access_token


def token_scopes(app: OAuthApp, account: Account) -> list[str]:
    """The scopes to ask for this account's access token: the app's, of one resource."""
    scopes = scopes_for(app.cloud, app.baseScopes, delegated=account.delegated, extra=tuple(app.extraScopes))
    graph = CLOUDS[app.cloud].graph_url
    first = _resource(scopes[0], graph)
    return [s for s in scopes if _resource(s, graph) == first]


def _resource(scope: str, graph: str) -> str:
    if "://" not in scope:
        return graph  # short names (Mail.Read) are Graph's, as on Entra
    split = urlsplit(scope)
    return f"{split.scheme}://{split.netloc}".lower()


def _refresh(account: Account, app: OAuthApp, scopes: list[str], settings: Settings, *,
             strict_rotation: bool = False) -> _Cached:
    """Redeem the stored refresh token (under the credential's lock); rotate it when due.

    ``strict_rotation`` (the keep-alive): a failed rotation write raises instead of being logged.
    """
    cred_id = account.credentialId
    for attempt in range(2):
        credential = principals.get_credential(cred_id)
        if credential is None:
            raise _reauthentication(account, cred_id, None, CREDENTIAL_MISSING,
                                    "the stored credential of this mailbox no longer exists")
        failure = _recent_failure(cred_id, credential.etag)
        if failure is not None:
            raise ReauthenticationRequired(account.account, failure.code, failure.description)
        store = get_secret_store(settings)
        try:
            refresh_token = store.get(credential.secretName)
        except SecretNotFound:
            raise _reauthentication(account, cred_id, credential.etag, CREDENTIAL_MISSING,
                                    "the stored refresh token of this mailbox no longer exists") from None
        started = time.time()
        try:
            tokens = _redeem(app, settings, refresh_token, scopes)
        except IdentityUnavailable:
            raise unavailable("Microsoft's sign-in service") from None
        except IdentityError as exc:
            if exc.code not in REAUTH_ERRORS:
                raise TokenRefused(account.account, exc.code, exc.description) from None
            current = principals.get_credential(cred_id)
            if attempt == 0 and current is not None and current.etag != credential.etag:
                continue  # a sign-in stored a new refresh token meanwhile: try that one
            raise _reauthentication(account, cred_id, credential.etag, exc.code, exc.description) from None
        if tokens.refresh_token:
            _rotate(credential, tokens.refresh_token, tokens.scopes, settings, strict=strict_rotation)
        granted = tuple(tokens.scopes) or tuple(scopes)
        return _Cached(tokens.access_token, started + tokens.expires_in, granted)
    raise AssertionError("unreachable")  # pragma: no cover


def _redeem(app: OAuthApp, settings: Settings, refresh_token: str, scopes: list[str]) -> identity.Tokens:
    try:
        return identity.refresh(app, client_secret(app, settings), settings, refresh_token, scopes)
    except IdentityError as exc:
        if exc.code != "invalid_client":
            raise
    # The client secret may have been rotated since it was cached: read it again, once.
    forget_client_secret(app.id)
    return identity.refresh(app, client_secret(app, settings), settings, refresh_token, scopes)


def _reauthentication(account: Account, cred_id: str, etag: str | None, code: str,
                      description: str) -> ReauthenticationRequired:
    """Mark the credential's accounts, remember the failure, and build the 403 for the caller."""
    _forget_credential(cred_id)
    try:
        account_state.mark_reauthentication_required(cred_id, code, description, also=(account.account,))
        etag = _etag_after_flag(cred_id, etag)
    except Exception as exc:  # noqa: BLE001 - the 403 is still the right answer; the next request marks again
        log.warning("could not mark the accounts of credential %s: %s", cred_id, type(exc).__name__)
    else:
        _remember_failure(cred_id, _Failure(time.monotonic(), etag, code, description))
    log.info("credential %s needs re-authentication (%s)", cred_id, code)
    return ReauthenticationRequired(account.account, code, description)


def _scope_key(scope: str) -> str:
    return scope.strip().lower()


def _resource_scopes(scopes: list[str]) -> set[str]:
    return {_scope_key(s) for s in scopes if s and _scope_key(s) not in _OIDC}


def rotation_due(credential: Credential, granted: list[str], now: datetime | None = None) -> bool:
    """Write the newest refresh token? When the stored one is older than a day or new scopes were granted."""
    now = now or utcnow()
    written = credential.tokenWrittenAt
    if written.tzinfo is None:
        written = written.replace(tzinfo=UTC)
    if now - written > ROTATE_AFTER:
        return True
    return bool(_resource_scopes(granted) - _resource_scopes(credential.scopes))


def _rotate(credential: Credential, refresh_token: str, granted: list[str], settings: Settings, *,
            strict: bool = False) -> None:
    if not rotation_due(credential, granted):
        return
    try:
        current = principals.get_credential(credential.credentialId)
        if current is None or current.etag != credential.etag:
            return  # deleted (do not resurrect it) or rewritten by a sign-in (its token is newer)
        get_secret_store(settings).set(current.secretName, refresh_token)
        known = {_scope_key(s) for s in current.scopes}
        scopes = list(current.scopes) + [s for s in granted if _scope_key(s) not in known]
        principals.upsert_credential(current.model_copy(update={
            "tokenWrittenAt": utcnow(), "scopes": scopes, "brokenCode": None, "keepAliveAt": None}))
        log.info("stored the newest refresh token of credential %s", credential.credentialId)
    except Exception as exc:  # noqa: BLE001 - the stored token stays valid; the next refresh writes again
        log.warning("could not store the newest refresh token of credential %s: %s",
                    credential.credentialId, type(exc).__name__)
        if strict:
            raise


# --- account state (shared.core.account_state) --------------------------------------------------------

def _etag_after_flag(credential_id: str, etag: str | None) -> str | None:
    """The credential row's ETag after ``flag_broken`` (it keys the remembered failure)."""
    current = principals.get_credential(credential_id)
    return current.etag if current is not None else etag


def mark_connected(credential_id: str) -> int:
    """:func:`shared.core.account_state.mark_connected`, forgetting this process's remembered failure too."""
    with _cache_lock:
        _failures.pop(credential_id, None)
    return account_state.mark_connected(credential_id)


# --- rendering ----------------------------------------------------------------------------------------

def _response(account: Account, app: OAuthApp, token: _Cached, settings: Settings, *,
              cached: bool) -> OAuthTokenResponse:
    """EmailEngine's fields (``user`` = the signer, also for a shared mailbox; ``expires`` with milliseconds;
    ``cached``: from this process's cache, no call to Microsoft) beside the protocol-aware blocks."""
    cloud = CLOUDS[app.cloud]
    graph = (settings.graph_url or cloud.graph_url).rstrip("/")
    mailbox = account.email
    base_url = f"{graph}/v1.0/users/{quote(mailbox, safe='@')}" if account.delegated else f"{graph}/v1.0/me"
    expires = datetime.fromtimestamp(token.expires_at, UTC).isoformat(timespec="milliseconds")
    return OAuthTokenResponse(
        account=account.account,
        user=account.signerUpn,
        accessToken=token.access_token,
        expires=expires.replace("+00:00", "Z"),
        cached=cached,
        app=app.id,
        scopes=list(token.scopes),
        registeredScopes=list(token.scopes),
        provider=app.provider,
        delegated=account.delegated,
        imap=ImapSettings(host=cloud.imap_host, user=mailbox),
        smtp=SmtpSettings(host=cloud.smtp_host, user=account.signerUpn if account.delegated else mailbox,
                         from_=mailbox),
        graph=GraphSettings(baseUrl=base_url),
    )
