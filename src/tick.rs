//! What the housekeeping tick does to a plan's weights: the rollout's weights in force, and the
//! guard's accounting and ejections, aggregated across all workers through shared data. Read
//! the clock here, once a tick, never per request.
//!
//! Shared data (per `vm_id`, so per Envoy): for each guarded upstream, one bucket per second of
//! the window (`…/b<slot>`: second, requests, failures) and its ejection state (`…/state`).
//! Every VM adds its own outcomes to the current second's bucket, reads the window, and applies
//! the guard's decision with compare-and-swap: the VM whose write lands logs the change and
//! counts it, so each ejection is logged and counted once.

use crate::guard::{admitted_weights, window_totals, Bucket, Change, Ejection, Guard, Seen};
use crate::host::{create_shared, Host, SharedWrite};
use crate::plan::{stat_segment, Plan, Service};
use crate::rollout::Phase;

/// Per-VM tick state of one service with a guard or a rollout.
#[derive(Debug, Clone, Default)]
struct ServiceTick {
    /// Outcomes seen by this VM since its last tick, per upstream: (requests, failures).
    pending: Box<[(u64, u64)]>,
    /// Gauge ids and last values set: ejected per upstream, then the rollout pause.
    ejected_gauges: Box<[Option<(u32, u64)>]>,
    paused_gauge: Option<(u32, u64)>,
}

/// Per-VM tick state of one plan.
#[derive(Debug, Clone, Default)]
pub struct PlanTick {
    services: Box<[ServiceTick]>,
}

/// Whether the service has anything for the tick to do.
fn scheduled(service: &Service) -> bool {
    service.guard.is_some() || service.rollout.is_some()
}

impl PlanTick {
    pub fn new(plan: &Plan) -> Self {
        Self {
            services: plan
                .services
                .iter()
                .map(|s| {
                    if !scheduled(s) {
                        return ServiceTick::default();
                    }
                    let n = s.upstreams.len();
                    ServiceTick {
                        pending: vec![(0, 0); n].into(),
                        ejected_gauges: vec![None; n].into(),
                        paused_gauge: None,
                    }
                })
                .collect(),
        }
    }

    /// A stream of a guarded service ended: `failed` as [`crate::guard::outcome`] says.
    pub fn record_outcome(&mut self, service: usize, upstream: usize, failed: bool) {
        let slot = self
            .services
            .get_mut(service)
            .and_then(|s| s.pending.get_mut(upstream));
        if let Some((requests, failures)) = slot {
            *requests += 1;
            *failures += u64::from(failed);
        }
    }

    /// Puts in force the weights of every service with a rollout or a guard, at Unix time
    /// `now_ms`.
    pub fn run<H: Host + ?Sized>(&mut self, plan: &Plan, plugin: &str, host: &H, now_ms: u64) {
        let now_s = now_ms / 1000;
        for (service, state) in plan.services.iter().zip(self.services.iter_mut()) {
            if !scheduled(service) {
                continue;
            }
            let mut weights: Vec<u32> = match service.rollout.as_ref().map(|r| r.at(now_ms)) {
                Some(Phase::Weights(w)) => w.into_owned(),
                _ => service.configured_weights().to_vec(),
            };
            let mut paused = false;
            if let Some(guard) = &service.guard {
                let keys = GuardKeys::new(plugin, service);
                let ejections = guard_tick(guard, &keys, service, state, &weights, host, now_s);
                if let Some(frozen) = paused_weights(service, &weights, &ejections, now_s) {
                    weights = frozen;
                    paused = true;
                }
                let admitted = admitted_weights(&weights, &ejections, now_s);
                if admitted.iter().any(|&w| w > 0) {
                    weights = admitted;
                }
                for (u, ejection) in ejections.iter().enumerate() {
                    let value = u64::from(ejection.is_ejected(now_s));
                    if let Some(gauge) = state.ejected_gauges.get_mut(u) {
                        set_gauge(host, gauge, value, || keys.stat(u, "ejected"));
                    }
                }
            }
            if service.rollout.is_some() && service.guard.is_some() {
                set_gauge(host, &mut state.paused_gauge, u64::from(paused), || {
                    format!(
                        "meshsplit.{}.{}.rollout_paused",
                        stat_segment(plugin),
                        stat_segment(&service.name)
                    )
                });
            }
            service.set_weights(&weights);
        }
    }
}

