"""The guard where the builds differ: the cluster specifier refuses it (it never sees a response),
and the filters count Envoy's own answers for an upstream they cannot reach as failures."""
import re

import pytest

import harness
from test_guard import answers_after_ejection, stat
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
            after = answers_after_ejection(envoy, "v2", 6)
            assert after and set(after) == {"v1"}, after
            assert stat(envoy, "v2.ejections_total") == 1
            assert stat(envoy, "v1.ejected") == 0
    assert re.search(r"guard: ejected svc/v2 for 30 s: 100 % of \d+ requests failed", envoy.log())
