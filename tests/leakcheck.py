"""A pytest plugin that proves, over the whole test run, that no secret leaves the service (../shared/DESIGN.md
invariant 5: refresh tokens live only in the secret store; "API tokens are shown once").

Registered from ``tests/conftest.py`` (``pytest_plugins``), so every ``make test`` run is checked.

What is captured, for every test:

* every log record of the process, at DEBUG, from every logger (a handler on the root logger, installed for
  the whole session; the root level is lowered to DEBUG). pytest's own per-test log capture is kept at
  WARNING unless ``--log-level``/``log_level`` says otherwise, so reports stay as they were;
* every response the in-process local host (``tools.localhost``) writes: status line, headers (Location,
  Set-Cookie, ...) and body, through ``tools.localhost.RESPONSE_HOOKS``. That is every response of the
  service a test sees over HTTP (``tests.service``'s browsers, schemathesis, the race tests).

What counts as a secret (collected while the test runs):

* every refresh token and access token a fake Microsoft identity platform (``sandbox.fakes.identity``) issued,
  and the client secret of every app registered with it;
* every value written to a secret store (``LocalSecretStore.set``, ``KeyVaultSecretStore.set``): refresh
  tokens, client secrets, the signing key in Key Vault;
* every API token minted by ``shared.storage.tables.apitokens.create_token`` (tests, the CLI, ``POST /v1/tokens``);
* the ``MC_SIGNING_KEY`` and ``MC_LOCAL_SECRET_KEY`` of the test's environment;
* every authorization code the fake identity platform issued, and every sign-in ``state`` the service sent
  a browser off to Microsoft with (the ``state`` of a ``Location`` in any service response): whoever holds
  a code and its state can finish someone's sign-in, so neither may appear in a log the service writes
  (issue 12 point 11).

Values shorter than 16 characters or with fewer than 8 distinct characters are ignored (fuzzed "secrets"
such as ``"0000..."`` would match anything). Each secret is searched whole and, for long ones, by a
24-character slice at each end of its random part (a truncated token in a log line is still a leak).

Allowed by design, and only there: an API token in the answer of ``POST /v1/tokens`` (shown once); an access
token in the answer of ``GET /v1/account/{account}/oauth-token`` (the hand-off); a webhook's signing secret
(a secret-store value) in the answer of ``POST /v1/webhooks`` (shown once); the sign-in state in the answer
of ``GET /accounts/new`` (the redirect to Microsoft carries it). Codes and states in the request lines
urllib3 logs (``urllib3.connectionpool``): that logger writes the request line of every HTTP client in the
test process, and the code travels in the URL only from the browser to ``/oauth``, so what it logs there is a
test's browser, never the service (whose own requests send the code in a POST body). The ``create-token``
CLI prints its token to stdout, which is not captured here (it is neither a log record nor a response).

A leak does not fail the test that caused it (its teardown has already run); it is reported at the end of
the session with the test's id, the kind of secret and where it appeared (the secret masked), and the run
exits with "tests failed". ``tests/test_no_secret_leaks.py`` proves the plugin catches leaks.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

MIN_LENGTH = 16
MIN_DISTINCT = 8
SLICE = 24

REFRESH_TOKEN = "refresh token"
ACCESS_TOKEN = "access token"
CLIENT_SECRET = "client secret"
API_TOKEN = "API token"
STORED_SECRET = "secret-store value"
SIGNING_KEY = "signing key (MC_SIGNING_KEY)"
LOCAL_SECRET_KEY = "local secret-store key (MC_LOCAL_SECRET_KEY)"
AUTH_CODE = "authorization code"
SIGNIN_STATE = "sign-in state"

_ENV_SECRETS = {"MC_SIGNING_KEY": SIGNING_KEY, "MC_LOCAL_SECRET_KEY": LOCAL_SECRET_KEY}
_HAND_OFF = re.compile(r"^/v1/account/[^/]+/oauth-token/?$", re.IGNORECASE)
_MINT = re.compile(r"^/v1/tokens/?$", re.IGNORECASE)
_WEBHOOK_CREATE = re.compile(r"^/v1/webhooks/?$", re.IGNORECASE)  # its signing secret, shown once
_SIGNIN_START = re.compile(r"^/accounts/new/?$", re.IGNORECASE)  # redirects to Microsoft with the state
_KNOWN_PREFIXES = ("1.A", "mc_")  # fixed prefixes of fake refresh tokens and API tokens: not random
# Loggers that write the request lines of every HTTP client in the process (tests' browsers included).
_CLIENT_REQUEST_LOGGERS = frozenset({"urllib3.connectionpool"})


def allowed_kinds(method: str, target: str) -> frozenset[str]:
    """The kinds of secret a response to ``method target`` may carry by design."""
    from urllib.parse import unquote, urlsplit

    path = unquote(urlsplit(target).path)
    if method.upper() == "GET" and _HAND_OFF.match(path):
        return frozenset({ACCESS_TOKEN})
    if method.upper() == "POST" and _MINT.match(path):
        return frozenset({API_TOKEN})
    if method.upper() == "POST" and _WEBHOOK_CREATE.match(path):
        return frozenset({STORED_SECRET})
    if method.upper() == "GET" and _SIGNIN_START.match(path):
        return frozenset({SIGNIN_STATE})
    return frozenset()


def allowed_in_log(logger: str) -> frozenset[str]:
    """The kinds of secret a log record of ``logger`` may carry: codes and states in client request lines."""
    return frozenset({AUTH_CODE, SIGNIN_STATE}) if logger in _CLIENT_REQUEST_LOGGERS else frozenset()


def states_in(headers: list[tuple[str, str]]) -> list[str]:
    """The ``state`` of every ``Location`` in ``headers`` (the service sending a browser to Microsoft)."""
    from urllib.parse import parse_qs, urlsplit

    return [state for name, value in headers if name.lower() == "location"
            for state in parse_qs(urlsplit(value).query).get("state", [])]


def is_secret_like(value: Any) -> bool:
    return isinstance(value, str) and len(value) >= MIN_LENGTH and len(set(value)) >= MIN_DISTINCT


def needles(value: str) -> list[str]:
    """The value, and for long values a slice of each end of its random part (catches truncation)."""
    found = [value]
    if value.count(".") == 2 and value.startswith("eyJ"):  # a JWT: its header is the same for every token
        body = value.rsplit(".", 1)[-1]
    else:
        body = value
        for prefix in _KNOWN_PREFIXES:
            if body.startswith(prefix):
                body = body[len(prefix):]
                break
    if len(body) >= 2 * SLICE:
        found += [body[:SLICE], body[-SLICE:]]
    return found


@dataclass
class Capture:
    kind: str  # "log" or "response"
    where: str  # logger name / "GET /path -> 200"
    text: str
    allowed: frozenset[str] = frozenset()


@dataclass
class Finding:
    test: str
    secret_kind: str
    where: str
    excerpt: str


@dataclass
class _Bucket:
    captures: list[Capture] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # value -> kind
    identities: list[Any] = field(default_factory=list)


class LeakCheck:
    """The session's collector. Thread-safe: the service answers on server threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bucket = _Bucket()
        self._previous: dict[str, str] = {}
        self.findings: list[Finding] = []
        self.records = self.responses = self.secrets_checked = self.tests = 0

    # -- collecting (from any thread) ------------------------------------------------------------------

    def add_capture(self, capture: Capture) -> None:
        with self._lock:
            self._bucket.captures.append(capture)
            if capture.kind == "log":
                self.records += 1
            else:
                self.responses += 1

    def add_secret(self, value: Any, kind: str) -> None:
        if is_secret_like(value):
            with self._lock:
                self._bucket.secrets.setdefault(value, kind)

    def add_identity(self, fake: Any) -> None:
        with self._lock:
            self._bucket.identities.append(fake)

    # -- checking (after each test) --------------------------------------------------------------------

    def finish_test(self, test_id: str) -> list[Finding]:
        with self._lock:
            bucket, self._bucket = self._bucket, _Bucket()
        for fake in bucket.identities:
            for value, kind in [*issued_secrets(fake), *issued_codes(fake)]:
                if is_secret_like(value):
                    bucket.secrets.setdefault(value, kind)
        # Records a server thread logs just after a test ended land in the next bucket: check them against
        # the previous test's secrets too.
        secrets = {**self._previous, **bucket.secrets}
        found = scan(test_id, bucket.captures, secrets)
        with self._lock:
            self.findings.extend(found)
            self.secrets_checked += len(bucket.secrets)
            self.tests += 1
            self._previous = bucket.secrets
        return found


