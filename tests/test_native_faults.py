"""The native build under faults and clock steps, through the module built with test hooks
(`make native-test-hooks`: a request header `x-meshsplit-test-hook` moves the module's wall clock
or makes it panic; never shipped), and the cluster specifier under route refreshes."""
import copy
import json
import re
import subprocess
import time

import pytest

import harness
from test_guard import Load, stat
from test_metrics import prometheus_series

# Log lines are waited on: Envoy writes its log file every 10 s unless told otherwise.
FLUSH = ["--file-flush-interval-msec", "100"]

WINDOW_S = 2
GUARDED = {"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "v1", "weight": 50},
    {"name": "v2", "cluster": "v2", "weight": 50}],
    "guard": {"error_rate": 0.5, "min_requests": 20, "window_s": WINDOW_S, "eject_s": 30}}]}


@pytest.fixture(scope="module")
def test_hooks():
    """The module with test hooks, built once per module."""
    return harness.build_native_test_hooks()


def hooked_envoy(config, tmp_path):
    return harness.Envoy(config, tmp_path, module_dir=harness.NATIVE_TEST_HOOKS.parent,
                         extra_args=FLUSH)


def seconds_to_eject(envoy, servers, step_ms):
    """Steady traffic; the module's wall clock moved by `step_ms`; then v2 answers 503. Returns
    the seconds until v2 is ejected (None: not within 15 s)."""
    load = Load(envoy.port)
    try:
        time.sleep(1.5)  # every worker has ticked, on the clock as it was
        if step_ms:
            status, _, _ = harness.Client(envoy.port).get(
                "/", {"Host": "svc", harness.TEST_HOOK: f"clock-offset-ms={step_ms}"})
            assert status == 200
            assert harness.wait_for(
                lambda: f"test hook: wall clock moved by {step_ms} ms" in envoy.log(), timeout=15)
        servers["v2"].status = 503
        failing_at = time.monotonic()
        if not harness.wait_for(lambda: stat(envoy, "v2.ejections_total") == 1, timeout=15):
            return None
        return time.monotonic() - failing_at
    finally:
        load.close()


@pytest.mark.builds("native")
def test_a_backward_wall_clock_step_does_not_delay_an_ejection(build, test_hooks, tmp_path):
    """The issue saw no ejection within 20 s after a 60 s step back (ticks were scheduled on the
    wall clock), against 2 s without it. Both are measured here, on the same machine, one after
    the other, so a busy stretch may slow either: the bound is 6 s more than without the step,
    far above that noise (a second or two) and far below the defect (20 s and more)."""
    timings = {}
    for step_ms in (0, -60_000):
        with harness.upstream_servers("v1", "v2") as servers:
            ports = {n: s.server_port for n, s in servers.items()}
            config = harness.bootstrap(GUARDED, ports, harness.free_port(), harness.free_port())
            with hooked_envoy(config, tmp_path) as envoy:
                timings[step_ms] = seconds_to_eject(envoy, servers, step_ms)
    assert timings[0] is not None, timings
    assert timings[-60_000] is not None, f"not ejected within 15 s after the step: {timings}"
    # Within the window plus a tick or two of the time without the step, and a busy machine's
    # noise.
    assert timings[-60_000] <= max(timings[0], WINDOW_S) + 6, timings


def two_upstreams(on_unknown):
    return {"on_unknown_service": on_unknown, "services": [{"name": "svc", "upstreams": [
        {"name": "a", "cluster": "a", "weight": 50},
        {"name": "b", "cluster": "b", "weight": 50}]}]}


UNKNOWN_NOPE = {"error": "unknown service", "service": "nope"}
# After a panic the module does not trust what it read: the service is not named.
UNKNOWN_NULL = {"error": "unknown service", "service": None}


