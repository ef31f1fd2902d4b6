//! The native build (an Envoy dynamic module, `libmeshsplit.so`). The arrows run one way: the
//! exported hooks (`exports`) call the HTTP filter glue (`filter`) and the cluster specifier glue
//! (`specifier`), which drive the core through the host calls behind its `Host` trait (`host`),
//! which are the ABI's callbacks into Envoy (`imports`); the process-wide shared data the
//! least-request counts and the guard use is `store`. All `unsafe` code is in `exports` and
//! `imports`.
//!
//! Threading: Envoy creates a config on the main thread and uses it on every worker at once. The
//! core's `Plan` keeps per-worker state in `Cell`s (round-robin positions, gauge ids) and is not
//! `Sync`, so the shared config holds only the validated JSON and metric ids (immutable, `Sync`),
//! and each worker thread compiles its own `Plan` from it on first use, beside its own random
//! generator: the same arrangement as one wasm VM per worker.

#[cfg(feature = "native")]
mod clock;
#[cfg(feature = "native")]
mod exports;
#[cfg(feature = "native")]
mod filter;
#[cfg(feature = "test-hooks")]
mod hooks;
#[cfg(feature = "native")]
mod host;
#[cfg(feature = "native")]
mod imports;
#[cfg(any(feature = "native", test))]
mod memory;
#[cfg(feature = "native")]
mod specifier;
mod store;
#[cfg(feature = "native")]
mod timer;

#[cfg(feature = "native")]
pub use worker::*;

use crate::plan::{stat_segment, Plan};
use crate::select::sticky_hash;

/// The shared-data namespace of a config: a hash of which cluster each upstream of each service
/// sends to. Least-request counts and the guard's states are keyed by plugin, service and
/// upstream name; under this namespace they also belong to the clusters those names stand for,
/// so two configs with one `filter_name` (the default is `meshsplit`) that send an upstream name
/// to different clusters keep apart. A config that changes no cluster (weights, a guard's
/// thresholds, rules) keeps its state across an update.
#[cfg_attr(not(feature = "native"), allow(dead_code))]
pub fn namespace(plan: &Plan) -> String {
    let mut map = Vec::new();
    let mut push = |text: &str| {
        map.extend_from_slice(&text.len().to_le_bytes());
        map.extend_from_slice(text.as_bytes());
    };
    for service in &plan.services {
        push(&service.name);
        for upstream in service.upstreams.iter() {
            push(&upstream.name);
            push(&upstream.cluster);
        }
        push("");
    }
    format!("meshsplit/config/{:016x}/", sticky_hash(&map))
}

/// Names of the gauges and of the counters that the housekeeping tick (`tick.rs`) may define
/// for `plan`. Envoy lets a dynamic module define metrics only while it creates the config, so
/// the native build defines them all then: per upstream a gauge `….weight`; per guarded
/// upstream a gauge `….ejected` and a counter `….ejections_total`; per service with both a
/// rollout and a guard a gauge `….rollout_paused`.
#[cfg_attr(not(feature = "native"), allow(dead_code))]
pub fn tick_stats(plan: &Plan, plugin_name: &str) -> (Vec<String>, Vec<String>) {
    let plugin = stat_segment(plugin_name);
    let (mut gauges, mut counters) = (Vec::new(), Vec::new());
    for service in &plan.services {
        gauges.extend(
            (0..service.upstreams.len())
                .map(|u| crate::tick::weight_gauge_name(plugin_name, service, u)),
        );
    }
    for service in plan.services.iter().filter(|s| s.guard.is_some()) {
        let name = stat_segment(&service.name);
        for upstream in service.upstreams.iter() {
            let prefix = format!("meshsplit.{plugin}.{name}.{}", stat_segment(&upstream.name));
            gauges.push(format!("{prefix}.ejected"));
            counters.push(format!("{prefix}.ejections_total"));
        }
        if service.rollout.is_some() {
            gauges.push(format!("meshsplit.{plugin}.{name}.rollout_paused"));
        }
    }
    (gauges, counters)
}

