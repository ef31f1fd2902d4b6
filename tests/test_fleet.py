"""A fleet of eight Envoys ("pods") scraped by one real Prometheus with the shipped rules, as in a
rolling update: the pods differ in build, configuration, traffic and stats naming, and the rules,
alerts, dashboard queries and `meshsplit status --admin …` must give the fleet's numbers.

| pod | build | config | v2 upstream | traffic (req/s) | stats naming |
|---|---|---|---|---|---|
| 0, 1 | wasm | old: v1/v2 50/50 | failing: the guard ejects it | 12, 4 | Envoy's defaults |
| 2 | wasm | old | healthy; restarted mid-test (counters reset) | 8 | Envoy's defaults |
| 3 | wasm | old | healthy | none | Envoy's defaults |
| 4, 5 | native | new: v1/v2/v3 50/25/25 | healthy | 8, 4 | Envoy's defaults |
| 6 | wasm | old, plus a service whose cluster is missing | healthy | 6 | Istio 1.29 (plugin `default.meshsplit`) |
| 7 | wasm | old without a guard (its 5xx go on) | failing | 6 | Istio 1.30 (plugin `default.meshsplit~istio-translated-wasmplugin`) |

Time: about 70 s (40 s of traffic, Prometheus's one-minute rates over it). Shares are compared
within 0.05: the traffic is paced, not random, and the ejections take a few seconds of the
window (at most 3 s of 40 on a third of the traffic: 0.02)."""
import collections
import contextlib
import json
import re
import subprocess
import threading
import time

import pytest

import harness
import istio
from test_bundle import require_tool
from test_dashboard import dashboard_module
from test_prometheus import DASHBOARD, Prometheus, prometheus_bin, substituted

PLUGIN_NAME = "default.meshsplit"
PLUGIN_LABEL = "default_meshsplit"
# Pod 1's v2 sees 2 requests/s: 6 in a 3 s window, over min_requests.
GUARD = {"error_rate": 0.5, "min_requests": 4, "window_s": 3, "eject_s": 120, "max_ejected_percent": 50}
OLD = {"services": [{"name": "svc", "guard": GUARD, "upstreams": [
    {"name": "v1", "cluster": "v1", "weight": 50}, {"name": "v2", "cluster": "v2", "weight": 50}]}]}
NEW = {"services": [{"name": "svc", "guard": GUARD, "upstreams": [
    {"name": "v1", "cluster": "v1", "weight": 50}, {"name": "v2", "cluster": "v2", "weight": 25},
    {"name": "v3", "cluster": "v3", "weight": 25}]}]}
# On pod 6: a service whose cluster the Envoy lacks (no_cluster on Istio's names).
MISSING = {"name": "nc", "upstreams": [{"name": "x", "cluster": "missing", "weight": 1}]}
# (build, config, v2 failing, requests per second, naming)
PODS = [("wasm", OLD, True, 12, "envoy"), ("wasm", OLD, True, 4, "envoy"),
        ("wasm", OLD, False, 8, "envoy"), ("wasm", OLD, False, 0, "envoy"),
        ("native", NEW, False, 8, "envoy"), ("native", NEW, False, 4, "envoy"),
        ("wasm", OLD, False, 6, "istio-1.29"), ("wasm", OLD, True, 6, "istio-1.30")]
TRAFFIC_S = 40
TOLERANCE = 0.05
OBSERVING = harness.ROOT / "docs" / "observing-a-split.md"


def documented_matcher():
    """The proxyStatsMatcher regexps docs/observing-a-split.md tells Istio users to set."""
    block = re.search(r"```yaml\nproxyStatsMatcher:\n(.*?)```", OBSERVING.read_text(), re.S).group(1)
    return [json.loads(line.strip()[2:]) for line in block.splitlines() if line.strip().startswith("- ")]


def meshsplit_stats_tags():
    """The stats_tags envoy/istio/meshsplit-stats.yaml patches into a sidecar's bootstrap."""
    doc = harness.load_yaml(harness.ENVOY_DIR / "istio" / "meshsplit-stats.yaml")
    return doc["spec"]["configPatches"][0]["patch"]["value"]["stats_config"]["stats_tags"]


def backend_config():
    """One Envoy answering for every upstream: v1, v2, v3 200 with their name; v2bad 503."""
    listeners, ports = [], {}
    for name in ("v1", "v2", "v3", "v2bad"):
        ports[name] = harness.free_port()
        status = 503 if name == "v2bad" else 200
        listeners.append(harness.http_listener(f"upstream_{name}", ports[name], [{
            "match": {"prefix": "/"}, "direct_response": {
                "status": status, "body": {"inline_string": json.dumps({"upstream": name})}}}]))
    config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                       "port_value": harness.free_port()}}},
              "static_resources": {"listeners": listeners, "clusters": []}}
    return config, ports


