use std::rc::Rc;

use super::*;
use crate::host::FakeHost;
use crate::route::tests::CONFIG;
use crate::route::Verdict;

// ---- per-VM state: plans by root context ----

fn configure(vm: &mut Instance, root: u32, bytes: &[u8]) -> Result<Rc<Plan>, ConfigError> {
    vm.configure(root, bytes, "meshsplit", &FakeHost::default())
}

fn single(cluster: &str) -> String {
    format!(
        r#"{{"services": [{{"name": "svc", "upstreams": [{{"name": "u", "cluster": "{cluster}", "weight": 1}}]}}]}}"#
    )
}

fn routed(vm: &mut Instance, context: u32, root: u32) -> Option<String> {
    vm.stream_created(context, root);
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.request_headers(context, &host);
    host.header("x-meshsplit-cluster")
}

#[test]
fn unconfigured_vm_passes_requests_untouched_and_counts_them() {
    let mut vm = Instance::new([0; 32]);
    let host = FakeHost::with_headers(&[(":authority", "svc"), ("x-meshsplit-cluster", "x")]);
    assert_eq!(vm.request_headers(5, &host), Verdict::Continue);
    assert_eq!(
        *host.calls.borrow(),
        [
            format!("define counter {UNPLANNED_COUNTER}"),
            "counter 0 +1".to_owned()
        ]
    );
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("x"));
    assert_eq!(host.counter(UNPLANNED_COUNTER), 1);
}

#[test]
fn each_root_context_routes_with_its_own_plan() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("one"));
    assert_eq!(routed(&mut vm, 11, 2).as_deref(), Some("two"));
    assert_eq!(routed(&mut vm, 12, 1).as_deref(), Some("one"));
}

#[test]
fn stream_of_a_root_without_plan_is_never_routed_with_another_roots_plan() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    let host = FakeHost::with_headers(&[(":authority", "svc"), ("x-meshsplit-cluster", "x")]);
    vm.stream_created(10, 99);
    assert_eq!(vm.request_headers(10, &host), Verdict::Continue);
    // Untouched: not even the client's cluster header is removed, as without the filter.
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("x"));
    assert_eq!(host.counter(UNPLANNED_COUNTER), 1);
    // A request whose context was not the last one created has no known root either.
    vm.stream_created(20, 1);
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.request_headers(21, &host);
    assert_eq!(host.header("x-meshsplit-cluster"), None);
}

#[test]
fn reconfiguring_a_root_replaces_its_plan() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("old").as_bytes()).unwrap();
    configure(&mut vm, 1, single("new").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("new"));
    assert_eq!(vm.plans(), 1);
}

#[test]
fn invalid_reconfiguration_keeps_the_previous_plan() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("good").as_bytes()).unwrap();
    let err = configure(&mut vm, 1, br#"{"services": []}"#).unwrap_err();
    assert_eq!(err.to_string(), "services: must list at least one service");
    assert!(configure(&mut vm, 2, b"{").is_err());
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("good"));
    // Root 2 was never configured: its streams are not routed with root 1's plan.
    assert_eq!(routed(&mut vm, 11, 2), None);
}

#[test]
fn many_roots_each_keep_their_plan_however_many_there_are() {
    let mut vm = Instance::new([0; 32]);
    for root in 1..=40u32 {
        configure(&mut vm, root, single(&format!("c{root}")).as_bytes()).unwrap();
    }
    // Interleaved traffic and reconfigurations of other roots never disturb a root's plan.
    for round in 0..3u32 {
        for root in 1..=40u32 {
            let context = 1000 + round * 100 + root;
            assert_eq!(
                routed(&mut vm, context, root).as_deref(),
                Some(format!("c{root}").as_str())
            );
        }
        configure(&mut vm, 40, single("c40").as_bytes()).unwrap();
    }
    assert_eq!(vm.plans(), 40);
}

#[test]
fn deleting_a_root_drops_only_its_plan() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    assert!(vm.context_deleted(2, &FakeHost::default()));
    assert!(!vm.context_deleted(77, &FakeHost::default()));
    assert_eq!(vm.plans(), 1);
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("one"));
    assert_eq!(routed(&mut vm, 11, 2), None);
}

#[test]
fn a_live_update_routes_old_and_new_streams_with_their_own_roots() {
    // Envoy configures the new root before it deletes the old one; streams created under the
    // old root keep its plan until they end, and a static root beside it is never touched.
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("static").as_bytes()).unwrap();
    for version in 2..=12u32 {
        configure(&mut vm, version, single(&format!("v{version}")).as_bytes()).unwrap();
        assert_eq!(routed(&mut vm, 100 + version, 1).as_deref(), Some("static"));
        assert_eq!(
            routed(&mut vm, 200 + version, version).as_deref(),
            Some(format!("v{version}").as_str())
        );
    }
    assert_eq!(vm.plans(), 12);
    for version in 2..12u32 {
        vm.context_deleted(version, &FakeHost::default());
    }
    assert_eq!(vm.plans(), 2);
    assert_eq!(routed(&mut vm, 500, 1).as_deref(), Some("static"));
}

// ---- the accepted-configuration log line ----

