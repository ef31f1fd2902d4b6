"""The split routed by the control planes' own APIs (tests/test_supported_routes.py) with the
traffic shapes clients send besides plain GETs, through each shape of CASES: the Istio sidecar
with a VirtualService or an HTTPRoute and the ambient waypoint (wasm), and Envoy Gateway (wasm
and native).

- gRPC, unary and server-streaming calls over HTTP/2 (grpcio on an h2c channel, HTTP/2 to the
  servers): the calls split by the weights although each claims `x-meshsplit-upstream: v1`, a
  call the canary rule matches goes to v3, and no server receives the header in its metadata.
- WebSocket sessions (an upgraded HTTP/1.1 request): each session lands on one version, the
  sessions split by the weights, and no upstream sees the header in the opening request.
- Clients that give up: HTTP/1.1 requests whose client closes the connection while the
  upstreams hold the answer leave no request active in Envoy (the admin's per-host `rq_active`
  back to 0), and the requests after them split by the weights.

Each time, the versions the servers saw are exactly the versions the filter chose (its
`requests_total` counters): every request took the route of the header the filter wrote, not
the weighted default route, which would split alike but by its own draws."""
import contextlib
import json
import socket
import threading
import urllib.request
from concurrent import futures

import grpc
import pytest

import harness
import protocols
from test_supported_routes import (  # noqa: F401 (cli: the fixture)
    CASES, HEADER, SHAPES, VERSIONS, assert_weighted, build_config, cli, send, upstreams_of)

# Calls per chi-square check: 80/15/5 expects 15 on v3, enough for the test. A filter that
# kept the client's claim (or a route cache that was not cleared) sends all 300 to v1.
CALLS = 300
PINNED = 30
CLAIM = "v1"


# The wasm filter adds its counts to Envoy's counters on its tick, twice a second per worker:
# they show within 0.5 s; the bound leaves a loaded machine ten times that.
PICKS_S = 5


def picks(envoy, variant, total):
    """{version: requests the filter routed to it} (its `requests_total` counters), once they
    add up to `total` (within PICKS_S)."""
    prefix = harness.stats_prefix(variant)

    def read():
        found = envoy.stats(r"\.reviews\.v[0-9]+\.requests_total$")
        return {v: sum(value for name, value in found.items()
                       if name.startswith(prefix) and name.endswith(f".reviews.{v}.requests_total"))
                for v in VERSIONS}
    harness.wait_for(lambda: sum(read().values()) >= total, timeout=PICKS_S)
    return read()


def served(counts):
    """{version: count} of a Counter of answers, every version listed."""
    return {v: counts.get(v, 0) for v in VERSIONS}


@contextlib.contextmanager
def grpc_servers(metadata):
    """A gRPC server per version (and `other`, the sidecar's passthrough) recording the metadata
    of every call in `metadata`; yields {name: port}."""
    servers = {name: protocols.grpc_server(name, metadata=metadata) for name in (*VERSIONS, "other")}
    try:
        yield {name: port for name, (_, port) in servers.items()}
    finally:
        for server, _ in servers.values():
            server.stop(0)


@pytest.mark.parametrize("shape,variant", CASES)
def test_grpc_calls_split_by_the_weights_and_no_server_sees_the_header(cli, tmp_path, shape, variant):
    host = SHAPES[shape][2]
    received = []
    with grpc_servers(received) as ports:
        config = protocols.http2_clusters(build_config(cli, tmp_path, shape, variant, ports))
        with harness.Envoy(config, tmp_path) as envoy, \
                grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                                      options=[("grpc.default_authority", host)]) as channel:
            claim = [(HEADER, CLAIM)]
            unary = protocols.calls(channel, protocols.UNARY, CALLS, claim)
            stream = protocols.calls(channel, protocols.STREAM, CALLS, claim)
            canary = [("x-canary", "true"), (HEADER, CLAIM)]
            pinned = [protocols.calls(channel, method, PINNED, canary)
                      for method in (protocols.UNARY, protocols.STREAM)]
            chosen = picks(envoy, variant, 2 * CALLS + 2 * PINNED)
    assert_weighted(unary)
    assert_weighted(stream)
    assert pinned == [{"v3": PINNED}, {"v3": PINNED}]
    # Every call reached a server once (no retry), none with the header.
    assert len(received) == 2 * CALLS + 2 * PINNED
    assert [m for m in received if HEADER in m] == []
    assert chosen == {v: unary.get(v, 0) + stream.get(v, 0) + 2 * PINNED * (v == "v3")
                      for v in VERSIONS}, (chosen, unary, stream)


