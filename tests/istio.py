"""A client sidecar's outbound configuration shaped the way istiod generates it, and an applier of
EnvoyFilter patches with Istio's semantics, so the shipped manifests run in real Envoy as a sidecar
would get them.

What istiod generates for a client of `reviews` (namespace `default`, port 9080), from
`pilot/pkg/networking/core/httproute.go` (`buildSidecarOutboundHTTPRouteConfig`,
`BuildSidecarOutboundVirtualHosts`), `route/route.go` (`BuildDefaultHTTPOutboundRoute`,
`TranslateRoute`) and `route/retry/retry.go` (`DefaultPolicy`):

- port protocol declared: route configuration `9080` (`validate_clusters: false`,
  `ignore_port_in_host_matching: true`), one virtual host per service named `FQDN:9080` with the
  domains FQDN, FQDN with a trailing dot, the short names and the cluster IP, and last the
  `allow_any` virtual host (domains `*`) to `PassthroughCluster`;
- protocol auto-detected: route configuration `FQDN:9080` holding only that service's virtual
  host, with domains `*`;
- without a VirtualService, one route named `default` to `outbound|9080||FQDN` with `timeout: 0s`,
  `max_grpc_timeout: 0s` and the default retry policy; with one, the VirtualService's routes,
  named after `http[].name` (no name when unnamed);
- subset clusters `outbound|9080|SUBSET|FQDN` for the DestinationRule's subsets;
- on the connection manager (`listener_builder.go`, `buildHTTPConnectionManager`), WebSocket
  upgrades allowed and `stream_idle_timeout: 0s`.

Left out because upstream Envoy does not have them: Istio's own HTTP filters (`istio.alpn`,
`istio.metadata_exchange`, `istio.stats`), mTLS and the cluster IP listener address. The HTTP
filters upstream Envoy does have (`grpc_stats`, `fault`, `cors`, the router) are there in Istio's
order.

The patch applier follows `pilot/pkg/networking/core/envoyfilter` (`rc_patch.go`,
`listener_patch.go`): MERGE, REMOVE and the inserts on HTTP routes (once per matching virtual
host; an insert without a route match goes first), MERGE/REMOVE/ADD on virtual hosts, MERGE on
route configurations and the bootstrap, INSERT_BEFORE/INSERT_AFTER/INSERT_FIRST/ADD/REMOVE/MERGE
on HTTP filters. MERGE is protobuf's merge: messages merge field by field, lists append, scalars
replace, and setting a member of a oneof clears its siblings."""
import copy
import json

import harness

