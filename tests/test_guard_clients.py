"""What a client can make the guard do, through real Envoy: requests the application refuses
(501) eject nothing; in relative mode traffic that fails on every upstream ejects nothing; a real
regression of one upstream is still ejected."""
import http.client
import threading

import pytest

import harness
from test_guard import DECISION_S, answers_after_ejection, load_for, plugin, stat

WINDOW_S = 2


def flood(port, method, count, connections=4):
    """`count` requests with `method` to service svc over `connections` keep-alive connections;
    returns the statuses seen."""
    statuses, lock = [], threading.Lock()

    def run(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(n):
                conn.request(method, "/", body=b"{}", headers={"Host": "svc"})
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses.append(response.status)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(count // connections,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def ejections(envoy):
    return {u: stat(envoy, f"{u}.ejections_total") for u in ("v1", "v2")}


@pytest.mark.builds("wasm", "native")
def test_a_flood_of_requests_the_application_refuses_ejects_nothing(build, wasm, tmp_path):
    """PATCH is not implemented by the application: it answers 501 on every upstream, as often as
    a client likes. That is the client's doing, not the upstream's health."""
    with harness.upstream_servers("v1", "v2") as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(plugin({"v1": 50, "v2": 50}), ports, harness.free_port(),
                                   harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            statuses = flood(envoy.port, "PATCH", 400)
            assert statuses == [501] * 400
            # Normal traffic after it (the native build ticks on streams), for longer than a
            # window: still both upstreams, and no ejection.
            seen = load_for(envoy.port, WINDOW_S + 1.5)
            assert ejections(envoy) == {"v1": 0, "v2": 0}
            assert set(seen) == {"v1", "v2"}


@pytest.mark.builds("wasm", "native")
def test_relative_mode_ejects_nothing_when_every_upstream_fails(build, wasm, tmp_path):
    """Every version answers 503 (a dependency they share is down, or a request that fails
    everywhere): the absolute guard would eject up to its cap; the relative one ejects none."""
    with harness.upstream_servers("v1", "v2") as servers:
        for s in servers.values():
            s.status = 503
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(plugin({"v1": 90, "v2": 10}, relative_margin=0.2,
                                          max_ejected_percent=100), ports,
                                   harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            seen = load_for(envoy.port, WINDOW_S + 2.5)
            assert seen[503] >= 100, seen
            assert ejections(envoy) == {"v1": 0, "v2": 0}


@pytest.mark.builds("wasm", "native")
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_a_canary_that_answers_500_to_normal_requests_is_ejected(build, wasm, tmp_path, mode):
    """A real regression: the canary answers 500 to ordinary GETs while the baseline is fine."""
    extra = {"relative_margin": 0.2} if mode == "relative" else {}
    with harness.upstream_servers("v1", "v2") as servers:
        servers["v2"].status = 500
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(plugin({"v1": 70, "v2": 30}, **extra), ports,
                                   harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            after = answers_after_ejection(envoy, "v2", DECISION_S)
            assert after and set(after) == {"v1"}, after
            assert ejections(envoy) == {"v1": 0, "v2": 1}
