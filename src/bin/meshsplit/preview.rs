//! `meshsplit preview CONFIG`: what a config does with traffic, from simulated requests routed
//! by the filter's own code; with `--against OLD`, what an edit changes.

use std::fmt::Write as _;
use std::path::PathBuf;

use meshsplit::metrics::Counted;
use meshsplit::plan::{Condition, HashOn, HeaderTest, Plan, Service, ServiceFrom, Strategy};
use meshsplit::request::{cookie_value, query_param};
use serde_json::{json, Value};

use crate::check::guard_text;
use crate::load::{compile, find, pick, Failure, Loaded};
use crate::schedule::{
    moment, now_ms, put_in_force, rfc3339, signed, timeline, At, Moment, Row, State,
};
use crate::simulate::{
    cycle_length, envoy_name, expected_shares, generator, key, movement, simulate, Movement,
    Request, SimHost,
};
use crate::Status;

/// Round-robin picks shown at most; longer cycles are cut.
const CYCLE_SHOWN: usize = 64;

/// Show what a config does with traffic, simulated with the filter's own code.
///
/// Routes simulated requests through the same decision code the filter runs in Envoy (a
/// seeded generator, so every run prints the same) and prints per service: strategy, each
/// upstream's cluster, weight, expected and simulated share; the rules and where each sends
/// requests; the first cycle of a round_robin service. Sticky services get a new key per
/// request (user-0, user-1, ...); least_request services keep every request in flight.
///
/// With --header, --cookie or --path: where that one request goes for each service, and why
/// (which rule, or the strategy).
///
/// With --against OLD: what the edit from OLD to CONFIG changes, per service: each upstream's
/// share before and after and, for sticky services, the fraction of sample keys that move and
/// between which upstreams.
///
/// A service with a rollout also gets its schedule: each step's time, offset from the start,
/// weights and expected shares (with `interpolate`, the midpoints between steps too), and where
/// the rollout stands now. The table simulates the configured weights, those in force before
/// the start; with --at TIME, the weights in force at TIME. --against compares the splits at
/// --at, by default now. A service with a guard gets its settings (the simulation has no
/// failing requests, so the guard never acts in it).
///
/// CONFIG (and OLD) is any file `meshsplit check` takes. A file holding several configs is
/// previewed config by config; --against and a single request need one, chosen with
/// --config-index.
///
/// Exit status: 0 previewed; 1 a config is invalid (the line `check` prints); 2 usage or input
/// error, a config that is not valid JSON or YAML (a syntax error) included.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The plugin config, or a file holding it; `-` reads standard input.
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// Compare with this earlier version of the config.
    #[arg(long, value_name = "OLD")]
    against: Option<PathBuf>,
    /// Only this service.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Simulated requests per service.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Sample keys per sticky service for --against (user-0, user-1, ...).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Seed of the random generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A header of the one request to route (repeatable; `host` means `:authority`).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// A cookie of the one request to route (repeatable).
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    cookies: Vec<String>,
    /// The path (with query) of the one request to route.
    #[arg(long, value_name = "/p?q=v")]
    path: Option<String>,
    /// Simulate the rollouts' weights at this moment: an RFC 3339 UTC time
    /// (2026-12-01T10:10:00Z), `now`, or an offset from each rollout's start (+10m, +600s,
    /// +1h30m, -5m).
    #[arg(long, value_name = "TIME", value_parser = At::parse, allow_hyphen_values = true)]
    at: Option<At>,
    /// Which config of a file that holds several (from 1, in the order `check` lists them).
    #[arg(long, value_name = "N")]
    config_index: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Status {
    match preview(args) {
        Ok((output, status)) => {
            crate::output::out(format_args!("{output}"));
            status
        }
        Err(failure) => failure.report(),
    }
}

/// The output, and its status: `Invalid` when a config of the file is invalid (its `check`
/// line is printed in its place; the valid ones are previewed all the same).
fn preview(args: &Args) -> Result<(String, Status), Failure> {
    let request = RequestOptions::parse(args)?;
    let clock = Clock {
        now_ms: now_ms(),
        at: args.at,
    };
    if let Some(old) = &args.against {
        let new = load_one(&args.config, args.config_index)?;
        let old = load_one(old, args.config_index)?;
        let only = args.service.as_deref();
        check_service(&new, only, Some(&old))?;
        // Rollouts are compared at one moment, now unless --at says otherwise.
        let at = args.at.unwrap_or(At::Now);
        for config in [&old, &new] {
            put_in_force(&config.plan.services, at, clock.now_ms);
        }
        let diff =
            diff(Some(&old), &new, only, args.keys).with_rollouts(&old, &new, at, clock.now_ms);
        return Ok((
            if args.json {
                format!("{:#}\n", diff.json())
            } else {
                diff.text()
            },
            Status::Ok,
        ));
    }
    let mut status = Status::Ok;
    let mut text = String::new();
    let mut json = Vec::new();
    let mut configs = Vec::new();
    let mut invalid = Vec::new();
    for loaded in load_all(&args.config, args.config_index)? {
        match loaded {
            Ok(config) => configs.push(Ok(config)),
            Err(failure) if failure.status == Status::Invalid => {
                status = Status::Invalid;
                invalid.push(failure.message.clone());
                configs.push(Err(failure.message));
            }
            Err(failure) => return Err(failure),
        }
    }
    // Nothing to preview: the file's check lines, as before.
    if !invalid.is_empty() && invalid.len() == configs.len() {
        return Err(Failure {
            status,
            message: invalid.join("\n"),
        });
    }
    for config in configs.iter().flatten() {
        check_service(config, args.service.as_deref(), None)?;
        if let Some(at) = clock.at {
            put_in_force(&config.plan.services, at, clock.now_ms);
        }
    }
    for config in &configs {
        let config = match config {
            Ok(config) => config,
            Err(message) => {
                if args.json {
                    json.push(json!({ "invalid": message }));
                } else {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let _ = writeln!(text, "{message}");
                }
                continue;
            }
        };
        let services = selected(config, args.service.as_deref());
        if let Some(request) = &request {
            let routes: Vec<Route> = services
                .iter()
                .map(|&s| route_one(config, s, request, args.seed))
                .collect();
            if args.json {
                json.push(json!({
                    "config": config.at,
                    "routes": routes.iter().map(Route::json).collect::<Vec<_>>(),
                }));
            } else {
                let _ = writeln!(text, "{}: {}", config.at, request.describe());
                for route in &routes {
                    let _ = writeln!(text, "{}", route.text());
                }
            }
            continue;
        }
        let previews: Vec<ServicePreview> = services
            .iter()
            .filter_map(|&s| ServicePreview::simulate(config, s, args.requests, args.seed, clock))
            .collect();
        if args.json {
            json.push(json!({
                "config": config.at,
                "requests": args.requests,
                "seed": args.seed,
                "at": clock.at.map(At::describe),
                "services": previews.iter().map(ServicePreview::json).collect::<Vec<_>>(),
            }));
        } else {
            if !text.is_empty() {
                text.push('\n');
            }
            let at = clock
                .at
                .map(|at| format!(", at {}", at.describe()))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "{}: {} simulated requests per service (seed {}){at}",
                config.at, args.requests, args.seed
            );
            for preview in &previews {
                text.push_str(&preview.text());
            }
        }
    }
    Ok((
        if args.json {
            format!("{:#}\n", json!({ "configs": json }))
        } else {
            text
        },
        status,
    ))
}

