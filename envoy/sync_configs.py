#!/usr/bin/env python3
"""Writes the sample plugin configuration, envoy/meshsplit.json, into every config that embeds it.

    sync_configs.py [--check] [--dir DIR]      (`make configs` runs it; needs PyYAML)

envoy/meshsplit.json is the only source. Its copies are:

- envoy.yaml, envoy-compose.yaml and envoy-live.yaml (its `default_config`): meshsplit.json
  verbatim, as the `value: |` block scalar of the wasm filter's `configuration`.
- istio/meshsplit-filter.yaml: meshsplit.json mapped to what a sidecar sees (below), in the same
  kind of block.
- istio/wasmplugin.yaml (`spec.pluginConfig`) and istio/trafficextension.yaml
  (`spec.wasm.pluginConfig`): the same mapped config, written as JSON on the lines after the
  `pluginConfig:` key. JSON is YAML, so the object stays a YAML mapping, as these APIs require.
- istio/meshsplit-route.yaml: its `configPatches`, from that key to the end of the file, one
  INSERT_FIRST route per service in the service's virtual host (`FQDN:PORT`), matching requests
  whose cluster header (`cluster_header`) names one of the service's clusters.

Only that block is rewritten, as text: comments and layout around it stay as they are.
With --check nothing is written; a copy that differs is shown as a diff and the exit status is 1.

The Istio mapping, for each service:
- FQDN is the `spec.host` of the DestinationRule in istio/ that is one of the service's hosts
  (exactly one must be), resolved as Istio resolves it: a short host `NAME` (no dot) is
  `NAME.NAMESPACE.svc.cluster.local`, NAMESPACE being the DestinationRule's
  `metadata.namespace` (a short host without one is refused: Istio would take the namespace
  the rule is applied to, which this file cannot know). A service host matches the rule by its
  `spec.host` as written or by the FQDN.
- hosts keep every host the service lists, in its order, and gain beside them the names a
  sidecar's virtual host answers to, without the port: for a Kubernetes
  service `NAME.NAMESPACE.svc.DOMAIN`, `NAME`, `NAME.NAMESPACE`, `NAME.NAMESPACE.svc` and the FQDN;
  for any other host, the FQDN alone. Another name or an IP the service lists, or with
  `service_from` a header the header's values, stay as they are. The filter drops a port and one trailing dot before it
  looks a host up, so `reviews:9080` and the FQDN with a trailing dot (a domain of the virtual
  host since Istio 1.27) need no entries of their own. The cluster IP, also a domain of the
  virtual host, cannot be known here: such requests are not tagged and keep Istio's routing.
- each upstream's cluster becomes Istio's cluster for the DestinationRule subset named like the
  upstream: `outbound|PORT|UPSTREAM-NAME|FQDN`, where PORT is the listener port the EnvoyFilter
  in meshsplit-filter.yaml matches (the WasmPlugin and TrafficExtension must match that port
  too). Every upstream name must be a subset of that DestinationRule, otherwise the sidecar would
  have no such cluster and answer 503 (NC).
- `authority` is dropped: a new :authority inside a sidecar picks another virtual host.
- everything else (weights, strategy, rules, ...) is copied unchanged."""
import argparse
import difflib
import json
import re
import sys
from pathlib import Path

import yaml

ENVOY_DIR = Path(__file__).resolve().parent
SOURCE = "meshsplit.json"
ENVOY_COPIES = ["envoy.yaml", "envoy-compose.yaml", "envoy-live.yaml"]
ISTIO_FILTER = "istio/meshsplit-filter.yaml"
ISTIO_ROUTE = "istio/meshsplit-route.yaml"
# Istio's own APIs for Wasm filters: a WasmPlugin and a TrafficExtension.
ISTIO_NATIVE = ["istio/wasmplugin.yaml", "istio/trafficextension.yaml"]
ISTIO_DIR = "istio"

# The key whose block holds the plugin config: a `value: |` block scalar, or `pluginConfig:` with
# the JSON object on the lines below it.
BLOCK_START = re.compile(r"^(?P<indent> *)(value: \||pluginConfig:)\n$")


class SyncError(Exception):
    pass


