//! The routes that follow meshsplit's upstream header (`upstream_header`): Istio
//! VirtualServices and Gateway API HTTPRoutes (Istio sidecars and waypoints, Envoy Gateway), as
//! `meshsplit render` writes them. Across every file `check` reads, each such route set is
//! matched with the service of a plugin config it routes, and a warning names what would send
//! traffic somewhere the config does not say:
//! - an upstream without a route matching `HEADER: NAME` (the filter's choice is ignored: the
//!   request takes another route);
//! - a route matching a name that is no upstream of the service;
//! - no default route (requests without the header, from a proxy without the filter, match
//!   nothing), or a default route whose weights are not the config's;
//! - a route that does not remove the header (the upstream sees it).

use meshsplit::plan::{Plan, Service};
use serde_json::Value;

use crate::report::Line;
use crate::source::Document;

/// A plugin config that writes an upstream header, and where it was found.
pub struct Config {
    pub at: String,
    pub plan: Plan,
}

/// One VirtualService or HTTPRoute, reduced to what the check compares.
#[derive(Debug, Default)]
struct RouteSet {
    place: String,
    /// The names it routes for: VirtualService hosts, HTTPRoute hostnames and Service parents.
    hosts: Vec<String>,
    /// Its own name (an HTTPRoute on a Gateway is matched by it when it lists no hostnames).
    name: String,
    /// (header name, exact value, backend, removes the header (by name)).
    header_routes: Vec<HeaderRoute>,
    /// The first route without a header condition: its backends with weights, and the
    /// headers it removes.
    default: Option<DefaultRoute>,
}

/// A default route's backends with their weights, and the headers it removes.
type DefaultRoute = (Vec<(String, u64)>, Vec<String>);

#[derive(Debug)]
struct HeaderRoute {
    header: String,
    value: String,
    backend: String,
    removes: Vec<String>,
}

/// Every VirtualService and HTTPRoute in `documents` of file `file`.
fn route_sets(file: &str, documents: &[Document]) -> Vec<RouteSet> {
    let mut out = Vec::new();
    for document in documents {
        collect(file, &document.value, &mut out);
    }
    out
}

