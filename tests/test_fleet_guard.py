"""The guard on a fleet, through real Envoys: each Envoy judges only the requests it routes, so at a
fixed total rate each of N Envoys sees 1/N of a canary's requests. The same canary as the tick
simulation (`tick::tests::a_fleet_ejects_a_failing_canary_on_every_pod_when_min_requests_fits_a_pods_share`,
whose times docs/alerts.md quotes): 10 % of 40 requests/s, failing half its requests,
`error_rate` 0.05, `window_s` 10. Measured here: the time from the first request until every
Envoy has ejected it, for 1, 4 and 8 Envoys, with `min_requests` sized to an Envoy's share (4);
and that with `min_requests` 20, eight Envoys (5 canary requests each per window) never eject it.

Wasm for every size, and the native build for eight. Time: about 100 s (29 Envoys started, one
at a time; about 20 s of traffic for a fleet of eight, at most 60 s). The load is paced per Envoy
(40/N requests/s each, from one keep-alive connection) and bounded in time."""
import itertools
import threading
import time

import pytest

import harness
from test_guard import stat


TOTAL_RPS = 40
WINDOW_S = 10
# Bounds on the time until every Envoy has ejected the canary, sized to an Envoy's share. The
# simulation gives 1.0, 5.0 and 15.0 s, and runs here 1.0–2.1, 6.5 and 19.6–23.4 s. An Envoy
# ejects once a 10 s window holds 4 canary requests and a failure (about 7 windows in 10 at 8
# Envoys), so the slowest of eight is a tail: the bounds leave it several windows, and a busy
# machine its late ticks. A wait ends as soon as every Envoy has ejected.
BOUND_S = {1: 20.0, 4: 40.0, 8: 60.0}
# How long eight Envoys with min_requests 20 get traffic without ejecting: 2.5 windows.
NEVER_S = 25.0


def plugin(min_requests):
    return {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "v1", "weight": 90},
        {"name": "v2", "cluster": "v2", "weight": 10}],
        "guard": {"error_rate": 0.05, "min_requests": min_requests, "window_s": WINDOW_S,
                  "eject_s": 300}}]}


def paced(port, rps, stop, deadline):
    """One keep-alive connection sending `rps` requests a second until `stop` or `deadline`."""
    client = harness.Client(port)
    try:
        start = time.monotonic()
        for n in itertools.count():
            due = start + n / rps
            now = time.monotonic()
            if stop.is_set() or now > deadline:
                return
            if due > now:
                time.sleep(due - now)
            client.get("/", {"Host": "svc"})
    finally:
        client.close()


def fleet_ejection_times(build, tmp_path, pods, min_requests, limit_s):
    """Starts `pods` Envoys with the canary config, paces TOTAL_RPS over them, and returns each
    Envoy's time from the first request until its guard ejected v2 (None: not within `limit_s`)."""
    failures = itertools.count()
    with harness.upstream_servers("v1", "v2") as servers:
        # v2 fails every other request.
        servers["v2"].status = lambda: 503 if next(failures) % 2 == 0 else 200
        ports = {name: s.server_port for name, s in servers.items()}
        envoys = []
        try:
            for p in range(pods):
                config = harness.bootstrap(plugin(min_requests), ports, harness.free_port(),
                                           harness.free_port(), build=build)
                workdir = tmp_path / f"pod{p}"
                workdir.mkdir()
                envoys.append(harness.Envoy(config, workdir).start())
            stop = threading.Event()
            start = time.monotonic()
            deadline = start + limit_s
            threads = [threading.Thread(target=paced, args=(e.port, TOTAL_RPS / pods, stop, deadline))
                       for e in envoys]
            for t in threads:
                t.start()
            times = [None] * pods
            try:
                while time.monotonic() < deadline and None in times:
                    for i, envoy in enumerate(envoys):
                        if times[i] is None and stat(envoy, "v2.ejected") == 1:
                            times[i] = time.monotonic() - start
                    time.sleep(0.1)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=10)
            return times
        finally:
            for envoy in envoys:
                envoy.stop()


def sized_fleet_ejects(build, tmp_path, pods):
    times = fleet_ejection_times(build, tmp_path, pods, min_requests=4, limit_s=BOUND_S[pods])
    print(f"{build}: {pods} Envoys, min_requests 4: ejected after "
          + ", ".join("never" if t is None else f"{t:.1f} s" for t in times))
    assert None not in times, f"not every Envoy ejected the canary within {BOUND_S[pods]} s: {times}"


@pytest.mark.parametrize("pods", [1, 4, 8])
def test_a_guard_sized_to_an_envoys_share_ejects_the_canary_on_every_envoy(build, tmp_path, pods):
    sized_fleet_ejects(build, tmp_path, pods)


@pytest.mark.builds("native")
def test_a_native_fleet_of_eight_ejects_the_canary_on_every_envoy(build, tmp_path):
    """The native build's guard on the largest fleet (its timer thread ticks each Envoy)."""
    sized_fleet_ejects(build, tmp_path, 8)


def test_eight_envoys_never_reach_min_requests_20(build, tmp_path):
    times = fleet_ejection_times(build, tmp_path, 8, min_requests=20, limit_s=NEVER_S)
    assert times == [None] * 8, times
