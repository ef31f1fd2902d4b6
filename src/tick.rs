//! What the housekeeping tick does to a plan's weights: the rollout's weights in force, and the
//! guard's accounting and ejections, aggregated across all workers through shared data. Read
//! the clock here, once a tick, never per request.
//!
//! Shared data (per `vm_id`, so per Envoy): one record per guarded service
//! ([`crate::guard_record`]) with every upstream's window and ejection state. On its tick a VM
//! reads the record, adds its own outcomes, and, when its plan belongs to the newest
//! configuration of the plugin, applies the guard's decision; all of it is written back with
//! one compare-and-swap, retried from a fresh read when another VM wrote first. So a decision
//! for a service is taken on one consistent snapshot, and the VM whose write lands logs and
//! counts it: each ejection is logged and counted once.
//!
//! Two clocks: rollouts follow the wall clock (their schedule is wall time); the guard's windows
//! and ejections follow the monotonic clock, which a change of the wall clock does not move.

use crate::guard::{
    admitted_weights, slice_ms, window_totals, Bucket, Change, Counts, Ejection, Guard, Outcome,
    Read, Reason, Seen, WINDOW_SLICES,
};
use crate::guard_record::{claim_generation, claim_generation_at, newest_generation, Record};
use crate::host::{create_shared, Host, SharedWrite};
use crate::plan::{stat_segment, Plan, Service};
use crate::rollout::Phase;

/// The two clocks a tick reads once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix time in milliseconds: rollout schedules.
    pub wall_ms: u64,
    /// Milliseconds of a monotonic clock shared by every worker of one Envoy: the guard.
    pub monotonic_ms: u64,
}

/// Milliseconds since this process first asked: monotonic, and shared by its threads (the
/// native build's workers).
pub fn process_monotonic_ms() -> u64 {
    process_monotonic_ms_at(std::time::Instant::now())
}

/// [`process_monotonic_ms`] at `at`, an instant read already.
pub fn process_monotonic_ms_at(at: std::time::Instant) -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(*start).as_millis()).unwrap_or(u64::MAX)
}

/// Streams per upstream whose outcome a VM reads between two of its ticks before it samples:
/// 32 a second per worker and upstream at the wasm build's 500 ms tick. (None in the benchmark's
/// `bench-sampled` build, which measures the sampled path.)
pub const OBSERVED_PER_TICK: u32 = if cfg!(feature = "bench-sampled") {
    0
} else {
    16
};
/// Past [`OBSERVED_PER_TICK`], one stream in this many has its outcome read, counted this many
/// times. In the wasm build a read costs a host call that re-enters the VM to allocate (about
/// 12 k instructions, `bench/README.md`), several times meshsplit's own cost per request.
pub const SAMPLE_ONE_IN: u32 = 16;

/// Per-VM tick state of one service with a guard or a rollout.
#[derive(Debug, Clone, Default)]
struct ServiceTick {
    /// Outcomes seen by this VM since its last tick, per upstream, each sampled outcome
    /// counted for the streams it stands for: filed in the slice of the tick that adds them.
    pending: Box<[Counts]>,
    /// The same, stamped with the slice (of this plan's guard) in which each outcome happened:
    /// they count in that slice's window however late the next tick comes (the native build,
    /// whose workers tick only from their streams).
    stamped: Box<[[Bucket; WINDOW_SLICES]]>,
    /// Streams per upstream chosen for an outcome read since this VM's last tick.
    observing: Box<[u32]>,
    /// Gauge ids and last values set: ejected per upstream, then the rollout pause.
    ejected_gauges: Box<[Option<(u32, u64)>]>,
    paused_gauge: Option<(u32, u64)>,
    /// The weight in force per upstream (every service has these).
    weight_gauges: Box<[Option<(u32, u64)>]>,
    /// The guard's, to judge outcomes (`None`: not guarded).
    guard: Option<Guard>,
    /// The ejection states of the last tick that read the record: kept in force when a tick
    /// cannot read or write it (its compare-and-swap gave up, or a write failed), so an ejected
    /// upstream never gets traffic back for a tick by accident.
    last_ejections: Vec<Ejection>,
}

