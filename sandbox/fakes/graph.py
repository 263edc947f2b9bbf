"""A small fake of Microsoft Graph's mail folders over HTTPS, for the sign-in's mailbox access check.

It answers ``GET /v1.0/users/{mailbox}/mailFolders/inbox`` and ``GET /v1.0/me/mailFolders/inbox`` the way
Graph does for a delegated token, and ``GET /v1.0/me`` (the signer's directory record: ``id``,
``userPrincipalName``, ``mail``, ``displayName``; needs ``User.Read``):

* the bearer token must be one the identity fake issued (``lookup_access_token``) and not expired, with
  ``aud`` = the Graph resource; else 401 ``InvalidAuthenticationToken``;
* ``scp`` must carry a mail scope: ``Mail.Read``/``Mail.ReadWrite`` (or ``Mail.ReadBasic``) for the signer's
  own mailbox, their ``.Shared`` variants for another user's mailbox; else 403 ``ErrorAccessDenied``;
* the permission table (``Mailboxes``) decides the rest: 200 with the Inbox folder; 403
  ``ErrorAccessDenied`` when the signer may not open the mailbox; 404 ``ErrorInvalidUser`` for a mailbox
  that does not exist; 404 ``MailboxNotEnabledForRESTAPI`` for a user without a mailbox.
* an address is resolved in the token's tenant only: an address in a domain another tenant owns (the
  identity fake's ``domain_tenant``) does not exist for this signer (404 ``ErrorInvalidUser``), whatever its
  ``mail`` attribute or ``email`` claim says. A user's own addresses are the UPN and the directory ``mail``.

Error bodies have Graph's shape: ``{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}``.

The ``Mailboxes`` table is shared with the IMAP fake (``sandbox/fakes/imap.py``): Exchange permissions do not
depend on the protocol. Fault injection: ``fail_next(status)`` answers the next requests with 5xx/429,
``delay_next(seconds)`` holds them (longer than the client's timeout to simulate a hang); ``stop()``
releases held requests. ``requests`` records what was asked (path, signer, status).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from .tls import HTTPSServer

GRAPH_RESOURCE = "https://graph.microsoft.com"
OK, DENIED, NOT_FOUND, NO_MAILBOX = "ok", "denied", "not_found", "no_mailbox"

_PATH = re.compile(r"^/v1\.0/(?:(?P<me>me)|users/(?P<user>[^/]+))/mailfolders/inbox/?$", re.IGNORECASE)
_ME = re.compile(r"^/v1\.0/me/?$", re.IGNORECASE)
_OWN_SCOPES = {"mail.read", "mail.readwrite", "mail.readbasic"}
_SHARED_SCOPES = {"mail.read.shared", "mail.readwrite.shared", "mail.readbasic.shared"}


class Mailboxes:
    """Who may open which mailbox (Exchange's Full Access), keyed by lower-cased address.

    A signer always reaches their own mailbox (the token's ``upn``) unless ``remove_mailbox`` took it
    away (an unlicensed user). Another mailbox must exist (``add_mailbox`` or ``grant``) and be granted to
    the signer's UPN or object id. ``open_all=True`` makes every mailbox exist and open to everyone (what
    tests that are not about permissions want).
    """

    def __init__(self, open_all: bool = False) -> None:
        self.open_all = open_all
        #: The identity fake (set by the Graph and IMAP fakes): users' own addresses and domains' tenants.
        self.directory: Any = None
        self._lock = threading.Lock()
        self._mailboxes: set[str] = set()
        self._grants: set[tuple[str, str]] = set()
        self._without: set[str] = set()

    def add_mailbox(self, *addresses: str) -> None:
        with self._lock:
            self._mailboxes.update(a.lower() for a in addresses)
            self._without.difference_update(a.lower() for a in addresses)

    def remove_mailbox(self, address: str) -> None:
        """The mailbox no longer exists (for a user: no Exchange Online licence)."""
        with self._lock:
            self._mailboxes.discard(address.lower())
            self._without.add(address.lower())

    def grant(self, who: Any, mailbox: str) -> None:
        """Give ``who`` (a UPN, an object id or a ``FakeUser``) Full Access to ``mailbox`` (created if new)."""
        with self._lock:
            self._mailboxes.add(mailbox.lower())
            self._without.discard(mailbox.lower())
            self._grants.add((_who(who), mailbox.lower()))

    def revoke(self, who: Any, mailbox: str) -> None:
        with self._lock:
            self._grants.discard((_who(who), mailbox.lower()))

    def own_addresses(self, claims: dict[str, Any]) -> set[str]:
        """The signer's own mailbox addresses: the UPN, and the directory ``mail`` unless another tenant owns
        its domain (Exchange never gives a recipient an address in a domain its tenant does not own)."""
        upn = str(claims.get("upn") or claims.get("preferred_username") or "").lower()
        own = {upn} if upn else set()
        user = self.directory.find_user(str(claims.get("oid") or "")) if self.directory is not None else None
        mail = (user.directory_mail or "").lower() if user is not None else ""
        if mail and self._tenant_may_hold(claims, mail):
            own.add(mail)
        return own

    def _tenant_may_hold(self, claims: dict[str, Any], address: str) -> bool:
        """False when ``address`` is in a domain another tenant than the token's owns."""
        if self.directory is None:
            return True
        owner = self.directory.domain_tenant(address.rsplit("@", 1)[-1])
        return owner is None or owner.lower() == str(claims.get("tid") or "").lower()

    def decide(self, claims: dict[str, Any], mailbox: str | None) -> str:
        """``ok``, ``denied``, ``not_found`` or ``no_mailbox`` for the signer of ``claims`` and ``mailbox``
        (``None``: the signer's own mailbox). Addresses resolve in the token's tenant only."""
        upn = str(claims.get("upn") or claims.get("preferred_username") or "").lower()
        oid = str(claims.get("oid") or "").lower()
        target = (mailbox or upn).lower()
        if not self._tenant_may_hold(claims, target):
            return NOT_FOUND
        own = self.own_addresses(claims)
        with self._lock:
            if target in self._without:
                return NO_MAILBOX if target in own else NOT_FOUND
            if target in own or self.open_all:
                return OK
            if target not in self._mailboxes:
                return NOT_FOUND
            return OK if (upn, target) in self._grants or (oid, target) in self._grants else DENIED


def _who(who: Any) -> str:
    return str(getattr(who, "upn", who)).lower()


class FakeGraph:
    """Use as a context manager or ``start()`` / ``stop()``; ``url`` is the base to put in ``MC_GRAPH_URL``."""

    def __init__(self, identity: Any, mailboxes: Mailboxes | None = None,
                 resource: str = GRAPH_RESOURCE) -> None:
        self.identity = identity
        self.mailboxes = mailboxes or Mailboxes()
        if self.mailboxes.directory is None:
            self.mailboxes.directory = identity
        self.resource = resource
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._faults: deque[tuple[str, Any]] = deque()
        self._released = threading.Event()
        handler = type("FakeGraphHandler", (_Handler,), {"fake": self})
        self._server = HTTPSServer(handler)
        self._server.httpd.socket.listen(64)
        self.url = self._server.url
        self.ca_bundle = self._server.ca.ca_bundle
        self._thread: threading.Thread | None = None

    def start(self) -> FakeGraph:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                            daemon=True, name="fake-graph")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._thread is not None:
            self._server.httpd.shutdown()
            self._server.httpd.server_close()
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks
    def grant(self, who: Any, mailbox: str) -> None:
        self.mailboxes.grant(who, mailbox)

    def add_mailbox(self, *addresses: str) -> None:
        self.mailboxes.add_mailbox(*addresses)

    def fail_next(self, status: int = 500, count: int = 1, code: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (500 ``UnknownError``, 503, 429 with Retry-After)."""
        with self._lock:
            self._faults.extend([("fail", (status, code))] * count)

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` requests for ``seconds`` before answering (``stop()`` releases them)."""
        with self._lock:
            self._faults.extend([("delay", seconds)] * count)

    def _next_fault(self) -> tuple[str, Any] | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGraph
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in tests
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;"
                                         "IEEE754Compatible=false;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", self._request_id)
        self.send_header("client-request-id", self.headers.get("client-request-id") or self._request_id)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"code": code, "message": message, "innerError": {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": self._request_id,
            "client-request-id": self.headers.get("client-request-id") or self._request_id,
        }}}, headers)

    def _record(self, **values: Any) -> None:
        with self.fake._lock:
            self.fake.requests.append({"method": self.command, "path": urlsplit(self.path).path, **values})

    def do_GET(self) -> None:  # noqa: N802
        self._request_id = str(uuid.uuid4())
        fault = self.fake._next_fault()
        if fault is not None and fault[0] == "delay":
            self.fake._released.wait(fault[1])
        elif fault is not None:
            status, code = fault[1]
            self._record(status=status, upn=None)
            if status == 429:
                return self._error(429, code or "TooManyRequests", "Too many requests.", {"Retry-After": "2"})
            return self._error(status, code or ("ServiceUnavailable" if status == 503 else "UnknownError"), "")
        if _ME.match(urlsplit(self.path).path):
            return self._me()
        match = _PATH.match(urlsplit(self.path).path)
        if match is None:
            self._record(status=400, upn=None)
            return self._error(400, "BadRequest", f"Resource not found for the segment '{self.path.split('/')[-1]}'.")
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        if not token:
            self._record(status=401, upn=None)
            return self._error(401, "InvalidAuthenticationToken", "Access token is empty.")
        claims = self.fake.identity.lookup_access_token(token)
        if claims is None:
            self._record(status=401, upn=None)
            return self._error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        if claims.get("aud") != self.fake.resource:
            self._record(status=401, upn=claims.get("upn"))
            return self._error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
        mailbox = None if match["me"] else unquote(match["user"])
        upn = str(claims.get("upn") or "")
        own = mailbox is None or mailbox.lower() in self.fake.mailboxes.own_addresses(claims)
        scopes = {s.lower() for s in str(claims.get("scp") or "").split()}
        if not scopes & (_OWN_SCOPES | _SHARED_SCOPES if own else _SHARED_SCOPES):
            self._record(status=403, upn=upn, mailbox=mailbox)
            return self._error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        decision = self.fake.mailboxes.decide(claims, mailbox)
        status = {OK: 200, DENIED: 403}.get(decision, 404)
        self._record(status=status, upn=upn, mailbox=mailbox)
        if decision == OK:
            return self._send(200, {
                "@odata.context": f"{self.fake.url}/v1.0/$metadata#users('{mailbox or upn}')/mailFolders/$entity",
                "id": "AAMkAGI2TG93AAA=",
                "displayName": "Inbox", "parentFolderId": "AAMkAGI2AAEIAAA=", "childFolderCount": 0,
                "unreadItemCount": 0, "totalItemCount": 0, "isHidden": False,
            })
        if decision == DENIED:
            return self._error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if decision == NO_MAILBOX:
            return self._error(404, "MailboxNotEnabledForRESTAPI",
                               "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")
        return self._error(404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.")

    def _claims(self) -> dict[str, Any] | None:
        """The claims of a valid Graph token of the request, or None after answering 401."""
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        claims = self.fake.identity.lookup_access_token(token) if token else None
        if claims is None or claims.get("aud") != self.fake.resource:
            self._record(status=401, upn=(claims or {}).get("upn"))
            self._error(401, "InvalidAuthenticationToken", "Access token validation failure.")
            return None
        return claims

    def _me(self) -> None:
        """``GET /me``: the signer's directory record (``$select`` is accepted and ignored)."""
        claims = self._claims()
        if claims is None:
            return
        scopes = {s.lower() for s in str(claims.get("scp") or "").split()}
        if not scopes & {"user.read", "user.readwrite", "user.readbasic.all", "user.read.all", "directory.read.all"}:
            self._record(status=403, upn=claims.get("upn"))
            return self._error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        user = self.fake.identity.find_user(str(claims.get("oid") or ""))
        if user is None:
            self._record(status=404, upn=claims.get("upn"))
            return self._error(404, "Request_ResourceNotFound", "Resource does not exist.")
        self._record(status=200, upn=claims.get("upn"))
        self._send(200, {
            "@odata.context": f"{self.fake.url}/v1.0/$metadata#users/$entity",
            "id": user.oid, "userPrincipalName": user.upn, "mail": user.directory_mail, "displayName": user.name,
        })


__all__ = ["FakeGraph", "Mailboxes", "GRAPH_RESOURCE"]
