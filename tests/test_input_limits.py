"""Bad input never yields a 5xx and never leaves an orphan (issue 12 point 6), and the hosted pages' transport
rules (point 11: HSTS over https).

The reproduction of the issue: a form naming the account ``"\\ud800"`` (a lone surrogate: valid JSON, but no
UTF-8 can encode it) was accepted, and the sign-in then stored the refresh token and the credential before a
storage write of the account id failed: a 503 and a credential no account reaches. Now the form refuses every
string that is not well-formed text, in every field of every JSON body and query (``shared.schemas``), and
links and flows an older version accepted with such a value end on a clear 4xx page, writing nothing. JSON
nested thousands deep (a ``RecursionError``, 500) and numbers of thousands of digits, ``1e999``, ``NaN``
are a 400 ``invalid_json`` on every route with a body (``shared.web.http.loads``).
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from shared.core import links as linkcodec
from shared.settings import get_settings
from shared.storage.tables.client import table
from tests.invariants import prepare, problems, survey
from tests.service import APP_REDIRECT

LONE_SURROGATE = "\ud800"
NON_CHARACTER = "\uffff"


def post_raw(service, path: str, raw: bytes | str, method: str = "POST"):
    data = raw.encode() if isinstance(raw, str) else raw
    return service.api(method, path, data=data, headers={"Content-Type": "application/json"})


def nothing_written(before: dict[str, set[str]]) -> None:
    """No row was added to the tables a form, a link or a sign-in writes; and no orphan exists."""
    assert rows() == before
    assert problems(survey()) == []


def rows() -> dict[str, set[str]]:
    out = {}
    for name in ("accounts", "principals", "links", "secrets", "flows", "outbox", "apitokens", "apps", "webhooks"):
        out[name] = {f"{e['PartitionKey']}/{e['RowKey']}" for e in table(name).list_entities()}
    return out


# --- the orphan of the issue ----------------------------------------------------------------------------

def test_a_lone_surrogate_account_id_is_refused_at_the_form(service, identity):
    identity.add_user("ada@contoso.com")
    before = rows()
    # Exactly the reproduction: the JSON escape, as a client would send it.
    response = post_raw(service, "/v1/authentication/form",
                        '{"account": "\\ud800", "redirectUrl": "' + APP_REDIRECT + '"}')
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body.get("field")) == ("invalid_text", "account"), body
    assert "surrogate" in body["message"]
    nothing_written(before)


def test_a_link_an_older_version_signed_with_a_surrogate_ends_on_a_page_and_writes_nothing(service, identity):
    user = identity.add_user("ada@contoso.com")
    query = parse_qs(urlsplit(service.link()).query)
    genuine = linkcodec.decode(query["data"][0], query["sig"][0], get_settings())
    old = linkcodec.link_url(genuine.model_copy(update={"account": LONE_SURROGATE}), get_settings())
    before = rows()
    signin = service.sign_in(old, user)  # form -> sign-in -> (no callback: the link is refused first)
    assert signin.start.status_code == 400 and signin.done is None, signin.start.status_code
    assert "This sign-in link is not valid" in signin.start.text
    nothing_written(before)


def test_a_flow_an_older_version_started_with_a_surrogate_ends_on_a_page_and_writes_nothing(service, identity):
    from dataclasses import replace

    from shared.signin import flowstate
    from shared.signin.flow import _cookie_name

    user = identity.add_user("ada@contoso.com")
    pending = prepare(service, service.link(), user)  # stopped at Microsoft's redirect back to /oauth
    state = parse_qs(urlsplit(pending.callback).query)["state"][0]
    # What an older version sealed for a form with account "\ud800" (it accepted it, and sealed the flow too).
    name = _cookie_name(state)
    value, path = pending.browser.jar[name]
    flow = flowstate.open_flow(state, [value], get_settings())
    [sealed] = flowstate.seal(replace(flow, link={**flow.link, "account": LONE_SURROGATE}), get_settings())
    pending.browser.jar[name] = (sealed, path)
    before = rows()
    done = pending.browser.get(pending.callback, allow_redirects=False, timeout=30)
    assert done.status_code == 400 and "This sign-in link is not valid" in done.text, (done.status_code, done.text)
    assert rows() == before
    assert problems(survey()) == [], "the old code left a credential and a refresh token no account reaches"
    assert name not in pending.browser.jar  # the unusable flow cookie is cleared


# --- every string field of every JSON body ------------------------------------------------------------------

def json_operations(service, seeded_account: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request schema) of every operation with a JSON body, path parameters filled in."""
    doc = service.api("GET", "/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    found = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if "requestBody" not in op:
                continue
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            concrete = path.replace("{account}", seeded_account).replace("{app}", service.app.id)
            found.append((method.upper(), concrete, schemas[ref.rsplit("/", 1)[-1]]))
    assert len(found) >= 7, found
    return found


def string_fields(schema: dict[str, Any]) -> list[tuple[str, bool]]:
    """(property, is an array of strings) for every property that can carry a string."""
    out = []
    for name, prop in schema.get("properties", {}).items():
        variants = prop.get("anyOf", [prop])
        if any(v.get("type") == "string" for v in variants):
            out.append((name, False))
        elif any(v.get("type") == "array" and v.get("items", {}).get("type") == "string" for v in variants):
            out.append((name, True))
    return out


@pytest.fixture
def seeded_account(service, identity) -> str:
    user = identity.add_user("seed@contoso.com", email="seed@contoso.com")
    return service.sign_in(service.link(), user).result["account"]


@pytest.mark.parametrize("bad", [LONE_SURROGATE, "\udfff", NON_CHARACTER, "\ufdd0", "\U0010ffff"])
def test_every_string_field_of_every_body_refuses_ill_formed_text(service, seeded_account, bad):
    before = rows()
    checked = 0
    for method, path, schema in json_operations(service, seeded_account):
        for field, is_array in string_fields(schema):
            value: Any = [f"ok{bad}"] if is_array else f"x{bad}y"
            response = post_raw(service, path, json.dumps({field: value}), method)
            assert response.status_code == 400, (method, path, field, response.status_code, response.text)
            body = response.json()
            expected = f"{field}.0" if is_array else field
            assert (body["code"], body.get("field")) == ("invalid_text", expected), (method, path, body)
            checked += 1
        # A field name that is not text, and a bad string nested in an unknown field: refused too.
        response = post_raw(service, path, json.dumps({f"k{bad}": 1}), method)
        assert response.status_code == 400 and response.json()["code"] == "invalid_text", (path, response.text)
        response = post_raw(service, path, json.dumps({"extra": {"deep": [bad]}}), method)
        assert response.status_code == 400 and response.json()["field"] == "extra.deep.0", (path, response.text)
    assert checked >= 30, checked
    nothing_written(before)


def test_query_and_path_parameters_refuse_non_characters(service, seeded_account):
    for query in ("email=a%EF%BF%BF%40contoso.com", "cursor=%EF%BF%BE", "state=%EF%BF%BF"):
        response = service.api("GET", f"/v1/accounts?{query}")
        assert response.status_code == 400 and response.json()["code"] == "invalid_text", (query, response.text)
    for method, path in (("GET", "/v1/account/a%EF%BF%BF"), ("DELETE", "/v1/account/%EF%BF%BE"),
                         ("GET", "/v1/account/%EF%B7%90/oauth-token")):
        response = service.api(method, path)
        assert response.status_code == 400 and response.json()["field"] == "account", (path, response.text)


# --- nesting and numbers ----------------------------------------------------------------------------------

HOSTILE_BODIES = {
    "nested 5000 deep": '{"name": ' + "[" * 5000 + "]" * 5000 + "}",
    "nested 33 deep": '{"name": ' + '{"a": ' * 32 + "1" + "}" * 32 + "}",
    "unterminated nesting": '{"name": ' + "[" * 100_00,
    "an int of 5000 digits": '{"expiresIn": ' + "9" * 5000 + "}",
    "an int of 65 digits": '{"expiresIn": ' + "9" * 65 + "}",
    "1e999": '{"expiresIn": 1e999}',
    "-1e999": '{"expiresIn": -1e999}',
    "NaN": '{"expiresIn": NaN}',
    "Infinity": '{"expiresIn": Infinity}',
    "escaped surrogate pair halves reversed": '{"name": "\\udc00\\ud800"}',
}


def test_deep_nesting_and_huge_numbers_are_a_400_on_every_json_route(service, seeded_account):
    before = rows()
    for method, path, _ in json_operations(service, seeded_account):
        for what, raw in HOSTILE_BODIES.items():
            response = post_raw(service, path, raw, method)
            assert response.status_code == 400, (method, path, what, response.status_code, response.text[:200])
            assert response.json()["code"] in ("invalid_json", "invalid_text"), (method, path, what, response.text)
    nothing_written(before)


def test_nesting_within_the_limit_still_reaches_validation(service):
    response = post_raw(service, "/v1/authentication/form", '{"redirectUrl": ' + "[" * 31 + "]" * 31 + "}")
    assert response.status_code == 400 and response.json()["code"] == "invalid_input", response.text


# --- hosted pages: query strings ---------------------------------------------------------------------------

def raw_get(service, target: str) -> tuple[int, dict[str, str], str]:
    parts = urlsplit(service.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.mark.parametrize("query", [
    "data=%ED%A0%80&sig=%ED%A0%80",  # a lone surrogate, CESU-encoded: invalid UTF-8
    "data=%EF%BF%BF&sig=%EF%BF%BE",
    "data=" + quote("\ufdd0" * 50) + "&sig=x",
])
def test_accounts_new_with_hostile_parameters_is_a_readable_400(service, query):
    before = rows()
    status, _, body = raw_get(service, f"/accounts/new?{query}")
    assert status == 400 and "This sign-in link is not valid" in body, (status, body[:300])
    nothing_written(before)


@pytest.mark.parametrize("query", [
    "state=%ED%A0%80abcdefgh&code=x", "state=abcdefghijkl%0A&code=x", "state=abcdefghijkl%0D%0A&code=x",
    "code=%ED%A0%80&state=%EF%BF%BFabcdefgh", "state=abcdefghijkl&error=%ED%A0%80&error_description=%EF%BF%BF",
])
def test_oauth_with_hostile_parameters_is_a_readable_400(service, query):
    before = rows()
    status, headers, body = raw_get(service, f"/oauth?{query}")
    assert status == 400 and "This sign-in session is not known" in body, (status, body[:300])
    assert "Location" not in headers
    nothing_written(before)


# --- HSTS -------------------------------------------------------------------------------------------------

def test_hosted_pages_send_hsts_when_the_public_url_is_https(service, set_env):
    status, headers, _ = raw_get(service, "/accounts/new?data=x&sig=y")
    assert status == 400 and "Strict-Transport-Security" not in headers  # plain-http localhost
    link = service.link()
    set_env(MC_PUBLIC_URL="https://mc.example")  # where browsers reach the pages; TLS ends in front (Azure)
    status, headers, _ = raw_get(service, "/accounts/new?data=x&sig=y")
    assert status == 400 and headers["Strict-Transport-Security"] == "max-age=31536000", headers
    status, headers, _ = raw_get(service, "/oauth?state=abcdefghijkl&code=x")
    assert status == 400 and headers["Strict-Transport-Security"] == "max-age=31536000", headers
    parts = urlsplit(link)
    status, headers, _ = raw_get(service, f"{parts.path}?{parts.query}")
    assert status == 302 and headers["Strict-Transport-Security"] == "max-age=31536000", (status, headers)