/// Sets a gauge when its value changed (defining it the first time).
fn set_gauge<H: Host + ?Sized>(
    host: &H,
    gauge: &mut Option<(u32, u64)>,
    value: u64,
    name: impl FnOnce() -> String,
) {
    match gauge {
        Some((_, last)) if *last == value => {}
        Some((id, last)) => {
            host.set_gauge(*id, value);
            *last = value;
        }
        None => {
            if let Some(id) = host.define_gauge(&name()) {
                host.set_gauge(id, value);
                *gauge = Some((id, value));
            }
        }
    }
}

/// If a rollout is raising an upstream that the guard ejected, the rollout pauses: the weights
/// of the moment the (earliest such) ejection began, until the upstream is readmitted.
fn paused_weights(
    service: &Service,
    weights: &[u32],
    ejections: &[Ejection],
    now_s: u64,
) -> Option<Vec<u32>> {
    let rollout = service.rollout.as_ref()?;
    let since_s = ejections
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_ejected(now_s))
        .filter_map(|(u, e)| {
            let then = match rollout.at(e.since_s.saturating_mul(1000)) {
                Phase::Weights(w) => w.get(u).copied(),
                Phase::NotStarted => service.configured_weights().get(u).copied(),
            }?;
            (weights.get(u).copied()? > then).then_some(e.since_s)
        })
        .min()?;
    Some(match rollout.at(since_s.saturating_mul(1000)) {
        Phase::Weights(w) => w.into_owned(),
        Phase::NotStarted => service.configured_weights().to_vec(),
    })
}

/// Shared-data keys and stat names of one guarded service's upstreams. Names are
/// length-prefixed, so no choice of names makes two keys equal.
struct GuardKeys {
    prefixes: Vec<String>,
    stats: Vec<String>,
}

impl GuardKeys {
    fn new(plugin: &str, service: &Service) -> Self {
        let prefixes = service
            .upstreams
            .iter()
            .map(|u| {
                format!(
                    "meshsplit/guard/{}:{plugin}/{}:{}/{}:{}",
                    plugin.len(),
                    service.name.len(),
                    service.name,
                    u.name.len(),
                    u.name
                )
            })
            .collect();
        let stats = service
            .upstreams
            .iter()
            .map(|u| {
                format!(
                    "meshsplit.{}.{}.{}",
                    stat_segment(plugin),
                    stat_segment(&service.name),
                    stat_segment(&u.name)
                )
            })
            .collect();
        Self { prefixes, stats }
    }

    fn bucket(&self, upstream: usize, slot: u64) -> String {
        format!("{}/b{slot}", self.prefix(upstream))
    }

    fn state(&self, upstream: usize) -> String {
        format!("{}/state", self.prefix(upstream))
    }

    fn prefix(&self, upstream: usize) -> &str {
        self.prefixes.get(upstream).map_or("", String::as_str)
    }

    fn stat(&self, upstream: usize, what: &str) -> String {
        format!(
            "{}.{what}",
            self.stats.get(upstream).map_or("", String::as_str)
        )
    }
}

/// An upstream's ejection state and its CAS token. The state is created (not ejected) when it
/// does not exist yet, so that a decision is always a compare-and-swap: with token 0 a write
/// would be unconditional, and two workers could both land the same ejection. One read when it
/// exists.
fn read_state<H: Host + ?Sized>(host: &H, key: &str) -> Option<(Ejection, u32)> {
    host.shared_data(key)
        .or_else(|| {
            create_shared(host, key, &Ejection::default().encode());
            host.shared_data(key)
        })
        .map(|(bytes, cas)| (Ejection::decode(&bytes), cas))
}

/// Creates the ejection state of every guarded upstream of `plan` that has none, before any
/// worker decides (the native build calls this with the configuration; the wasm build's
/// configure runs a tick, which does the same).
pub fn create_guard_states<H: Host + ?Sized>(plan: &Plan, plugin: &str, host: &H) {
    for service in plan.services.iter().filter(|s| s.guard.is_some()) {
        let keys = GuardKeys::new(plugin, service);
        for u in 0..service.upstreams.len() {
            read_state(host, &keys.state(u));
        }
    }
}

