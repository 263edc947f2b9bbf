"""The OpenAPI document: served without a token, covers every registered route with the same methods,
validates as OpenAPI 3.1, and describes what the API really answers."""

from __future__ import annotations

import pytest
from azure.functions.decorators.http import HttpTrigger

from shared.web.openapi import openapi_document
from tests.service import APP_REDIRECT


def registered_routes() -> dict[str, set[str]]:
    """``/route`` -> methods, from ``function_app.app`` as the Functions host sees it."""
    from function_app import app

    app.functions_bindings = None  # get_functions() refuses to index the same app twice
    routes: dict[str, set[str]] = {}
    for function in app.get_functions():
        trigger = function.get_trigger()
        if isinstance(trigger, HttpTrigger):
            methods = {str(getattr(m, "value", m)).upper() for m in trigger.methods or ()}
            assert methods, f"{function.get_function_name()} accepts every method; name them"
            routes.setdefault("/" + trigger.route.strip("/"), set()).update(methods)
    return routes


# POSTs that act on the resource in their path and take no body.
BODYLESS = {("/v1/webhooks/deadletters/{deadletter}/resend", "post")}


def documented_routes(document: dict) -> dict[str, set[str]]:
    return {path: {m.upper() for m in item} for path, item in document["paths"].items()}


def test_every_registered_route_is_documented_with_its_methods():
    registered = registered_routes()
    documented = documented_routes(openapi_document("https://mc.example"))
    v1 = {p: m for p, m in registered.items() if p.startswith("/v1/")}
    assert len(v1) >= 10
    for path, methods in v1.items():
        assert documented.get(path) == methods, (path, methods, documented.get(path))
    assert documented == registered  # and nothing is documented that is not served


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    document = openapi_document("https://mc.example")
    assert document["openapi"].startswith("3.1")
    validator.validate(document)


def test_operations_declare_security_bodies_and_errors():
    document = openapi_document("https://mc.example")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"]}
    assert document["security"] == [{"bearerAuth": []}]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert set(document["components"]["schemas"]["ErrorBody"]["properties"]) == {
        "statusCode", "error", "message", "code", "field", "fields"}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if not path.startswith("/v1/"):
                continue
            if path == "/v1/openapi.json":
                assert op["security"] == []
                continue
            assert "security" not in op and op["x-required-scope"] in ("api", "admin"), (path, method)
            for status in ("401", "403", "503"):
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                if (path, method, status) == ("/v1/account/{account}/oauth-token", "get", "403"):  # OauthRenewError
                    assert schema == {"anyOf": [{"$ref": "#/components/schemas/OauthRenewErrorBody"}, error_ref]}
                    continue
                assert schema == error_ref
            if method in ("post", "put") and (path, method) not in BODYLESS:
                assert "$ref" in op["requestBody"]["content"]["application/json"]["schema"], (path, method)
                assert "400" in op["responses"] and "415" in op["responses"]
            if "{" in path:
                names = {"account", "app", "id", "webhook", "deadletter", "link"} & set(
                    path.replace("}", "{").split("{"))
                assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == names
    scopes = {(p, m): op.get("x-required-scope") for p, item in document["paths"].items() for m, op in item.items()}
    assert scopes[("/v1/oauth2", "post")] == scopes[("/v1/tokens", "get")] == "admin"
    assert scopes[("/v1/accounts", "get")] == scopes[("/v1/authentication/form", "post")] == "api"
    assert scopes[("/v1/account/{account}/oauth-token", "get")] == "api"
    params = {p["name"]: p for p in document["paths"]["/v1/accounts"]["get"]["parameters"]}
    assert set(params) == {"page", "pageSize", "cursor", "state", "query", "email"}
    assert params["pageSize"]["schema"]["maximum"] == 1000 and params["pageSize"]["schema"]["default"] == 20
    assert params["page"]["schema"]["minimum"] == 0
    assert {"connected", "authenticationError", "init", "connectError"} <= set(params["state"]["schema"]["enum"])
    delete = {p["name"]: p for p in document["paths"]["/v1/account/{account}"]["delete"]["parameters"]}
    assert delete["revoke"]["in"] == "query" and delete["revoke"]["schema"]["type"] == "boolean"


@pytest.fixture
def document(service):
    response = service.api("GET", "/v1/openapi.json", token=False)
    assert response.status_code == 200, response.text
    return response.json()


def test_served_without_a_token(service, document):
    assert document == openapi_document(service.url)
    assert document["servers"] == [{"url": service.url}]


def test_real_answers_match_the_documented_schemas(service, identity, document):
    jsonschema = pytest.importorskip("jsonschema")

    def check(response, path: str, method: str) -> None:
        op = document["paths"][path][method]
        schema = op["responses"][str(response.status_code)]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(response.json())

    user = identity.add_user("zoe@contoso.com", name="Zoe")
    form = service.form(email="shared@contoso.com", delegated=True, syncFrom="2024-01-01")
    check(form, "/v1/authentication/form", "post")
    account = service.sign_in(form.json()["url"], user).result["account"]
    check(service.api("GET", "/v1/accounts"), "/v1/accounts", "get")
    check(service.api("GET", f"/v1/account/{account}"), "/v1/account/{account}", "get")
    check(service.api("PUT", f"/v1/account/{account}", json={"name": "Shared"}), "/v1/account/{account}", "put")
    check(service.api("POST", f"/v1/account/{account}/reauth", json={"redirectUrl": APP_REDIRECT}),
          "/v1/account/{account}/reauth", "post")
    check(service.api("GET", "/v1/account/missing"), "/v1/account/{account}", "get")
    check(service.api("GET", "/v1/accounts", params={"pageSize": 0}), "/v1/accounts", "get")
    check(service.api("GET", "/v1/oauth2"), "/v1/oauth2", "get")
    app = service.api("POST", "/v1/oauth2", json={"name": "n", "clientId": "c", "clientSecret": "s"})
    check(app, "/v1/oauth2", "post")
    check(service.api("PUT", f"/v1/oauth2/{app.json()['id']}", json={"enabled": False}), "/v1/oauth2/{app}", "put")
    check(service.api("DELETE", f"/v1/oauth2/{service.app.id}"), "/v1/oauth2/{app}", "delete")  # 409: in use
    check(service.api("DELETE", f"/v1/oauth2/{app.json()['id']}"), "/v1/oauth2/{app}", "delete")
    created = service.api("POST", "/v1/tokens", json={"name": "t"})
    check(created, "/v1/tokens", "post")
    check(service.api("GET", "/v1/tokens"), "/v1/tokens", "get")
    check(service.api("DELETE", f"/v1/tokens/{created.json()['id']}"), "/v1/tokens/{id}", "delete")
    check(service.api("GET", "/v1/tokens", token=False), "/v1/tokens", "get")
    check(service.api("DELETE", f"/v1/account/{account}"), "/v1/account/{account}", "delete")
