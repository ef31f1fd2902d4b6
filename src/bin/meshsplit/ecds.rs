//! What Envoy accepts in an ECDS file (a `DiscoveryResponse` read by `path_config_source`), so
//! that `check` and `apply` refuse a file Envoy would reject instead of calling it ok.
//!
//! Envoy rejects a whole update (`update_rejected`, the old config keeps serving) when the
//! response does not hold exactly one resource ("Unexpected number of resources in
//! ExtensionConfigDS response"), when that resource's name is not the filter's name in the
//! listener ("Unexpected resource name"), when it is not a `TypedExtensionConfig`, or when its
//! `typed_config` is of a type the filter's `config_discovery.type_urls` does not list.

use serde_json::Value;

pub const EXTENSION_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Whether a document is a discovery response (as `extract` reads it): a `resources` list that
/// is not in a bootstrap or a Kubernetes manifest.
pub fn is_response(value: &Value) -> bool {
    value.get("resources").is_some_and(Value::is_array)
        && value.get("static_resources").is_none()
        && value.get("dynamic_resources").is_none()
        && !(value.get("apiVersion").is_some() && value.get("kind").is_some())
}

/// Why Envoy would reject `response` as an ECDS file, whatever the filter: each reason names
/// the field. An empty `resources` list is not one (Envoy then keeps what it has).
pub fn refusals(response: &Value) -> Vec<String> {
    let Some(resources) = response.get("resources").and_then(Value::as_array) else {
        return vec!["not a discovery response: no \"resources\" list".to_owned()];
    };
    let mut reasons = Vec::new();
    if resources.len() > 1 {
        reasons.push(format!(
            "resources: {} resources; Envoy takes exactly one per ECDS file and rejects this one \
             (\"Unexpected number of resources in ExtensionConfigDS response: {}\"): give each \
             filter a file of its own",
            resources.len(),
            resources.len()
        ));
    }
    for (i, resource) in resources.iter().enumerate() {
        let type_url = resource.get("@type").and_then(Value::as_str);
        if type_url != Some(EXTENSION_TYPE) {
            reasons.push(format!(
                "resources[{i}].@type: {}; an ECDS resource must be a {EXTENSION_TYPE}",
                type_url.map_or("missing".to_owned(), |t| format!("{t:?}"))
            ));
        }
        match resource.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => {}
            _ => reasons.push(format!(
                "resources[{i}].name: missing; Envoy takes a resource only under the name of \
                 the filter that reads the file"
            )),
        }
    }
    reasons
}

/// Why Envoy would reject `response` as the ECDS file of a meshsplit wasm filter named `name`
/// (if known): the reasons of `refusals`, and a resource under another name or of another type.
/// Only a file holding no resource at all passes with none.
pub fn refusals_for_wasm(response: &Value, name: Option<&str>) -> Vec<String> {
    let mut reasons = refusals(response);
    let resources = response.get("resources").and_then(Value::as_array);
    let Some([resource]) = resources.map(Vec::as_slice) else {
        return reasons;
    };
    let named = resource
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(wanted) = name {
        if !named.is_empty() && named != wanted {
            reasons.push(format!(
                "resources[0].name: {named:?}, not {wanted:?} (--name); Envoy rejects a resource \
                 whose name is not the filter's (\"Unexpected resource name in \
                 ExtensionConfigDS response\")"
            ));
        }
    }
    let type_url = resource
        .get("typed_config")
        .and_then(|t| t.get("@type"))
        .and_then(Value::as_str);
    if type_url != Some(WASM_TYPE) {
        reasons.push(format!(
            "resources[0].typed_config.@type: {}, not {WASM_TYPE}; the file holds another \
             filter, which a meshsplit filter (type_urls: the wasm filter) would reject",
            type_url.map_or("missing".to_owned(), |t| format!("{t:?}"))
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(name: &str, type_url: &str) -> Value {
        json!({"@type": EXTENSION_TYPE, "name": name, "typed_config": {"@type": type_url}})
    }

    const LUA: &str = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua";

    #[test]
    fn one_named_wasm_resource_is_taken() {
        let ok = json!({"version_info": "1", "resources": [resource("meshsplit", WASM_TYPE)]});
        assert!(refusals_for_wasm(&ok, None).is_empty());
        assert!(refusals_for_wasm(&ok, Some("meshsplit")).is_empty());
        assert!(refusals_for_wasm(&json!({"resources": []}), Some("x")).is_empty());
    }

    #[test]
    fn two_resources_are_refused_whatever_they_are() {
        let two = json!({"resources": [resource("lua", LUA), resource("meshsplit", WASM_TYPE)]});
        let reasons = refusals(&two);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("Unexpected number of resources in ExtensionConfigDS response: 2")
        );
    }

    #[test]
    fn another_name_type_or_wrapper_is_refused() {
        let other = json!({"resources": [resource("split", WASM_TYPE)]});
        let reasons = refusals_for_wasm(&other, Some("meshsplit"));
        assert!(
            reasons[0].starts_with("resources[0].name: \"split\", not \"meshsplit\""),
            "{reasons:?}"
        );
        let lua = json!({"resources": [resource("meshsplit", LUA)]});
        assert!(refusals_for_wasm(&lua, None)[0].starts_with("resources[0].typed_config.@type: "));
        let bare =
            json!({"resources": [{"name": "meshsplit", "typed_config": {"@type": WASM_TYPE}}]});
        assert!(refusals(&bare)[0].starts_with("resources[0].@type: missing"));
        let unnamed =
            json!({"resources": [{"@type": EXTENSION_TYPE, "typed_config": {"@type": WASM_TYPE}}]});
        assert!(refusals(&unnamed)[0].starts_with("resources[0].name: missing"));
    }
}
