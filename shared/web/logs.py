"""Logging as deployed: one structured line per request, library loggers quiet, configured in one place.

Imported (standard library only, so a cold start pays nothing) by ``shared.web.api`` and the hosted pages'
blueprint, i.e. when the Functions worker imports ``function_app``, before any function runs.

What reaches the logs, and why
------------------------------
The Python worker sets the root logger to INFO (DEBUG with ``PYTHON_ENABLE_DEBUG_LOGGING``) and forwards every
record to the host, which writes a record logged during an invocation as category ``Function.<name>.User``,
and each becomes an Application Insights trace that is paid for. So:

* **One line per request** (logger ``mailbox_connect.request``, INFO; WARNING for a 5xx), written by
  :func:`logged` around every HTTP function (the API's ``shared.web.api.api`` decorator and the hosted
  pages), in logfmt::

      method=POST path=/v1/authentication/form function=authentication_form status=200 ms=3.1 table=0
      keyvault=0 microsoft=0 other=0 token=4f0c...     (one line; wrapped here)

  ``path`` never has the query (it can carry a sign-in's code or state, or a signed link); ``token`` is the
  id of the API token that was accepted (never the token); ``table``, ``keyvault``, ``microsoft``,
  ``other`` count the HTTP calls the request made to each dependency (retries included). The same fields
  are on the record as ``record.request`` (a dict) for handlers that keep structure.
* **Libraries at WARNING** (``MC_SDK_LOG_LEVEL``, default WARNING): ``azure`` (the SDK's HTTP logging policy
  alone writes ~25 lines per Table call at INFO), ``msal`` and ``urllib3``. Three floors hold whatever the
  setting says, because below them the libraries log secrets: the HTTP logging policy stays at WARNING
  (every storage URL; a pending sign-in's row key is its state), MSAL at INFO (the token request, with the
  authorization code, at DEBUG) and urllib3 at INFO (request lines with their query at DEBUG).
* **Ours** (``mailbox_connect.*``) follow the host (INFO) unless ``MC_LOG_LEVEL`` says otherwise (WARNING
  turns the per-request lines off).
* ``host.json`` keeps the host's own "Executing"/"Executed" lines (category ``Function.<name>``, two per
  invocation) out with ``"Function": "Warning"``, and lets each function's records through with
  ``"Function.<name>.User": "Information"`` (``tests/test_request_logs.py`` checks every function is listed).

The levels are applied when this module is imported, from the environment (Azure app settings and Core
Tools' local.settings.json arrive as environment variables), and once more at the first request from
``shared.settings`` (which also reads local.settings.json for the local host).

Counting calls per dependency
-----------------------------
Table Storage and Key Vault (the Azure SDK's default transport) and MSAL all send through ``requests``; at
the first request :func:`_install_counter` wraps ``requests.adapters.HTTPAdapter.send`` once, and the wrapper
adds one to the current request's counter (a context variable, so only calls made while a request is being
handled count; a timer's calls count nowhere). Cost: a context-variable read and a dictionary lookup per call.
Dependencies are told apart by host: the Table endpoint and Key Vault URL of the settings and Azure's public
suffixes, the Microsoft sign-in and Graph hosts of every cloud (and their overrides). The mailbox access
check's IMAP login is not HTTP and is not counted.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import azure.functions as func

    from shared.settings import Settings

REQUEST_LOGGER = "mailbox_connect.request"
OUR_LOGGER = "mailbox_connect"
LIBRARY_LOGGERS = ("azure", "msal", "urllib3")
# Minimum levels that hold whatever MC_SDK_LOG_LEVEL says (below them the libraries log secrets: see above).
LEAK_FLOORS = {
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,  # request URLs (row keys, states)
    "msal": logging.INFO,  # the token request at DEBUG, with the authorization code
    "urllib3": logging.INFO,  # request lines, query included, at DEBUG
}
DEFAULT_SDK_LEVEL = "WARNING"
DEPENDENCIES = ("table", "keyvault", "microsoft", "other")
TOKEN_ATTRIBUTE = "_mailbox_connect_token"  # the API token record shared.web.auth accepted, on the request
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}

log = logging.getLogger(REQUEST_LOGGER)
_calls: ContextVar[dict[str, int] | None] = ContextVar("mailbox_connect_calls", default=None)
_lock = threading.Lock()
_setup_lock = threading.Lock()
_prepared_for: Settings | None = None  # the settings the first request's set-up used
_warned: list[bool] = []  # the settings failed to load once (said once)
_kinds: dict[str, str] = {}  # host[:port] -> dependency, filled as hosts are met
_known_hosts: dict[str, str] = {}  # the settings' own endpoints -> dependency


# --- levels ------------------------------------------------------------------------------------------------

def configure(sdk_level: str | None = None, our_level: str | None = None) -> None:
    """Set the libraries' loggers to ``sdk_level`` (default WARNING; the leak floors always hold) and ours to
    ``our_level`` (None: follow the root logger, i.e. the host). Idempotent; unknown names mean the default."""
    sdk = _LEVELS.get((sdk_level or DEFAULT_SDK_LEVEL).strip().upper(), logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(sdk, LEAK_FLOORS.get(name, logging.NOTSET)))
    for name, floor in LEAK_FLOORS.items():
        logging.getLogger(name).setLevel(max(sdk, floor))
    ours = _LEVELS.get((our_level or "").strip().upper(), logging.NOTSET)
    logging.getLogger(OUR_LOGGER).setLevel(ours)


def configure_from_environment() -> None:
    configure(os.environ.get("MC_SDK_LOG_LEVEL"), os.environ.get("MC_LOG_LEVEL"))


configure_from_environment()  # at import: before the first function runs (timers included)


# --- one line per request ------------------------------------------------------------------------------------

Handler = Callable[["func.HttpRequest"], "func.HttpResponse"]


def logged(fn: Handler) -> Handler:
    """Wrap an HTTP function: count its dependency calls and write its one line. Keeps the signature the
    worker binds by (``functools.wraps``) and the function's name (the Functions function name)."""

    @functools.wraps(fn)
    def handler(req: func.HttpRequest) -> func.HttpResponse:
        _prepare()
        counts = dict.fromkeys(DEPENDENCIES, 0)
        reset = _calls.set(counts)
        started = time.perf_counter()
        status = 500  # an exception escaping the function: the host answers 500
        try:
            response = fn(req)
            status = response.status_code
            return response
        finally:
            _calls.reset(reset)
            _write(req, fn.__name__, status, (time.perf_counter() - started) * 1000, counts)

    return handler