#[test]
fn accepted_configuration_is_announced_once_per_envoy() {
    let main = FakeHost::default();
    let worker = main.sibling(&[]);
    let a = config_fingerprint(single("a").as_bytes());
    let b = config_fingerprint(single("b").as_bytes());
    assert_ne!(a, b);
    assert_eq!(a.len(), 8);
    // The main thread, then the workers, configure the same plugin moments apart.
    assert!(first_to_accept(&main, "meshsplit", &a, 1000));
    assert!(!first_to_accept(&worker, "meshsplit", &a, 1000));
    assert!(!first_to_accept(&main, "meshsplit", &a, 1001));
    // Two listeners with different configurations are each announced, even interleaved.
    assert!(first_to_accept(&main, "meshsplit", &b, 1001));
    assert!(!first_to_accept(&worker, "meshsplit", &a, 1002));
    assert!(!first_to_accept(&worker, "meshsplit", &b, 1002));
    // Another plugin name is announced on its own.
    assert!(first_to_accept(&worker, "other", &a, 1002));
    // The same configuration accepted again later (an update back to it) is a new acceptance.
    assert!(first_to_accept(
        &worker,
        "meshsplit",
        &a,
        1000 + ANNOUNCE_WINDOW_S
    ));
    assert!(!first_to_accept(
        &main,
        "meshsplit",
        &a,
        1000 + ANNOUNCE_WINDOW_S
    ));
}

#[test]
fn accepted_configuration_line_names_services_upstreams_and_fingerprint() {
    let plan = Plan::from_json(CONFIG.as_bytes()).unwrap();
    assert_eq!(
        config_summary(&plan, "0badc0de", "meshsplit"),
        "configuration 0badc0de accepted for meshsplit: 2 services, 4 upstreams: \
         reviews (weighted, v1=reviews_v1 1, v2=reviews_v2 0); \
         ratings (weighted, v1=ratings_v1 0, v2=ratings_v2 5)"
    );
    let many: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"name": "s{i}", "upstreams": [{{"name": "u", "cluster": "c", "weight": 1}}]}}"#
            )
        })
        .collect();
    let json = format!(r#"{{"services": [{}]}}"#, many.join(","));
    let line = config_summary(&Plan::from_json(json.as_bytes()).unwrap(), "x", "p");
    assert!(
        line.starts_with(
            "configuration x accepted for p: 10 services, 10 upstreams: s0 (weighted, u=c 1); "
        ),
        "{line}"
    );
    assert!(
        line.ends_with("s7 (weighted, u=c 1); and 2 more services"),
        "{line}"
    );
}

// ---- least request: counts shared by workers, given back when streams end ----

const LR: &str = r#"{"services": [{"name": "svc", "strategy": "least_request", "upstreams": [
    {"name": "a", "cluster": "c_a", "weight": 1}, {"name": "b", "cluster": "c_b", "weight": 1}]}]}"#;
const KEY_A: &str = "meshsplit/load/9:meshsplit/3:svc/1:a";
const KEY_B: &str = "meshsplit/load/9:meshsplit/3:svc/1:b";

/// An upstream's load: every owner's count in its shared value.
fn load(host: &FakeHost, key: &str) -> Option<u64> {
    host.shared
        .borrow()
        .get(key)
        .map(|(value, _)| in_flight::load(value))
}

fn lr_vm(host: &FakeHost) -> Instance {
    let mut vm = Instance::new([7; 32]);
    vm.configure(1, LR.as_bytes(), "meshsplit", host).unwrap();
    vm
}

fn lr_request(vm: &mut Instance, context: u32, host: &FakeHost) -> String {
    vm.stream_created(context, 1);
    vm.request_headers(context, host);
    host.header("x-meshsplit-cluster").unwrap()
}

fn svc_host(worker: &FakeHost) -> FakeHost {
    worker.sibling(&[(":authority", "svc")])
}

#[test]
fn least_request_counts_start_at_zero_with_gauges() {
    let host = FakeHost::default();
    lr_vm(&host);
    assert_eq!(load(&host, KEY_A), Some(0));
    assert_eq!(host.gauge("meshsplit.meshsplit.svc.a.in_flight"), 0);
}

/// Requests routed (and ended at once) on `vm` while something else holds a count: how many
/// went to `upstream`.
fn lr_share(vm: &mut Instance, worker: &FakeHost, first_context: u32, upstream: &str) -> usize {
    (0..400)
        .filter(|i| {
            let context = first_context + i;
            let host = svc_host(worker);
            let picked = lr_request(vm, context, &host);
            vm.context_deleted(context, &host);
            picked == upstream
        })
        .count()
}

/// Holds requests on `vm` (contexts from 10 on) until one upstream has two more in flight
/// than the other; returns the held contexts and the idle upstream's cluster.
fn hold_until_two_apart(vm: &mut Instance, worker: &FakeHost) -> (Vec<u32>, &'static str) {
    let mut held = Vec::new();
    for context in 10..60 {
        lr_request(vm, context, &svc_host(worker));
        held.push(context);
        let (a, b) = (load(worker, KEY_A).unwrap(), load(worker, KEY_B).unwrap());
        if a >= b + 2 {
            return (held, "c_b");
        }
        if b >= a + 2 {
            return (held, "c_a");
        }
    }
    panic!("loads never two apart");
}

#[test]
fn least_request_prefers_the_idle_upstream_and_counts_until_the_stream_ends() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    // One request apart is within the band: both are candidates, by weight.
    let first = lr_request(&mut vm, 5, &svc_host(&worker));
    let other = if first == "c_a" { "c_b" } else { "c_a" };
    let to_other = lr_share(&mut vm, &worker, 100, other);
    assert!((170..=230).contains(&to_other), "{to_other} of 400");
    vm.context_deleted(5, &worker);
    // Two apart: only the idle one.
    let (held, idle) = hold_until_two_apart(&mut vm, &worker);
    assert_eq!(lr_share(&mut vm, &worker, 100, idle), 400);
    let (a, b) = (load(&worker, KEY_A).unwrap(), load(&worker, KEY_B).unwrap());
    assert_eq!(a + b, held.len() as u64);
    assert_eq!(
        worker.gauge("meshsplit.meshsplit.svc.a.in_flight"),
        a as i64
    );
    for &context in &held {
        vm.context_deleted(context, &worker);
    }
    vm.context_deleted(10, &worker); // a second delete of the same stream changes nothing
    assert_eq!(
        (load(&worker, KEY_A), load(&worker, KEY_B)),
        (Some(0), Some(0))
    );
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.a.in_flight"), 0);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.b.in_flight"), 0);
}

