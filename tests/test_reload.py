"""Live configuration updates through ECDS (a watched file), under load, through real Envoy."""
import json
import os
import threading
import time

import harness

def plugin(weights):
    return {"services": [{"name": "svc", "upstreams": [
        {"name": name, "cluster": name, "weight": weight} for name, weight in weights.items()]}]}


def wasm_config(plugin_config):
    return harness.wasm_typed_config(harness.WASM, json.dumps(plugin_config))


def publish(directory, version, plugin_config):
    """Writes the ECDS file atomically: a temporary file renamed over the watched one."""
    response = {"version_info": str(version), "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "meshsplit", "typed_config": wasm_config(plugin_config)}]}
    tmp = directory / f".meshsplit.{version}.json"
    tmp.write_text(json.dumps(response))
    os.rename(tmp, directory / "meshsplit.json")


def ecds_bootstrap(directory, ports, first):
    config = harness.bootstrap(first, ports, harness.free_port(), harness.free_port())
    config["node"] = {"id": "meshsplit-test", "cluster": "meshsplit"}
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = {"name": "meshsplit", "config_discovery": {
        "config_source": {"path_config_source": {"path": str(directory / "meshsplit.json"),
                                                 "watched_directory": {"path": str(directory)}},
                          "resource_api_version": "V3"},
        "default_config": wasm_config(first),
        "apply_default_config_without_warming": True,
        "type_urls": [harness.WASM_TYPE]}}
    return config


def test_live_updates_apply_without_failed_requests_and_bad_ones_are_rejected(wasm, tmp_path):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    first = plugin({"a": 1, "b": 0})
    publish(ecds, 1, first)
    with harness.upstreams("a", "b") as ports, \
            harness.Envoy(ecds_bootstrap(ecds, ports, first), tmp_path) as envoy:
        seen, failures, stop = [], [], threading.Event()

        def load():
            client, deadline = harness.Client(envoy.port), time.monotonic() + 30
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    status, _, body = client.get("/", {"Host": "svc"})
                    if status == 200:
                        seen.append(json.loads(body)["upstream"])
                    else:
                        failures.append((status, body))
            finally:
                client.close()

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            assert harness.wait_for(lambda: len(seen) > 200)
            assert set(seen) == {"a"}

            publish(ecds, 2, plugin({"a": 0, "b": 1}))
            mark = len(seen)
            assert harness.wait_for(lambda: len(seen) > mark and seen[-1] == "b"), "update not applied"
            time.sleep(0.5)

            # An invalid update (which would send everything to a) is rejected: the previous
            # config keeps serving.
            publish(ecds, 3, plugin({"a": 5000000, "b": 0}))
            assert harness.wait_for(lambda: any(
                v > 0 for k, v in envoy.stats("extension_config_discovery").items()
                if k.endswith("config_fail"))), envoy.stats("extension_config_discovery")
            mark = len(seen)
            time.sleep(1.0)
            assert set(seen[mark:]) == {"b"}
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        assert "services[0].upstreams[0].weight: must be at most 1000000, got 5000000" in envoy.log()

