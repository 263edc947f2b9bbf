"""Offline checks of the deployment (azure.yaml, infra/bicep, the postprovision hook, .funcignore).

Nothing here can reach Azure, so the template is checked three ways:

1. every ``.bicep`` file parses (``pycep-parser``), and a broken file is shown to fail;
2. ``checkov --framework bicep`` passes with the skips of ``infra/bicep/.checkov.yaml`` (the one place
   where skipped checks are listed, each with its reason), counting parse errors as failures because
   checkov itself exits 0 on them;
3. assertions on the parsed template for what scanners do not check: identity-only access, no keys, Key
   Vault RBAC + purge protection, and that the app settings and tables match the code exactly.

The tools live in their own virtualenv, ``.venv-iac`` (requirements-iac.txt), because checkov pins many
packages of its own; ``make test`` creates it. When it is missing these tests fail: they do not skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from shared.storage.tables import TABLES

ROOT = Path(__file__).resolve().parent.parent
BICEP_DIR = ROOT / "infra" / "bicep"
HOOKS_DIR = ROOT / "infra" / "hooks"
CHECKOV_CONFIG = BICEP_DIR / ".checkov.yaml"
IAC_VENV = ROOT / ".venv-iac"
IAC_PYTHON = IAC_VENV / "bin" / "python"
CHECKOV = IAC_VENV / "bin" / "checkov"

# ---------------------------------------------------------------------------------------------------
# The contract between the code and the template. Each exception is stated here, once, with its reason.
# ---------------------------------------------------------------------------------------------------

# Settings the code reads that must NOT be set in Azure.
LOCAL_ONLY_SETTINGS = {
    "MC_TABLES_CONNECTION_STRING": "Azure uses MC_TABLES_ENDPOINT with the managed identity; no keys",
    "MC_LOCAL_SECRET_KEY": "the local secret store refuses to run in Azure; Key Vault is used there",
    "MC_SIGNING_KEY": "in Azure the signing key is Key Vault secret mc-signing-key (the code refuses it)",
    "MC_AUTHORITY_HOST": "override of the Microsoft sign-in host for tests and the sandbox only",
    "MC_GRAPH_URL": "override of the Graph URL for tests and the sandbox only",
    "MC_IMAP_HOST": "override of the IMAP host of the sign-in's mailbox access check, tests and the sandbox only",
    "MC_CA_BUNDLE": "extra CA bundle for the local fakes only",
    "MC_WEBHOOK_SECRET": "in Azure the MC_WEBHOOK_URLS signing key is Key Vault secret mc-webhook-secret",
}
# Settings model fields that are not read from a setting (computed by load_settings).
DERIVED_FIELDS = {"in_azure": "set from the WEBSITE_* markers the platform sets"}
# Settings the template sets for the Functions host rather than for the code.
HOST_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Settings that must never appear: key-based connections, and those that only work in public Azure.
FORBIDDEN_SETTINGS = {
    "AzureWebJobsStorage",  # a connection string (account key); identity-based service URIs instead
    "AzureWebJobsStorage__accountName",  # derives public Azure's host names; sovereign clouds need the URIs
    "APPINSIGHTS_INSTRUMENTATIONKEY",
}

# What Flex Consumption refuses or ignores (Microsoft's Flex Consumption docs, "deprecated properties and
# settings"; ARM answers 51021 for ftpsState). Runtime, scale and deployment live in functionAppConfig.
FLEX_REFUSED_SITE_PROPERTIES = {
    "ftpsState", "alwaysOn", "linuxFxVersion", "windowsFxVersion", "use32BitWorkerProcess",
    "functionAppScaleLimit", "minimumElasticInstanceCount", "preWarmedInstanceCount", "javaVersion",
    "netFrameworkVersion", "powerShellVersion", "containerSize", "http20Enabled", "scmMinTlsVersion",
    "vnetRouteAllEnabled", "dailyMemoryTimeQuota",
}
FLEX_REFUSED_APP_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_WORKER_RUNTIME_VERSION", "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY", "FUNCTIONS_WORKER_PROCESS_COUNT", "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTOVERVNET", "WEBSITE_VNET_ROUTE_ALL", "WEBSITE_NODE_DEFAULT_VERSION", "WEBSITE_USE_PLACEHOLDER",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT", "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD", "PYTHON_ISOLATE_WORKER_DEPENDENCIES",
}
FLEX_REFUSED_APP_SETTING_PREFIXES = ("WEBSITE_CONTENT",)
# Tables of shared/storage/tables TABLES that the template does not create.
LOCAL_ONLY_TABLES = {
    "secrets": "only the local encrypted secret store uses it; in Azure secrets live in Key Vault",
}

# Built-in role definition ids.
ROLE_IDS = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "keyVaultSecretsOfficer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    # Data actions: vaults/keys/read, keys/wrap/action, keys/unwrap/action (the role's JSON as Azure lists it).
    "keyVaultCryptoServiceEncryptionUser": "e147488a-f6f5-4113-8e2d-b22465e65bf6",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
# The runtime identity's Key Vault role is the custom appSecretsRole (Secrets Officer less purge, backup
# and restore), plus wrap/unwrap on envelope mode's key-encryption key only; the deployment identity may only
# touch the package container.
APP_IDENTITY_ROLES = {
    "storageBlobDataOwner",
    "storageTableDataContributor",
    "appSecretsRole",
    "keyVaultCryptoServiceEncryptionUser",
    "monitoringMetricsPublisher",
}
DEPLOY_IDENTITY_ROLES = {"storageBlobDataContributor"}
ADMIN_ROLES = {"storageTableDataContributor", "keyVaultSecretsOfficer", "keyVaultCryptoServiceEncryptionUser"}

# Outputs azd saves, the hook reads and docs/deploy.md uses.
REQUIRED_OUTPUTS = {
    "SERVICE_API_URI",
    "MC_PUBLIC_URL",
    "MC_OAUTH_REDIRECT_URI",
    "MC_TABLES_ENDPOINT",
    "MC_KEY_VAULT_URL",
    "AZURE_KEY_VAULT_NAME",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_FUNCTION_APP_NAME",
    "AZURE_RESOURCE_GROUP",
}

# ---------------------------------------------------------------------------------------------------
# Tools (.venv-iac)
# ---------------------------------------------------------------------------------------------------

_PARSE_SCRIPT = r"""
import json, sys
from pathlib import Path
import yaml
from pycep import BicepParser

