"""The management API end to end (accounts, OAuth apps, API tokens): real HTTP through the local host,
real Azurite, the fake Microsoft identity platform, the local secret store."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from shared.core import apps as oauth_apps
from shared.signin.flow import credential_id
from shared.storage.secrets.base import SecretNotFound
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables import accounts, principals
from shared.storage.tables.accounts import AUTH_ERROR, Account
from shared.storage.tables.apitokens import SCOPES, create_token, hash_token
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.invariants import stored_client_secret, stored_refresh_token
from tests.service import APP_REDIRECT, query

pytestmark = pytest.mark.both_secret_modes  # issue 14.3: both MC_SECRET_MODE values pass

SECRET = "s3cr3t-Value~with.chars_0123456789"


def error_of(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) <= {"statusCode", "error", "message", "code", "field", "fields"}, body
    assert body["statusCode"] == status and body["error"] and body["message"] and body["code"], body
    if code:
        assert body["code"] == code, body
    return body


def new_app(service, **fields) -> dict:
    body = {"name": "Contoso mail", "clientId": "11111111-2222-3333-4444-555555555555", "clientSecret": SECRET,
            **fields}
    response = service.api("POST", "/v1/oauth2", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def connect(service, identity, user, **body) -> str:
    result = service.sign_in(service.link(**body), user).result
    assert result.get("state") in ("new", "existing"), result
    return result["account"]


def write_account(service, account_id: str, email: str, *, state: str = "connected", **extra) -> Account:
    """A realistic row, written through the repository (faster than a sign-in per account)."""
    now = utcnow()
    tid, oid = "72f988bf-86f1-41af-91ab-2d7cd011db47", f"00000000-0000-0000-0000-{abs(hash(account_id)) % 10**12:012d}"
    row = Account(account=account_id, email=email, name=email.split("@")[0].title(), delegated=False,
                  appId=service.app.id, credentialId=credential_id(service.app.id, tid, oid), signerUpn=email,
                  signerTid=tid, signerOid=oid, signerName="Someone", state=state, created=now, updated=now, **extra)
    assert accounts.insert_account(row)
    return row


# --- authentication and scopes: every operation of the served OpenAPI document ---------------------------

# Sample values of path parameters: syntactically valid ids of things that do not exist, so a request that
# passes authentication ends in a 404 (or a 400) and changes nothing. A parameter not listed here gets
# FALLBACK_ID: an operation added with a new parameter is still covered.
PATH_SAMPLES = {"account": "scope-matrix-account", "app": "0123456789abcdef", "id": "0123456789abcdef",
                "webhook": "wh0123456789abcdef", "deadletter": "wh0123456789abcdef.00000000000000000000000000000000"}
FALLBACK_ID = "scope-matrix-sample"


def operations(document: dict) -> list[tuple[str, str, dict, str | None]]:
    """(METHOD, concrete path, operation, required scope or None) for every operation of the document.

    An operation is token-protected when its effective security requirement (its own ``security``, else
    the document's) names a scheme; it then must say which scope it needs (``x-required-scope``)."""
    found = []
    for template, item in document["paths"].items():
        for method, op in item.items():
            security = op.get("security", document.get("security", []))
            protected = any(requirement for requirement in security)
            scope = op.get("x-required-scope")
            assert protected == (scope is not None), (method, template, security, scope)
            for requirement in security:
                assert set(requirement) <= set(document["components"]["securitySchemes"]), (method, template)
            path = template
            for name in {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}:
                path = path.replace("{" + name + "}", PATH_SAMPLES.get(name, FALLBACK_ID))
            assert "{" not in path, f"{method} {template}: a path parameter is not declared"
            found.append((method.upper(), path, op, scope))
    return found


def test_every_operation_needs_a_token_with_the_scope_it_documents(service):
    """Driven by the served OpenAPI document, so a new operation is covered without touching this test:
    without a token (or with a bad one) 401, with a token lacking the documented scope 403 naming it, with
    a token of exactly that scope an answer past authentication that the document lists. Operations
    documented as public answer without a token. (``test_openapi`` checks that every registered route is in
    the document, so every route is covered.)"""
    document = service.api("GET", "/v1/openapi.json", token=False).json()
    ops = operations(document)
    protected = [op for op in ops if op[3] is not None]
    assert len(protected) >= 20 and {op[3] for op in protected} == set(SCOPES), "the document lost operations"
    only = {scope: create_token(f"only {scope}", (scope,))[0] for scope in SCOPES}
    all_but = {scope: create_token(f"all but {scope}", tuple(s for s in SCOPES if s != scope))[0]
               for scope in SCOPES}

    failures = []

    def expect(ok: bool, method: str, path: str, what: str, response) -> None:
        if not ok:
            failures.append(f"{method} {path}: {what}: got {response.status_code} {response.text[:200]}")

    for method, path, op, scope in ops:
        body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        if scope is None:
            public = service.api(method, path, token=False, allow_redirects=False, **body)
            expect(public.status_code not in (401, 403) and public.status_code < 500, method, path,
                   "documented as public, but refused without a token", public)
            continue
        assert scope in SCOPES, (method, path, scope)
        missing = service.api(method, path, token=False, **body)
        expect(missing.status_code == 401 and missing.json().get("code") == "unauthorized", method, path,
               "no token must be 401 unauthorized", missing)
        expect(missing.headers.get("WWW-Authenticate", "").startswith("Bearer"), method, path,
               "a 401 must carry WWW-Authenticate: Bearer", missing)
        for header in ({"Authorization": "Bearer mc_not-a-token"}, {"Authorization": "Basic abc"},
                       {"Authorization": "Bearer "}):
            bad = service.api(method, path, token=False, headers=header, **body)
            expect(bad.status_code == 401, method, path, f"{header['Authorization']!r} must be 401", bad)
        wrong = service.api(method, path, token=all_but[scope], **body)
        expect(wrong.status_code == 403 and wrong.json().get("code") == "forbidden"
               and scope in wrong.json().get("message", ""), method, path,
               f"a token without scope {scope!r} must be 403 naming the scope", wrong)
        right = service.api(method, path, token=only[scope], **body)
        expect(right.status_code not in (401, 403), method, path, f"a token with scope {scope!r} must pass", right)
        expect(right.status_code < 500 and str(right.status_code) in op["responses"], method, path,
               f"the answer with scope {scope!r} must be one the document lists ({sorted(op['responses'])})",
               right)
    assert not failures, "\n".join(failures)


def test_a_revoked_token_is_refused_at_once(service):
    created = service.api("POST", "/v1/tokens", json={"name": "ci", "scopes": ["api"]})
    token, token_id = created.json()["token"], created.json()["id"]
    assert service.api("GET", "/v1/accounts", token=token).status_code == 200
    assert service.api("DELETE", f"/v1/tokens/{token_id}").json() == {"id": token_id, "deleted": True}
    error_of(service.api("GET", "/v1/accounts", token=token), 401, "unauthorized")


# --- API tokens ------------------------------------------------------------------------------------------

def test_tokens_create_list_revoke(service):
    response = service.api("POST", "/v1/tokens", json={"name": "billing app", "scopes": ["admin", "api"]})
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "name", "scopes", "created", "token"}
    assert created["token"].startswith("mc_") and len(created["token"]) > 40
    assert (created["name"], created["scopes"]) == ("billing app", ["admin", "api"])
    assert service.api("GET", "/v1/oauth2", token=created["token"]).status_code == 200

    default = service.api("POST", "/v1/tokens", json={"name": "default scopes"}).json()
    assert default["scopes"] == ["api"]

    listed = service.api("GET", "/v1/tokens")
    assert listed.status_code == 200
    tokens = listed.json()["tokens"]
    assert {t["id"] for t in tokens} >= {created["id"], default["id"]}
    assert all(set(t) == {"id", "name", "scopes", "created"} for t in tokens)
    assert created["token"] not in listed.text and hash_token(created["token"]) not in listed.text

    assert service.api("DELETE", f"/v1/tokens/{created['id']}").status_code == 200
    assert created["id"] not in {t["id"] for t in service.api("GET", "/v1/tokens").json()["tokens"]}
    error_of(service.api("DELETE", f"/v1/tokens/{created['id']}"), 404, "not_found")


