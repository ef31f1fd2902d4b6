"""A fleet of eight Envoys ("pods") scraped by one real Prometheus with the shipped rules, as in a
rolling update: the pods differ in build, configuration, traffic and stats naming, and the rules,
alerts, dashboard queries and `meshsplit status --admin …` must give the fleet's numbers.

Two services. `svc`: the old configuration splits v1/v2 50/50, the new one v1/v2/v3 50/25/25 with
a rule sending `x-canary: true` to v3; both have a guard. `ramp`: stable (cluster v1) and canary
(cluster v3) under a guarded rollout whose schedule steps from 90/10 to 70/30 during the test.
Unknown-service (1 in 48 on pod 0, 1 in 24 on pod 7) and no-cluster (service `nc`, whose cluster
the Envoys lack) requests go beside them.

| pod | build | svc config | v2 upstream | req/s | besides svc, 1 request in N to | stats naming |
|---|---|---|---|---|---|---|
| 0 | wasm | old | failing: the guard ejects it | 12 | unknown (48) | Envoy's defaults |
| 1 | wasm | old | failing: ejected | 4 | - | Envoy's defaults |
| 2 | wasm | old; restarted 10 s in with the new config: a live rolling update, counters reset | healthy | 8 | - | Envoy's defaults |
| 3 | wasm | old | healthy | none | - | Envoy's defaults |
| 4 | native | new; 1 in 10 requests has `x-canary: true` | healthy | 8 | ramp (10) | Envoy's defaults |
| 5 | native | new | healthy | 4 | nc (8) | Envoy's defaults |
| 6 | wasm | old | healthy | 6 | nc (10), ramp (10) | Istio 1.29 (plugin `default.meshsplit`, connection manager `meshsplit;`) |
| 7 | wasm | old without a guard (its 5xx go on) | failing | 6 | nc (12), unknown (24) | Istio 1.30 (plugin `default.meshsplit~istio-translated-wasmplugin`, connection manager `outbound_0.0.0.0_9080;`) |

Pods 5 and 6 name their connection manager alike (`meshsplit`) under the two namings: their
no-cluster requests are one problem, one alert. Pod 7's (Istio's outbound name, dots and all) is
another.

Before Prometheus first scrapes, each pod gets a few requests of each kind (v2 still healthy), so
that every counter the load counts in exists (the wasm filter defines one at its first use, and
rate() cannot see what a series starts at); then v2 fails, and the guards of pods 0 and 1 eject
it a second or two into the load, with Prometheus watching.

The expected shares come from the load itself: each request's upstream as the client saw it
(observed share) and each pod's requests times the weights in force on that pod (weight share),
over the minute the rules' rates cover (up to each pod's last scrape) at the instant checked:
right after pod 2's restart (8 s after it is back), and at the end of the traffic. Prometheus's
agree with them within 0.03, typically 0.01 (the rates' extrapolation at the series' ends, the
wasm filter's counters flushed every half second). svc's deviation from the weights stays
within 0.05 at the end, under 0.1 after the restart (pod 2's old-config requests weigh more
then); ramp's right after its step is the step's size, for a minute (the observed share is a
minute's, the weights are the moment's): its traffic (1.4 requests/s) is kept under the 5/s
MeshsplitShareOffWeight needs.

Time: about 75 s alone on 2 cores, 100 s beside `stress-ng --cpu 2`: the wasm module's build
check (`make build`, about 15 s as wasm-opt runs again; once per session in `make test`), the
Envoys' start and warm-up (about 15 s), 40 s of traffic (so that Prometheus's one-minute rates
cover all of it at the end) and the checks (5 s). The traffic goes on for at least 8 s after
ramp's step, STEP_S after the Envoys are configured: a machine that starts them in over 32 s
lengthens it."""
import collections
import contextlib
import json
import math
import re
import statistics
import subprocess
import threading
import time

import pytest
import yaml

import harness
import istio
from test_bundle import require_tool
from test_dashboard import dashboard_module
from test_prometheus import DASHBOARD, Prometheus, prometheus_bin, substituted

