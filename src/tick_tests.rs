use std::cell::Cell;

use super::*;
use crate::guard_record::Record;
use crate::host::FakeHost;
use crate::plan::Plan;

const NOW_MS: u64 = 1_800_000_000_000;

/// Both clocks at `ms` (the monotonic clock of these tests runs with the wall clock).
fn at(ms: u64) -> Now {
    Now {
        wall_ms: ms,
        monotonic_ms: ms,
    }
}

fn plan(extra: &str) -> Plan {
    let json = format!(
        r#"{{"services": [{{"name": "svc", {extra} "upstreams": [
            {{"name": "v1", "cluster": "c1", "weight": 50}},
            {{"name": "v2", "cluster": "c2", "weight": 50}}]}}]}}"#
    );
    Plan::from_json(json.as_bytes()).unwrap()
}

const GUARD: &str =
    r#""guard": {"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 20},"#;

/// A 500 for a failure, a 200 otherwise.
fn status(failed: bool) -> Outcome {
    Outcome::Status(if failed { 500 } else { 200 })
}

fn weights(plan: &Plan) -> Vec<u32> {
    plan.services[0].weights().to_vec()
}

/// `n` outcomes of each upstream seen by `tick` (v2 fails when `v2_fails`).
fn traffic(tick: &mut PlanTick, n: usize, v2_fails: bool) {
    for _ in 0..n {
        tick.record_outcome(0, 0, status(false), 1);
        tick.record_outcome(0, 1, status(v2_fails), 1);
    }
}

#[test]
fn statuses_a_client_provokes_eject_nothing_unless_listed() {
    for (codes, ejected) in [("", false), (r#""failure_codes": [501],"#, true)] {
        let guard = format!(
            r#""guard": {{"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 20,
                {codes} "max_ejected_percent": 50}},"#
        );
        let plan = plan(&guard);
        let host = FakeHost::default();
        let mut tick = PlanTick::new(&plan, None);
        for _ in 0..20 {
            tick.record_outcome(0, 0, Outcome::Status(200), 1);
            tick.record_outcome(0, 1, Outcome::Status(501), 1);
        }
        tick.run(&plan, "p", &host, at(NOW_MS));
        let expected: &[u32] = if ejected { &[50, 0] } else { &[50, 50] };
        assert_eq!(weights(&plan), expected, "{codes}");
    }
    // Envoy's flagged upstream failures count even when the codes leave out their status.
    let plan = plan(r#""guard": {"error_rate": 0.5, "min_requests": 10, "failure_codes": [500]},"#);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plan, None);
    for _ in 0..20 {
        tick.record_outcome(0, 0, Outcome::Status(503), 1);
        tick.record_outcome(0, 1, Outcome::UpstreamFailure, 1);
    }
    tick.run(&plan, "p", &host, at(NOW_MS));
    assert_eq!(weights(&plan), [50, 0]);
}

/// Two workers' outcomes that meet the guard's condition eject v2 together, the other worker
/// follows, and after `eject_s` v2 is back and stays back under `good` outcomes: the same for
/// failures and for slow requests.
fn ejected_across_workers_and_readmitted(
    guard: &str,
    bad: impl Fn(&mut PlanTick, usize),
    good: impl Fn(&mut PlanTick, usize),
) {
    let plan_a = plan(guard);
    let plan_b = plan(guard);
    let worker_a = FakeHost::default();
    let worker_b = worker_a.sibling(&[]);
    let (mut a, mut b) = (PlanTick::new(&plan_a, None), PlanTick::new(&plan_b, None));
    // Each worker alone has too few requests; together they cross min_requests.
    bad(&mut a, 6);
    a.run(&plan_a, "p", &worker_a, at(NOW_MS));
    assert_eq!(weights(&plan_a), [50, 50]);
    bad(&mut b, 6);
    b.run(&plan_b, "p", &worker_b, at(NOW_MS + 400));
    assert_eq!(weights(&plan_b), [50, 0]);
    // The other worker follows on its next tick.
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 1000));
    assert_eq!(weights(&plan_a), [50, 0]);
    assert_eq!(worker_a.counter("meshsplit.p.svc.v2.ejections_total"), 1);
    assert_eq!(worker_a.gauge("meshsplit.p.svc.v2.ejected"), 1);
    // Ejected at NOW_MS + 400 for eject_s (20 s) to the millisecond: still out 1 ms before,
    // back at 20 s, and its old outcomes do not eject it again.
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 20_399));
    assert_eq!(weights(&plan_a), [50, 0]);
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 20_400));
    assert_eq!(weights(&plan_a), [50, 50]);
    good(&mut a, 20);
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 21_000));
    assert_eq!(weights(&plan_a), [50, 50]);
    assert_eq!(worker_a.gauge("meshsplit.p.svc.v2.ejected"), 0);
    assert_eq!(worker_a.counter("meshsplit.p.svc.v2.ejections_total"), 1);
}

#[test]
fn a_failing_upstream_is_ejected_across_workers_and_readmitted() {
    ejected_across_workers_and_readmitted(
        GUARD,
        |tick, n| traffic(tick, n, true),
        |tick, n| traffic(tick, n, false),
    );
}

#[test]
fn healthy_traffic_ejects_nothing_and_services_without_guard_make_no_host_calls() {
    let guarded = plan(GUARD);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&guarded, None);
    traffic(&mut tick, 50, false);
    tick.run(&guarded, "p", &host, at(NOW_MS));
    assert_eq!(weights(&guarded), [50, 50]);

    // A plain service: its first tick sets its weight gauges once; later ticks make no host
    // call.
    let plain = plan("");
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plain, None);
    tick.run(&plain, "p", &host, at(NOW_MS));
    assert_eq!(*host.calls.borrow(), ["gauge 0 = 50", "gauge 1 = 50"]);
    host.calls.borrow_mut().clear();
    tick.run(&plain, "p", &host, at(NOW_MS + 500));
    assert!(host.calls.borrow().is_empty());
}

const ROLLOUT: &str = r#""rollout": {"start": "2027-01-15T08:00:00Z", "steps": [
    {"at_s": 0, "weights": {"v1": 99, "v2": 1}},
    {"at_s": 10, "weights": {"v1": 75, "v2": 25}},
    {"at_s": 20, "weights": {"v2": 100}}]},"#;

