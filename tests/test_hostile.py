"""Hostile requests through real Envoy, for every build: a table of malformed, oversized and odd
requests (HTTP/1 over raw sockets, so the bytes are exactly as written; HTTP/2 through curl).

Every row also asks for the decoy cluster in the cluster header; no plugin config names it. After
each row: no wasm VM failure or reload, Envoy alive and routing ordinary requests, no request on
the decoy, at most one upstream request and only to a cluster the listener's config names (a 2xx
answer comes from exactly that upstream), and no panic in Envoy's log. After the table, ordinary
and sticky requests still route as configured."""
import collections
import copy
import json
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import pytest

import harness
from test_bundle import require_tool
from test_strategies import predicted_owner

pytestmark = pytest.mark.builds("wasm", "native", "specifier")

DECOY = "decoy"


def ups(prefix, count):
    return [{"name": f"u{i}", "cluster": f"{prefix}_{i}", "weight": 1} for i in range(1, count + 1)]


WEB, SIX, LIT = ups("web", 2), ups("six", 1), ups("lit", 1)
CRUMBS, USERS = ups("ck", 3), ups("hd", 3)
QA, QB = ups("qa", 3), ups("qb", 1)

# Listener "host": the service is the authority; unknown services pass to the fallback route.
BY_HOST = {"service_from": "authority", "on_unknown_service": "pass", "services": [
    {"name": "web", "hosts": ["web", "web.example"], "upstreams": WEB},
    {"name": "six", "hosts": ["::1"], "upstreams": SIX},
    # A service named by an IPv6 literal: the name is its host.
    {"name": "[fd00::7]", "upstreams": LIT},
    {"name": "crumbs", "strategy": "sticky", "hash_on": {"cookie": "session"}, "upstreams": CRUMBS},
    {"name": "users", "strategy": "sticky", "hash_on": {"header": "x-user"}, "upstreams": USERS},
]}
# Listener "query": the service is `?service=`; unknown services are rejected by the filter.
BY_QUERY = {"service_from": {"query": "service"}, "on_unknown_service": "reject", "services": [
    {"name": "a", "strategy": "sticky", "hash_on": {"query": "user"}, "upstreams": QA},
    {"name": "b", "upstreams": QB},
]}
CONFIGS = {"host": BY_HOST, "query": BY_QUERY}


def clusters(config):
    return {u["cluster"] for s in config["services"] for u in s["upstreams"]}


NAMED = {listener: clusters(config) for listener, config in CONFIGS.items()}
ALL_UPSTREAMS = sorted(NAMED["host"] | NAMED["query"] | {DECOY})


def owner(key, upstreams):
    return {predicted_owner(key, upstreams)}


def anyof(upstreams):
    return {u["cluster"] for u in upstreams}


NAMED_WEB, NAMED_QB = anyof(WEB), anyof(QB)


@dataclass(frozen=True)
class Row:
    id: str
    listener: str  # "host" or "query"
    # Raw HTTP/1 bytes; or for HTTP/2 (`h2` set) the headers (name, value bytes) sent with `path`.
    request: bytes = b""
    h2: tuple = None
    path: str = "/"
    status: int = 200  # None: Envoy closes or resets without an answer
    # Clusters the request may be sent to (a subset of the listener's); empty: none at all.
    upstreams: frozenset = field(default_factory=frozenset)
    # The key the filter's 404 for an unknown service names (query listener, filter builds).
    rejected: str = None


def h1(target, *headers, version=b"HTTP/1.1"):
    """A GET request, byte for byte: the decoy cluster header, then `headers`, as written."""
    lines = [b"GET " + target + b" " + version, b"x-meshsplit-cluster: " + DECOY.encode(), *headers]
    if version == b"HTTP/1.1":
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def row(id, listener, status, upstreams=(), **request):
    return Row(id, listener, status=status, upstreams=frozenset(upstreams), **request)


