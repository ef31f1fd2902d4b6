"""The deployment bundle under envoy/: the Envoy configs, the docker-compose file and the Istio
manifests. Nothing here starts a proxy: `envoy --mode validate` loads the module and runs the plugin's
on_configure, so it checks the Envoy schema and the embedded plugin configuration together."""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import harness
import istio
import sync_configs  # envoy/sync_configs.py (harness puts envoy/ on the path)
from conftest import TOOL_MISSING
from test_cli import check as check_cli, cli  # noqa: F401  (cli: the command, built once)

ROOT = harness.ROOT
ENVOY_DIR = harness.ENVOY_DIR
COMPOSE_FILE = ENVOY_DIR / "docker-compose.yaml"
ISTIO_DIR = ENVOY_DIR / "istio"
# The shared tools live beside the repository root (../shared).
ISTIO_VALIDATE = ROOT.parent / "shared" / "tools" / "istio-validate"

ISTIO_CLUSTER = re.compile(r"^outbound\|(\d+)\|([^|]*)\|([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+)$")


def require_tool(found, what):
    """Skips the calling test when a tool it needs is missing, saying so in the session's summary;
    with CI=true the test fails instead, so CI never passes without running it."""
    if found:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is required when CI is set")
    pytest.skip(TOOL_MISSING + what)


@pytest.fixture(scope="module")
def wasm():
    if not harness.WASM.exists():
        harness.build_wasm()
    return harness.WASM


def assert_validates(config, directory):
    path = harness.write_yaml(config, directory)
    proc = harness.validate(path)
    assert proc.returncode == 0, f"envoy --mode validate failed on {path}:\n{proc.stdout[-8000:]}"
    assert "OK" in proc.stdout.splitlines()[-1]


