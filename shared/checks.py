"""The value rules every layer shares: account ids, e-mail addresses, and ONE rule for URLs we send to.

Layer: just above the leaves (imports only ``shared.errors`` and the standard library, so a route parameter
check loads no pydantic); pure functions, no I/O, so their tests run in milliseconds without Azurite.

Text. Every string a request carries is well-formed Unicode text (:func:`text_problem`): no unpaired
surrogates (JSON can spell one, ``"\\ud800"``, but UTF-8 cannot encode it, so storage, links and redirects
would fail on it later, after a refresh token was already stored) and no non-characters (U+FFFE, U+FFFF,
U+FDD0..U+FDEF and their equivalents in every plane). ``shared.schemas`` applies it to every request field,
nested ones and keys included; :func:`check_account_id` and :func:`check_email` apply it too.

URLs. A redirect (``redirectUrl``) and a webhook target (``url``) follow the same rule, :func:`check_url`:
absolute http(s), at most 2,048 characters, well-formed text without whitespace, control characters or
backslashes, no credentials, a valid port, plain http only for loopback (``localhost``, any ``127.0.0.0/8``
address, ``[::1]``), never an IP address that no app lives at (link-local, the cloud metadata and Azure
wire-server addresses 169.254.169.254, 168.63.129.16, fd00:ec2::254, multicast, unspecified, reserved).
An IPv4 address counts in every spelling a resolver or a browser accepts (WHATWG URL / ``inet_aton``:
``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``0251.0376.0251.0376``, ``169.254.43518``, ``0``), an IPv6
address through the IPv4 address it embeds (``::ffff:169.254.169.254``, NAT64, 6to4); a host whose last
label is a number but is no valid IPv4 address is refused (a browser refuses it too).

Two differences. The fragment: a redirect may carry one (an app's own client-side route), a webhook target
refuses it (an HTTP client never sends it). Internal addresses (``private=True``, webhooks only): a webhook
is a request the service itself makes (server-side request forgery), so its target must also not be a
private (RFC 1918, IPv6 ULA ``fc00::/7``), shared (CGNAT ``100.64.0.0/10``) or other internal range, nor
loopback outside local development. A redirect goes to a browser, which may well reach an intranet app,
so redirects refuse only the always-bad addresses above. The webhook dispatcher applies the same address
rule again to every address a host name resolves to, when it connects (``shared.webhooks.transport``).
Redirects are then checked against ``MC_REDIRECT_ALLOWLIST`` when one is configured (no open redirects; the
URL is fixed when the link is signed, so every later redirect goes where the app itself asked).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit

from shared.errors import InvalidInput

MAX_URL_LENGTH = 2048
# EmailEngine's limit (Joi ``string().max(256)``), counted as it counts: UTF-16 code units (JavaScript's
# ``length``). An id is a Table Storage key (at most 1 KiB, stored as UTF-16): 256 units are 512 bytes, which
# leaves room for the prefix of the principal index's row key (``account:``).
MAX_ACCOUNT_ID_LENGTH = 256

# Table Storage forbids / \ # ? and control characters in keys; account ids become keys.
_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"\x00-\x1f\x7f-\x9f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


# --- text ---------------------------------------------------------------------------------------------------

_SURROGATES = "\ud800-\udfff"
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}"
                                               for plane in range(17))
_ILL_FORMED = re.compile(f"[{_SURROGATES}{_NONCHARACTERS}]")


def text_problem(value: str) -> str | None:
    """Why ``value`` is not well-formed text (module docstring), or None."""
    found = _ILL_FORMED.search(value)
    if found is None:
        return None
    if 0xD800 <= ord(found.group()) <= 0xDFFF:
        return "must not contain unpaired surrogates (U+D800 to U+DFFF)"
    return "must not contain Unicode non-characters (such as U+FFFE or U+FFFF)"


def check_text(value: str) -> str:
    """``value`` unchanged, or a ``ValueError`` saying why it is not well-formed text."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def ill_formed_text(data: Any) -> tuple[str, str] | None:
    """The first string in ``data`` (a JSON-like value; nested values and object keys included) that is not
    well-formed text, as (its dotted path, the problem), or None. Iterative: any depth is fine."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                return ".".join(path), problem
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if isinstance(key, str) and text_problem(key) is not None:
                    return ".".join(path) or "(body)", f"a field name {text_problem(key)}"
                stack.append(((*path, str(key)), item))
        elif isinstance(value, (list, tuple)):
            stack.extend(((*path, str(i)), item) for i, item in reversed(list(enumerate(value))))
    return None


# --- account ids and e-mail ---------------------------------------------------------------------------------

def utf16_length(value: str) -> int:
    """The length JavaScript (and so EmailEngine's limits) gives ``value``: UTF-16 code units."""
    return len(value) + sum(1 for c in value if ord(c) > 0xFFFF)


def check_account_id(value: str) -> str:
    """An account id usable as a Table Storage key (and in a URL path), unchanged. At most
    ``MAX_ACCOUNT_ID_LENGTH`` UTF-16 code units (a character outside the Basic Multilingual Plane counts 2)."""
    if not value or utf16_length(value) > MAX_ACCOUNT_ID_LENGTH:
        raise ValueError(f"account id must be 1 to {MAX_ACCOUNT_ID_LENGTH} characters")
    if _FORBIDDEN_KEY_CHARS.search(value):
        raise ValueError("account id must not contain / \\ # ? or control characters")
    if value.strip() != value:
        raise ValueError("account id must not start or end with whitespace")
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"account id {problem}")
    return value


