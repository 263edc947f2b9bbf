"""Restricted API tokens (issue 12, point 5): a token restricted to OAuth apps and/or accounts sees and acts on
those accounts only, on every route, listing included; everything else answers as if it did not exist (404).

The attack: a token meant for app A (a customer's integration, a CI job) reads, deletes, hands off tokens for,
lists and creates sign-in links for the accounts of app B. Run against the real service (local host, Azurite,
the fake Microsoft identity platform)."""

from __future__ import annotations

import json
import secrets

import pytest

from shared.core.apps import register_app
from shared.settings import get_settings
from shared.signing import b64url_decode
from shared.storage.tables import accounts
from shared.storage.tables.apitokens import PARTITION, TABLE, create_token, hash_token
from shared.storage.tables.client import table
from tests.service import APP_REDIRECT, Service, connect, query

# --- helpers ------------------------------------------------------------------------------------------


def second_app(service: Service, identity, name: str = "app B"):
    """Another OAuth app, registered with the fake identity platform like the service's own."""
    client_id, client_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    identity.add_client(client_id, client_secret, [f"{service.url}/oauth"])
    return register_app(name=name, client_id=client_id, client_secret_value=client_secret, authority="organizations",
                        base_scopes="imap", settings=get_settings())


def mint(service: Service, **body) -> str:
    response = service.api("POST", "/v1/tokens", json={"name": "restricted", **body})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def not_found(response, account: str) -> None:
    """The answer for an account the token may not see: exactly that of an unknown account."""
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.json() == {"statusCode": 404, "error": "Not Found", "code": "not_found",
                               "message": f"no account with id {account!r}"}, response.json()


def listed(service: Service, token: str, **params) -> list[str]:
    """Every account id of the listing, following the cursors."""
    ids: list[str] = []
    cursor = None
    for _ in range(50):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = service.api("GET", "/v1/accounts", token=token, params=query)
        assert response.status_code == 200, response.text
        ids += [a["account"] for a in response.json()["accounts"]]
        cursor = response.json()["nextCursor"]
        if cursor is None:
            return ids
    raise AssertionError("the listing did not end")


@pytest.fixture
def two_apps(service, identity):
    """App A (the service's) with accounts a-1 and a-2, app B with b-1; all signed in for real."""
    app_b = second_app(service, identity)
    ids = {
        "a-1": connect(service, identity.add_user("ann@contoso.com"), account="a-1", type=service.app.id),
        "a-2": connect(service, identity.add_user("abe@contoso.com"), account="a-2", type=service.app.id),
        "b-1": connect(service, identity.add_user("bea@contoso.com"), account="b-1", type=app_b.id),
    }
    assert list(ids) == list(ids.values())
    return service.app, app_b


# --- the attack, refused ----------------------------------------------------------------------------------


def test_an_app_token_cannot_touch_another_apps_account(service, two_apps):
    app_a, app_b = two_apps
    token = mint(service, apps=[app_a.id])

    not_found(service.api("GET", "/v1/account/b-1", token=token), "b-1")
    not_found(service.api("PUT", "/v1/account/b-1", token=token, json={"name": "mine now"}), "b-1")
    not_found(service.api("GET", "/v1/account/b-1/oauth-token", token=token), "b-1")
    not_found(service.api("POST", "/v1/account/b-1/reauth", token=token, json={"redirectUrl": APP_REDIRECT}), "b-1")
    not_found(service.api("DELETE", "/v1/account/b-1", token=token), "b-1")
    # Indistinguishable from an account that does not exist at all.
    not_found(service.api("GET", "/v1/account/nobody", token=token), "nobody")

    b1 = accounts.get_account("b-1")
    assert b1 is not None and b1.name != "mine now", "the refused calls changed nothing"

    # Its own app's accounts work as before: read, hand-off, re-auth link.
    assert service.api("GET", "/v1/account/a-1", token=token).json()["app"] == app_a.id
    handed = service.api("GET", "/v1/account/a-1/oauth-token", token=token)
    assert handed.status_code == 200 and handed.json()["accessToken"], handed.text
    reauth = service.api("POST", "/v1/account/a-1/reauth", token=token, json={"redirectUrl": APP_REDIRECT})
    assert reauth.status_code == 200, reauth.text
    # The unrestricted token still sees everything.
    assert service.api("GET", "/v1/account/b-1").status_code == 200


