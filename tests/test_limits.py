"""Configurations past the documented limits, delivered live through ECDS to real Envoy: each is
refused with a clear error, and the previous configuration keeps serving."""
import json

import pytest

import harness
import test_reload

MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_SERVICES = 50_000


def many_services(n):
    return {"services": [{"name": f"s{i}", "upstreams": [{"name": "u", "cluster": "b", "weight": 1}]}
                         for i in range(n)]}


@pytest.mark.parametrize("config, error", [
    (json.dumps(many_services(100_000), separators=(",", ":")),
     f"services: at most {MAX_SERVICES} services, got 100000"),
    (" " * (10 * 1024 * 1024 - 134) + json.dumps(test_reload.plugin({"a": 0, "b": 1})),
     f"configuration is {10 * 1024 * 1024} bytes; at most {MAX_CONFIG_BYTES} bytes are accepted"),
], ids=["100000-services", "10-MB"])
def test_a_config_past_the_limits_is_refused_and_the_previous_one_keeps_serving(wasm, tmp_path, config, error):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    good = test_reload.plugin({"a": 1, "b": 0})
    test_reload.publish(ecds, 1, good)
    with harness.upstreams("a", "b") as ports, \
            harness.Envoy(test_reload.ecds_bootstrap(ecds, ports, good), tmp_path) as envoy:
        assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"a": 10}
        response = {"version_info": "2", "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "meshsplit", "typed_config": harness.wasm_typed_config(harness.WASM, config)}]}
        tmp = ecds / ".next.json"
        tmp.write_text(json.dumps(response))
        tmp.rename(ecds / "meshsplit.json")
        name = "extension_config_discovery.http_filter.meshsplit.config_fail"
        assert harness.wait_for(lambda: envoy.stats(name).get(name) == 1, timeout=30), envoy.stats(name)
        assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"a": 10}
    assert f"invalid configuration: {error}" in envoy.log()