#[test]
fn least_request_sees_other_workers_load() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut vm1, mut vm2) = (lr_vm(&first), lr_vm(&second));
    // Worker 1 holds requests two apart; worker 2 sees them and sends everything to the idle one.
    let (held, idle) = hold_until_two_apart(&mut vm1, &first);
    assert_eq!(lr_share(&mut vm2, &second, 100, idle), 400);
    for &context in &held {
        vm1.context_deleted(context, &first);
    }
    assert_eq!(
        (load(&first, KEY_A), load(&first, KEY_B)),
        (Some(0), Some(0))
    );
}

#[test]
fn least_request_retries_on_cas_conflict_without_losing_updates() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    let host = svc_host(&worker);
    host.cas_conflicts.set(3);
    lr_request(&mut vm, 10, &host);
    let total = load(&worker, KEY_A).unwrap() + load(&worker, KEY_B).unwrap();
    assert_eq!(total, 1);
}

#[test]
fn least_request_counts_never_go_negative() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    lr_request(&mut vm, 10, &svc_host(&worker));
    // Someone reset the counters (e.g. an operator restarting another worker's view).
    worker.set_shared_data(KEY_A, &[], 0);
    worker.set_shared_data(KEY_B, &[], 0);
    vm.context_deleted(10, &worker);
    assert_eq!(
        (load(&worker, KEY_A), load(&worker, KEY_B)),
        (Some(0), Some(0))
    );
}

// ---- least request: counts owned by the VM that took them ----

thread_local! {
    static NOW_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(1_000_000) };
}

fn clocked_lr_vm(host: &FakeHost) -> Instance {
    let mut vm = Instance::new([7; 32]);
    vm.set_clock(|| NOW_MS.with(std::cell::Cell::get));
    vm.configure(1, LR.as_bytes(), "meshsplit", host).unwrap();
    vm
}

fn advance(ms: u64) {
    NOW_MS.with(|now| now.set(now.get() + ms));
}

fn owners(host: &FakeHost) -> Vec<u32> {
    let shared = host.shared.borrow();
    let (value, _) = shared.get(in_flight::OWNERS_KEY).unwrap();
    let mut owners: Vec<u32> = value
        .chunks_exact(12)
        .map(|e| u32::from_le_bytes(e[..4].try_into().unwrap()))
        .collect();
    owners.sort_unstable();
    owners
}

fn sorted(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort_unstable();
    ids
}

fn total_load(host: &FakeHost) -> u64 {
    load(host, KEY_A).unwrap() + load(host, KEY_B).unwrap()
}

fn total_gauge(host: &FakeHost) -> i64 {
    host.gauge("meshsplit.meshsplit.svc.a.in_flight")
        + host.gauge("meshsplit.meshsplit.svc.b.in_flight")
}

/// Ticks `vms` every 500 ms for `ms`.
fn run_ticks(vms: &mut [(&mut Instance, &FakeHost)], ms: u64) {
    for _ in 0..ms / 500 {
        advance(500);
        for (vm, host) in vms.iter_mut() {
            vm.tick(1, *host);
        }
    }
}

#[test]
fn each_vm_owns_its_counts_under_its_own_id_and_joins_the_owners_at_configure() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (vm1, vm2) = (clocked_lr_vm(&first), clocked_lr_vm(&second));
    let (a, b) = (vm1.owner().unwrap(), vm2.owner().unwrap());
    assert!(a != b && a != in_flight::PROCESS_OWNER && b != in_flight::PROCESS_OWNER);
    assert_eq!(owners(&first), sorted(vec![a, b]));
    // A VM without a least-request service takes no id and makes no beat.
    let mut plain = Instance::new([0; 32]);
    configure(&mut plain, 1, single("one").as_bytes()).unwrap();
    assert_eq!(plain.owner(), None);
}

#[test]
fn a_new_owner_id_is_never_one_in_the_list() {
    let host = FakeHost::default();
    in_flight::beat(&host, 7, 1_000);
    assert_eq!(in_flight::new_owner(&host, 7), 8);
    assert_eq!(in_flight::new_owner(&host, 0), 1);
    assert_eq!(in_flight::new_owner(&host, 9), 9);
}

#[test]
fn the_counts_of_a_vm_that_stopped_beating_are_dropped_after_the_stale_window() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut lost, mut live) = (clocked_lr_vm(&first), clocked_lr_vm(&second));
    // The lost VM holds three requests, the live one one; then the lost VM traps: its streams
    // are never deleted and it never ticks again.
    for context in 10..13 {
        lr_request(&mut lost, context, &svc_host(&first));
    }
    lr_request(&mut live, 20, &svc_host(&second));
    assert_eq!((total_load(&first), total_gauge(&first)), (4, 4));
    let lost_owner = lost.owner().unwrap();
    drop(lost);
    // Within the window the counts stay: a VM that is only slow keeps what it holds.
    run_ticks(&mut [(&mut live, &second)], in_flight::OWNER_STALE_MS);
    assert_eq!(total_load(&first), 4);
    // Then they go: the lost owner leaves the list, and once it is missing from two lists in a
    // row its counts go, off the gauge too. The live VM's count stays.
    run_ticks(&mut [(&mut live, &second)], 3_000);
    assert_eq!((total_load(&first), total_gauge(&first)), (1, 1));
    assert_eq!(owners(&first), [live.owner().unwrap()]);
    assert!(!owners(&first).contains(&lost_owner));
    // A replacement VM takes a new id; every count goes back to 0.
    let mut replacement = clocked_lr_vm(&first);
    lr_request(&mut replacement, 30, &svc_host(&first));
    live.context_deleted(20, &second);
    replacement.context_deleted(30, &first);
    assert_eq!((total_load(&first), total_gauge(&first)), (0, 0));
}

