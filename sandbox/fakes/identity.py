"""A protocol-level fake of the Microsoft identity platform (Entra ID v2 endpoints), for tests and the sandbox.

Why a fake and not mocks: the service talks to Microsoft only through MSAL, and MSAL's behaviour (how it
discovers endpoints, what it sends, what it checks, how it caches errors) is part of what the tests must
cover. So this fake speaks the wire protocol over HTTPS (throw-away CA from ``tls.py``) and the real MSAL
client is pointed at it with ``authority=f"{fake.url}/<tenant>"`` and ``instance_discovery=False``.

What it reproduces from Entra:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` for ``common``, ``organizations``,
  ``consumers``, a tenant id (any GUID) or a domain of a registered user; ``issuer`` carries the literal
  ``{tenantid}`` for ``common``/``organizations`` and the tenant id otherwise. Unknown tenant: 400
  ``invalid_tenant`` (MSAL turns that into ``ValueError``).
* ``GET /{tenant}/discovery/v2.0/keys`` (JWKS with the RS256 key that signs id_tokens and access tokens).
* ``GET /{tenant}/oauth2/v2.0/authorize``: by default no UI: signs in the user chosen with ``sign_in_as``
  and redirects (302, or a self-posting form for ``response_mode=form_post``) to ``redirect_uri`` with
  ``code``, ``state``, ``session_state`` (and ``client_info`` when asked). An unknown client or a
  redirect URI that is not registered gets an HTML error page (400), never a redirect, as on Entra.
  Other bad requests are redirected back with ``error=invalid_request`` (the fake is deliberately stricter
  than Entra: it insists on PKCE S256, ``state`` and ``nonce``, because the service must always send them).
  With ``interactive=True`` (the sandbox) a valid request shows a **sign-in page** instead: the users the
  fake knows, the shared mailboxes each can open, what the app asks for, and a "Cancel" button that
  answers ``error=access_denied`` (``error_subcode=cancel``, AADSTS65004) as when a person declines
  consent. The page posts back to the authorize endpoint (``POST``), which signs in the chosen user.
* ``POST /{tenant}/oauth2/v2.0/token``: ``authorization_code`` (single use, 10 min, bound to client,
  redirect URI and PKCE verifier) and ``refresh_token`` (a new refresh token every time, old ones stay
  valid until revoked or expired). Client auth by ``client_secret`` in the body or HTTP Basic.
  Errors use Entra's JSON shape (``error``, ``error_description`` starting ``AADSTSnnnn:``,
  ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``), 400, or 401 for
  ``invalid_client``. One access token covers one resource: scopes of two resources in one token request
  answer ``invalid_scope`` (AADSTS28000). Scopes the user never consented to (on refresh) answer
  ``invalid_grant`` with ``suberror: consent_required`` (AADSTS65001).
* ``GET /{tenant}/oauth2/v2.0/logout`` redirects to ``post_logout_redirect_uri`` when given.

Browser-facing endpoints over plain http (``browser_http=True``): MSAL insists on an https authority, so
discovery, keys and token stay on HTTPS with the throw-away CA (the service trusts it via
``MC_CA_BUNDLE``). A browser, though, only ever visits the authorize (and logout) endpoint, and it does
not trust that CA. So the fake can also listen on plain ``http://localhost:<port>`` (loopback only; a
browser treats localhost as a secure context) and advertise that address as ``authorization_endpoint``
and ``end_session_endpoint`` in its discovery document; MSAL builds the sign-in URL from the discovery
document, so nothing else changes. The HTTPS listener keeps answering those paths too.

The fake refuses to start in Azure (``sandbox.refuse_in_azure``).

Test hooks: ``fail_next`` (error injection), ``wrong_claims_next`` (bad id_token claims), ``revoke``,
``reset_password``, ``issue_refresh_token`` (seed a credential without a browser), ``lookup_access_token``
(for fakes of resource servers), ``authorize_requests`` / ``token_requests`` (what the service sent), and a
replaceable ``clock`` so expiry can be tested without sleeping.

Users carry what a spoofing test needs: an ``email`` claim that need not be the user's (a tenant admin sets
it), the directory ``mail`` that Graph's ``/me`` shows, the optional ``xms_edov`` claim, and their tenant;
``domain_tenant`` tells the fakes of Graph and IMAP which tenant owns a domain (Exchange resolves an address
only among the recipients of the token's own tenant).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sandbox import refuse_in_azure

from .signin_page import SIGN_IN_PAGE_HEADERS, render_sign_in_page
from .tls import HTTPSServer, TestCA

__all__ = ["FakeIdentity", "FakeUser", "CONSUMERS_TENANT_ID", "REMOVE", "GRAPH_RESOURCE"]

#: The tenant id Entra uses for personal Microsoft accounts (``consumers``).
CONSUMERS_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
#: Short scopes (``Mail.Read``) belong to Microsoft Graph, as on Entra.
GRAPH_RESOURCE = "https://graph.microsoft.com"
#: Pass as a ``wrong_claims_next`` value to drop a claim from the next id_token.
REMOVE: Any = object()

OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_WELL_KNOWN_TENANTS = ("common", "organizations", "consumers")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Default descriptions (and AADSTS codes) for injected errors, worded like Entra's.
_DEFAULT_ERRORS: dict[str, tuple[int, str]] = {
    "access_denied": (65004, "User declined to consent to access the app."),
    "invalid_grant": (70000, "Provided grant is invalid or malformed."),
    "interaction_required": (
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a new location, "
        "you must use multi-factor authentication to access the resource.",
    ),
    "consent_required": (
        65001,
        "The user or administrator has not consented to use the application. "
        "Send an interactive authorization request for this user and resource.",
    ),
    "login_required": (50058, "A silent sign-in request was sent but no user is signed in."),
    "invalid_client": (7000215, "Invalid client secret provided."),
    "invalid_request": (900144, "The request body must contain the following parameter: 'grant_type'."),
    "invalid_scope": (70011, "The provided value for the input parameter 'scope' is not valid."),
    "unauthorized_client": (700016, "Application was not found in the directory."),
    "temporarily_unavailable": (
        90033, "A transient error has occurred. Please try again."),
    "server_error": (90033, "A transient error has occurred. Please try again."),
}


@lru_cache(maxsize=1)
def _signing_key() -> rsa.RSAPrivateKey:
    """One RSA key per test process: generating it costs tens of milliseconds."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pkce_s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def resource_of(scope: str) -> str | None:
    """The resource a v2 scope belongs to (``None`` for the OIDC scopes), as Entra splits them."""
    if scope in OIDC_SCOPES:
        return None
    if "://" in scope:
        split = urlsplit(scope)
        return f"{split.scheme}://{split.netloc}"
    return GRAPH_RESOURCE