/// Per-VM tick state of one plan.
#[derive(Debug, Clone, Default)]
pub struct PlanTick {
    services: Box<[ServiceTick]>,
    /// The generation of the plan's configuration ([`claim`]); only the newest decides.
    generation: Option<u64>,
    /// The generation of the plan's configuration among those that set the plugin's weight
    /// gauges ([`claim_gauges`]); only the newest sets them. `None`: nobody to defer to.
    gauge_generation: Option<u64>,
    /// Whether the weight gauges of services without a rollout or a guard were set: once, on
    /// the first tick of the plan (their weights never change for the life of the plan).
    published: bool,
    /// Whether this plan's guard decisions leave ejections to others (it readmits, forgives
    /// and sets gauges): a tick of a thread that sees no streams and cannot count ejections.
    never_ejects: bool,
}

/// Whether the service has anything for the tick to do.
fn scheduled(service: &Service) -> bool {
    service.guard.is_some() || service.rollout.is_some()
}

impl PlanTick {
    /// The tick state of `plan`, whose configuration has `generation` ([`claim`]).
    pub fn new(plan: &Plan, generation: Option<u64>) -> Self {
        Self {
            generation,
            gauge_generation: None,
            published: false,
            never_ejects: false,
            services: plan
                .services
                .iter()
                .map(|s| {
                    let n = s.upstreams.len();
                    let weight_gauges = vec![None; n].into();
                    if !scheduled(s) {
                        return ServiceTick {
                            weight_gauges,
                            ..ServiceTick::default()
                        };
                    }
                    ServiceTick {
                        pending: vec![Counts::default(); n].into(),
                        stamped: vec![[Bucket::default(); WINDOW_SLICES]; n].into(),
                        observing: vec![0; n].into(),
                        ejected_gauges: vec![None; n].into(),
                        paused_gauge: None,
                        weight_gauges,
                        guard: s.guard.clone(),
                        last_ejections: Vec::new(),
                    }
                })
                .collect(),
        }
    }

    /// The same, with the generation its configuration took among the plugin's configurations
    /// that set weight gauges ([`claim_gauges`]).
    pub fn with_gauge_generation(self, gauge_generation: Option<u64>) -> Self {
        Self {
            gauge_generation,
            ..self
        }
    }

    /// From now on this plan's ticks never eject (see `never_ejects`).
    pub fn never_eject(&mut self) {
        self.never_ejects = true;
    }

    /// Whether the outcome of a stream of `service` just routed to `upstream` is to be read,
    /// as the number of streams it will count for (0: not read, or the service has no guard).
    /// Every stream up to [`OBSERVED_PER_TICK`] per upstream between two ticks; past that, one
    /// in [`SAMPLE_ONE_IN`] (`draw` is a uniform random number), counted that many times, so the
    /// window's totals stay unbiased while the reads per second stay bounded at high rates.
    pub fn observe(&mut self, service: usize, upstream: usize, draw: impl FnOnce() -> u32) -> u32 {
        let Some(state) = self.services.get_mut(service) else {
            return 0;
        };
        if state.guard.is_none() {
            return 0;
        }
        let Some(observing) = state.observing.get_mut(upstream) else {
            return 0;
        };
        if *observing < OBSERVED_PER_TICK {
            *observing += 1;
            return 1;
        }
        if draw() % SAMPLE_ONE_IN == 0 {
            SAMPLE_ONE_IN
        } else {
            0
        }
    }

    /// Whether the streams of `service` that [`PlanTick::observe`] chose are to be timed: its
    /// guard has a latency condition or counts abandoned requests ([`Guard::times_streams`]).
    pub fn timed(&self, service: usize) -> bool {
        self.services
            .get(service)
            .and_then(|s| s.guard.as_ref())
            .is_some_and(Guard::times_streams)
    }

