"""The azd postprovision hook (infra/hooks), run offline against fakes.

* the printed next steps (admin CLI commands the CLI accepts; bootstrap requests the API accepts);
* the signing key: created once, never replaced, soft delete recovered;
* sign-in: azd's own login first, then the Azure CLI (fake credential classes);
* RBAC propagation: 403 then success, and 403 until the deadline (fake clock, no sleeping), naming the
  principal that got the 403 and the command that finishes the job;
* private networking: a local HTTPS fake of ARM's Key Vault secrets (trustme CA), the bootstrap hash;
* postprovision.sh itself: its own virtualenv from requirements.txt (pip offline, from wheels repacked from
  this virtualenv), a fake ``azd`` on PATH, and the message when no usable Python exists.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sandbox.fakes import tls
from shared.settings import load_settings
from tests.test_infra import BICEP_DIR, HOOKS_DIR, LOCAL_ONLY_SETTINGS, ROOT, parse_files


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"infra_hook_{name}", HOOKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hook = _load_hook("postprovision")
access = hook.azure_access  # the sibling modules, as the hook itself imported them
signing_key = hook.signing_key
admin_bootstrap = hook.admin_bootstrap

AZD_ENV = {
    "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "AZURE_RESOURCE_GROUP": "rg-prod",
    "AZURE_KEY_VAULT_NAME": "kv-abc123",
    "AZURE_STORAGE_ACCOUNT_NAME": "stabc123",
    "AZURE_FUNCTION_APP_NAME": "func-abc123",
    "MC_PUBLIC_URL": "https://func-abc123.azurewebsites.net",
    "MC_OAUTH_REDIRECT_URI": "https://func-abc123.azurewebsites.net/oauth",
    "MC_TABLES_ENDPOINT": "https://stabc123.table.core.windows.net/",
    "MC_KEY_VAULT_URL": "https://kv-abc123.vault.azure.net/",
    "MC_TABLE_PREFIX": "",
}
SUBSCRIPTION = "22222222-3333-4444-5555-666666666666"
ADMIN_OID = "aaaaaaaa-0000-0000-0000-000000000001"
OTHER_OID = "bbbbbbbb-0000-0000-0000-000000000002"
HOOK_SETTINGS = ("MC_PRIVATE_NETWORKING", "MC_BOOTSTRAP_ADMIN", "MC_HOOK_STRICT", "MC_HOOK_RBAC_WAIT_SECONDS",
                 "AZURE_PRINCIPAL_ID", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_MANAGER_ENDPOINT")


@pytest.fixture
def azd_env(monkeypatch) -> dict[str, str]:
    """The environment azd gives the hook (public networking), and nothing of the developer's shell."""
    for name in HOOK_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in AZD_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AZURE_PRINCIPAL_ID", ADMIN_OID)
    return dict(AZD_ENV, AZURE_PRINCIPAL_ID=ADMIN_OID)


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


ADMIN_CLAIMS = {"oid": ADMIN_OID, "upn": "admin@contoso.com", "tid": AZD_ENV["AZURE_TENANT_ID"]}
OTHER_CLAIMS = {"oid": OTHER_OID, "upn": "someone.else@contoso.com", "tid": AZD_ENV["AZURE_TENANT_ID"]}


class FakeCredential:
    """A token credential returning a JWT with ``claims``; records the scopes it was asked for."""

    def __init__(self, claims: dict | None = None, *, unavailable: bool = False, **kwargs: Any) -> None:
        self.claims, self.unavailable, self.kwargs = claims or ADMIN_CLAIMS, unavailable, kwargs
        self.scopes: list[str] = []
        self.token = _jwt(self.claims)

    def get_token(self, *scopes: str, **kwargs: Any):
        from azure.core.credentials import AccessToken
        from azure.identity import CredentialUnavailableError

        self.scopes += scopes
        if self.unavailable:
            raise CredentialUnavailableError(message=f"{type(self).__name__} is not signed in")
        return AccessToken(self.token, 4_102_444_800)


def _admin(claims: dict | None = None, label: str = "azd auth login") -> tuple[Any, FakeCredential]:
    fake = FakeCredential(claims)
    return access.AdminCredential([(label, fake)]), fake


