//! Rollout schedules for `preview`: the moment `--at` names, a rollout's timeline (its steps
//! and, when it interpolates, the midpoints between them) and where it stands at a moment. The
//! weights come from the filter's own `Rollout::at`, so they are the ones the filter would use.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshsplit::plan::Service;
use meshsplit::rollout::{parse_start, Phase, Rollout};

/// The moment `--at` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The system clock.
    Now,
    /// An absolute time, Unix milliseconds.
    Time(u64),
    /// Milliseconds from each rollout's start (negative: before it).
    FromStart(i64),
}

impl At {
    /// `now`, an RFC 3339 UTC time (`2026-12-01T10:10:00Z`) or an offset from the start
    /// (`+10m`, `+600s`, `+1h30m`, `-5m`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("now") {
            return Ok(At::Now);
        }
        let sign = match text.chars().next() {
            Some('+') => Some(1),
            Some('-') => Some(-1),
            _ => None,
        };
        if let Some(sign) = sign {
            let rest = text.get(1..).unwrap_or_default().trim();
            let duration = humantime::parse_duration(rest)
                .map_err(|e| format!("{text:?}: not an offset such as +10m or +600s ({e})"))?;
            let ms = i64::try_from(duration.as_millis())
                .map_err(|_| format!("{text:?}: offset too large"))?;
            return Ok(At::FromStart(sign * ms));
        }
        parse_start(text).map(At::Time).ok_or_else(|| {
            format!(
                "{text:?}: expected an RFC 3339 UTC time such as 2026-12-01T10:10:00Z, `now`, \
                 or an offset from the rollout's start such as +10m or +600s"
            )
        })
    }

    /// The Unix time (ms) this names for `rollout`, given the clock reads `now_ms`.
    pub fn resolve(self, rollout: &Rollout, now_ms: u64) -> u64 {
        match self {
            At::Now => now_ms,
            At::Time(ms) => ms,
            At::FromStart(offset) => {
                let start = i128::from(rollout.start_ms);
                u64::try_from((start + i128::from(offset)).max(0)).unwrap_or(u64::MAX)
            }
        }
    }

    /// `now`, `2026-12-01T10:10:00Z`, `+10m from the start`.
    pub fn describe(self) -> String {
        match self {
            At::Now => "now".to_owned(),
            At::Time(ms) => rfc3339(ms),
            At::FromStart(offset) => format!("{} from the start", signed(offset)),
        }
    }
}

/// Unix milliseconds now, in whole seconds (a preview needs no finer clock, and its times
/// read better without).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_mul(1000))
}

/// `2026-12-01T10:00:00Z`; milliseconds only when there are some.
pub fn rfc3339(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_millis(time).to_string()
    }
}

/// An offset in the largest units that fit: `+0s`, `+10m`, `+1h30m`, `+1d2h`, `-5m`, `+1.5s`.
pub fn signed(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let mut rest = ms.unsigned_abs();
    let millis = rest % 1000;
    rest /= 1000;
    let mut out = String::from(sign);
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if millis > 0 {
        let fraction = format!("{millis:03}");
        out.push_str(&format!("{rest}.{}s", fraction.trim_end_matches('0')));
    } else if rest > 0 || out.len() == 1 {
        out.push_str(&format!("{rest}s"));
    }
    out
}

/// One line of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `Some(i)`: step `i`; `None`: midway between two steps (interpolated rollouts only).
    pub step: Option<usize>,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Milliseconds from the start.
    pub offset_ms: u64,
    pub weights: Vec<u32>,
}

/// The steps of `rollout` in order, with the midpoint between each two when it interpolates.
pub fn timeline(rollout: &Rollout) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut previous: Option<u64> = None;
    for (index, (step, time_ms)) in rollout
        .steps
        .iter()
        .zip(rollout.step_times_ms())
        .enumerate()
    {
        if let (Some(before), true) = (previous, rollout.interpolate) {
            // Both ends are whole seconds, so the midpoint is a whole millisecond.
            let mid = before + (time_ms - before) / 2;
            rows.push(Row {
                step: None,
                time_ms: mid,
                offset_ms: mid.saturating_sub(rollout.start_ms),
                weights: weights_at(rollout, mid).unwrap_or_default(),
            });
        }
        rows.push(Row {
            step: Some(index),
            time_ms,
            offset_ms: step.at_s.saturating_mul(1000),
            weights: step.weights.to_vec(),
        });
        previous = Some(time_ms);
    }
    rows
}

/// The rollout's weights at `time_ms`; `None` before it starts.
fn weights_at(rollout: &Rollout, time_ms: u64) -> Option<Vec<u32>> {
    match rollout.at(time_ms) {
        Phase::NotStarted => None,
        Phase::Weights(weights) => Some(weights.into_owned()),
    }
}