def account_id_param(value: str | None) -> str:
    """The ``{account}`` route parameter, or a 400 naming the field (``schemas.AccountId`` in bodies)."""
    try:
        return check_account_id(value or "")
    except ValueError as exc:
        raise InvalidInput(f"account: {exc}", field="account") from None


def check_email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value) or text_problem(value) is not None:
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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_net = ipaddress.ip_network
# Never an app or a webhook, for redirects and webhooks alike (loopback is judged separately).
_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # instance metadata (Azure IMDS, AWS, GCP)
    "168.63.129.16",  # Azure's wire server (DHCP, DNS, health probes, VM agent)
    "fd00:ec2::254",  # AWS instance metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
))
_UNSPECIFIED = (_net("0.0.0.0/8"), _net("::/128"))  # "this network": connecting to 0.0.0.0 reaches the host
# Internal ranges, refused for webhooks only (``private=True``).
_INTERNAL = {
    "private": (_net("10.0.0.0/8"), _net("172.16.0.0/12"), _net("192.168.0.0/16"), _net("fc00::/7"),
                _net("fec0::/10")),
    "shared (carrier-grade NAT)": (_net("100.64.0.0/10"),),
    "internal": (_net("192.0.0.0/24"), _net("198.18.0.0/15"), _net("2001::/32"), _net("100::/64")),
}
_NAT64 = (_net("64:ff9b::/96"), _net("64:ff9b:1::/48"))
_LOOPBACK_NAMES = ("localhost", "localhost.")

_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def _ipv4_number(part: str) -> int:
    if not _IPV4_PART.fullmatch(part):
        raise ValueError(part)
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8)
    return int(part)


