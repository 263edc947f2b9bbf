"""Access-token hand-off: ``GET /v1/account/{account}/oauth-token`` (EmailEngine's endpoint, extended).

The app asks for a fresh access token for one mailbox and gets EmailEngine's fields (``account``, ``user``: the
signer's UPN, also for a shared mailbox, as EmailEngine's ``oauth2.auth.user``; ``provider``, ``app``,
``accessToken``, ``registeredScopes``, ``expires`` with milliseconds, ``cached``: true when no call to Microsoft
was made for it: this process's cache or the one on the credential row) and, beside them, what it needs to use
the token for that mailbox (the ``imap``/``smtp`` login names and hosts, the ``graph`` base URL). The refresh
token never leaves the storage side of this module: it is read (a Key Vault secret, or sealed on the credential
row: ``MC_SECRET_MODE``), handed to MSAL, and the newest one written back; it is never cached in memory, logged,
or put in a response or an error.

Access tokens (issue 14, point 4)
    Come from MSAL (:func:`shared.microsoft.identity.refresh`) with the credential's refresh token, and are kept
    until ``REFRESH_MARGIN`` (5 min) before they expire at two levels, per (credential, scope set):

    * this process's memory: a warm request reads the account row only (so a deleted or re-bound account is
      seen at once): 1 Table read, no secret-store call, no call to Microsoft;
    * the credential row (``accessTokens``, sealed like a refresh token: ``shared.storage.sealed``): any
      instance without it in memory reads the row and uses it: 2 Table reads, no Key Vault, no Microsoft.

    A refresh is single-flight per credential across every instance: inside one process one lock per
    credential (50 parallel requests cause one refresh and 49 cache hits), and between instances an
    ETag-conditioned *claim* on the credential row (``refreshClaim``/``refreshClaimUntil``, ``CLAIM_SECONDS``):
    the instance whose claim lands calls Microsoft and writes the new access token (and the claim's release)
    in one write; the others poll the row for it (at most ``LOCK_WAIT``), or take over a claim that ran out.
    A cold hand-off therefore costs 2 reads + 2 writes of the credential row and one call to Microsoft (and a
    Key Vault read of the refresh token in keyvault mode), once per token lifetime per credential.

    The scope set is the app's (``scopes_for`` of its cloud and base scopes, with the ``.Shared``
    Graph scopes for a shared mailbox), restricted to the first scope's resource, because one access token
    covers one resource (Entra answers ``invalid_scope`` otherwise).

Refresh-token rotation
    Microsoft returns a new refresh token on every refresh and the old one stays valid. In envelope mode the
    new one is sealed into the same write as the access token (it costs nothing more). In keyvault mode it is
    written (secret store, then the row's ``tokenWrittenAt``/``scopes``) only when the stored one is older
    than ``ROTATE_AFTER`` (one day) or Microsoft granted scopes the row does not list yet (recorded as the
    union, so two accounts of one credential asking different scope sets do not write in turn). The write is
    conditioned on the claim's ETag: a row rewritten by a sign-in meanwhile wins (its token is newer). A failed
    write is logged and the request still succeeds: the stored refresh token is still valid and the next
    refresh tries again. A sealed refresh token that does not open (tampered, a data key not in the ring) is
    treated like a missing one: ``credential_unreadable``, the accounts are marked (below).

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

import hashlib
import logging
import secrets
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
from shared.storage import sealed
from shared.storage.secrets.base import SecretNotFound, SecretStoreError
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
CREDENTIAL_UNREADABLE = "credential_unreadable"  # a sealed refresh token that does not open
CLAIM_SECONDS = 30.0  # how long an instance's claim on a credential's refresh holds (its refresh takes less)
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
    shared: bool = False  # left on the credential row by an earlier refresh (this or another instance)


@dataclass(frozen=True)
class _Failure:
    at: float  # monotonic
    etag: str | None  # the credential row's ETag when it failed; a new sign-in changes it
    code: str
    description: str


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[str, frozenset[str]], _Cached] = OrderedDict()
_failures: dict[str, _Failure] = {}
_abandoned: set[str] = set()  # refresh claims this process wrote but could not release (storage failed)


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
        _abandoned.clear()


def forget_access_tokens() -> None:
    """Forget the access tokens this process holds, nothing else (tests: "as if they had run out")."""
    with _cache_lock:
        _cache.clear()


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
    return _response(account, app, token, settings, cached=token.shared)


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
        token = _refresh(account, app, scopes, settings, strict_rotation=True, use_shared=False)
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


def scope_key(scopes: list[str]) -> str:
    """The shared cache's key of a scope set (order and case do not matter)."""
    joined = "\n".join(sorted({_scope_key(s) for s in scopes}))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def _shared_token(credential: Credential, key: str, settings: Settings, now: float) -> _Cached | None:
    """The access token another instance left on the credential row, while it has more than ``REFRESH_MARGIN``
    to live; None otherwise (also when it does not open: a cache miss, never an error)."""
    entry = credential.accessTokens.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("e"), (int, float)):
        return None
    if entry["e"] - REFRESH_MARGIN <= now:
        return None
    try:
        token = sealed.unseal(str(entry.get("t", "")), _access_aad(credential.credentialId, key), settings)
    except sealed.Unsealable:
        return None
    return _Cached(token, float(entry["e"]), tuple(entry.get("s") or ()), shared=True)


