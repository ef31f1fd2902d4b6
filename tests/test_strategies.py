"""Strategies and match rules through real Envoy (--concurrency 2) and real loopback upstreams,
for every build that offers them (the cluster specifier refuses least_request)."""
import concurrent.futures
import json
import math
import socket
import time

import pytest

import harness
import stats
from stats import chi_square

FALLBACK_P = stats.P_MIN
pytestmark = pytest.mark.builds("wasm", "native", "specifier")


def ups(service, spec):
    """[(upstream, weight)] -> upstream objects whose clusters are '<service>_<upstream>'."""
    return [{"name": u, "cluster": f"{service}_{u}", "weight": w} for u, w in spec]


def clusters(*services):
    return [u["cluster"] for s in services for u in s["upstreams"]]


def gauges(envoy, suffix):
    """meshsplit gauges whose names end with `suffix`, by name."""
    return {k: v for k, v in envoy.stats(harness.stats_prefix()).items() if k.endswith(suffix)}


# ---- round robin ----------------------------------------------------------------------------

RR = {"name": "rr", "strategy": "round_robin", "upstreams": ups("rr", [("a", 5), ("b", 1), ("c", 1)])}


def test_round_robin_interleaves_on_one_connection_and_keeps_exact_counts(deploy):
    envoy = deploy({"services": [RR]}, clusters(RR))
    client = harness.Client(envoy.port)
    order = [json.loads(client.get("/", {"Host": "rr"})[2])["upstream"] for _ in range(7)]
    client.close()
    assert order == ["rr_a", "rr_a", "rr_b", "rr_a", "rr_c", "rr_a", "rr_a"]

    seen = harness.send(envoy.port, 7000, {"Host": "rr"}, connections=8)
    workers = 2
    for cluster, expected in (("rr_a", 5000), ("rr_b", 1000), ("rr_c", 1000)):
        assert abs(seen[cluster] - expected) <= 2 * workers, seen


# ---- least request --------------------------------------------------------------------------

LR = {"name": "lr", "strategy": "least_request", "upstreams": ups("lr", [("slow", 1), ("fast", 1)]),
      "rules": [{"match": {"headers": [{"name": "x-force", "exact": "slow"}]}, "upstream": "slow"}]}
HANG = {"name": "hang", "strategy": "least_request", "upstreams": ups("hang", [("only", 1)])}


@pytest.mark.builds("specifier")
def test_specifier_refuses_least_request_and_points_at_the_filter(build, tmp_path):
    config = harness.bootstrap({"services": [LR]}, {}, harness.free_port(), harness.free_port())
    envoy = harness.Envoy(config, tmp_path).start(wait=False)
    try:
        code = envoy.wait_exit()
    finally:
        envoy.stop()
    assert code != 0
    assert ('invalid configuration: services[0].strategy: "least_request" needs to see each request '
            "end, which a cluster specifier does not; use meshsplit as an HTTP filter") in envoy.log()


@pytest.fixture(scope="module")
def lr_envoy(deploy):
    return deploy({"services": [LR, HANG]}, clusters(LR, HANG),
                  delays={"lr_slow": 0.2, "hang_only": 10.0})


@pytest.mark.builds("wasm", "native")
def test_least_request_favours_the_fast_upstream_and_counts_return_to_zero(lr_envoy):
    clients, deadline = 32, time.monotonic() + 4.0

    def client_loop(_):
        seen, client = {}, harness.Client(lr_envoy.port)
        try:
            for _ in range(2000):  # bounded in count and time
                if time.monotonic() > deadline:
                    break
                status, _, body = client.get("/", {"Host": "lr"})
                name = json.loads(body)["upstream"] if status == 200 else status
                seen[name] = seen.get(name, 0) + 1
        finally:
            client.close()
        return seen

    total = {}
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for seen in pool.map(client_loop, range(clients)):
            for k, v in seen.items():
                total[k] = total.get(k, 0) + v
    assert set(total) == {"lr_slow", "lr_fast"}, total
    share = total["lr_fast"] / sum(total.values())
    assert share >= 0.8, total
    assert harness.wait_for(lambda: set(gauges(lr_envoy, ".lr.slow.in_flight").values()) == {0}
                    and set(gauges(lr_envoy, ".lr.fast.in_flight").values()) == {0}), \
        gauges(lr_envoy, "in_flight")


@pytest.mark.builds("wasm", "native")
def test_least_request_counts_are_given_back_when_clients_abort(lr_envoy):
    sockets = []
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", lr_envoy.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: hang\r\n\r\n")
            sockets.append(s)
        # Counted while in flight, across both workers ...
        assert harness.wait_for(lambda: list(gauges(lr_envoy, ".hang.only.in_flight").values()) == [8]), \
            gauges(lr_envoy, "in_flight")
    finally:
        for s in sockets:
            s.close()
    # ... and given back on abort, long before the upstream would have answered.
    assert harness.wait_for(lambda: list(gauges(lr_envoy, ".hang.only.in_flight").values()) == [0], timeout=3), \
        gauges(lr_envoy, "in_flight")


@pytest.mark.builds("wasm", "native")
def test_least_request_rule_routed_requests_are_counted_too(lr_envoy):
    seen = harness.send(lr_envoy.port, 20, {"Host": "lr", "x-force": "slow"}, connections=4)
    assert seen == {"lr_slow": 20}
    assert harness.wait_for(lambda: set(gauges(lr_envoy, ".lr.slow.in_flight").values()) == {0})


# ---- sticky ---------------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(2000)]


def sticky_service(v2_weight):
    return {"name": "st", "strategy": "sticky", "hash_on": {"header": "x-user-id"},
            "upstreams": ups("st", [("v1", 60), ("v2", v2_weight), ("v3", 30)])}