    /// A stream of a guarded service ended with `outcome` ([`crate::guard::outcome`]), judged
    /// by the service's guard; it counts for `streams` streams ([`PlanTick::observe`]).
    pub fn record_outcome(
        &mut self,
        service: usize,
        upstream: usize,
        outcome: Outcome,
        streams: u32,
    ) {
        self.record_timed_outcome(service, upstream, outcome, streams, None);
    }

    /// [`PlanTick::record_outcome`] of a stream that took `elapsed_ms` from its request headers
    /// to its end (`None`: not timed), judged by a latency guard too.
    pub fn record_timed_outcome(
        &mut self,
        service: usize,
        upstream: usize,
        outcome: Outcome,
        streams: u32,
        elapsed_ms: Option<u64>,
    ) {
        self.record_outcome_at(service, upstream, outcome, streams, elapsed_ms, None);
    }

    /// [`PlanTick::record_timed_outcome`] of a stream that ended at `at_ms` on the guard's
    /// monotonic clock (`None`: at the next tick): it counts in the window of that moment.
    pub fn record_outcome_at(
        &mut self,
        service: usize,
        upstream: usize,
        outcome: Outcome,
        streams: u32,
        elapsed_ms: Option<u64>,
        at_ms: Option<u64>,
    ) {
        let Some(state) = self.services.get_mut(service) else {
            return;
        };
        let Some(guard) = &state.guard else {
            return;
        };
        let Some(verdict) = guard.judge(outcome, elapsed_ms) else {
            return;
        };
        let n = u64::from(streams);
        let (failed, slow) = (u64::from(verdict.failed), u64::from(verdict.slow));
        let counts = Counts {
            requests: n,
            failures: failed * n,
            slow: slow * n,
            read: Read {
                requests: 1,
                failures: failed,
                slow,
            },
        };
        match at_ms {
            None => {
                if let Some(pending) = state.pending.get_mut(upstream) {
                    *pending = pending.plus(counts);
                }
            }
            Some(ms) => {
                let slice = ms / slice_ms(guard.window_s);
                let at = usize::try_from(slice % WINDOW_SLICES as u64).unwrap_or(0);
                if let Some(bucket) = state.stamped.get_mut(upstream).and_then(|r| r.get_mut(at)) {
                    // A bucket of an older slice (out of the window by now) starts afresh.
                    *bucket = bucket.add(slice, counts);
                }
            }
        }
    }

