"""Every property the Bicep templates write exists in Bicep's own resource type definitions.

No Bicep compiler can run here, so ``tests/bicep_types.py`` does its type check offline against the
definitions in ``../shared/bicep-types`` (bicep-types-az, one ``<namespace>@<api version>.json`` each): for
every resource declared in every ``.bicep`` file under infra/bicep, every property path it writes must exist
in ``<Type>@<api version>`` and not be read-only, an object written literally must hold the required
properties, and a literal value must fit (a string enum's values, the kind of value, integer ranges). A
resource type or API version without a definition fails too: ask for the file in an issue note. ``existing``
resources write nothing, but their type and version must exist. Failures read
``file: resource symbol: Type@version: path.to.property — why``.

What this cannot see: what Azure refuses at deployment although the type allows it, e.g. the site
properties and app settings a Flex Consumption plan rejects; tests/test_infra.py keeps that list.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.bicep_types import check_template
from tests.test_infra import BICEP_DIR, ROOT, parse_files

TYPES_DIR = ROOT.parent / "shared" / "bicep-types"

# Findings accepted on purpose, each with its reason: the message exactly as reported -> why. Most Azure enums
# are open (Bicep accepts any string), so a value newer than the API version's list would land here.
ACCEPTED: dict[str, str] = {}


def _require_types() -> None:
    if not any(TYPES_DIR.glob("*@*.json")):
        pytest.fail(f"no type definitions in {TYPES_DIR}: the repository is cloned with ../shared/ beside it "
                    "(bicep-types, see its README.md)", pytrace=False)


def problems_of(parsed: dict[str, dict], base: Path) -> list[str]:
    """`file: symbol: Type@version: path — why` for every parsed file (pycep results keyed by path)."""
    problems: list[str] = []
    for name, result in sorted(parsed.items()):
        label = Path(name).relative_to(base).as_posix()
        if not result["ok"]:
            problems.append(f"{label}: does not parse, so its resources are not checked: {result['error'][:300]}")
            continue
        problems += [f"{label}: {p}" for p in check_template(result["json"], TYPES_DIR)]
    return problems


def check_files(paths: list[Path], base: Path) -> list[str]:
    _require_types()
    return problems_of(parse_files(paths)["bicep"], base)


@pytest.fixture(scope="session")
def templates() -> dict[str, dict]:
    """Every .bicep file under infra/bicep, found now (new modules are covered) and parsed once."""
    _require_types()
    return parse_files(sorted(BICEP_DIR.rglob("*.bicep")))["bicep"]


def _declared_types(templates: dict[str, dict]) -> set[str]:
    return {f"{r['type']}@{r['api_version']}" for t in templates.values() if t["ok"]
            for r in t["json"].get("resources", {}).values()}


# ---------------------------------------------------------------------------------------------------
# The templates
# ---------------------------------------------------------------------------------------------------


def test_every_property_the_templates_write_is_in_the_type_definitions(templates):
    problems = [p for p in problems_of(templates, BICEP_DIR) if p not in ACCEPTED]
    assert not problems, ("what the templates write that Bicep's type definitions do not have:\n"
                          + "\n".join(problems))


def test_accepted_findings_are_still_found(templates):
    stale = set(ACCEPTED) - set(problems_of(templates, BICEP_DIR))
    assert not stale, f"no longer reported, remove them from ACCEPTED: {sorted(stale)}"


def test_the_check_covers_the_core_resources(templates):
    types = {t.split("@")[0] for t in _declared_types(templates)}
    assert types >= {"Microsoft.Web/sites", "Microsoft.Web/sites/config", "Microsoft.Storage/storageAccounts",
                     "Microsoft.KeyVault/vaults", "Microsoft.Authorization/roleAssignments"}, types


# ---------------------------------------------------------------------------------------------------
# The check has teeth
# ---------------------------------------------------------------------------------------------------


def _copy_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of infra/bicep/<name> in tmp_path with one exact edit (the edit must apply exactly once)."""
    text = (BICEP_DIR / name).read_text()
    assert text.count(old) == 1, f"{name} no longer holds {old!r} exactly once: update this test"
    target = tmp_path / "edited" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace(old, new))
    return target


def _copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / "original" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BICEP_DIR / name, target)
    return target