#[test]
fn rollout_steps_apply_on_the_tick_from_the_absolute_start() {
    let p = plan(ROLLOUT);
    let start = p.services[0].rollout.as_ref().unwrap().start_ms;
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(start - 1));
    assert_eq!(weights(&p), [50, 50]);
    tick.run(&p, "p", &host, at(start));
    assert_eq!(weights(&p), [99, 1]);
    tick.run(&p, "p", &host, at(start + 10_000));
    assert_eq!(weights(&p), [75, 25]);
    tick.run(&p, "p", &host, at(start + 25_000));
    assert_eq!(weights(&p), [0, 100]);
}

#[test]
fn an_ejected_upstream_the_rollout_is_raising_pauses_the_rollout() {
    // Ejected for errors, or for latency.
    for (guard, outcome, elapsed_ms) in [
        (GUARD, status(true), None),
        (LATENCY, status(false), Some(400)),
    ] {
        let p = plan(&format!("{ROLLOUT} {guard}"));
        let start = p.services[0].rollout.as_ref().unwrap().start_ms;
        let host = FakeHost::default();
        let mut tick = PlanTick::new(&p, None);
        tick.run(&p, "p", &host, at(start + 1000));
        assert_eq!(weights(&p), [99, 1]);
        // v2 fails while at 1 %: ejected, and the rollout holds at 99/1 (v2 at 0 while ejected).
        for _ in 0..20 {
            tick.record_timed_outcome(0, 1, outcome, 1, elapsed_ms);
        }
        tick.run(&p, "p", &host, at(start + 2000));
        assert_eq!(weights(&p), [99, 0], "{guard}");
        // The step to 75/25 comes while v2 is ejected: paused.
        tick.run(&p, "p", &host, at(start + 12_000));
        assert_eq!(weights(&p), [99, 0], "{guard}");
        assert_eq!(host.gauge("meshsplit.p.svc.rollout_paused"), 1);
        // Readmitted after eject_s: the schedule resumes where the clock is.
        tick.run(&p, "p", &host, at(start + 22_000));
        assert_eq!(weights(&p), [0, 100], "{guard}");
        assert_eq!(host.gauge("meshsplit.p.svc.rollout_paused"), 0);
    }
}

thread_local! {
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

#[test]
fn configure_puts_the_rollout_step_in_force_before_the_first_request() {
    use crate::instance::Instance;
    let json = format!(
        r#"{{"services": [{{"name": "svc", {ROLLOUT} "upstreams": [
            {{"name": "v1", "cluster": "c1", "weight": 50}},
            {{"name": "v2", "cluster": "c2", "weight": 50}}]}}]}}"#
    );
    let start = plan(ROLLOUT).services[0].rollout.as_ref().unwrap().start_ms;
    CLOCK.with(|c| c.set(start + 25_000));
    let mut vm = Instance::new([0; 32]);
    vm.set_clock(|| CLOCK.with(Cell::get));
    let plan = vm
        .configure(1, json.as_bytes(), "p", &FakeHost::default())
        .unwrap();
    assert_eq!(weights(&plan), [0, 100]);
}

/// What a spy is shown of a write to a guard record: the value and the CAS token.
type OnWrite<'a> = Box<dyn FnMut(&[u8], u32) + 'a>;

/// A fake worker whose writes to guard records are shown to `on_write` before they are made.
struct Spied<'a> {
    host: &'a FakeHost,
    on_write: std::cell::RefCell<OnWrite<'a>>,
}

impl<'a> Spied<'a> {
    fn new(host: &'a FakeHost, on_write: impl FnMut(&[u8], u32) + 'a) -> Self {
        Self {
            host,
            on_write: std::cell::RefCell::new(Box::new(on_write)),
        }
    }
}

impl Host for Spied<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.host.request_header(name)
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.host.set_request_header(name, value)
    }
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.host.send_local_reply(status, headers, body)
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.host.shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        if key.starts_with("meshsplit/guard/") {
            (self.on_write.borrow_mut())(value, cas);
        }
        self.host.set_shared_data(key, value, cas)
    }
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.host.define_counter(name)
    }
    fn increment_counter(&self, id: u32, delta: u64) {
        self.host.increment_counter(id, delta)
    }
}

#[test]
fn an_ejection_is_always_a_compare_and_swap_even_on_a_record_never_written() {
    // With token 0 the write would be unconditional: two workers deciding at the same moment
    // would both land the ejection, and it would be logged and counted twice.
    let plan = plan(GUARD);
    let worker = FakeHost::default();
    let writes = std::cell::RefCell::new(Vec::new());
    let spy = Spied::new(&worker, |value, cas| {
        writes.borrow_mut().push((Record::decode(value), cas))
    });
    let mut tick = PlanTick::new(&plan, None);
    traffic(&mut tick, 12, true);
    tick.run(&plan, "p", &spy, at(NOW_MS));
    assert_eq!(weights(&plan), [50, 0]);
    drop(spy);
    let writes = writes.borrow();
    let ejections: Vec<u32> = writes
        .iter()
        .filter(|(record, _)| record.upstreams.iter().any(|u| u.ejection.until_ms > 0))
        .map(|&(_, cas)| cas)
        .collect();
    assert_eq!(ejections.len(), 1, "{writes:?}");
    assert!(ejections.iter().all(|&cas| cas != 0), "{writes:?}");
    // What was written unconditionally is only the empty record.
    assert!(writes
        .iter()
        .all(|(record, cas)| *cas != 0 || *record == Record::default()));
}

// ---- rollouts paused by the guard: the caps hold on the weights in force ----

fn three(extra: &str) -> Plan {
    let json = format!(
        r#"{{"services": [{{"name": "svc", {extra} "upstreams": [
            {{"name": "v1", "cluster": "c1", "weight": 34}},
            {{"name": "v2", "cluster": "c2", "weight": 33}},
            {{"name": "v3", "cluster": "c3", "weight": 33}}]}}]}}"#
    );
    Plan::from_json(json.as_bytes()).unwrap()
}

