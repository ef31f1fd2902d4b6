"""Sticky keys and rule values are bytes, through real Envoy: header values that are not UTF-8
and percent-decoded query keys hash their exact bytes, and rules compare bytes."""
import collections
import json

import pytest

import harness
from test_strategies import predicted_owner

UPSTREAMS = [{"name": f"v{i}", "cluster": f"by_v{i}", "weight": 1} for i in range(1, 5)]
# 40 distinct keys that are not UTF-8. A lossy conversion maps each of them to the same text.
RAW_KEYS = [bytes([0xff, n, 0xfe]) for n in range(0x41, 0x41 + 40)]
pytestmark = pytest.mark.builds("wasm", "native", "specifier")


def plugin():
    return {"services": [
        {"name": "hdr", "strategy": "sticky", "hash_on": {"header": "x-user"}, "upstreams": UPSTREAMS},
        {"name": "qry", "strategy": "sticky", "hash_on": {"query": "user"}, "upstreams": UPSTREAMS},
        {"name": "rul", "upstreams": [
            {"name": "main", "cluster": "by_v1", "weight": 1},
            {"name": "beta", "cluster": "by_v2", "weight": 0}],
         "rules": [{"match": {"headers": [{"name": "x-tag", "exact": "\ufffd"}]}, "upstream": "beta"},
                   {"match": {"query": [{"name": "q", "exact": "\u00ff"}]}, "upstream": "beta"}]}]}


def get(port, host, path="/", headers=()):
    """Sends one request whose header values are sent as the given bytes (latin-1 round trip)."""
    client = harness.Client(port)
    try:
        sent = {"Host": host}
        sent.update({k: v.decode("latin-1") for k, v in headers})
        status, _, body = client.get(path, sent)
    finally:
        client.close()
    assert status == 200, body
    return json.loads(body)["upstream"]


def test_non_utf8_header_keys_hash_their_raw_bytes(deploy):
    envoy = deploy(plugin(), [u["cluster"] for u in UPSTREAMS])
    seen = collections.Counter()
    for key in RAW_KEYS:
        got = get(envoy.port, "hdr", headers=[("x-user", key)])
        assert got == predicted_owner(key, UPSTREAMS), key
        # The same key goes to the same upstream again.
        assert get(envoy.port, "hdr", headers=[("x-user", key)]) == got
        seen[got] += 1
    assert len(seen) == 4, seen


def test_query_keys_hash_their_percent_decoded_bytes(deploy):
    envoy = deploy(plugin(), [u["cluster"] for u in UPSTREAMS])
    seen = collections.Counter()
    for key in RAW_KEYS:
        path = "/?user=" + "".join(f"%{b:02X}" for b in key)
        got = get(envoy.port, "qry", path=path)
        assert got == predicted_owner(key, UPSTREAMS), path
        seen[got] += 1
    assert len(seen) == 4, seen
    # ASCII keys hash exactly as documented.
    for i in range(50):
        assert get(envoy.port, "qry", path=f"/?user=user-{i}") == predicted_owner(f"user-{i}", UPSTREAMS)


def test_rules_compare_bytes(deploy):
    envoy = deploy(plugin(), [u["cluster"] for u in UPSTREAMS])
    # A raw 0xff byte is neither U+FFFD nor the UTF-8 spelling of "ÿ".
    assert get(envoy.port, "rul", headers=[("x-tag", b"\xff")]) == "by_v1"
    assert get(envoy.port, "rul", path="/?q=%FF") == "by_v1"
    # The exact bytes of the configured text match.
    assert get(envoy.port, "rul", headers=[("x-tag", "\ufffd".encode())]) == "by_v2"
    assert get(envoy.port, "rul", path="/?q=%C3%BF") == "by_v2"
