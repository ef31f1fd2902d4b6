//! Per-instance state: one per wasm VM (each Envoy worker and the main thread). It holds a plan
//! per filter instance (root context), the random generator, least-request leases and the
//! request counters flushed on the housekeeping tick; and tells, once per Envoy, which
//! configuration was accepted.

use std::collections::BTreeMap;
use std::rc::Rc;

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::cookie::CookieId;
use crate::guard;
use crate::host::{DefineOnce, Host, MetricIds, SharedWrite};
use crate::in_flight;
use crate::metrics::{Counted, PlanCounters};
use crate::plan::{ConfigError, Plan, Strategy};
use crate::route::{on_request_headers, Verdict};
use crate::select::sticky_hash;
use crate::tick::{self, Now, PlanTick};

/// A short fingerprint of a configuration's bytes (hex), so operators can tell from the log
/// and from `meshsplit check` which configuration is live.
pub fn config_fingerprint(bytes: &[u8]) -> String {
    format!("{:08x}", sticky_hash(bytes) >> 32)
}

/// How many services the accepted-configuration line names before it only counts the rest.
const SUMMARY_SERVICES: usize = 8;

/// One line describing an accepted plan: services, upstreams (cluster and weight), strategies.
pub fn config_summary(plan: &Plan, fingerprint: &str, plugin: &str) -> String {
    let upstreams: usize = plan.services.iter().map(|s| s.upstreams.len()).sum();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut line = format!(
        "configuration {fingerprint} accepted for {plugin}: {}, {}",
        plural(plan.services.len(), "service", "services"),
        plural(upstreams, "upstream", "upstreams"),
    );
    for (index, service) in plan.services.iter().enumerate() {
        if index == SUMMARY_SERVICES {
            let rest = plan.services.len() - index;
            let noun = if rest == 1 { "service" } else { "services" };
            line.push_str(&format!("; and {rest} more {noun}"));
            break;
        }
        line.push_str(if index == 0 { ": " } else { "; " });
        line.push_str(&format!("{} ({}", service.name, service.strategy.name()));
        for upstream in &service.upstreams {
            line.push_str(&format!(
                ", {}={} {}",
                upstream.name, upstream.cluster, upstream.weight
            ));
        }
        if !service.rules.is_empty() {
            line.push_str(&format!(
                ", {}",
                plural(service.rules.len(), "rule", "rules")
            ));
        }
        line.push(')');
    }
    line
}

/// Seconds within which the same configuration accepted again counts as the same acceptance.
pub const ANNOUNCE_WINDOW_S: u64 = 10;

/// Whether this VM is the first of its Envoy (same `vm_id`) to accept configuration
/// `fingerprint` for `plugin`. Envoy configures each plugin on the main thread and then on every
/// worker within moments, so the accepted-configuration line is logged once: by the first VM,
/// unless the same configuration was already announced less than [`ANNOUNCE_WINDOW_S`] ago.
/// Keyed by fingerprint, so listeners with different configurations are each announced.
pub fn first_to_accept<H: Host + ?Sized>(
    host: &H,
    plugin: &str,
    fingerprint: &str,
    now_s: u64,
) -> bool {
    first_to_report(host, "accepted", plugin, fingerprint, now_s)
}

/// Like [`first_to_accept`], for a refused configuration (counted once per Envoy).
pub fn first_to_refuse<H: Host + ?Sized>(
    host: &H,
    plugin: &str,
    fingerprint: &str,
    now_s: u64,
) -> bool {
    first_to_report(host, "refused", plugin, fingerprint, now_s)
}

fn first_to_report<H: Host + ?Sized>(
    host: &H,
    event: &str,
    plugin: &str,
    fingerprint: &str,
    now_s: u64,
) -> bool {
    let key = format!("meshsplit/{event}/{}:{plugin}/{fingerprint}", plugin.len());
    for _ in 0..8 {
        let cas = match host.shared_data(&key) {
            Some((value, cas)) => {
                let then = value.as_slice().try_into().map_or(0, u64::from_le_bytes);
                if now_s.saturating_sub(then) < ANNOUNCE_WINDOW_S {
                    return false;
                }
                cas
            }
            None => 0,
        };
        match host.set_shared_data(&key, &now_s.to_le_bytes(), cas) {
            SharedWrite::Written => return true,
            SharedWrite::CasMismatch => continue,
            // No shared data: log on every VM rather than never.
            SharedWrite::Failed => return true,
        }
    }
    false
}

