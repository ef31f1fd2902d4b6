"""Weighted splitting through real Envoy (--concurrency 2) and real loopback upstreams, for every
build: the wasm filter, the native filter and the native cluster specifier."""
import json

import pytest

import harness
import stats
from stats import chi_square

SAMPLES = 4000
P_MIN = stats.P_MIN
FALLBACK = (404, "fallback route: no meshsplit service matched\n")
# The cluster specifier selects no cluster for an unknown service: the route's not-found code.
NOT_FOUND = (404, "")
ALL = ("wasm", "native", "specifier")
FILTERS = ("wasm", "native")
pytestmark = pytest.mark.builds(*ALL)


def unknown_answer():
    """What a request for an unknown service gets with on_unknown_service "pass"."""
    return NOT_FOUND if harness.BUILD == "specifier" else FALLBACK


def service(name, upstreams, **extra):
    return {"name": name, "upstreams": [
        dict({"name": u, "cluster": f"{name}_{u}", "weight": w}, **a) for u, w, a in upstreams
    ], **extra}


WEIGHTS = {
    "services": [
        service("split", [("v1", 90, {}), ("v2", 10, {}), ("v3", 0, {})]),
        service("three", [("a", 50, {}), ("b", 30, {}), ("c", 20, {})]),
        service("rewrite", [("v1", 1, {"authority": "rewritten.internal:8443"})]),
        service("keep", [("v1", 1, {})]),
    ]
}
WEIGHTS_UPSTREAMS = ["split_v1", "split_v2", "split_v3", "three_a", "three_b", "three_c",
                     "rewrite_v1", "keep_v1"]


def weights(build):
    """WEIGHTS as `build` takes it: the cluster specifier refuses an authority rewrite."""
    if build != "specifier":
        return WEIGHTS
    return dict(WEIGHTS, services=[s for s in WEIGHTS["services"] if s["name"] != "rewrite"])


@pytest.fixture(scope="module")
def envoy(deploy, build):
    return deploy(weights(build), WEIGHTS_UPSTREAMS)


def assert_split(seen, expected):
    """All answers come from `expected` ({upstream: weight}) and the counts fit the weights."""
    assert set(seen) <= set(expected), f"unexpected answers: {seen}"
    observed = [seen.get(u, 0) for u in expected]
    stat, p = chi_square(observed, list(expected.values()))
    assert p > P_MIN, f"chi-square {stat:.2f} (p={p:.2g}) for {dict(zip(expected, observed))}"
    for u, w in expected.items():
        if w == 0:
            assert seen.get(u, 0) == 0, f"drained upstream {u} got {seen[u]} requests"


def test_ninety_ten_split_follows_weights_and_drained_upstream_gets_nothing(envoy):
    seen = harness.send(envoy.port, SAMPLES, {"Host": "split"})
    assert sum(seen.values()) == SAMPLES
    assert_split(seen, {"split_v1": 90, "split_v2": 10, "split_v3": 0})


def test_three_way_split_follows_weights(envoy):
    seen = harness.send(envoy.port, SAMPLES, {"Host": "three"})
    assert_split(seen, {"three_a": 50, "three_b": 30, "three_c": 20})


def test_host_matching_ignores_case_and_port(envoy):
    seen = harness.send(envoy.port, 50, {"Host": "SPLIT:9080"})
    assert set(seen) <= {"split_v1", "split_v2"} and sum(seen.values()) == 50


@pytest.mark.builds(*FILTERS)
def test_upstream_sees_rewritten_authority(envoy):
    status, _, body = harness.Client(envoy.port).get("/", {"Host": "rewrite:9080"})
    assert status == 200
    assert json.loads(body)["host"] == "rewritten.internal:8443"


def test_upstream_without_authority_sees_original_authority(envoy):
    status, _, body = harness.Client(envoy.port).get("/", {"Host": "Keep:9080"})
    assert status == 200
    answer = json.loads(body)
    assert (answer["upstream"], answer["host"]) == ("keep_v1", "Keep:9080")