@pytest.mark.builds("native", "specifier")
@pytest.mark.parametrize("on_unknown", ["pass", "reject"])
def test_after_a_panic_a_client_sent_cluster_header_picks_nothing(build, test_hooks, tmp_path,
                                                                   on_unknown):
    with harness.upstreams("a", "b") as ports:
        config = harness.bootstrap(two_upstreams(on_unknown), ports, harness.free_port(),
                                   harness.free_port())
        with hooked_envoy(config, tmp_path) as envoy:
            client = harness.Client(envoy.port)
            answers = [client.get("/", {"Host": host, "x-meshsplit-cluster": "b",
                                        harness.TEST_HOOK: "panic"})
                       for host in ("nope", "svc") for _ in range(5)]
            # Without the hook the same requests route as ever.
            status, _, body = client.get("/", {"Host": "svc", "x-meshsplit-cluster": "b"})
            client.close()
            assert status == 200 and json.loads(body)["upstream"] in ("a", "b")
            assert harness.wait_for(lambda: "panicked; failing closed" in envoy.log(), timeout=15)
    for status, _, body in answers:
        assert status == 404, (status, body)
        if build == "native" and on_unknown == "reject":
            assert json.loads(body) == UNKNOWN_NULL, body
        elif build == "native":
            assert body.startswith(b"fallback route"), body


@pytest.mark.builds("native", "specifier")
def test_a_client_sent_cluster_header_never_reaches_the_upstream(build, tmp_path):
    """The filter overwrites it with the cluster it chose; the cluster specifier cannot remove
    it, and the route does (`request_headers_to_remove`)."""
    with harness.upstreams("a", "b") as ports:
        config = harness.bootstrap(two_upstreams("pass"), ports, harness.free_port(),
                                   harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            client = harness.Client(envoy.port)
            seen = [json.loads(client.get("/", {"Host": "svc", "x-meshsplit-cluster": "evil"})[2])
                    for _ in range(20)]
            client.close()
    expected = {"native": {"a", "b"}, "specifier": {None}}[build]
    assert {s["cluster_header"] for s in seen} <= expected, seen


LUA_CLEAR_ROUTE_CACHE = {
    "name": "envoy.filters.http.lua",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": (
            "function envoy_on_request(request_handle)\n"
            "  request_handle:clearRouteCache()\n"
            "end\n")}}}


@pytest.mark.builds("specifier")
@pytest.mark.parametrize("strategy,rules", [("weighted", 0), ("round_robin", 0), ("round_robin", 70)])
def test_a_route_refresh_does_not_count_a_request_again(build, tmp_path, strategy, rules):
    """A Lua filter clears the route cache: Envoy asks the cluster specifier again for each
    request. Counters still equal the requests served, upstream by upstream; round robin still
    alternates, also when the decision reads the headers of 70 rules (more than one 64-bit word
    of names)."""
    plugin = two_upstreams("pass")
    plugin["services"][0]["strategy"] = strategy
    plugin["services"][0]["rules"] = [
        {"match": {"headers": [{"name": f"x-r-{i}", "exact": "1"}]}, "upstream": "a"}
        for i in range(rules)]
    with harness.upstreams("a", "b") as ports:
        config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port())
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["http_filters"].insert(0, LUA_CLEAR_ROUTE_CACHE)
        with harness.Envoy(config, tmp_path) as envoy:
            answers = harness.send(envoy.port, 200, {"Host": "svc"})
            assert harness.wait_for(
                lambda: sum(counts(envoy).values()) >= sum(answers.values()), timeout=15)
            time.sleep(0.5)
            counted = counts(envoy)
    served = {}
    for key, n in answers.items():
        served[key] = served.get(key, 0) + n
    assert sum(served.values()) == 200
    assert set(served) == {"a", "b"}, served
    assert counted == served, (counted, served)
    if strategy == "round_robin":
        # Each worker alternates: within one request per worker (Envoy runs 2 here).
        assert abs(served["a"] - served["b"]) <= 2, served


def counts(envoy, metric="requests_total"):
    prefix = f"{harness.stats_prefix()}.meshsplit.meshsplit.svc."
    stats = envoy.stats(prefix)
    return {m.group(1): v for name, v in stats.items()
            if (m := re.fullmatch(re.escape(prefix) + r"(\w+)\." + metric, name)) and v}


def lua_then_clear_route_cache(body):
    """A Lua filter that runs `body` on each request, then clears the route cache."""
    return {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": (
            "function envoy_on_request(request_handle)\n"
            f"{body}\n"
            "  request_handle:clearRouteCache()\n"
            "end\n")}}}


# Lua supplies the sticky key (as an auth filter would, from a token): the first selection has
# none and picks by weight; the refresh picks by the key.
STICKY_KEY_FROM_LUA = (
    {"hash_on": {"header": "x-user"}, "strategy": "sticky"},
    '  request_handle:headers():replace("x-user", tostring(math.random(1, 1000000)))')
