"""Test harness: builds the module, starts real Envoy processes and upstreams on loopback ports.

Every build runs the same tests: `BUILD` names the one a test deploys ("wasm": the proxy-wasm
filter; "native": the dynamic-module HTTP filter; "specifier": the dynamic module as the route's
cluster specifier). tests/conftest.py sets it per test from the `build` fixture.

Every Envoy started here is stopped (SIGTERM, then SIGKILL) when its context exits, whether the
test passed or not; when a test fails its Envoy log is printed."""
import collections
import concurrent.futures
import contextlib
import copy
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY_DIR = ROOT / "envoy"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "meshsplit.wasm"
# The same filter exporting the response-headers callback, to assign cookies (`make build`).
WASM_COOKIE = WASM.with_name("meshsplit-cookie.wasm")
NATIVE = ROOT / "target" / "release" / "libmeshsplit.so"
# The dynamic module with test hooks (`make native-test-hooks`; never shipped): a request header
# `x-meshsplit-test-hook` moves its wall clock (`clock-offset-ms=N`) or makes it panic (`panic`).
NATIVE_TEST_HOOKS = ROOT / "target" / "test-hooks" / "libmeshsplit.so"
TEST_HOOK = "x-meshsplit-test-hook"
BUILDS = ("wasm", "native", "specifier")
# The build harness.bootstrap deploys; set per test by tests/conftest.py.
BUILD = "wasm"
READY_TIMEOUT = 30.0
# Envoys started and not yet stopped, so a failing test can show their logs.
RUNNING = []

sys.path.insert(0, str(ENVOY_DIR))
import upstream  # noqa: E402  (envoy/upstream.py, shared with the demo and docker-compose)


def envoy_bin():
    return os.environ.get("ENVOY_BIN") or str(ROOT / ".venv" / "bin" / "envoy")


