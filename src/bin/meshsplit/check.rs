//! `meshsplit check FILE...`: validates every plugin config found in the files with the
//! filter's own code and prints one line per config.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use meshsplit::guard::{Guard, Latency};
use meshsplit::plan::{HashOn, Plan, Service, Strategy};

use crate::ecds;
use crate::extract::{extract, Clusters, Found};
use crate::output::say_err;
use crate::report::Line;
use crate::route_patches;
use crate::source::{decode, json_hint, parse_file, Document};
use crate::split_routes;
use crate::Status;

/// Services named in a summary line; more are counted.
const LISTED_SERVICES: usize = 5;

/// Validate meshsplit plugin configs, alone or embedded in Envoy and Istio files.
///
/// Each FILE may be a plugin config (JSON or YAML), an ECDS resource file, an Envoy bootstrap,
/// or Istio manifests (EnvoyFilter, WasmPlugin, TrafficExtension), in JSON or YAML with any
/// number of documents. Every wasm HTTP filter whose configuration is a StringValue is checked
/// as a meshsplit config, and so is every WasmPlugin's and wasm TrafficExtension's pluginConfig.
///
/// Prints `FILE[: where]: ok: SUMMARY` for a valid config and
/// `FILE[: where]: invalid configuration: PATH: MESSAGE`, the filter's own error, for an
/// invalid one. In an Envoy bootstrap, an upstream cluster missing from
/// static_resources.clusters draws a warning. In an Istio manifest, an upstream cluster not
/// named `outbound|PORT|SUBSET|FQDN` (a sidecar's subset cluster) makes the config invalid.
/// An EnvoyFilter patch that makes routes read a cluster_header gets an ok line, and a warning
/// where it depends on a route name or a portNumber, or sends requests without the header to
/// the header's cluster.
///
/// A file named .yaml or .yml is read as YAML, even in flow style ({a: 1}); any other file
/// that starts with { or [ is read as JSON. A JSON syntax error gets a hint for the common
/// mistakes: comments, single quotes, keys without quotes, a comma after the last item.
///
/// Positions are the file's. For a config written in YAML (a YAML file, a WasmPlugin's
/// pluginConfig), an error is placed at the line and column of the field it names; for one
/// embedded as a string, at its line and column inside the string, then the file's line.
///
/// Exit status: 0 all valid; 1 a config is invalid (or a warning, with --strict); 2 usage or
/// input error: unreadable file, not valid JSON or YAML (any syntax error, in the file or in a
/// config embedded in it as a string), no meshsplit config in it.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Files to check; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Exit 1 when there are warnings, as for an invalid config.
    #[arg(long)]
    strict: bool,
    /// Skip files that hold no meshsplit config instead of failing with exit status 2 (still 2
    /// when no file holds one), e.g. to check a whole directory of manifests.
    #[arg(long)]
    skip_unrelated: bool,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Valid(text) | Line::Invalid(text) | Line::Syntax(text) => f.write_str(text),
            Line::Warning(text) => write!(f, "warning: {text}"),
            Line::Note(text) => write!(f, "note: {text}"),
        }
    }
}

/// Why a file could not be checked (exit status 2).
#[derive(Debug, PartialEq, Eq)]
enum FileError {
    Unusable(String),
    NoConfig,
}

pub fn run(args: &Args) -> Status {
    let mut status = Status::Ok;
    let mut found_any = false;
    // Every file first: the routes of one file are checked against the configs of all.
    let mut files = Vec::new();
    let mut configs = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        let result = read(path)
            .map_err(FileError::Unusable)
            .and_then(|t| check_text(&name, &t));
        if let Ok(checked) = &result {
            for config in upstream_header_configs(&name, &checked.documents) {
                if !configs
                    .iter()
                    .any(|c: &split_routes::Config| c.text == config.text)
                {
                    configs.push(config);
                }
            }
        }
        files.push((name, result));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for (name, result) in files {
        // A file with configs of its own is a bundle: its routes are for those.
        let result = result.and_then(|checked| {
            let own = upstream_header_configs(&name, &checked.documents);
            let configs = if own.is_empty() { &configs } else { &own };
            finish(&name, checked, configs)
        });
        // Write errors (a closed pipe) cannot be reported anywhere better; the status stands.
        match result {
            Ok(lines) => {
                found_any = true;
                for line in lines {
                    status = status.max(line.status(args.strict));
                    let _ = writeln!(out, "{line}");
                }
            }
            Err(FileError::NoConfig) if args.skip_unrelated => {
                let _ = writeln!(out, "{name}: skipped: no meshsplit config found");
            }
            Err(FileError::NoConfig) => {
                status = Status::Error;
                let _ = out.flush();
                say_err!("error: {name}: no meshsplit config found (a plugin config has a \"services\" list; embedded ones are the StringValue configuration of a wasm HTTP filter or of meshsplit's dynamic module (filter or cluster specifier), or a WasmPlugin's or TrafficExtension's pluginConfig, or an EnvoyExtensionPolicy's wasm or dynamicModule config; a VirtualService or HTTPRoute counts when it routes the upstream header of a config checked with it)");
            }
            Err(FileError::Unusable(message)) => {
                status = Status::Error;
                let _ = out.flush();
                say_err!("error: {name}: {message}");
            }
        }
    }
    if !found_any && status == Status::Ok {
        // Every file was skipped.
        say_err!("error: no meshsplit config found in any file");
        status = Status::Error;
    }
    status
}