/// The weight gauges (name, value) a config sets when Envoy creates it: each upstream's weight
/// at Unix time `wall_ms` (its rollout's, else the configured one). A guard's ejections show
/// from the first tick on, at the config's first stream on each worker. A config without a
/// rollout or a guard never ticks: these stay, at no cost per request.
#[cfg_attr(not(feature = "native"), allow(dead_code))]
pub fn initial_weight_gauges(plan: &Plan, plugin: &str, wall_ms: u64) -> Vec<(String, u64)> {
    plan.services
        .iter()
        .flat_map(|service| {
            crate::tick::scheduled_weights(service, wall_ms)
                .into_iter()
                .enumerate()
                .map(move |(u, weight)| {
                    (
                        crate::tick::weight_gauge_name(plugin, service, u),
                        u64::from(weight),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{initial_weight_gauges, namespace, tick_stats};
    use crate::host::FakeHost;
    use crate::plan::Plan;
    use crate::tick::PlanTick;

    #[test]
    fn every_metric_the_tick_defines_is_defined_up_front() {
        let plan = Plan::from_json(
            br#"{"services": [
                {"name": "a.b", "upstreams": [
                    {"name": "v1", "cluster": "c1", "weight": 50},
                    {"name": "v 2", "cluster": "c2", "weight": 50}],
                 "guard": {"error_rate": 0.5, "min_requests": 5, "max_ejected_percent": 100},
                 "rollout": {"start": "2020-01-01T00:00:00Z",
                             "steps": [{"at_s": 0, "weights": {"v1": 1, "v 2": 99}}]}},
                {"name": "plain", "upstreams": [{"name": "v1", "cluster": "c1", "weight": 1}],
                 "rollout": {"start": "2020-01-01T00:00:00Z",
                             "steps": [{"at_s": 0, "weights": {"v1": 1}}]}}]}"#,
        )
        .unwrap();
        let host = FakeHost::default();
        let mut tick = PlanTick::new(&plan, None);
        // v 2 fails: ejected (a counter defined), the rollout paused (its gauge set).
        for _ in 0..10 {
            tick.record_outcome(0, 0, crate::guard::Outcome::Status(200), 1);
            tick.record_outcome(0, 1, crate::guard::Outcome::Status(500), 1);
        }
        let at = |ms: u64| crate::tick::Now {
            wall_ms: 1_800_000_000_000 + ms,
            monotonic_ms: 1_000_000 + ms,
        };
        tick.run(&plan, "my.filter", &host, at(0));
        tick.run(&plan, "my.filter", &host, at(1000));
        let (gauges, counters) = tick_stats(&plan, "my.filter");
        let mut defined_gauges: Vec<String> = host
            .gauges
            .borrow()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let defined_counters: Vec<String> = host
            .counters
            .borrow()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!defined_counters.is_empty());
        assert!(
            defined_counters.iter().all(|c| counters.contains(c)),
            "{defined_counters:?}"
        );
        defined_gauges.sort();
        let mut gauges = gauges;
        gauges.sort();
        assert_eq!(defined_gauges, gauges);
    }

    #[test]
    fn a_config_sets_each_weight_gauge_when_created_from_its_rollout_or_its_weights() {
        let plan = Plan::from_json(
            br#"{"services": [
                {"name": "a", "upstreams": [
                    {"name": "v1", "cluster": "c1", "weight": 90},
                    {"name": "v2", "cluster": "c2", "weight": 10}],
                 "rollout": {"start": "2030-01-01T00:00:00Z",
                             "steps": [{"at_s": 0, "weights": {"v1": 40, "v2": 60}}]}},
                {"name": "b", "upstreams": [{"name": "v1", "cluster": "c1", "weight": 7}]}]}"#,
        )
        .unwrap();
        let start = plan.services[0].rollout.as_ref().unwrap().start_ms;
        let gauges = |ms| initial_weight_gauges(&plan, "f", ms);
        let named = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
        };
        assert_eq!(
            gauges(start - 1),
            named(&[
                ("meshsplit.f.a.v1.weight", 90),
                ("meshsplit.f.a.v2.weight", 10),
                ("meshsplit.f.b.v1.weight", 7)
            ])
        );
        assert_eq!(
            gauges(start),
            named(&[
                ("meshsplit.f.a.v1.weight", 40),
                ("meshsplit.f.a.v2.weight", 60),
                ("meshsplit.f.b.v1.weight", 7)
            ])
        );
        // Every one of them is defined up front.
        let (defined, _) = tick_stats(&plan, "f");
        assert!(gauges(start).iter().all(|(n, _)| defined.contains(n)));
    }

    fn two_upstreams(v2_cluster: &str, v2_weight: u32) -> Plan {
        Plan::from_json(
            format!(
                r#"{{"services": [{{"name": "svc", "upstreams": [
                    {{"name": "v1", "cluster": "c1", "weight": 50}},
                    {{"name": "v2", "cluster": "{v2_cluster}", "weight": {v2_weight}}}],
                 "guard": {{"error_rate": 0.5}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn configs_sending_an_upstream_to_different_clusters_have_different_namespaces() {
        assert_ne!(
            namespace(&two_upstreams("c2", 50)),
            namespace(&two_upstreams("other-c2", 50))
        );
    }

    #[test]
    fn a_config_that_changes_no_cluster_keeps_its_namespace() {
        assert_eq!(
            namespace(&two_upstreams("c2", 50)),
            namespace(&two_upstreams("c2", 10))
        );
    }
}

#[cfg(feature = "native")]
mod worker {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::hash::{BuildHasherDefault, Hasher};
    use std::rc::Rc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Weak};
    use std::time::{Duration, Instant};

    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::host::{ConfigTick, StoreOnly};
    use super::{clock, imports};
    use crate::host::Host;
    use crate::metrics::Counted;
    use crate::plan::{stat_segment, OnUnknownService, Plan, Strategy};
    use crate::tick::PlanTick;

    /// What every worker needs to build its own plan: the validated configuration bytes, the
    /// filter's name, and the ids of the metrics defined for it on the main thread.
    pub struct Source {
        id: u64,
        pub bytes: Vec<u8>,
        pub plugin: String,
        /// Where this config's shared data lives ([`super::namespace`]).
        pub namespace: String,
        /// The plan's cluster and upstream headers and what it does with an unknown service:
        /// what a request gets when no plan decides it (a panic, or no plan on the worker).
        pub headers: crate::plan::OwnedHeaders,
        pub reject_unknown: bool,
        /// Gauge ids by name: least-request in-flight gauges, and the guard's and rollout's
        /// gauges ([`super::tick_stats`]).
        pub gauges: HashMap<String, usize>,
        /// Counter ids by name the core may ask for: the guard's ejection counters.
        pub tick_counters: HashMap<String, usize>,
        pub counters: Counters,
        /// The generation of this configuration ([`crate::tick::claim`]): only the newest of
        /// a filter name decides for the guard.
        pub generation: Option<u64>,
        /// Its generation among the filter name's configurations that set weight gauges
        /// ([`crate::tick::claim_gauges`]): only the newest sets them.
        pub gauge_generation: Option<u64>,
        /// Gauges of the filter name's previous configuration that this one does not set, put
        /// back to 0 by the first stream (`stale_zeroed`).
        pub stale_gauges: Vec<usize>,
        pub stale_zeroed: std::sync::atomic::AtomicBool,
        /// Dropped with the config: workers then drop their plans of it.
        alive: Arc<()>,
    }

    impl Source {
        pub fn new(
            plan: &Plan,
            bytes: &[u8],
            plugin: &str,
            gauges: HashMap<String, usize>,
            tick_counters: HashMap<String, usize>,
            counters: Counters,
        ) -> Self {
            static NEXT_ID: AtomicU64 = AtomicU64::new(1);
            Self {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                bytes: bytes.to_vec(),
                plugin: plugin.to_owned(),
                namespace: super::namespace(plan),
                headers: plan.headers.clone(),
                reject_unknown: plan.on_unknown_service == OnUnknownService::Reject,
                gauges,
                tick_counters,
                counters,
                generation: None,
                gauge_generation: None,
                stale_gauges: Vec::new(),
                stale_zeroed: std::sync::atomic::AtomicBool::new(false),
                alive: Arc::new(()),
            }
        }

        /// Unique per config for the life of the process.
        pub fn id(&self) -> u64 {
            self.id
        }

        /// The host over this config's shared data alone.
        pub fn store(&self) -> StoreOnly<'_> {
            StoreOnly {
                namespace: &self.namespace,
            }
        }

        pub fn with_generation(self, generation: Option<u64>) -> Self {
            Self { generation, ..self }
        }

        pub fn with_gauge_generation(self, gauge_generation: Option<u64>) -> Self {
            Self {
                gauge_generation,
                ..self
            }
        }

        pub fn with_stale_gauges(self, stale_gauges: Vec<usize>) -> Self {
            Self {
                stale_gauges,
                ..self
            }
        }
    }

    /// One worker thread's state: its plan of every config it has served, and its generator.
    struct Worker {
        rng: Xoshiro256PlusPlus,
        plans: HashMap<u64, WorkerPlan, BuildHasherDefault<IdHasher>>,
    }

    /// The hasher of config ids: a process-wide sequence (`NEXT_ID`), never chosen by a client,
    /// so a multiplication spreads them well enough. SipHash, the default, cost about 300
    /// instructions per request here (two lookups; `make bench`, scenario K).
    #[derive(Default)]
    struct IdHasher(u64);

    impl Hasher for IdHasher {
        fn finish(&self) -> u64 {
            self.0
        }

        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.write_u64(u64::from(byte));
            }
        }

        fn write_u64(&mut self, n: u64) {
            self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    /// A worker's plan of one config, and the housekeeping tick of its rollouts and guards.
    struct WorkerPlan {
        alive: Weak<()>,
        plan: Rc<Plan>,
        /// Its config's plugin name and shared-data namespace: to file its last outcomes when
        /// the config is gone.
        plugin: String,
        namespace: String,
        /// `None` when no service has a rollout or a guard: nothing to tick, no clock to read.
        tick: Option<Ticking>,
    }

    struct Ticking {
        tick: PlanTick,
        /// When the next tick is due, on the monotonic clock (`None`: at once). The wall clock
        /// can step (NTP, an operator): scheduled on it, a step back of a minute would stop the
        /// guard and the rollouts for a minute.
        due: Option<Instant>,
    }

    /// How often a worker runs a plan's tick (at most; only when a stream of it comes by):
    /// twice a second, as the wasm build's tick.
    const TICK: Duration = Duration::from_millis(500);

    impl Ticking {
        /// The dynamic-module ABI of Envoy 1.40 has no timer for HTTP filters or cluster
        /// specifiers (its schedulers only post an event to a thread, at once), so the tick runs
        /// from the streams themselves: a clock read per stream of a plan with a rollout or a
        /// guard (a vDSO `clock_gettime`, tens of ns), and the tick itself at most every
        /// [`TICK`] per worker. A worker without traffic does not tick; its next stream
        /// ticks first. When it is due follows the monotonic clock; the tick itself gets the
        /// wall clock, which rollouts are written in.
        fn run_if_due<H: Host + ?Sized>(
            &mut self,
            plan: &Plan,
            plugin: &str,
            host: &H,
            now: Instant,
        ) {
            self.run_if_due_at(plan, plugin, host, now, clock::wall_ms);
        }

        /// [`Self::run_if_due`] at `now`; `wall_ms` is read only when the tick runs. Returns
        /// whether it ran.
        fn run_if_due_at<H: Host + ?Sized>(
            &mut self,
            plan: &Plan,
            plugin: &str,
            host: &H,
            now: Instant,
            wall_ms: impl FnOnce() -> u64,
        ) -> bool {
            if self.due.is_some_and(|due| now < due) {
                return false;
            }
            self.due = now.checked_add(TICK);
            let now = crate::tick::Now {
                wall_ms: wall_ms(),
                monotonic_ms: crate::tick::process_monotonic_ms(),
            };
            self.tick.run(plan, plugin, host, now);
            true
        }
    }

    thread_local! {
        static WORKER: RefCell<Worker> = RefCell::new(Worker {
            rng: Xoshiro256PlusPlus::from_seed(seed()),
            plans: HashMap::default(),
        });
    }

    /// Seeded once per thread, so the request path never asks the system for randomness.
    fn seed() -> [u8; 32] {
        let mut seed = [0u8; 32];
        if let Err(err) = getrandom::fill(&mut seed) {
            log::warn!("no random seed from the system ({err}); seeding from the clock");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        seed
    }

    /// Runs `f` with this thread's plan of `source` (compiled on first use) and generator.
    /// If the plan has rollouts or guards, their tick runs first when due (at once for a
    /// plan just compiled, so a rollout applies from the first request), with `host`.
    /// `None` if the plan cannot be built (it was validated on the main thread, so it can) or
    /// the thread's state is already in use (a re-entrant call).
    pub fn with_plan<H: Host + ?Sized, T>(
        source: &Source,
        host: &H,
        f: impl FnOnce(&Rc<Plan>, &mut Xoshiro256PlusPlus) -> T,
    ) -> Option<T> {
        with_plan_timed(source, host, |plan, rng, _| f(plan, rng))
    }

    /// [`with_plan`], giving `f` the monotonic time the tick's schedule was checked at (`None`
    /// for a plan without rollouts or guards, which reads no clock): a latency guard's streams
    /// start then, at no clock read of their own.
    pub fn with_plan_timed<H: Host + ?Sized, T>(
        source: &Source,
        host: &H,
        f: impl FnOnce(&Rc<Plan>, &mut Xoshiro256PlusPlus, Option<Instant>) -> T,
    ) -> Option<T> {
        WORKER.with(|cell| {
            let mut worker = cell.try_borrow_mut().ok()?;
            let worker = &mut *worker;
            if !worker.plans.contains_key(&source.id) {
                // A config this thread has not served yet: forget the plans of configs that
                // are gone, then build this one's.
                forget_gone(&mut worker.plans);
                let entry = compile(source)?;
                worker.plans.insert(source.id, entry);
            }
            let entry = worker.plans.get_mut(&source.id)?;
            let mut now = None;
            if let Some(ticking) = &mut entry.tick {
                let at = Instant::now();
                now = Some(at);
                ticking.run_if_due(&entry.plan, &source.plugin, host, at);
            }
            Some(f(&entry.plan, &mut worker.rng, now))
        })
    }

    /// The tick of `source` on Envoy's main thread, from the timer (`timer.rs`), whose config
    /// `envoy` is: with no traffic at all the weights in force, the gauges and readmissions
    /// follow the clock. It never ejects (this thread sees no streams and can count no
    /// ejection); the workers do, from their streams.
    pub fn tick_idle(source: &Source, envoy: imports::FilterConfig) {
        let host = ConfigTick {
            store: source.store(),
            envoy,
            gauges: &source.gauges,
        };
        WORKER.with(|cell| {
            let Ok(mut worker) = cell.try_borrow_mut() else {
                return;
            };
            let worker = &mut *worker;
            if !worker.plans.contains_key(&source.id) {
                forget_gone(&mut worker.plans);
                let Some(entry) = compile(source) else {
                    return;
                };
                worker.plans.insert(source.id, entry);
            }
            let Some(entry) = worker.plans.get_mut(&source.id) else {
                return;
            };
            if let Some(ticking) = &mut entry.tick {
                ticking.tick.never_eject();
                ticking.run_if_due(&entry.plan, &source.plugin, &host, Instant::now());
            }
        });
    }

    /// Forgets this thread's plans of configs that are gone. Their outcomes not yet filed
    /// still count: filed first, deciding nothing.
    fn forget_gone(plans: &mut HashMap<u64, WorkerPlan, BuildHasherDefault<IdHasher>>) {
        plans.retain(|_, entry| {
            let alive = entry.alive.strong_count() > 0;
            if let (false, Some(ticking)) = (alive, &mut entry.tick) {
                let store = StoreOnly {
                    namespace: &entry.namespace,
                };
                let now_ms = crate::tick::process_monotonic_ms();
                ticking
                    .tick
                    .flush(&entry.plan, &entry.plugin, &store, now_ms);
            }
            alive
        });
    }

    /// This thread's plan of `source`, with its metric ids.
    fn compile(source: &Source) -> Option<WorkerPlan> {
        let plan = match Plan::from_json_named(&source.bytes, &source.plugin) {
            Ok(plan) => Rc::new(plan),
            Err(err) => {
                log::error!("invalid configuration on a worker: {err}");
                return None;
            }
        };
        for service in &plan.services {
            if let Strategy::LeastRequest(slots) = &service.strategy {
                for slot in slots.iter() {
                    let id = source.gauges.get(&slot.gauge).copied();
                    slot.gauge_id.set(id.and_then(|id| u32::try_from(id).ok()));
                }
            }
        }
        let scheduled = plan
            .services
            .iter()
            .any(|s| s.guard.is_some() || s.rollout.is_some());
        let tick = scheduled.then(|| Ticking {
            tick: PlanTick::new(&plan, source.generation)
                .with_gauge_generation(source.gauge_generation),
            due: None,
        });
        Some(WorkerPlan {
            alive: Arc::downgrade(&source.alive),
            plugin: source.plugin.clone(),
            namespace: source.namespace.clone(),
            plan,
            tick,
        })
    }

    /// A stream of a guarded service of `source` ended on this thread with `outcome`; `timed`:
    /// when it started and when its first byte came (if it did), when its guard times streams.
    /// Runs the tick too when it is due, so a busy worker reports its outcomes within a tick.
    /// One clock read, which the stream's duration, its slice and the tick use.
    pub fn record_outcome<H: Host + ?Sized>(
        source: &Source,
        host: &H,
        service: usize,
        upstream: usize,
        outcome: crate::guard::Outcome,
        timed: Option<(Instant, Option<Instant>)>,
    ) {
        WORKER.with(|cell| {
            let Ok(mut worker) = cell.try_borrow_mut() else {
                return;
            };
            let Some(entry) = worker.plans.get_mut(&source.id) else {
                return;
            };
            if let Some(ticking) = &mut entry.tick {
                let now = Instant::now();
                // To its first byte when it had one, else to its end (an abandoned request).
                let elapsed_ms = timed.map(|(started, first_byte)| {
                    let ended = first_byte.unwrap_or(now);
                    u64::try_from(ended.saturating_duration_since(started).as_millis())
                        .unwrap_or(u64::MAX)
                });
                // Stamped with the moment it ended: it counts in that moment's window, however
                // late this worker's next tick comes.
                let at_ms = crate::tick::process_monotonic_ms_at(now);
                ticking.tick.record_outcome_at(
                    service,
                    upstream,
                    outcome,
                    1,
                    elapsed_ms,
                    Some(at_ms),
                );
                ticking.run_if_due(&entry.plan, &source.plugin, host, now);
            }
        });
    }

    /// The ids of a config's request counters, defined when Envoy creates the config (Envoy
    /// allows no metric definitions later). Names as in `metrics.rs`, under Envoy's
    /// dynamic-module stat namespace (`dynamicmodulescustom.` by default).
    pub struct Counters {
        /// `routed[service][upstream]`.
        routed: Vec<Vec<Option<usize>>>,
        /// `rules[service][rule]`.
        rules: Vec<Vec<Option<usize>>>,
        unknown: Option<usize>,
        rejected: Option<usize>,
        /// `superseded[service][upstream]`: the cluster specifier's decisions that a later one
        /// of the same request replaced (empty for the HTTP filter, which decides once).
        superseded: Vec<Vec<Option<usize>>>,
    }

    /// `meshsplit.<plugin>.<service>.<upstream>.<metric>` of every upstream, defined:
    /// `[service][upstream]`.
    fn per_upstream(
        plan: &Plan,
        plugin: &str,
        metric: &str,
        define: &mut impl FnMut(&str) -> Option<usize>,
    ) -> Vec<Vec<Option<usize>>> {
        let plugin = stat_segment(plugin);
        plan.services
            .iter()
            .map(|s| {
                let service = stat_segment(&s.name);
                s.upstreams
                    .iter()
                    .map(|u| {
                        let upstream = stat_segment(&u.name);
                        define(&format!("meshsplit.{plugin}.{service}.{upstream}.{metric}"))
                    })
                    .collect()
            })
            .collect()
    }

    impl Counters {
        pub fn define(
            plan: &Plan,
            plugin: &str,
            mut define: impl FnMut(&str) -> Option<usize>,
        ) -> Self {
            let routed = per_upstream(plan, plugin, "requests_total", &mut define);
            let plugin = stat_segment(plugin);
            let rules = plan
                .services
                .iter()
                .map(|s| {
                    let service = stat_segment(&s.name);
                    (0..s.rules.len())
                        .map(|r| {
                            define(&format!(
                                "meshsplit.{plugin}.{service}.rules.{r}.hits_total"
                            ))
                        })
                        .collect()
                })
                .collect();
            Self {
                routed,
                rules,
                unknown: define(&format!("meshsplit.{plugin}.unknown_service_total")),
                rejected: define(&format!("meshsplit.{plugin}.rejected_total")),
                superseded: Vec::new(),
            }
        }

        /// Also defines `<service>.<upstream>.superseded_total` (the cluster specifier's).
        pub fn with_superseded(
            mut self,
            plan: &Plan,
            plugin: &str,
            mut define: impl FnMut(&str) -> Option<usize>,
        ) -> Self {
            self.superseded = per_upstream(plan, plugin, "superseded_total", &mut define);
            self
        }

        /// The counter a superseded decision adds 1 to: its upstream's `superseded_total`.
        pub fn superseded_of(&self, counted: Counted) -> Option<usize> {
            match counted {
                Counted::Upstream {
                    service, upstream, ..
                } => self
                    .superseded
                    .get(service)
                    .and_then(|row| row.get(upstream))
                    .copied()
                    .flatten(),
                Counted::Unknown { .. } | Counted::Nothing => None,
            }
        }

        /// The counters one request adds 1 to.
        pub fn of(&self, counted: Counted) -> [Option<usize>; 2] {
            let get = |table: &Vec<Vec<Option<usize>>>, i: usize, j: usize| {
                table.get(i).and_then(|row| row.get(j)).copied().flatten()
            };
            match counted {
                Counted::Upstream {
                    service,
                    upstream,
                    rule,
                } => [
                    get(&self.routed, service, upstream),
                    rule.and_then(|r| get(&self.rules, service, r)),
                ],
                Counted::Unknown { rejected } => {
                    [self.unknown, if rejected { self.rejected } else { None }]
                }
                Counted::Nothing => [None, None],
            }
        }
    }

    /// Sends the `log` crate's records to Envoy's log (`[dynamic_modules]`), at Envoy's level.
    struct EnvoyLogger;

    impl log::Log for EnvoyLogger {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            imports::log_enabled(metadata.level())
        }
        fn log(&self, record: &log::Record<'_>) {
            if !self.enabled(record.metadata()) {
                return;
            }
            match record.args().as_str() {
                Some(message) => imports::log(record.level(), message),
                None => imports::log(record.level(), &record.args().to_string()),
            }
        }
        fn flush(&self) {}
    }

    static LOGGER: EnvoyLogger = EnvoyLogger;

    /// Once, when Envoy loads the module.
    pub fn on_program_init() {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        std::panic::set_hook(Box::new(|info| {
            imports::log(log::Level::Error, &format!("panic: {info}"))
        }));
    }

    #[cfg(test)]
    mod tests {
        use std::time::{Duration, Instant};

        use super::Ticking;
        use crate::host::FakeHost;
        use crate::plan::Plan;
        use crate::tick::PlanTick;

        #[test]
        fn ticks_follow_the_monotonic_clock_when_the_wall_clock_steps_back() {
            let plan = Plan::from_json(
                br#"{"services": [{"name": "svc", "upstreams": [
                    {"name": "v1", "cluster": "c1", "weight": 50},
                    {"name": "v2", "cluster": "c2", "weight": 50}],
                 "guard": {"error_rate": 0.5}}]}"#,
            )
            .unwrap();
            let host = FakeHost::default();
            let mut ticking = Ticking {
                tick: PlanTick::new(&plan, None),
                due: None,
            };
            let t0 = Instant::now();
            let wall = 1_800_000_000_000;
            let at = |ms| t0 + Duration::from_millis(ms);
            assert!(ticking.run_if_due_at(&plan, "p", &host, at(0), || wall));
            assert!(!ticking.run_if_due_at(&plan, "p", &host, at(499), || wall + 499));
            // The wall clock went back a minute: the next tick is due as ever, 500 ms on.
            assert!(ticking.run_if_due_at(&plan, "p", &host, at(500), || wall - 59_500));
            assert!(!ticking.run_if_due_at(&plan, "p", &host, at(900), || wall - 59_100));
            assert!(ticking.run_if_due_at(&plan, "p", &host, at(1000), || wall - 59_000));
        }
    }
}
