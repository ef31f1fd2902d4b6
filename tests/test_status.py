"""The weight in force as gauges, and `meshsplit status`, through real Envoy: the gauges read
exactly the configured weights, each rollout step, and 0 while the guard ejects an upstream;
`meshsplit status` shows exact counters, and observed shares that pass a chi-square test."""
import json
import subprocess
import time
import urllib.request

import pytest

import harness
import stats
from stats import chi_square
from test_guard import DECISION_S, answers_after_ejection
from test_metrics import prometheus_series
from test_cli import cli  # noqa: F401  (the session fixture that builds the command)

BUILDS = pytest.mark.builds("wasm", "native", "specifier")
# The rollout's second step comes this long after its start.
STEP_S = 3
# Requests sent during the observed interval; a chi-square p-value below P_MIN fails.
SAMPLE = 1000
P_MIN = stats.P_MIN


def rfc3339(unix_s):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def split_plugin(start):
    """`fixed`: 70/30 with a rule; `roll`: 100/0 until `start`, then 80/20, then 40/60."""
    return {"on_unknown_service": "reject", "services": [
        {"name": "fixed", "upstreams": [
            {"name": "v1", "cluster": "v1", "weight": 70},
            {"name": "v2", "cluster": "v2", "weight": 30}],
         "rules": [{"match": {"headers": [{"name": "x-beta", "exact": "1"}]}, "upstream": "v2"}]},
        {"name": "roll", "upstreams": [
            {"name": "v1", "cluster": "v1", "weight": 100},
            {"name": "v2", "cluster": "v2", "weight": 0}],
         "rollout": {"start": rfc3339(start), "steps": [
             {"at_s": 0, "weights": {"v1": 80, "v2": 20}},
             {"at_s": STEP_S, "weights": {"v1": 40, "v2": 60}}]}}]}


@pytest.fixture(scope="module")
def split(deploy):
    """(Envoy, rollout start) with `split_plugin`; the rollout starts 3 s after Envoy does."""
    start = int(time.time()) + 3
    return deploy(split_plugin(start), ["v1", "v2"]), start


def weights(envoy, service):
    prefix = f"{harness.stats_prefix()}.meshsplit.meshsplit.{service}."
    stats = envoy.stats(prefix)
    return [stats.get(f"{prefix}{u}.weight") for u in ("v1", "v2")]


