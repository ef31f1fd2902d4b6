"""What a configuration says is what traffic gets, through real Envoy (--concurrency 2) and
real loopback upstreams, for every build a behaviour applies to: least request follows the
weights on a quiet service, round robin starts afresh when the weights change, hosts match
strictly, and repeated headers, cookies and query parameters follow one documented rule."""
import datetime
import time

import pytest

import harness
import stats
from stats import chi_square

P_MIN = stats.P_MIN


def ups(service, spec):
    """[(upstream, weight)] -> upstream objects whose clusters are '<service>_<upstream>'."""
    return [{"name": u, "cluster": f"{service}_{u}", "weight": w} for u, w in spec]


def clusters(*services):
    return [u["cluster"] for s in services for u in s["upstreams"]]


def rfc3339(unix_s):
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- least request follows the weights (issue 23, point 1) -----------------------------------

LR = {"name": "lr", "strategy": "least_request", "upstreams": ups("lr", [("a", 90), ("b", 10)])}


@pytest.mark.builds("wasm", "native")
@pytest.mark.parametrize("connections,count", [(1, 600), (32, 2000)])
def test_least_request_follows_the_weights_at_low_and_equal_load(deploy, connections, count):
    # Both upstreams answer after the same 5 ms, so requests overlap in flight at 32.
    envoy = deploy({"services": [LR]}, clusters(LR), delay=0.005)
    seen = harness.send(envoy.port, count, {"Host": "lr"}, connections=connections)
    assert sum(seen.values()) == count and set(seen) <= {"lr_a", "lr_b"}, seen
    stat, p = chi_square([seen["lr_a"], seen["lr_b"]], [90, 10])
    assert p > P_MIN, (seen, stat, p)


@pytest.mark.builds("wasm", "native")
def test_least_request_at_four_clients_keeps_the_small_upstream_near_its_weight(deploy):
    """docs/strategies-and-rules.md: at 4 clients the 10 % upstream gets 7-9 % (it is a
    candidate only while it has fewer requests in flight relative to its weight, and how the
    requests overlap varies from run to run: 7.2 to 8.9 % in runs of 2 000). The band
    [5, 11] % holds 3 standard deviations (0.6 points at 2 000) beyond those runs; a
    least_request that ignored the weights (50 %) or starved the small upstream fails it."""
    envoy = deploy({"services": [LR]}, clusters(LR), delay=0.005)
    seen = harness.send(envoy.port, 2000, {"Host": "lr"}, connections=4)
    assert sum(seen.values()) == 2000 and set(seen) <= {"lr_a", "lr_b"}, seen
    share = seen["lr_b"] / 2000
    print(f"\nleast_request at 4 clients: the 10 % upstream got {share:.1%} of 2000")
    assert 0.05 <= share <= 0.11, seen


# ---- round robin starts afresh when the weights change (issue 23, point 2) --------------------

@pytest.mark.builds("wasm", "native", "specifier")
def test_round_robin_alternates_right_after_a_rollout_step_from_extreme_weights(deploy):
    start = int(time.time()) + 12
    rr = {"name": "rr", "strategy": "round_robin", "upstreams": ups("rr", [("a", 1_000_000), ("b", 1)]),
          "rollout": {"start": rfc3339(start), "steps": [{"at_s": 0, "weights": {"a": 1, "b": 1}}]}}
    envoy = deploy({"services": [rr]}, clusters(rr))
    # Under 1 000 000/1, every worker builds up b's score with each request.
    before = harness.send(envoy.port, 1200, {"Host": "rr"}, connections=4)
    assert time.time() < start, "the first phase ran past the step; the test needs a later start"
    assert before["rr_a"] >= 1198, before
    time.sleep(max(0.0, start + 2.5 - time.time()))
    after = harness.send(envoy.port, 1200, {"Host": "rr"}, connections=4)
    # Per worker within half a request of the share, counted from the step; 2 workers.
    assert sum(after.values()) == 1200 and abs(after["rr_a"] - after["rr_b"]) <= 4, after


# ---- hosts are parsed strictly and IPv6 literals canonically (issue 23, point 4) --------------