PLUGIN_NAME = "default.meshsplit"
PLUGIN_LABEL = "default_meshsplit"
# Pod 1's v2 sees 2 requests/s: 6 in a 3 s window, over min_requests. An ejection lasts longer
# than the test.
GUARD = {"error_rate": 0.5, "min_requests": 4, "window_s": 3, "eject_s": 600, "max_ejected_percent": 50}
SVC_WEIGHTS = {"old": {"v1": 50, "v2": 50}, "new": {"v1": 50, "v2": 25, "v3": 25}}
CANARY_RULE = {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v3"}
# ramp's rollout: step 0 from its start (when the fleet is configured), step 1 STEP_S later.
RAMP_STEPS = [{"stable": 90, "canary": 10}, {"stable": 70, "canary": 30}]
STEP_S = 40
# A service whose cluster the Envoys lack: its requests are Envoy's no_cluster.
MISSING = {"name": "nc", "upstreams": [{"name": "x", "cluster": "missing", "weight": 1}]}
# Each kind of request: its headers, and the meshsplit service it is for.
KINDS = {"svc": ({"Host": "svc"}, "svc"), "canary": ({"Host": "svc", "x-canary": "true"}, "svc"),
         "ramp": ({"Host": "ramp"}, "ramp"), "nc": ({"Host": "nc"}, "nc"),
         "unknown": ({"Host": "nowhere"}, None)}
# The upstream each answering cluster (the body's name) stands for, per service.
UPSTREAM_OF = {"svc": {"v1": "v1", "v2": "v2", "v2bad": "v2", "v3": "v3"},
               "ramp": {"v1": "stable", "v3": "canary"}}

Pod = collections.namedtuple("Pod", "build config guard failing rate mix naming")
PODS = [
    Pod("wasm", "old", True, True, 12, {"svc": 47, "unknown": 1}, "envoy"),
    Pod("wasm", "old", True, True, 4, {"svc": 1}, "envoy"),
    Pod("wasm", "old", True, False, 8, {"svc": 1}, "envoy"),
    Pod("wasm", "old", True, False, 0, {}, "envoy"),
    Pod("native", "new", True, False, 8, {"svc": 8, "canary": 1, "ramp": 1}, "envoy"),
    Pod("native", "new", True, False, 4, {"svc": 7, "nc": 1}, "envoy"),
    Pod("wasm", "old", True, False, 6, {"svc": 8, "nc": 1, "ramp": 1}, "istio-1.29"),
    Pod("wasm", "old", False, True, 6, {"svc": 21, "nc": 2, "unknown": 1}, "istio-1.30"),
]
# The connection manager's stat_prefix on the Istio pods (Istio ends it with `;`).
ISTIO_PREFIX = {"istio-1.29": "meshsplit;", "istio-1.30": "outbound_0.0.0.0_9080;"}
# Pod 2 restarts RESTART_AT_S into the traffic with the new config.
RESTARTED, RESTART_AT_S = 2, 10
TRAFFIC_S = 40
# The instant checked after the restart: that long after pod 2 is back (scraped 8 times).
AFTER_RESTART_S = 8
RATE_WINDOW_S = 60
# The shares Prometheus gives against those of the load (see the module's docstring), and the
# deviation's bound.
SHARE_TOLERANCE = 0.03
TOLERANCE = 0.05
OBSERVING = harness.ROOT / "docs" / "observing-a-split.md"
SPLIT = 'panel "Split: observed share (stacked) and weight in force (dashed)"'
DEVIATION = 'panel "Observed share minus weight share" A'
RULE_HITS = 'panel "Rule hits per second"'
WEIGHT_CHANGES = 'annotation "Weight changes"'
# The dashboard's queries that have no data for svc, each with the reason; each has data for ramp.
NOT_FOR_SVC = {
    'panel "Guard: ejected upstreams and paused rollout" B':
        "the rollout-paused gauge exists only for a service with a guard and a rollout: ramp",
}


def documented_matcher():
    """The proxyStatsMatcher regexps docs/observing-a-split.md tells Istio users to set."""
    block = re.search(r"```yaml\nproxyStatsMatcher:\n(.*?)```", OBSERVING.read_text(), re.S).group(1)
    return [json.loads(line.strip()[2:]) for line in block.splitlines() if line.strip().startswith("- ")]


def meshsplit_stats_tags():
    """The stats_tags envoy/istio/meshsplit-stats.yaml patches into a sidecar's bootstrap."""
    doc = harness.load_yaml(harness.ENVOY_DIR / "istio" / "meshsplit-stats.yaml")
    return doc["spec"]["configPatches"][0]["patch"]["value"]["stats_config"]["stats_tags"]


def backend_config():
    """One Envoy answering for the healthy upstreams, v1, v2 and v3, 200 with their name."""
    listeners, ports = [], {}
    for name in ("v1", "v2", "v3"):
        ports[name] = harness.free_port()
        listeners.append(harness.http_listener(f"upstream_{name}", ports[name], [{
            "match": {"prefix": "/"}, "direct_response": {
                "status": 200, "body": {"inline_string": json.dumps({"upstream": name})}}}]))
    config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                       "port_value": harness.free_port()}}},
              "static_resources": {"listeners": listeners, "clusters": []}}
    return config, ports