@pytest.mark.parametrize("body, status, code, field", [
    ({"name": "x", "scopes": ["root"]}, 400, "invalid_input", "scopes.0"),
    ({"name": "x", "scopes": []}, 400, "invalid_input", "scopes"),
    ({"name": "", "scopes": ["api"]}, 400, "invalid_input", "name"),
    ({"name": "   "}, 400, "invalid_input", "name"),
    ({"scopes": ["api"]}, 400, "invalid_input", "name"),
    ({"name": "x", "token": "mc_mine"}, 400, "unknown_field", "token"),
    ({"name": 5}, 400, "invalid_input", "name"),
])
def test_token_creation_is_validated(service, body, status, code, field):
    assert error_of(service.api("POST", "/v1/tokens", json=body), status, code).get("field") == field


def test_bad_bodies_are_clear_4xx(service):
    for method, path in [("POST", "/v1/tokens"), ("POST", "/v1/oauth2"), ("PUT", f"/v1/oauth2/{service.app.id}"),
                         ("PUT", "/v1/account/acct"), ("POST", "/v1/account/acct/reauth")]:
        headers = {"Content-Type": "application/json"}
        error_of(service.api(method, path, data=b"{not json", headers=dict(headers)), 400, "invalid_json")
        error_of(service.api(method, path, data=b"\xff\xfe", headers=dict(headers)), 400, "invalid_json")
        error_of(service.api(method, path, data=b"[1, 2]", headers=dict(headers)), 400, "invalid_json")
        error_of(service.api(method, path, data=b"", headers=dict(headers)), 400, "invalid_json")
        error_of(service.api(method, path, data=b"{}", headers={"Content-Type": "text/plain"}), 415)
        error_of(service.api(method, path, data=b"{" + b" " * 70000 + b"}", headers=dict(headers)), 413)


