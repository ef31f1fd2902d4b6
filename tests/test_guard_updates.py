"""The guard across live updates and at the largest size the limits allow, through real Envoy:
only the newest configuration decides, gauges follow it, metric definitions do not pile up, and
a tick's cost does not grow with the window."""
import contextlib
import http.client
import json
import os
import threading
import time
import urllib.request

import pytest

import harness
import stats
from stats import chi_square
from test_guard import Load
from test_reload import ecds_bootstrap, publish

P_MIN = stats.P_MIN


def guarded(guard, weights=None, extra_services=()):
    weights = weights or {"v1": 1, "v2": 1}
    settings = dict({"error_rate": 0.5, "min_requests": 20, "window_s": 2, "eject_s": 30,
                     "max_ejected_percent": 50}, **guard)
    services = [{"name": "svc", "guard": settings, "upstreams": [
        {"name": n, "cluster": n, "weight": w} for n, w in weights.items()]}]
    return {"services": services + list(extra_services)}


def unguarded(weights=None):
    weights = weights or {"v1": 1, "v2": 1}
    return {"services": [{"name": "svc", "upstreams": [
        {"name": n, "cluster": n, "weight": w} for n, w in weights.items()]}]}


def stat(envoy, name):
    full = f"{harness.stats_prefix()}.meshsplit.meshsplit.svc.{name}"
    return envoy.stats(full).get(full) or 0


# Live updates through ECDS for either filter build: the wasm filter, or the native one (the
# same plugin JSON as a DynamicModuleFilter's StringValue config).
def typed_config(build, plugin):
    if build == "wasm":
        return harness.wasm_typed_config(harness.WASM, json.dumps(plugin))
    return {"@type": harness.DYNAMIC_FILTER_TYPE, "dynamic_module_config": {"name": "meshsplit"},
            "filter_name": "meshsplit",
            "filter_config": {"@type": harness.STRING_VALUE, "value": json.dumps(plugin)}}