def host_address(host: str) -> IPAddress | None:
    """The IP address a URL host names, in any spelling a resolver or browser accepts, or None for a name.

    IPv4 as the WHATWG URL standard (and ``inet_aton``) reads it: one to four dot-separated parts, each
    decimal, octal (leading ``0``) or hex (``0x``), the last part filling the remaining bytes, a trailing dot
    ignored. A host whose last label is a number is an IPv4 address or invalid (``ValueError``), never a
    name; so is a host with a ``:`` that is no IPv6 address. A zone id (``fe80::1%eth0``) is kept.
    """
    host = host.strip("[]")
    if ":" in host:
        return ipaddress.ip_address(host)  # ValueError when it is no IPv6 address
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", labels[-1]):
        return None  # a host name
    if len(labels) > 4:
        raise ValueError("too many parts for an IPv4 address")
    numbers = [_ipv4_number(label) for label in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError("an IPv4 part is out of range")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_problem(address: IPAddress, *, private: bool = False, loopback: bool = True) -> str | None:
    """What kind of address no request of ours may go to (e.g. ``"link-local"``), or None when it may.

    Always refused: link-local, cloud metadata and Azure wire server, multicast, unspecified, reserved.
    ``private`` (webhooks) also refuses the internal ranges, and loopback unless ``loopback`` (local
    development). An IPv6 address embedding an IPv4 address is judged by that address too.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%")[0])
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        problem = address_problem(embedded, private=private, loopback=loopback)
        if problem is not None or (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped):
            return problem  # an IPv4-mapped address is exactly its IPv4 address
    if address.is_loopback:
        return "loopback" if private and not loopback else None
    if address.is_link_local:
        return "link-local"
    if address in _METADATA:
        return "cloud metadata"
    if address.is_multicast:
        return "multicast"
    if any(address in net for net in _UNSPECIFIED if net.version == address.version):
        return "unspecified"
    if private:
        for kind, nets in _INTERNAL.items():
            if any(address in net for net in nets if net.version == address.version):
                return kind
    if address.is_reserved and embedded is None:  # 240.0.0.0/4, 255.255.255.255, IPv6 ::/8 (mapped: above)
        return "reserved"
    return None


def running_locally() -> bool:
    """Not in Azure: the environment has none of the variables App Service sets (``settings.AZURE_MARKERS``)."""
    from shared.settings import AZURE_MARKERS  # lazily: the settings module loads pydantic

    return not any(os.environ.get(name) for name in AZURE_MARKERS)


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def check_url(url: str, *, fragment: bool, private: bool = False, loopback: bool = True) -> str:
    """The one URL rule (module docstring); ``fragment``: whether a ``#fragment`` is allowed; ``private``:
    refuse internal addresses too (webhooks), and loopback unless ``loopback`` (local development)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidUrl("is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F or c.isspace() or c == "\\" for c in url):
        raise InvalidUrl("contains whitespace, control characters or backslashes")
    if text_problem(url) is not None:
        raise InvalidUrl(text_problem(url) or "")
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
    try:
        address = host_address(host)
    except ValueError:
        raise InvalidUrl("has a host that is neither a name nor a valid IP address") from None
    if parts.scheme == "http" and not is_loopback(host):
        raise InvalidUrl("must use https (plain http is allowed only for localhost)")
    problem = None if address is None else address_problem(address, private=private, loopback=loopback)
    if address is None and private and not loopback and (host in _LOOPBACK_NAMES or host.endswith(".localhost")):
        problem = "loopback"
    if problem in ("link-local", "cloud metadata", "multicast", "unspecified", "reserved"):
        raise InvalidUrl(f"must not be {_article(problem)} {problem} address (link-local, cloud metadata, "
                         "multicast, unspecified and reserved addresses are refused)")
    if problem is not None:
        raise InvalidUrl(f"must not be {_article(problem)} {problem} address (a webhook must reach a public "
                         "address)")
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


def check_webhook_url(url: str, *, local: bool | None = None) -> str:
    """A webhook target: :func:`check_url` without a fragment and without internal addresses; loopback only
    when ``local`` (default: :func:`running_locally`). Pydantic adds the field name to the message."""
    return check_url(url, fragment=False, private=True, loopback=running_locally() if local is None else local)


def with_query(url: str, params: Mapping[str, str | None]) -> str:
    """``url`` with ``params`` added to its query, replacing same-named ones; everything else of the URL is
    kept byte for byte: its other query parameters, in their order and spelling, and its ``#fragment`` (an
    app's client-side route), as EmailEngine keeps them. ``None`` values are left out."""
    base, hash_mark, fragment = url.partition("#")
    base, _, query = base.partition("?")
    kept = [piece for piece in query.split("&") if piece and _param_name(piece) not in params]
    kept.extend(urlencode({k: v}) for k, v in params.items() if v is not None)
    return base + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment


def _param_name(piece: str) -> str:
    """The decoded name of one ``name=value`` piece of a query, as a server reading it would see it."""
    return unquote_plus(piece.partition("=")[0])
