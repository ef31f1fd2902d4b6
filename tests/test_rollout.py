"""Rollout schedules through real Envoy: each step takes effect on time, from the absolute start,
also in an Envoy started in the middle of the rollout."""
import datetime
import time

import pytest

import harness
from test_guard import Load

# Each phase is long enough for the Envoy started mid-rollout to be ready in it on a busy machine
# (it starts half a second into the second phase and must answer before the third).
STEP_S = 4
# A step must show within this long: the tick runs twice a second, and a busy machine may delay
# a tick by as much again.
ON_TIME_S = 1.5


def rfc3339(unix_s):
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def plugin(start):
    return {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "v1", "weight": 1},
        {"name": "v2", "cluster": "v2", "weight": 0}],
        "rollout": {"start": rfc3339(start), "steps": [
            {"at_s": 0, "weights": {"v1": 1}},
            {"at_s": STEP_S, "weights": {"v2": 1}},
            {"at_s": 2 * STEP_S, "weights": {"v1": 1}}]}}]}


def wall_to_monotonic(unix_s):
    return time.monotonic() + (unix_s - time.time())


def assert_switches(load, at, to, name):
    """From `at` + ON_TIME_S on, only `to` answers; before `at`, `to` did not (it had weight 0)."""
    settled = load.since(at + ON_TIME_S, at + STEP_S - 0.1)
    assert settled and set(settled) == {to}, (name, settled)
    before = load.since(at - 1.0, at)
    assert to not in before, (name, before)


@pytest.mark.builds("wasm", "native", "specifier")
def test_each_step_takes_effect_on_time_also_in_an_envoy_started_mid_rollout(build, wasm, tmp_path):
    # Whole seconds: a step boundary is then exactly where the test expects it.
    start = int(time.time()) + 3
    with harness.upstreams("v1", "v2") as ports:
        first = harness.bootstrap(plugin(start), ports, harness.free_port(), harness.free_port())
        with harness.Envoy(first, tmp_path) as envoy:
            # Before start: the service's own weights (v1 only).
            assert harness.send(envoy.port, 20, {"Host": "svc"}) == {"v1": 20}
            load = Load(envoy.port, limit_s=4 * STEP_S + 5)
            try:
                # A second Envoy starts after the switch to v2.
                time.sleep(max(0.0, start + STEP_S + 0.5 - time.time()))
                second = harness.bootstrap(plugin(start), ports, harness.free_port(),
                                           harness.free_port())
                with harness.Envoy(second, tmp_path) as late:
                    if time.time() < start + 2 * STEP_S - 0.5:
                        # Its very first requests already follow the step in force.
                        assert harness.send(late.port, 20, {"Host": "svc"}) == {"v2": 20}
                    late_load = Load(late.port, limit_s=3 * STEP_S)
                    try:
                        time.sleep(max(0.0, start + 3 * STEP_S - time.time()))
                    finally:
                        late_load.close()
                    assert_switches(late_load, wall_to_monotonic(start + 2 * STEP_S), "v1", "late Envoy")
            finally:
                load.close()
            assert_switches(load, wall_to_monotonic(start + STEP_S), "v2", "step 1")
            assert_switches(load, wall_to_monotonic(start + 2 * STEP_S), "v1", "step 2")
