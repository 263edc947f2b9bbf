"""EmailEngine's ``POST /v1/authentication/form``, as an app written for EmailEngine sends it (issue 13).

Each test is one statement of ``../shared/emailengine-api.md``, "POST /v1/authentication/form", driven with
EmailEngine-shaped requests against the real service (local host, Azurite, the fake Microsoft identity
platform and IMAP server), or the deliberate difference the README documents (``redirectUrl``: https only
off loopback, and inside ``MC_REDIRECT_ALLOWLIST``). Errors are checked through their machine code
(``body["code"]``). The app chooser (``type`` false or absent while several OAuth apps are enabled) is
EmailEngine's selection screen: its own tests are at the end.
"""

from __future__ import annotations

import json
import re
import secrets
from html import unescape
from urllib.parse import quote, urlsplit

import pytest

from shared.core import links as linkcodec
from shared.core.apps import register_app
from shared.settings import get_settings
from shared.signing import b64url_decode, b64url_encode
from shared.storage.tables import accounts
from shared.storage.tables.client import table
from tests.service import APP_REDIRECT, Browser, Service, query, session

SPA_REDIRECT = f"{APP_REDIRECT}?tenant=42&next=%2Finbox#/settings/mailboxes?tab=shared"


def link_data(url: str) -> dict:
    """The JSON a link carries (what the service signed)."""
    return json.loads(b64url_decode(query(url)["data"]))


def account_info(service: Service, account: str) -> dict:
    response = service.api("GET", f"/v1/account/{quote(account, safe='')}")
    assert response.status_code == 200, response.text
    return response.json()


def bad_field(response, field: str, code: str = "invalid_input") -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code and body["field"] == field, body
    assert field in [f["key"] for f in body.get("fields") or [{"key": body["field"]}]], body


def flow_rows() -> int:
    """Rows of the retired flows table: none, ever (a pending sign-in is a sealed cookie since issue 14 point 2)."""
    return len(list(table("flows").list_entities()))


# --- the request ---------------------------------------------------------------------------------------------

def test_the_answer_is_a_url(service, identity):
    response = service.form(account="ee-1", name="EE", email="ee@contoso.com")
    assert response.status_code == 200, response.text
    assert response.json()["url"].startswith(f"{service.url}/accounts/new?data=")


@pytest.mark.parametrize("empty", [None, "", "   ", "\t\n"])
def test_an_empty_or_null_account_means_generate_one(service, identity, empty):
    user = identity.add_user(f"gen{secrets.token_hex(3)}@contoso.com")
    url = service.link(account=empty)
    assert "account" not in link_data(url)
    result = service.sign_in(url, user).result
    assert result["state"] == "new" and len(result["account"]) == 32  # derived from tenant + mailbox


def test_the_account_id_is_trimmed(service, identity):
    url = service.link(account="  padded-id \t")
    assert link_data(url)["account"] == "padded-id"
    result = service.sign_in(url, identity.add_user("pad@contoso.com")).result
    assert result["account"] == "padded-id"
    assert account_info(service, "padded-id")["account"] == "padded-id"


def test_an_account_id_of_256_utf16_units_works_end_to_end_and_257_is_refused(service, identity):
    """EmailEngine's ``max(256)`` counts JavaScript string length: UTF-16 code units (an emoji counts 2)."""
    user = identity.add_user("long@contoso.com")
    for account in ("x" * 256, "\U0001f600" * 128, "ä" * 254 + "\U0001f600"):
        result = service.sign_in(service.link(account=account), user).result
        assert result["account"] == account
        assert account_info(service, account)["account"] == account
    for account in ("x" * 257, "\U0001f600" * 128 + "x", "  " + "y" * 257):
        bad_field(service.form(account=account), "account")


@pytest.mark.parametrize("field", ["email", "expectedEmail", "name"])
def test_empty_strings_count_as_absent(service, identity, field):
    url = service.link(**{field: ""})
    assert field not in link_data(url)
    user = identity.add_user(f"{field.lower()}@contoso.com", name="Signer Name")
    result = service.sign_in(url, user).result
    info = account_info(service, result["account"])
    assert info["email"] == user.upn and info["name"] == "Signer Name"
    assert info.get("expectedEmail") is None  # nothing pinned: "" is no address


def test_delegated_is_a_boolean(service, identity):
    bob = identity.add_user("bob@contoso.com", shared_mailboxes=["support@contoso.com"])
    url = service.link(email="support@contoso.com", delegated=True)
    assert link_data(url)["delegated"] is True
    assert service.sign_in(url, bob).result["state"] == "new"
    bad_field(service.form(delegated="maybe"), "delegated")
    # An empty email is absent, so a shared mailbox then lacks its address.
    assert service.form(email="", delegated=True).status_code == 400


