"""Issue 12 point 10: rotating the link-signing key without breaking open links, and without restarts.

The key lives in Key Vault secret ``mc-signing-key`` (here: the Key Vault fake, driven by the real SDK). Links and
cursors name the key that signed them (``<key id>.<mac>``); ``python -m shared.cli rotate-signing-key`` writes a
key ring (new current key, previous key with the end of its grace period); every instance re-reads the ring at
most every ``REFRESH_SECONDS`` and at once for a key id it does not know (``shared.storage.keys``). Time is
injected: the key cache's clock (the refresh), and the clock of ``shared.signing`` (the grace period)."""

from __future__ import annotations

import json
import secrets
import time
from types import SimpleNamespace

import pytest

import shared.signing
from shared import cli
from shared.core import links as linkcodec
from shared.settings import SettingsError, get_settings
from shared.signing import BadSignature, KeyRing, Signer, UnknownKey, b64url_encode, key_id
from shared.storage import keys
from shared.storage.keys import SIGNING_KEY_SECRET, KeyCache, parse_ring, ring_text, rotated
from shared.storage.secrets.factory import get_secret_store
from tests.service import Browser, query

OLD = "old-key-" + "o" * 40
NEW = "new-key-" + "n" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def later(monkeypatch, seconds: float) -> None:
    """Move ``shared.signing``'s wall clock (the grace period) ``seconds`` ahead; nothing else."""
    at = time.time() + seconds
    monkeypatch.setattr(shared.signing, "time", SimpleNamespace(time=lambda: at))


# --- the codec, without storage --------------------------------------------------------------------------------

def test_a_signature_names_its_key_and_binds_it():
    ring = KeyRing(OLD.encode())
    signature = ring.signer("link").signature("value")
    kid, mac = signature.split(".")
    assert kid == key_id(OLD.encode()) and len(kid) == 8 and OLD not in signature
    ring.signer("link").verify("value", signature)
    with pytest.raises(BadSignature):
        ring.signer("link").verify("value", mac)  # the key id cannot be stripped ...
    with pytest.raises(BadSignature):
        ring.signer("cursor").verify("value", signature)  # ... nor the purpose changed
    with pytest.raises(UnknownKey):
        ring.signer("link").verify("value", f"{key_id(NEW.encode())}.{mac}")  # ... nor the key id swapped
    with pytest.raises(UnknownKey):
        KeyRing(NEW.encode()).signer("link").verify("value", signature)


def test_the_previous_key_is_accepted_during_its_grace_only():
    now = time.time()
    before = KeyRing(OLD.encode())
    signed = before.signer("link").signature("value")
    legacy = Signer(OLD.encode(), "link").signature("value")  # made before key ids existed: a bare mac
    after = rotated(before, NEW, grace_seconds=600, now=now)
    assert after.current == NEW.encode() and after.previous == OLD.encode()
    for signature in (signed, legacy):
        after.signer("link").verify("value", signature, now=now + 599)
        with pytest.raises(BadSignature):
            after.signer("link").verify("value", signature, now=now + 601)
    fresh = after.signer("link").signature("value")
    assert fresh.startswith(key_id(NEW.encode()) + ".")
    after.signer("link").verify("value", fresh, now=now + 10**9)
    Signer(NEW.encode(), "link")  # a bare mac of the current key stays valid (no rotation happened for it)
    after.signer("link").verify("value", Signer(NEW.encode(), "link").signature("value"), now=now + 10**9)


def test_the_ring_text_round_trips_and_bad_values_are_refused():
    ring = rotated(KeyRing(OLD.encode()), NEW, grace_seconds=60, now=1_700_000_000)
    assert parse_ring(ring_text(ring)) == KeyRing(NEW.encode(), OLD.encode(), 1_700_000_060)
    assert parse_ring(OLD) == KeyRing(OLD.encode())  # what the postprovision hook writes
    assert json.loads(ring_text(ring))["previousUntil"] == 1_700_000_060
    for bad in ("short", '{"current": "short"}', '{"previous": "' + OLD + '"}', "{not json",
                '{"current": "' + NEW + '", "previous": "x"}', '{"current": 7}',
                '{"current": "' + NEW + '", "previous": "' + OLD + '", "previousUntil": "soon"}'):
        with pytest.raises(SettingsError):
            parse_ring(bad)


# --- Key Vault, the CLI, and instances ------------------------------------------------------------------------------

@pytest.fixture
def vault_env(set_env, keyvault):
    """The signing key in Key Vault (as in Azure): no MC_SIGNING_KEY."""
    set_env(MC_KEY_VAULT_URL=keyvault.url, MC_CA_BUNDLE=keyvault.ca_bundle, MC_SIGNING_KEY=None,
            MC_LOCAL_SECRET_KEY=None)
    get_secret_store().set(SIGNING_KEY_SECRET, OLD)
    return keyvault


@pytest.fixture
def service_env(keyvault):
    return {"MC_KEY_VAULT_URL": keyvault.url, "MC_SIGNING_KEY": None, "MC_LOCAL_SECRET_KEY": None}


def rotate(*args: str) -> int:
    return cli.main(["rotate-signing-key", *args])