def test_a_misspelled_property_and_a_wrong_enum_value_are_reported(tmp_path):
    originals = [_copy(tmp_path, "modules/function-app.bicep"), _copy(tmp_path, "modules/storage.bicep")]
    edited = [_copy_with(tmp_path, "modules/function-app.bicep", "httpsOnly: true", "httpsOnlly: true"),
              _copy_with(tmp_path, "modules/storage.bicep", "minimumTlsVersion: 'TLS1_2'",
                         "minimumTlsVersion: 'TLS1_9'")]
    parsed = parse_files(originals + edited)["bicep"]
    before, after = ({k: v for k, v in parsed.items() if Path(k).is_relative_to(tmp_path / part)}
                     for part in ("original", "edited"))
    before, after = problems_of(before, tmp_path / "original"), problems_of(after, tmp_path / "edited")
    new = sorted(set(after) - set(before))
    assert len(new) == 2 and not set(before) - set(after), new
    assert re.fullmatch(r"modules/function-app\.bicep: \w+: Microsoft\.Web/sites@[\d-]+: properties\.httpsOnlly"
                        r" — not in the type definition \(did you mean 'httpsOnly'\?\)", new[0]), new[0]
    assert re.fullmatch(r"modules/storage\.bicep: \w+: Microsoft\.Storage/storageAccounts@[\d-]+: "
                        r"properties\.minimumTlsVersion — 'TLS1_9' is not one of 'TLS1_0', 'TLS1_1', 'TLS1_2'.*",
                        new[1]), new[1]


OPEN = " (an open enum: Azure may know newer values)"

# Small templates, one per behaviour, parsed together once (tmp files: nothing under infra/ changes).
CASES: dict[str, tuple[str, list[str]]] = {
    "unknown_version": ("""
resource site 'Microsoft.Web/sites@2099-01-01' = {
  name: 'x'
  location: 'westeurope'
}
resource old 'Microsoft.Storage/storageAccounts@2099-01-01' existing = {
  name: 'y'
}
""", [
        "site: Microsoft.Web/sites@2099-01-01 — no type definition: {types} has no microsoft.web@2099-01-01.json"
        " (ask for it in an issue note if this API version is the one to use)",
        "old: Microsoft.Storage/storageAccounts@2099-01-01 — no type definition: {types} has no"
        " microsoft.storage@2099-01-01.json (ask for it in an issue note if this API version is the one to use)",
    ]),
    "unknown_type": ("""
resource site 'Microsoft.Web/sitez@2024-04-01' = {
  name: 'x'
}
""", ["site: Microsoft.Web/sitez@2024-04-01 — no type definition: microsoft.web@2024-04-01.json has no resource"
      " type Microsoft.Web/sitez@2024-04-01 (ask for it in an issue note if the type is right)"]),
    "read_only_and_kinds": ("""
param enabled bool
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv'
  location: 'westeurope'
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'premium'
    }
    hsmPoolResourceId: '/x'
    enableRbacAuthorization: 'yes'
    softDeleteRetentionInDays: true
    enablePurgeProtection: enabled
    EnableSoftDelete: true
    networkAcls: {
      defaultAction: 'Deny'
      ipRules: [
        {
          value: '1.2.3.4'
          valu: 'x'
        }
      ]
      '${enabled}': true
    }
  }
}
""", [
        "vault: Microsoft.KeyVault/vaults@2023-07-01: properties.hsmPoolResourceId — read-only in the type definition"
        " (Azure sets it; a template cannot)",
        "vault: Microsoft.KeyVault/vaults@2023-07-01: properties.enableRbacAuthorization — expected boolean,"
        " got string 'yes'",
        "vault: Microsoft.KeyVault/vaults@2023-07-01: properties.softDeleteRetentionInDays — expected integer,"
        " got boolean true",
        "vault: Microsoft.KeyVault/vaults@2023-07-01: properties.EnableSoftDelete — spelled 'enableSoftDelete'"
        " in the type definition",
        "vault: Microsoft.KeyVault/vaults@2023-07-01: properties.networkAcls.ipRules[0].valu — not in the type"
        " definition (did you mean 'value'?)",
        "vault: Microsoft.KeyVault/vaults@2023-07-01: properties.networkAcls.${enabled} — a computed name, but the"
        " type has only named properties",
    ]),
    "app_settings_and_dictionaries": ("""
param identityId string
param mode string
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'app'
  location: 'westeurope'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    siteConfig: {
      minTlsVersion: mode
      ftpsState: 'Sometimes'
    }
  }
  resource nested 'config' = {
    name: 'web'
    properties: {
      numberOfWorkers: -1
      alwaysOn: 'true'
    }
  }
}
resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: {
    ANY_NAME_AT_ALL: 'value'
    'dashed-name': string(1)
    NESTED: {
      no: 'objects'
    }
  }
}
resource webConfig 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'web'
  properties: {
    http20Enabled: true
    http20Enabld: true
  }
}
resource odd 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsetings'
}
resource ftp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}
""", [
        "site: Microsoft.Web/sites@2024-04-01: properties.siteConfig.ftpsState — 'Sometimes' is not one of"
        " 'AllAllowed', 'FtpsOnly', 'Disabled'" + OPEN,
        "settings: Microsoft.Web/sites/config@2024-04-01: properties.NESTED — expected string, got an object",
        "webConfig: Microsoft.Web/sites/config@2024-04-01: properties.http20Enabld — not in the type definition"
        " (did you mean 'http20Enabled'?)",
        "odd: Microsoft.Web/sites/config@2024-04-01: name — 'appsetings' is not one of appsettings, authsettings,"
        " authsettingsV2, azurestorageaccounts, backup, connectionstrings, logs, metadata, pushsettings,"
        " slotConfigNames, web",
        "site::nested: Microsoft.Web/sites/config@2024-04-01: properties.alwaysOn — expected boolean, got string"
        " 'true'",
    ]),
    "loops_conditions_and_names": ("""
param names array
param principalType string
resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for name in names: {
  name: name
  properties: {
    signedIdentifiers: [for id in names: {
      id: id
      accessPolicy: {
        permission: 'r'
        startTme: 'x'
      }
    }]
  }
}]
resource role 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalType)) {
  name: guid('x')
  properties: {
    principalId: 'p'
    principalType: principalType
    roleDefinitionId: 'r'
    principalTyp: 'User'
  }
}
resource incomplete 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid('z')
  properties: {
    principalId: 'p'
  }
}
resource group 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid('y')
  properties: {
    principalId: 'p'
    principalType: 'Robot'
    roleDefinitionId: 'r'
  }
}
""", [
        "tables: Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01: properties.signedIdentifiers[*]"
        ".accessPolicy.startTme — not in the type definition (did you mean 'startTime'?)",
        "role: Microsoft.Authorization/roleAssignments@2022-04-01: properties.principalTyp — not in the type"
        " definition (did you mean 'principalType'?)",
        "incomplete: Microsoft.Authorization/roleAssignments@2022-04-01: properties.roleDefinitionId — required by"
        " the type definition, and not written",
        "group: Microsoft.Authorization/roleAssignments@2022-04-01: properties.principalType — 'Robot' is not one"
        " of 'User', 'Group', 'ServicePrincipal', 'ForeignGroup', 'Device', 'AgentUser', 'AgentServicePrincipal'"
        + OPEN,
    ]),
    "network_types": ("""
resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: 'vnet'
  location: 'westeurope'
  properties: {
    addressSpace: {
      addressPrefixes: [
        '10.0.0.0/16'
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: '10.0.1.0/24'
          delegations: [
            {
              name: 'flex'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          privateEndpointNetworkPolicies: 'disabled'
        }
      }
    ]
  }
}
resource subnet 'Microsoft.Network/virtualNetworks/subnets@2024-05-01' = {
  parent: vnet
  name: 'pe'
  properties: {
    addressPrefix: '10.0.2.0/24'
    privateEndpointNetworkPolicies: 'Off'
  }
}
resource zone 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: 'privatelink.blob.core.windows.net'
  location: 'global'
}
resource link 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: zone
  name: 'link'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}
resource pe 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: 'pe'
  location: 'westeurope'
  properties: {
    subnet: {
      id: subnet.id
    }
    privateLinkServiceConnections: [
      {
        name: 'blob'
        properties: {
          privateLinkServiceId: 'x'
          groupIds: [
            'blob'
          ]
        }
      }
    ]
  }
}
resource dns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: pe
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'blob'
        properties: {
          privateDnsZoneId: zone.id
        }
      }
    ]
  }
}
resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid('custom')
  properties: {
    roleName: 'Package reader'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: []
        dataActions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'
        ]
      }
    ]
  }
}
""", [
        "subnet: Microsoft.Network/virtualNetworks/subnets@2024-05-01: properties.privateEndpointNetworkPolicies —"
        " 'Off' is not one of 'Enabled', 'Disabled', 'NetworkSecurityGroupEnabled', 'RouteTableEnabled'" + OPEN,
    ]),
}


