use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;
use crate::host::FakeHost;

fn raw(json: &str) -> RawAssignCookie {
    serde_json::from_str(json).unwrap()
}

fn compiled(json: &str) -> AssignCookie {
    compile("services[0].assign_cookie", "mesh-web", &raw(json)).unwrap()
}

#[test]
fn ids_are_base64url_of_their_sixteen_bytes_without_padding() {
    // The same strings as Python's base64.urlsafe_b64encode(...).rstrip(b"=").
    assert_eq!(
        CookieId::from_bytes([0; 16]).as_str(),
        "AAAAAAAAAAAAAAAAAAAAAA"
    );
    let counting: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(
        CookieId::from_bytes(counting).as_str(),
        "AAECAwQFBgcICQoLDA0ODw"
    );
    assert_eq!(
        CookieId::from_bytes([0xff; 16]).as_str(),
        "_____________________w"
    );
    assert_eq!(
        CookieId::from_bytes([0xfb; 16]).as_str(),
        "-_v7-_v7-_v7-_v7-_v7-w"
    );
}

#[test]
fn random_ids_are_22_url_safe_characters_and_do_not_repeat() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let ids: Vec<CookieId> = (0..10_000).map(|_| CookieId::random(&mut rng)).collect();
    for id in &ids {
        assert_eq!(id.as_str().len(), ID_LEN);
        assert!(id
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
        // The last character holds 2 bits: one of A, Q, g, w.
        assert!(
            b"AQgw".contains(&id.as_bytes()[ID_LEN - 1]),
            "{}",
            id.as_str()
        );
    }
    let mut unique: Vec<&str> = ids.iter().map(CookieId::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
}

#[test]
fn every_bit_of_an_id_comes_from_the_generator() {
    // Over many ids, every one of the 21 full positions takes all 64 characters.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut seen = [[false; 64]; ID_LEN - 1];
    for _ in 0..5_000 {
        let id = CookieId::random(&mut rng);
        for (slot, b) in seen.iter_mut().zip(id.as_bytes()) {
            slot[ALPHABET.iter().position(|a| a == b).unwrap()] = true;
        }
    }
    assert!(seen.iter().all(|s| s.iter().all(|&x| x)));
}

#[test]
fn defaults_are_thirty_days_root_path_http_only_lax_and_not_secure() {
    let assign = compiled("{}");
    let id = CookieId::from_bytes([0; 16]);
    assert_eq!(
        assign.header_value(&id),
        "mesh-web=AAAAAAAAAAAAAAAAAAAAAA; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax"
    );
}

#[test]
fn the_header_has_exactly_the_attributes_configured() {
    let id = CookieId::from_bytes([0xff; 16]);
    let all = compiled(
        r#"{"max_age_s": 600, "path": "/shop", "secure": true, "http_only": true, "same_site": "None"}"#,
    );
    assert_eq!(
        all.header_value(&id),
        "mesh-web=_____________________w; Max-Age=600; Path=/shop; Secure; HttpOnly; SameSite=None"
    );
    let bare = compiled(r#"{"secure": false, "http_only": false, "same_site": "Strict"}"#);
    assert_eq!(
        bare.header_value(&id),
        "mesh-web=_____________________w; Max-Age=2592000; Path=/; SameSite=Strict"
    );
}

#[test]
fn same_site_none_needs_secure() {
    let err = compile("at", "c", &raw(r#"{"same_site": "None"}"#)).unwrap_err();
    assert_eq!(err.path, "at.same_site");
}

#[test]
fn a_set_cookie_value_is_recognized_by_its_name_only() {
    assert!(sets(b"mesh-web=abc; Path=/", b"mesh-web"));
    assert!(sets(b" mesh-web =abc", b"mesh-web"));
    assert!(sets(b"mesh-web=", b"mesh-web"));
    assert!(!sets(b"mesh-web-2=abc", b"mesh-web"));
    assert!(!sets(b"other=mesh-web", b"mesh-web"));
    assert!(!sets(b"mesh-web", b"mesh-web"));
}

#[test]
fn cookie_names_that_can_be_set_are_tokens() {
    assert!(is_token("mesh-web"));
    assert!(is_token("__Host-id"));
    assert!(!is_token("my session"));
    assert!(!is_token("a,b"));
    assert!(!is_token(""));
    assert!(!is_token("café"));
}

#[test]
fn the_response_gets_the_cookie_and_its_cache_control_in_four_host_calls() {
    let assign = compiled("{}");
    let id = CookieId::from_bytes([0; 16]);
    let host = FakeHost::default();
    host.response_headers
        .borrow_mut()
        .push(("cache-control".to_owned(), b"public, max-age=3600".to_vec()));
    on_response_headers(&assign, &id, &host);
    assert_eq!(
        *host.calls.borrow(),
        [
            "get response set-cookie",
            "add response set-cookie",
            "get response cache-control",
            "set response cache-control"
        ]
    );
    let headers = host.response_headers.borrow();
    assert!(headers.contains(&(
        "cache-control".to_owned(),
        b"private, max-age=3600".to_vec()
    )));
}

#[test]
fn with_cache_control_unchanged_the_response_gets_the_cookie_in_two_host_calls() {
    let assign = compiled(r#"{"cache_control": "unchanged"}"#);
    let id = CookieId::from_bytes([0; 16]);
    let host = FakeHost::default();
    on_response_headers(&assign, &id, &host);
    assert_eq!(
        *host.calls.borrow(),
        ["get response set-cookie", "add response set-cookie"]
    );
}

#[test]
fn a_response_setting_another_cookie_first_is_read_in_full() {
    let assign = compiled(r#"{"cache_control": "unchanged"}"#);
    let id = CookieId::from_bytes([0; 16]);
    let host = FakeHost::default();
    host.response_headers
        .borrow_mut()
        .push(("set-cookie".to_owned(), b"theme=dark".to_vec()));
    on_response_headers(&assign, &id, &host);
    assert_eq!(
        *host.calls.borrow(),
        [
            "get response set-cookie",
            "get all response set-cookie",
            "add response set-cookie"
        ]
    );
    let headers = host.response_headers.borrow();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[1].1, assign.header_value(&id).into_bytes());
}

#[test]
fn a_response_that_sets_the_same_cookie_is_left_alone() {
    let assign = compiled("{}");
    let host = FakeHost::default();
    host.response_headers.borrow_mut().push((
        "set-cookie".to_owned(),
        b"mesh-web=chosen-by-the-app".to_vec(),
    ));
    on_response_headers(&assign, &CookieId::from_bytes([0; 16]), &host);
    assert_eq!(*host.calls.borrow(), ["get response set-cookie"]);
    assert_eq!(host.response_headers.borrow().len(), 1);
}

// ---- through the request path and the VM's per-stream state ----

use crate::instance::Instance;
use crate::plan::Plan;
use crate::route::on_request_headers;

/// A sticky service "web" on cookie mesh-web that assigns it, with upstreams a, b, c.
fn web(weights: [u32; 3], rules: &str) -> String {
    format!(
        r#"{{"services": [{{"name": "web", "strategy": "sticky", "hash_on": {{"cookie": "mesh-web"}},
            "assign_cookie": {{"max_age_s": 60, "same_site": "Strict"}},
            "rules": [{rules}],
            "upstreams": [{{"name": "a", "cluster": "web_a", "weight": {}}},
                          {{"name": "b", "cluster": "web_b", "weight": {}}},
                          {{"name": "c", "cluster": "web_c", "weight": {}}}]}}]}}"#,
        weights[0], weights[1], weights[2]
    )
}