#[test]
fn a_paused_rollout_keeps_the_guard_within_its_cap() {
    // Step 2 raises v2 while it is ejected: the rollout pauses at step 1 (10/10/80). Then v3
    // fails: with the paused weights in force it holds 80 % of the weight, beyond the cap.
    let p = three(
        r#""rollout": {"start": "2027-01-15T08:00:00Z", "steps": [
            {"at_s": 0, "weights": {"v1": 10, "v2": 10, "v3": 80}},
            {"at_s": 10, "weights": {"v1": 80, "v2": 20, "v3": 0}}]},
           "guard": {"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 60,
                     "max_ejected_percent": 50},"#,
    );
    let start = p.services[0].rollout.as_ref().unwrap().start_ms;
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(start + 1000));
    assert_eq!(weights(&p), [10, 10, 80]);
    for _ in 0..20 {
        tick.record_outcome(0, 1, status(true), 1);
    }
    tick.run(&p, "p", &host, at(start + 2000));
    assert_eq!(weights(&p), [10, 0, 80]);
    tick.run(&p, "p", &host, at(start + 12_000));
    assert_eq!(weights(&p), [10, 0, 80]);
    assert_eq!(host.gauge("meshsplit.p.svc.rollout_paused"), 1);
    for _ in 0..20 {
        tick.record_outcome(0, 0, status(false), 1);
        tick.record_outcome(0, 2, status(true), 1);
    }
    tick.run(&p, "p", &host, at(start + 13_000));
    assert_eq!(weights(&p), [10, 0, 80]);
    assert_eq!(host.counter("meshsplit.p.svc.v3.ejections_total"), 0);
}

#[test]
fn a_paused_canary_never_ejects_the_last_upstream() {
    // The README's canary: cap 100, last step all to v2. v2 is ejected at 1 %, the rollout
    // pauses at 99/1; v1 failing too must not be ejected (it is the last upstream left).
    let p = plan(
        r#""rollout": {"start": "2027-01-15T08:00:00Z", "steps": [
            {"at_s": 0, "weights": {"v1": 99, "v2": 1}},
            {"at_s": 20, "weights": {"v2": 100}}]},
           "guard": {"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 60,
                     "max_ejected_percent": 100},"#,
    );
    let start = p.services[0].rollout.as_ref().unwrap().start_ms;
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    for _ in 0..20 {
        tick.record_outcome(0, 1, status(true), 1);
    }
    tick.run(&p, "p", &host, at(start + 1000));
    assert_eq!(weights(&p), [99, 0]);
    for _ in 0..20 {
        tick.record_outcome(0, 0, status(true), 1);
    }
    tick.run(&p, "p", &host, at(start + 25_000));
    assert_eq!(weights(&p), [99, 0]);
    assert_eq!(host.counter("meshsplit.p.svc.v1.ejections_total"), 0);
}

// ---- two workers deciding at once ----

/// Worker A and worker B, each with `n` failing outcomes (`outcome`, after `elapsed_ms`) of
/// every upstream in `failing`, decide in the same tick, A landing between B's read and B's
/// write. Returns the weights both end with and the ejections counted.
fn decide_at_once(
    p_a: &Plan,
    p_b: &Plan,
    failing: &[usize],
    n: usize,
    outcome: Outcome,
    elapsed_ms: Option<u64>,
) -> (Vec<u32>, Vec<u32>) {
    let worker_a = FakeHost::default();
    let worker_b = worker_a.sibling(&[]);
    let mut a = PlanTick::new(p_a, None);
    let mut b = PlanTick::new(p_b, None);
    // Both claim the record first (as configure does).
    a.run(p_a, "p", &worker_a, at(NOW_MS));
    b.run(p_b, "p", &worker_b, at(NOW_MS));
    for tick in [&mut a, &mut b] {
        for _ in 0..n {
            for &u in failing {
                tick.record_timed_outcome(0, u, outcome, 1, elapsed_ms);
            }
        }
    }
    {
        let a = &mut a;
        let worker_a = &worker_a;
        // A's whole tick lands between B's read of the record and B's write.
        let mut a_once = Some(move || a.run(p_a, "p", worker_a, at(NOW_MS + 500)));
        let spy = Spied::new(&worker_b, |_, cas| {
            if cas != 0 {
                if let Some(mut a_tick) = a_once.take() {
                    a_tick();
                }
            }
        });
        b.run(p_b, "p", &spy, at(NOW_MS + 500));
    }
    a.run(p_a, "p", &worker_a, at(NOW_MS + 1000));
    let ejections = p_a.services[0]
        .upstreams
        .iter()
        .map(|u| {
            u32::try_from(worker_a.counter(&format!("meshsplit.p.svc.{}.ejections_total", u.name)))
                .unwrap()
        })
        .collect();
    assert_eq!(weights(p_a), weights(p_b));
    (weights(p_a), ejections)
}

/// What ejects, and an outcome that meets it: failures, or slow requests.
fn conditions() -> [(&'static str, Outcome, Option<u64>); 2] {
    [
        (r#""error_rate": 0.5"#, status(true), None),
        (
            r#""latency": {"percentile": 95, "threshold_ms": 250}"#,
            status(false),
            Some(400),
        ),
    ]
}

/// A guard ejecting on `condition` with `max_ejected_percent`.
fn guard_with(condition: &str, max_ejected_percent: u32) -> String {
    format!(
        r#""guard": {{{condition}, "min_requests": 10, "window_s": 5, "eject_s": 60,
                      "max_ejected_percent": {max_ejected_percent}}},"#
    )
}

#[test]
fn two_workers_deciding_at_once_keep_the_cap() {
    for (condition, outcome, elapsed_ms) in conditions() {
        let guard = guard_with(condition, 50);
        let (p_a, p_b) = (three(&guard), three(&guard));
        let (weights, ejections) = decide_at_once(&p_a, &p_b, &[0, 1, 2], 10, outcome, elapsed_ms);
        // One upstream (a third of the weight) fits in 50 %; a second would not.
        assert_eq!(
            weights.iter().filter(|&&w| w == 0).count(),
            1,
            "{condition}: {weights:?}"
        );
        assert_eq!(ejections.iter().sum::<u32>(), 1, "{condition}");
    }
}

#[test]
fn two_workers_deciding_at_once_never_eject_the_last_upstream() {
    for (condition, outcome, elapsed_ms) in conditions() {
        let guard = guard_with(condition, 100);
        let (p_a, p_b) = (plan(&guard), plan(&guard));
        let (weights, ejections) = decide_at_once(&p_a, &p_b, &[0, 1], 10, outcome, elapsed_ms);
        assert_eq!(
            weights.iter().filter(|&&w| w == 0).count(),
            1,
            "{condition}: {weights:?}"
        );
        assert_eq!(ejections.iter().sum::<u32>(), 1, "{condition}");
    }
}

// ---- what a tick costs does not depend on the window ----