def _access_aad(credential_id: str, key: str) -> str:
    return f"at:{credential_id}:{key}"


def _refresh(account: Account, app: OAuthApp, scopes: list[str], settings: Settings, *,
             strict_rotation: bool = False, use_shared: bool = True) -> _Cached:
    """A fresh access token for the account's credential (under this process's lock of the credential).

    Across instances (issue 14, point 4): the credential row holds the last access token of each scope set,
    sealed; a live one is used without calling Microsoft (``use_shared``; not for an account in
    ``authenticationError``, which must prove the credential works). Otherwise this instance *claims* the refresh
    (``refreshClaim``, written under the row's ETag): the winner calls Microsoft and leaves the new token on
    the row; the others wait for it (polling the row, at most ``LOCK_WAIT``) or take over a claim that
    expired (``CLAIM_SECONDS``: its holder died). So one credential is refreshed at most once per token
    lifetime, whatever the number of instances. ``strict_rotation`` (the keep-alive): a failed write of the
    newest refresh token raises instead of being logged.
    """
    cred_id = account.credentialId
    key = scope_key(scopes)
    deadline = time.monotonic() + LOCK_WAIT
    pause = 0.05
    retried = False
    mine: str | None = None  # the claim this request last tried to write (its answer may have been lost)
    while True:
        credential = principals.get_credential(cred_id)
        if credential is None:
            raise _reauthentication(account, cred_id, None, CREDENTIAL_MISSING,
                                    "the stored credential of this mailbox no longer exists")
        failure = _recent_failure(cred_id, credential.etag)
        if failure is not None:
            raise ReauthenticationRequired(account.account, failure.code, failure.description)
        now = time.time()
        if use_shared and account.state == CONNECTED:
            shared = _shared_token(credential, key, settings, now)
            if shared is not None:
                return shared
        if credential.refreshClaim and (credential.refreshClaim == mine or _abandoned_here(credential.refreshClaim)):
            claimed: Credential | None = credential  # ours: its answer was lost, or this process could not release it
        elif credential.refreshClaim and (credential.refreshClaimUntil or 0) > now:
            # Another instance is refreshing this credential: wait for the token it leaves on the row.
            if time.monotonic() + pause > deadline:
                raise unavailable("a token refresh of this mailbox")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
            continue
        else:
            mine = secrets.token_hex(8)
            claimed = _claim(credential, mine, now)
        if claimed is None:
            if time.monotonic() > deadline:
                raise unavailable("a token refresh of this mailbox")
            continue  # changed meanwhile (another instance's claim, a sign-in): look again
        mine = None
        try:
            token, retry = _refresh_claimed(account, app, scopes, key, claimed, settings,
                                            strict_rotation=strict_rotation, may_retry=not retried)
        except BaseException:
            _release(claimed)
            raise
        if token is not None:
            return token
        retried = retry
        continue  # a sign-in stored a new refresh token meanwhile: try that one (once)


def _claim(credential: Credential, claim: str, now: float) -> Credential | None:
    """Write this instance's ``claim`` on the refresh under the row's ETag: the row as claimed, or None when it
    changed meanwhile. A claim whose answer was lost is recognised by its value on the next read; one whose write
    failed outright is taken back when it landed after all (best effort: it also runs out by itself)."""
    fields: dict[str, Any] = {"refreshClaim": claim, "refreshClaimUntil": now + CLAIM_SECONDS}
    try:
        etag = principals.change_credential(credential, fields)
    except Exception:
        try:
            current = principals.get_credential(credential.credentialId)
        except Exception:  # noqa: BLE001 - still down: the claim runs out on its own
            current = None
        if current is not None and current.refreshClaim == claim:
            _release(current)
        raise
    if etag is None:
        return None
    claimed = credential.model_copy(update=fields)
    claimed.etag = etag
    return claimed


def _release(claimed: Credential) -> None:
    """Give a claim up after a failure, so other instances do not wait for it (best effort: it runs out anyway).
    The row may have changed under the claim (marking it broken does): then the claim is released where it is
    still ours."""
    release: dict[str, Any] = {"refreshClaim": None, "refreshClaimUntil": None}
    try:
        if principals.change_credential(claimed, release) is None:
            current = principals.get_credential(claimed.credentialId)
            if current is not None and current.refreshClaim == claimed.refreshClaim:
                principals.change_credential(current, release)
    except Exception as exc:  # noqa: BLE001 - the claim runs out on its own
        log.warning("could not release the refresh claim of credential %s: %s", claimed.credentialId,
                    type(exc).__name__)
        if claimed.refreshClaim:
            with _cache_lock:  # this process takes it over at once; other instances when it runs out
                if len(_abandoned) >= CACHE_MAX:
                    _abandoned.clear()
                _abandoned.add(claimed.refreshClaim)