/// Every config of a file (or the `index`-th), each compiled or failed on its own: one
/// invalid filter of a bootstrap does not hide the others.
fn load_all(path: &PathBuf, index: Option<usize>) -> Result<Vec<Result<Loaded, Failure>>, Failure> {
    let name = path.display().to_string();
    let found = find(path)?;
    let found = match index {
        Some(_) => vec![pick(&name, found, index)?],
        None => found,
    };
    Ok(found.iter().map(|f| compile(&name, f)).collect())
}

/// The one config of a file (or the `index`-th).
pub fn load_one(path: &PathBuf, index: Option<usize>) -> Result<Loaded, Failure> {
    let name = path.display().to_string();
    let found = pick(&name, find(path)?, index)?;
    compile(&name, &found)
}

fn check_service(config: &Loaded, only: Option<&str>, old: Option<&Loaded>) -> Result<(), Failure> {
    let Some(name) = only else { return Ok(()) };
    let known = |c: &Loaded| c.service(name).is_some();
    if known(config) || old.is_some_and(known) {
        return Ok(());
    }
    let names: Vec<&str> = config
        .plan
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    Err(Failure::usage(format!(
        "{}: no service named {name:?} (services: {})",
        config.at,
        names.join(", ")
    )))
}

fn selected(config: &Loaded, only: Option<&str>) -> Vec<usize> {
    (0..config.plan.services.len())
        .filter(|&s| {
            only.is_none_or(|name| config.plan.services.get(s).is_some_and(|x| x.name == name))
        })
        .collect()
}

/// `weighted`, `sticky on header x-user-id`, ...
pub fn strategy(service: &Service) -> String {
    match &service.strategy {
        Strategy::Sticky { hash_on, .. } if service.assign_cookie.is_some() => {
            format!("sticky on {}, assigned", hash_on_text(hash_on))
        }
        Strategy::Sticky { hash_on, .. } => format!("sticky on {}", hash_on_text(hash_on)),
        other => other.name().to_owned(),
    }
}

fn hash_on_text(hash_on: &HashOn) -> String {
    match hash_on {
        HashOn::Header(name) => format!("header {name}"),
        HashOn::Cookie(name) => format!("cookie {name}"),
        HashOn::Query(name) => format!("query {name}"),
    }
}