def plugin(pod, version, start):
    """The plugin configuration of `pod` in `version` ("old", "new"), ramp's rollout from `start`."""
    svc = {"name": "svc", "upstreams": [{"name": n, "cluster": n, "weight": w}
                                        for n, w in SVC_WEIGHTS[version].items()]}
    if pod.guard:
        svc["guard"] = GUARD
    if version == "new":
        svc["rules"] = [CANARY_RULE]
    ramp = {"name": "ramp", "guard": GUARD, "upstreams": [
        {"name": "stable", "cluster": "v1", "weight": 100}, {"name": "canary", "cluster": "v3", "weight": 0}],
        "rollout": {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "steps": [
            {"at_s": 0, "weights": RAMP_STEPS[0]}, {"at_s": STEP_S, "weights": RAMP_STEPS[1]},
            {"at_s": 315360000, "weights": {"canary": 100}}]}}
    return {"services": [svc, ramp, *([MISSING] if "nc" in pod.mix else [])]}


def pod_config(index, backend_ports, start, version=None):
    pod = PODS[index]
    clusters = {"v1": backend_ports["v1"], "v2": backend_ports["v2bad" if pod.failing else "v2"],
                "v3": backend_ports["v3"]}
    config = harness.bootstrap(plugin(pod, version or pod.config, start), clusters,
                               harness.free_port(), harness.free_port(), build="wasm")
    wasm = harness.wasm_filter(config)["typed_config"]["config"]
    wasm["name"] = PLUGIN_NAME + ("~istio-translated-wasmplugin" if pod.naming == "istio-1.30" else "")
    harness.use_build(config, pod.build)
    if pod.naming.startswith("istio"):
        # An Istio sidecar's naming: Istio's tags and inclusion list with the documented
        # proxyStatsMatcher, meshsplit-stats.yaml's tags, and `;`-delimited names.
        config["stats_config"] = istio.istio_stats_config(meshsplit_stats_tags(), documented_matcher())
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = ISTIO_PREFIX[pod.naming]
        for cluster in config["static_resources"]["clusters"]:
            cluster["alt_stat_name"] = cluster["name"] + ";"
    return config


def counters(pod):
    """The ends of the names of the counters `pod`'s traffic counts in."""
    names = {"svc": [f".svc.{u}.requests_total" for u in SVC_WEIGHTS[pod.config]],
             "ramp": [".ramp.stable.requests_total", ".ramp.canary.requests_total"],
             "unknown": [".unknown_service_total"]}
    return {kind: names[kind] for kind in pod.mix if kind in names}


def warm_up(pods):
    """Sends each pod its kinds of request until every counter its traffic counts in is defined
    (the wasm filter defines one at its first use). Done before Prometheus first scrapes, so that
    rate() sees all the requests of the load: a counter that appeared at 5 would lose those 5,
    which for an upstream the guard ejects in a second or two is all of them."""
    missing = {index: list(counters(PODS[index])) for index in range(len(pods)) if PODS[index].mix}
    for _ in range(10):
        for index, kinds in missing.items():
            for kind in kinds:
                harness.send(pods[index].port, 20, KINDS[kind][0])
        time.sleep(0.6)  # the wasm filter flushes its counters on its half-second tick
        for index in list(missing):
            names = pods[index].stats("meshsplit")
            missing[index] = [kind for kind, ends in counters(PODS[index]).items()
                              if not all(any(n.endswith(end) for n in names) for end in ends)]
            if not missing[index]:
                del missing[index]
        if not missing:
            return
    raise AssertionError(f"counters never defined: {missing}")


def request_cycle(mix):
    """The kinds of request of `mix` ({kind: count}) in one cycle, each kind spread over it."""
    return [kind for _, kind in sorted(((j + 0.5) / count, kind)
                                       for kind, count in mix.items() for j in range(count))]


