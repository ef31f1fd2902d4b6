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

fn weights(plan: &Plan) -> Vec<u32> {
    plan.services[0].weights().to_vec()
}

/// `n` outcomes of each upstream seen by `tick` (v2 fails when `v2_fails`).
fn traffic(tick: &mut PlanTick, n: usize, v2_fails: bool) {
    for _ in 0..n {
        tick.record_outcome(0, 0, false);
        tick.record_outcome(0, 1, v2_fails);
    }
}

#[test]
fn a_failing_upstream_is_ejected_across_workers_and_readmitted() {
    let plan_a = plan(GUARD);
    let plan_b = plan(GUARD);
    let worker_a = FakeHost::default();
    let worker_b = worker_a.sibling(&[]);
    let (mut a, mut b) = (PlanTick::new(&plan_a, None), PlanTick::new(&plan_b, None));
    // Each worker alone has too few requests; together they cross min_requests.
    traffic(&mut a, 6, true);
    a.run(&plan_a, "p", &worker_a, at(NOW_MS));
    assert_eq!(weights(&plan_a), [50, 50]);
    traffic(&mut b, 6, true);
    b.run(&plan_b, "p", &worker_b, at(NOW_MS + 400));
    assert_eq!(weights(&plan_b), [50, 0]);
    // The other worker follows on its next tick.
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 1000));
    assert_eq!(weights(&plan_a), [50, 0]);
    assert_eq!(worker_a.counter("meshsplit.p.svc.v2.ejections_total"), 1);
    assert_eq!(worker_a.gauge("meshsplit.p.svc.v2.ejected"), 1);
    // After eject_s it is back, and its old failures do not eject it again.
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 20_000));
    assert_eq!(weights(&plan_a), [50, 50]);
    traffic(&mut a, 20, false);
    a.run(&plan_a, "p", &worker_a, at(NOW_MS + 21_000));
    assert_eq!(weights(&plan_a), [50, 50]);
    assert_eq!(worker_a.gauge("meshsplit.p.svc.v2.ejected"), 0);
    assert_eq!(worker_a.counter("meshsplit.p.svc.v2.ejections_total"), 1);
}

#[test]
fn healthy_traffic_ejects_nothing_and_services_without_guard_make_no_host_calls() {
    let guarded = plan(GUARD);
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&guarded, None);
    traffic(&mut tick, 50, false);
    tick.run(&guarded, "p", &host, at(NOW_MS));
    assert_eq!(weights(&guarded), [50, 50]);

    let plain = plan("");
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&plain, None);
    tick.run(&plain, "p", &host, at(NOW_MS));
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
    let p = plan(&format!("{ROLLOUT} {GUARD}"));
    let start = p.services[0].rollout.as_ref().unwrap().start_ms;
    let host = FakeHost::default();
    let mut tick = PlanTick::new(&p, None);
    tick.run(&p, "p", &host, at(start + 1000));
    assert_eq!(weights(&p), [99, 1]);
    // v2 fails while at 1 %: ejected, and the rollout holds at 99/1 (v2 at 0 while ejected).
    for _ in 0..20 {
        tick.record_outcome(0, 1, true);
    }
    tick.run(&p, "p", &host, at(start + 2000));
    assert_eq!(weights(&p), [99, 0]);
    // The step to 75/25 comes while v2 is ejected: paused.
    tick.run(&p, "p", &host, at(start + 12_000));
    assert_eq!(weights(&p), [99, 0]);
    assert_eq!(host.gauge("meshsplit.p.svc.rollout_paused"), 1);
    // Readmitted after eject_s: the schedule resumes where the clock is.
    tick.run(&p, "p", &host, at(start + 22_000));
    assert_eq!(weights(&p), [0, 100]);
    assert_eq!(host.gauge("meshsplit.p.svc.rollout_paused"), 0);
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

/// Records the CAS token of every write to a guard record, around a fake worker.
struct RecordWrites<'a> {
    host: &'a FakeHost,
    writes: std::cell::RefCell<Vec<(Record, u32)>>,
}

impl Host for RecordWrites<'_> {
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
            self.writes.borrow_mut().push((Record::decode(value), cas));
        }
        self.host.set_shared_data(key, value, cas)
    }
}

#[test]
fn an_ejection_is_always_a_compare_and_swap_even_on_a_record_never_written() {
    // With token 0 the write would be unconditional: two workers deciding at the same moment
    // would both land the ejection, and it would be logged and counted twice.
    let plan = plan(GUARD);
    let worker = FakeHost::default();
    let spy = RecordWrites {
        host: &worker,
        writes: Default::default(),
    };
    let mut tick = PlanTick::new(&plan, None);
    traffic(&mut tick, 12, true);
    tick.run(&plan, "p", &spy, at(NOW_MS));
    assert_eq!(weights(&plan), [50, 0]);
    let writes = spy.writes.borrow();
    let ejections: Vec<u32> = writes
        .iter()
        .filter(|(record, _)| record.upstreams.iter().any(|u| u.ejection.until_s > 0))
        .map(|&(_, cas)| cas)
        .collect();
    assert_eq!(ejections.len(), 1, "{writes:?}");
    assert!(ejections.iter().all(|&cas| cas != 0), "{writes:?}");
    // What was written unconditionally is only the empty record.
    assert!(writes
        .iter()
        .all(|(record, cas)| *cas != 0 || *record == Record::default()));
}
