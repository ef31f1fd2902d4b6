"""Envoy configuration shaped the way each control plane generates it from the manifests
`meshsplit render` writes: the routes that match the upstream header and the weighted default,
with the control plane's own names, matchers, clusters and filter placement, so the rendered
manifests run in real Envoy as the proxies would get them.

- Istio sidecar, VirtualService: `sidecar_virtual_service` (istiod `route/route.go`).
- Istio sidecar, HTTPRoute with a Service parent (GAMMA): `sidecar_http_route`
  (`pilot/pkg/config/kube/gateway/conversion.go`, then the same route translation).
- Istio ambient waypoint, HTTPRoute: `waypoint_http_route` (`listener_waypoint.go`).
- Envoy Gateway, HTTPRoute with an EnvoyExtensionPolicy: `envoy_gateway`
  (envoyproxy/gateway `internal/xds/translator`), the wasm module or (`render --native`) the
  native build as a dynamic module that an EnvoyProxy registers.

Each function takes the rendered documents, the wasm module (None for the native build, whose
library the rendered EnvoyProxy names) and {upstream server name: port} where the servers are
named after the versions (v1, v2, ...), and returns a bootstrap whose first listener is the one
clients send to."""
import copy
import json
import urllib.parse

import harness
import istio

ROUTER = istio.ROUTER


def docs_of(kind, docs):
    return [d for d in docs if d and d.get("kind") == kind]