class FakeClock:
    """time.monotonic and time.sleep that never sleep: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _run_main(argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = hook.main(argv, **kwargs)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------------
# The template's outputs and the printed admin CLI commands (public networking)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main_bicep() -> dict[str, Any]:
    """infra/bicep/main.bicep, parsed the way tests/test_infra.py parses every template (pycep, .venv-iac)."""
    [result] = parse_files([BICEP_DIR / "main.bicep"])["bicep"].values()
    assert result["ok"], f"main.bicep does not parse: {result['error']}"
    return result["json"]


def test_hook_reads_only_outputs_the_template_has(main_bicep):
    assert set(hook.REQUIRED_OUTPUTS) <= set(main_bicep["outputs"])
    assert set(hook.LOCAL_ONLY_SETTINGS) == set(LOCAL_ONLY_SETTINGS)
    assert set(AZD_ENV) <= set(main_bicep["outputs"])


def test_private_networking_outputs_are_in_the_template(main_bicep):
    assert "privateNetworking" in main_bicep["parameters"]
    outputs = set(main_bicep["outputs"])
    assert {"MC_PRIVATE_NETWORKING", *hook.PRIVATE_OUTPUTS} <= outputs


def test_hook_prints_the_redirect_uri_and_cli_commands_the_cli_accepts(azd_env, monkeypatch, tmp_path):
    from shared.cli import build_parser

    code, text, _ = _run_main(["--skip-signing-key"])
    assert code == 0
    assert AZD_ENV["MC_OAUTH_REDIRECT_URI"] in text
    commands = [line.strip() for line in text.splitlines() if "-m shared.cli" in line]
    assert len(commands) == 2

    # A developer's local.settings.json points at Azurite; the printed command must win over it.
    local = tmp_path / "local.settings.json"
    local.write_text(json.dumps({"Values": {
        "MC_TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true", "MC_SIGNING_KEY": "x" * 40,
        "MC_LOCAL_SECRET_KEY": "k", "MC_AUTHORITY_HOST": "localhost:9443", "MC_KEY_VAULT_URL": "",
    }}))
    monkeypatch.setattr("shared.settings.LOCAL_SETTINGS_FILE", local)

    parsed_commands = {}
    for command in commands:
        words = shlex.split(command)
        python = words.index("python")
        assignments = dict(word.split("=", 1) for word in words[:python])
        assert words[python + 1:python + 3] == ["-m", "shared.cli"]
        args = build_parser().parse_args(words[python + 3:])  # SystemExit if the CLI rejects a flag
        parsed_commands[args.command] = args
        settings = load_settings(assignments)
        assert settings.tables_connection_string is None
        assert settings.tables_endpoint == AZD_ENV["MC_TABLES_ENDPOINT"]
        assert settings.key_vault_url == AZD_ENV["MC_KEY_VAULT_URL"]
        assert settings.signing_key is None and settings.local_secret_key is None
        assert settings.authority_host is None
    assert parsed_commands["create-token"].name
    add_app = parsed_commands["add-app"]
    assert add_app.authority == AZD_ENV["AZURE_TENANT_ID"]
    assert add_app.client_secret == "-", "the client secret is read from stdin, never put on the command line"
    assert (add_app.cloud, add_app.base_scopes) == ("global", "imap")


def test_hook_refuses_to_run_without_the_outputs(azd_env, monkeypatch):
    for name in AZD_ENV:
        monkeypatch.delenv(name, raising=False)
    code, _, err = _run_main(["--skip-signing-key"])
    assert code == 2
    assert "MC_PUBLIC_URL" in err and "azd hooks run postprovision" in err
    # Private networking needs the vault's coordinates in ARM as well.
    for name, value in AZD_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MC_PRIVATE_NETWORKING", "true")
    code, _, err = _run_main(["--skip-signing-key"])
    assert code == 2 and "AZURE_SUBSCRIPTION_ID" in err and "AZURE_RESOURCE_MANAGER_ENDPOINT" in err


# ---------------------------------------------------------------------------------------------------
# The signing key (Key Vault data plane, a fake SecretClient raising the SDK's own exceptions)
# ---------------------------------------------------------------------------------------------------


class _FakeSecrets:
    """Just enough of azure.keyvault.secrets.SecretClient, raising the SDK's own exceptions."""

    def __init__(self, deleted: tuple[str, ...] = (), forbidden: int = 0, firewall: bool = False) -> None:
        self.values: dict[str, list[str]] = {}
        self.deleted = set(deleted)
        self.forbidden = forbidden
        self.firewall = firewall
        self.recovered: list[str] = []

    def _gate(self) -> None:
        from azure.core.exceptions import HttpResponseError

        if self.firewall or self.forbidden:
            self.forbidden -= 1
            text = ("Client address is not authorized and caller is not a trusted service (ForbiddenByFirewall)"
                    if self.firewall else "Caller is not authorized to perform action on resource (ForbiddenByRbac)")
            error = HttpResponseError(message=text)
            error.status_code = 403
            raise error

    def get_secret(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        self._gate()
        if name not in self.values:
            raise ResourceNotFoundError(message=f"{name} not found")
        return object()

    def set_secret(self, name, value, **kwargs):
        from azure.core.exceptions import ResourceExistsError

        self._gate()
        if name in self.deleted:
            error = ResourceExistsError(message="Secret is deleted but recoverable (ObjectIsDeletedButRecoverable)")
            error.status_code = 409
            raise error
        assert kwargs.get("content_type") == "text/plain"
        self.values.setdefault(name, []).append(value)

    def begin_recover_deleted_secret(self, name):
        fake = self

        class _Poller:
            def wait(self):
                fake.recovered.append(name)
                fake.deleted.discard(name)
                fake.values.setdefault(name, ["(the old value)"])

        return _Poller()


def _no_sleep_wait(max_wait: float = 600) -> Any:
    clock = FakeClock()
    return access.RbacWait(max_wait=max_wait, sleep=clock.sleep, clock=clock.clock, out=io.StringIO())


def test_signing_key_is_created_once_and_never_replaced():
    client = _FakeSecrets()
    assert signing_key.ensure(client, _no_sleep_wait()) == "created"
    values = client.values["mc-signing-key"]
    assert len(values) == 1 and len(values[0]) >= 32
    assert signing_key.ensure(client, _no_sleep_wait()) == "present"
    assert len(client.values["mc-signing-key"]) == 1, "a second provision must not rotate the key"


def test_signing_key_soft_deleted_is_recovered_not_replaced():
    client = _FakeSecrets(deleted=("mc-signing-key",))
    assert signing_key.ensure(client, _no_sleep_wait()) == "recovered"
    assert client.recovered == ["mc-signing-key"] and client.values["mc-signing-key"] == ["(the old value)"]


def test_signing_key_waits_for_the_role_assignment_to_propagate():
    from azure.core.exceptions import HttpResponseError

    wait = _no_sleep_wait()
    assert signing_key.ensure(_FakeSecrets(forbidden=3), wait) == "created"
    assert wait.retries == 3 and wait.slept == 5 + 10 + 20, "exponential backoff"
    wait = _no_sleep_wait(max_wait=60)
    with pytest.raises(HttpResponseError):
        signing_key.ensure(_FakeSecrets(forbidden=1000), wait)
    assert wait.slept == 60, "the last wait is cut to the deadline"


def test_signing_key_name_is_the_one_the_app_reads():
    from shared.storage.keys import SIGNING_KEY_SECRET

    assert signing_key.SECRET_NAME == SIGNING_KEY_SECRET


# ---------------------------------------------------------------------------------------------------
# RBAC propagation through the whole hook: 403 then success; 403 until the deadline
# ---------------------------------------------------------------------------------------------------


def test_hook_waits_out_403_and_succeeds(azd_env):
    store, clock = _FakeSecrets(forbidden=2), FakeClock()
    admin, _ = _admin()
    code, out, err = _run_main([], credential=admin, store=store, sleep=clock.sleep, clock=clock.clock)
    assert code == 0
    assert len(store.values["mc-signing-key"]) == 1
    progress = [line for line in err.splitlines() if "403 Forbidden" in line]
    assert len(progress) == 2 == len(clock.sleeps) and "Retry 1 in 5s" in progress[0]
    assert "Key Vault secret mc-signing-key: created." in out
    assert "WARNING" not in err
    assert "-m shared.cli create-token" in out, "public networking keeps the admin CLI steps"


@pytest.mark.parametrize("signed_in, via, granted, expect", [
    (OTHER_CLAIMS, "azd auth login", ADMIN_OID, "These differ: the hook is signed in as someone else"),
    (ADMIN_CLAIMS, "azd auth login", ADMIN_OID, "They are the same: the role assignment has not reached"),
    (ADMIN_CLAIMS, "azd auth login", None, "normally this one, so\nthe assignment has not reached the service yet"),
    (OTHER_CLAIMS, "az login", None, "azd's own sign-in did not work here, so the hook used az login"),
])
def test_hook_gives_up_at_the_deadline_naming_the_principal_and_the_command(azd_env, monkeypatch, signed_in, via,
                                                                             granted, expect):
    if granted is None:
        monkeypatch.delenv("AZURE_PRINCIPAL_ID")
    store, clock = _FakeSecrets(forbidden=10**6), FakeClock()
    admin, fake = _admin(signed_in, via)
    code, out, err = _run_main([], credential=admin, store=store, sleep=clock.sleep, clock=clock.clock)

    assert code == 0, "an RBAC delay must not stop azd up: it goes on to deploy"
    assert sum(clock.sleeps) == 600 and len(clock.sleeps) == err.count("Retry ")
    assert max(clock.sleeps) == 60, "backoff up to a minute between tries"
    assert "WARNING: the postprovision hook did NOT finish." in err
    assert "\n    azd hooks run postprovision\n" in err
    assert f"Signed in as:      user {signed_in['upn']} (object id {signed_in['oid']}), with {via}" in err
    granted_text = f"AZURE_PRINCIPAL_ID={granted}" if granted else "unknown (AZURE_PRINCIPAL_ID is not set)"
    assert f"Roles granted to:  {granted_text}" in err
    assert expect in err.replace("\n  ", "\n")
    assert "may have no signing key" in err
    assert fake.scopes == ["https://vault.azure.net/.default"], "the principal is read from a Key Vault token"
    assert fake.token not in out + err and fake.token.split(".")[1] not in out + err, "never print a token"
    assert "Mailbox Connect is provisioned." in out, "the next steps are still printed"
    assert store.values == {}


def test_hook_wait_is_settable_and_strict_mode_fails(azd_env, monkeypatch):
    monkeypatch.setenv("MC_HOOK_RBAC_WAIT_SECONDS", "30")
    monkeypatch.setenv("MC_HOOK_STRICT", "true")
    clock = FakeClock()
    code, _, err = _run_main([], credential=_admin()[0], store=_FakeSecrets(forbidden=10**6),
                             sleep=clock.sleep, clock=clock.clock)
    assert code == 1 and sum(clock.sleeps) == 30 and "MC_HOOK_RBAC_WAIT_SECONDS=30" in err


def test_hook_does_not_wait_when_the_vault_refuses_the_network(azd_env):
    clock = FakeClock()
    code, _, err = _run_main([], credential=_admin()[0], store=_FakeSecrets(firewall=True),
                             sleep=clock.sleep, clock=clock.clock)
    assert code == 0 and clock.sleeps == []
    assert "refused this machine's network" in err and "azd hooks run postprovision" in err


# ---------------------------------------------------------------------------------------------------
# Sign-in order: the identity azd used first, then the Azure CLI, then environment credentials
# ---------------------------------------------------------------------------------------------------


def _fake_classes(calls: list[str], unavailable: set[str]) -> tuple[type, type, type]:
    def make(label: str, claims: dict) -> type:
        class Fake(FakeCredential):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(claims, unavailable=label in unavailable, **kwargs)
                self.kwargs = kwargs

            def get_token(self, *scopes: str, **kwargs: Any):
                calls.append(label)
                return super().get_token(*scopes, **kwargs)

        Fake.__name__ = label
        return Fake

    return make("azd", ADMIN_CLAIMS), make("az", OTHER_CLAIMS), make("env", OTHER_CLAIMS)


def test_sign_in_uses_azd_first_then_the_azure_cli_then_the_environment():
    scope = "https://management.azure.com/.default"
    env = {"AZURE_TENANT_ID": AZD_ENV["AZURE_TENANT_ID"]}

    calls: list[str] = []
    admin = access.admin_credential(env, classes=_fake_classes(calls, unavailable=set()))
    admin.get_token(scope)
    assert calls == ["azd"] and admin.used == "azd auth login" and admin.claims["oid"] == ADMIN_OID
    assert [label for label, _ in admin.chain] == ["azd auth login", "az login",
                                                   "AZURE_CLIENT_ID/AZURE_CLIENT_SECRET (environment)"]
    assert admin.chain[0][1].kwargs["tenant_id"] == AZD_ENV["AZURE_TENANT_ID"]
    assert admin.chain[1][1].kwargs["tenant_id"] == AZD_ENV["AZURE_TENANT_ID"]

    calls.clear()
    admin = access.admin_credential(env, classes=_fake_classes(calls, unavailable={"azd"}))
    admin.get_token(scope)
    assert calls == ["azd", "az"] and admin.used == "az login" and admin.claims["oid"] == OTHER_OID

    calls.clear()
    admin = access.admin_credential(env, classes=_fake_classes(calls, unavailable={"azd", "az"}))
    admin.get_token(scope)
    assert calls == ["azd", "az", "env"] and admin.used.startswith("AZURE_CLIENT_ID")

    from azure.core.exceptions import ClientAuthenticationError

    admin = access.admin_credential(env, classes=_fake_classes([], unavailable={"azd", "az", "env"}))
    with pytest.raises(ClientAuthenticationError) as failure:
        admin.get_token(scope)
    assert "azd is not signed in" in failure.value.message and "azd auth login" in failure.value.message


def test_no_sign_in_ends_with_the_warning_not_a_traceback(private_env, fake_arm):
    calls: list[str] = []
    admin = access.admin_credential(private_env, classes=_fake_classes(calls, unavailable={"azd", "az", "env"}))
    code, _, err = _run_main([], credential=admin)
    assert code == 0 and calls[:3] == ["azd", "az", "env"] and fake_arm.requests == []
    assert "could not sign in to Azure" in err and "azd hooks run postprovision" in err


def test_the_sign_in_chain_is_azure_identitys_own_classes():
    from azure.identity import AzureCliCredential, AzureDeveloperCliCredential, EnvironmentCredential

    admin = access.admin_credential({"AZURE_TENANT_ID": AZD_ENV["AZURE_TENANT_ID"]})
    assert [type(credential) for _, credential in admin.chain] == [
        AzureDeveloperCliCredential, AzureCliCredential, EnvironmentCredential]


def test_token_claims_are_read_without_verification_and_garbage_is_harmless():
    assert access.token_claims(_jwt({"oid": "x", "appid": "y"})) == {"oid": "x", "appid": "y"}
    assert access.token_claims("not-a-jwt") == {} and access.token_claims("a.!!!.c") == {}
    described = access.describe_principal({"oid": "o", "appid": "a"})
    assert described == "service principal with application id a (object id o)"


# ---------------------------------------------------------------------------------------------------
# Private networking: ARM's Key Vault secrets over HTTPS (a local fake with a trustme CA)
# ---------------------------------------------------------------------------------------------------

ARM_PATH = re.compile(
    rf"/subscriptions/{SUBSCRIPTION}/resourceGroups/{AZD_ENV['AZURE_RESOURCE_GROUP']}/providers/"
    rf"Microsoft\.KeyVault/vaults/{AZD_ENV['AZURE_KEY_VAULT_NAME']}/secrets/([0-9A-Za-z-]{{1,127}})"
)


class FakeArm:
    """``Microsoft.KeyVault/vaults/secrets`` of Azure Resource Manager: GET (no value, as ARM) and PUT."""

    def __init__(self, forbidden: int = 0, deleted: tuple[str, ...] = ()) -> None:
        self.values: dict[str, list[str]] = {}
        self.forbidden, self.deleted = forbidden, set(deleted)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self)

            def do_PUT(self) -> None:
                fake.handle(self)

        self.server = tls.HTTPSServer(Handler).start()
        self.url = self.server.url + "/"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self.lock:
            status, payload = self._answer(handler.command, url, body, handler.headers.get("Authorization", ""))
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, method: str, url: Any, body: bytes, authorization: str) -> tuple[int, dict]:
        def error(status: int, code: str, message: str) -> tuple[int, dict]:
            return status, {"error": {"code": code, "message": message}}

        match = ARM_PATH.fullmatch(url.path)
        if not authorization.startswith("Bearer ") or access.token_claims(authorization[7:]).get("oid") is None:
            return error(401, "AuthenticationFailed", "no bearer token")
        if parse_qs(url.query).get("api-version") != ["2023-07-01"] or not match:
            return error(400, "InvalidRequest", f"unexpected {method} {url.path}?{url.query}")
        self.requests.append((method, match.group(1)))
        if self.forbidden:
            self.forbidden -= 1
            return error(403, "AuthorizationFailed", "The client does not have authorization to perform action "
                         "'Microsoft.KeyVault/vaults/secrets/read' (RBAC is propagating)")
        name = match.group(1)
        resource = {"id": url.path, "name": name, "type": "Microsoft.KeyVault/vaults/secrets",
                    "properties": {"contentType": "text/plain", "attributes": {"enabled": True}}}
        if method == "GET":
            return (200, resource) if name in self.values else error(404, "ResourceNotFound", f"{name} not found")
        payload = json.loads(body)
        if set(payload) != {"properties"} or set(payload["properties"]) != {"value", "contentType"} \
                or payload["properties"]["contentType"] != "text/plain":
            return error(400, "BadRequest", f"unexpected body {sorted(payload)}")
        if name in self.deleted:
            return error(409, "ConflictError", f"Secret {name} is currently in a deleted but recoverable state")
        created = name not in self.values
        self.values.setdefault(name, []).append(payload["properties"]["value"])
        return (201 if created else 200), resource

    def puts(self, name: str) -> int:
        return self.requests.count(("PUT", name))