/// Counter of requests that passed untouched because their filter instance had no plan.
pub const UNPLANNED_COUNTER: &str = "meshsplit.requests_without_plan";

/// The state of one VM (one per Envoy worker and per main thread): a plan per root context and
/// the VM's random generator.
///
/// Every filter instance sharing the VM (listeners with the same `vm_id` and module, or the
/// configs before and after a live update) has its own root context, and a stream is routed
/// only with the plan of the root it was created under. Plans are never evicted while their
/// root lives: Envoy deletes the root contexts it no longer needs, and their plans go with them,
/// so memory is bounded by the live roots.
pub struct Instance {
    roots: Vec<RootPlan>,
    /// The stream created last and its root. Envoy creates a stream's context immediately before
    /// calling its request-headers callback, so this names the root of that request.
    last_stream: Option<(u32, u32)>,
    rng: Xoshiro256PlusPlus,
    /// Streams that need something when they end (an in-flight count to give back, an outcome
    /// for the guard), until they end.
    tracked: BTreeMap<u32, Tracked>,
    /// Unix time in milliseconds; read on configure and on the tick only.
    clock: fn() -> u64,
    /// Milliseconds of a monotonic clock shared by the VMs of one Envoy (the guard's clock).
    monotonic: fn() -> u64,
    /// Every metric this VM defined, so each name is defined once per VM.
    metric_ids: MetricIds,
    /// The counter of requests without a plan, once defined (on the first such request).
    unplanned: Option<u32>,
    /// Whether the first request without a plan was logged (once per VM).
    unplanned_logged: bool,
    /// Who this VM's least-request counts belong to (see [`in_flight`]); taken when a plan
    /// first has a least-request service.
    owner: Option<u32>,
    /// When this VM last beat in the owners list (Unix ms).
    last_beat_ms: u64,
    /// The owners list this VM saw at its last beat: only owners missing from two lists in a row
    /// lose their counts.
    owners_before: Vec<u32>,
    /// No pruning before this time (Unix ms): set when the clock jumped, since every owner's
    /// beat then looks stale (or fresh) by the size of the jump until all have beaten again.
    prune_from_ms: u64,
    /// Where the next beat's pruning of other owners' counts goes on (a count of slots).
    prune_cursor: usize,
    /// Streams assigned a visitor id, until their response headers set the cookie (or they
    /// end without).
    cookies: BTreeMap<u32, PendingCookie>,
    /// Whether the host calls [`Instance::response_headers`]: without, a plan that assigns
    /// cookies is refused.
    sees_responses: bool,
}

/// A cookie to set on a stream's response.
struct PendingCookie {
    plan: Rc<Plan>,
    service: usize,
    id: CookieId,
}

/// Why a module without the response-headers callback refuses `assign_cookie`.
pub const NO_RESPONSES: &str = "this module does not export the response-headers callback, which \
    would cost every request of every service a call into the VM; load meshsplit-cookie.wasm, \
    the same filter with that callback, to assign cookies";

/// How many least-request counts a beat checks for dead owners, so that a huge configuration
/// spreads the work over several ticks.
const PRUNE_PER_BEAT: usize = 512;

struct Tracked {
    root: u32,
    plan: Rc<Plan>,
    service: usize,
    upstream: usize,
    /// Holds an in-flight count of a least-request upstream.
    leased: bool,
    /// How many streams its outcome counts for in the service's guard (0: not read).
    observed: u32,
    /// When its request headers came (monotonic ms), for the streams whose outcome is read
    /// of a guard that times them: the only clock reads of the request path.
    started_ms: Option<u64>,
    /// When its response headers came (monotonic ms): a timed stream's duration ends there
    /// (time to first byte). Only a host that calls [`Instance::response_headers`] sets it.
    first_byte_ms: Option<u64>,
    /// Its `grpc-status` (trailers-only headers, or trailers) when it is a gRPC call whose
    /// outcome is read; only a host that sees responses reads it.
    grpc_status: Option<u64>,
}

