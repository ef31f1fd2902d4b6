#!/usr/bin/env python3
"""meshsplit demo: starts Envoy (envoy/envoy.yaml with envoy/meshsplit.json as plugin config) and
the sample upstreams on loopback, sends requests to every configured service and prints the
observed split next to the configured weights, then `meshsplit status` of that Envoy (when the
CLI is built: `make cli`). Stops everything it started.

    demo.py [--requests N] [--keep]"""
import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "target" / "release" / "meshsplit"
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402  (tests/harness.py: starts Envoy and upstreams, sends requests)
from stats import chi_square  # noqa: E402


def port_free(port):
    with socket.socket() as s:
        # As Envoy does: a port whose old connections linger in TIME_WAIT is still usable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_port(preferred):
    return preferred if port_free(preferred) else harness.free_port()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per service (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep running after the report until Ctrl-C")
    args = parser.parse_args()

    plugin = json.loads((harness.ENVOY_DIR / "meshsplit.json").read_text())
    template = harness.load_yaml(harness.ENVOY_DIR / "envoy.yaml")
    # The upstream ports envoy/envoy.yaml expects, by cluster name.
    wanted = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
              ["socket_address"]["port_value"] for c in template["static_resources"]["clusters"]}
    clusters = {name: pick_port(port) for name, port in wanted.items()}
    listener = pick_port(template["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"])
    admin = pick_port(template["admin"]["address"]["socket_address"]["port_value"])

    # Each sample upstream answers with the name of the cluster it serves.
    servers = [harness.upstream.serve(name, port) for name, port in clusters.items()]
    try:
        with tempfile.TemporaryDirectory(prefix="meshsplit-demo-") as workdir:
            config = harness.bootstrap(plugin, clusters, listener, admin)
            with harness.Envoy(config, workdir) as envoy:
                print(f"Envoy {harness.envoy_version()} listening on 127.0.0.1:{listener} "
                      f"(admin 127.0.0.1:{admin}), plugin config envoy/meshsplit.json\n")
                sent = sum(report(envoy, service, args.requests) for service in plugin["services"])
                show_status(envoy, admin, sent)
                if args.keep:
                    host = service_host(plugin["services"][0])
                    print(f"Try: curl -s -H 'Host: {host}' http://127.0.0.1:{listener}/\n"
                          "Press Ctrl-C to stop.")
                    try:
                        envoy.proc.wait()
                    except KeyboardInterrupt:
                        pass
    finally:
        for server in servers:
            server.shutdown()
    return 0


def show_status(envoy, admin, sent):
    """Prints `meshsplit status` of the demo's Envoy: shares of everything counted since it
    started (`--interval 0`), once the filter's tick has flushed every request to the stats."""
    if not CLI.exists():
        print("(build the CLI with `make cli` to see `meshsplit status` of this Envoy)")
        return
    def flushed():
        stats = envoy.stats(harness.stats_prefix() + ".meshsplit.")
        return sum(v for k, v in stats.items()
                   if k.endswith(".requests_total") or k.endswith(".unknown_service_total")) >= sent

    harness.wait_for(flushed, timeout=5)
    command = [str(CLI), "status", "--admin", f"http://127.0.0.1:{admin}", "--interval", "0"]
    print(f"$ meshsplit status --admin http://127.0.0.1:{admin} --interval 0")
    out = subprocess.run(command, capture_output=True, text=True)
    print(out.stdout.rstrip() if out.returncode == 0 else f"meshsplit status failed: {out.stderr.strip()}")
    print()


def service_host(service):
    return (service.get("hosts") or [service["name"]])[0]


def report(envoy, service, requests):
    """Sends `requests` to the service and prints the split; returns how many requests it sent
    (with those of its rules)."""
    host = service_host(service)
    seen = harness.send(envoy.port, requests, {"Host": host})
    total_weight = sum(u["weight"] for u in service["upstreams"])
    print(f"service {service['name']!r}: {requests} requests with Host: {host}")
    print(f"  {'upstream':<10} {'cluster':<24} {'weight':>7} {'expected':>9} {'observed':>9} {'count':>6}")
    observed = []
    for u in service["upstreams"]:
        count = seen.pop(u["cluster"], 0)
        observed.append(count)
        print(f"  {u['name']:<10} {u['cluster']:<24} {u['weight']:>7} "
              f"{100 * u['weight'] / total_weight:>8.1f}% {100 * count / requests:>8.1f}% {count:>6}")
    for other, count in seen.items():
        print(f"  unexpected answer {other!r}: {count}")
    stat, p = chi_square(observed, [u["weight"] for u in service["upstreams"]])
    verdict = "consistent with the weights" if p > 0.001 else "NOT consistent with the weights"
    print(f"  chi-square {stat:.2f}, p = {p:.3f}: {verdict}")
    sent = requests + report_rules(envoy, service, host)
    print()
    return sent


def report_rules(envoy, service, host, requests=100):
    """Sends requests matching each header-only rule and shows where they went; returns how many
    requests it sent."""
    sent = 0
    clusters = {u["name"]: u["cluster"] for u in service["upstreams"]}
    for index, rule in enumerate(service.get("rules", [])):
        conditions = rule["match"]
        if set(conditions) != {"headers"} or any("exact" not in h for h in conditions["headers"]):
            continue
        headers = {h["name"]: h["exact"] for h in conditions["headers"]}
        seen = harness.send(envoy.port, requests, {"Host": host, **headers})
        shown = ", ".join(f"{k}: {v}" for k, v in headers.items())
        print(f"  rule {index} ({shown} -> {rule['upstream']}): {requests} requests reached "
              + ", ".join(f"{name} {count}" for name, count in seen.items())
              + f" (expected all on {clusters[rule['upstream']]})")
        sent += requests
    return sent


if __name__ == "__main__":
    sys.exit(main())