def _short_scope(scope: str) -> str:
    return scope.rsplit("/", 1)[-1] if "://" in scope else scope


@dataclass
class FakeUser:
    """A user the fake can sign in; identify users by ``(tid, oid)``, as the service must."""

    tid: str
    oid: str
    upn: str
    name: str
    #: The id_token's ``email`` claim. Entra takes it from the directory's ``mail`` attribute, which a tenant
    #: administrator can set to any address, in any domain (the "nOAuth" class of spoofing).
    email: str | None = None
    #: The directory's ``mail`` attribute as Graph's ``/me`` shows it (None: the same as ``email``); the
    #: fakes of Graph and IMAP treat it as one of the user's own mailbox addresses (in their tenant only).
    mail: str | None = None
    #: The ``xms_edov`` claim ("email domain owner verified") when not None; Entra sends it only when the
    #: app registration asks for it as an optional claim.
    email_domain_verified: bool | None = None
    #: While true, refresh-token grants fail with ``invalid_grant`` AADSTS50173 (the password was reset
    #: after the token was issued); the next interactive sign-in clears it.
    password_reset: bool = False
    #: Shared mailboxes this user can open (shown on the sandbox sign-in page; fakes of Graph and IMAP may
    #: use it to decide access). The fake's token endpoint does not look at it.
    shared_mailboxes: tuple[str, ...] = ()
    #: A short description for the sandbox sign-in page ("cannot open any shared mailbox").
    note: str | None = None

    @property
    def is_personal(self) -> bool:
        return self.tid == CONSUMERS_TENANT_ID

    @property
    def directory_mail(self) -> str | None:
        """The directory's ``mail`` attribute (``/me``): ``mail``, else the ``email`` claim's address."""
        return self.mail if self.mail is not None else self.email


@dataclass
class _Client:
    client_id: str
    client_secret: str | None
    redirect_uris: list[str] | None
    name: str | None = None


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    scopes: list[str]
    user: FakeUser
    issued_at: float
    max_age: bool
    used: bool = False


@dataclass
class _RefreshToken:
    client_id: str
    user: FakeUser
    scopes: list[str]
    issued_at: float
    revoked: str | None = None  # None, "revoked", "expired" or "password_reset"


@dataclass
class _Failure:
    error: str
    description: str
    status: int | None
    codes: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


class _OAuthError(Exception):
    """Raised inside the token endpoint; rendered as Entra's error JSON."""

    def __init__(self, error: str, code: int, description: str, status: int = 400, **extra: Any) -> None:
        super().__init__(description)
        self.error, self.code, self.description, self.status, self.extra = error, code, description, status, extra