def test_bad_token_ids(service):
    error_of(service.api("DELETE", "/v1/tokens/not%20an%20id"), 400, "invalid_input")
    error_of(service.api("DELETE", "/v1/tokens/" + "a" * 65), 400, "invalid_input")
    error_of(service.api("DELETE", "/v1/tokens/0123456789abcdef"), 404, "not_found")


# --- OAuth apps ------------------------------------------------------------------------------------------

def test_app_create_read_list_and_the_secret_is_never_returned(service):
    app = new_app(service, authority="contoso.onmicrosoft.com", cloud="gcc-high", baseScopes="api",
                  extraScopes=["https://graph.microsoft.us/Calendars.Read"], enabled=False)
    assert app["clientSecret"] == "******"
    assert (app["provider"], app["authority"], app["cloud"], app["baseScopes"], app["enabled"]) == \
        ("outlook", "contoso.onmicrosoft.com", "gcc-high", "api", False)
    assert app["extraScopes"] == ["https://graph.microsoft.us/Calendars.Read"]
    assert app["redirectUrl"] == service.url + "/oauth"
    stored = oauth_apps.app_table.get_app(app["id"], fresh=True)
    assert stored_client_secret(stored) == SECRET

    fetched = service.api("GET", f"/v1/oauth2/{app['id']}")
    assert fetched.status_code == 200 and fetched.json() == app
    listed = service.api("GET", "/v1/oauth2")
    assert {a["id"] for a in listed.json()["apps"]} == {service.app.id, app["id"]}
    for response in (fetched, listed):
        assert SECRET not in response.text and service.client_secret not in response.text
        assert (not stored.secretName or stored.secretName not in response.text) and \
            (not stored.sealedClientSecret or stored.sealedClientSecret not in response.text)

    defaults = new_app(service)
    assert (defaults["authority"], defaults["cloud"], defaults["baseScopes"], defaults["enabled"],
            defaults["extraScopes"]) == ("organizations", "global", "imap", True, [])


