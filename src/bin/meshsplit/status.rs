//! `meshsplit status`: what split is in force, what split traffic gets, and whether anything is
//! wrong, read from Envoy's own stats (its admin endpoint, or stats text on standard input).
//!
//! The admin endpoint is spoken to with a minimal HTTP/1.1 client over `std::net` (one `GET`
//! with `Connection: close`, plain or chunked body): the admin interface is plain HTTP, usually
//! on loopback or behind `kubectl port-forward`, and a general HTTP crate would add a
//! dependency tree to the command for this one request.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshsplit::plan::{stat_segment, Plan};
use meshsplit::rollout::Phase;
use serde_json::{json, Value};

use crate::load::Failure;
use crate::output::say;
use crate::Status;

/// Show the split in force and the split traffic gets, from Envoy's stats.
///
/// Per service and upstream: the weight in force (the `weight` gauge) and where it comes from
/// (the configuration, a rollout step, the guard's ejection), the share of requests observed
/// over the last interval (from counter deltas), requests, requests in flight (least_request),
/// ejections; per service the rule hits; per plugin the refused configurations and the
/// unknown-service requests; and the requests Envoy could not route because the cluster the
/// filter chose does not exist (`http.*.no_cluster`).
///
/// Istio: `kubectl port-forward POD 15000` and `--admin http://127.0.0.1:15000`, or
/// `kubectl exec POD -c istio-proxy -- pilot-agent request GET stats | meshsplit status
/// --admin -`.
///
/// A fleet: repeat --admin, one per Envoy. The fleet's split comes first (requests added up;
/// the weight share is each Envoy's, weighted by its requests), then each Envoy's table.
///
/// Examples:
///   meshsplit status
///   meshsplit status --admin http://127.0.0.1:15000 --service reviews --watch
///   meshsplit status --admin http://10.0.0.7:15000 --admin http://10.0.0.8:15000
///
/// Exit status: 0 shown; 2 an admin endpoint cannot be read or has no meshsplit stats.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Envoy's admin endpoint; `-` reads the output of its `/stats` (text, `?format=json` or
    /// `/stats/prometheus`) from standard input instead. Repeat for several Envoys.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9901")]
    admin: Vec<String>,
    /// Refresh every second until Ctrl-C (with --json: one JSON document per line).
    #[arg(long)]
    watch: bool,
    /// Only this service.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Seconds between the two reads that the observed shares are computed from (0: shares of
    /// every request counted since Envoy started).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

// ---- what the stats say ----

/// One upstream's stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamStats {
    /// `requests_total`: decisions for the upstream.
    pub requests: u64,
    /// The cluster specifier's `superseded_total`: of those, the ones a later decision of the same
    /// request replaced. Kept apart, as both counters only grow (a restart shows in either).
    pub superseded: u64,
    pub weight: Option<u64>,
    pub in_flight: Option<i64>,
    pub ejected: Option<u64>,
    pub ejections: Option<u64>,
}

impl UpstreamStats {
    /// Requests sent to the upstream: its decisions less the superseded ones.
    pub fn sent(&self) -> u64 {
        self.requests.saturating_sub(self.superseded)
    }
}

/// One service's stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStats {
    pub upstreams: BTreeMap<String, UpstreamStats>,
    pub rule_hits: BTreeMap<u64, u64>,
    pub rollout_paused: Option<u64>,
}

/// One plugin's (filter instance name's) stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginStats {
    pub services: BTreeMap<String, ServiceStats>,
    pub unknown_service: u64,
    pub rejected: u64,
    pub config_failures: u64,
    /// 1 while the plugin's latest configuration is refused (wasm build's `config_refused`).
    pub config_refused: Option<u64>,
}

/// Everything meshsplit-related in one read of Envoy's stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// By the plugin's stat name part.
    pub plugins: BTreeMap<String, PluginStats>,
    /// Envoy's `http.<stat_prefix>.no_cluster`, summed over connection managers.
    pub no_cluster: u64,
    pub without_plan: u64,
    /// Whether any meshsplit stat was seen.
    pub found: bool,
}

impl Snapshot {
    fn upstream(&mut self, plugin: &str, service: &str, upstream: &str) -> &mut UpstreamStats {
        self.service(plugin, service)
            .upstreams
            .entry(upstream.to_owned())
            .or_default()
    }

