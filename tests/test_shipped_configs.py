"""Every shipped Envoy config, started as a user would start it and answering on every listener it
defines: envoy/envoy.yaml, envoy/envoy-native.yaml (the HTTP filter and the cluster specifier),
envoy/envoy-live.yaml (the filter from a watched ECDS file), envoy/envoy-compose.yaml (the
compose file's Envoy, its upstreams on loopback instead of compose services), and the Envoy
configs shown in the README and the manual: each fragment placed where its page says, into the
shipped bootstrap the page names. (docs/install.md's are started from `make dist`'s files by
tests/test_install.py.)

Only what must change to run in a test is changed (harness.shipped): ports, module paths,
upstream addresses, and the ECDS file's directory; a page's placeholders (`/path/to/...`,
`[...]`, `{...}`) are each filled explicitly. Every listener then gets requests for `reviews`,
split by envoy/meshsplit.json's weights (a chi-square test), the header rule, v1's :authority
rewrite, and a request for an unknown host, answered as its page says."""
import json
import re
import subprocess
import textwrap

import pytest
import yaml

import harness
import stats
from stats import chi_square

ROOT = harness.ROOT
ENVOY_DIR = harness.ENVOY_DIR
PLUGIN = json.loads((ENVOY_DIR / "meshsplit.json").read_text())
(SERVICE,) = PLUGIN["services"]
CLUSTERS = [u["cluster"] for u in SERVICE["upstreams"]]
WEIGHTS = [u["weight"] for u in SERVICE["upstreams"]]
REQUESTS = 2000
# What an unknown host gets: the fallback route of envoy.yaml and its copies (deploying.md:
# "unknown services (on_unknown_service: pass)" get the 404 of the fallback route) ...
FALLBACK = (404, "fallback route: no meshsplit service matched\n")
# ... and the cluster specifier's route_not_found code (docs/native.md: NOT_FOUND, "without the
# JSON body").
SPECIFIER_NOT_FOUND = (404, "")
CLI = ROOT / "target" / "release" / "meshsplit"


def assert_serves(port, listener, unknown):
    """The listener on `port` splits `reviews` by the sample weights, applies the x-canary rule,
    rewrites v1's :authority, and answers an unknown host with `unknown` (status, body)."""
    seen = harness.send(port, REQUESTS, {"Host": "reviews"})
    assert set(seen) <= set(CLUSTERS) and sum(seen.values()) == REQUESTS, (listener, seen)
    stat, p = chi_square([seen[c] for c in CLUSTERS], WEIGHTS)
    assert p > stats.P_MIN, f"{listener}: split {dict(seen)} does not fit {WEIGHTS}: " \
                            f"chi-square {stat:.2f}, p = {p:.2g}"
    (rule,) = SERVICE["rules"]
    (target,) = [u["cluster"] for u in SERVICE["upstreams"] if u["name"] == rule["upstream"]]
    assert harness.send(port, 20, {"Host": "reviews", "x-canary": "true"}) == {target: 20}, listener
    client = harness.Client(port)
    try:
        status, _, body = client.get("/", {"Host": "unknown.example"})
        assert (status, body.decode()) == unknown, (listener, status, body)
        # v1's :authority is rewritten (the filter's `authority`; the specifier listener's
        # auto_host_rewrite from the endpoint's hostname).
        for _ in range(50):
            status, _, body = client.get("/", {"Host": "reviews"})
            answer = json.loads(body)
            if answer["upstream"] == "reviews_v1":
                assert answer["host"] == "reviews-v1.internal", (listener, answer)
                break
        else:
            raise AssertionError(f"{listener}: no answer from reviews_v1 in 50 requests")
    finally:
        client.close()


def hcm(config, listener=0):
    return config["static_resources"]["listeners"][listener]["filter_chains"][0]["filters"][0]["typed_config"]


# --- the docs' fragments -------------------------------------------------------------------------