@pytest.mark.parametrize("fields, code, field", [
    ({"provider": "gmail"}, "invalid_input", "provider"),
    ({"authority": "con/toso"}, "invalid_input", "authority"),
    ({"authority": "https://login.microsoftonline.com/common"}, "invalid_input", "authority"),
    ({"cloud": "mars"}, "invalid_input", "cloud"),
    ({"baseScopes": "pop"}, "invalid_input", "baseScopes"),
    ({"extraScopes": ["a b"]}, "invalid_input", "extraScopes"),
    ({"clientId": "has space"}, "invalid_input", "clientId"),
    ({"clientSecret": ""}, "invalid_input", "clientSecret"),
    ({"clientSecret": None}, "invalid_input", "clientSecret"),
    ({"enabled": "maybe"}, "invalid_input", "enabled"),
    ({"redirectUrl": "https://x.example"}, "unknown_field", "redirectUrl"),
])
def test_app_fields_are_validated(service, fields, code, field):
    body = {"name": "n", "clientId": "abc", "clientSecret": "s", **fields}
    assert error_of(service.api("POST", "/v1/oauth2", json=body), 400, code).get("field") == field


def test_authority_accepts_tenant_ids_and_domains(service):
    for authority in ("common", "organizations", "72f988bf-86f1-41af-91ab-2d7cd011db47", "contoso.com"):
        assert new_app(service, authority=authority)["authority"] == authority


def test_app_partial_update(service):
    app = new_app(service)
    response = service.api("PUT", f"/v1/oauth2/{app['id']}", json={"name": "Renamed", "extraScopes": ["Mail.Read"]})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "Renamed" and updated["extraScopes"] == ["Mail.Read"]
    unchanged = {k: v for k, v in app.items() if k not in ("name", "extraScopes", "updated")}
    assert {k: updated[k] for k in unchanged} == unchanged
    assert updated["updated"] > app["updated"]
    assert service.api("GET", f"/v1/oauth2/{app['id']}").json() == updated

    error_of(service.api("PUT", f"/v1/oauth2/{app['id']}", json={"name": None}), 400, "invalid_input")
    error_of(service.api("PUT", f"/v1/oauth2/{app['id']}", json={"secret": "x"}), 400, "unknown_field")
    error_of(service.api("PUT", f"/v1/oauth2/{app['id']}", json={"cloud": "moon"}), 400, "invalid_input")
    error_of(service.api("PUT", "/v1/oauth2/0000000000000000", json={"name": "x"}), 404, "not_found")
    error_of(service.api("PUT", "/v1/oauth2/bad%20id", json={"name": "x"}), 400, "invalid_input")


def test_disabling_an_app_takes_effect_at_once(service):
    assert service.form(type=service.app.id).status_code == 200
    assert service.api("PUT", f"/v1/oauth2/{service.app.id}", json={"enabled": False}).json()["enabled"] is False
    error_of(service.form(type=service.app.id), 400, "app_disabled")
    service.api("PUT", f"/v1/oauth2/{service.app.id}", json={"enabled": True})
    assert service.form(type=service.app.id).status_code == 200


def test_rotating_the_client_secret_is_used_at_once(service, identity):
    user = identity.add_user("rita@contoso.com")
    connect(service, identity, user)  # the old secret is now cached in this process
    new_secret = "rotated-" + SECRET
    identity.add_client(service.app.clientId, new_secret, [service.url + "/oauth"])
    response = service.api("PUT", f"/v1/oauth2/{service.app.id}", json={"clientSecret": new_secret})
    assert response.status_code == 200 and new_secret not in response.text
    assert stored_client_secret(oauth_apps.app_table.get_app(service.app.id, fresh=True)) == new_secret
    second = identity.add_user("sam@contoso.com")
    assert service.sign_in(service.link(), second).result["state"] == "new"
    assert identity.token_requests[-1].get("client_secret") in (None, new_secret)