#[test]
fn a_vm_that_keeps_beating_keeps_a_long_request_counted() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut holder, mut other) = (clocked_lr_vm(&first), clocked_lr_vm(&second));
    let cluster = lr_request(&mut holder, 10, &svc_host(&first));
    run_ticks(&mut [(&mut holder, &first), (&mut other, &second)], 60_000);
    assert_eq!(total_load(&first), 1);
    // The other VM still sees the request: one apart, both upstreams stay candidates.
    let idle = if cluster == "c_a" { "c_b" } else { "c_a" };
    let to_idle = lr_share(&mut other, &second, 100, idle);
    assert!((170..=230).contains(&to_idle), "{to_idle} of 400");
    holder.context_deleted(10, &first);
    assert_eq!((total_load(&first), total_gauge(&first)), (0, 0));
}

#[test]
fn a_clock_jump_drops_no_live_counts() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut one, mut two) = (clocked_lr_vm(&first), clocked_lr_vm(&second));
    lr_request(&mut one, 10, &svc_host(&first));
    lr_request(&mut two, 20, &svc_host(&second));
    run_ticks(&mut [(&mut one, &first), (&mut two, &second)], 10_000);
    // Forward a minute: whoever beats first sees the other's beat a minute old.
    advance(60_000);
    run_ticks(&mut [(&mut one, &first), (&mut two, &second)], 10_000);
    assert_eq!(total_load(&first), 2);
    // Back two minutes: beats go on, nothing is dropped.
    NOW_MS.with(|now| now.set(now.get() - 120_000));
    run_ticks(&mut [(&mut one, &first), (&mut two, &second)], 10_000);
    assert_eq!(total_load(&first), 2);
    assert_eq!(owners(&first).len(), 2);
    let now = NOW_MS.with(std::cell::Cell::get);
    let beats: Vec<u64> = first.shared.borrow()[in_flight::OWNERS_KEY]
        .0
        .chunks_exact(12)
        .map(|e| u64::from_le_bytes(e[4..].try_into().unwrap()))
        .collect();
    assert!(
        beats.iter().all(|&t| now - t <= 1_500),
        "{beats:?} at {now}"
    );
}

#[test]
fn an_owner_missing_from_one_list_only_keeps_its_counts() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut one, mut two) = (clocked_lr_vm(&first), clocked_lr_vm(&second));
    run_ticks(&mut [(&mut one, &first), (&mut two, &second)], 6_000);
    lr_request(&mut two, 20, &svc_host(&second));
    // The list is lost once (two VMs creating it at the same moment overwrite each other).
    first.set_shared_data(in_flight::OWNERS_KEY, &[], 0);
    run_ticks(&mut [(&mut one, &first), (&mut two, &second)], 3_000);
    assert_eq!(total_load(&first), 1);
}

#[test]
fn a_dropped_count_is_not_taken_back_twice() {
    // A VM stalled past the window loses its counts to another VM's beat; its stream ending
    // later takes back nothing, so no other VM's count goes down.
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut stalled, mut other) = (clocked_lr_vm(&first), clocked_lr_vm(&second));
    lr_request(&mut stalled, 10, &svc_host(&first));
    lr_request(&mut other, 20, &svc_host(&second));
    lr_request(&mut other, 21, &svc_host(&second));
    run_ticks(
        &mut [(&mut other, &second)],
        in_flight::OWNER_STALE_MS + 3_000,
    );
    assert_eq!((total_load(&first), total_gauge(&first)), (2, 2));
    stalled.context_deleted(10, &first);
    assert_eq!((total_load(&first), total_gauge(&first)), (2, 2));
    // It beats again on its next tick and counts as before.
    stalled.tick(1, &first);
    assert_eq!(owners(&first).len(), 2);
}

#[test]
fn a_beat_is_one_owners_update_then_one_read_per_count_at_most_once_a_second() {
    let worker = FakeHost::default();
    let mut vm = clocked_lr_vm(&worker);
    let host = FakeHost {
        shared: Rc::clone(&worker.shared),
        ..FakeHost::default()
    };
    // No pruning in a VM's first stale window: only the beat.
    advance(1_000);
    vm.tick(1, &host);
    assert_eq!(
        *host.calls.borrow(),
        [
            "shared get meshsplit/load/owners",
            "shared set meshsplit/load/owners"
        ]
    );
    run_ticks(&mut [(&mut vm, &worker)], in_flight::OWNER_STALE_MS);
    host.calls.borrow_mut().clear();
    advance(500);
    vm.tick(1, &host);
    assert!(host.calls.borrow().is_empty(), "{:?}", host.calls.borrow());
    advance(500);
    vm.tick(1, &host);
    let calls = host.calls.borrow();
    assert_eq!(
        calls[..2],
        [
            "shared get meshsplit/load/owners",
            "shared set meshsplit/load/owners"
        ]
    );
    let mut reads = calls[2..].to_vec();
    reads.sort();
    assert_eq!(
        reads,
        [format!("shared get {KEY_A}"), format!("shared get {KEY_B}")]
    );
}

#[test]
fn weighted_streams_leave_no_lease_and_cost_no_extra_calls() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.stream_created(10, 1);
    vm.request_headers(10, &host);
    let before = host.call_count();
    vm.context_deleted(10, &host);
    assert_eq!(host.call_count(), before);
}