parser = BicepParser()
out = {"bicep": {}, "yaml": {}}
for name in sys.argv[1:]:
    path = Path(name)
    if path.suffix == ".bicep":
        try:
            out["bicep"][name] = {"ok": True, "json": parser.parse(file_path=path)}
        except Exception as exc:
            out["bicep"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    else:
        out["yaml"][name] = yaml.safe_load(path.read_text())
print(json.dumps(out, default=str))
"""


def _require_iac_tools() -> None:
    missing = [str(p.relative_to(ROOT)) for p in (IAC_PYTHON, CHECKOV) if not p.exists()]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: the infrastructure checks need the .venv-iac virtualenv "
            "(checkov, pycep-parser from requirements-iac.txt). Run `make test`, which installs it.",
            pytrace=False,
        )


def parse_files(paths: list[Path]) -> dict[str, Any]:
    """Parse .bicep files (pycep) and YAML files in the .venv-iac interpreter."""
    _require_iac_tools()
    proc = subprocess.run(
        [str(IAC_PYTHON), "-c", _PARSE_SCRIPT, *map(str, paths)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, f"parser crashed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def run_checkov(directory: Path, *, config: Path | None) -> tuple[dict, float]:
    """checkov's JSON report of one directory (bicep only, offline) and how long it took."""
    _require_iac_tools()
    cmd = [str(CHECKOV), "-d", str(directory), "--framework", "bicep", "--skip-download", "-o", "json"]
    if config is not None:
        cmd += ["--config-file", str(config)]
    started = time.monotonic()
    # cwd outside the repo: checkov reads a .checkov.yaml from its working directory by itself.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=directory.parent)
    elapsed = time.monotonic() - started
    assert proc.stdout.strip(), f"checkov printed no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert len(bicep) == 1, f"expected one bicep report, got {[r.get('check_type') for r in reports]}"
    return bicep[0], elapsed


def checkov_problems(report: dict) -> list[str]:
    """Failures of a checkov report, parse errors included (checkov exits 0 on those)."""
    summary = report.get("summary", {})
    results = report.get("results", {})
    problems = [f"parse error: {p}" for p in results.get("parsing_errors", [])]
    if summary.get("parsing_errors") and not problems:
        problems.append(f"{summary['parsing_errors']} parse error(s)")
    for check in results.get("failed_checks", []):
        problems.append(f"{check['check_id']} {check['check_name']} ({check['file_path']}: {check['resource']})")
    if not summary.get("passed"):
        problems.append("no check passed: checkov found nothing to scan")
    return problems


def checkov_skips() -> dict[str, str]:
    """The skip-check list of infra/bicep/.checkov.yaml with each entry's reason (the comment above it)."""
    skips: dict[str, str] = {}
    reason: list[str] = []
    in_list = False
    for raw in CHECKOV_CONFIG.read_text().splitlines():
        line = raw.strip()
        if raw.startswith("skip-check:"):
            in_list = True
            continue
        if in_list and raw and not raw.startswith(" "):
            in_list = False
        if not in_list:
            continue
        if line.startswith("#"):
            reason.append(line.lstrip("# "))
        elif line.startswith("- "):
            check_id = line[2:].strip()
            assert re.fullmatch(r"CKV2?_AZURE_\d+", check_id), f"not a check id: {line!r}"
            skips[check_id] = " ".join(reason)
        elif not line:
            reason = []
    return skips


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------

BICEP_FILES = sorted(BICEP_DIR.rglob("*.bicep"))


@pytest.fixture(scope="session")
def parsed() -> dict[str, Any]:
    return parse_files([*BICEP_FILES, ROOT / "azure.yaml", CHECKOV_CONFIG])


@pytest.fixture(scope="session")
def bicep(parsed) -> dict[str, dict]:
    """Parsed template per file name relative to infra/bicep (e.g. 'modules/storage.bicep')."""
    out = {}
    for name, result in parsed["bicep"].items():
        assert result["ok"], f"{name} does not parse: {result['error']}"
        out[Path(name).relative_to(BICEP_DIR).as_posix()] = result["json"]
    return out


def _body(config: dict) -> dict:
    """A resource's own properties: pycep nests them one level down for `if (...)` and `for` resources."""
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def resources_of_type(bicep: dict[str, dict], type_: str) -> list[dict]:
    """Declared (not `existing`) resources of one type, each as {symbol, type, config (unwrapped), raw}."""
    found = []
    for tree in bicep.values():
        for name, resource in tree.get("resources", {}).items():
            if resource["type"].lower() == type_.lower() and not resource.get("existing"):
                found.append({"symbol": name, "type": resource["type"], "config": _body(resource["config"]),
                              "raw": resource})
    return found


def one(bicep: dict[str, dict], type_: str) -> dict:
    found = resources_of_type(bicep, type_)
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]["config"]