def test_app_delete_is_refused_while_accounts_use_it(service, identity):
    user = identity.add_user("uma@contoso.com")
    account = connect(service, identity, user)
    body = error_of(service.api("DELETE", f"/v1/oauth2/{service.app.id}"), 409, "app_in_use")
    assert account in body["message"]
    assert service.api("GET", f"/v1/oauth2/{service.app.id}").status_code == 200

    assert service.api("DELETE", f"/v1/account/{account}").status_code == 200
    deleted = service.api("DELETE", f"/v1/oauth2/{service.app.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": service.app.id, "deleted": True}
    error_of(service.api("GET", f"/v1/oauth2/{service.app.id}"), 404, "not_found")
    if service.app.secretName:  # keyvault mode (envelope mode: the sealed secret went with the row)
        with pytest.raises(SecretNotFound):
            get_secret_store().get(service.app.secretName)
    error_of(service.form(type=service.app.id), 400, "unknown_app")
    error_of(service.api("DELETE", f"/v1/oauth2/{service.app.id}"), 404, "not_found")


# --- accounts --------------------------------------------------------------------------------------------

def test_account_read_shows_the_mailbox_and_the_signer(service, identity):
    user = identity.add_user("bob@contoso.com", email="bob@contoso.com", name="Bob Builder")
    account = connect(service, identity, user, account="support-inbox", email="support@contoso.com",
                      delegated=True, name="Support", syncFrom="2024-01-01T00:00:00Z")
    response = service.api("GET", "/v1/account/support-inbox")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    info = response.json()
    assert account == "support-inbox"
    assert {k: info[k] for k in ("account", "name", "email", "delegated", "app", "state", "syncFrom")} == {
        "account": "support-inbox", "name": "Support", "email": "support@contoso.com", "delegated": True,
        "app": service.app.id, "state": "connected", "syncFrom": "2024-01-01T00:00:00Z"}
    assert info["signer"] == {"upn": "bob@contoso.com", "tenant": user.tid, "name": "Bob Builder"}
    assert info["lastError"] is None and info["created"] and info["updated"]  # EmailEngine: null, not absent
    cred = credential_id(service.app.id, user.tid, user.oid)
    assert cred not in response.text and "credential" not in response.text.lower()


def test_account_in_error_shows_the_last_error(service):
    at = utcnow() - timedelta(minutes=5)
    write_account(service, "broken", "broken@contoso.com", state=AUTH_ERROR, errorCode="invalid_grant",
                  errorDescription="The refresh token has expired", errorAt=at)
    info = service.api("GET", "/v1/account/broken").json()
    assert info["state"] == "authenticationError"
    assert info["lastError"]["code"] == "invalid_grant"
    assert info["lastError"]["description"] == "The refresh token has expired"
    assert info["lastError"]["at"].startswith(at.strftime("%Y-%m-%dT%H:%M"))


def test_account_ids_are_validated(service):
    error_of(service.api("GET", "/v1/account/unknown-account"), 404, "not_found")
    error_of(service.api("GET", "/v1/account/" + "a" * 257), 400, "invalid_input")  # 256: EmailEngine's limit
    error_of(service.api("GET", "/v1/account/bad%01id"), 400, "invalid_input")
    error_of(service.api("GET", "/v1/account/%20padded"), 400, "invalid_input")
    error_of(service.api("PUT", "/v1/account/unknown-account", json={"name": "x"}), 404, "not_found")
    error_of(service.api("DELETE", "/v1/account/unknown-account"), 404, "not_found")
    error_of(service.api("POST", "/v1/account/unknown-account/reauth", json={"redirectUrl": APP_REDIRECT}), 404)
    write_account(service, "o'brien", "obrien@contoso.com")
    assert service.api("GET", "/v1/account/o'brien").json()["email"] == "obrien@contoso.com"


