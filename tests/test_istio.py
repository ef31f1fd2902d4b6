"""The shipped Istio manifests on a client sidecar's outbound configuration shaped the way istiod
generates it (tests/istio.py), patched the way istiod patches it, in real Envoy with the real
module: the split happens for every name of reviews with or without a VirtualService, and a
request the filter does not tag gets exactly the route it got before meshsplit was installed."""
import contextlib
import copy
import json
import re

import pytest
import yaml

import harness
import stats
import istio
from stats import chi_square
from test_cli import check as check_cli, cli  # noqa: F401  (cli: the command, built once)
from test_metrics import prometheus_series

P_MIN = stats.P_MIN
ISTIO_DIR = harness.ENVOY_DIR / "istio"
SUBSETS = ("v1", "v2", "v3")
# Every name the reviews virtual host answers to that the plugin config can know, with and
# without the port (the cluster IP is the one it cannot).
REVIEWS_NAMES = ["reviews", "reviews.default", "reviews.default.svc", istio.fqdn("reviews"),
                 istio.fqdn("reviews") + ".", "reviews:9080", istio.fqdn("reviews") + ".:9080"]
# The VirtualServices tried: none; one whose single route (everything to v1) is named; the same
# route unnamed.
VARIANTS = {
    "no-virtualservice": {},
    "virtualservice-named-route": {"virtual_service": istio.virtual_service_routes("v1", "reviews-v1")},
    "virtualservice-unnamed-route": {"virtual_service": istio.virtual_service_routes("v1", None)},
    "protocol-auto-detected": {"sniffed": True},
}


def manifest(name):
    with open(ISTIO_DIR / name) as f:
        (doc,) = [d for d in yaml.safe_load_all(f) if d]
    return doc


