"""Request counters through real Envoy: counted in the VM, flushed on the housekeeping tick, and
equal to the requests sent."""
import harness

FLUSH_S = 3.0  # the tick is 1 s; allow for a busy machine

PLUGIN = {"on_unknown_service": "reject", "services": [
    {"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "m_v1", "weight": 3},
        {"name": "v2", "cluster": "m_v2", "weight": 1}],
     "rules": [{"match": {"headers": [{"name": "x-beta", "exact": "1"}]}, "upstream": "v2"}]}]}

PREFIX = "wasmcustom.meshsplit.meshsplit."


def counters(envoy):
    return {k[len(PREFIX):]: v for k, v in envoy.stats(PREFIX).items() if k.startswith(PREFIX)}


def test_counters_equal_the_requests_sent(deploy):
    envoy = deploy(PLUGIN, ["m_v1", "m_v2"])
    seen = harness.send(envoy.port, 600, {"Host": "svc"})
    beta = harness.send(envoy.port, 70, {"Host": "svc", "x-beta": "1"})
    unknown = harness.send(envoy.port, 30, {"Host": "nope"})
    assert set(seen) == {"m_v1", "m_v2"} and beta == {"m_v2": 70}
    assert sum(unknown.values()) == 30 and all(k[0] == 404 for k in unknown)
    expected = {
        "svc.v1.requests_total": seen["m_v1"],
        "svc.v2.requests_total": seen["m_v2"] + 70,
        "svc.rules.0.hits_total": 70,
        "unknown_service_total": 30,
        "rejected_total": 30,
    }
    harness.wait_for(lambda: counters(envoy) == expected, timeout=FLUSH_S)
    assert counters(envoy) == expected