def test_client_cluster_header_is_overwritten_for_known_service(envoy):
    # If the client's header were honoured every request would reach the drained split_v3.
    seen = harness.send(envoy.port, SAMPLES, {"Host": "split", "x-meshsplit-cluster": "split_v3"})
    assert_split(seen, {"split_v1": 90, "split_v2": 10, "split_v3": 0})


@pytest.mark.builds(*FILTERS)
def test_upstream_receives_the_chosen_cluster_header(envoy):
    _, _, body = harness.Client(envoy.port).get("/", {"Host": "keep", "x-meshsplit-cluster": "split_v1"})
    assert json.loads(body)["cluster_header"] == "keep_v1"


def test_client_cluster_header_is_removed_for_unknown_service(envoy):
    seen = harness.send(envoy.port, 200, {"Host": "unknown", "x-meshsplit-cluster": "split_v1"})
    assert seen == {unknown_answer(): 200}


def test_unknown_service_with_pass_reaches_fallback_route(envoy):
    status, _, body = harness.Client(envoy.port).get("/", {"Host": "nope.example"})
    assert (status, body.decode()) == unknown_answer()


@pytest.mark.builds("specifier")
def test_specifier_answers_unknown_service_with_reject_404_without_body(deploy, build):
    envoy = deploy(dict(weights(build), on_unknown_service="reject"), WEIGHTS_UPSTREAMS)
    client = harness.Client(envoy.port)
    assert client.get("/", {"Host": "Nope:80"})[0] == 404
    status, _, body = client.get("/", {"Host": "keep"})
    assert (status, json.loads(body)["upstream"]) == (200, "keep_v1")


@pytest.mark.builds(*FILTERS)
def test_unknown_service_with_reject_gets_404_json(deploy):
    envoy = deploy(dict(WEIGHTS, on_unknown_service="reject"), WEIGHTS_UPSTREAMS)
    client = harness.Client(envoy.port)
    status, headers, body = client.get("/", {"Host": "Nope:80", "x-meshsplit-cluster": "keep_v1"})
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "unknown service", "service": "nope"}
    # Known services are unaffected.
    status, _, body = client.get("/", {"Host": "keep"})
    assert (status, json.loads(body)["upstream"]) == (200, "keep_v1")


def test_service_from_header_selects_the_service(deploy, build):
    envoy = deploy(dict(weights(build), service_from={"header": "x-service"}), WEIGHTS_UPSTREAMS)
    seen = harness.send(envoy.port, 400, {"Host": "keep", "x-service": "three"})
    assert set(seen) == {"three_a", "three_b", "three_c"}
    # The authority no longer selects anything.
    assert harness.send(envoy.port, 10, {"Host": "keep"}) == {unknown_answer(): 10}


def test_service_from_query_selects_the_service(deploy, build):
    envoy = deploy(dict(weights(build), service_from={"query": "service"}), WEIGHTS_UPSTREAMS)
    assert harness.send(envoy.port, 20, {"Host": "split"}, path="/api?service=keep") == {"keep_v1": 20}
    # URL-decoded, and other parameters are ignored.
    assert harness.send(envoy.port, 20, path="/api?x=1&service=%6Beep&y=2") == {"keep_v1": 20}
    assert harness.send(envoy.port, 10, {"Host": "keep"}, path="/api") == {unknown_answer(): 10}


def start_refused(plugin, tmp_path):
    """Starts Envoy with an invalid plugin config; returns (exit code, log). The log is read
    after Envoy exits: it is flushed lazily."""
    config = harness.bootstrap(plugin, {"split_v1": harness.free_port()}, harness.free_port(),
                               harness.free_port())
    envoy = harness.Envoy(config, tmp_path).start(wait=False)
    try:
        code = envoy.wait_exit()
    finally:
        envoy.stop()
    return code, envoy.log()


def test_envoy_refuses_to_start_with_invalid_config(build, tmp_path):
    bad = {"services": [service("split", [("v1", 1, {}), ("v2", 5000000, {})])]}
    code, log = start_refused(bad, tmp_path)
    assert code != 0
    assert ("invalid configuration: services[0].upstreams[1].weight: must be at most 1000000, "
            "got 5000000") in log, log[-5000:]


