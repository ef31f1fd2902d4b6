"""gRPC and WebSocket servers and clients on loopback, for the tests that send those protocols
through Envoy: a gRPC server answering with its name (grpcio), the calls that count the answers,
the HTTP/2 clusters gRPC needs, and a WebSocket server sending its name (websockets)."""
import threading
import time
from concurrent import futures

import grpc

UNARY = "/meshsplit.test.Echo/Call"
STREAM = "/meshsplit.test.Echo/Stream"


def grpc_server(name, failing=None, metadata=None):
    """A gRPC server on loopback answering UNARY with its name and STREAM with three messages;
    while `failing[0]` is a status code, calls end with it instead (a server stream after its
    first message). Each call appends the metadata it received ({key: value}) to `metadata`,
    a list, when given. Returns (server, port)."""
    failing = failing if failing is not None else [None]

    def received(context):
        if metadata is not None:
            metadata.append(dict(context.invocation_metadata()))

    def call(request, context):
        received(context)
        if failing[0] is not None:
            context.abort(failing[0], f"{name} is failing")
        return name.encode()

    def stream(request, context):
        received(context)
        yield name.encode()
        if failing[0] is not None:
            context.abort(failing[0], f"{name} is failing")
        yield name.encode()
        yield name.encode()

    handler = grpc.method_handlers_generic_handler("meshsplit.test.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def http2_clusters(config):
    """Every cluster of `config` speaks HTTP/2 to its upstream (gRPC)."""
    for cluster in config["static_resources"]["clusters"]:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }}
    return config


def calls(channel, method, count, metadata=None):
    """`count` calls of `method`, each sending `metadata` ([(key, value)]) when given; returns
    {status code name or upstream name: count}."""
    seen = {}
    unary = channel.unary_unary(method)
    streaming = channel.unary_stream(method)
    for _ in range(count):
        try:
            if method == UNARY:
                key = unary(b"hi", timeout=5, metadata=metadata).decode()
            else:
                answers = [m.decode() for m in streaming(b"hi", timeout=5, metadata=metadata)]
                key = answers[0] if len(answers) == 3 else f"short {answers}"
        except grpc.RpcError as err:
            key = err.code().name
        seen[key] = seen.get(key, 0) + 1
    return seen


def websocket_server(name, hold_s, requests=None):
    """A WebSocket server on loopback: each session sends the server's name, holds `hold_s`
    seconds, then closes; each session's opening request headers ({lowercase name: value}) are
    appended to `requests`, a list, when given. Returns (server, port); `server.shutdown()`
    stops it."""
    from websockets.sync.server import serve

    def session(ws):
        if requests is not None:
            requests.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        ws.send(name)
        time.sleep(hold_s)
        ws.close()

    server = serve(session, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.socket.getsockname()[1]
