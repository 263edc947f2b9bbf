"""Mailbox access check at sign-in: can the signer actually open the mailbox the link connects?

A delegated link is only useful if the person who signed in can open the shared mailbox (Full Access in
Exchange). Microsoft issues the token either way, so the sign-in (``shared.signin.flow._finish``) checks it
with the access token it just obtained, **before** anything is stored, and refuses the sign-in when the
mailbox says no. Nothing needs undoing: the link nonce is not claimed yet, so the same link works again
once the admin has granted access.

How it checks, by the app's ``baseScopes`` (the check does what the app will do with the hand-off):

* ``api`` apps: Microsoft Graph ``GET {graph}/v1.0/users/{mailbox}/mailFolders/inbox`` (``/me/...`` for
  the signer's own mailbox). 200: ok; 403: denied (no permission on the mailbox); 404 (or 400
  ``ErrorInvalidUser``): not found (no such mailbox, or not enabled for REST). The Graph base is
  ``MC_GRAPH_URL`` or the app's cloud.
* ``imap`` apps: an IMAP login over TLS to the cloud's IMAP host (``outlook.office365.com:993``) with
  SASL XOAUTH2 as the mailbox address (``user=<mailbox>``, the delegate's token), then LOGOUT. Exchange
  answers ``NO AUTHENTICATE failed.`` alike for "no permission", "no such mailbox" and "IMAP disabled for
  this mailbox", so IMAP knows only ok or denied. ``MC_IMAP_HOST`` (``host[:port]``, tests and the sandbox
  only) points it elsewhere.

Own (non-delegated) mailboxes are checked too: it costs one request, and a user without an Exchange
Online mailbox, or with IMAP disabled, would otherwise get an account that fails at first use. The check
also decides *which* address an own mailbox has (``shared.signin.flow``, "Which mailbox"): an address that
only a token claim states is opened by address (``by_address``: IMAP ``user=<address>``, Graph
``/users/{address}/mailFolders/inbox``), because Exchange resolves an address only among the recipients
of the token's own tenant, so a claim set to another organisation's address cannot open anything.

``read_directory_record`` reads the signer's own directory record (Graph ``GET /me``: ``id``,
``userPrincipalName``, ``mail``) with the sign-in's token; only ``api`` apps have a Graph token (an ``imap``
app's token is for Outlook, whose IMAP login proves the mailbox instead).

Outcomes (``AccessResult.outcome``): ``ok``, ``denied``, ``not_found``, ``unavailable`` (the check could
not run: timeout, network or TLS error, 5xx/429, an answer it does not understand). What the sign-in does
with them is set by ``MC_ACCESS_CHECK``:

* ``on`` (default): denied / not_found refuse the sign-in (``error=mailbox_access_denied`` /
  ``mailbox_not_found``); ``unavailable`` is logged as a warning and does **not** block (a firewall that
  blocks outbound IMAP must not make every sign-in fail) for a **new** account only: it is stored with
  ``meta.accessCheck = "skipped"`` and ``accessCheck = "pending"`` (proven later by
  ``shared.core.mailbox_access.prove_access``). Moving an existing account to another signer needs ``ok``.
* ``strict``: as ``on``, but ``unavailable`` refuses the sign-in with ``temporarily_unavailable`` (the
  same link can be retried).
* ``off``: no check (``meta.accessCheck = "off"``, ``accessCheck = "off"``); no re-binding to another signer.

Timeouts are short (``TIMEOUT_SECONDS``): the person waits on the callback. The token never appears in a
log line or a result. ``requests`` and ``imaplib`` are imported on first use (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import quote

from shared.clouds import CLOUDS
from shared.microsoft.outbound import http_session
from shared.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    import requests

    from shared.microsoft.app import AppRegistration

OK, DENIED, NOT_FOUND, UNAVAILABLE = "ok", "denied", "not_found", "unavailable"
TIMEOUT_SECONDS = 10.0
IMAP_PORT = 993
# Graph error codes that mean "there is no such mailbox" even when the status is not 404.
_NOT_FOUND_CODES = {"ErrorInvalidUser", "MailboxNotEnabledForRESTAPI", "ResourceNotFound",
                    "Request_ResourceNotFound", "ErrorNonExistentMailbox"}



@dataclass(frozen=True)
class DirectoryRecord:
    """The signer's own directory record (Graph ``/me``)."""

    id: str
    user_principal_name: str
    mail: str | None = None


@dataclass(frozen=True)
class AccessResult:
    outcome: str  # ok | denied | not_found | unavailable
    method: str  # graph | imap
    detail: str = ""  # for logs: what the server answered or why the check could not run (never the token)
    record: DirectoryRecord | None = None  # read_directory_record only

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def check_mailbox_access(app: AppRegistration, access_token: str, mailbox: str, signer_upn: str, settings: Settings,
                         *, delegated: bool = True, by_address: bool = False) -> AccessResult:
    """Check with ``access_token`` (just issued to ``signer_upn``) that ``mailbox`` can be opened.

    An own mailbox (``delegated=False``) is opened as the signer's (Graph ``/me``) unless ``by_address``:
    then Graph opens ``/users/{mailbox}``, which proves that the address is a mailbox of the signer's
    tenant that the signer opens. IMAP always logs in as ``mailbox``. Never raises for network or protocol
    trouble: that is ``unavailable``.
    """
    if app.baseScopes == "api":
        return _graph(app, access_token, mailbox, delegated or by_address, settings)
    return _imap(app, access_token, mailbox, settings)