def _write(req: func.HttpRequest, function: str, status: int, ms: float, counts: dict[str, int]) -> None:
    try:
        fields: dict[str, Any] = {"method": req.method, "path": _path_of(req.url), "function": function,
                                  "status": status, "ms": round(ms, 1), **counts}
        token = getattr(getattr(req, TOKEN_ATTRIBUTE, None), "id", None)
        if isinstance(token, str) and token:
            fields["token"] = token
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s", text, extra={"request": fields})
    except Exception:  # noqa: BLE001 - a log line never fails a request
        pass


def _path_of(url: str) -> str:
    """The URL's path without query or fragment, printable ASCII only (no log injection), at most 200 chars."""
    rest = url.split("://", 1)[-1]
    path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    path = path.split("?", 1)[0].split("#", 1)[0]
    clean = "".join(c if " " < c < "\x7f" else f"%{ord(c) & 0xFF:02X}" for c in path)
    return clean[:200]


# --- the first request ---------------------------------------------------------------------------------------

def _prepare() -> None:
    """At the first request (and again if the settings are reloaded, as tests do): levels from the settings
    (local.settings.json too), the dependency hosts, the call counter. Never fails a request: a problem is
    logged once and the defaults stay."""
    global _prepared_for
    try:
        from shared.settings import get_settings

        settings: Settings | None = get_settings()  # read once per process (cached)
    except Exception:  # noqa: BLE001 - an invalid setting: the request itself will say so
        settings = None
    if settings is _prepared_for and _prepared_for is not None:
        return
    with _setup_lock:  # concurrent first requests wait for the one set-up
        if settings is _prepared_for and _prepared_for is not None:
            return
        if settings is None:
            if not _warned:
                _warned.append(True)
                logging.getLogger(OUR_LOGGER).warning("the settings do not load; logging keeps its defaults")
        else:
            configure(settings.sdk_log_level, settings.log_level)
            _learn_hosts(settings)
        try:
            _install_counter()
        except Exception as exc:  # noqa: BLE001
            logging.getLogger(OUR_LOGGER).warning("dependency call counting is off (%s)", type(exc).__name__)
        _prepared_for = settings