def one(kind, docs, name=None):
    found = [d for d in docs_of(kind, docs) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def plugin_json(docs):
    """The plugin config of the rendered WasmPlugin or EnvoyExtensionPolicy, as JSON text."""
    for doc in docs:
        if doc and doc.get("kind") == "WasmPlugin":
            return json.dumps(doc["spec"]["pluginConfig"])
        if doc and doc.get("kind") == "EnvoyExtensionPolicy":
            spec = doc["spec"]
            return json.dumps((spec.get("wasm") or spec["dynamicModule"])[0]["config"])
    raise AssertionError("no WasmPlugin or EnvoyExtensionPolicy")


def k8s_json(value):
    """A manifest's free-form JSON field (`apiextensionsv1.JSON`) as a controller reads it back
    from the API server, `Raw`: compact, keys sorted (the server stores custom resources as
    unstructured maps, which Go's encoding/json writes sorted)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def base_bootstrap(listener_name, hcm, clusters, stats_config=None):
    config = {
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
            "clusters": clusters,
        },
    }
    if stats_config:
        config["stats_config"] = stats_config
    return config


def with_native_stats(config, build):
    """Native builds take envoy-native.yaml's stats tags and runtime, as `harness.use_build`."""
    if build != "wasm":
        native = harness.load_yaml(harness.ENVOY_DIR / "envoy-native.yaml")
        config["stats_config"] = native["stats_config"]
        config["layered_runtime"] = native["layered_runtime"]
    return config


# --- Envoy Gateway -------------------------------------------------------------------------------
#
# From envoyproxy/gateway (main, December 2026):
# - the listener, its RDS route configuration and filter chain are named `NS/GATEWAY/LISTENER`
#   (`irListenerName`); an 80 listener becomes 10080 with stat prefix `http-10080`; the route
#   configuration ignores the port in host matching; a virtual host per hostname,
#   `NS/GATEWAY/LISTENER/HOST` with dots as `_` (`virtualHostName`), domains the hostname alone;
# - the wasm filter: `envoy.filters.http.wasm/envoyextensionpolicy/NS/POLICY/wasm/I`
#   (`perRouteFilterName`, `irConfigNameForWasm`), `disabled: true` in the HCM (`patchHCM`),
#   config `name` the spec's `name`, `vm_id` the IR name, the plugin config a StringValue of the
#   JSON (`wasm.go`: `string(wasm.Config.Raw)`), `fail_open` when set; sorted before the router
#   (`httpfilters.go`: wasm 200+i, router 310); the router with `suppress_envoy_headers: true`;
# - the dynamic module filter (`internal/xds/translator/dynamicmodule.go`; the IR from
#   `internal/gatewayapi/envoyextensionpolicy.go`, `buildDynamicModules`, which takes the source
#   from the EnvoyProxy's `dynamicModules` entry the policy's `name` references):
#   `envoy.filters.http.dynamic_modules/envoyextensionpolicy/NS/POLICY/dynamic-module/I`
#   (`dynamicModuleFilterName`: `perRouteFilterName` of `irConfigNameForDynamicModule`),
#   `disabled: true` in the HCM (`buildHCMDynamicModuleFilter`), typed config
#   `DynamicModuleFilter` (`dynamicModuleConfig`): `dynamic_module_config` with `module` the
#   source (`dynamicModuleSource`: a local `filename`, or `remote` with `http_uri` {uri, the URL's
#   cluster, timeout 10 s} and `sha256`) and the entry's `do_not_close`/`load_globally` (false
#   by default, so absent), `filter_name` the policy's `filterName`, `filter_config` a StringValue
#   of the config JSON (`dm.Config.Raw`), `terminal_filter` false; sorted at 250+i, after wasm and
#   before the router; enabled per route like wasm (`patchRoute`); a remote source adds a
#   cluster named `HOST_PORT` for the URL (`patchResources`, `addClusterFromURL`, `url2Cluster`:
#   dots as `_`, static for an IP address);
# - each route the policy covers enables the filter with `typed_per_filter_config` {FILTER:
#   FilterConfig {config: {}}} (`patchRoute`, `enableFilterOnRoute`): a policy on an HTTPRoute
#   covers every rule of it;
# - routes are named `httproute/NS/ROUTE/rule/R/match/M/HOST` (`irRouteName`), match `prefix: /`
#   and `headers: [{name, string_match: {exact}}]` (`buildXdsRouteMatch`), sorted with more
#   header matches first, stably (`internal/gatewayapi/sort.go`); `upgrade_configs` websocket;
#   no timeout, no retries unless a policy sets them; RequestHeaderModifier `remove` becomes
#   `request_headers_to_remove` (`buildXdsRoute`);
# - one cluster per rule, `httproute/NS/ROUTE/rule/R`; a rule with several weighted backends is
#   one cluster whose localities are the backends, `load_balancing_weight` each backend's weight,
#   least request with locality weighting (`buildXdsRouteAction`, golden
#   `http-route-weighted-backend`); connect timeout 10 s, buffer limit 32 KiB.

EG_LISTENER = "default/eg/http"


# The filter type of each EnvoyExtensionPolicy list and the IR name's kind (`irConfigNameForWasm`,
# `irConfigNameForDynamicModule`).
EG_FILTERS = {"wasm": ("envoy.filters.http.wasm", "wasm"),
              "dynamicModule": ("envoy.filters.http.dynamic_modules", "dynamic-module")}


def eg_filter_name(policy, index=0, kind="wasm"):
    meta = policy["metadata"]
    filter_type, ir_kind = EG_FILTERS[kind]
    return f"{filter_type}/envoyextensionpolicy/{meta['namespace']}/{meta['name']}/{ir_kind}/{index}"


def eg_wasm_filter(policy, module):
    wasm = policy["spec"]["wasm"][0]
    name = eg_filter_name(policy)
    config = {
        "name": wasm.get("name", name.split("/", 1)[1]),
        "vm_config": {"vm_id": name.split("/", 1)[1], "runtime": "envoy.wasm.runtime.v8",
                      # Envoy Gateway serves the module from its cache over HTTPS; here, the file.
                      "code": {"local": {"filename": str(module)}}},
        "configuration": {"@type": harness.STRING_VALUE, "value": k8s_json(wasm["config"])},
    }
    if wasm.get("rootID"):
        config["root_id"] = wasm["rootID"]
    if wasm.get("failOpen"):
        config["fail_open"] = True
    return {"name": name, "disabled": True,
            "typed_config": {"@type": harness.WASM_TYPE, "config": config}}


def url_cluster_name(url):
    """`url2Cluster`: the cluster Envoy Gateway adds for a URL it fetches from, and its port."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.hostname.replace('.', '_')}_{port}", port


def eg_dynamic_module_filter(policy, docs):
    """The dynamic module filter for the policy's first `dynamicModule`, its source from the
    EnvoyProxy entry of that name; and the clusters a remote source adds."""
    entry = policy["spec"]["dynamicModule"][0]
    proxies = [p for p in docs_of("EnvoyProxy", docs)
               for m in p["spec"].get("dynamicModules", []) if m["name"] == entry["name"]]
    assert len(proxies) == 1, "the module must be registered by one EnvoyProxy"
    registered = next(m for m in proxies[0]["spec"]["dynamicModules"] if m["name"] == entry["name"])
    source = registered["source"]
    clusters = []
    if source.get("type", "Local") == "Remote":
        url = source["remote"]["url"]
        cluster, port = url_cluster_name(url)
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", "the test serves it on loopback"
        clusters.append(eg_cluster(cluster, [(port, 1)], backend_names=[f"{cluster}/backend/-1"]))
        module = {"remote": {"http_uri": {"uri": url, "cluster": cluster, "timeout": "10s"},
                             "sha256": source["remote"]["sha256"]}}
    else:
        module = {"local": {"filename": source["local"]["path"]}}
    module_config = {"module": module}
    for field, flag in (("doNotClose", "do_not_close"), ("loadGlobally", "load_globally")):
        if registered.get(field):
            module_config[flag] = True
    typed = {"@type": harness.DYNAMIC_FILTER_TYPE, "dynamic_module_config": module_config}
    if entry.get("filterName"):
        typed["filter_name"] = entry["filterName"]
    if "config" in entry:
        typed["filter_config"] = {"@type": harness.STRING_VALUE, "value": k8s_json(entry["config"])}
    if entry.get("terminalFilter"):
        typed["terminal_filter"] = True
    return {"name": eg_filter_name(policy, 0, "dynamicModule"), "disabled": True,
            "typed_config": typed}, clusters


def eg_cluster(name, ports_by_weight, backend_names=None):
    """An Envoy Gateway cluster: one locality per backend (a rule's `NAME/backend/I`), each
    weighted."""
    endpoints = []
    for index, (port, weight) in enumerate(ports_by_weight):
        endpoints.append({
            "locality": {"region": backend_names[index] if backend_names else f"{name}/backend/{index}"},
            "load_balancing_weight": weight,
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}, "load_balancing_weight": 1}],
        })
    # A backend of weight 0 gets no locality weight: Envoy Gateway leaves it out.
    endpoints = [e for e in endpoints if e["load_balancing_weight"] > 0]
    return {
        "name": name, "type": "STATIC", "connect_timeout": "10s",
        "per_connection_buffer_limit_bytes": 32768,
        "ignore_health_on_host_removal": True,
        "circuit_breakers": {"thresholds": [{"max_retries": 1024}]},
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.least_request",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies."
                         "least_request.v3.LeastRequest",
                "locality_lb_config": {"locality_weighted_lb_config": {}}}}}]},
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
    }


def envoy_gateway(docs, module, ports, build="wasm", policy_rules=None):
    """The Gateway's Envoy for the rendered HTTPRoutes and EnvoyExtensionPolicy: its `wasm`
    module, or for the native build (rendered with `--native`) its `dynamicModule` as the
    rendered EnvoyProxy registers it. `policy_rules`: the rule indexes whose routes enable the
    filter (default: every rule, as a policy on the HTTPRoute does); a narrower set shows what a
    policy on one rule's section does."""
    policy = one("EnvoyExtensionPolicy", docs)
    clusters = []
    if build == "wasm":
        assert "dynamicModule" not in policy["spec"], "a wasm build runs the policy's wasm"
        module_filter = eg_wasm_filter(policy, module)
    else:
        assert "wasm" not in policy["spec"], "render --native for the native build"
        module_filter, clusters = eg_dynamic_module_filter(policy, docs)
    name = module_filter["name"]
    targets = {r["name"] for r in policy["spec"]["targetRefs"] if r["kind"] == "HTTPRoute"}
    virtual_hosts = []
    for route in docs_of("HTTPRoute", docs):
        meta = route["metadata"]
        prefix = f"httproute/{meta['namespace']}/{meta['name']}"
        hostnames = route["spec"].get("hostnames") or ["*"]
        ordered = []
        for r, rule in enumerate(route["spec"]["rules"]):
            cluster_name = f"{prefix}/rule/{r}"
            backends = [(ports[b["name"].rsplit("-", 1)[1]], b.get("weight", 1))
                        for b in rule["backendRefs"]]
            clusters.append(eg_cluster(cluster_name, backends))
            removed = [h for f in rule.get("filters", []) if f["type"] == "RequestHeaderModifier"
                       for h in f["requestHeaderModifier"].get("remove", [])]
            for m, match in enumerate(rule.get("matches") or [{}]):
                headers = [{"name": h["name"], "string_match": {"exact": h["value"]}}
                           for h in match.get("headers", [])]
                xds = {"match": {"prefix": "/", **({"headers": headers} if headers else {})},
                       "route": {"cluster": cluster_name,
                                 "upgrade_configs": [{"upgrade_type": "websocket"}]}}
                if removed:
                    xds["request_headers_to_remove"] = removed
                enabled = meta["name"] in targets and (policy_rules is None or r in policy_rules)
                if enabled:
                    xds["typed_per_filter_config"] = {name: {
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                        "config": {}}}
                ordered.append((len(headers), r, m, xds))
        # More header matches first; equal ones keep their order (a stable sort).
        ordered.sort(key=lambda item: -item[0])
        for host in hostnames:
            host_part = host.replace(".", "_")
            routes = []
            for _, r, m, xds in ordered:
                named = copy.deepcopy(xds)
                named["name"] = f"{prefix}/rule/{r}/match/{m}/{host_part}"
                routes.append(named)
            virtual_hosts.append({"name": f"{EG_LISTENER}/{host_part}", "domains": [host],
                                  "routes": routes})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http-10080",
        "route_config": {"name": EG_LISTENER, "virtual_hosts": virtual_hosts,
                         "ignore_port_in_host_matching": True},
        "http_filters": [module_filter, {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                             "suppress_envoy_headers": True}}],
        "normalize_path": True, "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "use_remote_address": True,
    }
    config = base_bootstrap(EG_LISTENER, hcm, clusters)
    return with_native_stats(config, build)