def status(cli, envoy, *args):
    """`meshsplit status --admin` of `envoy`, as JSON."""
    out = subprocess.run([str(cli), "status", "--admin", f"http://127.0.0.1:{envoy.admin_port}",
                          "--json", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def services(report):
    (plugin,) = report["plugins"]
    assert plugin["plugin"] == "meshsplit"
    return {s["service"]: s for s in plugin["services"]}


def upstreams(service):
    return {u["upstream"]: u for u in service["upstreams"]}


@BUILDS
def test_weight_gauges_show_the_configured_weights_then_each_rollout_step(split, cli):
    envoy, start = split
    # Set when configured: no request needed.
    assert weights(envoy, "fixed") == [70, 30]
    if time.time() < start - 0.5:
        assert weights(envoy, "roll") == [100, 0]
    labels = frozenset(dict(plugin="meshsplit", service="fixed", upstream="v1").items())
    assert prometheus_series(envoy, "meshsplit_weight")[labels] == 70

    # A trickle of requests: the native builds tick from their streams. A step shows on the next
    # tick (500 ms), later on a busy machine: the first step has until the second, the second
    # 15 s.
    def at(expected, until, timeout):
        def holds():
            harness.send(envoy.port, 4, {"Host": "roll"})
            return weights(envoy, "roll") == expected
        time.sleep(max(0.0, until - time.time()))
        assert harness.wait_for(holds, timeout=timeout), (expected, weights(envoy, "roll"))

    at([80, 20], start, STEP_S)
    at([40, 60], start + STEP_S, 15)
    roll = upstreams(services(status(cli, envoy, "--interval", "0"))["roll"])
    assert (roll["v1"]["weight"], roll["v2"]["weight"]) == (40, 60)
    assert roll["v2"]["source"] == "rollout step 2 of 2"
    assert roll["v2"]["weight_share"] == 0.6


@BUILDS
def test_status_shows_exact_counters_and_shares_over_the_interval(build, split, cli):
    envoy, _ = split
    seen = harness.send(envoy.port, 600, {"Host": "fixed"})
    harness.send(envoy.port, 40, {"Host": "fixed", "x-beta": "1"})
    harness.send(envoy.port, 20, {"Host": "nope"})
    expected = (seen["v1"], seen["v2"] + 40)

    # Each worker adds its counts on its own housekeeping tick: wait for every counter.
    expected = (*expected, 20, 20)

    def counted():
        report = status(cli, envoy, "--interval", "0")
        fixed = upstreams(services(report)["fixed"])
        plugin = report["plugins"][0]
        return (fixed["v1"]["requests"], fixed["v2"]["requests"],
                plugin["unknown_service"], plugin["rejected"])
    assert harness.wait_for(lambda: counted() == expected, timeout=15), (counted(), expected)
    report = status(cli, envoy, "--interval", "0", "--service", "fixed")
    fixed = services(report)["fixed"]
    assert list(services(report)) == ["fixed"]
    assert fixed["rule_hits"] == {"0": 40}
    assert (report["plugins"][0]["unknown_service"], report["plugins"][0]["rejected"]) == (20, 20)
    assert report["plugins"][0]["config_failures"] == 0
    # The cluster specifier selects no cluster for an unknown service: Envoy counts it there too.
    assert report["no_cluster"] == (20 if build == "specifier" else 0)
    assert upstreams(fixed)["v1"]["source"] == "config"

    # Exactly SAMPLE requests during an 8 s interval: the deltas count them all. The command has
    # 2 s to take its first reading, the requests 6 s to be sent and flushed (under a second on
    # a quiet machine, up to 3 s on a busy one).
    run = subprocess.Popen([str(cli), "status", "--admin", f"http://127.0.0.1:{envoy.admin_port}",
                            "--json", "--interval", "8", "--service", "fixed"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    sent = harness.send(envoy.port, SAMPLE, {"Host": "fixed"})
    out, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    fixed = upstreams(services(json.loads(out))["fixed"])
    observed = [fixed["v1"]["requests_in_interval"], fixed["v2"]["requests_in_interval"]]
    assert observed == [sent["v1"], sent["v2"]]
    assert sum(observed) == SAMPLE
    _, p = chi_square(observed, [70, 30])
    assert p > P_MIN, (observed, p)
    share = fixed["v1"]["observed_share"]
    assert share == observed[0] / SAMPLE

    # The table a person reads, and the same stats piped in.
    text = subprocess.run([str(cli), "status", "--admin", f"http://127.0.0.1:{envoy.admin_port}",
                           "--interval", "0"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "plugin meshsplit: 0 refused configurations, 20 unknown-service requests (20 answered 404)" \
        in text.stdout, text.stdout
    assert "    rule hits: #0 40" in text.stdout, text.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats", timeout=5) as r:
        stats_text = r.read()
    piped = subprocess.run([str(cli), "status", "--admin", "-", "--json"], input=stats_text,
                           capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    piped_fixed = upstreams(services(json.loads(piped.stdout))["fixed"])
    assert (piped_fixed["v1"]["requests"], piped_fixed["v2"]["requests"]) == \
        (expected[0] + sent["v1"], expected[1] + sent["v2"])


GUARDED = {"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "v1", "weight": 50},
    {"name": "v2", "cluster": "v2", "weight": 50}],
    "guard": {"error_rate": 0.5, "min_requests": 20, "window_s": 2, "eject_s": 30}}]}


@pytest.mark.builds("wasm", "native")
def test_an_ejected_upstream_weighs_zero_and_status_says_why(build, cli, tmp_path):
    """Nothing listens on v2's port: the guard ejects it."""
    with harness.upstreams("v1") as ports:
        ports["v2"] = harness.free_port()
        config = harness.bootstrap(GUARDED, ports, harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            assert weights(envoy, "svc") == [50, 50]
            answers_after_ejection(envoy, "v2", DECISION_S)
            assert harness.wait_for(lambda: weights(envoy, "svc") == [50, 0], timeout=15), \
                weights(envoy, "svc")
            svc = upstreams(services(status(cli, envoy, "--interval", "0"))["svc"])
            assert (svc["v2"]["weight"], svc["v2"]["ejected"], svc["v2"]["ejections"]) == (0, True, 1)
            assert svc["v2"]["source"] == "ejected by the guard"
            assert svc["v1"]["source"] == "config"


def test_status_names_an_admin_endpoint_it_cannot_read(cli):
    port = harness.free_port()
    out = subprocess.run([str(cli), "status", "--admin", f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: cannot reach Envoy's admin endpoint at http://127.0.0.1:{port}: ")
    # Something answers, but without meshsplit stats (an upstream answers any path).
    with harness.upstreams("plain") as ports:
        url = f"http://127.0.0.1:{ports['plain']}"
        out = subprocess.run([str(cli), "status", "--admin", url], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: no meshsplit stats in {url}: "), out.stderr
    out = subprocess.run([str(cli), "status", "--admin", "-"], input="server.live: 1\n",
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr.startswith("error: no meshsplit stats in standard input")) \
        == (2, True), out.stderr


@pytest.mark.builds("wasm", "native")
def test_a_live_update_owns_the_weight_gauges_and_zeroes_a_removed_upstream(build, tmp_path):
    """The old configuration has a rollout that moves after the update, and a slow request keeps
    it alive meanwhile: its ticks must not set the gauges back; v3, gone, shows 0."""
    from test_guard_updates import SLOW, ecds_bootstrap_for, hold_open, publish_for

    start = int(time.time()) + 6
    old = {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "v1", "weight": 60},
        {"name": "v2", "cluster": "v2", "weight": 30},
        {"name": "v3", "cluster": "v3", "weight": 10}],
        "rollout": {"start": rfc3339(start), "steps": [
            {"at_s": 0, "weights": {"v1": 10, "v2": 10, "v3": 80}}]}}, SLOW]}
    new = {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "v1", "weight": 50},
        {"name": "v2", "cluster": "v2", "weight": 50}]}, SLOW]}
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    publish_for(build, ecds, 1, old)
    with harness.upstreams("v1", "v2", "v3") as ports, \
            harness.upstreams("slow", delay=10.0) as slow:
        with harness.Envoy(ecds_bootstrap_for(build, ecds, ports | slow, old), tmp_path) as envoy:
            def gauges():
                prefix = f"{harness.stats_prefix()}.meshsplit.meshsplit.svc."
                stats = envoy.stats(prefix)
                return [stats.get(f"{prefix}{u}.weight") for u in ("v1", "v2", "v3")]

            if time.time() < start - 1:
                assert gauges() == [60, 30, 10]
            held = hold_open(envoy.port)
            time.sleep(0.5)
            publish_for(build, ecds, 2, new)

            def settled():
                harness.send(envoy.port, 4, {"Host": "svc"})
                return gauges() == [50, 50, 0]
            assert harness.wait_for(settled, timeout=15), gauges()
            # Past the old configuration's rollout start, with its root still alive.
            while time.time() < start + 1.5:
                assert settled(), gauges()
                time.sleep(0.2)
            held.join(timeout=20)
            assert gauges() == [50, 50, 0]


