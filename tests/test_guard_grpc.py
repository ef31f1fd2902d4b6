"""gRPC through real Envoy with real gRPC clients and servers (grpcio): a version that answers
UNAVAILABLE is ejected although every answer is HTTP 200, whether the status comes in the
trailers (a server stream that sent a message first) or alone in the headers (a trailers-only
unary answer); a version answering what a client provokes (INVALID_ARGUMENT) ejects nothing.
Both filter builds: the native filter, and the wasm filter as meshsplit-cookie.wasm, the module
that sees responses (meshsplit.wasm never reads a response, so it judges gRPC calls by their
HTTP status only; docs/guard.md)."""
import time
from concurrent import futures

import grpc
import pytest

import harness
from protocols import STREAM, UNARY, calls, grpc_server, http2_clusters
from test_guard import plugin, stat


@pytest.fixture
def module(build, monkeypatch):
    """The wasm build loads the module that sees responses."""
    if build == "wasm":
        monkeypatch.setattr(harness, "WASM", harness.WASM_COOKIE)


@pytest.mark.builds("wasm", "native")
@pytest.mark.parametrize("method", [UNARY, STREAM], ids=["unary-trailers-only", "server-stream-trailers"])
def test_a_grpc_version_answering_unavailable_is_ejected(build, wasm, module, tmp_path, method):
    failing = [grpc.StatusCode.UNAVAILABLE]
    v1, v1_port = grpc_server("v1")
    v2, v2_port = grpc_server("v2", failing)
    try:
        config = http2_clusters(harness.bootstrap(
            plugin({"v1": 50, "v2": 50}, min_requests=10, window_s=2, eject_s=30),
            {"v1": v1_port, "v2": v2_port}, harness.free_port(), harness.free_port()))
        with harness.Envoy(config, tmp_path) as envoy:
            channel = grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                                            options=[("grpc.default_authority", "svc")])
            with channel:
                # v2 fails half the calls until it is ejected: within the window and two ticks
                # (3 s), well inside the 15 s given to a loaded machine.
                deadline = time.monotonic() + 15
                while not stat(envoy, "v2.ejected") and time.monotonic() < deadline:
                    first = calls(channel, method, 20)
                    assert set(first) <= {"v1", "UNAVAILABLE"}, first
                assert stat(envoy, "v2.ejected") == 1, envoy.log()[-3000:]
                # Every worker follows within a tick; then every call is v1's.
                time.sleep(1)
                after = calls(channel, method, 40)
                assert after == {"v1": 40}, after
            assert stat(envoy, "v2.ejections_total") == 1
            assert stat(envoy, "v1.ejections_total") == 0
    finally:
        v1.stop(0)
        v2.stop(0)
    assert "guard: ejected svc/v2" in envoy.log()


@pytest.mark.builds("wasm", "native")
def test_grpc_statuses_a_client_provokes_eject_nothing(build, wasm, module, tmp_path):
    """v2 answers every call INVALID_ARGUMENT (a bad request, the client's doing): 200 calls,
    about 100 of them v2's, against min_requests 10 and error_rate 0.5: nothing is ejected."""
    v1, v1_port = grpc_server("v1")
    v2, v2_port = grpc_server("v2", [grpc.StatusCode.INVALID_ARGUMENT])
    try:
        config = http2_clusters(harness.bootstrap(
            plugin({"v1": 50, "v2": 50}, min_requests=10, window_s=2, eject_s=30),
            {"v1": v1_port, "v2": v2_port}, harness.free_port(), harness.free_port()))
        with harness.Envoy(config, tmp_path) as envoy:
            with grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                                       options=[("grpc.default_authority", "svc")]) as channel:
                seen = calls(channel, UNARY, 200)
                assert seen.get("INVALID_ARGUMENT", 0) > 50, seen
                # A window and a tick for any late decision.
                time.sleep(3)
                assert calls(channel, UNARY, 20).get("INVALID_ARGUMENT", 0) > 0
            assert stat(envoy, "v2.ejections_total") == 0
    finally:
        v1.stop(0)
        v2.stop(0)


def watch_server(name):
    """A gRPC server whose server stream WATCH sends one message, then holds the stream (3 s at
    most) until the client cancels. Returns (server, port)."""
    def watch(request, context):
        yield name.encode()
        deadline = time.monotonic() + 3
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)

    handler = grpc.method_handlers_generic_handler("meshsplit.test.Echo", {
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
        "Call": grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode()),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.builds("wasm", "native")
def test_healthy_grpc_calls_a_client_cuts_short_eject_nothing(build, wasm, module, tmp_path):
    """Healthy versions. Clients cancel watch streams right after the first message (no
    grpc-status ever comes), and call with deadlines of 5 ms, which a healthy server answers
    DEADLINE_EXCEEDED: 120 of each, against min_requests 10 and error_rate 0.2. Nothing is
    ejected: neither says anything about the server."""
    v1, v1_port = watch_server("v1")
    v2, v2_port = watch_server("v2")
    try:
        config = http2_clusters(harness.bootstrap(
            plugin({"v1": 50, "v2": 50}, error_rate=0.2, min_requests=10, window_s=2, eject_s=30),
            {"v1": v1_port, "v2": v2_port}, harness.free_port(), harness.free_port()))
        with harness.Envoy(config, tmp_path) as envoy:
            with grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                                       options=[("grpc.default_authority", "svc")]) as channel:
                watch = channel.unary_stream("/meshsplit.test.Echo/Watch")
                call = channel.unary_unary("/meshsplit.test.Echo/Call")
                codes = {}
                for _ in range(120):
                    stream = watch(b"hi", timeout=5)
                    assert next(stream) in (b"v1", b"v2")
                    stream.cancel()
                    try:
                        call(b"hi", timeout=0.005)
                        code = "OK"
                    except grpc.RpcError as err:
                        code = err.code().name
                    codes[code] = codes.get(code, 0) + 1
                # A window and a tick for any late decision.
                time.sleep(3)
            assert stat(envoy, "v1.ejections_total") == 0 and stat(envoy, "v2.ejections_total") == 0, \
                (codes, envoy.log()[-3000:])
    finally:
        v1.stop(0)
        v2.stop(0)


@pytest.mark.builds("wasm", "native")
def test_a_grpc_upstream_envoy_cannot_reach_is_ejected_whatever_the_grpc_codes(build, wasm, module, tmp_path):
    """Nothing listens on v2's port: Envoy answers its gRPC calls itself, HTTP 200 with
    grpc-status 14 and flag UF. With grpc_failure_codes [] the flag alone counts: v2 is
    ejected."""
    v1, v1_port = grpc_server("v1")
    try:
        config = http2_clusters(harness.bootstrap(
            plugin({"v1": 50, "v2": 50}, min_requests=10, window_s=2, eject_s=30,
                   grpc_failure_codes=[]),
            {"v1": v1_port, "v2": harness.free_port()}, harness.free_port(), harness.free_port()))
        with harness.Envoy(config, tmp_path) as envoy:
            with grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                                       options=[("grpc.default_authority", "svc")]) as channel:
                deadline = time.monotonic() + 15
                while not stat(envoy, "v2.ejected") and time.monotonic() < deadline:
                    calls(channel, UNARY, 20)
                assert stat(envoy, "v2.ejected") == 1, envoy.log()[-3000:]
    finally:
        v1.stop(0)