def scan(test_id: str, captures: list[Capture], secrets: dict[str, str]) -> list[Finding]:
    """Every (secret, capture) pair where the secret appears in a capture that may not carry its kind."""
    findings: list[Finding] = []
    groups: dict[frozenset[str], list[Capture]] = {}
    for capture in captures:
        groups.setdefault(capture.allowed, []).append(capture)
    for allowed, group in groups.items():
        joined = "\x00".join(c.text for c in group)
        for value, kind in secrets.items():
            if kind in allowed:
                continue
            present = [needle for needle in needles(value) if needle in joined]
            if not present:
                continue
            for capture in group:  # rare: find which captures, and report each once
                needle = next((n for n in present if n in capture.text), None)
                if needle is not None:
                    findings.append(Finding(test_id, kind, f"{capture.kind} {capture.where}",
                                            _excerpt(capture.text, needle, kind)))
    return findings


def _excerpt(text: str, needle: str, kind: str, width: int = 80) -> str:
    at = text.find(needle)
    start, end = max(0, at - width), min(len(text), at + len(needle) + width)
    return (text[start:at] + f"<{kind}>" + text[at + len(needle):end]).replace("\n", "\\n")


def issued_secrets(fake: Any) -> Iterable[tuple[str, str]]:
    """Refresh tokens, access tokens and client secrets a ``FakeIdentity`` knows.

    Uses ``fake.issued_secrets()`` when the fake offers it, else its private registries (kept in step with
    ``sandbox/fakes/identity.py``; a missing registry is an error here, so the check cannot silently go blind).
    """
    public = getattr(fake, "issued_secrets", None)
    if callable(public):
        return list(public())
    with fake._lock:
        out = [(v, REFRESH_TOKEN) for v in fake._refresh_tokens]
        out += [(v, ACCESS_TOKEN) for v in fake._access_tokens]
        out += [(c.client_secret, CLIENT_SECRET) for c in fake._clients.values() if c.client_secret]
    return out


