"""The import rules of ``shared/`` (../shared/DESIGN.md, "Layout"), checked on the source.

Layers, lowest first: leaves < schemas < {storage, microsoft} < core < {signin, handoff, webhooks} < admin <
{web, cli}. A module imports only layers below its own, or its own layer's package; peers (storage and
microsoft; signin, handoff and webhooks) never import each other; only ``web`` imports ``azure.functions``;
``__init__.py`` files import nothing (a cold start pays for every import). Imports inside functions count:
a lazy import hides a cycle, it does not remove it.

Today ``shared/`` is still mostly flat, so :data:`LAYER_OF` places each module in the layer it is moving
to (issue 11). :data:`KNOWN_VIOLATIONS` lists the edges that break the rule today, each with its fix; a new
violation fails, and so does a listed one that no longer exists (take it off the list), so the list can
only shrink. As modules move into their packages, their entries here move with them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"

RANK = {"leaf": 0, "schemas": 1, "storage": 2, "microsoft": 2, "core": 3,
        "signin": 4, "handoff": 4, "webhooks": 4, "admin": 5, "web": 6, "cli": 6}

# Module (or package prefix) -> layer. Every module under shared/ must be placed.
LAYER_OF = {
    "shared": "leaf",
    "shared.settings": "leaf", "shared.errors": "leaf", "shared.clouds": "leaf", "shared.signing": "leaf",
    "shared.redirects": "leaf",
    "shared.models": "schemas", "shared.api_models": "schemas",
    "shared.tables": "storage", "shared.secrets": "storage", "shared.keys": "storage",
    "shared.azure_credential": "storage",
    "shared.identity": "microsoft", "shared.outbound": "microsoft", "shared.access_check": "microsoft",
    "shared.oauth_apps": "core", "shared.linkcodec": "core", "shared.events": "core",
    "shared.signin": "signin",
    "shared.tokens": "handoff", "shared.keepalive": "handoff",
    "shared.webhooks": "webhooks",
    "shared.accounts_service": "admin", "shared.apps_service": "admin", "shared.apitokens_service": "admin",
    "shared.forms": "admin", "shared.bootstrap": "admin",
    "shared.blueprints": "web", "shared.http": "web", "shared.auth": "web", "shared.openapi": "web",
    "shared.pages": "web",
    "shared.cli": "cli",
}

# (importer, imported) -> the fix planned in issue 11.
KNOWN_VIOLATIONS = {
    ("shared.api_models", "shared.webhooks"): "check_webhook_url moves to checks.py (one URL rule)",
    ("shared.webhooks", "shared.accounts_service"): "reauth_link_for moves to core/links",
    ("shared.signin", "shared.tokens"): "mark_connected moves to core/account_state",
    ("shared.identity", "shared.tables.apps"): "a Protocol for the OAuth app in microsoft/",
    ("shared.access_check", "shared.tables.apps"): "a Protocol for the OAuth app in microsoft/",
}

# __init__.py files that still import (re-exports, the blueprint decorator): issue 11 empties them.
KNOWN_IMPORTING_INITS = {"shared.secrets", "shared.blueprints"}


def module_name(path: Path, root: Path = SHARED) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The layer of a module: its own entry, else its longest placed package prefix."""
    name = module
    while name:
        if name in LAYER_OF:
            return LAYER_OF[name]
        name = name.rpartition(".")[0]
    return None


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """Every absolute import anywhere in the module (functions and TYPE_CHECKING blocks included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def allowed(importer: str, imported: str) -> bool:
    mine, theirs = layer(importer), layer(imported)
    if mine is None or theirs is None or mine == theirs:
        return True
    return RANK[theirs] < RANK[mine]


def violations(root: Path = SHARED) -> dict[tuple[str, str], str]:
    """(importer, imported) -> 'file:line' for every import that breaks the layer rule."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        for imported, line in imported_modules(ast.parse(path.read_text(), str(path))):
            if imported.startswith("shared.") and not allowed(importer, imported):
                found.setdefault((importer, imported), f"{path.relative_to(root.parent)}:{line}")
    return found


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in SHARED.rglob("*.py") if layer(module_name(p)) is None]
    assert not unplaced, f"place these in LAYER_OF (tests/test_layers.py): {unplaced}"


def test_imports_follow_the_layers():
    found = violations()
    new = {edge: where for edge, where in found.items() if edge not in KNOWN_VIOLATIONS}
    assert not new, "imports against the layer rule (leaves < schemas < storage, microsoft < core < " \
                    "signin, handoff, webhooks < admin < web, cli):\n" + \
                    "\n".join(f"  {where}: {a} ({layer(a)}) imports {b} ({layer(b)})" for (a, b), where in new.items())
    gone = set(KNOWN_VIOLATIONS) - set(found)
    assert not gone, f"fixed, so take them off KNOWN_VIOLATIONS: {sorted(gone)}"


def test_only_web_imports_azure_functions():
    for path in SHARED.rglob("*.py"):
        module = module_name(path)
        imports = {name for name, _ in imported_modules(ast.parse(path.read_text()))}
        if "azure.functions" in imports:
            assert layer(module) == "web", f"{module} imports azure.functions; only web/ may"


def test_init_files_import_nothing():
    for path in SHARED.rglob("__init__.py"):
        module = module_name(path)
        if module in KNOWN_IMPORTING_INITS:
            continue
        assert not imported_modules(ast.parse(path.read_text())), f"{path.relative_to(ROOT)} imports"
    still = {m for m in KNOWN_IMPORTING_INITS
             if imported_modules(ast.parse((SHARED.parent / m.replace(".", "/") / "__init__.py").read_text()))}
    assert still == KNOWN_IMPORTING_INITS, f"import-free now, take off the list: {KNOWN_IMPORTING_INITS - still}"


def test_a_wrong_import_is_caught(tmp_path):
    """A leaf importing the admin layer, lazily inside a function, and two peers importing each other."""
    root = tmp_path / "shared"
    root.mkdir()
    (root / "settings.py").write_text("def load():\n    from shared.accounts_service import x\n")
    (root / "keepalive.py").write_text("import shared.webhooks\n")
    (root / "tokens.py").write_text("from shared.tables.client import table\n")  # allowed: handoff > storage
    found = violations(root)
    assert set(found) == {("shared.settings", "shared.accounts_service"), ("shared.keepalive", "shared.webhooks")}
    assert found[("shared.settings", "shared.accounts_service")].endswith("settings.py:2")