fn visit(vm: &mut Instance, context: u32, headers: &[(&str, &str)]) -> (FakeHost, Option<String>) {
    vm.stream_created(context, 1);
    let host = FakeHost::with_headers(headers);
    vm.request_headers(context, &host);
    let cluster = host.header("x-meshsplit-cluster");
    (host, cluster)
}

fn configured(json: &str) -> Instance {
    let mut vm = Instance::new([7; 32]);
    vm.configure(1, json.as_bytes(), "meshsplit", &FakeHost::default())
        .unwrap();
    vm
}

/// The id of a `Set-Cookie` value meshsplit added.
fn assigned_id(host: &FakeHost) -> String {
    let headers = host.response_headers.borrow();
    let (_, value) = headers.iter().find(|(k, _)| k == "set-cookie").unwrap();
    let value = String::from_utf8(value.clone()).unwrap();
    let (pair, attributes) = value.split_once(';').unwrap();
    assert_eq!(attributes, " Max-Age=60; Path=/; HttpOnly; SameSite=Strict");
    pair.strip_prefix("mesh-web=").unwrap().to_owned()
}

#[test]
fn a_request_without_the_cookie_gets_it_on_its_response_and_keeps_its_upstream() {
    let mut vm = configured(&web([1, 1, 1], ""));
    let (host, first) = visit(&mut vm, 10, &[(":authority", "web")]);
    vm.response_headers(10, &host);
    let id = assigned_id(&host);
    assert_eq!(id.len(), ID_LEN);
    let cookie = format!("theme=dark; mesh-web={id}");
    for context in 11..16 {
        let (next, cluster) = visit(
            &mut vm,
            context,
            &[(":authority", "web"), ("cookie", &cookie)],
        );
        assert_eq!(cluster, first);
        vm.response_headers(context, &next);
        assert!(!next.calls.borrow().iter().any(|c| c.contains("response")));
        assert!(next.response_headers.borrow().is_empty());
    }
}