@pytest.mark.builds("wasm", "native")
def test_watch_reads_the_configuration_again_after_a_live_update(build, cli, tmp_path):
    """`status --watch` follows a live update: a service the update adds shows in the frames
    after it with its weights from the configuration in force (read once, the watch would show
    them from the gauges with their source unknown, `-`, until it exits)."""
    from test_guard_updates import ecds_bootstrap_for, publish_for

    old = {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "v1", "weight": 50},
        {"name": "v2", "cluster": "v2", "weight": 50}]}]}
    new = {"services": old["services"] + [{"name": "added", "hosts": ["added"], "upstreams": [
        {"name": "a1", "cluster": "v1", "weight": 70},
        {"name": "a2", "cluster": "v2", "weight": 30}]}]}
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    publish_for(build, ecds, 1, old)
    with harness.upstreams("v1", "v2") as ports, \
            harness.Envoy(ecds_bootstrap_for(build, ecds, ports, old), tmp_path) as envoy:
        watch = subprocess.Popen(
            [str(cli), "status", "--admin", f"http://127.0.0.1:{envoy.admin_port}", "--watch",
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = json.loads(watch.stdout.readline())
            assert "added" not in json.dumps(first), first
            publish_for(build, ecds, 2, new)
            def added_weights(frame):
                """The added service's upstreams: (weight, where it comes from)."""
                return {u["upstream"]: (u["weight"], u["source"]) for p in frame["plugins"]
                        for s in p["services"] if s["service"] == "added" for u in s["upstreams"]}

            # Frames come every second; the update lands within one. Bounded: 15 frames.
            for _ in range(15):
                harness.send(envoy.port, 4, {"Host": "added"})
                frame = json.loads(watch.stdout.readline())
                if added_weights(frame) == {"a1": (70, "config"), "a2": (30, "config")}:
                    break
            else:
                raise AssertionError(f"no frame shows the added service's weights: {frame}")
        finally:
            watch.terminate()
            watch.wait(timeout=10)


@pytest.mark.builds("wasm")
def test_a_refused_config_is_flagged_only_until_a_good_one_is_in_force(build, cli, tmp_path):
    """REFUSED CONFIG follows the latest configuration: flagged while it is refused, not once a
    configuration the filter accepts replaced it (the lifetime counter still says 1)."""
    from test_guard_updates import ecds_bootstrap_for, publish_for

    good = {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "v1", "weight": 50}, {"name": "v2", "cluster": "v2", "weight": 50}]}]}
    bad = {"services": [{"name": "svc", "upstreams": [{"name": "v1", "cluster": "v1", "weight": -1}]}]}
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    publish_for(build, ecds, 1, good)
    with harness.upstreams("v1", "v2") as ports, \
            harness.Envoy(ecds_bootstrap_for(build, ecds, ports, good), tmp_path) as envoy:
        def text():
            out = subprocess.run([str(cli), "status", "--admin", f"http://127.0.0.1:{envoy.admin_port}",
                                  "--interval", "0"], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            return out.stdout

        assert "REFUSED CONFIG" not in text()
        publish_for(build, ecds, 2, bad)
        assert harness.wait_for(lambda: "<< REFUSED CONFIG" in text(), timeout=30), text()
        # A corrected configuration (one identical to the one in force is no update to Envoy,
        # so the filter never hears of it: docs/alerts.md says so).
        fixed = json.loads(json.dumps(good))
        fixed["services"][0]["upstreams"][0]["weight"] = 60
        publish_for(build, ecds, 3, fixed)
        assert harness.wait_for(lambda: "REFUSED CONFIG" not in text(), timeout=30), text()
        assert "1 refused configuration," in text()


@pytest.mark.builds("wasm", "native")
def test_watch_across_a_restart_shows_the_failed_read_then_the_traffic_since(build, cli, tmp_path):
    """An Envoy restarted under `status --watch`: while it is down a frame says the read failed
    (not the last table again); the first frame after it shows the requests counted since the
    restart (its counters started again from 0), not an interval without traffic."""
    with harness.upstreams("v1", "v2") as ports:
        plugin = {"services": [{"name": "svc", "upstreams": [
            {"name": "v1", "cluster": "v1", "weight": 50}, {"name": "v2", "cluster": "v2", "weight": 50}]}]}
        config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port(), build=build)
        envoy = harness.Envoy(config, tmp_path).start()
        watch = subprocess.Popen(
            [str(cli), "status", "--admin", f"http://127.0.0.1:{envoy.admin_port}", "--watch",
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            harness.send(envoy.port, 200, {"Host": "svc"})
            json.loads(watch.stdout.readline())
            envoy.stop()
            # Bounded: 10 frames, one a second.
            for _ in range(10):
                frame = json.loads(watch.stdout.readline())
                if "error" in frame:
                    break
            else:
                raise AssertionError("no frame said the read failed")
            assert "cannot reach Envoy's admin endpoint" in frame["error"], frame
            envoy.start()
            harness.send(envoy.port, 40, {"Host": "svc"})
            # The first frame that has the requests (a frame may come before the filter's counters
            # reach Envoy's stats, its plugin already there by its config gauge).
            for _ in range(10):
                frame = json.loads(watch.stdout.readline())
                services = [s for p in frame.get("plugins", []) for s in p["services"]]
                if any(s["requests_in_interval"] for s in services):
                    break
            (service,) = services
            # Fewer than the 200 before the restart: its counters started again. Every request
            # since the restart counts in this first interval.
            assert service["requests_in_interval"] == 40, frame
            assert sum(u["observed_share"] for u in service["upstreams"]) == pytest.approx(1)
        finally:
            watch.terminate()
            watch.wait(timeout=10)
            envoy.stop()


@BUILDS
def test_check_clusters_flags_only_requests_to_a_missing_cluster_in_the_interval(build, cli, tmp_path):
    """`<< CHECK CLUSTERS` marks requests that found no cluster during the interval, not the
    lifetime count: a frame after the misrouted requests stopped shows the total unflagged."""
    plugin = {"services": [
        {"name": "svc", "upstreams": [{"name": "v1", "cluster": "v1", "weight": 100}]},
        {"name": "gone", "upstreams": [{"name": "v9", "cluster": "v9", "weight": 100}]}]}
    with harness.upstreams("v1") as ports:
        config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port(), build=build)
        with harness.Envoy(config, tmp_path) as envoy:
            admin = f"http://127.0.0.1:{envoy.admin_port}"

            def text(*args):
                out = subprocess.run([str(cli), "status", "--admin", admin, *args],
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stderr
                return out.stdout

            def no_cluster_line(out):
                lines = [line for line in out.splitlines() if "cluster Envoy does not have" in line]
                assert len(lines) == 1, out
                return lines[0]

            answered = harness.send(envoy.port, 10, {"Host": "gone"})
            assert sum(answered.values()) == 10 and not answered["v1"], answered
            assert harness.wait_for(
                lambda: no_cluster_line(text("--interval", "0")).startswith("10 requests"), timeout=15)
            # An interval with traffic to a configured cluster only: the 10 are history.
            run = subprocess.Popen([str(cli), "status", "--admin", admin, "--interval", "5"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(2.0)
            assert harness.send(envoy.port, 20, {"Host": "svc"})["v1"] == 20
            out, err = run.communicate(timeout=30)
            assert run.returncode == 0, err
            line = no_cluster_line(out)
            assert line.startswith("10 requests") and "CHECK CLUSTERS" not in line, out
            # An interval in which a request finds no cluster: flagged. The command has 2 s to take
            # its first reading (a few ms when idle) and the requests 4 s to reach Envoy's stats.
            run = subprocess.Popen([str(cli), "status", "--admin", admin, "--interval", "6"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(2.0)
            harness.send(envoy.port, 5, {"Host": "gone"})
            out, err = run.communicate(timeout=30)
            assert run.returncode == 0, err
            line = no_cluster_line(out)
            assert line.startswith("15 requests") and line.endswith("<< CHECK CLUSTERS"), out