class _PageError(Exception):
    """Raised inside the authorize endpoint when Entra would show an error page instead of redirecting."""

    def __init__(self, code: int, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


class _ShowSignIn(Exception):
    """Raised inside the authorize endpoint in interactive mode: the request is valid, ask who signs in."""

    def __init__(self, client: _Client, scopes: list[str]) -> None:
        super().__init__("sign-in page")
        self.client, self.scopes = client, scopes


class _RedirectError(Exception):
    """Raised inside the authorize endpoint when the error goes back to the (validated) redirect URI."""

    def __init__(self, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.error, self.code, self.description = error, code, description


class FakeIdentity:
    """Fake Entra ID v2 over HTTPS. Use as a context manager or call ``start()`` / ``stop()``.

    Thread-safe: the server is threaded and every piece of shared state is guarded by one lock.
    """

    REMOVE = REMOVE
    CONSUMERS_TENANT_ID = CONSUMERS_TENANT_ID

    def __init__(self, *, tenant_id: str | None = None, ca: TestCA | None = None, interactive: bool = False,
                 browser_http: bool = False) -> None:
        """``interactive``: authorize shows a sign-in page instead of signing in ``sign_in_as``'s user
        (changeable later through the attribute). ``browser_http``: also serve the browser-facing endpoints
        on plain ``http://localhost`` and advertise them in discovery (see the module docstring)."""
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.interactive = interactive
        self.kid = "fake-" + secrets.token_hex(4)
        self.clock: Callable[[], float] = time.time
        self.code_lifetime = 600
        self.access_token_lifetime = 3600
        self.id_token_lifetime = 3600
        self.refresh_token_max_inactive = 90 * 24 * 3600
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._users: list[FakeUser] = []
        self._selected: FakeUser | None = None
        self._clients: dict[str, _Client] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._access_tokens: dict[str, dict[str, Any]] = {}
        self._consents: dict[tuple[str, str, str], set[str]] = {}  # (client, tid, oid) -> scopes
        self._failures: dict[str, deque[_Failure]] = {"authorize": deque(), "token": deque(), "discovery": deque()}
        self._claim_overrides: deque[dict[str, Any]] = deque()
        handler = type("FakeIdentityHandler", (_Handler,), {"fake": self})
        self._server = HTTPSServer(handler, ca)
        # socketserver's backlog of 5 drops SYNs under parallel clients (a 1 s retransmit each); widen it.
        self._server.httpd.socket.listen(128)
        self.url = self._server.url
        self.host = urlsplit(self.url).netloc
        self.ca_bundle = self._server.ca.ca_bundle
        self._browser_server: ThreadingHTTPServer | None = None
        self.browser_url = self.url
        if browser_http:
            browser_handler = type("FakeIdentityBrowserHandler", (_Handler,), {"fake": self, "browser_only": True})
            self._browser_server = ThreadingHTTPServer(("127.0.0.1", 0), browser_handler)
            self._browser_server.daemon_threads = True
            self.browser_url = f"http://localhost:{self._browser_server.server_address[1]}"
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeIdentity:
        if not self._started:
            refuse_in_azure("the fake Microsoft identity platform")
            # Our own threads rather than HTTPSServer.start(): a short poll interval makes stop() take
            # milliseconds instead of serve_forever's default half second per test.
            self._threads = [threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True, name=f"fake-identity-{i}",
            ) for i, server in enumerate(self._servers())]
            for thread in self._threads:
                thread.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            for server in self._servers():
                server.shutdown()
                server.server_close()
            for thread in self._threads:
                thread.join(timeout=5)
            self._started = False

    def _servers(self) -> list[Any]:
        return [self._server.httpd] + ([self._browser_server] if self._browser_server is not None else [])

    def __enter__(self) -> FakeIdentity:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authority(self, tenant: str = "common") -> str:
        """The MSAL ``authority`` for ``tenant`` on this fake."""
        return f"{self.url}/{tenant}"

    # ------------------------------------------------------------------ registry
    def add_user(
        self,
        upn: str,
        *,
        tid: str | None = None,
        oid: str | None = None,
        name: str | None = None,
        email: str | None = None,
        mail: str | None = None,
        email_domain_verified: bool | None = None,
        password_reset: bool = False,
        shared_mailboxes: Iterable[str] = (),
        note: str | None = None,
    ) -> FakeUser:
        """Register a user (default tenant ``tenant_id``). The first user added is signed in by default.

        ``email`` is the id_token claim, ``mail`` the directory attribute (default: ``email``), and
        ``email_domain_verified`` the ``xms_edov`` claim (left out when None)."""
        user = FakeUser(
            tid=tid or self.tenant_id,
            oid=oid or str(uuid.uuid4()),
            upn=upn,
            name=name or upn.split("@", 1)[0].replace(".", " ").title(),
            email=email,
            mail=mail,
            email_domain_verified=email_domain_verified,
            password_reset=password_reset,
            shared_mailboxes=tuple(m.lower() for m in shared_mailboxes),
            note=note,
        )
        with self._lock:
            self._users.append(user)
            if self._selected is None:
                self._selected = user
        return user

    def sign_in_as(self, user: FakeUser | None) -> None:
        """Choose who the following authorize requests sign in (kept until changed)."""
        with self._lock:
            self._selected = user

    def add_client(
        self, client_id: str, client_secret: str | None, redirect_uris: Iterable[str] | None = None,
        *, name: str | None = None,
    ) -> None:
        """Register an app. ``client_secret=None`` is a public client; ``redirect_uris=None`` accepts any.
        ``name`` is the display name the sign-in page shows (default: the client id)."""
        with self._lock:
            self._clients[client_id] = _Client(
                client_id, client_secret, list(redirect_uris) if redirect_uris is not None else None, name
            )

    # ------------------------------------------------------------------ test hooks
    def fail_next(
        self,
        endpoint: str,
        error: str,
        description: str | None = None,
        status: int | None = None,
        count: int = 1,
        *,
        codes: list[int] | None = None,
        **extra: Any,
    ) -> None:
        """Make the next ``count`` requests to ``endpoint`` ("authorize", "token" or "discovery") fail.

        authorize: redirect to ``redirect_uri?error=...&error_description=...&state=...`` (as when a user
        declines consent), or with ``status`` render an error page with that status instead.
        token: Entra's error JSON with ``status`` (default 400; 401 for ``invalid_client``; 503 for
        ``temporarily_unavailable``; 500 for ``server_error``). ``extra`` adds fields such as
        ``suberror="consent_required"`` or ``claims=...``; a ``retry_after`` extra becomes a Retry-After header.
        discovery: the openid-configuration answers ``status`` (default 500) with the error JSON.
        """
        if endpoint not in self._failures:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        code, default_text = _DEFAULT_ERRORS.get(error, (50000, "There was an error issuing a token."))
        stated = re.match(r"AADSTS(\d+):", description or "")
        if stated:
            code = int(stated.group(1))
        if status is None and endpoint != "authorize":
            status = {"invalid_client": 401, "temporarily_unavailable": 503, "server_error": 500}.get(
                error, 500 if endpoint == "discovery" else 400
            )
        failure = _Failure(
            error=error,
            description=description or f"AADSTS{code}: {default_text}",
            status=status,
            codes=codes or [code],
            extra=extra,
        )
        with self._lock:
            for _ in range(count):
                self._failures[endpoint].append(failure)

    def wrong_claims_next(self, **overrides: Any) -> None:
        """Make the next id_token carry these claims (``REMOVE`` drops one), e.g. ``aud="other"``."""
        with self._lock:
            self._claim_overrides.append(dict(overrides))

    def revoke(self, target: FakeUser | str, *, reason: str = "revoked") -> None:
        """Invalidate refresh tokens: all of a user's, or one token string.

        ``reason``: "revoked" (AADSTS50173, e.g. revokeSignInSessions), "expired" (AADSTS700082, 90 days
        unused) or "password_reset" (AADSTS50173 worded for a password change).
        """
        if reason not in ("revoked", "expired", "password_reset"):
            raise ValueError(reason)
        with self._lock:
            if isinstance(target, FakeUser):
                for rt in self._refresh_tokens.values():
                    if rt.user is target and rt.revoked is None:
                        rt.revoked = reason
            else:
                rt = self._refresh_tokens.get(target)
                if rt is None:
                    raise KeyError("unknown refresh token")
                rt.revoked = reason

    def reset_password(self, user: FakeUser) -> None:
        """The user's password changed: every refresh token issued so far dies (AADSTS50173)."""
        self.revoke(user, reason="password_reset")

    def issue_refresh_token(self, user: FakeUser, client_id: str, scopes: Iterable[str]) -> str:
        """Mint a refresh token as if ``user`` had signed in to ``client_id`` and consented to ``scopes``.

        For tests of token refresh that should not run the browser flow first.
        """
        scopes = list(scopes)
        with self._lock:
            self._consent(client_id, user, scopes)
            return self._new_refresh_token(client_id, user, scopes)

    def lookup_access_token(self, token: str) -> dict[str, Any] | None:
        """Claims of an access token this fake issued and that has not expired (for resource fakes)."""
        with self._lock:
            claims = self._access_tokens.get(token)
        if claims is None or claims["exp"] <= self.clock():
            return None
        return dict(claims)

    def decode(self, token: str) -> dict[str, Any]:
        """Verify a JWT this fake signed (any audience) and return its claims; for test assertions."""
        return jwt.decode(
            token, _signing_key().public_key(), algorithms=["RS256"],
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )

    def consented_scopes(self, user: FakeUser, client_id: str) -> set[str]:
        with self._lock:
            return set(self._consents.get((client_id, user.tid, user.oid), set()))

    @property
    def users(self) -> list[FakeUser]:
        with self._lock:
            return list(self._users)

    def find_user(self, key: str) -> FakeUser | None:
        """The user with this object id or UPN (case-insensitive)."""
        key = key.strip().lower()
        with self._lock:
            return next((u for u in self._users if key in (u.oid.lower(), u.upn.lower())), None)

    def domain_tenant(self, domain: str) -> str | None:
        """The tenant that owns ``domain``: a domain is verified in one tenant, and a UPN's domain must be
        verified in the user's tenant, so it is the tenant of any user whose UPN has it. None: unknown."""
        domain = domain.strip().lower()
        with self._lock:
            return next((u.tid for u in self._users if u.upn.rsplit("@", 1)[-1].lower() == domain), None)

    @property
    def last_authorize(self) -> dict[str, str] | None:
        with self._lock:
            return self.authorize_requests[-1] if self.authorize_requests else None

    # ------------------------------------------------------------------ tenants
    def _resolve_tenant(self, segment: str) -> str | None:
        """The tenant id a path segment names; "" for common/organizations; None when unknown."""
        low = segment.lower()
        if low in ("common", "organizations"):
            return ""
        if low == "consumers":
            return CONSUMERS_TENANT_ID
        if _GUID.match(segment):
            return low
        with self._lock:
            for user in self._users:
                if user.upn.rsplit("@", 1)[-1].lower() == low:
                    return user.tid
        return None

    def _issuer(self, tid: str) -> str:
        return f"{self.url}/{tid}/v2.0"

    def openid_configuration(self, segment: str) -> dict[str, Any] | None:
        tid = self._resolve_tenant(segment)
        if tid is None:
            return None
        path = segment if tid == "" or segment.lower() == "consumers" else tid
        base = f"{self.url}/{path}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self._issuer(tid or "{tenantid}"),
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{GRAPH_RESOURCE}/oidc/userinfo",
            "authorization_endpoint": f"{self.browser_url}/{path}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{self.browser_url}/{path}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
                "name", "tid", "ver", "at_hash", "c_hash", "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": None,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(_signing_key().public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    # ------------------------------------------------------------------ authorize
    def _authorize(self, segment: str, query: dict[str, str], choice: str | None = None) -> tuple[str, dict[str, str]]:
        """Validate an authorization request; return (redirect_uri, response params) or raise.

        ``choice`` is the answer of the sign-in page (a user's object id, or "cancel"); None for the
        request itself, which is recorded, may fail by ``fail_next`` and, in interactive mode, raises
        ``_ShowSignIn`` once it is known to be valid.
        """
        with self._lock:
            if choice is None:
                self.authorize_requests.append(dict(query))
            tid = self._resolve_tenant(segment)
            if tid is None:
                raise _PageError(90002, f"Tenant '{segment}' not found. Check to make sure you have the correct "
                                        "tenant ID and are signing into the correct cloud.")
            client_id = query.get("client_id", "")
            client = self._clients.get(client_id)
            if not client_id:
                raise _PageError(900144, "The request body must contain the following parameter: 'client_id'.")
            if client is None:
                raise _PageError(700016, f"Application with identifier '{client_id}' was not found in the "
                                         f"directory '{segment}'.")
            redirect_uri = query.get("redirect_uri")
            if not redirect_uri:
                if not client.redirect_uris:
                    raise _PageError(900144, "The request body must contain the following parameter: "
                                             "'redirect_uri'.")
                redirect_uri = client.redirect_uris[0]
            if client.redirect_uris is not None and redirect_uri not in client.redirect_uris:
                raise _PageError(50011, f"The redirect URI '{redirect_uri}' specified in the request does not "
                                        f"match the redirect URIs configured for the application '{client_id}'.")
            split = urlsplit(redirect_uri)
            if split.scheme not in ("https", "http") or not split.netloc or split.fragment or (
                split.scheme == "http" and split.hostname not in ("localhost", "127.0.0.1")
            ):
                raise _PageError(50011, f"The redirect URI '{redirect_uri}' is not a valid reply address.")
            failure = None
            if choice is None and self._failures["authorize"]:
                failure = self._failures["authorize"].popleft()
        if failure is not None:
            if failure.status is not None:
                raise _PageError(failure.codes[0], failure.description, failure.status)
            raise _RedirectError(failure.error, failure.codes[0], failure.description)
        if query.get("response_type") != "code":
            raise _RedirectError("unsupported_response_type", 70005,
                                 "The provided value for the input parameter 'response_type' is not allowed for "
                                 "this request. Expected value: 'code'.")
        scopes = query.get("scope", "").split()
        if not scopes:
            raise _RedirectError("invalid_request", 900144,
                                 "The request body must contain the following parameter: 'scope'.")
        if not query.get("code_challenge"):
            raise _RedirectError("invalid_request", 9002325,
                                 "Proof Key for Code Exchange is required for cross-origin authorization code "
                                 "redemption.")
        if query.get("code_challenge_method") != "S256":
            raise _RedirectError("invalid_request", 5000541,
                                 "The fake requires code_challenge_method=S256 (plain PKCE is not accepted).")
        if not query.get("state"):
            raise _RedirectError("invalid_request", 900144, "The fake requires the 'state' parameter.")
        if "openid" in scopes and not query.get("nonce"):
            raise _RedirectError("invalid_request", 900144, "The fake requires the 'nonce' parameter.")
        if choice == "cancel":
            raise _RedirectError("access_denied", 65004, "User declined to consent to access the app.")
        if choice is not None:
            user = self.find_user(choice)
            if user is None:
                raise _PageError(50034, "The user account does not exist in the directory.")
        elif self.interactive and query.get("prompt") != "none":
            raise _ShowSignIn(client, scopes)
        else:
            with self._lock:
                user = self._selected
        if user is None:
            if query.get("prompt") == "none":
                raise _RedirectError("login_required", 50058,
                                     "A silent sign-in request was sent but no user is signed in.")
            raise _PageError(50058, "FakeIdentity: no user to sign in; call add_user() or sign_in_as().")
        if tid and tid != user.tid:
            raise _PageError(50020, f"User account '{user.upn}' from identity provider does not exist in tenant "
                                    f"'{tid}' and cannot access the application '{client_id}' in that tenant.")
        if segment.lower() == "consumers" and not user.is_personal:
            raise _PageError(50020, f"User account '{user.upn}' is a work or school account; the application "
                                    "only accepts personal Microsoft accounts on /consumers.")
        if segment.lower() == "organizations" and user.is_personal:
            raise _PageError(50020, f"User account '{user.upn}' is a personal Microsoft account; the application "
                                    "only accepts work or school accounts on /organizations.")
        code = "1.A" + secrets.token_urlsafe(64)
        with self._lock:
            user.password_reset = False  # an interactive sign-in with the new password
            self._consent(client_id, user, scopes)
            self._codes[code] = _Code(
                client_id=client_id,
                redirect_uri=redirect_uri,
                code_challenge=query["code_challenge"],
                nonce=query.get("nonce"),
                scopes=scopes,
                user=user,
                issued_at=self.clock(),
                max_age="max_age" in query,
            )
        params = {"code": code, "state": query["state"], "session_state": str(uuid.uuid4())}
        if query.get("client_info") == "1":
            params["client_info"] = self._client_info(user)
        return redirect_uri, params

    def _consent(self, client_id: str, user: FakeUser, scopes: Iterable[str]) -> None:
        granted = self._consents.setdefault((client_id, user.tid, user.oid), set())
        granted.update(s for s in scopes if not s.endswith("/.default"))

    @staticmethod
    def _client_info(user: FakeUser) -> str:
        return _b64url(json.dumps({"uid": user.oid, "utid": user.tid}).encode())

    # ------------------------------------------------------------------ token
    def _token(self, segment: str, form: dict[str, str], auth_header: str | None) -> dict[str, Any]:
        """Handle a token request; return the JSON body or raise ``_OAuthError``."""
        grant_type = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        secret = form.get("client_secret")
        if auth_header and auth_header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth_header[6:]).decode()
                basic_id, basic_secret = (unquote_plus(p) for p in raw.split(":", 1))
            except Exception:  # noqa: BLE001 - a malformed header is the client's error
                raise _OAuthError("invalid_client", 7000216, "Malformed HTTP Basic client credentials.", 401) from None
            client_id = client_id or basic_id
            if basic_id != client_id:
                raise _OAuthError("invalid_client", 7000216, "client_id in body and Basic header differ.", 401)
            secret = secret or basic_secret
        with self._lock:
            failure = self._failures["token"].popleft() if self._failures["token"] else None
        if failure is not None:
            raise _OAuthError(failure.error, failure.codes[0], failure.description, failure.status or 400,
                              error_codes=failure.codes, **failure.extra)
        if self._resolve_tenant(segment) is None:
            raise _OAuthError("invalid_tenant", 90002, f"Tenant '{segment}' not found.")
        if not grant_type:
            raise _OAuthError("invalid_request", 900144,
                              "The request body must contain the following parameter: 'grant_type'.")
        if not client_id:
            raise _OAuthError("invalid_request", 900144,
                              "The request body must contain the following parameter: 'client_id'.")
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            raise _OAuthError("invalid_client", 700016,
                              f"Application with identifier '{client_id}' was not found in the directory.", 401)
        if client.client_secret is not None:
            if not secret:
                raise _OAuthError("invalid_client", 7000218, "The request body must contain the following "
                                  "parameter: 'client_assertion' or 'client_secret'.", 401)
            if not secrets.compare_digest(secret, client.client_secret):
                raise _OAuthError("invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                                  f"being sent in the request is the client secret value, not the client secret "
                                  f"ID, for a secret added to app '{client_id}'.", 401)
        if grant_type == "authorization_code":
            return self._redeem_code(client, form)
        if grant_type == "refresh_token":
            return self._redeem_refresh_token(client, form)
        raise _OAuthError("unsupported_grant_type", 70003,
                          f"The app requested an unsupported grant type '{grant_type}'.")

    def _redeem_code(self, client: _Client, form: dict[str, str]) -> dict[str, Any]:
        code_value = form.get("code", "")
        now = self.clock()
        with self._lock:
            code = self._codes.get(code_value)
            if code is None or code.client_id != client.client_id:
                raise _OAuthError("invalid_grant", 70000, "The provided value for the 'code' parameter is not valid.")
            if code.used:
                raise _OAuthError("invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please "
                                  "retry with a new valid code or use an existing refresh token.")
            code.used = True  # single use even when the redemption fails below, as on Entra
        if now > code.issued_at + self.code_lifetime:
            raise _OAuthError("invalid_grant", 70008, "The provided authorization code or refresh token has "
                              "expired due to inactivity. Send a new interactive authorization request for this "
                              "user and resource.")
        if form.get("redirect_uri") != code.redirect_uri:
            raise _OAuthError("invalid_grant", 500112, f"The reply address '{form.get('redirect_uri')}' does not "
                              f"match the reply address '{code.redirect_uri}' provided when requesting "
                              "Authorization code.")
        verifier = form.get("code_verifier")
        if not verifier:
            raise _OAuthError("invalid_grant", 50148, "The code_verifier does not match the code_challenge "
                              "supplied in the authorization request for PKCE.")
        if not secrets.compare_digest(_pkce_s256(verifier), code.code_challenge):
            raise _OAuthError("invalid_grant", 501481, "The Code_Verifier does not match the code_challenge "
                              "supplied in the authorization request.")
        requested = form.get("scope", "").split() or code.scopes
        with self._lock:
            granted = self._consents.get((client.client_id, code.user.tid, code.user.oid), set())
            scopes = self._grantable(requested, granted)
        return self._issue(client, code.user, scopes, nonce=code.nonce,
                           auth_time=int(code.issued_at) if code.max_age else None,
                           client_info=form.get("client_info") == "1")

    def _redeem_refresh_token(self, client: _Client, form: dict[str, str]) -> dict[str, Any]:
        value = form.get("refresh_token", "")
        now = self.clock()
        with self._lock:
            rt = self._refresh_tokens.get(value)
        if rt is None or rt.client_id != client.client_id:
            raise _OAuthError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        issued = datetime.fromtimestamp(rt.issued_at, UTC).strftime("%m/%d/%Y %H:%M:%S")
        if rt.revoked == "expired" or now > rt.issued_at + self.refresh_token_max_inactive:
            raise _OAuthError("invalid_grant", 700082, f"The refresh token has expired due to inactivity. The "
                              f"token was issued on {issued} and was inactive for 90.00:00:00.")
        if rt.revoked or rt.user.password_reset:
            raise _OAuthError("invalid_grant", 50173, "The provided grant has expired due to it being revoked, a "
                              "fresh auth token is needed. The user might have changed or reset their password. "
                              f"The grant was issued on '{issued}'.")
        requested = form.get("scope", "").split()
        with self._lock:
            granted = self._consents.get((client.client_id, rt.user.tid, rt.user.oid), set())
            scopes = self._grantable(requested or rt.scopes, granted)
        return self._issue(client, rt.user, scopes, nonce=None, auth_time=None,
                           client_info=form.get("client_info") == "1", always_refresh=True)

    @staticmethod
    def _grantable(requested: list[str], granted: set[str]) -> list[str]:
        """Check one resource per request and consent; expand ``/.default``. Returns the scopes to issue."""
        resources = {r for r in (resource_of(s) for s in requested) if r}
        if len(resources) > 1:
            raise _OAuthError("invalid_scope", 28000, "Provided value for the input parameter scope is not valid "
                              "because it contains more than one resource. Scope "
                              f"{' '.join(requested)} is not valid.")
        out: list[str] = []
        missing: list[str] = []
        for scope in requested:
            if scope in OIDC_SCOPES:
                out.append(scope)
            elif scope.endswith("/.default"):
                resource = resource_of(scope)
                matching = sorted(g for g in granted if resource_of(g) == resource)
                if not matching:
                    missing.append(scope)
                out.extend(matching)
            elif scope not in granted:
                missing.append(scope)
            else:
                out.append(scope)
        if missing:
            raise _OAuthError("invalid_grant", 65001, "The user or administrator has not consented to use the "
                              f"application. Send an interactive authorization request for this user and resource "
                              f"(missing: {' '.join(missing)}).", suberror="consent_required")
        return out

    def _new_refresh_token(self, client_id: str, user: FakeUser, scopes: list[str]) -> str:
        value = "1.A" + secrets.token_urlsafe(96)
        self._refresh_tokens[value] = _RefreshToken(client_id, user, list(scopes), self.clock())
        return value

    def _issue(
        self,
        client: _Client,
        user: FakeUser,
        scopes: list[str],
        *,
        nonce: str | None,
        auth_time: int | None,
        client_info: bool,
        always_refresh: bool = False,
    ) -> dict[str, Any]:
        now = int(self.clock())
        resource_scopes = [s for s in scopes if s not in OIDC_SCOPES]
        resource = resource_of(resource_scopes[0]) if resource_scopes else GRAPH_RESOURCE
        if not resource_scopes:
            resource_scopes = ["User.Read"]  # Entra issues a Graph token when only OIDC scopes are asked
        at_claims = {
            "aud": resource,
            "iss": self._issuer(user.tid),
            "iat": now, "nbf": now, "exp": now + self.access_token_lifetime,
            "appid": client.client_id, "azp": client.client_id,
            "oid": user.oid, "tid": user.tid, "sub": self._sub(client.client_id, user),
            "upn": user.upn, "unique_name": user.upn, "name": user.name,
            "scp": " ".join(_short_scope(s) for s in resource_scopes),
            "uti": _b64url(secrets.token_bytes(16)), "ver": "2.0",
        }
        access_token = self._sign(at_claims)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(resource_scopes),
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": access_token,
        }
        with self._lock:
            self._access_tokens[access_token] = at_claims
            if "offline_access" in scopes or always_refresh:
                body["refresh_token"] = self._new_refresh_token(client.client_id, user, scopes)
            overrides = self._claim_overrides.popleft() if self._claim_overrides and "openid" in scopes else None
        if "openid" in scopes:
            claims: dict[str, Any] = {
                "aud": client.client_id,
                "iss": self._issuer(user.tid),
                "iat": now, "nbf": now, "exp": now + self.id_token_lifetime,
                "name": user.name,
                "oid": user.oid,
                "preferred_username": user.upn,
                "rh": "0.A" + _b64url(secrets.token_bytes(24)),
                "sid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user.tid}/{user.oid}")),
                "sub": self._sub(client.client_id, user),
                "tid": user.tid,
                "uti": _b64url(secrets.token_bytes(16)),
                "ver": "2.0",
            }
            if user.email:
                claims["email"] = user.email
            if user.email_domain_verified is not None:
                claims["xms_edov"] = user.email_domain_verified
            if nonce:
                claims["nonce"] = nonce
            if auth_time is not None:
                claims["auth_time"] = auth_time
            for key, value in (overrides or {}).items():
                if value is REMOVE:
                    claims.pop(key, None)
                else:
                    claims[key] = value
            body["id_token"] = self._sign(claims)
        if client_info:
            body["client_info"] = self._client_info(user)
        return body

    @staticmethod
    def _sub(client_id: str, user: FakeUser) -> str:
        """Pairwise subject: differs per app, so never use it to identify a user across apps."""
        return _b64url(hashlib.sha256(f"{client_id}|{user.tid}|{user.oid}".encode()).digest())

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, _signing_key(), algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})