#[test]
fn a_request_with_the_cookie_leaves_the_response_alone() {
    let mut vm = configured(&web([1, 1, 1], ""));
    let (host, _) = visit(
        &mut vm,
        10,
        &[(":authority", "web"), ("cookie", "mesh-web=someone")],
    );
    let before = host.call_count();
    vm.response_headers(10, &host);
    assert_eq!(host.call_count(), before);
}

#[test]
fn a_response_that_already_sets_the_cookie_is_untouched() {
    let mut vm = configured(&web([1, 1, 1], ""));
    let (host, _) = visit(&mut vm, 10, &[(":authority", "web")]);
    host.response_headers.borrow_mut().push((
        "set-cookie".to_owned(),
        b"mesh-web=from-the-app; Path=/".to_vec(),
    ));
    vm.response_headers(10, &host);
    assert_eq!(
        host.calls.borrow().last().unwrap(),
        "get response set-cookie"
    );
    assert_eq!(host.response_headers.borrow().len(), 1);
}

#[test]
fn a_request_a_rule_routes_still_gets_a_cookie_for_its_next_requests() {
    let rule = r#"{"match": {"headers": [{"name": "x-beta", "exact": "1"}]}, "upstream": "c"}"#;
    let mut vm = configured(&web([1, 1, 0], rule));
    let (host, cluster) = visit(&mut vm, 10, &[(":authority", "web"), ("x-beta", "1")]);
    assert_eq!(cluster.as_deref(), Some("web_c"));
    vm.response_headers(10, &host);
    let id = assigned_id(&host);
    // Its next request without the header goes where the id says, and stays there.
    let cookie = format!("mesh-web={id}");
    let (_, next) = visit(&mut vm, 11, &[(":authority", "web"), ("cookie", &cookie)]);
    assert!(
        matches!(next.as_deref(), Some("web_a" | "web_b")),
        "{next:?}"
    );
    let (_, again) = visit(&mut vm, 12, &[(":authority", "web"), ("cookie", &cookie)]);
    assert_eq!(next, again);
}

#[test]
fn a_stream_that_ends_before_its_response_forgets_its_cookie() {
    let mut vm = configured(&web([1, 1, 1], ""));
    let (host, _) = visit(&mut vm, 10, &[(":authority", "web")]);
    vm.context_deleted(10, &host);
    // A later stream reusing the id sees nothing pending.
    let (late, _) = visit(
        &mut vm,
        10,
        &[(":authority", "web"), ("cookie", "mesh-web=x")],
    );
    vm.response_headers(10, &late);
    assert!(late.response_headers.borrow().is_empty());
}