def module_path(config):
    return harness.wasm_filter(config)["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]


def set_module_path(config, path):
    harness.wasm_filter(config)["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(path)


# --- plain Envoy ---------------------------------------------------------------------------------

def test_envoy_yaml_validates(tmp_path, wasm):
    config = harness.load_yaml(ENVOY_DIR / "envoy.yaml")
    # The module path is relative to the repository root, where envoy.yaml is meant to be run from.
    assert (ROOT / module_path(config)).resolve() == wasm.resolve()
    set_module_path(config, wasm)
    assert_validates(config, tmp_path)


def test_envoy_compose_yaml_validates(tmp_path, wasm):
    config = harness.load_yaml(ENVOY_DIR / "envoy-compose.yaml")
    clusters = config["static_resources"]["clusters"]
    assert clusters and all(c["type"] == "STRICT_DNS" for c in clusters)
    # Validate mode does not resolve DNS, so the compose service names stay as they are.
    set_module_path(config, wasm)
    assert_validates(config, tmp_path)


@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-compose.yaml"])
def test_embedded_plugin_config_is_meshsplit_json(name):
    with open(ENVOY_DIR / "meshsplit.json") as f:
        expected = json.load(f)
    assert harness.plugin_config(harness.load_yaml(ENVOY_DIR / name)) == expected


def test_envoy_and_compose_configs_route_and_log_alike():
    """envoy-compose.yaml differs from envoy.yaml only in addresses, module path and clusters."""
    def hcm(name):
        config = harness.load_yaml(ENVOY_DIR / name)
        set_module_path(config, "module.wasm")
        return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]

    assert hcm("envoy-compose.yaml") == hcm("envoy.yaml")


def wasm_plugin_config(config):
    return harness.wasm_filter(config)["typed_config"]["config"]


@pytest.mark.parametrize("config", [
    pytest.param(lambda: wasm_plugin_config(harness.load_yaml(ENVOY_DIR / "envoy.yaml")), id="envoy.yaml"),
    pytest.param(lambda: wasm_plugin_config(harness.load_yaml(ENVOY_DIR / "envoy-compose.yaml")),
                 id="envoy-compose.yaml"),
    pytest.param(lambda: envoy_filter_patch("meshsplit-filter.yaml", "HTTP_FILTER")["patch"]["value"]
                 ["typed_config"]["config"], id="istio/meshsplit-filter.yaml"),
    pytest.param(lambda: harness.load_yaml(ENVOY_DIR / "envoy-live.yaml")["static_resources"]["listeners"][0]
                 ["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
                 ["config_discovery"]["default_config"]["config"], id="envoy-live.yaml"),
])
def test_shipped_wasm_filters_reload_a_failed_vm(config):
    """FAIL_RELOAD with a short first backoff: a trap costs one request, not the worker's VM."""
    config = config()
    assert config["failure_policy"] == "FAIL_RELOAD"
    assert config["reload_config"]["backoff"]["base_interval"] == "0.2s"


def test_cluster_header_route_makes_unknown_clusters_visible():
    """A cluster name Envoy does not have gets an explicit status and shows in the access log."""
    config = harness.load_yaml(ENVOY_DIR / "envoy.yaml")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = [r["route"] for r in hcm["route_config"]["virtual_hosts"][0]["routes"]
                if "cluster_header" in r.get("route", {})]
    assert route["cluster_not_found_response_code"] == "SERVICE_UNAVAILABLE"
    (log,) = hcm["access_log"]
    assert log["typed_config"]["@type"].endswith("StdoutAccessLog")
    assert "%RESPONSE_FLAGS%" in log["typed_config"]["log_format"]["text_format_source"]["inline_string"]


# --- the sample plugin config: envoy/meshsplit.json is the source of every copy ------------------

def test_embedded_plugin_configs_are_generated_from_meshsplit_json():
    proc = subprocess.run([sys.executable, str(ENVOY_DIR / "sync_configs.py"), "--check"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0, f"run `make configs`:\n{proc.stdout}"


@pytest.fixture
def envoy_copy(tmp_path):
    """A copy of the files sync_configs.py reads and writes."""
    directory = tmp_path / "envoy"
    shutil.copytree(ENVOY_DIR, directory, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return directory


def test_sync_configs_check_reports_drift_and_a_sync_fixes_it(envoy_copy):
    plugin = json.loads((envoy_copy / "meshsplit.json").read_text())
    plugin["services"][0]["upstreams"][0]["weight"] = 70
    (envoy_copy / "meshsplit.json").write_text(json.dumps(plugin, indent=2) + "\n")
    before = {p: (envoy_copy / p).read_text() for p in sync_configs.expected_files(envoy_copy)}

    assert sync_configs.main(["--check", "--dir", str(envoy_copy)]) == 1
    assert {p: (envoy_copy / p).read_text() for p in before} == before  # --check writes nothing

    assert sync_configs.main(["--dir", str(envoy_copy)]) == 0
    assert sync_configs.main(["--check", "--dir", str(envoy_copy)]) == 0
    for name, old in before.items():
        new = (envoy_copy / name).read_text()
        # Only the JSON block changed: every comment line is kept.
        assert [l for l in new.splitlines() if l.lstrip().startswith("#")] == \
            [l for l in old.splitlines() if l.lstrip().startswith("#")]
        if name == sync_configs.ISTIO_ROUTE:
            assert new == old  # weights are not in the route patch
            continue
        weight = sync_configs.embedded_plugin(new)["services"][0]["upstreams"][0]["weight"]
        assert weight == 70, name


def test_sync_configs_writes_the_route_patch_for_the_cluster_header(envoy_copy):
    plugin = json.loads((envoy_copy / "meshsplit.json").read_text())
    plugin["cluster_header"] = "x-split-to"
    (envoy_copy / "meshsplit.json").write_text(json.dumps(plugin, indent=2) + "\n")
    assert sync_configs.main(["--dir", str(envoy_copy)]) == 0
    doc = yaml.safe_load((envoy_copy / sync_configs.ISTIO_ROUTE).read_text())
    (patch,) = doc["spec"]["configPatches"]
    value = patch["patch"]["value"]
    assert value["match"]["headers"][0]["name"] == "x-split-to"
    assert value["route"]["cluster_header"] == "x-split-to"
    assert patch["match"]["routeConfiguration"]["vhost"]["name"] == "reviews.default.svc.cluster.local:9080"


def test_sync_configs_refuses_an_upstream_without_a_destination_rule_subset(envoy_copy, capsys):
    plugin = json.loads((envoy_copy / "meshsplit.json").read_text())
    plugin["services"][0]["upstreams"].append({"name": "v9", "cluster": "reviews_v9", "weight": 1})
    (envoy_copy / "meshsplit.json").write_text(json.dumps(plugin))
    before = (envoy_copy / "istio" / "meshsplit-filter.yaml").read_text()

    assert sync_configs.main(["--dir", str(envoy_copy)]) == 2
    assert "services[0].upstreams[3]: no subset 'v9'" in capsys.readouterr().err
    assert (envoy_copy / "istio" / "meshsplit-filter.yaml").read_text() == before


def test_sync_configs_refuses_a_wasmplugin_on_another_port(envoy_copy, capsys):
    """The cluster names carry the EnvoyFilter's port: a WasmPlugin matching another would split
    into clusters its listener does not route to."""
    path = envoy_copy / "istio" / "wasmplugin.yaml"
    path.write_text(path.read_text().replace("- number: 9080", "- number: 9081"))

    assert sync_configs.main(["--check", "--dir", str(envoy_copy)]) == 2
    assert "istio/wasmplugin.yaml: spec.match ports [9081] differ" in capsys.readouterr().err


def test_istio_copy_maps_hosts_and_clusters_and_drops_authority():
    plugin = json.loads((ENVOY_DIR / "meshsplit.json").read_text())
    (service,) = sync_configs.istio_plugin(plugin, ENVOY_DIR)["services"]
    assert service["hosts"] == ["reviews", "reviews.default", "reviews.default.svc",
                                "reviews.default.svc.cluster.local"]
    assert [(u["name"], u["cluster"], u["weight"], "authority" in u) for u in service["upstreams"]] == [
        (u["name"], f"outbound|9080|{u['name']}|reviews.default.svc.cluster.local", u["weight"], False)
        for u in plugin["services"][0]["upstreams"]]
    assert service["rules"] == plugin["services"][0]["rules"]


# --- docker-compose ------------------------------------------------------------------------------

def compose():
    return harness.load_yaml(COMPOSE_FILE)


def mounts(service):
    """Short-syntax volumes of a compose service as {target: source resolved against the file's dir}."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        assert source.startswith("."), f"{volume!r}: expected a bind mount of a path in the repository"
        out[target] = (COMPOSE_FILE.parent / source).resolve()
    return out


def test_docker_compose_config():
    binary = shutil.which("docker-compose")
    require_tool(binary, "docker-compose (the compose file is not checked)")
    proc = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_docker_compose_mounts_and_wiring():
    services = compose()["services"]
    envoy_config = harness.load_yaml(ENVOY_DIR / "envoy-compose.yaml")

    envoy = services["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:")
    envoy_mounts = mounts(envoy)
    assert envoy_mounts["/etc/envoy/envoy.yaml"] == (ENVOY_DIR / "envoy-compose.yaml").resolve()
    # The module is mounted where envoy-compose.yaml loads it from.
    assert envoy_mounts[module_path(envoy_config)] == harness.WASM.resolve()
    for target, source in envoy_mounts.items():
        if source != harness.WASM.resolve():  # the module exists only after a build
            assert source.is_file(), f"{target} is mounted from missing {source}"

    # The listener and admin ports are published, on the host's loopback only.
    assert all(str(p).startswith("127.0.0.1:") for p in envoy["ports"])
    published = {str(p).split(":")[-1] for p in envoy["ports"]}
    listener = envoy_config["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = envoy_config["admin"]["address"]["socket_address"]
    assert {str(listener["port_value"]), str(admin["port_value"])} <= published
    assert listener["address"] == admin["address"] == "0.0.0.0"

    # Every cluster's endpoint is a compose service running Envoy with upstream-compose.yaml,
    # from the same image, listening on that port and answering with the cluster's name.
    upstream_config = harness.load_yaml(ENVOY_DIR / "upstream-compose.yaml")
    upstream_address = upstream_config["static_resources"]["listeners"][0]["address"]["socket_address"]
    for cluster in envoy_config["static_resources"]["clusters"]:
        for lb in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            address = lb["endpoint"]["address"]["socket_address"]
            host, port = address["address"], address["port_value"]
            assert host in services, f"cluster {cluster['name']} points at {host}, not a compose service"
            upstream = services[host]
            assert upstream["image"] == envoy["image"]
            command = upstream["command"]
            config = command[command.index("-c") + 1]
            assert mounts(upstream)[config] == (ENVOY_DIR / "upstream-compose.yaml").resolve()
            assert upstream_address == {"address": "0.0.0.0", "port_value": port}
            assert upstream["environment"]["UPSTREAM"] == cluster["name"]
            assert host in envoy.get("depends_on", [])


def test_compose_upstream_config_validates():
    proc = harness.validate(ENVOY_DIR / "upstream-compose.yaml")
    assert proc.returncode == 0, proc.stdout[-8000:]


# --- Istio ---------------------------------------------------------------------------------------

def istio_docs(name):
    with open(ISTIO_DIR / name) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def envoy_filter_patch(name, apply_to):
    (doc,) = istio_docs(name)
    assert doc["kind"] == "EnvoyFilter"
    (patch,) = doc["spec"]["configPatches"]
    assert patch["applyTo"] == apply_to
    assert patch["match"]["context"] == "SIDECAR_OUTBOUND"
    return patch


def test_istio_manifests_validate():
    require_tool(ISTIO_VALIDATE.exists(),
                 f"{ISTIO_VALIDATE.name} at {ISTIO_VALIDATE} (the Istio manifests are not schema-checked)")
    files = sorted(str(p) for p in ISTIO_DIR.glob("*.yaml"))
    assert files
    proc = subprocess.run([sys.executable, str(ISTIO_VALIDATE), *files], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def istio_plugin_config():
    patch = envoy_filter_patch("meshsplit-filter.yaml", "HTTP_FILTER")
    return json.loads(patch["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])


def test_istio_plugin_config_names_istio_clusters():
    plugin = istio_plugin_config()
    (destination_rule,) = istio_docs("reviews-destinationrule.yaml")
    port = envoy_filter_patch("meshsplit-filter.yaml", "HTTP_FILTER")["match"]["listener"]["portNumber"]
    subsets = {s["name"] for s in destination_rule["spec"]["subsets"]}
    (service,) = plugin["services"]
    assert destination_rule["spec"]["host"] in service["hosts"]
    for upstream in service["upstreams"]:
        m = ISTIO_CLUSTER.match(upstream["cluster"])
        assert m, f"{upstream['cluster']!r} is not outbound|PORT|SUBSET|FQDN"
        assert int(m.group(1)) == port
        assert m.group(3) == destination_rule["spec"]["host"]
        assert m.group(2) in subsets, f"no DestinationRule subset {m.group(2)!r}"
        # A new :authority would make the sidecar pick another virtual host.
        assert "authority" not in upstream


def sidecar_bootstrap(wasm, wasm_filter=None):
    """A client sidecar's outbound side as istiod generates it (tests/istio.py), with the shipped
    EnvoyFilters applied, or with the route patch and `wasm_filter` (what Istio makes of a
    WasmPlugin or TrafficExtension)."""
    (destination_rule,) = istio_docs("reviews-destinationrule.yaml")
    subsets = [s["name"] for s in destination_rule["spec"]["subsets"]]
    config = istio.sidecar({name: 9080 for name in istio.clusters(subsets)})
    if wasm_filter is None:
        (filter_doc,) = istio_docs("meshsplit-filter.yaml")
        config = istio.apply_envoy_filter(config, filter_doc)
        set_module_path(config, wasm)
    else:
        config = istio.insert_unphased(config, wasm_filter)
    (route_doc,) = istio_docs("meshsplit-route.yaml")
    return istio.apply_envoy_filter(config, route_doc)


def test_istio_filter_validates_in_envoy(tmp_path, wasm):
    config = sidecar_bootstrap(wasm)
    names = {c["name"] for c in config["static_resources"]["clusters"]}
    for service in harness.plugin_config(config)["services"]:
        for upstream in service["upstreams"]:
            assert upstream["cluster"] in names
    assert_validates(config, tmp_path)


def test_istio_bootstrap_rejects_bad_plugin_config(tmp_path, wasm):
    """Validate mode really runs the plugin's on_configure: a broken plugin config fails it."""
    config = sidecar_bootstrap(wasm)
    configuration = harness.wasm_filter(config)["typed_config"]["config"]["configuration"]
    plugin = json.loads(configuration["value"])
    plugin["no_such_field"] = True
    configuration["value"] = json.dumps(plugin)
    proc = harness.validate(harness.write_yaml(config, tmp_path))
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "no_such_field" in proc.stdout


# --- Istio's own APIs: WasmPlugin and TrafficExtension ------------------------------------------

NATIVE_MANIFESTS = ["wasmplugin.yaml", "trafficextension.yaml"]
def native_manifest(name):
    """(metadata, spec, the part of spec that describes the Wasm module) of a WasmPlugin or a
    TrafficExtension."""
    (doc,) = istio_docs(name)
    assert doc["kind"] in ("WasmPlugin", "TrafficExtension")
    spec = doc["spec"]
    return doc["metadata"], spec, spec if doc["kind"] == "WasmPlugin" else spec["wasm"]


def istio_wasm_filter(name, module):
    (doc,) = istio_docs(name)
    return istio.extension_filter(doc, module, "1.30")


@pytest.mark.parametrize("name", NATIVE_MANIFESTS)
def test_istio_native_manifest_validates_in_envoy(name, tmp_path, wasm):
    config = sidecar_bootstrap(wasm, istio_wasm_filter(name, wasm))
    clusters = {c["name"] for c in config["static_resources"]["clusters"]}
    for service in native_manifest(name)[2]["pluginConfig"]["services"]:
        for upstream in service["upstreams"]:
            assert upstream["cluster"] in clusters
    assert_validates(config, tmp_path)


@pytest.mark.parametrize("name", NATIVE_MANIFESTS)
def test_istio_native_manifest_deploys_what_the_envoy_filter_does(name):
    """Same pods, same port, same plugin config and root id: the manifests are interchangeable."""
    filter_doc, = istio_docs("meshsplit-filter.yaml")
    patch = envoy_filter_patch("meshsplit-filter.yaml", "HTTP_FILTER")
    _, spec, wasm = native_manifest(name)
    assert spec["selector"]["matchLabels"] == filter_doc["spec"]["workloadSelector"]["labels"]
    assert spec["match"] == [{"mode": "CLIENT", "ports": [{"number": patch["match"]["listener"]["portNumber"]}]}]
    # Unspecified phase: the end of the chain, just before the router, as the EnvoyFilter inserts it.
    assert spec.get("phase", "UNSPECIFIED") in ("UNSPECIFIED", "UNSPECIFIED_PHASE")
    assert wasm["type"] == "HTTP"
    assert wasm["pluginName"] == patch["patch"]["value"]["typed_config"]["config"]["root_id"]
    assert wasm["pluginConfig"] == istio_plugin_config()
    assert wasm["failStrategy"] == "FAIL_RELOAD"
    assert wasm["url"].startswith("oci://")
    # A placeholder until an image is pushed (`make oci` prints the digest); Istio's schema
    # accepts any 64 hex digits.
    assert re.fullmatch(r"[0-9a-f]{64}", wasm["sha256"])


# --- the Istio generator: short DestinationRule hosts and every host kept ---------------------------

def short_host(envoy_copy, namespace="default"):
    """The copy's DestinationRule with `host: reviews` (the Bookinfo style), in `namespace`."""
    path = envoy_copy / "istio" / "reviews-destinationrule.yaml"
    text = path.read_text().replace("host: reviews.default.svc.cluster.local", "host: reviews")
    if namespace != "default":
        text = text.replace("  namespace: default\n", f"  namespace: {namespace}\n" if namespace else "")
    path.write_text(text)


@pytest.mark.parametrize("namespace", ["default", "shop"])
def test_sync_configs_resolves_a_short_destination_rule_host_in_its_namespace(envoy_copy, namespace, cli):  # noqa: F811
    """Istio resolves `reviews` in the rule's namespace and names the subset clusters by that
    FQDN: a cluster named by the short host does not exist in the sidecar (503 NC)."""
    short_host(envoy_copy, namespace)
    if namespace != "default":
        plugin = json.loads((envoy_copy / "meshsplit.json").read_text())
        plugin["services"][0]["hosts"].append(f"reviews.{namespace}.svc.cluster.local")
        (envoy_copy / "meshsplit.json").write_text(json.dumps(plugin, indent=2) + "\n")
    assert sync_configs.main(["--dir", str(envoy_copy)]) == 0
    fqdn = f"reviews.{namespace}.svc.cluster.local"
    for name in [sync_configs.ISTIO_FILTER, *sync_configs.ISTIO_NATIVE]:
        (service,) = sync_configs.embedded_plugin((envoy_copy / name).read_text())["services"]
        assert [u["cluster"] for u in service["upstreams"]] == \
            [f"outbound|9080|{v}|{fqdn}" for v in ("v1", "v2", "v3")], name
        assert fqdn in service["hosts"] and f"reviews.{namespace}" in service["hosts"]
    route = yaml.safe_load((envoy_copy / sync_configs.ISTIO_ROUTE).read_text())
    assert route["spec"]["configPatches"][0]["match"]["routeConfiguration"]["vhost"]["name"] == f"{fqdn}:9080"
    result = check_cli(cli, envoy_copy / sync_configs.ISTIO_FILTER)
    assert result.returncode == 0, result.stdout


def test_sync_configs_refuses_a_short_destination_rule_host_without_a_namespace(envoy_copy, capsys):
    short_host(envoy_copy, namespace=None)
    before = (envoy_copy / sync_configs.ISTIO_FILTER).read_text()
    assert sync_configs.main(["--dir", str(envoy_copy)]) == 2
    err = capsys.readouterr().err
    assert "spec.host 'reviews' is a short name and the DestinationRule has no metadata.namespace" in err
    assert (envoy_copy / sync_configs.ISTIO_FILTER).read_text() == before


def test_check_refuses_an_istio_manifest_whose_clusters_are_named_by_a_short_host(cli, tmp_path):  # noqa: F811
    """What the generator wrote for `host: reviews` before: `check` must not call it ok."""
    text = (ISTIO_DIR / "meshsplit-filter.yaml").read_text().replace(
        "|reviews.default.svc.cluster.local\"", "|reviews\"")
    assert "outbound|9080|v1|reviews\"" in text
    path = tmp_path / "filter.yaml"
    path.write_text(text)
    result = check_cli(cli, path)
    assert result.returncode == 1, result.stdout
    assert ("services[0].upstreams[0].cluster: \"outbound|9080|v1|reviews\" is not a sidecar's subset "
            "cluster outbound|PORT|SUBSET|FQDN: \"reviews\" is not a fully qualified name") in result.stdout
    # The shipped manifests pass.
    for name in [sync_configs.ISTIO_FILTER, *sync_configs.ISTIO_NATIVE]:
        assert check_cli(cli, ENVOY_DIR / name).returncode == 0, name


def test_sync_configs_keeps_every_host_the_source_lists(envoy_copy):
    """Another name and an IP of the service, and a header-keyed service's values, stay beside
    the sidecar's names: requests that route with meshsplit.json route in the sidecar too."""
    plugin = json.loads((envoy_copy / "meshsplit.json").read_text())
    plugin["services"][0]["hosts"] += ["reviews.example.com", "10.0.0.7", "[fd00::7]"]
    mapped = sync_configs.istio_plugin(plugin, envoy_copy)
    assert mapped["services"][0]["hosts"] == [
        "reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local",
        "reviews.example.com", "10.0.0.7", "[fd00::7]"]

    keyed = dict(plugin, service_from={"header": "x-service"})
    keyed["services"][0]["hosts"] = ["reviews-canary", "reviews.default.svc.cluster.local"]
    (service,) = sync_configs.istio_plugin(keyed, envoy_copy)["services"]
    assert set(keyed["services"][0]["hosts"]) <= set(service["hosts"])
    assert service["hosts"][-1] == "reviews-canary"