def answered(status, body):
    """The upstream that answered (the backend's body names it, 503 for v2bad too), or the status."""
    try:
        return json.loads(body)["upstream"]
    except (ValueError, KeyError, TypeError):
        return status


class Load:
    """Paced traffic to every pod at its rate and mix, in one thread per pod, until stopped. Each
    request answered is recorded as (time, pod, kind, upstream or status)."""

    def __init__(self, pods):
        self.pods, self.stop_flag, self.threads = pods, threading.Event(), []
        self.records = []

    def run(self, index, port, rate):
        client = harness.Client(port)
        cycle = request_cycle(PODS[index].mix)
        interval, next_at, sent = 1.0 / rate, time.monotonic(), 0
        while not self.stop_flag.is_set():
            kind = cycle[sent % len(cycle)]
            try:
                status, _, body = client.get("/", KINDS[kind][0])
                self.records.append((time.time(), index, kind, answered(status, body)))
                sent += 1
            except OSError:
                client.close()  # a pod restarting: try again on the next tick
                client = harness.Client(port)
            next_at += interval
            self.stop_flag.wait(max(0.0, next_at - time.monotonic()))
        client.close()

    def __enter__(self):
        self.started = time.time()
        for index, envoy in enumerate(self.pods):
            if PODS[index].rate:
                t = threading.Thread(target=self.run, args=(index, envoy.port, PODS[index].rate), daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)


class Fleet:
    """The pods, Prometheus, the load and the moments of the test (time.time())."""

    def __init__(self, pods, prometheus, load, configured, scraping):
        self.pods, self.prometheus, self.load = pods, prometheus, load
        self.configured, self.scraping = configured, scraping
        self.step_at = configured + STEP_S  # ramp's second step (within the half-second tick)
        self.restarted_at = self.back_at = self.end = None

    @property
    def after_restart(self):
        return self.back_at + AFTER_RESTART_S

    def instance(self, index):
        return f"127.0.0.1:{self.pods[index].admin_port}"

    def weights_in_force(self, index, service, t):
        """{upstream: weight} on pod `index` at `t`: its configuration then, its guard's ejection
        (v2 where it fails and a guard watches it) and ramp's step."""
        if service == "ramp":
            return RAMP_STEPS[t >= self.step_at]
        pod = PODS[index]
        version = "new" if index == RESTARTED and t >= self.restarted_at else pod.config
        weights = dict(SVC_WEIGHTS[version])
        if pod.failing and pod.guard:
            weights["v2"] = 0
        return weights

    def counted(self, kinds, t, window_s=RATE_WINDOW_S):
        """(evaluated, [(pod, kind, answer)]): when the rules were last evaluated by `t`, and each
        request of `kinds` their rates over `window_s` count: answered in that window before the
        evaluation, and before its pod's last scrape then (the wasm filter's counters lag it by
        half a second at most)."""
        prometheus = self.prometheus
        evaluated = instant(prometheus, "max(timestamp(meshsplit:requests:rate1m))", t, by="")[""]
        scraped = instant(prometheus, "max by (instance) (timestamp(meshsplit_requests_total))", evaluated,
                          by="instance")
        return evaluated, [(pod, kind, answer) for at, pod, kind, answer in list(self.load.records)
                           if evaluated - window_s < at <= scraped.get(self.instance(pod), evaluated)
                           and kind in kinds]

    def expected_shares(self, service, t):
        """(observed share, weight share) of each upstream of `service` the load gives for the
        rules' value read at `t`: the upstreams that answered; each request counted at the weights
        in force on its pod at the evaluation, as the rules weigh each pod's weights by its
        requests."""
        observed, weighted = collections.Counter(), collections.Counter()
        evaluated, requests = self.counted([k for k, (_, s) in KINDS.items() if s == service], t)
        for pod, _, answer in requests:
            observed[UPSTREAM_OF[service].get(answer, answer)] += 1
            weights = self.weights_in_force(pod, service, evaluated)
            for name, weight in weights.items():
                weighted[name] += weight / sum(weights.values())
        total = len(requests)
        return ({n: c / total for n, c in observed.items()},
                {n: w / total for n, w in weighted.items()})