@pytest.fixture
def fake_arm() -> Any:
    arm = FakeArm()
    yield arm
    arm.server.stop()


@pytest.fixture
def private_env(azd_env, monkeypatch, fake_arm) -> dict[str, str]:
    values = {"MC_PRIVATE_NETWORKING": "true", "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
              "AZURE_RESOURCE_MANAGER_ENDPOINT": fake_arm.url}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls.test_ca().ca_bundle)  # what azure-core's requests transport trusts
    return {**azd_env, **values}


NOW = 1_700_000_000


def _bootstrap_token(text: str) -> str:
    tokens = re.findall(r"mcb_[A-Za-z0-9_-]+", text)
    assert len(tokens) == 1, f"the bootstrap token is printed exactly once, not {len(tokens)} times"
    return tokens[0]


def test_private_mode_writes_through_arm_after_403_and_prints_the_bootstrap_once(private_env, fake_arm):
    fake_arm.forbidden = 2
    clock = FakeClock()
    admin, credential = _admin()
    code, out, err = _run_main([], credential=admin, sleep=clock.sleep, clock=clock.clock, now=lambda: NOW)
    assert code == 0, err
    assert err.count("Azure Resource Manager answered 403 Forbidden") == 2 == len(clock.sleeps)
    assert credential.scopes and set(credential.scopes) == {fake_arm.url.rstrip("/") + "/.default"}

    key = fake_arm.values["mc-signing-key"]
    assert len(key) == 1 and len(key[0]) >= 32 and key[0] not in out + err
    token = _bootstrap_token(out + err)
    assert token.startswith("mcb_") and len(token) >= 4 + 43
    stored = fake_arm.values["mc-admin-bootstrap"]
    assert stored == [f"v1:{NOW + 24 * 3600}:{hashlib.sha256(token.encode()).hexdigest()}"]
    assert token not in stored[0] and token[4:] not in stored[0], "only the hash is stored"
    assert "-m shared.cli" not in out, "the admin CLI cannot reach private storage"

    # Again (a second azd provision): the key stays, the bootstrap is not reissued, nothing secret printed.
    code, out, err = _run_main([], credential=admin, sleep=clock.sleep, clock=clock.clock, now=lambda: NOW)
    assert code == 0 and "mc-signing-key: present" in out
    assert fake_arm.puts("mc-signing-key") == 1 and fake_arm.puts("mc-admin-bootstrap") == 1
    assert "mcb_" not in out + err and "MC_BOOTSTRAP_ADMIN=true azd hooks run postprovision" in out

    # Asked for (--bootstrap-admin, or MC_BOOTSTRAP_ADMIN=true through azd hooks run): a new one replaces it.
    code, out, err = _run_main(["--bootstrap-admin"], credential=admin, now=lambda: NOW + 60)
    new = _bootstrap_token(out + err)
    assert code == 0 and new != token and fake_arm.values["mc-signing-key"] == key
    assert fake_arm.values["mc-admin-bootstrap"][-1] == (
        f"v1:{NOW + 60 + 24 * 3600}:{hashlib.sha256(new.encode()).hexdigest()}")


