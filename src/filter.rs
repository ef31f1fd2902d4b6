//! The HTTP filter: what happens to one request's headers, written against the [`Host`] trait,
//! plus the thin proxy-wasm root/stream context glue that feeds it (wasm32 only).

use rand_core::Rng;

use crate::host::Host;
use crate::plan::{OnUnknownService, Plan, ServiceFrom};
use crate::request::{host_key, query_param};

/// What the stream should do after its request headers were handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on to the router.
    Continue,
    /// A local reply was sent; stop processing.
    Replied,
}

/// Routes one request: pick an upstream of the requested service and write the cluster header
/// (and `:authority` when the upstream sets one). Host calls: one read, then one or two writes.
pub fn on_request_headers<H, R>(plan: &Plan, rng: &mut R, host: &H) -> Verdict
where
    H: Host + ?Sized,
    R: Rng + ?Sized,
{
    let mut raw_key = read_service_key(plan, host);
    let key = raw_key.as_deref_mut().map(host_key);
    let upstream = key
        .and_then(|k| plan.service_for(k))
        .and_then(|s| s.pick(rng));
    if let Some(upstream) = upstream {
        // Always overwrite: a client-sent cluster header is never honoured.
        host.set_request_header(&plan.cluster_header, Some(&upstream.cluster));
        if let Some(authority) = &upstream.authority {
            host.set_request_header(":authority", Some(authority));
        }
        return Verdict::Continue;
    }
    match plan.on_unknown_service {
        OnUnknownService::Pass => {
            host.set_request_header(&plan.cluster_header, None);
            Verdict::Continue
        }
        OnUnknownService::Reject => {
            let body = unknown_service_body(key);
            host.send_local_reply(
                404,
                &[("content-type", "application/json")],
                body.as_bytes(),
            );
            Verdict::Replied
        }
    }
}

/// `{"error":"unknown service","service":KEY}` (`null` without a key), written by hand: the
/// reject path is the only place the module would otherwise need a JSON serializer.
fn unknown_service_body(key: Option<&str>) -> String {
    let mut body = String::from(r#"{"error":"unknown service","service":"#);
    match key {
        None => body.push_str("null"),
        Some(key) => {
            body.push('"');
            for c in key.chars() {
                match c {
                    '"' => body.push_str("\\\""),
                    '\\' => body.push_str("\\\\"),
                    c if u32::from(c) < 0x20 => {
                        body.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    c => body.push(c),
                }
            }
            body.push('"');
        }
    }
    body.push('}');
    body
}

fn read_service_key<H: Host + ?Sized>(plan: &Plan, host: &H) -> Option<String> {
    match &plan.service_from {
        ServiceFrom::Authority => host.request_header(":authority"),
        ServiceFrom::Header(name) => host.request_header(name),
        ServiceFrom::Query(param) => {
            let path = host.request_header(":path")?;
            query_param(&path, param).map(std::borrow::Cow::into_owned)
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use glue::SplitRoot;

#[cfg(target_arch = "wasm32")]
mod glue {
    use std::cell::RefCell;
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType};
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::{on_request_headers, Verdict};
    use crate::host::EnvoyHost;
    use crate::plan::Plan;

    type SharedRng = Rc<RefCell<Xoshiro256PlusPlus>>;

    /// Owns the plan of this VM and the VM's random generator; hands both to each stream.
    pub struct SplitRoot {
        plan: Option<Rc<Plan>>,
        rng: SharedRng,
    }

    impl SplitRoot {
        pub fn new() -> Self {
            Self {
                plan: None,
                rng: Rc::new(RefCell::new(seeded_rng())),
            }
        }
    }

    impl Default for SplitRoot {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Seeded once per VM, so the request path never asks the host for randomness.
    fn seeded_rng() -> Xoshiro256PlusPlus {
        let mut seed = [0u8; 32];
        match getrandom::fill(&mut seed) {
            Ok(()) => Xoshiro256PlusPlus::from_seed(seed),
            Err(err) => {
                log::warn!("no random seed from the host ({err}); seeding from the clock");
                let nanos = hostcalls::get_current_time()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
                Xoshiro256PlusPlus::seed_from_u64(nanos)
            }
        }
    }

    impl Context for SplitRoot {}

    impl RootContext for SplitRoot {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
            let started = std::time::Instant::now();
            match Plan::from_json(&bytes) {
                Ok(plan) => {
                    // Read by the benchmark (configure time, VM memory); debug level keeps
                    // the several on_configure calls per plugin out of normal logs.
                    log::debug!(
                        "configured {} services in {} us; VM memory {} KiB",
                        plan.services.len(),
                        started.elapsed().as_micros(),
                        core::arch::wasm32::memory_size::<0>() * 64
                    );
                    self.plan = Some(Rc::new(plan));
                    true
                }
                Err(err) => {
                    // On a live update Envoy keeps serving with the previous plan.
                    log::error!("invalid configuration: {err}");
                    false
                }
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(SplitStream {
                plan: self.plan.clone(),
                rng: Rc::clone(&self.rng),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    /// One HTTP stream; holds the plan that was current when the stream started.
    struct SplitStream {
        plan: Option<Rc<Plan>>,
        rng: SharedRng,
    }

    impl Context for SplitStream {}

    impl HttpContext for SplitStream {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let (Some(plan), Ok(mut rng)) = (self.plan.as_deref(), self.rng.try_borrow_mut())
            else {
                return Action::Continue;
            };
            match on_request_headers(plan, &mut *rng, &EnvoyHost) {
                Verdict::Continue => Action::Continue,
                Verdict::Replied => Action::Pause,
            }
        }
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
