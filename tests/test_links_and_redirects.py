"""The signed-link codec and redirectUrl rules, without I/O."""

import time

import pytest

from shared.checks import InvalidRedirect, validate_redirect_url, with_query
from shared.core import links as linkcodec
from shared.schemas import FormRequest, LinkData
from shared.settings import get_settings
from shared.signing import b64url_decode, b64url_encode


def _link(**overrides) -> LinkData:
    now = int(time.time())
    values = dict(redirectUrl="https://app.example/done", type="app1", nonce="n1", iat=now, exp=now + 60)
    values.update(overrides)
    return LinkData(**values)


def test_link_round_trip(env):
    settings = get_settings()
    data, sig = linkcodec.encode(_link(email="shared@contoso.com", delegated=True), settings)
    link = linkcodec.decode(data, sig, settings)
    assert link.email == "shared@contoso.com" and link.delegated is True and link.type == "app1"


@pytest.mark.parametrize("mutate", ["data", "sig", "truncate", "swap"])
def test_tampered_links_are_invalid(env, mutate):
    settings = get_settings()
    data, sig = linkcodec.encode(_link(), settings)
    other_data, other_sig = linkcodec.encode(_link(nonce="n2"), settings)
    if mutate == "data":
        raw = b64url_decode(data).replace(b"app.example", b"evil.example")
        data = b64url_encode(raw)
    elif mutate == "sig":
        sig = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    elif mutate == "truncate":
        data = data[:-4]
    else:
        sig = other_sig
    with pytest.raises(linkcodec.LinkError) as info:
        linkcodec.decode(data, sig, settings)
    assert info.value.kind == "invalid"


def test_expired_link(env):
    settings = get_settings()
    data, sig = linkcodec.encode(_link(exp=int(time.time()) - 1), settings)
    with pytest.raises(linkcodec.LinkError) as info:
        linkcodec.decode(data, sig, settings)
    assert info.value.kind == "expired"


def test_link_signed_with_another_key_is_invalid(env, set_env):
    data, sig = linkcodec.encode(_link(), get_settings())
    set_env(MC_SIGNING_KEY="another-key-that-is-long-enough-0123456789")
    with pytest.raises(linkcodec.LinkError):
        linkcodec.decode(data, sig, get_settings())


@pytest.mark.parametrize("url", [
    "http://app.example/cb",            # plain http off loopback
    "https://user:pw@app.example/cb",   # credentials
    "https://app.example@evil.example/",
    "//evil.example/cb",                # scheme-relative
    "javascript:alert(1)",
    "https:///nohost",
    "https://app.example\\@evil.example",
    "https://app.example/ cb",
    "ftp://app.example/",
    "",
])
def test_bad_redirect_urls(url):
    with pytest.raises(InvalidRedirect):
        validate_redirect_url(url)


@pytest.mark.parametrize("url", ["https://app.example/cb?x=1", "http://localhost:3000/cb", "http://127.0.0.1/cb"])
def test_good_redirect_urls(url):
    assert validate_redirect_url(url) == url


def test_allowlist_matches_origins():
    allow = ("https://app.example", "https://other.example:8443")
    assert validate_redirect_url("https://APP.example:443/x", allow)
    assert validate_redirect_url("https://other.example:8443/y", allow)
    for url in ("https://app.example.evil.com/", "https://other.example/y", "https://evil.example/"):
        with pytest.raises(InvalidRedirect):
            validate_redirect_url(url, allow)


def test_with_query_keeps_app_params_and_the_fragment_and_replaces_ours():
    url = with_query("https://app.example/cb?x=1&state=spoof#frag", {"account": "a b", "state": "new"})
    assert url == "https://app.example/cb?x=1&account=a+b&state=new#frag"


@pytest.mark.parametrize("account", ["a/b", "a\\b", "a#b", "a?b", "a\x00b", "a\nb", "x" * 257, "\U0001f600" * 129])
def test_account_ids_table_storage_forbids(account):
    with pytest.raises(ValueError):
        FormRequest(account=account, redirectUrl="https://app.example/")


def test_delegated_form_needs_the_shared_address():
    with pytest.raises(ValueError):
        FormRequest(delegated=True, redirectUrl="https://app.example/")