def test_private_mode_gives_up_on_403_like_public_mode(private_env, fake_arm, monkeypatch):
    monkeypatch.setenv("AZURE_PRINCIPAL_ID", OTHER_OID)
    fake_arm.forbidden = 10**6
    clock = FakeClock()
    code, out, err = _run_main([], credential=_admin()[0], sleep=clock.sleep, clock=clock.clock)
    assert code == 0 and sum(clock.sleeps) == 600
    assert "Azure Resource Manager still answered 403" in err and "azd hooks run postprovision" in err
    assert f"AZURE_PRINCIPAL_ID={OTHER_OID}" in err and "user admin@contoso.com" in err and "These differ" in err
    assert "mcb_" not in out + err and "Once this hook has finished" in out


def test_private_mode_cannot_recover_a_soft_deleted_key_and_says_how(private_env, fake_arm):
    fake_arm.deleted.add("mc-signing-key")
    code, _, err = _run_main([], credential=_admin()[0])
    assert code == 0
    assert f"az keyvault secret recover --vault-name {AZD_ENV['AZURE_KEY_VAULT_NAME']} --name mc-signing-key" in err


def _run_printed_commands(text: str, tmp_path: Path, secret: str) -> list[dict]:
    """Run the indented shell commands of the next steps with a fake curl that records each request."""
    block, lines = [], text.splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        continued = index > 0 and lines[index - 1].rstrip().endswith("\\")
        if line.startswith("   ") and (continued or stripped.split(" ")[0] in {"export", "curl", "read", "printf"}):
            block.append(stripped)
    bin_dir = tmp_path / "curl-bin"
    bin_dir.mkdir()
    log = tmp_path / "curl.jsonl"
    curl = bin_dir / "curl"
    curl.write_text(f"""#!{sys.executable}
import json, sys
args, request = sys.argv[1:], {{"headers": []}}
i = 0
while i < len(args):
    if args[i] in ("-X", "-H", "-d"):
        value = args[i + 1]
        if args[i] == "-d" and value == "@-":
            value = sys.stdin.read()
        request.setdefault({{"-X": "method", "-H": "headers", "-d": "body"}}[args[i]], [])
        if args[i] == "-H":
            request["headers"].append(value)
        else:
            request[{{"-X": "method", "-d": "body"}}[args[i]]] = value
        i += 2
    elif args[i].startswith("-"):
        i += 1
    else:
        request["url"] = args[i]
        i += 1
open({str(log)!r}, "a").write(json.dumps(request) + "\\n")
""")
    curl.chmod(0o755)
    script = "\n".join(block).replace("<application-client-id>", "33333333-4444-5555-6666-777777777777")
    script = script.replace("<the token of step 2>", "mc_the_admin_token_of_step_2")  # as the admin would
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MC_API_TOKEN": "mc_an_api_token"}
    result = subprocess.run(["bash", "-e", "-c", script], input=secret + "\n", env=env, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_printed_bootstrap_requests_are_what_the_admin_api_accepts(private_env, tmp_path):
    from shared.schemas import ApiTokenCreate, OAuthAppCreate

    code, out, err = _run_main([], credential=_admin()[0], now=lambda: NOW)
    assert code == 0, err
    token = _bootstrap_token(out)
    requests = _run_printed_commands(out, tmp_path, secret="a~client.secret_value")
    url = AZD_ENV["MC_PUBLIC_URL"]
    assert [(r["method"], r["url"]) for r in requests] == [
        ("POST", f"{url}/v1/tokens"), ("POST", f"{url}/v1/oauth2"), ("POST", f"{url}/v1/tokens"),
        ("POST", f"{url}/v1/authentication/form")]
    assert all(url.startswith("https://") for url in (r["url"] for r in requests))
    bearer = [next(h for h in r["headers"] if h.startswith("Authorization: ")) for r in requests]
    # The service refuses the bootstrap once an admin token exists: only the first request may use it.
    assert bearer[0] == f"Authorization: Bearer {token}"
    assert bearer[1:3] == ["Authorization: Bearer mc_the_admin_token_of_step_2"] * 2

    admin = ApiTokenCreate.model_validate_json(requests[0]["body"])
    assert (admin.name, admin.scopes) == ("admin", ["admin"])
    app = OAuthAppCreate.model_validate_json(requests[1]["body"])
    assert app.clientSecret == "a~client.secret_value", "the secret typed at the prompt goes in the body"
    assert (app.authority, app.cloud, app.baseScopes) == (AZD_ENV["AZURE_TENANT_ID"], "global", "imap")
    assert ApiTokenCreate.model_validate_json(requests[2]["body"]).scopes == ["api"]


def test_bootstrap_secret_is_the_format_the_service_reads():
    from shared.admin import bootstrap
    from shared.storage.tables.apitokens import BOOTSTRAP_PREFIX

    assert (admin_bootstrap.SECRET_NAME, admin_bootstrap.TOKEN_PREFIX) == (bootstrap.SECRET_NAME, BOOTSTRAP_PREFIX)
    token = admin_bootstrap.new_token()
    assert bootstrap.is_bootstrap_token(token)
    value = admin_bootstrap.secret_value(token, NOW)
    assert value == bootstrap.bootstrap_secret_value(token, NOW)
    assert bootstrap.parse_secret_value(value) == bootstrap.BootstrapSecret(NOW, bootstrap.hash_bootstrap_token(token))


def test_bootstrap_in_public_mode_and_the_powershell_variant(azd_env, monkeypatch):
    store = _FakeSecrets(deleted=("mc-admin-bootstrap",))  # soft-deleted: recovered, then a new version
    monkeypatch.setenv("MC_BOOTSTRAP_ADMIN", "true")
    code, out, _ = _run_main([], credential=_admin()[0], store=store, now=lambda: NOW)
    token = _bootstrap_token(out)
    assert code == 0 and store.recovered == ["mc-admin-bootstrap"]
    assert store.values["mc-admin-bootstrap"][-1].endswith(hashlib.sha256(token.encode()).hexdigest())
    assert "-m shared.cli" not in out and "curl" in out

    lines = admin_bootstrap.instructions(AZD_ENV["MC_PUBLIC_URL"], "mcb_abc", NOW, "contoso.com", windows=True)
    text = "\n".join(lines)
    assert text.count("mcb_abc") == 1 and "Invoke-RestMethod" in text and "Read-Host 'Client secret'" in text
    assert "authority = 'contoso.com'" in text and "clientSecret = $secret" in text


# ---------------------------------------------------------------------------------------------------
# postprovision.sh itself: its own virtualenv, offline (pip from local wheels), a fake azd on PATH
# ---------------------------------------------------------------------------------------------------


def _repack_installed(names: list[str], dest: Path) -> None:
    """Wheels of the installed distributions ``names`` and their dependencies, made from this virtualenv."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
        info = next(f for f in dist.files if f.parts[0].endswith(".dist-info")).parts[0]
        wheel = (Path(dist.locate_file(info)) / "WHEEL").read_text()
        tag = next(line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:"))
        target = dest / f"{canonicalize_name(dist.metadata['Name']).replace('-', '_')}-{dist.version}-{tag}.whl"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
            for file in dist.files:
                source = Path(dist.locate_file(file))
                if ".." not in file.parts and "__pycache__" not in file.parts and source.is_file():
                    archive.write(source, file.as_posix())


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("wheelhouse")
    _repack_installed(["azure-identity", "azure-keyvault-secrets", "azure-core"], dest)
    return dest


def _project_copy(tmp_path: Path) -> Path:
    """The hook in a fresh project folder, so its virtualenv is made from scratch."""
    project = tmp_path / "project"
    shutil.copytree(HOOKS_DIR, project / "infra" / "hooks", ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    return project


def _base_python() -> str:
    """This virtualenv's base interpreter: a real Python without the azure packages."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def test_the_sh_hook_makes_its_own_virtualenv_and_runs_with_it(tmp_path, wheelhouse, fake_arm):
    project = _project_copy(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3.11", "python3"):
        (bin_dir / name).symlink_to(_base_python())
    probe = subprocess.run([str(bin_dir / "python3"), "-c", "import azure.identity"], capture_output=True)
    assert probe.returncode != 0, "the Python on PATH must lack the azure packages"
    azd_log = tmp_path / "azd.log"
    token = json.dumps({"token": _jwt(ADMIN_CLAIMS), "expiresOn": "2099-01-01T00:00:00Z"})
    (bin_dir / "azd").write_text(f"#!/bin/sh\necho \"$*\" >> {shlex.quote(str(azd_log))}\nprintf '%s\\n' '{token}'\n")
    (bin_dir / "azd").chmod(0o755)

    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
        "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_CACHE_DIR": "1",
        "REQUESTS_CA_BUNDLE": tls.test_ca().ca_bundle,
        **AZD_ENV, "AZURE_PRINCIPAL_ID": ADMIN_OID, "MC_PRIVATE_NETWORKING": "true",
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZURE_RESOURCE_MANAGER_ENDPOINT": fake_arm.url,
    }
    script = project / "infra" / "hooks" / "postprovision.sh"

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", str(script)], cwd=tmp_path, env=env, text=True, capture_output=True,
                              timeout=110)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating the hook's virtualenv infra/hooks/.venv" in first.stdout
    assert "installing infra/hooks/requirements.txt" in first.stdout
    venv = project / "infra" / "hooks" / ".venv"
    requirements = (project / "infra" / "hooks" / "requirements.txt").read_bytes()
    assert (venv / ".requirements.sha256").read_text().strip() == hashlib.sha256(requirements).hexdigest()
    assert (venv / ".gitignore").read_text().strip() == "*"
    assert "WARNING" not in first.stderr
    assert f"Signed in as user admin@contoso.com (object id {ADMIN_OID}) with azd auth login." in first.stdout
    azd_calls = azd_log.read_text()
    assert f"--scope {fake_arm.url.rstrip('/')}/.default" in azd_calls
    assert f"--tenant-id {AZD_ENV['AZURE_TENANT_ID']}" in azd_calls
    token_printed = _bootstrap_token(first.stdout + first.stderr)
    assert fake_arm.values["mc-admin-bootstrap"][0].endswith(hashlib.sha256(token_printed.encode()).hexdigest())
    assert len(fake_arm.values["mc-signing-key"]) == 1

    second = run()  # requirements unchanged: no install; the key and the bootstrap stay
    assert second.returncode == 0, second.stderr
    assert "installing" not in second.stdout and "creating" not in second.stdout
    assert fake_arm.puts("mc-signing-key") == 1 and fake_arm.puts("mc-admin-bootstrap") == 1

    with open(project / "infra" / "hooks" / "requirements.txt", "a") as changed:
        changed.write("# changed\n")
    third = run()
    assert third.returncode == 0 and "installing infra/hooks/requirements.txt" in third.stdout
    assert "creating" not in third.stdout