def pod_config(index, backend_ports):
    build, plugin, failing, _, naming = PODS[index]
    plugin = json.loads(json.dumps(plugin))
    if naming == "istio-1.29":
        plugin["services"].append(MISSING)
    if naming == "istio-1.30":
        del plugin["services"][0]["guard"]
    clusters = {"v1": backend_ports["v1"], "v2": backend_ports["v2bad" if failing else "v2"],
                "v3": backend_ports["v3"]}
    config = harness.bootstrap(plugin, clusters, harness.free_port(), harness.free_port(), build="wasm")
    wasm = harness.wasm_filter(config)["typed_config"]["config"]
    wasm["name"] = PLUGIN_NAME + ("~istio-translated-wasmplugin" if naming == "istio-1.30" else "")
    harness.use_build(config, build)
    if naming.startswith("istio"):
        # An Istio sidecar's naming: Istio's tags and inclusion list with the documented
        # proxyStatsMatcher, meshsplit-stats.yaml's tags, and `;`-delimited names.
        config["stats_config"] = istio.istio_stats_config(meshsplit_stats_tags(), documented_matcher())
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "outbound_0.0.0.0_9080;"
        for cluster in config["static_resources"]["clusters"]:
            cluster["alt_stat_name"] = cluster["name"] + ";"
    return config


