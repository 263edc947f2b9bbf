"""Fuzz every ``/v1`` operation of the served OpenAPI document with schemathesis, against the real service
(local host, Azurite, the fake Microsoft identity platform).

For every operation of ``GET /v1/openapi.json``, schema-valid ("positive") and schema-invalid ("negative")
requests are generated, with a valid API token (scopes ``api`` and ``admin``) and with none. Every answer
must be

* no 5xx (``not_a_server_error``), with a status the document lists for the operation
  (``status_code_conformance``), the documented content type and headers, and a body that validates
  against the documented schema (``response_schema_conformance``, errors included: ``ErrorBody``);
* a 4xx for a request the schema does not allow (``negative_data_rejection``);
* without a token: 401 with an ``ErrorBody`` on every operation that declares the API token, and a 401
  again when the token is removed from a request that succeeded with it (``ignored_auth``).

``positive_data_acceptance`` is not used: the document cannot express every business rule (``redirectUrl``
must be an absolute https URL inside the allowlist, ``type`` must name an enabled app, an account id has a
character set, ...), so a schema-valid request may rightly get a 400; what the 400 looks like is checked.

Path parameters are random strings or, for part of the examples, the ids of an existing account, OAuth app
and (expendable) API token, so the code behind a found resource is fuzzed too (updates, re-auth links,
the token hand-off, deletes); schema-valid bodies are also sent with the fields the business rules check
(``redirectUrl``, ``type``, ...) set to good values, so the success paths are fuzzed as well. Operations run
in document order with the deletes last (a delete may remove a seeded resource for the deletes after it,
which only changes which documented answer they get). Query parameters with an empty value are left out of
a request: the Functions host drops them before the function sees them (``tools.localhost`` does too).

schemathesis' pytest integration (``schemathesis.pytest.from_fixture``) does not work with pytest 9.2 (it
sets ``node._nodeid``), so the test drives its Python API (``operation.as_strategy`` +
``case.call_and_validate``) under hypothesis itself, one operation after the other, and reports the failures
of all operations together.

Hostile values the schema cannot describe (``test_hostile_values_in_every_field_of_every_operation``, issue 12
point 6): a schema-valid case with one value made hostile: any string of the body (at any depth, object keys
included) or of the query turned into text with a lone surrogate or a Unicode non-character, or any body
value replaced by arrays/objects nested up to thousands deep, or by a number of up to 5,000 digits, ``1e999``
or ``NaN``. Every such request must get a 4xx with an error body, never a 5xx nor a 2xx (nothing of it may be
stored), and afterwards no row is orphaned (``tests.invariants.problems``).

Runtime is bounded by ``EXAMPLES`` (examples per operation, mode and parameter source); the whole module
takes about 25 s on two cores (``MC_FUZZ_EXAMPLES=100`` for a longer run).
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.storage.tables.apitokens import create_token
from shared.storage.tables.client import table
from tests.invariants import problems, survey
from tests.service import APP_REDIRECT

EXAMPLES = int(os.environ.get("MC_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, missing_required_header]


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


@pytest.fixture
def seeded(service, identity) -> dict[str, str]:
    """One connected account (and the link that made it), the service's OAuth app and an expendable API token,
    for path parameters."""
    user = identity.add_user("fuzz@contoso.com", email="fuzz@contoso.com")
    result = service.sign_in(service.link(name="Fuzz"), user).returned
    _, spare = create_token("spare", ("api",))
    return {"account": result["account"], "app": service.app.id, "id": spare.id, "link": result["link"]}


def load_schema(service, token: str | None = None) -> Any:
    config = schemathesis.Config.from_dict(
        {"auth": {"openapi": {"bearerAuth": {"bearer": token}}}} if token else {})
    schema = schemathesis.openapi.from_url(f"{service.url}/v1/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: the seeded ids live longer
    assert len(operations) >= 15, [op.label for op in operations]
    return schema, operations


def plausible(seeded: dict[str, str]):
    """Make a generated body pass the business rules the schema cannot express, keeping the other fuzzed
    fields, so the success paths (links for every field combination, ...) are fuzzed too."""
    fixes = {"redirectUrl": lambda v: APP_REDIRECT, "type": lambda v: seeded["app"],
             "email": lambda v: "shared@contoso.com", "expectedEmail": lambda v: "shared@contoso.com",
             "account": lambda v: "fuzz-account", "expiresIn": lambda v: 600}

    def fix(case):
        if isinstance(case.body, dict):
            case.body = {k: fixes[k](v) if k in fixes and v is not None else v for k, v in case.body.items()}
        return case

    return fix


def strategy(operation: Any, mode: GenerationMode, seeded: dict[str, str]):
    """Random path parameters and bodies; for schema-valid cases also the seeded resource's id and bodies
    that pass the business rules."""
    generated = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.NEGATIVE:
        return generated
    known = {p.name: seeded[p.name] for p in operation.path_parameters if p.name in seeded}
    if known:
        generated = st.one_of(generated, operation.as_strategy(generation_mode=mode, path_parameters=known))
    if operation.body:
        generated = st.one_of(generated, generated.map(plausible(seeded)))
    return generated


def fuzz(operations, seeded: dict[str, str], modes, checks, examples: int, *, anonymous: bool = False,
         extra=None) -> dict[str, BaseException]:
    """Run every operation in every mode; collect failures per operation instead of stopping at the first.
    ``anonymous``: send no ``Authorization`` header at all."""
    failures: dict[str, BaseException] = {}
    statuses: dict[str, Counter] = {}

    def fuzz_one(operation, mode) -> None:
        """One operation in one mode; its own scope, so the test below closes over these arguments."""

        @fuzz_settings(examples)
        @given(case=strategy(operation, mode, seeded))
        def run(case):
            if isinstance(case.query, dict):
                # The Functions host drops query parameters with an empty value (``?cursor=``) before the
                # function sees them (tools/localhost.py does the same): send what the service can see. An
                # empty object or list serialises to ``?pageSize=`` too.
                case.query = {k: v for k, v in case.query.items() if v not in ("", None, [], {})}
            if anonymous and case.headers:
                case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
            response = case.call_and_validate(checks=checks, timeout=30)
            statuses.setdefault(operation.label, Counter())[response.status_code] += 1
            if extra is not None:
                extra(case, response)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report all operations together
            failures[f"{operation.label} ({mode.value})"] = exc

    for operation in operations:
        for mode in modes:
            fuzz_one(operation, mode)
    for label, counts in statuses.items():  # shown with -s: which answers the fuzzing reached
        print(f"{label}: {dict(sorted(counts.items()))}")
    return failures


def report(failures: dict[str, BaseException]) -> str:
    return "\n\n".join(f"=== {label}\n{exc}" for label, exc in failures.items())


def test_every_operation_with_a_valid_token(service, seeded):
    schema, operations = load_schema(service, service.token)
    failures = fuzz(operations, seeded, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE), CHECKS + [ignored_auth],
                    EXAMPLES)
    assert not failures, report(failures)
    # The fuzzing's own token still works (it never revoked itself) and nothing was half-written.
    assert service.api("GET", "/v1/tokens").status_code == 200
    assert_no_dangling_rows()


def test_every_operation_without_a_token(service, seeded):
    schema, operations = load_schema(service)

    def refused(case, response) -> None:
        if "x-required-scope" not in case.operation.definition.raw:
            assert response.status_code < 500
            return
        assert response.status_code == 401, (case.operation.label, response.status_code, response.text[:300])
        body = response.json()
        assert body["code"] and body["message"], body

    failures = fuzz(operations, seeded, (GenerationMode.POSITIVE,), CHECKS, max(3, EXAMPLES // 2), anonymous=True,
                    extra=refused)
    assert not failures, report(failures)
    assert table("accounts").get_entity(seeded["account"], "")  # nothing was changed without a token


# --- hostile values (issue 12 point 6) ------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
NONCHARACTERS = st.sampled_from(["\ufffe", "\uffff", *map(chr, range(0xFDD0, 0xFDF0)),
                                 *(chr(plane << 16 | low) for plane in range(1, 17) for low in (0xFFFE, 0xFFFF))])


def ill_formed(bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text with one bad character somewhere (start, middle, end, or alone)."""
    return st.builds(lambda before, char, after: before + char + after, st.text(max_size=8), bad, st.text(max_size=8))


