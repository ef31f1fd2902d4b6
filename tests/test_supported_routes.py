"""The split routed by the control planes' own APIs, no EnvoyFilter: `meshsplit render` writes
the manifests, tests/control_planes.py turns them into the Envoy configuration each control plane
generates (Istio sidecar with a VirtualService or an HTTPRoute, Istio ambient waypoint, Envoy
Gateway), and real Envoy runs it with the module (wasm) or, on Envoy Gateway's plain Envoy, the
native filter (rendered with `--native`: the policy's `dynamicModule` and the EnvoyProxy that
registers the library, from the proxy's filesystem or fetched by Envoy over http(s)).

What each shape must show: the split follows the weights (chi-square) while clients send their
own `x-meshsplit-upstream`; no upstream sees that header; a rule pins to its version; requests
the filter did not tag (a pod without it, a name of the service the config does not list) take
the weighted default route; the guard's ejection and a rollout step move traffic; and, for Envoy
Gateway, a policy enabled on one rule only leaves the filter out of untagged requests (why the
policy targets the whole HTTPRoute)."""
import collections
import concurrent.futures
import datetime
import functools
import hashlib
import http.server
import json
import re
import shlex
import struct
import subprocess
import threading
import time

import pytest
import yaml

import control_planes
import harness
import istio
import stats
from stats import chi_square
from test_cli import cli  # noqa: F401  (the session fixture that builds the command)

CRD_VALIDATE = harness.ROOT.parent / "shared" / "tools" / "crd-validate"
HEADER = "x-meshsplit-upstream"
VERSIONS = ("v1", "v2", "v3")
WEIGHTS = (80, 15, 5)
REQUESTS = 600
MODULE = "oci://registry.example/meshsplit:0.2.0"

