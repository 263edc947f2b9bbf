"""The Microsoft identity client: every OAuth exchange goes through MSAL, and only through this module.

A fresh ``ConfidentialClientApplication`` is built per operation with a throw-away token cache (tokens
of different users must never share a cache) and a process-wide ``http_cache``, so the authority's
discovery document is fetched once per instance, not once per request.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.clouds import authority_host
from shared.microsoft.outbound import http_session
from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import msal

    from shared.microsoft.app import AppRegistration

MSA_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"  # personal Microsoft accounts
CLOCK_SKEW = 300
TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

class _DiscoveryCache(dict):
    """MSAL's ``http_cache``, shared by every client of the process, minus MSAL's POST throttle entries.

    MSAL keys its 5xx/429 throttle for auth-code grants without the user (its key helper returns None
    for the missing refresh_token instead of falling back to the code), so a shared cache would let one
    failed redemption stall every sign-in of the app for Retry-After seconds. Discovery GETs are kept.
    """

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, str) and key.startswith("POST "):
            return
        super().__setitem__(key, value)


_http_cache: dict[Any, Any] = _DiscoveryCache()


REDEEMED_CODE = 54005  # AADSTS54005: "OAuth2 Authorization code was already redeemed"


class IdentityError(Exception):
    """Microsoft (or our claim checks) refused: an OAuth ``error`` code and a description for the app."""

    def __init__(self, code: str, description: str, error_codes: tuple[int, ...] = ()) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.error_codes = error_codes  # Entra's AADSTS numbers (``error_codes``), when it sent them

    @property
    def code_already_redeemed(self) -> bool:
        """AADSTS54005: the authorization code was redeemed before (a replayed or parallel callback)."""
        return self.code == "invalid_grant" and REDEEMED_CODE in self.error_codes


class IdentityUnavailable(Exception):
    """Microsoft could not be reached or answered 5xx: retry later, nothing changed."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_in: int
    scopes: list[str]
    claims: dict[str, Any]


def authority_url(app: AppRegistration, settings: Settings) -> str:
    return f"https://{authority_host(app.cloud, settings.authority_host)}/{app.authority}"


def _client(app: AppRegistration, client_secret: str, settings: Settings) -> msal.ConfidentialClientApplication:
    import warnings

    import msal

    # MSAL nudges towards response_mode=form_post on every flow; query mode is what the flow contract uses.
    warnings.filterwarnings("ignore", message=".*response_mode.*", category=UserWarning, module="msal")

    try:
        return msal.ConfidentialClientApplication(
            app.clientId,
            client_credential=client_secret,
            authority=authority_url(app, settings),
            http_client=http_session(settings),
            http_cache=_http_cache,
            instance_discovery=False,
            token_cache=msal.TokenCache(),
            timeout=15,
        )
    except ValueError as exc:  # discovery failed: unreachable or a bad authority
        raise IdentityUnavailable(f"the sign-in service could not be reached ({type(exc).__name__})") from exc
    except Exception as exc:
        if _is_network(exc):
            raise IdentityUnavailable("the sign-in service could not be reached") from exc
        raise


def _is_network(exc: BaseException) -> bool:
    """Network failures, and MSAL's ``MsalServiceError`` which it raises (not returns) on 5xx/429."""
    return any(cls.__module__.startswith(("requests", "urllib3")) or cls.__name__ == "MsalServiceError"
               for cls in type(exc).__mro__) or isinstance(exc, (ConnectionError, TimeoutError))


def start_flow(app: AppRegistration, client_secret: str, settings: Settings, scopes: list[str], *,
               state: str | None = None, login_hint: str | None = None,
               domain_hint: str | None = None) -> dict[str, Any]:
    """MSAL's auth-code flow dict (state, nonce, PKCE verifier, ``auth_uri``) for ``prompt=select_account``;
    ``state``: ours (``shared.signin.flowstate.new_state``), else MSAL's random one."""
    client = _client(app, client_secret, settings)
    try:
        return client.initiate_auth_code_flow(
            scopes, redirect_uri=settings.oauth_redirect_uri, prompt="select_account", state=state,
            login_hint=login_hint, domain_hint=domain_hint,
        )
    except Exception as exc:
        if _is_network(exc):
            raise IdentityUnavailable("the sign-in service could not be reached") from exc
        raise


def redeem_code(app: AppRegistration, client_secret: str, settings: Settings, flow: dict[str, Any],
                auth_response: dict[str, str]) -> Tokens:
    """Redeem the code (MSAL checks state and nonce), then check the id_token claims ourselves."""
    client = _client(app, client_secret, settings)
    try:
        result = client.acquire_token_by_auth_code_flow(flow, auth_response)
    except Exception as exc:
        if _is_network(exc):
            raise IdentityUnavailable("the sign-in service could not be reached") from exc
        if isinstance(exc, (ValueError, RuntimeError)):  # MSAL: state (ValueError) or nonce (RuntimeError) mismatch
            raise IdentityError("invalid_request", "the sign-in response did not match the sign-in request") from exc
        raise
    tokens = _tokens(result)
    validate_claims(tokens.claims, app, settings)
    return tokens


