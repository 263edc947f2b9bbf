"""Millisecond tests of the pure functions: the URL rule, account ids and e-mail addresses, webhook backoff and
signatures, refresh-token rotation, scopes, listing cursors, the sign-in link codec.

No Azurite, no network, no service: every ``Settings`` is built in memory (the signing key comes from
``MC_SIGNING_KEY``, which needs no storage), and an autouse guard fails the test if anything opens a socket,
builds a Table Storage client or a secret store, or asks for a fixture that starts a service. The slow tests
(``test_links_and_redirects``, ``test_webhooks``, ``test_token_handoff``, ...) stay where real components matter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest

from shared.checks import (
    InvalidUrl,
    account_id_param,
    check_account_id,
    check_email,
    check_url,
    check_webhook_url,
    is_loopback,
    origin_of,
    validate_redirect_url,
    with_query,
)
from shared.errors import ApiError
from shared.settings import Settings, SettingsError

SLOW_FIXTURES = {"azurite", "env", "set_env", "service", "identity", "imap", "graph", "keyvault"}
KEY = "k" * 16 + "0123456789abcdef-pure-tests"  # >= 32 characters, like MC_SIGNING_KEY
OTHER_KEY = "o" * 40


@pytest.fixture(autouse=True)
def no_io(request, monkeypatch):
    """Fail loudly if a pure test reaches storage, a secret store, the network or a service fixture."""
    slow = SLOW_FIXTURES & set(request.fixturenames)
    assert not slow, f"a pure test must not use {sorted(slow)}"

    def refuse(*args, **kwargs):
        raise AssertionError("a pure test touched storage, a secret store or the network")

    monkeypatch.setattr("shared.storage.tables.client._service", refuse)
    monkeypatch.setattr("shared.storage.secrets.factory.build_secret_store", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def settings(**values: str) -> Settings:
    return Settings.model_validate({"MC_PUBLIC_URL": "https://mc.example", "MC_SIGNING_KEY": KEY, **values})


# --- the URL rule (shared.checks) ---------------------------------------------------------------------------

def redirect_ok(url: str, allowlist: tuple[str, ...] = ()) -> bool:
    try:
        return validate_redirect_url(url, allowlist) == url
    except InvalidUrl:
        return False


def webhook_ok(url: str) -> bool:
    try:
        return check_webhook_url(url) == url
    except InvalidUrl:
        return False


ACCEPTED_BY_BOTH = [
    "https://app.example/connected",
    "https://app.example:8443/cb?x=1&y=",
    "https://APP.Example/Path",
    "http://localhost/",
    "http://localhost:3000/",
    "HTTP://LOCALHOST:3000/cb",
    "http://127.0.0.1:8080/cb",
    "http://127.0.0.2/",
    "http://127.255.255.254/",
    "http://[::1]/",
    "http://[::1]:5000/hook",
    "https://[2001:db8::1]/",  # a routable IPv6 literal over https
    "https://203.0.113.7/",
]

REFUSED_BY_BOTH = [
    # metadata and other link-local, multicast, unspecified, reserved literals (over https too)
    "http://169.254.169.254/",
    "https://169.254.169.254/latest/meta-data/",
    "https://169.254.0.1/",
    "http://[fe80::1]/",
    "https://[fe80::1]/",
    "https://224.0.0.1/",
    "https://239.255.255.250/",
    "https://[ff02::1]/",
    "https://0.0.0.0/",
    "http://0.0.0.0:8080/",
    "https://[::]/",
    "https://240.0.0.1/",
    # plain http off loopback, look-alikes of localhost
    "http://app.example/",
    "http://localhost.evil.example/",
    "http://127.0.0.1.nip.io/",
    "http://10.0.0.1/",
    # credentials
    "https://user:pass@app.example/",
    "https://user@app.example/",
    "https://@app.example/",
    "http://localhost@evil.example/",
    # backslashes, whitespace and control characters (C0, DEL, C1 incl. NEL \x85, Unicode spaces)
    "https://app.example\\@evil.example/",
    "https://app.example/a\\b",
    "https://app.example/a b",
    "https://app.example/\t",
    "https://app.example/\n",
    " https://app.example/",
    "https://app.example/\x00",
    "https://app.example/\x7f",
    "https://app.example/\x85",
    "https://app.example/\x9f",
    "https://app.example/\u2028",
    "https://app.example/\u3000",
    # ports
    "https://app.example:0/",
    "https://app.example:65536/",
    "https://app.example:99999/",
    "https://app.example:abc/",
    "https://app.example:-1/",
    # not absolute http(s)
    "ftp://app.example/",
    "javascript:alert(1)",
    "data:text/html,hi",
    "file:///etc/passwd",
    "//app.example/cb",
    "/cb",
    "https:///cb",
    "https:app.example",
    "app.example",
    "",
    "   ",
]


@pytest.mark.parametrize("url", ACCEPTED_BY_BOTH)
def test_redirects_and_webhooks_accept_the_same_good_urls(url):
    assert redirect_ok(url) and webhook_ok(url)


@pytest.mark.parametrize("url", REFUSED_BY_BOTH)
def test_redirects_and_webhooks_refuse_the_same_bad_urls(url):
    assert not redirect_ok(url) and not webhook_ok(url)


def test_length_limit_is_2048_characters():
    base = "https://app.example/"
    longest = base + "x" * (2048 - len(base))
    assert redirect_ok(longest) and webhook_ok(longest)
    assert not redirect_ok(longest + "x") and not webhook_ok(longest + "x")


@pytest.mark.parametrize("value", [None, b"https://app.example/", 42])
def test_a_url_that_is_not_a_string_is_refused(value):
    with pytest.raises(InvalidUrl):
        check_url(value, fragment=True)


def test_a_redirect_keeps_its_fragment_a_webhook_refuses_one():
    assert redirect_ok("https://app.example/cb#section")
    assert redirect_ok("http://localhost:3000/#/connected")
    assert not webhook_ok("https://hooks.example/in#section")
    assert not webhook_ok("https://hooks.example/in#")  # an empty fragment too


def test_errors_are_value_errors_that_name_the_rule_without_repeating_the_url():
    with pytest.raises(ValueError) as caught:  # pydantic turns a ValueError into a field error
        validate_redirect_url("https://alice:hunter2@app.example/")
    message = str(caught.value)
    assert message.startswith("redirectUrl ") and "credentials" in message
    assert "hunter2" not in message and "alice" not in message
    with pytest.raises(InvalidUrl) as caught:
        check_webhook_url("http://hooks.example/in?token=s3cret")
    assert "https" in str(caught.value) and "s3cret" not in str(caught.value)
    with pytest.raises(InvalidUrl) as caught:
        check_webhook_url("https://169.254.169.254/")
    assert "link-local" in str(caught.value)


@pytest.mark.parametrize("host", ["2852039166", "0251.0376.0251.0376", "0xa9.0xfe.0xa9.0xfe", "169.254.43518", "0"])
def test_ip_literals_in_other_notations_are_refused_too(host):
    # socket.getaddrinfo(host) (what requests does) and browsers (WHATWG URL) read each of these as an IPv4
    # address: 169.254.169.254, or 0.0.0.0 for "0".
    assert not webhook_ok(f"https://{host}/") and not redirect_ok(f"https://{host}/")


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.0.0.2", True), ("127.255.255.254", True),
    ("[::1]", True), ("::1", True),
    ("localhost.example", False), ("0.0.0.0", False), ("10.0.0.1", False), ("[::]", False),
    ("app.example", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("url", "origin"), [
    ("https://app.example/cb?x=1#f", "https://app.example"),
    ("https://App.EXAMPLE/", "https://app.example"),
    ("HTTPS://APP.EXAMPLE", "https://app.example"),
    ("https://app.example:443/x", "https://app.example"),
    ("http://localhost:80/x", "http://localhost"),
    ("https://app.example:8443/x", "https://app.example:8443"),
    ("http://app.example:443/", "http://app.example:443"),  # 443 is not http's default
    ("http://localhost:3000/cb", "http://localhost:3000"),
    ("http://[::1]:3000/cb", "http://[::1]:3000"),
    ("http://[::1]/cb", "http://[::1]"),
])
def test_origin_of(url, origin):
    assert origin_of(url) == origin


def test_the_allowlist_matches_origins_case_insensitively_with_default_ports_normalised():
    allowlist = settings(MC_REDIRECT_ALLOWLIST="https://App.example/, http://localhost:3000").redirect_origins
    assert redirect_ok("https://app.example/connected", allowlist)
    assert redirect_ok("https://APP.EXAMPLE/x?y=1#z", allowlist)
    assert redirect_ok("https://app.example:443/connected", allowlist)
    assert redirect_ok("http://localhost:3000/cb", allowlist)
    for url in ("https://app.example:8443/", "http://app.example/", "https://evil.example/",
                "https://app.example.evil.example/", "https://evilapp.example/", "http://localhost/",
                "http://localhost:3001/", "http://127.0.0.1:3000/"):
        assert not redirect_ok(url, allowlist), url
    with pytest.raises(InvalidUrl, match="allowlist"):
        validate_redirect_url("https://evil.example/", allowlist)
    # the URL rule applies before the allowlist: an allowlisted origin does not admit a bad URL
    assert not redirect_ok("https://user:pw@app.example/", allowlist)
    assert not redirect_ok("http://localhost:3000/a b", allowlist)
    # no allowlist: any good URL
    assert redirect_ok("https://evil.example/", settings().redirect_origins)


def test_an_allowlist_entry_with_the_default_port_spelt_out_matches_its_origin():
    allowlist = settings(MC_REDIRECT_ALLOWLIST="https://app.example:443,http://LOCALHOST:80").redirect_origins
    assert redirect_ok("https://app.example/connected", allowlist)
    assert redirect_ok("http://localhost/cb", allowlist)
    assert not redirect_ok("https://app.example:8443/", allowlist)


@pytest.mark.parametrize("entry", ["app.example", "https://app.example/connected", "https://app.example:99999",
                                   "https://user:pw@app.example", "ftp://app.example", "https://app.example?x=1",
                                   "https://", "https://app.example#f", "https://[::1"])
def test_a_malformed_allowlist_entry_matches_nothing_and_never_fails_a_request(entry, caplog):
    # Decision: logged (by position, never its text) and ignored, the allowlist staying in force: a typo
    # refuses redirects instead of opening every origin, and the settings still load.
    allowlist = settings(MC_REDIRECT_ALLOWLIST=f"{entry}, https://good.example").redirect_origins
    assert redirect_ok("https://good.example/cb", allowlist)
    assert not redirect_ok("https://app.example/connected", allowlist)
    only_bad = settings(MC_REDIRECT_ALLOWLIST=entry).redirect_origins
    assert only_bad and not redirect_ok("https://app.example/connected", only_bad)  # fails closed
    assert "pw" not in caplog.text


@pytest.mark.parametrize("entry", ["https://app.example", "https://APP.example:443/", "HTTP://localhost:80",
                                   "http://[::1]:3000/", "https://203.0.113.7:8443", "https://[2001:DB8::1]"])
def test_an_allowlist_entry_is_spelt_as_origin_of_spells_the_url(entry):
    from shared.settings import normalise_origin

    assert normalise_origin(entry) == origin_of(entry.rstrip("/") + "/cb?x=1#f")


# --- internal addresses: SSRF (shared.checks.host_address, address_problem, check_webhook_url) ---------------

def internal_ok(url: str, local: bool = True) -> bool:
    try:
        return check_webhook_url(url, local=local) == url
    except InvalidUrl:
        return False


@pytest.mark.parametrize(("host", "address"), [
    ("2852039166", "169.254.169.254"), ("0251.0376.0251.0376", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"), ("0xA9FEA9FE", "169.254.169.254"), ("169.254.43518", "169.254.169.254"),
    ("169.16689662", "169.254.169.254"), ("0", "0.0.0.0"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("1.2.3.4.", "1.2.3.4"), ("010.0.0.1", "8.0.0.1"), ("0x", "0.0.0.0"),
    ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe"), ("[fd00:ec2::254]", "fd00:ec2::254"),
])
def test_every_spelling_of_an_ip_address_is_read_as_a_resolver_reads_it(host, address):
    from shared.checks import host_address

    assert str(host_address(host)) == address


@pytest.mark.parametrize("host", ["app.example", "1e100.net", "123.example", "xn--bcher-kva.example", "localhost"])
def test_host_names_are_not_addresses(host):
    from shared.checks import host_address

    assert host_address(host) is None


@pytest.mark.parametrize("host", ["08", "1.2.3.256", "256.1.1.1", "1.2.3.4.5", "a.b.0x", "example.09", "1.16777216",
                                  "::ffff:0251.0376.0251.0376", "1..2"])
def test_a_host_that_looks_numeric_but_is_no_address_is_refused(host):
    from shared.checks import host_address

    with pytest.raises(ValueError):
        host_address(host)
    bracketed = f"[{host}]" if ":" in host else host
    assert not redirect_ok(f"https://{bracketed}/") and not webhook_ok(f"https://{bracketed}/")


ALWAYS_REFUSED = ["168.63.129.16", "[fd00:ec2::254]", "100.100.100.200", "[::ffff:169.254.169.254]",
                  "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::1]", "0.1.2.3", "[::ffff:0.0.0.0]",
                  "255.255.255.255", "[fe80::1%25eth0]", "[::169.254.169.254]"]


@pytest.mark.parametrize("host", ALWAYS_REFUSED)
def test_metadata_wire_server_and_embedded_link_local_addresses_are_refused_everywhere(host):
    assert not redirect_ok(f"https://{host}/") and not webhook_ok(f"https://{host}/")
    assert not internal_ok(f"https://{host}/", local=True)


INTERNAL = ["10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1", "100.64.0.1",
            "100.127.255.254", "[fc00::1]", "[fd12:3456::1]", "[::ffff:10.0.0.1]", "[::ffff:192.168.0.1]",
            "[64:ff9b::a00:1]", "[2002:c0a8:101::1]", "192.0.0.170", "198.18.0.1", "[fec0::1]", "[2001::1]",
            "0xa.0.0.1", "167772161", "012.0.0.1"]


@pytest.mark.parametrize("host", INTERNAL)
def test_internal_addresses_are_refused_for_webhooks_but_not_for_redirects(host):
    # A redirect goes to a browser, which may reach an intranet app; a webhook is a request of the service.
    assert not internal_ok(f"https://{host}/hook")
    assert not internal_ok(f"https://{host}/hook", local=False)
    if not host.startswith(("0", "1677")):  # non-canonical spellings: the redirect case below
        assert redirect_ok(f"https://{host}/cb")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]:5000/hook",
                                 "https://127.0.0.2/hook", "https://[::ffff:127.0.0.1]/hook", "https://0x7f.1/hook",
                                 "https://localhost/hook", "https://hooks.localhost/hook"])
def test_loopback_webhooks_only_in_local_development(url):
    host_is_name = "localhost" in url
    assert internal_ok(url, local=True) or url.startswith("https://hooks.localhost")
    assert not internal_ok(url, local=False)
    if host_is_name:
        with pytest.raises(InvalidUrl, match="loopback"):
            check_webhook_url(url, local=False)


def test_running_in_azure_is_told_by_the_app_service_variables(monkeypatch):
    from shared.checks import running_locally

    for name in ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert running_locally() and webhook_ok("http://127.0.0.1:9/hook")
    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "abc")
    assert not running_locally() and not webhook_ok("http://127.0.0.1:9/hook")
    assert webhook_ok("https://hooks.example/in")


@pytest.mark.parametrize("url", ["https://203.0.113.7/", "https://[2001:db8::1]/", "https://1.1.1.1/",
                                 "https://[64:ff9b::808:808]/", "https://[2606:4700::1111]/", "https://8.8.8.8:8443/h"])
def test_public_addresses_are_fine_for_webhooks(url):
    assert internal_ok(url, local=False)


def test_a_refused_address_is_named_by_its_kind_not_by_the_url():
    with pytest.raises(InvalidUrl) as caught:
        check_webhook_url("https://10.1.2.3/in?token=s3cret")
    assert "private" in str(caught.value) and "s3cret" not in str(caught.value) and "10.1.2.3" not in str(caught.value)
    with pytest.raises(InvalidUrl, match="cloud metadata"):
        check_webhook_url("https://168.63.129.16/")
    with pytest.raises(InvalidUrl, match="carrier-grade NAT"):
        check_webhook_url("https://100.64.0.1/")


# --- the connection-time check (shared.webhooks.transport), with a resolver hook ---------------------------

def policy(answers: dict[str, list[str]], loopback: bool = False):
    from shared.webhooks.transport import AddressPolicy

    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return answers[host]

    return AddressPolicy(loopback=loopback, resolver=resolve), asked


@pytest.mark.parametrize("addresses", [["169.254.169.254"], ["10.0.0.5"], ["127.0.0.1"], ["::1"], ["0.0.0.0"],
                                       ["203.0.113.7", "10.0.0.5"], ["fd00:ec2::254"], ["::ffff:169.254.169.254"],
                                       ["168.63.129.16"], ["100.64.0.1"], ["fe80::1%2"], ["224.0.0.1"]])
def test_a_name_that_resolves_to_any_forbidden_address_is_refused(addresses):
    from shared.webhooks.transport import ForbiddenAddress

    checker, asked = policy({"hooks.example": addresses})
    with pytest.raises(ForbiddenAddress) as caught:
        checker.checked_addresses("hooks.example", 443)
    assert "hooks.example resolves to" in str(caught.value) and asked == ["hooks.example"]


def test_a_name_that_resolves_to_public_addresses_gives_exactly_those_checked_addresses():
    checker, asked = policy({"hooks.example": ["203.0.113.7", "2001:db8::7"]})
    assert [str(a) for a in checker.checked_addresses("hooks.example", 443)] == ["203.0.113.7", "2001:db8::7"]
    assert asked == ["hooks.example"]  # resolved once


def test_loopback_resolution_is_allowed_only_in_local_development():
    from shared.webhooks.transport import ForbiddenAddress

    local, _ = policy({"hooks.example": ["127.0.0.1"]}, loopback=True)
    assert [str(a) for a in local.checked_addresses("hooks.example", 80)] == ["127.0.0.1"]
    azure, _ = policy({"hooks.example": ["127.0.0.1"]}, loopback=False)
    with pytest.raises(ForbiddenAddress, match="loopback"):
        azure.checked_addresses("hooks.example", 80)


@pytest.mark.parametrize("host", ["2852039166", "0251.0376.0251.0376", "0xa9.0xfe.0xa9.0xfe", "169.254.43518", "0",
                                  "[::ffff:169.254.169.254]", "10.0.0.1", "0x7f.1"])
def test_an_address_literal_is_checked_without_asking_the_resolver(host):
    from shared.webhooks.transport import ForbiddenAddress

    checker, asked = policy({})
    with pytest.raises(ForbiddenAddress, match="the target is"):
        checker.checked_addresses(host, 443)
    assert asked == []


def test_a_name_that_does_not_resolve_is_a_resolution_error_not_a_refusal():
    checker, _ = policy({})
    with pytest.raises(socket.gaierror):
        checker.checked_addresses("nowhere.example", 443)


# --- hosted pages: HSTS (shared.signin.pages) ----------------------------------------------------------------

def test_hosted_pages_send_hsts_over_https_only():
    from shared.signin.pages import SECURITY_HEADERS, security_headers

    assert security_headers(True)["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in security_headers(False)
    assert security_headers(False) == SECURITY_HEADERS and "Strict-Transport-Security" not in SECURITY_HEADERS


def test_with_query_adds_and_replaces_parameters_and_keeps_the_rest_and_the_fragment():
    # EmailEngine keeps redirectUrl's own query and #fragment (issue 13); same-named parameters are ours.
    url = with_query("https://app.example/cb?keep=1&state=old&empty=#frag", {"state": "new", "account": "a b&c=d"})
    assert url == "https://app.example/cb?keep=1&empty=&state=new&account=a+b%26c%3Dd#frag"
    assert with_query("http://localhost:3000/", {"error": "access_denied"}) == "http://localhost:3000/?error=access_denied"
    assert with_query("https://app.example/cb?a=1", {"b": None}) == "https://app.example/cb?a=1"
    # The app's own parameters byte for byte (spelling, order, a flag without "="), an SPA route after "#"
    # (with its own "?" and "&"), and a spoof of ours under another spelling of the name.
    url = with_query("https://app.example/cb?x=a%20b&flag&y=%2F&st%61te=spoof#/done?tab=1&z=2",
                     {"account": "acc", "state": "existing"})
    assert url == "https://app.example/cb?x=a%20b&flag&y=%2F&account=acc&state=existing#/done?tab=1&z=2"
    assert with_query("https://app.example/cb#", {"account": "a"}) == "https://app.example/cb?account=a#"
    assert with_query("https://app.example/cb?", {"account": "a"}) == "https://app.example/cb?account=a"


# --- account ids and e-mail addresses -----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a", "acct-1", "x" * 256, "\U0001f600" * 128, "ünïcödé", "with space",
                                   "a.b_c~d:e@f", "12345"])
def test_good_account_ids_come_back_unchanged(value):
    assert check_account_id(value) == value
    assert account_id_param(value) == value


@pytest.mark.parametrize("value", ["", "x" * 257, "\U0001f600" * 129, "a/b", "a\\b", "a#b", "a?b", "a\x00", "a\nb",
                                   "a\x1f", "a\x7f", "a\x85", "a\x9f", " a", "a ", "a\t"])
def test_bad_account_ids_are_refused(value):
    with pytest.raises(ValueError):
        check_account_id(value)
    with pytest.raises(ApiError) as caught:
        account_id_param(value)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "invalid_input", "account")
    assert caught.value.body()["field"] == "account"


@pytest.mark.parametrize("value", ["\ud800", "a\udfff", "x\ud83d", "\ufffe", "a\uffff", "\ufdd0", "\U0001fffe",
                                   "\U0010ffff"])
def test_account_ids_with_lone_surrogates_or_non_characters_are_refused(value):
    # "\ud800" is valid JSON ("\\ud800") but no UTF-8 can encode it: the orphan of issue 12 point 6.
    with pytest.raises(ValueError):
        check_account_id(value)
    with pytest.raises(ApiError) as caught:
        account_id_param(value)
    assert caught.value.status == 400 and caught.value.field == "account"
    with pytest.raises(ValueError):
        check_email(f"{value}@contoso.com")


def test_well_formed_text_is_fine_astral_characters_included():
    from shared.checks import check_text, text_problem

    for value in ("", "plain", "emoji \U0001f600 ok", "\ufffd", "\ufdcf\ufdf0", "\U0001fffd", "\u00e9\u0301"):
        assert text_problem(value) is None and check_text(value) == value
    assert "surrogate" in (text_problem("a\ud800b") or "")
    assert "non-character" in (text_problem("a\uffffb") or "")


def test_ill_formed_text_is_found_at_any_depth_and_in_keys():
    from shared.checks import ill_formed_text

    assert ill_formed_text({"a": ["x", {"b": "ok"}], "n": 5, "t": True, "z": None}) is None
    assert ill_formed_text({"a": ["x", {"b": "\ud800"}]}) == ("a.1.b", ill_formed_text("\ud800")[1])
    assert ill_formed_text({"meta": {"\uffff": 1}})[0] == "meta"
    assert ill_formed_text({"\ud800": 1})[0] == "(body)"
    deep: object = "\ud800"
    for _ in range(5000):  # no recursion
        deep = [deep]
    assert ill_formed_text(deep) is not None


def test_every_request_model_refuses_ill_formed_text_naming_the_field():
    from pydantic import ValidationError

    from shared.schemas import AccountListQuery, FormRequest, LinkData, OAuthAppCreate, WebhookCreate
    from shared.web.http import validation_error

    cases = [(FormRequest, {"redirectUrl": "https://app.example/", "name": "Ada \ud800"}, "name"),
             (FormRequest, {"redirectUrl": "https://app.example/", "subconnections": ["ok", "\uffff"]},
              "subconnections.1"),
             (WebhookCreate, {"url": "https://hooks.example/", "description": "\udc00"}, "description"),
             (OAuthAppCreate, {"name": "x", "clientId": "c", "clientSecret": "s\ud800"}, "clientSecret"),
             (AccountListQuery, {"cursor": "\ud800"}, "cursor"),
             (LinkData, {"account": "\ud800", "redirectUrl": "https://a.example", "type": "t", "nonce": "n",
                         "iat": 1, "exp": 2}, "account")]
    for model, data, field in cases:
        with pytest.raises(ValidationError) as caught:
            model.model_validate(data)
        error = validation_error(caught.value)
        assert (error.status, error.code, error.field) == (400, "invalid_text", field), (model, error.body())
        assert str(error).startswith(f"{field}: must not contain")


def test_a_missing_account_route_parameter_is_a_400_too():
    with pytest.raises(ApiError) as caught:
        account_id_param(None)
    assert caught.value.status == 400 and caught.value.field == "account"


@pytest.mark.parametrize(("value", "normalised"), [
    ("zoe@contoso.com", "zoe@contoso.com"),
    ("  Zoe.Smith+tag@Mail.Contoso.COM ", "Zoe.Smith+tag@Mail.Contoso.COM"),
    ("zoë@contoso.com", "zoë@contoso.com"),
    ("a@b-c.example", "a@b-c.example"),
])
def test_good_email_addresses(value, normalised):
    assert check_email(value) == normalised


@pytest.mark.parametrize("value", ["", "zoe", "zoe@", "@contoso.com", "zoe@contoso", "zoe@@contoso.com",
                                   "zoe smith@contoso.com", "zoe@-contoso.com", "zoe@contoso-.com",
                                   "zoe@contoso.com.", "zoe@contoso..com", "zoe@con_toso.com", "<zoe@contoso.com>",
                                   "zoe@contoso.com,eve@evil.example", "x" * 65 + "@contoso.com",
                                   "zoe@" + "a" * 250 + ".com"])
def test_bad_email_addresses(value):
    with pytest.raises(ValueError):
        check_email(value)


# --- webhook backoff (shared.webhooks.dispatcher) -------------------------------------------------------------

class NoSession:
    """Stands in for the HTTP session: backoff must not send anything."""

    def __getattr__(self, name):
        raise AssertionError(f"the session was used ({name})")


def dispatcher(rng):
    from shared.webhooks.dispatcher import Dispatcher

    return Dispatcher(settings(), rng=rng, session=NoSession())


def test_constructing_a_dispatcher_touches_no_storage():
    d = dispatcher(lambda: 0.0)  # the no_io guard fails on any storage, secret store or socket use
    assert (d.report.delivered, d.report.failed, d.report.dead) == (0, 0, 0)


def test_backoff_doubles_from_10_seconds_up_to_an_hour():
    nominal = dispatcher(lambda: 0.0).backoff
    assert [nominal(n) for n in range(1, 12)] == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert nominal(100) == nominal(10_000) == 3600  # no overflow, still capped


def test_jitter_takes_off_at_most_a_tenth():
    shortest = dispatcher(lambda: 1.0).backoff
    assert shortest(1) == pytest.approx(9.0) and shortest(10) == pytest.approx(3240.0)
    halfway = dispatcher(lambda: 0.5).backoff
    assert halfway(3) == pytest.approx(38.0)
    for n in range(1, 20):
        for r in (0.0, 0.25, 0.999):
            delay = dispatcher(lambda r=r: r).backoff(n)
            nominal = min(10 * 2 ** (n - 1), 3600)
            assert 0.9 * nominal <= delay <= nominal


def test_a_day_of_retries_fits_the_schedule():
    """The 24-hour retry window holds a few dozen attempts, not thousands (and not just a handful)."""
    backoff, elapsed, attempts = dispatcher(lambda: 1.0).backoff, 0.0, 0
    while elapsed < 24 * 3600:
        attempts += 1
        elapsed += backoff(attempts)
    assert 25 <= attempts <= 35


# --- webhook signatures (shared.webhooks.signature) --------------------------------------------------------

SECRET = "whsec_" + "s" * 43
BODY = b'{"id":"e1","event":"accountAdded","account":"acct"}'
T0 = 1_700_000_000


def test_the_signature_is_the_documented_hmac():
    from shared.webhooks.signature import sign

    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, T0, BODY) == "v1=" + expected
    assert sign(SECRET, T0 + 1, BODY) != sign(SECRET, T0, BODY)
    assert sign(SECRET + "x", T0, BODY) != sign(SECRET, T0, BODY)


def test_a_receiver_accepts_a_fresh_signature_within_the_tolerance():
    from shared.webhooks.signature import sign, verify_signature

    signature = sign(SECRET, T0, BODY)
    assert verify_signature(SECRET, str(T0), signature, BODY, now=T0)
    assert verify_signature(SECRET, str(T0), signature, BODY, now=T0 + 300)
    assert verify_signature(SECRET, str(T0), signature, BODY, now=T0 - 300)  # a receiver's clock may lag
    assert not verify_signature(SECRET, str(T0), signature, BODY, now=T0 + 301)
    assert not verify_signature(SECRET, str(T0), signature, BODY, now=T0 - 301)
    assert verify_signature(SECRET, str(T0), signature, BODY, now=T0 + 3000, tolerance=3600)


def test_a_receiver_refuses_tampering_and_foreign_secrets():
    from shared.webhooks.signature import sign, verify_signature

    signature = sign(SECRET, T0, BODY)
    assert not verify_signature(SECRET, str(T0), signature, BODY.replace(b"acct", b"evil"), now=T0)
    assert not verify_signature(SECRET, str(T0), signature, BODY + b" ", now=T0)
    assert not verify_signature(SECRET, str(T0 + 1), signature, BODY, now=T0)  # timestamp is signed too
    assert not verify_signature("another-secret", str(T0), signature, BODY, now=T0)
    assert not verify_signature(SECRET, str(T0), signature.upper(), BODY, now=T0)
    assert not verify_signature(SECRET, str(T0), signature.removeprefix("v1="), BODY, now=T0)
    assert not verify_signature(SECRET, str(T0), "v0=" + signature[3:], BODY, now=T0)


def test_one_matching_signature_of_several_is_enough():
    from shared.webhooks.signature import sign, verify_signature

    good = sign(SECRET, T0, BODY)
    old = sign("the-previous-secret", T0, BODY)
    assert verify_signature(SECRET, str(T0), f"{old},{good}", BODY, now=T0)
    assert verify_signature(SECRET, str(T0), f"{old}, {good} ", BODY, now=T0)
    assert verify_signature("the-previous-secret", str(T0), f"{old},{good}", BODY, now=T0)
    assert not verify_signature(SECRET, str(T0), f"{old},v1=00", BODY, now=T0)


@pytest.mark.parametrize("timestamp", ["", "abc", "1.5e9", "1700000000.0", None, " "])
def test_a_malformed_timestamp_is_refused(timestamp):
    from shared.webhooks.signature import sign, verify_signature

    assert not verify_signature(SECRET, timestamp, sign(SECRET, T0, BODY), BODY, now=T0)


@pytest.mark.parametrize("signature", ["", None, ",", "v1="])
def test_a_missing_signature_is_refused(signature):
    from shared.webhooks.signature import verify_signature

    assert not verify_signature(SECRET, str(T0), signature, BODY, now=T0)


# --- refresh-token rotation (shared.handoff.tokens.rotation_due) ----------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
IMAP = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send"]


def credential(written: datetime, scopes: list[str]):
    from shared.storage.tables.principals import Credential

    return Credential(credentialId="c1", appId="app1", tid="tid", oid="oid", upn="zoe@contoso.com",
                      scopes=scopes, secretName="cred-c1", tokenWrittenAt=written)


def test_a_recent_token_with_the_same_scopes_is_not_rewritten():
    from shared.handoff.tokens import rotation_due

    fresh = credential(NOW - timedelta(hours=23), IMAP)
    assert not rotation_due(fresh, IMAP, NOW)
    assert not rotation_due(fresh, IMAP[:1], NOW)  # fewer scopes granted: nothing new to record
    assert not rotation_due(fresh, [], NOW)


def test_a_token_older_than_a_day_is_rewritten():
    from shared.handoff.tokens import rotation_due

    assert rotation_due(credential(NOW - timedelta(days=1, seconds=1), IMAP), IMAP, NOW)
    assert rotation_due(credential(NOW - timedelta(days=60), IMAP), IMAP, NOW)
    assert not rotation_due(credential(NOW - timedelta(days=1), IMAP), IMAP, NOW)  # exactly a day: not yet


def test_a_stored_naive_time_counts_as_utc():
    from shared.handoff.tokens import rotation_due

    naive = (NOW - timedelta(hours=25)).replace(tzinfo=None)
    assert rotation_due(credential(naive, IMAP), IMAP, NOW)
    assert not rotation_due(credential(naive + timedelta(hours=2), IMAP), IMAP, NOW)


def test_newly_granted_resource_scopes_are_recorded_at_once():
    from shared.handoff.tokens import rotation_due

    fresh = credential(NOW - timedelta(minutes=5), IMAP)
    assert rotation_due(fresh, [*IMAP, "https://outlook.office.com/EWS.AccessAsUser.All"], NOW)
    assert rotation_due(credential(NOW, []), IMAP[:1], NOW)


def test_oidc_scopes_and_spelling_do_not_count_as_new_scopes():
    from shared.handoff.tokens import rotation_due

    fresh = credential(NOW - timedelta(minutes=5), IMAP)
    oidc = ["openid", "profile", "offline_access", "email", "OpenID"]
    assert not rotation_due(fresh, [*IMAP, *oidc], NOW)
    assert not rotation_due(fresh, [s.upper() for s in IMAP], NOW)
    assert not rotation_due(fresh, [f" {s} " for s in IMAP] + [""], NOW)


# --- scopes (shared.clouds.scopes_for, shared.handoff.tokens.token_scopes) ------------------------------------

def oauth_app(base: str = "imap", cloud: str = "global", extra: tuple[str, ...] = ()):
    from shared.storage.tables.apps import OAuthApp

    return OAuthApp(id="app1", name="Contoso", clientId="client", cloud=cloud, baseScopes=base,
                    extraScopes=list(extra), secretName="app-app1-client-secret", created=NOW, updated=NOW)


def account(delegated: bool = False):
    from shared.storage.tables.accounts import Account

    return Account(account="acct", email="shared@contoso.com", delegated=delegated, appId="app1",
                   credentialId="c1", signerUpn="zoe@contoso.com", signerTid="tid", signerOid="oid",
                   created=NOW, updated=NOW)


GRAPH_OWN = ["https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/Mail.Send",
             "https://graph.microsoft.com/User.Read"]
GRAPH_SHARED = ["https://graph.microsoft.com/Mail.ReadWrite.Shared", "https://graph.microsoft.com/Mail.Send.Shared"]


def test_scopes_of_each_base_scope_set():
    from shared.clouds import scopes_for

    assert scopes_for("global", "imap", delegated=False) == IMAP
    assert scopes_for("global", "imap", delegated=True) == IMAP  # IMAP covers shared mailboxes as is
    assert scopes_for("global", "api", delegated=False) == GRAPH_OWN
    assert scopes_for("global", "api", delegated=True) == GRAPH_OWN + GRAPH_SHARED


@pytest.mark.parametrize(("cloud", "outlook", "graph_url"), [
    ("global", "https://outlook.office.com", "https://graph.microsoft.com"),
    ("gcc-high", "https://outlook.office365.us", "https://graph.microsoft.us"),
    ("dod", "https://outlook.office365.us", "https://dod-graph.microsoft.us"),
    ("china", "https://partner.outlook.cn", "https://microsoftgraph.chinacloudapi.cn"),
])
def test_each_cloud_asks_its_own_resources(cloud, outlook, graph_url):
    from shared.clouds import scopes_for

    assert all(s.startswith(outlook + "/") for s in scopes_for(cloud, "imap", delegated=False))
    assert all(s.startswith(graph_url + "/") for s in scopes_for(cloud, "api", delegated=True))


def test_extra_scopes_are_appended_once_without_the_reserved_ones():
    from shared.clouds import scopes_for

    # (duplicates within extraScopes are the schema's job: OAuthAppCreate/-Update keep the first of each)
    extra = ("https://graph.microsoft.com/Calendars.Read", "openid", "offline_access", "profile", IMAP[0])
    assert scopes_for("global", "imap", delegated=False, extra=extra) == [
        *IMAP, "https://graph.microsoft.com/Calendars.Read"]


def test_an_access_token_covers_the_first_scopes_resource_only():
    from shared.handoff.tokens import token_scopes

    extra = ("https://graph.microsoft.com/Calendars.Read", "https://outlook.office.com/EWS.AccessAsUser.All")
    assert token_scopes(oauth_app("imap", extra=extra), account()) == [
        *IMAP, "https://outlook.office.com/EWS.AccessAsUser.All"]
    assert token_scopes(oauth_app("api", extra=extra), account()) == [
        *GRAPH_OWN, "https://graph.microsoft.com/Calendars.Read"]


def test_a_shared_mailbox_asks_the_shared_graph_scopes():
    from shared.handoff.tokens import token_scopes

    assert token_scopes(oauth_app("api"), account(delegated=True)) == GRAPH_OWN + GRAPH_SHARED
    assert token_scopes(oauth_app("api"), account(delegated=False)) == GRAPH_OWN


def test_short_scope_names_are_graphs_and_resources_compare_case_insensitively():
    from shared.handoff.tokens import token_scopes

    extra = ("Calendars.Read", "HTTPS://GRAPH.MICROSOFT.COM/Contacts.Read")
    assert token_scopes(oauth_app("api", extra=extra), account()) == [*GRAPH_OWN, *extra]
    assert token_scopes(oauth_app("imap", extra=extra), account()) == IMAP
    assert token_scopes(oauth_app("api", cloud="china", extra=("Calendars.Read",)), account())[-1] == "Calendars.Read"


# --- the signing key, signer and listing cursors ------------------------------------------------------------

def test_the_signing_key_comes_from_the_settings_without_storage():
    from shared.storage.keys import signing_key

    assert signing_key(settings()) == KEY.encode()
    with pytest.raises(SettingsError, match="32"):
        signing_key(settings(MC_SIGNING_KEY="short-key"))
    with pytest.raises(SettingsError, match="MC_SIGNING_KEY"):
        signing_key(Settings())
    with pytest.raises(SettingsError, match="Azure"):
        signing_key(Settings.model_validate({"MC_SIGNING_KEY": "a" * 40, "in_azure": True}))


def test_a_signer_binds_key_and_purpose():
    from shared.signing import BadSignature, Signer

    link = Signer(KEY.encode(), "link")
    signature = link.signature("value")
    link.verify("value", signature)
    Signer(KEY.encode(), "link").verify("value", signature)  # deterministic: survives a restart
    for wrong_signer in (Signer(KEY.encode(), "cookie"), Signer(OTHER_KEY.encode(), "link")):
        with pytest.raises(BadSignature):
            wrong_signer.verify("value", signature)
    for bad in ("", signature[:-1], signature + "A", None, "é" * 43):
        with pytest.raises(BadSignature):
            link.verify("value", bad)
    with pytest.raises(BadSignature):
        link.verify("value2", signature)
    with pytest.raises(ValueError):
        Signer(b"too short", "link")


def test_a_cursor_round_trips():
    from shared.admin.accounts import decode_cursor, encode_cursor

    s = settings()
    for continuation in ({"PartitionKey": "acct-7", "RowKey": ""}, {"PartitionKey": "ünï côdé", "RowKey": None}):
        cursor = encode_cursor(continuation, s)
        assert cursor.isascii() and " " not in cursor and "/" not in cursor and "+" not in cursor  # URL-safe
        assert decode_cursor(cursor, s) == continuation
    # another process with the same key reads it (cursors survive restarts)
    assert decode_cursor(encode_cursor({"PartitionKey": "a", "RowKey": ""}, s), settings()) == {
        "PartitionKey": "a", "RowKey": ""}


def bad_cursor(cursor: str, s: Settings | None = None) -> None:
    from shared.admin.accounts import decode_cursor

    with pytest.raises(ApiError) as caught:
        decode_cursor(cursor, s or settings())
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "invalid_cursor", "cursor")


def forged(payload: object, key: str = KEY, purpose: str = "cursor") -> str:
    from shared.signing import Signer, b64url_encode

    data = b64url_encode(json.dumps(payload).encode())
    return f"{data}.{Signer(key.encode(), purpose).signature(data)}"


def test_a_cursor_the_service_did_not_issue_is_a_400():
    from shared.admin.accounts import encode_cursor

    cursor = encode_cursor({"PartitionKey": "acct-7", "RowKey": ""}, settings())
    data, sig = cursor.split(".", 1)  # sig: "<key id>.<mac>"
    tampered = base64.urlsafe_b64encode(b'{"pk":"acct-8","rk":""}').rstrip(b"=").decode()
    for bad in ("", ".", "abc", data, f"{data}.", f".{sig}", f"{tampered}.{sig}", f"{data}.{sig[:-2]}",
                f"{data}x.{sig}", f"{data}.{sig}.x", "é.é", cursor.upper()):
        bad_cursor(bad)
    bad_cursor(cursor, settings(MC_SIGNING_KEY=OTHER_KEY))  # the signing key was rotated
    bad_cursor(forged({"pk": "acct-7", "rk": ""}, purpose="link"))  # a signature made for something else


@pytest.mark.parametrize("payload", [
    ["acct", ""], {"pk": None, "rk": ""}, {"pk": "a"}, {"pk": "a", "rk": "", "x": 1}, {"pk": 1, "rk": ""},
    {"pk": "a", "rk": 2}, "acct", None,
])
def test_a_signed_cursor_of_the_wrong_shape_is_a_400_too(payload):
    bad_cursor(forged(payload))


# --- the sign-in link codec (shared.core.links) --------------------------------------------------------------

def link_data(**fields):
    from shared.schemas import LinkData

    values = {"redirectUrl": "https://app.example/connected", "type": "app1", "nonce": "n" * 24,
              "iat": T0, "exp": T0 + 3600, **fields}
    return LinkData(**values)


def test_a_link_round_trips_with_every_field():
    from shared.core.links import decode, encode

    link = link_data(account="acct", name="Zoe", email="shared@contoso.com", delegated=True,
                     expectedEmail="zoe@contoso.com", meta={"syncFrom": "2024-01-01"}, loginHint="zoe@contoso.com",
                     domainHint="tid")
    data, sig = encode(link, settings())
    assert data.isascii() and sig.isascii() and "=" not in data + sig  # base64url without padding
    assert decode(data, sig, settings(), now=T0) == link
    assert decode(data, sig, settings(), now=T0 + 3599) == link


def test_a_link_url_points_at_the_hosted_page_and_decodes_back():
    from urllib.parse import parse_qs, urlsplit

    from shared.core.links import decode, link_url

    link = link_data()
    url = link_url(link, settings(MC_PUBLIC_URL="https://mc.example/"))
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://mc.example/accounts/new"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert set(query) == {"data", "sig"}
    assert decode(query["data"], query["sig"], settings(), now=T0) == link


def link_error(data, sig, s: Settings | None = None, now: float = T0) -> str:
    from shared.core.links import LinkError, decode

    with pytest.raises(LinkError) as caught:
        decode(data, sig, s or settings(), now=now)
    return caught.value.kind


def test_an_expired_link_is_refused_as_expired():
    from shared.core.links import encode

    data, sig = encode(link_data(), settings())
    assert link_error(data, sig, now=T0 + 3600) == "expired"
    assert link_error(data, sig, now=T0 + 10**6) == "expired"


def test_a_tampered_or_foreign_link_is_invalid():
    from shared.core.links import encode

    data, sig = encode(link_data(), settings())
    other = link_data(redirectUrl="https://evil.example/")
    other_data, _ = encode(other, settings())
    for bad_data, bad_sig in [
        (other_data, sig),  # the data of another link under this signature
        (data[:-1], sig), (data + "A", sig), (data[:-1] + ("A" if data[-1] != "A" else "B"), sig),
        (data, sig[:-1] + ("A" if sig[-1] != "A" else "B")), (data, ""), ("", sig), (None, sig), (data, None),
        (data, encode(link_data(), settings(MC_SIGNING_KEY=OTHER_KEY))[1]),  # signed with another key
    ]:
        assert link_error(bad_data, bad_sig) == "invalid", (bad_data, bad_sig)
    assert link_error(data, sig, settings(MC_SIGNING_KEY=OTHER_KEY)) == "invalid"  # the key was rotated


def test_a_signature_made_for_another_purpose_is_invalid():
    from shared.core.links import encode
    from shared.signing import Signer

    data, _ = encode(link_data(), settings())
    assert link_error(data, Signer(KEY.encode(), "cursor").signature(data)) == "invalid"


def test_a_tampered_expired_link_is_invalid_not_expired():
    """The signature is checked before anything in the data is believed."""
    from shared.core.links import encode

    data, sig = encode(link_data(exp=T0 - 1), settings())
    assert link_error(data, sig) == "expired"
    assert link_error(data, sig[::-1]) == "invalid"


def test_signed_data_that_is_not_a_link_is_invalid():
    from shared.signing import Signer, b64url_encode

    signer = Signer(KEY.encode(), "link")
    good = link_data().model_dump(mode="json")
    for payload in (b"not json", b"[]", json.dumps({**good, "admin": True}).encode(),
                    json.dumps({k: v for k, v in good.items() if k != "exp"}).encode(),
                    json.dumps({**good, "exp": "tomorrow"}).encode()):
        data = b64url_encode(payload)
        assert link_error(data, signer.signature(data)) == "invalid", payload


def test_an_overlong_link_is_invalid_even_when_signed():
    from shared.core.links import MAX_DATA_LENGTH, encode

    data, sig = encode(link_data(meta={"path": "p" * 7000}), settings())
    assert len(data) > MAX_DATA_LENGTH
    assert link_error(data, sig) == "invalid"
    short_data, short_sig = encode(link_data(), settings())
    assert link_error(short_data, short_sig + "A" * 200) == "invalid"


@pytest.mark.parametrize("text", ["QUJD=", "QUJD==", "QUJ+", "QUJ/", "QU JD", "Q", "QUJDé", "QUJD\n"])
def test_base64url_has_one_spelling(text):
    """Padding, the other alphabet, spaces, an impossible length: refused, so a sealed cookie, a sealed value or a
    link with padding appended (the same bytes, another spelling) does not open (found by the hosted fuzzer)."""
    from shared.signing import b64url_decode, b64url_encode

    assert b64url_decode(b64url_encode(b"ABC")) == b"ABC" and b64url_decode("") == b""
    with pytest.raises(ValueError):
        b64url_decode(text)