# ---------------------------------------------------------------------------------------------------
# 1. Every Bicep file parses
# ---------------------------------------------------------------------------------------------------


def test_the_template_has_a_main_and_modules():
    names = {p.relative_to(BICEP_DIR).as_posix() for p in BICEP_FILES}
    assert "main.bicep" in names
    assert len([n for n in names if n.startswith("modules/")]) >= 3
    assert (BICEP_DIR / "main.parameters.json").is_file()


def test_every_bicep_file_parses(parsed):
    assert set(parsed["bicep"]) == {str(p) for p in BICEP_FILES}
    failures = {name: r["error"] for name, r in parsed["bicep"].items() if not r["ok"]}
    assert not failures, f"Bicep files that do not parse: {json.dumps(failures, indent=1)}"


def test_a_broken_bicep_file_fails_to_parse(tmp_path):
    broken = tmp_path / "broken.bicep"
    text = (BICEP_DIR / "modules" / "storage.bicep").read_text()
    broken.write_text(text + "\nresource broken 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n")
    result = parse_files([broken])["bicep"][str(broken)]
    assert result["ok"] is False, "the parser accepted an unterminated resource: the parse test has no teeth"


def test_modules_referenced_by_main_exist(bicep):
    for symbol, module in bicep["main.bicep"]["modules"].items():
        path = module["detail"]["path"]
        assert (BICEP_DIR / path).is_file(), f"module {symbol}: {path} does not exist"