def test_account_rename(service, identity):
    user = identity.add_user("cleo@contoso.com")
    account = connect(service, identity, user, name="Cleo")
    before = service.api("GET", f"/v1/account/{account}").json()
    renamed = service.api("PUT", f"/v1/account/{account}", json={"name": "Cleo (work)"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Cleo (work)"
    assert renamed.json()["updated"] > before["updated"] and renamed.json()["created"] == before["created"]
    assert accounts.get_account(account).name == "Cleo (work)"
    cleared = service.api("PUT", f"/v1/account/{account}", json={"name": None}).json()
    assert "name" not in cleared
    both = {"name": "x", "email": "x@contoso.com"}
    error_of(service.api("PUT", f"/v1/account/{account}", json=both), 400, "unknown_field")
    error_of(service.api("PUT", f"/v1/account/{account}", json={}), 400, "invalid_input")
    error_of(service.api("PUT", f"/v1/account/{account}", json={"name": "x" * 300}), 400, "invalid_input")
    # the sign-in data is untouched
    assert accounts.get_account(account).credentialId == credential_id(service.app.id, user.tid, user.oid)


def test_listing_pages_over_more_accounts_than_a_page(service):
    ids = sorted(f"acct-{i:02d}" for i in range(23))
    for account_id in ids:
        write_account(service, account_id, f"{account_id}@contoso.com")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"pageSize": 10, **({"cursor": cursor} if cursor else {})}
        response = service.api("GET", "/v1/accounts", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        # the first answer is a numbered page (EmailEngine's; tests/test_ee_accounts.py), the rest cursor pages
        assert set(body) == ({"accounts", "nextCursor"} | ({"total", "page", "pages"} if pages == 0 else set()))
        assert len(body["accounts"]) <= 10
        seen += [a["account"] for a in body["accounts"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == ids and pages == 3

    default = service.api("GET", "/v1/accounts").json()
    assert len(default["accounts"]) == 20 and default["nextCursor"]
    everything = service.api("GET", "/v1/accounts", params={"pageSize": 250}).json()
    assert len(everything["accounts"]) == 23 and everything["nextCursor"] is None


@pytest.mark.parametrize("query_string, field", [
    ("pageSize=0", "pageSize"), ("pageSize=1001", "pageSize"), ("pageSize=ten", "pageSize"),
    ("pageSize=5&pageSize=6", "pageSize"), ("state=broken", "state"), ("state=connected&state=connected", "state"),
    ("email=not-an-address", "email"), ("cursor=abc", "cursor"), ("cursor=" + "A" * 5000, "cursor"),
    ("page=-1", "page"), ("page=two", "page"),
])
def test_listing_parameters_are_validated(service, query_string, field):
    response = service.api("GET", "/v1/accounts?" + query_string)
    body = error_of(response, 400)
    assert body.get("field") == field, body


def test_a_tampered_cursor_is_refused(service):
    for i in range(3):
        write_account(service, f"c{i}", f"c{i}@contoso.com")
    cursor = service.api("GET", "/v1/accounts", params={"pageSize": 1}).json()["nextCursor"]
    data, sig = cursor.split(".", 1)  # sig: "<key id>.<mac>"
    forged = json.dumps({"pk": "zzz", "rk": ""}).encode()
    from shared.signing import b64url_encode
    for bad in (f"{b64url_encode(forged)}.{sig}", f"{data}.{sig[:-2]}xx", data):
        error_of(service.api("GET", "/v1/accounts", params={"cursor": bad}), 400, "invalid_cursor")
    assert service.api("GET", "/v1/accounts", params={"cursor": cursor}).status_code == 200
    assert service.api("GET", "/v1/accounts?pageSize=").status_code == 200  # empty: dropped by the host


def test_listing_filters(service, identity):
    for i in range(6):
        write_account(service, f"ok-{i}", f"ok{i}@contoso.com")
    write_account(service, "err-1", "err1@contoso.com", state=AUTH_ERROR, errorCode="invalid_grant")
    write_account(service, "err-2", "err2@contoso.com", state=AUTH_ERROR, errorCode="consent_required")
    write_account(service, "quote", "o'neil@contoso.com")
    user = identity.add_user("Mixed.Case@Contoso.com", email="Mixed.Case@Contoso.com")
    mixed = connect(service, identity, user)

    errored = service.api("GET", "/v1/accounts", params={"state": "authenticationError"}).json()
    assert [a["account"] for a in errored["accounts"]] == ["err-1", "err-2"] and errored["nextCursor"] is None
    assert all(a["lastError"]["code"] for a in errored["accounts"])
    connected = service.api("GET", "/v1/accounts", params={"state": "connected", "pageSize": 250}).json()
    assert len(connected["accounts"]) == 8
    quoted = service.api("GET", "/v1/accounts", params={"email": "o'neil@contoso.com"}).json()
    assert [a["account"] for a in quoted["accounts"]] == ["quote"]

    by_email = service.api("GET", "/v1/accounts", params={"email": "ok3@contoso.com"}).json()
    assert [a["account"] for a in by_email["accounts"]] == ["ok-3"]
    exact = service.api("GET", "/v1/accounts", params={"email": "Mixed.Case@Contoso.com"}).json()
    assert [a["account"] for a in exact["accounts"]] == [mixed]
    both = service.api("GET", "/v1/accounts", params={"email": "err2@contoso.com", "state": "connected"}).json()
    assert both["accounts"] == []
    none = service.api("GET", "/v1/accounts", params={"email": "nobody@contoso.com"}).json()
    assert none == {"total": 0, "page": 0, "pages": 0, "accounts": [], "nextCursor": None}

    # paging through a filter: short pages are fine, every match is seen once
    seen, cursor = [], None
    for _ in range(20):
        body = service.api("GET", "/v1/accounts", params={"state": "connected", "pageSize": 2,
                                                          **({"cursor": cursor} if cursor else {})}).json()
        seen += [a["account"] for a in body["accounts"]]
        cursor = body["nextCursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted([f"ok-{i}" for i in range(6)] + [mixed, "quote"])


def test_email_filter_ignores_case(service, identity):
    user = identity.add_user("Upper.Case@Contoso.com", email="Upper.Case@Contoso.com")
    account = connect(service, identity, user)
    for spelling in ("upper.case@contoso.com", "UPPER.CASE@CONTOSO.COM", "Upper.Case@Contoso.com"):
        body = service.api("GET", "/v1/accounts", params={"email": spelling}).json()
        assert [a["account"] for a in body["accounts"]] == [account], spelling


def test_email_filter_uses_the_lower_cased_copy_when_rows_have_it(service):
    """Rows carrying ``emailLower`` (see accounts_service) match any spelling of the address."""
    row = write_account(service, "placeholder", "placeholder@contoso.com")
    entity = row.model_copy(update={"account": "mixed", "email": "Mixed.Case@Contoso.com"}).to_entity("mixed")
    table("accounts").create_entity({**entity, "emailLower": "mixed.case@contoso.com"})
    for spelling in ("mixed.case@contoso.com", "MIXED.CASE@CONTOSO.COM", "Mixed.Case@Contoso.com"):
        body = service.api("GET", "/v1/accounts", params={"email": spelling}).json()
        assert [a["account"] for a in body["accounts"]] == ["mixed"], spelling
        assert body["accounts"][0]["email"] == "Mixed.Case@Contoso.com"


def test_deleting_accounts_of_a_shared_credential(service, identity):
    """One signer, two shared mailboxes: the refresh token stays until the last account goes."""
    user = identity.add_user("dora@contoso.com")
    sales = connect(service, identity, user, account="sales", email="sales@contoso.com", delegated=True)
    billing = connect(service, identity, user, account="billing", email="billing@contoso.com", delegated=True)
    cred = credential_id(service.app.id, user.tid, user.oid)
    secret = principals.secret_name(cred)
    assert sorted(principals.account_ids(cred)) == ["billing", "sales"]

    response = service.api("DELETE", f"/v1/account/{sales}")
    assert response.status_code == 200 and response.json() == {"account": "sales", "deleted": True}
    assert accounts.get_account("sales") is None
    error_of(service.api("GET", "/v1/account/sales"), 404, "not_found")
    assert principals.account_ids(cred) == ["billing"]
    assert principals.get_credential(cred) is not None
    assert stored_refresh_token(principals.get_credential(cred))
    assert service.api("GET", f"/v1/account/{billing}").json()["state"] == "connected"

    assert service.api("DELETE", f"/v1/account/{billing}").status_code == 200
    assert principals.account_ids(cred) == [] and principals.get_credential(cred) is None
    with pytest.raises(SecretNotFound):  # keyvault mode's secret, or none at all (envelope: it was on the row)
        get_secret_store().get(secret)
    assert list(table("principals").list_entities()) == []
    error_of(service.api("DELETE", f"/v1/account/{billing}"), 404, "not_found")


def test_deleted_account_can_be_connected_again(service, identity):
    user = identity.add_user("eve@contoso.com")
    account = connect(service, identity, user)
    assert service.api("DELETE", f"/v1/account/{account}").status_code == 200
    result = service.sign_in(service.link(), user).result
    assert result == {"account": account, "state": "new"}


# --- re-authentication -----------------------------------------------------------------------------------

def test_reauth_link_hints_the_signer_and_keeps_the_account(service, identity):
    other_tenant = "3c5a0b1e-0000-4000-8000-00000000abcd"
    user = identity.add_user("fay@fabrikam.com", tid=other_tenant, email="fay@fabrikam.com")
    account = connect(service, identity, user, account="shared-1", email="team@fabrikam.com", delegated=True,
                      name="Team")
    assert "login_hint" not in identity.authorize_requests[-1]

    response = service.api("POST", f"/v1/account/{account}/reauth", json={"redirectUrl": APP_REDIRECT,
                                                                         "expiresIn": 600})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"url", "expires", "link"} and body["url"].startswith(service.url + "/accounts/new?")

    result = service.sign_in(body["url"], user).result
    assert result == {"account": "shared-1", "state": "existing"}
    authorize = identity.authorize_requests[-1]
    assert authorize["login_hint"] == "fay@fabrikam.com"  # the signer, never the shared mailbox
    assert authorize["domain_hint"] == other_tenant
    stored = accounts.get_account("shared-1")
    assert (stored.email, stored.delegated, stored.name, stored.appId) == \
        ("team@fabrikam.com", True, "Team", service.app.id)


def test_reauth_of_an_own_mailbox_refuses_another_person(service, identity):
    owner = identity.add_user("gus@contoso.com", email="gus@contoso.com")
    intruder = identity.add_user("ivan@contoso.com", email="ivan@contoso.com")
    account = connect(service, identity, owner)
    url = service.api("POST", f"/v1/account/{account}/reauth", json={"redirectUrl": APP_REDIRECT}).json()["url"]
    result = service.sign_in(url, intruder).result
    assert result["error"] == "email_mismatch" and result["account"] == account
    assert accounts.get_account(account).signerUpn == "gus@contoso.com"


def test_reauth_is_validated(service, identity):
    user = identity.add_user("hana@contoso.com")
    account = connect(service, identity, user)
    path = f"/v1/account/{account}/reauth"
    error_of(service.api("POST", path, json={}), 400, "invalid_input")
    error_of(service.api("POST", path, json={"redirectUrl": "javascript:alert(1)"}), 400, "invalid_redirect_url")
    error_of(service.api("POST", path, json={"redirectUrl": "http://evil.example/"}), 400, "invalid_redirect_url")
    error_of(service.api("POST", path, json={"redirectUrl": APP_REDIRECT, "expiresIn": 10**9}), 400)
    error_of(service.api("POST", path, json={"redirectUrl": APP_REDIRECT, "expiresIn": -1}), 400)
    error_of(service.api("POST", path, json={"redirectUrl": APP_REDIRECT, "email": "x@y.z"}), 400, "unknown_field")
    service.api("PUT", f"/v1/oauth2/{service.app.id}", json={"enabled": False})
    error_of(service.api("POST", path, json={"redirectUrl": APP_REDIRECT}), 409, "app_disabled")


def test_reauth_link_is_single_use_like_any_link(service, identity):
    user = identity.add_user("ida@contoso.com")
    account = connect(service, identity, user)
    url = service.api("POST", f"/v1/account/{account}/reauth", json={"redirectUrl": APP_REDIRECT}).json()["url"]
    assert service.sign_in(url, user).result == {"account": account, "state": "existing"}
    assert service.sign_in(url, user).start.status_code == 409
    assert query(url)["data"]