    fn service(&mut self, plugin: &str, service: &str) -> &mut ServiceStats {
        self.plugin(plugin)
            .services
            .entry(service.to_owned())
            .or_default()
    }

    fn plugin(&mut self, plugin: &str) -> &mut PluginStats {
        self.found = true;
        self.plugins.entry(plugin.to_owned()).or_default()
    }

    /// Files one stat: `parts` are the name parts after `meshsplit.`.
    fn add(&mut self, parts: &[&str], value: f64) {
        let count = if value.is_finite() && value > 0.0 {
            value.round() as u64
        } else {
            0
        };
        match parts {
            ["requests_without_plan"] => {
                self.found = true;
                self.without_plan += count;
            }
            [plugin, "unknown_service_total"] => self.plugin(plugin).unknown_service += count,
            [plugin, "rejected_total"] => self.plugin(plugin).rejected += count,
            [plugin, "config_failures_total"] => self.plugin(plugin).config_failures += count,
            [plugin, "config_refused"] => self.plugin(plugin).config_refused = Some(count),
            [plugin, service, "rollout_paused"] => {
                self.service(plugin, service).rollout_paused = Some(count);
            }
            [plugin, service, "rules", rule, "hits_total"] => {
                if let Ok(rule) = rule.parse() {
                    *self
                        .service(plugin, service)
                        .rule_hits
                        .entry(rule)
                        .or_default() += count;
                }
            }
            [plugin, service, upstream, metric] => {
                let stats = self.upstream(plugin, service, upstream);
                match *metric {
                    "requests_total" => stats.requests += count,
                    "superseded_total" => stats.superseded += count,
                    "weight" => stats.weight = Some(count),
                    "in_flight" => stats.in_flight = Some(value.round() as i64),
                    "ejected" => stats.ejected = Some(count),
                    "ejections_total" => stats.ejections = Some(count),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Files one stat by its full Envoy name (`wasmcustom.meshsplit.…`,
    /// `dynamicmodulescustom.meshsplit.…`, `http.<prefix>.no_cluster`).
    fn add_named(&mut self, name: &str, value: f64) {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            ["http", .., "no_cluster"] => {
                self.no_cluster += value.max(0.0).round() as u64;
            }
            [namespace, "meshsplit", rest @ ..] if namespace.ends_with("custom") => {
                self.add(rest, value);
            }
            _ => {}
        }
    }

    /// Files one labelled Prometheus series (as the shipped `stats_tags` label them).
    fn add_series(&mut self, metric: &str, labels: &BTreeMap<String, String>, value: f64) {
        let label = |name: &str| labels.get(name).map(String::as_str);
        if metric == "envoy_http_no_cluster" {
            self.no_cluster += value.max(0.0).round() as u64;
            return;
        }
        let Some(what) = metric.strip_prefix("meshsplit_") else {
            return;
        };
        if what == "requests_without_plan" {
            self.add(&["requests_without_plan"], value);
            return;
        }
        let Some(plugin) = label("plugin") else {
            return;
        };
        match (what, label("service"), label("upstream"), label("rule")) {
            ("rules_hits_total", Some(service), _, Some(rule)) => {
                self.add(&[plugin, service, "rules", rule, "hits_total"], value);
            }
            (metric, Some(service), Some(upstream), _) => {
                self.add(&[plugin, service, upstream, metric], value);
            }
            (metric, Some(service), None, _) => self.add(&[plugin, service, metric], value),
            (metric, None, None, _) => self.add(&[plugin, metric], value),
            _ => {}
        }
    }
}

/// Reads the output of Envoy's `/stats` (text), `/stats?format=json` or `/stats/prometheus`
/// (with the shipped `stats_tags`).
pub fn parse_stats(text: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    if text.trim_start().starts_with('{') {
        if let Ok(Value::Object(root)) = serde_json::from_str::<Value>(text) {
            let stats = root.get("stats").and_then(Value::as_array);
            for stat in stats.into_iter().flatten() {
                let name = stat.get("name").and_then(Value::as_str);
                let value = stat.get("value").and_then(Value::as_f64);
                if let (Some(name), Some(value)) = (name, value) {
                    snapshot.add_named(name, value);
                }
            }
        }
        return snapshot;
    }
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Some((metric, labels)) = series.split_once('{') {
                if let Ok(value) = value.parse::<f64>() {
                    snapshot.add_series(metric, &prometheus_labels(labels), value);
                }
                continue;
            }
        }
        if let Some((name, value)) = line.split_once(": ") {
            if let Ok(value) = value.trim().parse::<f64>() {
                snapshot.add_named(name.trim(), value);
            }
        } else if let Some((metric, value)) = line.split_once(' ') {
            // An unlabelled Prometheus series (no stats_tags): only Envoy's own counters.
            if let Ok(value) = value.trim().parse::<f64>() {
                snapshot.add_series(metric, &BTreeMap::new(), value);
            }
        }
    }
    snapshot
}

/// `a="x",b="y"}` → {a: x, b: y}.
fn prometheus_labels(text: &str) -> BTreeMap<String, String> {
    let text = text.trim_end_matches('}');
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else {
            break;
        };
        let value = after.get(..end).unwrap_or_default();
        labels.insert(
            name.trim_start_matches(',').trim().to_owned(),
            value.to_owned(),
        );
        rest = after.get(end + 1..).unwrap_or_default();
    }
    labels
}

// ---- the configurations in force (from /config_dump) ----

/// Every meshsplit plugin configuration in a `/config_dump`, by the plugin's stat name part:
/// the wasm filter's `configuration`, the dynamic module's `filter_config` and the cluster
/// specifier's `specifier_config`, wherever they sit (listeners, ECDS, routes). A
/// configuration that does not compile is left out. A filter from extension config discovery
/// (`ecds_filters`) wins over its listener's `default_config`.
pub fn plans_in_dump(dump: &Value) -> BTreeMap<String, Plan> {
    let mut plans = BTreeMap::new();
    walk(dump, false, &mut plans);
    plans
        .into_iter()
        .map(|(name, (_, plan))| (name, plan))
        .collect()
}

fn walk(value: &Value, ecds: bool, plans: &mut BTreeMap<String, (bool, Plan)>) {
    match value {
        Value::Object(map) => {
            for (field, name_field) in [
                ("configuration", "name"),
                ("filter_config", "filter_name"),
                ("specifier_config", "specifier_name"),
            ] {
                let text = map
                    .get(field)
                    .and_then(|c| c.get("value"))
                    .and_then(Value::as_str);
                let Some(text) = text else { continue };
                let name = map
                    .get(name_field)
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or("meshsplit");
                let Ok(plan) = Plan::from_json_named(text.as_bytes(), name) else {
                    continue;
                };
                let key = stat_segment(name);
                if ecds || !plans.get(&key).is_some_and(|(from_ecds, _)| *from_ecds) {
                    plans.insert(key, (ecds, plan));
                }
            }
            for (field, v) in map {
                walk(v, ecds || field == "ecds_filters", plans);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, ecds, plans)),
        _ => {}
    }
}

/// Where an upstream's weight in force comes from.
fn weight_source(
    plan: Option<&Plan>,
    service: &str,
    upstream: &str,
    stats: &UpstreamStats,
    paused: bool,
    now_ms: u64,
) -> String {
    if stats.ejected == Some(1) {
        return "ejected by the guard".to_owned();
    }
    let found = plan.and_then(|p| {
        let s = p
            .services
            .iter()
            .find(|s| stat_segment(&s.name) == service)?;
        s.upstreams
            .iter()
            .any(|u| stat_segment(&u.name) == upstream)
            .then_some(s)
    });
    let Some(service) = found else {
        return if paused { "rollout paused" } else { "-" }.to_owned();
    };
    let Some(rollout) = &service.rollout else {
        return "config".to_owned();
    };
    let times: Vec<u64> = rollout.step_times_ms().collect();
    let step = times.iter().rposition(|&t| t <= now_ms);
    let total = times.len();
    let next = times
        .iter()
        .find(|&&t| t > now_ms)
        .map(|&t| format!(", next {}", rfc3339(t)))
        .unwrap_or_default();
    let paused = if paused { " (paused by the guard)" } else { "" };
    match (step, rollout.at(now_ms)) {
        (Some(step), Phase::Weights(_)) => {
            format!("rollout step {} of {total}{next}{paused}", step + 1)
        }
        _ => format!("config (rollout starts {})", rfc3339(rollout.start_ms)),
    }
}

fn rfc3339(ms: u64) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---- the report ----

/// The report of a snapshot `now`, with shares over the interval since `before` (of `span_s`
/// seconds), or since Envoy started without one.
pub fn report(
    now: &Snapshot,
    before: Option<&Snapshot>,
    span_s: f64,
    plans: &BTreeMap<String, Plan>,
    only: Option<&str>,
    now_ms: u64,
) -> Value {
    // An Envoy that restarted between the reads: any counter below its earlier value means they
    // all started again, so everything they hold is the interval's (a per-counter test would
    // miss one that already passed its old value).
    let before = before.filter(|b| !restarted(now, b));
    let mut plugins = Vec::new();
    for (name, plugin) in &now.plugins {
        let earlier = before.and_then(|b| b.plugins.get(name));
        let plan = plans.get(name);
        let mut services = Vec::new();
        for (service_name, service) in &plugin.services {
            if only.is_some_and(|o| o != service_name && stat_segment(o) != *service_name) {
                continue;
            }
            let earlier = earlier.and_then(|p| p.services.get(service_name));
            // Requests sent: decisions less superseded ones, each counter's own delta.
            let delta = |u: &str, stats: &UpstreamStats| {
                let then = earlier.and_then(|s| s.upstreams.get(u));
                let decided = since(
                    stats.requests,
                    before.map(|_| then.map_or(0, |t| t.requests)),
                );
                let superseded = since(
                    stats.superseded,
                    before.map(|_| then.map_or(0, |t| t.superseded)),
                );
                decided.saturating_sub(superseded)
            };
            let total: u64 = service
                .upstreams
                .iter()
                .map(|(u, stats)| delta(u, stats))
                .sum();
            let weights: u64 = service.upstreams.values().filter_map(|s| s.weight).sum();
            let paused = service.rollout_paused == Some(1);
            let upstreams: Vec<Value> = service
                .upstreams
                .iter()
                .map(|(u, stats)| {
                    let recent = delta(u, stats);
                    json!({
                        "upstream": u,
                        "weight": stats.weight,
                        "weight_share": stats.weight.filter(|_| weights > 0)
                            .map(|w| w as f64 / weights as f64),
                        "source": weight_source(plan, service_name, u, stats, paused, now_ms),
                        "observed_share": (total > 0).then(|| recent as f64 / total as f64),
                        "requests_in_interval": recent,
                        "requests": stats.sent(),
                        "in_flight": stats.in_flight,
                        "ejected": stats.ejected.map(|e| e == 1),
                        "ejections": stats.ejections,
                    })
                })
                .collect();
            let rule_hits: BTreeMap<String, u64> = service
                .rule_hits
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect();
            services.push(json!({
                "service": service_name,
                "requests_in_interval": total,
                "rollout_paused": service.rollout_paused.map(|p| p == 1),
                "rule_hits": rule_hits,
                "upstreams": upstreams,
            }));
        }
        plugins.push(json!({
            "plugin": name,
            "config_failures": plugin.config_failures,
            "config_refused": plugin.config_refused.map(|r| r == 1),
            "unknown_service": plugin.unknown_service,
            "rejected": plugin.rejected,
            "services": services,
        }));
    }
    json!({
        "interval_s": before.map(|_| span_s),
        "plugins": plugins,
        "no_cluster": now.no_cluster,
        "no_cluster_in_interval": since(now.no_cluster, before.map(|b| b.no_cluster)),
        "requests_without_plan": now.without_plan,
    })
}

/// Whether any counter of `now` is below its value in `before`: the Envoy restarted.
fn restarted(now: &Snapshot, before: &Snapshot) -> bool {
    if now.no_cluster < before.no_cluster {
        return true;
    }
    before.plugins.iter().any(|(name, then)| {
        let Some(current) = now.plugins.get(name) else {
            return false;
        };
        current.unknown_service < then.unknown_service
            || then.services.iter().any(|(service, then)| {
                current.services.get(service).is_some_and(|current| {
                    then.upstreams.iter().any(|(upstream, then)| {
                        current.upstreams.get(upstream).is_some_and(|current| {
                            current.requests < then.requests || current.superseded < then.superseded
                        })
                    })
                })
            })
    })
}

/// What a counter counted since its earlier value `then` (`None`: since Envoy started). A value
/// below `then` means the counter started again (an Envoy restart): all of it is new.
fn since(now: u64, then: Option<u64>) -> u64 {
    match then {
        Some(then) if now >= then => now - then,
        _ => now,
    }
}

/// The report as a table a person reads at a glance.
pub fn render(report: &Value, source: &str) -> String {
    let mut out = String::new();
    let over = match report.get("interval_s").and_then(Value::as_f64) {
        Some(s) => format!("observed over the last {s:.1} s"),
        None => "observed since Envoy started".to_owned(),
    };
    out.push_str(&format!("meshsplit status of {source} ({over})\n"));
    let num = |v: &Value, field: &str| v.get(field).and_then(Value::as_u64).unwrap_or(0);
    let no_cluster = num(report, "no_cluster");
    let unplanned = num(report, "requests_without_plan");
    let plugins = report.get("plugins").and_then(Value::as_array);
    for plugin in plugins.into_iter().flatten() {
        let name = plugin.get("plugin").and_then(Value::as_str).unwrap_or("");
        let failures = num(plugin, "config_failures");
        let unknown = num(plugin, "unknown_service");
        let rejected = num(plugin, "rejected");
        // Flagged while the latest configuration is refused (the gauge), not for a refusal a
        // later accepted configuration replaced.
        let refused = plugin.get("config_refused") == Some(&Value::Bool(true));
        out.push_str(&format!(
            "\nplugin {name}: {failures} refused configuration{}, {unknown} unknown-service \
             request{} ({rejected} answered 404){}\n",
            plural(failures),
            plural(unknown),
            if refused {
                "  << REFUSED CONFIG (the latest; the previous one serves)"
            } else {
                ""
            }
        ));
        let services = plugin.get("services").and_then(Value::as_array);
        for service in services.into_iter().flatten() {
            let name = service.get("service").and_then(Value::as_str).unwrap_or("");
            out.push_str(&format!(
                "\n  {name}{}\n",
                if service.get("rollout_paused") == Some(&Value::Bool(true)) {
                    "  (rollout paused by the guard)"
                } else {
                    ""
                }
            ));
            out.push_str(&format!(
                "    {:<16} {:>7} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9}  {}\n",
                "upstream",
                "weight",
                "share",
                "observed",
                "requests",
                "interval",
                "in-flight",
                "ejections",
                "weight from"
            ));
            let upstreams = service.get("upstreams").and_then(Value::as_array);
            for u in upstreams.into_iter().flatten() {
                let text = |field: &str| match u.get(field) {
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "-".to_owned(),
                };
                let percent = |field: &str| match u.get(field).and_then(Value::as_f64) {
                    Some(f) => format!("{:.1}%", f * 100.0),
                    None => "-".to_owned(),
                };
                out.push_str(&format!(
                    "    {:<16} {:>7} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9}  {}\n",
                    u.get("upstream").and_then(Value::as_str).unwrap_or(""),
                    text("weight"),
                    percent("weight_share"),
                    percent("observed_share"),
                    text("requests"),
                    text("requests_in_interval"),
                    text("in_flight"),
                    text("ejections"),
                    u.get("source").and_then(Value::as_str).unwrap_or("-"),
                ));
            }
            if let Some(Value::Object(hits)) = service.get("rule_hits") {
                if !hits.is_empty() {
                    let list: Vec<String> = hits
                        .iter()
                        .map(|(r, n)| format!("#{r} {}", n.as_u64().unwrap_or(0)))
                        .collect();
                    out.push_str(&format!("    rule hits: {}\n", list.join(", ")));
                }
            }
        }
    }
    // Flagged for requests in the interval shown (or, without one, since Envoy started).
    let recent_no_cluster = num(report, "no_cluster_in_interval");
    out.push_str(&format!(
        "\n{no_cluster} request{} to a cluster Envoy does not have (http.*.no_cluster){}\n",
        plural(no_cluster),
        if recent_no_cluster > 0 {
            "  << CHECK CLUSTERS"
        } else {
            ""
        }
    ));
    if unplanned > 0 {
        out.push_str(&format!(
            "{unplanned} request{} passed without a configuration (requests_without_plan)\n",
            plural(unplanned)
        ));
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

// ---- reading Envoy ----

/// `GET path` from the admin endpoint at `base` (`http://HOST:PORT`): the body of a 200.
pub fn http_get(base: &str, path: &str) -> Result<String, String> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| {
            if base.starts_with("https://") {
                format!(
                    "--admin {base}: https is not supported; Envoy's admin endpoint is plain http"
                )
            } else {
                format!("--admin {base}: expected http://HOST:PORT (or - for standard input)")
            }
        })?
        .trim_end_matches('/');
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot reach Envoy's admin endpoint at {base}: {e} (is Envoy running, and is \
             --admin its admin address?)"
        )
    };
    let address = authority
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))
        .map_err(|e| unreachable(&e))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| unreachable(&e))?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| unreachable(&e))?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{base}{path}: not an HTTP response"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("{base}{path} answered {line}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    })
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let Some(chunk) = rest.get(..size) else {
            out.push_str(rest);
            break;
        };
        out.push_str(chunk);
        body = rest.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
    out
}

