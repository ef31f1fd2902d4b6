#!/usr/bin/env python3
"""meshsplit benchmark: Envoy CPU per request and throughput of each scenario against a direct
route (A), measured side by side in one run; plus latency at a fixed rate, module size,
configure time and VM memory. Writes bench/results.md and bench/results.png.

    run.py [--rounds N] [--seconds S] [--connections C] [--quick]

Method: every Envoy under test runs with --concurrency 1 pinned to CPU 0; wrk and the upstream
(an Envoy answering with direct_response) share CPU 1. Scenarios are measured in interleaved
rounds, the order rotated each round, so drift hits all of them alike. Per round and scenario:
Envoy process CPU time (utime + stime from /proc/PID/stat) over the round divided by the
requests Envoy counted (http.bench.downstream_rq_total). Figures are medians and interquartile
ranges over the rounds of the difference to A measured in the same round.

Adding a scenario: write a function returning (http_filters, routes) and decorate it with
@scenario("KEY", "short label", "title")."""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
HOST = "reviews"
CLUSTER_HEADER = "x-meshsplit-cluster"
WEIGHTS = {"reviews_v1": 90, "reviews_v2": 10}
TEST_CPU, LOAD_CPU = "0", "1"

SCENARIOS = {}
# Scenarios that send everything to one cluster on purpose: no split to check.
NO_SPLIT = {"A", "W", "R", "L", "S", "U"}


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
            "typed_config": harness.wasm_typed_config(module, configuration, vm_id="bench")}


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


@scenario("D", "meshsplit", "meshsplit weighted 90/10 + authority rewrite")
def meshsplit():
    return [wasm_filter(harness.WASM, meshsplit_config([REVIEWS]))], cluster_header_routes()


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


@scenario("U", "rules", "meshsplit weighted + 3 rules (header, cookie, query), none matching")
def meshsplit_rules():
    service = reviews_with(rules=[
        {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v2"},
        {"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "v2"},
        {"match": {"query": [{"name": "version", "exact": "v2"}]}, "upstream": "v2"},
    ])
    return [wasm_filter(harness.WASM, meshsplit_config([service]))], cluster_header_routes()


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

def pinned(cpu, argv):
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") and os.cpu_count() >= 2 else argv


def bootstrap(port, admin, http_filters, routes, upstream_port=None, name="bench"):
    """An Envoy with one HTTP listener; clusters reviews_v1/v2 point at `upstream_port`."""
    clusters = [] if upstream_port is None else [
        harness.static_cluster(c, upstream_port) for c in ("reviews_v1", "reviews_v2")]
    for cluster in clusters:
        # What auto_host_rewrite (scenario K2) rewrites :authority to.
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["hostname"] = cluster["name"].replace("_", "-") + ".internal"
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [harness.http_listener(name, port, routes, http_filters)],
            "clusters": clusters,
        },
    }


