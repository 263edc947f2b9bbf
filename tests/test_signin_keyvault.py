"""The sign-in with Key Vault as the secret store: the real SDK client against the Key Vault fake."""

from __future__ import annotations

import pytest

from shared.signin.flow import credential_id
from shared.storage.tables import principals
from shared.storage.tables.client import table
from tests.service import query, session


@pytest.fixture
def service_env(keyvault):
    return {"MC_KEY_VAULT_URL": keyvault.url, "MC_LOCAL_SECRET_KEY": None}


def test_refresh_tokens_go_to_key_vault_once_per_signer(service, identity, keyvault):
    user = identity.add_user("olga@contoso.com")
    for body in ({"email": "a@contoso.com", "delegated": True}, {"email": "b@contoso.com", "delegated": True}, {}):
        assert service.sign_in(service.link(**body), user).result["state"] == "new"
    cred = credential_id(service.app.id, user.tid, user.oid)
    name = principals.secret_name(cred)
    assert sorted(keyvault.secrets) == sorted([service.app.secretName, name])
    assert keyvault.current(name)["value"]
    assert len(principals.account_ids(cred)) == 3
    assert list(table("secrets").list_entities()) == []  # nothing in the local store


def test_key_vault_throttling_at_the_callback_leaves_the_link_retryable(service, identity, keyvault):
    user = identity.add_user("pia@contoso.com")
    link = service.link()
    browser = session()
    identity.sign_in_as(user)
    start = browser.get(link, allow_redirects=False)
    callback = browser.get(start.headers["Location"], allow_redirects=False,
                           verify=identity.ca_bundle).headers["Location"]
    keyvault.throttle_next(20, retry_after=30)  # longer than the store may wait: it gives up at once
    failed = query(browser.get(callback, allow_redirects=False).headers["Location"])
    assert failed["error"] == "temporarily_unavailable"
    assert list(table("accounts").list_entities()) == [] and list(table("links").list_entities()) == []
    keyvault.throttle_next(0)
    assert service.sign_in(link, user).result["state"] == "new"


def test_key_vault_throttling_at_the_start_shows_a_retry_page(service, identity, keyvault):
    identity.add_user("quinn@contoso.com")
    link = service.link()
    keyvault.throttle_next(20, retry_after=30)
    page = session().get(link, allow_redirects=False)
    assert page.status_code == 503 and "Try again" in page.text
    assert list(table("flows").list_entities()) == []