SIXTY_KB = b"h" * (60 * 1024)
# 999 parameters; the rows add the 1000th.
THOUSAND_PARAMS = b"&".join(b"p%d=%s" % (i, b"v" * 12) for i in range(999))
assert len(THOUSAND_PARAMS) > 16 * 1024
COOKIES = b"; ".join(b"c%d=%d" % (i, i) for i in range(199))
SEPARATORS = b";;; ; ;"
RAW_USER = b"\xff\xfe\x80user"

ROWS = [
    # Positive controls: the same listeners route ordinary requests.
    row("control-host", "host", 200, anyof(WEB), request=h1(b"/", b"Host: web")),
    row("control-query", "query", 200, anyof(QB), request=h1(b"/?service=b", b"Host: x")),

    # HTTP/1.0 without Host: no authority at all, which Envoy refuses before any filter.
    row("http10-no-host", "host", 400, request=h1(b"/", version=b"HTTP/1.0")),
    row("http10-no-host-query", "query", 400, request=h1(b"/?service=b", version=b"HTTP/1.0")),
    row("http10-with-host", "host", 200, anyof(WEB),
        request=h1(b"/", b"Host: web", version=b"HTTP/1.0")),
    row("http11-no-host", "host", 400, request=h1(b"/")),
    # An absolute-form target: its authority, not the Host header, is the request's authority.
    row("absolute-uri-overrides-host", "host", 200, anyof(WEB),
        request=h1(b"http://web/", b"Host: nope")),
    # The client's cluster header, repeated and in odd case, is never honoured.
    row("cluster-header-repeated-unknown-host", "host", 404,
        request=h1(b"/", b"Host: nope", b"X-Meshsplit-Cluster: decoy", b"x-meshsplit-cluster: qb_1")),
    row("cluster-header-repeated-known-host", "host", 200, anyof(WEB),
        request=h1(b"/", b"Host: web", b"X-MESHSPLIT-CLUSTER: decoy", b"x-meshsplit-cluster: ck_1")),

    # HTTP/2 with prior knowledge (h2c).
    row("h2c-host", "host", 200, anyof(WEB), h2=((b"host", b"web"),)),
    row("h2c-unknown-host", "host", 404, h2=((b"host", b"nope"),)),
    row("h2c-ipv6-authority", "host", 200, anyof(SIX), h2=((b"host", b"[::1]:8080"),)),
    # Envoy's HTTP/2 codec resets a stream whose :authority is not a valid header value.
    row("h2c-non-utf8-authority", "host", None, h2=((b"host", b"web\xff\xfe"),)),
    row("h2c-60kb-authority", "host", 404, h2=((b"host", SIXTY_KB),)),
    row("h2c-split-cookies", "host", 200, owner("k1", CRUMBS),
        h2=((b"host", b"crumbs"), (b"cookie", b"a=1"), (b"cookie", b"session=k1"))),
    row("h2c-repeated-service", "query", 200, owner("k1", QA), h2=(),
        path="/?service=a&service=b&user=k1"),

    # A 60 KB authority (the listener allows 96 KB of headers, so it reaches the filter).
    row("host-60kb", "host", 404, request=h1(b"/", b"Host: " + SIXTY_KB)),
    row("host-60kb-with-port", "host", 404, request=h1(b"/", b"Host: " + SIXTY_KB + b":80")),
    row("query-60kb-service", "query", 404, rejected=SIXTY_KB.decode(),
        request=h1(b"/?service=" + SIXTY_KB, b"Host: x")),

    # Hosts are parsed strictly: a malformed authority is an unknown service.
    row("host-colons-after-name", "host", 404, request=h1(b"/", b"Host: web:80:80")),
    row("host-only-colons", "host", 404, request=h1(b"/", b"Host: " + b":" * 200)),
    row("host-ipv6-with-two-ports", "host", 404, request=h1(b"/", b"Host: [::1]:80:80")),
    row("host-trailing-colon", "host", 404, request=h1(b"/", b"Host: web:")),
    row("host-port-not-a-number", "host", 404, request=h1(b"/", b"Host: web:abc")),
    row("host-name-in-brackets", "host", 404, request=h1(b"/", b"Host: [web]")),
    row("host-name-in-brackets-junk", "host", 404, request=h1(b"/", b"Host: [web]junk")),
    row("host-name-unclosed-bracket", "host", 404, request=h1(b"/", b"Host: [web")),

    # IPv6 literals, with and without port, and a service whose name is one.
    row("host-ipv6", "host", 200, anyof(SIX), request=h1(b"/", b"Host: [::1]")),
    row("host-ipv6-port", "host", 200, anyof(SIX), request=h1(b"/", b"Host: [::1]:8080")),
    row("host-ipv6-bare", "host", 200, anyof(SIX), request=h1(b"/", b"Host: ::1")),
    row("host-ipv6-unclosed", "host", 404, request=h1(b"/", b"Host: [::1")),
    row("host-ipv6-not-canonical", "host", 200, anyof(SIX), request=h1(b"/", b"Host: [0:0::1]:80")),
    row("host-ipv6-named-service", "host", 200, anyof(LIT), request=h1(b"/", b"Host: [fd00::7]")),
    row("host-ipv6-named-service-port", "host", 200, anyof(LIT),
        request=h1(b"/", b"Host: [FD00::7]:443")),
    row("query-ipv6-unknown", "query", 404, rejected="::1",
        request=h1(b"/?service=%5B::1%5D:80", b"Host: x")),

    # Empty Host.
    row("host-empty", "host", 404, request=h1(b"/", b"Host: ")),
    row("host-empty-with-port", "host", 404, request=h1(b"/", b"Host: :80")),

    # Bytes that are not UTF-8: in Host, in the sticky header and in the sticky cookie.
    row("host-non-utf8", "host", 400, request=h1(b"/", b"Host: web\xff\xfe")),
    row("sticky-header-non-utf8", "host", 200, owner(RAW_USER, USERS),
        request=h1(b"/", b"Host: users", b"x-user: " + RAW_USER)),
    row("sticky-cookie-non-utf8", "host", 200, owner(RAW_USER, CRUMBS),
        request=h1(b"/", b"Host: crumbs", b"cookie: session=" + RAW_USER)),
    row("query-non-utf8-service", "query", 404, rejected="\ufffd\ufffd",
        request=h1(b"/?service=%FF%FE", b"Host: x")),
    # A key that would break the reject's JSON body if it were not escaped.
    row("query-json-breaking-service", "query", 404, rejected='"\\\x01\n}',
        request=h1(b"/?service=%22%5C%01%0A%7D", b"Host: x")),

    # 200 cookies: in one header, and as 200 separate headers (which Envoy forwards as they
    # are; the test upstream, Python's http.server, answers more than 100 headers with 431).
    row("cookies-200-one-header", "host", 200, owner("k2", CRUMBS),
        request=h1(b"/", b"Host: crumbs", b"cookie: " + COOKIES + b"; session=k2")),
    row("cookies-200-headers", "host", 431, anyof(CRUMBS),
        request=h1(b"/", b"Host: crumbs", *(b"cookie: c%d=%d" % (i, i) for i in range(199)),
                   b"cookie: session=k2")),
    row("cookies-200-headers-session-first", "host", 431, owner("k2", CRUMBS),
        request=h1(b"/", b"Host: crumbs", b"cookie: session=k2",
                   *(b"cookie: c%d=%d" % (i, i) for i in range(199)))),
    row("cookie-only-separators", "host", 200, anyof(CRUMBS),
        request=h1(b"/", b"Host: crumbs", b"cookie: " + SEPARATORS)),
    row("cookie-only-separators-query", "query", 200, owner("k3", QA),
        request=h1(b"/?service=a&user=k3", b"Host: x", b"cookie: " + SEPARATORS)),

    # A 16 KB query string of 1000 parameters, the one that matters last.
    row("query-1000-params", "query", 200, anyof(QB),
        request=h1(b"/?" + THOUSAND_PARAMS + b"&service=b", b"Host: x")),
    row("query-1000-params-sticky", "query", 200, owner("k4", QA),
        request=h1(b"/?service=a&" + THOUSAND_PARAMS + b"&user=k4", b"Host: x")),
    row("query-1000-params-host", "host", 200, anyof(WEB),
        request=h1(b"/?" + THOUSAND_PARAMS + b"&service=b", b"Host: web")),

    # Repeated `service`: the first one counts.
    row("query-service-a-then-b", "query", 200, owner("k5", QA),
        request=h1(b"/?service=a&service=b&user=k5", b"Host: x")),
    row("query-service-b-then-a", "query", 200, anyof(QB),
        request=h1(b"/?service=b&service=a", b"Host: x")),
    row("query-service-empty-then-b", "query", 404, rejected="",
        request=h1(b"/?service=&service=b", b"Host: x")),

    # Malformed percent-encoding: a `%` without two hex digits stays as written.
    row("query-percent-alone", "query", 404, rejected="%", request=h1(b"/?service=%", b"Host: x")),
    row("query-percent-G1", "query", 404, rejected="%g1", request=h1(b"/?service=%G1", b"Host: x")),
    row("query-percent-zz", "query", 404, rejected="%zz", request=h1(b"/?service=%zz", b"Host: x")),
    row("query-percent-percent", "query", 404, rejected="%%",
        request=h1(b"/?service=%%", b"Host: x")),
    row("query-percent-trailing", "query", 404, rejected="b%",
        request=h1(b"/?service=b%", b"Host: x")),
    row("query-percent-encoded-name", "query", 200, anyof(QB),
        request=h1(b"/?%73ervice=%62", b"Host: x")),
    row("query-percent-sticky-key", "query", 200, owner(b"%G1%", QA),
        request=h1(b"/?service=a&user=%G1%", b"Host: x")),
]
ROW_IDS = [r.id for r in ROWS]
assert len(set(ROW_IDS)) == len(ROWS)