@pytest.mark.parametrize("value", ["2024-01-31", "2024-01-31T08:00:00Z", "2024-01-31T08:00:00.336Z",
                                   "2024-01-31T08:00:00+02:00", "2024-01-31T08:00", "2024-01-31 08:00:00"])
def test_sync_from_and_notify_from_are_iso_dates_and_kept(service, identity, value):
    url = service.link(syncFrom=value, notifyFrom=value)
    result = service.sign_in(url, identity.add_user(f"d{secrets.token_hex(3)}@contoso.com")).result
    info = account_info(service, result["account"])
    assert (info["syncFrom"], info["notifyFrom"]) == (value, value)


@pytest.mark.parametrize("field", ["syncFrom", "notifyFrom"])
@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "2024-01-32", "12:00", "31.01.2024", 20240131, True,
                                   ["2024-01-31"]])
def test_a_date_that_is_no_iso_date_is_a_400_naming_the_field(service, field, value):
    bad_field(service.form(**{field: value}), field)


def test_null_or_empty_dates_are_absent(service):
    data = link_data(service.link(syncFrom=None, notifyFrom=""))
    assert data.get("meta", {}) == {}


def test_subconnections_and_path_take_one_string_as_a_one_element_array(service, identity):
    url = service.link(subconnections="INBOX", path="Sent Items")
    assert link_data(url)["meta"] == {"subconnections": ["INBOX"], "path": ["Sent Items"]}
    result = service.sign_in(url, identity.add_user("sub@contoso.com")).result
    info = account_info(service, result["account"])
    assert (info["subconnections"], info["path"]) == (["INBOX"], ["Sent Items"])

    arrays = link_data(service.link(subconnections=["\\Sent", "Archive"], path=["INBOX", "\\Junk"]))
    assert arrays["meta"] == {"subconnections": ["\\Sent", "Archive"], "path": ["INBOX", "\\Junk"]}
    # "*" (all folders) is EmailEngine's default: its form does not keep such a path either.
    assert "path" not in link_data(service.link(path="*")).get("meta", {})
    assert "path" not in link_data(service.link(path=["INBOX", "*"])).get("meta", {})


@pytest.mark.parametrize("body,field", [
    ({"subconnections": 5}, "subconnections"),
    ({"subconnections": [1]}, "subconnections.0"),
    ({"subconnections": ["a" * 257]}, "subconnections.0"),
    ({"subconnections": ["INBOX", ""]}, "subconnections.1"),
    ({"subconnections": ["x"] * 51}, "subconnections"),
    ({"path": {"a": 1}}, "path"),
    ({"path": ["p" * 1025]}, "path.0"),
])
def test_bad_folder_lists_are_a_400_naming_the_field(service, body, field):
    bad_field(service.form(**body), field)


def test_a_link_too_long_to_open_is_refused_at_the_form(service):
    response = service.form(path=[f"folder-{i}-" + "x" * 900 for i in range(10)])
    assert response.status_code == 400 and response.json()["code"] == "link_too_long", response.text


def test_type_false_or_absent_with_one_app_is_that_app(service, identity):
    for body in ({"type": False}, {}, {"type": None}, {"type": ""}):
        url = service.link(**body)
        assert link_data(url)["type"] == service.app.id, body
    result = service.sign_in(service.link(type=False), identity.add_user("one@contoso.com")).result
    assert accounts.get_account(result["account"]).appId == service.app.id
    bad_field(service.form(type=True), "type")
    bad = service.form(type="0123456789abcdef")  # stricter than EmailEngine, which falls back to the chooser
    assert (bad.status_code, bad.json()["code"]) == (400, "unknown_app")


# --- redirectUrl and the way back -----------------------------------------------------------------------------

def test_redirect_url_is_required(service):
    response = service.api("POST", "/v1/authentication/form", json={"account": "x"})
    bad_field(response, "redirectUrl")
    bad_field(service.form(redirectUrl=""), "redirectUrl", "invalid_redirect_url")


def test_redirect_url_http_only_on_loopback_a_deliberate_difference(service, set_env):
    """EmailEngine takes any http or https URL; this service takes https, and plain http only for loopback
    (README, deliberate differences): a sign-in result must not travel in clear text."""
    assert service.form(redirectUrl="http://localhost:3000/done").status_code == 200
    assert service.form(redirectUrl="http://127.0.0.1:3000/done").status_code == 200
    for url in ("http://app.example/done", "ftp://app.example/done", "/relative", "https://u:p@app.example/"):
        bad_field(service.form(redirectUrl=url), "redirectUrl", "invalid_redirect_url")
    set_env(MC_REDIRECT_ALLOWLIST="https://app.example")
    assert service.form(redirectUrl="https://app.example/done").status_code == 200
    bad_field(service.form(redirectUrl="https://other.example/done"), "redirectUrl", "invalid_redirect_url")