def plugin_weights():
    """{cluster: weight} of reviews in the Istio plugin config."""
    patch = manifest("meshsplit-filter.yaml")["spec"]["configPatches"][0]
    plugin = json.loads(patch["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])
    (service,) = plugin["services"]
    return {u["cluster"]: u["weight"] for u in service["upstreams"]}


def envoy_filter_with_module(name="meshsplit-filter.yaml"):
    """The EnvoyFilter that inserts the wasm filter, pointing at the module built here (the
    sidecar reads it from the mounted ConfigMap)."""
    doc = copy.deepcopy(manifest(name))
    for patch in doc["spec"]["configPatches"]:
        vm = patch["patch"]["value"]["typed_config"]["config"]["vm_config"]
        vm["code"]["local"]["filename"] = str(harness.WASM)
    return doc


def untagged_cluster(variant):
    """Where Istio alone sends a request for reviews: the VirtualService's subset, or the
    service's default cluster."""
    return istio.cluster("reviews", "v1") if VARIANTS[variant].get("virtual_service") \
        else istio.cluster("reviews")


def patched_sidecar(ports, variant, build):
    config = istio.sidecar(ports, **VARIANTS[variant])
    config = istio.apply_envoy_filter(config, envoy_filter_with_module())
    config = istio.apply_envoy_filter(config, manifest("meshsplit-route.yaml"))
    return harness.use_build(config, build)


@contextlib.contextmanager
def running(config_for, tmp_path):
    with harness.upstreams(*istio.clusters(SUBSETS)) as ports, \
            harness.Envoy(config_for(ports), tmp_path) as envoy:
        yield envoy


@pytest.fixture(scope="module", params=list(VARIANTS))
def sidecar(request, build, tmp_path_factory):
    variant = request.param
    with running(lambda ports: patched_sidecar(ports, variant, build),
                 tmp_path_factory.mktemp("sidecar")) as envoy:
        yield variant, envoy


def assert_split(seen, total):
    weights = plugin_weights()
    assert set(seen) <= set(weights), seen
    assert sum(seen.values()) == total, seen
    stat, p = chi_square([seen.get(c, 0) for c in weights], list(weights.values()))
    assert p > P_MIN, f"chi-square {stat:.1f} (p={p:.2g}) for {dict(seen)}"


BUILDS = pytest.mark.builds("wasm", "native")


@BUILDS
def test_every_name_of_reviews_is_split_by_the_weights(sidecar):
    _, envoy = sidecar
    total = {}
    for name in REVIEWS_NAMES:
        seen = harness.send(envoy.port, 200, {"Host": name})
        assert set(seen) <= set(plugin_weights()), (name, seen)
        for k, v in seen.items():
            total[k] = total.get(k, 0) + v
    assert_split(total, 200 * len(REVIEWS_NAMES))


@BUILDS
def test_the_canary_rule_pins_to_v3(sidecar):
    _, envoy = sidecar
    assert harness.send(envoy.port, 100, {"Host": "reviews", "x-canary": "true"}) == {
        istio.cluster("reviews", "v3"): 100}


@BUILDS
def test_a_request_by_cluster_ip_keeps_istios_route(sidecar):
    variant, envoy = sidecar
    expected = {untagged_cluster(variant): 150}
    assert harness.send(envoy.port, 150, {"Host": istio.CLUSTER_IP}) == expected
    assert harness.send(envoy.port, 150, {"Host": f"{istio.CLUSTER_IP}:9080"}) == expected
    # A cluster header the client sent is not the filter's choice: it is removed, not followed.
    spoofed = {"Host": istio.CLUSTER_IP, "x-meshsplit-cluster": istio.cluster("reviews", "v2")}
    assert harness.send(envoy.port, 150, spoofed) == expected


@BUILDS
def test_services_the_config_lacks_keep_istios_routes(sidecar):
    variant, envoy = sidecar
    if variant == "protocol-auto-detected":
        # The sniffed listener's route configuration holds reviews alone, for every host.
        expected = {"ratings": untagged_cluster(variant), "example.com": untagged_cluster(variant)}
    else:
        expected = {"ratings": istio.cluster("ratings"), "example.com": istio.PASSTHROUGH}
    for host, target in expected.items():
        assert harness.send(envoy.port, 100, {"Host": host}) == {target: 100}, host


# --- Without Envoy: what the patches do to the route table -----------------------------------------

def reviews_vhost(config):
    (vhost,) = [v for v in istio.route_config(config)["virtual_hosts"]
                if v["name"] == f"{istio.fqdn('reviews')}:{istio.PORT}"]
    return vhost


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_route_patch_adds_one_route_first_and_changes_nothing_else(variant):
    before = istio.sidecar({}, **VARIANTS[variant])
    after = istio.apply_envoy_filter(before, manifest("meshsplit-route.yaml"))
    first, *rest = reviews_vhost(after)["routes"]
    assert rest == reviews_vhost(before)["routes"]
    assert first["name"] == "meshsplit"
    (header,) = first["match"]["headers"]
    assert header["name"] == "x-meshsplit-cluster"
    assert first["route"]["cluster_header"] == "x-meshsplit-cluster"
    assert first["route"]["timeout"] == "0s"
    assert first["route"]["retry_policy"] == istio.default_retry_policy()
    # Every other virtual host (ratings, allow_any) is untouched.
    others = [v for v in istio.route_config(after)["virtual_hosts"] if v["name"] != reviews_vhost(after)["name"]]
    assert others == [v for v in istio.route_config(before)["virtual_hosts"]
                      if v["name"] != reviews_vhost(before)["name"]]


def test_the_route_patch_matches_the_virtual_host_by_name_alone():
    """A named-route MERGE (the old design) matches nothing under a VirtualService and turns
    untagged requests into 503 NC; a portNumber matches nothing for auto-detected protocols."""
    for patch in manifest("meshsplit-route.yaml")["spec"]["configPatches"]:
        assert patch["applyTo"] == "HTTP_ROUTE"
        assert patch["patch"]["operation"] == "INSERT_FIRST"
        match = patch["match"]["routeConfiguration"]
        assert set(match) == {"vhost"} and set(match["vhost"]) == {"name"}
        assert re.fullmatch(r".+\.svc\.cluster\.local:\d+", match["vhost"]["name"])


def test_the_cluster_header_pattern_takes_reviews_clusters_only():
    (patch,) = manifest("meshsplit-route.yaml")["spec"]["configPatches"]
    regex = patch["patch"]["value"]["match"]["headers"][0]["string_match"]["safe_regex"]["regex"]
    for subset in (*SUBSETS, "v9"):
        assert re.fullmatch(regex, istio.cluster("reviews", subset))
    for other in (istio.cluster("reviews"), istio.cluster("ratings", "v1"), istio.PASSTHROUGH,
                  "outbound|9081|v1|" + istio.fqdn("reviews"), istio.cluster("reviews", "v1") + "x"):
        assert not re.fullmatch(regex, other), other


def test_a_pod_without_the_filter_routes_exactly_as_before(tmp_path):
    """Only the route patch, no filter: every request keeps Istio's routing, for every variant."""
    def config_for(ports):
        listeners = []
        for i, variant in enumerate(VARIANTS):
            config = istio.apply_envoy_filter(istio.sidecar(ports, **VARIANTS[variant]),
                                              manifest("meshsplit-route.yaml"))
            (listener,) = config["static_resources"]["listeners"]
            listener["name"] += f"_{i}"
            listeners.append(listener)
        config["static_resources"]["listeners"] = listeners
        return config

    with running(config_for, tmp_path) as envoy:
        for i, variant in enumerate(VARIANTS):
            port = envoy.config["static_resources"]["listeners"][i]["address"]["socket_address"]["port_value"]
            for host in ("reviews", istio.CLUSTER_IP):
                assert harness.send(port, 40, {"Host": host}) == {untagged_cluster(variant): 40}, (variant, host)


# --- WasmPlugin and TrafficExtension, as istiod translates them ------------------------------------

EXTENSIONS = [
    ("wasmplugin.yaml", "1.29", "default_meshsplit"),
    ("wasmplugin.yaml", "1.30", "default_meshsplit_istio-translated-wasmplugin"),
    ("trafficextension.yaml", "1.30", "default_meshsplit"),
]


@pytest.mark.parametrize("name,version,label", EXTENSIONS,
                         ids=[f"{n.split('.')[0]}-{v}" for n, v, _ in EXTENSIONS])
def test_extension_manifests_split_and_label_their_stats(name, version, label, wasm, tmp_path):
    def config_for(ports):
        config = istio.sidecar(ports)
        config = istio.apply_envoy_filter(config, manifest("meshsplit-stats.yaml"))
        config = istio.insert_unphased(config, istio.extension_filter(manifest(name), wasm, version))
        return istio.apply_envoy_filter(config, manifest("meshsplit-route.yaml"))

    with running(config_for, tmp_path) as envoy:
        (extension,) = [f for f in istio.http_filters(envoy.config) if "extensions.istio.io" in f["name"]]
        plugin = extension["typed_config"]["config"]["name"]
        seen = harness.send(envoy.port, 1000, {"Host": "reviews"})
        assert_split(seen, 1000)
        canary = harness.send(envoy.port, 30, {"Host": "reviews", "x-canary": "true"})
        assert canary == {istio.cluster("reviews", "v3"): 30}
        expected = {frozenset({"plugin": label, "service": "reviews", "upstream": c.split("|")[2]}.items()):
                    seen.get(c, 0) + (30 if c == istio.cluster("reviews", "v3") else 0)
                    for c in plugin_weights() if seen.get(c, 0) or c == istio.cluster("reviews", "v3")}

        def series():
            return prometheus_series(envoy, "meshsplit_requests_total")
        harness.wait_for(lambda: series() == expected, timeout=15)
        assert series() == expected, plugin
        # The raw stat names carry the plugin name the module saw, as a stat segment.
        names = envoy.stats(f"wasmcustom.meshsplit.{label}.reviews.")
        assert sum(v for k, v in names.items() if k.endswith(".requests_total")) == 1030


# --- meshsplit check on route patches --------------------------------------------------------------

def test_check_accepts_the_shipped_route_patch_without_warnings(cli):  # noqa: F811
    result = check_cli(cli, ISTIO_DIR / "meshsplit-route.yaml")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.endswith(": ok: HTTP_ROUTE INSERT_FIRST in reviews.default.svc.cluster.local:9080, "
                         "routing by header x-meshsplit-cluster"), line


def test_check_warns_about_a_route_patch_that_depends_on_a_route_name_or_a_port(cli, tmp_path):  # noqa: F811
    """The old design: a MERGE into the route named `default` of route configuration 9080."""
    doc = copy.deepcopy(manifest("meshsplit-route.yaml"))
    (patch,) = doc["spec"]["configPatches"]
    patch["match"]["routeConfiguration"]["portNumber"] = 9080
    patch["match"]["routeConfiguration"]["vhost"]["route"] = {"name": "default"}
    patch["patch"] = {"operation": "MERGE", "value": {"route": {
        "cluster_header": "x-meshsplit-cluster", "cluster_not_found_response_code": "SERVICE_UNAVAILABLE"}}}
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = check_cli(cli, path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3, result.stdout
    assert "vhost.route.name: the patch depends on the route name \"default\"" in warnings[0]
    assert "portNumber: 9080 matches nothing" in warnings[1]
    assert "a MERGE that sets cluster_header" in warnings[2]
    assert check_cli(cli, "--strict", path).returncode == 1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_old_named_route_merge_fails_where_the_shipped_patch_holds(variant):
    """Applied by Istio's rules, the old design leaves a VirtualService's routes alone (no split)
    and sends untagged requests to the header (503 NC) without one."""
    old = copy.deepcopy(manifest("meshsplit-route.yaml"))
    (patch,) = old["spec"]["configPatches"]
    patch["match"]["routeConfiguration"] = {"portNumber": 9080, "vhost": {
        "name": f"{istio.fqdn('reviews')}:9080", "route": {"name": "default"}}}
    patch["patch"] = {"operation": "MERGE", "value": {"route": {"cluster_header": "x-meshsplit-cluster"}}}
    before = istio.sidecar({}, **VARIANTS[variant])
    after = istio.apply_envoy_filter(before, old)
    routes = reviews_vhost(after)["routes"]
    if variant == "no-virtualservice":
        # Every request, tagged or not, now follows the header.
        assert [r["route"].get("cluster_header") for r in routes] == ["x-meshsplit-cluster"]
        assert "cluster" not in routes[0]["route"]
    else:
        # A VirtualService, or the sniffed route configuration: the patch matched nothing.
        assert routes == reviews_vhost(before)["routes"]
