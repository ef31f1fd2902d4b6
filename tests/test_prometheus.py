"""The shipped Prometheus rules (observability/prometheus/meshsplit-rules.yaml) in a real Prometheus
that scrapes a real Envoy running meshsplit (wasm and native builds) every second: every rule
evaluates without error, the observed-share recording rule matches the configured weights, and
an ejection by the guard makes the ejection alert pending within a bounded wait."""
import json
import math
import pathlib
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import harness
import stats
from test_bundle import require_tool
from test_dashboard import dashboard_module
from test_guard import Load

pytestmark = pytest.mark.builds("wasm", "native")

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "observability" / "prometheus" / "meshsplit-rules.yaml"
DASHBOARD = ROOT / "observability" / "grafana" / "meshsplit-dashboard.json"
WEIGHTS = {"v1": 70, "v2": 20, "v3": 10}
# The guard ejects v2 within its 2 s window once it fails, and keeps it out for 30 s: longer than
# the wait below, so the ejected gauge stays 1 all along.
GUARD = {"error_rate": 0.5, "min_requests": 20, "window_s": 2, "eject_s": 30, "max_ejected_percent": 50}
# A rule only requests with `x-canary: true` match (the dashboard's rule panel reads its hits), and a
# second service with a guarded rollout (its paused gauge exists only with both).
PLUGIN = {"services": [
    {"name": "svc", "guard": GUARD,
     "upstreams": [{"name": name, "cluster": name, "weight": weight} for name, weight in WEIGHTS.items()],
     "rules": [{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v3"}]},
    {"name": "ramp", "guard": GUARD,
     "upstreams": [{"name": "v1", "cluster": "v1", "weight": 100}, {"name": "v2", "cluster": "v2", "weight": 0}],
     "rollout": {"start": "2026-01-01T00:00:00Z", "steps": [
         {"at_s": 0, "weights": {"v1": 90, "v2": 10}}, {"at_s": 315360000, "weights": {"v2": 100}}]}},
]}
# Requests whose split the observed-share rule is checked on, and the tolerance: each upstream's
# share within 0.04 of its weight's (the sampling's standard deviation is at most 0.0073 at this
# size; the rest covers rate()'s extrapolation over series first scraped a second apart).
SAMPLE, TOLERANCE = 4000, 0.04
# From the ejected gauge in Envoy's stats to the alert pending in Prometheus: a scrape (1 s) and
# an evaluation of the rule (1 s). The bound is for a loaded machine: the waits end as soon as
# the alert shows (before, with 8 s, the closest calls took 5.8 s).
ALERT_BOUND_S = 20
# Any other wait on Prometheus (rules evaluated, series scraped and recorded): it ends as soon as
# what it waits for shows, and took up to 5.6 s of the 10 s it had before.
WAIT_S = 30


def prometheus_bin():
    """The prometheus server binary (Debian package `prometheus`), or None."""
    debian = pathlib.Path("/usr/bin/prometheus")
    return shutil.which("prometheus") or (str(debian) if debian.exists() else None)


class Prometheus:
    """A Prometheus server on loopback with its own storage in `workdir`, scraping Envoy's admin
    /stats/prometheus every second and evaluating the shipped rules every second."""

    def __init__(self, binary, admin_port, workdir, targets=None):
        """Scrapes the admin endpoint on `admin_port`, or every one of `targets` (ports)."""
        self.port = harness.free_port()
        ports = targets or [admin_port]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            assert harness.wait_for(self.ready, timeout=WAIT_S), self.log_path.read_text()[-3000:]
        except BaseException:
            self.stop()
            raise

    def ready(self):
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr, by="upstream"):
        """{value of label `by` (or "" if none): value} of an instant query."""
        return {s["metric"].get(by, ""): float(s["value"][1])
                for s in self.api("query", query=expr)["result"]}

    def alerts(self, name):
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self):
        harness.terminate(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def setup(build, tmp_path_factory):
    """(Envoy, its upstream servers, Prometheus scraping it) for the build under test."""
    binary = prometheus_bin()
    if not binary:
        require_tool(False, "prometheus (Debian package `prometheus`): the real-Prometheus test")
    with harness.upstream_servers(*WEIGHTS) as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(PLUGIN, ports, harness.free_port(), harness.free_port(), build=build)
        with harness.Envoy(config, tmp_path_factory.mktemp("envoy")) as envoy:
            prometheus = Prometheus(binary, envoy.admin_port, tmp_path_factory.mktemp("prometheus"))
            try:
                yield envoy, servers, prometheus
            finally:
                prometheus.stop()


def test_every_rule_loads_and_evaluates_without_error(setup):
    envoy, _, prometheus = setup
    harness.send(envoy.port, 50, {"Host": "svc"})

    def rules():
        return [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]

    # Every rule evaluated at least once (Prometheus reports lastEvaluation and health).
    assert harness.wait_for(lambda: all(r.get("health") == "ok" for r in rules()), timeout=WAIT_S), rules()
    names = {r["name"] for r in rules()}
    assert {"meshsplit:observed_share:ratio_rate1m", "MeshsplitUpstreamEjected",
            "MeshsplitShareOffWeight"} <= names
    assert all(not r.get("lastError") for r in rules()), [r for r in rules() if r.get("lastError")]
    # The target is up: Prometheus parses all of Envoy's /stats/prometheus.
    assert harness.wait_for(lambda: prometheus.query('up{job="envoy"}') == {"": 1.0}, timeout=WAIT_S), \
        prometheus.api("targets")


def test_observed_share_recording_rule_matches_the_weights(setup):
    envoy, _, prometheus = setup
    # Every upstream's series must exist before the measured traffic (the wasm filter defines a
    # counter on its first use), so rate() sees the whole of it.
    harness.send(envoy.port, 200, {"Host": "svc"})
    selector = 'meshsplit_requests_total{plugin="meshsplit",service="svc"}'
    assert harness.wait_for(lambda: set(prometheus.query(selector)) == set(WEIGHTS), timeout=WAIT_S), \
        prometheus.query(selector)
    time.sleep(2)
    before = prometheus.query(selector)
    seen = harness.send(envoy.port, SAMPLE, {"Host": "svc"})
    assert sum(seen.values()) == SAMPLE and set(seen) == set(WEIGHTS), seen
    expected_total = {n: before[n] for n in WEIGHTS}
    # Flushed (half-second tick), scraped (1 s) and recorded (1 s).
    for name, count in seen.items():
        expected_total[name] += count
    assert harness.wait_for(lambda: prometheus.query(selector) == expected_total, timeout=WAIT_S), \
        (prometheus.query(selector), expected_total)
    # The share recorded by an evaluation of the rule at least a second after the scrape that
    # brought the totals in (so after that scrape's samples are stored), however late a busy
    # machine makes it.
    scraped = max(prometheus.query(f"timestamp({selector})").values())
    observed = 'meshsplit:observed_share:ratio_rate1m{service="svc"}'

    def recorded_after_the_scrape():
        evaluated = prometheus.query(f"timestamp({observed})").values()
        return len(evaluated) == len(WEIGHTS) and min(evaluated) >= scraped + 1
    assert harness.wait_for(recorded_after_the_scrape, timeout=WAIT_S), \
        (scraped, prometheus.query(f"timestamp({observed})"))
    share = prometheus.query(observed)
    total = sum(WEIGHTS.values())
    assert set(share) == set(WEIGHTS), share
    # One check per upstream, each at 5.5 standard deviations or more (see TOLERANCE).
    stats.count_check(len(WEIGHTS))
    for name, weight in WEIGHTS.items():
        assert abs(share[name] - weight / total) <= TOLERANCE, (name, share, seen)
    assert math.isclose(sum(share.values()), 1.0, abs_tol=1e-9), share
    print(f"observed share {share} of {SAMPLE} requests: {dict(seen)}")
    # Configured vs observed: the weight in force's share, and the deviation within the tolerance.
    weight_share = prometheus.query('meshsplit:weight_share:ratio{service="svc"}')
    assert weight_share == pytest.approx({n: w / total for n, w in WEIGHTS.items()}), weight_share
    deviation = prometheus.query('meshsplit:share_deviation:ratio_rate1m{service="svc"}')
    assert set(deviation) == set(WEIGHTS) and all(abs(d) <= TOLERANCE for d in deviation.values()), deviation
    # Nothing is wrong, so no alert is pending: in particular not MeshsplitShareOffWeight.
    assert prometheus.api("alerts")["alerts"] == []
    # No upstream answered an error.
    errors = prometheus.query("meshsplit:cluster_errors:ratio_rate1m", by="envoy_cluster_name")
    assert errors == {name: 0.0 for name in WEIGHTS}, errors


def test_an_ejection_by_the_guard_makes_the_ejection_alert_pending(setup):
    envoy, servers, prometheus = setup
    assert prometheus.alerts("MeshsplitUpstreamEjected") == []
    full = f"{harness.stats_prefix()}.meshsplit.meshsplit.svc.v2.ejected"
    load = Load(envoy.port, limit_s=40)
    try:
        servers["v2"].status = 503
        # Ejected within the guard's window (2 s) plus the ticks (and a busy machine's delays).
        assert harness.wait_for(lambda: envoy.stats(full).get(full) == 1, timeout=WAIT_S), \
            envoy.stats(full)
        ejected_at = time.monotonic()

        def pending():
            return [a for a in prometheus.alerts("MeshsplitUpstreamEjected")
                    if a["labels"].get("upstream") == "v2" and a["state"] in ("pending", "firing")]

        assert harness.wait_for(pending, timeout=ALERT_BOUND_S), prometheus.api("alerts")
        waited = time.monotonic() - ejected_at
        alert = pending()[0]
        assert alert["labels"]["service"] == "svc" and alert["labels"]["plugin"] == "meshsplit", alert
        assert alert["labels"]["severity"] == "warning", alert
        assert "svc/v2" in alert["annotations"]["summary"], alert
        # Only v2: v1 and v3 are healthy.
        assert {a["labels"]["upstream"] for a in prometheus.alerts("MeshsplitUpstreamEjected")} == {"v2"}
        # The weight in force followed: 0 for v2, and the recorded weight share with it.
        v2_share = 'meshsplit:weight_share:ratio{service="svc",upstream="v2"}'
        assert harness.wait_for(lambda: prometheus.query(v2_share) == {"v2": 0.0}, timeout=WAIT_S), \
            prometheus.query('meshsplit:weight_share:ratio{service="svc"}')
        print(f"ejection alert pending {waited:.1f} s after the ejected gauge showed in Envoy's stats")
    finally:
        load.close()
        servers["v2"].status = 200


# What Grafana puts in place of the dashboard's variables when it sends a query: this test's
# plugin, every cluster, and its built-in intervals (a range as long as the test's); `$service`
# takes each service in turn, as the repeated row does.
VARIABLES = {"$plugin": "meshsplit", "$cluster": ".*", "$__rate_interval": "1m", "$__range": "10m"}


def substituted(expr, service="svc", plugin=VARIABLES["$plugin"]):
    """A dashboard query as Grafana sends it for `service` (and `plugin`): every variable replaced
    (a label_replace's `$1`, a regexp group, is no variable: Grafana leaves it to Prometheus)."""
    for name, value in {**VARIABLES, "$plugin": plugin, "$service": service}.items():
        expr = expr.replace(name, value)
    assert not re.search(r"\$(?!\d)", expr), expr
    return expr
SERVICES = ("svc", "ramp")
# Panels that have data only after the event they count: a configuration refused by the wasm
# filter (its counter is defined on the first refusal, and the native build has none).
REFUSED_PANEL = 'panel "Envoys refusing their latest configuration" A'


def test_every_dashboard_query_returns_data(setup):
    """Each query of the committed dashboard (every panel target, annotation and variable) against
    the real Prometheus: it runs without error and returns data for the service under test. Runs
    after the ejection test, so the guard's series and the ejection alert are in range."""
    envoy, _, prometheus = setup
    harness.send(envoy.port, 100, {"Host": "svc"})
    harness.send(envoy.port, 10, {"Host": "svc", "x-canary": "true"})
    harness.send(envoy.port, 100, {"Host": "ramp"})
    harness.send(envoy.port, 5, {"Host": "nowhere"})
    model = json.loads(DASHBOARD.read_text())
    queries = list(dashboard_module().queries(model))
    assert len(queries) >= 15, queries
    # The series of the traffic just sent reach the recording rules (flush, scrape, evaluation).
    rule_hits = 'meshsplit:rule_share:ratio_rate1m{service="svc"}'
    assert harness.wait_for(lambda: prometheus.query(rule_hits), timeout=WAIT_S), rule_hits
    unknown = "meshsplit:unknown_service:rate5m"
    # (Recorded once the wasm filter's counter exists: its first value is the 5 requests, so the
    # rate reads 0 until it grows again.)
    assert harness.wait_for(lambda: "meshsplit" in prometheus.query(unknown, by="plugin"),
                            timeout=WAIT_S), prometheus.query(unknown, by="plugin")
    end = time.time()

    def data(expr):
        if expr.startswith("label_values("):
            # Grafana's variable function: the values of a label over the series a selector matches.
            selector, label = expr[len("label_values("):-1].rsplit(", ", 1)
            return prometheus.api(f"label/{label}/values", **{"match[]": selector})
        return prometheus.api("query_range", query=expr, start=end - 600, end=end, step=1)["result"]

    # A query has data when it returns some for one of the services: the paused-rollout gauge
    # exists only for `ramp` (the service with a rollout), rule hits only for `svc`.
    empty = [(where, expr) for where, expr in queries
             if not any(data(substituted(expr, service)) for service in SERVICES)]
    # The native build has no refused-configuration gauge (docs/native.md).
    expected = [] if harness.BUILD == "wasm" else [REFUSED_PANEL]
    assert [where for where, _ in empty] == expected, empty


@pytest.mark.builds("wasm")
def test_a_refused_configuration_shows_on_the_dashboard_and_fires_its_alert(build, tmp_path):
    """A live update the wasm filter refuses (ECDS file with an invalid weight): the dashboard's
    refused-configurations panel reads 1 and MeshsplitConfigRefused fires (it has no `for`), and
    stays while the configuration is refused; an accepted one clears both."""
    import test_reload
    binary = prometheus_bin()
    if not binary:
        require_tool(False, "prometheus (Debian package `prometheus`): the real-Prometheus test")
    ecds, envoy_dir = tmp_path / "ecds", tmp_path / "envoy"
    ecds.mkdir()
    envoy_dir.mkdir()
    good = test_reload.plugin({"v1": 1, "v2": 0})
    test_reload.publish(ecds, 1, good)
    (where, expr), = [(w, e) for w, e in dashboard_module().queries(json.loads(DASHBOARD.read_text()))
                      if w == REFUSED_PANEL]
    expr = substituted(expr)
    with harness.upstreams("v1", "v2") as ports, \
            harness.Envoy(test_reload.ecds_bootstrap(ecds, ports, good), envoy_dir) as envoy:
        prometheus = Prometheus(binary, envoy.admin_port, tmp_path)
        try:
            assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"v1": 10}
            assert prometheus.alerts("MeshsplitConfigRefused") == []
            test_reload.publish(ecds, 2, test_reload.plugin({"v1": 5000000, "v2": 1}))

            def firing():
                return [a for a in prometheus.alerts("MeshsplitConfigRefused") if a["state"] == "firing"]

            assert harness.wait_for(firing, timeout=ALERT_BOUND_S + 5), prometheus.api("alerts")
            assert firing()[0]["labels"]["plugin"] == "meshsplit", firing()
            assert harness.wait_for(lambda: prometheus.query(expr, by="plugin") == {"meshsplit": 1.0},
                                    timeout=WAIT_S), (where, expr, prometheus.query(expr, by="plugin"))
            # The last good configuration still serves, and the alert stays while it is refused.
            assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"v1": 10}
            time.sleep(3)
            assert firing(), prometheus.api("alerts")
            # A configuration it accepts: the panel reads 0 and the alert resolves.
            test_reload.publish(ecds, 3, test_reload.plugin({"v1": 0, "v2": 1}))
            assert harness.wait_for(lambda: harness.send(envoy.port, 5, {"Host": "svc"}) == {"v2": 5},
                                    timeout=WAIT_S)
            assert harness.wait_for(lambda: prometheus.query(expr, by="plugin") == {"meshsplit": 0.0}
                                    and not prometheus.alerts("MeshsplitConfigRefused"),
                                    timeout=ALERT_BOUND_S + 5), prometheus.api("alerts")
        finally:
            prometheus.stop()
