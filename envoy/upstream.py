#!/usr/bin/env python3
"""A tiny upstream for meshsplit demos and tests: answers every request with a JSON body naming
itself, the Host it was asked for and the cluster and upstream headers it received.

    upstream.py NAME=PORT [NAME=PORT ...] [--bind ADDRESS] [--delay SECONDS]

Standard library only, so it runs in the `python` container image and on any machine."""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are written separately: without this every response waits for
        # the peer's delayed ACK (~40 ms).
        disable_nagle_algorithm = True

        def do_GET(self):
            # Seconds before answering: the server's `delay`, which tests may change (or set to
            # a function giving each answer's delay), as they do `status`.
            delay = self.server.delay
            delay = delay() if callable(delay) else delay
            if delay:
                time.sleep(delay)
            body = json.dumps({
                "upstream": name,
                "host": self.headers.get("Host"),
                "cluster_header": self.headers.get("x-meshsplit-cluster"),
                "upstream_header": self.headers.get("x-meshsplit-upstream"),
                "path": self.path,
            }).encode() + b"\n"
            # Tests make an upstream fail by setting its server's `status` (503, say), or a
            # function giving each answer's status.
            status = self.server.status
            self.send_response(status() if callable(status) else status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-upstream", name)
            self.end_headers()
            # Seconds between the headers and the body (a streamed or slow body): the server's
            # `stream_s`, which tests may set, or a function giving each answer's.
            stream_s = self.server.stream_s
            stream_s = stream_s() if callable(stream_s) else stream_s
            if stream_s:
                self.wfile.flush()
                time.sleep(stream_s)
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    status = 200
    delay = 0.0
    stream_s = 0.0


def serve(name, port=0, bind="127.0.0.1", delay=0.0):
    """Starts an upstream in a background thread; returns the server (`.server_port`, `.shutdown()`)."""
    server = Server((bind, port), make_handler(name))
    server.delay = delay
    threading.Thread(target=server.serve_forever, name=f"upstream-{name}", daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstreams", nargs="+", metavar="NAME=PORT")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args()
    servers = []
    for spec in args.upstreams:
        name, _, port = spec.partition("=")
        if not port.isdigit():
            parser.error(f"expected NAME=PORT, got {spec!r}")
        servers.append(serve(name, int(port), args.bind, args.delay))
        print(f"upstream {name} listening on {args.bind}:{port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