fn tick_calls(window_s: u64) -> Vec<String> {
    let p = plan(&format!(
        r#""guard": {{"error_rate": 0.5, "min_requests": 10, "window_s": {window_s}}},"#
    ));
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(NOW_MS));
    traffic(&mut tick, 5, false);
    host.calls.borrow_mut().clear();
    tick.run(&p, "p", &host, at(NOW_MS + 500));
    let calls = host.calls.borrow().clone();
    calls
}

#[test]
fn a_tick_reads_and_writes_one_value_per_service_whatever_the_window() {
    let short = tick_calls(1);
    assert_eq!(
        short,
        [
            "shared get meshsplit/guard/v4/1:p/3:svc".to_owned(),
            "shared set meshsplit/guard/v4/1:p/3:svc".to_owned()
        ]
    );
    assert_eq!(tick_calls(3600), short);
}

// ---- clock steps ----

#[test]
fn a_wall_clock_step_in_either_direction_does_not_change_how_long_an_ejection_lasts() {
    // An ejection for errors, and one for latency.
    let cases = [GUARD, LATENCY].into_iter().flat_map(|guard| {
        [-3_600_000i64, -60_000, 60_000, 3_600_000].map(|step_ms| (guard, step_ms))
    });
    for (guard, step_ms) in cases {
        let p = plan(guard);
        let host = FakeHost::default();
        let mut tick = PlanTick::new(&p, None);
        if guard == LATENCY {
            timed_traffic(&mut tick, 10, 400);
        } else {
            traffic(&mut tick, 10, true);
        }
        let mono = 5_000_000;
        tick.run(
            &p,
            "p",
            &host,
            Now {
                wall_ms: NOW_MS,
                monotonic_ms: mono,
            },
        );
        assert_eq!(weights(&p), [50, 0]);
        let wall = NOW_MS.checked_add_signed(step_ms).unwrap();
        // eject_s is 20: still out 19 s later on the monotonic clock, back at 20 s.
        tick.run(
            &p,
            "p",
            &host,
            Now {
                wall_ms: wall,
                monotonic_ms: mono + 19_000,
            },
        );
        assert_eq!(weights(&p), [50, 0], "step {step_ms}");
        tick.run(
            &p,
            "p",
            &host,
            Now {
                wall_ms: wall + 1000,
                monotonic_ms: mono + 20_000,
            },
        );
        assert_eq!(weights(&p), [50, 50], "step {step_ms}");
    }
}

// ---- after a live update only the newest configuration decides ----

fn guarded(error_rate: &str, window_s: u64) -> Plan {
    plan(&format!(
        r#""guard": {{"error_rate": {error_rate}, "min_requests": 10, "window_s": {window_s},
                      "max_ejected_percent": 50}},"#
    ))
}

#[test]
fn an_older_configuration_still_alive_adds_outcomes_but_never_decides() {
    let host = FakeHost::default();
    let old = guarded("0.1", 5);
    let old_generation = claim(&old, "p", &host, 1);
    let mut old_tick = PlanTick::new(&old, old_generation);
    old_tick.run(&old, "p", &host, at(NOW_MS));
    // The operator relaxes the guard, and widens its window.
    let new = guarded("0.9", 10);
    let new_generation = claim(&new, "p", &host, 2);
    assert!(new_generation > old_generation);
    let mut new_tick = PlanTick::new(&new, new_generation);
    new_tick.run(&new, "p", &host, at(NOW_MS));
    // 30 % of v2's requests fail, seen by both: above the old rate, below the new one.
    for t in [&mut old_tick, &mut new_tick] {
        for i in 0..20 {
            t.record_outcome(0, 0, status(false), 1);
            t.record_outcome(0, 1, status(i % 10 < 3), 1);
        }
    }
    old_tick.run(&old, "p", &host, at(NOW_MS + 500));
    new_tick.run(&new, "p", &host, at(NOW_MS + 600));
    old_tick.run(&old, "p", &host, at(NOW_MS + 1000));
    assert_eq!(weights(&old), [50, 50]);
    assert_eq!(weights(&new), [50, 50]);
    assert_eq!(host.counter("meshsplit.p.svc.v2.ejections_total"), 0);
    // Both plans' outcomes are in the new configuration's window (40 requests of v2).
    let (bytes, _) = host.shared_data("meshsplit/guard/v4/1:p/3:svc").unwrap();
    let record = Record::decode(&bytes);
    assert_eq!(record.slice_ms, 1000);
    let v2: u64 = record.upstreams[1]
        .buckets
        .iter()
        .map(|b| b.counts.requests)
        .sum();
    assert_eq!(v2, 40);
    // When the new configuration's rate is crossed, it ejects, and the old plan follows.
    for _ in 0..400 {
        new_tick.record_outcome(0, 1, status(true), 1);
    }
    new_tick.run(&new, "p", &host, at(NOW_MS + 1500));
    old_tick.run(&old, "p", &host, at(NOW_MS + 2000));
    assert_eq!(weights(&new), [50, 0]);
    assert_eq!(weights(&old), [50, 0]);
    // Only the newest sets gauges.
    assert_eq!(host.gauge("meshsplit.p.svc.v2.ejected"), 1);
}

// ---- which outcomes are read: every stream up to a budget per tick, then a sample ----

#[test]
fn every_stream_is_observed_up_to_the_budget_then_one_in_sixteen_counting_sixteen() {
    let plan = plan(GUARD);
    let mut tick = PlanTick::new(&plan, None);
    for _ in 0..OBSERVED_PER_TICK {
        assert_eq!(
            tick.observe(0, 1, || unreachable!("no draw within the budget")),
            1
        );
    }
    // Each upstream has its own budget.
    assert_eq!(tick.observe(0, 0, || 1), 1);
    // Past the budget the draw decides: a multiple of SAMPLE_ONE_IN is read, for that many.
    assert_eq!(tick.observe(0, 1, || 1), 0);
    assert_eq!(tick.observe(0, 1, || SAMPLE_ONE_IN - 1), 0);
    assert_eq!(tick.observe(0, 1, || 0), SAMPLE_ONE_IN);
    assert_eq!(tick.observe(0, 1, || 3 * SAMPLE_ONE_IN), SAMPLE_ONE_IN);
    // The tick gives every upstream its budget back.
    tick.run(&plan, "meshsplit", &FakeHost::default(), at(NOW_MS));
    assert_eq!(tick.observe(0, 1, || 1), 1);
}