def publish_for(build, directory, version, plugin):
    if build == "wasm":
        return publish(directory, version, plugin)
    response = {"version_info": str(version), "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "meshsplit", "typed_config": typed_config(build, plugin)}]}
    tmp = directory / f".meshsplit.{version}.json"
    tmp.write_text(json.dumps(response))
    tmp.rename(directory / "meshsplit.json")


def ecds_bootstrap_for(build, directory, ports, first):
    config = ecds_bootstrap(directory, ports, first)
    if build != "wasm":
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        discovery = hcm["http_filters"][0]["config_discovery"]
        discovery["default_config"] = typed_config(build, first)
        discovery["type_urls"] = [harness.DYNAMIC_FILTER_TYPE]
        native = harness.load_yaml(harness.ENVOY_DIR / "envoy-native.yaml")
        config["stats_config"] = native["stats_config"]
        config["layered_runtime"] = native["layered_runtime"]
    return config


# A service whose upstream answers after a while: one request to it keeps the configuration it
# started on (its root context) alive across an update.
SLOW = {"name": "slow", "upstreams": [{"name": "s", "cluster": "slow", "weight": 1}]}


def hold_open(port, timeout_s=20):
    """Starts one request to the slow service in the background; returns its thread."""
    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            conn.request("GET", "/", headers={"Host": "slow"})
            conn.getresponse().read()
        except OSError:
            pass
        finally:
            conn.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.builds("wasm", "native")
def test_an_older_configuration_kept_alive_by_a_stream_never_ejects(build, tmp_path):
    """The update forbids ejections (max_ejected_percent 0) while a request holds the old
    configuration; v2 keeps failing. Before, the old root kept deciding with its old cap."""
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    old = guarded({}, extra_services=[SLOW])
    new = guarded({"max_ejected_percent": 0}, extra_services=[SLOW])
    publish_for(build, ecds, 1, old)
    with harness.upstream_servers("v1", "v2") as servers, \
            harness.upstreams("slow", delay=12.0) as slow:
        ports = {name: s.server_port for name, s in servers.items()} | slow
        with harness.Envoy(ecds_bootstrap_for(build, ecds, ports, old), tmp_path) as envoy:
            held = hold_open(envoy.port)
            time.sleep(0.5)
            publish_for(build, ecds, 2, new)
            reload = "extension_config_discovery.http_filter.meshsplit.config_reload"
            assert harness.wait_for(lambda: (envoy.stats(reload).get(reload) or 0) >= 1, timeout=15)
            servers["v2"].status = 503
            load = Load(envoy.port, connections=4, limit_s=20)
            try:
                time.sleep(6.0)  # three windows of failures, seen by the old root's ticks too
            finally:
                load.close()
            held.join(timeout=20)
            answers = load.since(0)
            assert stat(envoy, "v2.ejections_total") == 0, envoy.log()[-3000:]
            assert stat(envoy, "v2.ejected") == 0
            served = [answers["v1"], answers[503]]
            assert sum(served) == sum(answers.values()), answers
            _, p = chi_square(served, [1, 1])
            assert p > P_MIN, answers


@pytest.mark.builds("wasm", "native")
def test_an_update_without_the_guard_sets_the_ejected_gauge_back_to_zero(build, tmp_path):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    first = guarded({"window_s": 1})
    publish_for(build, ecds, 1, first)
    with harness.upstream_servers("v1", "v2") as servers:
        ports = {name: s.server_port for name, s in servers.items()}
        with harness.Envoy(ecds_bootstrap_for(build, ecds, ports, first), tmp_path) as envoy:
            def gauge_with_traffic(value):
                # The native build ticks from streams: keep some coming while waiting.
                harness.send(envoy.port, 10, {"Host": "svc"}, connections=2)
                return stat(envoy, "v2.ejected") == value

            servers["v2"].status = 503
            harness.send(envoy.port, 200, {"Host": "svc"})
            assert harness.wait_for(lambda: gauge_with_traffic(1), timeout=15)
            servers["v2"].status = 200
            publish_for(build, ecds, 2, unguarded())
            assert harness.wait_for(lambda: gauge_with_traffic(0), timeout=15)
            seen = harness.send(envoy.port, 400, {"Host": "svc"})
            _, p = chi_square([seen["v1"], seen["v2"]], [1, 1])
            assert p > P_MIN, seen
            time.sleep(1.5)  # a few more ticks: nothing sets it back
            assert stat(envoy, "v2.ejected") == 0


def memory_allocated(envoy):
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/memory", timeout=5) as r:
        return int(json.load(r)["allocated"])


def test_two_hundred_updates_leave_envoys_memory_flat(wasm, tmp_path):
    """Every update defines the same metric names again in each VM; Envoy hands out a new id per
    definition and never frees it, so a module that defined per update grew Envoy's memory with
    every update."""
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    upstreams = [f"u{i}" for i in range(40)]

    def config(version):
        least = {"name": "lr", "strategy": "least_request", "upstreams": [
            {"name": u, "cluster": "c", "weight": 1 + (version + i) % 3} for i, u in enumerate(upstreams)]}
        return guarded({}, weights={u: 1 + (version + i) % 2 for i, u in enumerate(upstreams)},
                       extra_services=[least])

    first = config(0)
    publish(ecds, 1, first)
    cluster_ports = {}
    with harness.upstreams("c") as ports:
        cluster_ports = {u: ports["c"] for u in upstreams} | ports
        with harness.Envoy(ecds_bootstrap(ecds, cluster_ports, first), tmp_path) as envoy:
            name = "extension_config_discovery.http_filter.meshsplit.config_reload"

            def apply(version):
                reloads = envoy.stats(name).get(name) or 0
                publish(ecds, version + 1, config(version))
                assert harness.wait_for(lambda: (envoy.stats(name).get(name) or 0) > reloads,
                                        timeout=10)
                harness.send(envoy.port, 4, {"Host": "svc"}, connections=2)

            for version in range(1, 41):
                apply(version)
            time.sleep(1.0)
            before = memory_allocated(envoy)
            for version in range(41, 201):
                apply(version)
            time.sleep(1.0)
            after = memory_allocated(envoy)
            # 160 updates; a metric definition per name, VM and update grew it by megabytes.
            assert after - before < 1_000_000, (before, after)


def same_core():
    """`taskset` pinning a process to one core this process may run on: two Envoys started
    with it share that core, and so whatever else loads it."""
    return ["taskset", "-c", str(min(os.sched_getaffinity(0)))]


def side_by_side_latencies(build, plugins, tmp_path, count=2000):
    """Starts one Envoy per plugin (one worker each, all pinned to the same core, started
    together) and sends `count` sequential requests to each, alternating between them, so
    they run under the same load. Returns, per Envoy, (seconds to ready, sorted latencies)."""
    with harness.upstreams("c") as ports:
        envoys = []
        for plugin in plugins:
            config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port(),
                                       build=build)
            envoys.append(harness.Envoy(config, tmp_path, concurrency=1, prefix=same_core()))
        with contextlib.ExitStack() as stack:
            started = time.monotonic()
            for envoy in envoys:
                stack.callback(envoy.stop)
                envoy.start(wait=False)
            ready = []
            for envoy in envoys:
                envoy.wait_ready()
                ready.append(time.monotonic() - started)
            clients = [stack.enter_context(contextlib.closing(harness.Client(e.port)))
                       for e in envoys]
            latencies = [[] for _ in envoys]
            for i in range(count):
                # Each Envoy goes first every other round: neither always follows the other.
                order = range(len(envoys)) if i % 2 == 0 else reversed(range(len(envoys)))
                for e in order:
                    t0 = time.perf_counter()
                    status, _, _ = clients[e].get("/", {"Host": f"svc{i % 4}"})
                    latencies[e].append(time.perf_counter() - t0)
                    assert status == 200
    return [(r, sorted(lat)) for r, lat in zip(ready, latencies)]