    /// Puts in force the weights of every service with a rollout or a guard at `now`, and sets
    /// the weight gauges: those of services with a rollout or a guard when their weights in
    /// force change, the others once, on the plan's first tick. Only the plugin's newest
    /// configuration sets them (for a guarded service, the one that decides for its guard).
    pub fn run<H: Host + ?Sized>(&mut self, plan: &Plan, plugin: &str, host: &H, now: Now) {
        let now_ms = now.monotonic_ms;
        // Whether this plan's configuration is the plugin's newest: read at most once a tick,
        // and only when a service without a guard has gauges to set.
        let mut newest: Option<bool> = None;
        let gauge_generation = self.gauge_generation;
        let mut owns_gauges =
            || *newest.get_or_insert_with(|| owns_weight_gauges(host, plugin, gauge_generation));
        let publish = !self.published;
        self.published = true;
        for (service, state) in plan.services.iter().zip(self.services.iter_mut()) {
            if !scheduled(service) {
                if publish && owns_gauges() {
                    set_weight_gauges(host, plugin, service, state, service.configured_weights());
                }
                continue;
            }
            state.observing.iter_mut().for_each(|n| *n = 0);
            let mut weights = scheduled_weights(service, now.wall_ms);
            // Who sets the weight gauges: for a guarded service, the plan that decides for its
            // guard (below); for the others, the plugin's newest configuration.
            let mut owns = service.guard.is_none() && owns_gauges();
            if let Some(guard) = &service.guard {
                let keys = GuardKeys::new(plugin, service);
                let ticked = guard_tick(
                    guard,
                    &keys,
                    service,
                    state,
                    &weights,
                    host,
                    now,
                    (self.generation, self.never_ejects),
                );
                if let Some(t) = &ticked {
                    state.last_ejections.clone_from(&t.ejections);
                }
                let ejections = state.last_ejections.as_slice();
                let deciding = ticked.as_ref().is_some_and(|t| t.deciding);
                owns = deciding;
                let frozen = paused_weights(service, &weights, ejections, now_ms);
                let paused = frozen.is_some();
                if let Some(frozen) = frozen {
                    weights = frozen;
                }
                let admitted = admitted_weights(&weights, ejections, now_ms);
                if admitted.iter().any(|&w| w > 0) {
                    weights = admitted;
                }
                // Only the newest configuration's plans own the gauges: an older plan still
                // alive must not set them back to what it believes.
                if deciding {
                    for (u, ejection) in ejections.iter().enumerate() {
                        let value = u64::from(ejection.is_ejected(now_ms));
                        if let Some(gauge) = state.ejected_gauges.get_mut(u) {
                            set_gauge(host, gauge, value, || keys.stat(u, "ejected"));
                        }
                    }
                    if service.rollout.is_some() {
                        set_gauge(host, &mut state.paused_gauge, u64::from(paused), || {
                            paused_gauge_name(plugin, service)
                        });
                    }
                }
            }
            service.set_weights(&weights);
            if owns {
                set_weight_gauges(host, plugin, service, state, &service.weights());
            }
        }
    }
}

/// The weights of `service` its rollout puts in force at Unix time `wall_ms` (the configured
/// ones without a rollout, or before it starts), before any guard's ejection.
pub fn scheduled_weights(service: &Service, wall_ms: u64) -> Vec<u32> {
    match service.rollout.as_ref().map(|r| r.at(wall_ms)) {
        Some(Phase::Weights(w)) => w.into_owned(),
        _ => service.configured_weights().to_vec(),
    }
}

/// Sets the weight gauges of `service` to `weights` (each when it changed).
fn set_weight_gauges<H: Host + ?Sized>(
    host: &H,
    plugin: &str,
    service: &Service,
    state: &mut ServiceTick,
    weights: &[u32],
) {
    for ((u, gauge), &weight) in state.weight_gauges.iter_mut().enumerate().zip(weights) {
        set_gauge(host, gauge, u64::from(weight), || {
            weight_gauge_name(plugin, service, u)
        });
    }
}

/// The prefix of upstream `upstream`'s stats: `meshsplit.<plugin>.<service>.<upstream>`.
fn upstream_stat_prefix(plugin: &str, service: &Service, upstream: usize) -> String {
    format!(
        "meshsplit.{}.{}.{}",
        stat_segment(plugin),
        stat_segment(&service.name),
        service
            .upstreams
            .get(upstream)
            .map_or_else(String::new, |u| stat_segment(&u.name))
    )
}

/// The name of the gauge of the weight in force of upstream `upstream` of `service`.
pub fn weight_gauge_name(plugin: &str, service: &Service, upstream: usize) -> String {
    format!("{}.weight", upstream_stat_prefix(plugin, service, upstream))
}

/// The shared-data keys of weight-gauge ownership start with this. They are per plugin only, not
/// per configuration's clusters: in the native build, which keys its shared data by the
/// configuration's clusters too, keys with this prefix are process-wide.
pub const GAUGE_OWNER_PREFIX: &str = "meshsplit/gauges/";

fn gauge_owner_key(plugin: &str) -> String {
    format!("{GAUGE_OWNER_PREFIX}{}:{plugin}", plugin.len())
}

/// Takes the generation of a configuration being accepted (`fingerprint` as for [`claim`])
/// among the plugin's configurations that set weight gauges: from now on only its plans set
/// them. `None` without shared data.
pub fn claim_gauges<H: Host + ?Sized>(host: &H, plugin: &str, fingerprint: u64) -> Option<u64> {
    claim_generation_at(host, &gauge_owner_key(plugin), fingerprint)
}

