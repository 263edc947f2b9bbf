"""``POST /v1/authentication/form``: a signed link for good input, a clear 4xx (and no write) for bad."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.core import links as linkcodec
from shared.settings import get_settings
from shared.storage.tables.client import table
from tests.service import query

STORED = ("accounts", "principals", "flows", "links")


def stored_rows() -> int:
    return sum(len(list(table(name).list_entities())) for name in STORED)


def test_form_returns_a_signed_expiring_link(service):
    response = service.form(account="acc-1", name="Support", email="support@contoso.com", delegated=True,
                            syncFrom="2024-01-01T00:00:00Z", subconnections=["Sent Items"], path="INBOX")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["url"].startswith(service.url + "/accounts/new?")
    params = query(body["url"])
    link = linkcodec.decode(params["data"], params["sig"], get_settings())
    assert (link.account, link.email, link.delegated, link.type) == (
        "acc-1", "support@contoso.com", True, service.app.id)
    # path: one string is EmailEngine's one-element array (tests/test_ee_form.py)
    assert link.meta == {"syncFrom": "2024-01-01T00:00:00Z", "subconnections": ["Sent Items"], "path": ["INBOX"]}
    expires = datetime.fromisoformat(body["expires"].replace("Z", "+00:00"))
    assert expires == datetime.fromtimestamp(link.exp, UTC)
    assert link.exp - link.iat == get_settings().link_ttl_seconds
    assert stored_rows() == 0  # creating a link writes nothing


def test_expires_in_is_honoured_within_the_cap(service):
    link_url = service.link(expiresIn=600)
    params = query(link_url)
    link = linkcodec.decode(params["data"], params["sig"], get_settings())
    assert link.exp - link.iat == 600
    too_long = service.form(expiresIn=get_settings().link_max_ttl_seconds + 1)
    assert too_long.status_code == 400 and too_long.json()["field"] == "expiresIn"


@pytest.mark.parametrize("body,field", [
    ({"account": "a/b"}, "account"),
    ({"account": "a#b"}, "account"),
    ({"account": "a?b"}, "account"),
    ({"account": "a\\b"}, "account"),
    ({"account": "a\u0007b"}, "account"),
    ({"redirectUrl": "http://app.example/cb"}, "redirectUrl"),
    ({"redirectUrl": "https://user:pw@app.example/cb"}, "redirectUrl"),
    ({"redirectUrl": "javascript:alert(1)"}, "redirectUrl"),
    ({"redirectUrl": None}, "redirectUrl"),
    ({"unknownField": 1}, "unknownField"),
    ({"delegated": True}, None),
    ({"email": "not-an-address"}, "email"),
    ({"delegated": "maybe"}, "delegated"),
    ({"type": "no-such-app"}, "type"),
])
def test_bad_fields_are_400_and_store_nothing(service, body, field):
    response = service.form(**body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] and error["message"]
    assert error.get("field") == field
    assert stored_rows() == 0


def test_redirect_outside_the_allowlist_is_refused(service, set_env):
    set_env(MC_REDIRECT_ALLOWLIST="https://app.example, https://other.example")
    assert service.form(redirectUrl="https://app.example/ok").status_code == 200
    refused = service.form(redirectUrl="https://evil.example/")
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_redirect_url"


@pytest.mark.parametrize("headers,data", [
    ({"Content-Type": "text/plain"}, b'{"redirectUrl": "https://app.example/"}'),
    ({"Content-Type": "application/json"}, b"{not json"),
    ({"Content-Type": "application/json"}, b"[1, 2]"),
    ({"Content-Type": "application/json"}, b"\xff\xfe"),
    ({}, b'{"redirectUrl": "https://app.example/"}'),
])
def test_malformed_bodies(service, headers, data):
    response = service.api("POST", "/v1/authentication/form", headers=headers, data=data)
    assert response.status_code in (400, 415), response.text
    assert response.json()["code"] in ("invalid_json", "unsupported_media_type")


def test_oversized_body(service):
    response = service.api("POST", "/v1/authentication/form", json={"redirectUrl": "https://a.example/",
                                                                    "name": "x" * 70000})
    assert response.status_code == 413


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer wrong", "Basic abc", "Bearer mc_" + "x" * 43])
def test_api_token_is_required(service, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = service.api("POST", "/v1/authentication/form", token=False, headers=headers,
                           json={"redirectUrl": "https://app.example/"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_type_is_optional_with_one_app_and_chosen_by_the_person_with_two(service, identity):
    assert service.form().status_code == 200
    from shared.core.apps import register_app

    register_app(name="second", client_id="c2", client_secret_value="s2", settings=get_settings())
    # EmailEngine's way: no preselection, the person picks (the chooser page, tests/test_ee_form.py)
    unnamed = query(service.link())
    assert linkcodec.decode(unnamed["data"], unnamed["sig"], get_settings()).type is None
    named = query(service.link(type=service.app.id))
    assert linkcodec.decode(named["data"], named["sig"], get_settings()).type == service.app.id