/// Where a rollout stands at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Before its first step: the configured weights apply until then (Unix ms).
    NotStarted { until_ms: u64 },
    /// Step `i` is in force, and a later one is still to come.
    Step(usize),
    /// Interpolating from step `i` to step `i + 1`.
    Between(usize),
    /// At or past the last step, step `i`, whose weights stay.
    Finished(usize),
}

impl State {
    /// `not_started`, `step`, `between`, `finished`.
    pub fn word(&self) -> &'static str {
        match self {
            State::NotStarted { .. } => "not_started",
            State::Step(_) => "step",
            State::Between(_) => "between",
            State::Finished(_) => "finished",
        }
    }

    /// The step in force (the one interpolated from, when between two).
    pub fn step(&self) -> Option<usize> {
        match self {
            State::NotStarted { .. } => None,
            State::Step(i) | State::Between(i) | State::Finished(i) => Some(*i),
        }
    }

    /// `not started`, `step 1`, `between step 1 and step 2`, `finished (step 2)`.
    pub fn text(&self) -> String {
        match self {
            State::NotStarted { .. } => "not started".to_owned(),
            State::Step(i) => format!("step {i}"),
            State::Between(i) => format!("between step {i} and step {}", i + 1),
            State::Finished(i) => format!("finished (step {i})"),
        }
    }
}

/// A rollout at one moment: where it stands and the weights in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    pub time_ms: u64,
    /// From the start (negative: before it).
    pub offset_ms: i64,
    pub state: State,
    /// The weights in force: the rollout's, or the service's own before it starts.
    pub weights: Vec<u32>,
}

/// Where `service`'s rollout stands at `time_ms`; `None` without a rollout.
pub fn moment(service: &Service, time_ms: u64) -> Option<Moment> {
    let rollout = service.rollout.as_ref()?;
    let times: Vec<u64> = rollout.step_times_ms().collect();
    let last = times.len().checked_sub(1)?;
    let current = times.iter().rposition(|&t| t <= time_ms);
    let state = match current {
        None => State::NotStarted {
            until_ms: times.first().copied().unwrap_or(rollout.start_ms),
        },
        Some(i) if i == last => State::Finished(i),
        Some(i) if rollout.interpolate && times.get(i).is_some_and(|&t| t < time_ms) => {
            State::Between(i)
        }
        Some(i) => State::Step(i),
    };
    let weights =
        weights_at(rollout, time_ms).unwrap_or_else(|| service.configured_weights().to_vec());
    let offset_ms =
        i64::try_from(i128::from(time_ms) - i128::from(rollout.start_ms)).unwrap_or(i64::MAX);
    Some(Moment {
        time_ms,
        offset_ms,
        state,
        weights,
    })
}