# Lua adds a rule's header to about half the requests: the rule sends those to b.
RULE_HEADER_FROM_LUA = (
    {"rules": [{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "b"}]},
    '  if math.random() < 0.5 then request_handle:headers():add("x-canary", "true") end')


@pytest.mark.builds("specifier")
@pytest.mark.parametrize("service, lua", [STICKY_KEY_FROM_LUA, RULE_HEADER_FROM_LUA],
                         ids=["sticky-key", "rule-header"])
def test_a_refresh_after_a_filter_changed_a_header_counts_what_each_upstream_was_sent(
        build, tmp_path, service, lua):
    """The decision is taken again with the new header, and when it differs the first one is
    counted as superseded: requests_total - superseded_total equals what each upstream served,
    in Envoy's stats and in `meshsplit status`."""
    plugin = two_upstreams("pass")
    plugin["services"][0].update(service)
    with harness.upstreams("a", "b") as ports:
        config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port())
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["http_filters"].insert(0, lua_then_clear_route_cache(lua))
        with harness.Envoy(config, tmp_path) as envoy:
            answers = harness.send(envoy.port, 400, {"Host": "svc"})

            def net():
                decided, superseded = counts(envoy), counts(envoy, "superseded_total")
                return {k: v - superseded.get(k, 0) for k, v in decided.items()
                        if v - superseded.get(k, 0)}
            assert harness.wait_for(lambda: sum(net().values()) == 400, timeout=15), net()
            superseded = counts(envoy, "superseded_total")
            status = subprocess.run(
                [str(harness.ROOT / "target/release/meshsplit"), "status", "--admin",
                 f"http://127.0.0.1:{envoy.admin_port}", "--json", "--interval", "0"],
                capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            counted = net()
            # envoy-native.yaml's stats_tags label the new counter as the rules read it.
            series = prometheus_series(envoy, "meshsplit_superseded_total")
    assert sum(answers.values()) == 400 and set(answers) == {"a", "b"}, answers
    assert counted == dict(answers), (counted, answers)
    # The refreshes did supersede decisions (else this test proves nothing).
    assert sum(superseded.values()) >= 50, superseded
    (plugin_report,) = json.loads(status.stdout)["plugins"]
    (svc,) = plugin_report["services"]
    assert {u["upstream"]: u["requests"] for u in svc["upstreams"]} == dict(answers)
    assert {dict(labels)["upstream"]: v for labels, v in series.items()
            if dict(labels).get("service") == "svc"} == {u: superseded.get(u, 0) for u in "ab"}


def guarded_svc(v2_cluster):
    return {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "a1", "weight": 50},
        {"name": "v2", "cluster": v2_cluster, "weight": 50}],
        "guard": {"error_rate": 0.5, "min_requests": 20, "window_s": WINDOW_S, "eject_s": 30}}]}


@pytest.mark.builds("native")
def test_two_configs_with_one_filter_name_keep_their_guards_apart(build, tmp_path):
    """Two listeners, both `filter_name: meshsplit`, both with an upstream `v2` of service
    `svc`: on the first it is a failing cluster, on the second a healthy one. Ejecting the first
    one's v2 must not eject the second's."""
    with harness.upstream_servers("a1", "bad", "good") as servers:
        servers["bad"].status = 503
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(guarded_svc("bad"), ports, harness.free_port(),
                                   harness.free_port(), build="wasm")
        listeners = config["static_resources"]["listeners"]
        second = copy.deepcopy(listeners[0])
        second["name"] = "second"
        second_port = harness.free_port()
        second["address"]["socket_address"]["port_value"] = second_port
        hcm = second["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "second"
        wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
        wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(guarded_svc("good"))
        listeners.append(second)
        harness.use_build(config, build)
        with harness.Envoy(config, tmp_path, extra_args=FLUSH) as envoy:
            load = Load(envoy.port)
            try:
                assert harness.wait_for(lambda: "guard: ejected svc/v2" in envoy.log(),
                                        timeout=WINDOW_S + 18), "the first listener's v2 not ejected"
            finally:
                load.close()
            answers = harness.send(second_port, 100, {"Host": "svc"})
    assert set(answers) == {"a1", "good"}, answers
    assert answers["good"] >= 20, answers