class Load:
    """Paced traffic to every pod at its rate, in one thread per pod, until stopped."""

    def __init__(self, pods):
        self.pods, self.stop_flag, self.threads = pods, threading.Event(), []
        self.sent = collections.Counter()

    def run(self, index, port, rate):
        client = harness.Client(port)
        interval, next_at = 1.0 / rate, time.monotonic()
        while not self.stop_flag.is_set():
            try:
                host = "nc" if index == 6 and self.sent[index] % 10 == 9 else "svc"
                client.get("/", {"Host": host})
                self.sent[index] += 1
            except OSError:
                client.close()  # a pod restarting: try again on the next tick
                client = harness.Client(port)
            next_at += interval
            self.stop_flag.wait(max(0.0, next_at - time.monotonic()))
        client.close()

    def __enter__(self):
        for index, envoy in enumerate(self.pods):
            rate = PODS[index][3]
            if rate:
                t = threading.Thread(target=self.run, args=(index, envoy.port, rate), daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    binary = prometheus_bin()
    if not binary:
        require_tool(False, "prometheus (Debian package `prometheus`): the fleet test")
    harness.build_wasm()
    harness.build_native()
    with contextlib.ExitStack() as stack:
        config, ports = backend_config()
        stack.enter_context(harness.Envoy(config, tmp_path_factory.mktemp("backend"), concurrency=1))
        pods = [stack.enter_context(harness.Envoy(pod_config(i, ports), tmp_path_factory.mktemp(f"pod{i}"),
                                                  concurrency=1)) for i in range(len(PODS))]
        workdir = tmp_path_factory.mktemp("prometheus")
        prometheus = Prometheus(binary, pods[0].admin_port, workdir, targets=[p.admin_port for p in pods])
        stack.callback(prometheus.stop)
        with Load(pods) as load:
            time.sleep(TRAFFIC_S / 4)
            # Pod 2 restarts: its counters start again from 0.
            pods[2].stop()
            pods[2].start()
            time.sleep(TRAFFIC_S * 3 / 4)
            yield pods, prometheus, load


def fleet_shares(prometheus, rule):
    return prometheus.query(f'{rule}{{plugin="{PLUGIN_LABEL}",service="svc"}}')


def expected_share(load=None):
    """What the pods' weights in force and rates give: pods 0 and 1 send all to v1 (v2 ejected)."""
    shares = collections.Counter()
    total = 0
    for index, (build, plugin, failing, rate, _) in enumerate(PODS):
        if index == 6:
            rate *= 0.9  # a tenth of pod 6's requests go to service nc
        ejects = failing and "guard" in plugin["services"][0] and index != 7
        weights = {u["name"]: (0 if ejects and u["name"] == "v2" else u["weight"])
                   for u in plugin["services"][0]["upstreams"]}
        for name, weight in weights.items():
            shares[name] += rate * weight / sum(weights.values())
        total += rate
    return {name: share / total for name, share in shares.items()}


def test_the_fleets_weight_share_is_what_its_traffic_follows(fleet):
    _, prometheus, _ = fleet
    observed = fleet_shares(prometheus, "meshsplit:observed_share:ratio_rate1m")
    weight = fleet_shares(prometheus, "meshsplit:weight_share:ratio")
    expected = expected_share()
    assert set(observed) == set(weight) == {"v1", "v2", "v3"}, (observed, weight)
    for name, share in expected.items():
        assert abs(weight[name] - share) < TOLERANCE, (name, weight, expected)
        assert abs(observed[name] - share) < TOLERANCE, (name, observed, expected)
    # The deviation the alert reads stays far below its 0.1.
    deviation = fleet_shares(prometheus, "meshsplit:share_deviation:ratio_rate1m")
    assert max(abs(d) for d in deviation.values()) < TOLERANCE, deviation
    # An average of the weights (the previous rule) would be far off: v1 0.47 against 0.67.
    assert abs(expected["v1"] - 50 / (50 + 31.25 + 25)) > 0.15


def test_each_problem_raises_one_alert_with_its_envoys_counted(fleet):
    _, prometheus, _ = fleet
    ejected = prometheus.alerts("MeshsplitUpstreamEjected")
    # v2 ejected on pods 0 and 1: one alert, value 2.
    assert [(a["labels"]["service"], a["labels"]["upstream"], a["labels"]["plugin"], float(a["value"]))
            for a in ejected] == [("svc", "v2", PLUGIN_LABEL, 2.0)], ejected
    no_cluster = prometheus.alerts("MeshsplitNoCluster")
    assert [(a["labels"]["envoy_http_conn_manager_prefix"], float(a["value"])) for a in no_cluster] \
        == [("outbound_0.0.0.0_9080", 1.0)], no_cluster
    assert prometheus.alerts("MeshsplitConfigRefused") == []


def test_istio_names_feed_the_cluster_and_no_cluster_rules(fleet):
    _, prometheus, _ = fleet
    errors = prometheus.query("meshsplit:cluster_errors:ratio_rate1m", by="envoy_cluster_name")
    # v2 keeps failing on pod 7 (Istio's names, no guard): a quarter of v2's answers over the
    # fleet (pods 2, 4, 5, 6 answer it well) are 5xx.
    assert errors.get("v2", 0) > 0.1 and errors.get("v1") == 0, errors
    # Pod 7 alone carries Istio's names for its failing v2: its series reach the rule.
    istio_5xx = prometheus.query('sum(rate(envoy_cluster_upstream_rq{response_code_class="5xx",cluster_name="v2"}[1m]))', by="")
    assert istio_5xx.get("", 0) > 0, istio_5xx
    nc = prometheus.query("meshsplit:no_cluster:rate5m", by="envoy_http_conn_manager_prefix")
    assert nc.get("outbound_0.0.0.0_9080", 0) > 0, nc


def test_every_dashboard_query_has_the_fleets_data_and_the_split_adds_up(fleet):
    _, prometheus, _ = fleet
    model = json.loads(DASHBOARD.read_text())
    end = time.time()
    for where, expr in dashboard_module().queries(model):
        expr = substituted(expr.replace("$plugin", PLUGIN_LABEL))
        if expr.startswith("label_values("):
            continue
        result = prometheus.api("query", query=expr, time=end)["result"]
        if "Split" in where and where.endswith(" A"):
            total = sum(float(s["value"][1]) for s in result)
            assert abs(total - 1) < 1e-6, (where, result)
        if "Ejections in range" in where:
            # The wasm pods' counters appeared at 1 with their first ejection; they count.
            by_upstream = {s["metric"].get("upstream"): float(s["value"][1]) for s in result}
            assert by_upstream.get("v2", 0) >= 2, (where, expr, result)


def test_status_reads_the_fleet(fleet):
    pods, _, _ = fleet
    cli = harness.ROOT / "target" / "release" / "meshsplit"
    subprocess.run(["make", "--no-print-directory", "-s", "cli"], cwd=harness.ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    args = [str(cli), "status", "--json", "--interval", "3"]
    for pod in pods:
        args += ["--admin", f"http://127.0.0.1:{pod.admin_port}"]
    # A ninth Envoy that cannot be read: the fleet is shown with it as an error.
    args += ["--admin", f"http://127.0.0.1:{harness.free_port()}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["fleet"]["envoys"] == len(PODS) + 1, report["fleet"]
    assert report["fleet"]["envoys_read"] == len(PODS), report["fleet"]
    assert "cannot reach Envoy's admin endpoint" in report["envoys"][-1]["report"]["error"]
    svc = [s for s in report["fleet"]["services"] if s["service"] == "svc"]
    expected = expected_share()
    for service in svc:
        for u in service["upstreams"]:
            if service["plugin"] == PLUGIN_LABEL:
                assert abs(u["weight_share"] - expected[u["upstream"]]) < TOLERANCE + 0.03, (u, expected)
    ejected = sum(u["ejected_on"] for s in svc for u in s["upstreams"] if u["upstream"] == "v2")
    assert ejected == 2, svc
    text = subprocess.run(args[:2] + args[5:], capture_output=True, text=True, timeout=60).stdout
    assert text.startswith(f"fleet of {len(PODS) + 1} Envoys, {len(PODS)} read"), text