# --- Istio: VirtualService and HTTPRoute into a sidecar's or a waypoint's routes -----------------
#
# From istio/istio (master, December 2026), `pilot/pkg/networking/core/route/route.go`:
# - `BuildHTTPRoutesForVirtualService` keeps the `http` order; `TranslateRoute` names a route
#   after `http[].name`; `TranslateRouteMatch` starts from `prefix: /` and, for a route with a
#   match, sets `case_sensitive: true`; `translateHeaderMatch` gives
#   `{name, string_match: {exact}}` (never `ignore_case`);
# - `headers.request.remove` becomes the route's `request_headers_to_remove`;
# - one destination: `cluster`; several: `weighted_clusters` without `total_weight`, a
#   destination of weight 0 left out (`applyHTTPRouteDestination`, `processWeightedDestination`);
# - `timeout: 0s`, `max_grpc_timeout: 0s` (`setTimeout`), the mesh default retry policy
#   (`retry/retry.go`), decorator `HOST:PORT/*` for one cluster and `VSNAME:PORT/*` for a split
#   (`GetRouteOperation`), metadata naming the VirtualService (`BuildConfigInfoMetadata`);
# - HTTPRoute (`pilot/pkg/config/kube/gateway/conversion.go`): a VirtualService per parent host
#   and port named `NS~PORT~FQDN` (`mergeHTTPRoutes`), unnamed rules named `NS.ROUTE.INDEX`
#   (`convertHTTPRoute`), sorted with more header matches first, stably (`sortHTTPRoutes`);
#   backends `NAME.NS.svc.cluster.local` (`buildDestination`); with Gateway semantics a route
#   answers a missing cluster with 500 (`cluster_not_found_response_code`).


