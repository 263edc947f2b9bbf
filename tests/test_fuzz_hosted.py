"""Fuzz the hosted routes (``/accounts/new`` and ``/oauth``) with hypothesis-generated query strings and cookies.

Requests are sent byte for byte with ``http.client`` (no client-side normalisation) to the local host, which
treats the query as the Functions host does: names case-insensitive (first spelling kept), a repeated name
joined with ",", an empty value dropped (``tools.localhost.query_params``). The test computes what the
service sees the same way, and so knows when a request carries a genuine link or callback.

Generated: the genuine value, truncated, one character changed, extended, oversized (up to past the 64 KiB
request line the server accepts), random text, empty; link data whose JSON was changed (another redirectUrl,
a later expiry, another account or app, an extra field) and re-encoded under the original signature;
every value encoded properly, with ``+``, not at all (raw ``&``, ``=``, ``%``, ``#``), twice, as Latin-1 or
UTF-16 bytes (invalid UTF-8); parameters duplicated, re-cased, reordered, with extra ones. For ``/oauth``
also Microsoft's ``error``/``error_description`` (CRLF, HTML, 5 kB) and the sealed flow cookie kept,
dropped, changed, shadowed by an earlier cookie of the same name, or another sign-in's cookie.

Hostile values (issue 12 point 6): link data whose JSON carries a lone surrogate or a non-character in any
string, arrays nested thousands deep, or numbers of thousands of digits, ``1e999``, ``NaN``; query values
with a lone surrogate (CESU-8 bytes, invalid UTF-8) or a non-character; and links *signed with the service's
key* (as an older version signed them, before it refused such text at the form) with ill-formed text in any
one of their string fields, nested ``meta`` values and keys included: each ends on the readable
"link not valid" page, with no flow or anything else written.

Every answer: never a 5xx; a redirect (``Location``) only to Microsoft's authorize endpoint of the fake (for
a genuine link, with our ``/oauth`` as redirect URI) or to the ``redirectUrl`` the link was signed with
(for a callback of a genuine flow); no account, credential, index row, link nonce or secret written unless
the service saw the genuine code, state and cookie (then the sign-in completes, once).

About 6 s; ``MC_FUZZ_SCALE=10`` runs ten times the examples.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from shared.storage.tables.client import table
from tests.service import APP_REDIRECT, Browser
from tools.localhost import query_params

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


SCALE = float(os.environ.get("MC_FUZZ_SCALE", "1"))  # e.g. 10 for a long run


def fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


# --- values ---------------------------------------------------------------------------------------------

def b64(raw: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
NONCHARACTERS = st.sampled_from(["\ufffe", "\uffff", "\ufdd0", "\ufdef", "\U0001fffe", "\U0010ffff"])
ILL_FORMED = st.builds(lambda before, bad, after: before + bad + after, st.text(max_size=6),
                       st.one_of(SURROGATES, NONCHARACTERS), st.text(max_size=6))
RAW = "\u2063raw\u2063"  # replaced by raw JSON text (nesting, numbers) after json.dumps
RAW_JSON = st.one_of(
    st.integers(33, 2000).map(lambda n: "[" * n + "]" * n),
    st.integers(33, 500).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(65, 4000).map(lambda n: "9" * n),
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity"]),
)


def tampered_data(data: str) -> st.SearchStrategy[str]:
    """The link's JSON with one thing changed, re-encoded: the signature no longer covers it."""
    link = json.loads(unb64(data))
    changes = {
        "redirectUrl": st.sampled_from(["https://evil.example/steal", "https://app.example.evil.example/connected",
                                        "https://app.example/connected/../admin", "javascript:alert(1)",
                                        "https://user:pw@app.example/connected", "//evil.example/"]),
        "exp": st.integers(min_value=link["exp"] + 1, max_value=2**53),
        "account": st.sampled_from(["victim", "", None, "a" * 300]),
        "type": st.sampled_from(["other-app", "", None]),
        "delegated": st.booleans(),
        "email": st.sampled_from(["ceo@contoso.com", None]),
        "nonce": st.text(B64URL, min_size=1, max_size=30),
        "extra": st.just(True),
        "name": ILL_FORMED,  # ill-formed text (json.dumps escapes a lone surrogate as its \\u escape)
        "iat": st.just(RAW),  # nesting or a huge number, spliced in as raw JSON
    }

    @st.composite
    def build(draw) -> str:
        changed = dict(link)
        for key in draw(st.lists(st.sampled_from(sorted(changes)), min_size=1, max_size=3, unique=True)):
            changed[key] = draw(changes[key])
        text = json.dumps(changed, separators=(",", ":") if draw(st.booleans()) else None)
        raw = text.replace(json.dumps(RAW), draw(RAW_JSON)).encode()
        return b64(raw, pad=draw(st.booleans()))

    return build()