// ---- counters: counted in VM memory, flushed on the housekeeping tick ----

const COUNTED: &str = r#"{"on_unknown_service": "reject", "services": [
  {"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 1},
    {"name": "v2", "cluster": "c2", "weight": 0}],
   "rules": [{"match": {"headers": [{"name": "x-beta", "present": true}]}, "upstream": "v2"}]}]}"#;

fn send_counted(vm: &mut Instance, context: u32, headers: &[(&str, &str)]) -> FakeHost {
    vm.stream_created(context, 1);
    let host = FakeHost::with_headers(headers);
    vm.request_headers(context, &host);
    host
}

#[test]
fn requests_make_no_metric_calls_and_the_tick_flushes_exact_counts() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, COUNTED.as_bytes()).unwrap();
    for i in 0..5 {
        let host = send_counted(&mut vm, 10 + i, &[(":authority", "svc")]);
        assert_eq!(
            *host.calls.borrow(),
            [
                "get :authority",
                "get all x-beta",
                "set x-meshsplit-cluster"
            ]
        );
    }
    for i in 0..2 {
        send_counted(&mut vm, 20 + i, &[(":authority", "svc"), ("x-beta", "1")]);
    }
    for i in 0..3 {
        send_counted(&mut vm, 30 + i, &[(":authority", "nope")]);
    }
    let host = FakeHost::default();
    vm.tick(1, &host);
    assert_eq!(
        *host.calls.borrow(),
        [
            "define counter meshsplit.meshsplit.svc.v1.requests_total",
            "counter 0 +5",
            "define counter meshsplit.meshsplit.svc.v2.requests_total",
            "counter 1 +2",
            "define counter meshsplit.meshsplit.svc.rules.0.hits_total",
            "counter 2 +2",
            "define counter meshsplit.meshsplit.unknown_service_total",
            "counter 3 +3",
            "define counter meshsplit.meshsplit.rejected_total",
            "counter 4 +3",
        ]
    );
    // Nothing new: the next tick makes no host call; then only what changed, without defining.
    host.calls.borrow_mut().clear();
    vm.tick(1, &host);
    assert!(host.calls.borrow().is_empty());
    send_counted(&mut vm, 40, &[(":authority", "svc")]);
    vm.tick(1, &host);
    assert_eq!(*host.calls.borrow(), ["counter 0 +1"]);
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 6);
}

#[test]
fn a_deleted_or_reconfigured_root_flushes_what_it_counted() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, COUNTED.as_bytes()).unwrap();
    send_counted(&mut vm, 10, &[(":authority", "svc")]);
    let host = FakeHost::default();
    vm.configure(1, COUNTED.as_bytes(), "meshsplit", &host)
        .unwrap();
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 1);
    send_counted(&mut vm, 11, &[(":authority", "svc")]);
    vm.context_deleted(1, &host);
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 2);
}

#[test]
fn a_tick_of_another_root_flushes_only_that_root() {
    let mut vm = Instance::new([0; 32]);
    configure(&mut vm, 1, COUNTED.as_bytes()).unwrap();
    configure(&mut vm, 2, COUNTED.as_bytes()).unwrap();
    send_counted(&mut vm, 10, &[(":authority", "svc")]);
    let host = FakeHost::default();
    vm.tick(2, &host);
    vm.tick(99, &host);
    assert!(host.calls.borrow().is_empty());
    vm.tick(1, &host);
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 1);
}

// ---- the guard's gauges and metric definitions across live updates ----

const GUARDED: &str = r#"{"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 50},
    {"name": "v2", "cluster": "c2", "weight": 50}],
    "guard": {"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 60}}]}"#;
const UNGUARDED: &str = r#"{"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 50},
    {"name": "v2", "cluster": "c2", "weight": 50}]}]}"#;

/// Streams of `root` until `n` of them went to v2, every v2 answer a 503.
fn fail_v2(vm: &mut Instance, root: u32, n: usize, worker: &FakeHost, next_context: &mut u32) {
    let mut failed = 0;
    for _ in 0..10_000 {
        if failed == n {
            return;
        }
        *next_context += 1;
        let context = *next_context;
        vm.stream_created(context, root);
        let host = svc_host(worker);
        vm.request_headers(context, &host);
        let to_v2 = host.header("x-meshsplit-cluster").as_deref() == Some("c2");
        host.response
            .set((Some(if to_v2 { 503 } else { 200 }), None));
        vm.context_deleted(context, &host);
        failed += usize::from(to_v2);
    }
    panic!("only {failed} of {n} requests went to v2");
}

#[test]
fn an_update_that_drops_the_guard_puts_its_gauges_back_to_zero() {
    let worker = FakeHost::default();
    let mut vm = Instance::new([3; 32]);
    let mut context = 100;
    vm.configure(1, GUARDED.as_bytes(), "meshsplit", &worker)
        .unwrap();
    fail_v2(&mut vm, 1, 20, &worker, &mut context);
    vm.tick(1, &worker);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v2.ejected"), 1);
    // The update (a new root; the old one lives on while its streams last) has no guard.
    vm.configure(2, UNGUARDED.as_bytes(), "meshsplit", &worker)
        .unwrap();
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v2.ejected"), 0);
    // The old root's tick no longer sets it.
    vm.tick(1, &worker);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v2.ejected"), 0);
}

