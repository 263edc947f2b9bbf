"""Checks of ../shared/DESIGN.md's invariants 1-5 over what is stored, shared by ``tests/test_races.py``
(real concurrency) and ``tests/test_faults.py`` (injected failures), plus the sign-in helpers both drive.

The account row is the truth (invariant 4). An account is **whole** when its credential row, its
(credential, account) index row and the credential's secret exist; then its token hand-off answers 200.
Around it:

* an index row whose account is gone or points at another credential is a *leftover*: harmless to readers
  (they check that the account points back) but it keeps its credential alive;
* a credential row that no account points at, and a refresh-token secret (``rt-<credential>``) without a
  credential row, are unreachable (*orphans*): a stored refresh token nobody can use or delete;
* a used-link row (``links``) names the account its link produced: one whose account does not exist is a
  *dead claim* (the link refuses to work, though it produced nothing);
* no flow row at all: a pending sign-in lives in the browser (``shared.signin.flowstate``, issue 14 point 2); the
  ``flows`` table is kept only so that older deployments' rows are visible here.

``check_consistency`` is the race tests' check (it tolerates the documented degraded accounts);
``survey`` + ``problems`` is the strict, exhaustive one for runs without concurrency.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.storage.secrets.base import SecretNotFound
from shared.storage.secrets.factory import get_secret_store
from shared.storage.tables.client import table
from shared.storage.tables.principals import SECRET_PREFIX as PRINCIPAL_SECRET_PREFIX
from tests.service import APP_REDIRECT, Browser, query

SECRET_PREFIX = PRINCIPAL_SECRET_PREFIX  # the names principals.secret_name gives


# --- sign-in helpers ----------------------------------------------------------------------------------------

@dataclass
class Pending:
    """A sign-in stopped at Microsoft's redirect back to the service."""

    browser: Browser
    callback: str


def prepare(service, link: str, user) -> Pending:
    """Open the link and sign in at Microsoft as ``user`` in a new browser; do not follow the callback yet."""
    browser = Browser()
    service.identity.sign_in_as(user)
    start = browser.get(link, allow_redirects=False, timeout=30)
    assert start.status_code == 302, start.text
    authorize = browser.get(start.headers["Location"], allow_redirects=False, timeout=30,
                            verify=service.identity.ca_bundle)
    assert authorize.status_code == 302, authorize.text
    return Pending(browser, authorize.headers["Location"])


def back_at_app(response) -> dict[str, str]:
    """The query the app receives; the response must be the redirect to its redirectUrl."""
    location = response.headers.get("Location", "")
    assert response.status_code == 302 and location.startswith(APP_REDIRECT + "?"), \
        (response.status_code, location, response.text[:300])
    return {k: v for k, v in query(location).items() if k != "link"}  # the link id: test_return_verification.py


# --- rows ---------------------------------------------------------------------------------------------------

def account_rows() -> list[dict]:
    return list(table("accounts").query_entities("RowKey eq ''"))  # not the event rows


def index_rows() -> list[tuple[str, str]]:
    return [(r["PartitionKey"], r["accountId"])
            for r in table("principals").query_entities("RowKey ne 'credential'")]


def stored_refresh_token(credential: Any) -> str:
    """The refresh token a credential row refers to, in either ``MC_SECRET_MODE`` form (``shared.storage.sealed``)."""
    from shared.settings import get_settings
    from shared.storage.sealed import get_secret
    from shared.storage.tables.principals import refresh_aad

    return get_secret(get_settings(), secret_name=credential.secretName, sealed=credential.sealedRefreshToken,
                      aad=refresh_aad(credential.credentialId))


def stored_client_secret(app: Any) -> str:
    """The client secret an OAuth app row refers to, in either ``MC_SECRET_MODE`` form."""
    from shared.core.apps import client_secret_aad
    from shared.settings import get_settings
    from shared.storage.sealed import get_secret

    return get_secret(get_settings(), secret_name=app.secretName, sealed=app.sealedClientSecret,
                      aad=client_secret_aad(app.id))


