//! Progressive rollouts: a service's weights follow a schedule of steps from an absolute start
//! time, so every sidecar in the mesh is on the same step without coordination, and a restart
//! lands on the right one. The clock is read on the housekeeping tick, never per request.

use std::borrow::Cow;

/// A compiled `rollout`: step weights are indexed like the service's upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Unix time of `start`, in milliseconds.
    pub start_ms: u64,
    pub interpolate: bool,
    /// Strictly increasing `at_s`; the first may be 0.
    pub steps: Box<[Step]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_s: u64,
    pub weights: Box<[u32]>,
}

/// Where a rollout stands at some moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase<'a> {
    /// Before `start`: the service's own weights apply.
    NotStarted,
    /// The weights in force (a step's, between steps with `interpolate`, or the last step's).
    Weights(Cow<'a, [u32]>),
}

impl Rollout {
    /// The phase at Unix time `now_ms`.
    pub fn at(&self, now_ms: u64) -> Phase<'_> {
        let Some(elapsed_ms) = now_ms.checked_sub(self.start_ms) else {
            return Phase::NotStarted;
        };
        // The last step whose time has come.
        let current = self
            .steps
            .iter()
            .rposition(|s| s.at_s.saturating_mul(1000) <= elapsed_ms);
        let Some(index) = current else {
            return Phase::NotStarted;
        };
        let Some(step) = self.steps.get(index) else {
            return Phase::NotStarted;
        };
        match self.steps.get(index + 1) {
            Some(next) if self.interpolate => {
                let from_ms = step.at_s.saturating_mul(1000);
                let span_ms = next.at_s.saturating_mul(1000).saturating_sub(from_ms);
                let done_ms = elapsed_ms - from_ms;
                Phase::Weights(Cow::Owned(interpolate(
                    &step.weights,
                    &next.weights,
                    done_ms,
                    span_ms,
                )))
            }
            _ => Phase::Weights(Cow::Borrowed(&step.weights)),
        }
    }

    /// Unix time (ms) of each step, for the schedule printout.
    pub fn step_times_ms(&self) -> impl Iterator<Item = u64> + '_ {
        self.steps
            .iter()
            .map(|s| self.start_ms.saturating_add(s.at_s.saturating_mul(1000)))
    }
}

/// `from` moved `done / span` of the way to `to`, each weight rounded to the nearest integer.
fn interpolate(from: &[u32], to: &[u32], done: u64, span: u64) -> Vec<u32> {
    from.iter()
        .zip(to)
        .map(|(&a, &b)| {
            if span == 0 {
                return b;
            }
            // In i128: `at_s` may be as large as u64 allows, so a span can reach 2^64 ms, and
            // 2 * (b - a) * done (below 2^97) then does not fit in i64.
            let (a, b) = (i128::from(a), i128::from(b));
            let (done, span) = (i128::from(done.min(span)), i128::from(span));
            // Round half away from zero, exactly, in integers.
            let moved = (b - a) * done;
            let step = (2 * moved + moved.signum() * span) / (2 * span);
            u32::try_from(a + step).unwrap_or(0)
        })
        .collect()
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time such as `2026-12-01T10:00:00Z`
/// (fractional seconds allowed), or `None` when `text` is not one.
pub fn parse_start(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(interpolate: bool) -> Rollout {
        Rollout {
            start_ms: 1_000_000,
            interpolate,
            steps: vec![
                Step {
                    at_s: 0,
                    weights: vec![99, 1].into(),
                },
                Step {
                    at_s: 600,
                    weights: vec![75, 25].into(),
                },
                Step {
                    at_s: 1800,
                    weights: vec![0, 100].into(),
                },
            ]
            .into(),
        }
    }

    fn weights(phase: Phase<'_>) -> Vec<u32> {
        match phase {
            Phase::Weights(w) => w.into_owned(),
            Phase::NotStarted => panic!("not started"),
        }
    }

    #[test]
    fn before_start_the_service_weights_apply() {
        assert_eq!(rollout(false).at(999_999), Phase::NotStarted);
        assert_eq!(rollout(false).at(0), Phase::NotStarted);
    }

    #[test]
    fn each_step_applies_from_its_time_to_the_next() {
        let r = rollout(false);
        assert_eq!(weights(r.at(1_000_000)), [99, 1]);
        assert_eq!(weights(r.at(1_000_000 + 599_999)), [99, 1]);
        assert_eq!(weights(r.at(1_000_000 + 600_000)), [75, 25]);
        assert_eq!(weights(r.at(1_000_000 + 1_799_999)), [75, 25]);
        assert_eq!(weights(r.at(1_000_000 + 1_800_000)), [0, 100]);
        // After the last step, the last step's weights for ever.
        assert_eq!(weights(r.at(u64::MAX)), [0, 100]);
    }

    #[test]
    fn a_first_step_after_start_waits_for_its_time() {
        let mut r = rollout(false);
        r.steps = vec![Step {
            at_s: 10,
            weights: vec![1, 1].into(),
        }]
        .into();
        assert_eq!(r.at(1_000_000 + 9_999), Phase::NotStarted);
        assert_eq!(weights(r.at(1_000_000 + 10_000)), [1, 1]);
    }

    #[test]
    fn interpolation_moves_linearly_between_steps() {
        let r = rollout(true);
        assert_eq!(weights(r.at(1_000_000)), [99, 1]);
        assert_eq!(weights(r.at(1_000_000 + 300_000)), [87, 13]);
        assert_eq!(weights(r.at(1_000_000 + 600_000)), [75, 25]);
        assert_eq!(weights(r.at(1_000_000 + 1_200_000)), [37, 63]);
        assert_eq!(weights(r.at(1_000_000 + 1_800_000)), [0, 100]);
        assert_eq!(weights(r.at(1_000_000 + 5_000_000)), [0, 100]);
    }

    #[test]
    fn interpolation_toward_a_step_at_the_end_of_time_keeps_exact_weights() {
        let r = Rollout {
            start_ms: 0,
            interpolate: true,
            steps: vec![
                Step {
                    at_s: 0,
                    weights: vec![1_000_000, 0].into(),
                },
                Step {
                    at_s: u64::MAX,
                    weights: vec![0, 1_000_000].into(),
                },
            ]
            .into(),
        };
        assert_eq!(weights(r.at(0)), [1_000_000, 0]);
        // Halfway through a span of u64::MAX ms (the step's time saturates).
        assert_eq!(weights(r.at(u64::MAX / 2)), [500_000, 500_000]);
        assert_eq!(weights(r.at(u64::MAX - 1)), [0, 1_000_000]);
        assert_eq!(weights(r.at(u64::MAX)), [0, 1_000_000]);
    }

    #[test]
    fn start_times_parse_as_utc() {
        assert_eq!(parse_start("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_start("2026-12-01T10:00:00Z"), Some(1_796_119_200_000));
        assert_eq!(
            parse_start("2026-12-01T10:00:00.250Z"),
            Some(1_796_119_200_250)
        );
        assert_eq!(parse_start("2026-12-01 10:00"), None);
        assert_eq!(parse_start("yesterday"), None);
    }
}