MARK = "\u2063hostile\u2063"  # stands for the raw JSON that replaces it


def slots(value: Any, path: tuple = ()) -> list[tuple[tuple, str]]:
    """Every place in a JSON value: ("value", path) for each value (strings too), ("key", path) for each key."""
    found: list[tuple[tuple, str]] = [(path, "value")] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append(((*path, key), "key"))
            found += slots(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += slots(item, (*path, i))
    return found


def put(value: Any, path: tuple, new: Any, where: str) -> Any:
    """A copy of ``value`` with the value (or the key) at ``path`` replaced by ``new``."""
    out = copy.deepcopy(value)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    if where == "key":
        parent[new] = parent.pop(path[-1])
    else:
        parent[path[-1]] = new
    return out


@st.composite
def hostile_request(draw, case) -> tuple[str, dict[str, Any], str]:
    """(kind, query, raw JSON body or "") of ``case`` with one hostile value."""
    body = case.body if isinstance(case.body, (dict, list)) else None
    query = dict(case.query) if isinstance(case.query, dict) else {}
    text_query = [k for k, v in query.items() if isinstance(v, str)]
    kinds = (["text", "nesting", "number"] if body is not None else []) + (["query"] if text_query else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "query":  # a URL carries UTF-8: non-characters travel, lone surrogates cannot
        query[draw(st.sampled_from(text_query))] = draw(ill_formed(NONCHARACTERS))
        return kind, query, json.dumps(body) if body is not None else ""
    places = slots(body) or [((), "root")]
    path, where = draw(st.sampled_from(places))
    if kind == "text" and where == "key":
        new_body = put(body, path, draw(ill_formed(st.one_of(SURROGATES, NONCHARACTERS))), "key")
        return kind, query, json.dumps(new_body)  # ensure_ascii: a surrogate goes out as its \\u escape
    if kind == "text":
        bad = draw(ill_formed(st.one_of(SURROGATES, NONCHARACTERS)))
        return kind, query, json.dumps(put(body, path, bad, "value") if path else {**body, "account": bad})
    if kind == "nesting":
        depth = draw(st.one_of(st.integers(33, 64), st.integers(65, 5000)))
        opener = draw(st.sampled_from(["[", '{"a":']))
        raw = opener * depth + ("1" if opener == '{"a":' else "") + ("]" if opener == "[" else "}") * depth
    else:
        raw = draw(st.one_of(st.integers(65, 5000).map(lambda n: "9" * n),
                             st.integers(65, 5000).map(lambda n: "-1" + "0" * n),
                             st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "2" * 65 + ".5"])))
    container = put(body, path, MARK, "value") if path else {"expiresIn": MARK}
    return kind, query, json.dumps(container).replace(json.dumps(MARK), raw)


