"""Logs as deployed (issue 14 point 6): one structured line per request, no library chatter.

The service runs in its own process with the Functions worker's logging set-up (root logger at INFO, one handler
that takes every record: ``bench.logs.ServiceProcess``, i.e. ``python -m tools.localhost``), and host.json's
category filter is applied to what it writes (``bench.logs.passes``). A request must then leave exactly one
line: ``mailbox_connect.request`` with method, path (never the query), function, status, latency, the calls it
made to each dependency and the id of its API token; nothing from the Azure SDK, MSAL or urllib3.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from bench.logs import ServiceProcess, host_log_levels, passes, threshold
from shared.core.apps import register_app
from shared.settings import get_settings
from shared.storage.tables.apitokens import create_token
from shared.web import logs
from tools.azurite import free_port

FIELDS = ("method", "path", "function", "status", "ms", "table", "keyvault", "microsoft", "other")
LIBRARIES = ("azure", "msal", "urllib3", "requests")


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


@pytest.fixture
def deployed(env, set_env, identity) -> Iterator[tuple[ServiceProcess, str, str, str]]:
    """The service process, an API token, its id and the OAuth app id."""
    port = free_port()
    set_env(MC_PUBLIC_URL=f"http://localhost:{port}", MC_AUTHORITY_HOST=identity.host, MC_CA_BUNDLE=identity.ca_bundle,
            MC_ACCESS_CHECK="off")
    client_id, client_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    identity.add_client(client_id, client_secret, [f"http://localhost:{port}/oauth"])
    app = register_app(name="logs", client_id=client_id, client_secret_value=client_secret, settings=get_settings())
    token, record = create_token("logs", ("api", "admin"))
    service = ServiceProcess(dict(os.environ), port).wait_listening()
    try:
        yield service, token, record.id, app.id
    finally:
        service.stop()
    assert not any(token in line for line in service.text())


def lines_of(service: ServiceProcess, mark: int, requests_made: int, function: str) -> list[tuple[str, str, str]]:
    """(level, logger, line) of every line the requests since ``mark`` left after host.json's filter, the local
    host's own request line excepted (it stands for the real host's, which host.json filters: checked below)."""
    records = service.wait_requests(mark, requests_made)
    deadline = time.monotonic() + 5  # the request line may still be in the pipe behind the host's own line
    while not any(r.logger == "mailbox_connect.request" and f"function={function} " in r.lines[0] for r in records) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
        records = service.since(mark)
    levels = host_log_levels()
    return [(r.level, r.logger, line) for r in records if r.logger != "localhost"
            and passes(r.level, function, levels) for line in r.lines]


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line.split(": ", 1)[1]))


def test_a_form_request_writes_exactly_one_line_with_its_fields(deployed):
    service, token, token_id, app_id = deployed
    auth = {"Authorization": f"Bearer {token}"}
    seen = []
    for _ in range(2):
        mark = service.mark()
        answer = _http().post(service.url + "/v1/authentication/form", headers=auth, timeout=30,
                              json={"redirectUrl": "https://app.example/done", "type": app_id})
        assert answer.status_code == 200, answer.text
        [(level, logger, line)] = lines_of(service, mark, 1, "authentication_form")
        assert (level, logger) == ("INFO", "mailbox_connect.request"), line
        seen.append(fields(line))
    for found in seen:
        assert set(FIELDS) <= set(found), found
        assert (found["method"], found["path"], found["function"], found["status"], found["token"]) == (
            "POST", "/v1/authentication/form", "authentication_form", "200", token_id)
        assert float(found["ms"]) > 0 and (found["keyvault"], found["microsoft"], found["other"]) == ("0", "0", "0")
    # The API token and the app (and, on Azurite only, each table's creation at its first use), then both cached.
    assert int(seen[0]["table"]) >= 2 and seen[1]["table"] == "0"


def test_a_hosted_redirect_logs_its_path_without_the_query(deployed):
    service, token, _, app_id = deployed
    link = _http().post(service.url + "/v1/authentication/form", headers={"Authorization": f"Bearer {token}"},
                        json={"redirectUrl": "https://app.example/done", "type": app_id}, timeout=30).json()["url"]
    mark = service.mark()
    answer = _http().get(link, allow_redirects=False, timeout=30)
    assert answer.status_code == 302, answer.text
    [(level, logger, line)] = lines_of(service, mark, 1, "accounts_new")
    found = fields(line)
    assert (logger, found["path"], found["status"], found["function"]) == (
        "mailbox_connect.request", "/accounts/new", "302", "accounts_new")
    assert "?" not in line and "data=" not in line and "sig=" not in line and "token" not in found
    assert int(found["microsoft"]) >= 1 and int(found["table"]) >= 1  # Microsoft's discovery, the used-link row
    state = dict(p.split("=", 1) for p in urlsplit(answer.headers["Location"]).query.split("&"))["state"]
    assert not any(state in text for text in service.text())  # the sign-in state is in no log line


def test_a_refused_token_is_one_line_too(deployed):
    service, token, _, _ = deployed
    assert _http().get(service.url + "/v1/oauth2", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    bogus = "mc_" + secrets.token_urlsafe(32)
    mark = service.mark()
    answer = _http().get(service.url + "/v1/accounts", headers={"Authorization": f"Bearer {bogus}"}, timeout=30)
    assert answer.status_code == 401
    [(_, logger, line)] = lines_of(service, mark, 1, "accounts_list")
    found = fields(line)
    assert (logger, found["status"], found["table"]) == ("mailbox_connect.request", "401", "1") and "token" not in found
    assert not any(bogus in text for text in service.text())


def test_no_library_writes_at_info_as_deployed(deployed):
    """Everything a sign-in start, forms and listings write, before host.json's filter: nothing from the
    libraries (the SDK's HTTP logging policy alone wrote ~25 lines per Table call at INFO)."""
    service, token, _, app_id = deployed
    auth = {"Authorization": f"Bearer {token}"}
    mark = service.mark()
    link = _http().post(service.url + "/v1/authentication/form", headers=auth, timeout=30,
                        json={"redirectUrl": "https://app.example/done", "type": app_id}).json()["url"]
    assert _http().get(link, allow_redirects=False, timeout=30).status_code == 302
    assert _http().get(service.url + "/v1/accounts", headers=auth, timeout=30).status_code == 200
    assert _http().get(service.url + "/v1/oauth2", headers=auth, timeout=30).status_code == 200
    records = service.wait_requests(mark, 4)
    assert [r.logger for r in records if r.logger.split(".")[0] in LIBRARIES] == []
    assert sorted(r.logger for r in records if r.logger != "localhost") == ["mailbox_connect.request"] * 4


def test_host_json_keeps_the_request_lines_of_every_function_and_drops_the_hosts_own():
    import function_app

    levels = host_log_levels()
    function_app.app.functions_bindings = None  # get_functions() refuses a second call in one process otherwise
    names = sorted(f.get_function_name() for f in function_app.app.get_functions())
    missing = [n for n in names if threshold(f"Function.{n}.User", levels) > threshold("Function.x.User", {})]
    assert missing == [], f'add "Function.<name>.User": "Information" to host.json logging.logLevel for {missing}'
    for name in names:
        assert passes("INFO", name, levels)  # our line
        assert not passes("INFO", name, levels, user=False)  # the host's Executing/Executed lines
        assert passes("WARNING", name, levels, user=False)  # its warnings and errors still come through


def test_library_loggers_are_capped_and_the_leak_floors_hold_whatever_is_asked():
    try:
        logs.configure()
        assert logging.getLogger("azure").level == logging.WARNING
        assert logging.getLogger("azure.data.tables").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("msal").level == logging.WARNING
        assert logging.getLogger("urllib3").level == logging.WARNING
        logs.configure("debug")  # MC_SDK_LOG_LEVEL=DEBUG: the SDK, but never below what would log secrets
        assert logging.getLogger("azure").level == logging.DEBUG
        assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").level == logging.WARNING
        assert logging.getLogger("msal").level == logging.INFO
        assert logging.getLogger("urllib3").level == logging.INFO
        logs.configure("nonsense", "WARNING")  # MC_LOG_LEVEL=WARNING: our request lines are off
        assert logging.getLogger("azure").level == logging.WARNING
        assert not logging.getLogger(logs.REQUEST_LOGGER).isEnabledFor(logging.INFO)
    finally:
        logs.configure_from_environment()
    assert logging.getLogger(logs.OUR_LOGGER).level == logging.NOTSET  # ours follow the host unless asked


def test_dependencies_are_told_apart_by_host():
    assert logs.kind_of("acct.table.core.windows.net") == "table"
    assert logs.kind_of("vault-1.vault.azure.net") == "keyvault"
    assert logs.kind_of("login.microsoftonline.com") == "microsoft"
    assert logs.kind_of("graph.microsoft.us") == "microsoft"
    assert logs.kind_of("hooks.example.com") == "other"


def test_the_path_never_carries_a_query_or_a_control_character():
    assert logs._path_of("http://h:1/oauth?code=abc&state=def") == "/oauth"
    assert logs._path_of("https://h/v1/account/a%0Ab") == "/v1/account/a%0Ab"
    assert logs._path_of("https://h/v1/x\ny z#frag") == "/v1/x%0Ay%20z"
    assert logs._path_of("https://h") == "/"


def test_the_counts_are_per_request_in_the_process(service, caplog):
    """In process too (the test's own service): each request's record carries its own calls."""
    with caplog.at_level(logging.INFO, logger=logs.REQUEST_LOGGER):
        for _ in range(2):
            assert service.form(type=service.app.id).status_code == 200
    first, second = [r.request for r in caplog.records if r.name == logs.REQUEST_LOGGER]  # type: ignore[attr-defined]
    assert (first["function"], first["table"], second["table"]) == ("authentication_form", 2, 0)
    assert logs.current_calls() is None  # nothing counts outside a request
