//! Fuzz target of the native build's hooks (see `fuzz.rs`), driven without Envoy: this file
//! defines Envoy's side of the ABI (every callback `imports.rs` declares, over one fake per thread)
//! and calls the exported hooks with buffers over arbitrary bytes, as Envoy would. It is a child
//! of `exports` because it calls the hooks and builds the ABI's buffers (`imports`). A new callback in `imports.rs` needs a fake here, or
//! the test binary does not link.

use std::cell::RefCell;
use std::ffi::c_void;

use proptest::prop_assert;

use super::*;
use crate::fuzz::{self, Corpus, TestCaseError};
use crate::fuzz_tests::{
    expected_key, parse_head, PLAN_HEADER, PLAN_HOST, PLAN_QUERY, REQUEST_SEEDS,
};
use crate::plan::{OnUnknownService, Plan};

/// Header names and values.
type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// What Envoy holds and what the module did to it, for the hooks running on this thread.
#[derive(Default)]
struct Envoy {
    headers: Headers,
    route_cache_cleared: bool,
    /// Status, headers and body of a local reply.
    response: Option<(u32, Headers, Vec<u8>)>,
    /// Metric names by id; gauge values by id.
    metrics: Vec<String>,
    gauges: Vec<i64>,
    response_code: Option<u64>,
    cluster: Option<Vec<u8>>,
    not_found_code: Option<u32>,
    /// What `get_random_value` answers (0: Envoy gave none; every selection is then new).
    random_value: u64,
    logs: Vec<String>,
    /// Broken promises of the ABI (a null key, a wrong header type).
    violations: Vec<String>,
}

thread_local! {
    static ENVOY: RefCell<Envoy> = RefCell::new(Envoy::default());
}

fn with_envoy<T>(f: impl FnOnce(&mut Envoy) -> T) -> T {
    ENVOY.with(|envoy| f(&mut envoy.borrow_mut()))
}

/// The bytes of a module buffer (`None`: a null pointer).
fn module_bytes(buffer: ModuleBuffer) -> Option<Vec<u8>> {
    if buffer.ptr.is_null() {
        return None;
    }
    // SAFETY: the module passes buffers over live bytes for the duration of the call.
    Some(unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }.to_vec())
}

fn key_of(buffer: ModuleBuffer, envoy: &mut Envoy) -> Vec<u8> {
    module_bytes(buffer).unwrap_or_else(|| {
        envoy.violations.push("a null header key".to_owned());
        Vec::new()
    })
}

fn define(name: ModuleBuffer, id: *mut usize) -> u32 {
    with_envoy(|envoy| {
        let name = String::from_utf8_lossy(&module_bytes(name).unwrap_or_default()).into_owned();
        envoy.metrics.push(name);
        envoy.gauges.push(0);
        // SAFETY: the module passes a local out-parameter.
        unsafe { *id = envoy.metrics.len() - 1 };
    });
    METRICS_SUCCESS
}

fn gauge(id: usize, f: impl FnOnce(&mut i64)) -> u32 {
    with_envoy(|envoy| match envoy.gauges.get_mut(id) {
        Some(value) => {
            f(value);
            METRICS_SUCCESS
        }
        None => {
            envoy
                .violations
                .push(format!("gauge {id} was never defined"));
            1
        }
    })
}