def exchange(port, raw, timeout=10.0):
    """Sends `raw` on a new connection and reads one response; returns (status, body), status
    None when Envoy closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        deadline = time.monotonic() + timeout
        # Stop at the end of the response, not at the close: Envoy delays closing after a local
        # reply (delayed_close_timeout) until the client closes.
        while time.monotonic() < deadline and not complete(data):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    if not match:
        return None, data
    if re.search(rb"(?im)^transfer-encoding:[ \t]*chunked", head):
        body = unchunk(body)
    return int(match.group(1)), body


def complete(data):
    """Whether `data` holds a whole response with a content-length or chunked body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
    if length:
        return len(body) >= int(length.group(1))
    if re.search(rb"(?im)^transfer-encoding:[ \t]*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return False


def unchunk(body):
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def curl_has_http2():
    return bool(shutil.which("curl")) and b"HTTP2" in subprocess.run(
        ["curl", "--version"], capture_output=True).stdout


def curl_h2(port, path, headers):
    """One HTTP/2 request with prior knowledge (h2c); returns (status, body), status None when
    Envoy reset the stream or the connection instead of answering."""
    args = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10", "-o", "-",
            "-w", "\n%{http_code} %{http_version}"]
    for name, value in (*headers, (b"x-meshsplit-cluster", DECOY.encode())):
        args += [b"-H", name + b": " + value]
    args.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(args, capture_output=True, timeout=30)
    body, _, trailer = out.stdout.rpartition(b"\n")
    code, _, version = trailer.decode().partition(" ")
    # curl's exit codes for a stream or connection that ended without a response: 16 HTTP/2
    # framing error, 18 stream not closed cleanly, 56 receive failure, 92 stream error.
    if code == "000" and out.returncode in (16, 18, 56, 92):
        return None, out.stderr
    assert out.returncode == 0 and version == "2", (out.returncode, trailer, out.stderr[-500:])
    return int(code), body