/// Where the stats come from.
enum Source {
    Admin(String),
    Stdin,
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Admin(base) => base.clone(),
            Source::Stdin => "standard input".to_owned(),
        }
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        let text = match self {
            Source::Admin(base) => http_get(base, "/stats?filter=meshsplit%7Cno_cluster")?,
            Source::Stdin => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("standard input: {e}"))?;
                text
            }
        };
        let snapshot = parse_stats(&text);
        if !snapshot.found {
            return Err(format!(
                "no meshsplit stats in {}: is the meshsplit filter loaded and configured? (its \
                 stats are named wasmcustom.meshsplit.* or dynamicmodulescustom.meshsplit.*)",
                self.name()
            ));
        }
        Ok(snapshot)
    }

    /// The plugin configurations in force, where Envoy shows them (none from standard input).
    fn plans(&self) -> BTreeMap<String, Plan> {
        self.try_plans().unwrap_or_default()
    }

    /// The plans in the Envoy's configuration dump; `None` when it cannot be read.
    fn try_plans(&self) -> Option<BTreeMap<String, Plan>> {
        let Source::Admin(base) = self else {
            return None;
        };
        http_get(base, "/config_dump")
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .map(|dump| plans_in_dump(&dump))
    }
}

pub fn run(args: &Args) -> Status {
    if !(args.interval.is_finite() && args.interval >= 0.0) {
        return Failure::usage(format!(
            "--interval {}: expected a number of seconds, 0 or more",
            args.interval
        ))
        .report();
    }
    let sources: Vec<Source> = args
        .admin
        .iter()
        .map(|admin| {
            if admin == "-" {
                Source::Stdin
            } else {
                Source::Admin(admin.trim_end_matches('/').to_owned())
            }
        })
        .collect();
    let stdin = sources.iter().any(|s| matches!(s, Source::Stdin));
    if stdin && sources.len() > 1 {
        return Failure::usage(
            "--admin - reads one Envoy's stats; it cannot be combined with other --admin",
        )
        .report();
    }
    if args.watch && stdin {
        return Failure::usage("--watch needs --admin URL, not standard input").report();
    }
    let mut plans: Vec<BTreeMap<String, Plan>> = sources.iter().map(Source::plans).collect();
    // A fleet shows the Envoys it can read, each one it cannot as an error; one Envoy that
    // cannot be read (or all of them) is exit status 2.
    let mut before: Vec<Result<(Instant, Snapshot), String>> = sources
        .iter()
        .map(|source| source.snapshot().map(|s| (Instant::now(), s)))
        .collect();
    let fatal = sources.len() == 1 || before.iter().all(Result::is_err);
    if let (true, Some(Err(e))) = (fatal, before.iter().find(|b| b.is_err())) {
        return Failure::usage(e.clone()).report();
    }
    let interval = Duration::from_secs_f64(args.interval);
    if !args.watch {
        let mut reads = Vec::new();
        if stdin || interval.is_zero() {
            reads.extend(before.iter().map(|b| {
                b.as_ref()
                    .map(|(_, now)| (now.clone(), None, 0.0))
                    .map_err(Clone::clone)
            }));
        } else {
            std::thread::sleep(interval);
            for (source, earlier) in sources.iter().zip(&before) {
                reads.push(match (source.snapshot(), earlier) {
                    (Ok(now), Ok((at, earlier))) => {
                        Ok((now, Some(earlier.clone()), at.elapsed().as_secs_f64()))
                    }
                    (Ok(now), Err(_)) => Ok((now, None, 0.0)),
                    (Err(e), _) if sources.len() == 1 => return Failure::usage(e).report(),
                    (Err(e), _) => Err(e),
                });
            }
        }
        show(args, &sources, &reads, &plans);
        return Status::Ok;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        return Failure::usage(format!("cannot handle Ctrl-C: {e}")).report();
    }
    let clear = !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let tick = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        let mut reads = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            // The configuration can change under a watch (a live update, a restart): read it
            // again every frame, keeping the last one read when the dump cannot be read.
            if let (Some(fresh), Some(slot)) = (source.try_plans(), plans.get_mut(i)) {
                *slot = fresh;
            }
            let Some(slot) = before.get_mut(i) else {
                continue;
            };
            match (source.snapshot(), slot.as_mut()) {
                (Ok(now), Ok((at, earlier))) => {
                    let span = at.elapsed().as_secs_f64();
                    let earlier = std::mem::replace(earlier, now.clone());
                    *at = Instant::now();
                    reads.push(Ok((now, Some(earlier), span)));
                }
                // An Envoy read for the first time: its counts since it started.
                (Ok(now), Err(_)) => {
                    *slot = Ok((Instant::now(), now.clone()));
                    reads.push(Ok((now, None, 0.0)));
                }
                // Shown in the frame, instead of the last table; the next read is compared
                // with the last good one.
                (Err(e), Ok((at, _))) => reads.push(Err(format!(
                    "{e} (last read {:.0} s ago)",
                    at.elapsed().as_secs_f64()
                ))),
                (Err(e), Err(_)) => reads.push(Err(e)),
            }
        }
        if clear {
            crate::output::out(format_args!("\x1b[H\x1b[2J"));
        }
        show(args, &sources, &reads, &plans);
    }
    Status::Ok
}

