//! The native build's clock for idle configs. Envoy 1.40's dynamic-module ABI has no timer for
//! HTTP filters, only schedulers that post an event to a thread at once. So one thread of this
//! module wakes every [`PERIOD`] and commits an event to the scheduler of each config with a
//! guard or a rollout; Envoy then runs the config's scheduled hook on its main thread, where the
//! tick puts the weights in force and sets the gauges, and the guard readmits, with no traffic
//! at all. (Workers still tick from their streams; the main thread never ejects.)

use std::sync::Mutex;
use std::time::Duration;

use super::imports::ConfigScheduler;

/// How often an idle config is ticked: as the workers' tick.
pub const PERIOD: Duration = Duration::from_millis(500);

/// The event a tick commits.
pub const TICK_EVENT: u64 = 1;

/// The schedulers of live configs, by config id. Commits and deletions happen under the lock,
/// so no scheduler is committed to after it was deleted.
static SCHEDULERS: Mutex<Vec<(u64, ConfigScheduler)>> = Mutex::new(Vec::new());

/// Ticks config `id` through `scheduler` from now on (starting the thread the first time).
pub fn register(id: u64, scheduler: ConfigScheduler) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if let Ok(mut schedulers) = SCHEDULERS.lock() {
        schedulers.push((id, scheduler));
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("meshsplit-timer".to_owned())
            .spawn(run);
        if let Err(err) = spawned {
            log::warn!("no timer thread ({err}): idle configs tick at their next request");
        }
    });
}

/// Stops ticking config `id` and deletes its scheduler (when Envoy destroys the config).
pub fn unregister(id: u64) {
    let Ok(mut schedulers) = SCHEDULERS.lock() else {
        return;
    };
    if let Some(at) = schedulers.iter().position(|(i, _)| *i == id) {
        let (_, scheduler) = schedulers.swap_remove(at);
        scheduler.delete();
    }
}

fn run() {
    loop {
        std::thread::sleep(PERIOD);
        let Ok(schedulers) = SCHEDULERS.lock() else {
            return;
        };
        for (_, scheduler) in schedulers.iter() {
            scheduler.commit(TICK_EVENT);
        }
    }
}