# ---------------------------------------------------------------------------------------------------
# 2. checkov
# ---------------------------------------------------------------------------------------------------


# checkov cannot evaluate `privateNetworking ? a : b`, so each mode is scanned as its own copy of the
# templates with the switch decided. Every use of the switch is a one-line ternary of two plain values or
# an `if (privateNetworking)` condition; test_the_network_switch_can_be_decided checks that stays true.
SWITCH = re.compile(r"privateNetworking \? (\S+) : (\S+)")
NETWORK_CHECKS = {"CKV_AZURE_35", "CKV_AZURE_59", "CKV_AZURE_109", "CKV_AZURE_189"}


def decided_copy(tmp_path: Path, *, private: bool) -> Path:
    """infra/bicep with privateNetworking decided (and its default set), for checkov."""
    copy = tmp_path / ("private" if private else "public") / "bicep"
    shutil.copytree(BICEP_DIR, copy, ignore=shutil.ignore_patterns(".checkov.yaml"))
    for path in copy.rglob("*.bicep"):
        text = SWITCH.sub(lambda m: m.group(1 if private else 2), path.read_text())
        text = text.replace("param privateNetworking bool = false",
                            f"param privateNetworking bool = {str(private).lower()}")
        path.write_text(text)
    return copy


def test_the_network_switch_can_be_decided():
    for path in BICEP_FILES:
        for line in path.read_text().splitlines():
            code = line.split("//", 1)[0]
            if "privateNetworking" not in code:
                continue
            decidable = (SWITCH.search(code) or "if (privateNetworking)" in code
                         or re.search(r"param privateNetworking bool( = false)?$", code.strip())
                         or re.fullmatch(r"\s*privateNetworking: privateNetworking", code)
                         or "string(privateNetworking)" in code)
            assert decidable, f"{path.name}: a use of privateNetworking decided_copy() cannot decide: {line.strip()}"


def test_checkov_passes_with_the_documented_skips(record_property, tmp_path):
    report, elapsed = run_checkov(decided_copy(tmp_path, private=False), config=CHECKOV_CONFIG)
    record_property("checkov_seconds", round(elapsed, 1))
    print(f"checkov took {elapsed:.1f}s: {report['summary']}")
    problems = checkov_problems(report)
    assert not problems, "checkov:\n" + "\n".join(problems)


def test_private_networking_passes_the_network_checks_without_skips(tmp_path):
    """With the option on, storage and Key Vault pass CKV_AZURE_35/59/109/189 with no skip of them."""
    config = tmp_path / "checkov.yaml"
    config.write_text("\n".join(line for line in CHECKOV_CONFIG.read_text().splitlines()
                                if line.strip().removeprefix("- ") not in NETWORK_CHECKS) + "\n")
    assert not NETWORK_CHECKS & set(re.findall(r"CKV2?_AZURE_\d+", config.read_text()))
    report, _ = run_checkov(decided_copy(tmp_path, private=True), config=config)
    problems = checkov_problems(report)
    assert not problems, "checkov (private networking):\n" + "\n".join(problems)
    passed = {(c["check_id"], c["resource"]) for c in report["results"]["passed_checks"]}
    for check in NETWORK_CHECKS:
        resources = {resource for check_id, resource in passed if check_id == check}
        expected = 2 if check in {"CKV_AZURE_35", "CKV_AZURE_59"} else 1  # two storage accounts, one vault
        assert len(resources) == expected, f"{check} passed on {resources}"


