"""The value rules every layer shares: account ids, e-mail addresses, and ONE rule for URLs we send to.

Layer: just above the leaves (imports only ``shared.errors`` and the standard library, so a route parameter
check loads no pydantic); pure functions, no I/O, so their tests run in milliseconds without Azurite.

URLs. A redirect (``redirectUrl``) and a webhook target (``url``) follow the same rule, :func:`check_url`:
absolute http(s), at most 2,048 characters, no whitespace, control characters or backslashes, no
credentials, a valid port, plain http only for loopback (``localhost``, any ``127.0.0.0/8`` address,
``[::1]``), never an IP literal that no app lives at (link-local such as the cloud metadata endpoint
169.254.169.254, multicast, unspecified, reserved). The one difference is the fragment: a redirect may
carry one (an app's own client-side route), a webhook target refuses it (an HTTP client never sends it).
Redirects are then checked against ``MC_REDIRECT_ALLOWLIST`` when one is configured (no open redirects; the
URL is fixed when the link is signed, so every later redirect goes where the app itself asked).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.errors import InvalidInput

MAX_URL_LENGTH = 2048
MAX_ACCOUNT_ID_LENGTH = 200

# Table Storage forbids / \ # ? and control characters in keys; account ids become keys.
_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


# --- account ids and e-mail ---------------------------------------------------------------------------------

def check_account_id(value: str) -> str:
    """An account id usable as a Table Storage key (and in a URL path), unchanged."""
    if not 1 <= len(value) <= MAX_ACCOUNT_ID_LENGTH:
        raise ValueError(f"account id must be 1 to {MAX_ACCOUNT_ID_LENGTH} characters")
    if _FORBIDDEN_KEY_CHARS.search(value):
        raise ValueError("account id must not contain / \\ # ? or control characters")
    if value.strip() != value:
        raise ValueError("account id must not start or end with whitespace")
    return value


def account_id_param(value: str | None) -> str:
    """The ``{account}`` route parameter, or a 400 naming the field (``schemas.AccountId`` in bodies)."""
    try:
        return check_account_id(value or "")
    except ValueError as exc:
        raise InvalidInput(f"account: {exc}", field="account") from None


def check_email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("not a valid e-mail address")
    return value


# --- URLs ---------------------------------------------------------------------------------------------------

class InvalidUrl(ValueError):
    """A URL broke :func:`check_url`; the message says which part, without repeating the URL."""


InvalidRedirect = InvalidUrl


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    address = _ip(host)
    return host == "localhost" or (address is not None and address.is_loopback)


def _is_unroutable(host: str) -> bool:
    """IP literals no app or webhook lives at (loopback is checked first: ``::1`` is in a reserved block)."""
    address = _ip(host)
    if address is None or address.is_loopback:
        return False
    return address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved


def check_url(url: str, *, fragment: bool) -> str:
    """The one URL rule (module docstring); ``fragment``: whether a ``#fragment`` is allowed."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidUrl("is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F or c.isspace() or c == "\\" for c in url):
        raise InvalidUrl("contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise InvalidUrl("is not a valid URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host or port == 0:
        raise InvalidUrl("must be an absolute https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidUrl("must not contain credentials")
    if not fragment and (parts.fragment or "#" in url):
        raise InvalidUrl("must not contain a fragment")
    if parts.scheme == "http" and not is_loopback(host):
        raise InvalidUrl("must use https (plain http is allowed only for localhost)")
    if _is_unroutable(host):
        raise InvalidUrl("must not be a link-local, multicast or reserved address")
    return url


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}".lower()


def validate_redirect_url(url: str, allowlist: tuple[str, ...] = ()) -> str:
    """A ``redirectUrl``: :func:`check_url` with its fragment allowed, then the origin allowlist."""
    try:
        check_url(url, fragment=True)
    except InvalidUrl as exc:
        raise InvalidUrl(f"redirectUrl {exc}") from None
    if allowlist and origin_of(url) not in allowlist:
        raise InvalidUrl("redirectUrl is not on the configured allowlist of origins")
    return url


def check_webhook_url(url: str) -> str:
    """A webhook target: :func:`check_url` without a fragment (pydantic adds the field name)."""
    return check_url(url, fragment=False)


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (replacing same-named ones), fragment dropped."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend((k, v) for k, v in params.items() if v is not None)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