def test_hostile_values_in_every_field_of_every_operation(service, seeded):
    schema, operations = load_schema(service, service.token)
    targets = [op for op in operations if op.body or any(p.location == "query" for p in op.iter_parameters())]
    assert len(targets) >= 8, [op.label for op in targets]
    failures: dict[str, BaseException] = {}
    kinds: Counter = Counter()

    def fuzz_one(operation) -> None:
        @fuzz_settings(max(10, EXAMPLES))
        @given(draw=st.data())
        def run(draw):
            case = draw.draw(strategy(operation, GenerationMode.POSITIVE, seeded), label="case")
            if isinstance(case.query, dict):
                case.query = {k: v for k, v in case.query.items() if v not in ("", None, [], {})}
            strings_in_query = any(isinstance(v, str) for v in (case.query or {}).values())
            if not isinstance(case.body, (dict, list)) and not strings_in_query:
                return  # nothing of this case to make hostile
            kind, query, raw = draw.draw(hostile_request(case), label="hostile")
            kinds[kind] += 1
            headers = {"Content-Type": "application/json"} if raw else {}
            response = service.api(operation.method.upper(), case.formatted_path, params=query,
                                   data=raw.encode() if raw else None, headers=headers)
            assert 400 <= response.status_code < 500, (kind, response.status_code, raw[:200], query,
                                                       response.text[:300])
            if not response.headers.get("Content-Type", "").startswith("application/json"):
                assert "<h1>" in response.text, response.text[:300]  # a hosted page, for a person
                return
            body = response.json()
            assert body["code"] and body["message"], body
            route_checked_first = body.get("field") in {p.name for p in operation.path_parameters}
            if kind in ("nesting", "number") and response.status_code == 400 and not route_checked_first:
                assert body["code"] == "invalid_json", (kind, raw[:200], body)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report all operations together
            failures[operation.label] = exc

    for operation in targets:
        fuzz_one(operation)
    print(dict(kinds))
    assert not failures, report(failures)
    assert service.api("GET", "/v1/tokens").status_code == 200
    assert_no_dangling_rows()
    assert problems(survey()) == []


def assert_no_dangling_rows() -> None:
    """Every account row still has its credential and index row (the fuzzing may delete accounts)."""
    from shared.storage.tables import principals

    for row in table("accounts").query_entities("RowKey eq ''"):  # account rows, not event rows
        credential = principals.get_credential(row["credentialId"])
        assert credential is not None, row["PartitionKey"]
        assert row["PartitionKey"] in principals.account_ids(row["credentialId"])