def issued_codes(fake: Any) -> list[tuple[str, str]]:
    """The authorization codes a ``FakeIdentity`` issued (its ``_codes`` registry keeps used ones too)."""
    with fake._lock:
        return [(code, AUTH_CODE) for code in fake._codes]


# --- wiring -------------------------------------------------------------------------------------------

class _Handler(logging.Handler):
    def __init__(self, check: LeakCheck) -> None:
        super().__init__(logging.DEBUG)
        self.check = check
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep what there is
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info:
            text += "\n" + self._formatter.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + record.stack_info
        self.check.add_capture(Capture("log", record.name, text, allowed_in_log(record.name)))


def _on_response(check: LeakCheck):
    def hook(method: str, target: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        head = "\n".join(f"{name}: {value}" for name, value in headers)
        text = f"{status}\n{head}\n\n{body.decode('utf-8', 'replace')}"
        where = f"{method} {target[:200]} -> {status}"
        for state in states_in(headers):
            check.add_secret(state, SIGNIN_STATE)
        check.add_capture(Capture("response", where, text, allowed_kinds(method, target)))

    return hook


def _wrap(owner: Any, name: str, after) -> None:
    original = getattr(owner, name)
    if getattr(original, "__leakcheck__", False):
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        after(result, *args, **kwargs)
        return result

    wrapper.__leakcheck__ = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    setattr(owner, name, wrapper)


def install(check: LeakCheck) -> None:
    """Patch the sources of secrets and the local host (idempotent). Runs before test modules are imported,
    so ``from shared.storage.tables.apitokens import create_token`` in a test gets the recording version."""
    import shared.storage.tables.apitokens as apitokens
    import tools.localhost as localhost
    from sandbox.fakes.identity import FakeIdentity
    from shared.storage.secrets.keyvault import KeyVaultSecretStore
    from shared.storage.secrets.local import LocalSecretStore

    _wrap(apitokens, "create_token", lambda result, *a, **k: check.add_secret(result[0], API_TOKEN))

    def stored(result: Any, self: Any, name: str, value: Any = None, *a: Any, **k: Any) -> None:
        check.add_secret(value, STORED_SECRET)

    for store in (LocalSecretStore, KeyVaultSecretStore):
        _wrap(store, "set", stored)
    _wrap(FakeIdentity, "__init__", lambda result, self, *a, **k: check.add_identity(self))
    localhost.RESPONSE_HOOKS.append(_on_response(check))


def _env_secrets(check: LeakCheck) -> None:
    for name, kind in _ENV_SECRETS.items():
        check.add_secret(os.environ.get(name), kind)


_check: LeakCheck | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global _check
    if config.getoption("log_level", None) is None and not config.getini("log_level"):
        config.option.log_level = "WARNING"  # the root goes to DEBUG below; keep pytest's reports as they were
    _check = LeakCheck()
    config.stash[_KEY] = _check
    install(_check)
    root = logging.getLogger()
    root.addHandler(_Handler(_check))
    root.setLevel(logging.DEBUG)


_KEY = pytest.StashKey[LeakCheck]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    check = item.config.stash[_KEY]
    _env_secrets(check)  # fixtures have set the test's environment by now
    try:
        return (yield)
    finally:
        _env_secrets(check)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield
    item.config.stash[_KEY].finish_test(item.nodeid)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    check = session.config.stash.get(_KEY, None)
    if check is not None and check.findings and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    check = config.stash.get(_KEY, None)
    if check is None:
        return
    if not check.findings:
        terminalreporter.write_line(
            f"leakcheck: no secret in {check.records} log records and {check.responses} service responses "
            f"of {check.tests} tests ({check.secrets_checked} secrets checked)")
        return
    terminalreporter.section("SECRETS LEAKED", sep="=", red=True, bold=True)
    for f in check.findings[:50]:
        terminalreporter.write_line(f"{f.test}: {f.secret_kind} in {f.where}: {f.excerpt}")
    if len(check.findings) > 50:
        terminalreporter.write_line(f"... and {len(check.findings) - 50} more")