def test_envoy_refuses_to_start_with_unknown_field(build, tmp_path):
    bad = {"services": [service("split", [("v1", 1, {"wieght": 3})])]}
    code, log = start_refused(bad, tmp_path)
    assert code != 0
    assert "services[0].upstreams[0].wieght: unknown field \"wieght\"" in log, log[-5000:]


@pytest.mark.parametrize("field,value,path,message", [
    ("service_from", "header", "service_from",
     'expected "authority" or {"header": NAME} or {"query": NAME}, got the string "header"'),
    ("hash_on", "cookie", "services[0].hash_on",
     'expected {"header": NAME} or {"cookie": NAME} or {"query": NAME}, got the string "cookie"'),
])
def test_a_key_source_written_as_a_plain_string_is_refused_in_plain_words(build, tmp_path, field,
                                                                          value, path, message):
    """What a new user writes first: the error names the field they wrote and says what it takes,
    in the configuration's words (no serde vocabulary)."""
    bad = {"services": [service("split", [("v1", 1, {})])]}
    if field == "hash_on":
        bad["services"][0].update(strategy="sticky", hash_on=value)
    else:
        bad[field] = value
    code, log = start_refused(bad, tmp_path)
    assert code != 0
    assert f"invalid configuration: {path}: {message} at line 1 column " in log, log[-5000:]
    assert "variant" not in log, log[-5000:]


@pytest.mark.builds("specifier")
def test_specifier_refuses_an_authority_rewrite_and_says_what_to_do_instead(build, tmp_path):
    code, log = start_refused(WEIGHTS, tmp_path)
    assert code != 0
    assert ("invalid configuration: services[2].upstreams[0].authority: a cluster specifier cannot "
            "rewrite headers; remove it and set auto_host_rewrite: true on the route") in log, log[-5000:]


@pytest.mark.builds("native")
def test_native_module_reports_the_abi_version_envoy_speaks(build, tmp_path):
    config = harness.bootstrap(WEIGHTS, {}, harness.free_port(), harness.free_port())
    with harness.Envoy(config, tmp_path) as envoy:
        pass
    # Read after Envoy exits: the log is flushed lazily.
    assert "Dynamic module ABI version v0.2.0 matched." in envoy.log(), envoy.log()[-5000:]


def test_two_filters_sharing_a_vm_keep_their_own_configs(build, tmp_path):
    """Two listeners, each with a meshsplit filter of the same vm_id (so one VM per worker; for
    the native builds: one module, one thread-local plan per config) but different plugin
    configs: each listener routes with its own config."""
    with harness.upstreams("one", "two") as ports:
        config = harness.bootstrap(
            {"services": [service("svc", [("u", 1, {})])]}, {}, harness.free_port(), harness.free_port(),
            build="wasm")
        plugin = lambda cluster: {"services": [  # noqa: E731
            {"name": "svc", "upstreams": [{"name": "u", "cluster": cluster, "weight": 1}]}]}
        first = config["static_resources"]["listeners"][0]
        second = json.loads(json.dumps(first))
        second["name"] = "second"
        second["address"]["socket_address"]["port_value"] = harness.free_port()
        config["static_resources"]["listeners"].append(second)
        for listener, cluster in ((first, "one"), (second, "two")):
            harness.wasm_filter({"static_resources": {"listeners": [listener]}})[
                "typed_config"]["config"]["configuration"]["value"] = json.dumps(plugin(cluster))
        config["static_resources"]["clusters"] = [harness.static_cluster(n, p) for n, p in ports.items()]
        harness.use_build(config, build)
        with harness.Envoy(config, tmp_path) as envoy:
            second_port = second["address"]["socket_address"]["port_value"]
            for _ in range(3):  # interleaved, over fresh and reused connections
                assert harness.send(envoy.port, 50, {"Host": "svc"}) == {"one": 50}
                assert harness.send(second_port, 50, {"Host": "svc"}) == {"two": 50}
