"""Check parsed Bicep resources against Bicep's own resource type definitions (bicep-types-az types.json).

The Bicep compiler cannot run here, so this does offline what it does with the same data: every property
path a resource declaration writes must exist in the body of ``<Type>@<api version>`` and must not be
read-only, the required properties of an object written literally must be there, and a literal value must
fit the type (boolean / integer / string / object / array, integer ranges, string lengths, and a string enum's
listed values, even for the "open" enums Bicep lets any string through). Bicep only warns about most of these
in resource bodies, because the definitions can lag behind Azure; here every finding is an error. Expressions
(parameters, variables, function calls, operators, interpolated strings) are not evaluated: their value is
unknown, so only the property path they are written to is checked.

What it cannot check: what Azure refuses at deployment time although the type allows it (for example site
properties the Flex Consumption plan rejects, or values a region does not offer); that needs its own list.

The templates come from ``pycep-parser``'s JSON (see tests/test_infra.py ``parse_files``). That JSON prints a
string literal and an identifier the same way (``'Enabled'`` and ``accessCheck`` both become a plain string),
so a string equal to a name the file declares (parameter, variable, resource, module, loop variable) is taken
for an expression; a literal that happens to equal such a name is therefore not checked against an enum.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tests.test_infra import _body

# ObjectTypePropertyFlags of bicep-types (checked against the data: `id` is 10 = ReadOnly | DeployTimeConstant,
# a resource's `name` is 9 = Required | DeployTimeConstant, `provisioningState` is 2).
REQUIRED, READ_ONLY, WRITE_ONLY, DEPLOY_TIME_CONSTANT, IDENTIFIER = 1, 2, 4, 8, 16

# Keys of a resource declaration that are Bicep keywords rather than body properties (`depends_on` is how
# pycep marks a child resource declared inside its parent).
META_KEYS = frozenset({"parent", "scope", "dependsOn", "depends_on", "existing"})

ASK = "ask for it in an issue note"

Ref = dict[str, str]
Type = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# Type definition files
# ---------------------------------------------------------------------------------------------------


@cache
def _load(path: Path) -> tuple[Type, ...]:
    """One types.json, read once per process (the network provider's is over 1 MB)."""
    return tuple(json.loads(path.read_text()))


def definition_files(types_dir: Path, namespace: str, version: str) -> list[Path]:
    """Files that may hold ``<namespace>/...@<version>``: plain or prefixed (``privatedns.microsoft.network``)."""
    plain = f"{namespace.lower()}@{version.lower()}.json"
    if not types_dir.is_dir():
        return []
    return sorted(p for p in types_dir.iterdir() if p.name.lower() == plain or p.name.lower().endswith("." + plain))


@dataclass(frozen=True)
class Found:
    """A ResourceType and the type array (file) its refs point into."""

    types: tuple[Type, ...]
    resource: Type
    file: Path


def find_resource_type(types_dir: Path, type_: str, version: str) -> Found | str:
    """The ResourceType named ``type_@version``, or why there is none (a message for the failure list)."""
    full = f"{type_}@{version}"
    namespace = type_.split("/", 1)[0]
    files = definition_files(types_dir, namespace, version)
    if not files:
        return (f"no type definition: {types_dir} has no {namespace.lower()}@{version}.json "
                f"({ASK} if this API version is the one to use)")
    candidates = [Found(_load(f), t, f) for f in files for t in _load(f)
                  if t.get("$type") == "ResourceType" and t.get("name", "").lower() == full.lower()]
    if not candidates:
        names = ", ".join(f.name for f in files)
        return f"no type definition: {names} has no resource type {full} ({ASK} if the type is right)"
    writable = [c for c in candidates if c.resource.get("writableScopes", 1)]
    return (writable or candidates)[0]


# ---------------------------------------------------------------------------------------------------
# pycep values
# ---------------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"(?<!\\)\$\{")


def _is_expression_dict(value: dict) -> bool:
    """pycep writes a function call as {"function": {"type": ...}} and an operator as {"operator": {"type": ...}}."""
    if len(value) != 1:
        return False
    (key, inner), = value.items()
    return key in {"function", "operator"} and isinstance(inner, dict) and isinstance(inner.get("type"), str)


def _is_loop(value: dict) -> bool:
    """A `[for ...: {...}]` array: pycep writes {"loop_type", "condition", "config"}."""
    return "loop_type" in value and "config" in value


def _unquote(key: str) -> str:
    """Object keys keep their quotes in pycep's JSON ("'azd-service-name'")."""
    if len(key) >= 2 and key[0] == key[-1] == "'":
        key = key[1:-1]
    return re.sub(r"\\(.)", r"\1", key) if "\\" in key else key


def _literal(value: str) -> str:
    return re.sub(r"\\(['\\$])", r"\1", value)


def declared_names(tree: dict) -> set[str]:
    """Names a file's expressions can refer to: its parameters, variables, resources, modules, loop variables."""
    names: set[str] = set()
    for section, entries in tree.items():
        if section not in {"globals", "outputs"} and isinstance(entries, dict):
            for name in entries:
                names.update(name.split("__"))  # pycep names a nested child resource parent__child
    for node in _walk(tree):
        if isinstance(node, dict) and isinstance(node.get("loop_type"), dict):
            detail = node["loop_type"].get("detail") or {}
            names.update(v for k, v in detail.items() if k in {"item_name", "index_name"} and isinstance(v, str))
    return names


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


# ---------------------------------------------------------------------------------------------------
# Checking a value against a type
# ---------------------------------------------------------------------------------------------------


@dataclass
class Checker:
    """Checks values of one template file against one types.json (refs are file-relative)."""

    types: tuple[Type, ...]
    names: set[str] = field(default_factory=set)

    def resolve(self, ref: Ref | Type) -> Type:
        if "$ref" in ref:
            return self.types[int(ref["$ref"].rsplit("/", 1)[1])]
        return ref

    # -- what a value is ------------------------------------------------------------------------------

    def is_unknown(self, value: Any) -> bool:
        """An expression whose value cannot be known offline (or null, which omits the property)."""
        if value is None:
            return True
        if isinstance(value, dict):
            return _is_expression_dict(value)
        return isinstance(value, str) and value in self.names

    def literal_string(self, value: Any) -> str | None:
        """The text of a string literal without interpolation, else None."""
        if isinstance(value, str) and not self.is_unknown(value) and not _INTERPOLATION.search(value):
            return _literal(value)
        return None

    @staticmethod
    def describe_value(value: Any) -> str:
        if isinstance(value, bool):
            return f"boolean {str(value).lower()}"
        if isinstance(value, int):
            return f"integer {value}"
        if isinstance(value, str):
            return f"string '{value}'"
        if isinstance(value, list) or (isinstance(value, dict) and _is_loop(value)):
            return "an array"
        return "an object"

    def describe(self, type_: Type) -> str:
        kind = type_["$type"]
        if kind == "StringLiteralType":
            return f"'{type_['value']}'"
        if kind == "UnionType":
            return " | ".join(self.describe(self.resolve(e)) for e in type_["elements"])
        return {"StringType": "string", "IntegerType": "integer", "BooleanType": "boolean", "ArrayType": "array",
                "ObjectType": "object", "DiscriminatedObjectType": "object"}.get(kind, kind)

    # -- the check ------------------------------------------------------------------------------------

    def check(self, value: Any, ref: Ref | Type, path: str) -> list[str]:
        """Problems of writing ``value`` at ``path`` where the type is ``ref`` (messages `path — why`)."""
        value = _negative(value)
        if self.is_unknown(value):
            return []
        type_ = self.resolve(ref)
        kind = type_["$type"]
        if kind == "UnionType":
            return self._check_union(value, type_, path)
        if kind in {"ObjectType", "DiscriminatedObjectType"}:
            if isinstance(value, dict) and not _is_loop(value):
                if kind == "ObjectType":
                    return self.check_object(value, type_.get("properties", {}), type_.get("additionalProperties"),
                                             path)
                return self._check_discriminated(value, type_, path)
            return [self._mismatch(value, type_, path)]
        if kind == "ArrayType":
            return self._check_array(value, type_, path)
        if kind in {"StringType", "StringLiteralType", "IntegerType", "BooleanType"}:
            return self._check_scalar(value, type_, path)
        return []  # AnyType, and anything this checker does not know: accept

    def check_object(self, value: dict, properties: dict[str, dict], additional: Ref | None, path: str) -> list[str]:
        """Every key must be a writable property (or allowed by additionalProperties); recurse into values."""
        problems: list[str] = []
        by_lower = {name.lower(): name for name in properties}
        for raw_key, item in value.items():
            key = _unquote(raw_key)
            where = f"{path}.{key}" if path else key
            name = key if key in properties else by_lower.get(key.lower())
            if name is None:
                if additional is not None:
                    problems += self.check(item, additional, where)
                elif _INTERPOLATION.search(key):
                    problems.append(f"{where} — a computed name, but the type has only named properties")
                else:
                    problems.append(f"{where} — not in the type definition{self._suggest(key, properties)}")
                continue
            if name != key:
                problems.append(f"{where} — spelled '{name}' in the type definition")
                continue
            prop = properties[name]
            if prop.get("flags", 0) & READ_ONLY:
                problems.append(f"{where} — read-only in the type definition (Azure sets it; a template cannot)")
                continue
            problems += self.check(item, prop["type"], where)
        given = {_unquote(k) for k in value}
        for name, prop in properties.items():
            if prop.get("flags", 0) & REQUIRED and not prop.get("flags", 0) & READ_ONLY and name not in given:
                where = f"{path}.{name}" if path else name
                problems.append(f"{where} — required by the type definition, and not written")
        return problems

    @staticmethod
    def _suggest(key: str, properties: dict[str, dict]) -> str:
        writable = [n for n, p in properties.items() if not p.get("flags", 0) & READ_ONLY]
        close = difflib.get_close_matches(key, writable, n=1, cutoff=0.75)
        return f" (did you mean '{close[0]}'?)" if close else ""

    def _check_discriminated(self, value: dict, type_: Type, path: str) -> list[str]:
        """Pick the element the discriminator names; an expression discriminator must fit one element."""
        key = type_["discriminator"]
        where = f"{path}.{key}" if path else key
        elements = {name: self.resolve(ref) for name, ref in type_["elements"].items()}
        base = type_.get("baseProperties", {})
        given = {_unquote(k): v for k, v in value.items()}
        if key not in given:
            return [f"{where} — missing; it chooses the shape: one of {', '.join(sorted(elements))}"]
        literal = self.literal_string(given[key])
        if literal is not None:
            chosen = next((e for name, e in elements.items() if name.lower() == literal.lower()), None)
            if chosen is None:
                return [f"{where} — '{literal}' is not one of {', '.join(sorted(elements))}"]
            return self.check_object(value, {**base, **chosen.get("properties", {})},
                                     chosen.get("additionalProperties"), path)
        attempts = [self.check_object(value, {**base, **e.get("properties", {})}, e.get("additionalProperties"),
                                      path) for e in elements.values()]
        return min(attempts, key=len) if all(attempts) else []

    def _check_union(self, value: Any, type_: Type, path: str) -> list[str]:
        """Fits one member. A literal string must be a listed value even when the union also has StringType."""
        members = [self.resolve(e) for e in type_["elements"]]
        listed = [m["value"] for m in members if m["$type"] == "StringLiteralType"]
        literal = self.literal_string(value)
        if literal is not None and listed:
            if literal.lower() in {v.lower() for v in listed}:
                return []
            # Most Azure enums are "open" (StringType beside the values, so Bicep accepts any string), but
            # Azure still rejects a value it does not know: an unlisted value is almost always a typo.
            open_ = " (an open enum: Azure may know newer values)" if any(
                m["$type"] == "StringType" for m in members) else ""
            return [f"{path} — '{literal}' is not one of {_quoted(listed)}{open_}"]
        attempts = [self.check(value, m, path) for m in members]
        return min(attempts, key=len) if all(attempts) else []

    def _check_array(self, value: Any, type_: Type, path: str) -> list[str]:
        if isinstance(value, dict) and _is_loop(value):  # `[for x in xs: if (c) item]`: one item, checked once
            return self.check(value["config"], type_["itemType"], f"{path}[*]")
        if not isinstance(value, list):
            return [self._mismatch(value, type_, path)]
        problems: list[str] = []
        for index, item in enumerate(value):
            problems += self.check(item, type_["itemType"], f"{path}[{index}]")
        for bound, ok in (("minLength", len(value) >= type_.get("minLength", 0)),
                          ("maxLength", len(value) <= type_.get("maxLength", len(value)))):
            if not ok:
                problems.append(f"{path} — {len(value)} items, the type's {bound} is {type_[bound]}")
        return problems

    def _check_scalar(self, value: Any, type_: Type, path: str) -> list[str]:
        kind = type_["$type"]
        if kind in {"StringType", "StringLiteralType"} and isinstance(value, str):
            return self._check_string(value, type_, path)
        if kind == "BooleanType" and isinstance(value, bool):
            return []
        if kind == "IntegerType" and isinstance(value, int) and not isinstance(value, bool):
            low, high = type_.get("minValue"), type_.get("maxValue")
            if (low is not None and value < low) or (high is not None and value > high):
                return [f"{path} — {value} is outside the type's range {low}..{high}"]
            return []
        return [self._mismatch(value, type_, path)]

    def _check_string(self, value: str, type_: Type, path: str) -> list[str]:
        """A literal must be the literal type's value and fit the lengths; an interpolated string fits."""
        literal = self.literal_string(value)
        if literal is None:
            return []
        if type_["$type"] == "StringLiteralType":
            expected = type_["value"]
            return [] if literal.lower() == expected.lower() else [f"{path} — '{literal}' is not '{expected}'"]
        low, high = type_.get("minLength", 0), type_.get("maxLength")
        if len(literal) < low or (high is not None and len(literal) > high):
            return [f"{path} — '{literal}' has {len(literal)} characters, the type allows {low}..{high}"]
        return []

    def _mismatch(self, value: Any, type_: Type, path: str) -> str:
        return f"{path} — expected {self.describe(type_)}, got {self.describe_value(value)}"


def _quoted(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _negative(value: Any) -> Any:
    """pycep writes the literal -1 as the operator minus applied to 1: make it the integer again."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("operator"), dict):
        operator = value["operator"]
        operand = (operator.get("operands") or {}).get("integer_value")
        if operator.get("type") == "minus" and isinstance(operand, int) and not isinstance(operand, bool):
            return -operand
    return value


# ---------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------


def body_properties(checker: Checker, root: Type) -> set[str]:
    """Property names a resource body declares (of any element, for a discriminated body)."""
    if root["$type"] == "DiscriminatedObjectType":
        elements = [checker.resolve(ref) for ref in root["elements"].values()]
        return set(root.get("baseProperties", {})).union(*(e.get("properties", {}) for e in elements))
    return set(root.get("properties", {}))


def check_resource(symbol: str, resource: dict, names: set[str], types_dir: Path) -> list[str]:
    """Problems of one resource declaration, each prefixed `symbol: Type@version`."""
    symbol = symbol.replace("__", "::")  # pycep names a child declared inside its parent parent__child
    full = f"{resource['type']}@{resource['api_version']}"
    found = find_resource_type(types_dir, resource["type"], resource["api_version"])
    if isinstance(found, str):
        return [f"{symbol}: {full} — {found}"]
    if resource.get("existing"):
        return []  # an `existing` reference writes nothing
    if not found.resource.get("writableScopes", 1):
        return [f"{symbol}: {full} — the type is read-only (only an `existing` reference can use it)"]
    checker = Checker(found.types, names)
    root = checker.resolve(found.resource["body"])
    declared = body_properties(checker, root)
    body = {k: v for k, v in _body(resource["config"]).items() if _unquote(k) not in META_KEYS - declared}
    return [f"{symbol}: {full}: {problem}" for problem in checker.check(body, root, "")]


def check_template(tree: dict, types_dir: Path) -> list[str]:
    """Problems of every resource declared in one parsed file (pycep JSON)."""
    names = declared_names(tree)
    problems: list[str] = []
    for symbol, resource in tree.get("resources", {}).items():
        problems += check_resource(symbol, resource, names, types_dir)
    return problems
