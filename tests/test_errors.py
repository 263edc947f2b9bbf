"""API errors are a small hierarchy in ``shared/errors.py`` (issue #11): each class fixes the status and, where
one status has one meaning, the code; a raise site names the failure, not a status/code pair. Every 503 carries
``Retry-After``. Milliseconds, no Azurite: unit tests of each class's wire shape, the HTTP edge's rendering of
them, and an AST guard that no ``ApiError(...)`` with an inline status creeps back into ``shared/``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from shared import errors
from shared.errors import (
    DEFAULT_RETRY_AFTER,
    ApiError,
    BadGateway,
    Busy,
    Conflict,
    Forbidden,
    Internal,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    unavailable,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"
ERRORS_PY = SHARED / "errors.py"
HIERARCHY = {name for name, obj in vars(errors).items()
             if isinstance(obj, type) and issubclass(obj, ApiError) and obj is not ApiError}


# --- the guard ----------------------------------------------------------------------------------------

def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def inline_errors(tree: ast.AST) -> list[tuple[int, str]]:
    """``ApiError(...)`` calls (the status/code pair at the raise site) and classes deriving from ``ApiError``
    itself rather than from a member of the hierarchy."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "ApiError":
            status = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "status"), None)
            what = ast.unparse(status) if status is not None else "?"
            found.append((node.lineno, f"ApiError({what}, ...): raise the matching class of shared/errors.py"))
        elif isinstance(node, ast.ClassDef) and any(_name(b) == "ApiError" for b in node.bases):
            found.append((node.lineno, f"class {node.name}(ApiError): derive from a class of the hierarchy "
                                       f"({', '.join(sorted(HIERARCHY))})"))
    return sorted(found)


def test_no_inline_status_code_pairs_outside_errors_py():
    offenders = []
    for path in sorted(SHARED.rglob("*.py")):
        if path == ERRORS_PY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        offenders += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in inline_errors(tree)]
    assert not offenders, "\n".join(offenders)


def test_the_guard_sees_what_it_guards():
    sample = ast.parse(
        "from shared import errors\n"
        "raise ApiError(409, 'x', 'y')\n"
        "raise errors.ApiError(status=418, code='teapot', message='m')\n"
        "raise Conflict('x', 'y')\n"
        "class Mine(ApiError): pass\n"
        "class Fine(errors.Conflict): pass\n"
    )
    assert [line for line, _ in inline_errors(sample)] == [2, 3, 5]


# --- each class on the wire ---------------------------------------------------------------------------

CASES = [
    (InvalidInput("name: too long", field="name"), 400, "invalid_input",
     {"error": "invalid_input", "message": "name: too long", "field": "name"}, {}),
    (InvalidInput("the body is not valid JSON", code="invalid_json"), 400, "invalid_json",
     {"error": "invalid_json", "message": "the body is not valid JSON"}, {}),
    (Unauthorized("send a token", headers={"WWW-Authenticate": "Bearer"}), 401, "unauthorized",
     {"error": "unauthorized", "message": "send a token"}, {"WWW-Authenticate": "Bearer"}),
    (Unauthorized("no"), 401, "unauthorized", {"error": "unauthorized", "message": "no"}, {}),
    (Forbidden("lacks the 'admin' scope"), 403, "forbidden",
     {"error": "forbidden", "message": "lacks the 'admin' scope"}, {}),
    (NotFound("no account with id 'a'"), 404, "not_found", {"error": "not_found", "message": "no account with id 'a'"},
     {}),
    (NotFound("gone", code="no_such_thing"), 404, "no_such_thing", {"error": "no_such_thing", "message": "gone"}, {}),
    (Conflict("app_in_use", "accounts still use it"), 409, "app_in_use",
     {"error": "app_in_use", "message": "accounts still use it"}, {}),
    (PayloadTooLarge("too big"), 413, "payload_too_large", {"error": "payload_too_large", "message": "too big"}, {}),
    (UnsupportedMediaType("send JSON"), 415, "unsupported_media_type",
     {"error": "unsupported_media_type", "message": "send JSON"}, {}),
    (Internal(), 500, "internal_error", {"error": "internal_error", "message": "an internal error occurred"}, {}),
    (BadGateway("token_refused", "Microsoft said no"), 502, "token_refused",
     {"error": "token_refused", "message": "Microsoft said no"}, {}),
    (Busy("busy; retry", retry_after=1), 503, "unavailable", {"error": "unavailable", "message": "busy; retry"},
     {"Retry-After": "1"}),
]


@pytest.mark.parametrize(("error", "status", "code", "body", "headers"), CASES,
                         ids=[f"{type(c[0]).__name__}-{c[2]}" for c in CASES])
def test_each_class_has_its_status_code_body_and_headers(error, status, code, body, headers):
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.body(), error.headers) == (status, code, body, headers)
    assert str(error) == error.message == body["message"]


def test_every_class_of_the_hierarchy_is_covered():
    assert {type(c[0]).__name__ for c in CASES} == HIERARCHY


def test_the_fixed_codes_cannot_be_changed_by_accident():
    """A status with one meaning has one code: the class takes no ``code`` argument."""
    for cls in (Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Internal, Busy):
        with pytest.raises(TypeError):
            cls("message", code="other")  # type: ignore[call-arg]


