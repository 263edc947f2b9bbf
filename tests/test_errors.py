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
    TokenRenewalFailed,
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

def envelope(status: int, phrase: str, code: str, message: str, **extra: object) -> dict[str, object]:
    """EmailEngine's error body, written out (../shared/emailengine-api.md, "Errors")."""
    return {"statusCode": status, "error": phrase, "message": message, "code": code, **extra}


CASES = [
    (InvalidInput("name: too long", field="name"), 400, "invalid_input",
     envelope(400, "Bad Request", "invalid_input", "name: too long", field="name",
              fields=[{"message": "name: too long", "key": "name"}]), {}),
    (InvalidInput("the body is not valid JSON", code="invalid_json"), 400, "invalid_json",
     envelope(400, "Bad Request", "invalid_json", "the body is not valid JSON"), {}),
    (Unauthorized("send a token", headers={"WWW-Authenticate": "Bearer"}), 401, "unauthorized",
     envelope(401, "Unauthorized", "unauthorized", "send a token"), {"WWW-Authenticate": "Bearer"}),
    (Unauthorized("no"), 401, "unauthorized", envelope(401, "Unauthorized", "unauthorized", "no"), {}),
    (Forbidden("lacks the 'admin' scope"), 403, "forbidden",
     envelope(403, "Forbidden", "forbidden", "lacks the 'admin' scope"), {}),
    (TokenRenewalFailed("Failed to renew"), 403, "OauthRenewError",
     envelope(403, "Forbidden", "OauthRenewError", "Failed to renew"), {}),
    (NotFound("no account with id 'a'"), 404, "not_found",
     envelope(404, "Not Found", "not_found", "no account with id 'a'"), {}),
    (NotFound("gone", code="no_such_thing"), 404, "no_such_thing",
     envelope(404, "Not Found", "no_such_thing", "gone"), {}),
    (Conflict("app_in_use", "accounts still use it"), 409, "app_in_use",
     envelope(409, "Conflict", "app_in_use", "accounts still use it"), {}),
    (PayloadTooLarge("too big"), 413, "payload_too_large",
     envelope(413, "Payload Too Large", "payload_too_large", "too big"), {}),
    (UnsupportedMediaType("send JSON"), 415, "unsupported_media_type",
     envelope(415, "Unsupported Media Type", "unsupported_media_type", "send JSON"), {}),
    (Internal(), 500, "internal_error",
     envelope(500, "Internal Server Error", "internal_error", "an internal error occurred"), {}),
    (BadGateway("token_refused", "Microsoft said no"), 502, "token_refused",
     envelope(502, "Bad Gateway", "token_refused", "Microsoft said no"), {}),
    (Busy("busy; retry", retry_after=1), 503, "unavailable",
     envelope(503, "Service Unavailable", "unavailable", "busy; retry"), {"Retry-After": "1"}),
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
    for cls in (Unauthorized, Forbidden, TokenRenewalFailed, PayloadTooLarge, UnsupportedMediaType, Internal, Busy):
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
    assert error.body() == {"statusCode": 503, "error": "Service Unavailable", "code": "unavailable",
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
    assert json.loads(response.get_body()) == {"statusCode": 503, "error": "Service Unavailable", "code": "unavailable",
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
        assert (response.status_code, body) == (500, {"statusCode": 500, "error": "Internal Server Error",
                                                       "code": "internal_error",
                                                       "message": "an internal error occurred"})
        assert "Retry-After" not in response.headers
    else:
        assert (response.status_code, body["code"], body["error"]) == (503, "unavailable", "Service Unavailable")
        assert response.headers["Retry-After"] == ("12" if failure == "secret_store" else str(DEFAULT_RETRY_AFTER))


def test_the_hosted_unavailable_page_says_when_to_come_back_too():
    from shared.web.blueprints.hosted import page_response

    busy = page_response("unavailable")
    assert (busy.status_code, busy.headers["Retry-After"]) == (503, str(DEFAULT_RETRY_AFTER))
    assert "Retry-After" not in page_response("link_used").headers


def test_the_handoff_errors_keep_their_wire_shape():
    """EmailEngine's 403 ``OauthRenewError`` with ``authenticationFailed``, plus this service's fields."""
    from shared.handoff.tokens import OauthRenewError, ReauthenticationRequired, TokenRefused

    reauth = ReauthenticationRequired("acc", "invalid_grant", "AADSTS70000: expired")
    assert isinstance(reauth, OauthRenewError)
    assert (reauth.status, reauth.code, reauth.headers) == (403, "OauthRenewError", {})
    assert reauth.body() == {"statusCode": 403, "error": "Forbidden", "code": "OauthRenewError",
                             "message": reauth.message, "authenticationFailed": True, "account": "acc",
                             "state": "authenticationError", "errorCode": "invalid_grant",
                             "errorDescription": "AADSTS70000: expired"}
    refused = TokenRefused("acc", "invalid_client", "bad secret")
    assert isinstance(refused, OauthRenewError) and not isinstance(refused, ReauthenticationRequired)
    assert (refused.status, refused.code) == (403, "OauthRenewError")
    assert refused.body() == {"statusCode": 403, "error": "Forbidden", "code": "OauthRenewError",
                              "message": refused.message, "authenticationFailed": False, "account": "acc",
                              "errorCode": "invalid_client", "errorDescription": "bad secret"}
    assert "(invalid_client): bad secret" in refused.message


def test_a_400_lists_every_invalid_field_as_emailengine_does():
    """EmailEngine's ``fields``: every invalid field with its message, not only the first one."""
    from pydantic import ValidationError

    from shared.schemas import ApiTokenCreate
    from shared.web.http import validation_error

    with pytest.raises(ValidationError) as caught:
        ApiTokenCreate.model_validate({"name": "", "scopes": ["root"], "color": "red"})
    body = validation_error(caught.value).body()
    assert (body["statusCode"], body["error"]) == (400, "Bad Request")
    assert {f["key"] for f in body["fields"]} == {"name", "scopes.0", "color"}, body
    assert body["field"] == body["fields"][0]["key"] and body["message"]
    assert all(f["message"] for f in body["fields"])
