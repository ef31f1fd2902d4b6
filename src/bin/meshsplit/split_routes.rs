//! The routes that follow meshsplit's upstream header (`upstream_header`): Istio
//! VirtualServices and Gateway API HTTPRoutes (Istio sidecars and waypoints, Envoy Gateway), as
//! `meshsplit render` writes them. Each route set `check` reads is matched with the service of a
//! plugin config it routes, and a warning names what would send traffic somewhere the config
//! does not say:
//! - an upstream without a route matching exactly `HEADER: NAME` and nothing else, or whose route
//!   a catch-all route before it hides (a VirtualService is matched in order);
//! - a route that sends one upstream's requests to another's backend (by the config's cluster
//!   names, where they tell: `outbound|PORT|SUBSET|FQDN`, `outbound|PORT||FQDN`,
//!   `inbound-vip|PORT|http|FQDN`, `httproute/NS/NAME/rule/I`);
//! - a route matching the header by prefix or regex, or a name that is no upstream;
//! - no default route (requests without the header, from a proxy without the filter, match
//!   nothing), or a default route whose weights are not the config's;
//! - a route that does not remove the header (the upstream sees it).

use meshsplit::plan::{Plan, Service};
use serde_json::{Map, Value};

use crate::report::Line;
use crate::source::Document;

/// A plugin config that writes an upstream header, and where it was found.
pub struct Config {
    pub at: String,
    pub plan: Plan,
    /// The configuration text (the same config in two files is checked once).
    pub text: String,
}

/// One VirtualService or HTTPRoute, reduced to what the check compares.
#[derive(Debug, Default)]
struct RouteSet {
    place: String,
    kind: String,
    /// Its own name and namespace.
    name: String,
    namespace: String,
    /// The names it routes for: VirtualService hosts, HTTPRoute hostnames and Service parents.
    hosts: Vec<String>,
    /// Its routes in order.
    routes: Vec<Route>,
}

#[derive(Debug, Default)]
struct Route {
    /// `http[].name`, or `rule I` of an HTTPRoute.
    label: String,
    /// The HTTPRoute rule index.
    rule: usize,
    /// Alternatives (a VirtualService `match` list, an HTTPRoute `matches` list); none: all.
    matches: Vec<Match>,
    /// Backends (canonical: `FQDN subset S` or `NAME.NS`) with their weights.
    backends: Vec<(String, u64)>,
    /// Headers every request of the route has removed (route-level, or every destination's).
    removes: Vec<String>,
}

#[derive(Debug, Default)]
struct Match {
    /// (header, exact value) conditions.
    exact: Vec<(String, String)>,
    /// Headers matched by prefix, regex or presence.
    inexact: Vec<String>,
    /// Any other condition (path other than `/`, method, query, source labels, ...).
    other: bool,
}

impl Match {
    fn catch_all(&self) -> bool {
        self.exact.is_empty() && self.inexact.is_empty() && !self.other
    }
}

impl Route {
    fn catch_all(&self) -> bool {
        self.matches.is_empty() || self.matches.iter().any(Match::catch_all)
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    array(value)
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn array(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

fn text<'a>(value: Option<&'a Value>, field: &str) -> &'a str {
    value
        .and_then(|v| v.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `(name, namespace)` of a Kubernetes service host: `NAME`, `NAME.NS`, `NAME.NS.svc`,
/// `NAME.NS.svc.cluster.local` (namespace `None` for a short name); `None` for other names.
fn kube_name(host: &str) -> Option<(String, Option<String>)> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .to_owned();
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] => Some(((*name).to_owned(), None)),
        [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => {
            Some(((*name).to_owned(), Some((*ns).to_owned())))
        }
        _ => None,
    }
}

/// The canonical `NAME.NS` of a Kubernetes service host, resolved in `namespace`, or the host.
fn canonical(host: &str, namespace: &str) -> String {
    match kube_name(host) {
        Some((name, ns)) => format!(
            "{name}.{}",
            ns.as_deref().unwrap_or(if namespace.is_empty() {
                "default"
            } else {
                namespace
            })
        ),
        None => host.to_ascii_lowercase(),
    }
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
        for item in array(value.get("items")) {
            collect(file, item, out);
        }
        return;
    }
    let meta = value.get("metadata");
    let (name, namespace) = (text(meta, "name"), text(meta, "namespace"));
    let place = if namespace.is_empty() {
        format!("{file}: {kind} {name}")
    } else {
        format!("{file}: {kind} {namespace}/{name}")
    };
    let mut set = RouteSet {
        place,
        kind: kind.to_owned(),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        ..RouteSet::default()
    };
    let spec = value.get("spec");
    match kind {
        "VirtualService" => virtual_service(spec, &mut set),
        "HTTPRoute" => http_route(spec, &mut set),
        _ => return,
    }
    out.push(set);
}