def back_to_app(location: str) -> tuple[str, list[tuple[str, str]], str]:
    """(base, the query as pairs in order, fragment) of the redirect to the app."""
    parts = urlsplit(location)
    pairs = [tuple(p.split("=", 1)) for p in parts.query.split("&") if p]
    return f"{parts.scheme}://{parts.netloc}{parts.path}", pairs, parts.fragment  # type: ignore[return-value]


def test_the_way_back_keeps_the_query_and_fragment_for_new_and_existing_accounts(service, identity):
    user = identity.add_user("spa@contoso.com")
    for state in ("new", "existing"):
        done = service.sign_in(service.link(redirectUrl=SPA_REDIRECT), user)
        base, pairs, fragment = back_to_app(done.location)
        assert base == APP_REDIRECT and fragment == "/settings/mailboxes?tab=shared", done.location
        assert pairs[:2] == [("tenant", "42"), ("next", "%2Finbox")], done.location  # byte for byte, first
        added = dict(pairs[2:])
        assert added["state"] == state and added["account"] and added["link"], done.location


def test_the_apps_own_state_and_account_parameters_are_replaced(service, identity):
    done = service.sign_in(service.link(redirectUrl=f"{APP_REDIRECT}?state=csrf&account=spoof&keep=1#f"),
                           identity.add_user("rep@contoso.com"))
    base, pairs, fragment = back_to_app(done.location)
    names = [k for k, _ in pairs]
    assert names.count("state") == names.count("account") == 1 and ("keep", "1") in pairs and fragment == "f"
    assert dict(pairs)["state"] == "new" and dict(pairs)["account"] != "spoof"


def test_errors_go_back_with_the_query_and_fragment_too(service, identity):
    """EmailEngine keeps the person on its own page; this service sends the error to the app (README)."""
    user = identity.add_user("deny@contoso.com")
    identity.fail_next("authorize", "access_denied")
    done = service.sign_in(service.link(account="denied", redirectUrl=SPA_REDIRECT), user)
    base, pairs, fragment = back_to_app(done.location)
    added = dict(pairs[2:])
    assert pairs[:2] == [("tenant", "42"), ("next", "%2Finbox")] and fragment == "/settings/mailboxes?tab=shared"
    assert added["error"] == "access_denied" and added["error_description"] and added["account"] == "denied"


# --- the app chooser (type false or absent, several apps enabled) -------------------------------------------

def another_app(service: Service, identity, name: str, cloud: str = "global"):
    client_id, client_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    identity.add_client(client_id, client_secret, [f"{service.url}/oauth"])
    return register_app(name=name, client_id=client_id, client_secret_value=client_secret, authority="organizations",
                        cloud=cloud, base_scopes="imap", settings=get_settings())


def choices(page) -> dict[str, str]:
    """App name -> the URL of its option on the chooser page."""
    found = re.findall(r'<a class="button" href="([^"]+)">([^<]+)<span', page.text)
    return {unescape(name): unescape(href) for href, name in found}


def client_of(location: str) -> str:
    return query(location)["client_id"]


