"""Verifying the return (issue 12, point 4): ``redirectUrl?account=..&state=..`` is plain text anyone can type,
and derived account ids are predictable, so an app that trusts it can be handed another mailbox's account.
The form's answer carries the link's id (``link``), the redirect carries it back, and
``GET /v1/links/{link}`` says which account that link produced: the app checks the redirect against the
link it made for this user. Real service, Azurite, the fake Microsoft identity platform."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest

from shared.signin.flow import derived_account_id
from shared.storage.tables.client import table
from shared.storage.tables.records import utcnow
from tests.service import APP_REDIRECT, Service, connect, query


class App:
    """What the README tells an app to do: keep the link id of the link it made for a user; on return, accept
    the account only if the redirect names that link and the API says that link produced that account."""

    def __init__(self, service: Service, token: str | None = None) -> None:
        self.service, self.token = service, token
        self.sessions: dict[str, str] = {}  # the app's user -> the link id it created for them

    def link_for(self, user: str, **form) -> str:
        response = self.service.api("POST", "/v1/authentication/form", token=self.token,
                                    json={"redirectUrl": APP_REDIRECT, **form})
        assert response.status_code == 200, response.text
        self.sessions[user] = response.json()["link"]
        return response.json()["url"]

    def on_return(self, user: str, returned: dict[str, str]) -> str | None:
        """The account to attach to ``user``, or None when the return is not to be trusted."""
        expected = self.sessions.get(user)
        if not expected or returned.get("link") != expected or "error" in returned:
            return None
        answer = self.service.api("GET", f"/v1/links/{expected}", token=self.token)
        if answer.status_code != 200:
            return None
        verified = answer.json()
        if verified["account"] != returned.get("account") or verified["state"] != returned.get("state"):
            return None
        return verified["account"]


def redirect_of(url: str) -> dict[str, str]:
    assert url.startswith(APP_REDIRECT + "?"), url
    return query(url)


def forged(**params: str) -> dict[str, str]:
    """What the app sees when someone types ``redirectUrl?...`` into the browser: just the parameters."""
    return redirect_of(f"{APP_REDIRECT}?{urlencode(params)}")


def test_the_real_return_verifies(service, identity):
    app = App(service)
    url = app.link_for("ada")
    link = app.sessions["ada"]
    done = service.sign_in(url, identity.add_user("ada@contoso.com"))
    returned = done.returned
    assert returned["link"] == link and returned["state"] == "new"
    assert app.on_return("ada", returned) == returned["account"]

    status = service.api("GET", f"/v1/links/{link}")
    assert status.status_code == 200 and status.headers["Cache-Control"] == "no-store"
    body = status.json()
    assert {k: body[k] for k in ("link", "account", "state", "completed", "app")} == {
        "link": link, "account": returned["account"], "state": "new", "completed": True, "app": service.app.id}
    assert body["completedAt"]


def test_a_forged_redirect_naming_another_mailbox_is_detected(service, identity):
    """Mallory gets a link from the app, signs in with her own mailbox, then types a return URL naming Ada's
    account (its id is derived from tenant + address, so she can compute it) with her own link id."""
    app = App(service)
    ada = identity.add_user("ada@contoso.com")
    ada_account = service.sign_in(app.link_for("ada"), ada).returned["account"]
    assert ada_account == derived_account_id(ada.tid, "ada@contoso.com")  # predictable

    mallory_link = service.sign_in(app.link_for("mallory"), identity.add_user("mallory@contoso.com")).returned
    assert app.on_return("mallory", mallory_link) == mallory_link["account"]  # her real return is fine

    attempts = [
        forged(account=ada_account, state="existing", link=app.sessions["mallory"]),  # her link, Ada's account
        forged(account=ada_account, state="new", link=app.sessions["mallory"]),
        forged(account=ada_account, state="new", link=app.sessions["ada"]),  # Ada's link id (seen somewhere)
        forged(account=ada_account, state="new"),  # no link id at all (an EmailEngine-style return)
    ]
    for attempt in attempts:
        assert app.on_return("mallory", attempt) is None, attempt
    # The API is what tells them apart: Mallory's link produced her account, not Ada's.
    assert service.api("GET", f"/v1/links/{app.sessions['mallory']}").json()["account"] == mallory_link["account"]


def test_a_link_that_produced_nothing_verifies_nothing(service, identity):
    """A link opened but never completed (or refused) answers 404, so a forged return built on it fails."""
    app = App(service)
    app.link_for("mallory")
    victim = identity.add_user("victim@contoso.com")
    victim_account = connect(service, victim)
    not_found = service.api("GET", f"/v1/links/{app.sessions['mallory']}")
    assert not_found.status_code == 404 and not_found.json()["code"] == "not_found", not_found.text
    assert app.on_return("mallory", forged(account=victim_account, state="existing",
                                           link=app.sessions["mallory"])) is None

    # A refused sign-in: the error redirect names the link too, and the link verifies nothing.
    url = app.link_for("eve", expectedEmail="someone.else@contoso.com")
    refused = service.sign_in(url, identity.add_user("eve@contoso.com")).returned
    assert refused["error"] == "email_mismatch" and refused["link"] == app.sessions["eve"]
    assert service.api("GET", f"/v1/links/{app.sessions['eve']}").status_code == 404
    assert app.on_return("eve", {**refused, "account": victim_account, "state": "existing"}) is None


def test_a_reauthentication_link_verifies_too(service, identity):
    user = identity.add_user("ann@contoso.com")
    account = connect(service, user, account="ann")
    reauth = service.api("POST", "/v1/account/ann/reauth", json={"redirectUrl": APP_REDIRECT}).json()
    assert set(reauth) == {"url", "expires", "link"}
    returned = service.sign_in(reauth["url"], user).returned
    assert (returned["account"], returned["state"], returned["link"]) == (account, "existing", reauth["link"])
    body = service.api("GET", f"/v1/links/{reauth['link']}").json()
    assert (body["account"], body["state"]) == ("ann", "existing")


def test_a_restricted_token_sees_only_its_apps_links(service, identity):
    from tests.test_restricted_tokens import mint, second_app

    app_b = second_app(service, identity)
    form = service.form(type=app_b.id).json()
    service.sign_in(form["url"], identity.add_user("bea@contoso.com"))
    token_a, token_b = mint(service, apps=[service.app.id]), mint(service, apps=[app_b.id])
    assert service.api("GET", f"/v1/links/{form['link']}", token=token_b).status_code == 200
    hidden = service.api("GET", f"/v1/links/{form['link']}", token=token_a)
    unknown = service.api("GET", "/v1/links/AAAAAAAAAAAAAAAAAAAAAAAA", token=token_a)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["message"].replace(form["link"], "X") == unknown.json()["message"].replace(
        "AAAAAAAAAAAAAAAAAAAAAAAA", "X")


def test_a_lost_completion_mark_is_recovered_from_the_account(service, identity):
    """The mark is written after the commit and may be lost (storage failed right then); the account row then
    decides, and a claim whose sign-in never committed stays unverified."""
    user = identity.add_user("kim@contoso.com")
    form = service.form().json()
    returned = service.sign_in(form["url"], user).returned
    row = table("links").get_entity(form["link"], "")
    assert row["state"] == "new" and row["expiresAt"] >= utcnow() + timedelta(hours=23)  # kept for the app's check
    for name in ("completedAt", "state", "app"):
        del row[name]
    table("links").upsert_entity(row, mode="replace")
    body = service.api("GET", f"/v1/links/{form['link']}").json()
    assert (body["account"], body["state"], body["app"]) == (returned["account"], "new", service.app.id)
    assert "completedAt" not in body

    # A claim for an account that was never written (a sign-in that died between claim and commit).
    row["PartitionKey"], row["account"] = "D" * 24, "never-written"
    table("links").create_entity(row)
    assert service.api("GET", "/v1/links/" + "D" * 24).status_code == 404
    # ...or for an existing account, claimed well after the account's last write (a later sign-in that died).
    row["PartitionKey"], row["account"], row["usedAt"] = "E" * 24, returned["account"], utcnow() + timedelta(hours=1)
    table("links").create_entity(row)
    assert service.api("GET", "/v1/links/" + "E" * 24).status_code == 404


@pytest.mark.parametrize("link, status", [
    ("short", 400), ("x" * 65, 400), ("has%20space", 400), ("a.b.c.d.e.f.g.h.i.j", 400),
    ("Zm9vYmFyYmF6cXV4cXV1eA", 404),
])
def test_link_ids_are_validated(service, link, status):
    response = service.api("GET", f"/v1/links/{link}")
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["field"] == "link"


def test_the_route_needs_an_api_token(service):
    assert service.api("GET", "/v1/links/Zm9vYmFyYmF6cXV4cXV1eA", token=False).status_code == 401