def test_every_account_route_of_the_document_hides_other_apps_accounts(service, two_apps):
    """Driven by the served OpenAPI document, so a route added later is covered: every ``api`` operation on
    ``{account}`` answers 404 to a token of another app, and changes nothing."""
    app_a, _ = two_apps
    token = mint(service, apps=[app_a.id])
    bodies = {"PUT": {"name": "mine now"}, "POST": {"redirectUrl": APP_REDIRECT}}
    document = service.api("GET", "/v1/openapi.json", token=False).json()
    covered = []
    for template, item in document["paths"].items():
        for method, op in item.items():
            if op.get("x-required-scope") != "api" or "{account}" not in template:
                continue
            body = {"json": bodies[method.upper()]} if method.upper() in bodies else {}
            response = service.api(method.upper(), template.replace("{account}", "b-1"), token=token, **body)
            assert response.status_code == 404, (method, template, response.status_code, response.text,
                                                 "a new route? give it a valid body in `bodies`")
            covered.append(f"{method.upper()} {template}")
    assert len(covered) >= 5, covered
    assert accounts.get_account("b-1").name != "mine now"


def test_every_api_handler_passes_the_caller_to_its_service():
    """The restriction is enforced in the services, so every ``api`` handler must hand them the caller."""
    import ast
    from pathlib import Path

    missing = []
    for path in sorted((Path(__file__).parent.parent / "shared" / "web" / "blueprints").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            scopes = [d.args[0].value for d in node.decorator_list if isinstance(d, ast.Call)
                      and getattr(d.func, "id", None) == "api" and d.args and isinstance(d.args[0], ast.Constant)]
            calls = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            if "api" in scopes and "caller_of" not in calls:
                missing.append(f"{path.name}: {node.name}")
    assert missing == []


def test_an_app_token_lists_only_its_apps_accounts_on_every_page(service, two_apps):
    app_a, app_b = two_apps
    token_a, token_b = mint(service, apps=[app_a.id]), mint(service, apps=[app_b.id])
    assert sorted(listed(service, service.token)) == ["a-1", "a-2", "b-1"]
    assert listed(service, token_a, pageSize=1) == ["a-1", "a-2"]
    assert listed(service, token_b, pageSize=1) == ["b-1"]
    # Query parameters only narrow: the e-mail of B's account finds nothing with A's token.
    assert listed(service, token_a, email="bea@contoso.com") == []
    assert listed(service, token_a, state="connected") == ["a-1", "a-2"]
    # A cursor is a position, not a filter: one from the unrestricted listing does not widen A's.
    page = service.api("GET", "/v1/accounts", params={"pageSize": 1}).json()
    assert page["nextCursor"]
    rest = service.api("GET", "/v1/accounts", token=token_a, params={"cursor": page["nextCursor"]}).json()
    assert "b-1" not in [a["account"] for a in rest["accounts"]]
    # Both apps: both apps' accounts.
    assert sorted(listed(service, mint(service, apps=[app_a.id, app_b.id]))) == ["a-1", "a-2", "b-1"]


def test_an_app_token_creates_forms_only_for_its_apps(service, two_apps):
    app_a, app_b = two_apps
    token = mint(service, apps=[app_a.id])

    other = service.api("POST", "/v1/authentication/form", token=token,
                        json={"redirectUrl": APP_REDIRECT, "type": app_b.id})
    assert other.status_code == 400 and other.json()["code"] == "unknown_app", other.text
    # ...answered like an app id that does not exist.
    missing = service.api("POST", "/v1/authentication/form", token=token,
                          json={"redirectUrl": APP_REDIRECT, "type": "0123456789abcdef"})
    assert (missing.status_code, missing.json()["code"]) == (400, "unknown_app")

    # Two apps are enabled, so an unrestricted token's link without type lets the person pick (the chooser,
    # tests/test_ee_form.py); the app token's only app is the default.
    assert "type" not in json.loads(b64url_decode(query(service.link())["data"]))
    default = service.api("POST", "/v1/authentication/form", token=token, json={"redirectUrl": APP_REDIRECT})
    assert default.status_code == 200, default.text
    user = service.identity.add_user("cat@contoso.com")
    result = service.sign_in(default.json()["url"], user).result
    assert accounts.get_account(result["account"]).appId == app_a.id

    # A link naming B's account would overwrite it at the sign-in: refused like an unknown account.
    not_found(service.api("POST", "/v1/authentication/form", token=token,
                          json={"redirectUrl": APP_REDIRECT, "account": "b-1", "type": app_a.id}), "b-1")
    # Its own account and a new id are fine.
    for account in ("a-1", "a-new"):
        ok = service.api("POST", "/v1/authentication/form", token=token,
                         json={"redirectUrl": APP_REDIRECT, "account": account})
        assert ok.status_code == 200, ok.text


def test_an_account_token_sees_only_its_accounts(service, two_apps):
    token = mint(service, accounts=["a-1", "not-yet-connected"])

    assert service.api("GET", "/v1/account/a-1", token=token).status_code == 200
    assert service.api("GET", "/v1/account/a-1/oauth-token", token=token).status_code == 200
    for account in ("a-2", "b-1"):
        not_found(service.api("GET", f"/v1/account/{account}", token=token), account)
        not_found(service.api("GET", f"/v1/account/{account}/oauth-token", token=token), account)
        not_found(service.api("DELETE", f"/v1/account/{account}", token=token), account)
    assert listed(service, token) == ["a-1"]
    assert listed(service, token, email="abe@contoso.com") == []

    # Forms: only for its accounts, and it must name one (a derived id could be any account).
    required = service.api("POST", "/v1/authentication/form", token=token,
                           json={"redirectUrl": APP_REDIRECT, "type": service.app.id})
    assert (required.status_code, required.json().get("field")) == (400, "account"), required.text
    not_found(service.api("POST", "/v1/authentication/form", token=token,
                          json={"redirectUrl": APP_REDIRECT, "type": service.app.id, "account": "a-2"}), "a-2")
    for account in ("a-1", "not-yet-connected"):
        ok = service.api("POST", "/v1/authentication/form", token=token,
                         json={"redirectUrl": APP_REDIRECT, "type": service.app.id, "account": account})
        assert ok.status_code == 200, ok.text

    # The delete that is allowed works.
    assert service.api("DELETE", "/v1/account/a-1", token=token).json() == {"account": "a-1", "deleted": True}


def test_both_restrictions_apply_together(service, two_apps):
    app_a, _ = two_apps
    token = mint(service, apps=[app_a.id], accounts=["a-1", "b-1"])
    assert service.api("GET", "/v1/account/a-1", token=token).status_code == 200
    not_found(service.api("GET", "/v1/account/b-1", token=token), "b-1")  # in its accounts, but of app B
    not_found(service.api("GET", "/v1/account/a-2", token=token), "a-2")  # of app A, but not in its accounts
    assert listed(service, token) == ["a-1"]


def test_an_account_listing_pages_over_its_accounts(service):
    from tests.test_management_api import write_account

    for n in range(7):
        state = "authenticationError" if n == 3 else "connected"
        write_account(service, f"acct-{n}", f"user{n}@contoso.com", state=state)
    token = mint(service, accounts=[f"acct-{n}" for n in (6, 0, 3, 4, 9, 1)])  # acct-9 does not exist
    assert listed(service, token) == ["acct-0", "acct-1", "acct-3", "acct-4", "acct-6"]
    first = service.api("GET", "/v1/accounts", token=token, params={"pageSize": 2}).json()
    assert [a["account"] for a in first["accounts"]] == ["acct-0", "acct-1"] and first["nextCursor"]
    assert listed(service, token, pageSize=2) == ["acct-0", "acct-1", "acct-3", "acct-4", "acct-6"]
    assert listed(service, token, pageSize=1, state="authenticationError") == ["acct-3"]
    tampered = service.api("GET", "/v1/accounts", token=token, params={"cursor": first["nextCursor"][:-2] + "xx"})
    assert (tampered.status_code, tampered.json()["code"]) == (400, "invalid_cursor")


def test_a_restricted_token_cannot_use_admin_operations(service, two_apps):
    app_a, _ = two_apps
    token = mint(service, apps=[app_a.id])
    for method, path, body in [("GET", "/v1/tokens", None), ("POST", "/v1/tokens", {"name": "escalate"}),
                               ("GET", "/v1/oauth2", None), ("POST", "/v1/webhooks", {"url": "https://x.example"})]:
        response = service.api(method, path, token=token, json=body)
        assert response.status_code == 403, (method, path, response.text)
    # Even a row that says otherwise (edited in storage) gets no admin operation while it is restricted.
    forged, record = create_token("forged", ("api",), apps=[app_a.id])
    entity = table(TABLE).get_entity(PARTITION, hash_token(forged))
    entity["scopes"] = "admin,api"
    table(TABLE).update_entity(entity)
    response = service.api("GET", "/v1/tokens", token=forged)
    assert response.status_code == 403 and "restricted" in response.json()["message"], response.text
    assert service.api("GET", "/v1/account/a-1", token=forged).status_code == 200


# --- creating restricted tokens -----------------------------------------------------------------------------


def test_creating_and_listing_restricted_tokens(service, two_apps):
    app_a, _ = two_apps
    created = service.api("POST", "/v1/tokens", json={"name": "app A", "apps": [app_a.id, app_a.id],
                                                      "accounts": ["a-1"]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["scopes"], body["apps"], body["accounts"]) == (["api"], [app_a.id], ["a-1"])
    tokens = {t["id"]: t for t in service.api("GET", "/v1/tokens").json()["tokens"]}
    assert tokens[body["id"]]["apps"] == [app_a.id] and tokens[body["id"]]["accounts"] == ["a-1"]
    unrestricted = service.api("POST", "/v1/tokens", json={"name": "all"}).json()
    assert "apps" not in unrestricted and "accounts" not in unrestricted


def test_emailengines_account_field_restricts_a_token_to_that_account(service, two_apps):
    """EmailEngine restricts a token to one account with ``account`` on creation: the same as ``accounts``."""
    created = service.api("POST", "/v1/tokens", json={"name": "one", "account": "a-1"})
    assert created.status_code == 201, created.text
    assert created.json()["accounts"] == ["a-1"] and "account" not in created.json()
    token = created.json()["token"]
    assert service.api("GET", "/v1/account/a-1", token=token).status_code == 200
    not_found(service.api("GET", "/v1/account/a-2", token=token), "a-2")
    both = service.api("POST", "/v1/tokens", json={"name": "x", "account": "a-1", "accounts": ["a-2"]})
    assert both.status_code == 400, both.text


@pytest.mark.parametrize("body, field, code", [
    ({"apps": ["APP"], "scopes": ["api", "admin"]}, "scopes", "restricted_admin_token"),
    ({"accounts": ["a-1"], "scopes": ["admin"]}, "scopes", "restricted_admin_token"),
    ({"apps": []}, "apps", "invalid_input"),
    ({"accounts": []}, "accounts", "invalid_input"),
    ({"apps": ["0123456789abcdef"]}, "apps.0", "unknown_app"),
    ({"apps": ["not an id"]}, "apps.0", "invalid_input"),
    ({"accounts": ["a/b"]}, "accounts.0", "invalid_input"),
    ({"accounts": [f"acct-{n}" for n in range(101)]}, "accounts", "invalid_input"),
    ({"apps": "APP"}, "apps", "invalid_input"),
])
def test_restricted_token_creation_is_validated(service, body, field, code):
    body = {k: [service.app.id if v == "APP" else v for v in value] if isinstance(value, list) else
            (service.app.id if value == "APP" else value) for k, value in body.items()}
    response = service.api("POST", "/v1/tokens", json={"name": "x", **body})
    assert response.status_code == 400, response.text
    assert (response.json()["code"], response.json().get("field")) == (code, field), response.json()


def test_the_cli_mints_restricted_tokens(service, capsys):
    from shared.cli import main

    assert main(["create-token", "--name", "ci", "--app", service.app.id, "--account", "a,with,commas"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["scopes"], shown["apps"], shown["accounts"]) == (["api"], [service.app.id], ["a,with,commas"])
    assert service.api("GET", "/v1/tokens", token=shown["token"]).status_code == 403
    assert main(["create-token", "--name", "ci", "--scopes", "api,admin", "--app", service.app.id]) == 2
    assert "api scope" in capsys.readouterr().err