/// One Envoy's read for a frame: (now, the read before, seconds between), or why it failed.
type Read = Result<(Snapshot, Option<Snapshot>, f64), String>;

fn show(args: &Args, sources: &[Source], reads: &[Read], plans: &[BTreeMap<String, Plan>]) {
    let now = now_ms();
    let empty = BTreeMap::new();
    let reports: Vec<(String, Value)> = sources
        .iter()
        .zip(reads)
        .enumerate()
        .map(|(i, (source, read))| {
            let report = match read {
                Ok((snapshot, before, span)) => report(
                    snapshot,
                    before.as_ref(),
                    *span,
                    plans.get(i).unwrap_or(&empty),
                    args.service.as_deref(),
                    now,
                ),
                Err(e) => json!({"error": e}),
            };
            (source.name(), report)
        })
        .collect();
    let document = match reports.as_slice() {
        [(_, single)] => single.clone(),
        _ => json!({
            "fleet": crate::fleet::report(&reports),
            "envoys": reports.iter().map(|(admin, r)| json!({"admin": admin, "report": r})).collect::<Vec<_>>(),
        }),
    };
    if args.json {
        if args.watch {
            say!("{document}");
        } else {
            say!(
                "{}",
                serde_json::to_string_pretty(&document).unwrap_or_default()
            );
        }
        return;
    }
    let mut text = String::new();
    if reports.len() > 1 {
        let over = reads.iter().find_map(|r| r.as_ref().ok()).map_or(
            "observed since the Envoys started".to_owned(),
            |(_, before, span)| {
                if before.is_some() {
                    format!("observed over the last {span:.1} s")
                } else {
                    "observed since the Envoys started".to_owned()
                }
            },
        );
        if let Some(fleet) = document.get("fleet") {
            text.push_str(&crate::fleet::render(fleet, &over));
        }
        text.push('\n');
    }
    for (name, report) in &reports {
        match report.get("error").and_then(Value::as_str) {
            Some(e) => text.push_str(&format!("meshsplit status of {name}: error: {e}\n")),
            None => text.push_str(&render(report, name)),
        }
        if reports.len() > 1 {
            text.push('\n');
        }
    }
    crate::output::out(format_args!("{text}"));
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
