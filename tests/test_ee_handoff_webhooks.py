"""EmailEngine-shaped checks of the token hand-off and the webhooks: every statement of the "oauth-token" and
"Webhooks" sections of ``../shared/emailengine-api.md``, driven the way an app written for EmailEngine drives
them (over real HTTP through the local host, real Azurite, the fake Microsoft identity platform, real webhook
receivers on 127.0.0.1). Deliberate differences are asserted as such, with the reason next to them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime

import pytest

from sandbox.fakes.webhooks import Clock
from shared.settings import get_settings
from shared.storage.tables import accounts
from shared.webhooks.dispatcher import Dispatcher
from tests.invariants import expire_access_tokens
from tests.service import connect

EE_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # JavaScript's Date.toISOString()


pytestmark = [pytest.mark.usefixtures("fresh_webhook_caches"), pytest.mark.both_secret_modes]


def oauth_token(service, account: str):
    return service.api("GET", f"/v1/account/{account}/oauth-token")


def register(service, url: str, **body) -> dict:
    response = service.api("POST", "/v1/webhooks", json={"url": url, **body})
    assert response.status_code == 201, response.text
    return response.json()


def deliver(clock: Clock | None = None) -> None:
    Dispatcher(get_settings(), clock=clock or Clock()).run()


def ee_receiver_accepts(secret: str, headers: dict[str, str], raw_body: bytes) -> bool:
    """An EmailEngine receiver, as EmailEngine documents it: HMAC-SHA256 of the raw body with the secret,
    ``digest('base64url')`` (Node: URL-safe alphabet, no padding), equal to ``X-EE-Wh-Signature``."""
    expected = base64.urlsafe_b64encode(hmac.new(secret.encode(), raw_body, hashlib.sha256).digest()).rstrip(b"=")
    return hmac.compare_digest(expected.decode(), headers.get("x-ee-wh-signature", ""))


def documented(service, path: str, method: str, response) -> None:
    """The answer validates against the OpenAPI document's schema for its status."""
    jsonschema = pytest.importorskip("jsonschema")
    document = service.api("GET", "/v1/openapi.json", token=False).json()
    op = document["paths"][path][method]
    schema = op["responses"][str(response.status_code)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(response.json())


# --- GET /v1/account/{account}/oauth-token ------------------------------------------------------------------

def test_the_answer_has_emailengines_fields_beside_the_protocol_blocks(service, identity):
    ada = identity.add_user("ada@contoso.com", email="ada@contoso.com")
    account = connect(service, ada)
    response = oauth_token(service, account)
    assert response.status_code == 200, response.text
    body = response.json()
    # required: account, user, provider
    assert (body["account"], body["user"], body["provider"]) == (account, "ada@contoso.com", "outlook")
    # also: accessToken, app, registeredScopes (array), expires (ISO date-time with milliseconds), cached
    assert isinstance(body["accessToken"], str) and identity.lookup_access_token(body["accessToken"])
    assert body["app"] == service.app.id
    assert isinstance(body["registeredScopes"], list) and body["registeredScopes"]
    assert all(isinstance(s, str) for s in body["registeredScopes"])
    assert EE_DATE.match(body["expires"]), body["expires"]
    expires = datetime.fromisoformat(body["expires"].replace("Z", "+00:00"))
    assert 3000 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    assert body["cached"] is False
    # This service's blocks stay beside them.
    assert body["imap"]["user"] == body["smtp"]["user"] == "ada@contoso.com"
    assert body["graph"]["baseUrl"].endswith("/v1.0/me")
    documented(service, "/v1/account/{account}/oauth-token", "get", response)


def test_cached_is_false_after_a_refresh_and_true_when_served_from_the_cache(service, identity):
    account = connect(service, identity.add_user("ben@contoso.com"))
    first = oauth_token(service, account).json()
    second = oauth_token(service, account).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert (second["accessToken"], second["expires"]) == (first["accessToken"], first["expires"])
    refreshes = sum(1 for r in identity.token_requests if r["grant_type"] == "refresh_token")
    assert refreshes == 1, "the cached answer did not ask Microsoft"
    expire_access_tokens()  # as if the access token had run out
    third = oauth_token(service, account).json()
    assert third["cached"] is False and EE_DATE.match(third["expires"])


def test_user_is_the_principal_also_for_a_shared_mailbox(service, identity):
    cy = identity.add_user("cy@contoso.com", email="cy@contoso.com")
    shared = connect(service, cy, email="support@contoso.com", delegated=True)
    body = oauth_token(service, shared).json()
    assert body["user"] == "cy@contoso.com", "EmailEngine's user: the authenticating principal"
    assert body["account"] == shared and body["provider"] == "outlook"
    # Where the shared mailbox's address is needed, the protocol blocks say it.
    assert body["imap"]["user"] == "support@contoso.com"
    assert (body["smtp"]["user"], body["smtp"]["from"]) == ("cy@contoso.com", "support@contoso.com")
    assert body["graph"]["baseUrl"].endswith("/v1.0/users/support@contoso.com")
    assert identity.lookup_access_token(body["accessToken"])["upn"] == "cy@contoso.com"


def test_a_revoked_refresh_token_answers_403_oauth_renew_error_with_authentication_failed(service, identity):
    dee = identity.add_user("dee@contoso.com")
    account = connect(service, dee)
    identity.revoke(dee)
    response = oauth_token(service, account)
    assert response.status_code == 403, response.text
    body = response.json()
    assert (body["statusCode"], body["error"], body["code"]) == (403, "Forbidden", "OauthRenewError")
    assert body["authenticationFailed"] is True and body["message"]
    # This service's extra fields: Microsoft's error, and the account's new state.
    assert (body["account"], body["state"], body["errorCode"]) == (account, "authenticationError", "invalid_grant")
    assert body["errorDescription"].startswith("AADSTS50173")
    assert "accessToken" not in body
    assert accounts.get_account(account).state == "authenticationError"
    documented(service, "/v1/account/{account}/oauth-token", "get", response)
    again = oauth_token(service, account)  # remembered: the same answer without asking Microsoft again
    assert (again.status_code, again.json()["code"], again.json()["authenticationFailed"]) == \
        (403, "OauthRenewError", True)


def test_microsoft_refusing_the_app_is_oauth_renew_error_without_authentication_failed(service, identity):
    """Decision: EmailEngine answers every failed renewal with 403 OauthRenewError (its clients branch on that
    code); when Microsoft refuses the OAuth app itself (invalid_client, unauthorized_client, ...) a new sign-in
    of the user would not help, so ``authenticationFailed`` is false and the account is not marked."""
    account = connect(service, identity.add_user("eli@contoso.com"))
    identity.fail_next("token", "invalid_client", "AADSTS7000215: Invalid client secret provided.", status=401,
                       count=2)  # the hand-off retries once with the client secret read again
    response = oauth_token(service, account)
    assert response.status_code == 403, response.text
    body = response.json()
    assert (body["code"], body["authenticationFailed"], body["errorCode"]) == \
        ("OauthRenewError", False, "invalid_client")
    assert "state" not in body and accounts.get_account(account).state == "connected"
    documented(service, "/v1/account/{account}/oauth-token", "get", response)
    assert oauth_token(service, account).status_code == 200  # fixed at Microsoft: works at once


def test_the_scope_403_is_told_apart_from_oauth_renew_error(service, identity):
    """Deliberate: a token without the ``api`` scope is a 403 too, but ``code: forbidden``, never
    OauthRenewError, so an app does not send its user to sign in again over its own token."""
    from shared.storage.tables.apitokens import create_token

    account = connect(service, identity.add_user("fay@contoso.com"))
    admin_only, _ = create_token("admin only", ("admin",))
    response = service.api("GET", f"/v1/account/{account}/oauth-token", token=admin_only)
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert "authenticationFailed" not in response.json()


# --- webhooks ---------------------------------------------------------------------------------------------------

def test_a_webhook_is_emailengines_post_signed_as_emailengine_signs_it(service, identity, receiver):
    hook = register(service, receiver.url)
    account = connect(service, identity.add_user("gil@contoso.com"))
    deliver()
    assert receiver.received
    for got in receiver.received:
        body = got.json
        assert {"serviceUrl", "account", "date", "event", "data"} <= set(body)
        assert set(body) - {"serviceUrl", "account", "date", "event", "data"} == {"id"}  # ours: the event id
        assert body["serviceUrl"] == service.url and body["account"] == account
        assert EE_DATE.match(body["date"]) and isinstance(body["data"], dict)
        assert ee_receiver_accepts(hook["secret"], got.headers, got.body), got.headers
        assert not got.headers["x-ee-wh-signature"].endswith("="), "base64url without padding, as Node"
        assert got.headers["x-ee-wh-event-id"] == body["id"] == got.headers["x-mc-event-id"]
        assert got.headers["x-ee-wh-attempts-made"] == "0"
        assert got.headers["x-mc-signature"].startswith("v1=")  # this service's own signature stays
        # What the EmailEngine receiver refuses: another body, another secret.
        assert not ee_receiver_accepts(hook["secret"], got.headers, got.body + b" ")
        assert not ee_receiver_accepts("whsec_another", got.headers, got.body)
    assert len({r.headers["x-ee-wh-event-id"] for r in receiver.received}) == len(receiver.received)


def test_settings_targets_are_signed_with_the_configured_secret(service, identity, receiver, set_env):
    set_env(MC_WEBHOOK_URLS=receiver.url, MC_WEBHOOK_SECRET="configured-secret-0123")
    connect(service, identity.add_user("hal@contoso.com"))
    deliver()
    assert receiver.received
    for got in receiver.received:
        assert ee_receiver_accepts("configured-secret-0123", got.headers, got.body)


def test_a_retry_carries_the_same_event_id_and_signature(service, identity, receiver):
    answers = iter([500])
    receiver.answer = lambda got: next(answers, 200)
    hook = register(service, receiver.url, events=["accountAdded"])
    connect(service, identity.add_user("ivo@contoso.com"))
    clock = Clock()
    deliver(clock)
    clock.advance(minutes=1)
    deliver(clock)
    first, retry = receiver.received
    assert first.body == retry.body and first.headers["x-ee-wh-event-id"] == retry.headers["x-ee-wh-event-id"]
    assert first.headers["x-ee-wh-signature"] == retry.headers["x-ee-wh-signature"]
    assert (first.headers["x-ee-wh-attempts-made"], retry.headers["x-ee-wh-attempts-made"]) == ("0", "1")
    assert ee_receiver_accepts(hook["secret"], retry.headers, retry.body)


def test_account_initialized_follows_account_added_for_a_new_sign_in_only(service, identity, receiver):
    register(service, receiver.url)
    jo = identity.add_user("jo@contoso.com")
    account = connect(service, jo)
    deliver()
    assert receiver.events() == ["accountAdded", "authenticationSuccess", "accountInitialized"]
    added, _, initialized = (r.json for r in receiver.received)
    assert initialized["account"] == added["account"] == account and added["id"] < initialized["id"]
    assert initialized["data"]["initialized"] is True
    assert added["date"] <= initialized["date"]

    receiver.received.clear()
    assert connect(service, jo, account=account) == account  # the same account again: nothing new to initialize
    shared = connect(service, jo, email="team@contoso.com", delegated=True)  # another new account
    deliver()
    by_account: dict[str, list[str]] = {}
    for got in receiver.received:
        by_account.setdefault(got.json["account"], []).append(got.json["event"])
    assert by_account == {account: ["authenticationSuccess"],
                          shared: ["accountAdded", "authenticationSuccess", "accountInitialized"]}


def test_a_webhook_may_subscribe_to_account_initialized_alone(service, identity, receiver):
    hook = register(service, receiver.url, events=["accountInitialized"])
    assert hook["events"] == ["accountInitialized"]
    account = connect(service, identity.add_user("kai@contoso.com"))
    deliver()
    assert receiver.events() == ["accountInitialized"] and receiver.received[0].json["account"] == account
    assert ee_receiver_accepts(hook["secret"], receiver.received[0].headers, receiver.received[0].body)


def test_authentication_error_names_oauth_renew_error_and_keeps_microsofts_code(service, identity, receiver):
    hook = register(service, receiver.url, events=["authenticationError"])
    lu = identity.add_user("lu@contoso.com")
    account = connect(service, lu)
    identity.revoke(lu)
    assert oauth_token(service, account).status_code == 403
    deliver()
    [got] = receiver.received
    body = got.json
    assert body["event"] == "authenticationError" and body["account"] == account
    data = body["data"]
    assert data["serverResponseCode"] == "OauthRenewError", "EmailEngine's classification"
    assert data["errorCode"] == "invalid_grant", "Microsoft's OAuth error, kept beside it"
    assert data["response"].startswith("AADSTS50173")
    assert ee_receiver_accepts(hook["secret"], got.headers, got.body)


def test_the_other_authentication_events_carry_emailengines_names(service, identity, receiver):
    register(service, receiver.url)
    account = connect(service, identity.add_user("max@contoso.com"))
    service.api("DELETE", f"/v1/account/{account}").raise_for_status()
    deliver()
    assert set(receiver.events()) == {"accountAdded", "authenticationSuccess", "accountInitialized", "accountDeleted"}
    assert all(r.json["account"] == account for r in receiver.received)


def readme_verify_ee():
    """The receiver's ``verify_ee`` function exactly as the README shows it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = next(block.split("\n", 1)[1] for block in text.split("```")[1::2]
                if block.startswith("python") and "def verify_ee(" in block)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own README
    return namespace["verify_ee"]


def test_the_readme_emailengine_verification_accepts_real_deliveries_only(service, identity, receiver):
    verify_ee = readme_verify_ee()
    hook = register(service, receiver.url, events=["accountAdded"])
    connect(service, identity.add_user("ned@contoso.com"))
    deliver()
    [got] = receiver.received
    headers = {"X-EE-Wh-Signature": got.headers["x-ee-wh-signature"]}
    assert verify_ee(hook["secret"], headers, got.body)
    assert not verify_ee(hook["secret"], headers, got.body.replace(b"accountAdded", b"accountDeleted"))
    assert not verify_ee("whsec_other", headers, got.body)
    assert not verify_ee(hook["secret"], {}, got.body)


def test_the_emailengine_signature_helpers():
    from shared.webhooks.signature import sign_ee, verify_ee_signature

    body = b'{"event":"accountAdded"}'
    # base64url of the raw HMAC-SHA256, no padding (Node's digest("base64url")).
    digest = hmac.new(b"whsec_k", body, hashlib.sha256).digest()
    assert sign_ee("whsec_k", body) == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert len(sign_ee("whsec_k", body)) == 43 and "=" not in sign_ee("whsec_k", body)
    assert verify_ee_signature("whsec_k", sign_ee("whsec_k", body), body)
    assert verify_ee_signature("whsec_k", sign_ee("whsec_k", body) + "=", body)  # a padded copy is the same
    assert not verify_ee_signature("whsec_k", sign_ee("whsec_k", body), body + b"\n")
    assert not verify_ee_signature("whsec_k", "é" * 43, body)  # no exception on non-ASCII input
    assert not verify_ee_signature("whsec_k", "", body)
