"""The latency guard through real Envoy: an upstream that got slow is ejected within the window,
its traffic moves to the others, and it comes back at its weight when it is fast again; the
caps hold when every upstream is slow."""
import contextlib
import re
import time

import pytest

import harness
from test_guard import (DECISION_S, PROPAGATION_S, Load, assert_ejections_settle,
                        assert_readmitted_at_weight, stat)
from test_split import start_refused

WINDOW_S, EJECT_S = 2, 6
# The slow upstream answers after this long; the threshold is well below it and well above
# what a loopback upstream takes, even on a busy machine.
SLOW_S, THRESHOLD_MS = 0.4, 200
# Enough keep-alive connections that a slow upstream still sees min_requests in a window.
CONNECTIONS = 8


def plugin(max_ejected_percent=50):
    guard = {"min_requests": 10, "window_s": WINDOW_S, "eject_s": EJECT_S,
             "max_ejected_percent": max_ejected_percent,
             "latency": {"percentile": 90, "threshold_ms": THRESHOLD_MS}}
    return {"services": [{"name": "svc", "guard": guard, "upstreams": [
        {"name": name, "cluster": name, "weight": 50} for name in ("v1", "v2")]}]}


@contextlib.contextmanager
def latency_guarded_envoy(tmp_path, **settings):
    """Upstream servers v1 and v2 (set a server's `.delay` to make it slow) behind an Envoy whose
    service `svc` splits 50/50 between them under a latency guard; yields (servers, envoy)."""
    with harness.upstream_servers("v1", "v2") as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(plugin(**settings), ports, harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            yield servers, envoy


@pytest.mark.builds("wasm", "native")
def test_a_slow_upstream_is_ejected_and_readmitted_at_its_weight_when_fast_again(build, wasm, tmp_path):
    with latency_guarded_envoy(tmp_path) as (servers, envoy):
        load = Load(envoy.port, connections=CONNECTIONS)
        try:
            time.sleep(2)
            healthy = load.since(0)
            assert set(healthy) == {"v1", "v2"}, healthy
            assert stat(envoy, "v2.ejections_total") == 0
            servers["v2"].delay = SLOW_S
            slow_at = time.monotonic()
            # Within the window, v2 is ejected: the fast requests sent before the slowdown leave
            # the window after WINDOW_S, then a tick (0.5 s) and the slow streams' own end (0.4 s)
            # pass before the guard can count them; the wait's bound outlasts a loaded machine.
            assert harness.wait_for(lambda: stat(envoy, "v2.ejections_total") == 1,
                                    timeout=DECISION_S), "v2 not ejected in time"
            ejected_at = time.monotonic()
            time.sleep(EJECT_S - 2)
            # Only requests of the detection window were slow: once every worker follows and
            # the requests already sent to v2 are answered, only v1 answers.
            during = load.since(ejected_at + PROPAGATION_S + SLOW_S)
            assert during and set(during) == {"v1"}, during
            assert load.since(slow_at, ejected_at + PROPAGATION_S + SLOW_S)["v2"] > 0
            assert stat(envoy, "v2.ejected") == 1
            assert stat(envoy, "v1.ejected") == 0
            # v2 is fast again; once readmitted (eject_s after its ejection) it gets its share.
            servers["v2"].delay = 0.0
            assert_readmitted_at_weight(envoy, load, ejected_at + EJECT_S)
            assert stat(envoy, "v1.ejections_total") == 0
        finally:
            load.close()
    log = envoy.log()
    assert re.search(
        rf"guard: ejected svc/v2 for 6 s: \d+ % of \d+ requests took longer than {THRESHOLD_MS} ms "
        rf"in the last 2 s \(p90 above {THRESHOLD_MS} ms\); reason latency, ejection 1 in a row",
        log), log[-3000:]
    assert "guard: readmitted svc/v2 after 6 s" in log


@pytest.mark.builds("wasm", "native")
@pytest.mark.parametrize("cap, ejected", [(50, 1), (100, 1), (40, 0)])
def test_caps_hold_when_every_upstream_is_slow(build, wasm, tmp_path, cap, ejected):
    """All slow: never more than max_ejected_percent of the weight, never the last upstream."""
    with latency_guarded_envoy(tmp_path, max_ejected_percent=cap) as (servers, envoy):
        for server in servers.values():
            server.delay = SLOW_S
        load = Load(envoy.port, connections=CONNECTIONS)
        assert_ejections_settle(envoy, load, ejected)
        if ejected == 0:
            # Not for want of requests: each upstream saw at least min_requests in a window.
            assert all(load.since(0)[u] >= 2 * 10 for u in ("v1", "v2")), load.since(0)


@pytest.mark.builds("specifier")
def test_specifier_refuses_a_latency_guard_as_any_guard(build, tmp_path):
    code, log = start_refused(plugin(), tmp_path)
    assert code != 0
    assert ("invalid configuration: services[0].guard: the guard needs to see each response, which "
            "a cluster specifier does not") in log, log[-5000:]