def replace_block(text, json_text, name):
    """`text` with the body of its one `value: |` or `pluginConfig:` block replaced by `json_text`."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if BLOCK_START.match(line)]
    if len(starts) != 1:
        raise SyncError(f"{name}: expected one `value: |` or `pluginConfig:` block, found {len(starts)}")
    start = starts[0]
    key_indent = len(BLOCK_START.match(lines[start]).group("indent"))
    end = start + 1
    # The block runs while lines are blank or indented deeper than its key.
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip(" ")) > key_indent):
        end += 1
    # Blank lines that end the block belong to the layout after it.
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    pad = " " * (key_indent + 2)
    body = [pad + line + "\n" if line else "\n" for line in json_text.rstrip("\n").split("\n")]
    return "".join(lines[:start + 1] + body + lines[end:])


def embedded_plugin(text):
    """The plugin configuration in the first wasm filter of a bootstrap or an EnvoyFilter, or in a
    WasmPlugin or TrafficExtension, parsed."""
    def find(node):
        if isinstance(node, dict):
            configuration = node.get("configuration")
            if isinstance(configuration, dict) and "value" in configuration:
                return configuration["value"]
            nodes = node.values()
        elif isinstance(node, list):
            nodes = node
        else:
            return None
        for child in nodes:
            found = find(child)
            if found is not None:
                return found
        return None

    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") in ("WasmPlugin", "TrafficExtension"):
            spec = doc.get("spec") or {}
            return (spec if doc["kind"] == "WasmPlugin" else spec.get("wasm") or {}).get("pluginConfig")
        value = find(doc)
        if value is not None:
            return json.loads(value)
    return None


def format_plugin(plugin):
    """JSON laid out like meshsplit.json: objects down to a service on their own lines, lists of
    objects one item per line, everything deeper on one line."""
    def render(value, level, indent):
        inner = indent + "  "
        if isinstance(value, dict) and value and level <= 2:
            items = [f"{inner}{json.dumps(k)}: {render(v, level + 1, inner)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(value, list) and value and level <= 3 and any(isinstance(v, dict) for v in value):
            items = [f"{inner}{render(v, level + 1, inner)}" for v in value]
            return "[\n" + ",\n".join(items) + "\n" + indent + "]"
        return json.dumps(value, separators=(", ", ": "))

    return render(plugin, 0, "") + "\n"


def istio_docs(directory):
    for path in sorted((directory / ISTIO_DIR).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def istio_port(directory):
    """The listener port the EnvoyFilter in meshsplit-filter.yaml matches."""
    (envoy_filter,) = [d for n, d in istio_docs(directory) if n == Path(ISTIO_FILTER).name]
    ports = {p["match"]["listener"]["portNumber"] for p in envoy_filter["spec"]["configPatches"]}
    if len(ports) != 1:
        raise SyncError(f"{ISTIO_FILTER}: expected one listener portNumber, found {sorted(ports)}")
    (port,) = ports
    return port


def check_native_ports(directory, port):
    """Every WasmPlugin and TrafficExtension matches the port the cluster names are built with."""
    for name in ISTIO_NATIVE:
        (doc,) = [d for n, d in istio_docs(directory) if n == Path(name).name]
        ports = {p.get("number") for m in doc["spec"].get("match", []) for p in m.get("ports", [])}
        if ports != {port}:
            raise SyncError(f"{name}: spec.match ports {sorted(ports)} differ from the port "
                            f"{ISTIO_FILTER} matches ({port}), which the cluster names use")


CLUSTER_DOMAIN = "cluster.local"


def resolve_host(host, namespace, rule_file):
    """A DestinationRule's `spec.host` as Istio resolves it: a short name (no dot) in the rule's
    namespace, `NAME.NAMESPACE.svc.cluster.local`; any other host as it is."""
    if not isinstance(host, str) or not host or "*" in host:
        raise SyncError(f"{ISTIO_DIR}/{rule_file}: spec.host {host!r} is not a service host "
                        "(wildcards name no subset cluster)")
    if "." in host:
        return host
    if not namespace:
        raise SyncError(f"{ISTIO_DIR}/{rule_file}: spec.host {host!r} is a short name and the "
                        "DestinationRule has no metadata.namespace: Istio resolves it in the "
                        "rule's namespace (NAME.NAMESPACE.svc.cluster.local) and names the subset "
                        "clusters by that FQDN; give the namespace or the FQDN")
    return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"


def istio_plugin(plugin, directory):
    """`plugin` as the sidecars in istio/ need it (the mapping in this file's docstring)."""
    rules = {}  # FQDN -> (file, subsets, spec.host as written)
    for name, doc in istio_docs(directory):
        if doc.get("kind") == "DestinationRule":
            spec = doc["spec"]
            fqdn = resolve_host(spec["host"], (doc.get("metadata") or {}).get("namespace"), name)
            if fqdn in rules:
                raise SyncError(f"{ISTIO_DIR}/{name}: a second DestinationRule for {fqdn} "
                                f"(also in {ISTIO_DIR}/{rules[fqdn][0]})")
            rules[fqdn] = (name, {s["name"] for s in spec.get("subsets", [])}, spec["host"])
    port = istio_port(directory)

    mapped = json.loads(json.dumps(plugin))
    for i, service in enumerate(mapped["services"]):
        hosts = service.get("hosts") or [service["name"]]
        fqdns = sorted({f for f, (_, _, written) in rules.items() for h in hosts if h in (f, written)})
        if len(fqdns) != 1:
            raise SyncError(f"services[{i}] ({service['name']}): expected one host that is a "
                            f"DestinationRule host in {ISTIO_DIR}/ "
                            f"({', '.join(sorted(w for _, _, w in rules.values()))}), found {fqdns}")
        (fqdn,) = fqdns
        rule_file, subsets, _ = rules[fqdn]
        labels = fqdn.split(".")
        if len(labels) > 3 and labels[2] == "svc":  # NAME.NAMESPACE.svc.DOMAIN: a Kubernetes service
            sidecar = [".".join(labels[:n]) for n in (1, 2, 3)] + [fqdn]
        else:
            sidecar = [fqdn]
        # The sidecar's names, then every other host the source lists (another name, an IP, a
        # header's value): none is dropped.
        service["hosts"] = list(dict.fromkeys(sidecar + hosts))
        for j, upstream in enumerate(service["upstreams"]):
            if upstream["name"] not in subsets:
                raise SyncError(f"services[{i}].upstreams[{j}]: no subset {upstream['name']!r} in "
                                f"{ISTIO_DIR}/{rule_file} (subsets: {', '.join(sorted(subsets))})")
            upstream["cluster"] = f"outbound|{port}|{upstream['name']}|{fqdn}"
            upstream.pop("authority", None)
    return mapped


ROUTE_BLOCK_START = "  configPatches:\n"
# Istio's default outbound retry policy (`pilot/pkg/networking/core/route/retry/retry.go`,
# `DefaultPolicy`), the tracing operation of its routes, and no timeout, as on Istio's routes.
ROUTE_PATCH = """\
  # {name}: requests the filter tagged with one of the service's clusters
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        vhost:
          name: {vhost}
    patch:
      operation: INSERT_FIRST
      value:
        name: meshsplit
        match:
          prefix: /
          headers:
          - name: {header}
            string_match:
              safe_regex:
                regex: '{regex}'
        decorator:
          operation: {vhost}/*
        route:
          cluster_header: {header}
          cluster_not_found_response_code: SERVICE_UNAVAILABLE
          timeout: 0s
          max_grpc_timeout: 0s
          retry_policy:
            retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
            num_retries: 2
            retriable_status_codes: [503]
            host_selection_retry_max_attempts: 5
            retry_host_predicate:
            - name: envoy.retry_host_predicates.previous_hosts
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
"""


def route_patches(mapped, port):
    """The `configPatches` block of istio/meshsplit-route.yaml for the mapped plugin config."""
    header = mapped.get("cluster_header", "x-meshsplit-cluster")
    blocks = []
    for service in mapped["services"]:
        fqdn = service["upstreams"][0]["cluster"].rsplit("|", 1)[1]
        # RE2, matched against the whole value: any subset of this service on this port.
        regex = rf"outbound\|{port}\|[^|]+\|{re.escape(fqdn)}"
        blocks.append(ROUTE_PATCH.format(name=service["name"], vhost=f"{fqdn}:{port}",
                                         header=header, regex=regex))
    return ROUTE_BLOCK_START + "".join(blocks)


def replace_route_block(text, block):
    """`text` with everything from its `configPatches:` key to the end replaced by `block`."""
    if text.count(ROUTE_BLOCK_START) != 1:
        raise SyncError(f"{ISTIO_ROUTE}: expected one `configPatches:` key at indent 2")
    return text[:text.index(ROUTE_BLOCK_START)] + block


def expected_files(directory):
    """{relative path: expected text} for every file that embeds the plugin configuration."""
    source_text = (directory / SOURCE).read_text()
    plugin = json.loads(source_text)
    wanted = {name: (source_text, plugin) for name in ENVOY_COPIES}
    mapped = istio_plugin(plugin, directory)
    check_native_ports(directory, istio_port(directory))
    for name in [ISTIO_FILTER, *ISTIO_NATIVE]:
        wanted[name] = (format_plugin(mapped), mapped)
    out = {}
    for name, (json_text, parsed) in wanted.items():
        text = replace_block((directory / name).read_text(), json_text, name)
        if embedded_plugin(text) != parsed:  # the YAML around the block must still read it back
            raise SyncError(f"{name}: the rewritten block does not parse back to the plugin config")
        out[name] = text
    route_text = replace_route_block((directory / ISTIO_ROUTE).read_text(),
                                     route_patches(mapped, istio_port(directory)))
    yaml.safe_load(route_text)  # must still be YAML
    out[ISTIO_ROUTE] = route_text
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and show a diff if a copy is out of date")
    parser.add_argument("--dir", type=Path, default=ENVOY_DIR,
                        help="the directory holding meshsplit.json and the configs (default: envoy/)")
    args = parser.parse_args(argv)
    try:
        wanted = expected_files(args.dir)
    except (SyncError, OSError, ValueError, KeyError) as e:
        print(f"sync_configs: {e}", file=sys.stderr)
        return 2
    stale = []
    for name, text in wanted.items():
        path = args.dir / name
        current = path.read_text()
        if current == text:
            continue
        stale.append(name)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                f"{name} (current)", f"{name} (from {SOURCE})"))
        else:
            path.write_text(text)
            print(f"updated {name}")
    if args.check and stale:
        print(f"sync_configs: out of date with {SOURCE}: {', '.join(stale)} (run `make configs`)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
