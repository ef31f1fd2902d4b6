"""The error-rate guard through real Envoy: a failing upstream is ejected within the window, its
traffic moves to the others, and it comes back when it recovers; the caps hold."""
import collections
import contextlib
import re
import threading
import time

import pytest

import harness
import stats
from stats import chi_square
from test_metrics import prometheus_series

WINDOW_S, EJECT_S = 2, 6
# How long the other workers may take to follow a decision: the tick runs twice a second, so
# 0.5 s, and as much again for a tick that a busy machine delays.
PROPAGATION_S = 1.0
# How long a wait for the guard's decision may last: a wait returns as soon as the decision
# shows, so its bound only has to outlast a busy machine.
DECISION_S = 15


def plugin(weights, **guard):
    settings = dict({"error_rate": 0.5, "min_requests": 20, "window_s": WINDOW_S,
                     "eject_s": EJECT_S, "max_ejected_percent": 50}, **guard)
    return {"services": [{"name": "svc", "guard": settings, "upstreams": [
        {"name": name, "cluster": name, "weight": weight} for name, weight in weights.items()]}]}


class Load:
    """Steady traffic from a few keep-alive connections; every answer recorded with its time
    (monotonic): the upstream's name, or the status for anything but a 200. Bounded in time."""

    def __init__(self, port, connections=4, limit_s=60):
        self.answers, self.stop = [], threading.Event()
        deadline = time.monotonic() + limit_s
        self.threads = [threading.Thread(target=self.run, args=(port, deadline)) for _ in range(connections)]
        for t in self.threads:
            t.start()

    def run(self, port, deadline):
        client = harness.Client(port)
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                status, _, body = client.get("/", {"Host": "svc"})
                key = harness.answer_key(status, body)
                self.answers.append((time.monotonic(), key if status == 200 else status))
                time.sleep(0.005)
        finally:
            client.close()

    def since(self, t0, t1=float("inf")):
        return collections.Counter(k for t, k in list(self.answers) if t0 <= t < t1)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def load_for(port, seconds):
    """Steady traffic for `seconds`; what answered (as `Load` records it), counted."""
    load = Load(port)
    try:
        time.sleep(seconds)
    finally:
        load.close()
    return load.since(0)


def answers_after_ejection(envoy, upstream, timeout):
    """Under steady traffic, waits until `upstream` is ejected, then counts what answered during
    the next second, from the moment every worker has followed."""
    load = Load(envoy.port)
    try:
        assert harness.wait_for(lambda: stat(envoy, f"{upstream}.ejected") == 1,
                                timeout=timeout), f"{upstream} not ejected in time"
        ejected_at = time.monotonic()
        time.sleep(PROPAGATION_S + 1.0)
        return load.since(ejected_at + PROPAGATION_S)
    finally:
        load.close()


def assert_readmitted_at_weight(envoy, load, readmitted_at):
    """Under `load`, once every worker has readmitted v2 (ejected until `readmitted_at`), v1 and
    v2 share 3 s of traffic 50/50 (chi-square), and v2 was ejected once."""
    time.sleep(max(0.0, readmitted_at + PROPAGATION_S - time.monotonic()))
    back_at = time.monotonic()
    time.sleep(3)
    share = load.since(back_at)
    assert set(share) == {"v1", "v2"}, share
    _, p = chi_square([share["v1"], share["v2"]], [50, 50])
    assert p > stats.P_MIN, share
    assert stat(envoy, "v2.ejected") == 0
    assert stat(envoy, "v2.ejections_total") == 1


def stat(envoy, name):
    full = f"{harness.stats_prefix()}.meshsplit.meshsplit.svc.{name}"
    return envoy.stats(full).get(full) or 0


