//! The native build (an Envoy dynamic module, `libmeshsplit.so`): the ABI's declarations and
//! exported hooks with all their `unsafe` (`abi`), the HTTP filter glue (`filter`), the cluster
//! specifier glue (`specifier`), the host calls behind the core's `Host` trait (`host`) and the
//! process-wide shared data the least-request counts use (`store`). Arrows point to the core only.
//!
//! Threading: Envoy creates a config on the main thread and uses it on every worker at once. The
//! core's `Plan` keeps per-worker state in `Cell`s (round-robin positions, gauge ids) and is not
//! `Sync`, so the shared config holds only the validated JSON and metric ids (immutable, `Sync`),
//! and each worker thread compiles its own `Plan` from it on first use, beside its own random
//! generator: the same arrangement as one wasm VM per worker.

#[cfg(feature = "native")]
mod abi;
#[cfg(feature = "native")]
mod filter;
#[cfg(feature = "native")]
mod host;
#[cfg(feature = "native")]
mod specifier;
mod store;

#[cfg(feature = "native")]
pub use worker::*;

#[cfg(feature = "native")]
mod worker {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Weak};

    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::abi;
    use crate::metrics::Counted;
    use crate::plan::{stat_segment, Plan, Strategy};

    /// What every worker needs to build its own plan: the validated configuration bytes, the
    /// filter's name, and the ids of the metrics defined for it on the main thread.
    pub struct Source {
        id: u64,
        pub bytes: Vec<u8>,
        pub plugin: String,
        /// Gauge ids by name (least-request in-flight gauges).
        pub gauges: HashMap<String, usize>,
        pub counters: Counters,
        /// Dropped with the config: workers then drop their plans of it.
        alive: Arc<()>,
    }

    impl Source {
        pub fn new(
            bytes: &[u8],
            plugin: &str,
            gauges: HashMap<String, usize>,
            counters: Counters,
        ) -> Self {
            static NEXT_ID: AtomicU64 = AtomicU64::new(1);
            Self {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                bytes: bytes.to_vec(),
                plugin: plugin.to_owned(),
                gauges,
                counters,
                alive: Arc::new(()),
            }
        }
    }

    /// One worker thread's state: its plan of every config it has served, and its generator.
    struct Worker {
        rng: Xoshiro256PlusPlus,
        plans: HashMap<u64, (Weak<()>, Rc<Plan>)>,
    }

    thread_local! {
        static WORKER: RefCell<Worker> = RefCell::new(Worker {
            rng: Xoshiro256PlusPlus::from_seed(seed()),
            plans: HashMap::new(),
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
    /// `None` if the plan cannot be built (it was validated on the main thread, so it can) or
    /// the thread's state is already in use (a re-entrant call).
    pub fn with_plan<T>(
        source: &Source,
        f: impl FnOnce(&Rc<Plan>, &mut Xoshiro256PlusPlus) -> T,
    ) -> Option<T> {
        WORKER.with(|cell| {
            let mut worker = cell.try_borrow_mut().ok()?;
            let worker = &mut *worker;
            let plan = match worker.plans.get(&source.id) {
                Some((_, plan)) => Rc::clone(plan),
                None => {
                    // A config this thread has not served yet: forget the plans of configs
                    // that are gone, then build this one's.
                    worker
                        .plans
                        .retain(|_, (alive, _)| alive.strong_count() > 0);
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
                    worker
                        .plans
                        .insert(source.id, (Arc::downgrade(&source.alive), Rc::clone(&plan)));
                    plan
                }
            };
            Some(f(&plan, &mut worker.rng))
        })
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
    }

    impl Counters {
        pub fn define(
            plan: &Plan,
            plugin: &str,
            mut define: impl FnMut(&str) -> Option<usize>,
        ) -> Self {
            let plugin = stat_segment(plugin);
            let routed = plan
                .services
                .iter()
                .map(|s| {
                    let service = stat_segment(&s.name);
                    s.upstreams
                        .iter()
                        .map(|u| {
                            let upstream = stat_segment(&u.name);
                            define(&format!(
                                "meshsplit.{plugin}.{service}.{upstream}.requests_total"
                            ))
                        })
                        .collect()
                })
                .collect();
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
            abi::log_enabled(metadata.level())
        }
        fn log(&self, record: &log::Record<'_>) {
            if !self.enabled(record.metadata()) {
                return;
            }
            match record.args().as_str() {
                Some(message) => abi::log(record.level(), message),
                None => abi::log(record.level(), &record.args().to_string()),
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
            abi::log(log::Level::Error, &format!("panic: {info}"))
        }));
    }
}
