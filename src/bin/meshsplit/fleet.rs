//! `meshsplit status` over several Envoys (`--admin` repeated): the fleet's split, from each
//! Envoy's report (`status::report`). The observed share is every Envoy's requests in the
//! interval added up; the weight share is each Envoy's weight share weighted by its requests in
//! the interval (an Envoy whose guard ejected an upstream, or that runs another configuration,
//! counts for the traffic it routes), as the Prometheus rules compute it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Per upstream of a service: requests in the interval, the weighted weight shares, the
/// unweighted ones (for a fleet without traffic), the Envoys that have it and that eject it.
#[derive(Default)]
struct Upstream {
    requests: u64,
    weighted: f64,
    shares: Vec<f64>,
    envoys: u64,
    ejected_on: u64,
}

/// The fleet report of per-Envoy reports (`(admin, report)`; an Envoy that could not be read
/// has `{"error": …}` as its report).
pub fn report(envoys: &[(String, Value)]) -> Value {
    // (plugin, service) -> (requests in the interval, upstreams)
    let mut services: BTreeMap<(String, String), (u64, BTreeMap<String, Upstream>)> =
        BTreeMap::new();
    let mut read = 0;
    for (_, report) in envoys {
        let Some(plugins) = report.get("plugins").and_then(Value::as_array) else {
            continue;
        };
        read += 1;
        for plugin in plugins {
            // Istio 1.30 translates a WasmPlugin NAME into NAME~istio-translated-wasmplugin:
            // the same filter, as the Prometheus rules read it.
            let plugin_name = text(plugin, "plugin")
                .trim_end_matches("_istio-translated-wasmplugin")
                .to_owned();
            for service in array(plugin, "services") {
                let key = (plugin_name.clone(), text(service, "service"));
                let total = service
                    .get("requests_in_interval")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let entry = services.entry(key).or_default();
                entry.0 += total;
                for upstream in array(service, "upstreams") {
                    let stats = entry.1.entry(text(upstream, "upstream")).or_default();
                    stats.envoys += 1;
                    stats.requests += upstream
                        .get("requests_in_interval")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if let Some(share) = upstream.get("weight_share").and_then(Value::as_f64) {
                        stats.weighted += share * total as f64;
                        stats.shares.push(share);
                    }
                    if upstream.get("ejected") == Some(&Value::Bool(true)) {
                        stats.ejected_on += 1;
                    }
                }
            }
        }
    }
    let list: Vec<Value> = services
        .into_iter()
        .map(|((plugin, service), (total, upstreams))| {
            let upstreams: Vec<Value> = upstreams
                .into_iter()
                .map(|(name, u)| {
                    let weight_share = if total > 0 {
                        Some(u.weighted / total as f64)
                    } else if u.shares.is_empty() {
                        None
                    } else {
                        Some(u.shares.iter().sum::<f64>() / u.shares.len() as f64)
                    };
                    json!({
                        "upstream": name,
                        "weight_share": weight_share,
                        "observed_share": (total > 0).then(|| u.requests as f64 / total as f64),
                        "requests_in_interval": u.requests,
                        "envoys": u.envoys,
                        "ejected_on": u.ejected_on,
                    })
                })
                .collect();
            json!({
                "plugin": plugin,
                "service": service,
                "requests_in_interval": total,
                "upstreams": upstreams,
            })
        })
        .collect();
    json!({"envoys": envoys.len(), "envoys_read": read, "services": list})
}

fn text(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn array<'a>(value: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The fleet table.
pub fn render(fleet: &Value, over: &str) -> String {
    let count = |field: &str| fleet.get(field).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "fleet of {} Envoys, {} read ({over}); weight share: each Envoy's, weighted by its \
         requests\n",
        count("envoys"),
        count("envoys_read")
    );
    for service in array(fleet, "services") {
        out.push_str(&format!(
            "\n  {} (plugin {}): {} requests in the interval\n",
            text(service, "service"),
            text(service, "plugin"),
            service
                .get("requests_in_interval")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        ));
        out.push_str(&format!(
            "    {:<16} {:>7} {:>9} {:>9} {:>7} {:>8}\n",
            "upstream", "share", "observed", "interval", "envoys", "ejected"
        ));
        for u in array(service, "upstreams") {
            let percent = |field: &str| match u.get(field).and_then(Value::as_f64) {
                Some(f) => format!("{:.1}%", f * 100.0),
                None => "-".to_owned(),
            };
            let number = |field: &str| u.get(field).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "    {:<16} {:>7} {:>9} {:>9} {:>7} {:>8}\n",
                text(u, "upstream"),
                percent("weight_share"),
                percent("observed_share"),
                number("requests_in_interval"),
                number("envoys"),
                number("ejected_on"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envoy(total: u64, upstreams: &[(&str, u64, f64, bool)]) -> Value {
        let list: Vec<Value> = upstreams
            .iter()
            .map(|(name, requests, share, ejected)| {
                json!({"upstream": name, "requests_in_interval": requests,
                       "weight_share": share, "ejected": ejected})
            })
            .collect();
        json!({"plugins": [{"plugin": "p", "services": [
            {"service": "svc", "requests_in_interval": total, "upstreams": list}]}]})
    }

    #[test]
    fn the_weight_share_is_weighted_by_each_envoys_traffic() {
        // v1 10 / v2 90 on both; b ejected v2 (its shares 1/0); equal traffic.
        let fleet = report(&[
            (
                "a".into(),
                envoy(100, &[("v1", 10, 0.1, false), ("v2", 90, 0.9, false)]),
            ),
            (
                "b".into(),
                envoy(100, &[("v1", 100, 1.0, false), ("v2", 0, 0.0, true)]),
            ),
            ("c".into(), json!({"error": "unreachable"})),
        ]);
        let ups = &fleet["services"][0]["upstreams"];
        assert_eq!(ups[0]["weight_share"], json!(0.55));
        assert_eq!(ups[0]["observed_share"], json!(0.55));
        assert_eq!(ups[1]["weight_share"], json!(0.45));
        assert_eq!(ups[1]["ejected_on"], json!(1));
        assert_eq!(fleet["envoys"], json!(3));
        assert_eq!(fleet["envoys_read"], json!(2));
    }

    #[test]
    fn an_envoy_without_traffic_counts_for_nothing() {
        let fleet = report(&[
            (
                "a".into(),
                envoy(100, &[("v1", 75, 0.75, false), ("v2", 25, 0.25, false)]),
            ),
            (
                "idle".into(),
                envoy(0, &[("v1", 0, 0.0, false), ("v2", 0, 1.0, false)]),
            ),
        ]);
        let ups = &fleet["services"][0]["upstreams"];
        assert_eq!(ups[0]["weight_share"], json!(0.75));
        assert_eq!(ups[1]["weight_share"], json!(0.25));
    }
}