HOSTS = {"on_unknown_service": "reject", "services": [
    {"name": "six", "hosts": ["[0:0::1]"], "upstreams": ups("six", [("v1", 1)])},
    {"name": "shop", "hosts": ["shop:9080"], "upstreams": ups("shop", [("v1", 1)])},
    {"name": "reviews", "upstreams": ups("reviews", [("v1", 1)])},
]}


@pytest.mark.builds("wasm", "native", "specifier")
def test_hosts_match_strictly_with_canonical_ipv6_and_ports_as_configured(deploy):
    envoy = deploy(HOSTS, clusters(*HOSTS["services"]))
    client = harness.Client(envoy.port)
    try:
        def route(host):
            status, _, body = client.get("/", {"Host": host})
            return harness.answer_key(status, body) if status == 200 else status

        assert route("[::1]") == "six_v1"
        assert route("[::0:1]:8080") == "six_v1"
        assert route("shop:9080") == "shop_v1"
        assert route("shop:8080") == 404 and route("shop") == 404
        # A host listed without a port stands for the name on every port.
        assert route("reviews") == "reviews_v1" and route("reviews:8080") == "reviews_v1"
        for malformed in ("[reviews]", "[reviews]junk", "[reviews", "reviews:abc", "reviews:"):
            assert route(malformed) == 404, malformed
    finally:
        client.close()


# ---- repeated values: any copy satisfies a condition (issue 23, point 5) ----------------------

RULED = {"on_unknown_service": "reject", "services": [
    {"name": "ruled", "upstreams": ups("ruled", [("stable", 1), ("canary", 0)]), "rules": [
        {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "canary"},
        {"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "canary"},
        {"match": {"cookies": [{"name": "q", "exact": "x"}]}, "upstream": "canary"},
        {"match": {"query": [{"name": "v", "exact": "2"}]}, "upstream": "canary"},
    ]},
]}


def raw_request(port, head):
    """Sends one HTTP/1.1 request written byte for byte (repeated headers as written) and
    returns (status, upstream or None)."""
    import json
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"connection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    body = data.split(b"\r\n\r\n", 1)[1]
    return status, (json.loads(body)["upstream"] if status == 200 else None)


@pytest.mark.builds("wasm", "native", "specifier")
@pytest.mark.parametrize("head,expected", [
    (b"GET / HTTP/1.1\r\nHost: ruled\r\nx-canary: false\r\nx-canary: true\r\n", "ruled_canary"),
    (b"GET / HTTP/1.1\r\nHost: ruled\r\nx-canary: true\r\nx-canary: false\r\n", "ruled_canary"),
    (b"GET / HTTP/1.1\r\nHost: ruled\r\nx-canary: false\r\nx-canary: no\r\n", "ruled_stable"),
    (b"GET / HTTP/1.1\r\nHost: ruled\r\ncookie: beta=0; beta=1\r\n", "ruled_canary"),
    (b"GET / HTTP/1.1\r\nHost: ruled\r\ncookie: a=1\r\ncookie: beta=1\r\n", "ruled_canary"),
    # Split on every `;` first, as browsers and Envoy: a quoted value loses its quotes, and an
    # unrelated cookie whose value starts with an unmatched quote hides nothing after it.
    (b'GET / HTTP/1.1\r\nHost: ruled\r\ncookie: q="x"; z=1\r\n', "ruled_canary"),
    (b'GET / HTTP/1.1\r\nHost: ruled\r\ncookie: a="x; beta=1; c="y"\r\n', "ruled_canary"),
    (b"GET /?v=1&v=2 HTTP/1.1\r\nHost: ruled\r\n", "ruled_canary"),
    (b"GET /?v=2&v=1 HTTP/1.1\r\nHost: ruled\r\n", "ruled_canary"),
    (b"GET /?v=1&v=3 HTTP/1.1\r\nHost: ruled\r\n", "ruled_stable"),
], ids=["header-false-true", "header-true-false", "header-neither", "cookie-dup", "cookie-two-headers",
        "cookie-quoted", "cookie-after-an-unmatched-quote", "query-dup", "query-dup-first", "query-neither"])
def test_a_condition_holds_when_any_copy_cookie_or_parameter_satisfies_it(deploy, head, expected):
    envoy = deploy(RULED, clusters(*RULED["services"]))
    assert raw_request(envoy.port, head) == (200, expected)