/// Puts in force, in every service of `services` with a rollout, the weights of moment `at`.
pub fn put_in_force(services: &[Service], at: At, now_ms: u64) {
    for service in services {
        let Some(rollout) = &service.rollout else {
            continue;
        };
        if let Some(m) = moment(service, at.resolve(rollout, now_ms)) {
            service.set_weights(&m.weights);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsplit::plan::Plan;
    use serde_json::json;

    /// 2026-12-01T10:00:00Z.
    const START: u64 = 1_796_119_200_000;

    fn service(interpolate: bool) -> Plan {
        let config = json!({"services": [{"name": "reviews",
            "upstreams": [{"name": "v1", "cluster": "v1", "weight": 100},
                          {"name": "v2", "cluster": "v2", "weight": 0}],
            "rollout": {"start": "2026-12-01T10:00:00Z", "interpolate": interpolate, "steps": [
                {"at_s": 0, "weights": {"v1": 99, "v2": 1}},
                {"at_s": 600, "weights": {"v1": 75, "v2": 25}},
                {"at_s": 1800, "weights": {"v2": 100}}]}}]});
        Plan::from_json(config.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn at_parses_times_now_and_offsets() {
        assert_eq!(At::parse("now"), Ok(At::Now));
        assert_eq!(
            At::parse("2026-12-01T10:10:00Z"),
            Ok(At::Time(START + 600_000))
        );
        assert_eq!(
            At::parse("2026-12-01T10:10:00.5Z"),
            Ok(At::Time(START + 600_500))
        );
        assert_eq!(At::parse("+10m"), Ok(At::FromStart(600_000)));
        assert_eq!(At::parse("+600s"), Ok(At::FromStart(600_000)));
        assert_eq!(At::parse("+1h30m"), Ok(At::FromStart(5_400_000)));
        assert_eq!(At::parse("+1h 30m"), Ok(At::FromStart(5_400_000)));
        assert_eq!(At::parse("-5m"), Ok(At::FromStart(-300_000)));
        assert_eq!(At::parse("+0s"), Ok(At::FromStart(0)));
        for bad in [
            "",
            "yesterday",
            "+",
            "+10 parsecs",
            "2026-12-01 10:10",
            "10m",
        ] {
            assert!(At::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offsets_resolve_from_the_rollouts_start_and_never_before_1970() {
        let plan = service(false);
        let rollout = plan.services[0].rollout.as_ref().unwrap();
        assert_eq!(At::FromStart(600_000).resolve(rollout, 7), START + 600_000);
        assert_eq!(At::FromStart(-300_000).resolve(rollout, 7), START - 300_000);
        assert_eq!(At::FromStart(i64::MIN).resolve(rollout, 7), 0);
        assert_eq!(At::Now.resolve(rollout, 7), 7);
        assert_eq!(At::Time(5).resolve(rollout, 7), 5);
    }

    #[test]
    fn times_and_offsets_print_compactly() {
        assert_eq!(rfc3339(START), "2026-12-01T10:00:00Z");
        assert_eq!(rfc3339(START + 250), "2026-12-01T10:00:00.250Z");
        assert_eq!(signed(0), "+0s");
        assert_eq!(signed(600_000), "+10m");
        assert_eq!(signed(5_400_000), "+1h30m");
        assert_eq!(signed(90_061_000), "+1d1h1m1s");
        assert_eq!(signed(-300_000), "-5m");
        assert_eq!(signed(1_500), "+1.5s");
        assert_eq!(signed(60_250), "+1m0.25s");
        // What prints parses back.
        for ms in [0, 600_000, 5_400_000, 90_061_000, -300_000, 1_500] {
            assert_eq!(At::parse(&signed(ms)), Ok(At::FromStart(ms)));
        }
    }

    #[test]
    fn timeline_lists_the_steps_at_their_times() {
        let plan = service(false);
        let rows = timeline(plan.services[0].rollout.as_ref().unwrap());
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.step, r.time_ms - START, r.offset_ms, r.weights.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(0), 0, 0, vec![99, 1]),
                (Some(1), 600_000, 600_000, vec![75, 25]),
                (Some(2), 1_800_000, 1_800_000, vec![0, 100]),
            ]
        );
    }

    #[test]
    fn an_interpolated_timeline_adds_the_midpoints() {
        let plan = service(true);
        let rows = timeline(plan.services[0].rollout.as_ref().unwrap());
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.step, r.offset_ms, r.weights.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(0), 0, vec![99, 1]),
                (None, 300_000, vec![87, 13]),
                (Some(1), 600_000, vec![75, 25]),
                // Halfway, each weight has moved its change rounded away from zero:
                // 75 - 37.5 → 75 - 38, 25 + 37.5 → 25 + 38.
                (None, 1_200_000, vec![37, 63]),
                (Some(2), 1_800_000, vec![0, 100]),
            ]
        );
    }

    #[test]
    fn moments_say_where_the_rollout_stands() {
        let plan = service(false);
        let svc = &plan.services[0];
        let at = |ms: u64| moment(svc, ms).unwrap();
        let before = at(START - 1);
        assert_eq!(before.state, State::NotStarted { until_ms: START });
        assert_eq!((before.offset_ms, before.weights), (-1, vec![100, 0]));
        assert_eq!(at(START).state, State::Step(0));
        let between = at(START + 700_000);
        assert_eq!(
            (between.state, between.weights),
            (State::Step(1), vec![75, 25])
        );
        assert_eq!(at(START + 1_800_000).state, State::Finished(2));
        assert_eq!(at(u64::MAX).weights, [0, 100]);

        let plan = service(true);
        let svc = &plan.services[0];
        let m = moment(svc, START + 1_200_000).unwrap();
        assert_eq!((m.state, m.weights), (State::Between(1), vec![37, 63]));
        // Exactly on a step: that step, not between.
        assert_eq!(moment(svc, START + 600_000).unwrap().state, State::Step(1));
        assert_eq!(State::Between(1).text(), "between step 1 and step 2");
        assert_eq!(State::Finished(2).text(), "finished (step 2)");
    }

    #[test]
    fn putting_a_moment_in_force_sets_the_services_weights() {
        let plan = service(false);
        put_in_force(&plan.services, At::FromStart(600_000), 0);
        assert_eq!(*plan.services[0].weights(), [75, 25]);
        put_in_force(&plan.services, At::FromStart(-1), 0);
        assert_eq!(*plan.services[0].weights(), [100, 0]);
        put_in_force(&plan.services, At::Time(START + 3_600_000), 0);
        assert_eq!(*plan.services[0].weights(), [0, 100]);
    }
}