def owners(envoy, keys=KEYS, connections=4):
    """key -> upstream, each key sent on one of `connections` fresh connections."""
    def worker(chunk):
        client, result = harness.Client(envoy.port), {}
        try:
            for key in chunk:
                status, _, body = client.get("/", {"Host": "st", "x-user-id": key})
                assert status == 200, body
                result[key] = json.loads(body)["upstream"]
        finally:
            client.close()
        return result

    chunks = [keys[i::connections] for i in range(connections)]
    merged = {}
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        for part in pool.map(worker, chunks):
            merged.update(part)
    return merged


M64 = (1 << 64) - 1


def sticky_hash(data):
    """The documented hash: 64-bit FNV-1a, then the splitmix64 finalizer."""
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & M64
    z = (h + 0x9e3779b97f4a7c15) & M64
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def predicted_owner(key, upstreams):
    """Weighted rendezvous hashing as documented in docs/strategies-and-rules.md; `key` is text or raw bytes."""
    key_hash = sticky_hash(key if isinstance(key, bytes) else key.encode())
    best, best_score = None, -1.0
    for u in upstreams:
        if u["weight"] == 0:
            continue
        mixed = sticky_hash(((key_hash ^ sticky_hash(u["name"].encode())) & M64).to_bytes(8, "little"))
        unit = ((mixed >> 12) + 0.5) / float(1 << 52)
        score = u["weight"] / -math.log(unit)
        if score > best_score:
            best, best_score = u["cluster"], score
    return best


def test_sticky_keys_stay_put_follow_weights_and_move_only_into_a_raised_upstream(build, tmp_path):
    """Every build sends each key to the upstream the documented hash predicts, so all builds
    agree with each other on every key."""
    names = clusters(sticky_service(10))
    with harness.upstreams(*names) as ports:
        def start(v2_weight):
            config = harness.bootstrap({"services": [sticky_service(v2_weight)]}, ports,
                                       harness.free_port(), harness.free_port())
            return harness.Envoy(config, tmp_path)

        with start(10) as envoy:
            passes = [owners(envoy) for _ in range(3)]  # each pass on new connections
        assert passes[0] == passes[1] == passes[2], "a key changed upstream between requests"
        before = passes[0]

        # The documented hash predicts every key's upstream (same on every worker and process).
        expected = {k: predicted_owner(k, sticky_service(10)["upstreams"]) for k in KEYS}
        assert before == expected

        counts = [sum(1 for o in before.values() if o == c) for c in names]
        stat, p = chi_square(counts, [60, 10, 30])
        assert p > FALLBACK_P, (counts, stat)

        with start(30) as envoy:
            after = owners(envoy)
        moved = {k for k in KEYS if after[k] != before[k]}
        assert all(after[k] == "st_v2" for k in moved), "keys moved between untouched upstreams"
        # P(key on v2) goes from 10/100 to 30/120: 15 % of keys move, within 4 sigma.
        expected_moves, sigma = 0.15 * len(KEYS), math.sqrt(len(KEYS) * 0.15 * 0.85)
        assert abs(len(moved) - expected_moves) < 4 * sigma, len(moved)

        with start(10) as envoy:  # a restart with the original config
            assert owners(envoy) == before


def test_sticky_requests_without_key_fall_back_to_weights(deploy):
    service = sticky_service(10)
    envoy = deploy({"services": [service]}, clusters(service))
    seen = harness.send(envoy.port, 4000, {"Host": "st"})
    stat, p = chi_square([seen.get(c, 0) for c in clusters(service)], [60, 10, 30])
    assert p > FALLBACK_P, (seen, stat)


# ---- rules ----------------------------------------------------------------------------------

RULES = {"name": "rules", "upstreams": ups("rules", [("v1", 70), ("v2", 0), ("v3", 30)]), "rules": [
    {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v2"},
    {"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "v2"},
    {"match": {"query": [{"name": "version", "exact": "v3"}]}, "upstream": "v3"},
    {"match": {"headers": [{"name": "x-tester", "prefix": "qa-"}, {"name": "x-debug", "present": True}]},
     "upstream": "v2"},
]}


@pytest.fixture(scope="module")
def rules_envoy(deploy):
    return deploy({"services": [RULES]}, clusters(RULES))


def test_header_rule_sends_everything_to_a_dark_upstream(rules_envoy):
    assert harness.send(rules_envoy.port, 1000, {"Host": "rules", "x-canary": "true"}) == {"rules_v2": 1000}


def test_cookie_and_query_rules(rules_envoy):
    assert harness.send(rules_envoy.port, 300, {"Host": "rules", "Cookie": "a=1; beta=1"}) == {"rules_v2": 300}
    assert harness.send(rules_envoy.port, 300, {"Host": "rules"}, path="/p?x=1&version=v3") == {"rules_v3": 300}


def test_rule_needs_all_its_conditions(rules_envoy):
    seen = harness.send(rules_envoy.port, 400, {"Host": "rules", "x-tester": "qa-1"})
    assert "rules_v2" not in seen
    seen = harness.send(rules_envoy.port, 100, {"Host": "rules", "x-tester": "qa-1", "x-debug": ""})
    assert seen == {"rules_v2": 100}


def test_requests_matching_no_rule_follow_the_strategy(rules_envoy):
    seen = harness.send(rules_envoy.port, 4000, {"Host": "rules", "x-canary": "false", "Cookie": "beta=0"},
                        path="/p?version=v1")
    assert "rules_v2" not in seen, "the dark upstream got traffic without a rule"
    stat, p = chi_square([seen.get("rules_v1", 0), seen.get("rules_v3", 0)], [70, 30])
    assert p > FALLBACK_P, (seen, stat)
