"""Validation of app-supplied ``redirectUrl`` values and building the redirect back to the app.

No open redirects: only absolute https URLs (plain http only for loopback hosts), without credentials,
and inside ``MC_REDIRECT_ALLOWLIST`` when one is configured. The URL is fixed when the link is signed,
so every later redirect goes to a URL the app itself asked for.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_URL_LENGTH = 2048


class InvalidRedirect(ValueError):
    pass


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}".lower()


def validate_redirect_url(url: str, allowlist: tuple[str, ...] = ()) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InvalidRedirect("redirectUrl is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRedirect(f"redirectUrl is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in url):
        raise InvalidRedirect("redirectUrl contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise InvalidRedirect("redirectUrl is not a valid URL") from exc
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidRedirect("redirectUrl must be an absolute https URL")
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise InvalidRedirect("redirectUrl must use https (plain http is allowed only for localhost)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidRedirect("redirectUrl must not contain credentials")
    if port == 0:
        raise InvalidRedirect("redirectUrl has an invalid port")
    if allowlist and origin_of(url) not in allowlist:
        raise InvalidRedirect("redirectUrl is not on the configured allowlist of origins")
    return url


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (replacing same-named ones), fragment dropped."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend((k, v) for k, v in params.items() if v is not None)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