def test_every_skip_has_a_reason_and_is_still_needed(tmp_path):
    skips = checkov_skips()
    assert skips, "no skip list found in .checkov.yaml"
    for check_id, reason in skips.items():
        assert len(reason) >= 30, f"{check_id} is skipped without a reason comment above it"
    # Without the skip list, exactly the skipped checks fail (default, public mode): a skip that no longer
    # fires must go. (checkov reads the .checkov.yaml of the scanned folder by itself: the copy has none.)
    report, _ = run_checkov(decided_copy(tmp_path, private=False), config=None)
    failing = {c["check_id"] for c in report["results"].get("failed_checks", [])}
    assert not report["summary"].get("parsing_errors")
    assert failing - set(skips) == set(), f"failing and not skipped: {failing - set(skips)}"
    assert set(skips) - failing == set(), f"skipped but no longer failing (remove): {set(skips) - failing}"


def test_no_inline_checkov_suppressions():
    for path in BICEP_FILES:
        assert "checkov:skip" not in path.read_text(), f"{path}: skips belong in infra/bicep/.checkov.yaml"


def test_checkov_parse_errors_count_as_failures(tmp_path):
    """checkov exits 0 when a file does not parse; checkov_problems must still report it."""
    copy = tmp_path / "bicep"
    shutil.copytree(BICEP_DIR, copy)
    with (copy / "modules" / "storage.bicep").open("a") as f:
        f.write("\nresource broken 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n")
    report, _ = run_checkov(copy, config=copy / ".checkov.yaml")
    problems = checkov_problems(report)
    assert any(p.startswith("parse error") for p in problems), problems


# ---------------------------------------------------------------------------------------------------
# 3. What scanners do not check
# ---------------------------------------------------------------------------------------------------


def _without_comments(text: str) -> str:
    """Bicep text without // comments (comments may name what the template avoids)."""
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("//"):
            continue
        lines.append(line.split(" // ", 1)[0])
    return "\n".join(lines)


def test_no_keys_are_listed_or_embedded():
    for path in [*BICEP_FILES, BICEP_DIR / "main.parameters.json"]:
        text = _without_comments(path.read_text())
        assert not re.search(r"(^|\s)/\*", text), f"{path.name}: use // comments (this check strips only those)"
        assert not re.search(r"\blist[A-Za-z]*\(", text), f"{path.name}: list*() returns keys or secrets"
        for marker in ("AccountKey=", "SharedAccessSignature", "DefaultEndpointsProtocol", "InstrumentationKey="):
            assert marker not in text, f"{path.name}: {marker}"
        assert "@secure()" not in text, f"{path.name}: no secret may pass through a template parameter"


def test_storage_refuses_shared_keys_and_public_blobs(bicep):
    accounts = resources_of_type(bicep, "Microsoft.Storage/storageAccounts")
    assert len(accounts) == 2, "the host/tables account and the deployment package account"
    for account in accounts:
        props = account["config"]["properties"]
        assert props["allowSharedKeyAccess"] is False
        assert props["allowBlobPublicAccess"] is False
        assert props["minimumTlsVersion"] == "TLS1_2"
        assert props["supportsHttpsTrafficOnly"] is True
        assert props["defaultToOAuthAuthentication"] is True
    for container in resources_of_type(bicep, "Microsoft.Storage/storageAccounts/blobServices/containers"):
        assert container["config"]["properties"]["publicAccess"] == "None"


