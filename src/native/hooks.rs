//! Faults and clock steps a test asks for through a request header, compiled only into the test
//! build of the module (`--features test-hooks`, `make native-test-hooks`), never into a release
//! artifact: `x-meshsplit-test-hook: clock-offset-ms=N` moves the module's wall clock by N ms for
//! the whole process (from the next tick on); `x-meshsplit-test-hook: panic` panics in the hook
//! that reads it, as a bug would.
#![allow(clippy::panic)]

use std::sync::atomic::{AtomicI64, Ordering};

/// The request header a test sets.
pub const HEADER: &str = "x-meshsplit-test-hook";

static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// How far the test moved the wall clock (ms; negative: back).
pub fn clock_offset_ms() -> i64 {
    CLOCK_OFFSET_MS.load(Ordering::Relaxed)
}

/// Does what the request's hook header asks; `header` reads a request header.
pub fn run(header: impl FnOnce(&str) -> Option<Vec<u8>>) {
    let Some(value) = header(HEADER) else {
        return;
    };
    let value = String::from_utf8_lossy(&value);
    if value == "panic" {
        panic!("test hook: panic");
    }
    if let Some(offset) = value
        .strip_prefix("clock-offset-ms=")
        .and_then(|n| n.parse::<i64>().ok())
    {
        CLOCK_OFFSET_MS.store(offset, Ordering::Relaxed);
        log::info!("test hook: wall clock moved by {offset} ms");
    }
}