/// A VirtualService `match` entry.
fn vs_match(m: &Map<String, Value>) -> Match {
    let mut out = Match::default();
    for (key, condition) in m {
        match key.as_str() {
            "name" | "port" | "gateways" => {}
            "uri" => {
                let root = condition.get("prefix").and_then(Value::as_str) == Some("/");
                out.other |= !root;
            }
            "headers" => {
                for (header, test) in condition.as_object().into_iter().flatten() {
                    let header = header.to_ascii_lowercase();
                    match test.get("exact").and_then(Value::as_str) {
                        Some(value) if test.as_object().is_some_and(|t| t.len() == 1) => {
                            out.exact.push((header, value.to_owned()));
                        }
                        _ => out.inexact.push(header),
                    }
                }
            }
            _ => out.other = true,
        }
    }
    out
}

fn virtual_service(spec: Option<&Value>, set: &mut RouteSet) {
    set.hosts = strings(spec.and_then(|s| s.get("hosts")));
    let namespace = set.namespace.clone();
    for entry in array(spec.and_then(|s| s.get("http"))) {
        let destinations: Vec<&Value> = array(entry.get("route")).collect();
        let single = destinations.len() == 1;
        let backends = destinations
            .iter()
            .map(|d| {
                let dest = d.get("destination");
                let subset = text(dest, "subset");
                let key = format!(
                    "{} subset {subset}",
                    canonical(text(dest, "host"), &namespace)
                );
                let weight = d.get("weight").and_then(Value::as_u64);
                (key, weight.unwrap_or(if single { 100 } else { 0 }))
            })
            .collect();
        let request_removes = |v: Option<&Value>| {
            strings(
                v.and_then(|h| h.get("headers"))
                    .and_then(|h| h.get("request"))
                    .and_then(|r| r.get("remove")),
            )
        };
        let mut removes = request_removes(Some(entry));
        // A header every destination removes is removed too.
        if let Some(first) = destinations.first() {
            for header in request_removes(Some(first)) {
                if destinations
                    .iter()
                    .all(|d| request_removes(Some(d)).contains(&header))
                {
                    removes.push(header);
                }
            }
        }
        let matches = array(entry.get("match"))
            .filter_map(Value::as_object)
            .map(vs_match)
            .collect();
        set.routes.push(Route {
            label: format!("route {:?}", text(Some(entry), "name")),
            rule: set.routes.len(),
            matches,
            backends,
            removes,
        });
    }
}

fn http_route(spec: Option<&Value>, set: &mut RouteSet) {
    let mut hosts = strings(spec.and_then(|s| s.get("hostnames")));
    for parent in array(spec.and_then(|s| s.get("parentRefs"))) {
        if parent.get("kind").and_then(Value::as_str) == Some("Service") {
            let ns = text(Some(parent), "namespace");
            let ns = if ns.is_empty() {
                set.namespace.as_str()
            } else {
                ns
            };
            hosts.push(format!("{}.{ns}", text(Some(parent), "name")));
        }
    }
    set.hosts = hosts;
    let namespace = set.namespace.clone();
    for (index, rule) in array(spec.and_then(|s| s.get("rules"))).enumerate() {
        let removes = array(rule.get("filters"))
            .filter(|f| f.get("type").and_then(Value::as_str) == Some("RequestHeaderModifier"))
            .flat_map(|f| strings(f.get("requestHeaderModifier").and_then(|m| m.get("remove"))))
            .collect();
        let backends = array(rule.get("backendRefs"))
            .map(|b| {
                let ns = text(Some(b), "namespace");
                let ns = if ns.is_empty() {
                    namespace.as_str()
                } else {
                    ns
                };
                let key = format!("{}.{ns}", text(Some(b), "name"));
                (key, b.get("weight").and_then(Value::as_u64).unwrap_or(1))
            })
            .collect();
        let matches = array(rule.get("matches"))
            .map(|m| {
                let mut out = Match::default();
                for header in array(m.get("headers")) {
                    let name = text(Some(header), "name").to_ascii_lowercase();
                    let exact = header
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("Exact")
                        == "Exact";
                    match (exact, header.get("value").and_then(Value::as_str)) {
                        (true, Some(value)) => out.exact.push((name, value.to_owned())),
                        _ => out.inexact.push(name),
                    }
                }
                let path_root = m.get("path").is_none_or(|p| {
                    p.get("value").and_then(Value::as_str).unwrap_or("/") == "/"
                        && p.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("PathPrefix")
                            == "PathPrefix"
                });
                out.other = !path_root
                    || array(m.get("queryParams")).next().is_some()
                    || m.get("method").is_some();
                out
            })
            .collect();
        set.routes.push(Route {
            label: format!("rule {index}"),
            rule: index,
            matches,
            backends,
            removes,
        });
    }
}