def test_key_vault_uses_rbac_with_purge_protection(bicep):
    props = one(bicep, "Microsoft.KeyVault/vaults")["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True
    assert "accessPolicies" not in props
    # The template creates no secret: the signing key is made by the postprovision hook.
    assert not resources_of_type(bicep, "Microsoft.KeyVault/vaults/secrets")


def test_application_insights_refuses_local_auth(bicep):
    assert one(bicep, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True


def test_function_app_is_flex_consumption_python_311_with_the_user_assigned_identity(bicep):
    plan = one(bicep, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True
    site = one(bicep, "Microsoft.Web/sites")
    assert "linux" in site["kind"]
    assert site["identity"]["type"] == "UserAssigned"
    props = site["properties"]
    assert props["httpsOnly"] is True
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert len(resources_of_type(bicep, "Microsoft.ManagedIdentity/userAssignedIdentities")) == 1
    # Basic-auth publishing is off.
    policies = resources_of_type(bicep, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {p["config"]["name"]: p["config"]["properties"]["allow"] for p in policies} == {"ftp": False, "scm": False}


def _app_settings(bicep) -> dict[str, Any]:
    configs = [r["config"] for r in resources_of_type(bicep, "Microsoft.Web/sites/config")]
    settings = [c for c in configs if c["name"] == "appsettings"]
    assert len(settings) == 1, "expected one appsettings resource"
    return settings[0]["properties"]


def test_app_settings_match_the_settings_model(bicep):
    template = set(_app_settings(bicep))
    fields = Settings.model_fields
    without_alias = {name for name, field in fields.items() if not field.alias}
    assert without_alias == set(DERIVED_FIELDS), f"settings fields without an env name: {without_alias}"
    code = {field.alias for field in fields.values() if field.alias}
    assert set(LOCAL_ONLY_SETTINGS) <= code, "LOCAL_ONLY_SETTINGS names a setting the code no longer has"

    expected = code - set(LOCAL_ONLY_SETTINGS)
    app_side = template - HOST_SETTINGS
    assert expected - app_side == set(), f"read by the code, not set by the template: {expected - app_side}"
    assert app_side - expected == set(), f"set by the template, read by nobody: {app_side - expected}"
    assert template & set(LOCAL_ONLY_SETTINGS) == set(), "a local-only setting is set in Azure"
    assert HOST_SETTINGS <= template, f"missing host settings: {HOST_SETTINGS - template}"
    assert template & FORBIDDEN_SETTINGS == set()


def test_app_settings_are_identity_based_and_hold_no_secret(bicep):
    settings = _app_settings(bicep)
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    for name, value in settings.items():
        text = json.dumps(value)
        assert not re.search(r"(?i)list_?keys|list_?secrets|accountkey|sharedaccesssignature|secret|password",
                             text), name


def test_tables_are_the_tables_the_code_uses(bicep):
    assert set(LOCAL_ONLY_TABLES) <= set(TABLES), "LOCAL_ONLY_TABLES names a table the code no longer has"
    storage = bicep["modules/storage.bicep"]
    created = storage["variables"]["serviceTables"]["value"]
    assert sorted(created) == sorted(set(TABLES) - set(LOCAL_ONLY_TABLES))
    tables = resources_of_type(bicep, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert len(tables) == 1
    assert tables[0]["raw"]["config"]["loop_type"]["detail"]["array_name"] == "serviceTables"
    # Table names carry the same prefix the app reads (MC_TABLE_PREFIX).
    assert tables[0]["config"]["name"] == "${tablePrefix}${table}"
    assert _app_settings(bicep)["MC_TABLE_PREFIX"] == "tablePrefix"


def test_role_assignments(bicep):
    roles = bicep["modules/role-assignments.bicep"]
    variables = {name: v["value"] for name, v in roles["variables"].items()}
    for name, role_id in ROLE_IDS.items():
        assert variables.get(name) == role_id, f"{name} must be the built-in role {role_id}"
    granted: dict[str, set[str]] = {"identityPrincipalId": set(), "adminPrincipalId": set(),
                                    "deployIdentityPrincipalId": set()}
    scopes: dict[str, str] = {}
    for resource in resources_of_type(bicep, "Microsoft.Authorization/roleAssignments"):
        props = resource["config"]["properties"]
        role = next(name for name in [*ROLE_IDS, "appSecretsRole"] if name in json.dumps(props["roleDefinitionId"]))
        granted[props["principalId"]].add(role)
        scopes[f"{props['principalId']}:{role}"] = resource["config"]["scope"]
    assert granted["identityPrincipalId"] == APP_IDENTITY_ROLES
    assert granted["deployIdentityPrincipalId"] == DEPLOY_IDENTITY_ROLES
    assert granted["adminPrincipalId"] == ADMIN_ROLES
    # The deployment identity reaches the package container only; the runtime identity has no role on the
    # package account at all, so it cannot overwrite the code it runs.
    assert scopes["deployIdentityPrincipalId:storageBlobDataContributor"] == "packageContainer"
    assert all(scope in {"storage", "vault", "dataKey", "appInsights"} for key, scope in scopes.items()
               if key.startswith("identityPrincipalId:"))
    # The key role reaches the one key, not the vault's other keys.
    assert scopes["identityPrincipalId:keyVaultCryptoServiceEncryptionUser"] == "dataKey"
    assert scopes["adminPrincipalId:keyVaultCryptoServiceEncryptionUser"] == "dataKey"


def test_runtime_key_vault_role_is_secrets_officer_without_purge_backup_restore(bicep):
    role = one(bicep, "Microsoft.Authorization/roleDefinitions")["properties"]
    assert role["type"] == "CustomRole"
    (permission,) = role["permissions"]
    assert permission["actions"] == [] and permission["notActions"] == []
    assert permission["dataActions"] == ["Microsoft.KeyVault/vaults/secrets/*"]
    assert set(permission["notDataActions"]) == {
        f"Microsoft.KeyVault/vaults/secrets/{action}/action" for action in ("purge", "backup", "restore")}
    assert len(role["assignableScopes"]) == 1 and "resource_group" in json.dumps(role["assignableScopes"])


def _walk_keys(value: Any) -> set[str]:
    """Every property name anywhere below a parsed value."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            keys |= _walk_keys(item)
    elif isinstance(value, list):
        for item in value:
            keys |= _walk_keys(item)
    return keys


def test_nothing_flex_consumption_refuses(bicep):
    site = one(bicep, "Microsoft.Web/sites")
    written = _walk_keys(site["properties"])
    assert written & FLEX_REFUSED_SITE_PROPERTIES == set(), f"Flex refuses: {written & FLEX_REFUSED_SITE_PROPERTIES}"
    settings = set(_app_settings(bicep))
    assert settings & FLEX_REFUSED_APP_SETTINGS == set()
    assert not [s for s in settings if s.startswith(FLEX_REFUSED_APP_SETTING_PREFIXES)]


def test_the_flex_check_has_teeth(tmp_path):
    """The old template's ftpsState (ARM error 51021) is caught."""
    copy = tmp_path / "function-app.bicep"
    text = (BICEP_DIR / "modules" / "function-app.bicep").read_text()
    copy.write_text(text.replace("minTlsVersion: '1.2'", "minTlsVersion: '1.2'\n      ftpsState: 'Disabled'"))
    tree = parse_files([copy])["bicep"][str(copy)]["json"]
    site = next(r for r in tree["resources"].values() if r["type"] == "Microsoft.Web/sites")
    assert _walk_keys(site["config"]["properties"]) & FLEX_REFUSED_SITE_PROPERTIES == {"ftpsState"}


def test_host_storage_uris_come_from_the_account_for_sovereign_clouds(bicep):
    settings = _app_settings(bicep)
    for service in ("blob", "queue", "table"):
        value = json.dumps(settings[f"AzureWebJobsStorage__{service}ServiceUri"])
        assert "primaryEndpoints" in value and f'"{service}"' in value, value
    assert "core.windows.net" not in json.dumps(bicep), "host names come from the account or environment()"


def test_location_is_limited_to_flex_consumption_regions(bicep):
    location = bicep["main.bicep"]["parameters"]["location"]
    allowed = next(d["argument"] for d in location["decorators"] if d["type"] == "allowed")
    assert {"eastus", "westeurope", "australiaeast"} <= set(allowed)
    assert all(re.fullmatch(r"[a-z0-9]+", region) for region in allowed)
    assert len(allowed) == len(set(allowed)) >= 25


def test_outputs_name_the_service_and_hold_no_secret(bicep):
    outputs = bicep["main.bicep"]["outputs"]
    assert REQUIRED_OUTPUTS <= set(outputs), f"missing outputs: {REQUIRED_OUTPUTS - set(outputs)}"
    assert outputs["MC_OAUTH_REDIRECT_URI"]["value"].endswith("/oauth")
    for tree in bicep.values():
        for name, output in tree.get("outputs", {}).items():
            text = json.dumps(output)
            assert not re.search(r"(?i)connectionstring|instrumentationkey|list_?keys|list_?secrets|secret|password",
                                 text), name
            assert not re.search(r"(?i)(secret|password|connection|_key$)", name), name


def test_parameters_file_feeds_azd_values(bicep):
    params = json.loads((BICEP_DIR / "main.parameters.json").read_text())["parameters"]
    values = {name: p["value"] for name, p in params.items()}
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"
    # Empty unless set: Azure then looks the admin's principal type up, so a person and a pipeline
    # (ServicePrincipal) both provision without UnmatchedPrincipalType.
    assert values["principalType"] == "${AZURE_PRINCIPAL_TYPE}"
    assert bicep["main.bicep"]["parameters"]["principalType"]["default"] == ""
    declared = bicep["main.bicep"]["parameters"]
    assert set(values) <= set(declared), f"parameters main.bicep does not declare: {set(values) - set(declared)}"
    required = {name for name, p in declared.items() if "default" not in p}
    assert required <= set(values), f"parameters azd cannot fill: {required - set(values)}"


def test_azure_yaml(parsed):
    project = parsed["yaml"][str(ROOT / "azure.yaml")]
    assert project["infra"]["path"] == "infra/bicep"
    assert project["infra"].get("provider", "bicep") == "bicep"
    assert len(project["services"]) == 1
    (name, service), = project["services"].items()
    assert (service["host"], service["language"], service["project"]) == ("function", "python", ".")
    # azd finds the app by this tag.
    assert "'azd-service-name': serviceName" in (BICEP_DIR / "modules" / "function-app.bicep").read_text()
    assert f"serviceName: '{name}'" in (BICEP_DIR / "main.bicep").read_text()
    hooks = project["hooks"]["postprovision"]
    for platform in ("posix", "windows"):
        script = ROOT / hooks[platform]["run"]
        assert script.is_file(), script
    assert os.access(ROOT / hooks["posix"]["run"], os.X_OK)


def test_funcignore_keeps_the_package_to_the_app():
    lines = {line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    for excluded in ("tests", "tools", "infra", "docs", "node_modules", ".venv", ".venv-iac",
                     "local.settings.json", "requirements-dev.txt", "requirements-iac.txt"):
        assert excluded in lines, f".funcignore must exclude {excluded}"
    for kept in ("function_app.py", "host.json", "requirements.txt", "shared"):
        assert kept not in lines, f".funcignore must not exclude {kept}"


def test_check_tools_stay_out_of_the_runtime_requirements():
    runtime = (ROOT / "requirements.txt").read_text().lower()
    for tool in ("checkov", "pycep"):
        assert tool not in runtime
    pins = [line for line in (ROOT / "requirements-iac.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), "pin the IaC tools exactly"


# ---------------------------------------------------------------------------------------------------
# 5. The guide
# ---------------------------------------------------------------------------------------------------


def test_deploy_guide_covers_the_path_to_the_first_mailbox():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("azd up", "/oauth", "create-token", "add-app", "/v1/authentication/form",
                   "Mail.ReadWrite.Shared", "Mail.Send.Shared", "IMAP.AccessAsUser.All", "SMTP.Send",
                   "admin consent", "mc-signing-key", "ensure-signing-key --rotate", "curl"):
        assert needle in guide, f"docs/deploy.md does not mention {needle}"
    assert "rotate" in guide.lower() and "client secret" in guide.lower()


def test_deploy_guide_admin_helper_blanks_every_local_only_setting():
    """The guide's mc() must win over a developer's local.settings.json for every local-only setting."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    helper = guide[guide.index("mc() {"):guide.index("python -m shared.cli", guide.index("mc() {"))]
    blanked = set(re.findall(r"\b(MC_[A-Z_]+)= ", helper))
    assert blanked == set(LOCAL_ONLY_SETTINGS), f"mc() blanks {sorted(blanked)}"


def test_deploy_guide_lists_every_table_the_template_creates(bicep):
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for table in bicep["modules/storage.bicep"]["variables"]["serviceTables"]["value"]:
        assert f"`{table}`" in guide, f"docs/deploy.md does not list table {table}"
