"""A small fake of Exchange Online's IMAP service over TLS, for the sign-in's mailbox access check.

It speaks enough IMAP4rev1 for ``imaplib``: the greeting, ``CAPABILITY`` (with ``AUTH=XOAUTH2`` and
``SASL-IR``), ``AUTHENTICATE XOAUTH2`` (with or without an initial response), ``NOOP``, ``SELECT``/``EXAMINE``
of INBOX after login, and ``LOGOUT``. ``LOGIN`` (basic auth) is refused, as Exchange Online does.

An XOAUTH2 login (``user=<mailbox>^Aauth=Bearer <token>^A^A``) succeeds only when the token is one the identity
fake issued and has not expired, its ``aud`` is the Outlook resource (``https://outlook.office.com``), its
``scp`` includes ``IMAP.AccessAsUser.All``, and the permission table (``Mailboxes``, shared with the Graph
fake) lets the signer open ``user``: their own mailbox (UPN or directory ``mail``), or one they were granted
Full Access to, in their own tenant (an address in a domain another tenant owns is no recipient of the
signer's organisation). Anything else answers ``NO AUTHENTICATE failed.``, which is all Exchange says,
whatever the reason.

TLS uses the test CA's ``localhost`` certificate (``MC_CA_BUNDLE``). Fault injection per connection with
``fail_next(kind)``: ``drop`` (close right after the TLS handshake, no greeting), ``hang`` (no greeting; the
client times out), ``drop_on_auth`` / ``hang_on_auth`` (the same at the AUTHENTICATE command). ``stop()``
releases hung connections. ``logins`` records every XOAUTH2 attempt (user, signer, result).
"""

from __future__ import annotations

import base64
import binascii
import socket
import socketserver
import threading
from collections import deque
from typing import Any

from .graph import OK, Mailboxes
from .tls import test_ca

OUTLOOK_RESOURCE = "https://outlook.office.com"
IMAP_SCOPE = "IMAP.AccessAsUser.All"
FAULTS = ("drop", "hang", "drop_on_auth", "hang_on_auth")
CAPABILITIES = ("IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE "
                "LITERAL+")


class FakeImap:
    """``host`` / ``port`` / ``address`` (``localhost:<port>``, for ``MC_IMAP_HOST``)."""

    def __init__(self, identity: Any, mailboxes: Mailboxes | None = None,
                 resource: str = OUTLOOK_RESOURCE) -> None:
        self.identity = identity
        self.mailboxes = mailboxes or Mailboxes()
        if self.mailboxes.directory is None:
            self.mailboxes.directory = identity
        self.resource = resource
        self.logins: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._faults: deque[str] = deque()
        self._released = threading.Event()
        self._context = test_ca().server_context()
        self.ca_bundle = test_ca().ca_bundle
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.host = "localhost"
        self.port = self._server.server_address[1]
        self.address = f"{self.host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> FakeImap:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                            daemon=True, name="fake-imap")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeImap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks
    def grant(self, who: Any, mailbox: str) -> None:
        self.mailboxes.grant(who, mailbox)

    def add_mailbox(self, *addresses: str) -> None:
        self.mailboxes.add_mailbox(*addresses)

    def fail_next(self, kind: str, count: int = 1) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        with self._lock:
            self._faults.extend([kind] * count)

    def _next_fault(self) -> str | None:
        with self._lock:
            self.connections += 1
            return self._faults.popleft() if self._faults else None

    def _login(self, user: str, token: str) -> bool:
        claims = self.identity.lookup_access_token(token)
        ok = (claims is not None and claims.get("aud") == self.resource
              and IMAP_SCOPE.lower() in {s.lower() for s in str(claims.get("scp") or "").split()}
              and self.mailboxes.decide(claims, user) == OK)
        with self._lock:
            self.logins.append({"user": user, "upn": (claims or {}).get("upn"), "ok": ok})
        return ok


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    fake: FakeImap


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        fake = self.server.fake
        fault = fake._next_fault()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no delayed-ACK stall per reply
        self.request.settimeout(30)
        try:
            conn = fake._context.wrap_socket(self.request, server_side=True)
        except (OSError, ValueError):
            return
        try:
            if fault == "drop":
                return
            if fault == "hang":
                fake._released.wait(60)
                return
            self._serve(conn, fault)
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _serve(self, conn: socket.socket, fault: str | None) -> None:
        fake = self.server.fake
        reader = conn.makefile("rb")

        def send(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        send("* OK The Microsoft Exchange IMAP4 service is ready. [RkFLRS1JTUFQ]")
        authenticated = False
        while True:
            raw = reader.readline(65536)
            if not raw:
                return
            tag, _, rest = raw.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            if not tag or not command:
                send(f"{tag or '*'} BAD Command Error. 10")
            elif command == "CAPABILITY":
                send(f"* CAPABILITY {CAPABILITIES}")
                send(f"{tag} OK CAPABILITY completed.")
            elif command == "NOOP":
                send(f"{tag} OK NOOP completed.")
            elif command == "LOGOUT":
                send("* BYE Microsoft Exchange Server IMAP4 server signing off.")
                send(f"{tag} OK LOGOUT completed.")
                return
            elif command == "LOGIN":
                send(f"{tag} NO LOGIN failed.")
            elif command == "AUTHENTICATE":
                mechanism, _, initial = args.partition(" ")
                if fault == "drop_on_auth":
                    return
                if fault == "hang_on_auth":
                    fake._released.wait(60)
                    return
                if authenticated:
                    send(f"{tag} BAD Command received in Invalid state.")
                    continue
                if mechanism.upper() != "XOAUTH2":
                    send(f"{tag} NO AUTHENTICATE failed.")
                    continue
                if not initial:
                    send("+ ")
                    initial = reader.readline(65536).decode("ascii", "replace").strip()
                if initial == "*":
                    send(f"{tag} BAD Command Argument Error. 11")
                    continue
                user, token = _parse_xoauth2(initial)
                if user is None or token is None:
                    send(f"{tag} BAD Command Argument Error. 11")
                elif fake._login(user, token):
                    authenticated = True
                    send(f"{tag} OK AUTHENTICATE completed.")
                else:
                    send(f"{tag} NO AUTHENTICATE failed.")
            elif command in ("SELECT", "EXAMINE") and authenticated:
                if args.strip('"').upper() != "INBOX":
                    send(f"{tag} NO {command} failed.")
                    continue
                send("* 0 EXISTS")
                send("* 0 RECENT")
                send("* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent)")
                send("* OK [UIDVALIDITY 14] UIDVALIDITY value")
                send(f"{tag} OK [{'READ-ONLY' if command == 'EXAMINE' else 'READ-WRITE'}] {command} completed.")
            else:
                send(f"{tag} BAD Command Error. 12")


def _parse_xoauth2(value: str) -> tuple[str | None, str | None]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None, None
    fields = dict(part.partition("=")[::2] for part in decoded.split("\x01") if part)
    auth = fields.get("auth", "")
    if not decoded.endswith("\x01\x01") or not fields.get("user") or not auth.startswith("Bearer "):
        return None, None
    return fields["user"], auth[len("Bearer "):]


__all__ = ["FakeImap", "Mailboxes", "OUTLOOK_RESOURCE", "IMAP_SCOPE", "FAULTS"]