/// A header value as Envoy hands it out: a pointer into its own header map.
fn header_value(
    name: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    count: *mut usize,
) -> bool {
    with_envoy(|envoy| {
        let key = key_of(name, envoy);
        let found: Vec<&Vec<u8>> = envoy
            .headers
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect();
        if !count.is_null() {
            // SAFETY: a non-null count is the module's out-parameter.
            unsafe { *count = found.len() };
        }
        let value = found.get(index);
        let buffer = match value {
            Some(v) => EnvoyBuffer {
                ptr: v.as_ptr(),
                length: v.len(),
            },
            None => EnvoyBuffer {
                ptr: std::ptr::null(),
                length: 0,
            },
        };
        // SAFETY: the module passes a local out-parameter.
        unsafe { *result = buffer };
        value.is_some()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log(_level: u32, message: ModuleBuffer) {
    let line = String::from_utf8_lossy(&module_bytes(message).unwrap_or_default()).into_owned();
    with_envoy(|envoy| envoy.logs.push(line));
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: u32) -> bool {
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _filter: *mut c_void,
    header_type: u32,
    key: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    optional_size: *mut usize,
) -> bool {
    if header_type != REQUEST_HEADER {
        with_envoy(|e| e.violations.push(format!("read header type {header_type}")));
    }
    header_value(key, result, index, optional_size)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_header(
    _filter: *mut c_void,
    header_type: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    with_envoy(|envoy| {
        if header_type != REQUEST_HEADER {
            envoy
                .violations
                .push(format!("wrote header type {header_type}"));
        }
        let key = key_of(key, envoy);
        envoy.headers.retain(|(k, _)| *k != key);
        if let Some(value) = module_bytes(value) {
            envoy.headers.push((key, value));
        }
        true
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(_filter: *mut c_void) {
    with_envoy(|envoy| envoy.route_cache_cleared = true);
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _filter: *mut c_void,
    status_code: u32,
    headers: *const ModuleHttpHeader,
    headers_size: usize,
    body: ModuleBuffer,
    _details: ModuleBuffer,
) {
    let headers: Headers = (0..headers_size)
        .map(|i| {
            // SAFETY: the module passes an array of `headers_size` headers over live bytes.
            let header = unsafe { &*headers.add(i) };
            let bytes = |ptr: *const u8, len: usize| {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
            };
            (
                bytes(header.key_ptr, header.key_length),
                bytes(header.value_ptr, header.value_length),
            )
        })
        .collect();
    let body = module_bytes(body).unwrap_or_default();
    with_envoy(|envoy| envoy.response = Some((status_code, headers, body)));
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _config: *mut c_void,
    name: ModuleBuffer,
    _label_names: *const ModuleBuffer,
    _label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(name, id)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    _config: *mut c_void,
    name: ModuleBuffer,
    _label_names: *const ModuleBuffer,
    _label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(name, id)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
    _config: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |g| *g = i64::try_from(value).unwrap_or(i64::MAX))
}

/// The fake's config schedulers: a non-null token (never dereferenced); commits are counted.
static SCHEDULER_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
    _config: *mut c_void,
) -> *mut c_void {
    std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
    _scheduler: *mut c_void,
    _event_id: u64,
) {
    SCHEDULER_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
    _scheduler: *mut c_void,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_config_define_gauge(
    _config: *mut c_void,
    name: ModuleBuffer,
    _label_names: *const ModuleBuffer,
    _label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(name, id)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_config_set_gauge(
    _config: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |g| *g = i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    _filter: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |count| {
        *count += i64::try_from(value).unwrap_or(i64::MAX)
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_gauge(
    _filter: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |g| *g += i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
    _filter: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |g| *g -= i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
    _filter: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |g| *g = i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
    _filter: *mut c_void,
    attribute_id: u32,
    result: *mut u64,
) -> bool {
    let value = with_envoy(|envoy| match attribute_id {
        ATTRIBUTE_RESPONSE_CODE => envoy.response_code,
        ATTRIBUTE_RESPONSE_FLAGS => envoy.response_code.is_none().then_some(0x20),
        other => {
            envoy.violations.push(format!("read attribute {other}"));
            None
        }
    });
    if let Some(value) = value {
        // SAFETY: the module passes a local out-parameter.
        unsafe { *result = value };
    }
    value.is_some()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_get_request_header_value(
    _context: *mut c_void,
    key: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    total_count: *mut usize,
) -> bool {
    header_value(key, result, index, total_count)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_get_random_value(
    _context: *mut c_void,
) -> u64 {
    with_envoy(|envoy| envoy.random_value)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
    _context: *mut c_void,
    cluster_name: ModuleBuffer,
) {
    let name = module_bytes(cluster_name);
    with_envoy(|envoy| envoy.cluster = name);
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_not_found_response_code(
    _context: *mut c_void,
    status_code: u32,
) -> bool {
    with_envoy(|envoy| envoy.not_found_code = Some(status_code));
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_config_define_counter(
    _config: *mut c_void,
    name: ModuleBuffer,
    _label_names: *const ModuleBuffer,
    _label_names_length: usize,
    id: *mut usize,
) -> u32 {
    define(name, id)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_cluster_specifier_config_increment_counter(
    _config: *mut c_void,
    id: usize,
    _label_values: *const ModuleBuffer,
    _label_values_length: usize,
    value: u64,
) -> u32 {
    gauge(id, |count| {
        *count += i64::try_from(value).unwrap_or(i64::MAX)
    })
}

// ---- the target ---------------------------------------------------------------------------------

/// Separates the filter name, the config and the request head in an input.
const SEPARATOR: u8 = 0x1e;

/// An opaque, never dereferenced pointer standing for one of Envoy's objects.
fn envoy_object() -> *mut c_void {
    std::ptr::NonNull::<c_void>::dangling().as_ptr()
}

fn buffer(bytes: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

fn null_buffer(length: usize) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: std::ptr::null(),
        length,
    }
}

/// The clusters the plan allows for a request (empty: an unknown service).
fn clusters_for(plan: &Plan, head: &[(String, Vec<u8>)]) -> Option<Vec<Vec<u8>>> {
    let mut key = expected_key(plan, head)?;
    let (_, service) = plan.find(&mut key)?;
    Some(
        service
            .upstreams
            .iter()
            .map(|u| u.cluster.as_bytes().to_vec())
            .collect(),
    )
}

fn no_panic_nor_violation() -> Result<(), TestCaseError> {
    let (logs, violations) = with_envoy(|e| (e.logs.clone(), e.violations.clone()));
    prop_assert!(violations.is_empty(), "ABI violations: {violations:?}");
    let panics: Vec<&String> = logs.iter().filter(|l| l.contains("panicked")).collect();
    prop_assert!(panics.is_empty(), "{panics:?}");
    Ok(())
}

/// `name ␞ config ␞ request head` through the exported hooks of both modes: buffers come back
/// as the bytes they describe; a config is accepted exactly when the core accepts it; a stream
/// never panics, writes only a cluster of its service (or answers 404), clears the route cache
/// when it writes, and gives its in-flight count back.
pub(crate) fn check_hooks(input: &[u8]) -> Result<(), TestCaseError> {
    let mut parts = input.splitn(3, |&b| b == SEPARATOR);
    let name = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let head_bytes = parts.next().unwrap_or_default();
    let head = parse_head(head_bytes);

    // The buffers Envoy passes, read back.
    for part in [name, config, head_bytes] {
        // SAFETY: the buffer describes `part`, alive for the call.
        let read = unsafe { envoy_bytes(buffer(part)) };
        prop_assert!(read == part);
        prop_assert!(copied(buffer(part)).as_deref() == Some(part));
    }
    // SAFETY: a null pointer is read as no bytes, whatever the length says.
    let read = unsafe { envoy_bytes(null_buffer(input.len())) };
    prop_assert!(read.is_empty());
    prop_assert!(copied(null_buffer(input.len())).is_none());
    let plugin = filter::plugin_name(name);
    match std::str::from_utf8(name) {
        Ok(text) if !text.is_empty() => prop_assert!(plugin == text),
        _ => prop_assert!(plugin == "meshsplit"),
    }
    let plan = Plan::from_json_named(config, &plugin);

    // The HTTP filter.
    with_envoy(|e| *e = Envoy::default());
    let shared = envoy_dynamic_module_on_http_filter_config_new(
        envoy_object(),
        buffer(name),
        buffer(config),
    );
    no_panic_nor_violation()?;
    prop_assert!(shared.is_null() == plan.is_err(), "filter config: {plan:?}");
    if let Ok(plan) = &plan {
        let allowed = clusters_for(plan, &head);
        for stream in 0..2u64 {
            with_envoy(|e| {
                e.headers = head
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                    .collect();
                e.route_cache_cleared = false;
                e.response = None;
            });
            let filter = envoy_dynamic_module_on_http_filter_new(shared, envoy_object());
            prop_assert!(!filter.is_null());
            let status =
                envoy_dynamic_module_on_http_filter_request_headers(envoy_object(), filter, true);
            let (headers, cleared, response) =
                with_envoy(|e| (e.headers.clone(), e.route_cache_cleared, e.response.clone()));
            let written: Vec<&Vec<u8>> = headers
                .iter()
                .filter(|(k, _)| {
                    *k == plan
                        .headers
                        .cluster
                        .as_deref()
                        .unwrap_or_default()
                        .as_bytes()
                })
                .map(|(_, v)| v)
                .collect();
            match &allowed {
                Some(clusters) => {
                    prop_assert!(status == CONTINUE);
                    prop_assert!(written.len() == 1 && clusters.contains(written[0]));
                    prop_assert!(cleared, "wrote the cluster header but kept the route");
                }
                None if plan.on_unknown_service == OnUnknownService::Reject => {
                    prop_assert!(status == STOP_ITERATION);
                    prop_assert!(response.is_some_and(|r| r.0 == 404));
                }
                None => {
                    prop_assert!(status == CONTINUE && written.is_empty());
                }
            }
            with_envoy(|e| e.response_code = (stream == 0).then_some(503));
            envoy_dynamic_module_on_http_filter_stream_complete(envoy_object(), filter);
            envoy_dynamic_module_on_http_filter_destroy(filter);
            no_panic_nor_violation()?;
        }
        let in_flight: Vec<(String, i64)> = with_envoy(|e| {
            e.metrics
                .iter()
                .zip(&e.gauges)
                .filter(|(name, _)| name.ends_with(".in_flight"))
                .map(|(name, value)| (name.clone(), *value))
                .collect()
        });
        prop_assert!(
            in_flight.iter().all(|(_, v)| *v == 0),
            "after every stream: {in_flight:?}"
        );
    }
    envoy_dynamic_module_on_http_filter_config_destroy(shared);

    // The cluster specifier.
    with_envoy(|e| *e = Envoy::default());
    let shared = envoy_dynamic_module_on_cluster_specifier_config_new(
        envoy_object(),
        buffer(name),
        buffer(config),
    );
    no_panic_nor_violation()?;
    let specifier_plan = plan.and_then(|p| p.check_cluster_specifier().map(|()| p));
    prop_assert!(shared.is_null() == specifier_plan.is_err());
    if let Ok(plan) = &specifier_plan {
        with_envoy(|e| {
            e.headers = head
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect();
        });
        let decided = envoy_dynamic_module_on_cluster_specifier_select(shared, envoy_object());
        let (cluster, not_found) = with_envoy(|e| (e.cluster.clone(), e.not_found_code));
        match clusters_for(plan, &head) {
            Some(clusters) => {
                prop_assert!(decided && cluster.is_some_and(|c| clusters.contains(&c)));
            }
            None if plan.on_unknown_service == OnUnknownService::Reject => {
                prop_assert!(decided && cluster.is_none() && not_found == Some(404));
            }
            None => prop_assert!(!decided && cluster.is_none() && not_found.is_none()),
        }
        no_panic_nor_violation()?;
        // A route refresh: Envoy asks again with the request's random value. The same answer,
        // and nothing counted again.
        let counted = |e: &Envoy| e.gauges.iter().sum::<i64>();
        let before = with_envoy(|e| {
            e.random_value = 0x5eed;
            e.cluster = None;
            e.not_found_code = None;
            counted(e)
        });
        let first = envoy_dynamic_module_on_cluster_specifier_select(shared, envoy_object());
        let (first_cluster, first_code, after_first) =
            with_envoy(|e| (e.cluster.take(), e.not_found_code.take(), counted(e)));
        let again = envoy_dynamic_module_on_cluster_specifier_select(shared, envoy_object());
        let (cluster, not_found, after_again) =
            with_envoy(|e| (e.cluster.clone(), e.not_found_code, counted(e)));
        prop_assert!(first == again && first_cluster == cluster && first_code == not_found);
        prop_assert!(
            after_again == after_first && after_first - before <= 2,
            "counted {before}, {after_first}, {after_again}"
        );
        no_panic_nor_violation()?;
    }
    envoy_dynamic_module_on_cluster_specifier_config_destroy(shared);
    Ok(())
}

fn hooks_corpus() -> Corpus {
    let names: [&[u8]; 4] = [b"meshsplit", b"", b"my.filter/v1", b"\xff\xfe"];
    let mut configs: Vec<Vec<u8>> = [PLAN_HOST, PLAN_QUERY, PLAN_HEADER]
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    configs.extend(fuzz::files("envoy", &[".json"]));
    let mut seeds = Vec::new();
    for (i, head) in REQUEST_SEEDS.iter().enumerate() {
        for (j, config) in configs.iter().enumerate() {
            let mut seed = names[(i + j) % names.len()].to_vec();
            seed.push(SEPARATOR);
            seed.extend_from_slice(config);
            seed.push(SEPARATOR);
            seed.extend_from_slice(head);
            seeds.push(seed);
        }
    }
    let mut tokens = fuzz::config_tokens();
    tokens.push(vec![SEPARATOR]);
    Corpus {
        seeds,
        tokens,
        donors: Vec::new(),
    }
}

#[test]
fn fuzz_native_hooks() {
    fuzz::fuzz("native_hooks", hooks_corpus(), check_hooks);
}

#[test]
fn native_hook_seeds_pass() {
    for seed in hooks_corpus().seeds {
        check_hooks(&seed).unwrap();
    }
}

/// A refresh of the route asks the cluster specifier again with the same random value: the
/// service key read without a copy (lent by Envoy) is recorded as a copied read was, so a
/// changed `:authority` is decided again (the first decision counted as superseded if the new
/// one differs) and an unchanged or equivalent one keeps the decision.
#[test]
fn a_refresh_sees_a_changed_authority() {
    const CONFIG: &[u8] = br#"{"services": [
      {"name": "a", "hosts": ["a", "a:80"], "upstreams": [{"name": "u", "cluster": "ca", "weight": 1}]},
      {"name": "b", "hosts": ["b"], "upstreams": [{"name": "u", "cluster": "cb", "weight": 1}]},
      {"name": "c", "hosts": ["[::1]:80", "c.example"], "upstreams": [{"name": "u", "cluster": "cc", "weight": 1}]}
    ]}"#;
    let superseded = || {
        with_envoy(|e| {
            e.metrics
                .iter()
                .zip(&e.gauges)
                .filter(|(name, _)| name.ends_with("superseded_total"))
                .map(|(_, value)| *value)
                .sum::<i64>()
        })
    };
    let select = |shared, authority: &[u8]| {
        with_envoy(|e| {
            e.headers = vec![(b":authority".to_vec(), authority.to_vec())];
            e.cluster = None;
        });
        envoy_dynamic_module_on_cluster_specifier_select(shared, envoy_object());
        with_envoy(|e| e.cluster.clone()).unwrap_or_default()
    };
    with_envoy(|e| *e = Envoy::default());
    let shared = envoy_dynamic_module_on_cluster_specifier_config_new(
        envoy_object(),
        buffer(b"meshsplit"),
        buffer(CONFIG),
    );
    assert!(!shared.is_null());
    /// First `:authority`, the one on the refresh, the cluster after it, superseded added.
    type Refresh = (&'static [u8], &'static [u8], &'static [u8], i64);
    let cases: &[Refresh] = &[
        (b"a", b"b", b"cb", 1),
        (b"a", b"A", b"ca", 0),
        (b"A.", b"b", b"cb", 1),
        (b"a:80", b"a:81", b"ca", 0),
        (b"a:81", b"[::1]:80", b"cc", 1),
        (b"[0::1]:80", b"[::1]:80", b"cc", 0),
        (b"c.example", b"zzz", b"", 1),
        (b"zzz", b"b", b"cb", 0),
        (b"b", b"b", b"cb", 0),
    ];
    for (i, &(first, again, want, added)) in cases.iter().enumerate() {
        with_envoy(|e| e.random_value = 0x5eed_0000 + i as u64);
        let before = superseded();
        select(shared, first);
        let got = select(shared, again);
        assert_eq!(
            (got.as_slice(), superseded() - before),
            (want, added),
            "case {i}: {:?} then {:?}",
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(again),
        );
        no_panic_nor_violation().unwrap();
    }
    envoy_dynamic_module_on_cluster_specifier_config_destroy(shared);
}

/// While a request header value is lent (Envoy's own bytes), what would change the request's
/// header map is refused, so the value cannot be freed under the borrower.
#[test]
fn the_filter_host_refuses_header_writes_while_a_value_is_lent() {
    use std::borrow::Cow;
    use std::cell::Cell;
    use std::collections::HashMap;

    use crate::host::Host;
    use crate::native::host::FilterHost;
    use crate::native::imports::Filter;

    with_envoy(|e| *e = Envoy::default());
    with_envoy(|e| e.headers = vec![(b":authority".to_vec(), b"reviews.example.com".to_vec())]);
    let (gauges, counters) = (HashMap::new(), HashMap::new());
    let host = FilterHost {
        filter: Filter(envoy_object()),
        namespace: "test/",
        gauges: &gauges,
        counters: &counters,
        wrote: Cell::new(false),
    };
    let (read, replied) = host.with_request_header(":authority", |value| {
        host.set_request_header(":authority", Some("replaced.example.com"));
        let replied = host.send_local_reply(404, &[], b"");
        (value.map(Cow::into_owned), replied)
    });
    assert_eq!(read.as_deref(), Some(&b"reviews.example.com"[..]));
    assert!(!replied);
    with_envoy(|e| {
        assert_eq!(e.headers[0].1, b"reviews.example.com".to_vec());
        assert!(e.response.is_none());
    });
    // Given back: writes go through again.
    host.set_request_header(":authority", Some("replaced.example.com"));
    with_envoy(|e| assert_eq!(e.headers[0].1, b"replaced.example.com".to_vec()));
    // A borrower that panics gives the value back too: failing closed can still reply.
    let filter = Filter(envoy_object());
    let unwound = std::panic::catch_unwind(|| {
        filter.with_request_header(":authority", |_| -> () { panic!("borrower") })
    });
    assert!(unwound.is_err());
    assert!(filter.send_response(503, &[], b""));
    with_envoy(|e| assert_eq!(e.response.as_ref().map(|r| r.0), Some(503)));
}