/// A file's lines with those of its routes checked against `configs`; no line at all: the file
/// holds nothing meshsplit reads.
fn finish(
    name: &str,
    checked: Checked,
    configs: &[split_routes::Config],
) -> Result<Vec<Line>, FileError> {
    let mut lines = checked.lines;
    lines.extend(split_routes::lines(name, &checked.documents, configs));
    if lines.is_empty() {
        Err(FileError::NoConfig)
    } else {
        Ok(lines)
    }
}

/// One file checked on its own, as `run` checks it.
#[cfg(test)]
fn check_file(name: &str, text: &str) -> Result<Vec<Line>, FileError> {
    let checked = check_text(name, text)?;
    let configs = upstream_header_configs(name, &checked.documents);
    finish(name, checked, &configs)
}

/// The valid configs of a file that write an upstream header, for `split_routes`.
fn upstream_header_configs(name: &str, documents: &[Document]) -> Vec<split_routes::Config> {
    extract(documents)
        .iter()
        .filter_map(|found| {
            let plan = found.plan().ok()?;
            plan.headers.upstream.as_ref()?;
            let at = if found.place.is_empty() {
                name.to_owned()
            } else {
                format!("{name}: {}", found.place)
            };
            Some(split_routes::Config {
                at,
                plan,
                text: found.config.clone(),
            })
        })
        .collect()
}

pub(crate) fn read(path: &PathBuf) -> Result<String, String> {
    let mut bytes = Vec::new();
    let result = if path.as_os_str() == "-" {
        io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(path).map(|b| bytes = b)
    };
    result.map_err(|e| format!("cannot read: {e}"))?;
    decode(bytes)
}

/// One file's report (empty when it holds nothing meshsplit reads), and its documents.
struct Checked {
    lines: Vec<Line>,
    documents: Vec<Document>,
}

/// The report for one file's text.
fn check_text(name: &str, text: &str) -> Result<Checked, FileError> {
    let documents = parse_file(name, text).map_err(FileError::Unusable)?;
    let found = extract(&documents);
    let routes = route_patches::lines(name, &documents);
    let mut lines = ecds_lines(name, &documents);
    lines.extend(found.iter().flat_map(|f| check_one(name, f)));
    lines.extend(routes);
    Ok(Checked { lines, documents })
}

/// An invalid line for every reason Envoy would reject an ECDS file (a discovery response
/// document): its configs may be valid, but the file never gets to the filter.
fn ecds_lines(name: &str, documents: &[crate::source::Document]) -> Vec<Line> {
    let many = documents.len() > 1;
    let mut lines = Vec::new();
    for (i, document) in documents.iter().enumerate() {
        if !ecds::is_response(&document.value) {
            continue;
        }
        let at = if many {
            format!("{name}: document {}", i + 1)
        } else {
            name.to_owned()
        };
        for reason in ecds::refusals(&document.value) {
            lines.push(Line::Invalid(format!(
                "{at}: ECDS file Envoy would reject: {reason}"
            )));
        }
    }
    lines
}