def _destination_cluster(destination, port, namespace="default", waypoint=False):
    host = destination["host"]
    if "." not in host:
        host = f"{host}.{namespace}.svc.cluster.local"
    number = destination.get("port", {}).get("number", port)
    if waypoint:
        # `getWaypointDestinationCluster`: a service this waypoint serves, by the port protocol.
        return f"inbound-vip|{number}|http|{host}"
    return f"outbound|{number}|{destination.get('subset', '')}|{host}"


def istio_routes(vs_name, http, port, gateway_semantics=False, waypoint=False):
    """The Envoy routes of VirtualService `vs_name`'s `http` list (as istiod translates it)."""
    routes = []
    for entry in http:
        matches = entry.get("match") or [None]
        for match in matches:
            xds_match = {"prefix": "/"}
            if match is not None:
                xds_match["case_sensitive"] = True
                headers = sorted(match.get("headers", {}).items())
                if headers:
                    xds_match["headers"] = [{"name": n, "string_match": {"exact": m["exact"]}}
                                            for n, m in headers]
            destinations = [d for d in entry["route"] if d.get("weight", 100) > 0 or len(entry["route"]) == 1]
            action = {"timeout": "0s", "retry_policy": istio.default_retry_policy(),
                      "max_grpc_timeout": "0s"}
            if len(destinations) == 1:
                cluster = _destination_cluster(destinations[0]["destination"], port, waypoint=waypoint)
                action["cluster"] = cluster
                operation = f"{cluster.rsplit('|', 1)[1]}:{port}/*"
            else:
                action["weighted_clusters"] = {"clusters": [
                    {"name": _destination_cluster(d["destination"], port, waypoint=waypoint),
                     "weight": d["weight"]} for d in destinations]}
                operation = f"{vs_name}:{port}/*"
            if gateway_semantics:
                action["cluster_not_found_response_code"] = "INTERNAL_SERVER_ERROR"
            route = {"name": entry.get("name", ""), "match": xds_match, "route": action,
                     "decorator": {"operation": operation},
                     "metadata": {"filter_metadata": {"istio": {
                         "config": f"/apis/networking.istio.io/v1/namespaces/default/virtual-service/{vs_name}"}}}}
            removed = entry.get("headers", {}).get("request", {}).get("remove", [])
            if removed:
                route["request_headers_to_remove"] = removed
            routes.append(route)
        if not entry.get("match"):
            break  # the first catch-all route ends the list
    return routes