# ---------------------------------------------------------------------- HTTP
_PATH = re.compile(r"^/(?P<tenant>[^/]+)/(?P<rest>.+)$")


class _Handler(BaseHTTPRequestHandler):
    """Routes Entra's URL shapes to the ``FakeIdentity`` attached as ``fake`` by the subclass."""

    fake: FakeIdentity
    #: The plain-http listener serves only what a browser visits (authorize, logout).
    browser_only = False
    server_version = "FakeEntra/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in tests
        pass

    # -- helpers
    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8", headers)

    def _oauth_error(self, err: _OAuthError) -> None:
        trace_id, correlation_id = str(uuid.uuid4()), self.headers.get("client-request-id") or str(uuid.uuid4())
        stamp = datetime.now(UTC)
        codes = err.extra.pop("error_codes", None) or [err.code]
        retry_after = err.extra.pop("retry_after", None)
        description = err.description
        if not description.startswith("AADSTS"):
            description = f"AADSTS{err.code}: {description}"
        body = {
            "error": err.error,
            "error_description": f"{description} Trace ID: {trace_id} Correlation ID: {correlation_id} "
                                 f"Timestamp: {stamp.strftime('%Y-%m-%d %H:%M:%S')}Z",
            "error_codes": codes,
            "timestamp": stamp.strftime("%Y-%m-%d %H:%M:%S") + "Z",
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.fake.url}/error?code={codes[0]}",
            **err.extra,
        }
        self._json(err.status, body, {"Retry-After": str(retry_after)} if retry_after is not None else None)

    def _page(self, status: int, title: str, text: str) -> None:
        body = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sign in to your account</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p id='error'>{html.escape(text)}</p></body></html>"
        ).encode()
        self._send(status, body, "text/html; charset=utf-8")

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def _route(self) -> tuple[str, str] | None:
        match = _PATH.match(urlsplit(self.path).path)
        return (match["tenant"], match["rest"]) if match else None

    # -- methods
    def do_GET(self) -> None:  # noqa: N802
        route = self._route()
        if route is None:
            return self._json(404, {"error": "not_found"})
        tenant, rest = route
        if self.browser_only and rest not in ("oauth2/v2.0/authorize", "oauth2/v2.0/logout"):
            return self._json(404, {"error": "not_found"})
        if rest == "v2.0/.well-known/openid-configuration":
            return self._discovery(tenant)
        if rest == "discovery/v2.0/keys":
            return self._json(200, self.fake.jwks())
        if rest == "oauth2/v2.0/authorize":
            return self._do_authorize(tenant, self._query())
        if rest == "oauth2/v2.0/logout":
            target = self._query().get("post_logout_redirect_uri")
            if target:
                return self._send(302, b"", "text/plain", {"Location": target})
            return self._page(200, "You signed out of your account", "It's a good idea to close all browser windows.")
        if rest == "oauth2/v2.0/token":
            return self._oauth_error(_OAuthError("invalid_request", 900561,
                                                 "The endpoint only accepts POST, OPTIONS requests. Received a GET "
                                                 "request.", 405))
        return self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        route = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if route is not None and route[1] == "oauth2/v2.0/authorize":
            return self._do_authorize_answer(route[0], raw)
        if route is None or route[1] != "oauth2/v2.0/token" or self.browser_only:
            return self._json(404, {"error": "not_found"})
        tenant = route[0]
        if not (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
            return self._oauth_error(_OAuthError("invalid_request", 900144,
                                                 "The request body must contain the following parameter: "
                                                 "'grant_type'."))
        form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        record: dict[str, Any] = {
            "tenant": tenant,
            "grant_type": form.get("grant_type"),
            "client_id": form.get("client_id"),
            "scope": form.get("scope"),
            "redirect_uri": form.get("redirect_uri"),
            "client_auth": "basic" if (self.headers.get("Authorization") or "").lower().startswith("basic ")
            else ("post" if "client_secret" in form else None),
            "correlation_id": self.headers.get("client-request-id"),
        }
        try:
            body = self.fake._token(tenant, form, self.headers.get("Authorization"))
        except _OAuthError as err:
            record.update(status=err.status, error=err.error)
            with self.fake._lock:
                self.fake.token_requests.append(record)
            return self._oauth_error(err)
        record.update(status=200, error=None)
        with self.fake._lock:
            self.fake.token_requests.append(record)
        self._json(200, body)

    def _discovery(self, tenant: str) -> None:
        with self.fake._lock:
            queue = self.fake._failures["discovery"]
            failure = queue.popleft() if queue else None
        if failure is not None:
            return self._oauth_error(_OAuthError(failure.error, failure.codes[0], failure.description,
                                                 failure.status or 500))
        config = self.fake.openid_configuration(tenant)
        if config is None:
            return self._oauth_error(_OAuthError("invalid_tenant", 90002, f"Tenant '{tenant}' not found. Check to "
                                                 "make sure you have the correct tenant ID and are signing into "
                                                 "the correct cloud."))
        self._json(200, config)

    def _do_authorize_answer(self, tenant: str, raw: bytes) -> None:
        """The sign-in page's form: ``request`` (the original authorize query) and ``choice``."""
        form = {k: v[-1] for k, v in parse_qs(raw.decode(errors="replace"), keep_blank_values=True).items()}
        query = {k: v[-1] for k, v in parse_qs(form.get("request", ""), keep_blank_values=True).items()}
        choice = form.get("choice") or ""
        if not choice:
            return self._page(400, "Sorry, but we're having trouble signing you in.",
                              "AADSTS900144: The request body must contain the following parameter: 'choice'.")
        return self._do_authorize(tenant, query, choice)

    def _do_authorize(self, tenant: str, query: dict[str, str], choice: str | None = None) -> None:
        try:
            redirect_uri, params = self.fake._authorize(tenant, query, choice)
        except _ShowSignIn as ask:
            with self.fake._lock:
                users = list(self.fake._users)
            body = render_sign_in_page(
                action=f"/{tenant}/oauth2/v2.0/authorize", request=urlencode(query),
                app_name=ask.client.name or ask.client.client_id, scopes=ask.scopes, users=users,
                login_hint=query.get("login_hint"),
            ).encode()
            return self._send(200, body, "text/html; charset=utf-8", SIGN_IN_PAGE_HEADERS)
        except _PageError as err:
            return self._page(err.status, "Sorry, but we're having trouble signing you in.",
                              f"AADSTS{err.code}: {err.description}")
        except _RedirectError as err:
            redirect_uri = query.get("redirect_uri") or ""
            if not redirect_uri:
                with self.fake._lock:
                    client = self.fake._clients.get(query.get("client_id", ""))
                redirect_uri = client.redirect_uris[0] if client and client.redirect_uris else ""
            description = err.description if err.description.startswith("AADSTS") else (
                f"AADSTS{err.code}: {err.description}")
            params = {"error": err.error, "error_description": description}
            if err.error == "access_denied":
                params["error_subcode"] = "cancel"
            if query.get("state"):
                params["state"] = query["state"]
        mode = query.get("response_mode") or "query"
        if mode == "form_post":
            inputs = "".join(
                f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'/>" for k, v in params.items()
            )
            page = (
                "<!DOCTYPE html><html><head><title>Working...</title></head><body onload='document.forms[0].submit()'>"
                f"<form method='POST' action='{html.escape(redirect_uri)}'>{inputs}"
                "<noscript><input type='submit' value='Continue'/></noscript></form></body></html>"
            ).encode()
            return self._send(200, page, "text/html; charset=utf-8")
        split = urlsplit(redirect_uri)
        if mode == "fragment":
            location = urlunsplit(split._replace(fragment=urlencode(params)))
        else:
            query_string = f"{split.query}&{urlencode(params)}" if split.query else urlencode(params)
            location = urlunsplit(split._replace(query=query_string))
        self._send(302, b"", "text/html; charset=utf-8", {"Location": location})
