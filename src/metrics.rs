//! Request counters of one plan, kept in VM memory and added to Envoy's counters on the
//! housekeeping tick, so the request path makes no host call for them.
//!
//! Stat names (`wasmcustom.` in front in Envoy's stats; `<plugin>`, `<service>` and `<upstream>`
//! as stat segments: characters other than letters, digits, `-` and `_` become `_`):
//! - `meshsplit.<plugin>.<service>.<upstream>.requests_total`: requests routed to the upstream;
//! - `meshsplit.<plugin>.<service>.rules.<index>.hits_total`: requests a rule claimed;
//! - `meshsplit.<plugin>.unknown_service_total`: requests whose key matched no service;
//! - `meshsplit.<plugin>.rejected_total`: of those, the ones answered 404 (`reject`);
//! - `meshsplit.<plugin>.config_failures_total`: configurations refused (once per Envoy each);
//! - `meshsplit.<plugin>.config_refused` (gauge): 1 while the plugin's latest configuration is
//!   one the filter refused (the previous one keeps serving), 0 once it accepts one.

use crate::host::Host;
use crate::plan::{stat_segment, Plan};

/// What one request's routing counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Routed to `upstream` of `service`, by rule `rule` or else by the strategy.
    Upstream {
        service: usize,
        upstream: usize,
        rule: Option<usize>,
    },
    /// The key matched no service; `rejected` when a 404 was sent.
    Unknown { rejected: bool },
    /// Nothing to count (a service without the chosen upstream; cannot happen with a valid plan).
    Nothing,
}

/// One counter: requests not yet added to Envoy's counter, and that counter's id once defined.
#[derive(Debug, Default, Clone)]
struct Counter {
    pending: u64,
    id: Option<u32>,
}

impl Counter {
    /// Adds the pending count to Envoy's counter (defining it on first use); keeps it pending
    /// when the host has no counter to give.
    fn flush<H: Host + ?Sized>(&mut self, host: &H, name: impl FnOnce() -> String) {
        if self.pending == 0 {
            return;
        }
        if self.id.is_none() {
            self.id = host.define_counter(&name());
        }
        if let Some(id) = self.id {
            host.increment_counter(id, self.pending);
            self.pending = 0;
        }
    }
}

/// The counters of one plan (one filter instance in one VM).
#[derive(Debug, Clone)]
pub struct PlanCounters {
    plugin: String,
    /// `routed[service_start[s] + u]` counts upstream `u` of service `s`.
    service_start: Box<[usize]>,
    routed: Box<[Counter]>,
    /// `rule_hits[rule_start[s] + r]` counts rule `r` of service `s`.
    rule_start: Box<[usize]>,
    rule_hits: Box<[Counter]>,
    unknown: Counter,
    rejected: Counter,
}

impl PlanCounters {
    pub fn new(plan: &Plan, plugin: &str) -> Self {
        let starts = |sizes: &mut dyn Iterator<Item = usize>| -> (Box<[usize]>, usize) {
            let mut total = 0;
            let starts = sizes
                .map(|n| {
                    let start = total;
                    total += n;
                    start
                })
                .collect();
            (starts, total)
        };
        let (service_start, upstreams) =
            starts(&mut plan.services.iter().map(|s| s.upstreams.len()));
        let (rule_start, rules) = starts(&mut plan.services.iter().map(|s| s.rules.len()));
        Self {
            plugin: stat_segment(plugin),
            service_start,
            routed: vec![Counter::default(); upstreams].into_boxed_slice(),
            rule_start,
            rule_hits: vec![Counter::default(); rules].into_boxed_slice(),
            unknown: Counter::default(),
            rejected: Counter::default(),
        }
    }

    /// Counts one request in VM memory: no host call.
    pub fn count(&mut self, counted: Counted) {
        match counted {
            Counted::Upstream {
                service,
                upstream,
                rule,
            } => {
                let start = self.service_start.get(service).copied();
                if let Some(c) = start.and_then(|s| self.routed.get_mut(s + upstream)) {
                    c.pending += 1;
                }
                if let Some(rule) = rule {
                    let start = self.rule_start.get(service).copied();
                    if let Some(c) = start.and_then(|s| self.rule_hits.get_mut(s + rule)) {
                        c.pending += 1;
                    }
                }
            }
            Counted::Unknown { rejected } => {
                self.unknown.pending += 1;
                if rejected {
                    self.rejected.pending += 1;
                }
            }
            Counted::Nothing => {}
        }
    }

    /// Adds every pending count to Envoy's counters: one host call per counter that changed
    /// (plus one to define it the first time).
    pub fn flush<H: Host + ?Sized>(&mut self, plan: &Plan, host: &H) {
        let plugin = &self.plugin;
        for (s, service) in plan.services.iter().enumerate() {
            let upstream_start = self.service_start.get(s).copied().unwrap_or(usize::MAX);
            for (u, upstream) in service.upstreams.iter().enumerate() {
                if let Some(counter) = self.routed.get_mut(upstream_start.wrapping_add(u)) {
                    // Names are built only the first time a counter is flushed.
                    counter.flush(host, || {
                        format!(
                            "meshsplit.{plugin}.{}.{}.requests_total",
                            stat_segment(&service.name),
                            stat_segment(&upstream.name)
                        )
                    });
                }
            }
            let rule_start = self.rule_start.get(s).copied().unwrap_or(usize::MAX);
            for r in 0..service.rules.len() {
                if let Some(counter) = self.rule_hits.get_mut(rule_start.wrapping_add(r)) {
                    counter.flush(host, || {
                        format!(
                            "meshsplit.{plugin}.{}.rules.{r}.hits_total",
                            stat_segment(&service.name)
                        )
                    });
                }
            }
        }
        self.unknown
            .flush(host, || format!("meshsplit.{plugin}.unknown_service_total"));
        self.rejected
            .flush(host, || format!("meshsplit.{plugin}.rejected_total"));
    }
}

/// The name of the gauge that is 1 while `plugin`'s latest configuration was refused.
pub fn config_refused_name(plugin: &str) -> String {
    format!("meshsplit.{}.config_refused", stat_segment(plugin))
}

/// The name of the counter of refused configurations of `plugin`.
pub fn config_failures_name(plugin: &str) -> String {
    format!("meshsplit.{}.config_failures_total", stat_segment(plugin))
}