@pytest.fixture(scope="module")
def case_problems(tmp_path_factory) -> dict[str, list[str]]:
    """Problems per case of CASES, all parsed in one run."""
    _require_types()
    folder = tmp_path_factory.mktemp("bicep_cases")
    for name, (text, _) in CASES.items():
        (folder / f"{name}.bicep").write_text(text)
    found: dict[str, list[str]] = {name: [] for name in CASES}
    for problem in check_files(sorted(folder.glob("*.bicep")), folder):
        file, _, rest = problem.partition(": ")
        found[file.removesuffix(".bicep")].append(rest)
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_checker_reports_exactly_what_is_wrong(case, case_problems):
    expected = [m.replace("{types}", str(TYPES_DIR)) for m in CASES[case][1]]
    assert case_problems[case] == expected


def test_an_unknown_api_version_of_a_real_template_is_reported(tmp_path):
    text = (BICEP_DIR / "modules" / "function-app.bicep").read_text()
    edited, count = re.subn(r"'Microsoft\.Web/sites@[\d-]+'", "'Microsoft.Web/sites@2099-01-01'", text)
    assert count == 1, "function-app.bicep no longer declares one Microsoft.Web/sites: update this test"
    (tmp_path / "function-app.bicep").write_text(edited)
    problems = check_files([tmp_path / "function-app.bicep"], tmp_path)
    missing = [p for p in problems if "2099-01-01" in p]
    assert len(missing) == 1 and "has no microsoft.web@2099-01-01.json (ask for it in an issue note" in missing[0]
    assert re.match(r"function-app\.bicep: \w+: Microsoft\.Web/sites@2099-01-01 — no type definition", missing[0])