struct RootPlan {
    id: u32,
    plugin: String,
    plan: Rc<Plan>,
    counters: PlanCounters,
    tick: PlanTick,
}

/// The system clock as Unix milliseconds (0 if it is before 1970).
fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Instance {
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            roots: Vec::new(),
            last_stream: None,
            rng: Xoshiro256PlusPlus::from_seed(seed),
            tracked: BTreeMap::new(),
            clock: system_clock,
            // The wasm build replaces it with the host's, which all of Envoy's VMs share.
            monotonic: tick::process_monotonic_ms,
            metric_ids: MetricIds::default(),
            unplanned: None,
            unplanned_logged: false,
            owner: None,
            last_beat_ms: 0,
            owners_before: Vec::new(),
            prune_from_ms: 0,
            prune_cursor: 0,
            cookies: BTreeMap::new(),
            sees_responses: true,
        }
    }

    /// Tells whether the host calls [`Instance::response_headers`] (the wasm module built
    /// without feature `assign-cookie` does not export that callback).
    pub fn set_sees_responses(&mut self, sees: bool) {
        self.sees_responses = sees;
    }

    /// Replaces the clock (tests, and hosts with a clock of their own).
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    /// Replaces the monotonic clock (tests, and hosts with a clock of their own).
    pub fn set_monotonic_clock(&mut self, clock: fn() -> u64) {
        self.monotonic = clock;
    }

    fn now(&self) -> Now {
        Now {
            wall_ms: (self.clock)(),
            monotonic_ms: (self.monotonic)(),
        }
    }

    /// Adds `delta` to counter `name`, defined once per VM.
    pub fn count<H: Host + ?Sized>(&self, name: &str, delta: u64, host: &H) {
        let host = DefineOnce {
            host,
            ids: &self.metric_ids,
        };
        if let Some(id) = host.define_counter(name) {
            host.increment_counter(id, delta);
        }
    }

    /// Sets gauge `name` (defined once per VM) to `value`.
    pub fn set_gauge<H: Host + ?Sized>(&self, name: &str, value: u64, host: &H) {
        let host = DefineOnce {
            host,
            ids: &self.metric_ids,
        };
        if let Some(id) = host.define_gauge(name) {
            host.set_gauge(id, value);
        }
    }

    /// Parses and installs a plugin configuration for `root` of the filter instance (Envoy
    /// plugin) named `plugin`. On error nothing changes: the previous plan, if any, keeps serving.
    pub fn configure<H: Host + ?Sized>(
        &mut self,
        root: u32,
        bytes: &[u8],
        plugin: &str,
        host: &H,
    ) -> Result<Rc<Plan>, ConfigError> {
        let plan = Plan::from_json_named(bytes, plugin)?;
        if !self.sees_responses {
            plan.check_no_assign_cookie(NO_RESPONSES)?;
        }
        let metric_ids = std::mem::take(&mut self.metric_ids);
        let result = self.install(
            root,
            bytes,
            plan,
            plugin,
            &DefineOnce {
                host,
                ids: &metric_ids,
            },
        );
        self.metric_ids = metric_ids;
        Ok(result)
    }

    fn install<H: Host + ?Sized>(
        &mut self,
        root: u32,
        bytes: &[u8],
        plan: Plan,
        plugin: &str,
        host: &H,
    ) -> Rc<Plan> {
        let mut least_request = false;
        for service in &plan.services {
            if let Strategy::LeastRequest(slots) = &service.strategy {
                least_request = true;
                for slot in slots.iter() {
                    slot.gauge_id.set(host.define_gauge(&slot.gauge));
                    in_flight::ensure(host, slot);
                }
            }
        }
        if least_request && self.owner.is_none() {
            self.take_owner(host);
        }
        let counters = PlanCounters::new(&plan, plugin);
        let fingerprint = sticky_hash(bytes);
        let generation = tick::claim(&plan, plugin, host, fingerprint);
        let gauge_generation = tick::claim_gauges(host, plugin, fingerprint);
        let mut tick = PlanTick::new(&plan, generation).with_gauge_generation(gauge_generation);
        // Rollouts and the guard's ejections apply from the first request, and the weight
        // gauges show the weights in force from now on.
        tick.run(&plan, plugin, host, self.now());
        // The gauges the plugin's older plans set and this one does not have go back to 0:
        // only the newest configuration sets gauges, so nothing else would.
        let kept: std::collections::BTreeSet<String> =
            tick::gauge_names(&plan, plugin).into_iter().collect();
        for old in self
            .roots
            .iter()
            .filter(|r| r.plugin == plugin && r.id != root)
        {
            for name in tick::gauge_names(&old.plan, plugin) {
                if !kept.contains(&name) {
                    if let Some(id) = host.define_gauge(&name) {
                        host.set_gauge(id, 0);
                    }
                }
            }
        }
        let plan = Rc::new(plan);
        match self.roots.iter_mut().find(|r| r.id == root) {
            Some(entry) => {
                // What the old plan counted is not lost.
                entry.counters.flush(&entry.plan, host);
                entry.plan = Rc::clone(&plan);
                entry.counters = counters;
                entry.tick = tick;
            }
            None => self.roots.push(RootPlan {
                id: root,
                plugin: plugin.to_owned(),
                plan: Rc::clone(&plan),
                counters,
                tick,
            }),
        }
        plan
    }

    /// The housekeeping tick of root context `root` (twice a second in the wasm build): adds what its plan
    /// counted since the last tick to Envoy's counters, and puts rollout and guard weights in
    /// force.
    pub fn tick<H: Host + ?Sized>(&mut self, root: u32, host: &H) {
        let now = self.now();
        let now_ms = now.wall_ms;
        if let Some(entry) = self.roots.iter_mut().find(|r| r.id == root) {
            let host = DefineOnce {
                host,
                ids: &self.metric_ids,
            };
            entry.counters.flush(&entry.plan, &host);
            entry.tick.run(&entry.plan, &entry.plugin, &host, now);
        }
        // Either way: after the clock went back, beats go on.
        if self.owner.is_some() && now_ms.abs_diff(self.last_beat_ms) >= in_flight::BEAT_EVERY_MS {
            self.beat(host, now_ms);
        }
    }

    /// Takes an owner id for this VM's least-request counts and joins the owners list at once,
    /// before it takes any count. Pruning starts one stale window later: by then every VM
    /// alive has beaten.
    fn take_owner<H: Host + ?Sized>(&mut self, host: &H) {
        let owner = in_flight::new_owner(host, self.rng.next_u32());
        self.owner = Some(owner);
        // VMs scan their counts from different places, so a big configuration is covered sooner.
        self.prune_cursor = usize::try_from(self.rng.next_u32()).unwrap_or(0);
        let now_ms = (self.clock)();
        self.prune_from_ms = now_ms.saturating_add(in_flight::OWNER_STALE_MS);
        self.beat(host, now_ms);
    }

    /// This VM beats in the owners list, then drops (part of) the counts that owners which
    /// stopped beating left on the least-request upstreams of its plans.
    fn beat<H: Host + ?Sized>(&mut self, host: &H, now_ms: u64) {
        let Some(owner) = self.owner else {
            return;
        };
        let gap = now_ms.checked_sub(self.last_beat_ms);
        if gap.is_none_or(|gap| gap >= in_flight::OWNER_STALE_MS) && self.last_beat_ms != 0 {
            // The clock jumped, or this VM was stalled: wait until every VM has beaten again.
            self.prune_from_ms = now_ms.saturating_add(in_flight::OWNER_STALE_MS);
        }
        self.last_beat_ms = now_ms;
        let Some(alive) = in_flight::beat(host, owner, now_ms) else {
            return;
        };
        let before = std::mem::replace(&mut self.owners_before, alive);
        if now_ms < self.prune_from_ms {
            return;
        }
        let slots = self
            .roots
            .iter()
            .flat_map(|r| r.plan.services.iter())
            .filter_map(|s| match &s.strategy {
                Strategy::LeastRequest(slots) => Some(slots.iter()),
                _ => None,
            })
            .flatten();
        let total = slots.clone().count();
        if total == 0 {
            return;
        }
        let start = self.prune_cursor % total;
        for slot in slots.cycle().skip(start).take(PRUNE_PER_BEAT.min(total)) {
            in_flight::prune(host, slot, &self.owners_before, &before);
        }
        self.prune_cursor = (start + PRUNE_PER_BEAT) % total;
    }

    /// Who this VM's least-request counts belong to, once it has any.
    pub fn owner(&self) -> Option<u32> {
        self.owner
    }

    /// How many root contexts (filter instances) hold a plan in this VM.
    pub fn plans(&self) -> usize {
        self.roots.len()
    }

    /// A stream context was created under root context `parent`.
    pub fn stream_created(&mut self, context: u32, parent: u32) {
        self.last_stream = Some((context, parent));
    }

    /// The index in `roots` of the root a stream was created under; never another root's.
    fn root_of(&self, context: u32) -> Option<usize> {
        let root = match self.last_stream {
            Some((ctx, root)) if ctx == context => root,
            _ => return None,
        };
        self.roots.iter().position(|r| r.id == root)
    }

    /// Handles a stream's request headers. A stream whose root has no plan (not configured, or
    /// not known) passes untouched: counted, and logged once per VM.
    pub fn request_headers<H: Host + ?Sized>(&mut self, context: u32, host: &H) -> Verdict {
        let Some(entry) = self.root_of(context).and_then(|i| self.roots.get_mut(i)) else {
            self.count_unplanned(context, host);
            return Verdict::Continue;
        };
        let owner = self.owner.unwrap_or(in_flight::PROCESS_OWNER);
        let routed = on_request_headers(&entry.plan, &mut self.rng, host, owner);
        // Compiled out only in the benchmark's comparison module (feature `bench-uncounted`).
        if cfg!(not(feature = "bench-uncounted")) {
            entry.counters.count(routed.counted);
        }
        if let Counted::Upstream {
            service, upstream, ..
        } = routed.counted
        {
            if let Some(id) = routed.cookie {
                self.cookies.insert(
                    context,
                    PendingCookie {
                        plan: Rc::clone(&entry.plan),
                        service,
                        id,
                    },
                );
            }
            let leased = routed.lease.is_some();
            let rng = &mut self.rng;
            let observed = entry.tick.observe(service, upstream, || rng.next_u32());
            let started_ms = (observed > 0 && entry.tick.timed(service)).then(self.monotonic);
            if leased || observed > 0 {
                self.tracked.insert(
                    context,
                    Tracked {
                        root: entry.id,
                        plan: Rc::clone(&entry.plan),
                        service,
                        upstream,
                        leased,
                        observed,
                        started_ms,
                        first_byte_ms: None,
                        grpc_status: None,
                    },
                );
            }
        }
        routed.verdict
    }

    /// Handles a stream's response headers: sets the cookie its request was assigned, if any.
    /// Nothing else happens here, and streams without an assigned id cost one map lookup.
    pub fn response_headers<H: Host + ?Sized>(&mut self, context: u32, host: &H) {
        if !self.tracked.is_empty() {
            if let Some(stream) = self.tracked.get_mut(&context) {
                if stream.observed > 0 {
                    // Its duration ends at its first byte; a trailers-only gRPC answer carries
                    // its status here.
                    if stream.started_ms.is_some() {
                        stream.first_byte_ms = Some((self.monotonic)());
                    }
                    let judges_failures = stream
                        .plan
                        .services
                        .get(stream.service)
                        .and_then(|s| s.guard.as_ref())
                        .is_some_and(|g| g.error_rate.is_some());
                    if judges_failures {
                        stream.grpc_status = host
                            .response_header("grpc-status")
                            .and_then(|v| guard::parse_grpc_status(&v));
                    }
                }
            }
        }
        if self.cookies.is_empty() {
            return;
        }
        let Some(pending) = self.cookies.remove(&context) else {
            return;
        };
        if let Some(assign) = pending
            .plan
            .services
            .get(pending.service)
            .and_then(|s| s.assign_cookie.as_ref())
        {
            crate::cookie::on_response_headers(assign, &pending.id, host);
        }
    }

    /// A stream's response trailers: a gRPC call whose outcome is read takes its status from
    /// its `grpc-status` trailer.
    pub fn response_trailers<H: Host + ?Sized>(&mut self, context: u32, host: &H) {
        if self.tracked.is_empty() {
            return;
        }
        if let Some(stream) = self.tracked.get_mut(&context) {
            if stream.observed > 0 {
                let trailer = host.response_trailer("grpc-status");
                if let Some(code) = trailer.and_then(|v| guard::parse_grpc_status(&v)) {
                    stream.grpc_status = Some(code);
                }
            }
        }
    }

    fn count_unplanned<H: Host + ?Sized>(&mut self, context: u32, host: &H) {
        if self.unplanned.is_none() {
            let host = DefineOnce {
                host,
                ids: &self.metric_ids,
            };
            self.unplanned = host.define_counter(UNPLANNED_COUNTER);
        }
        if let Some(id) = self.unplanned {
            host.increment_counter(id, 1);
        }
        if !self.unplanned_logged {
            self.unplanned_logged = true;
            let root = match self.last_stream {
                Some((ctx, root)) if ctx == context => format!("root context {root}"),
                _ => "an unknown root context".to_owned(),
            };
            log::warn!(
                "a request of {root} passed without routing: its filter instance has no \
                 configuration in this VM (counted in wasmcustom.{UNPLANNED_COUNTER}; logged once)"
            );
        }
    }

    /// A context was deleted. A stream's ends however it ended (finished, reset, aborted,
    /// answered locally): give back its in-flight count, if it holds one. A root context's means
    /// its filter instance is gone: drop its plan. Returns whether a plan was dropped.
    pub fn context_deleted<H: Host + ?Sized>(&mut self, context: u32, host: &H) -> bool {
        if let Some(index) = self.roots.iter().position(|r| r.id == context) {
            let mut entry = self.roots.swap_remove(index);
            let host = DefineOnce {
                host,
                ids: &self.metric_ids,
            };
            entry.counters.flush(&entry.plan, &host);
            return true;
        }
        if !self.cookies.is_empty() {
            // A stream that ended before its response headers (reset, aborted).
            self.cookies.remove(&context);
        }
        if self.tracked.is_empty() {
            return false;
        }
        let Some(stream) = self.tracked.remove(&context) else {
            return false;
        };
        if stream.leased {
            if let Some(Strategy::LeastRequest(slots)) = stream
                .plan
                .services
                .get(stream.service)
                .map(|s| &s.strategy)
            {
                if let Some(slot) = slots.get(stream.upstream) {
                    let owner = self.owner.unwrap_or(in_flight::PROCESS_OWNER);
                    in_flight::release(host, slot, owner);
                }
            }
        }
        if stream.observed > 0 {
            // To its first byte when the host saw it, else to its end.
            let elapsed_ms = stream.started_ms.map(|started| {
                stream
                    .first_byte_ms
                    .unwrap_or_else(self.monotonic)
                    .saturating_sub(started)
            });
            // One property read for a stream that got a response; the flags only without one.
            let status = host.response_code().filter(|&code| code > 0);
            let flags = if guard::needs_flags(status, stream.grpc_status) {
                host.response_flags()
            } else {
                None
            };
            let outcome = guard::grpc_outcome(status, flags, stream.grpc_status);
            let entry = self.roots.iter_mut().find(|r| r.id == stream.root);
            if let Some(entry) = entry {
                entry.tick.record_timed_outcome(
                    stream.service,
                    stream.upstream,
                    outcome,
                    stream.observed,
                    elapsed_ms,
                );
            }
        }
        false
    }
}

#[cfg(test)]
#[path = "instance_tests.rs"]
mod tests;
