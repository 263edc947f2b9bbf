"""The import rules of ``shared/`` (README, "Layout"), checked on the source: an AST walk, no import-linter.

Layers, lowest first: leaves (settings, errors, clouds, signing) < checks < schemas < {storage, microsoft} <
core < {signin, handoff, webhooks} < admin < {web, cli}. A module imports only layers below its own, or its
own layer; peers (storage and microsoft; signin, handoff and webhooks) never import each other; only ``web``
imports ``azure.functions``; ``__init__.py`` files import nothing (a cold start pays for every import).
Imports inside functions and ``TYPE_CHECKING`` blocks count: a lazy import hides a cycle, it does not
remove it. There is no list of tolerated exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"

RANK = {"leaf": 0, "checks": 1, "schemas": 2, "storage": 3, "microsoft": 3, "core": 4,
        "signin": 5, "handoff": 5, "webhooks": 5, "admin": 6, "web": 7, "cli": 7}

# Module or package -> layer. Every module under shared/ must be placed: a new top-level module needs a line
# here (and a reason it is not in one of the packages).
LAYER_OF = {
    "shared": "leaf",
    "shared.settings": "leaf", "shared.errors": "leaf", "shared.clouds": "leaf", "shared.signing": "leaf",
    "shared.checks": "checks",
    "shared.schemas": "schemas",
    "shared.storage": "storage",
    "shared.microsoft": "microsoft",
    "shared.core": "core",
    "shared.signin": "signin",
    "shared.handoff": "handoff",
    "shared.webhooks": "webhooks",
    "shared.admin": "admin",
    "shared.web": "web",
    "shared.cli": "cli",
}


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
    assert not found, "imports against the layer rule (leaves < checks < schemas < storage, microsoft < core < " \
                      "signin, handoff, webhooks < admin < web, cli):\n" + \
                      "\n".join(f"  {where}: {a} ({layer(a)}) imports {b} ({layer(b)})"
                                for (a, b), where in found.items())


def test_only_web_imports_azure_functions():
    for path in SHARED.rglob("*.py"):
        module = module_name(path)
        imports = {name for name, _ in imported_modules(ast.parse(path.read_text()))}
        if "azure.functions" in imports:
            assert layer(module) == "web", f"{module} imports azure.functions; only web/ may"


def test_init_files_import_nothing():
    for path in SHARED.rglob("__init__.py"):
        assert not imported_modules(ast.parse(path.read_text())), f"{path.relative_to(ROOT)} imports"


def test_a_wrong_import_is_caught(tmp_path):
    """A leaf importing the admin layer lazily inside a function, peers importing each other (also under
    TYPE_CHECKING), and one allowed import as the control."""
    root = tmp_path / "shared"
    for package in ("handoff", "signin", "microsoft"):
        (root / package).mkdir(parents=True)
    (root / "settings.py").write_text("def load():\n    from shared.admin.accounts import x\n")
    (root / "handoff" / "keepalive.py").write_text("import shared.webhooks.dispatcher\n")
    (root / "signin" / "flow.py").write_text("from shared.handoff.tokens import mark_connected\n")
    (root / "microsoft" / "identity.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shared.storage.tables.apps import OAuthApp\n")
    (root / "handoff" / "tokens.py").write_text("from shared.storage.tables.client import table\n")  # allowed
    found = violations(root)
    assert set(found) == {("shared.settings", "shared.admin.accounts"),
                          ("shared.handoff.keepalive", "shared.webhooks.dispatcher"),
                          ("shared.signin.flow", "shared.handoff.tokens"),
                          ("shared.microsoft.identity", "shared.storage.tables.apps")}
    assert found[("shared.settings", "shared.admin.accounts")].endswith("settings.py:2")


def test_every_package_says_what_it_holds_and_may_import():
    for path in SHARED.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert len(doc) > 80, f"{path.relative_to(ROOT)}: say what lives here and what it may import"