/// Whether a plan of `generation` ([`claim_gauges`]) is the plugin's newest: without a
/// generation or without shared data there is nobody to defer to.
fn owns_weight_gauges<H: Host + ?Sized>(host: &H, plugin: &str, generation: Option<u64>) -> bool {
    let Some(generation) = generation else {
        return true;
    };
    newest_generation(host, &gauge_owner_key(plugin)).is_none_or(|newest| generation >= newest)
}

fn paused_gauge_name(plugin: &str, service: &Service) -> String {
    format!(
        "meshsplit.{}.{}.rollout_paused",
        stat_segment(plugin),
        stat_segment(&service.name)
    )
}

/// The names of every gauge a plan's tick sets: `weight` per upstream, `ejected` per guarded
/// upstream and `rollout_paused` per service with a guard and a rollout.
pub fn gauge_names(plan: &Plan, plugin: &str) -> Vec<String> {
    let mut names = Vec::new();
    for service in &plan.services {
        names.extend((0..service.upstreams.len()).map(|u| weight_gauge_name(plugin, service, u)));
    }
    for service in plan.services.iter().filter(|s| s.guard.is_some()) {
        let keys = GuardKeys::new(plugin, service);
        names.extend((0..service.upstreams.len()).map(|u| keys.stat(u, "ejected")));
        if service.rollout.is_some() {
            names.push(paused_gauge_name(plugin, service));
        }
    }
    names
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
    now_ms: u64,
) -> Option<Vec<u32>> {
    let rollout = service.rollout.as_ref()?;
    let since_s = ejections
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_ejected(now_ms))
        .filter_map(|(u, e)| {
            let then = match rollout.at(e.since_wall_s.saturating_mul(1000)) {
                Phase::Weights(w) => w.get(u).copied(),
                Phase::NotStarted => service.configured_weights().get(u).copied(),
            }?;
            (weights.get(u).copied()? > then).then_some(e.since_wall_s)
        })
        .min()?;
    Some(match rollout.at(since_s.saturating_mul(1000)) {
        Phase::Weights(w) => w.into_owned(),
        Phase::NotStarted => service.configured_weights().to_vec(),
    })
}

/// The shared-data key of one guarded service's record and its upstreams' stat names. Names
/// are length-prefixed, so no choice of names makes two keys equal.
struct GuardKeys {
    record: String,
    stats: Vec<String>,
}

impl GuardKeys {
    fn new(plugin: &str, service: &Service) -> Self {
        let record = format!(
            "meshsplit/guard/v4/{}:{plugin}/{}:{}",
            plugin.len(),
            service.name.len(),
            service.name,
        );
        let stats = (0..service.upstreams.len())
            .map(|u| upstream_stat_prefix(plugin, service, u))
            .collect();
        Self { record, stats }
    }

    fn stat(&self, upstream: usize, what: &str) -> String {
        format!(
            "{}.{what}",
            self.stats.get(upstream).map_or("", String::as_str)
        )
    }
}

/// Takes the generation of a configuration being accepted (`fingerprint`: its bytes'
/// [`crate::select::sticky_hash`]) and claims the record of each of its guarded services, so
/// that plans of older configurations stop deciding at once, before any stream of the new one.
/// Returns the generation (`None` without shared data).
pub fn claim<H: Host + ?Sized>(
    plan: &Plan,
    plugin: &str,
    host: &H,
    fingerprint: u64,
) -> Option<u64> {
    let guarded: Vec<&Service> = plan.services.iter().filter(|s| s.guard.is_some()).collect();
    if guarded.is_empty() {
        return None;
    }
    let generation = claim_generation(host, plugin, fingerprint)?;
    for service in guarded {
        let Some(guard) = &service.guard else {
            continue;
        };
        let key = GuardKeys::new(plugin, service).record;
        let names: Vec<&str> = service.upstreams.iter().map(|u| u.name.as_str()).collect();
        let slice = slice_ms(guard.window_s);
        update_record(host, &key, |record| {
            let stale = record.generation < generation
                || (record.generation == generation && !record.matches(slice, &names));
            if stale {
                Ok(record.claimed(generation, slice, &names))
            } else {
                Err(record)
            }
        });
    }
    Some(generation)
}