#[test]
fn a_service_without_a_guard_has_no_stream_observed() {
    let plan = plan(
        r#""rollout": {"start": "2026-01-01T00:00:00Z", "steps": [{"at_s": 0, "weights": {"v1": 1, "v2": 1}}]},"#,
    );
    let mut tick = PlanTick::new(&plan, None);
    assert_eq!(tick.observe(0, 0, || 0), 0);
    assert_eq!(tick.observe(7, 0, || 0), 0);
}

#[test]
fn a_sampled_outcome_counts_for_the_streams_it_stands_for() {
    // 16 observed failures of v2 and one sampled one: 32 requests, 32 failures in the window.
    let plan = plan(GUARD);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plan, None);
    for _ in 0..OBSERVED_PER_TICK {
        tick.record_outcome(0, 1, status(true), 1);
    }
    tick.record_outcome(0, 1, status(true), SAMPLE_ONE_IN);
    tick.record_outcome(0, 0, status(false), SAMPLE_ONE_IN);
    tick.run(&plan, "meshsplit", &host, at(NOW_MS));
    let shared = host.shared.borrow();
    let (bytes, _) = shared.values().next().expect("the guard's record");
    let record = Record::decode(bytes);
    let requests_failures = |u: usize| -> (u64, u64) {
        let buckets = &record.upstreams[u].buckets;
        (
            buckets.iter().map(|b| b.counts.requests).sum(),
            buckets.iter().map(|b| b.counts.failures).sum(),
        )
    };
    assert_eq!(requests_failures(1), (32, 32));
    assert_eq!(requests_failures(0), (16, 0));
}

// ---- the weight in force, as gauges ----

/// The weight gauges of v1 and v2 of service `svc` of plugin `p`.
fn weight_gauges(host: &FakeHost) -> [i64; 2] {
    [
        host.gauge("meshsplit.p.svc.v1.weight"),
        host.gauge("meshsplit.p.svc.v2.weight"),
    ]
}

/// The gauge calls (`gauge ID = VALUE`) a host saw.
fn gauge_sets(host: &FakeHost) -> Vec<String> {
    host.calls
        .borrow()
        .iter()
        .filter(|c| c.starts_with("gauge "))
        .cloned()
        .collect()
}

#[test]
fn weight_gauges_follow_each_rollout_step_and_are_set_only_when_they_change() {
    let p = plan(ROLLOUT);
    let start = p.services[0].rollout.as_ref().unwrap().start_ms;
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(start - 1));
    assert_eq!(weight_gauges(&host), [50, 50]);
    tick.run(&p, "p", &host, at(start));
    assert_eq!(weight_gauges(&host), [99, 1]);
    host.calls.borrow_mut().clear();
    // The same step: nothing to set.
    tick.run(&p, "p", &host, at(start + 5_000));
    assert!(gauge_sets(&host).is_empty());
    tick.run(&p, "p", &host, at(start + 10_000));
    assert_eq!(weight_gauges(&host), [75, 25]);
    assert_eq!(gauge_sets(&host).len(), 2);
    // The last step drops v1 to 0.
    tick.run(&p, "p", &host, at(start + 25_000));
    assert_eq!(weight_gauges(&host), [0, 100]);
}

#[test]
fn an_ejected_upstream_weighs_zero_until_readmitted_and_a_paused_rollout_shows_its_weights() {
    let p = plan(GUARD);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(NOW_MS));
    assert_eq!(weight_gauges(&host), [50, 50]);
    traffic(&mut tick, 20, true);
    tick.run(&p, "p", &host, at(NOW_MS + 1000));
    assert_eq!(host.gauge("meshsplit.p.svc.v2.ejected"), 1);
    assert_eq!(weight_gauges(&host), [50, 0]);
    // eject_s (20 s) later, readmitted at its weight.
    tick.run(&p, "p", &host, at(NOW_MS + 22_000));
    assert_eq!(host.gauge("meshsplit.p.svc.v2.ejected"), 0);
    assert_eq!(weight_gauges(&host), [50, 50]);

    // A rollout paused by an ejection: the weights of the step it holds at, the ejected one 0.
    let p = plan(&format!("{ROLLOUT} {GUARD}"));
    let start = p.services[0].rollout.as_ref().unwrap().start_ms;
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(start + 1000));
    assert_eq!(weight_gauges(&host), [99, 1]);
    for _ in 0..20 {
        tick.record_outcome(0, 1, status(true), 1);
    }
    tick.run(&p, "p", &host, at(start + 2000));
    tick.run(&p, "p", &host, at(start + 12_000));
    assert_eq!(host.gauge("meshsplit.p.svc.rollout_paused"), 1);
    assert_eq!(weight_gauges(&host), [99, 0]);
    tick.run(&p, "p", &host, at(start + 22_000));
    assert_eq!(weight_gauges(&host), [0, 100]);
}

#[test]
fn only_the_newest_configuration_sets_the_weight_gauges() {
    let host = FakeHost::default();
    // A rollout without a guard, replaced by plain weights while its plan lives on.
    let old = plan(ROLLOUT);
    let start = old.services[0].rollout.as_ref().unwrap().start_ms;
    let mut old_tick = PlanTick::new(&old, None).with_gauge_generation(claim_gauges(&host, "p", 1));
    old_tick.run(&old, "p", &host, at(start));
    assert_eq!(weight_gauges(&host), [99, 1]);
    let new = Plan::from_json(
        br#"{"services": [{"name": "svc", "upstreams": [
            {"name": "v1", "cluster": "c1", "weight": 70},
            {"name": "v2", "cluster": "c2", "weight": 30}]}]}"#,
    )
    .unwrap();
    let mut new_tick = PlanTick::new(&new, None).with_gauge_generation(claim_gauges(&host, "p", 2));
    new_tick.run(&new, "p", &host, at(start + 1000));
    assert_eq!(weight_gauges(&host), [70, 30]);
    // The old plan's rollout moves on (its own weights do), but it no longer sets the gauges.
    host.calls.borrow_mut().clear();
    old_tick.run(&old, "p", &host, at(start + 10_000));
    assert_eq!(weights(&old), [75, 25]);
    assert_eq!(weight_gauges(&host), [70, 30]);
    assert!(gauge_sets(&host).is_empty());
    // A configuration applied again is the newest again.
    let mut again = PlanTick::new(&old, None).with_gauge_generation(claim_gauges(&host, "p", 1));
    again.run(&old, "p", &host, at(start + 10_000));
    assert_eq!(weight_gauges(&host), [75, 25]);
}