def envoy_version():
    out = subprocess.run([envoy_bin(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else out.strip()


def build_wasm():
    """Builds the release module exactly as `make build` ships it (cargo, then wasm-opt)."""
    subprocess.run(["make", "--no-print-directory", "-s", "build"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return WASM


def build_native():
    """Builds the dynamic module exactly as `make native` ships it."""
    subprocess.run(["make", "--no-print-directory", "-s", "native"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return NATIVE


def build_native_test_hooks():
    """Builds the dynamic module with test hooks (`make native-test-hooks`); returns its path.
    Start an Envoy with `module_dir=NATIVE_TEST_HOOKS.parent` to load it."""
    subprocess.run(["make", "--no-print-directory", "-s", "native-test-hooks"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    return NATIVE_TEST_HOOKS


def envoy_env(module_dir=None):
    """Envoy's environment: it finds libmeshsplit.so (dynamic module `meshsplit`) in
    `module_dir`, by default the release module's directory."""
    return dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(module_dir or NATIVE.parent))


def stats_prefix(build=None):
    """Where meshsplit's stats live: proxy-wasm's namespace, or the dynamic modules' default."""
    return "wasmcustom" if (build or BUILD) == "wasm" else "dynamicmodulescustom"


def send(port, count, headers=None, path="/", connections=4):
    """Sends `count` GET requests over `connections` keep-alive connections in parallel and
    returns a Counter keyed by the upstream that answered, or by (status, body) for answers
    that did not come from an upstream."""
    def worker(n):
        client = Client(port)
        seen = collections.Counter()
        try:
            for _ in range(n):
                status, _, body = client.get(path, headers)
                seen[answer_key(status, body)] += 1
        finally:
            client.close()
        return seen

    shares = [count // connections + (1 if i < count % connections else 0) for i in range(connections)]
    total = collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        for seen in pool.map(worker, shares):
            total.update(seen)
    return total


def answer_key(status, body):
    if status == 200:
        try:
            return json.loads(body)["upstream"]
        except (ValueError, KeyError):
            pass
    return (status, body.decode(errors="replace"))


def wait_for(predicate, timeout=10.0):
    """Polls `predicate` until it holds or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def wasm_filter(config):
    """The meshsplit wasm filter entry of a bootstrap's first listener."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def wasm_typed_config(module, configuration, vm_id="meshsplit"):
    """The typed config of a wasm HTTP filter running `module` with plugin `configuration`
    (a string)."""
    return {"@type": WASM_TYPE, "config": {
        "name": "meshsplit", "root_id": "meshsplit",
        "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(module)}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": configuration}}}


def plugin_config(config):
    """The plugin configuration JSON embedded in a bootstrap, parsed."""
    return json.loads(wasm_filter(config)["typed_config"]["config"]["configuration"]["value"])


def static_cluster(name, port):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def http_listener(name, port, routes, http_filters=()):
    """A loopback listener with an HTTP connection manager (stats under `http.NAME.`) whose one
    virtual host serves `routes`, through `http_filters` and then the router."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": name, "virtual_hosts": [
                    {"name": "all", "domains": ["*"], "routes": routes}]},
                "http_filters": [*http_filters, {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/"
                                     "envoy.extensions.filters.http.router.v3.Router"}}],
            }}]}],
    }


def answering_listener(name, port):
    """A listener that answers every request itself with {"upstream": NAME}: an upstream that
    costs the machine far less than a Python server, so the clients get the CPU to drive the
    load."""
    return http_listener(f"upstream_{name}", port, [{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": json.dumps({"upstream": name})}}}])


def bootstrap(plugin, clusters, listener_port, admin_port, template=ENVOY_DIR / "envoy.yaml",
              build=None):
    """envoy/envoy.yaml with the given plugin config (dict or raw string), clusters
    ({name: port}) and ports, and the module path made absolute; for the native builds, with
    meshsplit as a dynamic module instead (see `use_build`)."""
    config = copy.deepcopy(load_yaml(template))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listener_port
    wasm = wasm_filter(config)["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    wasm["configuration"]["value"] = plugin if isinstance(plugin, str) else json.dumps(plugin)
    config["static_resources"]["clusters"] = [static_cluster(n, p) for n, p in clusters.items()]
    use_build(config, build or BUILD)
    return config


def shipped(config, upstream_ports, wasm=WASM):
    """A shipped Envoy config made runnable in a test, changing only what must change and nothing
    else: the admin and every listener on a free port on 127.0.0.1, every wasm module path
    (`vm_config.code.local.filename`, wherever it is) to `wasm`, and every endpoint of each
    cluster to 127.0.0.1 at `upstream_ports[cluster name]` (the test's upstream of that name;
    hostnames and cluster types stay). Edits `config` in place; returns {listener name: port}."""
    def loopback(address, port):
        address["socket_address"].update(address="127.0.0.1", port_value=port)

    loopback(config["admin"]["address"], free_port())
    listeners = {}
    for listener in config["static_resources"]["listeners"]:
        listeners[listener["name"]] = free_port()
        loopback(listener["address"], listeners[listener["name"]])
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                loopback(endpoint["endpoint"]["address"], upstream_ports[cluster["name"]])

    use_module(config, wasm)
    return listeners


def use_module(node, wasm=WASM):
    """Points every wasm module path in `node` (any `vm_config.code.local.filename` in it, as in a
    bootstrap or an ECDS resource) at `wasm`."""
    if isinstance(node, dict):
        if "vm_config" in node:
            node["vm_config"]["code"]["local"]["filename"] = str(wasm)
        for value in node.values():
            use_module(value, wasm)
    elif isinstance(node, list):
        for value in node:
            use_module(value, wasm)


DYNAMIC_FILTER_TYPE = ("type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3"
                       ".DynamicModuleFilter")
SPECIFIER_TYPE = ("type.googleapis.com/envoy.extensions.router.cluster_specifiers.dynamic_modules"
                  ".v3.DynamicModuleClusterSpecifier")
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def use_build(config, build):
    """Turns every listener's meshsplit wasm filter of a bootstrap made from envoy.yaml into
    `build`, with the same plugin JSON, as envoy/envoy-native.yaml does: the dynamic-module HTTP
    filter ("native"), or no filter and a cluster specifier on the first route ("specifier",
    whose not-found code answers unknown services). Native builds take envoy-native.yaml's stats
    tags."""
    if build == "wasm":
        return config
    native = load_yaml(ENVOY_DIR / "envoy-native.yaml")
    config["stats_config"] = native["stats_config"]
    config["layered_runtime"] = native["layered_runtime"]
    for listener in config["static_resources"]["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        filters = hcm["http_filters"]
        index = next(i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.wasm")
        wasm = filters[index]["typed_config"]["config"]
        plugin = wasm["configuration"]["value"]
        name = wasm.get("name", "meshsplit")
        if build == "native":
            filters[index] = {"name": "envoy.filters.http.dynamic_modules", "typed_config": {
                "@type": DYNAMIC_FILTER_TYPE, "dynamic_module_config": {"name": "meshsplit"},
                "filter_name": name, "filter_config": {"@type": STRING_VALUE, "value": plugin}}}
        elif build == "specifier":
            del filters[index]
            hcm["route_config"]["virtual_hosts"][0]["routes"] = [{
                "match": {"prefix": "/"},
                "route": {
                    "inline_cluster_specifier_plugin": {"extension": {
                        "name": "envoy.router.cluster_specifier_plugin.dynamic_modules",
                        "typed_config": {
                            "@type": SPECIFIER_TYPE, "dynamic_module_config": {"name": "meshsplit"},
                            "specifier_name": name,
                            "specifier_config": {"@type": STRING_VALUE, "value": plugin}}}},
                    "cluster_not_found_response_code": "NOT_FOUND"},
                # As envoy-native.yaml: a client-sent cluster header never reaches the upstream.
                "request_headers_to_remove": [cluster_header(plugin)]}]
        else:
            raise ValueError(f"unknown build {build!r}")
    return config


def cluster_header(plugin):
    """The cluster header a plugin JSON names (the default when it names none or is not JSON)."""
    try:
        return json.loads(plugin).get("cluster_header") or "x-meshsplit-cluster"
    except (ValueError, AttributeError):
        return "x-meshsplit-cluster"


def write_yaml(config, directory):
    fd, path = tempfile.mkstemp(suffix=".yaml", dir=directory)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    return path


def validate(config_path):
    """`envoy --mode validate`; returns the CompletedProcess (output in .stdout)."""
    return subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(config_path), "--use-dynamic-base-id"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, env=envoy_env(),
    )


def terminate(proc, timeout=10):
    """Stops a server process: SIGTERM, and SIGKILL if it has not exited within `timeout` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Envoy:
    """A running Envoy on loopback. Use as a context manager."""

    def __init__(self, config, workdir, concurrency=2, prefix=(), extra_args=(), module_dir=None):
        """`prefix` goes before the Envoy command (e.g. `taskset -c 0`), `extra_args` after it;
        `module_dir` is where Envoy looks for libmeshsplit.so (e.g. NATIVE_TEST_HOOKS.parent)."""
        self.module_dir = module_dir
        self.config = config
        self.prefix, self.extra_args = list(prefix), list(extra_args)
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.config_path = write_yaml(config, workdir)
        self.log_path = self.config_path + ".log"
        self.concurrency = concurrency
        self.proc = None

    def start(self, wait=True):
        self.proc = subprocess.Popen(
            [*self.prefix, envoy_bin(), "-c", self.config_path, "--concurrency", str(self.concurrency),
             "--use-dynamic-base-id", "--log-path", self.log_path, "--log-level", "info",
             *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env=envoy_env(self.module_dir),
        )
        RUNNING.append(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy not ready after {READY_TIMEOUT}s\n{self.log()}")

    def wait_exit(self, timeout=READY_TIMEOUT):
        return self.proc.wait(timeout=timeout)

    def log(self):
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return "(no envoy log)"

    def stop(self):
        if self in RUNNING:
            RUNNING.remove(self)
        if self.proc and self.proc.poll() is None:
            terminate(self.proc)

    def stats(self, prefix=""):
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/stats?format=json&filter={prefix}", timeout=5) as r:
            return {s["name"]: s.get("value") for s in json.load(r)["stats"] if "name" in s}

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if exc_type is not None:
            print(f"--- envoy log ({self.log_path}) ---\n{self.log()[-20000:]}", file=sys.stderr)
        return False


class Client:
    """Keep-alive HTTP/1.1 client to one Envoy listener."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def get(self, path="/", headers=None):
        """Returns (status, headers dict, body bytes). Reconnects once if the connection dropped."""
        resp = self.response(path, headers)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.body

    def response(self, path="/", headers=None):
        """The http.client.HTTPResponse of a GET, its body read into `.body`: for what a dict of
        headers cannot hold, such as several Set-Cookie. Reconnects once, as `get`."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                resp.body = resp.read()
                return resp
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def close(self):
        if self.conn:
            self.conn.close()


@contextlib.contextmanager
def upstreams(*names, delay=0.0, delays=None):
    """Starts one upstream per name on a free loopback port; yields {name: port}. Each answers
    after `delays[name]` (default `delay`) seconds."""
    with upstream_servers(*names, delay=delay, delays=delays) as servers:
        yield {name: s.server_port for name, s in servers.items()}


@contextlib.contextmanager
def upstream_servers(*names, delay=0.0, delays=None):
    """Like `upstreams`, yielding the servers themselves: set a server's `.status` (e.g. 503) to
    make it fail, or its `.delay` (seconds) to make it slow; either may be a function called
    for each answer."""
    delays = delays or {}
    servers = {name: upstream.serve(name, 0, delay=delays.get(name, delay)) for name in names}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()