def refresh(app: AppRegistration, client_secret: str, settings: Settings, refresh_token: str,
            scopes: list[str]) -> Tokens:
    client = _client(app, client_secret, settings)
    try:
        result = client.acquire_token_by_refresh_token(refresh_token, scopes)
    except Exception as exc:
        if _is_network(exc) or isinstance(exc, ValueError):
            raise IdentityUnavailable("the sign-in service could not be reached") from exc
        raise
    return _tokens(result)


def _tokens(result: Any) -> Tokens:
    if not isinstance(result, dict):
        raise IdentityUnavailable("the sign-in service gave no usable answer")
    if "error" in result:
        code = str(result.get("error") or "unknown_error")
        description = _first_line(result.get("error_description")) or code
        if code in TRANSIENT_ERRORS:
            raise IdentityUnavailable(description)
        numbers = result.get("error_codes")
        raise IdentityError(code, description, tuple(n for n in numbers if isinstance(n, int))
                            if isinstance(numbers, list) else ())
    if not result.get("access_token"):
        raise IdentityUnavailable("the sign-in service answered without a token")
    scope = result.get("scope") or ""
    return Tokens(
        access_token=result["access_token"],
        refresh_token=result.get("refresh_token"),
        expires_in=int(result.get("expires_in") or 3600),
        scopes=scope.split() if isinstance(scope, str) else list(scope),
        claims=dict(result.get("id_token_claims") or {}),
    )


def _first_line(text: Any) -> str:
    """Entra descriptions carry trace and correlation ids after the first line; apps need the first."""
    return str(text or "").strip().splitlines()[0][:300] if text else ""


# --- what the id_token proves about the signer's addresses ---------------------------------------------------

def sign_in_name(claims: dict[str, Any]) -> str:
    """The signer's sign-in name: ``preferred_username`` (the UPN of a work account, the address of a
    personal one), else ``upn``, else the object id. Never the ``email`` claim."""
    for key in ("preferred_username", "upn"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return str(claims.get("oid") or "")


def is_guest(claims: dict[str, Any]) -> bool:
    """A user from another tenant or identity provider (B2B guest): Entra adds ``idp`` for them only. Their
    ``preferred_username`` is an address of their home organisation, not one this tenant verified."""
    idp = claims.get("idp")
    return isinstance(idp, str) and bool(idp) and idp != claims.get("iss")


def email_verified(claims: dict[str, Any]) -> bool:
    """Whether the ``email`` claim's domain is verified by its owner (the optional ``xms_edov`` claim)."""
    value = claims.get("xms_edov")
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1"))


def proven_addresses(claims: dict[str, Any]) -> list[str]:
    """Addresses the id_token proves to be the signer's own, most specific first, without asking anyone:
    the ``email`` claim only with ``xms_edov`` true, and the sign-in name when it is an address in a domain
    verified by the signer's tenant (a UPN's domain must be; not so a guest's). The ``email`` claim alone
    proves nothing: a tenant administrator can set it to any address (the "nOAuth" spoofing)."""
    found: list[str] = []
    email = claims.get("email")
    if isinstance(email, str) and "@" in email and email_verified(claims):
        found.append(email.strip())
    name = sign_in_name(claims)
    if "@" in name and not is_guest(claims) and name.lower() not in {a.lower() for a in found}:
        found.append(name)
    return found


def validate_claims(claims: dict[str, Any], app: AppRegistration, settings: Settings, now: float | None = None) -> None:
    """What MSAL does not check: audience, issuer consistent with the tenant and the app's authority, expiry."""
    now = time.time() if now is None else now
    tid, oid = claims.get("tid"), claims.get("oid")
    if not isinstance(tid, str) or not _GUID.match(tid) or not isinstance(oid, str) or not oid:
        raise IdentityError("invalid_token", "the sign-in did not identify a Microsoft user (no tid/oid)")
    if claims.get("aud") != app.clientId:
        raise IdentityError("invalid_token", "the sign-in token was issued to another application")
    expected_iss = f"https://{authority_host(app.cloud, settings.authority_host)}/{tid}/v2.0"
    if claims.get("iss") != expected_iss:
        raise IdentityError("invalid_token", "the sign-in token has an unexpected issuer")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp < now - CLOCK_SKEW:
        raise IdentityError("invalid_token", "the sign-in token has expired")
    authority = app.authority.lower()
    if _GUID.match(authority) and tid.lower() != authority:
        raise IdentityError("invalid_token", "the user signed in to another tenant than the app allows")
    if authority == "organizations" and tid.lower() == MSA_TENANT:
        raise IdentityError("invalid_token", "personal Microsoft accounts are not allowed by this app")
    if authority == "consumers" and tid.lower() != MSA_TENANT:
        raise IdentityError("invalid_token", "only personal Microsoft accounts are allowed by this app")