/// Whether `set` routes `service`: a host in common (Kubernetes names compared by name and
/// namespace), or, for a route with no host of its own, its name.
fn routes_service(set: &RouteSet, plan: &Plan, index: usize, service: &Service) -> bool {
    if set.hosts.is_empty() {
        return set.name == service.name;
    }
    // A route's short host is its own namespace's; a config's may be any.
    let same = |a: &str, b: &str| {
        let bare = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
        if bare(a) == bare(b) && (a.contains('.') || set.namespace.is_empty()) {
            return true;
        }
        let route_name = kube_name(a).map(|(name, ns)| {
            let own = (!set.namespace.is_empty()).then(|| set.namespace.clone());
            (name, ns.or(own))
        });
        match (route_name, kube_name(b)) {
            (Some((x, xs)), Some((y, ys))) => x == y && (xs.is_none() || ys.is_none() || xs == ys),
            _ => false,
        }
    };
    // A config's short name is of the namespace its other names give, when they give one.
    let all = plan.hosts_of(index);
    let hosts: Vec<&String> = all
        .iter()
        .filter(|k| match kube_name(k) {
            Some((name, None)) => !all
                .iter()
                .any(|o| kube_name(o).is_some_and(|(n, ns)| n == name && ns.is_some())),
            _ => true,
        })
        .collect();
    set.hosts.iter().any(|h| hosts.iter().any(|k| same(h, k)))
}

/// The backend the config's cluster for an upstream names, where its shape tells: the key a
/// route's backend has (`FQDN subset S`, `NAME.NS`) or an HTTPRoute rule index.
enum Expected {
    Backend(String),
    Rule(String, usize),
}

fn expected(cluster: &str) -> Option<Expected> {
    let parts: Vec<&str> = cluster.split('|').collect();
    match parts.as_slice() {
        ["outbound", _, subset, fqdn] if !subset.is_empty() => Some(Expected::Backend(format!(
            "{} subset {subset}",
            canonical(fqdn, "")
        ))),
        ["outbound", _, "", fqdn] | ["inbound-vip", _, _, fqdn] => {
            Some(Expected::Backend(canonical(fqdn, "")))
        }
        _ => {
            let rest = cluster.strip_prefix("httproute/")?;
            let fields: Vec<&str> = rest.split('/').collect();
            match fields.as_slice() {
                [_, name, "rule", index] => {
                    Some(Expected::Rule((*name).to_owned(), index.parse().ok()?))
                }
                _ => None,
            }
        }
    }
}

