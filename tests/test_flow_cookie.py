"""Issue 14 point 2: the pending sign-in sealed into the browser (``shared.signin.flowstate``) instead of a flow row.

The cookie opens only for its own state, under a key of the ring; tampered, foreign, truncated or retired-key
cookies are refused as ``browser_mismatch``; a state this service never made is ``session_unknown``; a link at the
form's size limit fits (over two cookies). End to end: a tampered cookie is the hosted page, never a 5xx, and the
hosted redirect writes no row."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace

import pytest

from shared.core import links as linkcodec
from shared.schemas import LinkData
from shared.settings import get_settings
from shared.signin import flowstate
from shared.signin.flow import _cookie_name
from shared.signing import KeyRing, b64url_encode
from shared.storage.tables.client import table
from tests.service import Browser, query

OLD = b"old-key-" + b"o" * 40
NEW = b"new-key-" + b"n" * 40


def flow_of(state: str, link: LinkData | None = None) -> flowstate.Flow:
    now = int(time.time())
    link = link or LinkData(redirectUrl="https://app.example/done", type="app-1", nonce="n" * 24, iat=now,
                            exp=now + 3600)
    return flowstate.Flow(state=state, app_id="app-1", expires=now + 900,
                          link=link.model_dump(mode="json", exclude_none=True),
                          flow={"state": state, "nonce": "x" * 43, "code_verifier": "v" * 43, "scope": ["openid"],
                                "redirect_uri": "https://svc.example/oauth", "auth_uri": "https://login/" + "a" * 900})


@pytest.fixture
def ring(monkeypatch):
    held = {"ring": KeyRing(NEW)}
    monkeypatch.setattr(flowstate, "signing_keys", lambda settings, force=False: held["ring"])
    return held


def test_a_sealed_flow_opens_for_its_own_state_only(service, ring):
    settings = get_settings()
    state, other = flowstate.new_state(settings), flowstate.new_state(settings)
    [value] = flowstate.seal(flow_of(state), settings)
    opened = flowstate.open_flow(state, [value], settings)
    assert opened.flow["code_verifier"] == "v" * 43 and "auth_uri" not in opened.flow  # MSAL needs no auth_uri
    assert opened.link["nonce"] == "n" * 24 and opened.app_id == "app-1"
    middle = len(value) // 2  # not the last character: its low bits may be base64 padding that decodes alike
    tampered = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1:]
    for state_, chunks in ((other, [value]), (state, [tampered]),
                           (state, [value[:100]]), (state, ["v1.zzzzzzzz." + value.split(".", 2)[2]]),
                           (state, ["v2" + value[2:]]), (state, ["garbage"])):
        with pytest.raises(flowstate.FlowRefused) as refused:
            flowstate.open_flow(state_, chunks, settings)
        assert refused.value.kind == "browser_mismatch"


def test_a_rotation_keeps_open_sign_ins_and_a_retired_key_is_refused(service, ring):
    settings = get_settings()
    state = flowstate.new_state(settings)
    ring["ring"] = KeyRing(OLD)
    [sealed_old] = flowstate.seal(flow_of(state), settings)
    ring["ring"] = KeyRing(NEW, OLD, time.time() + 60)  # rotated: the previous key in its grace
    assert flowstate.open_flow(state, [sealed_old], settings).state == state
    ring["ring"] = KeyRing(NEW)  # the grace is over
    with pytest.raises(flowstate.FlowRefused):
        flowstate.open_flow(state, [sealed_old], settings)


def test_a_missing_cookie_tells_a_made_up_state_apart(service):
    settings = get_settings()
    state = flowstate.new_state(settings)
    assert len(state) <= 128 and state.replace("-", "").replace("_", "").isalnum()
    for made_up, kind in ((state, "browser_mismatch"), ("unknownstate1234", "session_unknown"),
                          (state[:-1] + ("A" if state[-1] != "A" else "B"), "session_unknown")):
        with pytest.raises(flowstate.FlowRefused) as refused:
            flowstate.open_flow(made_up, ["", "", ""], settings)
        assert refused.value.kind == kind, made_up


def test_a_link_at_the_size_limit_fits_in_two_cookies(service):
    settings = get_settings()
    now = int(time.time())
    paths: list[str] = []
    link = None
    while True:  # incompressible text: the worst case
        candidate = LinkData(redirectUrl="https://app.example/" + "".join(f"{i:x}" for i in range(500)), type="a",
                             nonce=linkcodec.new_nonce(), iat=now, exp=now + 3600, meta={"path": paths + ["p"]})
        paths = paths + [b64url_encode(secrets.token_bytes(150))]
        if len(linkcodec.encode(candidate, settings)[0]) > linkcodec.MAX_DATA_LENGTH:
            break
        link = candidate
    assert link is not None
    state = flowstate.new_state(settings)
    chunks = flowstate.seal(flow_of(state, link), settings)
    assert len(chunks) == 2 and all(len(c) <= flowstate.CHUNK_CHARS for c in chunks), [len(c) for c in chunks]
    assert flowstate.open_flow(state, chunks + [""], settings).link == link.model_dump(mode="json", exclude_none=True)


def test_tampered_and_expired_cookies_are_hosted_pages_and_the_redirect_writes_nothing(service, identity):
    identity.sign_in_as(identity.add_user("cookie@contoso.com"))
    link = service.link()
    browser = Browser()
    start = browser.get(link, allow_redirects=False, timeout=30)
    assert start.status_code == 302
    assert list(table("flows").list_entities()) == [] and list(table("links").list_entities()) == []
    callback = browser.get(start.headers["Location"], allow_redirects=False, timeout=30,
                           verify=identity.ca_bundle).headers["Location"]
    state = query(callback)["state"]
    name = _cookie_name(state)
    value, path = browser.jar[name]

    browser.jar[name] = (value[:-4] + "AAAA", path)  # tampered
    page = browser.get(callback, allow_redirects=False, timeout=30)
    assert page.status_code == 400 and "Finish signing in in the same browser" in page.text, page.text[:300]

    settings = get_settings()
    expired = flowstate.open_flow(state, [value], settings)
    [old] = flowstate.seal(replace(expired, expires=time.time() - 1), settings)
    browser.jar[name] = (old, path)
    page = browser.get(callback, allow_redirects=False, timeout=30)
    assert page.status_code == 410 and "took too long" in page.text, page.text[:300]
    assert list(table("accounts").list_entities()) == []


def test_a_long_link_signs_in_over_two_cookies(service, identity):
    paths = [f"INBOX/{b64url_encode(secrets.token_bytes(150))}" for _ in range(28)]  # incompressible
    link = service.link(path=paths)
    assert len(query(link)["data"]) > 6000
    user = identity.add_user("long@contoso.com")
    browser = Browser()
    identity.sign_in_as(user)
    start = browser.get(link, allow_redirects=False, timeout=30)
    assert start.status_code == 302
    names = [n for n in browser.jar if n.startswith("mc_signin_")]
    assert len(names) == 2 and all(len(v) <= flowstate.CHUNK_CHARS for v, _ in browser.jar.values()), names
    callback = browser.get(start.headers["Location"], allow_redirects=False, timeout=30,
                           verify=identity.ca_bundle).headers["Location"]
    finished = browser.get(callback, allow_redirects=False, timeout=30)
    assert finished.status_code == 302 and query(finished.headers["Location"]).get("state") == "new", finished.text
    assert not [n for n in browser.jar if n.startswith("mc_signin_")]  # both cleared