@pytest.fixture(scope="module")
def fleet(wasm, tmp_path_factory):
    binary = prometheus_bin()
    if not binary:
        require_tool(False, "prometheus (Debian package `prometheus`): the fleet test")
    harness.build_native()
    with contextlib.ExitStack() as stack:
        config, ports = backend_config()
        stack.enter_context(harness.Envoy(config, tmp_path_factory.mktemp("backend"), concurrency=1))
        # The failing v2: healthy until the load starts, so that warming up ejects nothing.
        v2bad = stack.enter_context(harness.upstream_servers("v2bad"))["v2bad"]
        ports["v2bad"] = v2bad.server_port
        configured = math.floor(time.time())
        pods = [stack.enter_context(harness.Envoy(pod_config(i, ports, configured),
                                                  tmp_path_factory.mktemp(f"pod{i}"), concurrency=1))
                for i in range(len(PODS))]
        warm_up(pods)
        v2bad.status = 503
        # v2's answers while warming up leave the guards' window before the load: they would put
        # the ejections off by seconds.
        warm = time.time()
        workdir = tmp_path_factory.mktemp("prometheus")
        prometheus = Prometheus(binary, pods[0].admin_port, workdir, targets=[p.admin_port for p in pods])
        stack.callback(prometheus.stop)
        # Every pod scraped (weights in force before the ejections, counters before the load).
        assert harness.wait_for(lambda: len(prometheus.query("count by (instance) (meshsplit_weight)",
                                                             by="instance")) == len(PODS), timeout=30), \
            prometheus.query("count by (instance) (meshsplit_weight)", by="instance")
        fleet = Fleet(pods, prometheus, None, configured, time.time())
        # Prometheus scrapes ramp's first step before its second.
        assert fleet.step_at > fleet.scraping + 3, "the Envoys took too long to start"
        time.sleep(max(0.0, warm + GUARD["window_s"] + 0.5 - time.time()))
        with Load(pods) as load:
            fleet.load = load
            time.sleep(max(0.0, load.started + RESTART_AT_S - time.time()))
            # Pod 2 restarts with the new configuration: a rolling update, its counters from 0.
            restarted = pods[RESTARTED]
            config = pod_config(RESTARTED, ports, configured, version="new")
            config["admin"]["address"]["socket_address"]["port_value"] = restarted.admin_port
            config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = restarted.port
            fleet.restarted_at = time.time()
            restarted.stop()
            with open(restarted.config_path, "w") as f:
                yaml.safe_dump(config, f)
            restarted.config = config
            restarted.start()
            fleet.back_at = time.time()
            # The traffic goes on for TRAFFIC_S, and past ramp's step and the check after the restart.
            until = max(load.started + TRAFFIC_S, fleet.step_at + 8, fleet.after_restart + 2)
            time.sleep(max(0.0, until - time.time()))
            fleet.end = time.time()
            print(f"fleet: configured, then Prometheus scraping at {fleet.scraping - configured:.1f} s, "
                  f"load at {load.started - configured:.1f} s, pod 2 restarted at "
                  f"{fleet.restarted_at - configured:.1f} s (back in {fleet.back_at - fleet.restarted_at:.1f} s), "
                  f"ramp's step at {STEP_S} s, end at {fleet.end - configured:.1f} s")
            yield fleet


def instant(prometheus, expr, t, by="upstream"):
    """{value of label `by`: value} of `expr` evaluated at `t`."""
    return {s["metric"].get(by, ""): float(s["value"][1])
            for s in prometheus.api("query", query=expr, time=t)["result"]}


def check_shares(name, observed, weight, expected, deviation=None):
    """`observed` and `weight` shares (and their `deviation`) against the load's `expected`."""
    exp_observed, exp_weight = expected
    assert math.isclose(sum(observed.values()), 1, abs_tol=1e-6), (name, observed)
    assert math.isclose(sum(weight.values()), 1, abs_tol=1e-6), (name, weight)
    assert set(observed) == set(exp_observed) and set(weight) == set(exp_weight), (name, observed, weight, expected)
    for upstream, share in exp_weight.items():
        assert abs(weight[upstream] - share) < SHARE_TOLERANCE, (name, upstream, weight, exp_weight)
    for upstream, share in exp_observed.items():
        assert abs(observed[upstream] - share) < SHARE_TOLERANCE, (name, upstream, observed, exp_observed)
    if deviation is not None:
        assert set(deviation) == set(weight), (name, deviation)
        for upstream, d in deviation.items():
            expected_d = exp_observed.get(upstream, 0) - exp_weight[upstream]
            assert abs(d - expected_d) < SHARE_TOLERANCE, (name, upstream, deviation, expected)