/// Read-modify-write of a guard record with compare-and-swap (created empty when missing);
/// `change` returns `Ok` with the record to write, or `Err` with it to leave it as it is.
/// Returns the record as written or left, `None` when no consistent write could be made.
fn update_record<H: Host + ?Sized>(
    host: &H,
    key: &str,
    mut change: impl FnMut(Record) -> Result<Record, Record>,
) -> Option<Record> {
    for _ in 0..16 {
        let Some((bytes, cas)) = host.shared_data(key) else {
            // Created first, so that the change is a compare-and-swap (token 0 would be
            // unconditional).
            if !create_shared(host, key, &Record::default().encode()) {
                return None;
            }
            continue;
        };
        let next = match change(Record::decode(&bytes)) {
            Ok(next) => next,
            Err(unchanged) => return Some(unchanged),
        };
        match host.set_shared_data(key, &next.encode(), cas) {
            SharedWrite::Written => return Some(next),
            SharedWrite::CasMismatch => continue,
            SharedWrite::Failed => return None,
        }
    }
    None
}

/// What a guard tick leaves: every upstream's ejection state (in the plan's order), and whether
/// this plan decides (its configuration is the newest).
struct Ticked {
    ejections: Vec<Ejection>,
    deciding: bool,
}

/// Adds this VM's outcomes to the service's record and, if this plan's configuration is the
/// newest, applies the guard's decision on the same snapshot, with one compare-and-swap.
#[allow(clippy::too_many_arguments)]
fn guard_tick<H: Host + ?Sized>(
    guard: &Guard,
    keys: &GuardKeys,
    service: &Service,
    state: &mut ServiceTick,
    rollout_weights: &[u32],
    host: &H,
    now: Now,
    (generation, never_ejects): (Option<u64>, bool),
) -> Option<Ticked> {
    let now_ms = now.monotonic_ms;
    let names: Vec<&str> = service.upstreams.iter().map(|u| u.name.as_str()).collect();
    let own_slice_ms = slice_ms(guard.window_s);
    let mut changes = Vec::new();
    let mut deciding = false;
    let record = update_record(host, &keys.record, |mut record| {
        let mut dirty = false;
        // Without a generation (no shared data when configured) there is nobody to defer to.
        let g = generation.unwrap_or(0);
        let newer = g > record.generation;
        if newer || (g == record.generation && !record.matches(own_slice_ms, &names)) {
            record = record.claimed(g, own_slice_ms, &names);
            dirty = true;
        }
        deciding = g == record.generation;
        // Outcomes count whoever decides, in the deciding configuration's slices.
        let slice_len = record.slice_ms.max(1);
        let slice = now.monotonic_ms / slice_len;
        let at = record.positions(&names);
        dirty |= file_outcomes(&mut record, state, &at, own_slice_ms, slice);
        changes.clear();
        if deciding {
            let ejections = ejections_at(&record, &at);
            // The weights in force: a paused rollout's, not the step the clock is at.
            let in_force = paused_weights(service, rollout_weights, &ejections, now_ms)
                .unwrap_or_else(|| rollout_weights.to_vec());
            let seen: Vec<Seen> = at
                .iter()
                .zip(&ejections)
                .enumerate()
                .map(|(u, (position, ejection))| {
                    let buckets = position
                        .and_then(|i| record.upstreams.get(i))
                        .map_or(&[][..], |r| &r.buckets[..]);
                    // Only slices that began at or after the readmission count.
                    let since = ejection.until_ms.div_ceil(slice_len);
                    let counts = window_totals(buckets, slice, since);
                    Seen {
                        weight: in_force.get(u).copied().unwrap_or(0),
                        requests: counts.requests,
                        failures: counts.failures,
                        slow: counts.slow,
                        read: counts.read,
                        ejection: *ejection,
                    }
                })
                .collect();
            let decided = guard.decide(now_ms, &seen).into_iter();
            for change in decided.filter(|c| !(never_ejects && matches!(c, Change::Eject { .. }))) {
                let change = match change {
                    Change::Eject {
                        upstream,
                        state,
                        reason,
                        rate,
                        requests,
                    } => Change::Eject {
                        upstream,
                        state: Ejection {
                            since_wall_s: now.wall_ms / 1000,
                            ..state
                        },
                        reason,
                        rate,
                        requests,
                    },
                    other => other,
                };
                let (upstream, new) = match change {
                    Change::Eject {
                        upstream, state, ..
                    }
                    | Change::Readmit { upstream, state }
                    | Change::Forgive { upstream, state } => (upstream, state),
                };
                let target = at
                    .get(upstream)
                    .copied()
                    .flatten()
                    .and_then(|i| record.upstreams.get_mut(i));
                if let Some(target) = target {
                    target.ejection = new;
                    dirty = true;
                    changes.push(change);
                }
            }
        }
        if dirty {
            Ok(record)
        } else {
            Err(record)
        }
    })?;
    // Written (or nothing to write): this VM's outcomes are in, and its changes landed.
    clear_pending(state);
    for change in &changes {
        report(guard, keys, service, host, change);
    }
    Some(Ticked {
        ejections: ejections_at(&record, &record.positions(&names)),
        deciding,
    })
}