#[test]
fn every_metric_is_defined_once_per_vm_however_many_updates() {
    let worker = FakeHost::default();
    let mut vm = Instance::new([4; 32]);
    let mut context = 100;
    let least = LR.replace("\"svc\"", "\"lr\"");
    for root in 1..=10u32 {
        let config = if root % 2 == 0 {
            GUARDED
        } else {
            least.as_str()
        };
        vm.configure(root, config.as_bytes(), "meshsplit", &worker)
            .unwrap();
        if root == 2 {
            fail_v2(&mut vm, root, 20, &worker, &mut context);
        }
        vm.tick(root, &worker);
        // A refused update is counted once per VM's definition too.
        vm.count("meshsplit.meshsplit.config_failures_total", 1, &worker);
    }
    let defines = worker.defines.borrow();
    assert!(!defines.is_empty());
    for (name, times) in defines.iter() {
        assert_eq!(*times, 1, "{name} defined {times} times: {defines:?}");
    }
    assert!(defines.contains_key("meshsplit.meshsplit.svc.v2.ejected"));
    assert!(defines.contains_key("meshsplit.meshsplit.lr.a.in_flight"));
}

// ---- the guard reads every outcome up to a budget per tick, then a sample ----

#[test]
fn past_the_budget_a_guarded_stream_ends_without_an_outcome_read_unless_sampled() {
    let config = r#"{"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "c1", "weight": 100},
        {"name": "v2", "cluster": "c2", "weight": 0}],
        "guard": {"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 60}}]}"#;
    let worker = FakeHost::default();
    let mut vm = Instance::new([5; 32]);
    vm.configure(1, config.as_bytes(), "meshsplit", &worker)
        .unwrap();
    let streams = 16 * 100;
    let mut reads = Vec::new();
    for context in 100..100 + streams {
        vm.stream_created(context, 1);
        let host = svc_host(&worker);
        host.response.set((Some(200), None));
        vm.request_headers(context, &host);
        let before = host.call_count();
        vm.context_deleted(context, &host);
        let calls = host.calls.borrow()[before..].to_vec();
        // A stream's end makes one read or none, never anything else.
        assert!(calls.is_empty() || calls == ["response code"], "{calls:?}");
        reads.push(!calls.is_empty());
    }
    let budget = usize::try_from(tick::OBSERVED_PER_TICK).unwrap();
    assert!(
        reads[..budget].iter().all(|&r| r),
        "every stream within the budget is read"
    );
    let sampled = reads[budget..].iter().filter(|&&r| r).count();
    let expected = (reads.len() - budget) / 16;
    assert!(
        sampled > expected / 2 && sampled < expected * 2,
        "{sampled} sampled of {}",
        reads.len() - budget
    );
    // Each sampled read counts for 16 streams in the guard's window.
    vm.tick(1, &worker);
    let shared = worker.shared.borrow();
    let (bytes, _) = shared
        .iter()
        .find(|(key, _)| key.contains("guard"))
        .map(|(_, v)| v)
        .expect("the guard's record");
    let record = crate::guard_record::Record::decode(bytes);
    let requests: u64 = record.upstreams[0]
        .buckets
        .iter()
        .map(|b| b.counts.requests)
        .sum();
    assert_eq!(requests, u64::try_from(budget + 16 * sampled).unwrap());
}

// ---- the weight gauges: set at configure and on the tick, never by a request ----

const THREE: &str = r#"{"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 60},
    {"name": "v2", "cluster": "c2", "weight": 30},
    {"name": "v3", "cluster": "c3", "weight": 10}]}]}"#;

fn weight(host: &FakeHost, upstream: &str) -> i64 {
    host.gauge(&format!("meshsplit.meshsplit.svc.{upstream}.weight"))
}

/// The weight gauges of v1, v2 and v3.
fn three_weights(host: &FakeHost) -> [i64; 3] {
    [weight(host, "v1"), weight(host, "v2"), weight(host, "v3")]
}

#[test]
fn weight_gauges_are_set_at_configure_and_requests_and_ticks_never_touch_them() {
    let worker = FakeHost::default();
    let mut vm = Instance::new([5; 32]);
    vm.configure(1, THREE.as_bytes(), "meshsplit", &worker)
        .unwrap();
    assert_eq!(three_weights(&worker), [60, 30, 10]);
    worker.calls.borrow_mut().clear();
    for context in 10..60 {
        vm.stream_created(context, 1);
        let host = svc_host(&worker);
        vm.request_headers(context, &host);
        vm.context_deleted(context, &host);
        assert!(
            host.calls.borrow().iter().all(|c| !c.starts_with("gauge")),
            "{:?}",
            host.calls.borrow()
        );
    }
    vm.tick(1, &worker);
    vm.tick(1, &worker);
    assert!(
        worker
            .calls
            .borrow()
            .iter()
            .all(|c| !c.starts_with("gauge")),
        "{:?}",
        worker.calls.borrow()
    );
}

#[test]
fn an_update_that_removes_an_upstream_puts_its_weight_gauge_back_to_zero() {
    let worker = FakeHost::default();
    let mut vm = Instance::new([6; 32]);
    vm.configure(1, THREE.as_bytes(), "meshsplit", &worker)
        .unwrap();
    // A live update (a new root; the old one lives on while its streams last) without v3.
    vm.configure(2, UNGUARDED.as_bytes(), "meshsplit", &worker)
        .unwrap();
    assert_eq!(three_weights(&worker), [50, 50, 0]);
    // The old root's ticks set nothing back.
    vm.tick(1, &worker);
    vm.tick(2, &worker);
    assert_eq!(three_weights(&worker), [50, 50, 0]);
}

