"""The shipped native config: both modes load from one libmeshsplit.so."""
import pytest

import harness


@pytest.mark.builds("native")
def test_envoy_native_yaml_validates_with_both_modes(build):
    proc = harness.validate(harness.ENVOY_DIR / "envoy-native.yaml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Dynamic module ABI version v0.2.0 matched." in proc.stdout
    # One accepted configuration per mode: the HTTP filter's and the cluster specifier's.
    assert proc.stdout.count("accepted for meshsplit: 1 service, 3 upstreams") == 2, proc.stdout[-5000:]


def shipped_native_config():
    """envoy/envoy-native.yaml as shipped, its fixed loopback ports (admin, both listeners and the
    three upstreams) moved to free ones so the test cannot collide with anything else running;
    nothing else is changed. Returns (config, {listener name: port}, {cluster: port})."""
    config = harness.load_yaml(harness.ENVOY_DIR / "envoy-native.yaml")
    config["admin"]["address"]["socket_address"]["port_value"] = harness.free_port()
    listeners = {}
    for listener in config["static_resources"]["listeners"]:
        port = harness.free_port()
        listener["address"]["socket_address"]["port_value"] = port
        listeners[listener["name"]] = port
    clusters = {}
    for cluster in config["static_resources"]["clusters"]:
        port = harness.free_port()
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                endpoint["endpoint"]["address"]["socket_address"]["port_value"] = port
        clusters[cluster["name"]] = port
    return config, listeners, clusters


@pytest.mark.builds("native")
def test_envoy_native_yaml_answers_on_both_listeners(build, tmp_path):
    """Every listener of the shipped native config answers: the split by its weights (80/15/5),
    the header rule, and an unknown host as the config's comments say (the filter listener's
    fallback route answers 404; the specifier listener's not-found code, 404). A listener
    without a router accepts requests and never answers them: the client times out here."""
    from stats import P_MIN, chi_square

    config, listeners, clusters = shipped_native_config()
    assert set(listeners) == {"meshsplit", "meshsplit_specifier"}, listeners
    servers = {name: harness.upstream.serve(name, port) for name, port in clusters.items()}
    try:
        with harness.Envoy(config, tmp_path):
            for listener, port in listeners.items():
                seen = harness.send(port, 2000, {"Host": "reviews"})
                assert set(seen) <= set(clusters) and sum(seen.values()) == 2000, (listener, seen)
                observed = [seen.get(c, 0) for c in ("reviews_v1", "reviews_v2", "reviews_v3")]
                stat, p = chi_square(observed, [80, 15, 5])
                assert p > P_MIN, (listener, stat, seen)
                assert harness.send(port, 20, {"Host": "reviews", "x-canary": "true"}) == \
                    {"reviews_v3": 20}, listener
                client = harness.Client(port)
                status, _, body = client.get("/", {"Host": "nope"})
                assert status == 404, (listener, status, body)
                # v1's :authority is rewritten on both listeners (the filter's `authority`, the
                # specifier listener's auto_host_rewrite from the endpoint's hostname).
                for _ in range(50):
                    status, _, body = client.get("/", {"Host": "reviews"})
                    answer = harness.json.loads(body)
                    if answer["upstream"] == "reviews_v1":
                        assert answer["host"] == "reviews-v1.internal", (listener, answer)
                        break
                else:
                    raise AssertionError(f"{listener}: no answer from reviews_v1 in 50 requests")
                client.close()
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
