"""The guard where the builds differ: the cluster specifier refuses it (it never sees a response),
and the filters count Envoy's own answers for an upstream they cannot reach as failures."""
import re
import time

import pytest

import harness
from test_guard import DECISION_S, answers_after_ejection, stat
from test_split import start_refused

GUARDED = {"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "v1", "weight": 50},
    {"name": "v2", "cluster": "v2", "weight": 50}],
    "guard": {"error_rate": 0.5, "min_requests": 20, "window_s": 2, "eject_s": 30}}]}


@pytest.mark.builds("specifier")
def test_specifier_refuses_the_guard_and_points_at_the_filter(build, tmp_path):
    code, log = start_refused(GUARDED, tmp_path)
    assert code != 0
    assert ("invalid configuration: services[0].guard: the guard needs to see each response, which "
            "a cluster specifier does not; use meshsplit as an HTTP filter") in log, log[-5000:]


@pytest.mark.builds("wasm", "native")
def test_an_upstream_that_refuses_connections_is_ejected(build, tmp_path):
    """Nothing listens on v2's port: Envoy answers 503 (flag UF) itself, and that counts."""
    with harness.upstreams("v1") as ports:
        ports["v2"] = harness.free_port()
        config = harness.bootstrap(GUARDED, ports, harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            after = answers_after_ejection(envoy, "v2", DECISION_S)
            assert after and set(after) == {"v1"}, after
            assert stat(envoy, "v2.ejections_total") == 1
            assert stat(envoy, "v1.ejected") == 0
    assert re.search(r"guard: ejected svc/v2 for 30 s: 100 % of \d+ requests failed", envoy.log())


@pytest.mark.builds("native")
def test_failures_count_in_the_window_of_their_moment_however_late_the_next_tick(build, tmp_path):
    """A native worker ticks only from its streams. One worker (concurrency 1) sees a burst of
    503s from v2 between two of its ticks, then no traffic for 2.5 s (the window is 1 s), then v2
    is healthy and one request comes: the burst is out of the window by then and ejects nothing.
    (Filed at the late tick instead, the burst's failures would eject v2 then.) The burst must
    fall between two ticks (500 ms apart): on a loaded machine that may take more than one try,
    up to ten; a try whose tick ran mid-burst (v2 ejected at once) is discarded."""
    guard = {"error_rate": 0.5, "min_requests": 10, "window_s": 1, "eject_s": 30}
    plugin = {"services": [dict(GUARDED["services"][0], guard=guard)]}
    for attempt in range(10):
        with harness.upstream_servers("v1", "v2") as servers:
            ports = {n: s.server_port for n, s in servers.items()}
            config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port())
            with harness.Envoy(config, tmp_path, concurrency=1) as envoy:
                # A first request runs the worker's tick: the next is due 500 ms later.
                harness.send(envoy.port, 1, {"Host": "svc"}, connections=1)
                servers["v2"].status = 503
                burst = harness.send(envoy.port, 60, {"Host": "svc"}, connections=6)
                assert sum(n for k, n in burst.items() if isinstance(k, tuple) and k[0] == 503) >= 10, burst
                if stat(envoy, "v2.ejections_total"):
                    continue
                time.sleep(2.5)
                servers["v2"].status = 200
                harness.send(envoy.port, 1, {"Host": "svc"}, connections=1)
                time.sleep(0.2)
                assert stat(envoy, "v2.ejections_total") == 0, envoy.log()[-3000:]
                return
    pytest.fail("every burst straddled a tick in ten tries")


@pytest.mark.builds("wasm", "native")
def test_an_idle_envoy_readmits_on_time_and_its_gauges_say_so(build, tmp_path):
    """v2 fails until it is ejected (eject_s 3), then all traffic stops. With no request at all,
    the ejected gauge goes back to 0 and the weight gauge to v2's weight after 3 s, and the
    readmission is logged: the wasm build ticks on Envoy's timer, the native build on its own
    timer thread through the config's scheduler (Envoy's main thread). Margin: within 12 s of
    the ejection showing, eject_s and 18 ticks (a wait that ends as soon as both gauges show it;
    an idle Envoy that readmitted only on its next request never would)."""
    plugin = {"services": [dict(GUARDED["services"][0], guard={
        "error_rate": 0.5, "min_requests": 10, "window_s": 2, "eject_s": 3})]}
    with harness.upstream_servers("v1", "v2") as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        servers["v2"].status = 503
        config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            # Bursts of 20 requests until the guard's tick (every 500 ms) ejects v2: at most
            # 15 s (a window and a tick take under 3 s).
            deadline = time.monotonic() + 15
            while stat(envoy, "v2.ejected") != 1 and time.monotonic() < deadline:
                harness.send(envoy.port, 20, {"Host": "svc"})
                time.sleep(0.05)
            assert stat(envoy, "v2.ejected") == 1, envoy.log()[-3000:]
            assert stat(envoy, "v2.weight") == 0
            assert harness.wait_for(lambda: stat(envoy, "v2.ejected") == 0
                                    and stat(envoy, "v2.weight") == 50, timeout=12), \
                envoy.log()[-3000:]
    # (Envoy writes its log file out when it stops.)
    assert "guard: readmitted svc/v2 after 3 s" in envoy.log()