def http_route_as_virtual_service(route):
    """What istiod makes of an HTTPRoute whose parent is a Service: its name and `http` list."""
    meta, spec = route["metadata"], route["spec"]
    parent = spec["parentRefs"][0]
    host = f"{parent['name']}.{meta['namespace']}.svc.cluster.local"
    port = parent.get("port", istio.PORT)
    http = []
    for index, rule in enumerate(spec["rules"]):
        entry = {"name": f"{meta['namespace']}.{meta['name']}.{index}"}
        if rule.get("matches"):
            entry["match"] = [{"headers": {h["name"]: {"exact": h["value"]} for h in m.get("headers", [])}}
                              for m in rule["matches"]]
        else:
            entry["match"] = [{}]  # `augmentPortMatch`: a port match, which is no Envoy matcher
        backends = rule["backendRefs"]
        entry["route"] = [{"destination": {"host": f"{b['name']}.{meta['namespace']}.svc.cluster.local",
                                           "port": {"number": b.get("port", port)}},
                           **({"weight": b.get("weight", 1)} if len(backends) > 1 else {})}
                          for b in backends]
        removed = [h for f in rule.get("filters", []) if f["type"] == "RequestHeaderModifier"
                   for h in f["requestHeaderModifier"].get("remove", [])]
        if removed:
            entry["headers"] = {"request": {"remove": removed}}
        http.append(entry)
    # `sortHTTPRoutes`: more header matches first, stable.
    http.sort(key=lambda e: -max(len(m.get("headers", {})) for m in e["match"]))
    # A rule with only a port match is a catch-all in Envoy.
    for entry in http:
        if entry["match"] == [{}]:
            entry["match"] = [{"headers": {}}]
    return f"{meta['namespace']}~{port}~{host}", http, port


def _version_clusters(ports, names):
    """{cluster name: port}: every cluster name of a version served by the version's server."""
    return {name: ports[version] for name, version in names.items()}