def upstream_of(status, body):
    """The upstream that answered a 2xx (upstream.py names itself in the body)."""
    if status is None or not 200 <= status < 300:
        return None
    return json.loads(body)["upstream"]


class Deployment:
    """One Envoy running a build, with a listener per plugin config and a decoy cluster."""

    def __init__(self, envoy, ports, build):
        self.envoy, self.ports, self.build = envoy, ports, build
        self.done = set()
        self.wasm_baseline = self.wasm_stats() if build == "wasm" else {}

    def counts(self):
        """Requests each cluster sent upstream so far, for every cluster Envoy has."""
        stats = self.envoy.stats("upstream_rq_total")
        got = {c: stats.get(f"cluster.{c}.upstream_rq_total") for c in ALL_UPSTREAMS}
        assert None not in got.values(), f"missing cluster stats: {got}"
        return got

    def wasm_stats(self):
        """VM creation and reload stats: a trapped VM is recreated (FAIL_RELOAD) on its next
        request, so a crash shows here as soon as another request reaches its worker."""
        stats = self.envoy.stats("wasm")
        wanted = {k: v for k, v in stats.items() if VM_STATS.fullmatch(k)}
        # Stats that do not exist cannot change: make sure these do.
        expected = {"wasm.envoy.wasm.runtime.v8.created", "wasm.meshsplit.vm_reload",
                    "wasm.byquery.vm_reload"}
        assert expected <= set(wanted), stats
        return wanted

    def send(self, r):
        port = self.ports[r.listener]
        if r.h2 is not None:
            return curl_h2(port, r.path, r.h2)
        return exchange(port, r.request)

    def canaries(self):
        """Ordinary requests on both listeners: [(listener, routed as configured, status, body)]."""
        answers = []
        for listener, raw, expected in (("host", h1(b"/", b"Host: web"), NAMED_WEB),
                                        ("query", h1(b"/?service=b", b"Host: x"), NAMED_QB)):
            status, body = exchange(self.ports[listener], raw)
            answers.append((listener, upstream_of(status, body) in expected, status, body))
        return answers

    def assert_safe(self, after):
        assert self.envoy.proc.poll() is None, f"Envoy exited after {after}"
        # A trapped VM is only reloaded when its worker's next request arrives: the canaries.
        canaries = self.canaries()
        if self.build == "wasm":
            stats = self.wasm_stats()
            assert stats == self.wasm_baseline, \
                f"wasm VM failed after {after}: {stats}, at start {self.wasm_baseline}"
        # Envoy writes its log out every 20 ms (--file-flush-interval-msec).
        time.sleep(0.05)
        problems = log_problems(self.envoy.log())
        assert not problems, f"after {after}:\n" + "\n".join(problems[:20])
        for listener, routed, status, body in canaries:
            assert routed, f"after {after}: ordinary request on {listener} got {status} {body[:300]!r}"

    def run(self, r):
        """Sends row `r` and checks what it reached; returns (status, routed cluster, body)."""
        before = self.counts()
        status, body = self.send(r)
        after = self.counts()
        self.done.add(r.id)
        sent = {c: after[c] - before[c] for c in ALL_UPSTREAMS if after[c] != before[c]}
        assert DECOY not in sent, f"{r.id}: the decoy cluster got a request"
        assert set(sent) <= NAMED[r.listener] and sum(sent.values()) <= 1, \
            f"{r.id}: upstream requests {sent}"
        routed = next(iter(sent), None)
        if status is not None and 200 <= status < 300:
            assert upstream_of(status, body) == routed, f"{r.id}: {sent} but {body[:300]!r}"
        self.assert_safe(r.id)
        return status, routed, body


