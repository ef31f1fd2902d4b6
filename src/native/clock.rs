//! The wall clock of the native build's ticks (rollouts are written in it, and the guard files
//! outcomes by its seconds). When a tick is due follows the monotonic clock instead (see
//! `Ticking`). Test builds (`test-hooks`) can move this clock for the whole process.

/// The system clock as Unix milliseconds (0 if it is before 1970), moved by the test hook's
/// offset in test builds.
pub fn wall_ms() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    #[cfg(feature = "test-hooks")]
    let ms = ms.saturating_add_signed(super::hooks::clock_offset_ms());
    ms
}
