//! A plan written back as plugin configuration JSON, every default spelled out. Used by the
//! round-trip property: a configuration that is accepted compiles to a plan, the plan renders to
//! JSON, and that JSON compiles to the same plan, so the plan holds everything the
//! configuration said.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::{
    Condition, HashOn, HeaderTest, OnUnknownService, Plan, Service, ServiceFrom, Strategy,
};

pub fn render(plan: &Plan) -> Value {
    let service_from = match &plan.service_from {
        ServiceFrom::Authority => json!("authority"),
        ServiceFrom::Header(name) => json!({ "header": name }),
        ServiceFrom::Query(name) => json!({ "query": name }),
    };
    let on_unknown = match plan.on_unknown_service {
        OnUnknownService::Pass => "pass",
        OnUnknownService::Reject => "reject",
    };
    let services: Vec<Value> = plan
        .services
        .iter()
        .enumerate()
        .map(|(index, service)| {
            let hosts: Vec<&str> = plan
                .by_host
                .iter()
                .filter(|(_, owner)| *owner == index)
                .map(|(host, _)| host.as_str())
                .collect();
            render_service(service, &hosts)
        })
        .collect();
    let mut out = Map::new();
    if let Some(name) = &plan.headers.cluster {
        out.insert("cluster_header".into(), json!(name));
    }
    if let Some(name) = &plan.headers.upstream {
        out.insert("upstream_header".into(), json!(name));
    }
    out.insert("service_from".into(), service_from);
    out.insert("on_unknown_service".into(), json!(on_unknown));
    out.insert("services".into(), json!(services));
    Value::Object(out)
}

fn render_service(service: &Service, hosts: &[&str]) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(service.name));
    out.insert("hosts".into(), json!(hosts));
    out.insert("strategy".into(), json!(service.strategy.name()));
    if let Strategy::Sticky { hash_on, .. } = &service.strategy {
        let hash_on = match hash_on {
            HashOn::Header(name) => json!({ "header": name }),
            HashOn::Cookie(name) => json!({ "cookie": name }),
            HashOn::Query(name) => json!({ "query": name }),
        };
        out.insert("hash_on".into(), hash_on);
    }
    let upstreams: Vec<Value> = service
        .upstreams
        .iter()
        .map(|u| {
            let mut upstream = json!({"name": u.name, "cluster": u.cluster, "weight": u.weight});
            if let (Some(authority), Some(map)) = (&u.authority, upstream.as_object_mut()) {
                map.insert("authority".into(), json!(authority));
            }
            upstream
        })
        .collect();
    out.insert("upstreams".into(), json!(upstreams));
    let rules: Vec<Value> = service
        .rules
        .iter()
        .map(|rule| {
            let (mut headers, mut cookies, mut query) = (vec![], vec![], vec![]);
            for condition in &rule.conditions {
                match condition {
                    Condition::Header { name, test } => headers.push(match test {
                        HeaderTest::Exact(v) => json!({"name": name, "exact": v}),
                        HeaderTest::Prefix(v) => json!({"name": name, "prefix": v}),
                        HeaderTest::Present => json!({"name": name, "present": true}),
                    }),
                    Condition::Cookie { name, value } => {
                        cookies.push(json!({"name": name, "exact": value}))
                    }
                    Condition::Query { name, value } => {
                        query.push(json!({"name": name, "exact": value}))
                    }
                }
            }
            let upstream = &service.upstreams[rule.upstream].name;
            json!({
                "match": {"headers": headers, "cookies": cookies, "query": query},
                "upstream": upstream,
            })
        })
        .collect();
    out.insert("rules".into(), json!(rules));
    if let Some(guard) = &service.guard {
        out.insert(
            "guard".into(),
            json!({
                "error_rate": guard.error_rate,
                "min_requests": guard.min_requests,
                "window_s": guard.window_s,
                "eject_s": guard.eject_s,
                "max_ejected_percent": guard.max_ejected_percent,
            }),
        );
    }
    if let Some(rollout) = &service.rollout {
        let start = UNIX_EPOCH + Duration::from_millis(rollout.start_ms);
        let steps: Vec<Value> = rollout
            .steps
            .iter()
            .map(|step| {
                let weights: Map<String, Value> = service
                    .upstreams
                    .iter()
                    .zip(step.weights.iter())
                    .map(|(u, w)| (u.name.clone(), json!(w)))
                    .collect();
                json!({"at_s": step.at_s, "weights": weights})
            })
            .collect();
        out.insert(
            "rollout".into(),
            json!({
                "start": humantime::format_rfc3339_millis(start).to_string(),
                "interpolate": rollout.interpolate,
                "steps": steps,
            }),
        );
    }
    Value::Object(out)
}