def expire_access_tokens(*, new_process: bool = False) -> None:
    """As if every access token had run out: this process's cache and the one every instance shares on the
    credential rows (``shared.handoff.tokens``) are emptied, so the next hand-off redeems the refresh token.
    ``new_process``: this process also forgets what else it remembers (failures, claims it abandoned)."""
    from azure.data.tables import UpdateMode

    from shared.handoff.tokens import forget_access_tokens, reset_token_cache

    (reset_token_cache if new_process else forget_access_tokens)()
    client = table("principals")
    for row in client.query_entities("RowKey eq 'credential'", select=["PartitionKey", "RowKey"]):
        client.update_entity({"PartitionKey": row["PartitionKey"], "RowKey": "credential", "accessTokens": "{}"},
                             mode=UpdateMode.MERGE)


def credential_rows() -> dict[str, dict]:
    return {r["PartitionKey"]: r for r in table("principals").query_entities("RowKey eq 'credential'")}


def has_refresh_token(row: dict) -> bool:
    """The credential row holds its refresh token sealed (envelope mode) or names a secret that exists."""
    return bool(row.get("sealedRefreshToken")) or (bool(row.get("secretName")) and secret_exists(row["secretName"]))


def secret_exists(name: str) -> bool:
    try:
        get_secret_store().get(name)
        return True
    except SecretNotFound:
        return False


# --- the race tests' check ----------------------------------------------------------------------------------

@dataclass
class Consistency:
    whole: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    leftover_index_rows: list[tuple[str, str]] = field(default_factory=list)
    unused_credentials: list[str] = field(default_factory=list)


def check_consistency(service) -> Consistency:
    """Every account is whole and answers 200, or degraded (the documented narrow race of a delete or re-bind
    with a sign-in of the same credential) and answers 403 ``OauthRenewError``, never a 5xx or a
    token; leftovers are counted, not asserted (the callers decide)."""
    found = Consistency()
    expire_access_tokens()  # the next hand-off must read the credential (a cached access token hides nothing)
    index = set(index_rows())
    creds = credential_rows()
    rows = account_rows()
    for row in rows:
        account, cred = row["PartitionKey"], row["credentialId"]
        whole = cred in creds and (cred, account) in index and has_refresh_token(creds[cred])
        answer = service.api("GET", f"/v1/account/{account}/oauth-token")
        if whole:
            assert answer.status_code == 200, (account, answer.status_code, answer.text)
            found.whole.append(account)
        else:
            assert answer.status_code == 403 and answer.json()["code"] == "OauthRenewError", \
                (account, cred in creds, (cred, account) in index, answer.status_code, answer.text)
            found.degraded.append(account)
    by_account = {row["PartitionKey"]: row["credentialId"] for row in rows}
    for cred, account in index:
        if by_account.get(account) != cred:
            found.leftover_index_rows.append((cred, account))
    found.unused_credentials = [c for c in creds if not any(i[0] == c for i in index)]
    return found


# --- the strict survey ----------------------------------------------------------------------------------------

@dataclass
class Survey:
    """Everything the sign-in and the hand-off store, read in one go."""

    accounts: dict[str, dict]  # account id -> row
    index: set[tuple[str, str]]  # (credential, account)
    credentials: dict[str, dict]  # credential id -> row
    secrets: set[str]  # names of stored refresh tokens (rt-*)
    flows: dict[str, dict]  # (PartitionKey, RowKey) -> row of the retired flows table: none is ever written
    links: dict[str, dict]  # nonce -> row
    added_events: Counter  # account id -> accountAdded event rows (delivered ones are deleted; none here)


