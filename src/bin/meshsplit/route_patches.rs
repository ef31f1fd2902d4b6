//! Istio `EnvoyFilter` patches that make routes read meshsplit's cluster header: an `ok` line for
//! each, and warnings for the designs that fail silently in a sidecar.
//!
//! A patch is taken to be meshsplit's route patch when it patches routes (`HTTP_ROUTE`,
//! `VIRTUAL_HOST`, `ROUTE_CONFIGURATION`) and its value sets a `cluster_header`. What istiod does
//! with the match fields (`pilot/pkg/networking/core/envoyfilter/rc_patch.go`):
//! - `vhost.route.name`: a VirtualService for the host replaces Istio's `default` route with its
//!   own routes, named after `http[].name` (none when unnamed), so a patch that names a route
//!   matches nothing there and the split stops without a word;
//! - `portNumber` (and a numeric `name`): compared with the route configuration's name read as a
//!   number; a port whose protocol is auto-detected gets a route configuration named
//!   `HOST:PORT`, which reads as 0, so the patch matches nothing;
//! - a `MERGE` that sets `cluster_header` on a route without matching the header makes every
//!   request on that route follow the header, also the ones the filter did not tag (by cluster
//!   IP, a host the plugin config lacks, a pod without the filter): they get 503 NC.

use serde_json::Value;

use crate::report::Line;
use crate::source::Document;

const ROUTE_TARGETS: [&str; 3] = ["HTTP_ROUTE", "VIRTUAL_HOST", "ROUTE_CONFIGURATION"];

/// The lines for every meshsplit route patch in `documents`, in file order.
pub fn lines(file: &str, documents: &[Document]) -> Vec<Line> {
    let mut out = Vec::new();
    for document in documents {
        let value = &document.value;
        if value.get("kind").and_then(Value::as_str) != Some("EnvoyFilter") {
            continue;
        }
        let place = manifest_place(value);
        let patches = value
            .get("spec")
            .and_then(|s| s.get("configPatches"))
            .and_then(Value::as_array);
        for (i, patch) in patches.into_iter().flatten().enumerate() {
            out.extend(patch_lines(
                &format!("{file}: {place} configPatches[{i}]"),
                patch,
            ));
        }
    }
    out
}

fn manifest_place(value: &Value) -> String {
    let field = |name| {
        value
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    match field("namespace") {
        "" => format!("EnvoyFilter {}", field("name")),
        namespace => format!("EnvoyFilter {namespace}/{}", field("name")),
    }
}

fn patch_lines(at: &str, patch: &Value) -> Vec<Line> {
    let apply_to = patch
        .get("applyTo")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let body = patch.get("patch");
    let value = body.and_then(|p| p.get("value"));
    let Some(header) = value.and_then(cluster_header) else {
        return Vec::new();
    };
    if !ROUTE_TARGETS.contains(&apply_to) {
        return Vec::new();
    }
    let operation = body
        .and_then(|p| p.get("operation"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let matched = patch.get("match").and_then(|m| m.get("routeConfiguration"));
    let vhost = matched.and_then(|m| m.get("vhost"));
    let vhost_name = vhost
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("every virtual host");
    let mut lines = vec![Line::Valid(format!(
        "{at}: ok: {apply_to} {operation} in {vhost_name}, routing by header {header}"
    ))];
    let route_name = vhost
        .and_then(|v| v.get("route"))
        .and_then(|r| r.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if let Some(route_name) = route_name {
        lines.push(Line::Warning(format!(
            "{at}: match.routeConfiguration.vhost.route.name: the patch depends on the route name \
             \"{route_name}\"; a VirtualService for the host replaces Istio's routes with its own \
             (named after http[].name, or unnamed) and the patch then matches nothing, silently; \
             insert a route that matches the header first instead (INSERT_FIRST, matching \
             vhost.name alone, as envoy/istio/meshsplit-route.yaml does)"
        )));
    }
    let port = matched
        .and_then(|m| m.get("portNumber"))
        .and_then(Value::as_u64);
    if let Some(port) = port.filter(|p| *p != 0) {
        lines.push(Line::Warning(format!(
            "{at}: match.routeConfiguration.portNumber: {port} matches nothing for a service \
             whose port protocol is auto-detected (its routes are in a route configuration \
             named HOST:{port}); match on vhost.name alone"
        )));
    }
    if apply_to == "HTTP_ROUTE" && operation == "MERGE" && !matches_header(value, header) {
        lines.push(Line::Warning(format!(
            "{at}: patch.operation: a MERGE that sets cluster_header sends every request on the \
             route by the header, also those the filter does not tag (by cluster IP, a host the \
             plugin config lacks, a pod without the filter): they get 503 NC; insert a route \
             that matches the header first instead"
        )));
    }
    lines
}

/// The `cluster_header` a patch value sets, anywhere in it.
fn cluster_header(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) => map
            .get("cluster_header")
            .and_then(Value::as_str)
            .or_else(|| map.values().find_map(cluster_header)),
        Value::Array(items) => items.iter().find_map(cluster_header),
        _ => None,
    }
}

/// The route value only matches requests that carry `header`.
fn matches_header(value: Option<&Value>, header: &str) -> bool {
    value
        .and_then(|v| v.get("match"))
        .and_then(|m| m.get("headers"))
        .and_then(Value::as_array)
        .is_some_and(|headers| {
            headers.iter().any(|h| {
                h.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(header))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse;

    fn report(text: &str) -> Vec<String> {
        lines("f", &parse(text).unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const NAMED_MERGE: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: r, namespace: default}
spec:
  configPatches:
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        portNumber: 9080
        vhost:
          name: reviews.default.svc.cluster.local:9080
          route: {name: default}
    patch:
      operation: MERGE
      value:
        route: {cluster_header: x-meshsplit-cluster}
";

    #[test]
    fn a_named_route_merge_on_a_port_draws_three_warnings() {
        let lines = report(NAMED_MERGE);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert_eq!(
            lines[0],
            "f: EnvoyFilter default/r configPatches[0]: ok: HTTP_ROUTE MERGE in \
             reviews.default.svc.cluster.local:9080, routing by header x-meshsplit-cluster"
        );
        assert!(lines[1].starts_with(
            "warning: f: EnvoyFilter default/r configPatches[0]: \
             match.routeConfiguration.vhost.route.name: the patch depends on the route name \
             \"default\""
        ));
        assert!(lines[2].contains("match.routeConfiguration.portNumber: 9080 matches nothing"));
        assert!(lines[3].contains("patch.operation: a MERGE that sets cluster_header"));
    }

    #[test]
    fn a_header_matched_route_inserted_first_is_only_ok() {
        let text = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: r}
spec:
  configPatches:
  - applyTo: HTTP_ROUTE
    match:
      routeConfiguration:
        vhost: {name: reviews.default.svc.cluster.local:9080}
    patch:
      operation: INSERT_FIRST
      value:
        match:
          prefix: /
          headers: [{name: X-Meshsplit-Cluster, present_match: true}]
        route: {cluster_header: x-meshsplit-cluster}
";
        assert_eq!(
            report(text),
            [
                "f: EnvoyFilter r configPatches[0]: ok: HTTP_ROUTE INSERT_FIRST in \
              reviews.default.svc.cluster.local:9080, routing by header x-meshsplit-cluster"
            ]
        );
    }

    #[test]
    fn patches_without_a_cluster_header_are_not_meshsplits() {
        let text = NAMED_MERGE.replace("cluster_header", "cluster");
        assert!(report(&text).is_empty());
        let filter = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        assert!(report(filter).is_empty());
    }
}