#[test]
fn an_ejection_sets_the_weight_gauge_to_zero_on_the_tick() {
    let worker = FakeHost::default();
    let mut vm = Instance::new([7; 32]);
    let mut context = 100;
    vm.configure(1, GUARDED.as_bytes(), "meshsplit", &worker)
        .unwrap();
    assert_eq!([weight(&worker, "v1"), weight(&worker, "v2")], [50, 50]);
    fail_v2(&mut vm, 1, 20, &worker, &mut context);
    // Streams do not move it; the tick does.
    assert_eq!(weight(&worker, "v2"), 50);
    vm.tick(1, &worker);
    assert_eq!([weight(&worker, "v1"), weight(&worker, "v2")], [50, 0]);
}

// ---- the latency guard: a clock read when a timed stream starts and one when it ends ----

thread_local! {
    /// The monotonic clock of the latency tests, and how often it was read.
    static MONO_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(5_000_000) };
    static MONO_READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static WALL_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(1_800_000_000_000) };
}

fn mono_clock() -> u64 {
    MONO_READS.with(|n| n.set(n.get() + 1));
    MONO_MS.with(std::cell::Cell::get)
}

fn mono_reads() -> u32 {
    MONO_READS.with(std::cell::Cell::get)
}

/// Moves the monotonic clock by `mono` and the wall clock by `wall` milliseconds.
fn step_clocks(mono: i64, wall: i64) {
    MONO_MS.with(|c| c.set(c.get().saturating_add_signed(mono)));
    WALL_MS.with(|c| c.set(c.get().saturating_add_signed(wall)));
}

const LATENCY_GUARDED: &str = r#"{"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 50},
    {"name": "v2", "cluster": "c2", "weight": 50}],
    "guard": {"min_requests": 10, "window_s": 5, "eject_s": 60,
              "latency": {"percentile": 90, "threshold_ms": 250}}}]}"#;

fn timed_vm(config: &str, worker: &FakeHost) -> Instance {
    let mut vm = Instance::new([9; 32]);
    vm.set_monotonic_clock(mono_clock);
    vm.set_clock(|| WALL_MS.with(std::cell::Cell::get));
    vm.configure(1, config.as_bytes(), "meshsplit", worker)
        .unwrap();
    vm
}

/// One stream of root 1: its request headers, then (v2's taking `v2_ms`, v1's 1 ms, with the
/// wall clock stepped by `wall_step_ms` meanwhile) its end with a 200. Returns the cluster it
/// went to and the host calls and clock reads its end made.
fn timed_stream(
    vm: &mut Instance,
    worker: &FakeHost,
    context: u32,
    v2_ms: i64,
    wall_step_ms: i64,
) -> (String, Vec<String>, u32) {
    vm.stream_created(context, 1);
    let host = svc_host(worker);
    host.response.set((Some(200), None));
    vm.request_headers(context, &host);
    let cluster = host.header("x-meshsplit-cluster").unwrap_or_default();
    step_clocks(if cluster == "c2" { v2_ms } else { 1 }, wall_step_ms);
    let (before, reads) = (host.call_count(), mono_reads());
    vm.context_deleted(context, &host);
    let calls = host.calls.borrow()[before..].to_vec();
    (cluster, calls, mono_reads() - reads)
}

#[test]
fn a_timed_stream_reads_the_clock_once_at_each_end_and_nothing_else() {
    let worker = FakeHost::default();
    let mut vm = timed_vm(LATENCY_GUARDED, &worker);
    let reads = mono_reads();
    vm.stream_created(100, 1);
    let host = svc_host(&worker);
    vm.request_headers(100, &host);
    // Routing makes the calls it always makes; the start is one clock read.
    assert_eq!(mono_reads() - reads, 1);
    assert!(host.calls.borrow().iter().all(|c| !c.contains("response")));
    host.response.set((Some(200), None));
    let before = host.call_count();
    let reads = mono_reads();
    vm.context_deleted(100, &host);
    assert_eq!(host.calls.borrow()[before..], ["response code"]);
    assert_eq!(mono_reads() - reads, 1);
}

/// GUARDED without counting abandoned requests: nothing to time.
const GUARDED_UNTIMED: &str = r#"{"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 50},
    {"name": "v2", "cluster": "c2", "weight": 50}],
    "guard": {"error_rate": 0.5, "min_requests": 10, "window_s": 5, "eject_s": 60,
              "abandoned_after_ms": 0}}]}"#;

#[test]
fn streams_with_nothing_to_time_read_no_clock() {
    let worker = FakeHost::default();
    for config in [GUARDED_UNTIMED, UNGUARDED] {
        let mut vm = timed_vm(config, &worker);
        for context in 100..140 {
            let (_, _, end_reads) = timed_stream(&mut vm, &worker, context, 400, 0);
            assert_eq!(end_reads, 0, "{config}");
        }
        let reads = mono_reads();
        vm.stream_created(200, 1);
        vm.request_headers(200, &svc_host(&worker));
        assert_eq!(mono_reads(), reads, "{config}");
    }
}

#[test]
fn past_the_budget_only_sampled_streams_are_timed() {
    let worker = FakeHost::default();
    let mut vm = timed_vm(LATENCY_GUARDED, &worker);
    let mut timed = 0;
    let mut read = 0;
    for context in 100..100 + 16 * 100 {
        let (_, calls, reads) = timed_stream(&mut vm, &worker, context, 1, 0);
        // A stream's end reads the clock exactly when it reads the outcome.
        assert_eq!(u32::from(!calls.is_empty()), reads, "{calls:?}");
        timed += reads;
        read += u32::from(!calls.is_empty());
    }
    assert_eq!(timed, read);
    assert!(timed < 16 * 100 / 4, "{timed} of 1600 streams timed");
}