def survey(keyvault: Any = None) -> Survey:
    """Read every table of the test (and the secret names: from the Key Vault fake when given, else the local
    store's table)."""
    accounts: dict[str, dict] = {}
    added: Counter = Counter()
    for row in table("accounts").list_entities():
        if row["RowKey"] == "":
            accounts[row["PartitionKey"]] = dict(row)
        elif row.get("event") == "accountAdded":
            added[row["PartitionKey"]] += 1
    if keyvault is not None:
        with keyvault.lock:
            names = {name for name, versions in keyvault.secrets.items() if versions}
    else:
        names = {row["PartitionKey"] for row in table("secrets").list_entities()}
    return Survey(
        accounts=accounts,
        index=set(index_rows()),
        credentials=credential_rows(),
        secrets={n for n in names if n.startswith(SECRET_PREFIX)},
        flows={f"{row['PartitionKey']}/{row['RowKey']}": dict(row) for row in table("flows").list_entities()},
        links={row["PartitionKey"]: dict(row) for row in table("links").list_entities()},
        added_events=added,
    )


def problems(found: Survey, *, dead_claims_allowed: bool = False) -> list[str]:
    """Every breach of invariants 1-4 in ``found``, as readable lines (empty: consistent and clean).

    Also: any flow row (``GET /accounts/new`` writes none since issue 14 point 2).
    """
    out: list[str] = [f"flow row {key[:8]}.. stored (a pending sign-in lives in its cookie)" for key in found.flows]
    for account, row in found.accounts.items():
        cred = row["credentialId"]
        sealed = bool(found.credentials.get(cred, {}).get("sealedRefreshToken"))  # envelope mode: on the row
        missing = [what for what, ok in (("credential row", cred in found.credentials),
                                          ("index row", (cred, account) in found.index),
                                          ("secret", sealed or f"{SECRET_PREFIX}{cred}" in found.secrets)) if not ok]
        if missing:
            out.append(f"account {account} is not whole: no {', no '.join(missing)} (invariant 4)")
        if found.added_events[account] > 1:
            out.append(f"account {account} was added {found.added_events[account]} times (invariant 1)")
    live = {(row["credentialId"], account) for account, row in found.accounts.items()}
    for cred, account in sorted(found.index - live):
        out.append(f"index row ({cred[:8]}.., {account}) without an account pointing at it (invariant 2)")
    used = {cred for cred, _ in live}
    for cred in sorted(set(found.credentials) - used):
        out.append(f"credential row {cred[:8]}.. that no account uses (invariant 2)")
    for name in sorted(found.secrets - {f"{SECRET_PREFIX}{c}" for c in found.credentials}):
        out.append(f"secret {name[:11]}.. without a credential row (invariant 4)")
    for nonce, row in found.links.items():
        if row.get("account") not in found.accounts and not dead_claims_allowed:
            out.append(f"link nonce {nonce[:8]}.. claimed for account {row.get('account')}, which does not exist "
                       "(the link is refused from now on; invariant 3)")
    return out


def refresh_tokens_in_tables(identity, prefix: str) -> list[str]:
    """Invariant 5: where an issued refresh token (or a 24-character slice of it) appears in any row of the
    test's tables (the local store's ``secrets`` table holds only ciphertext)."""
    from shared.settings import get_settings
    from shared.storage.tables.client import _service

    with identity._lock:
        slices = [token[3:27] for token in identity._refresh_tokens]
    service = _service(get_settings())
    hits = []
    for props in service.query_tables("TableName ge @lo and TableName lt @hi",
                                      parameters={"lo": prefix, "hi": prefix + "~"}):
        for row in service.get_table_client(props.name).list_entities():
            text = repr(dict(row))
            if any(s in text for s in slices):
                hits.append(f"{props.name}/{row['PartitionKey']}/{row['RowKey']}")
    return hits


def whole_and_working(service, account: str) -> str | None:
    """None when the account's hand-off answers 200 (after dropping cached access tokens), else why not."""
    expire_access_tokens()
    answer = service.api("GET", f"/v1/account/{account}/oauth-token")
    if answer.status_code != 200:
        return f"token hand-off of {account}: {answer.status_code} {answer.text[:200]}"
    return None