/// Adds a VM's pending outcomes of one service (`state`) to `record` (its upstreams at `at`),
/// in slice `slice` of the record; stamped outcomes in the slice they happened in, when it is
/// of this length (`own_slice_ms`) and still in the window, otherwise in `slice`. Returns
/// whether anything was added.
fn file_outcomes(
    record: &mut Record,
    state: &ServiceTick,
    at: &[Option<usize>],
    own_slice_ms: u64,
    slice: u64,
) -> bool {
    let mut added = false;
    let same_slices = record.slice_ms == own_slice_ms;
    let oldest = slice.saturating_sub(WINDOW_SLICES as u64 - 1);
    for ((position, &counts), stamped) in at
        .iter()
        .zip(state.pending.iter())
        .zip(state.stamped.iter())
    {
        let Some(upstream) = position.and_then(|i| record.upstreams.get_mut(i)) else {
            continue;
        };
        if counts.requests > 0 {
            upstream.add(slice, counts);
            added = true;
        }
        for bucket in stamped.iter().filter(|b| b.counts.requests > 0) {
            match (same_slices, bucket.slice) {
                (true, s) if s > slice => upstream.add(slice, bucket.counts),
                (true, s) if s >= oldest => upstream.add(s, bucket.counts),
                (true, _) => continue,
                (false, _) => upstream.add(slice, bucket.counts),
            }
            added = true;
        }
    }
    added
}

/// Forgets a service's pending outcomes, once they are in its record.
fn clear_pending(state: &mut ServiceTick) {
    for pending in state.pending.iter_mut() {
        *pending = Counts::default();
    }
    for stamped in state.stamped.iter_mut() {
        *stamped = [Bucket::default(); WINDOW_SLICES];
    }
}

