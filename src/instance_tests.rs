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
const KEY_A: &str = "meshsplit/in_flight/9:meshsplit/3:svc/1:a";
const KEY_B: &str = "meshsplit/in_flight/9:meshsplit/3:svc/1:b";

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
    assert_eq!(host.shared_u64(KEY_A), Some(0));
    assert_eq!(host.gauge("meshsplit.meshsplit.svc.a.in_flight"), 0);
}

#[test]
fn least_request_picks_the_idle_upstream_and_counts_until_the_stream_ends() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    let first = lr_request(&mut vm, 10, &svc_host(&worker));
    let second = lr_request(&mut vm, 11, &svc_host(&worker));
    assert_ne!(
        first, second,
        "the second request goes to the idle upstream"
    );
    assert_eq!(
        (worker.shared_u64(KEY_A), worker.shared_u64(KEY_B)),
        (Some(1), Some(1))
    );
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.a.in_flight"), 1);
    vm.context_deleted(10, &worker);
    vm.context_deleted(11, &worker);
    vm.context_deleted(11, &worker); // a second delete of the same stream changes nothing
    assert_eq!(
        (worker.shared_u64(KEY_A), worker.shared_u64(KEY_B)),
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
    // Worker 1 holds a request on whichever it picked; worker 2 must pick the other one.
    let busy = lr_request(&mut vm1, 10, &svc_host(&first));
    let other = lr_request(&mut vm2, 20, &svc_host(&second));
    assert_ne!(busy, other);
    vm1.context_deleted(10, &first);
    vm2.context_deleted(20, &second);
    assert_eq!(
        (first.shared_u64(KEY_A), first.shared_u64(KEY_B)),
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
    let total = worker.shared_u64(KEY_A).unwrap() + worker.shared_u64(KEY_B).unwrap();
    assert_eq!(total, 1);
}

#[test]
fn least_request_counts_never_go_negative() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    lr_request(&mut vm, 10, &svc_host(&worker));
    // Someone reset the counters (e.g. an operator restarting another worker's view).
    worker.set_shared_data(KEY_A, &0u64.to_le_bytes(), 0);
    worker.set_shared_data(KEY_B, &0u64.to_le_bytes(), 0);
    vm.context_deleted(10, &worker);
    assert_eq!(
        (worker.shared_u64(KEY_A), worker.shared_u64(KEY_B)),
        (Some(0), Some(0))
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
            ["get :authority", "get x-beta", "set x-meshsplit-cluster"]
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
