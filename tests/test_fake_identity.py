"""The Entra fake, driven by the real MSAL Python client: if MSAL is happy with it, the service's tests of
sign-in and token refresh exercise the same requests they will send to Microsoft.

Several tests also pin down MSAL behaviour the service relies on (what it checks in an id_token, how it
caches errors), so a MSAL upgrade that changes it fails here first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import msal
import pytest
import requests

from sandbox.fakes.identity import CONSUMERS_TENANT_ID, REMOVE, FakeIdentity, FakeUser

IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"
SMTP = "https://outlook.office.com/SMTP.Send"
REDIRECT = "https://app.example.test/oauth"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"

# MSAL warns on every initiate_auth_code_flow without response_mode="form_post"; the service's design uses
# a GET redirect (query), which Entra and MSAL both support.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
SECRET = "s3cret~value"


@pytest.fixture
def fake() -> Iterator[FakeIdentity]:
    with FakeIdentity() as identity:
        identity.add_client(CLIENT_ID, SECRET, [REDIRECT])
        yield identity


@pytest.fixture
def alice(fake: FakeIdentity) -> FakeUser:
    user = fake.add_user("alice@contoso.example", name="Alice Example", email="alice@contoso.example")
    fake.sign_in_as(user)
    return user


def session(fake: FakeIdentity) -> requests.Session:
    """The machine exports REQUESTS_CA_BUNDLE, which beats ``verify`` unless the session ignores the env."""
    s = requests.Session()
    s.trust_env = False
    s.verify = fake.ca_bundle
    return s


def make_app(fake: FakeIdentity, tenant: str = "common", secret: str = SECRET, client_id: str = CLIENT_ID,
             **kwargs: Any) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id, client_credential=secret, authority=fake.authority(tenant),
        instance_discovery=False, http_client=session(fake), **kwargs,
    )


def browse(fake: FakeIdentity, url: str) -> requests.Response:
    return session(fake).get(url, allow_redirects=False)


def params_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def start_flow(fake: FakeIdentity, app: msal.ClientApplication, scopes: list[str] | None = None,
               **kwargs: Any) -> tuple[dict, dict[str, str]]:
    """Run the browser leg: MSAL builds the authorize URL, the fake answers with a redirect."""
    flow = app.initiate_auth_code_flow(scopes or [IMAP], redirect_uri=REDIRECT, **kwargs)
    response = browse(fake, flow["auth_uri"])
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return flow, params_of(location)


def sign_in(fake: FakeIdentity, app: msal.ClientApplication, scopes: list[str] | None = None,
            **kwargs: Any) -> dict[str, Any]:
    flow, params = start_flow(fake, app, scopes, **kwargs)
    return app.acquire_token_by_auth_code_flow(flow, params)


# ---------------------------------------------------------------------- discovery
def test_discovery_common_shows_tenantid_placeholder(fake: FakeIdentity) -> None:
    config = browse(fake, f"{fake.url}/common/v2.0/.well-known/openid-configuration").json()
    assert config["issuer"] == f"{fake.url}/{{tenantid}}/v2.0"
    assert config["authorization_endpoint"] == f"{fake.url}/common/oauth2/v2.0/authorize"
    assert config["token_endpoint"] == f"{fake.url}/common/oauth2/v2.0/token"
    assert config["jwks_uri"] == f"{fake.url}/common/discovery/v2.0/keys"
    assert config["end_session_endpoint"] == f"{fake.url}/common/oauth2/v2.0/logout"


def test_discovery_tenant_and_consumers(fake: FakeIdentity) -> None:
    config = browse(fake, f"{fake.url}/{fake.tenant_id}/v2.0/.well-known/openid-configuration").json()
    assert config["issuer"] == f"{fake.url}/{fake.tenant_id}/v2.0"
    assert config["token_endpoint"] == f"{fake.url}/{fake.tenant_id}/oauth2/v2.0/token"
    consumers = browse(fake, f"{fake.url}/consumers/v2.0/.well-known/openid-configuration").json()
    assert consumers["issuer"] == f"{fake.url}/{CONSUMERS_TENANT_ID}/v2.0"


def test_unknown_tenant_is_rejected_and_msal_raises(fake: FakeIdentity) -> None:
    response = browse(fake, f"{fake.url}/not-a-tenant/v2.0/.well-known/openid-configuration")
    assert response.status_code == 400 and response.json()["error"] == "invalid_tenant"
    with pytest.raises(ValueError):
        make_app(fake, tenant="not-a-tenant")


def test_discovery_failure_injection(fake: FakeIdentity) -> None:
    fake.fail_next("discovery", "temporarily_unavailable", status=503)
    with pytest.raises(msal.exceptions.MsalServiceError, match="503"):  # a 5xx is transient: not ValueError
        make_app(fake)
    make_app(fake)  # the next one works


# ---------------------------------------------------------------------- sign-in
def test_msal_auth_code_flow_on_common(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    flow, params = start_flow(fake, app, prompt="select_account", domain_hint="contoso.example")
    assert set(params) >= {"code", "state", "session_state", "client_info"}  # MSAL asks client_info=1
    assert params["state"] == flow["state"]

    sent = fake.last_authorize
    assert sent is not None
    assert sent["prompt"] == "select_account" and sent["domain_hint"] == "contoso.example"
    assert "login_hint" not in sent
    assert sent["code_challenge_method"] == "S256"
    assert set(sent["scope"].split()) == {IMAP, "openid", "profile", "offline_access"}

    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "error" not in result, result
    assert result["access_token"] and result["refresh_token"] and result["id_token"]
    assert result["scope"] == IMAP  # openid/profile/offline_access are not echoed
    assert result["token_type"] == "Bearer" and result["expires_in"] == 3600 and result["ext_expires_in"] == 3600
    claims = result["id_token_claims"]
    assert claims["oid"] == alice.oid and claims["tid"] == alice.tid == fake.tenant_id
    assert claims["preferred_username"] == alice.upn and claims["name"] == "Alice Example"
    assert claims["email"] == "alice@contoso.example"
    assert claims["aud"] == CLIENT_ID and claims["ver"] == "2.0"
    assert claims["iss"] == f"{fake.url}/{alice.tid}/v2.0"
    assert claims["exp"] > claims["iat"] and claims["nbf"] <= time.time() + 5

    (request,) = fake.token_requests
    assert request["grant_type"] == "authorization_code" and request["client_id"] == CLIENT_ID
    assert request["client_auth"] == "post" and request["status"] == 200
    assert "client_secret" not in request and "code" not in request


def test_msal_auth_code_flow_on_tenant_authority(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake, tenant=fake.tenant_id)
    result = sign_in(fake, app, [IMAP, SMTP])
    assert "error" not in result, result
    assert result["id_token_claims"]["tid"] == fake.tenant_id
    assert set(result["scope"].split()) == {IMAP, SMTP}
    assert fake.token_requests[0]["tenant"] == fake.tenant_id


def test_login_hint_and_selected_user(fake: FakeIdentity, alice: FakeUser) -> None:
    bob = fake.add_user("bob@contoso.example")
    fake.sign_in_as(bob)
    app = make_app(fake)
    result = sign_in(fake, app, login_hint="shared@contoso.example")
    # Like the real account picker, the hint does not decide who signs in.
    assert result["id_token_claims"]["oid"] == bob.oid
    assert "email" not in result["id_token_claims"]
    assert fake.last_authorize["login_hint"] == "shared@contoso.example"


def test_id_token_is_signed_with_published_key(fake: FakeIdentity, alice: FakeUser) -> None:
    result = sign_in(fake, make_app(fake))
    jwks = browse(fake, f"{fake.url}/common/discovery/v2.0/keys").json()
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(result["id_token"], key.key, algorithms=["RS256"], audience=CLIENT_ID,
                        issuer=f"{fake.url}/{alice.tid}/v2.0")
    assert claims["oid"] == alice.oid
    at = fake.lookup_access_token(result["access_token"])
    assert at is not None and at["aud"] == "https://outlook.office.com" and at["scp"] == "IMAP.AccessAsUser.All"
    assert fake.decode(result["access_token"])["oid"] == alice.oid


def test_sub_is_pairwise_per_app(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.add_client("other-app", "x", [REDIRECT])
    one = sign_in(fake, make_app(fake))["id_token_claims"]
    two = sign_in(fake, make_app(fake, client_id="other-app", secret="x"))["id_token_claims"]
    assert one["oid"] == two["oid"] and one["sub"] != two["sub"]


def test_without_offline_access_no_refresh_token(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake, exclude_scopes=["offline_access"])
    result = sign_in(fake, app)
    assert "access_token" in result and "refresh_token" not in result


def test_form_post_response_mode(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    flow = app.initiate_auth_code_flow([IMAP], redirect_uri=REDIRECT, response_mode="form_post")
    page = browse(fake, flow["auth_uri"])
    assert page.status_code == 200 and f"action='{REDIRECT}'" in page.text and "name='code'" in page.text


# ---------------------------------------------------------------------- refresh
def test_refresh_token_rotates_and_old_stays_valid(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    first = sign_in(fake, app)
    second = app.acquire_token_by_refresh_token(first["refresh_token"], [IMAP])
    assert "error" not in second, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["id_token_claims"]["oid"] == alice.oid and "nonce" not in second["id_token_claims"]
    again = make_app(fake).acquire_token_by_refresh_token(first["refresh_token"], [IMAP])
    assert "access_token" in again  # Entra keeps the old refresh token valid
    assert [r["grant_type"] for r in fake.token_requests] == ["authorization_code", "refresh_token", "refresh_token"]


def test_refresh_for_other_resource_needs_consent(fake: FakeIdentity, alice: FakeUser) -> None:
    first = sign_in(fake, make_app(fake))
    result = make_app(fake).acquire_token_by_refresh_token(first["refresh_token"], ["Mail.ReadWrite"])
    assert result["error"] == "invalid_grant" and result["suberror"] == "consent_required"
    assert result["error_description"].startswith("AADSTS65001:")
    default = make_app(fake).acquire_token_by_refresh_token(
        first["refresh_token"], ["https://outlook.office.com/.default"])
    assert default["scope"] == IMAP


def test_two_resources_in_one_token_request_are_refused(fake: FakeIdentity, alice: FakeUser) -> None:
    result = sign_in(fake, make_app(fake), [IMAP, "https://graph.microsoft.com/Mail.Read"])
    assert result["error"] == "invalid_scope" and result["error_codes"] == [28000]


def test_issue_refresh_token_seeds_a_credential(fake: FakeIdentity, alice: FakeUser) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP, SMTP, "offline_access"])
    result = make_app(fake).acquire_token_by_refresh_token(rt, [SMTP])
    assert result["scope"] == SMTP and result["id_token_claims"]["oid"] == alice.oid


def test_revoke_user_and_single_token(fake: FakeIdentity, alice: FakeUser) -> None:
    rt1 = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    rt2 = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    fake.revoke(rt1)
    revoked = make_app(fake).acquire_token_by_refresh_token(rt1, [IMAP])
    assert revoked["error"] == "invalid_grant" and revoked["error_codes"] == [50173]
    assert "access_token" in make_app(fake).acquire_token_by_refresh_token(rt2, [IMAP])
    fake.revoke(alice)
    assert make_app(fake).acquire_token_by_refresh_token(rt2, [IMAP])["error"] == "invalid_grant"
    rt3 = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])  # tokens issued after a revoke work
    assert "access_token" in make_app(fake).acquire_token_by_refresh_token(rt3, [IMAP])
    fake.revoke(rt3, reason="expired")
    assert make_app(fake).acquire_token_by_refresh_token(rt3, [IMAP])["error_codes"] == [700082]


def test_password_reset_until_next_sign_in(fake: FakeIdentity, alice: FakeUser) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    alice.password_reset = True
    result = make_app(fake).acquire_token_by_refresh_token(rt, [IMAP])
    assert result["error"] == "invalid_grant" and "reset their password" in result["error_description"]
    fresh = sign_in(fake, make_app(fake))
    assert "access_token" in make_app(fake).acquire_token_by_refresh_token(fresh["refresh_token"], [IMAP])


def test_refresh_token_inactivity_expiry_uses_clock(fake: FakeIdentity, alice: FakeUser) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    fake.clock = lambda: time.time() + 91 * 24 * 3600
    assert make_app(fake).acquire_token_by_refresh_token(rt, [IMAP])["error_codes"] == [700082]


# ---------------------------------------------------------------------- errors
def test_access_denied_on_authorize(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.fail_next("authorize", "access_denied")
    app = make_app(fake)
    flow, params = start_flow(fake, app)
    assert params["error"] == "access_denied" and params["state"] == flow["state"]
    assert "code" not in params
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "access_denied" and result["error_description"].startswith("AADSTS65004:")
    assert fake.token_requests == []  # MSAL never called the token endpoint
    start_flow(fake, app)  # count=1: the next sign-in works


def test_invalid_grant_injected_on_token(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.fail_next("token", "invalid_grant", "AADSTS70008: The provided authorization code or refresh token "
                                             "has expired due to inactivity.")
    result = sign_in(fake, make_app(fake))
    assert result["error"] == "invalid_grant" and result["error_codes"] == [70008]
    assert {"timestamp", "trace_id", "correlation_id"} <= set(result)
    assert fake.token_requests[-1]["status"] == 400


@pytest.mark.parametrize("error", ["interaction_required", "consent_required"])
def test_other_oauth_errors_injected(fake: FakeIdentity, alice: FakeUser, error: str) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    fake.fail_next("token", error)
    assert make_app(fake).acquire_token_by_refresh_token(rt, [IMAP])["error"] == error


def test_server_errors_raise_in_msal(fake: FakeIdentity, alice: FakeUser) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    fake.fail_next("token", "temporarily_unavailable")
    with pytest.raises(msal.exceptions.MsalServiceError):  # 5xx: MSAL raises, it returns no dict
        make_app(fake).acquire_token_by_refresh_token(rt, [IMAP])
    assert fake.token_requests[-1]["status"] == 503


def test_msal_caches_errors_per_app_instance(fake: FakeIdentity, alice: FakeUser) -> None:
    """MSAL replays an HTTP 400 for an identical token request for 60 s (and a 5xx for Retry-After, default
    5 s) without calling Microsoft: a retry must use a fresh app or wait."""
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    app = make_app(fake)
    fake.fail_next("token", "invalid_grant")
    assert app.acquire_token_by_refresh_token(rt, [IMAP])["error"] == "invalid_grant"
    assert app.acquire_token_by_refresh_token(rt, [IMAP])["error"] == "invalid_grant"  # replayed by MSAL
    assert len(fake.token_requests) == 1
    assert "access_token" in make_app(fake).acquire_token_by_refresh_token(rt, [IMAP])


def test_unknown_client_and_wrong_secret(fake: FakeIdentity, alice: FakeUser) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    wrong = make_app(fake, secret="nope").acquire_token_by_refresh_token(rt, [IMAP])
    assert wrong["error"] == "invalid_client" and wrong["error_codes"] == [7000215]
    unknown = make_app(fake, client_id="unknown").acquire_token_by_refresh_token(rt, [IMAP])
    assert unknown["error"] == "invalid_client"
    assert [r["status"] for r in fake.token_requests] == [401, 401]


def test_basic_client_auth_accepted(fake: FakeIdentity, alice: FakeUser) -> None:
    rt = fake.issue_refresh_token(alice, CLIENT_ID, [IMAP])
    response = session(fake).post(
        f"{fake.url}/common/oauth2/v2.0/token", auth=(CLIENT_ID, SECRET),
        data={"grant_type": "refresh_token", "refresh_token": rt, "scope": f"{IMAP} offline_access"},
    )
    assert response.status_code == 200 and response.headers["Cache-Control"].startswith("no-store")
    assert fake.token_requests[-1]["client_auth"] == "basic"


def test_pkce_verifier_mismatch_rejected(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    flow, params = start_flow(fake, app)
    flow["code_verifier"] = "x" * 43
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "invalid_grant" and result["error_codes"] == [501481]


def test_code_is_single_use(fake: FakeIdentity, alice: FakeUser) -> None:
    flow, params = start_flow(fake, make_app(fake))
    assert "access_token" in make_app(fake).acquire_token_by_auth_code_flow(dict(flow), params)
    again = make_app(fake).acquire_token_by_auth_code_flow(dict(flow), params)
    assert again["error"] == "invalid_grant" and again["error_codes"] == [54005]


def test_code_expires(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    flow, params = start_flow(fake, app)
    fake.clock = lambda: time.time() + 601
    assert app.acquire_token_by_auth_code_flow(flow, params)["error_codes"] == [70008]


def test_redirect_uri_must_match_on_redemption(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.add_client("loose", "s", None)  # None: any redirect URI is accepted at authorize
    app = make_app(fake, client_id="loose", secret="s")
    flow, params = start_flow(fake, app)
    flow["redirect_uri"] = "https://elsewhere.example/oauth"
    assert app.acquire_token_by_auth_code_flow(flow, params)["error_codes"] == [500112]


def test_bad_authorize_requests_get_an_error_page(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    flow = app.initiate_auth_code_flow([IMAP], redirect_uri="https://evil.example/cb")
    page = browse(fake, flow["auth_uri"])
    assert page.status_code == 400 and "Location" not in page.headers and "AADSTS50011" in page.text

    stranger = make_app(fake, client_id="ghost")
    flow = stranger.initiate_auth_code_flow([IMAP], redirect_uri=REDIRECT)
    page = browse(fake, flow["auth_uri"])
    assert page.status_code == 400 and "Location" not in page.headers and "AADSTS700016" in page.text
    assert fake.last_authorize["client_id"] == "ghost"


def test_authorize_without_pkce_is_redirected_with_error(fake: FakeIdentity, alice: FakeUser) -> None:
    url = (f"{fake.url}/common/oauth2/v2.0/authorize?client_id={CLIENT_ID}&response_type=code"
           f"&redirect_uri={REDIRECT}&scope=openid&state=abc&nonce=n")
    response = browse(fake, url)
    assert response.status_code == 302
    error = params_of(response.headers["Location"])
    assert error["error"] == "invalid_request" and error["state"] == "abc" and "code" not in error
    plain = browse(fake, url + "&code_challenge=abc&code_challenge_method=plain")
    assert params_of(plain.headers["Location"])["error"] == "invalid_request"


def test_user_from_other_tenant_cannot_sign_in_to_single_tenant_authority(
        fake: FakeIdentity, alice: FakeUser) -> None:
    outsider = fake.add_user("eve@fabrikam.example", tid="0f0f0f0f-0000-4000-8000-000000000000")
    fake.sign_in_as(outsider)
    flow = make_app(fake, tenant=fake.tenant_id).initiate_auth_code_flow([IMAP], redirect_uri=REDIRECT)
    page = browse(fake, flow["auth_uri"])
    assert page.status_code == 400 and "AADSTS50020" in page.text
    # ... while /common signs them in with their own tenant in tid and iss.
    claims = sign_in(fake, make_app(fake))["id_token_claims"]
    assert claims["tid"] == outsider.tid and claims["iss"] == f"{fake.url}/{outsider.tid}/v2.0"


def test_personal_accounts_only_on_consumers_and_common(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.add_client("public-app", None, [REDIRECT])  # no secret: a public client
    msa = fake.add_user("someone@outlook.example", tid=CONSUMERS_TENANT_ID)
    fake.sign_in_as(msa)
    app = msal.PublicClientApplication("public-app", authority=fake.authority("consumers"),
                                       instance_discovery=False, http_client=session(fake))
    assert sign_in(fake, app)["id_token_claims"]["tid"] == CONSUMERS_TENANT_ID
    flow = make_app(fake, tenant="organizations").initiate_auth_code_flow([IMAP], redirect_uri=REDIRECT)
    assert browse(fake, flow["auth_uri"]).status_code == 400


def test_authorize_outage_page(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.fail_next("authorize", "server_error", status=503)
    flow = make_app(fake).initiate_auth_code_flow([IMAP], redirect_uri=REDIRECT)
    page = browse(fake, flow["auth_uri"])
    assert page.status_code == 503 and "Location" not in page.headers


def test_domain_name_authority_resolves_to_tenant(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake, tenant="contoso.example")
    assert sign_in(fake, app)["id_token_claims"]["tid"] == alice.tid


# ---------------------------------------------------------------------- claims
def test_wrong_claims_pass_through_msal_unchecked(fake: FakeIdentity, alice: FakeUser) -> None:
    """MSAL 1.39 does not validate aud, iss, tid or exp: the service has to."""
    past = int(time.time()) - 3600
    fake.wrong_claims_next(aud="other", iss="https://evil.example/x/v2.0", tid="bad", exp=past, email=REMOVE)
    result = sign_in(fake, make_app(fake))
    assert "error" not in result, result
    claims = result["id_token_claims"]
    assert (claims["aud"], claims["iss"], claims["tid"], claims["exp"]) == (
        "other", "https://evil.example/x/v2.0", "bad", past)
    assert "email" not in claims
    assert sign_in(fake, make_app(fake))["id_token_claims"]["aud"] == CLIENT_ID  # one-shot


def test_wrong_nonce_makes_msal_raise(fake: FakeIdentity, alice: FakeUser) -> None:
    fake.wrong_claims_next(nonce="replayed")
    with pytest.raises(RuntimeError, match="nonce"):
        sign_in(fake, make_app(fake))


def test_state_mismatch_makes_msal_raise(fake: FakeIdentity, alice: FakeUser) -> None:
    app = make_app(fake)
    flow, params = start_flow(fake, app)
    with pytest.raises(ValueError, match="state mismatch"):
        app.acquire_token_by_auth_code_flow(flow, dict(params, state="forged"))


# ---------------------------------------------------------------------- concurrency
def test_concurrent_sign_ins_and_refreshes(fake: FakeIdentity, alice: FakeUser) -> None:
    def one(_: int) -> str:
        app = make_app(fake)
        result = sign_in(fake, app)
        return app.acquire_token_by_refresh_token(result["refresh_token"], [IMAP])["id_token_claims"]["oid"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(one, range(16))) == {alice.oid}
    assert len(fake.token_requests) == 32 and len(fake.authorize_requests) == 16