pub(crate) fn check_one(name: &str, found: &Found) -> Vec<Line> {
    let at = if found.place.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {}", found.place)
    };
    if let Some(why) = &found.broken {
        return vec![Line::Invalid(format!(
            "{at}: broken meshsplit config, cannot be read: {why}"
        ))];
    }
    if let Some(line) = syntax_line(&at, found) {
        return vec![line];
    }
    match found.plan() {
        // The same words the filter logs: "invalid configuration: {err}", with positions in the
        // file's terms.
        Err(err) => vec![Line::Invalid(format!(
            "{at}: invalid configuration: {}",
            found.origin.describe(&err)
        ))],
        Ok(plan) => {
            // With only an upstream header the routes match the upstream's name, and the
            // cluster names no route (split_routes checks those routes).
            if found.istio && plan.headers.cluster.is_some() {
                let wrong = istio_cluster_lines(&at, &plan);
                if !wrong.is_empty() {
                    return wrong;
                }
            }
            let mut lines = vec![Line::Valid(format!("{at}: ok: {}", summary(&plan)))];
            if let Some(clusters) = &found.clusters {
                lines.extend(cluster_lines(&at, &plan, clusters));
            }
            lines
        }
    }
}

/// The line for a config that is not valid JSON (text embedded in a string; a file's own text
/// was parsed already): the same input error as a file that is not, with where it is and a hint.
fn syntax_line(at: &str, found: &Found) -> Option<Line> {
    let error = serde_json::from_str::<serde_json::Value>(&found.config).err()?;
    if !(error.is_syntax() || error.is_eof()) || found.config.trim().is_empty() {
        return None;
    }
    let message = error.to_string();
    let (words, mark) = crate::position::split_position(&message)?;
    let mut line = format!(
        "{at}: not valid JSON: {words} at {}",
        found.origin.place(mark)
    );
    if let Some(hint) = json_hint(&found.config, &error) {
        line.push_str(&format!("; {}", hint.words));
    }
    Some(Line::Syntax(line))
}

/// An invalid line for every upstream cluster of a config in an Istio manifest that is not a
/// sidecar's subset cluster, `outbound|PORT|SUBSET|FQDN`: a sidecar has no other clusters for a
/// service's subsets, and answers 503 (NC) for any other name. A short host (`reviews`) is not
/// an FQDN: Istio names the cluster by the full name (`reviews.NAMESPACE.svc.cluster.local`).
fn istio_cluster_lines(at: &str, plan: &Plan) -> Vec<Line> {
    let mut lines = Vec::new();
    for (s, service) in plan.services.iter().enumerate() {
        for (u, upstream) in service.upstreams.iter().enumerate() {
            if let Err(why) = istio_subset_cluster(&upstream.cluster) {
                lines.push(Line::Invalid(format!(
                    "{at}: services[{s}].upstreams[{u}].cluster: \"{}\" is not a sidecar's \
                     subset cluster outbound|PORT|SUBSET|FQDN: {why} (a sidecar answers 503 NC)",
                    upstream.cluster
                )));
            }
        }
    }
    lines
}

/// Why `cluster` is not `outbound|PORT|SUBSET|FQDN`.
pub(crate) fn istio_subset_cluster(cluster: &str) -> Result<(), String> {
    let parts: Vec<&str> = cluster.split('|').collect();
    let [direction, port, subset, fqdn] = parts.as_slice() else {
        return Err(format!("{} parts, not 4", parts.len()));
    };
    if *direction != "outbound" {
        return Err(format!("\"{direction}\" is not outbound"));
    }
    if !port.parse::<u16>().is_ok_and(|p| p > 0) || port.starts_with('0') {
        return Err(format!("\"{port}\" is not a port"));
    }
    if subset.is_empty() {
        return Err("no subset".to_owned());
    }
    let labels: Vec<&str> = fqdn.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!(
            "\"{fqdn}\" is not a fully qualified name (Istio names subset clusters by the \
             FQDN, NAME.NAMESPACE.svc.cluster.local for a short host NAME)"
        ));
    }
    Ok(())
}

/// A warning for every upstream cluster the bootstrap does not define; only notes when the
/// bootstrap also takes clusters from CDS, which a file cannot show.
fn cluster_lines(at: &str, plan: &Plan, clusters: &Clusters) -> Vec<Line> {
    let mut lines = Vec::new();
    for (s, service) in plan.services.iter().enumerate() {
        for (u, upstream) in service.upstreams.iter().enumerate() {
            let cluster = &upstream.cluster;
            if clusters.names.contains(cluster) {
                continue;
            }
            let field = format!("{at}: services[{s}].upstreams[{u}].cluster");
            lines.push(if clusters.cds {
                Line::Note(format!(
                    "{field}: cluster \"{cluster}\" is not in this bootstrap's \
                     static_resources.clusters; it may come from CDS \
                     (dynamic_resources.cds_config), which this check cannot see"
                ))
            } else {
                Line::Warning(format!(
                    "{field}: cluster \"{cluster}\" is not defined in this bootstrap's \
                     static_resources.clusters (requests routed there get 503 NC)"
                ))
            });
        }
    }
    lines
}

