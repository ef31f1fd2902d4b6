"""What a configuration says is what traffic gets, through real Envoy (--concurrency 2) and
real loopback upstreams, for every build a behaviour applies to: least request follows the
weights on a quiet service, round robin starts afresh when the weights change, hosts match
strictly, and repeated headers, cookies and query parameters follow one documented rule."""
import datetime
import time

import pytest

import harness
from stats import chi_square

P_MIN = 1e-4


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
@pytest.mark.parametrize("connections,count", [(1, 600), (4, 1200), (32, 2000)])
def test_least_request_follows_the_weights_at_low_and_equal_load(deploy, connections, count):
    # Both upstreams answer after the same 5 ms, so requests overlap in flight at 4 and 32.
    envoy = deploy({"services": [LR]}, clusters(LR), delay=0.005)
    seen = harness.send(envoy.port, count, {"Host": "lr"}, connections=connections)
    assert sum(seen.values()) == count and set(seen) <= {"lr_a", "lr_b"}, seen
    stat, p = chi_square([seen["lr_a"], seen["lr_b"]], [90, 10])
    assert p > P_MIN, (seen, stat, p)


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