#[test]
fn a_vm_that_does_not_see_responses_refuses_assign_cookie_and_says_why() {
    let mut vm = Instance::new([0; 32]);
    vm.set_sees_responses(false);
    let err = vm
        .configure(
            1,
            web([1, 1, 1], "").as_bytes(),
            "meshsplit",
            &FakeHost::default(),
        )
        .unwrap_err();
    assert_eq!(err.path, "services[0].assign_cookie");
    assert!(err.message.contains("meshsplit-cookie.wasm"), "{err}");
}

#[test]
fn the_cluster_specifier_check_refuses_assign_cookie_and_says_why() {
    let plan = Plan::from_json(web([1, 1, 1], "").as_bytes()).unwrap();
    let err = plan.check_cluster_specifier().unwrap_err();
    assert_eq!(err.path, "services[0].assign_cookie");
    assert!(err.message.contains("cannot touch"), "{err}");
}

/// Where a visitor's first request (no cookie) goes under `before`, with its assigned id; then
/// where the id takes it under `after`.
fn first_and_after(before: &Plan, after: &Plan, seed: u64) -> (usize, usize) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let host = FakeHost::with_headers(&[(":authority", "web")]);
    let routed = on_request_headers(before, &mut rng, &host, 0);
    let id = routed.cookie.unwrap();
    let first = upstream_of(&routed.counted);
    let cookie = format!("mesh-web={}", id.as_str());
    let host = FakeHost::with_headers(&[(":authority", "web"), ("cookie", &cookie)]);
    let again = on_request_headers(before, &mut rng, &host, 0);
    assert_eq!(
        upstream_of(&again.counted),
        first,
        "the cookie keeps the first upstream"
    );
    assert_eq!(again.cookie, None);
    let host = FakeHost::with_headers(&[(":authority", "web"), ("cookie", &cookie)]);
    (
        first,
        upstream_of(&on_request_headers(after, &mut rng, &host, 0).counted),
    )
}