/// `header x-canary = "true" and cookie beta = "1"`.
fn conditions(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| match c {
            Condition::Header { name, test } => match test {
                HeaderTest::Exact(v) => format!("header {name} = {v:?}"),
                HeaderTest::Prefix(p) => format!("header {name} starts with {p:?}"),
                HeaderTest::Present => format!("header {name} present"),
            },
            Condition::Cookie { name, value } => format!("cookie {name} = {value:?}"),
            Condition::Query { name, value } => format!("query {name} = {value:?}"),
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

pub fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// The clock rollouts are read against: now, and the moment --at names.
#[derive(Debug, Clone, Copy)]
struct Clock {
    now_ms: u64,
    at: Option<At>,
}

/// A rollout's schedule and where it stands now and at --at.
struct RolloutPreview {
    start_ms: u64,
    interpolate: bool,
    rows: Vec<Row>,
    now: Moment,
    at: Option<(At, Moment)>,
}

impl RolloutPreview {
    fn new(service: &Service, clock: Clock) -> Option<Self> {
        let rollout = service.rollout.as_ref()?;
        let at = match clock.at {
            Some(at) => Some((at, moment(service, at.resolve(rollout, clock.now_ms))?)),
            None => None,
        };
        Some(Self {
            start_ms: rollout.start_ms,
            interpolate: rollout.interpolate,
            rows: timeline(rollout),
            now: moment(service, clock.now_ms)?,
            at,
        })
    }
}

/// One service's simulation.
struct ServicePreview<'a> {
    service: &'a Service,
    requests: u64,
    counts: Vec<u64>,
    rule_hits: Vec<u64>,
    /// Round robin: the first cycle (upstream indexes) and its full length.
    cycle: Option<(Vec<usize>, u64)>,
    rollout: Option<RolloutPreview>,
}

impl<'a> ServicePreview<'a> {
    fn simulate(
        config: &'a Loaded,
        index: usize,
        requests: u64,
        seed: u64,
        clock: Clock,
    ) -> Option<Self> {
        let plan: &Plan = &config.plan;
        let service = plan.services.get(index)?;
        let round_robin = matches!(service.strategy, Strategy::RoundRobin(_));
        let length = cycle_length(&service.weights());
        let keep = if round_robin {
            usize::try_from(length)
                .unwrap_or(usize::MAX)
                .min(CYCLE_SHOWN)
        } else {
            0
        };
        // The plan's round-robin positions start fresh: each service is simulated once.
        let sim = simulate(plan, index, config.key(index), requests, keep, seed);
        Some(Self {
            service,
            requests,
            counts: sim.counts,
            rule_hits: sim.rule_hits,
            cycle: round_robin.then_some((sim.order, length)),
            rollout: RolloutPreview::new(service, clock),
        })
    }

    fn upstream_name(&self, index: usize) -> &str {
        self.service
            .upstreams
            .get(index)
            .map_or("?", |u| u.name.as_str())
    }

    fn text(&self) -> String {
        let service = self.service;
        let mut out = format!("\n{}: {}", service.name, strategy(service));
        match &service.strategy {
            Strategy::Sticky { .. } if service.assign_cookie.is_some() => {
                out.push_str(" (every simulated request a new visitor, routed by the id assigned)");
            }
            Strategy::Sticky { .. } => {
                let _ = write!(out, " (keys {} to {})", key(0), key(self.requests - 1));
            }
            Strategy::LeastRequest(_) => out.push_str(" (every simulated request stays in flight)"),
            _ => {}
        }
        out.push('\n');
        let weights = service.weights().to_vec();
        let expected = expected_shares(&weights);
        let name_width = service
            .upstreams
            .iter()
            .map(|u| u.name.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let cluster_width = service
            .upstreams
            .iter()
            .map(|u| u.cluster.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:<cluster_width$}  {:>7}  {:>8}  {:>9}",
            "upstream", "cluster", "weight", "expected", "simulated"
        );
        for (i, upstream) in service.upstreams.iter().enumerate() {
            let count = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:<name_width$}  {:<cluster_width$}  {:>7}  {:>8}  {:>9}",
                upstream.name,
                upstream.cluster,
                weights.get(i).copied().unwrap_or(0),
                percent(expected.get(i).copied().unwrap_or(0.0)),
                percent(count as f64 / self.requests as f64),
            );
        }
        for (i, rule) in service.rules.iter().enumerate() {
            let target = service.upstreams.get(rule.upstream);
            let _ = write!(
                out,
                "  rule {i}: {} -> {} ({})",
                conditions(&rule.conditions),
                target.map_or("?", |u| u.name.as_str()),
                target.map_or("?", |u| u.cluster.as_str()),
            );
            match self.rule_hits.get(i).copied().unwrap_or(0) {
                0 => out.push('\n'),
                n => {
                    let _ = writeln!(out, "; claimed {n} simulated requests");
                }
            }
        }
        if let Some((cycle, length)) = &self.cycle {
            let names: Vec<&str> = cycle.iter().map(|&u| self.upstream_name(u)).collect();
            let more = if *length > cycle.len() as u64 {
                " ..."
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  first cycle ({length} requests): {}{more}",
                names.join(" ")
            );
        }
        if let Some(guard) = &service.guard {
            let _ = writeln!(
                out,
                "  guard: {} (not simulated: no simulated request fails)",
                guard_text(guard)
            );
        }
        if let Some(rollout) = &self.rollout {
            out.push_str(&self.rollout_text(rollout));
        }
        out
    }

    /// The schedule as a table, then where the rollout stands now and at --at.
    fn rollout_text(&self, rollout: &RolloutPreview) -> String {
        let service = self.service;
        let mut out = format!(
            "  rollout: {} from {}{}\n",
            crate::check::count(
                rollout.rows.iter().filter(|r| r.step.is_some()).count(),
                "step"
            ),
            rfc3339(rollout.start_ms),
            if rollout.interpolate {
                "; weights move linearly between steps (midway: halfway)"
            } else {
                ""
            }
        );
        let cells: Vec<[String; 3]> = rollout
            .rows
            .iter()
            .map(|row| {
                [
                    row.step.map_or("midway".to_owned(), |i| i.to_string()),
                    rfc3339(row.time_ms),
                    signed(i64::try_from(row.offset_ms).unwrap_or(i64::MAX)),
                ]
            })
            .collect();
        let shares: Vec<Vec<String>> = rollout
            .rows
            .iter()
            .map(|row| {
                let expected = expected_shares(&row.weights);
                row.weights
                    .iter()
                    .zip(expected)
                    .map(|(w, x)| format!("{w} ({})", percent(x)))
                    .collect()
            })
            .collect();
        let width = |column: usize, title: &str| {
            cells
                .iter()
                .map(|c| c.get(column).map_or(0, String::len))
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let (step_w, time_w, offset_w) = (width(0, "step"), width(1, "time"), width(2, "offset"));
        let upstream_w: Vec<usize> = service
            .upstreams
            .iter()
            .enumerate()
            .map(|(u, upstream)| {
                shares
                    .iter()
                    .map(|row| row.get(u).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
                    .max(upstream.name.chars().count())
            })
            .collect();
        let mut header = format!(
            "    {:<step_w$}  {:<time_w$}  {:<offset_w$}",
            "step", "time", "offset"
        );
        for (upstream, w) in service.upstreams.iter().zip(&upstream_w) {
            let _ = write!(header, "  {:>w$}", upstream.name);
        }
        let _ = writeln!(out, "{}", header.trim_end());
        let mark =
            |row: &Row, moment: &Moment| row.step.is_some() && row.step == moment.state.step();
        for ((row, cell), share) in rollout.rows.iter().zip(&cells).zip(&shares) {
            let [step, time, offset] = cell;
            let mut line = format!("    {step:<step_w$}  {time:<time_w$}  {offset:<offset_w$}");
            for (text, w) in share.iter().zip(&upstream_w) {
                let _ = write!(line, "  {text:>w$}");
            }
            let mut marks = Vec::new();
            if mark(row, &rollout.now) {
                marks.push("now");
            }
            if rollout.at.as_ref().is_some_and(|(_, m)| mark(row, m)) {
                marks.push("--at");
            }
            if !marks.is_empty() {
                let _ = write!(line, "  ← {}", marks.join(", "));
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "  now {}", moment_text(service, &rollout.now));
        match &rollout.at {
            Some((_, at)) => {
                let _ = writeln!(
                    out,
                    "  --at {}; simulated in the table above",
                    moment_text(service, at)
                );
            }
            None => out.push_str(
                "  the table above simulates the configured weights; --at TIME simulates another moment\n",
            ),
        }
        out
    }

    fn json(&self) -> Value {
        let service = self.service;
        let weights = service.weights().to_vec();
        let expected = expected_shares(&weights);
        let upstreams: Vec<Value> = service
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let count = self.counts.get(i).copied().unwrap_or(0);
                let mut upstream = json!({
                    "name": u.name, "cluster": u.cluster,
                    "weight": weights.get(i).copied().unwrap_or(0),
                    "expected": expected.get(i).copied().unwrap_or(0.0),
                    "simulated": count as f64 / self.requests as f64,
                    "count": count,
                });
                if service.rollout.is_some() {
                    if let Some(fields) = upstream.as_object_mut() {
                        fields.insert("configured_weight".to_owned(), json!(u.weight));
                    }
                }
                upstream
            })
            .collect();
        let rules: Vec<Value> = service
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let target = service.upstreams.get(rule.upstream);
                json!({
                    "index": i, "match": conditions(&rule.conditions),
                    "upstream": target.map(|u| &u.name), "cluster": target.map(|u| &u.cluster),
                    "hits": self.rule_hits.get(i).copied().unwrap_or(0),
                })
            })
            .collect();
        let cycle = self.cycle.as_ref().map(|(cycle, length)| {
            json!({
                "length": length,
                "first": cycle.iter().map(|&u| self.upstream_name(u)).collect::<Vec<_>>(),
            })
        });
        let guard = service.guard.as_ref().map(|g| {
            // The percentile as written (thousandths back to a number: 95, 99.9).
            let latency = g.latency.map(|l| {
                json!({
                    "percentile": l.percentile_milli as f64 / 1000.0,
                    "threshold_ms": l.threshold_ms,
                })
            });
            json!({
                "error_rate": g.error_rate, "min_requests": g.min_requests,
                "window_s": g.window_s, "eject_s": g.eject_s,
                "max_ejected_percent": g.max_ejected_percent, "latency": latency,
            })
        });
        let rollout = self.rollout.as_ref().map(|r| {
            let timeline: Vec<Value> = r
                .rows
                .iter()
                .map(|row| {
                    json!({
                        "step": row.step,
                        "time": rfc3339(row.time_ms),
                        "offset_s": row.offset_ms as f64 / 1000.0,
                        "weights": by_upstream(service, row.weights.iter().map(|&w| json!(w))),
                        "expected": by_upstream(service, expected_shares(&row.weights).into_iter().map(|x| json!(x))),
                    })
                })
                .collect();
            json!({
                "start": rfc3339(r.start_ms), "interpolate": r.interpolate,
                "timeline": timeline,
                "now": moment_json(service, &r.now),
                "at": r.at.as_ref().map(|(_, m)| moment_json(service, m)),
            })
        });
        json!({
            "name": service.name, "strategy": strategy(service), "upstreams": upstreams,
            "rules": rules, "round_robin_cycle": cycle, "guard": guard, "rollout": rollout,
        })
    }
}

/// `{"v1": .., "v2": ..}`: one value per upstream, in the service's order.
fn by_upstream(service: &Service, values: impl Iterator<Item = Value>) -> Value {
    Value::Object(
        service
            .upstreams
            .iter()
            .map(|u| u.name.clone())
            .zip(values)
            .collect(),
    )
}

/// `2026-12-01T10:12:00Z (+12m): step 1, until step 2 at 2026-12-01T10:30:00Z`.
fn moment_text(service: &Service, moment: &Moment) -> String {
    let detail = match &moment.state {
        State::NotStarted { until_ms } => {
            format!(
                "; the configured weights apply until {}",
                rfc3339(*until_ms)
            )
        }
        State::Step(i) => service
            .rollout
            .as_ref()
            .and_then(|r| r.step_times_ms().nth(i + 1))
            .map(|next| format!(", until step {} at {}", i + 1, rfc3339(next)))
            .unwrap_or_default(),
        State::Between(_) => {
            let weights: Vec<String> = service
                .upstreams
                .iter()
                .zip(&moment.weights)
                .map(|(u, w)| format!("{} {w}", u.name))
                .collect();
            format!(", weights {}", weights.join(", "))
        }
        State::Finished(_) => ", whose weights stay".to_owned(),
    };
    format!(
        "{} ({}): {}{detail}",
        rfc3339(moment.time_ms),
        signed(moment.offset_ms),
        moment.state.text()
    )
}