def _learn_hosts(settings: Settings) -> None:
    from urllib.parse import urlsplit

    from shared.clouds import CLOUDS

    known: dict[str, str] = {}
    for cloud in CLOUDS.values():
        known[cloud.authority_host] = "microsoft"
        known[urlsplit(cloud.graph_url).netloc] = "microsoft"
    if settings.authority_host:
        known[settings.authority_host.lower()] = "microsoft"
    if settings.graph_url:
        known[urlsplit(settings.graph_url).netloc.lower()] = "microsoft"
    if settings.key_vault_url:
        known[urlsplit(settings.key_vault_url).netloc.lower()] = "keyvault"
    if settings.tables_endpoint:
        known[urlsplit(settings.tables_endpoint).netloc.lower()] = "table"
    connection = settings.tables_connection_string or ""
    if connection.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        known["127.0.0.1:10002"] = "table"
    for part in connection.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "tableendpoint" and value:
            known[urlsplit(value.strip()).netloc.lower()] = "table"
    with _lock:
        _known_hosts.update(known)
        _kinds.clear()


def kind_of(netloc: str) -> str:
    """The dependency a host[:port] belongs to: table, keyvault, microsoft or other."""
    kind = _kinds.get(netloc)
    if kind is None:
        host = netloc.lower()
        name = host.rsplit("@", 1)[-1].split(":", 1)[0] if not host.startswith("[") else host
        if host in _known_hosts or name in _known_hosts:
            kind = _known_hosts.get(host) or _known_hosts[name]
        elif ".table.core." in name or ".table.cosmos." in name:
            kind = "table"
        elif ".vault." in name or name.endswith(".managedhsm.azure.net"):
            kind = "keyvault"
        elif name.startswith(("login.microsoftonline.", "login.microsoft.", "login.windows.", "login.chinacloudapi.",
                              "graph.microsoft.", "dod-graph.microsoft.", "microsoftgraph.chinacloudapi.")):
            kind = "microsoft"
        else:
            kind = "other"
        if len(_kinds) < 1024:
            _kinds[netloc] = kind
    return kind


def _install_counter() -> None:
    """Wrap ``requests``' adapter once so each HTTP call made during a request is counted (see above)."""
    from urllib.parse import urlsplit

    from requests.adapters import HTTPAdapter

    with _lock:
        original = HTTPAdapter.send
        if getattr(original, "_mailbox_connect_counts", False):
            return

        @functools.wraps(original)
        def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            counts = _calls.get()
            if counts is not None:
                try:
                    counts[kind_of(urlsplit(request.url).netloc)] += 1
                except Exception:  # noqa: BLE001 - counting never fails a call
                    pass
            return original(self, request, *args, **kwargs)

        send._mailbox_connect_counts = True  # type: ignore[attr-defined]
        HTTPAdapter.send = send  # type: ignore[method-assign]


def current_calls() -> dict[str, int] | None:
    """The calls the request being handled has made so far (None outside a request)."""
    counts = _calls.get()
    return None if counts is None else dict(counts)