def svc_shares(prometheus, rule, t):
    return instant(prometheus, f'{rule}{{plugin="{PLUGIN_LABEL}",service="svc"}}', t)


def test_the_fleets_weight_share_is_what_its_traffic_follows(fleet):
    """The recording rules, right after pod 2's restart (its counters reset, its weights changed)
    and at the end: the fleet's observed share, weight share and deviation are the load's. At
    the end the deviation is within TOLERANCE; right after the restart it holds the minute's
    requests pod 2 routed on its old weights (counted at its new ones, as a rolling update
    does) and those v2 got before the guards ejected it: under 0.1, the alert's threshold."""
    prometheus = fleet.prometheus
    # Prometheus saw pod 2's counters reset.
    pod2 = f'instance="{fleet.instance(RESTARTED)}",service="svc",upstream="v1"'
    assert instant(prometheus, f"resets(meshsplit_requests_total{{{pod2}}}[1m])", fleet.after_restart, by="") \
        == {"": 1.0}
    svc = f'plugin="{PLUGIN_LABEL}",service="svc"'
    for when, t in (("after the restart", fleet.after_restart), ("at the end", fleet.end)):
        # Each pod's part of svc's requests, pod 2's counted across its reset, is the load's.
        _, requests = fleet.counted(["svc", "canary"], t)
        parts = {fleet.instance(pod): count / len(requests)
                 for pod, count in collections.Counter(pod for pod, _, _ in requests).items()}
        rate = f"meshsplit:pod_requests:rate1m{{{svc}}}"
        recorded = instant(prometheus, f"sum by (instance) ({rate}) / scalar(sum({rate}))", t, by="instance")
        assert set(parts) <= set(recorded), (when, recorded, parts)
        for instance in recorded:
            assert abs(recorded[instance] - parts.get(instance, 0)) < 0.02, (when, instance, recorded, parts)
        expected = fleet.expected_shares("svc", t)
        observed = svc_shares(prometheus, "meshsplit:observed_share:ratio_rate1m", t)
        weight = svc_shares(prometheus, "meshsplit:weight_share:ratio", t)
        deviation = svc_shares(prometheus, "meshsplit:share_deviation:ratio_rate1m", t)
        print(f"svc {when}: observed {observed} weight share {weight} expected {expected}")
        check_shares(f"svc {when}", observed, weight, expected, deviation)
        assert set(weight) == {"v1", "v2", "v3"}, weight
        assert max(abs(d) for d in deviation.values()) < (TOLERANCE if t == fleet.end else 0.1), \
            (when, deviation)
    # The weights in force averaged over the pods (the previous rule) would be far off: v1 0.49
    # against 0.68.
    in_force = [fleet.weights_in_force(i, "svc", fleet.end) for i in range(len(PODS))]
    average = {u: statistics.mean(w[u] for w in in_force if u in w) for u in SVC_WEIGHTS["new"]}
    assert expected[1]["v1"] - average["v1"] / sum(average.values()) > 0.15, (expected, average)