def _sidecar(docs, module, ports, routes, cluster_names, with_filter):
    config = istio.sidecar({**_version_clusters(ports, cluster_names),
                            **{c: ports["other"] for c in (istio.cluster("reviews"), istio.cluster("ratings"),
                                                           istio.PASSTHROUGH)}},
                           virtual_service=routes)
    if with_filter:
        plugin = one("WasmPlugin", docs)
        assert plugin["spec"]["match"] == [{"mode": "CLIENT", "ports": [{"number": istio.PORT}]}]
        # Istio 1.30 translates the WasmPlugin into a TrafficExtension (`translate.go`).
        config = istio.insert_unphased(config, istio.extension_filter(plugin, module, "1.30"))
    return config


def sidecar_virtual_service(docs, module, ports, with_filter=True):
    """A client sidecar (tests/istio.py) with the rendered VirtualService's routes for reviews and
    the rendered DestinationRule's subset clusters."""
    vs = one("VirtualService", docs)
    rule = one("DestinationRule", docs)
    routes = istio_routes(vs["metadata"]["name"], vs["spec"]["http"], istio.PORT)
    names = {istio.cluster("reviews", s["name"]): s["name"] for s in rule["spec"]["subsets"]}
    return _sidecar(docs, module, ports, routes, names, with_filter)


def version_services(docs):
    """{FQDN of a per-version Service: version}."""
    return {f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local":
            s["spec"]["selector"]["version"] for s in docs_of("Service", docs)}


def sidecar_http_route(docs, module, ports, with_filter=True):
    """A client sidecar with the rendered HTTPRoute (parent: the Service) as istiod converts it."""
    name, http, port = http_route_as_virtual_service(one("HTTPRoute", docs))
    routes = istio_routes(name, http, port, gateway_semantics=True)
    names = {f"outbound|{port}||{fqdn}": v for fqdn, v in version_services(docs).items()}
    return _sidecar(docs, module, ports, routes, names, with_filter)


WAYPOINT_FILTERS = [f for f in istio.SIDECAR_HTTP_FILTERS if f is not istio.ROUTER]


def waypoint_http_route(docs, module, ports, with_filter=True):
    """reviews' HTTP chain on its waypoint (`listener_waypoint.go`): the route configuration
    `inbound-vip|PORT|http|FQDN` inline, one virtual host `inbound|http|PORT` for any domain, the
    HTTPRoute's routes to `inbound-vip` clusters; the WasmPlugin that targets the Service among
    the unphased extensions, after grpc_stats, fault and cors, before the router (Istio's own
    upstream-metadata and telemetry filters, not in upstream Envoy, sit between)."""
    plugin = one("WasmPlugin", docs)
    assert "match" not in plugin["spec"], "mode CLIENT keeps a plugin off a waypoint"
    assert {"group": "", "kind": "Service", "name": "reviews"} in plugin["spec"]["targetRefs"]
    name, http, port = http_route_as_virtual_service(one("HTTPRoute", docs))
    routes = istio_routes(name, http, port, gateway_semantics=True, waypoint=True)
    fqdn = "reviews.default.svc.cluster.local"
    filters = copy.deepcopy(WAYPOINT_FILTERS)
    if with_filter:
        filters.append(istio.extension_filter(plugin, module, "1.30"))
    filters.append(copy.deepcopy(ROUTER))
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"inbound-vip|{port}|http|{fqdn}",
        "route_config": {"name": f"inbound-vip|{port}|http|{fqdn}", "validate_clusters": False,
                         "virtual_hosts": [{"name": f"inbound|http|{port}", "domains": ["*"],
                                            "routes": routes}]},
        "http_filters": filters,
        "use_remote_address": False,
        # The waypoint's chain is built by `buildHTTPConnectionManager` too (istio.sidecar).
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
    }
    clusters = [harness.static_cluster(f"inbound-vip|{port}|http|{f}", ports[v])
                for f, v in version_services(docs).items()]
    # As Istio's bootstrap: no default tags, only the stats Istio always keeps.
    stats_config = {"use_all_default_tags": False, "stats_matcher": {"inclusion_list": {
        "patterns": [{"prefix": p} for p in istio.REQUIRED_STATS_PREFIXES]}}}
    # The waypoint's listener for reviews is an internal listener behind HBONE; here, loopback.
    return base_bootstrap("main_internal", hcm, clusters, stats_config)
