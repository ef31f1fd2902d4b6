#!/usr/bin/env python3
"""meshsplit live: edit envoy/meshsplit.json, save, and watch the split move.

Starts the sample upstreams and Envoy with envoy/envoy-live.yaml (the filter from a watched ECDS
file), runs `meshsplit apply --watch` on the plugin config, sends steady traffic to every
service, and prints `meshsplit status` of that Envoy, refreshed every window: each upstream's
weight in force and its share of the requests of the last window, read from Envoy's own stats.
Ctrl-C stops everything it started.

    live.py [--config envoy/meshsplit.json] [--rate 200] [--window 1] [--seconds 3600]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402  (tests/harness.py: starts Envoy and upstreams, sends requests)
from demo import pick_port, service_host  # noqa: E402

CLI = ROOT / "target" / "release" / "meshsplit"
ECDS_DIR = ROOT / "target" / "live" / "ecds"
ECDS_FILE = ECDS_DIR / "meshsplit.json"


def live_bootstrap(clusters, listener, admin, ecds_file=ECDS_FILE):
    """envoy/envoy-live.yaml with the given upstream ports, ports and ECDS file, paths made
    absolute."""
    config = harness.load_yaml(harness.ENVOY_DIR / "envoy-live.yaml")
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    lst = config["static_resources"]["listeners"][0]
    lst["address"]["socket_address"]["port_value"] = listener
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    discovery = hcm["http_filters"][0]["config_discovery"]
    source = discovery["config_source"]["path_config_source"]
    source["path"] = str(ecds_file)
    source["watched_directory"]["path"] = str(Path(ecds_file).parent)
    default = discovery["default_config"]["config"]
    default["vm_config"]["code"]["local"]["filename"] = str(harness.WASM)
    config["static_resources"]["clusters"] = [harness.static_cluster(n, p) for n, p in clusters.items()]
    return config


def upstream_ports(plugin):
    """{cluster: port} for every cluster the plugin config names: envoy.yaml's port when it has
    one and it is free, else any free port."""
    template = harness.load_yaml(harness.ENVOY_DIR / "envoy.yaml")
    wanted = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
              ["socket_address"]["port_value"] for c in template["static_resources"]["clusters"]}
    names = {u["cluster"] for s in plugin["services"] for u in s["upstreams"]}
    return {name: pick_port(wanted[name]) if name in wanted else harness.free_port()
            for name in sorted(names)}


def load(port, hosts, rate, stop, deadline):
    """Sends about `rate` requests a second, spread over the services, until stopped."""
    client, sent = harness.Client(port), 0
    started = time.monotonic()
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client.get("/", {"Host": hosts[sent % len(hosts)]})
            except OSError:
                time.sleep(0.2)
            sent += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)
    finally:
        client.close()


def status(admin, window):
    """`meshsplit status` of the Envoy at admin port `admin`: shares over the next `window`
    seconds (the call takes that long)."""
    out = subprocess.run([str(CLI), "status", "--admin", f"http://127.0.0.1:{admin}",
                          "--interval", str(window)], capture_output=True, text=True)
    return out.stdout.rstrip() if out.returncode == 0 else f"(meshsplit status: {out.stderr.strip()})"


def follow(stream, events):
    """Keeps the last lines `meshsplit apply --watch` printed."""
    for line in stream:
        events.append(line.rstrip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(harness.ENVOY_DIR / "meshsplit.json"),
                        help="the plugin config to watch (default envoy/meshsplit.json)")
    parser.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    parser.add_argument("--window", type=float, default=1,
                        help="seconds the shares cover, and between two tables (default 1)")
    parser.add_argument("--seconds", type=float, default=3600, help="stop after this long (default 1 h)")
    args = parser.parse_args()
    if not CLI.exists() or not harness.WASM.exists():
        parser.error("build first: make build cli (make live does)")

    plugin = json.loads(Path(args.config).read_text())
    clusters = upstream_ports(plugin)
    listener, admin = pick_port(10000), pick_port(9901)
    ECDS_DIR.mkdir(parents=True, exist_ok=True)
    if not ECDS_FILE.exists():
        # Envoy needs the watched file to exist; an empty one is served by default_config.
        ECDS_FILE.write_text("")
    servers = [harness.upstream.serve(name, port) for name, port in clusters.items()]
    stop, threads, watcher = threading.Event(), [], None
    deadline = time.monotonic() + args.seconds
    try:
        with tempfile.TemporaryDirectory(prefix="meshsplit-live-") as workdir, \
                harness.Envoy(live_bootstrap(clusters, listener, admin), workdir) as envoy:
            watcher = subprocess.Popen(
                [str(CLI), "apply", args.config, "--to", str(ECDS_FILE), "--watch",
                 "--module", str(harness.WASM)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            events = deque(maxlen=6)
            threading.Thread(target=follow, args=(watcher.stdout, events), daemon=True).start()
            hosts = [service_host(s) for s in plugin["services"]]
            for _ in range(4):
                threads.append(threading.Thread(target=load, args=(
                    envoy.port, hosts, args.rate / 4, stop, deadline), daemon=True))
                threads[-1].start()
            clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
            version = harness.envoy_version()
            shown = os.path.relpath(args.config)
            while time.monotonic() < deadline and watcher.poll() is None:
                table = status(admin, args.window)
                print(f"{clear}meshsplit live: Envoy {version} on 127.0.0.1:{listener} "
                      f"(admin {admin}), {args.rate:.0f} requests/s, Ctrl-C to stop\n")
                print(table)
                print(f"\n(edit and save {shown} to change the weights)")
                print("\nmeshsplit apply --watch:\n  " + "\n  ".join(events or ["(starting)"]))
                sys.stdout.flush()
            if watcher.poll() is not None:
                print(f"meshsplit apply --watch exited with {watcher.returncode}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        stop.set()
        if watcher and watcher.poll() is None:
            watcher.terminate()
            watcher.wait(timeout=10)
        for t in threads:
            t.join(timeout=5)
        for server in servers:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