# Per plugin (the filter's config name): vm_reload, vm_reload_backoff, _success, _failure.
VM_STATS = re.compile(r"wasm\.[^.]+\.vm_reload(_\w+)?|wasm\.envoy\.wasm\.runtime\.v8\.(created|active)")
# Lines that show a panic (the builds' panic hook and the native guard both log one) or a
# failed wasm VM call.
CRASH = re.compile(r"panic|Uncaught|wasm_vm\.cc.*failed|\]\[critical\]", re.IGNORECASE)


def log_problems(log):
    return [line for line in log.splitlines() if CRASH.search(line)]


def listener_for(config, name, port, plugin):
    """A copy of the bootstrap's first listener serving `plugin` on `port`."""
    listener = copy.deepcopy(config["static_resources"]["listeners"][0])
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    hcm = connection_manager(listener)
    hcm["stat_prefix"] = name
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    wasm["typed_config"]["config"]["name"] = name
    wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(plugin)
    return listener


def connection_manager(listener):
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


@pytest.fixture(scope="module")
def deployment(build, tmp_path_factory):
    with harness.upstreams(*ALL_UPSTREAMS) as ports:
        config = harness.bootstrap(BY_HOST, ports, harness.free_port(), harness.free_port(),
                                   build="wasm")
        hcm = connection_manager(config["static_resources"]["listeners"][0])
        # Let the oversized rows reach the filter instead of being refused by the codec:
        # HTTP/1.0, 60 KB values and 200 headers.
        hcm["http_protocol_options"] = {"accept_http_10": True}
        hcm["max_request_headers_kb"] = 96
        hcm["common_http_protocol_options"] = {"max_headers_count": 400}
        query_port = harness.free_port()
        config["static_resources"]["listeners"].append(
            listener_for(config, "byquery", query_port, BY_QUERY))
        harness.use_build(config, build)
        host_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        # One worker: a trapped VM is then the VM the next request runs on, so the canaries
        # after each row see it; the flush interval keeps the log current for each row's check.
        envoy = harness.Envoy(config, tmp_path_factory.mktemp("envoy"), concurrency=1,
                              extra_args=["--file-flush-interval-msec", "20"])
        with envoy:
            yield Deployment(envoy, {"host": host_port, "query": query_port}, build)