#[test]
fn an_older_guarded_configuration_never_sets_the_weight_gauges() {
    let host = FakeHost::default();
    let old = guarded("0.1", 5);
    let mut old_tick = PlanTick::new(&old, claim(&old, "p", &host, 1));
    old_tick.run(&old, "p", &host, at(NOW_MS));
    let new = guarded("0.9", 5);
    let mut new_tick = PlanTick::new(&new, claim(&new, "p", &host, 2));
    new_tick.run(&new, "p", &host, at(NOW_MS));
    for _ in 0..400 {
        new_tick.record_outcome(0, 1, status(true), 1);
    }
    new_tick.run(&new, "p", &host, at(NOW_MS + 1500));
    assert_eq!(weight_gauges(&host), [50, 0]);
    host.calls.borrow_mut().clear();
    old_tick.run(&old, "p", &host, at(NOW_MS + 2000));
    assert_eq!(weights(&old), [50, 0]);
    assert!(gauge_sets(&host).is_empty());
}

// ---- the latency condition ----

const LATENCY: &str = r#""guard": {"min_requests": 10, "window_s": 5, "eject_s": 20,
    "latency": {"percentile": 95, "threshold_ms": 250}},"#;

/// `n` timed outcomes of each upstream seen by `tick`, all 200s: v1's in 5 ms, v2's in `v2_ms`.
fn timed_traffic(tick: &mut PlanTick, n: usize, v2_ms: u64) {
    for _ in 0..n {
        tick.record_timed_outcome(0, 0, status(false), 1, Some(5));
        tick.record_timed_outcome(0, 1, status(false), 1, Some(v2_ms));
    }
}

#[test]
fn a_slow_upstream_is_ejected_across_workers_and_readmitted_fast() {
    ejected_across_workers_and_readmitted(
        LATENCY,
        |tick, n| timed_traffic(tick, n, 400),
        |tick, n| timed_traffic(tick, n, 250),
    );
}

#[test]
fn only_outcomes_timed_above_the_threshold_count_as_slow() {
    let p = plan(LATENCY);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    assert!(tick.timed(0));
    for elapsed in [None, Some(0), Some(250)] {
        for _ in 0..20 {
            tick.record_timed_outcome(0, 1, status(false), 1, elapsed);
        }
    }
    // One slow request of 61 (1.6 %): p95 is fast.
    tick.record_timed_outcome(0, 1, status(false), 1, Some(251));
    tick.run(&p, "p", &host, at(NOW_MS));
    assert_eq!(weights(&p), [50, 50]);
    let (bytes, _) = host.shared_data("meshsplit/guard/v4/1:p/3:svc").unwrap();
    let record = Record::decode(&bytes);
    let slow: u64 = record.upstreams[1]
        .buckets
        .iter()
        .map(|b| b.counts.slow)
        .sum();
    let requests: u64 = record.upstreams[1]
        .buckets
        .iter()
        .map(|b| b.counts.requests)
        .sum();
    assert_eq!((requests, slow), (61, 1));
    // Failures of a guard without error_rate eject nothing.
    let mut tick = PlanTick::new(&p, None);
    traffic(&mut tick, 50, true);
    tick.run(&p, "p", &host, at(NOW_MS + 500));
    assert_eq!(weights(&p), [50, 50]);
    // An error guard times its streams to count abandoned requests, unless told not to.
    assert!(PlanTick::new(&plan(GUARD), None).timed(0));
    let untimed = r#""guard": {"error_rate": 0.5, "abandoned_after_ms": 0},"#;
    assert!(!PlanTick::new(&plan(untimed), None).timed(0));
}

#[test]
fn a_sampled_slow_outcome_counts_for_the_streams_it_stands_for() {
    let p = plan(LATENCY);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.record_timed_outcome(0, 1, status(false), 16, Some(300));
    tick.record_timed_outcome(0, 1, status(false), 16, Some(3));
    tick.run(&p, "p", &host, at(NOW_MS));
    let (bytes, _) = host.shared_data("meshsplit/guard/v4/1:p/3:svc").unwrap();
    let record = Record::decode(&bytes);
    let b = record.upstreams[1]
        .buckets
        .iter()
        .find(|b| b.counts.requests > 0);
    // Two outcomes read, standing for 32 streams.
    assert_eq!(
        b.map(|b| b.counts),
        Some(Counts {
            requests: 32,
            failures: 0,
            slow: 16,
            read: Read {
                requests: 2,
                failures: 0,
                slow: 1
            }
        })
    );
    // Half slow by the estimate, but two outcomes read are no evidence: nothing is ejected.
    assert_eq!(weights(&p), [50, 50]);
    // Ten more read, half slow again: now the outcomes read show it.
    for _ in 0..5 {
        tick.record_timed_outcome(0, 1, status(false), 16, Some(300));
        tick.record_timed_outcome(0, 1, status(false), 16, Some(3));
    }
    tick.run(&p, "p", &host, at(NOW_MS + 100));
    assert_eq!(weights(&p), [50, 0]);
}

#[test]
fn percentiles_are_written_as_given() {
    assert_eq!(percentile_text(95_000), "95");
    assert_eq!(percentile_text(99_900), "99.9");
    assert_eq!(percentile_text(99_990), "99.99");
    assert_eq!(percentile_text(50_005), "50.005");
}

/// Traffic of one upstream in the sampling simulation.
#[derive(Clone, Copy)]
struct Flow {
    /// Requests per 500 ms tick, or `burst` every 20 s (40 ticks) and nothing in between.
    per_tick: u32,
    burst: bool,
    /// Chance that a request fails.
    fails: f64,
}