/// The guard record's window totals of `upstream` (requests, slow).
fn recorded(worker: &FakeHost, upstream: usize) -> (u64, u64) {
    let (bytes, _) = worker
        .shared
        .borrow()
        .iter()
        .find(|(key, _)| key.contains("guard"))
        .map(|(_, v)| v.clone())
        .expect("the guard's record");
    let record = crate::guard_record::Record::decode(&bytes);
    let buckets = &record.upstreams[upstream].buckets;
    (
        buckets.iter().map(|b| b.counts.requests).sum(),
        buckets.iter().map(|b| b.counts.slow).sum(),
    )
}

#[test]
fn a_slow_upstream_is_ejected_on_the_tick_and_a_wall_clock_step_changes_no_duration() {
    // Whichever way the wall clock steps while streams are in flight, v2's 400 ms are slow
    // and v1's 1 ms are not: durations follow the monotonic clock alone.
    for wall_step_ms in [-3_600_000i64, 3_600_000] {
        let worker = FakeHost::default();
        let mut vm = timed_vm(LATENCY_GUARDED, &worker);
        let mut to_v2 = 0;
        let mut context = 100;
        while to_v2 < 10 {
            context += 1;
            let (cluster, _, _) = timed_stream(&mut vm, &worker, context, 400, wall_step_ms);
            to_v2 += u32::from(cluster == "c2");
        }
        vm.tick(1, &worker);
        let (v2_requests, v2_slow) = recorded(&worker, 1);
        assert_eq!((v2_requests, v2_slow), (10, 10), "step {wall_step_ms}");
        let (_, v1_slow) = recorded(&worker, 0);
        assert_eq!(v1_slow, 0, "step {wall_step_ms}");
        assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v2.ejected"), 1);
        assert_eq!(
            worker.counter("meshsplit.meshsplit.svc.v2.ejections_total"),
            1
        );
        assert_eq!(weight(&worker, "v2"), 0);
    }
}

#[test]
fn a_monotonic_reading_that_goes_back_counts_as_no_time() {
    let worker = FakeHost::default();
    let mut vm = timed_vm(LATENCY_GUARDED, &worker);
    let mut context = 100;
    let mut to_v2 = 0;
    while to_v2 < 10 {
        context += 1;
        // v2's streams end "before" they started: 0 ms, not slow, and no overflow.
        let (cluster, _, _) = timed_stream(&mut vm, &worker, context, -1000, 0);
        to_v2 += u32::from(cluster == "c2");
    }
    vm.tick(1, &worker);
    assert_eq!(recorded(&worker, 1), (10, 0));
    assert_eq!(weight(&worker, "v2"), 50);
}

/// Streams of root 1 until `n` went to v2, each answered HTTP 200; v2's `grpc-status` 14
/// (UNAVAILABLE) in the trailers or, when `trailers_only`, in the response headers; v1's 0.
fn grpc_v2_unavailable(vm: &mut Instance, worker: &FakeHost, n: usize, trailers_only: bool) {
    let mut failed = 0;
    for context in 100..10_000 {
        if failed == n {
            return;
        }
        vm.stream_created(context, 1);
        let host = svc_host(worker);
        vm.request_headers(context, &host);
        let to_v2 = host.header("x-meshsplit-cluster").as_deref() == Some("c2");
        let status = if to_v2 { "14" } else { "0" };
        let map = if trailers_only {
            &host.response_headers
        } else {
            &host.response_trailers
        };
        map.borrow_mut()
            .push(("grpc-status".to_owned(), status.as_bytes().to_vec()));
        vm.response_headers(context, &host);
        if !trailers_only {
            vm.response_trailers(context, &host);
        }
        host.response.set((Some(200), None));
        vm.context_deleted(context, &host);
        failed += usize::from(to_v2);
    }
    panic!("only {failed} of {n} requests went to v2");
}

#[test]
fn a_grpc_upstream_answering_unavailable_is_ejected_from_trailers_or_trailers_only_headers() {
    for trailers_only in [false, true] {
        let worker = FakeHost::default();
        let mut vm = Instance::new([5; 32]);
        vm.configure(1, GUARDED.as_bytes(), "meshsplit", &worker)
            .unwrap();
        grpc_v2_unavailable(&mut vm, &worker, 20, trailers_only);
        vm.tick(1, &worker);
        assert_eq!(
            worker.gauge("meshsplit.meshsplit.svc.v2.ejected"),
            1,
            "trailers only: {trailers_only}"
        );
        assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v1.ejected"), 0);
    }
}

#[test]
fn a_module_that_sees_no_responses_judges_grpc_calls_by_their_http_status() {
    // Without the response callbacks (the lean module) the grpc-status is never read: HTTP 200s.
    let worker = FakeHost::default();
    let mut vm = Instance::new([5; 32]);
    vm.configure(1, GUARDED.as_bytes(), "meshsplit", &worker)
        .unwrap();
    for context in 100..200 {
        vm.stream_created(context, 1);
        let host = svc_host(&worker);
        vm.request_headers(context, &host);
        host.response.set((Some(200), None));
        vm.context_deleted(context, &host);
    }
    vm.tick(1, &worker);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v2.ejected"), 0);
}

#[test]
fn a_timed_stream_ends_at_its_first_byte_when_the_host_shows_the_response() {
    // A stream whose headers come at once and whose body streams for 10 s is not slow.
    let worker = FakeHost::default();
    let mut vm = timed_vm(LATENCY_GUARDED, &worker);
    for context in 100..140 {
        vm.stream_created(context, 1);
        let host = svc_host(&worker);
        vm.request_headers(context, &host);
        step_clocks(5, 0);
        vm.response_headers(context, &host);
        step_clocks(10_000, 0);
        host.response.set((Some(200), None));
        vm.context_deleted(context, &host);
    }
    vm.tick(1, &worker);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v1.ejected"), 0);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.v2.ejected"), 0);
}