fn upstream_of(counted: &crate::metrics::Counted) -> usize {
    match counted {
        crate::metrics::Counted::Upstream { upstream, .. } => *upstream,
        other => panic!("not routed: {other:?}"),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The monotone property for assigned visitors: raising one upstream's weight moves
    /// visitors only into it, and its share grows as the weights say.
    #[test]
    fn a_ramp_moves_assigned_visitors_only_into_the_raised_upstream(
        weights in proptest::array::uniform3(1u32..=100),
        raised in 0usize..3,
        extra in 1u32..=100,
        seed: u64,
    ) {
        let mut after_weights = weights;
        after_weights[raised] += extra;
        let before = Plan::from_json(web(weights, "").as_bytes()).unwrap();
        let after = Plan::from_json(web(after_weights, "").as_bytes()).unwrap();
        for visitor in 0..64u64 {
            let (first, then) = first_and_after(&before, &after, seed ^ visitor.wrapping_mul(0x9e37_79b9));
            proptest::prop_assert!(then == first || then == raised, "{first} -> {then}");
        }
    }
}

#[test]
fn a_ten_to_thirty_raise_moves_about_the_share_the_weights_say() {
    // Raising b from 10 to 30 against a's 90: b's share goes from 10 % to 25 %, so 15 % of
    // visitors move, all from a to b.
    let before = Plan::from_json(web([90, 10, 0], "").as_bytes()).unwrap();
    let after = Plan::from_json(web([90, 30, 0], "").as_bytes()).unwrap();
    let n = 20_000;
    let moved = (0..n)
        .filter(|&seed| {
            let (first, then) = first_and_after(&before, &after, seed);
            assert!(then == first || (first == 0 && then == 1));
            then != first
        })
        .count();
    let share = moved as f64 / n as f64;
    assert!((share - 0.15).abs() < 0.01, "{share}");
}

#[test]
fn an_empty_cookie_counts_as_none_and_is_replaced() {
    let mut vm = configured(&web([1, 1, 1], ""));
    let (host, _) = visit(
        &mut vm,
        10,
        &[(":authority", "web"), ("cookie", "mesh-web=")],
    );
    vm.response_headers(10, &host);
    assert_eq!(assigned_id(&host).len(), ID_LEN);
}

#[test]
fn a_sticky_service_that_does_not_assign_leaves_every_response_alone() {
    let json = web([1, 1, 1], "").replace(
        r#""assign_cookie": {"max_age_s": 60, "same_site": "Strict"},"#,
        "",
    );
    let plan = Plan::from_json(json.as_bytes()).unwrap();
    assert!(plan.services[0].assign_cookie.is_none());
    let mut vm = configured(&json);
    let (host, _) = visit(&mut vm, 10, &[(":authority", "web")]);
    let before = host.call_count();
    vm.response_headers(10, &host);
    assert_eq!(host.call_count(), before);
}

#[test]
fn a_response_that_sets_the_cookie_is_made_private_to_shared_caches() {
    let cases: [(Option<&str>, Option<&str>); 10] = [
        (
            Some("private=\"X-Foo\", max-age=600"),
            Some("private, max-age=600"),
        ),
        (
            Some("no-cache=\"a,private,b\", max-age=600"),
            Some("private, no-cache=\"a,private,b\", max-age=600"),
        ),
        (None, Some("private")),
        (Some("public, max-age=3600"), Some("private, max-age=3600")),
        (
            Some("max-age=60, s-maxage=600"),
            Some("private, max-age=60"),
        ),
        (Some("Public,MAX-AGE=5"), Some("private, MAX-AGE=5")),
        (Some("private, max-age=60"), None),
        (Some("no-store"), None),
        (Some("private, public"), Some("private")),
        (Some("no-cache"), Some("private, no-cache")),
    ];
    for (current, expected) in cases {
        assert_eq!(
            private_cache_control(current.map(str::as_bytes)).as_deref(),
            expected,
            "{current:?}"
        );
    }
}

#[test]
fn only_requests_inside_the_cookie_path_are_in_it() {
    for (path, cookie, inside) in [
        ("/shop", "/shop", true),
        ("/shop/", "/shop", true),
        ("/shop/cart?x=1", "/shop", true),
        ("/shop?x=1", "/shop", true),
        ("/shopping", "/shop", false),
        ("/static/app.js", "/shop", false),
        ("/", "/shop", false),
        ("/shop/a", "/shop/", true),
        ("/shop", "/shop/", false),
        ("/anything", "/", true),
    ] {
        assert_eq!(
            path_matches(path.as_bytes(), cookie),
            inside,
            "{path} in {cookie}"
        );
    }
}

#[test]
fn prefixed_cookie_names_need_the_attributes_browsers_require() {
    let compile_named =
        |name: &str, json: &str| compile("services[0].assign_cookie", name, &raw(json)).map(|_| ());
    let e = compile_named("__Secure-web", "{}").unwrap_err();
    assert_eq!(e.path, "services[0].assign_cookie.secure");
    let e = compile_named("__host-web", "{}").unwrap_err();
    assert_eq!(e.path, "services[0].assign_cookie.secure");
    let e = compile_named("__Host-web", r#"{"secure": true, "path": "/shop"}"#).unwrap_err();
    assert_eq!(e.path, "services[0].assign_cookie.path");
    assert!(compile_named("__Host-web", r#"{"secure": true}"#).is_ok());
    assert!(compile_named("__Secure-web", r#"{"secure": true, "path": "/shop"}"#).is_ok());
}

#[test]
fn the_value_written_in_place_is_the_allocated_one() {
    let id = CookieId::from_bytes([7; 16]);
    for config in [
        "{}",
        r#"{"path": "/shop", "secure": true, "same_site": "Strict"}"#,
    ] {
        let assign = compiled(config);
        let mut buffer = [0u8; INLINE_VALUE];
        let value = assign.header_value_in(&id, &mut buffer);
        assert!(matches!(value, std::borrow::Cow::Borrowed(_)));
        assert_eq!(value, assign.header_value(&id));
    }
    let long = format!(r#"{{"path": "/{}"}}"#, "a".repeat(300));
    let assign = compiled(&long);
    let mut buffer = [0u8; INLINE_VALUE];
    assert_eq!(
        assign.header_value_in(&id, &mut buffer),
        assign.header_value(&id)
    );
}
