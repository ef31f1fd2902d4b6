"""What `envoy/sync_configs.py` generates from edited sources, run in a sidecar built the way
istiod builds it (tests/istio.py): a DestinationRule with a short host (`host: reviews`, the
Bookinfo style) and a header-keyed service still split reviews' traffic by the weights."""
import json
import shutil

import pytest
import yaml

import harness
import istio
import sync_configs  # envoy/sync_configs.py (harness puts envoy/ on the path)
import stats
from stats import chi_square

SUBSETS = ("v1", "v2", "v3")
REQUESTS = 300


@pytest.fixture
def envoy_copy(tmp_path):
    """A copy of the files sync_configs.py reads and writes."""
    directory = tmp_path / "envoy"
    shutil.copytree(harness.ENVOY_DIR, directory, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return directory


def generated(directory, name):
    with open(directory / "istio" / name) as f:
        (doc,) = [d for d in yaml.safe_load_all(f) if d]
    return doc


def sidecar_for(directory, build):
    """The client sidecar with the EnvoyFilters generated in `directory`, running `build`."""
    def config_for(ports):
        config = istio.sidecar(ports)
        envoy_filter = generated(directory, "meshsplit-filter.yaml")
        for patch in envoy_filter["spec"]["configPatches"]:
            vm = patch["patch"]["value"]["typed_config"]["config"]["vm_config"]
            vm["code"]["local"]["filename"] = str(harness.WASM)
        config = istio.apply_envoy_filter(config, envoy_filter)
        config = istio.apply_envoy_filter(config, generated(directory, "meshsplit-route.yaml"))
        return harness.use_build(config, build)
    return config_for


def assert_split_by_weights(directory, seen):
    plugin = sync_configs.embedded_plugin((directory / sync_configs.ISTIO_FILTER).read_text())
    weights = {u["cluster"]: u["weight"] for u in plugin["services"][0]["upstreams"]}
    # Every request reached a subset cluster of reviews that the sidecar has (no 503 NC).
    assert set(seen) <= {istio.cluster("reviews", s) for s in SUBSETS}, seen
    assert sum(seen.values()) == REQUESTS, seen
    stat, p = chi_square([seen.get(c, 0) for c in weights], list(weights.values()))
    assert p > stats.P_MIN, (stat, seen)


def edit_source(directory, change):
    path = directory / "meshsplit.json"
    plugin = json.loads(path.read_text())
    change(plugin)
    path.write_text(json.dumps(plugin, indent=2) + "\n")


@pytest.mark.builds("wasm", "native")
def test_a_short_destination_rule_host_splits_in_the_sidecar(build, wasm, envoy_copy, tmp_path):
    rule = envoy_copy / "istio" / "reviews-destinationrule.yaml"
    rule.write_text(rule.read_text().replace("host: reviews.default.svc.cluster.local", "host: reviews"))
    # The source names the service by its short name only, as Bookinfo does.
    edit_source(envoy_copy, lambda p: p["services"][0].update(hosts=["reviews"]))
    assert sync_configs.main(["--dir", str(envoy_copy)]) == 0
    with harness.upstreams(*istio.clusters(SUBSETS)) as ports, \
            harness.Envoy(sidecar_for(envoy_copy, build)(ports), tmp_path) as envoy:
        seen = harness.send(envoy.port, REQUESTS, {"Host": "reviews"})
    assert_split_by_weights(envoy_copy, seen)


@pytest.mark.builds("wasm", "native")
def test_a_header_keyed_service_keeps_its_keys_in_the_sidecar(build, wasm, envoy_copy, tmp_path):
    """service_from a header: the header's values are the hosts; the generator must keep them."""
    def keyed(plugin):
        plugin["service_from"] = {"header": "x-service"}
        plugin["services"][0]["hosts"] = ["reviews-api", "reviews.default.svc.cluster.local"]
    edit_source(envoy_copy, keyed)
    assert sync_configs.main(["--dir", str(envoy_copy)]) == 0
    with harness.upstreams(*istio.clusters(SUBSETS)) as ports, \
            harness.Envoy(sidecar_for(envoy_copy, build)(ports), tmp_path) as envoy:
        seen = harness.send(envoy.port, REQUESTS, {"Host": "reviews", "x-service": "reviews-api"})
    assert_split_by_weights(envoy_copy, seen)
