"""Keys, the cache and the authorize function: the rest of the pure core."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest

from proxy.core import keys
from proxy.core.cache import Entry, KeyCache
from proxy.core.decide import authorize
from proxy.core.errors import KeyFormatError
from proxy.core.facts import Facts
from proxy.core.model import KeyStatus, Reason
from proxy.core.policy import compile_policy
from tests.values import NOW, record

FACTS = Facts(ipaddress.ip_address("10.0.0.1"), "GET", "/x", NOW, gathered={"country": "US"})


def test_generated_keys_have_the_documented_shape_and_parse_back() -> None:
    key_id, key, digest = keys.generate()
    assert key.startswith(f"sg_{key_id}_") and len(key) == keys.KEY_LENGTH
    presented = keys.parse(key)
    assert presented.key_id == key_id and keys.matches(presented, digest)
    assert keys.generate()[1] != key


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "sg_",
        "x" * 10_000,
        "sg_0123456789abcdef-" + "a" * 48,
        "sg_0123456789ABCDEF_" + "a" * 48,
        "sk_0123456789abcdef_" + "a" * 48,
        "sg_0123456789abcdef_" + "g" * 48,
        "sg_0123456789abcdef_" + "a" * 47,
        "sg_0123456789abcde\u0661_" + "a" * 48,
    ],
)
def test_malformed_keys_are_refused_without_lookup(raw: str) -> None:
    with pytest.raises(KeyFormatError):
        keys.parse(raw)


def test_wrong_secret_does_not_match() -> None:
    _, key, digest = keys.generate()
    wrong = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert not keys.matches(keys.parse(wrong), digest)


AUTH_CASES = [
    ("active", {}, Reason.ALLOWED),
    ("revoked", {"status": KeyStatus.REVOKED}, Reason.KEY_REVOKED),
    ("suspended", {"status": KeyStatus.SUSPENDED}, Reason.KEY_SUSPENDED),
    ("expired", {"expires_at": NOW}, Reason.KEY_EXPIRED),
    ("not expired", {"expires_at": NOW + timedelta(seconds=1)}, Reason.ALLOWED),
    ("not yet valid", {"not_before": NOW + timedelta(seconds=1)}, Reason.KEY_NOT_YET_VALID),
    ("valid from now", {"not_before": NOW}, Reason.ALLOWED),
    ("policy denies", {"policy": {"networks": {"allow": []}}}, Reason.NETWORK_DENIED),
    (
        "revoked beats policy",
        {"status": KeyStatus.REVOKED, "policy": {"networks": {"allow": []}}},
        Reason.KEY_REVOKED,
    ),
]


@pytest.mark.parametrize(("name", "fields", "reason"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
def test_authorize(name: str, fields: dict, reason: Reason) -> None:
    key_id, key, digest = keys.generate()
    rec = record(digest, key_id, **fields)
    decision = authorize(rec, compile_policy(rec.policy), keys.parse(key), FACTS)
    assert decision.reason == reason


def test_authorize_unknown_key_and_wrong_secret_look_the_same() -> None:
    key_id, key, digest = keys.generate()
    _, other, _ = keys.generate(key_id)
    rec = record(digest, key_id)
    assert authorize(None, None, keys.parse(key), FACTS).reason is Reason.KEY_INVALID
    assert authorize(rec, compile_policy({}), keys.parse(other), FACTS).reason is Reason.KEY_INVALID


def test_authorize_without_compiled_policy_fails_closed() -> None:
    key_id, key, digest = keys.generate()
    decision = authorize(record(digest, key_id), None, keys.parse(key), FACTS)
    assert not decision.allowed and decision.reason is Reason.INTERNAL_ERROR


def _entry(key_id: str) -> Entry:
    return Entry(record(b"\0" * 32, key_id), compile_policy({}))


def test_cache_hit_evict_and_bound() -> None:
    cache = KeyCache(max_entries=2, max_missing=2)
    for k in ("a", "b", "c"):
        assert cache.store(k, _entry(k), cache.generation)
    assert cache.get("a") is None and cache.get("b") is not None and len(cache) == 2
    cache.invalidate("b")
    assert cache.get("b") is None


def test_negative_cache_is_bounded() -> None:
    cache = KeyCache(max_entries=2, max_missing=3)
    for i in range(10):
        cache.store(f"m{i}", None, cache.generation)
    assert [cache.known_missing(f"m{i}") for i in range(10)] == [False] * 7 + [True] * 3


def test_a_load_that_raced_a_change_is_not_stored() -> None:
    """Why a new key is never refused by a negative entry: its creation bumps the generation."""
    cache = KeyCache(max_entries=10, max_missing=10)
    started = cache.generation  # a lookup of "k" begins, reads "not found" ...
    cache.invalidate("k")  # ... while the key is created and announced
    assert not cache.store("k", None, started)
    assert not cache.known_missing("k")
    assert cache.store("k", _entry("k"), cache.generation)


def test_creation_evicts_a_negative_entry() -> None:
    cache = KeyCache(max_entries=10, max_missing=10)
    cache.store("k", None, cache.generation)
    cache.invalidate("k")
    assert not cache.known_missing("k")