/// Adds this VM's outcomes to the shared buckets, reads every upstream's window and ejection
/// state, applies the guard's decision, and returns the ejection states in force.
fn guard_tick<H: Host + ?Sized>(
    guard: &Guard,
    keys: &GuardKeys,
    service: &Service,
    state: &mut ServiceTick,
    weights: &[u32],
    host: &H,
    now_s: u64,
) -> Vec<Ejection> {
    let slot_now = crate::guard::slot(now_s, guard.window_s);
    let mut seen = Vec::with_capacity(service.upstreams.len());
    let mut tokens = Vec::with_capacity(service.upstreams.len());
    for u in 0..service.upstreams.len() {
        if let Some(pending) = state.pending.get_mut(u) {
            if pending.0 > 0 {
                let key = keys.bucket(u, slot_now);
                let (requests, failures) = *pending;
                if update(host, &key, |b| {
                    Bucket::decode(b)
                        .add(now_s, requests, failures)
                        .encode()
                        .to_vec()
                }) {
                    *pending = (0, 0);
                }
            }
        }
        let buckets: Vec<Bucket> = (0..guard.window_s)
            .filter_map(|slot| host.shared_data(&keys.bucket(u, slot)))
            .map(|(bytes, _)| Bucket::decode(&bytes))
            .collect();
        let (ejection, token) = match read_state(host, &keys.state(u)) {
            Some((ejection, cas)) => (ejection, Some(cas)),
            None => (Ejection::default(), None),
        };
        let (requests, failures) = window_totals(&buckets, now_s, guard.window_s, ejection.until_s);
        seen.push(Seen {
            weight: weights.get(u).copied().unwrap_or(0),
            requests,
            failures,
            ejection,
        });
        tokens.push(token);
    }
    let mut states: Vec<Ejection> = seen.iter().map(|s| s.ejection).collect();
    for change in guard.decide(now_s, &seen) {
        let (upstream, new) = match change {
            Change::Eject {
                upstream, state, ..
            }
            | Change::Readmit { upstream, state }
            | Change::Forgive { upstream, state } => (upstream, state),
        };
        // Without a token (no shared data) no write could be told apart from another worker's.
        let Some(token) = tokens.get(upstream).copied().flatten() else {
            continue;
        };
        let written = host.set_shared_data(&keys.state(upstream), &new.encode(), token);
        if written != SharedWrite::Written {
            // Another worker decided first; its state shows on the next tick.
            continue;
        }
        if let Some(slot) = states.get_mut(upstream) {
            *slot = new;
        }
        let name = service
            .upstreams
            .get(upstream)
            .map_or("", |u| u.name.as_str());
        match change {
            Change::Eject {
                rate,
                requests,
                state,
                ..
            } => {
                // Percentages as integers: formatting floats would cost the module ~10 KB.
                log::warn!(
                    "guard: ejected {}/{name} for {} s: {} % of {requests} requests failed \
                     in the last {} s (error_rate {} %); ejection {} in a row",
                    service.name,
                    state.until_s.saturating_sub(state.since_s),
                    percent(rate),
                    guard.window_s,
                    percent(guard.error_rate),
                    state.times + 1
                );
                if let Some(id) = host.define_counter(&keys.stat(upstream, "ejections_total")) {
                    host.increment_counter(id, 1);
                }
            }
            Change::Readmit { state, .. } => log::info!(
                "guard: readmitted {}/{name} after {} s",
                service.name,
                state.until_s.saturating_sub(state.since_s)
            ),
            Change::Forgive { .. } => {}
        }
    }
    states
}

/// A fraction as a whole percentage, rounded.
fn percent(fraction: f64) -> u64 {
    (fraction * 100.0).round() as u64
}

/// Read-modify-write of a shared-data value with compare-and-swap; returns whether it landed.
fn update<H: Host + ?Sized>(host: &H, key: &str, change: impl Fn(&[u8]) -> Vec<u8>) -> bool {
    for _ in 0..16 {
        // Created empty first: a change written with token 0 would be unconditional, and could
        // overwrite another worker's.
        let Some((current, cas)) = host.shared_data(key) else {
            if !create_shared(host, key, &[]) {
                return false;
            }
            continue;
        };
        match host.set_shared_data(key, &change(&current), cas) {
            SharedWrite::Written => return true,
            SharedWrite::CasMismatch => continue,
            SharedWrite::Failed => return false,
        }
    }
    false
}

#[cfg(test)]
#[path = "tick_tests.rs"]
mod tests;
