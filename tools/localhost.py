"""A small local host that serves ``function_app``'s HTTP functions without Azure Functions Core Tools.

    python -m tools.localhost [--host 127.0.0.1] [--port 7071] [--app function_app]

run from the project root (it is put on ``sys.path``; ``host.json`` is read from there). In tests::

    server = serve(app, port=0, route_prefix="").start()   # port 0: a free port, see server.url
    ...
    server.stop()

It mirrors what the real host (Functions host + Python worker) does with a request and a response, so
what works here works in Azure. The parts that are easy to get wrong:

* **Routes**: ASP.NET-style templates (``v1/account/{account}``, ``{id:int}``, ``{name?}``,
  ``{name=default}``, ``{*rest}``, ``{a}.{b}``, constraints ``int long bool guid alpha double float
  decimal datetime minlength maxlength length min max range regex required``), literal segments matched
  case-insensitively, the most specific template wins (literal > complex > constrained > plain
  parameter > catch-all, segment by segment). Paths are percent-decoded per segment except ``%2F``,
  which stays ``%2F`` (Kestrel does the same); route values arrive as ``req.route_params``; a trailing
  ``/`` is ignored. The prefix is host.json ``extensions.http.routePrefix`` (the host's default:
  ``"api"``).
* **Query**: ``req.params`` is a plain mapping. The real host builds it from ASP.NET's query collection:
  names are case-insensitive (the first spelling is kept), **a repeated name arrives as its values
  joined with "," (``?a=1&a=2`` -> ``"1,2"``)**, and a name whose value is empty (``?a=``) is left out.
  This host does exactly that. Request headers: lower-case names, repeated ones joined with ",".
* **Response headers** come from ``func.HttpResponse.headers`` (a werkzeug ``Headers``, so it can hold
  one name several times); for other names the last value wins, as in the worker. Content-Type defaults
  to ``mimetype`` (``; charset=...`` for ``text/*``).
* **Set-Cookie**: the worker takes *every* ``Set-Cookie`` value (``headers.get_all``), parses each with
  ``http.cookies.SimpleCookie`` and hands the host structured cookies, which ASP.NET writes back as one
  ``Set-Cookie`` line each. Add them with ``resp.headers.add("Set-Cookie", "...")`` (one call per
  cookie; a ``headers={...}`` dict holds only one). The round trip changes them, and this host applies
  the same rewrite (see ``azure_set_cookie_lines``): the value is percent-encoded
  (``Uri.EscapeDataString``), attribute names are lower-cased, ``domain=`` and ``path=`` are always
  written (empty when the app set none; an empty ``path=`` makes browsers use the request's directory,
  so always set ``Path=/``), and a cookie ``SimpleCookie`` cannot parse (for example one with
  ``Partitioned``) is silently dropped (logged here). Consequences: use cookie values made of
  ``A-Z a-z 0-9 - . _ ~`` only (then the encoding changes nothing), never a ``__Host-`` name (browsers
  reject it because of ``domain=``), and in tests read ``resp.raw.headers.getlist("Set-Cookie")``:
  ``requests``' cookie jar refuses a cookie with an empty ``domain=`` from 127.0.0.1.
* **Errors**: an unhandled exception in a function is logged with its traceback and answered with a
  generic 500; no matching route is a 404, a matching route with another method a 405 (the real host
  answers 404 there; do not rely on the difference). Auth levels are listed, not enforced (Core Tools
  does not enforce them locally either).

Sync functions run in the request's thread (``ThreadingHTTPServer``), async ones on one shared event
loop thread, like the worker.

**Timer functions** run on their NCRONTAB schedule (six fields, seconds first: ``*/10 * * * * *``; lists,
ranges, steps and month/day names; day-of-month and day-of-week must both match; UTC, as in Azure
unless ``WEBSITE_TIME_ZONE`` is set) when the host serves with timers on: ``serve_forever()`` (``main``,
``make run``) does, ``start()`` does only with ``start(timers=True)``, so tests decide when a timer runs:
``server.run_timer("name")`` runs one now, in the caller's thread, and raises what the function raised.
As in the real host, one timer never runs twice at once (a tick that finds it still running is skipped
and the next run gets ``past_due``), ``run_on_startup`` runs it once at start, and a failure is logged
and does not stop the schedule. Other non-HTTP functions (queues, ...) are listed at start-up as not
served.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import inspect
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.timer import TimerTrigger

log = logging.getLogger("localhost")

DEFAULT_ROUTE_PREFIX = "api"  # what the Functions host uses when host.json says nothing

#: Called with every response a local host writes: ``hook(method, target, status, headers, body)`` (``target``
#: is the request's path and query as sent). Tests use it to check that no secret ever leaves the service
#: (``tests/leakcheck.py``). A failing hook is logged and never changes the response.
ResponseHook = Callable[[str, str, int, "list[tuple[str, str]]", bytes], None]
RESPONSE_HOOKS: list[ResponseHook] = []


# --------------------------------------------------------------------------- loading the app


def load_function_app(module_name: str = "function_app") -> FunctionRegister:
    """Import ``module_name`` and return its ``func.FunctionApp`` (the ``app`` attribute, else the only one)."""
    import importlib

    module = importlib.import_module(module_name)
    app = getattr(module, "app", None)
    if isinstance(app, FunctionRegister):
        return app
    found = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    if len(found) != 1:
        raise RuntimeError(f"{module_name}: expected one func.FunctionApp (named 'app'), found {len(found)}")
    return found[0]


def read_route_prefix(project_root: str | Path = ".") -> str:
    """host.json ``extensions.http.routePrefix`` of ``project_root``; "api" when unset or no host.json."""
    path = Path(project_root) / "host.json"
    if not path.is_file():
        return DEFAULT_ROUTE_PREFIX
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise RuntimeError(f"{path}: not valid JSON ({exc})") from exc
    prefix = ((config.get("extensions") or {}).get("http") or {}).get("routePrefix")
    return DEFAULT_ROUTE_PREFIX if prefix is None else str(prefix).strip("/")


# --------------------------------------------------------------------------- route templates


def _is_int(value: str, bits: int) -> bool:
    return re.fullmatch(r"[+-]?\d+", value) is not None and -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1)


def _is_number(value: str) -> bool:
    try:
        return float(value) not in (float("inf"), float("-inf")) and value.strip().lower() != "nan"
    except ValueError:
        return False


def _parses(parser: Callable[[str], Any]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            parser(value)
            return True
        except ValueError:
            return False

    return check


def _ints(args: str) -> list[int]:
    return [int(a) for a in args.split(",")]


def _length(args: str) -> Callable[[str], bool]:
    bounds = _ints(args)  # length(n) or length(min,max)
    return lambda v: bounds[0] <= len(v) <= bounds[-1]


# name -> factory(argument string) -> predicate(value). ASP.NET's inline route constraints.
_CONSTRAINTS: dict[str, Callable[[str], Callable[[str], bool]]] = {
    "int": lambda _: lambda v: _is_int(v, 32),
    "long": lambda _: lambda v: _is_int(v, 64),
    "bool": lambda _: lambda v: v.lower() in ("true", "false"),
    "guid": lambda _: _parses(uuid.UUID),
    "alpha": lambda _: lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
    "double": lambda _: _is_number,
    "float": lambda _: _is_number,
    "decimal": lambda _: _is_number,
    "datetime": lambda _: _parses(datetime.fromisoformat),
    "required": lambda _: lambda v: v != "",
    "minlength": lambda a: lambda v: len(v) >= int(a),
    "maxlength": lambda a: lambda v: len(v) <= int(a),
    "length": _length,
    "min": lambda a: lambda v: _is_int(v, 64) and int(v) >= int(a),
    "max": lambda a: lambda v: _is_int(v, 64) and int(v) <= int(a),
    "range": lambda a: lambda v: _is_int(v, 64) and _ints(a)[0] <= int(v) <= _ints(a)[1],
    # RegexRouteConstraint: IsMatch (not anchored unless the pattern is), case-insensitive.
    "regex": lambda a: (lambda rx: lambda v: rx.search(v) is not None)(re.compile(a, re.IGNORECASE)),
}

# {[*|**]name[:constraint[(arg)]]...[?|=default]}
_PARAM_BODY = re.compile(
    r"(?P<star>\*{1,2})?(?P<name>[^:=?*]+)(?P<constraints>(?::\w+(?:\(.*?\))?)*)(?P<tail>\?|=.*)?"
)


@dataclass
class _Param:
    name: str
    group: str
    checks: list[Callable[[str], bool]]
    optional: bool = False
    default: str | None = None
    catch_all: bool = False


def _split_segment(segment: str) -> list[tuple[str, str]]:
    """``file.{name}`` -> [("lit", "file."), ("param", "name")]; ``{{``/``}}`` are literal braces."""
    parts: list[tuple[str, str]] = []
    text, i = "", 0
    while i < len(segment):
        if segment.startswith(("{{", "}}"), i):
            text += segment[i]
            i += 2
        elif segment[i] == "{":
            if text:
                parts.append(("lit", text))
            body, i = "", i + 1
            while i < len(segment) and not (segment[i] == "}" and not segment.startswith("}}", i)):
                step = 2 if segment.startswith(("{{", "}}"), i) else 1
                body, i = body + segment[i], i + step
            if i >= len(segment):
                raise ValueError(f"unterminated parameter in route segment {segment!r}")
            parts.append(("param", body))
            text, i = "", i + 1
        elif segment[i] == "}":
            raise ValueError(f"unbalanced '}}' in route segment {segment!r}")
        else:
            text += segment[i]
            i += 1
    if text:
        parts.append(("lit", text))
    return parts


def _parse_param(body: str, group: str) -> _Param:
    m = _PARAM_BODY.fullmatch(body)
    if not m:
        raise ValueError(f"cannot parse route parameter {{{body}}}")
    checks = []
    for cname, arg in re.findall(r":(\w+)(?:\((.*?)\))?(?=:|$)", m["constraints"]):
        if cname.lower() not in _CONSTRAINTS:
            raise ValueError(f"route constraint {cname!r} is not supported by the local host")
        checks.append(_CONSTRAINTS[cname.lower()](arg))
    tail = m["tail"] or ""
    return _Param(
        name=m["name"], group=group, checks=checks, optional=tail == "?" or bool(m["star"]),
        default=tail[1:] if tail.startswith("=") else None, catch_all=bool(m["star"]),
    )


def compile_template(template: str) -> tuple[re.Pattern[str], list[_Param], tuple[int, ...]]:
    """An ASP.NET route template -> (regex over the decoded path, parameters, precedence key)."""
    pattern, params, precedence = "", [], []
    for segment in [s for s in template.split("/") if s]:
        parts = _split_segment(segment)
        if len(parts) == 1 and parts[0][0] == "param":  # a whole-segment parameter
            param = _parse_param(parts[0][1], f"p{len(params)}")
            params.append(param)
            value = ".*" if param.catch_all else "[^/]+"
            optional = param.optional or param.default is not None
            pattern += f"(?:/(?P<{param.group}>{value}))" + ("?" if optional else "")
            precedence.append(5 if param.catch_all else 3 if param.checks else 4)
            continue
        piece = ""
        for kind, text in parts:
            if kind == "lit":
                piece += f"(?i:{re.escape(text)})"
            else:
                param = _parse_param(text, f"p{len(params)}")
                params.append(param)
                piece += f"(?P<{param.group}>[^/]{'*' if param.optional else '+'})"
        pattern += "/" + piece
        precedence.append(1 if len(parts) == 1 else 2)
    return re.compile(f"^{pattern}/?$" if pattern else "^/?$"), params, tuple(precedence)


def decode_path(raw_path: str) -> str:
    """Percent-decode each segment, leaving ``%2F`` encoded so it cannot split a segment (as Kestrel)."""
    return "/".join(unquote(s.replace("%2F", "%252F").replace("%2f", "%252f")) for s in raw_path.split("/"))


@dataclass
class Route:
    function_name: str
    template: str  # with the route prefix
    methods: frozenset[str] | None  # None: any method
    auth_level: str
    request_param: str  # the name of the function's HttpRequest parameter
    user_function: Callable[..., Any]
    pattern: re.Pattern[str] = field(repr=False)
    params: list[_Param] = field(repr=False)
    precedence: tuple[int, ...] = field(repr=False)
    wants_context: bool = False

    def match(self, decoded_path: str) -> dict[str, str] | None:
        m = self.pattern.match(decoded_path)
        if not m:
            return None
        values: dict[str, str] = {}
        for param in self.params:
            value = m[param.group]
            if value is None or (value == "" and param.optional):
                if param.default is not None:
                    values[param.name] = param.default
                continue
            if not all(check(value) for check in param.checks):
                return None
            values[param.name] = value
        return values


def collect_functions(app: FunctionRegister, route_prefix: str) -> tuple[list[Route], list[tuple[str, str]]]:
    """The app's HTTP routes, most specific first, and (name, trigger type) of the functions not served."""
    # get_functions() remembers the names it has seen and would reject its own functions on a second
    # call (a second serve() of the same app); start it afresh.
    app.functions_bindings = None
    routes, others = [], []
    for function in app.get_functions():
        trigger = function.get_trigger()
        name = function.get_function_name()
        if not isinstance(trigger, HttpTrigger):
            others.append((name, trigger.get_binding_name() if trigger else "no trigger"))
            continue
        template = "/".join(p for p in (route_prefix.strip("/"), (trigger.route or "").strip("/")) if p)
        pattern, params, precedence = compile_template(template)
        methods = frozenset(str(getattr(m, "value", m)).upper() for m in trigger.methods or ()) or None
        user_function = function.get_user_function()
        signature = inspect.signature(user_function).parameters
        if trigger.name not in signature:  # the worker refuses to load such a function too
            raise ValueError(f"{name}: the HTTP trigger's parameter {trigger.name!r} is not in the function's "
                             f"signature (set trigger_arg_name= on the route decorator)")
        unsupported = [p for p in signature if p not in (trigger.name, "context")]
        if unsupported:
            log.warning("%s: parameters %s are bindings the local host does not provide", name, unsupported)
        auth = getattr(trigger, "auth_level", None)
        routes.append(Route(
            function_name=name, template=template, methods=methods,
            auth_level=str(getattr(auth, "value", auth or "function")), request_param=trigger.name,
            user_function=user_function, pattern=pattern, params=params, precedence=precedence,
            wants_context="context" in signature,
        ))
    routes.sort(key=lambda r: (r.precedence, r.template.lower()))
    return routes, others


