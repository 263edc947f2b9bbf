"""Cold start: the Functions worker imports ``function_app`` when an instance starts, before any request. That
import registers the functions and nothing more: the blueprints import only ``azure.functions`` and the
standard library at module level, and each handler imports what it needs on its first call (issue #7).

Checked in a fresh interpreter by what gets loaded, not by timing (the numbers: ``docs/performance.md``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLUEPRINTS = ROOT / "shared" / "web" / "blueprints"

# Imported by a request's handler (or lazily deeper down), never by the worker's start-up.
HEAVY = ("pydantic", "msal", "azure.core", "azure.data", "azure.identity", "azure.keyvault", "requests",
         "cryptography")


def fresh(code: str, result: str = "None") -> tuple[set[str], Any]:
    """Run ``code`` in a fresh interpreter after ``import azure.functions``: the modules then loaded, and the
    value of the expression ``result`` (JSON)."""
    script = (f"import json, sys, azure.functions\n{code}\n"
              f"print(json.dumps({{'modules': sorted(sys.modules), 'result': {result}}}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}  # no setting is read at import
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    return set(answer["modules"]), answer["result"]


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_importing_function_app_loads_no_heavy_package():
    modules, _ = fresh("import function_app")
    assert [p for p in HEAVY if loaded(modules, p)] == []


def test_importing_function_app_loads_only_the_blueprints_of_our_package():
    modules, _ = fresh("import function_app")
    blueprints = {f"shared.web.blueprints.{p.stem}" for p in BLUEPRINTS.glob("*.py") if p.stem != "__init__"}
    assert {m for m in modules if loaded({m}, "shared")} == {
        "shared", "shared.web", "shared.web.api", "shared.web.logs", "shared.web.blueprints", *blueprints,
    }


def test_indexing_binds_every_function_without_importing_a_handler_dependency():
    """What the worker does at start-up: index the app, bind each trigger to a parameter it can resolve."""
    modules, bound = fresh(
        "import inspect, typing, function_app\n"
        "bound = {}\n"
        "for f in function_app.app.get_functions():\n"
        "    fn, trigger = f.get_user_function(), f.get_trigger()\n"
        "    hint = typing.get_type_hints(fn).get(trigger.name)\n"
        "    assert trigger.name in inspect.signature(fn).parameters, f.get_function_name()\n"
        "    bound[f.get_function_name()] = hint.__name__ if hint in vars(azure.functions).values() else repr(hint)",
        result="bound")
    decorated = sum(len(re.findall(r"^@bp\.(?:route|timer_trigger)\(", p.read_text(), re.M))
                    for p in BLUEPRINTS.glob("*.py"))
    assert len(bound) == decorated >= 25
    assert set(bound.values()) == {"HttpRequest", "TimerRequest"}  # func.HttpRequest, func.TimerRequest
    assert not loaded(modules, "pydantic") and "shared.web.http" not in modules


def test_a_token_hand_off_imports_no_other_area():
    """A first token hand-off (its token check stubbed, an invalid account id: no storage needed) imports the
    hand-off's modules and no other area's: not the OpenAPI builder, webhooks, forms or sign-in."""
    modules, answer = fresh(
        "import function_app, shared.web.auth\n"
        "shared.web.auth.require_token = lambda req, scope: None\n"
        "[handler] = [f.get_user_function() for f in function_app.app.get_functions()\n"
        "             if f.get_function_name() == 'account_oauth_token']\n"
        "response = handler(azure.functions.HttpRequest('GET', 'http://h/api/v1/account/a%3Fb/oauth-token',\n"
        "                                               route_params={'account': 'a?b'}, body=b''))",
        result="[response.status_code, json.loads(response.get_body())['field']]")
    assert answer == [400, "account"]
    assert "shared.handoff.tokens" in modules
    others = ("shared.web.openapi", "shared.webhooks.dispatcher", "shared.admin.forms", "shared.signin.flow",
              "shared.signin.pages", "shared.admin.accounts", "shared.admin.apps", "shared.admin.apitokens")
    assert [m for m in others if m in modules] == []
