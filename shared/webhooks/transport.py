"""Outbound HTTP for webhook deliveries that cannot be turned against the service's own network (SSRF).

A webhook URL is checked when it is registered (``shared.checks.check_webhook_url``: no internal address
literal in any spelling), but a host *name* can resolve to anything, and to something else a second later
(DNS rebinding). So the check is repeated where it cannot be raced: when a connection is opened, the host is
resolved **once**, **every** address it resolves to is checked with the same rule
(``shared.checks.address_problem`` with ``private=True``), and the socket connects to one of those checked
addresses, never to a name that is resolved again. Only the socket changes: the URL keeps the host name, so
the ``Host`` header, TLS SNI and certificate verification are all for the name, as without this module.

Refused (``ForbiddenAddress``, recorded by the dispatcher as a failed attempt with a clear ``lastError``):
a host with any address that is private (RFC 1918, ULA ``fc00::/7``), shared (CGNAT ``100.64.0.0/10``),
link-local, cloud metadata or Azure's wire server (169.254.169.254, 168.63.129.16, fd00:ec2::254),
multicast, unspecified, reserved, or another internal range; loopback too, outside local development
(``AddressPolicy.loopback``: ``not settings.in_azure``, so tests and ``make run`` deliver to
``127.0.0.1``). A host with one bad address among good ones is refused as a whole: its owner controls the
answer, so "use a good one" would only move the race. Proxies are never used (``trust_env = False``,
``proxy_manager_for`` refuses).

The resolver is a hook (``AddressPolicy.resolver``, default :func:`system_resolver`), so tests point a host
name at any address without DNS or /etc/hosts. Layer: webhooks (imports ``shared.checks`` only).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.checks import IPAddress, address_problem, host_address

if TYPE_CHECKING:  # pragma: no cover
    import requests

Resolver = Callable[[str, int], Sequence[str]]


class ForbiddenAddress(Exception):  # noqa: N818 - reads as what happened: "forbidden address"
    """The host is, or resolves to, an address no webhook may reach; nothing was sent.

    Deliberately not an ``OSError``: urllib3 would take it for a network failure and retry or wrap it.
    """


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (as urllib3 would ask: TCP, the usable families)."""
    from urllib3.util.connection import allowed_gai_family

    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class AddressPolicy:
    """Where webhook connections may go. ``loopback``: local development (tests deliver to 127.0.0.1)."""

    loopback: bool
    resolver: Resolver = system_resolver

    def checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host``, each allowed, or ``ForbiddenAddress``; ``socket.gaierror`` when the
        name does not resolve. An address literal (in any spelling) is used as it is, without a resolver."""
        import ipaddress

        name = host.strip("[]").rstrip(".").lower()
        try:
            literal = host_address(name)
        except ValueError:
            raise ForbiddenAddress(f"{name} is neither a host name nor a valid IP address") from None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a) for a in self.resolver(name, port)]
            except ValueError:
                raise ForbiddenAddress(f"{name} resolves to something that is not an IP address") from None
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, f"{name} has no address")
        for address in addresses:
            problem = address_problem(address, private=True, loopback=self.loopback)
            if problem is not None:
                what = name if literal is None else "the target"
                verb = "resolves to" if literal is None else "is"
                raise ForbiddenAddress(f"{what} {verb} {'an' if problem[0] in 'aeiou' else 'a'} {problem} address; "
                                       "webhooks are sent to public addresses only")
        return addresses


def _guarded(base: type, policy: AddressPolicy) -> type:
    """``base`` (urllib3's HTTPConnection or HTTPSConnection) whose socket goes to a checked address."""
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
    from urllib3.util import connection

    def _new_conn(self: Any) -> socket.socket:
        try:
            addresses = policy.checked_addresses(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        failure: OSError | None = None
        for address in addresses:
            try:
                sock = connection.create_connection((str(address), self.port), self.timeout,
                                                    source_address=self.source_address,
                                                    socket_options=self.socket_options)
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from exc
            except OSError as exc:
                failure = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {failure}") from failure

    return type(f"Guarded{base.__name__}", (base,), {"_new_conn": _new_conn})


def _adapter_class() -> type:
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class GuardedAdapter(HTTPAdapter):
        """requests' adapter whose connection pools open sockets only to checked addresses."""

        def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
            self.policy = policy  # before super().__init__, which builds the pool manager
            super().__init__(**kwargs)

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,),
                             {"ConnectionCls": _guarded(HTTPConnection, self.policy)}),
                "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,),
                              {"ConnectionCls": _guarded(HTTPSConnection, self.policy)}),
            }

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            raise ForbiddenAddress("webhooks are never sent through a proxy")

    return GuardedAdapter


def guarded_session(policy: AddressPolicy, *, pool_maxsize: int = 10) -> requests.Session:
    """A ``requests.Session`` for webhook deliveries under ``policy`` (no proxies or CA variables of the
    environment; set ``session.verify`` to a CA bundle to trust another CA, as tests do)."""
    import requests

    session = requests.Session()
    session.trust_env = False
    adapter = _adapter_class()(policy, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