def page_block(page, first_line):
    """The one fenced yaml or json block of `page` (README.md or docs/NAME.md) whose first line
    that is not a comment starts with `first_line`, dedented (blocks inside a list are indented)."""
    text = (ROOT / page).read_text()
    found = []
    for indent, body in re.findall(r"^( *)```(?:yaml|json)\n(.*?)^ *```", text, re.S | re.M):
        body = textwrap.dedent(body)
        lines = [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
        if lines and lines[0].startswith(first_line):
            found.append(body)
    assert len(found) == 1, f"{page}: {len(found)} blocks starting with {first_line!r}"
    return found[0]


def fill(node, path, placeholder, value):
    """Replaces the placeholder at `path` (a list of keys) in a parsed fragment, after checking
    it is the page's placeholder: a page that changes its placeholder fails here."""
    *parents, last = path
    for key in parents:
        node = node[key]
    assert node[last] == placeholder, (path, node[last])
    node[last] = value


def ecds_files(config, directory):
    """Points a bootstrap's ECDS path_config_source at `directory`/meshsplit.json (Envoy needs the
    file to exist at start: an empty one is served by default_config)."""
    (source,) = [f["config_discovery"]["config_source"]["path_config_source"]
                 for f in hcm(config)["http_filters"] if "config_discovery" in f]
    source["path"] = str(directory / "meshsplit.json")
    source["watched_directory"]["path"] = str(directory)
    (directory / "meshsplit.json").touch()
    return directory / "meshsplit.json"


def ecds_stat(envoy, name):
    key = f"extension_config_discovery.http_filter.meshsplit.{name}"
    return envoy.stats(key).get(key)


# --- the cases ------------------------------------------------------------------------------------
# Each returns (config, {listener: unknown-host answer}); `directory` is the test's scratch dir.

def envoy_yaml(directory):
    return harness.load_yaml(ENVOY_DIR / "envoy.yaml"), {"meshsplit": FALLBACK}


def envoy_native_yaml(directory):
    return harness.load_yaml(ENVOY_DIR / "envoy-native.yaml"), {
        "meshsplit": FALLBACK, "meshsplit_specifier": SPECIFIER_NOT_FOUND}


def envoy_compose_yaml(directory):
    # The compose file's Envoy: its STRICT_DNS clusters resolve the compose service names
    # (reviews-v1 ...); here they name 127.0.0.1 (harness.shipped), as nothing else changes.
    return harness.load_yaml(ENVOY_DIR / "envoy-compose.yaml"), {"meshsplit": FALLBACK}


def envoy_live_yaml(directory):
    config = harness.load_yaml(ENVOY_DIR / "envoy-live.yaml")
    ecds_files(config, directory)
    return config, {"meshsplit": FALLBACK}


def readme_route(directory):
    """README.md's route_config ("as in envoy/envoy.yaml") in envoy.yaml's listener: unknown
    hosts get its 404, not a 503 (flag NC)."""
    config = harness.load_yaml(ENVOY_DIR / "envoy.yaml")
    route_config = yaml.safe_load(page_block("README.md", "route_config:"))["route_config"]
    hcm(config)["route_config"] = dict(route_config, name="readme")
    return config, {"meshsplit": (404, "no meshsplit service matched\n")}


def deploying_routes(directory):
    """docs/deploying.md's two routes: envoy.yaml's virtual host routes."""
    config = harness.load_yaml(ENVOY_DIR / "envoy.yaml")
    routes = yaml.safe_load(page_block("docs/deploying.md", "routes:"))["routes"]
    hcm(config)["route_config"]["virtual_hosts"][0]["routes"] = routes
    return config, {"meshsplit": FALLBACK}


def deploying_filter(directory):
    """docs/deploying.md's filter entry "for use in your own config": in envoy.yaml in place of
    its wasm filter, the page's plugin placeholder filled with envoy/meshsplit.json (its module
    path is rewritten like every shipped config's)."""
    config = harness.load_yaml(ENVOY_DIR / "envoy.yaml")
    (entry,) = yaml.safe_load(page_block("docs/deploying.md", "- name: envoy.filters.http.wasm"))
    fill(entry, ["typed_config", "config", "configuration", "value"], '{"services": [...]}\n',
         (ENVOY_DIR / "meshsplit.json").read_text())
    filters = hcm(config)["http_filters"]
    (index,) = [i for i, f in enumerate(filters) if f["name"] == entry["name"]]
    filters[index] = entry
    return config, {"meshsplit": FALLBACK}


def operating_ecds(directory):
    """docs/operating.md's ECDS filter entry (the HTTP connection manager's http_filters) in
    envoy-live.yaml, and the ECDS file as the page shows it, the page's `{...}` placeholders
    filled with envoy-live.yaml's wasm config. The file, not default_config, must serve."""
    config = harness.load_yaml(ENVOY_DIR / "envoy-live.yaml")
    shipped_wasm = next(f for f in hcm(config)["http_filters"] if "config_discovery" in f)[
        "config_discovery"]["default_config"]["config"]
    filters = yaml.safe_load(page_block("docs/operating.md", "http_filters:"))["http_filters"]
    fill(filters[0], ["config_discovery", "default_config", "config"], {"...": None}, shipped_wasm)
    hcm(config)["http_filters"] = filters
    path = ecds_files(config, directory)
    resource = json.loads(page_block("docs/operating.md", '{"version_info"'))
    fill(resource, ["resources", 0, "typed_config", "config"],
         {"...": "the same wasm config as above, with the new plugin JSON"}, shipped_wasm)
    resource = json.loads(json.dumps(resource))  # a copy: the bootstrap's is rewritten apart
    harness.use_module(resource)
    path.write_text(json.dumps(resource))
    return config, {"meshsplit": FALLBACK}


CASES = {
    "envoy.yaml": envoy_yaml,
    "envoy-native.yaml": envoy_native_yaml,
    "envoy-compose.yaml": envoy_compose_yaml,
    "envoy-live.yaml": envoy_live_yaml,
    "README.md:route_config": readme_route,
    "deploying.md:routes": deploying_routes,
    "deploying.md:filter": deploying_filter,
    "operating.md:ecds": operating_ecds,
}


def test_every_shipped_envoy_config_has_a_case():
    """A new file in envoy/ that is an Envoy bootstrap gets a case above (upstream-compose.yaml
    is the compose file's upstream, not meshsplit's)."""
    bootstraps = {p.name for p in ENVOY_DIR.glob("*.yaml")
                  if "static_resources" in (harness.load_yaml(p) or {})}
    assert bootstraps - {"upstream-compose.yaml"} == {c for c in CASES if c.endswith(".yaml")}


# Every yaml block of the README and the manual, and every json block that is no plugin
# configuration (tests/test_docs.py checks those), by page and first line: started above, or
# started elsewhere, or no Envoy config at all. A new block fails until it is listed here.
DOC_BLOCKS = {
    ("README.md", "route_config:"): "README.md:route_config",
    ("docs/deploying.md", "routes:"): "deploying.md:routes",
    ("docs/deploying.md", "- name: envoy.filters.http.wasm"): "deploying.md:filter",
    ("docs/operating.md", "http_filters:"): "operating.md:ecds",
    ("docs/operating.md", '{"version_info"'): "operating.md:ecds",
    ("docs/install.md", "vm_config:"): "tests/test_install.py, on make dist's module",
    ("docs/observing-a-split.md", "proxyStatsMatcher:"): "Istio's mesh config, not Envoy's",
    ("docs/alerts.md", "rule_files:"): "Prometheus's config, not Envoy's",
    ("docs/dashboard.md", "apiVersion: monitoring.coreos.com/v1"): "a PrometheusRule",
    # The rendered manifests, included from envoy/supported/ as shipped: tests/test_supported_routes.py
    # renders them again, validates them against their CRDs and starts each as its control plane
    # would shape it.
    ("docs/istio.md", '--8<-- "envoy/supported/sidecar.yaml"'): "tests/test_supported_routes.py",
    ("docs/istio.md", '--8<-- "envoy/supported/sidecar-httproute.yaml"'): "tests/test_supported_routes.py",
    ("docs/istio.md", '--8<-- "envoy/supported/ambient.yaml"'): "tests/test_supported_routes.py",
    ("docs/envoy-gateway.md", '--8<-- "envoy/supported/envoy-gateway.yaml"'): "tests/test_supported_routes.py",
    ("docs/envoy-gateway.md", '--8<-- "envoy/supported/envoy-gateway-native.yaml"'): "tests/test_supported_routes.py",
}


def test_every_envoy_config_in_the_docs_is_started():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    seen = set()
    for path in pages:
        text = path.read_text()
        for lang, body in re.findall(r"^ *```(yaml|json)\n(.*?)^ *```", text, re.S | re.M):
            body = textwrap.dedent(body)
            if lang == "json" and ('"services"' in body or '"upstreams"' in body):
                continue
            first = next(l for l in body.splitlines() if l.strip() and not l.startswith("#"))
            page = path.relative_to(ROOT).as_posix()
            keys = [k for k in DOC_BLOCKS if k[0] == page and first.startswith(k[1])]
            assert keys, f"{page}: a block starting {first!r} is neither started nor listed in DOC_BLOCKS"
            seen.update(keys)
    assert seen == set(DOC_BLOCKS), set(DOC_BLOCKS) - seen
    assert {c for c in DOC_BLOCKS.values() if c in CASES} == {c for c in CASES if ".md:" in c}


@pytest.fixture(scope="module")
def modules(wasm):
    harness.build_native()
    return wasm


@pytest.mark.parametrize("case", list(CASES))
def test_the_shipped_config_answers_on_every_listener(case, modules, tmp_path):
    config, unknown = CASES[case](tmp_path)
    with harness.upstreams(*CLUSTERS) as ports:
        listeners = harness.shipped(config, ports)
        assert set(listeners) == set(unknown), listeners
        with harness.Envoy(config, tmp_path) as envoy:
            if case == "operating.md:ecds":
                # The page's file was read and applied (default_config is not what serves).
                assert harness.wait_for(lambda: ecds_stat(envoy, "config_reload") == 1), envoy.log()[-3000:]
            for name, port in listeners.items():
                assert_serves(port, f"{case} {name}", unknown[name])
            if case == "envoy-live.yaml":
                # Started on an empty file (default_config); then `meshsplit apply` writes the
                # sample config into it, as `make live` does, and the file serves.
                assert ecds_stat(envoy, "config_reload") == 0
                ecds = tmp_path / "meshsplit.json"
                out = subprocess.run([str(CLI), "apply", str(ENVOY_DIR / "meshsplit.json"), "--to",
                                      str(ecds), "--module", str(harness.WASM)],
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stdout + out.stderr
                assert harness.wait_for(lambda: ecds_stat(envoy, "config_reload") == 1)
                assert_serves(listeners["meshsplit"], f"{case} from the ECDS file", FALLBACK)