def test_each_problem_raises_one_alert_with_its_envoys_counted(fleet):
    prometheus = fleet.prometheus
    ejected = prometheus.alerts("MeshsplitUpstreamEjected")
    # v2 ejected on pods 0 and 1: one alert, value 2.
    assert [(a["labels"]["service"], a["labels"]["upstream"], a["labels"]["plugin"], float(a["value"]))
            for a in ejected] == [("svc", "v2", PLUGIN_LABEL, 2.0)], ejected
    # Requests to a missing cluster on pods 5 (Envoy's names) and 6 (Istio's), whose connection
    # managers have one name: one alert, value 2. Pod 7's connection manager is another: its own.
    no_cluster = prometheus.alerts("MeshsplitNoCluster")
    assert sorted((a["labels"].get("envoy_http_conn_manager_prefix"), float(a["value"]), a["state"])
                  for a in no_cluster) \
        == [("meshsplit", 2.0, "firing"), ("outbound_0.0.0.0_9080", 1.0, "firing")], no_cluster
    assert prometheus.alerts("MeshsplitConfigRefused") == []
    # ramp's rollout goes on: its canary is healthy.
    assert prometheus.alerts("MeshsplitRolloutPaused") == []
    # The traffic follows the weights, and the unknown-service requests stay under 1 per second
    # (0.5 over the fleet): neither alert is pending, nor was it at any evaluation since the
    # check after the restart (the split's first seconds, while the guards eject v2, have a
    # minute's rate of mostly pre-ejection traffic; the alert's `for` is there for such).
    for alertname in ("MeshsplitShareOffWeight", "MeshsplitUnknownServiceRequests"):
        assert prometheus.alerts(alertname) == [], prometheus.api("alerts")
        since = math.ceil(time.time() - fleet.after_restart)
        assert instant(prometheus, f'count_over_time(ALERTS{{alertname="{alertname}"}}[{since}s])',
                       time.time(), by="alertstate") == {}, alertname
    # ... while svc is watched by MeshsplitShareOffWeight: 5 requests/s or more, and rules claiming
    # under 5 % of them.
    svc = f'plugin="{PLUGIN_LABEL}",service="svc"'
    assert instant(prometheus, f"sum(meshsplit:requests:rate1m{{{svc}}})", fleet.end, by="")[""] >= 5
    assert 0 < instant(prometheus, f"meshsplit:rule_share:ratio_rate1m{{{svc}}}", fleet.end, by="")[""] < 0.05
    # The unknown-service requests of pods 0 and 7 (two namings, two plugin names) are one series,
    # with all of them: the load's over the rule's 5 minutes (a test shorter than that reads
    # under the 0.5 per second they come at).
    unknown = instant(prometheus, "meshsplit:unknown_service:rate5m", fleet.end, by="plugin")
    sent = len(fleet.counted(["unknown"], fleet.end, window_s=300)[1]) / 300
    assert set(unknown) == {PLUGIN_LABEL} and abs(unknown[PLUGIN_LABEL] - sent) < 0.25 * sent, (unknown, sent)


def test_istio_names_feed_the_cluster_and_no_cluster_rules(fleet):
    prometheus = fleet.prometheus
    errors = prometheus.query("meshsplit:cluster_errors:ratio_rate1m", by="envoy_cluster_name")
    # v2 keeps failing on pod 7 (Istio's names, no guard): a quarter of v2's answers over the
    # fleet (pods 2, 4, 5, 6 answer it well) are 5xx.
    assert errors.get("v2", 0) > 0.1 and errors.get("v1") == 0, errors
    # Pod 7 alone carries Istio's names for its failing v2: its series reach the rule.
    istio_5xx = prometheus.query('sum(rate(envoy_cluster_upstream_rq{response_code_class="5xx",cluster_name="v2"}[1m]))', by="")
    assert istio_5xx.get("", 0) > 0, istio_5xx
    nc = prometheus.query("meshsplit:no_cluster:rate5m", by="envoy_http_conn_manager_prefix")
    assert nc.get("meshsplit", 0) > 0 and nc.get("outbound_0.0.0.0_9080", 0) > 0, nc


def dashboard_queries():
    """(where, query) of every dashboard query, with this fleet's plugin."""
    return [(where, expr.replace("$plugin", PLUGIN_LABEL))
            for where, expr in dashboard_module().queries(json.loads(DASHBOARD.read_text()))]