/// `2 services (reviews: weighted, 3 upstreams, 1 rule; ratings: round_robin, 2 upstreams)`.
fn summary(plan: &Plan) -> String {
    let services = &plan.services;
    let mut listed: Vec<String> = services
        .iter()
        .take(LISTED_SERVICES)
        .map(describe)
        .collect();
    if services.len() > LISTED_SERVICES {
        listed.push(format!("{} more", services.len() - LISTED_SERVICES));
    }
    format!(
        "{} ({})",
        count(services.len(), "service"),
        listed.join("; ")
    )
}

fn describe(service: &Service) -> String {
    let strategy = match &service.strategy {
        Strategy::Weighted => "weighted".to_owned(),
        Strategy::RoundRobin(_) => "round_robin".to_owned(),
        Strategy::LeastRequest(_) => "least_request".to_owned(),
        Strategy::Sticky { hash_on, .. } => match hash_on {
            HashOn::Header(name) => format!("sticky on header {name}"),
            HashOn::Cookie(name) => format!("sticky on cookie {name}"),
            HashOn::Query(name) => format!("sticky on query {name}"),
        },
    };
    let mut parts = vec![strategy, count(service.upstreams.len(), "upstream")];
    if let Some(assign) = &service.assign_cookie {
        // `cookie assigned (Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax)`.
        parts.push(format!(
            "cookie assigned ({})",
            assign.attributes.trim_start_matches("; ")
        ));
    }
    let drained = service.upstreams.iter().filter(|u| u.weight == 0).count();
    if drained > 0 {
        parts.push(format!("{drained} drained"));
    }
    if !service.rules.is_empty() {
        parts.push(count(service.rules.len(), "rule"));
    }
    if let Some(guard) = &service.guard {
        let mut limits: Vec<String> = guard.error_rate.map(rate_percent).into_iter().collect();
        limits.extend(guard.latency.as_ref().map(latency_text));
        parts.push(format!(
            "guard {} over {} s",
            limits.join(", "),
            guard.window_s
        ));
    }
    if let Some(rollout) = &service.rollout {
        parts.push(format!("rollout {}", count(rollout.steps.len(), "step")));
    }
    format!("{}: {}", service.name, parts.join(", "))
}

/// An error rate as a percentage with no more digits than it needs: `50 %`, `2.5 %`.
pub(crate) fn rate_percent(rate: f64) -> String {
    let text = format!("{:.3}", rate * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} %")
}

/// A latency guard's condition in words: `p95 above 250 ms`.
pub(crate) fn latency_text(latency: &Latency) -> String {
    format!(
        "p{} above {} ms",
        meshsplit::tick::percentile_text(latency.percentile_milli),
        latency.threshold_ms
    )
}

/// A guard's settings in words, for `preview`.
pub(crate) fn guard_text(guard: &Guard) -> String {
    let mut conditions: Vec<String> = guard
        .error_rate
        .map(|rate| format!("above {} errors", rate_percent(rate)))
        .into_iter()
        .collect();
    conditions.extend(
        guard
            .latency
            .as_ref()
            .map(|l| format!("with {}", latency_text(l))),
    );
    let mut text = format!(
        "ejects an upstream {} over {} s (at least {} requests) for {} s, \
         doubling on repeat; at most {} % of the weight",
        conditions.join(" or "),
        guard.window_s,
        guard.min_requests,
        guard.eject_s,
        guard.max_ejected_percent
    );
    if guard.failure_codes != Guard::DEFAULT_FAILURE_CODES {
        let codes: Vec<String> = guard.failure_codes.iter().map(u16::to_string).collect();
        text.push_str(&format!(
            "; failures: statuses [{}] and upstream failures",
            codes.join(", ")
        ));
    }
    if let Some(margin) = guard.relative_margin {
        text.push_str(&format!(
            "; relative: only above the other upstreams' rate + {}",
            rate_percent(margin)
        ));
    }
    text
}

pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn istio_manifests_need_sidecar_subset_clusters() {
        let plugin = |cluster: &str| {
            format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                 metadata: {{name: m, namespace: default}}\nspec:\n  pluginConfig:\n    \
                 services:\n    - name: reviews\n      upstreams:\n      \
                 - {{name: v1, cluster: '{cluster}', weight: 1}}\n"
            )
        };
        let ok = report(&plugin(
            "outbound|9080|v1|reviews.default.svc.cluster.local",
        ));
        assert_eq!(ok.len(), 1);
        assert!(ok[0].starts_with("f: WasmPlugin default/m: ok: "), "{ok:?}");
        // A short host: Istio's cluster is named by the FQDN.
        let short = report(&plugin("outbound|9080|v1|reviews"));
        assert_eq!(
            short,
            [
                "f: WasmPlugin default/m: services[0].upstreams[0].cluster: \
              \"outbound|9080|v1|reviews\" is not a sidecar's subset cluster \
              outbound|PORT|SUBSET|FQDN: \"reviews\" is not a fully qualified name (Istio \
              names subset clusters by the FQDN, NAME.NAMESPACE.svc.cluster.local for a short \
              host NAME) (a sidecar answers 503 NC)"
            ]
        );
        for bad in [
            "reviews_v1",
            "outbound|9080||reviews.default.svc.cluster.local",
            "inbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|0|v1|reviews.default.svc.cluster.local",
            "outbound|http|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews..svc",
        ] {
            assert!(istio_subset_cluster(bad).is_err(), "{bad}");
        }
        // The same config outside Istio is fine.
        let bare = report(
            r#"{"services": [{"name": "reviews", "upstreams": [{"name": "v1", "cluster": "reviews_v1", "weight": 1}]}]}"#,
        );
        assert!(bare[0].starts_with("f: ok: "), "{bare:?}");
    }

    fn report(text: &str) -> Vec<String> {
        report_of("f", text)
    }

    fn report_of(name: &str, text: &str) -> Vec<String> {
        check_file(name, text)
            .unwrap()
            .iter()
            .map(Line::to_string)
            .collect()
    }

    fn bootstrap(plugin: &Value, clusters: &[&str], cds: bool) -> String {
        let mut b = json!({"static_resources": {
            "listeners": [{"filter_chains": [{"filters": [{"typed_config": {"http_filters": [{
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {"name": "meshsplit", "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin.to_string()}}}}]}}]}]}],
            "clusters": clusters.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
        }});
        if cds {
            b["dynamic_resources"] = json!({"cds_config": {"ads": {}}});
        }
        b.to_string()
    }

    fn two_upstreams() -> Value {
        json!({"services": [{"name": "reviews", "upstreams": [
            {"name": "v1", "cluster": "reviews_v1", "weight": 1},
            {"name": "v2", "cluster": "reviews_v9", "weight": 1}]}]})
    }

    #[test]
    fn an_assigned_cookie_is_summarized_with_its_attributes() {
        let config = json!({"services": [
            {"name": "web", "strategy": "sticky", "hash_on": {"cookie": "mesh-web"},
             "assign_cookie": {"max_age_s": 600, "secure": true, "same_site": "None"},
             "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
        ]});
        assert_eq!(
            report(&config.to_string()),
            [
                "f: ok: 1 service (web: sticky on cookie mesh-web, 1 upstream, cookie assigned \
                 (Max-Age=600; Path=/; Secure; HttpOnly; SameSite=None))"
            ]
        );
    }

    #[test]
    fn assign_cookie_without_a_cookie_to_hash_is_rejected_as_by_the_filter() {
        let text = assert_rejected_as_by_the_filter(
            r#"{"services": [{"name": "web", "strategy": "sticky", "hash_on": {"header": "x-user"},
                "assign_cookie": {}, "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
        );
        assert!(
            text.contains("services[0].assign_cookie: only allowed with strategy"),
            "{text}"
        );
    }

    #[test]
    fn valid_config_gets_a_summary_of_its_services() {
        let config = json!({"services": [
            {"name": "reviews", "upstreams": [
                {"name": "v1", "cluster": "a", "weight": 9}, {"name": "v2", "cluster": "b", "weight": 0}],
             "rules": [{"match": {"headers": [{"name": "x", "present": true}]}, "upstream": "v2"}]},
            {"name": "ratings", "strategy": "sticky", "hash_on": {"cookie": "user"},
             "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
        ]});
        assert_eq!(
            report(&config.to_string()),
            [
                "f: ok: 2 services (reviews: weighted, 2 upstreams, 1 drained, 1 rule; \
             ratings: sticky on cookie user, 1 upstream)"
            ]
        );
    }

    #[test]
    fn guards_and_rollouts_are_summarized() {
        let config = json!({"services": [{"name": "reviews",
            "upstreams": [{"name": "v1", "cluster": "a", "weight": 1},
                          {"name": "v2", "cluster": "b", "weight": 0}],
            "guard": {"error_rate": 0.5},
            "rollout": {"start": "2026-12-01T10:00:00Z", "steps": [
                {"at_s": 0, "weights": {"v1": 99, "v2": 1}},
                {"at_s": 600, "weights": {"v1": 75, "v2": 25}},
                {"at_s": 1800, "weights": {"v2": 100}}]}}]});
        assert_eq!(
            report(&config.to_string()),
            ["f: ok: 1 service (reviews: weighted, 2 upstreams, 1 drained, guard 50 % over 10 s, \
              rollout 3 steps)"]
        );
        let plan = Plan::from_json(
            json!({"services": [{"name": "s", "upstreams": [{"name": "v1", "cluster": "a", "weight": 1}],
                "guard": {"error_rate": 0.5, "failure_codes": [503, 500, 503], "relative_margin": 0.1}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let text = guard_text(plan.services[0].guard.as_ref().unwrap());
        assert!(
            text.ends_with(
                "; failures: statuses [500, 503] and upstream failures; relative: only above \
                 the other upstreams' rate + 10 %"
            ),
            "{text}"
        );
        for (guard, path) in [
            (
                json!({"error_rate": 0.5, "failure_codes": [200]}),
                "guard.failure_codes",
            ),
            (
                json!({"error_rate": 0.5, "relative_margin": 1.0}),
                "guard.relative_margin",
            ),
        ] {
            let config = json!({"services": [{"name": "s", "guard": guard,
                "upstreams": [{"name": "v1", "cluster": "a", "weight": 1}]}]});
            let line = &report(&config.to_string())[0];
            assert!(line.contains(&format!("services[0].{path}: ")), "{line}");
        }
        assert_eq!(rate_percent(0.025), "2.5 %");
        assert_eq!(rate_percent(0.0001), "0.01 %");
        assert_eq!(rate_percent(1.0), "100 %");
    }

    #[test]
    fn latency_guards_are_summarized_and_validated() {
        let service = |guard: serde_json::Value| {
            json!({"services": [{"name": "web", "guard": guard,
                "upstreams": [{"name": "v1", "cluster": "a", "weight": 1}]}]})
            .to_string()
        };
        assert_eq!(
            report(&service(json!({"error_rate": 0.05, "window_s": 20,
                "latency": {"percentile": 95, "threshold_ms": 250}}))),
            ["f: ok: 1 service (web: weighted, 1 upstream, guard 5 %, p95 above 250 ms over 20 s)"]
        );
        assert_eq!(
            report(&service(
                json!({"latency": {"percentile": 99.9, "threshold_ms": 800}})
            )),
            ["f: ok: 1 service (web: weighted, 1 upstream, guard p99.9 above 800 ms over 10 s)"]
        );
        let plan = Plan::from_json(
            service(
                json!({"error_rate": 0.05, "latency": {"percentile": 95, "threshold_ms": 250}}),
            )
            .as_bytes(),
        )
        .unwrap();
        let text = guard_text(plan.services[0].guard.as_ref().unwrap());
        assert!(
            text.starts_with(
                "ejects an upstream above 5 % errors or with p95 above 250 ms over 10 s"
            ),
            "{text}"
        );
        for (guard, path) in [
            (json!({}), r#"guard: needs "error_rate", "latency" or both"#),
            (
                json!({"latency": {"percentile": 0, "threshold_ms": 250}}),
                "guard.latency.percentile: ",
            ),
            (
                json!({"latency": {"percentile": 95}}),
                r#"guard.latency: missing field "threshold_ms""#,
            ),
        ] {
            let line = &report(&service(guard))[0];
            assert!(line.contains(&format!("services[0].{path}")), "{line}");
        }
    }

    #[test]
    fn long_service_lists_are_counted() {
        let services: Vec<_> = (0..7)
            .map(|i| {
                json!({"name": format!("s{i}"), "strategy": "round_robin",
                            "upstreams": [{"name": "u", "cluster": "c", "weight": 1}]})
            })
            .collect();
        let line = &report(&json!({"services": services}).to_string())[0];
        assert!(
            line.starts_with("f: ok: 7 services (s0: round_robin, 1 upstream; "),
            "{line}"
        );
        assert!(
            line.ends_with("s4: round_robin, 1 upstream; 2 more)"),
            "{line}"
        );
    }

    /// `config` is reported with the error the filter gives for it.
    fn assert_rejected_as_by_the_filter(config: &str) -> String {
        let expected = Plan::from_json(config.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            report(config),
            [format!("f: invalid configuration: {expected}")]
        );
        expected
    }

    #[test]
    fn invalid_config_prints_the_filters_error() {
        let config = r#"{"services": [{"name": "a", "upstreams": [{"name": "v1", "cluster": "c", "weight": 5000000}]}]}"#;
        assert_rejected_as_by_the_filter(config);
        assert_eq!(
            report(config),
            ["f: invalid configuration: services[0].upstreams[0].weight: must be at most 1000000, got 5000000"]
        );
    }

    #[test]
    fn syntax_errors_keep_the_filters_positions() {
        // The file's own text is compiled, so line and column match what Envoy would log.
        let config = "{\"services\": [\n  {\"name\": \"a\", \"wieght\": 1}]}";
        let expected = assert_rejected_as_by_the_filter(config);
        assert!(expected.contains("line 2"), "{expected}");
    }

    #[test]
    fn a_json_file_with_a_syntax_error_is_an_input_error_with_a_hint() {
        // Whatever the mistake, as for any file that is not JSON: exit 2.
        for (text, hint) in [
            (
                r#"{"services": [{"name": "a", "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}],}"#,
                "no comma after the last item",
            ),
            (
                "{\n  # split\n  \"services\": []\n}",
                "JSON has no comments",
            ),
            ("{'services': []}", "not single quotes"),
            ("{services: []}", "JSON keys need double quotes"),
            ("{\"services\": [] \"x\": 1}", "a comma is missing"),
        ] {
            let Err(FileError::Unusable(message)) = check_file("f.json", text) else {
                panic!("{text:?} is not a file error");
            };
            assert!(message.starts_with("not valid JSON: "), "{message}");
            assert!(message.contains(hint), "{message}");
        }
    }

    #[test]
    fn a_yaml_file_in_flow_style_is_read_as_yaml() {
        let text = "{services: [{name: a, upstreams: [{name: v1, cluster: c, weight: 1}]}]}\n";
        assert_eq!(
            check_file("f.yaml", text).unwrap()[0].to_string(),
            "f.yaml: ok: 1 service (a: weighted, 1 upstream)"
        );
    }

    const YAML_CONFIG: &str = "\
# reviews: 90/10
services:
- name: reviews
  upstreams:
  - name: v1
    cluster: reviews_v1
    weight: 90
  - name: v2
    cluster: reviews_v2
    wieght: 10
";

    #[test]
    fn errors_in_yaml_give_the_files_line() {
        assert_eq!(
            report_of("f.yaml", YAML_CONFIG),
            [
                "f.yaml: invalid configuration: services[0].upstreams[1].wieght: unknown field \
              \"wieght\", expected one of \"name\", \"cluster\", \"authority\", \"weight\" at line \
              10 column 5"
            ]
        );
        // The same config as a WasmPlugin's pluginConfig, after two other documents.
        let plugin = YAML_CONFIG
            .lines()
            .skip(1)
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
            .replace("cluster: reviews_v", "cluster: outbound|9080|v")
            .replace("v1\n", "v1|reviews.default.svc.cluster.local\n");
        let manifests = format!(
            "kind: Service\n---\n---\napiVersion: extensions.istio.io/v1alpha1\n\
             kind: WasmPlugin\nmetadata: {{name: m, namespace: default}}\nspec:\n  \
             pluginConfig:\n{plugin}"
        );
        let lines = report_of("f.yaml", &manifests);
        assert!(
            lines[0].ends_with("\"weight\" at line 17 column 9"),
            "{lines:?}\n{manifests}"
        );
        assert_eq!(manifests.lines().nth(16), Some("        wieght: 10"));
    }

    #[test]
    fn errors_in_an_embedded_string_give_its_line_and_the_files() {
        let bootstrap = |value: &str| {
            format!(
                "static_resources:\n  listeners:\n  - filter_chains:\n    - filters:\n      \
                 - typed_config:\n          http_filters:\n          - name: envoy.filters.http.wasm\n            \
                 typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              \
                 config:\n                configuration:\n                  \
                 \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  \
                 value: {value}\n"
            )
        };
        let block = "|\n                    {\"services\": [\n                      \
                     {\"name\": \"a\", \"upstreams\": [{\"name\": \"v1\", \"cluster\": \"c\", \"wieght\": 1}]}]}";
        let text = bootstrap(block);
        assert!(text.lines().nth(14).unwrap().contains("wieght"), "{text}");
        let lines = report_of("f.yaml", &text);
        assert!(
            lines[0].ends_with(
                "at line 2 column 69 inside the embedded JSON string (line 15 of the file)"
            ),
            "{lines:?}"
        );
        // A syntax error in the string: an input error, as in a file.
        let broken = block.replace("\"v1\",", "\"v1\"");
        let lines = check_file("f.yaml", &bootstrap(&broken)).unwrap();
        assert_eq!(
            lines[0].to_string(),
            "f.yaml: listeners[0]: not valid JSON: expected `,` or `}` at line 2 \
             column 45 inside the embedded JSON string (line 15 of the file); a comma is missing \
             before this item"
        );
        assert_eq!(lines[0].status(false), Status::Error);
        // Read as the filter reads it: a comma after the last item is called what it is.
        let trailing = block.replace("\"wieght\": 1}", "\"weight\": 1,}");
        let lines = report_of("f.yaml", &bootstrap(&trailing));
        assert!(
            lines[0].ends_with(
                "(line 15 of the file); JSON allows no comma after the last item of an object \
                 or a list: remove it"
            ),
            "{lines:?}"
        );
        // One quoted line: the file's line is the string's.
        let quoted = format!(
            "'{}'",
            r#"{"services": [{"name": "a", "upstreams": [], "x": 1}]}"#
        );
        let lines = report_of("f.yaml", &bootstrap(&quoted));
        assert!(
            lines[0].ends_with("inside the embedded JSON string (line 13 of the file)"),
            "{lines:?}"
        );
    }

    #[test]
    fn embedded_configs_are_placed() {
        let lines = report(&bootstrap(
            &two_upstreams(),
            &["reviews_v1", "reviews_v9"],
            false,
        ));
        assert_eq!(
            lines,
            ["f: listeners[0] meshsplit: ok: 1 service (reviews: weighted, 2 upstreams)"]
        );
    }

    #[test]
    fn cluster_missing_from_the_bootstrap_is_a_warning_with_its_path() {
        let lines = check_file("f", &bootstrap(&two_upstreams(), &["reviews_v1"], false)).unwrap();
        assert_eq!(lines[1].to_string(),
            "warning: f: listeners[0] meshsplit: services[0].upstreams[1].cluster: cluster \"reviews_v9\" \
             is not defined in this bootstrap's static_resources.clusters (requests routed there get 503 NC)");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].status(false), Status::Ok);
        assert_eq!(lines[1].status(true), Status::Invalid);
    }

    #[test]
    fn with_cds_a_missing_cluster_is_only_a_note() {
        let lines = check_file("f", &bootstrap(&two_upstreams(), &["reviews_v1"], true)).unwrap();
        assert_eq!(lines.len(), 2);
        let note = lines[1].to_string();
        assert!(
            note.starts_with("note: f: listeners[0] meshsplit: services[0].upstreams[1].cluster: "),
            "{note}"
        );
        assert!(note.contains("cannot see"), "{note}");
        assert_eq!(lines[1].status(true), Status::Ok);
    }

    #[test]
    fn invalid_embedded_config_gets_no_cluster_check() {
        let bad = json!({"services": []});
        let lines = report(&bootstrap(&bad, &[], false));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("f: listeners[0] meshsplit: invalid configuration: "),
            "{lines:?}"
        );
    }

    #[test]
    fn files_without_configs_and_unparsable_files_are_file_errors() {
        assert_eq!(check_file("f", "kind: Service\n"), Err(FileError::NoConfig));
        assert!(
            matches!(check_file("f", "{\"a\": [}"), Err(FileError::Unusable(m)) if m.starts_with("not valid JSON"))
        );
    }
}