@contextlib.contextmanager
def guarded_envoy(tmp_path, **guard):
    """Upstream servers v1 and v2 (set a server's `.status` to make it fail) behind an Envoy whose
    service `svc` splits 50/50 between them under a guard; yields (servers, envoy)."""
    with harness.upstream_servers("v1", "v2") as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(plugin({"v1": 50, "v2": 50}, **guard), ports,
                                   harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            yield servers, envoy


@pytest.mark.builds("wasm", "native")
def test_a_failing_upstream_is_ejected_and_readmitted_when_it_recovers(build, wasm, tmp_path):
    with guarded_envoy(tmp_path) as (servers, envoy):
        load = Load(envoy.port)
        try:
            time.sleep(2)
            healthy = load.since(0)
            assert set(healthy) == {"v1", "v2"}, healthy
            servers["v2"].status = 503
            failing_at = time.monotonic()
            # Within the window (plus the ticks, and a busy machine's delays), v2 is ejected.
            assert harness.wait_for(lambda: stat(envoy, "v2.ejections_total") == 1,
                                    timeout=DECISION_S), "v2 not ejected in time"
            ejected_at = time.monotonic()
            time.sleep(EJECT_S - 2)
            # While ejected: only v1 answers, and the gauge and the labelled series say so.
            during = load.since(ejected_at + PROPAGATION_S)
            assert during and set(during) == {"v1"}, during
            assert stat(envoy, "v2.ejected") == 1
            labels = frozenset({"plugin": "meshsplit", "service": "svc", "upstream": "v2"}.items())
            # (The native build defines every upstream's series up front, at 0.)
            ejections = prometheus_series(envoy, "meshsplit_ejections_total")
            assert {k: v for k, v in ejections.items() if v} == {labels: 1}
            assert prometheus_series(envoy, "meshsplit_ejected")[labels] == 1
            # Only requests of the detection window failed.
            failed = load.since(failing_at)[503]
            assert 0 < failed <= sum(load.since(failing_at, ejected_at + PROPAGATION_S).values())
            # v2 recovers; once readmitted (eject_s after its ejection) it gets its share back.
            servers["v2"].status = 200
            assert_readmitted_at_weight(envoy, load, ejected_at + EJECT_S)
        finally:
            load.close()
    log = envoy.log()
    assert re.search(r"guard: ejected svc/v2 for 6 s: \d+ % of \d+ requests failed in the last 2 s", log), log[-3000:]
    assert "guard: readmitted svc/v2 after 6 s" in log


def failing(every):
    """A status function for an upstream server: 503 for `every[0]` answers in each `every[1]`."""
    lock, count = threading.Lock(), [0]

    def status():
        with lock:
            count[0] += 1
            return 503 if count[0] % every[1] < every[0] else 200
    return status


@pytest.mark.builds("wasm", "native")
def test_above_the_read_budget_the_guard_still_tells_a_rate_below_error_rate_from_one_above(build, wasm, tmp_path):
    # At this load each worker sees far more than 32 requests a second per upstream, so the wasm
    # guard reads a sample of the outcomes (one in 16 past its budget), each counted 16 times.
    with guarded_envoy(tmp_path) as (servers, envoy):
        load = Load(envoy.port)
        try:
            # A quarter of v2's answers fail, half the guard's error_rate: never ejected.
            servers["v2"].status = failing((1, 4))
            started = time.monotonic()
            time.sleep(3 * WINDOW_S)
            seen = load.since(started)
            rate = sum(seen.values()) / (time.monotonic() - started)
            workers = envoy.concurrency
            assert rate / workers / 2 > 2 * 32, f"{rate:.0f} requests/s: too slow to sample"
            assert seen[503] > 0, seen
            assert stat(envoy, "v2.ejections_total") == 0
            # Three quarters fail: ejected within the window, on sampled outcomes all the same.
            servers["v2"].status = failing((3, 4))
            assert harness.wait_for(lambda: stat(envoy, "v2.ejections_total") == 1,
                                    timeout=DECISION_S), "v2 not ejected in time"
        finally:
            load.close()


@pytest.mark.builds("wasm", "native")
@pytest.mark.parametrize("cap, ejected", [(50, 1), (100, 1), (40, 0)])
def test_caps_hold_when_every_upstream_fails(build, wasm, tmp_path, cap, ejected):
    """All fail: never more than max_ejected_percent of the weight, never the last upstream."""
    with guarded_envoy(tmp_path, max_ejected_percent=cap) as (servers, envoy):
        for server in servers.values():
            server.status = 503
        assert_ejections_settle(envoy, Load(envoy.port), ejected)


def assert_ejections_settle(envoy, load, ejected):
    """Under `load` (closed here), v1 and v2 failing: `ejected` of them are ejected, and no more
    once a further window and tick have passed."""
    def counts():
        return (sum(stat(envoy, f"{u}.ejections_total") for u in ("v1", "v2")),
                sum(stat(envoy, f"{u}.ejected") for u in ("v1", "v2")))
    try:
        if ejected:
            # The first ejection, however long a busy machine makes it take; then a window and
            # a tick more, in which a second one would come.
            harness.wait_for(lambda: counts()[0] >= ejected, timeout=DECISION_S)
            time.sleep(WINDOW_S + 1)
        else:
            time.sleep(WINDOW_S + 2.5)
    finally:
        load.close()
    assert counts() == (ejected, ejected)


@pytest.mark.builds("wasm", "native")
def test_an_ejection_lasts_eject_s_to_the_tick(build, wasm, tmp_path):
    """eject_s 3: under steady traffic the ejected gauge is 1 for 3 s, from the tick that ejects
    to the tick that readmits (every 500 ms). The gauge is polled, and each change is known to
    lie between the last poll that read the old value and the first that read the new one, so
    the time it was 1 lies between two bounds that do not depend on how long a poll takes: the
    longest it can have lasted is at least 3 s (less 50 ms: the ejecting tick reads the clock a
    little before it sets the gauge), the shortest at most 6 s (3 s, a tick, and what a loaded
    machine adds). Ejection times kept in whole seconds made it up to a second shorter."""
    def poll_until(value, deadline):
        """(monotonic time before the last poll that read another value, after the first that
        read `value`)."""
        before = time.monotonic()
        while time.monotonic() < deadline:
            asked = time.monotonic()
            if stat(envoy, "v2.ejected") == value:
                return before, time.monotonic()
            before = asked
            time.sleep(0.02)
        raise AssertionError(f"the ejected gauge did not read {value} in time")

    with guarded_envoy(tmp_path, eject_s=3) as (servers, envoy):
        load = Load(envoy.port)
        try:
            servers["v2"].status = 503
            ejected = poll_until(1, time.monotonic() + DECISION_S)
            servers["v2"].status = 200
            readmitted = poll_until(0, time.monotonic() + DECISION_S)
        finally:
            load.close()
    longest, shortest = readmitted[1] - ejected[0], readmitted[0] - ejected[1]
    assert longest >= 2.95 and shortest <= 6.0, (shortest, longest)