def mint(service: Service, **body) -> str:
    response = service.api("POST", "/v1/tokens", json={"name": "restricted", **body})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def test_with_two_apps_the_person_picks_one_on_a_hosted_page(service, identity):
    other = another_app(service, identity, "Fabrikam <IMAP>")
    url = service.link(type=False, email="pick@contoso.com")
    assert "type" not in link_data(url) and "apps" not in link_data(url)  # signed without a preselection
    browser = Browser()
    page = browser.get(url, allow_redirects=False, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html"), page.text[:300]
    assert "<script" not in page.text.lower() and "Choose how to sign in" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert "pick@contoso.com" in page.text and "Fabrikam &lt;IMAP&gt;" in page.text  # escaped
    options = choices(page)
    assert set(options) == {"test", "Fabrikam <IMAP>"}
    assert flow_rows() == 0 and not browser.jar  # the page starts nothing

    picked = options["Fabrikam <IMAP>"]
    assert query(picked)["app"] == other.id and query(picked)["data"] == query(url)["data"]
    start = browser.get(picked, allow_redirects=False, timeout=30)
    assert start.status_code == 302 and client_of(start.headers["Location"]) == other.clientId
    result = service.sign_in(picked, identity.add_user("pick@contoso.com")).result
    assert result["state"] == "new" and accounts.get_account(result["account"]).appId == other.id


def test_the_pick_cannot_name_another_app_or_change_the_link(service, identity):
    second = another_app(service, identity, "Second")
    disabled = another_app(service, identity, "Disabled")
    assert service.api("PUT", f"/v1/oauth2/{disabled.id}", json={"enabled": False}).status_code == 200
    url = service.link()
    for app in ("0123456789abcdef", disabled.id, "", "x" * 5000, second.id + "'"):
        page = session().get(f"{url}&app={quote(app)}", allow_redirects=False, timeout=30)
        assert page.status_code == 200 and set(choices(page)) == {"test", "Second"}, (app, page.status_code)
        if app:
            assert "not available any more" in page.text
    assert flow_rows() == 0
    # The link's data is signed: adding a preselection (or anything) breaks it.
    data = link_data(url)
    forged = b64url_encode(json.dumps({**data, "type": second.id}).encode())
    page = session().get(f"{service.url}/accounts/new?data={forged}&sig={quote(query(url)['sig'])}", timeout=30)
    assert page.status_code == 400 and "not valid" in page.text
    # A link that names its app ignores a pick.
    named = service.link(type=service.app.id)
    start = session().get(f"{named}&app={second.id}", allow_redirects=False, timeout=30)
    assert start.status_code == 302 and client_of(start.headers["Location"]) == service.app.clientId


def test_the_chooser_follows_the_enabled_apps_at_the_visit(service, identity):
    second = another_app(service, identity, "Second", cloud="gcc-high")
    url = service.link()
    page = session().get(url, allow_redirects=False, timeout=30)
    assert set(choices(page)) == {"test", "Second"} and "Microsoft 365 GCC High" in page.text
    # One left: no page, straight to it.
    assert service.api("PUT", f"/v1/oauth2/{second.id}", json={"enabled": False}).status_code == 200
    start = session().get(url, allow_redirects=False, timeout=30)
    assert start.status_code == 302 and client_of(start.headers["Location"]) == service.app.clientId
    # None left: back to the app.
    assert service.api("PUT", f"/v1/oauth2/{service.app.id}", json={"enabled": False}).status_code == 200
    gone = session().get(url, allow_redirects=False, timeout=30)
    assert gone.status_code == 302 and query(gone.headers["Location"])["error"] == "app_unavailable"


def test_a_link_for_an_existing_account_goes_to_its_app(service, identity):
    second = another_app(service, identity, "Second")
    user = identity.add_user("again@contoso.com")
    first = service.sign_in(service.link(account="acct-2", type=second.id), user).result
    assert first["state"] == "new"
    url = service.link(account="acct-2")  # no type: the account's app, without asking
    start = session().get(url, allow_redirects=False, timeout=30)
    assert start.status_code == 302 and client_of(start.headers["Location"]) == second.clientId
    assert service.sign_in(url, user).result["state"] == "existing"


def test_an_app_restricted_token_offers_only_its_apps(service, identity):
    second = another_app(service, identity, "Second")
    third = another_app(service, identity, "Third")
    token = mint(service, apps=[service.app.id, second.id])
    response = service.api("POST", "/v1/authentication/form", token=token,
                           json={"redirectUrl": APP_REDIRECT, "type": False})
    assert response.status_code == 200, response.text
    url = response.json()["url"]
    assert "type" not in link_data(url) and link_data(url)["apps"] == sorted([service.app.id, second.id])
    page = session().get(url, allow_redirects=False, timeout=30)
    assert set(choices(page)) == {"test", "Second"}
    refused = session().get(f"{url}&app={third.id}", allow_redirects=False, timeout=30)
    assert refused.status_code == 200 and "Third" not in refused.text
    # Signed: the apps cannot be widened.
    forged = b64url_encode(json.dumps({**link_data(url), "apps": [third.id]}).encode())
    page = session().get(f"{service.url}/accounts/new?data={forged}&sig={quote(query(url)['sig'])}", timeout=30)
    assert page.status_code == 400
    result = service.sign_in(choices(session().get(url, timeout=30))["Second"], identity.add_user("r@contoso.com"))
    assert accounts.get_account(result.result["account"]).appId == second.id
    # Of its apps only one enabled: that one, no page.
    assert service.api("PUT", f"/v1/oauth2/{second.id}", json={"enabled": False}).status_code == 200
    one = service.api("POST", "/v1/authentication/form", token=token, json={"redirectUrl": APP_REDIRECT})
    assert link_data(one.json()["url"])["type"] == service.app.id
    assert service.api("PUT", f"/v1/oauth2/{service.app.id}", json={"enabled": False}).status_code == 200
    none = service.api("POST", "/v1/authentication/form", token=token, json={"redirectUrl": APP_REDIRECT})
    assert (none.status_code, none.json()["code"]) == (400, "no_app")


def test_the_chooser_link_is_still_single_use(service, identity):
    another_app(service, identity, "Second")
    url = service.link()
    user = identity.add_user("once@contoso.com")
    pick = choices(session().get(url, timeout=30))["test"]
    assert service.sign_in(pick, user).result["state"] == "new"
    again = session().get(url, allow_redirects=False, timeout=30)
    assert again.status_code == 409 and "already used" in again.text
    data, sig = query(url)["data"], query(url)["sig"]
    assert linkcodec.decode(data, sig, get_settings()).type is None