PLUGIN = {
    "upstream_header": HEADER,
    "services": [{
        "name": "reviews",
        "hosts": ["reviews"],
        "upstreams": [{"name": v, "cluster": f"reviews_{v}", "weight": w}
                      for v, w in zip(VERSIONS, WEIGHTS)],
        "rules": [{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v3"}],
    }],
}

# shape: (render target, builder, the Host clients send, builds)
SHAPES = {
    "sidecar-virtualservice": ("sidecar", control_planes.sidecar_virtual_service, "reviews:9080"),
    "sidecar-httproute": ("sidecar-httproute", control_planes.sidecar_http_route, "reviews"),
    "waypoint": ("ambient", control_planes.waypoint_http_route, "reviews.default.svc.cluster.local:9080"),
    "envoy-gateway": ("envoy-gateway", control_planes.envoy_gateway, "reviews.example.com"),
}
# (shape, variant): the native filter runs where the proxy is plain Envoy.
CASES = [("sidecar-virtualservice", "wasm"), ("sidecar-httproute", "wasm"), ("waypoint", "wasm"),
         ("envoy-gateway", "wasm"), ("envoy-gateway", "native")]


def for_target(target, plugin):
    """The plugin config as each target names the service: a mesh by its Kubernetes Service
    (render adds the Service's other names), Envoy Gateway by the hostname clients use."""
    if target != "envoy-gateway":
        return plugin
    plugin = json.loads(json.dumps(plugin))
    for service in plugin["services"]:
        service["hosts"] = [f"{service['name']}.example.com"]
    return plugin


def render(cli, tmp_path, target, plugin=PLUGIN, *extra):
    """The rendered documents; `extra` options after the target (a `--module` of their own
    replaces MODULE)."""
    source = tmp_path / "plugin.json"
    source.write_text(json.dumps(for_target(target, plugin)))
    module = [] if "--module" in extra else ["--module", MODULE]
    out = subprocess.run([str(cli), "render", "--target", target, *module, *extra,
                          str(source)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def module_for(build):
    """The module of `build`, built (or found up to date) once per test session: `make build`
    optimizes both modules again each time it runs."""
    if build == "wasm":
        return harness.build_wasm()
    harness.build_native()
    return None


# The native build on Envoy Gateway: the dynamic module policy and the EnvoyProxy registering
# the library, here the release build on the proxy's (this machine's) filesystem.
NATIVE_RENDER = ["--native", "--module", f"file://{harness.NATIVE}"]


def build_config(cli, tmp_path, shape, variant, ports, plugin=PLUGIN, **options):
    target, builder, _ = SHAPES[shape]
    docs = render(cli, tmp_path, target, plugin, *(NATIVE_RENDER if variant == "native" else ()))
    if variant != "wasm":
        options["build"] = variant
    return builder(docs, module_for(variant), ports, **options)


def send(port, count, headers, connections=4):
    """Sends `count` GETs; returns [(status, body as JSON or text)]."""
    def worker(n):
        client = harness.Client(port)
        answers = []
        try:
            for _ in range(n):
                status, _, body = client.get("/", headers)
                try:
                    answers.append((status, json.loads(body)))
                except ValueError:
                    answers.append((status, body.decode(errors="replace")))
        finally:
            client.close()
        return answers

    shares = [count // connections + (1 if i < count % connections else 0) for i in range(connections)]
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        return [a for answers in pool.map(worker, shares) for a in answers]


def upstreams_of(answers):
    return collections.Counter(body["upstream"] if status == 200 and isinstance(body, dict)
                               else (status, str(body)) for status, body in answers)


def assert_weighted(seen, weights=WEIGHTS):
    assert set(seen) <= set(VERSIONS), seen
    stat, p = chi_square([seen.get(v, 0) for v in VERSIONS], weights)
    assert p > stats.P_MIN, (stat, seen)


@pytest.mark.parametrize("shape,variant", CASES)
def test_the_split_follows_the_weights_and_no_upstream_sees_the_header(cli, tmp_path, shape, variant):
    host = SHAPES[shape][2]
    with harness.upstreams(*VERSIONS, "other") as ports, \
            harness.Envoy(build_config(cli, tmp_path, shape, variant, ports), tmp_path) as envoy:
        # Every client claims v3: the filter overwrites the claim, so the weights still decide.
        answers = send(envoy.port, REQUESTS, {"Host": host, HEADER: "v3"})
        pinned = send(envoy.port, 60, {"Host": host, "x-canary": "true"})
    assert len(answers) == REQUESTS
    assert_weighted(upstreams_of(answers))
    assert [body["upstream_header"] for _, body in answers + pinned] == [None] * (REQUESTS + 60)
    # The canary rule pins to v3.
    assert upstreams_of(pinned) == {"v3": 60}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_untagged_requests_take_the_weighted_default_route(cli, tmp_path, shape):
    """A proxy without the filter (a pod without it, a module that failed open): the default
    route splits by the config's weights on its own."""
    host = SHAPES[shape][2]
    with harness.upstreams(*VERSIONS, "other") as ports, \
            harness.Envoy(build_config(cli, tmp_path, shape, "wasm", ports, with_filter=False)
                          if shape != "envoy-gateway" else
                          build_config(cli, tmp_path, shape, "wasm", ports, policy_rules=set()),
                          tmp_path) as envoy:
        answers = send(envoy.port, REQUESTS, {"Host": host})
    assert_weighted(upstreams_of(answers))
    assert [body["upstream_header"] for _, body in answers] == [None] * REQUESTS


@pytest.mark.parametrize("shape,variant", CASES)
def test_unknown_hosts_keep_the_proxys_own_routes(cli, tmp_path, shape, variant):
    """`on_unknown_service: pass`: a host the config does not name gets what it got without the
    filter: the sidecar's passthrough, Envoy Gateway's 404, and on reviews' waypoint chain (which
    only reviews' traffic reaches) the weighted default."""
    with harness.upstreams(*VERSIONS, "other") as ports, \
            harness.Envoy(build_config(cli, tmp_path, shape, variant, ports), tmp_path) as envoy:
        answers = send(envoy.port, 200, {"Host": "unknown.example.com", HEADER: "v3"}, connections=2)
    seen = upstreams_of(answers)
    if shape.startswith("sidecar"):
        assert seen == {"other": 200}
    elif shape == "envoy-gateway":
        assert set(seen) == {(404, "")}, seen
    else:
        # The client's claim was removed: the default route's split, not v3.
        assert_weighted(seen)


@pytest.mark.parametrize("shape", ["sidecar-virtualservice", "sidecar-httproute"])
def test_hosts_the_filter_does_not_know_but_the_routes_do_take_the_weighted_default(
        cli, tmp_path, shape):
    """A name of reviews that the config does not list but the sidecar's virtual host for reviews
    does: the cluster IP with the port, as clients that resolved the Service send it (istiod puts
    the cluster IP in the domains; the port is ignored in host matching). The filter passes the
    request (`on_unknown_service: pass`) but still removes the client's claim, so the header
    routes do not take it: the default route splits by the weights, and no upstream sees the
    header."""
    host = f"{istio.CLUSTER_IP}:{istio.PORT}"
    with harness.upstreams(*VERSIONS, "other") as ports, \
            harness.Envoy(build_config(cli, tmp_path, shape, "wasm", ports), tmp_path) as envoy:
        answers = send(envoy.port, REQUESTS, {"Host": host, HEADER: "v3"})
        # The same name with the canary header: the rule is the config's, the host is not.
        canary = send(envoy.port, 60, {"Host": host, "x-canary": "true"}, connections=2)
    assert len(answers) == REQUESTS
    assert_weighted(upstreams_of(answers))
    assert [body["upstream_header"] for _, body in answers + canary] == [None] * (REQUESTS + 60)
    assert upstreams_of(canary) != {"v3": 60}  # the canary rule is not pinned: not a known host


def test_a_policy_on_one_rule_leaves_untagged_requests_without_the_filter(cli, tmp_path):
    """Envoy Gateway adds the filter disabled and enables it per route; Envoy creates it only if
    the route matched before it ran enables it. An untagged request first matches the default
    rule: a policy that covers only the header rules never runs the filter, and the canary rule
    does nothing. The rendered policy targets the whole HTTPRoute for this reason."""
    with harness.upstreams(*VERSIONS, "other") as ports, \
            harness.Envoy(build_config(cli, tmp_path, "envoy-gateway", "wasm", ports,
                                       policy_rules={0, 1, 2}), tmp_path) as envoy:
        answers = send(envoy.port, REQUESTS, {"Host": "reviews.example.com", "x-canary": "true"})
    assert_weighted(upstreams_of(answers))


class ModuleServer(http.server.ThreadingHTTPServer):
    """Serves one file at /NAME over HTTP on loopback; `fetched` counts the GETs."""

    def __init__(self, path):
        self.file, self.fetched = path, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != f"/{server.file.name}":
                    self.send_error(404)
                    return
                server.fetched += 1
                data = server.file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.server_port}/{self.file.name}"


def test_the_native_module_envoy_fetches_splits_the_same(cli, tmp_path, monkeypatch):
    """Rendered with an http(s) `--module` and its `--sha256`, the EnvoyProxy registers a remote
    source: Envoy Gateway hands Envoy the URL, the digest and a cluster for the URL's host, and
    Envoy fetches the library and checks it before it loads it (here over plain HTTP from
    loopback, which Envoy Gateway accepts too). The filter then splits, pins and removes the
    header as the library on the proxy's filesystem does."""
    # Envoy keeps what it fetched as $TMPDIR/envoy_dynamic_module_SHA256.so and loads that file
    # instead while it exists: a fresh directory, so that this Envoy fetches.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    module = harness.build_native()
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    server = ModuleServer(module)
    try:
        docs = render(cli, tmp_path, "envoy-gateway", PLUGIN, "--native", "--module", server.url(),
                      "--sha256", digest)
        with harness.upstreams(*VERSIONS, "other") as ports, \
                harness.Envoy(control_planes.envoy_gateway(docs, None, ports, build="native"),
                              tmp_path) as envoy:
            answers = send(envoy.port, REQUESTS, {"Host": "reviews.example.com", HEADER: "v3"})
            pinned = send(envoy.port, 60, {"Host": "reviews.example.com", "x-canary": "true"})
    finally:
        server.shutdown()
        server.server_close()
    assert server.fetched >= 1
    assert (tmp_path / f"envoy_dynamic_module_{digest}.so").read_bytes() == module.read_bytes()
    assert_weighted(upstreams_of(answers))
    assert upstreams_of(pinned) == {"v3": 60}
    assert [body["upstream_header"] for _, body in answers + pinned] == [None] * (REQUESTS + 60)


def guarded_plugin(start):
    """v1/v2 50/50 as configured until `start`, when the rollout's one step puts v2/v3 50/50."""
    plugin = json.loads(json.dumps(PLUGIN))
    service = plugin["services"][0]
    for upstream, weight in zip(service["upstreams"], (50, 50, 0)):
        upstream["weight"] = weight
    service["guard"] = {"error_rate": 0.2, "min_requests": 10, "window_s": 5, "eject_s": 600,
                        "max_ejected_percent": 50}
    service["rollout"] = {"start": start, "interpolate": False, "steps": [
        {"at_s": 0, "weights": {"v2": 50, "v3": 50}}]}
    return plugin


# When the rollout starts, seconds after the config is written (the module built before): Envoy
# must be ready, the guard must have ejected v2 and the first phase be measured before it. Envoy
# is ready in about 1 s and the ejection takes about 2 s; on a machine busy with the rest of the
# suite the two took up to 12 s, so 25 s leaves twice that.
ROLLOUT_START_S = 25


@pytest.mark.parametrize("shape,variant", CASES)
def test_the_guard_and_a_rollout_step_move_tagged_traffic(cli, tmp_path, shape, variant):
    """v2 fails every request: the guard ejects it, and the configured 50/50 between v1 and v2
    goes all to v1; the rollout's step (v2/v3 50/50, v2 still ejected) sends everything to v3."""
    host = SHAPES[shape][2]
    module_for(variant)  # a build on a busy machine can take a minute: not in the rollout's time
    start = (datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
             + datetime.timedelta(seconds=ROLLOUT_START_S))
    plugin = guarded_plugin(start.strftime("%Y-%m-%dT%H:%M:%SZ"))
    step_at = start.timestamp()
    with harness.upstream_servers(*VERSIONS, "other") as servers:
        servers["v2"].status = 503
        ports = {n: s.server_port for n, s in servers.items()}
        with harness.Envoy(build_config(cli, tmp_path, shape, variant, ports, plugin=plugin),
                           tmp_path) as envoy:
            # Until the guard ejects v2 (its window needs 10 requests, 20 % failing; the tick
            # runs every 500 ms), bounded by time.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if upstreams_of(send(envoy.port, 40, {"Host": host}, connections=2)) == {"v1": 40}:
                    break
            # That sample may have met only the worker that decided: the other follows on its
            # next tick (500 ms), later on a busy machine.
            time.sleep(1.0)
            assert time.time() < step_at - 1, "too slow to see the first phase (machine overloaded)"
            before = upstreams_of(send(envoy.port, 100, {"Host": host}, connections=2))
            time.sleep(max(0.0, step_at + 1.5 - time.time()))
            # Every worker follows the step on its next tick (500 ms); a busy machine may delay
            # one: wait until a sample shows only v3, then measure.
            harness.wait_for(lambda: upstreams_of(send(envoy.port, 20, {"Host": host},
                                                       connections=2)) == {"v3": 20}, timeout=15)
            after = upstreams_of(send(envoy.port, 100, {"Host": host}, connections=2))
    assert before == {"v1": 100}
    assert after == {"v3": 100}


# --- The manifests ---------------------------------------------------------------------------------

TARGETS = ("sidecar", "sidecar-httproute", "ambient", "envoy-gateway")
# rendering: (target, render options); the native build on Envoy Gateway from the proxy's
# filesystem and from https.
RENDERINGS = {
    **{t: (t, ["--sha256", "a" * 64] if t == "envoy-gateway" else []) for t in TARGETS},
    "envoy-gateway-native": ("envoy-gateway",
                             ["--native", "--module", "file:///usr/lib/envoy/libmeshsplit.so"]),
    "envoy-gateway-native-https": ("envoy-gateway",
                                   ["--native", "--module", "https://example.com/libmeshsplit.so",
                                    "--sha256", "a" * 64]),
}


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_rendered_manifests_validate_against_their_crds(cli, tmp_path, rendering):
    target, extra = RENDERINGS[rendering]
    out = tmp_path / f"{rendering}.yaml"
    docs = render(cli, tmp_path, target, PLUGIN, *extra)
    out.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([str(CRD_VALIDATE), str(out)], capture_output=True, text=True,
                            timeout=120, env={"PATH": f"{harness.ROOT / '.venv' / 'bin'}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s)" in result.stdout + result.stderr
    # Every route removes the header, and the default route carries the config's weights.
    kinds = [d["kind"] for d in docs]
    if target == "sidecar":
        assert kinds == ["WasmPlugin", "DestinationRule", "VirtualService"]
        http = docs[2]["spec"]["http"]
        assert all(h["headers"] == {"request": {"remove": [HEADER]}} for h in http)
        assert [d["weight"] for d in http[-1]["route"]] == list(WEIGHTS)
    else:
        first = ["EnvoyExtensionPolicy"] if target == "envoy-gateway" else ["WasmPlugin"]
        if "--native" in extra:
            # The policy's module is the one the EnvoyProxy registers.
            first.append("EnvoyProxy")
            assert [m["name"] for m in docs[0]["spec"]["dynamicModule"]] == \
                [m["name"] for m in docs[1]["spec"]["dynamicModules"]]
            assert "wasm" not in docs[0]["spec"]
        assert kinds == [*first, "Service", "Service", "Service", "HTTPRoute"]
        rules = docs[-1]["spec"]["rules"]
        assert all(r["filters"] == [{"type": "RequestHeaderModifier",
                                     "requestHeaderModifier": {"remove": [HEADER]}}] for r in rules)
        assert [b["weight"] for b in rules[-1]["backendRefs"]] == list(WEIGHTS)


@pytest.mark.parametrize("args,message", [
    (["--target", "envoy-gateway", "--module", "https://example.com/m.wasm"], "--sha256 is required"),
    (["--target", "envoy-gateway", "--module", "file:///m.wasm"], "oci:// or https://"),
    (["--target", "sidecar", "--module", "ftp://x"], "oci://, https:// or file://"),
    (["--target", "sidecar", "--module", MODULE, "--namespace", "Prod"], "--namespace: \"Prod\""),
    (["--target", "ambient", "--native", "--module", "file:///l.so"], "only Envoy Gateway loads"),
    (["--target", "envoy-gateway", "--native", "--module", MODULE], "file:///PATH) or from https://"),
    (["--target", "envoy-gateway", "--native", "--module", "file://l.so"], "an absolute path"),
    (["--target", "envoy-gateway", "--native", "--module", "file:///l.so", "--sha256", "a" * 64],
     "checks no digest of a dynamic module on the proxy's filesystem"),
    (["--target", "envoy-gateway", "--native", "--module", "https://example.com/l.so"],
     "--sha256 is required"),
])
def test_render_refuses_what_the_control_plane_would(cli, tmp_path, args, message):
    source = tmp_path / "plugin.json"
    source.write_text(json.dumps(PLUGIN))
    out = subprocess.run([str(cli), "render", *args, str(source)], capture_output=True, text=True)
    assert out.returncode == 2, out
    assert message in out.stderr, out.stderr


def test_render_refuses_names_kubernetes_cannot_take(cli, tmp_path):
    plugin = json.loads(json.dumps(PLUGIN))
    plugin["services"][0]["upstreams"][1]["name"] = "V2_canary"
    plugin["services"][0]["rules"] = []
    source = tmp_path / "plugin.json"
    source.write_text(json.dumps(plugin))
    out = subprocess.run([str(cli), "render", "--target", "sidecar", "--module", MODULE, str(source)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "services[0].upstreams[1].name: \"V2_canary\" cannot name a Kubernetes Service" in out.stderr


# --- The ABI the re-routing depends on -------------------------------------------------------------

def wasm_exports(path):
    """The names a wasm module exports (its export section)."""
    data = path.read_bytes()
    assert data[:4] == b"\0asm"

    def leb(pos):
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos

    pos, names = 8, []
    while pos < len(data):
        section, pos = data[pos], pos + 1
        size, pos = leb(pos)
        if section == 7:
            count, at = leb(pos)
            for _ in range(count):
                length, at = leb(at)
                names.append(data[at:at + length].decode())
                at += length + 1  # the kind byte
                _, at = leb(at)  # the index
        pos += size
    return names


@pytest.mark.parametrize("module", [harness.WASM, harness.WASM_COOKIE])
def test_the_modules_export_the_abi_for_which_envoy_re_routes(module):
    """Envoy (1.33 and later) clears the route cache after a wasm filter changes request headers
    only for modules of ABI 0.2.1 or older (`context.cc`, `onHeadersModified`; its changelog: "The
    route cache will not be cleared by default if the wasm extension modified the request headers
    and the ABI version of wasm extension is larger then 0.2.1"): every route that matches the
    header depends on it. A module that exported a newer ABI would keep the route matched before
    it ran, and every request would take the default route.

    No such module can be run through Envoy 1.40 to show it: Envoy 1.40 knows no proxy-wasm ABI
    above 0.2.1 and refuses a module that exports only a newer one at load (the next test). So this
    test pins the export, the next one shows that the Envoy the tests run on leaves no other
    choice, and the behaviour itself is guarded by the tests above whose clients all claim
    `x-meshsplit-upstream: v3` and must still split by the weights (the route of the header the
    filter wrote, not the client's)."""
    module_for("wasm")
    abi = [n for n in wasm_exports(module) if n.startswith("proxy_abi_version_")]
    assert abi == ["proxy_abi_version_0_2_1"], abi


ABI_EXPORT = b"proxy_abi_version_0_2_1"


@pytest.mark.parametrize("abi", ["0_2_2", "0_3_0"])
def test_envoy_refuses_a_module_of_a_newer_abi_at_load(tmp_path, abi):
    """The module with its ABI export renamed to a newer version (the same length, so the rest of
    the module is unchanged) does not load: Envoy 1.40 fails the plugin with "Missing or unknown
    Proxy-Wasm ABI version" and does not start. A dependency upgrade that bumped the exported ABI
    would fail every test instead of shipping a module Envoy no longer re-routes for. If this test
    fails after an Envoy upgrade, that Envoy knows the newer ABI: check whether it clears the
    route cache for it before the module may export it."""
    original = module_for("wasm").read_bytes()
    assert original.count(ABI_EXPORT) == 1
    newer = tmp_path / f"meshsplit-abi-{abi}.wasm"
    newer.write_bytes(original.replace(ABI_EXPORT, f"proxy_abi_version_{abi}".encode()))
    assert [n for n in wasm_exports(newer) if n.startswith("proxy_abi_version_")] == \
        [f"proxy_abi_version_{abi}"]
    plugin = json.loads(json.dumps(PLUGIN))
    config = harness.bootstrap(plugin, {f"reviews_{v}": harness.free_port() for v in VERSIONS},
                               harness.free_port(), harness.free_port(), build="wasm")
    harness.use_module(config, newer)
    with pytest.raises(RuntimeError, match="Missing or unknown Proxy-Wasm ABI version"):
        harness.Envoy(config, tmp_path).start()


# --- `meshsplit check` on the routes -----------------------------------------------------------

def check(cli, *files):
    return subprocess.run([str(cli), "check", "--strict", *map(str, files)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_check_passes_the_rendered_manifests_and_names_their_routes(cli, tmp_path, rendering):
    target, extra = RENDERINGS[rendering]
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(render(cli, tmp_path, target, PLUGIN, *extra)))
    result = check(cli, out)
    assert result.returncode == 0, result.stdout + result.stderr
    kind = "VirtualService" if target == "sidecar" else "HTTPRoute"
    assert f"{out}: {kind} default/reviews: ok: routes {HEADER} for services[0] (\"reviews\")" \
        in result.stdout, result.stdout
    assert "warning" not in result.stdout


def render_for_check(cli, tmp_path, target):
    return render(cli, tmp_path, target, PLUGIN, *RENDERINGS[target][1])


@pytest.mark.parametrize("target", TARGETS)
def test_check_warns_about_routes_that_do_not_follow_the_config(cli, tmp_path, target):
    """The plugin config and the routes in two files, as they are usually kept: a missing
    version route, a default route with other weights, a route that keeps the header; the same
    edits on a VirtualService and on each shape's HTTPRoute."""
    docs = render_for_check(cli, tmp_path, target)
    plugin_file, routes_file = tmp_path / "plugin.yaml", tmp_path / "routes.yaml"
    plugin_file.write_text(yaml.safe_dump(docs[0]))
    routes = docs[-1]
    if target == "sidecar":
        http = routes["spec"]["http"]
        del http[1]  # v2's route
        del http[0]["headers"]  # v1's route no longer removes the header
        http[-1]["route"][0]["weight"], http[-1]["route"][1]["weight"] = 90, 10
        kind, v1_route = "VirtualService", 'route "meshsplit-v1"'
        plugin_at = f"{plugin_file}: WasmPlugin default/meshsplit"
    else:
        rules = routes["spec"]["rules"]
        del rules[1]  # v2's rule
        del rules[0]["filters"]  # v1's rule no longer removes the header
        rules[-1]["backendRefs"][0]["weight"], rules[-1]["backendRefs"][1]["weight"] = 90, 10
        kind, v1_route = "HTTPRoute", "rule 0"
        plugin_at = f"{plugin_file}: " + ("EnvoyExtensionPolicy default/meshsplit wasm[0]"
                                          if target == "envoy-gateway" else "WasmPlugin default/meshsplit")
    routes_file.write_text(yaml.safe_dump(routes))
    result = check(cli, plugin_file, routes_file)
    assert result.returncode == 1, result.stdout + result.stderr
    warnings = [l for l in result.stdout.splitlines() if l.startswith("warning: ")]
    at = f"warning: {routes_file}: {kind} default/reviews: "
    expected = [
        f"{at}{v1_route} for {HEADER}: v1 does not remove {HEADER}: the upstream sees it",
        f"{at}no route matches {HEADER}: v2: the requests services[0] (\"reviews\") of "
        f"{plugin_at} sends to upstream \"v2\" take another route",
        f"{at}the default route's weights (v1 90, v3 5, and 10 to backends no version's route names) "
        f"are not the config's (v1 80, v3 5): requests without {HEADER} split differently from the filter's",
    ]
    if target == "envoy-gateway":
        # Envoy Gateway names a rule's cluster by its index: v3's rule moved up one, so the
        # cluster the config names for v3 is no longer the one its rule sends to.
        expected.insert(2, f"{at}rule 1 sends {HEADER}: v3 to reviews-v3.default, but the config's "
                           f"cluster for upstream \"v3\" (httproute/default/reviews/rule/2) is rule 2 "
                           f"of HTTPRoute reviews")
    assert warnings == expected, result.stdout
    # Alone, the routes file routes no config's header: nothing meshsplit reads.
    assert check(cli, routes_file).returncode == 2


def test_check_warns_about_an_http_route_without_a_default_rule(cli, tmp_path):
    docs = render(cli, tmp_path, "envoy-gateway", PLUGIN, "--sha256", "a" * 64)
    docs[-1]["spec"]["rules"] = docs[-1]["spec"]["rules"][:3]
    out = tmp_path / "eg.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    result = check(cli, out)
    assert result.returncode == 1
    assert f"warning: {out}: HTTPRoute default/reviews: no default route: requests without {HEADER}" \
        in result.stdout, result.stdout


# --- The shipped manifests (envoy/supported/, `make configs`) --------------------------------------

SHIPPED = harness.ENVOY_DIR / "supported"
SHIPPED_SHAPES = {"sidecar": "sidecar-virtualservice", "sidecar-httproute": "sidecar-httproute",
                  "ambient": "waypoint", "envoy-gateway": "envoy-gateway",
                  "envoy-gateway-native": "envoy-gateway"}
# The native manifest's module, as `make configs` renders it: the library on the proxy's disk.
SHIPPED_NATIVE_MODULE = "/usr/lib/envoy/libmeshsplit.so"


@pytest.mark.parametrize("target", [*TARGETS, "envoy-gateway-native"])
def test_the_shipped_manifests_are_rendered_from_the_sample_config_and_split(cli, tmp_path, target):
    shipped = SHIPPED / f"{target}.yaml"
    native = target.endswith("-native")
    module = ["--native", "--module", f"file://{SHIPPED_NATIVE_MODULE}"] if native else \
        ["--module", "oci://REGISTRY/meshsplit:TAG"]
    fresh = subprocess.run([str(cli), "render", "--target", target.removesuffix("-native"), *module,
                            str(harness.ENVOY_DIR / "meshsplit.json")],
                           capture_output=True, text=True, timeout=60)
    assert fresh.returncode == 0, fresh.stderr
    assert shipped.read_text() == fresh.stdout, f"{shipped} is stale: run `make configs`"
    result = subprocess.run([str(CRD_VALIDATE), str(shipped)], capture_output=True, text=True,
                            timeout=120, env={"PATH": f"{harness.ROOT / '.venv' / 'bin'}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    # As a user would apply it: the control plane's Envoy configuration from these very files
    # (for the native one, the library where this machine has it instead of /usr/lib/envoy).
    text = shipped.read_text()
    if native:
        assert text.count(SHIPPED_NATIVE_MODULE) == 1, text
        module_for("native")
        text = text.replace(SHIPPED_NATIVE_MODULE, str(harness.NATIVE))
    docs = [d for d in yaml.safe_load_all(text) if d]
    shape = SHIPPED_SHAPES[target]
    host = SHAPES[shape][2]
    if target.startswith("envoy-gateway"):
        host = "reviews.default.svc.cluster.local"
    options = {"build": "native"} if native else {}
    with harness.upstreams(*VERSIONS, "other") as ports, \
            harness.Envoy(SHAPES[shape][1](docs, None if native else module_for("wasm"), ports,
                                           **options), tmp_path) as envoy:
        answers = send(envoy.port, REQUESTS, {"Host": host, HEADER: "v2"})
        pinned = send(envoy.port, 30, {"Host": host, "x-canary": "true"}, connections=1)
    assert_weighted(upstreams_of(answers))
    assert upstreams_of(pinned) == {"v3": 30}


# --- The commands on the docs' pages ---------------------------------------------------------------

DOC_PAGES = [harness.ROOT / "docs" / "istio.md", harness.ROOT / "docs" / "envoy-gateway.md"]


def doc_commands(word):
    for page in DOC_PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            # A command continued over lines (a trailing backslash) is one line.
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if line.startswith(f"meshsplit {word} "):
                    yield page.name, line


@pytest.mark.parametrize("page,line", list(doc_commands("render")))
def test_the_docs_render_commands_write_the_shipped_manifests(cli, page, line):
    """Each `meshsplit render` line of the docs, run as written from the repository root, writes
    exactly the file the page says it is (envoy/supported/TARGET.yaml, TARGET-native.yaml with
    `--native`)."""
    args = shlex.split(line)[1:]
    out = subprocess.run([str(cli), *args], cwd=harness.ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, (page, line, out.stderr)
    target = args[args.index("--target") + 1] + ("-native" if "--native" in args else "")
    assert out.stdout == (SHIPPED / f"{target}.yaml").read_text(), (page, line)


def test_the_docs_check_commands_pass_on_the_shipped_manifests(cli):
    for page in DOC_PAGES:
        for path in re.findall(r"`meshsplit check --strict (envoy/supported/[a-z-]+\.yaml)`", page.read_text()):
            out = subprocess.run([str(cli), "check", "--strict", path], cwd=harness.ROOT,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, (page.name, path, out.stdout, out.stderr)


def edited_virtual_service(cli, tmp_path, edit):
    docs = render(cli, tmp_path, "sidecar", PLUGIN)
    edit(docs[2]["spec"]["http"])
    out = tmp_path / "edited.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    result = check(cli, out)
    assert result.returncode == 1, result.stdout + result.stderr
    return [l.split("VirtualService default/reviews: ", 1)[1] for l in result.stdout.splitlines()
            if l.startswith("warning: ")]


def test_check_warns_about_a_catch_all_route_before_the_header_routes(cli, tmp_path):
    """A VirtualService is matched in order: a default route moved first takes everything."""
    warnings = edited_virtual_service(cli, tmp_path, lambda http: http.insert(0, http.pop()))
    assert warnings == [f'route "meshsplit-{v}" for {HEADER}: {v} comes after the catch-all route '
                        f'"meshsplit-default", which takes every request first' for v in VERSIONS]


def test_check_warns_about_routes_that_send_a_version_elsewhere(cli, tmp_path):
    def swap(http):
        first, second = http[0]["route"][0]["destination"], http[1]["route"][0]["destination"]
        first["subset"], second["subset"] = second["subset"], first["subset"]
    warnings = edited_virtual_service(cli, tmp_path, swap)
    assert warnings[:2] == [
        f'route "meshsplit-v1" sends {HEADER}: v1 to reviews.default subset v2, but the config\'s '
        f'cluster for upstream "v1" (outbound|9080|v1|reviews.default.svc.cluster.local) is '
        f'reviews.default subset v1',
        f'route "meshsplit-v2" sends {HEADER}: v2 to reviews.default subset v1, but the config\'s '
        f'cluster for upstream "v2" (outbound|9080|v2|reviews.default.svc.cluster.local) is '
        f'reviews.default subset v2',
    ], warnings


def test_check_warns_about_header_routes_with_other_conditions_or_inexact_matches(cli, tmp_path):
    def edit(http):
        http[0]["match"][0]["uri"] = {"prefix": "/admin"}
        http[1]["match"][0]["headers"][HEADER] = {"prefix": "v"}
    warnings = edited_virtual_service(cli, tmp_path, edit)
    assert any(w.startswith(f'route "meshsplit-v1" matches {HEADER}: v1 together with other conditions')
               for w in warnings), warnings
    assert f'route "meshsplit-v2" matches {HEADER} by prefix, regex or presence: it may catch several ' \
        f"upstreams' requests; match each name exactly" in warnings, warnings


@pytest.mark.parametrize("change,message", [
    (lambda p: p.update(service_from={"header": "x-svc"}), "service_from: render writes routes per host"),
    (lambda p: p["services"][0].update(hosts=["reviews", "ratings"]),
     'services[0].hosts: "ratings" is not a name of the Kubernetes Service "reviews"'),
    (lambda p: p["services"][0]["upstreams"].extend(
        {"name": f"x{i}", "cluster": f"x{i}", "weight": 1} for i in range(14)),
     "an HTTPRoute holds at most 16 rules"),
])
def test_render_refuses_configs_its_routes_would_betray(cli, tmp_path, change, message):
    plugin = json.loads(json.dumps(PLUGIN))
    change(plugin)
    source = tmp_path / "plugin.json"
    source.write_text(json.dumps(plugin))
    out = subprocess.run([str(cli), "render", "--target", "sidecar-httproute", "--module", MODULE,
                          str(source)], capture_output=True, text=True)
    assert out.returncode == 2, out
    assert message in out.stderr, out.stderr


def test_render_refuses_a_version_service_that_is_another_services_name(cli, tmp_path):
    plugin = {"services": [
        {"name": "reviews", "upstreams": [{"name": "canary", "cluster": "a", "weight": 1}]},
        {"name": "reviews-canary", "upstreams": [{"name": "v1", "cluster": "b", "weight": 1}]}]}
    source = tmp_path / "plugin.json"
    source.write_text(json.dumps(plugin))
    out = subprocess.run([str(cli), "render", "--target", "ambient", "--module", MODULE, str(source)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert 'the Service "reviews-canary" it needs is also the one of' in out.stderr, out.stderr


@pytest.mark.parametrize("shape,variant", CASES)
def test_check_finds_the_filter_in_the_envoy_config_each_control_plane_generates(
        cli, tmp_path, shape, variant):
    """`meshsplit check` on the Envoy configuration the control plane generates (what
    `/config_dump` shows): it finds meshsplit's filter, the wasm module or, on Envoy Gateway, the
    dynamic module Envoy Gateway loads by its `module` source (no `name`), and the config passes
    without a warning."""
    ports = {name: harness.free_port() for name in (*VERSIONS, "other")}
    config = build_config(cli, tmp_path, shape, variant, ports)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = check(cli, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok" in result.stdout and "services[0]" not in result.stderr, result.stdout
