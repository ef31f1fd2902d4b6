//! The wasm build's glue: the instance behind the exported callbacks (a wasm VM is
//! single-threaded) and the host logger. `exports.rs` calls these functions.
use std::cell::{Cell, RefCell};

use super::host::EnvoyHost;
use super::imports;
use crate::host::Host;
use crate::instance::{
    config_fingerprint, config_summary, first_to_accept, first_to_refuse, Instance,
};
use crate::route::Verdict;

thread_local! {
    static VM: RefCell<Option<Instance>> = const { RefCell::new(None) };
    /// The memory gauge's id and the bytes this VM last added to it.
    static MEMORY: Cell<(Option<u32>, u64)> = const { Cell::new((None, 0)) };
}

/// Gauge of the linear memory of this Envoy's meshsplit VMs, summed (each VM adds the change of
/// its own on the tick, and takes it back when its last plan goes): operators and the soak test
/// watch it stay flat.
const MEMORY_GAUGE: &str = "meshsplit.vm_memory_bytes";

/// Brings this VM's share of the memory gauge to `bytes`: one host call when it changed.
fn report_memory(bytes: u64) {
    let (id, reported) = MEMORY.get();
    if bytes == reported {
        return;
    }
    let Some(id) = id.or_else(|| EnvoyHost.define_gauge(MEMORY_GAUGE)) else {
        return;
    };
    let delta = i64::try_from(bytes).unwrap_or(i64::MAX) - i64::try_from(reported).unwrap_or(0);
    EnvoyHost.add_to_gauge(id, delta);
    MEMORY.set((Some(id), bytes));
}

fn linear_memory_bytes() -> u64 {
    u64::try_from(core::arch::wasm32::memory_size::<0>()).unwrap_or(0) * 65_536
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        match record.args().as_str() {
            Some(message) => imports::log(record.level(), message),
            None => imports::log(record.level(), &record.args().to_string()),
        }
    }
    fn flush(&self) {}
}

static LOGGER: HostLogger = HostLogger;

fn with_vm<T>(f: impl FnOnce(&mut Instance) -> T) -> Option<T> {
    VM.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            let mut instance = Instance::new(seed());
            instance.set_monotonic_clock(imports::monotonic_ms);
            instance.set_sees_responses(cfg!(feature = "assign-cookie"));
            *slot = Some(instance);
        }
        slot.as_mut().map(f)
    })
}

/// Seeded once per VM, so the request path never asks the host for randomness.
fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if let Err(err) = getrandom::fill(&mut seed) {
        log::warn!("no random seed from the host ({err}); seeding from the clock");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    seed
}

pub fn on_vm_start() {
    // The host filters by its own log level; the request path does not log.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    std::panic::set_hook(Box::new(|info| {
        imports::log(log::Level::Error, &format!("panic: {info}"))
    }));
}

pub fn on_configure(root: u32) -> bool {
    let started = std::time::Instant::now();
    let configuration = imports::plugin_configuration();
    let bytes = configuration.as_slice();
    let plugin = imports::plugin_name().unwrap_or_else(|| "meshsplit".to_owned());
    let fingerprint = config_fingerprint(bytes);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = with_vm(|vm| match vm.configure(root, bytes, &plugin, &EnvoyHost) {
        Ok(plan) => {
            // The housekeeping tick of this root context: counters are flushed on it.
            if let Err(status) = imports::set_tick_period_milliseconds(TICK_MS) {
                log::warn!("no housekeeping tick (status {status}): counters stay at 0");
            }
            vm.set_gauge(&crate::metrics::config_refused_name(&plugin), 0, &EnvoyHost);
            if first_to_accept(&EnvoyHost, &plugin, &fingerprint, now_s) {
                log::info!("{}", config_summary(&plan, &fingerprint, &plugin));
            }
            // Read by the benchmark (configure time, VM memory); debug level keeps the
            // several on_configure calls per plugin out of normal logs.
            log::debug!(
                "configured {} services in {} us; VM memory {} KiB; {} plans in this VM",
                plan.services.len(),
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                core::arch::wasm32::memory_size::<0>() * 64,
                vm.plans()
            );
            true
        }
        Err(err) => {
            // On a live update Envoy keeps serving with the previous plan.
            log::error!("invalid configuration: {err}");
            vm.set_gauge(&crate::metrics::config_refused_name(&plugin), 1, &EnvoyHost);
            if first_to_refuse(&EnvoyHost, &plugin, &fingerprint, now_s) {
                vm.count(
                    &crate::metrics::config_failures_name(&plugin),
                    1,
                    &EnvoyHost,
                );
            }
            false
        }
    });
    result.unwrap_or(false)
}

/// Period of the housekeeping tick of every root context: counters reach Envoy's stats and a
/// rollout step takes effect within half a second (a tick costs nothing per request).
const TICK_MS: u32 = 500;

pub fn on_tick(root: u32) {
    with_vm(|vm| vm.tick(root, &EnvoyHost));
    report_memory(linear_memory_bytes());
}

pub fn on_context_create(context: u32, parent: u32) {
    if parent != 0 {
        with_vm(|vm| vm.stream_created(context, parent));
    }
}

pub fn on_context_delete(context: u32) {
    with_vm(|vm| {
        if vm.context_deleted(context, &EnvoyHost) {
            if vm.plans() == 0 {
                report_memory(0);
            }
            log::debug!(
                "root context {context} deleted: its plan is dropped; {} plans in this VM",
                vm.plans()
            );
        }
    });
}

pub fn on_stream_request_headers(context: u32) -> Verdict {
    #[cfg(feature = "wasm-test-hooks")]
    trap_if_asked();
    with_vm(|vm| vm.request_headers(context, &EnvoyHost)).unwrap_or(Verdict::Continue)
}

#[cfg(feature = "assign-cookie")]
pub fn on_stream_response_headers(context: u32) {
    with_vm(|vm| vm.response_headers(context, &EnvoyHost));
}

#[cfg(feature = "assign-cookie")]
pub fn on_stream_response_trailers(context: u32) {
    with_vm(|vm| vm.response_trailers(context, &EnvoyHost));
}

/// Test build only: `x-meshsplit-test-hook: panic` traps the VM, as a bug would.
#[cfg(feature = "wasm-test-hooks")]
#[allow(clippy::panic)]
fn trap_if_asked() {
    if EnvoyHost.request_header("x-meshsplit-test-hook").as_deref() == Some(b"panic".as_slice()) {
        panic!("test hook: panic");
    }
}