@pytest.mark.parametrize("strict", [False, True])
def test_the_sh_hook_without_a_usable_python_says_what_to_install(tmp_path, strict):
    project = _project_copy(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    for name in ("python3", "python"):  # an old Python: the version check fails
        (bin_dir / name).write_text("#!/bin/sh\necho 'Python 2.7.18' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), **AZD_ENV, **({"MC_HOOK_STRICT": "true"} if strict else {})}
    result = subprocess.run(["/bin/sh", str(project / "infra" / "hooks" / "postprovision.sh")], env=env, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == (1 if strict else 0)
    assert "no Python 3.9 or later" in result.stderr and "Install Python 3.11" in result.stderr
    assert "python3-venv" in result.stderr and "\n    azd hooks run postprovision\n" in result.stderr
    assert not (project / "infra" / "hooks" / ".venv").exists()


def test_the_sh_hook_when_pip_cannot_install_names_the_command_and_retries_next_time(tmp_path):
    project = _project_copy(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(_base_python())
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(empty), "PIP_NO_CACHE_DIR": "1", **AZD_ENV}
    result = subprocess.run(["/bin/sh", str(project / "infra" / "hooks" / "postprovision.sh")], env=env, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, "no network for pip is outside the admin's control: azd up goes on"
    assert "pip could not install infra/hooks/requirements.txt" in result.stderr
    assert "\n    azd hooks run postprovision\n" in result.stderr
    assert not (project / "infra" / "hooks" / ".venv" / ".requirements.sha256").exists(), "installed next run"


def test_hook_venv_stays_out_of_git_and_of_the_package():
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    funcignore = (ROOT / ".funcignore").read_text().splitlines()
    assert ".venv/" in gitignore, "matches infra/hooks/.venv at any depth"
    assert "infra/" in funcignore and ".venv/" in funcignore
    requirements = (HOOKS_DIR / "requirements.txt").read_text()
    for package in ("azure-identity", "azure-keyvault-secrets", "azure-core"):
        assert re.search(rf"^{package}>=[\d.]+,<\d+", requirements, re.M), package