@pytest.mark.builds("wasm", "native")
def test_the_largest_guarded_configuration_keeps_requests_fast_and_starts_quickly(build, tmp_path):
    """Four services of 256 guarded upstreams (the limit, 1 024 in all) with an hour-long window,
    against the same services without a guard: a tick's cost does not depend on the window, so
    no request waits for one long. (Before, a tick read 3 600 buckets per upstream: about a
    second per tick for one such service, and Envoy did not get ready with four.)"""
    def plugin(guard):
        services = []
        for s in range(4):
            service = {"name": f"svc{s}", "upstreams": [
                {"name": f"u{u}", "cluster": "c", "weight": 1} for u in range(256)]}
            if guard:
                service["guard"] = {"error_rate": 0.5, "min_requests": 20, "window_s": 3600,
                                    "eject_s": 60}
            services.append(service)
        return {"services": services}

    (control_ready_s, control), (ready_s, guarded_) = side_by_side_latencies(
        build, [plugin(False), plugin(True)], tmp_path)

    def p99(latencies):
        return latencies[int(len(latencies) * 0.99)]

    print(f"\nlargest guarded configuration ({build}): ready in {ready_s:.2f} s "
          f"(unguarded {control_ready_s:.2f} s); p99 "
          f"{p99(guarded_) * 1000:.2f} ms (unguarded {p99(control) * 1000:.2f} ms), worst "
          f"{guarded_[-1] * 1000:.2f} ms (unguarded {control[-1] * 1000:.2f} ms)")
    # Both Envoys start together and run side by side on one core, taking turns, so the
    # machine's load slows both alike. The limits sit far above what load does to the
    # difference between them (on a 2-core machine with both cores busy and more: p99 up to
    # 52 ms on both sides but at most 8 ms apart, the slowest requests at most 70 ms apart,
    # ready times at most 1 s apart, in up to 10 s) and far below the defect's cost: about a
    # second per tick per service, four seconds here, with a tick every 500 ms (wasm) or on
    # the first request after it is due (native), so every request, or the one that runs the
    # tick, waits seconds; and Envoy was not ready in 30 s.
    assert ready_s < control_ready_s + 10, (ready_s, control_ready_s)
    assert p99(guarded_) < p99(control) + 0.05, (p99(guarded_), p99(control))
    assert guarded_[-1] < control[-1] + 0.5, (guarded_[-1], control[-1])
