"""Request counters through real Envoy, equal to the requests sent: counted in the VM and flushed
on the housekeeping tick (wasm), or added to Envoy's counters per request (native builds, where a
counter is a function call and an atomic add)."""
import pytest

import harness

# The wasm build adds its counts to Envoy's counters on each worker's tick (every 500 ms); a wait
# returns as soon as every count is in, so its bound only has to outlast a busy machine.
FLUSH_S = 15.0

PLUGIN = {"on_unknown_service": "reject", "services": [
    {"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "m_v1", "weight": 3},
        {"name": "v2", "cluster": "m_v2", "weight": 1}],
     "rules": [{"match": {"headers": [{"name": "x-beta", "exact": "1"}]}, "upstream": "v2"}]}]}

BUILDS = pytest.mark.builds("wasm", "native", "specifier")


def counters(envoy):
    prefix = f"{harness.stats_prefix()}.meshsplit.meshsplit."
    return {k[len(prefix):]: v for k, v in envoy.stats(prefix).items() if k.startswith(prefix)}


@BUILDS
def test_counters_equal_the_requests_sent(deploy):
    envoy = deploy(PLUGIN, ["m_v1", "m_v2"])
    seen = harness.send(envoy.port, 600, {"Host": "svc"})
    beta = harness.send(envoy.port, 70, {"Host": "svc", "x-beta": "1"})
    unknown = harness.send(envoy.port, 30, {"Host": "nope"})
    assert set(seen) == {"m_v1", "m_v2"} and beta == {"m_v2": 70}
    assert sum(unknown.values()) == 30 and all(k[0] == 404 for k in unknown)
    expected = {
        "svc.v1.requests_total": seen["m_v1"],
        "svc.v2.requests_total": seen["m_v2"] + 70,
        "svc.rules.0.hits_total": 70,
        "unknown_service_total": 30,
        "rejected_total": 30,
        # The weights in force, as gauges.
        "svc.v1.weight": 3,
        "svc.v2.weight": 1,
    }
    if harness.BUILD == "wasm":
        # The latest configuration was accepted (wasm build only).
        expected["config_refused"] = 0
    if harness.BUILD == "specifier":
        # No filter refreshed a route: no decision was superseded.
        expected["svc.v1.superseded_total"] = expected["svc.v2.superseded_total"] = 0
    harness.wait_for(lambda: counters(envoy) == expected, timeout=FLUSH_S)
    assert counters(envoy) == expected


def prometheus_series(envoy, name):
    """{frozenset of (label, value)}: value} of one metric in /stats/prometheus."""
    import re
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", timeout=5) as r:
        text = r.read().decode()
    series = {}
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        key = frozenset(tuple(pair.split("=", 1)) for pair in labels.split(","))
        series[frozenset((k, v.strip('"')) for k, v in key)] = float(value)
    return series


@BUILDS
def test_prometheus_shows_labelled_series_whose_totals_equal_the_requests_sent(deploy):
    envoy = deploy(PLUGIN, ["m_v1", "m_v2"])
    seen = harness.send(envoy.port, 500, {"Host": "svc"})
    harness.send(envoy.port, 40, {"Host": "svc", "x-beta": "1"})
    harness.send(envoy.port, 20, {"Host": "nope"})

    def labels(**kv):
        return frozenset(dict(plugin="meshsplit", **kv).items())

    expected = {
        labels(service="svc", upstream="v1"): seen["m_v1"],
        labels(service="svc", upstream="v2"): seen["m_v2"] + 40,
    }
    assert sum(expected.values()) == 540
    expected = {
        "meshsplit_requests_total": expected,
        "meshsplit_rules_hits_total": {labels(service="svc", rule="0"): 40},
        "meshsplit_unknown_service_total": {labels(): 20},
        "meshsplit_rejected_total": {labels(): 20},
    }

    # Each worker adds its counts on its own tick (wasm): wait for every series read.
    def series():
        return {name: prometheus_series(envoy, name) for name in expected}
    harness.wait_for(lambda: series() == expected, timeout=FLUSH_S)
    assert series() == expected


def test_every_shipped_config_tags_meshsplit_stats_the_same_way():
    expected = harness.load_yaml(harness.ENVOY_DIR / "envoy.yaml")["stats_config"]
    assert harness.load_yaml(harness.ENVOY_DIR / "envoy-compose.yaml")["stats_config"] == expected
    istio = harness.load_yaml(harness.ENVOY_DIR / "istio" / "meshsplit-stats.yaml")
    (patch,) = istio["spec"]["configPatches"]
    assert patch["applyTo"] == "BOOTSTRAP"
    assert patch["patch"]["value"]["stats_config"] == expected


def test_a_refused_live_update_is_counted_once(wasm, tmp_path):
    import test_reload
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    good = test_reload.plugin({"a": 1, "b": 0})
    test_reload.publish(ecds, 1, good)
    name = "wasmcustom.meshsplit.meshsplit.config_failures_total"
    with harness.upstreams("a", "b") as ports, \
            harness.Envoy(test_reload.ecds_bootstrap(ecds, ports, good), tmp_path) as envoy:
        assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"a": 10}
        test_reload.publish(ecds, 2, test_reload.plugin({"a": 5000000, "b": 1}))
        assert harness.wait_for(lambda: envoy.stats(name).get(name) == 1, timeout=FLUSH_S)
        # Still the last good split, and counted exactly once across the VMs.
        assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"a": 10}
        assert envoy.stats(name).get(name) == 1
