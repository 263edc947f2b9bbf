"""The azd postprovision hook (infra/hooks), run offline against fakes."""

from __future__ import annotations

import importlib.util
import io
import json
import shlex
from contextlib import redirect_stdout

import pytest

from shared.settings import load_settings
from tests.test_infra import HOOKS_DIR, LOCAL_ONLY_SETTINGS, bicep, parsed  # noqa: F401  (fixtures)

# ---------------------------------------------------------------------------------------------------
# 4. The postprovision hook
# ---------------------------------------------------------------------------------------------------


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"infra_hook_{name}", HOOKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_hook_reads_only_outputs_the_template_has(bicep):
    hook = _load_hook("postprovision")
    assert set(hook.REQUIRED_OUTPUTS) <= set(bicep["main.bicep"]["outputs"])
    assert set(hook.LOCAL_ONLY_SETTINGS) == set(LOCAL_ONLY_SETTINGS)
    assert set(AZD_ENV) <= set(bicep["main.bicep"]["outputs"])


def test_hook_prints_the_redirect_uri_and_cli_commands_the_cli_accepts(monkeypatch, tmp_path):
    from shared.cli import build_parser

    hook = _load_hook("postprovision")
    for name, value in AZD_ENV.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    with redirect_stdout(out):
        assert hook.main(["--skip-signing-key"]) == 0
    text = out.getvalue()
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


def test_hook_refuses_to_run_without_the_outputs(monkeypatch, capsys):
    hook = _load_hook("postprovision")
    for name in AZD_ENV:
        monkeypatch.delenv(name, raising=False)
    assert hook.main(["--skip-signing-key"]) == 2
    assert "MC_PUBLIC_URL" in capsys.readouterr().err


class _FakeSecrets:
    """Just enough of azure.keyvault.secrets.SecretClient, raising the SDK's own exceptions."""

    def __init__(self, state: str = "absent", forbidden: int = 0) -> None:
        self.state = state  # absent | present | deleted
        self.forbidden = forbidden
        self.values: list[str] = []
        self.recovered = False

    def _gate(self) -> None:
        from azure.core.exceptions import HttpResponseError

        if self.forbidden:
            self.forbidden -= 1
            error = HttpResponseError(message="Caller is not authorized (ForbiddenByRbac)")
            error.status_code = 403
            raise error

    def get_secret(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        self._gate()
        if self.state != "present":
            raise ResourceNotFoundError(message=f"{name} not found")
        return object()

    def set_secret(self, name, value, **kwargs):
        from azure.core.exceptions import ResourceExistsError

        self._gate()
        if self.state == "deleted":
            error = ResourceExistsError(message="Secret is in a deleted but recoverable state (ObjectIsDeletedButRecoverable)")
            error.status_code = 409
            raise error
        assert name == "mc-signing-key" and kwargs.get("content_type") == "text/plain"
        self.values.append(value)
        self.state = "present"

    def begin_recover_deleted_secret(self, name):
        fake = self

        class _Poller:
            def wait(self):
                fake.recovered = True
                fake.state = "present"

        return _Poller()


def test_signing_key_is_created_once_and_never_replaced():
    signing_key = _load_hook("signing_key")
    client = _FakeSecrets()
    assert signing_key.ensure(client, sleep=lambda s: None) == "created"
    assert len(client.values) == 1 and len(client.values[0]) >= 32
    assert signing_key.ensure(client, sleep=lambda s: None) == "present"
    assert len(client.values) == 1, "a second provision must not rotate the key"


def test_signing_key_soft_deleted_is_recovered_not_replaced():
    signing_key = _load_hook("signing_key")
    client = _FakeSecrets(state="deleted")
    assert signing_key.ensure(client, sleep=lambda s: None) == "recovered"
    assert client.recovered and client.values == []


def test_signing_key_waits_for_the_role_assignment_to_propagate():
    signing_key = _load_hook("signing_key")
    slept: list[float] = []
    client = _FakeSecrets(forbidden=3)
    assert signing_key.ensure(client, sleep=slept.append) == "created"
    assert len(slept) == 3
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError):
        signing_key.ensure(_FakeSecrets(forbidden=1000), sleep=lambda s: None, max_wait=60)


def test_signing_key_name_is_the_one_the_app_reads():
    from shared.keys import SIGNING_KEY_SECRET

    assert _load_hook("signing_key").SECRET_NAME == SIGNING_KEY_SECRET