def test_headers_are_copied_not_shared():
    headers = {"WWW-Authenticate": "Bearer"}
    error = Unauthorized("no", headers=headers)
    error.headers["X"] = "1"
    assert headers == {"WWW-Authenticate": "Bearer"}


# --- every 503 carries Retry-After --------------------------------------------------------------------

@pytest.mark.parametrize(("retry_after", "header"), [
    (None, str(DEFAULT_RETRY_AFTER)), (1, "1"), (30, "30"), (30.0, "30"), (2.1, "3"),  # up: never too early
    (0, "1"), (0.2, "1"), (-5, "1"),  # "retry at once" invites a storm of retries
])
def test_busy_always_says_when_to_come_back(retry_after, header):
    error = Busy("busy", retry_after=retry_after)
    assert (error.status, error.code, error.headers) == (503, "unavailable", {"Retry-After": header})


def test_unavailable_is_a_busy_naming_the_dependency():
    error = unavailable("the secret store", 30)
    assert isinstance(error, Busy)
    assert error.body() == {"error": "unavailable",
                            "message": "the secret store is temporarily unavailable; retry later"}
    assert error.headers == {"Retry-After": "30"}
    assert unavailable("a storage dependency").headers == {"Retry-After": str(DEFAULT_RETRY_AFTER)}


def test_a_bare_503_gets_retry_after_too():
    """The safety net under ``Busy``: should a 503 ever be built by hand, it still says when to come back
    (and keeps a Retry-After it was given)."""
    assert ApiError(503, "unavailable", "x").headers == {"Retry-After": str(DEFAULT_RETRY_AFTER)}
    assert ApiError(503, "unavailable", "x", headers={"Retry-After": "9"}).headers == {"Retry-After": "9"}
    assert "Retry-After" not in ApiError(409, "conflict", "x").headers


# --- the HTTP edge ------------------------------------------------------------------------------------

def test_error_response_renders_status_body_and_headers():
    from shared.web.http import error_response

    response = error_response(Busy("the account is being changed concurrently; retry", retry_after=1))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Cache-Control"] == "no-store"
    assert json.loads(response.get_body()) == {"error": "unavailable",
                                               "message": "the account is being changed concurrently; retry"}
    unauthorized = error_response(Unauthorized("no", headers={"WWW-Authenticate": "Bearer"}))
    assert (unauthorized.status_code, unauthorized.headers["WWW-Authenticate"]) == (401, "Bearer")


@pytest.mark.parametrize("failure", ["transient", "secret_store", "unexpected"])
def test_call_api_never_answers_503_without_retry_after(failure):
    """The edge's own answers: a transient dependency failure and an unreadable secret store are 503 with
    Retry-After; anything unexpected is a bare 500 that leaks nothing."""
    import azure.functions as func

    from shared.storage.secrets.base import SecretStoreUnavailable
    from shared.web.http import call_api

    class ServiceRequestError(Exception):  # what azure.core raises on a network failure (matched by name)
        pass

    def handler(req):
        if failure == "transient":
            raise ServiceRequestError("connection refused")
        if failure == "secret_store":
            raise SecretStoreUnavailable("throttled", retry_after=12)
        raise RuntimeError("secret detail")

    response = call_api(handler, func.HttpRequest("GET", "/api/v1/x", body=b""), scope=None)
    body = json.loads(response.get_body())
    if failure == "unexpected":
        assert (response.status_code, body) == (500, {"error": "internal_error",
                                                       "message": "an internal error occurred"})
        assert "Retry-After" not in response.headers
    else:
        assert (response.status_code, body["error"]) == (503, "unavailable")
        assert response.headers["Retry-After"] == ("12" if failure == "secret_store" else str(DEFAULT_RETRY_AFTER))


def test_the_hosted_unavailable_page_says_when_to_come_back_too():
    from shared.web.blueprints.hosted import page_response

    busy = page_response("unavailable")
    assert (busy.status_code, busy.headers["Retry-After"]) == (503, str(DEFAULT_RETRY_AFTER))
    assert "Retry-After" not in page_response("link_used").headers


def test_the_handoff_errors_keep_their_wire_shape():
    from shared.handoff.tokens import ReauthenticationRequired, TokenRefused

    reauth = ReauthenticationRequired("acc", "invalid_grant", "AADSTS70000: expired")
    assert isinstance(reauth, Conflict)
    assert (reauth.status, reauth.code, reauth.headers) == (409, "reauthentication_required", {})
    assert reauth.body() == {"error": "reauthentication_required", "message": reauth.message, "account": "acc",
                             "state": "authenticationError", "errorCode": "invalid_grant",
                             "errorDescription": "AADSTS70000: expired"}
    refused = TokenRefused("acc", "invalid_client", "bad secret")
    assert isinstance(refused, BadGateway)
    assert (refused.status, refused.code) == (502, "token_refused")
    assert refused.body() == {"error": "token_refused", "account": "acc", "errorCode": "invalid_client",
                              "message": "Microsoft refused the token request (invalid_client): bad secret"}