def test_every_dashboard_query_has_the_fleets_data_and_the_split_adds_up(fleet):
    """Every panel, annotation and variable query has data over the test for svc (or, NOT_FOR_SVC,
    for ramp); the split panel's observed share and weight share add up to 1 and are the load's
    for both services, the deviation panel ends within TOLERANCE for svc, the rule-hits panel
    reads pod 4's rule and the weight-changes annotation marks the rolling update and the
    rollout's step."""
    prometheus = fleet.prometheus
    queries = dict(dashboard_queries())
    assert len(queries) >= 18, queries

    def data(expr, service):
        expr = substituted(expr, service)
        if expr.startswith("label_values("):
            # Grafana's variable function: the values of a label over the series a selector matches.
            selector, label = expr[len("label_values("):-1].rsplit(", ", 1)
            return prometheus.api(f"label/{label}/values", **{"match[]": selector})
        return prometheus.api("query_range", query=expr, start=fleet.scraping, end=fleet.end, step=1)["result"]

    empty = {where for where, expr in queries.items() if not data(expr, "svc")}
    assert empty == set(NOT_FOR_SVC), {where: queries[where] for where in empty ^ set(NOT_FOR_SVC)}
    for where in NOT_FOR_SVC:
        assert data(queries[where], "ramp"), (where, queries[where])

    # The split: svc right after pod 2's restart and at the end; ramp at the end, after its step.
    for service, t in (("svc", fleet.after_restart), ("svc", fleet.end), ("ramp", fleet.end)):
        observed, weight, deviation = (
            instant(prometheus, substituted(queries[where], service), t)
            for where in (f"{SPLIT} A", f"{SPLIT} B", DEVIATION))
        expected = fleet.expected_shares(service, t)
        print(f"{service} at {t - fleet.load.started:.0f} s: observed {observed} weight {weight} "
              f"deviation {deviation} expected {expected}")
        check_shares(f"dashboard, {service}", observed, weight, expected, deviation)
        if service == "svc" and t == fleet.end:
            assert max(abs(d) for d in deviation.values()) < TOLERANCE, deviation
    assert weight == pytest.approx({n: w / 100 for n, w in RAMP_STEPS[1].items()}), weight

    # Rule hits: pod 4's rule (x-canary) is rule 0 of svc, on 1 in 10 of pod 4's requests.
    canary = len(fleet.counted(["canary"], fleet.end)[1])
    svc_requests = len(fleet.counted(["svc", "canary"], fleet.end)[1])
    hits = instant(prometheus, substituted(queries[f"{RULE_HITS} A"], "svc"), fleet.end, by="rule")
    assert set(hits) == {"0"} and abs(hits["0"] - canary / RATE_WINDOW_S) < 0.25 * canary / RATE_WINDOW_S, \
        (hits, canary)
    (share,) = instant(prometheus, substituted(queries[f"{RULE_HITS} B"], "svc"), fleet.end).values()
    assert abs(share - canary / svc_requests) < 0.01, (share, canary, svc_requests)

    # Ejections in range: the wasm pods' counters appeared at 1 with their first ejection; they count.
    ejections = instant(prometheus, substituted(queries['panel "Ejections in range" A'], "svc"), fleet.end)
    assert ejections.get("v2", 0) >= 2, ejections

    # Weight changes, once per service and upstream: svc's v2 (pod 2's new configuration gives it
    # 25 of 100 where it had 50 of 100; v1 keeps a half), and ramp's step (90/10 to 70/30), each
    # within the minute after it.
    def marks(service, start, end):
        result = prometheus.api("query_range", query=substituted(queries[WEIGHT_CHANGES], service),
                                start=start, end=end, step=1)["result"]
        return {s["metric"]["upstream"] for s in result}
    assert "v2" in marks("svc", fleet.restarted_at, fleet.restarted_at + 30), \
        marks("svc", fleet.restarted_at, fleet.restarted_at + 30)
    assert marks("ramp", fleet.step_at, fleet.step_at + 30) == set(RAMP_STEPS[1]), \
        marks("ramp", fleet.step_at, fleet.step_at + 30)


def nominal_weight_share():
    """svc's weight share over the fleet at the pods' nominal rates, with the weights in force
    after the restart."""
    shares, total = collections.Counter(), 0
    for index, pod in enumerate(PODS):
        cycle = request_cycle(pod.mix)
        rate = pod.rate * sum(KINDS[k][1] == "svc" for k in cycle) / len(cycle) if cycle else 0
        weights = dict(SVC_WEIGHTS["new" if index == RESTARTED else pod.config])
        if pod.failing and pod.guard:
            weights["v2"] = 0
        for name, weight in weights.items():
            shares[name] += rate * weight / sum(weights.values())
        total += rate
    return {name: share / total for name, share in shares.items()}


def test_status_reads_the_fleet(fleet):
    pods = fleet.pods
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
    expected = nominal_weight_share()
    for service in svc:
        for u in service["upstreams"]:
            if service["plugin"] == PLUGIN_LABEL:
                assert abs(u["weight_share"] - expected[u["upstream"]]) < TOLERANCE + 0.03, (u, expected)
    ejected = sum(u["ejected_on"] for s in svc for u in s["upstreams"] if u["upstream"] == "v2")
    assert ejected == 2, svc
    text = subprocess.run(args[:2] + args[5:], capture_output=True, text=True, timeout=60).stdout
    assert text.startswith(f"fleet of {len(PODS) + 1} Envoys, {len(PODS)} read"), text