def mostly(genuine: str, *others: st.SearchStrategy[str | None]) -> st.SearchStrategy[str | None]:
    """The genuine value about half the time, else one of ``others``."""
    return st.one_of(st.booleans().map(lambda _: genuine), st.one_of(*others))


def mutations(genuine: str, alphabet: str = B64URL) -> st.SearchStrategy[str]:
    n = len(genuine)

    @st.composite
    def flip(draw) -> str:
        i = draw(st.integers(0, n - 1))
        c = draw(st.sampled_from([ch for ch in alphabet + "=.~+/%" if ch != genuine[i]]))
        return genuine[:i] + c + genuine[i + 1:]

    return st.one_of(
        st.just(genuine),
        st.integers(0, max(0, n - 1)).map(lambda i: genuine[:i]),  # truncated (also empty)
        flip(),
        st.text(max_size=20).map(lambda extra: genuine + extra),  # extended
        st.sampled_from(["=", "==", ".", ",", " ", "%00"]).map(lambda s: genuine + s),
        st.sampled_from([8193, 9000, 70_000]).map(lambda size: (genuine * (size // max(n, 1) + 1))[:size]),
        st.just(genuine.upper()), st.just(genuine.lower()),
        st.text(max_size=40),  # anything, unicode included
        st.just(""),
    )


# --- encodings and query strings -----------------------------------------------------------------------

def _bytes_escaped(raw: bytes) -> str:
    return "".join(chr(b) if b < 0x80 and chr(b).isalnum() else f"%{b:02X}" for b in raw)


ENCODINGS = {
    "quote": lambda v: quote(v, safe=""),
    "plus": quote_plus,
    # Not encoded at all: '&', '=', '#', '%' go out raw; only what HTTP forbids in a request line is escaped.
    "raw": lambda v: "".join(c if 0x20 < ord(c) < 0x7F else quote(c, safe="") for c in v),
    "double": lambda v: quote(quote(v, safe=""), safe=""),
    "latin1": lambda v: _bytes_escaped(v.encode("latin-1", "replace")),
    "utf16": lambda v: _bytes_escaped(v.encode("utf-16")),
    # A lone surrogate in the middle (its CESU-8 bytes: invalid UTF-8), and a non-character (valid UTF-8).
    "surrogate": lambda v: _bytes_escaped((v[:len(v) // 2] + "\udc80" + v[len(v) // 2:]).encode("utf-8",
                                                                                               "surrogatepass")),
    "nonchar": lambda v: _bytes_escaped((v + "\uffff").encode("utf-8")),
}
NAME_VARIANTS = {"data": ["data", "Data", "DATA", "data[]", "data "], "sig": ["sig", "Sig", "SIG", "sig[]"],
                 "code": ["code", "Code", "CODE"], "state": ["state", "State", "STATE"],
                 "session_state": ["session_state"], "error": ["error", "Error"],
                 "error_description": ["error_description"]}


PRESERVING = ("quote", "plus", "raw", "double", "latin1")  # leave base64url and hex values as they are


@st.composite
def query_string(draw, values: dict[str, st.SearchStrategy[str | None]], extras: dict[str, Any],
                 genuine: dict[str, str] | None = None) -> str:
    """``name=value`` pairs: each parameter once (or dropped), maybe duplicated under a name variant, maybe
    extra parameters; shuffled; each pair with its own encoding.

    With ``genuine``, half the queries carry exactly those values, dressed up in ways that must not matter to
    the service (another harmless encoding, order, empty duplicates the host drops, extra parameters)."""
    honest = genuine is not None and draw(st.booleans())
    pairs: list[tuple[str, str, str]] = []  # name, value, encoding
    for name, strategy in values.items():
        if honest:
            assert genuine is not None
            pairs.append((name, genuine[name], draw(st.sampled_from(PRESERVING))))
            if draw(st.integers(0, 3)) == 0:  # an empty duplicate: the host drops it
                pairs.append((draw(st.sampled_from(NAME_VARIANTS[name])), "", "quote"))
            continue
        value = draw(strategy)
        if value is None:
            continue
        pairs.append((name, value, draw(st.sampled_from(sorted(ENCODINGS)))))
        if draw(st.integers(0, 5)) == 0:  # a duplicate, maybe under another spelling, maybe another value
            pairs.append((draw(st.sampled_from(NAME_VARIANTS[name])), draw(strategy) or "",
                          draw(st.sampled_from(sorted(ENCODINGS)))))
    for name, strategy in extras.items():
        if draw(st.integers(0, 3)) == 0:
            pairs.append((name, draw(strategy), draw(st.sampled_from(sorted(ENCODINGS)))))
    if draw(st.booleans()):
        name = draw(st.text(min_size=1, max_size=8).filter(lambda n: n.lower() not in values))
        pairs.append((name, draw(st.text(max_size=8)), "quote"))
    pairs = draw(st.permutations(pairs))
    return "&".join(f"{ENCODINGS['quote'](name)}={ENCODINGS[encoding](value)}" for name, value, encoding in pairs)


# --- sending ---------------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


def get(service, target: str, cookie: str | None = None) -> Answer:
    parts = urlsplit(service.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        if cookie is not None:  # sent as UTF-8 bytes (as browsers do); CR/LF/NUL would end the header
            conn.putheader("Cookie", "".join(c for c in cookie if c not in "\r\n\x00").encode("utf-8"))
        conn.endheaders()
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    except (ConnectionError, http.client.RemoteDisconnected):
        # The server refused the request line itself (e.g. longer than 64 KiB) and closed: not a 5xx.
        return Answer(0, http.client.HTTPMessage(), b"")
    finally:
        conn.close()


def seen(query: str) -> dict[str, str]:
    """The query as the function sees it (``req.params``)."""
    return query_params(query)


def state_of_tables() -> dict[str, dict[str, str]]:
    """Every row (and its ETag) of the tables a sign-in writes (accounts: account and event rows)."""
    out = {}
    for name in ("accounts", "principals", "links", "secrets", "outbox", "flows"):  # flows: never written
        out[name] = {f"{e['PartitionKey']}/{e['RowKey']}": e.metadata["etag"] for e in table(name).list_entities()}
    return out


# The app's redirectUrl with its own query and an SPA route: both come back unchanged (EmailEngine keeps them).
APP_QUERY, APP_FRAGMENT = "from=fuzz&state=app-state", "/mailboxes?tab=1&x=%2F"
FUZZ_REDIRECT = f"{APP_REDIRECT}?{APP_QUERY}#{APP_FRAGMENT}"


def authorize_endpoint(identity) -> str:
    return f"{identity.url}/organizations/oauth2/v2.0/authorize"


def assert_location_allowed(answer: Answer, service, *, authorize: bool, app: bool) -> None:
    assert answer.status < 500, answer.status
    location = answer.location
    if location is None:
        return
    parts = urlsplit(location)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if base == authorize_endpoint(service.identity):
        assert authorize, location
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert query["redirect_uri"] == f"{service.url}/oauth", location
        assert query["code_challenge_method"] == "S256" and query["state"], location
    else:
        assert app and base == APP_REDIRECT and parts.fragment == APP_FRAGMENT, location
        assert parts.query.startswith("from=fuzz&"), location  # the app's own state= is replaced by ours


# --- /accounts/new -------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_accounts_new_redirects_only_genuine_links(service, identity):
    identity.add_user("fuzz@contoso.com")
    link = service.link(name="Fuzz")
    genuine = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    data, sig = genuine["data"], genuine["sig"]
    before = state_of_tables()
    counts = {"redirected": 0, "refused": 0}

    @fuzz(150)
    @given(query_string({"data": mostly(data, mutations(data), tampered_data(data), st.none()),
                         "sig": mostly(sig, mutations(sig), st.none())},
                        {"state": st.text(max_size=10), "x": st.text(max_size=10), "app": st.text(max_size=20)},
                        {"data": data, "sig": sig}))
    def check(query: str) -> None:
        answer = get(service, f"/accounts/new?{query}")
        assert answer.status < 500, (answer.status, query[:300], answer.body[:300])
        params = seen(query)
        is_genuine = params.get("data") == data and params.get("sig") == sig
        if is_genuine:
            assert answer.status == 302, (query[:300], answer.status, answer.body[:300])
            counts["redirected"] += 1
        else:
            assert answer.status in (0, 400, 414), (query[:300], answer.status, answer.location)
            counts["refused"] += 1
        assert_location_allowed(answer, service, authorize=is_genuine, app=False)

    check()
    # A link writes nothing (its flow is sealed into the browser's cookie): no flow row, account, credential,
    # index row, nonce or secret.
    assert state_of_tables() == before
    print(counts)


LINK_TEXT_FIELDS = ["account", "name", "email", "redirectUrl", "type", "expectedEmail", "loginHint", "domainHint",
                    "nonce", "meta.syncFrom", "meta.subconnections", "meta.<key>"]


@pytest.mark.timeout(300)
def test_signed_links_with_ill_formed_text_end_on_a_page(service, identity):
    """Links an older version signed (it accepted any JSON string at the form): ill-formed text in any string
    field is refused by the hosted page, before any flow is started (issue 12 point 6)."""
    from shared.checks import ill_formed_text
    from shared.core import links as linkcodec
    from shared.settings import get_settings

    identity.add_user("fuzz@contoso.com")
    genuine = {k: v[0] for k, v in parse_qs(urlsplit(service.link(name="Fuzz")).query).items()}
    link = linkcodec.decode(genuine["data"], genuine["sig"], get_settings())
    before = state_of_tables()

    @fuzz(60)
    @given(st.sampled_from(LINK_TEXT_FIELDS), ILL_FORMED, st.sampled_from(PRESERVING))
    def check(field: str, bad: str, encoding: str) -> None:
        if field == "meta.<key>":
            changed = link.model_copy(update={"meta": {**link.meta, bad: "x"}})
        elif field.startswith("meta."):
            key = field.split(".", 1)[1]
            changed = link.model_copy(update={"meta": {**link.meta, key: [bad] if key == "subconnections" else bad}})
        else:
            changed = link.model_copy(update={field: bad})
        data, sig = linkcodec.encode(changed, get_settings())  # signed with the service's own key
        # pydantic's JSON dump turns a lone surrogate in a dict key into U+FFFD: such a link carries valid text
        assume(ill_formed_text(json.loads(unb64(data))) is not None)
        answer = get(service, f"/accounts/new?data={ENCODINGS[encoding](data)}&sig={ENCODINGS[encoding](sig)}")
        assert answer.status == 400 and b"This sign-in link is not valid" in answer.body, \
            (field, answer.status, answer.body[:200])
        assert answer.location is None

    check()
    assert state_of_tables() == before


# --- /oauth --------------------------------------------------------------------------------------------

@dataclass
class Flow:
    """A sign-in stopped at Microsoft's redirect back to the service: the genuine callback and cookie."""

    code: str
    state: str
    session_state: str
    cookie: str  # name=value


def start_flow(service) -> Flow:
    browser = Browser()
    start = browser.get(service.link(redirectUrl=FUZZ_REDIRECT), allow_redirects=False, timeout=30)
    assert start.status_code == 302, start.text
    authorize = browser.get(start.headers["Location"], allow_redirects=False, timeout=30,
                            verify=service.identity.ca_bundle)
    callback = {k: v[0] for k, v in parse_qs(urlsplit(authorize.headers["Location"]).query).items()}
    [(name, (value, _path))] = browser.jar.items()
    return Flow(callback["code"], callback["state"], callback.get("session_state", ""), f"{name}={value}")


@st.composite
def cookies(draw, flow: Flow, other: Flow) -> str | None:
    name, _, value = flow.cookie.partition("=")
    choice = draw(st.sampled_from(["genuine", "with_others", "after_other", "none", "changed", "shadowed", "other",
                                   "garbage", "duplicate"]))
    if choice == "genuine":
        return flow.cookie
    if choice == "with_others":  # harmless: other cookies after ours
        return f"{flow.cookie}; theme=dark; {other.cookie}"
    if choice == "after_other":  # harmless: another sign-in's cookie (another name) first
        return f"{other.cookie}; {flow.cookie}"
    if choice == "none":
        return None
    if choice == "changed":
        return f"{name}={draw(mutations(value))}"
    if choice == "shadowed":  # an earlier cookie of the same name wins in our parser
        return f"{name}={draw(st.text(B64URL, max_size=10))}; {flow.cookie}"
    if choice == "other":  # only another sign-in's cookie (another name and value)
        return other.cookie
    if choice == "garbage":
        return f'junk="a;b"; =; {name}; x={draw(st.text(max_size=10))}'
    return f"{flow.cookie}; {name}=other"


def cookie_intact(cookie: str | None, flow: Flow) -> bool:
    """Whether the service's lenient parser (first occurrence wins) sees the genuine binding."""
    from shared.web.blueprints.hosted import parse_cookies

    name, _, value = flow.cookie.partition("=")
    return parse_cookies(cookie).get(name) == value


@pytest.mark.timeout(300)
def test_oauth_callback_never_stores_or_redirects_unless_genuine(service, identity):
    user = identity.add_user("fuzz@contoso.com")
    identity.sign_in_as(user)
    other = start_flow(service)
    completed = {"count": 0, "refused": 0, "to_app_with_error": 0}

    error_text = st.one_of(st.text(max_size=50), st.just("line1\r\nSet-Cookie: evil=1"),
                           st.just("<script>alert(1)</script>"), st.just("x" * 5000))

    @fuzz(60)
    @given(st.data())
    def check(draw) -> None:
        flow = start_flow(service)
        before = state_of_tables()
        query = draw.draw(query_string(
            {"code": mostly(flow.code, mutations(flow.code), st.none()),
             "state": mostly(flow.state, mutations(flow.state), st.just(other.state), st.none()),
             "session_state": st.one_of(st.just(flow.session_state), st.none())},
            {"error": st.sampled_from(["access_denied", "invalid_grant", "server_error", "", "x" * 100]),
             "error_description": error_text},
            {"code": flow.code, "state": flow.state, "session_state": flow.session_state}), label="query")
        cookie = draw.draw(cookies(flow, other), label="cookie")
        answer = get(service, f"/oauth?{query}", cookie)
        assert answer.status < 500, (answer.status, query[:300], answer.body[:300])
        params = seen(query)
        is_genuine = (params.get("code") == flow.code and params.get("state") == flow.state
                      and "error" not in params and cookie_intact(cookie, flow))
        location = answer.location or ""
        if is_genuine:
            assert answer.status == 302 and "error=" not in location, (query[:300], location, answer.body[:300])
            completed["count"] += 1
        else:
            assert state_of_tables() == before, (query[:300], cookie, answer.status, location)
            if location:
                assert "error=" in urlsplit(location).query, location
                completed["to_app_with_error"] += 1
            else:
                completed["refused"] += 1
        assert_location_allowed(answer, service, authorize=False, app=True)

    check()
    print(completed)
    # A positive control, so the oracle above cannot be vacuous: the genuine callback completes.
    flow = start_flow(service)
    answer = get(service, f"/oauth?code={flow.code}&state={flow.state}&session_state={flow.session_state}",
                 flow.cookie)
    back = urlsplit(answer.location or "")
    assert answer.status == 302 and back.query.startswith("from=fuzz&account="), answer.location
    states = [p for p in back.query.split("&") if p.startswith("state=")]
    assert back.fragment == APP_FRAGMENT and states in (["state=new"], ["state=existing"]), answer.location
    # At most one account: every genuine completion was the same mailbox (derived account id).
    rows = [r for r in table("accounts").list_entities() if r["RowKey"] == ""]  # not the event rows
    assert len(rows) <= 1, [(r["PartitionKey"], r.get("email"), r.get("meta")) for r in rows]


@pytest.mark.timeout(120)
def test_oauth_without_a_flow(service):
    """Random callbacks (no sign-in started): a hosted page, never a redirect, nothing written."""
    before = state_of_tables()

    @fuzz(80)
    @given(query_string({"code": st.one_of(st.text(max_size=30), st.none()),
                         "state": st.one_of(st.text(B64URL, min_size=8, max_size=130), st.text(), st.none())},
                        {"error": st.text(max_size=20), "error_description": st.text(max_size=40)}),
           st.one_of(st.none(), st.text(max_size=60)))
    def check(query: str, cookie: str | None) -> None:
        answer = get(service, f"/oauth?{query}", cookie)
        assert answer.status in (0, 400, 414), (answer.status, query[:300])
        assert answer.location is None

    check()
    assert state_of_tables() == before