def upstream_bootstrap(port, admin):
    """The upstream every scenario forwards to: an Envoy answering 200 itself."""
    return bootstrap(port, admin, [], [{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": "ok\n"}}}], name="upstream")


class Proc(harness.Envoy):
    """An Envoy under test or the upstream: one worker pinned to one CPU, started at once."""

    def __init__(self, config, workdir, cpu, debug_wasm=False):
        prefix = pinned(cpu, [])
        extra = ["--component-log-level", "wasm:debug"] if debug_wasm else []
        super().__init__(config, workdir, concurrency=1, prefix=prefix, extra_args=extra)
        self.start()

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stat(self, name):
        return self.stats(f"^{name}$").get(name) or 0


# ---- load -------------------------------------------------------------------------------------

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


def measure(proc, seconds, connections, headers=(), path="/"):
    rq0, cpu0 = proc.stat("http.bench.downstream_rq_total"), proc.cpu_seconds()
    load = wrk(proc.port, seconds, connections, headers=headers, path=path)
    cpu1, rq1 = proc.cpu_seconds(), proc.stat("http.bench.downstream_rq_total")
    requests = max(rq1 - rq0, 1)
    return {"cpu_us": (cpu1 - cpu0) * 1e6 / requests, "rps": load["rps"], "bad": load["bad"],
            "requests": requests}


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


# ---- main -------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4.0, help="load per scenario and round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate-delay-ms", type=int, default=2,
                        help="latency pass: each of 8 connections waits this long between requests")
    parser.add_argument("--only", default="", help="comma-separated scenario keys (A is always run)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s: checks the script works")
    parser.add_argument("--out", default=str(BENCH / "results"), help="output path without extension")
    parser.add_argument("--replot", action="store_true", help="redraw OUT.png from OUT.json, measure nothing")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out + ".json").read_text()), args.out + ".png")
        return 0
    if args.quick:
        args.rounds, args.seconds = 3, 1.0
    keys = list(SCENARIOS) if not args.only else ["A"] + [k for k in args.only.split(",") if k != "A"]
    seconds = max(1, round(args.seconds))

    procs = {}
    with tempfile.TemporaryDirectory(prefix="meshsplit-bench-") as workdir:
        try:
            upstream = Proc(upstream_bootstrap(harness.free_port(), harness.free_port()), workdir, LOAD_CPU)
            procs["upstream"] = upstream
            for key in keys:
                filters, routes = SCENARIOS[key][1]()
                config = bootstrap(harness.free_port(), harness.free_port(), filters, routes, upstream.port)
                procs[key] = Proc(config, workdir, TEST_CPU, debug_wasm=True)
            for key in keys:  # warm up: JIT, connection pools
                wrk(procs[key].port, 1, args.connections, headers=SCENARIOS[key][3],
                    path=PATHS.get(key, "/"))

            runs = {key: [] for key in keys}
            for r in range(args.rounds):
                order = keys[r % len(keys):] + keys[:r % len(keys)]
                for key in order:
                    runs[key].append(measure(procs[key], seconds, args.connections, SCENARIOS[key][3],
                                             PATHS.get(key, "/")))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {runs[k][-1]['cpu_us']:.1f}us" for k in keys), flush=True)

            latency = {}
            script = Path(workdir) / "rate.lua"
            script.write_text(f"function delay() return {args.rate_delay_ms} end\n")
            for key in keys:
                latency[key] = wrk(procs[key].port, 5, 8, script=str(script), latency=True,
                                   headers=SCENARIOS[key][3], path=PATHS.get(key, "/"))

            extra = collect_extras(procs, keys)
            report = build_report(args, keys, runs, latency, extra)
        finally:
            for proc in procs.values():
                proc.stop()
    Path(args.out + ".md").write_text(report["markdown"])
    Path(args.out + ".json").write_text(json.dumps({"rows": report["rows"]}, indent=1) + "\n")
    plot(report, args.out + ".png")
    print(report["markdown"])
    failures = report["failures"]
    for failure in failures:
        print(f"SANITY CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def collect_extras(procs, keys):
    extra = {"rss_kib": {k: procs[k].rss_kib() for k in keys}, "configure": {}, "split": {}}
    for key in keys:
        lines = re.findall(r"configured (\d+) services in (\d+) us; VM memory (\d+) KiB", procs[key].log())
        if lines:
            # The last lines come from the worker VM; take the slowest as the figure.
            extra["configure"][key] = {"services": int(lines[-1][0]),
                                       "us": max(int(us) for _, us, _ in lines),
                                       "vm_kib": max(int(kib) for _, _, kib in lines)}
        counts = {c: procs[key].stat(f"cluster.{c}.upstream_rq_total") for c in WEIGHTS}
        extra["split"][key] = counts
    return extra


def build_report(args, keys, runs, latency, extra):
    failures = []
    rows = []
    for key in keys:
        over_a = [run["cpu_us"] - base["cpu_us"] for run, base in zip(runs[key], runs["A"])]
        rel = [run["rps"] / base["rps"] for run, base in zip(runs[key], runs["A"])]
        bad = sum(run["bad"] for run in runs[key]) + latency[key]["bad"]
        if bad:
            failures.append(f"scenario {key}: {bad} non-2xx responses or socket errors")
        rows.append({"key": key, "title": SCENARIOS[key][0], "label": SCENARIOS[key][2],
                     "cpu": quartiles([run["cpu_us"] for run in runs[key]]),
                     "over_a": quartiles(over_a), "rel": quartiles(rel),
                     "p50": latency[key]["p50_us"], "p99": latency[key]["p99_us"], "bad": bad})
    for key in keys:
        counts = extra["split"][key]
        if key in NO_SPLIT or sum(counts.values()) == 0:
            continue
        stat, p = chi_square([counts[c] for c in WEIGHTS], list(WEIGHTS.values()))
        extra["split"][key] = dict(counts, p=p)
        if key == "D" and p <= 0.001:
            failures.append(f"scenario D split {counts} does not match 90/10 (p={p:.2g})")

    envoy_version = harness.envoy_version()
    cpu_model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    md = [f"# meshsplit benchmark results\n",
          f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
          f"- Envoy {envoy_version}, `--concurrency 1` pinned to CPU {TEST_CPU}; wrk and the upstream "
          f"(Envoy `direct_response`) on CPU {LOAD_CPU}",
          f"- CPU: {cpu_model} ({os.cpu_count()} cores)",
          f"- {args.rounds} interleaved rounds of {round(args.seconds)} s per scenario, "
          f"{args.connections} keep-alive connections, order rotated each round",
          "- CPU/request = Envoy process CPU time over the round / `http.bench.downstream_rq_total` "
          "delta; figures are median [interquartile range] over rounds, differences taken within a round",
          f"- latency: 8 connections each pausing {args.rate_delay_ms} ms between requests "
          "(a fixed rate well below saturation)\n",
          "| scenario | | CPU µs/request | over A (µs) | throughput vs A | p50 latency (µs) | p99 latency (µs) |",
          "|---|---|---|---|---|---|---|"]
    for row in rows:
        c, o, t = row["cpu"], row["over_a"], row["rel"]
        md.append(f"| {row['key']} | {row['title']} | {c[1]:.1f} [{c[0]:.1f}–{c[2]:.1f}] | "
                  f"{o[1]:+.1f} [{o[0]:+.1f}…{o[2]:+.1f}] | {t[1]:.3f} [{t[0]:.3f}–{t[2]:.3f}] | "
                  f"{row['p50']:.0f} | {row['p99']:.0f} |")
    by_key = {row["key"]: row for row in rows}
    md.append("")
    for a, b, what in (("D", "W", "meshsplit over the SDK floor; target ≤ 1 µs"),
                       ("D", "R", "meshsplit's own logic over the raw-ABI floor"),
                       ("D", "M", "what the request counters cost; target ≤ 0.2 µs"),
                       ("N", "C", "native filter over Lua; target below 0"),
                       ("K", "B", "cluster specifier over weighted_clusters; target within 1 µs"),
                       ("K2", "B", "cluster specifier with auto_host_rewrite over weighted_clusters"),
                       ("D", "C", "wasm filter over Lua"),
                       ("GD", "D", "the guard on healthy upstreams, wasm: one property read per stream"),
                       ("RO", "D", "a rollout in force, wasm"),
                       ("GN", "N", "the guard on healthy upstreams, native filter"),
                       ("W", "R", "what the SDK's extra exports cost")):
        if a in by_key and b in by_key:
            q = quartiles([x["cpu_us"] - y["cpu_us"] for x, y in zip(runs[a], runs[b])])
            md.append(f"- **{a} − {b}** ({what}): {q[1]:+.2f} µs [{q[0]:+.2f}…{q[2]:+.2f}]")
    if "D" in by_key and "F" in by_key:
        f_d = [f["cpu_us"] / d["cpu_us"] for f, d in zip(runs["F"], runs["D"])]
        q = quartiles(f_d)
        md.append(f"- **F / D** (10 000 services vs 1): {q[1]:.3f} [{q[0]:.3f}–{q[2]:.3f}] "
                  f"(target ≤ 1.05)")
    sizes = {"meshsplit.wasm": harness.WASM, "sdk_floor.wasm": FLOOR_WASM}
    md.append("- module size: " + ", ".join(
        f"{name} {path.stat().st_size / 1024:.1f} KiB" for name, path in sizes.items() if path.exists()))
    for key, conf in extra["configure"].items():
        md.append(f"- scenario {key}: configure {conf['services']} services in "
                  f"{conf['us'] / 1000:.1f} ms (slowest on_configure), VM linear memory "
                  f"{conf['vm_kib'] / 1024:.1f} MiB, Envoy RSS {extra['rss_kib'][key] / 1024:.1f} MiB")
    md.append("- observed split (cluster upstream_rq_total, chi-square p against 90/10): " + "; ".join(
        f"{k} {v['reviews_v1']}/{v['reviews_v2']} p={v['p']:.3f}"
        for k, v in extra["split"].items() if "p" in v))
    md.append(f"- sanity: non-2xx responses and socket errors in every scenario: "
              f"{sum(row['bad'] for row in rows)}")
    if failures:
        md.append("\n**Sanity checks failed:** " + "; ".join(failures))
    return {"markdown": "\n".join(md) + "\n", "rows": rows, "failures": failures}


def plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written", file=sys.stderr)
        return
    rows = [r for r in report["rows"] if r["key"] != "A"]
    labels = [f"{r['key']}\n{r['label']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 5.5))
    for ax, field, title in ((ax1, "over_a", "Envoy CPU µs/request over A (median, IQR)"),
                             (ax2, "rel", "throughput relative to A (median, IQR)")):
        med = [r[field][1] for r in rows]
        err = [[r[field][1] - r[field][0] for r in rows], [r[field][2] - r[field][1] for r in rows]]
        ax.bar(range(len(rows)), med, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(rows)), labels, fontsize=8, rotation=35, ha="right")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    ax2.axhline(1.0, color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