impl PlanTick {
    /// Files this plan's pending outcomes into its services' records at `monotonic_ms` without
    /// deciding anything: for a plan about to be dropped (its configuration is gone), so that
    /// the outcomes it saw still count for the configuration in force.
    pub fn flush<H: Host + ?Sized>(
        &mut self,
        plan: &Plan,
        plugin: &str,
        host: &H,
        monotonic_ms: u64,
    ) {
        for (service, state) in plan.services.iter().zip(self.services.iter_mut()) {
            let Some(guard) = &service.guard else {
                continue;
            };
            let pending = state.pending.iter().any(|c| c.requests > 0)
                || state
                    .stamped
                    .iter()
                    .any(|r| r.iter().any(|b| b.counts.requests > 0));
            if !pending {
                continue;
            }
            let key = GuardKeys::new(plugin, service).record;
            let names: Vec<&str> = service.upstreams.iter().map(|u| u.name.as_str()).collect();
            let own_slice_ms = slice_ms(guard.window_s);
            let filed = update_record(host, &key, |mut record| {
                if record.slice_ms == 0 {
                    return Err(record);
                }
                let slice = monotonic_ms / record.slice_ms.max(1);
                let at = record.positions(&names);
                if file_outcomes(&mut record, state, &at, own_slice_ms, slice) {
                    Ok(record)
                } else {
                    Err(record)
                }
            });
            if filed.is_some() {
                clear_pending(state);
            }
        }
    }
}

/// The ejection state at each of `positions` in `record` (not ejected when missing).
fn ejections_at(record: &Record, positions: &[Option<usize>]) -> Vec<Ejection> {
    positions
        .iter()
        .map(|p| {
            p.and_then(|i| record.upstreams.get(i))
                .map(|r| r.ejection)
                .unwrap_or_default()
        })
        .collect()
}

/// Logs a change that landed, and counts an ejection.
fn report<H: Host + ?Sized>(
    guard: &Guard,
    keys: &GuardKeys,
    service: &Service,
    host: &H,
    change: &Change,
) {
    let (upstream, name) = match change {
        Change::Eject { upstream, .. }
        | Change::Readmit { upstream, .. }
        | Change::Forgive { upstream, .. } => (
            *upstream,
            service
                .upstreams
                .get(*upstream)
                .map_or("", |u| u.name.as_str()),
        ),
    };
    match change {
        Change::Eject {
            reason,
            rate,
            requests,
            state,
            ..
        } => {
            // Percentages as integers: formatting floats would cost the module ~10 KB.
            let seen = match (reason, &guard.latency) {
                (Reason::Latency, Some(latency)) => format!(
                    "{} % of {requests} requests took longer than {} ms in the last {} s \
                     (p{} above {} ms)",
                    percent(*rate),
                    latency.threshold_ms,
                    guard.window_s,
                    percentile_text(latency.percentile_milli),
                    latency.threshold_ms,
                ),
                _ => format!(
                    "{} % of {requests} requests failed in the last {} s (error_rate {} %)",
                    percent(*rate),
                    guard.window_s,
                    percent(guard.error_rate.unwrap_or(0.0)),
                ),
            };
            log::warn!(
                "guard: ejected {}/{name} for {} s: {seen}; reason {}, ejection {} in a row",
                service.name,
                seconds(state.until_ms.saturating_sub(state.since_ms)),
                reason.name(),
                state.times + 1
            );
            if let Some(id) = host.define_counter(&keys.stat(upstream, "ejections_total")) {
                host.increment_counter(id, 1);
            }
        }
        Change::Readmit { state, .. } => log::info!(
            "guard: readmitted {}/{name} after {} s",
            service.name,
            seconds(state.until_ms.saturating_sub(state.since_ms))
        ),
        Change::Forgive { .. } => {}
    }
}

/// A percentile given in thousandths, as written (`95`, `99.9`), without float formatting.
pub fn percentile_text(milli: u64) -> String {
    let (whole, rest) = (milli / 1000, milli % 1000);
    if rest == 0 {
        return whole.to_string();
    }
    let decimals = format!("{rest:03}");
    format!("{whole}.{}", decimals.trim_end_matches('0'))
}

/// Milliseconds as whole seconds, rounded (ejections last whole seconds).
fn seconds(ms: u64) -> u64 {
    ms.saturating_add(500) / 1000
}

/// A fraction as a whole percentage, rounded.
fn percent(fraction: f64) -> u64 {
    (fraction * 100.0).round() as u64
}

#[cfg(test)]
#[path = "tick_tests.rs"]
mod tests;