# --------------------------------------------------------------------------- timers


_CRON_FIELDS = (  # name, low, high, names
    ("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("weekday", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


class Schedule:
    """An NCRONTAB expression (``{second} {minute} {hour} {day} {month} {day-of-week}``) of a timer trigger."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        parts = expression.split()
        if len(parts) != 6:
            raise ValueError(f"timer schedule {expression!r}: expected six fields (seconds first)")
        self.sets = [self._field(text, *spec) for text, spec in zip(parts, _CRON_FIELDS, strict=True)]

    @staticmethod
    def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
        def value(token: str) -> int:
            token = token.lower()
            if token in names:
                return names.index(token) + (low if name == "month" else 0)
            number = int(token)
            if name == "weekday" and number == 7:
                number = 0  # Sunday, as in cron
            if not low <= number <= high:
                raise ValueError(f"{name} {number} is out of range {low}-{high}")
            return number

        found: set[int] = set()
        for item in text.split(","):
            base, _, step_text = item.partition("/")
            step = int(step_text) if step_text else 1
            if step < 1:
                raise ValueError(f"step {step} in {text!r}")
            if base == "*":
                first, last = low, high
            elif "-" in base:
                a, b = base.split("-", 1)
                first, last = value(a), value(b)
            else:
                first = value(base)
                last = high if step_text else first
            found.update(range(first, last + 1, step))
        return frozenset(found)

    def matches(self, when: datetime) -> bool:
        second, minute, hour, day, month, weekday = self.sets
        return (when.second in second and when.minute in minute and when.hour in hour and when.day in day
                and when.month in month and (when.weekday() + 1) % 7 in weekday)

    def next_after(self, when: datetime) -> datetime:
        """The first matching second after ``when`` (a whole second; within the next five years)."""
        from datetime import timedelta

        t = when.replace(microsecond=0) + timedelta(seconds=1)
        second, minute, hour, day, month, weekday = self.sets
        limit = t + timedelta(days=5 * 366)
        while t < limit:
            if t.month not in month:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif t.day not in day or (t.weekday() + 1) % 7 not in weekday:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in hour:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in minute:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in second:
                t += timedelta(seconds=1)
            else:
                return t
        raise ValueError(f"timer schedule {self.expression!r} never fires")


@dataclass
class Timer:
    function_name: str
    schedule: Schedule
    arg_name: str
    run_on_startup: bool
    user_function: Callable[..., Any] = field(repr=False)
    wants_context: bool = False
    running: threading.Lock = field(default_factory=threading.Lock, repr=False)
    missed: bool = False  # a tick found it running: the next run is past due


class _TimerRequest(func.TimerRequest):
    """The ``timer`` argument the worker passes to a timer function."""

    def __init__(self, past_due: bool = False) -> None:
        self._past_due = past_due

    @property
    def past_due(self) -> bool:
        return self._past_due


def collect_timers(app: FunctionRegister) -> dict[str, Timer]:
    """The app's timer functions by name (schedules parsed: a bad one fails here, as in the host)."""
    app.functions_bindings = None  # see collect_functions
    timers: dict[str, Timer] = {}
    for function in app.get_functions():
        trigger = function.get_trigger()
        if not isinstance(trigger, TimerTrigger):
            continue
        name = function.get_function_name()
        user_function = function.get_user_function()
        signature = inspect.signature(user_function).parameters
        if trigger.name not in signature:
            raise ValueError(f"{name}: the timer trigger's parameter {trigger.name!r} is not in the function's "
                             "signature")
        timers[name] = Timer(name, Schedule(trigger.schedule), trigger.name, bool(trigger.run_on_startup),
                             user_function, wants_context="context" in signature)
    return timers


# --------------------------------------------------------------------------- request / response mapping


def query_params(query: str) -> dict[str, str]:
    """``req.params`` as the Functions host builds it: see the module docstring."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        grouped.setdefault(name.lower(), (name, []))[1].append(value)
    joined = {name: ",".join(values) for name, values in grouped.values()}
    return {name: value for name, value in joined.items() if value != ""}


def _cookie_expires(text: str) -> str:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        when = datetime.fromisoformat(text)  # the worker uses dateutil; it raises on garbage too
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return email.utils.formatdate(int(when.timestamp()), usegmt=True)


def azure_set_cookie_lines(raw: str) -> list[str]:
    """What a ``Set-Cookie`` value becomes after the Python worker and the Functions host.

    Worker (``HttpResponseConverter`` + ``parse_to_rpc_http_cookie_list``): ``SimpleCookie(raw)``; each
    morsel becomes an RpcHttpCookie with domain/path always present (``""`` when unset), secure,
    httpOnly, sameSite (Lax/Strict/None, else unspecified), expires, max-age. Host: ASP.NET
    ``Response.Cookies.Append(name, value, options)`` -> ``SetCookieHeaderValue``: value through
    ``Uri.EscapeDataString``, attributes lower-case in a fixed order.
    """
    jar = SimpleCookie()
    jar.load(raw)  # CookieError propagates: the worker fails the invocation too
    if not jar:
        log.warning("Set-Cookie %r dropped: http.cookies cannot parse it, so the Functions worker drops it", raw)
    lines = []
    for name, morsel in jar.items():
        line = f"{name}={quote(morsel.value, safe='')}"
        if morsel["expires"]:
            line += f"; expires={_cookie_expires(morsel['expires'])}"
        if morsel["max-age"] != "":
            line += f"; max-age={int(float(morsel['max-age']))}"
        line += f"; domain={morsel['domain']}; path={morsel['path']}"
        if morsel["secure"]:
            line += "; secure"
        same_site = str(morsel["samesite"]).lower()
        if same_site in ("lax", "strict", "none"):
            line += f"; samesite={same_site}"
        if morsel["httponly"]:
            line += "; httponly"
        lines.append(line)
    return lines


_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def response_headers(resp: func.HttpResponse) -> list[tuple[str, str]]:
    """The header lines the real host sends for ``resp`` (Content-Length is added by the writer)."""
    single: dict[str, tuple[str, str]] = {}
    cookies: list[str] = []
    for name, value in resp.headers.items():
        if name.lower() == "set-cookie":
            cookies.append(value)
        elif name.lower() not in _HOP_BY_HOP:
            single[name.lower()] = (name, value)
    if "content-type" not in single:
        ct = f"{resp.mimetype}; charset={resp.charset}" if resp.mimetype.startswith("text/") else resp.mimetype
        single["content-type"] = ("Content-Type", ct)
    lines = list(single.values())
    for raw in cookies:
        lines += [("Set-Cookie", line) for line in azure_set_cookie_lines(raw)]
    return lines


class _Context(func.Context):
    """The ``context`` argument the worker passes to functions that declare one."""

    def __init__(self, function_name: str, function_directory: str) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()
        self._local.invocation_id = self._invocation_id

    invocation_id = property(lambda self: self._invocation_id)
    function_name = property(lambda self: self._function_name)
    function_directory = property(lambda self: self._function_directory)
    thread_local_storage = property(lambda self: self._local)
    trace_context = property(lambda self: None)
    retry_context = property(lambda self: None)


def _json_error(status: int, error: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    from shared.errors import reason_phrase  # the service's envelope, so a client sees one shape

    body = json.dumps({"statusCode": status, "error": reason_phrase(status), "message": message,
                       "code": error}).encode()
    return status, [("Content-Type", "application/json; charset=utf-8")], body


# --------------------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 drops bursts of parallel connections
    local_host: LocalHost


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "MailboxConnectLocalHost/1.0"
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for the client's delayed
    # ACK of the headers, adding ~40 ms to every request on a reused (keep-alive) connection.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        self.server.local_host.handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # LocalHost.handle logs each request itself, with the function name and duration

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("%s: %s", self.address_string(), format % args)


class LocalHost:
    """One app served on one port. Bound (and listening) on construction; ``start()`` serves in a thread."""

    def __init__(
        self, app: FunctionRegister, host: str = "127.0.0.1", port: int = 7071, *,
        route_prefix: str | None = None, project_root: str | Path = ".",
    ) -> None:
        self.project_root = str(Path(project_root).resolve())
        self.route_prefix = read_route_prefix(project_root) if route_prefix is None else route_prefix.strip("/")
        self.routes, others = collect_functions(app, self.route_prefix)
        self.timers = collect_timers(app)
        self.not_served = [(name, trigger) for name, trigger in others if name not in self.timers]
        self._timer_stop = threading.Event()
        self._timer_thread: threading.Thread | None = None
        self.httpd = _Server((host, port), _Handler)
        self.httpd.local_host = self
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None
        self._loop = asyncio.new_event_loop()  # async functions all run here, as in the worker
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="localhost-asyncio", daemon=True)
        self._loop_thread.start()

    # -- lifecycle

    def describe(self) -> str:
        lines = ["Functions:"]
        for r in sorted(self.routes, key=lambda r: r.function_name):
            methods = ",".join(sorted(r.methods)) if r.methods else "ALL"
            auth = "" if r.auth_level.lower() == "anonymous" else f"  (authLevel {r.auth_level}: not enforced)"
            lines.append(f"    {r.function_name}: [{methods}] {self.url}/{r.template}{auth}")
        for name, timer in sorted(self.timers.items()):
            how = "run on its schedule" if self._timer_thread is not None else "not scheduled: run_timer()"
            lines.append(f"    {name}: timerTrigger [{timer.schedule.expression}] ({how})")
        for name, trigger in self.not_served:
            lines.append(f"    {name}: {trigger} (not served by the local host)")
        return "\n".join(lines)

    def start(self, timers: bool = False) -> LocalHost:
        """Serve in a background thread; ``timers``: also run the timer functions on their schedules."""
        if timers:
            self.start_timers()
        log.info("%s\nListening on %s (route prefix %r)", self.describe(), self.url, self.route_prefix)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="localhost-http", daemon=True)  # stop() waits a poll: 0.5 s by default
        self._thread.start()
        return self

    def serve_forever(self, timers: bool = True) -> None:
        if timers:
            self.start_timers()
        log.info("%s\nListening on %s (route prefix %r)", self.describe(), self.url, self.route_prefix)
        self.httpd.serve_forever()

    # -- timers

    def run_timer(self, name: str, past_due: bool = False) -> Any:
        """Run timer function ``name`` now, in this thread; its exception propagates. Waits while a
        scheduled run of the same timer is in progress (a timer never runs twice at once)."""
        timer = self.timers[name]
        with timer.running:
            return self._invoke_timer(timer, past_due)

    def _invoke_timer(self, timer: Timer, past_due: bool) -> Any:
        kwargs: dict[str, Any] = {timer.arg_name: _TimerRequest(past_due)}
        if timer.wants_context:
            kwargs["context"] = _Context(timer.function_name, self.project_root)
        result = timer.user_function(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run_coroutine_threadsafe(_await(result), self._loop).result()
        return result

    def start_timers(self) -> None:
        if self._timer_thread is not None or not self.timers:
            return
        self._timer_stop.clear()
        self._timer_thread = threading.Thread(target=self._schedule_timers, name="localhost-timers", daemon=True)
        self._timer_thread.start()

    def _schedule_timers(self) -> None:
        now = datetime.now(UTC)
        upcoming = {name: t.schedule.next_after(now) for name, t in self.timers.items()}
        for timer in self.timers.values():
            if timer.run_on_startup:
                self._fire(timer)
        while not self._timer_stop.is_set():
            name = min(upcoming, key=upcoming.__getitem__)
            wait = (upcoming[name] - datetime.now(UTC)).total_seconds()
            if wait > 0 and self._timer_stop.wait(min(wait, 60.0)):
                return
            if wait > 60.0:
                continue  # re-check after a long wait (clock changes)
            self._fire(self.timers[name])
            upcoming[name] = self.timers[name].schedule.next_after(max(upcoming[name], datetime.now(UTC)))

    def _fire(self, timer: Timer) -> None:
        """Start one scheduled run in its own thread, unless the previous one is still running."""
        if not timer.running.acquire(blocking=False):
            timer.missed = True
            log.warning("timer %s: still running; this occurrence is skipped", timer.function_name)
            return

        def run() -> None:
            started = time.monotonic()
            past_due, timer.missed = timer.missed, False
            try:
                self._invoke_timer(timer, past_due)
                log.debug("Executed '%s' (Succeeded, %.0f ms)", timer.function_name,
                          (time.monotonic() - started) * 1000)
            except Exception:  # noqa: BLE001 - as the host: logged, and the schedule goes on
                log.exception("Executed '%s' (Failed)", timer.function_name)
            finally:
                timer.running.release()

        threading.Thread(target=run, name=f"timer-{timer.function_name}", daemon=True).start()

    def stop_timers(self) -> None:
        self._timer_stop.set()
        if self._timer_thread is not None:
            self._timer_thread.join()
            self._timer_thread = None
        for timer in self.timers.values():  # let a run in progress finish
            with timer.running:
                pass

    def stop(self) -> None:
        self.stop_timers()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> LocalHost:
        return self if self._thread is not None else self.start()  # already started: serve(...).start(...)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one request

    def handle(self, h: _Handler) -> None:
        started = time.monotonic()
        target = urlsplit(h.path)
        name = "-"
        try:
            route, values, error = self._route(h.command, decode_path(target.path or "/"), target.path)
            body = self._read_body(h)
            if error is None and body is None:
                error = _json_error(411, "length_required", "Send a valid Content-Length (no chunked bodies).")
            if error is not None:
                status, headers, payload = error
            else:
                name = route.function_name
                status, headers, payload = self._invoke(h, route, values, target, body)
        except Exception:  # a bug here must not take the server down either
            log.exception("local host failed on %s %s", h.command, target.path)  # never the query: codes, states
            h.close_connection = True
            status, headers, payload = _json_error(500, "internal_error", "The local host failed; see its log.")
        for hook in list(RESPONSE_HOOKS):  # before writing: the client has not seen the response yet
            try:
                hook(h.command, h.path, status, headers, payload)
            except Exception:  # noqa: BLE001 - an observer must not break the server
                log.exception("response hook %r failed", hook)
        self._write(h, status, headers, payload)
        # The path only: a query may carry an authorization code, a sign-in state or a signed link.
        log.info("%s %s -> %s %s (%.0f ms)", h.command, target.path, name, status, (time.monotonic() - started) * 1000)

    def _route(self, method: str, path: str, raw_path: str):
        """(route, route values, None) or (None, None, the 404/405 error response)."""
        matched = [(route, values) for route in self.routes if (values := route.match(path)) is not None]
        for route, values in matched:
            if route.methods is None or method in route.methods:
                return route, values, None
        if not matched:
            return None, None, _json_error(404, "not_found", f"No function is registered for {raw_path}.")
        error = _json_error(405, "method_not_allowed", f"{method} is not allowed for {raw_path}.")
        error[1].append(("Allow", ", ".join(sorted(set().union(*(r.methods for r, _ in matched if r.methods))))))
        return None, None, error

    @staticmethod
    def _read_body(h: _Handler) -> bytes | None:
        """The request body; None when it is chunked or its length is invalid (the connection is then closed)."""
        length = h.headers.get("Content-Length") or "0"
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower() or not length.isdigit():
            h.close_connection = True
            return None
        return h.rfile.read(int(length)) if int(length) > 0 else b""

    def _invoke(self, h: _Handler, route: Route, route_params: dict[str, str], target: Any, body: bytes):
        headers: dict[str, str] = {}
        for key, value in h.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        host = h.headers.get("Host") or f"{self.host}:{self.port}"
        request = func.HttpRequest(
            method=h.command,
            url=f"http://{host}{target.path}" + (f"?{target.query}" if target.query else ""),
            headers=headers, params=query_params(target.query), route_params=route_params, body=body,
        )
        kwargs: dict[str, Any] = {route.request_param: request}
        if route.wants_context:
            kwargs["context"] = _Context(route.function_name, self.project_root)
        try:
            result = route.user_function(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run_coroutine_threadsafe(_await(result), self._loop).result()
            if isinstance(result, str):
                result = func.HttpResponse(result)
            if not isinstance(result, func.HttpResponse):
                raise TypeError(f"{route.function_name} returned {type(result).__name__}, not func.HttpResponse")
            return result.status_code, response_headers(result), result.get_body()
        except Exception:
            log.exception("Executed '%s' (Failed)", route.function_name)
            return _json_error(500, "internal_error", "The function failed; see the host's log.")

    @staticmethod
    def _write(h: _Handler, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        h.send_response(status)
        for name, value in headers:
            h.send_header(name, value)
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD" and not no_body:
            h.wfile.write(body)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def serve(
    app: FunctionRegister, host: str = "127.0.0.1", port: int = 7071, *,
    route_prefix: str | None = None, project_root: str | Path = ".",
) -> LocalHost:
    """Bind ``app`` to ``host:port`` (0: any free port). Call ``.start()`` (background) or ``.serve_forever()``.

    ``route_prefix`` None reads host.json in ``project_root`` (default "api", as the Functions host).
    """
    configure_logging()
    return LocalHost(app, host, port, route_prefix=route_prefix, project_root=project_root)


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr (does nothing when logging is already configured, e.g. under pytest)."""
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.localhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071, help="0 picks a free port (logged at start-up)")
    parser.add_argument("--app", default="function_app", help="module holding the FunctionApp")
    parser.add_argument("--no-timers", action="store_true", help="do not run timer functions on their schedules")
    args = parser.parse_args(argv)
    configure_logging()
    root = Path.cwd()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    server = serve(load_function_app(args.app), args.host, args.port, project_root=root)
    try:
        server.serve_forever(timers=not args.no_timers)
    except KeyboardInterrupt:
        log.info("Stopping")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