def _abandoned_here(claim: str) -> bool:
    with _cache_lock:
        return claim in _abandoned


def _refresh_claimed(account: Account, app: OAuthApp, scopes: list[str], key: str, credential: Credential,
                     settings: Settings, *, strict_rotation: bool, may_retry: bool) -> tuple[_Cached | None, bool]:
    """Redeem the stored refresh token under this instance's claim on ``credential``; store the result.

    Returns ``(token, False)``, or ``(None, True)`` when Microsoft refused a refresh token that a sign-in replaced
    meanwhile (the caller tries once more with the new one)."""
    cred_id = credential.credentialId
    try:
        refresh_token = sealed.get_secret(settings, secret_name=credential.secretName,
                                          sealed=credential.sealedRefreshToken, aad=principals.refresh_aad(cred_id))
    except SecretNotFound:
        raise _reauthentication(account, cred_id, credential.etag, CREDENTIAL_MISSING,
                                "the stored refresh token of this mailbox no longer exists") from None
    except sealed.Unsealable:
        log.error("credential %s: its sealed refresh token does not open (tampered, or a data key not in the ring)",
                  cred_id)
        raise _reauthentication(account, cred_id, credential.etag, CREDENTIAL_UNREADABLE,
                                "the stored refresh token of this mailbox cannot be decrypted") from None
    started = time.time()
    try:
        tokens = _redeem(app, settings, refresh_token, scopes)
    except IdentityUnavailable:
        raise unavailable("Microsoft's sign-in service") from None
    except IdentityError as exc:
        if exc.code not in REAUTH_ERRORS:
            raise TokenRefused(account.account, exc.code, exc.description) from None
        current = principals.get_credential(cred_id)
        if may_retry and current is not None and current.etag != credential.etag and not current.refreshClaim:
            return None, True  # a sign-in stored a new refresh token meanwhile: try that one
        raise _reauthentication(account, cred_id, credential.etag, exc.code, exc.description) from None
    granted = tuple(tokens.scopes) or tuple(scopes)
    token = _Cached(tokens.access_token, started + tokens.expires_in, granted)
    _store_result(credential, key, token, tokens.refresh_token, list(tokens.scopes), settings, strict=strict_rotation)
    return token, False


def _store_result(credential: Credential, key: str, token: _Cached, refresh_token: str | None, granted: list[str],
                  settings: Settings, *, strict: bool) -> None:
    """One write under the claim: the access token for every instance, the claim released, and the newest refresh
    token when due (``rotation_due``; in envelope mode always, since it costs nothing more than this write).

    A row changed meanwhile (a sign-in replaced it) is left alone: its refresh token is newer. A failed write is
    logged (the stored refresh token stays valid; the next refresh writes again), or raised when ``strict``.
    """
    cred_id = credential.credentialId
    now = time.time()
    cache = {k: v for k, v in credential.accessTokens.items()
             if isinstance(v, dict) and isinstance(v.get("e"), (int, float)) and v["e"] > now}
    fields: dict[str, Any] = {"refreshClaim": None, "refreshClaimUntil": None}
    rotate = bool(refresh_token) and (settings.secret_mode == "envelope" or rotation_due(credential, granted))
    try:
        try:
            cache[key] = {"t": sealed.seal(token.access_token, _access_aad(cred_id, key), settings),
                          "e": token.expires_at, "s": list(token.scopes)}
            fields["accessTokens"] = cache
        except SecretStoreError as exc:  # no data key (Key Vault down, its key missing): not shared this time
            log.warning("could not seal the access token of credential %s for other instances: %s", cred_id,
                        type(exc).__name__)
        if rotate and refresh_token:
            placement = sealed.put_secret(settings, name=credential.secretName or principals.secret_name(cred_id),
                                          aad=principals.refresh_aad(cred_id), value=refresh_token)
            known = {_scope_key(s) for s in credential.scopes}
            fields.update(secretName=placement.secretName, sealedRefreshToken=placement.sealed,
                          tokenWrittenAt=utcnow(), brokenCode=None, keepAliveAt=None,
                          scopes=list(credential.scopes) + [s for s in granted if _scope_key(s) not in known])
        if principals.change_credential(credential, fields) is None:
            log.info("credential %s changed during its refresh (a new sign-in): its row is kept", cred_id)
        elif rotate:
            log.info("stored the newest refresh token of credential %s", cred_id)
    except Exception as exc:  # noqa: BLE001 - the stored token stays valid; the next refresh writes again
        log.warning("could not store the refresh of credential %s: %s", cred_id, type(exc).__name__)
        if strict:
            raise
        _release(credential)


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