def test_a_second_instance_picks_up_the_new_key_without_a_restart(vault_env, capsys):
    settings = get_settings()
    clock_a, clock_b = Clock(), Clock()
    instance_a, instance_b = KeyCache(clock=clock_a), KeyCache(clock=clock_b)
    assert instance_a.ring(settings).current == instance_b.ring(settings).current == OLD.encode()

    assert rotate("--grace-seconds", "3600") == 0
    assert "no restart" in capsys.readouterr().out
    stored = json.loads(vault_env.current(SIGNING_KEY_SECRET)["value"])
    assert set(stored) == {"current", "previous", "previousUntil"} and stored["previous"] == OLD

    # Inside the refresh interval both still sign with the old key; that is fine, the new ring accepts it.
    assert instance_a.ring(settings).current == OLD.encode()
    clock_a.now += keys.REFRESH_SECONDS
    new = instance_a.ring(settings).current
    assert new not in (OLD.encode(),) and len(new) >= 32
    from_a = instance_a.signer(settings, "link").signature("value")
    assert from_a.startswith(key_id(new) + ".")

    # Instance B has not re-read yet; a signature with the new key makes it re-read at once, not refuse.
    reads = vault_env.request_count()
    instance_b.signer(settings, "link").verify("value", from_a)
    assert vault_env.request_count() > reads
    assert instance_b.ring(settings).current == new
    # An old signature still verifies on both (grace); made-up key ids do not make it read the vault again.
    from_before = KeyRing(OLD.encode()).signer("link").signature("value")
    instance_b.signer(settings, "link").verify("value", from_before)
    reads = vault_env.request_count()
    for _ in range(5):
        with pytest.raises(BadSignature):
            instance_b.signer(settings, "link").verify("value", "AAAAAAAA." + from_a.split(".")[1])
    assert vault_env.request_count() - reads <= 1, "an unknown key id re-reads at most every few seconds"


def test_a_failed_re_read_keeps_the_ring(vault_env):
    settings = get_settings()
    clock = Clock()
    cache = KeyCache(clock=clock)
    ring = cache.ring(settings)
    vault_env.fail_next(10, 503, code="ServiceUnavailable")
    clock.now += keys.REFRESH_SECONDS
    assert cache.ring(settings) == ring
    vault_env.fail_next(0)


def test_the_cli_refuses_a_second_rotation_during_the_grace(vault_env, capsys):
    assert rotate("--grace-seconds", "3600") == 0
    first = vault_env.current(SIGNING_KEY_SECRET)["value"]
    assert rotate() == 2 and "still accepted" in capsys.readouterr().err
    assert vault_env.current(SIGNING_KEY_SECRET)["value"] == first
    assert rotate("--force", "--grace-seconds", "0") == 0
    ring = parse_ring(vault_env.current(SIGNING_KEY_SECRET)["value"])
    assert ring.previous == parse_ring(first).current and not ring.accepted().get(key_id(ring.previous))


def test_rotation_needs_the_key_in_key_vault(env, capsys):
    assert rotate() == 2 and "MC_KEY_VAULT_URL" in capsys.readouterr().err


def test_links_and_cursors_survive_a_rotation_until_the_grace_ends(service, identity, keyvault, monkeypatch):
    """Over HTTP: a link from before the rotation (and one from before key ids) still opens during the grace and
    is refused after it; the service signs with the new key after its refresh, without a restart, and accepts a
    link another instance signed with the new key at once."""
    from shared.admin.accounts import decode_cursor, encode_cursor

    get_secret_store().set(SIGNING_KEY_SECRET, OLD)
    keys.reset_keys()
    identity.sign_in_as(identity.add_user("rot@contoso.com", email="rot@contoso.com"))
    before = service.link(expiresIn=7200)
    assert query(before)["sig"].startswith(key_id(OLD.encode()) + ".")
    params = query(before)
    legacy = f"{service.url}/accounts/new?data={params['data']}&sig=" + \
        Signer(OLD.encode(), "link").signature(params["data"])  # a link made before key ids existed
    cursor = encode_cursor({"PartitionKey": "acct-1", "RowKey": ""}, get_settings())

    assert rotate("--grace-seconds", "600") == 0
    # Another instance already signs with the new key: this one re-reads the ring at once to accept it.
    ring = parse_ring(keyvault.current(SIGNING_KEY_SECRET)["value"])
    data = params["data"]
    from_other = f"{service.url}/accounts/new?data={data}&sig={ring.signer('link').signature(data)}"
    assert Browser().get(from_other, allow_redirects=False, timeout=30).status_code == 302

    clock = Clock()
    monkeypatch.setattr(keys._keys, "clock", clock)
    keys.reset_keys()
    keys.signing_keys(get_settings())
    clock.now += keys.REFRESH_SECONDS  # the instance's refresh: no restart
    after = service.link(expiresIn=7200)
    assert query(after)["sig"].startswith(key_id(ring.current) + "."), "signs with the new key"
    for link in (before, legacy, after):
        assert Browser().get(link, allow_redirects=False, timeout=30).status_code == 302, link
    assert decode_cursor(cursor, get_settings()) == {"PartitionKey": "acct-1", "RowKey": ""}

    later(monkeypatch, 601)  # the grace is over; the links themselves would live another hour
    for link in (before, legacy):
        page = Browser().get(link, allow_redirects=False, timeout=30)
        assert page.status_code == 400 and "This sign-in link is not valid" in page.text, link
    assert Browser().get(after, allow_redirects=False, timeout=30).status_code == 302
    with pytest.raises(Exception, match="cursor"):
        decode_cursor(cursor, get_settings())
    with pytest.raises(linkcodec.LinkError):
        linkcodec.decode(params["data"], params["sig"], get_settings())


def test_the_key_id_reveals_nothing_and_differs_per_key():
    kids = {key_id(secrets.token_urlsafe(48).encode()) for _ in range(50)}
    assert len(kids) == 50 and all(len(k) == 8 for k in kids)
    assert b64url_encode(b"x")  # base64url alphabet, like the rest of the signature