def sessions(port, host, count, headers, connections=4):
    """`count` WebSocket sessions to `ws://HOST/` over new connections to `port`, `connections`
    at a time; each reads the server's name, then the client leaves. Returns {name (or failure):
    count}. The client closes its socket rather than wait for the server's close: through Envoy
    that wait takes the connection manager's delayed close (1 s by default) per session, the
    same with or without the filter."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    def session(_):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            with connect(f"ws://{host}/", sock=sock, proxy=None, open_timeout=10,
                         additional_headers=headers) as ws:
                try:
                    return ws.recv(timeout=10)
                finally:
                    ws.close_socket()
        except InvalidStatus as err:
            return f"status {err.response.status_code}"
        finally:
            sock.close()

    with futures.ThreadPoolExecutor(connections) as pool:
        answers = list(pool.map(session, range(count)))
    counts = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return counts


@pytest.mark.parametrize("shape,variant", CASES)
def test_websocket_sessions_split_by_the_weights_and_no_upstream_sees_the_header(
        cli, tmp_path, shape, variant):
    host = SHAPES[shape][2]
    opened = []
    servers = {name: protocols.websocket_server(name, 0, opened) for name in (*VERSIONS, "other")}
    try:
        ports = {name: port for name, (_, port) in servers.items()}
        with harness.Envoy(build_config(cli, tmp_path, shape, variant, ports), tmp_path) as envoy:
            seen = sessions(envoy.port, host, CALLS, {HEADER: CLAIM})
            pinned = sessions(envoy.port, host, PINNED, {"x-canary": "true", HEADER: CLAIM})
            chosen = picks(envoy, variant, CALLS + PINNED)
    finally:
        for server, _ in servers.values():
            server.shutdown()
    assert_weighted(seen)
    assert pinned == {"v3": PINNED}
    assert len(opened) == CALLS + PINNED
    assert [h for h in opened if HEADER in h] == []
    assert chosen == {v: seen.get(v, 0) + PINNED * (v == "v3") for v in VERSIONS}, (chosen, seen)


# Requests abandoned at once, one connection each.
ABANDONED = 20
# Bounds for Envoy to route the abandoned requests to their upstreams, and to reset them once
# their clients are gone. Either takes milliseconds; the bounds leave a loaded 2-core machine
# a hundred times that. The upstreams hold the abandoned answers until the test ends, so only
# Envoy's reset can bring the active requests to 0.
ROUTED_S = 10
RESET_S = 5


def active_requests(envoy):
    """Requests active on any upstream host, from the admin's /clusters (per-host stats, which
    no stats matcher filters out, so Istio's shapes show them too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/clusters?format=json",
                                timeout=5) as r:
        clusters = json.load(r)["cluster_statuses"]
    return sum(int(s.get("value", 0)) for c in clusters for h in c.get("host_statuses", [])
               for s in h.get("stats", []) if s["name"] == "rq_active")


@pytest.mark.parametrize("shape,variant", CASES)
def test_clients_that_give_up_leave_no_request_stuck_and_the_split_holds(cli, tmp_path, shape, variant):
    host = SHAPES[shape][2]
    release = threading.Event()

    def held():
        release.wait(60)
        return 0.0

    with harness.upstream_servers(*VERSIONS, "other") as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        try:
            with harness.Envoy(build_config(cli, tmp_path, shape, variant, ports), tmp_path) as envoy:
                for server in servers.values():
                    server.delay = held
                    # The held answers go to connections Envoy has closed (broken pipes).
                    server.handle_error = lambda request, address: None
                clients = []
                for _ in range(ABANDONED):
                    sock = socket.create_connection(("127.0.0.1", envoy.port), timeout=10)
                    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n{HEADER}: {CLAIM}\r\n\r\n".encode())
                    clients.append(sock)
                assert harness.wait_for(lambda: active_requests(envoy) == ABANDONED, timeout=ROUTED_S), \
                    active_requests(envoy)
                for sock in clients:
                    sock.close()
                assert harness.wait_for(lambda: active_requests(envoy) == 0, timeout=RESET_S), \
                    active_requests(envoy)
                before = picks(envoy, variant, ABANDONED)
                for server in servers.values():
                    server.delay = 0.0
                answers = send(envoy.port, CALLS, {"Host": host, HEADER: CLAIM})
                after = picks(envoy, variant, ABANDONED + CALLS)
                assert active_requests(envoy) == 0
        finally:
            release.set()
    assert sum(before.values()) == ABANDONED
    seen = upstreams_of(answers)
    assert_weighted(seen)
    assert [body["upstream_header"] for _, body in answers] == [None] * CALLS
    assert {v: after[v] - before[v] for v in VERSIONS} == served(seen), (before, after, seen)
