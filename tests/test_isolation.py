"""Filter instances sharing a VM never route with each other's configuration, through real Envoy:
many listeners with one vm_id, and a listener updated through ECDS (with requests held open
across the updates) beside a static one."""
import concurrent.futures
import copy
import json
import re
import time

import harness
import test_reload

LISTENERS = 10


def listener_plugin(i):
    """Listener i routes `svc` to cluster `c{i}` and alone knows service `only{i}`."""
    return {"services": [
        {"name": "svc", "upstreams": [{"name": "u", "cluster": f"c{i}", "weight": 1}]},
        {"name": f"only{i}", "upstreams": [{"name": "u", "cluster": f"c{i}", "weight": 1}]}]}


def add_listener(config, name, port, plugin):
    """A copy of the bootstrap's first listener on `port` with its own plugin config (same VM)."""
    listener = copy.deepcopy(config["static_resources"]["listeners"][0])
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = name
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            f["typed_config"]["config"]["configuration"]["value"] = json.dumps(plugin)
    config["static_resources"]["listeners"].append(listener)
    return listener


def cluster_seen(port, host, path="/"):
    """The cluster header the upstream saw, or (status, body) when no upstream answered."""
    client = harness.Client(port)
    try:
        status, _, body = client.get(path, {"Host": host})
    finally:
        client.close()
    if status == 200:
        return json.loads(body)["cluster_header"]
    return status, body.decode(errors="replace")


def test_many_listeners_sharing_a_vm_each_route_with_their_own_config(wasm, tmp_path):
    with harness.upstreams("backend") as ports:
        clusters = {f"c{i}": ports["backend"] for i in range(LISTENERS)}
        config = harness.bootstrap(listener_plugin(0), clusters, harness.free_port(), harness.free_port())
        listener_ports = [config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]]
        for i in range(1, LISTENERS):
            port = harness.free_port()
            add_listener(config, f"listener{i}", port, listener_plugin(i))
            listener_ports.append(port)
        with harness.Envoy(config, tmp_path) as envoy:
            for _ in range(3):
                for i, port in enumerate(listener_ports):
                    # Several connections, so both workers' VMs serve each listener.
                    for _ in range(4):
                        assert cluster_seen(port, "svc") == f"c{i}", f"listener {i}"
                    # A service only another listener's config names is unknown here.
                    other = (i + 1) % LISTENERS
                    assert cluster_seen(port, f"only{other}")[0] == 404, f"listener {i}"
                    assert cluster_seen(port, f"only{i}") == f"c{i}"
            stats = envoy.stats("meshsplit.requests_without_plan")
            assert all(v == 0 for v in stats.values()), stats
        # One accepted-configuration line per listener config, whatever the number of VMs (the
        # log is complete once Envoy has exited).
        accepted = re.findall(r"configuration ([0-9a-f]{8}) accepted for meshsplit: 2 services",
                              envoy.log())
        assert len(accepted) == LISTENERS and len(set(accepted)) == LISTENERS, accepted


def ecds_plugin(version):
    """Version v of the ECDS-delivered config: `svc` goes to cluster e{v}, `hold` to the slow
    upstream through cluster slow{v}, and `only_ecds` exists only here."""
    return {"services": [
        {"name": "svc", "upstreams": [{"name": "u", "cluster": f"e{version}", "weight": 1}]},
        {"name": "hold", "upstreams": [{"name": "u", "cluster": f"slow{version}", "weight": 1}]},
        {"name": "only_ecds", "upstreams": [{"name": "u", "cluster": f"e{version}", "weight": 1}]}]}


VERSIONS = 12
HOLD_S = 8.0


def test_ecds_updates_with_requests_held_open_never_reach_a_static_listener(wasm, tmp_path):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    test_reload.publish(ecds, 1, ecds_plugin(1))
    static_plugin = {"services": [
        {"name": "svc", "upstreams": [{"name": "u", "cluster": "static", "weight": 1}]}]}
    with harness.upstreams("backend") as fast, harness.upstreams("slow", delay=HOLD_S) as slow:
        clusters = {"static": fast["backend"]}
        clusters.update({f"e{v}": fast["backend"] for v in range(1, VERSIONS + 1)})
        clusters.update({f"slow{v}": slow["slow"] for v in range(1, VERSIONS + 1)})
        config = test_reload.ecds_bootstrap(ecds, clusters, ecds_plugin(1))
        # The static listener shares the VM (same vm_id and module) with the ECDS one.
        static_port = harness.free_port()
        plain = harness.bootstrap(static_plugin, clusters, static_port, harness.free_port())
        static_listener = plain["static_resources"]["listeners"][0]
        static_listener["name"] = "static"
        static_listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "static"
        config["static_resources"]["listeners"].append(static_listener)
        ecds_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]

        with harness.Envoy(config, tmp_path) as envoy, \
                concurrent.futures.ThreadPoolExecutor(2 * VERSIONS) as pool:
            assert cluster_seen(static_port, "svc") == "static"
            held = []
            for version in range(1, VERSIONS + 1):
                if version > 1:
                    test_reload.publish(ecds, version, ecds_plugin(version))
                assert harness.wait_for(lambda: cluster_seen(ecds_port, "svc") == f"e{version}",
                                        timeout=10), f"version {version} not applied"
                # Requests held open keep this version's filter instance (root context) alive.
                for _ in range(2):
                    held.append((version, pool.submit(cluster_seen, ecds_port, "hold")))
                time.sleep(0.2)
            # The static listener was left alone during the updates; it still routes with its
            # own config, and never reaches services only the ECDS config names.
            for _ in range(8):
                assert cluster_seen(static_port, "svc") == "static"
                assert cluster_seen(static_port, "only_ecds")[0] == 404
            assert cluster_seen(ecds_port, "svc") == f"e{VERSIONS}"
            # Each held request was routed with the config of its own version.
            for version, future in held:
                assert future.result(timeout=HOLD_S + 20) == f"slow{version}"
            stats = envoy.stats("meshsplit.requests_without_plan")
            assert all(v == 0 for v in stats.values()), stats