@pytest.mark.parametrize("r", ROWS, ids=ROW_IDS)
def test_hostile_row(deployment, r):
    if r.h2 is not None:
        require_tool(curl_has_http2(), "curl with HTTP/2 (h2c prior knowledge)")
    status, routed, body = deployment.run(r)
    assert status == r.status, f"{r.id}: {status} {body[:300]!r}"
    if r.upstreams:
        assert routed in r.upstreams, f"{r.id}: routed to {routed}, expected one of {set(r.upstreams)}"
    else:
        assert routed is None, f"{r.id}: routed to {routed}"
    if r.rejected is not None and deployment.build != "specifier":
        # The filter's own reject: valid JSON naming the key, whatever bytes the key had. (The
        # cluster specifier answers with the route's bare 404.)
        assert json.loads(body) == {"error": "unknown service", "service": r.rejected}, body[:300]


def test_routing_is_intact_after_the_whole_table(deployment):
    # Rows not run yet (a -k selection) run now, so this always follows the whole table.
    for r in ROWS:
        if r.id not in deployment.done and (r.h2 is None or curl_has_http2()):
            deployment.run(r)
    seen = collections.Counter(
        upstream_of(*exchange(deployment.ports["host"], h1(b"/", b"Host: web"))) for _ in range(40))
    assert set(seen) == NAMED_WEB, seen
    for key in ("alice", "bob", "carol"):
        got = exchange(deployment.ports["host"], h1(b"/", b"Host: users", b"x-user: " + key.encode()))
        assert upstream_of(*got) == predicted_owner(key, USERS), key
        got = exchange(deployment.ports["query"], h1(b"/?service=a&user=" + key.encode(), b"Host: x"))
        assert upstream_of(*got) == predicted_owner(key, QA), key
    assert deployment.counts()[DECOY] == 0
    connections = deployment.envoy.stats(f"cluster.{DECOY}.upstream_cx_total")
    assert connections == {f"cluster.{DECOY}.upstream_cx_total": 0}, connections
    if deployment.build == "wasm":
        assert deployment.wasm_stats() == deployment.wasm_baseline
    envoy = deployment.envoy
    envoy.stop()
    # Complete now that Envoy has exited.
    problems = log_problems(envoy.log())
    assert not problems, "\n".join(problems[:20])