fn moment_json(service: &Service, moment: &Moment) -> Value {
    json!({
        "time": rfc3339(moment.time_ms),
        "offset_s": moment.offset_ms as f64 / 1000.0,
        "state": moment.state.word(),
        "step": moment.state.step(),
        "weights": by_upstream(service, moment.weights.iter().map(|&w| json!(w))),
        "expected": by_upstream(service, expected_shares(&moment.weights).into_iter().map(|x| json!(x))),
    })
}

/// The request given with --header, --cookie and --path.
struct RequestOptions {
    headers: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
    path: Option<String>,
}

impl RequestOptions {
    /// `None` when no option describes a request.
    fn parse(args: &Args) -> Result<Option<Self>, Failure> {
        if args.headers.is_empty() && args.cookies.is_empty() && args.path.is_none() {
            return Ok(None);
        }
        let mut headers = Vec::new();
        for header in &args.headers {
            // A pseudo-header's name starts with its own colon.
            let start = usize::from(header.starts_with(':'));
            let split = header
                .get(start..)
                .and_then(|rest| rest.find(':'))
                .map(|i| i + start);
            let Some((name, value)) =
                split.and_then(|i| Some((header.get(..i)?, header.get(i + 1..)?)))
            else {
                return Err(Failure::usage(format!(
                    "--header {header:?}: expected NAME:VALUE"
                )));
            };
            let name = match name.trim().to_ascii_lowercase() {
                host if host == "host" => ":authority".to_owned(),
                other => other,
            };
            if name.is_empty() || name == ":" {
                return Err(Failure::usage(format!(
                    "--header {header:?}: expected NAME:VALUE"
                )));
            }
            headers.push((name, value.trim_start().to_owned()));
        }
        let mut cookies = Vec::new();
        for cookie in &args.cookies {
            match cookie.split_once('=') {
                Some((name, value)) if !name.trim().is_empty() => {
                    cookies.push((name.trim().to_owned(), value.to_owned()));
                }
                _ => {
                    return Err(Failure::usage(format!(
                        "--cookie {cookie:?}: expected NAME=VALUE"
                    )))
                }
            }
        }
        Ok(Some(Self {
            headers,
            cookies,
            path: args.path.clone(),
        }))
    }

    /// The request for one service: its service key, then the options.
    fn request(&self, config: &Loaded, service: usize) -> Request {
        let plan = &config.plan;
        let key = config.key(service);
        let mut request = Request::for_service(plan, key);
        if let Some(path) = &self.path {
            request.set(":path", path);
            if let ServiceFrom::Query(param) = &plan.service_from {
                if query_param(path.as_bytes(), param.as_bytes()).is_none() {
                    request.add_query(param, key);
                }
            }
        }
        // A name's first --header replaces what the request has (the service key, Envoy's
        // own headers); a repeated one is another copy, as a client sending it twice.
        for (index, (name, value)) in self.headers.iter().enumerate() {
            let repeated = self
                .headers
                .iter()
                .take(index)
                .any(|(earlier, _)| envoy_name(earlier) == envoy_name(name));
            if repeated && !name.starts_with(':') && envoy_name(name) != ":authority" {
                request.append(name, value);
            } else {
                request.set(name, value);
            }
        }
        // An HTTP/1.1 request has no `:scheme`: Envoy takes it from `x-forwarded-proto` when
        // that is `http` or `https`, else from the connection (plain here).
        if !self.headers.iter().any(|(name, _)| name == ":scheme") {
            let forwarded = request
                .header("x-forwarded-proto")
                .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
            if let Some(scheme) = forwarded.filter(|v| v == "http" || v == "https") {
                request.set(":scheme", &scheme);
            }
        }
        // The --cookie values are one `cookie` header of their own, beside any --header cookie
        // (a client may send several; a condition holds if any copy's cookie does).
        if !self.cookies.is_empty() {
            let joined: Vec<String> = self
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            if self.headers.iter().any(|(name, _)| name == "cookie") {
                request.append("cookie", &joined.join("; "));
            } else {
                request.set("cookie", &joined.join("; "));
            }
        }
        request
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(path) = &self.path {
            parts.push(format!("path {path}"));
        }
        for (name, value) in &self.headers {
            parts.push(format!("{name}: {value}"));
        }
        for (name, value) in &self.cookies {
            parts.push(format!("cookie {name}={value}"));
        }
        format!("a request with {}", parts.join(", "))
    }
}

/// Where one request went and why.
struct Route {
    service: String,
    upstream: Option<(String, String)>,
    authority: Option<String>,
    rule: Option<usize>,
    why: String,
}

fn route_one(config: &Loaded, index: usize, options: &RequestOptions, seed: u64) -> Route {
    let plan = &config.plan;
    let request = options.request(config, index);
    let outcome = SimHost::default().route(plan, &mut generator(seed), &request);
    let name = plan.services.get(index).map_or("", |s| s.name.as_str());
    let mut route = Route {
        service: name.to_owned(),
        upstream: None,
        authority: None,
        rule: None,
        why: String::new(),
    };
    match outcome.counted {
        Counted::Upstream {
            service,
            upstream,
            rule,
        } => {
            let Some(svc) = plan.services.get(service) else {
                return route;
            };
            route.service = svc.name.clone();
            let chosen = svc.upstreams.get(upstream);
            route.upstream = chosen.map(|u| (u.name.clone(), u.cluster.clone()));
            route.authority = chosen.and_then(|u| u.authority.clone());
            route.rule = rule;
            route.why = match rule.and_then(|r| svc.rules.get(r).map(|x| (r, x))) {
                Some((r, matched)) => format!("rule {r}: {}", conditions(&matched.conditions)),
                None => strategy_reason(svc, &request, seed, outcome.cookie),
            };
        }
        Counted::Unknown { rejected } => {
            route.why = format!(
                "its service key matches no service: {}",
                if rejected {
                    "answered 404 (on_unknown_service: reject)"
                } else {
                    "passes without a cluster header (on_unknown_service: pass)"
                }
            );
        }
        Counted::Nothing => route.why = "not routed".to_owned(),
    }
    route
}

fn strategy_reason(
    service: &Service,
    request: &Request,
    seed: u64,
    assigned: Option<meshsplit::cookie::CookieId>,
) -> String {
    match &service.strategy {
        Strategy::Weighted => format!("strategy weighted: one random draw by weight (seed {seed})"),
        Strategy::RoundRobin(_) => "strategy round_robin: the first request of a cycle".to_owned(),
        Strategy::LeastRequest(_) => {
            "strategy least_request: nothing in flight, so the highest weight".to_owned()
        }
        Strategy::Sticky { hash_on, .. } => {
            let key = match hash_on {
                HashOn::Header(name) => request.header(name).map(<[u8]>::to_vec),
                HashOn::Cookie(name) => request
                    .header("cookie")
                    .and_then(|c| cookie_value(c, name.as_bytes()))
                    .map(<[u8]>::to_vec),
                HashOn::Query(name) => request
                    .header(":path")
                    .and_then(|p| query_param(p, name.as_bytes()))
                    .map(|v| v.into_owned()),
            };
            match key.filter(|k| !k.is_empty()) {
                None if assigned.is_some() => format!(
                    "strategy sticky: the request has no {}, so it is assigned the id {:?} \
                     (seed {seed}), routed by its hash, and the response sets the cookie",
                    hash_on_text(hash_on),
                    assigned.as_ref().map_or("", |id| id.as_str())
                ),
                Some(key) => format!(
                    "strategy sticky: the hash of {} {:?}",
                    hash_on_text(hash_on),
                    String::from_utf8_lossy(&key)
                ),
                None => format!(
                    "strategy sticky: the request has no {}, so one random draw by weight (seed {seed})",
                    hash_on_text(hash_on)
                ),
            }
        }
    }
}