/// The lines for the route sets of one file (`documents` of file `file`) that route a service
/// of a config in `configs`: an ok line for each, and its warnings.
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
    let ordered = set.kind == "VirtualService";
    let mut out = Vec::new();
    let first_catch_all = set.routes.iter().position(Route::catch_all);
    let removes = |route: &Route| route.removes.iter().any(|h| h.eq_ignore_ascii_case(header));
    // upstream -> (route, backend key)
    let mut chosen: Vec<(&str, u64, String)> = Vec::new();
    for upstream in &service.upstreams {
        let name = upstream.name.as_str();
        // The routes that match this name exactly.
        let candidates: Vec<(usize, &Route, &Match)> = set
            .routes
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.matches.iter().map(move |m| (i, r, m)))
            .filter(|(_, _, m)| m.exact.iter().any(|(h, v)| h == header && v == name))
            .collect();
        let plain = candidates
            .iter()
            .find(|(_, _, m)| m.exact.len() == 1 && m.inexact.is_empty() && !m.other);
        let Some(&(i, route, _)) = plain else {
            out.push(Line::Warning(match candidates.first() {
                Some((_, route, _)) => format!(
                    "{at}: {} matches {header}: {name} together with other conditions: the \
                     requests {whose} sends to upstream {name:?} without them take another route",
                    route.label
                ),
                None => format!(
                    "{at}: no route matches {header}: {name}: the requests {whose} sends to \
                     upstream {name:?} take another route"
                ),
            }));
            continue;
        };
        if let Some(c) = first_catch_all.filter(|&c| ordered && c < i) {
            let hider = set.routes.get(c).map_or("", |r| r.label.as_str());
            out.push(Line::Warning(format!(
                "{at}: {} for {header}: {name} comes after the catch-all {hider}, which takes \
                 every request first",
                route.label
            )));
        }
        if !removes(route) {
            out.push(Line::Warning(format!(
                "{at}: {} for {header}: {name} does not remove {header}: the upstream sees it",
                route.label
            )));
        }
        let backend = match route.backends.as_slice() {
            [(key, _)] => key.clone(),
            _ => {
                out.push(Line::Warning(format!(
                    "{at}: {} for {header}: {name} does not send to one backend",
                    route.label
                )));
                continue;
            }
        };
        let mismatch = match expected(&upstream.cluster) {
            Some(Expected::Backend(key)) => (key != backend).then_some(key),
            Some(Expected::Rule(route_name, rule)) => (route_name != set.name
                || rule != route.rule)
                .then(|| format!("rule {rule} of HTTPRoute {route_name}")),
            None => None,
        };
        if let Some(expected) = mismatch {
            out.push(Line::Warning(format!(
                "{at}: {} sends {header}: {name} to {backend}, but the config's cluster for \
                 upstream {name:?} ({}) is {expected}",
                route.label, upstream.cluster
            )));
        }
        chosen.push((name, u64::from(upstream.weight), backend));
    }
    // Routes on the header for names that are no upstream, or not exactly.
    for route in &set.routes {
        for m in &route.matches {
            for (h, v) in &m.exact {
                if h == header && !service.upstreams.iter().any(|u| &u.name == v) {
                    out.push(Line::Warning(format!(
                        "{at}: {} matches {header}: {v}, which names no upstream of {whose}",
                        route.label
                    )));
                }
            }
            if m.inexact.iter().any(|h| h == header) {
                out.push(Line::Warning(format!(
                    "{at}: {} matches {header} by prefix, regex or presence: it may catch \
                     several upstreams' requests; match each name exactly",
                    route.label
                )));
            }
        }
    }
    let Some(default) = first_catch_all.and_then(|c| set.routes.get(c)) else {
        out.push(Line::Warning(format!(
            "{at}: no default route: requests without {header} (a proxy without the filter, a \
             module that failed open) match no route of {whose}"
        )));
        return out;
    };
    if !removes(default) {
        out.push(Line::Warning(format!(
            "{at}: the default route does not remove {header}: a client's own value reaches the \
             upstream"
        )));
    }
    if !chosen.is_empty() {
        let in_default = |backend: &str| -> u64 {
            default
                .backends
                .iter()
                .filter(|(b, _)| b == backend)
                .map(|(_, w)| *w)
                .sum()
        };
        let route_weights: Vec<u64> = chosen.iter().map(|(_, _, b)| in_default(b)).collect();
        let config_weights: Vec<u64> = chosen.iter().map(|(_, w, _)| *w).collect();
        let route_total: u64 = route_weights.iter().sum();
        let config_total: u64 = config_weights.iter().sum();
        let others: u64 = default
            .backends
            .iter()
            .filter(|(b, _)| !chosen.iter().any(|(_, _, x)| x == b))
            .map(|(_, w)| *w)
            .sum();
        let proportional = route_weights.iter().zip(&config_weights).all(|(r, c)| {
            u128::from(*r) * u128::from(config_total) == u128::from(*c) * u128::from(route_total)
        });
        if others > 0 || !proportional || route_total == 0 {
            let show = |weights: &[u64]| {
                chosen
                    .iter()
                    .zip(weights)
                    .map(|((name, _, _), w)| format!("{name} {w}"))
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