fn collect(file: &str, value: &Value, out: &mut Vec<RouteSet>) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind == "List" {
        for item in value
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            collect(file, item, out);
        }
        return;
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let meta = value.get("metadata");
    let name = text(meta.and_then(|m| m.get("name")));
    let namespace = text(meta.and_then(|m| m.get("namespace")));
    let place = if namespace.is_empty() {
        format!("{file}: {kind} {name}")
    } else {
        format!("{file}: {kind} {namespace}/{name}")
    };
    let spec = value.get("spec");
    let set = match kind {
        "VirtualService" => virtual_service(spec),
        "HTTPRoute" => http_route(spec),
        _ => return,
    };
    out.push(RouteSet { place, name, ..set });
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn array(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

fn virtual_service(spec: Option<&Value>) -> RouteSet {
    let mut set = RouteSet {
        hosts: strings(spec.and_then(|s| s.get("hosts"))),
        ..RouteSet::default()
    };
    let destination = |d: &Value| {
        let dest = d.get("destination");
        let field = |name| {
            dest.and_then(|x| x.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        format!("{} subset {}", field("host"), field("subset"))
    };
    for entry in array(spec.and_then(|s| s.get("http"))) {
        let removes = strings(
            entry
                .get("headers")
                .and_then(|h| h.get("request"))
                .and_then(|r| r.get("remove")),
        );
        let routes: Vec<&Value> = array(entry.get("route")).collect();
        let matches: Vec<&Value> = array(entry.get("match")).collect();
        let catch_all = matches.is_empty()
            || matches
                .iter()
                .any(|m| m.as_object().is_none_or(serde_json::Map::is_empty));
        for m in &matches {
            let headers = m.get("headers").and_then(Value::as_object);
            for (header, condition) in headers.into_iter().flatten() {
                if let (Some(value), [only]) = (
                    condition.get("exact").and_then(Value::as_str),
                    routes.as_slice(),
                ) {
                    set.header_routes.push(HeaderRoute {
                        header: header.to_ascii_lowercase(),
                        value: value.to_owned(),
                        backend: destination(only),
                        removes: removes.clone(),
                    });
                }
            }
        }
        if catch_all && set.default.is_none() {
            let single = routes.len() == 1;
            let backends = routes
                .iter()
                .map(|r| {
                    let weight = r.get("weight").and_then(Value::as_u64);
                    (
                        destination(r),
                        weight.unwrap_or(if single { 100 } else { 0 }),
                    )
                })
                .collect();
            set.default = Some((backends, removes));
        }
    }
    set
}

fn http_route(spec: Option<&Value>) -> RouteSet {
    let mut hosts = strings(spec.and_then(|s| s.get("hostnames")));
    for parent in array(spec.and_then(|s| s.get("parentRefs"))) {
        if parent.get("kind").and_then(Value::as_str) == Some("Service") {
            if let Some(name) = parent.get("name").and_then(Value::as_str) {
                hosts.push(name.to_owned());
            }
        }
    }
    let mut set = RouteSet {
        hosts,
        ..RouteSet::default()
    };
    let backend = |b: &Value| {
        let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
        match b.get("port").and_then(Value::as_u64) {
            Some(port) => format!("{name}:{port}"),
            None => name.to_owned(),
        }
    };
    for rule in array(spec.and_then(|s| s.get("rules"))) {
        let removes: Vec<String> = array(rule.get("filters"))
            .filter(|f| f.get("type").and_then(Value::as_str) == Some("RequestHeaderModifier"))
            .flat_map(|f| strings(f.get("requestHeaderModifier").and_then(|m| m.get("remove"))))
            .collect();
        let backends: Vec<&Value> = array(rule.get("backendRefs")).collect();
        let matches: Vec<&Value> = array(rule.get("matches")).collect();
        let catch_all = matches.is_empty()
            || matches.iter().any(|m| {
                array(m.get("headers")).next().is_none()
                    && array(m.get("queryParams")).next().is_none()
                    && m.get("method").is_none()
                    && m.get("path").is_none_or(|p| {
                        p.get("value").and_then(Value::as_str).unwrap_or("/") == "/"
                            && p.get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("PathPrefix")
                                == "PathPrefix"
                    })
            });
        for m in &matches {
            for header in array(m.get("headers")) {
                let exact = header
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("Exact")
                    == "Exact";
                let name = header.get("name").and_then(Value::as_str);
                let value = header.get("value").and_then(Value::as_str);
                if let (true, Some(name), Some(value), [only]) =
                    (exact, name, value, backends.as_slice())
                {
                    set.header_routes.push(HeaderRoute {
                        header: name.to_ascii_lowercase(),
                        value: value.to_owned(),
                        backend: backend(only),
                        removes: removes.clone(),
                    });
                }
            }
        }
        if catch_all && set.default.is_none() {
            let list = backends
                .iter()
                .map(|b| {
                    (
                        backend(b),
                        b.get("weight").and_then(Value::as_u64).unwrap_or(1),
                    )
                })
                .collect();
            set.default = Some((list, removes));
        }
    }
    set
}

/// Whether `set` routes `service`: a host in common (a short name matches its FQDN), or, for
/// a route with no host of its own, its name.
fn routes_service(set: &RouteSet, plan: &Plan, index: usize, service: &Service) -> bool {
    let hosts = plan.hosts_of(index);
    let same = |a: &str, b: &str| {
        let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
        a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
    };
    if set.hosts.is_empty() {
        return set.name == service.name;
    }
    set.hosts
        .iter()
        .any(|h| hosts.iter().any(|k| same(h, k)) || same(h, &service.name))
}

/// The lines for the route sets of one file (`documents` of file `file`) that route a service
/// of a config in `configs` (from every file checked): an ok line for each, and its warnings.
pub fn lines(file: &str, documents: &[Document], configs: &[Config]) -> Vec<Line> {
    let mut out = Vec::new();
    for set in route_sets(file, documents) {
        for config in configs {
            let Some(header) = &config.plan.headers.upstream else {
                continue;
            };
            for (index, service) in config.plan.services.iter().enumerate() {
                if !routes_service(&set, &config.plan, index, service) {
                    continue;
                }
                out.push(Line::Valid(format!(
                    "{}: ok: routes {header} for services[{index}] ({:?}) of {}",
                    set.place, service.name, config.at
                )));
                out.extend(compare(&set, header, config, index, service));
            }
        }
    }
    out
}

fn compare(
    set: &RouteSet,
    header: &str,
    config: &Config,
    index: usize,
    service: &Service,
) -> Vec<Line> {
    let at = &set.place;
    let whose = format!("services[{index}] ({:?}) of {}", service.name, config.at);
    let mut out = Vec::new();
    let routes: Vec<&HeaderRoute> = set
        .header_routes
        .iter()
        .filter(|r| r.header == header)
        .collect();
    let mut backends: Vec<(String, u64, &str)> = Vec::new(); // (backend, config weight, upstream)
    for upstream in service.upstreams.iter() {
        match routes.iter().find(|r| r.value == upstream.name) {
            Some(route) => backends.push((
                route.backend.clone(),
                u64::from(upstream.weight),
                &upstream.name,
            )),
            None => out.push(Line::Warning(format!(
                "{at}: no route matches {header}: {}: the requests {whose} sends to upstream {:?} \
                 take another route",
                upstream.name, upstream.name
            ))),
        }
    }
    for route in &routes {
        if !service.upstreams.iter().any(|u| u.name == route.value) {
            out.push(Line::Warning(format!(
                "{at}: the route for {header}: {} names no upstream of {whose}: the filter never \
                 writes it",
                route.value
            )));
        }
        if !route.removes.iter().any(|h| h.eq_ignore_ascii_case(header)) {
            out.push(Line::Warning(format!(
                "{at}: the route for {header}: {} does not remove {header}: the upstream sees it",
                route.value
            )));
        }
    }
    let Some((default, removes)) = &set.default else {
        out.push(Line::Warning(format!(
            "{at}: no default route: requests without {header} (a proxy without the filter, a \
             module that failed open) match no route of {whose}"
        )));
        return out;
    };
    if !removes.iter().any(|h| h.eq_ignore_ascii_case(header)) {
        out.push(Line::Warning(format!(
            "{at}: the default route does not remove {header}: a client's own value reaches the \
             upstream"
        )));
    }
    if !backends.is_empty() {
        let in_default = |backend: &str| {
            default
                .iter()
                .filter(|(b, _)| b == backend)
                .map(|(_, w)| *w)
                .sum::<u64>()
        };
        let route_weights: Vec<u64> = backends.iter().map(|(b, _, _)| in_default(b)).collect();
        let config_weights: Vec<u64> = backends.iter().map(|(_, w, _)| *w).collect();
        let (route_total, config_total) = (
            route_weights.iter().sum::<u64>(),
            config_weights.iter().sum::<u64>(),
        );
        let others: u64 = default
            .iter()
            .filter(|(b, _)| !backends.iter().any(|(x, _, _)| x == b))
            .map(|(_, w)| *w)
            .sum();
        let proportional = route_weights.iter().zip(&config_weights).all(|(r, c)| {
            u128::from(*r) * u128::from(config_total) == u128::from(*c) * u128::from(route_total)
        });
        if others > 0 || !proportional || route_total == 0 {
            let show = |weights: &[u64]| {
                backends
                    .iter()
                    .zip(weights)
                    .map(|((_, _, name), w)| format!("{name} {w}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(Line::Warning(format!(
                "{at}: the default route's weights ({}{}) are not the config's ({}): requests \
                 without {header} split differently from the filter's",
                show(&route_weights),
                if others > 0 {
                    format!(", and {others} to backends no version's route names")
                } else {
                    String::new()
                },
                show(&config_weights)
            )));
        }
    }
    out
}