def read_directory_record(app: AppRegistration, access_token: str, settings: Settings) -> AccessResult:
    """Graph ``GET /me?$select=id,userPrincipalName,mail`` with the signer's token (``api`` apps only).

    ``ok`` with ``record`` set, else ``unavailable`` (Graph unreachable or 5xx, an answer without ``id``,
    or a token Graph refuses: without the directory record nothing about the mailbox is proven).
    """
    if app.baseScopes != "api":
        return AccessResult(UNAVAILABLE, "graph", "no Graph token (an imap app)")
    response = _graph_get(app, access_token, "me?$select=id,userPrincipalName,mail", settings)
    if isinstance(response, AccessResult):
        return response
    said = f"Graph /me answered {response.status_code}"
    if response.status_code != 200:
        code = _graph_error_code(response)
        return AccessResult(UNAVAILABLE, "graph", said + (f" {code}" if code else ""))
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"] or \
            not isinstance(body.get("userPrincipalName"), str) or not body["userPrincipalName"]:
        return AccessResult(UNAVAILABLE, "graph", said + " without id and userPrincipalName")
    mail = body.get("mail") if isinstance(body.get("mail"), str) and body.get("mail") else None
    return AccessResult(OK, "graph", said, DirectoryRecord(body["id"], body["userPrincipalName"], mail))


# --- Graph ------------------------------------------------------------------------------------------

def graph_base(app: AppRegistration, settings: Settings) -> str:
    return (settings.graph_url or CLOUDS[app.cloud].graph_url).rstrip("/")


def _graph_get(app: AppRegistration, token: str, path: str, settings: Settings) -> requests.Response | AccessResult:
    """``GET <graph>/v1.0/<path>`` with the signer's token; ``unavailable`` when Graph cannot be reached."""
    import requests

    url = f"{graph_base(app, settings)}/v1.0/{path}"
    try:
        return http_session(settings).get(
            url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=(min(5.0, TIMEOUT_SECONDS), TIMEOUT_SECONDS), allow_redirects=False,
        )
    except requests.RequestException as exc:
        return AccessResult(UNAVAILABLE, "graph", f"Graph could not be reached ({_reason(exc)})")


def _graph(app: AppRegistration, token: str, mailbox: str, delegated: bool, settings: Settings) -> AccessResult:
    target = f"users/{quote(mailbox, safe='@')}" if delegated else "me"
    response = _graph_get(app, token, f"{target}/mailFolders/inbox?$select=id", settings)
    if isinstance(response, AccessResult):
        return response
    status, code = response.status_code, _graph_error_code(response)
    said = f"Graph answered {status}" + (f" {code}" if code else "")
    if status == 200:
        return AccessResult(OK, "graph", said)
    if status == 403:
        return AccessResult(DENIED, "graph", said)
    if status == 404 or (status == 400 and code in _NOT_FOUND_CODES):
        return AccessResult(NOT_FOUND, "graph", said)
    return AccessResult(UNAVAILABLE, "graph", said)


def _graph_error_code(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code)[:80] if code else ""


# --- IMAP -------------------------------------------------------------------------------------------

def imap_endpoint(app: AppRegistration, settings: Settings) -> tuple[str, int]:
    """``MC_IMAP_HOST`` (host[:port], ``[v6]:port``) or the app's cloud IMAP host, port 993."""
    value = settings.imap_host or CLOUDS[app.cloud].imap_host
    host, port = value, IMAP_PORT
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, number = value.partition(":")
        port = int(number)
    return host, port


def xoauth2(user: str, token: str) -> bytes:
    """The SASL XOAUTH2 initial client response (before base64)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


@lru_cache(maxsize=4)
def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Built once per CA bundle: loading the system trust store costs 20-40 ms per sign-in otherwise."""
    import ssl

    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def _imap(app: AppRegistration, token: str, mailbox: str, settings: Settings) -> AccessResult:
    import imaplib
    import ssl

    host, port = imap_endpoint(app, settings)
    try:
        context = _tls_context(settings.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        return AccessResult(UNAVAILABLE, "imap", f"the CA bundle could not be loaded ({_reason(exc)})")
    try:
        conn = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=TIMEOUT_SECONDS)
    except (OSError, imaplib.IMAP4.error) as exc:
        return AccessResult(UNAVAILABLE, "imap", f"IMAP {host}:{port} could not be reached ({_reason(exc)})")
    response = xoauth2(mailbox, token)
    try:
        conn.authenticate("XOAUTH2", lambda _challenge: response)
    except imaplib.IMAP4.abort as exc:  # connection dropped or an unexpected answer
        _close(conn)
        return AccessResult(UNAVAILABLE, "imap", f"IMAP {host}:{port} dropped the login ({_reason(exc)})")
    except imaplib.IMAP4.error as exc:
        text = _first_line(str(exc))
        _logout(conn)
        if "command error: BAD" in text:  # imaplib's wording for a tagged BAD: a protocol problem, not a "no"
            return AccessResult(UNAVAILABLE, "imap", f"IMAP {host}:{port} answered BAD ({text})")
        return AccessResult(DENIED, "imap", f"IMAP {host}:{port} answered NO ({text})")
    except OSError as exc:  # timeout or reset while waiting for the answer
        _close(conn)
        return AccessResult(UNAVAILABLE, "imap", f"IMAP {host}:{port} did not answer the login ({_reason(exc)})")
    _logout(conn)
    return AccessResult(OK, "imap", f"IMAP {host}:{port} login OK")


def _logout(conn: object) -> None:
    try:
        conn.logout()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the answer is known; a failed LOGOUT changes nothing
        _close(conn)


def _close(conn: object) -> None:
    try:
        conn.shutdown()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        pass


# --- helpers ----------------------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    text = _first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""


__all__ = ["AccessResult", "DirectoryRecord", "check_mailbox_access", "read_directory_record", "OK", "DENIED",
           "NOT_FOUND", "UNAVAILABLE", "xoauth2", "imap_endpoint", "graph_base"]