NAMESPACE = "default"
PORT = 9080
CLUSTER_IP = "10.96.88.12"  # only ever a Host header value: nothing connects to it
PASSTHROUGH = "PassthroughCluster"
REQUIRED_STATS_PREFIXES = ["cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm"]

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
# The sidecar outbound HTTP filters upstream Envoy has, in Istio's order (Istio's own filters,
# metadata exchange, ALPN and istio.stats, sit among them in a real sidecar).
SIDECAR_HTTP_FILTERS = [
    {"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "emit_filter_state": True, "stats_for_all_methods": False}},
    {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
    {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
    ROUTER,
]


def fqdn(service):
    return f"{service}.{NAMESPACE}.svc.cluster.local"


def cluster(service, subset=""):
    """Istio's outbound cluster name (`model.BuildSubsetKey`)."""
    return f"outbound|{PORT}|{subset}|{fqdn(service)}"


def default_retry_policy():
    """`retry.DefaultPolicy()`: what Istio's outbound routes retry when nothing says otherwise."""
    return {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/"
                             "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5,
        "retriable_status_codes": [503],
    }


def route_to(target, name=None, operation=None):
    """An outbound route as Istio writes it: no timeout, no gRPC timeout cap, default retries."""
    route = {"match": {"prefix": "/"},
             "route": {"cluster": target, "timeout": "0s", "retry_policy": default_retry_policy(),
                       "max_grpc_timeout": "0s"}}
    if operation:
        route["decorator"] = {"operation": operation}
    if name:
        route["name"] = name
    return route


def virtual_host(service, routes, sniffed=False):
    host = fqdn(service)
    if sniffed:
        domains = ["*"]
    else:
        short = [".".join(host.split(".")[:n]) for n in (1, 2, 3)]
        domains = [host, host + ".", *short]
        if service == "reviews":
            domains.append(CLUSTER_IP)
    return {"name": f"{host}:{PORT}", "domains": domains, "routes": routes,
            "include_request_attempt_count": True}


def default_routes(service):
    return [route_to(cluster(service), "default", f"{fqdn(service)}:{PORT}/*")]


def virtual_service_routes(subset, name):
    """The routes of a VirtualService for reviews with one `http` route sending everything to
    `subset`, named `name` (None: unnamed)."""
    return [route_to(cluster("reviews", subset), name, f"{fqdn('reviews')}:{PORT}/*")]


def route_configuration(virtual_service=None, sniffed=False):
    """The outbound route configuration for port 9080: reviews (with the routes of
    `virtual_service`, a list, or the default route), ratings, and allow_any; or, `sniffed`, the
    one for reviews alone."""
    reviews = virtual_host("reviews", virtual_service or default_routes("reviews"), sniffed)
    config = {"validate_clusters": False, "max_direct_response_body_size_bytes": 1048576,
              "ignore_port_in_host_matching": True}
    if sniffed:
        return {"name": f"{fqdn('reviews')}:{PORT}", "virtual_hosts": [reviews], **config}
    allow_any = {"name": "allow_any", "domains": ["*"], "include_request_attempt_count": True,
                 "routes": [{"name": "allow_any", "match": {"prefix": "/"},
                             "route": {"cluster": PASSTHROUGH, "timeout": "0s",
                                       "max_grpc_timeout": "0s"}}]}
    return {"name": str(PORT),
            "virtual_hosts": [reviews, virtual_host("ratings", default_routes("ratings")), allow_any],
            **config}


def clusters(subsets):
    """Every cluster the sidecar has for this test: the services' default clusters, reviews'
    subset clusters and the passthrough cluster, each named by what it answers as."""
    names = [cluster("reviews"), cluster("ratings"), PASSTHROUGH,
             *(cluster("reviews", s) for s in subsets)]
    return names


def sidecar(upstream_ports, virtual_service=None, sniffed=False):
    """The client sidecar's bootstrap, before any EnvoyFilter: one outbound HTTP listener (named as
    Istio names it, bound to a free loopback port) and `upstream_ports` ({cluster name: port}) as
    static clusters."""
    listener_name = f"{CLUSTER_IP}_{PORT}" if sniffed else f"0.0.0.0_{PORT}"
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"outbound_{listener_name}",
        "route_config": route_configuration(virtual_service, sniffed),
        "http_filters": copy.deepcopy(SIDECAR_HTTP_FILTERS),
        "use_remote_address": False,
        # `buildHTTPConnectionManager` on every HTTP connection manager: "Allow websocket
        # upgrades", and no stream idle timeout.
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
    }
    return {
        # As Istio's bootstrap template: no default tags, and only stats with the prefixes Istio
        # always keeps (`pkg/bootstrap/config.go`, requiredEnvoyStatsMatcherInclusionPrefixes).
        "stats_config": {"use_all_default_tags": False, "stats_matcher": {"inclusion_list": {
            "patterns": [{"prefix": p} for p in REQUIRED_STATS_PREFIXES]}}},
        "node": {"id": f"sidecar~127.0.0.1~productpage-v1.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
                 "cluster": f"productpage.{NAMESPACE}"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": harness.free_port()}}},
        "static_resources": {
            "listeners": [{
                "name": listener_name,
                "address": {"socket_address": {"address": "127.0.0.1",
                                               "port_value": harness.free_port()}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": [harness.static_cluster(n, p) for n, p in upstream_ports.items()],
        },
    }


# --- EnvoyFilter patches ---------------------------------------------------------------------------

# Oneof groups of the Envoy messages the patches here touch: setting one member in a MERGE clears
# the others (protobuf-go's Set on a oneof field).
ONEOFS = [
    {"cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin",
     "inline_cluster_specifier_plugin"},
    {"route", "redirect", "direct_response", "filter_action", "non_forwarding_action"},
    {"prefix", "path", "safe_regex", "connect_matcher", "path_separated_prefix", "path_match_policy"},
    {"host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header", "host_rewrite_path_regex"},
    {"exact_match", "safe_regex_match", "range_match", "present_match", "prefix_match",
     "suffix_match", "contains_match", "string_match"},
]


def proto_merge(dst, src):
    """Merges `src` into `dst` in place, as `proto.Merge` does on the messages they spell."""
    for key, value in src.items():
        for group in ONEOFS:
            if key in group:
                for sibling in group - {key}:
                    dst.pop(sibling, None)
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and "@type" not in value:
            proto_merge(dst[key], value)
        elif isinstance(value, list) and isinstance(dst.get(key), list):
            dst[key].extend(copy.deepcopy(value))
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def _context_matches(patch, context):
    return patch.get("match", {}).get("context", "ANY") in ("ANY", context)


def _route_configuration_matches(match, rc):
    """`routeConfigurationMatch` for sidecars: portNumber against the port in the name (0 when the
    name is not a number, as for sniffed `HOST:PORT` names), then the name."""
    rmatch = match.get("routeConfiguration")
    if rmatch is None:
        return True
    try:
        port = int(rc["name"])
    except ValueError:
        port = 0
    if rmatch.get("portNumber", 0) and rmatch["portNumber"] != port:
        return False
    return not rmatch.get("name") or rmatch["name"] == rc["name"]


def _vhost_matches(match, vhost):
    vmatch = match.get("routeConfiguration", {}).get("vhost")
    return vmatch is None or not vmatch.get("name") or vmatch["name"] == vhost["name"]


def _route_match(match):
    return match.get("routeConfiguration", {}).get("vhost", {}).get("route")


def _route_matches(match, route):
    rmatch = _route_match(match)
    if rmatch is None:
        return True
    if rmatch.get("name") and rmatch["name"] != route.get("name", ""):
        return False
    action = rmatch.get("action", "ANY")
    if action == "ANY":
        return True
    kind = next((k for k in ("route", "redirect", "direct_response") if k in route), None)
    return {"route": "ROUTE", "redirect": "REDIRECT", "direct_response": "DIRECT_RESPONSE"}.get(kind) == action


def _patch_routes(patches, rc, vhost):
    # Removes and merges first, route by route; then the inserts, patch by patch.
    for index, route in enumerate(list(vhost["routes"])):
        for p in patches:
            if p["operation"] in ("MERGE", "REMOVE") and _route_matches(p["match"], route):
                if p["operation"] == "REMOVE":
                    vhost["routes"][index] = None
                    break
                proto_merge(route, p["value"])
    vhost["routes"] = [r for r in vhost["routes"] if r is not None]
    for p in patches:
        op, value = p["operation"], p.get("value")
        routes = vhost["routes"]
        if op == "ADD":
            routes.append(copy.deepcopy(value))
        elif op in ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"):
            if _route_match(p["match"]) is None:
                # Without a route match, INSERT_AFTER appends and the others go first.
                if op == "INSERT_AFTER":
                    routes.append(copy.deepcopy(value))
                else:
                    routes.insert(0, copy.deepcopy(value))
                continue
            hits = [i for i, r in enumerate(routes) if _route_matches(p["match"], r)]
            if not hits:
                continue
            at = {"INSERT_FIRST": 0, "INSERT_BEFORE": hits[0], "INSERT_AFTER": hits[0] + 1}[op]
            routes.insert(at, copy.deepcopy(value))


def _apply_route_patches(patches, rc):
    for p in patches:
        if p["applyTo"] == "ROUTE_CONFIGURATION" and p["operation"] == "MERGE" \
                and _route_configuration_matches(p["match"], rc):
            proto_merge(rc, p["value"])
    vhost_patches = [p for p in patches if p["applyTo"] == "VIRTUAL_HOST"
                     and _route_configuration_matches(p["match"], rc)]
    route_patches = [p for p in patches if p["applyTo"] == "HTTP_ROUTE"
                     and _route_configuration_matches(p["match"], rc)]
    kept = []
    for vhost in rc.get("virtual_hosts", []):
        removed = False
        for p in vhost_patches:
            if _vhost_matches(p["match"], vhost):
                if p["operation"] == "REMOVE":
                    removed = True
                elif p["operation"] == "MERGE":
                    proto_merge(vhost, p["value"])
        if removed:
            continue
        _patch_routes([p for p in route_patches if _vhost_matches(p["match"], vhost)], rc, vhost)
        kept.append(vhost)
    kept += [copy.deepcopy(p["value"]) for p in vhost_patches if p["operation"] == "ADD"]
    rc["virtual_hosts"] = kept


def _listener_port(listener):
    """The port Istio's listener stands for: the one in its name (`0.0.0.0_9080`), since the test
    binds it to a free port."""
    return int(listener["name"].rsplit("_", 1)[1])


def _filter_chain_matches(match, listener, hcm_filter):
    lmatch = match.get("listener")
    if lmatch is None:
        return True
    if lmatch.get("portNumber") and lmatch["portNumber"] != _listener_port(listener):
        return False
    if lmatch.get("name") and lmatch["name"] != listener["name"]:
        return False
    fmatch = lmatch.get("filterChain", {}).get("filter")
    return fmatch is None or not fmatch.get("name") or fmatch["name"] == hcm_filter["name"]


def _apply_http_filter_patches(patches, listener, hcm_filter):
    hcm = hcm_filter["typed_config"]
    for p in patches:
        if not _filter_chain_matches(p["match"], listener, hcm_filter):
            continue
        sub = p["match"].get("listener", {}).get("filterChain", {}).get("filter", {}).get("subFilter")
        filters = hcm["http_filters"]
        hits = [i for i, f in enumerate(filters) if sub is None or f["name"] == sub.get("name")]
        op, value = p["operation"], copy.deepcopy(p.get("value"))
        if op == "ADD":
            filters.append(value)
        elif op == "INSERT_FIRST":
            filters.insert(0, value)
        elif op in ("INSERT_BEFORE", "INSERT_AFTER") and hits:
            filters.insert(hits[0] + (op == "INSERT_AFTER"), value)
        elif op == "REMOVE":
            hcm["http_filters"] = [f for i, f in enumerate(filters) if i not in hits]
        elif op == "MERGE":
            for i in hits:
                proto_merge(filters[i], value)


def apply_envoy_filter(bootstrap, envoy_filter, context="SIDECAR_OUTBOUND"):
    """`bootstrap` with the patches of one EnvoyFilter manifest applied as istiod applies them to a
    sidecar that its workloadSelector selects."""
    assert envoy_filter["kind"] == "EnvoyFilter"
    config = copy.deepcopy(bootstrap)
    patches = [{"applyTo": p["applyTo"], "match": p.get("match", {}), **p["patch"]}
               for p in envoy_filter["spec"]["configPatches"] if _context_matches(p, context)]
    for p in patches:
        if p["applyTo"] == "BOOTSTRAP" and p["operation"] == "MERGE":
            proto_merge(config, p["value"])
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] != "envoy.filters.network.http_connection_manager":
                    continue
                _apply_http_filter_patches([p for p in patches if p["applyTo"] == "HTTP_FILTER"],
                                           listener, network_filter)
                _apply_route_patches(patches, network_filter["typed_config"]["route_config"])
    return config


def route_config(bootstrap):
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]


def http_filters(bootstrap):
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"]


# --- What istiod makes of a WasmPlugin or TrafficExtension -----------------------------------------

# failStrategy -> the failure_policy istiod writes into the filter (unset means FAIL_CLOSE).
FAILURE_POLICY = {None: "FAIL_CLOSED", "FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN",
                  "FAIL_RELOAD": "FAIL_RELOAD"}
TRANSLATED_SUFFIX = "~istio-translated-wasmplugin"


def extension_filter(doc, module, istio_version):
    """The wasm HTTP filter istiod (`pilot/pkg/model/extensions.go`, `buildWasmConfig`) builds for a
    WasmPlugin or TrafficExtension on `istio_version` ("1.29" or "1.30"), with the module the
    agent fetched at `module`. From 1.30 a WasmPlugin is translated into a TrafficExtension named
    NAME~istio-translated-wasmplugin (`pilot/pkg/config/kube/extensions/translate.go`), which
    renames the filter and the `plugin_name` the module sees."""
    kind, meta, spec = doc["kind"], doc["metadata"], doc["spec"]
    wasm = spec if kind == "WasmPlugin" else spec["wasm"]
    if kind == "TrafficExtension" and istio_version < "1.30":
        raise ValueError("TrafficExtension exists from Istio 1.30")
    name = f"{meta['namespace']}.{meta['name']}"
    if kind == "WasmPlugin" and istio_version < "1.30":
        filter_name = f"extensions.istio.io/wasmplugin/{name}"
    else:
        if kind == "WasmPlugin":
            name += TRANSLATED_SUFFIX
        filter_name = f"extensions.istio.io/trafficextension/{name}"
    env = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}
    if wasm.get("imagePullPolicy"):
        env["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = wasm["imagePullPolicy"]
    config = {
        "name": name,
        "root_id": wasm.get("pluginName", ""),
        "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(module)}},
                      "environment_variables": {"key_values": env}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(wasm["pluginConfig"])},
        "failure_policy": FAILURE_POLICY[wasm.get("failStrategy")],
    }
    return {"name": filter_name, "typed_config": {"@type": harness.WASM_TYPE, "config": config}}


def insert_unphased(bootstrap, http_filter):
    """Places an extension without `phase` as istiod does (`listener_builder.go`): after the
    authn, authz and stats-phase extensions (none here), ahead of grpc_stats, fault, cors, Istio's
    stats filter and the router."""
    config = copy.deepcopy(bootstrap)
    http_filters(config).insert(0, http_filter)
    return config


# --- Istio's stats naming --------------------------------------------------------------------------

# Istio's bootstrap template, `tools/packaging/common/envoy_bootstrap.json` at istio/istio commit
# 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c (2026-08-22; the file last changed in cb9728f9), which
# sets `use_all_default_tags: false` and these stats_tags, in this order. Istio delimits its
# cluster names and connection-manager prefixes with `;` (`util.DelimitedStatsPrefix`:
# `alt_stat_name: NAME;`, `stat_prefix: outbound_0.0.0.0_9080;`) so that these regexes can cut them
# out. Every static tag is here. Left out: the template's `{{- range .extraStatTags }}` entries
# (between mongo_prefix and cache), one `{"regex": "(TAG=\\.=(.*?);\\.;)", "tag_name": TAG}` per
# tag of the proxy config's `extraStatTags` and the `sidecar.istio.io/extraStatTags` annotation
# (`pkg/bootstrap/config.go`, getStatsOptions): Istio adds none by default, and they match only the
# `TAG=.=VALUE;.;` segments Istio's own stats filter writes, which neither meshsplit's nor Envoy's
# names contain.
ISTIO_STATS_TAGS = [
    {"tag_name": "cluster_name", "regex": r"^cluster(\.(.+);)"},
    {"tag_name": "http_conn_manager_prefix",
     "regex": r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)"},
    {"tag_name": "thread_name", "regex": r"^server(\.(.+))\.watchdog"},
    {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
    {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
    {"tag_name": "http_conn_manager_listener_prefix",
     "regex": r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "listener_address",
     "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "mongo_prefix", "regex": r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"},
    {"tag_name": "cache", "regex": r"(cache\.(.+?)\.)"},
    {"tag_name": "component", "regex": r"(component\.(.+?)\.)"},
    {"tag_name": "tag", "regex": r"(tag\.(.+?);\.)"},
    {"tag_name": "wasm_filter", "regex": r"(wasm_filter\.(.+?)\.)"},
    {"tag_name": "authz_enforce_result", "regex": r"rbac(\.(allowed|denied))"},
    {"tag_name": "authz_dry_run_action", "regex": r"(\.istio_dry_run_(allow|deny)_)"},
    {"tag_name": "authz_dry_run_result", "regex": r"(\.shadow_(allowed|denied))"},
]
# The stats_matcher inclusion list of the same template with `pkg/bootstrap/config.go`'s required
# entries (requiredEnvoyStatsMatcherInclusionPrefixes, rbacEnvoyStatsMatcherInclusionSuffix,
# requiredEnvoyStatsMatcherInclusionRegexes), for a sidecar without stats annotations.
ISTIO_INCLUSION_PREFIXES = ["reporter=", "component", "istio", *REQUIRED_STATS_PREFIXES]
ISTIO_INCLUSION_SUFFIXES = ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied"]
ISTIO_INCLUSION_REGEXPS = [r"vhost\..*\.route\..*"]


def istio_stats_config(extra_tags=(), inclusion_regexps=()):
    """An Istio sidecar's stats_config: Istio's tags, then `extra_tags` (a bootstrap patch's, which
    a MERGE appends), and the inclusion list with a proxyStatsMatcher's regexps."""
    patterns = [{"prefix": p} for p in ISTIO_INCLUSION_PREFIXES]
    patterns += [{"suffix": s} for s in ISTIO_INCLUSION_SUFFIXES]
    patterns += [{"safe_regex": {"regex": r}} for r in [*inclusion_regexps, *ISTIO_INCLUSION_REGEXPS]]
    return {"use_all_default_tags": False,
            "stats_tags": [*ISTIO_STATS_TAGS, *extra_tags],
            "stats_matcher": {"inclusion_list": {"patterns": patterns}}}