impl Route {
    fn text(&self) -> String {
        match &self.upstream {
            Some((name, cluster)) => {
                let authority = self
                    .authority
                    .as_ref()
                    .map(|a| format!(", :authority {a}"))
                    .unwrap_or_default();
                format!(
                    "{}: {name} (cluster {cluster}{authority}) by {}",
                    self.service, self.why
                )
            }
            None => format!("{}: {}", self.service, self.why),
        }
    }

    fn json(&self) -> Value {
        json!({
            "service": self.service,
            "upstream": self.upstream.as_ref().map(|(n, _)| n),
            "cluster": self.upstream.as_ref().map(|(_, c)| c),
            "authority": self.authority,
            "rule": self.rule,
            "by": if self.rule.is_some() { "rule" } else if self.upstream.is_some() { "strategy" } else { "unknown service" },
            "why": self.why,
        })
    }
}

/// What an edit changes, service by service.
pub struct Diff {
    old: Option<String>,
    new: String,
    /// Top-level fields that changed (`cluster_header`, ...).
    settings: Vec<String>,
    services: Vec<ServiceDiff>,
    /// The moment rollouts are compared at (`None`: not told).
    at: Option<At>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Removed,
    Changed,
    Unchanged,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

struct ServiceDiff {
    name: String,
    /// The service's name in the old config, when it was renamed (`renamed_from`).
    renamed_from: Option<String>,
    change: Change,
    strategy: (Option<String>, Option<String>),
    /// (upstream, share before, share after); `None`: not there.
    upstreams: Vec<(String, Option<f64>, Option<f64>)>,
    movement: Option<Movement>,
    /// Where the rollout stands, before and after, at the moment compared (`None`: no rollout
    /// on either side).
    rollout: Option<(Option<Moment>, Option<Moment>)>,
}

/// Compares `new` with `old` (`None`: nothing before), optionally one service only. Sticky
/// services (sticky before and after) get `keys` sample keys routed through both.
pub fn diff(old: Option<&Loaded>, new: &Loaded, only: Option<&str>, keys: u64) -> Diff {
    let mut settings = Vec::new();
    if let Some(old) = old {
        let (a, b) = (&old.plan, &new.plan);
        let shown = |h: &Option<String>| h.clone().unwrap_or_else(|| "(none)".to_owned());
        if a.headers.cluster != b.headers.cluster {
            settings.push(format!(
                "cluster_header {} → {}",
                shown(&a.headers.cluster),
                shown(&b.headers.cluster)
            ));
        }
        if a.headers.upstream != b.headers.upstream {
            settings.push(format!(
                "upstream_header {} → {}",
                shown(&a.headers.upstream),
                shown(&b.headers.upstream)
            ));
        }
        if a.service_from != b.service_from {
            settings.push(format!(
                "service_from {:?} → {:?}",
                a.service_from, b.service_from
            ));
        }
        if a.on_unknown_service != b.on_unknown_service {
            settings.push(format!(
                "on_unknown_service {:?} → {:?}",
                a.on_unknown_service, b.on_unknown_service
            ));
        }
    }
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    let mut services = Vec::new();
    // Old services compared under a new name: renamed, not removed.
    let mut renamed = Vec::new();
    for (n, service) in new.plan.services.iter().enumerate() {
        let before = old.and_then(|o| {
            o.service(&service.name)
                .or_else(|| {
                    let r = renamed_from(o, new, n)?;
                    renamed.push(r);
                    Some(r)
                })
                .map(|i| (o, i))
        });
        let old_name = before
            .and_then(|(o, i)| o.plan.services.get(i))
            .map(|s| s.name.as_str());
        if !wanted(&service.name) && !old_name.is_some_and(wanted) {
            continue;
        }
        services.push(service_diff(before, Some((new, n)), keys));
    }
    if let Some(old) = old {
        for (o, service) in old.plan.services.iter().enumerate() {
            if wanted(&service.name)
                && new.service(&service.name).is_none()
                && !renamed.contains(&o)
            {
                services.push(service_diff(Some((old, o)), None, keys));
            }
        }
    }
    Diff {
        old: old.map(|o| o.at.clone()),
        new: new.at.clone(),
        settings,
        services,
        at: None,
    }
}

/// The old service that new service `n` renames: one whose name the new config no longer has
/// and whose first host is the new one's. Requests to those hosts went to the old service and
/// go to the new one, so the two are compared, not shown as one removed and one added.
fn renamed_from(old: &Loaded, new: &Loaded, n: usize) -> Option<usize> {
    let hosts = |config: &Loaded, i: usize| {
        config
            .json(i)
            .and_then(|j| j.get("hosts"))
            .and_then(Value::as_array)
            .is_some_and(|h| !h.is_empty())
    };
    if !hosts(new, n) {
        return None;
    }
    old.plan.services.iter().enumerate().position(|(o, s)| {
        new.service(&s.name).is_none() && hosts(old, o) && old.key(o) == new.key(n)
    })
}

fn service_diff(
    old: Option<(&Loaded, usize)>,
    new: Option<(&Loaded, usize)>,
    keys: u64,
) -> ServiceDiff {
    fn get(side: Option<(&Loaded, usize)>) -> Option<&Service> {
        side.and_then(|(c, i)| c.plan.services.get(i))
    }
    let (before, after) = (get(old), get(new));
    let name = after.or(before).map_or(String::new(), |s| s.name.clone());
    let renamed_from = match (before, after) {
        (Some(b), Some(a)) if a.name != b.name => Some(b.name.clone()),
        _ => None,
    };
    // A renamed service is unchanged when nothing but its name changed.
    let unnamed = |side: Option<(&Loaded, usize)>| {
        side.and_then(|(c, i)| c.json(i)).map(|j| {
            let mut j = j.clone();
            if let Some(map) = j.as_object_mut() {
                map.remove("name");
            }
            j
        })
    };
    let change = match (old, new) {
        (None, _) => Change::Added,
        (_, None) => Change::Removed,
        _ if unnamed(old) == unnamed(new) => Change::Unchanged,
        _ => Change::Changed,
    };
    let shares = |s: Option<&Service>| -> Vec<(String, f64)> {
        s.map(|s| {
            let shares = expected_shares(&s.weights());
            s.upstreams
                .iter()
                .zip(shares)
                .map(|(u, x)| (u.name.clone(), x))
                .collect()
        })
        .unwrap_or_default()
    };
    let (was, now) = (shares(before), shares(after));
    let mut upstreams: Vec<(String, Option<f64>, Option<f64>)> = now
        .iter()
        .map(|(name, share)| {
            let earlier = was.iter().find(|(n, _)| n == name).map(|(_, x)| *x);
            (name.clone(), earlier, Some(*share))
        })
        .collect();
    for (name, share) in &was {
        if !now.iter().any(|(n, _)| n == name) {
            upstreams.push((name.clone(), Some(*share), None));
        }
    }
    let sticky =
        |s: Option<&Service>| s.is_some_and(|s| matches!(s.strategy, Strategy::Sticky { .. }));
    let movement = match (old, new) {
        (Some((o, i)), Some((n, j)))
            if (change == Change::Changed || renamed_from.is_some())
                && sticky(before)
                && sticky(after) =>
        {
            Some(movement(
                (&o.plan, i, o.key(i)),
                (&n.plan, j, n.key(j)),
                keys,
            ))
        }
        _ => None,
    };
    ServiceDiff {
        name,
        renamed_from,
        change,
        strategy: (before.map(strategy), after.map(strategy)),
        upstreams,
        movement,
        rollout: None,
    }
}

impl ServiceDiff {
    fn strategy_text(&self) -> String {
        match &self.strategy {
            (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
            (a, b) => b.clone().or_else(|| a.clone()).unwrap_or_default(),
        }
    }

    /// `v1 90.0 % → 70.0 %, v2 10.0 % → 30.0 %`; one share per upstream when nothing moved.
    fn shares_text(&self) -> String {
        self.upstreams
            .iter()
            .map(|(name, before, after)| match (before, after) {
                (Some(a), Some(b)) if self.change == Change::Added || a == b => {
                    format!("{name} {}", percent(*b))
                }
                (Some(a), Some(b)) => format!("{name} {} → {}", percent(*a), percent(*b)),
                (None, Some(b)) if self.change == Change::Added => {
                    format!("{name} {}", percent(*b))
                }
                (None, Some(b)) => format!("{name} (new) {}", percent(*b)),
                (Some(a), None) if self.change == Change::Removed => {
                    format!("{name} {}", percent(*a))
                }
                (Some(a), None) => format!("{name} {} (removed)", percent(*a)),
                (None, None) => name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn shares_changed(&self) -> bool {
        self.upstreams.iter().any(|(_, a, b)| a != b)
    }

    /// `reviews: shares at now (2026-12-01T10:12:00Z): old step 0, new step 1`.
    fn rollout_line(&self, at: At) -> Option<String> {
        let (old, new) = self.rollout.as_ref()?;
        // An offset from the start names a different time on each side when the starts differ.
        let first = old.as_ref().or(new.as_ref()).map(|m| m.time_ms);
        let last = new.as_ref().or(old.as_ref()).map(|m| m.time_ms);
        let each_time = first != last;
        let side = |m: &Option<Moment>| match m {
            None => "no rollout".to_owned(),
            Some(m) if each_time => format!("{} ({})", m.state.text(), rfc3339(m.time_ms)),
            Some(m) => m.state.text(),
        };
        let when = match (at, first) {
            (At::Time(_), _) | (_, None) => at.describe(),
            (_, Some(_)) if each_time => at.describe(),
            (_, Some(time)) => format!("{} ({})", at.describe(), rfc3339(time)),
        };
        Some(format!(
            "{}: shares at {when}: old {}, new {}",
            self.name,
            side(old),
            side(new)
        ))
    }

    fn lines(&self, at: Option<At>) -> Vec<String> {
        let head = match &self.renamed_from {
            Some(old) => format!(
                "{} (renamed from {old}, same hosts; {})",
                self.name,
                self.strategy_text()
            ),
            None => format!("{} ({})", self.name, self.strategy_text()),
        };
        let mut lines = vec![match self.change {
            Change::Added => format!("{head}: added: {}", self.shares_text()),
            Change::Removed => format!("{head}: removed (was {})", self.shares_text()),
            Change::Unchanged => format!("{head}: unchanged: {}", self.shares_text()),
            Change::Changed if self.shares_changed() => format!("{head}: {}", self.shares_text()),
            Change::Changed => format!(
                "{head}: {} (shares unchanged; other fields edited)",
                self.shares_text()
            ),
        }];
        if let Some(line) = at.and_then(|at| self.rollout_line(at)) {
            lines.push(line);
        }
        if let Some(m) = &self.movement {
            lines.push(format!("{}: {}", self.name, movement_text(m)));
        }
        lines
    }

    fn json(&self, at: Option<At>) -> Value {
        let movement = self.movement.as_ref().map(|m| {
            let fraction = |n: u64| n as f64 / m.keys.max(1) as f64;
            json!({
                "sampled": m.keys, "sample": if m.assigned { "assigned visitor ids" } else { "user-N" },
                "moved": m.moved, "fraction": fraction(m.moved),
                "moves": m.flows.iter().map(|(from, to, n)| json!({
                    "from": from, "to": to, "keys": n, "fraction": fraction(*n)})).collect::<Vec<_>>(),
                "renamed": m.renamed, "renamed_fraction": fraction(m.renamed),
                "renames": m.renames.iter().map(|(from, to, n)| json!({
                    "from": from, "to": to, "keys": n, "fraction": fraction(*n)})).collect::<Vec<_>>(),
            })
        });
        json!({
            "name": self.name,
            "renamed_from": self.renamed_from,
            "change": self.change.word(),
            "strategy": {"before": self.strategy.0, "after": self.strategy.1},
            "upstreams": self.upstreams.iter().map(|(name, before, after)| json!({
                "name": name, "before": before, "after": after})).collect::<Vec<_>>(),
            "keys": movement,
            "rollout": self.rollout.as_ref().map(|(old, new)| {
                let side = |m: &Option<Moment>| m.as_ref().map(|m| json!({
                    "time": rfc3339(m.time_ms), "offset_s": m.offset_ms as f64 / 1000.0,
                    "state": m.state.word(), "step": m.state.step(), "weights": m.weights,
                }));
                json!({"at": at.map(At::describe), "old": side(old), "new": side(new)})
            }),
        })
    }
}

/// `12.0 % of keys move: v1 → v2 11.9 %, v3 → v2 0.1 % (10000 sample keys)`.
fn movement_text(m: &Movement) -> String {
    let share = |n: u64| percent(n as f64 / m.keys.max(1) as f64);
    // Assigned visitors carry random ids: the sample is of such ids, not of known keys.
    let (what, sample) = if m.assigned {
        ("visitor", "sample visitor ids")
    } else {
        ("key", "sample keys")
    };
    let flows = |flows: &[(String, String, u64)]| {
        flows
            .iter()
            .map(|(from, to, n)| format!("{from} → {to} {}", share(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Keys on a renamed upstream with the same cluster do not move: their requests go where
    // they went.
    let renamed = if m.renamed == 0 {
        String::new()
    } else {
        format!(
            "; {} keep their cluster under another name: {}",
            share(m.renamed),
            flows(&m.renames)
        )
    };
    if m.moved == 0 {
        return format!("no {what} moves{renamed} ({} {sample})", m.keys);
    }
    format!(
        "{} of {what}s move: {}{renamed} ({} {sample})",
        share(m.moved),
        flows(&m.flows),
        m.keys
    )
}

impl Diff {
    /// Notes, for every service with a rollout before or after, where it stands at `at`: the
    /// moment its shares are compared at (the caller put those weights in force).
    pub fn with_rollouts(mut self, old: &Loaded, new: &Loaded, at: At, now_ms: u64) -> Self {
        for service in &mut self.services {
            let old_name = service.renamed_from.clone();
            let side = |config: &Loaded, name: &str| {
                let s = config.plan.services.get(config.service(name)?)?;
                moment(s, at.resolve(s.rollout.as_ref()?, now_ms))
            };
            let (before, after) = (
                side(old, old_name.as_deref().unwrap_or(&service.name)),
                side(new, &service.name),
            );
            if before.is_some() || after.is_some() {
                service.rollout = Some((before, after));
            }
        }
        self.at = Some(at);
        self
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for setting in &self.settings {
            let _ = writeln!(out, "{setting}");
        }
        for service in &self.services {
            for line in service.lines(self.at) {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "old": self.old, "new": self.new, "settings": self.settings,
            "at": self.at.map(At::describe),
            "services": self.services.iter().map(|s| s.json(self.at)).collect::<Vec<_>>(),
        })
    }

    /// The changes on one line, for `apply --watch`: changed services only.
    pub fn one_line(&self) -> String {
        let mut parts: Vec<String> = self.settings.clone();
        for service in self
            .services
            .iter()
            .filter(|s| s.change != Change::Unchanged || s.renamed_from.is_some())
        {
            let mut part = match service.change {
                Change::Added => format!("{} added: {}", service.name, service.shares_text()),
                Change::Removed => format!("{} removed", service.name),
                _ => match &service.renamed_from {
                    Some(old) => format!(
                        "{} (renamed from {old}): {}",
                        service.name,
                        service.shares_text()
                    ),
                    None => format!("{}: {}", service.name, service.shares_text()),
                },
            };
            if let Some(m) = service.movement.as_ref().filter(|m| m.moved > 0) {
                let _ = write!(
                    part,
                    ", {} of keys move",
                    percent(m.moved as f64 / m.keys.max(1) as f64)
                );
            }
            parts.push(part);
        }
        if parts.is_empty() {
            "no service changed".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::compile_text;
    use serde_json::json;

    fn config(services: Value) -> Loaded {
        compile_text("c", &json!({ "services": services }).to_string()).unwrap()
    }

    fn sticky(weights: &[(&str, u32)]) -> Value {
        json!({"name": "reviews", "strategy": "sticky", "hash_on": {"header": "x-user-id"},
               "upstreams": weights.iter().map(|(n, w)| json!({"name": n, "cluster": n, "weight": w})).collect::<Vec<_>>()})
    }

    fn weighted(name: &str, weights: &[(&str, u32)]) -> Value {
        json!({"name": name,
               "upstreams": weights.iter().map(|(n, w)| json!({"name": n, "cluster": n, "weight": w})).collect::<Vec<_>>()})
    }

    #[test]
    fn diff_gives_shares_before_and_after_and_the_keys_that_move() {
        let old = config(json!([sticky(&[("v1", 90), ("v2", 10)])]));
        let new = config(json!([sticky(&[("v1", 70), ("v2", 30)])]));
        let text = diff(Some(&old), &new, None, 2_000).text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "reviews (sticky on header x-user-id): v1 90.0 % → 70.0 %, v2 10.0 % → 30.0 %"
        );
        assert!(lines[1].starts_with("reviews: "), "{text}");
        assert!(lines[1].contains(" of keys move: v1 → v2 "), "{text}");
        assert!(lines[1].ends_with("(2000 sample keys)"), "{text}");
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn a_renamed_upstream_on_the_same_cluster_moves_no_key_to_it() {
        let named = |a: &str| {
            json!({"name": "reviews", "strategy": "sticky", "hash_on": {"header": "x-user-id"},
                   "upstreams": [{"name": a, "cluster": "reviews-v1", "weight": 50},
                                 {"name": "v2", "cluster": "reviews-v2", "weight": 50}]})
        };
        let old = config(json!([named("v1")]));
        let new = config(json!([named("stable")]));
        let d = diff(Some(&old), &new, None, 2_000);
        let json = d.json();
        let keys = &json["services"][0]["keys"];
        let (moved, renamed) = (keys["moved"].as_u64(), keys["renamed"].as_u64());
        // The new name hashes differently, so keys change upstream name; the ones that stay
        // on reviews-v1 are renamed, not moved, and only keys between the clusters move.
        let (moved, renamed) = (moved.unwrap_or(0), renamed.unwrap_or(0));
        assert!(renamed > 500, "{json:#}");
        let moves = keys["moves"].as_array().map(Vec::len).unwrap_or(0);
        assert!(moves <= 2, "{json:#}");
        let text = d.text();
        assert!(
            text.contains("keep their cluster under another name: v1 → stable"),
            "{text}"
        );
        // Each sampled key is either unchanged, renamed or moved, and every moved key changed
        // cluster.
        for m in keys["moves"].as_array().into_iter().flatten() {
            assert_ne!(
                (m["from"].as_str(), m["to"].as_str()),
                (Some("v1"), Some("stable"))
            );
        }
        assert!(moved + renamed <= 2_000);
    }

    #[test]
    fn diff_of_an_assigned_cookie_shows_the_share_of_visitor_ids_that_move() {
        let assigned = |weights: &[(&str, u32)]| {
            let mut service = sticky(weights);
            service["hash_on"] = json!({"cookie": "mesh-web"});
            service["assign_cookie"] = json!({});
            service
        };
        let old = config(json!([assigned(&[("v1", 90), ("v2", 10)])]));
        let new = config(json!([assigned(&[("v1", 70), ("v2", 30)])]));
        let text = diff(Some(&old), &new, None, 4_000).text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("reviews (sticky on cookie mesh-web, assigned): "),
            "{text}"
        );
        assert!(lines[1].contains(" of visitors move: v1 → v2 "), "{text}");
        assert!(lines[1].ends_with("(4000 sample visitor ids)"), "{text}");
        let json = diff(Some(&old), &new, None, 4_000).json();
        let keys = &json["services"][0]["keys"];
        assert_eq!(keys["sample"], "assigned visitor ids");
        assert!(
            (0.17..0.23).contains(&keys["fraction"].as_f64().unwrap()),
            "{json}"
        );
    }

    #[test]
    fn diff_json_has_the_moved_fraction() {
        let old = config(json!([sticky(&[("v1", 90), ("v2", 10)])]));
        let new = config(json!([sticky(&[("v1", 70), ("v2", 30)])]));
        let json = diff(Some(&old), &new, None, 4_000).json();
        let keys = &json["services"][0]["keys"];
        let fraction = keys["fraction"].as_f64().unwrap();
        // P(v2) goes from 10 % to 30 %: a fifth of the keys move.
        assert!((0.17..0.23).contains(&fraction), "{json}");
        assert_eq!(keys["moves"][0]["from"], "v1");
        assert_eq!(
            json["services"][0]["upstreams"][1],
            json!({"name": "v2", "before": 0.1, "after": 0.3})
        );
    }

    #[test]
    fn added_removed_and_unchanged_services_are_told_apart() {
        let old = config(json!([
            weighted("a", &[("v1", 1)]),
            weighted("gone", &[("v1", 1)])
        ]));
        let new = config(json!([
            weighted("a", &[("v1", 1)]),
            weighted("b", &[("v1", 3), ("v2", 1)])
        ]));
        let d = diff(Some(&old), &new, None, 10);
        assert_eq!(
            d.text(),
            "a (weighted): unchanged: v1 100.0 %\n\
             b (weighted): added: v1 75.0 %, v2 25.0 %\n\
             gone (weighted): removed (was v1 100.0 %)\n"
        );
        assert_eq!(d.one_line(), "b added: v1 75.0 %, v2 25.0 %; gone removed");
    }

    #[test]
    fn a_service_renamed_with_its_hosts_is_compared_not_removed_and_added() {
        let hosted = |name: &str, host: &str, weights: &[(&str, u32)]| {
            let mut service = weighted(name, weights);
            service["hosts"] = json!([host]);
            service
        };
        let old = config(json!([
            hosted("reviews", "reviews", &[("v1", 1), ("v2", 1)]),
            weighted("plain", &[("v1", 1)])
        ]));
        let new = config(json!([
            hosted("reviews-v2", "reviews", &[("v1", 3), ("v2", 1)]),
            weighted("plain-v2", &[("v1", 1)])
        ]));
        let d = diff(Some(&old), &new, None, 10);
        assert_eq!(
            d.text(),
            "reviews-v2 (renamed from reviews, same hosts; weighted): v1 50.0 % → 75.0 %, \
             v2 50.0 % → 25.0 %\n\
             plain-v2 (weighted): added: v1 100.0 %\n\
             plain (weighted): removed (was v1 100.0 %)\n"
        );
        assert!(d
            .one_line()
            .starts_with("reviews-v2 (renamed from reviews): v1 50.0 % → 75.0 %"));
    }

    #[test]
    fn edits_that_keep_the_shares_say_so() {
        let old = config(json!([weighted("a", &[("v1", 1), ("v2", 1)])]));
        let new = config(json!([weighted("a", &[("v1", 2), ("v2", 2)])]));
        assert_eq!(
            diff(Some(&old), &new, None, 10).text(),
            "a (weighted): v1 50.0 %, v2 50.0 % (shares unchanged; other fields edited)\n"
        );
    }

    #[test]
    fn upstreams_added_and_removed_are_marked() {
        let old = config(json!([weighted("a", &[("v1", 1), ("v2", 1)])]));
        let new = config(json!([weighted("a", &[("v1", 1), ("v3", 3)])]));
        assert_eq!(
            diff(Some(&old), &new, None, 10).text(),
            "a (weighted): v1 50.0 % → 25.0 %, v3 (new) 75.0 %, v2 50.0 % (removed)\n"
        );
    }

    #[test]
    fn nothing_before_is_all_added() {
        let new = config(json!([weighted("a", &[("v1", 1)])]));
        assert_eq!(diff(None, &new, None, 10).one_line(), "a added: v1 100.0 %");
    }

    /// 2026-12-01T10:00:00Z.
    const START: u64 = 1_796_119_200_000;

    const NO_CLOCK: Clock = Clock {
        now_ms: START,
        at: None,
    };

    fn rollout(interpolate: bool) -> Value {
        json!({"name": "reviews", "upstreams": [
                {"name": "v1", "cluster": "reviews_v1", "weight": 100},
                {"name": "v2", "cluster": "reviews_v2", "weight": 0}],
               "guard": {"error_rate": 0.25, "window_s": 20},
               "rollout": {"start": "2026-12-01T10:00:00Z", "interpolate": interpolate, "steps": [
                   {"at_s": 0, "weights": {"v1": 99, "v2": 1}},
                   {"at_s": 600, "weights": {"v1": 75, "v2": 25}},
                   {"at_s": 1800, "weights": {"v2": 100}}]}})
    }

    #[test]
    fn a_latency_guard_is_shown_in_text_and_json() {
        let c = config(json!([{"name": "web", "upstreams": [
                {"name": "v1", "cluster": "web_v1", "weight": 90},
                {"name": "v2", "cluster": "web_v2", "weight": 10}],
               "guard": {"latency": {"percentile": 99.9, "threshold_ms": 250}}}]));
        let preview = ServicePreview::simulate(&c, 0, 100, 1, NO_CLOCK).unwrap();
        let text = preview.text();
        assert!(
            text.contains("  guard: ejects an upstream with p99.9 above 250 ms over 10 s"),
            "{text}"
        );
        let guard = &preview.json()["guard"];
        assert_eq!(guard["error_rate"], Value::Null);
        assert_eq!(
            guard["latency"],
            json!({"percentile": 99.9, "threshold_ms": 250})
        );
    }

    #[test]
    fn a_rollout_prints_its_timeline_and_marks_now() {
        let c = config(json!([rollout(false)]));
        let clock = Clock {
            now_ms: START + 720_000,
            at: None,
        };
        let text = ServicePreview::simulate(&c, 0, 100, 1, clock)
            .unwrap()
            .text();
        let expected =
            "  guard: ejects an upstream above 25 % errors over 20 s (at least 20 requests) \
            for 30 s, doubling on repeat; at most 50 % of the weight (not simulated: no simulated \
            request fails)
  rollout: 3 steps from 2026-12-01T10:00:00Z
    step  time                  offset           v1             v2
    0     2026-12-01T10:00:00Z  +0s     99 (99.0 %)      1 (1.0 %)
    1     2026-12-01T10:10:00Z  +10m    75 (75.0 %)    25 (25.0 %)  ← now
    2     2026-12-01T10:30:00Z  +30m      0 (0.0 %)  100 (100.0 %)
  now 2026-12-01T10:12:00Z (+12m): step 1, until step 2 at 2026-12-01T10:30:00Z
  the table above simulates the configured weights; --at TIME simulates another moment
";
        assert!(text.ends_with(expected), "{text}");
        // The table is the configured weights.
        assert!(
            text.contains("  v1        reviews_v1      100   100.0 %    100.0 %\n"),
            "{text}"
        );
    }

    #[test]
    fn at_puts_that_moments_weights_in_force_and_shows_the_midpoints() {
        let c = config(json!([rollout(true)]));
        let clock = Clock {
            now_ms: START - 1000,
            at: Some(At::FromStart(1_200_000)),
        };
        put_in_force(&c.plan.services, At::FromStart(1_200_000), clock.now_ms);
        let text = ServicePreview::simulate(&c, 0, 100, 1, clock)
            .unwrap()
            .text();
        assert!(
            text.contains("  v1        reviews_v1       37    37.0 %"),
            "{text}"
        );
        assert!(
            text.contains("    midway  2026-12-01T10:20:00Z  +20m    37 (37.0 %)    63 (63.0 %)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "    1       2026-12-01T10:10:00Z  +10m    75 (75.0 %)    25 (25.0 %)  ← --at\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  now 2026-12-01T09:59:59Z (-1s): not started; the configured weights apply until 2026-12-01T10:00:00Z\n"),
            "{text}"
        );
        assert!(
            text.ends_with("  --at 2026-12-01T10:20:00Z (+20m): between step 1 and step 2, weights v1 37, v2 63; simulated in the table above\n"),
            "{text}"
        );
    }

    #[test]
    fn against_compares_rollouts_at_one_moment_and_says_so() {
        let old = config(json!([rollout(false)]));
        let mut edited = rollout(false);
        edited["rollout"]["steps"][1]["weights"] = json!({"v1": 50, "v2": 50});
        let new = config(json!([edited]));
        let at = At::Time(START + 900_000);
        for c in [&old, &new] {
            put_in_force(&c.plan.services, at, 0);
        }
        let d = diff(Some(&old), &new, None, 10).with_rollouts(&old, &new, at, 0);
        assert_eq!(
            d.text(),
            "reviews (weighted): v1 75.0 % → 50.0 %, v2 25.0 % → 50.0 %\n\
             reviews: shares at 2026-12-01T10:15:00Z: old step 1, new step 1\n"
        );
        let json = d.json();
        assert_eq!(
            json["services"][0]["rollout"]["new"]["weights"],
            json!([50, 50])
        );
    }

    #[test]
    fn preview_lists_rules_and_the_round_robin_cycle() {
        let c = config(json!([{"name": "rr", "strategy": "round_robin",
            "upstreams": [{"name": "a", "cluster": "ca", "weight": 5},
                          {"name": "b", "cluster": "cb", "weight": 1},
                          {"name": "c", "cluster": "cc", "weight": 1}],
            "rules": [{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "c"}]}]));
        let text = ServicePreview::simulate(&c, 0, 700, 1, NO_CLOCK)
            .unwrap()
            .text();
        assert!(
            text.contains("  rule 0: header x-canary = \"true\" -> c (cc)\n"),
            "{text}"
        );
        assert!(
            text.contains("  first cycle (7 requests): a a b a c a a\n"),
            "{text}"
        );
        assert!(
            text.contains("  a         ca             5    71.4 %     71.4 %\n"),
            "{text}"
        );
    }
}