/// One hour (7 200 ticks of 500 ms, one worker) of the real tick path: outcomes go through
/// `PlanTick::observe` (sampled: the wasm build's reads) or are all counted (exact: the native
/// build's), then `run` decides. An ejected upstream gets no traffic. Returns each upstream's
/// ejections and the first ejection's time (ms after the start) of each.
fn simulate(
    window_s: u64,
    weights: [u32; 2],
    flows: [Flow; 2],
    sampled: bool,
    seed: u64,
) -> ([u64; 2], [Option<u64>; 2]) {
    use rand_core::{Rng, SeedableRng};
    let json = format!(
        r#"{{"services": [{{"name": "svc", "guard": {{"error_rate": 0.05, "min_requests": 20,
            "window_s": {window_s}, "eject_s": 30, "max_ejected_percent": 50}},
            "upstreams": [{{"name": "v1", "cluster": "c1", "weight": {}}},
                          {{"name": "v2", "cluster": "c2", "weight": {}}}]}}]}}"#,
        weights[0], weights[1]
    );
    let plan = Plan::from_json(json.as_bytes()).unwrap();
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plan, None);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut first = [None; 2];
    for n in 0..7_200u64 {
        let in_force = weights_of(&plan);
        for (u, flow) in flows.iter().enumerate() {
            if in_force[u] == 0 {
                continue;
            }
            let count = match (flow.burst, n % 40) {
                (false, _) => flow.per_tick,
                (true, 0) => flow.per_tick,
                (true, _) => 0,
            };
            for _ in 0..count {
                let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let failed = draw < flow.fails;
                let streams = if sampled {
                    tick.observe(0, u, || rng.next_u32())
                } else {
                    1
                };
                if streams > 0 {
                    tick.record_outcome(0, u, status(failed), streams);
                }
            }
        }
        tick.run(&plan, "p", &host, at(NOW_MS + n * 500));
        for (u, name) in ["v1", "v2"].iter().enumerate() {
            if first[u].is_none()
                && host.counter(&format!("meshsplit.p.svc.{name}.ejections_total")) > 0
            {
                first[u] = Some(n * 500);
            }
        }
    }
    let ejections =
        ["v1", "v2"].map(|name| host.counter(&format!("meshsplit.p.svc.{name}.ejections_total")));
    (ejections, first)
}

fn weights_of(plan: &Plan) -> Vec<u32> {
    plan.services[0].weights().to_vec()
}

/// Healthy upstreams (1 % errors, guard `error_rate 0.05`): sampled outcome reads eject no
/// more often than exact counting, row by row, in an hour of the real tick path (seeded).
#[test]
fn sampling_ejects_healthy_upstreams_no_more_often_than_exact_counting() {
    let steady = |per_tick| Flow {
        per_tick,
        burst: false,
        fails: 0.01,
    };
    let rows: [(&str, u64, [u32; 2], [Flow; 2]); 6] = [
        ("window 10 s, 40/s each", 10, [50, 50], [steady(20); 2]),
        ("window 10 s, 100/s each", 10, [50, 50], [steady(50); 2]),
        ("window 1 s, 100/s each", 1, [50, 50], [steady(50); 2]),
        ("window 1 s, 400/s each", 1, [50, 50], [steady(200); 2]),
        (
            "bursts of 200 every 20 s",
            10,
            [50, 50],
            [Flow {
                per_tick: 200,
                burst: true,
                fails: 0.01,
            }; 2],
        ),
        (
            "10 % canary, 360/s and 40/s",
            10,
            [90, 10],
            [steady(180), steady(20)],
        ),
    ];
    for (seed, (name, window_s, weights, flows)) in rows.into_iter().enumerate() {
        let seed = 0x5eed + seed as u64;
        let (exact, _) = simulate(window_s, weights, flows, false, seed);
        let (sampled, _) = simulate(window_s, weights, flows, true, seed);
        println!("{name}: ejections per hour exact {exact:?}, sampled {sampled:?}");
        for u in 0..2 {
            assert!(
                sampled[u] <= exact[u],
                "{name}: sampled {sampled:?} against exact {exact:?}"
            );
        }
    }
}

/// A canary failing 25 % is still ejected within its window plus a second, sampled or exact, at
/// the rates of the table above.
#[test]
fn a_canary_failing_a_quarter_is_ejected_within_window_and_a_second_when_sampled() {
    let flow = |per_tick, fails| Flow {
        per_tick,
        burst: false,
        fails,
    };
    for (window_s, weights, flows) in [
        (10, [90, 10], [flow(180, 0.01), flow(20, 0.25)]),
        (10, [50, 50], [flow(50, 0.01), flow(50, 0.25)]),
        (1, [50, 50], [flow(50, 0.01), flow(50, 0.25)]),
        (1, [50, 50], [flow(200, 0.01), flow(200, 0.25)]),
    ] {
        for sampled in [false, true] {
            let (_, first) = simulate(window_s, weights, flows, sampled, 7);
            let limit = window_s * 1000 + 1000;
            assert!(
                first[1].is_some_and(|ms| ms <= limit),
                "window {window_s} s, {flows_per:?}/tick, sampled {sampled}: first ejection at {:?} ms",
                first[1],
                flows_per = flows.map(|f| f.per_tick)
            );
        }
    }
}

/// A tick whose compare-and-swap gives up (every write loses a race) keeps the ejections of the
/// last tick in force: the ejected upstream gets no traffic back for that tick.
#[test]
fn a_tick_that_cannot_write_keeps_the_last_decision_in_force() {
    let plan = plan(GUARD);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plan, None);
    traffic(&mut tick, 20, true);
    tick.run(&plan, "p", &host, at(NOW_MS));
    assert_eq!(weights(&plan), [50, 0]);
    traffic(&mut tick, 20, false);
    host.cas_conflicts.set(1_000);
    tick.run(&plan, "p", &host, at(NOW_MS + 500));
    assert_eq!(weights(&plan), [50, 0]);
    host.cas_conflicts.set(0);
    tick.run(&plan, "p", &host, at(NOW_MS + 1_000));
    assert_eq!(weights(&plan), [50, 0]);
}

/// Outcomes stamped with the moment they happened count in that moment's window: failures 21 s
/// old (window 5 s) eject nothing at a late tick, failures 3 s old still do.
#[test]
fn stamped_outcomes_count_in_the_window_of_their_moment() {
    let stamped = |tick: &mut PlanTick, at_ms: u64| {
        for _ in 0..20 {
            tick.record_outcome_at(0, 0, status(false), 1, None, Some(at_ms));
            tick.record_outcome_at(0, 1, status(true), 1, None, Some(at_ms));
        }
    };
    for (age_ms, ejected) in [(21_000, false), (3_000, true)] {
        let plan = plan(GUARD);
        let host = FakeHost::default();
        let mut tick = PlanTick::new(&plan, None);
        // A first tick files the record (its slices are this guard's).
        tick.run(&plan, "p", &host, at(NOW_MS));
        stamped(&mut tick, NOW_MS + 100);
        tick.run(&plan, "p", &host, at(NOW_MS + 100 + age_ms));
        let expected: &[u32] = if ejected { &[50, 0] } else { &[50, 50] };
        assert_eq!(weights(&plan), expected, "{age_ms} ms old");
    }
}

/// A plan about to be dropped (its configuration gone) files its last outcomes without deciding:
/// the configuration in force decides on them.
#[test]
fn a_dropped_plan_files_its_last_outcomes_for_the_configuration_in_force() {
    let (old, new) = (plan(GUARD), plan(GUARD));
    let host = FakeHost::default();
    let mut new_tick = PlanTick::new(&new, Some(2));
    new_tick.run(&new, "p", &host, at(NOW_MS));
    let mut old_tick = PlanTick::new(&old, Some(1));
    for _ in 0..20 {
        old_tick.record_outcome_at(0, 0, status(false), 1, None, Some(NOW_MS + 100));
        old_tick.record_outcome_at(0, 1, status(true), 1, None, Some(NOW_MS + 100));
    }
    old_tick.flush(&old, "p", &host, NOW_MS + 200);
    // Filed, deciding nothing: no ejection yet, none by the old plan.
    assert_eq!(host.counter("meshsplit.p.svc.v2.ejections_total"), 0);
    assert_eq!(weights(&old), [50, 50]);
    new_tick.run(&new, "p", &host, at(NOW_MS + 500));
    assert_eq!(weights(&new), [50, 0]);
    assert_eq!(host.counter("meshsplit.p.svc.v2.ejections_total"), 1);
    // Flushed once: a second flush has nothing to file.
    old_tick.flush(&old, "p", &host, NOW_MS + 600);
}

/// One pod of a fleet for `limit_s` seconds of the real tick path (one worker, 500 ms ticks):
/// its share of the traffic, `per_s` requests per second to each upstream (Poisson-like: the
/// whole part every tick plus one more at the fraction's odds), the canary (upstream 1) failing
/// at `fails`. Returns when the pod first ejected the canary (ms), if it did.
fn pod_ejects_canary_at(
    guard: &str,
    per_s: [f64; 2],
    fails: f64,
    sampled: bool,
    seed: u64,
    limit_s: u64,
) -> Option<u64> {
    use rand_core::{Rng, SeedableRng};
    let json = format!(
        r#"{{"services": [{{"name": "svc", "guard": {guard},
            "upstreams": [{{"name": "v1", "cluster": "c1", "weight": 90}},
                          {{"name": "v2", "cluster": "c2", "weight": 10}}]}}]}}"#
    );
    let plan = Plan::from_json(json.as_bytes()).unwrap();
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plan, None);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut uniform = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    for n in 0..limit_s * 2 {
        for (u, rate) in per_s.iter().enumerate() {
            let per_tick = rate / 2.0;
            let count = per_tick.floor() as u32 + u32::from(uniform() < per_tick.fract());
            for _ in 0..count {
                let failed = u == 1 && uniform() < fails;
                let draw = (uniform() * f64::from(u32::MAX)) as u32;
                let streams = if sampled {
                    tick.observe(0, u, || draw)
                } else {
                    1
                };
                if streams > 0 {
                    tick.record_outcome(0, u, status(failed), streams);
                }
            }
        }
        tick.run(&plan, "p", &host, at(NOW_MS + n * 500));
        if host.counter("meshsplit.p.svc.v2.ejections_total") > 0 {
            return Some(n * 500);
        }
    }
    None
}

/// The guard at fleet scale: each pod judges only its own traffic, so with N pods at a fixed total
/// rate each sees 1/N of the canary's requests. A canary taking 10 % of 40 requests/s and failing
/// half its requests, N = 1, 4, 8 pods: when the last pod ejects it (seconds), with the shipped
/// example's guard (min_requests 20, window 10 s) and with min_requests sized to a pod's share
/// (min_requests 4, window 10 s: at most the canary's requests per pod and window). The numbers
/// are the ones docs/alerts.md gives ("The guard on a fleet").
#[test]
fn a_fleet_ejects_a_failing_canary_on_every_pod_when_min_requests_fits_a_pods_share() {
    let total = [36.0, 4.0];
    let example = r#"{"error_rate": 0.05, "min_requests": 20, "window_s": 10, "eject_s": 30}"#;
    let sized = r#"{"error_rate": 0.05, "min_requests": 4, "window_s": 10, "eject_s": 30}"#;
    let mut table = Vec::new();
    for guard in [example, sized] {
        for pods in [1u32, 4, 8] {
            let per_pod = total.map(|r| r / f64::from(pods));
            // The last pod of the fleet to eject (each pod its own seed), sampled as in wasm.
            let times: Vec<Option<u64>> = (0..pods)
                .map(|p| {
                    pod_ejects_canary_at(guard, per_pod, 0.5, true, 0xf1ee7 + u64::from(p), 600)
                })
                .collect();
            let last = times
                .iter()
                .copied()
                .try_fold(0u64, |max, t| t.map(|t| max.max(t)));
            table.push((guard == sized, pods, last));
        }
    }
    for (sized, pods, last) in &table {
        println!(
            "min_requests {}: {pods} pods: every pod ejected after {}",
            if *sized { 4 } else { 20 },
            last.map_or("never (10 minutes)".to_owned(), |ms| format!(
                "{:.1} s",
                ms as f64 / 1000.0
            ))
        );
    }
    let at = |sized, pods| {
        table
            .iter()
            .find(|(s, p, _)| *s == sized && *p == pods)
            .and_then(|(_, _, t)| *t)
    };
    // One pod sees 40 canary requests per window: ejected within its window and a tick.
    assert!(at(false, 1).is_some_and(|ms| ms <= 10_500), "{table:?}");
    // Four and eight pods see 10 and 5 per window, under min_requests 20: never ejected.
    assert_eq!(at(false, 4), None, "{table:?}");
    assert_eq!(at(false, 8), None, "{table:?}");
    // Sized to a pod's share, every pod ejects it within two windows.
    for pods in [1, 4, 8] {
        assert!(at(true, pods).is_some_and(|ms| ms <= 20_000), "{table:?}");
    }
    // The seeds are fixed, so the times are exact: docs/alerts.md ("The guard on a fleet") quotes
    // them row by row and must say what this simulation gives.
    let shown = |ms: Option<u64>| {
        ms.map_or("never".to_owned(), |ms| {
            format!("{:.1} s", ms as f64 / 1000.0)
        })
    };
    let page = include_str!("../docs/alerts.md");
    for pods in [1u32, 4, 8] {
        let row = format!(
            "| {pods} | {} | {} | {} |",
            40 / pods,
            shown(at(false, pods)),
            shown(at(true, pods))
        );
        assert!(
            page.lines().any(|line| line == row),
            "docs/alerts.md lacks the row {row}"
        );
    }
}
