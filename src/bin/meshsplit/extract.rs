//! Finding meshsplit plugin configs in a file's documents.
//!
//! A plugin config is found as
//! - a document that is one: an object with a `services` list, or with any of the plugin
//!   config's other top-level fields (`cluster_header`, `service_from`, `on_unknown_service`);
//!   a `services` map is not one (docker-compose files have that);
//! - the `configuration` of a wasm HTTP filter: an object whose `@type` ends in
//!   `envoy.extensions.filters.http.wasm.v3.Wasm` (also inside a `TypedStruct` with that
//!   `type_url`) and whose `config.configuration` is a `google.protobuf.StringValue`. Every such
//!   filter is taken to be meshsplit: the filter's own config does not say which module it runs.
//!   They are looked for in an Envoy bootstrap's `static_resources.listeners` (including ECDS
//!   `config_discovery.default_config`), in a discovery response's `resources` (an ECDS file),
//!   in an Istio `EnvoyFilter`'s `configPatches`, and anywhere in other documents;
//! - the `pluginConfig` of every Istio `WasmPlugin` (`spec.pluginConfig`) and wasm
//!   `TrafficExtension` (`spec.wasm.pluginConfig`), turned into JSON text.
//!
//! A wasm filter without a `StringValue` configuration is someone else's, unless it says it is
//! meshsplit (`looks_like_meshsplit`): then, like a dynamic-module filter of module `meshsplit`
//! whose config cannot be read, it is found `broken`, so that `check` fails it instead of
//! skipping the file.

use std::collections::BTreeSet;
use std::rc::Rc;

use meshsplit::plan::{ConfigError, Plan};
use serde_json::{Map, Value};

use crate::position::{Key, Node, Origin};
use crate::source::Document;

const WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "google.protobuf.StringValue";
const DYNAMIC_FILTER_TYPE: &str =
    "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const DYNAMIC_SPECIFIER_TYPE: &str =
    "envoy.extensions.router.cluster_specifiers.dynamic_modules.v3.DynamicModuleClusterSpecifier";
/// Top-level fields of the plugin config (`meshsplit::config::RawConfig`) besides `services`.
const PLUGIN_FIELDS: [&str; 4] = [
    "cluster_header",
    "upstream_header",
    "service_from",
    "on_unknown_service",
];

/// One plugin config found in a file.
#[derive(Debug)]
pub struct Found {
    /// Where it sits in the file, for people (`listeners[0] meshsplit`); empty when the file is
    /// the plugin config itself.
    pub place: String,
    /// The Envoy plugin (filter instance) name it is configured for.
    pub plugin: String,
    /// The configuration text, as the filter receives it.
    pub config: String,
    /// The clusters of the Envoy bootstrap it came from, if it came from one.
    pub clusters: Option<Rc<Clusters>>,
    /// It configures the native build's route cluster specifier, which refuses what it cannot
    /// do (`Plan::check_cluster_specifier`).
    pub specifier: bool,
    /// It is a wasm filter whose module is `meshsplit.wasm`, which does not export the
    /// response-headers callback and so refuses `assign_cookie` (meshsplit-cookie.wasm does not).
    pub no_responses: bool,
    /// Why a filter that is meshsplit (it runs meshsplit's module or is named like it) has no
    /// config that can be read: its configuration is missing, not a `StringValue`, or its
    /// `value` is not a string. Envoy would give the filter no config or refuse the file, so
    /// this is an error, never a file without meshsplit config.
    pub broken: Option<String>,
    /// It sits in an Istio manifest (EnvoyFilter, WasmPlugin, TrafficExtension): its clusters
    /// are a sidecar's, named `outbound|PORT|SUBSET|FQDN`.
    pub istio: bool,
    /// How `config` relates to the file, to place an error's position in it.
    pub origin: Origin,
}

impl Found {
    /// The plan the filter (or the cluster specifier) would build from this config, or the
    /// error it would log.
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        if let Some(why) = &self.broken {
            return Err(ConfigError {
                path: String::new(),
                message: why.clone(),
            });
        }
        let plan = Plan::from_json_named(self.config.as_bytes(), &self.plugin)?;
        if self.specifier {
            plan.check_cluster_specifier()?;
        }
        if self.no_responses {
            plan.check_no_assign_cookie(meshsplit::instance::NO_RESPONSES)?;
        }
        Ok(plan)
    }
}

/// The clusters an Envoy bootstrap defines.
#[derive(Debug, PartialEq, Eq)]
pub struct Clusters {
    /// `static_resources.clusters[].name`.
    pub names: BTreeSet<String>,
    /// The bootstrap also has `dynamic_resources.cds_config`: more clusters may come from CDS.
    pub cds: bool,
}

/// Every plugin config in `documents`, in file order.
pub fn extract(documents: &[Document]) -> Vec<Found> {
    let mut out = Vec::new();
    let many = documents.len() > 1;
    for (i, document) in documents.iter().enumerate() {
        let place = if many && !is_manifest(&document.value) {
            format!("document {}", i + 1)
        } else {
            String::new()
        };
        from_document(document, &place, &mut out);
    }
    out
}

fn from_document(document: &Document, place: &str, out: &mut Vec<Found>) {
    let value = &document.value;
    let node = &document.node;
    if is_manifest(value) {
        from_manifest(value, node, out);
    } else if value.get("static_resources").is_some() || value.get("dynamic_resources").is_some() {
        from_bootstrap(value, node, place, out);
    } else if let Some(resources) = value.get("resources").and_then(Value::as_array) {
        let node = node.field("resources");
        for (i, resource) in resources.iter().enumerate() {
            from_container(
                resource,
                &node.index(i),
                &join(place, &format!("resources[{i}]")),
                false,
                None,
                out,
            );
        }
    } else if is_plugin_config(value) {
        let (config, origin) = match &document.text {
            Some(text) => (text.clone(), Origin::Text),
            None => (value.to_string(), Origin::Node(node.clone())),
        };
        out.push(Found {
            place: place.to_owned(),
            plugin: "meshsplit".to_owned(),
            config,
            clusters: None,
            specifier: false,
            no_responses: false,
            broken: None,
            istio: false,
            origin,
        });
    } else {
        from_container(value, node, place, true, None, out);
    }
}

fn is_plugin_config(value: &Value) -> bool {
    value.get("services").is_some_and(Value::is_array)
        || PLUGIN_FIELDS.iter().any(|f| value.get(f).is_some())
}

fn is_manifest(value: &Value) -> bool {
    value.get("apiVersion").is_some_and(Value::is_string)
        && value.get("kind").is_some_and(Value::is_string)
}

fn from_manifest(value: &Value, node: &Node, out: &mut Vec<Found>) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let metadata = value.get("metadata");
    let field = |name| {
        metadata
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (namespace, name) = (field("namespace"), field("name"));
    let place = if namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    };
    // Istio names the Envoy plugin of a WasmPlugin or TrafficExtension `namespace.name`.
    let plugin = if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    };
    let spec = value.get("spec");
    let spec_node = node.field("spec");
    match kind {
        "List" => {
            let list = node.field("items");
            for (i, item) in items(value.get("items")).enumerate() {
                if is_manifest(item) {
                    from_manifest(item, &list.index(i), out);
                }
            }
        }
        "EnvoyFilter" => {
            let first = out.len();
            let patches = spec.and_then(|s| s.get("configPatches"));
            let patches_node = spec_node.field("configPatches");
            for (i, patch) in items(patches).enumerate() {
                let place = format!("{place} configPatches[{i}]");
                from_container(patch, &patches_node.index(i), &place, false, None, out);
            }
            for found in out.iter_mut().skip(first) {
                found.istio = true;
            }
        }
        "WasmPlugin" => out.push(plugin_config_object(spec, &spec_node, place, plugin)),
        "TrafficExtension" => {
            // Exactly one of `wasm` and `lua`; only wasm extensions have a plugin config.
            if let Some(wasm) = spec.and_then(|s| s.get("wasm")) {
                let wasm_node = spec_node.field("wasm");
                out.push(plugin_config_object(Some(wasm), &wasm_node, place, plugin));
            }
        }
        "EnvoyExtensionPolicy" => {
            // Envoy Gateway: each wasm module's and dynamic module's `config`, passed to the
            // module as JSON text; the ones that are meshsplit by name or by their `services`.
            for (list, label) in [("wasm", "wasm"), ("dynamicModule", "dynamicModule")] {
                for (i, module) in items(spec.and_then(|s| s.get(list))).enumerate() {
                    let module_name = module
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let config = module.get("config");
                    let ours = module_name.contains("meshsplit")
                        || config.is_some_and(|c| c.get("services").is_some());
                    if !ours {
                        continue;
                    }
                    let module_node = spec_node.field(list).index(i);
                    let mut found = plugin_config_object(
                        Some(module),
                        &module_node,
                        format!("{place} {label}[{i}]"),
                        module_name.to_owned(),
                    );
                    found.config = config.map(Value::to_string).unwrap_or_default();
                    found.origin = Origin::Node(module_node.field("config"));
                    found.istio = false;
                    let code = module.get("code");
                    let url = ["http", "image"]
                        .iter()
                        .find_map(|k| code.and_then(|c| c.get(*k)).and_then(|c| c.get("url")))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    found.no_responses =
                        list == "wasm" && module_sees_responses(url) == Some(false);
                    out.push(found);
                }
            }
        }
        _ => from_container(value, node, &place, true, None, out),
    }
}

/// The `pluginConfig` object of an Istio wasm extension as JSON text; absent, the filter gets
/// an empty configuration.
fn plugin_config_object(
    holder: Option<&Value>,
    holder_node: &Node,
    place: String,
    plugin: String,
) -> Found {
    let config = holder
        .and_then(|h| h.get("pluginConfig"))
        .map(Value::to_string)
        .unwrap_or_default();
    // The module Istio fetches: `url` (oci://, https://, file://).
    let url = holder
        .and_then(|h| h.get("url"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Found {
        place,
        plugin,
        config,
        clusters: None,
        specifier: false,
        no_responses: module_sees_responses(url) == Some(false),
        broken: None,
        istio: true,
        origin: Origin::Node(holder_node.field("pluginConfig")),
    }
}

fn from_bootstrap(value: &Value, node: &Node, place: &str, out: &mut Vec<Found>) {
    let statics = value.get("static_resources");
    let names = items(statics.and_then(|s| s.get("clusters")))
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let cds = value
        .get("dynamic_resources")
        .and_then(|d| d.get("cds_config"))
        .is_some();
    let clusters = Rc::new(Clusters { names, cds });
    let listeners = statics.and_then(|s| s.get("listeners"));
    let listeners_node = node.field("static_resources").field("listeners");
    for (i, listener) in items(listeners).enumerate() {
        let place = join(place, &format!("listeners[{i}]"));
        let node = listeners_node.index(i);
        from_container(listener, &node, &place, false, Some(&clusters), out);
    }
}

/// Adds the plugin config of every wasm filter under `container`. Each is placed by `place`,
/// followed by its path inside the container when `always_path` is set or the container holds
/// several, then by its plugin name.
fn from_container(
    container: &Value,
    node: &Node,
    place: &str,
    always_path: bool,
    clusters: Option<&Rc<Clusters>>,
    out: &mut Vec<Found>,
) {
    let mut configs = Vec::new();
    find_filters(container, node.clone(), String::new(), None, &mut configs);
    let with_path = always_path || configs.len() > 1;
    for (
        path,
        Embedded {
            at,
            plugin,
            config,
            specifier,
            no_responses,
            broken,
        },
    ) in configs
    {
        let mut words = vec![place.to_owned()];
        if with_path && !path.is_empty() {
            words.push(path.clone());
        } else if path.contains("config_discovery.default_config") {
            words.push("default_config".to_owned());
        }
        words.push(plugin.to_owned());
        words.retain(|w| !w.is_empty());
        out.push(Found {
            place: words.join(" "),
            plugin: plugin.to_owned(),
            config: config.to_owned(),
            clusters: clusters.cloned(),
            specifier,
            no_responses,
            broken,
            istio: false,
            origin: Origin::Embedded(at),
        });
    }
}

/// A plugin config embedded in an Envoy typed config.
struct Embedded<'a> {
    /// The node of the configuration's text (a `StringValue`'s `value`).
    at: Node,
    plugin: &'a str,
    config: &'a str,
    specifier: bool,
    no_responses: bool,
    /// Why the config of a meshsplit filter cannot be read (`config` is then empty).
    broken: Option<String>,
}

/// Collects (path, config) for every meshsplit typed config under `value`: wasm HTTP filters,
/// and the native build's dynamic-module HTTP filters and cluster specifiers, each with a
/// `StringValue` configuration. The path leads to the object holding the typed config
/// (`http_filters[0]`). `holder` is the `name` of the object holding `value`, if any (an HTTP
/// filter entry's name).
fn find_filters<'a>(
    value: &'a Value,
    node: Node,
    path: String,
    holder: Option<&str>,
    out: &mut Vec<(String, Embedded<'a>)>,
) {
    match value {
        Value::Object(map) => {
            let embedded = match plugin_config_of(map) {
                Some((wasm, keys)) => Some(string_configuration(wasm, &node.join(&keys), holder)),
                None => native_configuration(map, &node),
            };
            if let Some(embedded) = embedded {
                let holder = path
                    .strip_suffix(".typed_config")
                    .or_else(|| path.strip_suffix("typed_config"))
                    .unwrap_or(&path);
                out.extend(embedded.map(|e| (holder.to_owned(), e)));
                return;
            }
            let name = map.get("name").and_then(Value::as_str);
            for (key, child) in map {
                find_filters(child, node.field(key), join_path(&path, key), name, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_filters(child, node.index(i), format!("{path}[{i}]"), None, out);
            }
        }
        _ => {}
    }
}

/// The native build's typed configs: `DynamicModuleFilter` (`filter_name`, `filter_config`)
/// and `DynamicModuleClusterSpecifier` (`specifier_name`, `specifier_config`) for module
/// `meshsplit`; one whose configuration cannot be read is returned `broken`.
fn native_configuration<'a>(
    map: &'a Map<String, Value>,
    node: &Node,
) -> Option<Option<Embedded<'a>>> {
    let type_url = map.get("@type").and_then(Value::as_str).unwrap_or_default();
    let (name_key, config_key, specifier) = if type_url.ends_with(DYNAMIC_FILTER_TYPE) {
        ("filter_name", "filter_config", false)
    } else if type_url.ends_with(DYNAMIC_SPECIFIER_TYPE) {
        ("specifier_name", "specifier_config", true)
    } else {
        return None;
    };
    let (config, broken) = match map.get("dynamic_module_config").map(module_is_meshsplit) {
        // Module `meshsplit` is this filter: a config it cannot read is broken, not unrelated.
        Some(Some(true)) => match string_value(map.get(config_key)) {
            Ok(config) => (config, None),
            Err(why) => ("", Some(format!("{config_key}: {why}"))),
        },
        Some(Some(false)) | None => return None,
        // A library the path does not name (Envoy Gateway loads whatever path or URL its
        // EnvoyProxy registers): meshsplit's if its configuration is one, a JSON object with a
        // `services` list.
        Some(None) => match string_value(map.get(config_key)) {
            Ok(config) if is_plugin_config_text(config) => (config, None),
            _ => return None,
        },
    };
    Some(Some(Embedded {
        at: node.field(config_key).field("value"),
        plugin: map
            .get(name_key)
            .and_then(Value::as_str)
            .unwrap_or_default(),
        config,
        specifier,
        no_responses: false,
        broken,
    }))
}

/// Whether a `DynamicModuleConfig` loads meshsplit, as Envoy picks the library: `module` (a
/// local `filename`, or a remote `http_uri`, as Envoy Gateway writes it) before `name`
/// (`meshsplit`, found as `libmeshsplit.so` on Envoy's search path). `Some(true)` for
/// `name: meshsplit` or a library file named `libmeshsplit.so` or `libmeshsplit-VERSION-….so`;
/// `Some(false)` for another `name` or another library of those forms; `None` when a `module`'s
/// file name does not say (`/etc/envoy/modules/split.so`).
fn module_is_meshsplit(config: &Value) -> Option<bool> {
    let Some(module) = config.get("module") else {
        return Some(config.get("name").and_then(Value::as_str) == Some("meshsplit"));
    };
    let path = module
        .get("local")
        .and_then(|l| l.get("filename"))
        .or_else(|| {
            module
                .get("remote")
                .and_then(|r| r.get("http_uri"))
                .and_then(|h| h.get("uri"))
        })
        .and_then(Value::as_str)
        .unwrap_or_default();
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let stem = file.strip_suffix(".so")?;
    let versioned = stem
        .strip_prefix("libmeshsplit-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
    (stem == "libmeshsplit" || versioned).then_some(true)
}

/// Whether a filter's configuration text is a plugin config: a JSON object with a `services`
/// list.
fn is_plugin_config_text(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .is_ok_and(|v| v.get("services").is_some_and(Value::is_array))
}

/// The text of a `google.protobuf.StringValue` (empty without `value`), or why there is none.
fn string_value(value: Option<&Value>) -> Result<&str, String> {
    let Some(value) = value else {
        return Err("missing: meshsplit takes its config as a google.protobuf.StringValue".into());
    };
    let type_url = value.get("@type").and_then(Value::as_str);
    if !type_url.is_some_and(|t| t.ends_with(STRING_VALUE_TYPE)) {
        return Err(match type_url {
            Some(t) => format!("@type is {t:?}, not type.googleapis.com/{STRING_VALUE_TYPE}"),
            None => format!("no @type: meshsplit takes a {STRING_VALUE_TYPE}"),
        });
    }
    match value.get("value") {
        None => Ok(""),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!(
            "value is {}, not a string: the StringValue holds the plugin config as JSON text \
             (in YAML, a block scalar: `value: |`)",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Whether a wasm filter is meshsplit by what it says about itself: its module file or URL,
/// its plugin name, root_id or vm_id, or the name of the filter entry holding it mentions
/// meshsplit. (The filter's config does not name its module otherwise.)
fn looks_like_meshsplit(config: &Value, holder: Option<&str>) -> bool {
    let mentions = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|s| s.to_ascii_lowercase().contains("meshsplit"))
    };
    let vm = config.get("vm_config");
    let code = vm.and_then(|v| v.get("code"));
    mentions(config.get("name"))
        || mentions(config.get("root_id"))
        || mentions(vm.and_then(|v| v.get("vm_id")))
        || mentions(
            code.and_then(|c| c.get("local"))
                .and_then(|l| l.get("filename")),
        )
        || mentions(
            code.and_then(|c| c.get("remote"))
                .and_then(|r| r.get("http_uri"))
                .and_then(|u| u.get("uri")),
        )
        || holder.is_some_and(|h| h.to_ascii_lowercase().contains("meshsplit"))
}

/// The `config` (a `PluginConfig`) of the `envoy.extensions.filters.http.wasm.v3.Wasm` message
/// `map` is, directly or as a `TypedStruct`.
/// With it, the keys that lead to it from `map`.
fn plugin_config_of(map: &Map<String, Value>) -> Option<(&Value, Vec<Key>)> {
    let type_url = |key| map.get(key).and_then(Value::as_str).unwrap_or_default();
    let field = |name: &str| Key::Field(name.to_owned());
    if type_url("@type").ends_with(WASM_TYPE) {
        return map.get("config").map(|c| (c, vec![field("config")]));
    }
    if type_url("@type").ends_with("TypedStruct") && type_url("type_url").ends_with(WASM_TYPE) {
        return map
            .get("value")
            .and_then(|v| v.get("config"))
            .map(|c| (c, vec![field("value"), field("config")]));
    }
    None
}

/// The plugin name and configuration text of a wasm filter's `PluginConfig`, if its
/// configuration is a `StringValue`; a filter that looks like meshsplit (`looks_like_meshsplit`)
/// without one is broken. Other wasm filters without one are someone else's: skipped.
fn string_configuration<'a>(
    config: &'a Value,
    node: &Node,
    holder: Option<&str>,
) -> Option<Embedded<'a>> {
    let (text, broken) = match string_value(config.get("configuration")) {
        Ok(text) => (text, None),
        Err(_) if !looks_like_meshsplit(config, holder) => return None,
        Err(why) => ("", Some(format!("configuration: {why}"))),
    };
    Some(Embedded {
        at: node.field("configuration").field("value"),
        plugin: config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        config: text,
        specifier: false,
        no_responses: module_is_lean(config),
        broken,
    })
}

/// Whether a wasm filter's `PluginConfig` loads a module without the response-headers callback
/// (`meshsplit.wasm`), as far as its source tells ([`module_sees_responses`]).
fn module_is_lean(config: &Value) -> bool {
    let code = config.get("vm_config").and_then(|v| v.get("code"));
    let source = code
        .and_then(|c| c.get("local"))
        .and_then(|l| l.get("filename"))
        .or_else(|| {
            code.and_then(|c| c.get("remote"))
                .and_then(|r| r.get("http_uri"))
                .and_then(|u| u.get("uri"))
        })
        .and_then(Value::as_str)
        .unwrap_or_default();
    module_sees_responses(source) == Some(false)
}

/// Whether the module at `source` (a file path, `file://`, `https://` or `oci://` URL) exports
/// the response-headers callback that `assign_cookie` needs. A module file that can be read is
/// judged by its exports (`proxy_on_response_headers`); otherwise by its name as meshsplit
/// ships it: `meshsplit-cookie…` has it; `meshsplit.wasm`, `meshsplit-VERSION.wasm` and an OCI
/// image named `meshsplit` have not. `None`: the source does not tell.
pub fn module_sees_responses(source: &str) -> Option<bool> {
    let local = source.strip_prefix("file://").unwrap_or(source);
    if !local.contains("://") && !local.is_empty() {
        if let Ok(bytes) = std::fs::read(local) {
            if let Some(exports) = wasm_exports(&bytes) {
                return Some(exports.iter().any(|e| e == "proxy_on_response_headers"));
            }
        }
    }
    let path = source
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let last = path.rsplit('/').next().unwrap_or_default();
    // An image reference's tag or digest is not part of its name.
    let name = last
        .split(['@', ':'])
        .next()
        .unwrap_or_default()
        .trim_end_matches(".wasm");
    if name.starts_with("meshsplit-cookie") {
        return Some(true);
    }
    let version = name
        .strip_prefix("meshsplit")
        .map(|rest| rest.trim_start_matches('-'));
    match version {
        Some(rest) if rest.chars().all(|c| c.is_ascii_digit() || c == '.') => Some(false),
        _ => None,
    }
}

/// The names a wasm module exports (its export section); `None` if it is not a wasm module.
fn wasm_exports(bytes: &[u8]) -> Option<Vec<String>> {
    fn leb(bytes: &[u8], pos: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(*pos)?;
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }
    if bytes.get(..4)? != b"\0asm" {
        return None;
    }
    let mut pos = 8;
    while pos < bytes.len() {
        let section = *bytes.get(pos)?;
        pos += 1;
        let size = usize::try_from(leb(bytes, &mut pos)?).ok()?;
        let end = pos.checked_add(size)?;
        if section == 7 {
            let mut at = pos;
            let count = leb(bytes, &mut at)?;
            let mut names = Vec::new();
            for _ in 0..count {
                let length = usize::try_from(leb(bytes, &mut at)?).ok()?;
                let name = bytes.get(at..at.checked_add(length)?)?;
                names.push(String::from_utf8_lossy(name).into_owned());
                at += length + 1; // the kind byte
                leb(bytes, &mut at)?; // the index
            }
            return Some(names);
        }
        pos = end;
    }
    Some(Vec::new())
}

/// The elements of `value` if it is a list.
fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

fn join(place: &str, more: &str) -> String {
    if place.is_empty() {
        more.to_owned()
    } else {
        format!("{place} {more}")
    }
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse;
    use serde_json::json;

    fn found(text: &str) -> Vec<Found> {
        extract(&parse(text).unwrap())
    }

    fn places(text: &str) -> Vec<String> {
        found(text).into_iter().map(|f| f.place).collect()
    }

    fn wasm(plugin: &str, configuration: &str) -> Value {
        json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": plugin,
                "root_id": "meshsplit",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": "m.wasm"}}},
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        })
    }

    fn listener(http_filters: Value) -> Value {
        json!({"name": "l", "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "http_filters": http_filters,
            },
        }]}]})
    }

    fn wasm_entry(plugin: &str, configuration: &str) -> Value {
        json!({"name": "envoy.filters.http.wasm", "typed_config": wasm(plugin, configuration)})
    }

    #[test]
    fn plugin_config_file_is_checked_with_its_exact_text() {
        let text = "{\"services\": [],\n \"x\": 1}";
        let f = found(text);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].place.as_str(), f[0].config.as_str()), ("", text));
        assert!(f[0].clusters.is_none());
    }

    #[test]
    fn plugin_config_in_yaml_becomes_json_text() {
        let f = found("services:\n- name: a\n");
        assert_eq!(f[0].config, r#"{"services":[{"name":"a"}]}"#);
    }

    #[test]
    fn bootstrap_gives_each_listeners_config_and_the_static_clusters() {
        let bootstrap = json!({
            "static_resources": {
                "listeners": [
                    listener(json!([wasm_entry("one", "A"), {"name": "envoy.filters.http.router"}])),
                    listener(json!([wasm_entry("two", "B")])),
                ],
                "clusters": [{"name": "c1"}, {"name": "c2"}],
            },
        });
        let f = found(&bootstrap.to_string());
        let got: Vec<_> = f
            .iter()
            .map(|f| (f.place.as_str(), f.plugin.as_str(), f.config.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("listeners[0] one", "one", "A"),
                ("listeners[1] two", "two", "B")
            ]
        );
        let clusters = f[0].clusters.as_deref().unwrap();
        assert_eq!(
            clusters.names,
            BTreeSet::from(["c1".to_owned(), "c2".to_owned()])
        );
        assert!(!clusters.cds);
    }

    #[test]
    fn bootstrap_with_cds_says_so() {
        let bootstrap = json!({
            "static_resources": {"listeners": [listener(json!([wasm_entry("m", "A")]))]},
            "dynamic_resources": {"cds_config": {"ads": {}}},
        });
        let f = found(&bootstrap.to_string());
        assert!(f[0].clusters.as_deref().unwrap().cds);
    }

    #[test]
    fn several_configs_in_one_listener_are_told_apart_by_path() {
        let bootstrap = json!({"static_resources": {"listeners": [
            listener(json!([wasm_entry("m", "A"), wasm_entry("m", "B")])),
        ]}});
        assert_eq!(
            places(&bootstrap.to_string()),
            [
                "listeners[0] filter_chains[0].filters[0].typed_config.http_filters[0] m",
                "listeners[0] filter_chains[0].filters[0].typed_config.http_filters[1] m",
            ]
        );
    }

    #[test]
    fn ecds_default_config_in_a_bootstrap_is_found() {
        let bootstrap = json!({"static_resources": {"listeners": [listener(json!([{
            "name": "meshsplit",
            "config_discovery": {
                "config_source": {"path_config_source": {"path": "/x/meshsplit.json"}},
                "default_config": wasm("meshsplit", "A"),
                "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
            },
        }]))]}});
        let f = found(&bootstrap.to_string());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].place.as_str(), f[0].config.as_str()),
            ("listeners[0] default_config meshsplit", "A")
        );
    }

    #[test]
    fn ecds_resource_file_is_found() {
        let response = json!({"version_info": "2", "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "meshsplit",
            "typed_config": wasm("meshsplit", "A"),
        }]});
        let f = found(&response.to_string());
        assert_eq!(
            (f[0].place.as_str(), f[0].config.as_str()),
            ("resources[0] meshsplit", "A")
        );
        assert!(f[0].clusters.is_none());
    }

    #[test]
    fn envoy_filter_patches_are_found() {
        let manifest = json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": {"name": "meshsplit", "namespace": "default"},
            "spec": {"configPatches": [
                {"applyTo": "HTTP_ROUTE", "patch": {"operation": "MERGE", "value": {"route": {}}}},
                {"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE",
                    "value": wasm_entry("meshsplit", "A")}},
            ]},
        });
        let f = found(&serde_norway::to_string(&manifest).unwrap());
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].place,
            "EnvoyFilter default/meshsplit configPatches[1] meshsplit"
        );
        assert_eq!(f[0].config, "A");
    }

    #[test]
    fn wasm_filter_inside_a_typed_struct_is_found() {
        let manifest = json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": {"name": "ts"},
            "spec": {"configPatches": [{"patch": {"value": {"name": "w", "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "value": {"config": wasm("m", "A")["config"].clone()},
            }}}}]},
        });
        let f = found(&manifest.to_string());
        assert_eq!(
            (f[0].place.as_str(), f[0].config.as_str()),
            ("EnvoyFilter ts configPatches[0] m", "A")
        );
    }

    #[test]
    fn native_filter_and_cluster_specifier_configs_are_found() {
        let native = |kind: &str, name: &str, config: &str| {
            json!({"@type": format!("type.googleapis.com/{kind}"),
                   "dynamic_module_config": {"name": "meshsplit"},
                   name: "meshsplit",
                   config: {"@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": r#"{"services": []}"#}})
        };
        let text = json!({"static_resources": {"listeners": [
            listener(json!([{"name": "f", "typed_config":
                native(DYNAMIC_FILTER_TYPE, "filter_name", "filter_config")}])),
            {"filter_chains": [{"filters": [{"typed_config": {"route_config": {"virtual_hosts": [
                {"routes": [{"route": {"inline_cluster_specifier_plugin": {"extension": {
                    "typed_config": native(DYNAMIC_SPECIFIER_TYPE, "specifier_name",
                                           "specifier_config")}}}}]}]}}}]}]}]}})
        .to_string();
        let found = found(&text);
        assert_eq!(found.len(), 2);
        assert!(!found[0].specifier && found[1].specifier);
        assert!(found.iter().all(|f| f.config == r#"{"services": []}"#));
    }

    #[test]
    fn a_dynamic_module_is_meshsplit_by_its_library_or_else_by_its_config() {
        let filter = |module: Value, config: &str| {
            json!({"static_resources": {"listeners": [listener(json!([{"name": "f",
                "typed_config": {"@type": format!("type.googleapis.com/{DYNAMIC_FILTER_TYPE}"),
                    "dynamic_module_config": module, "filter_name": "meshsplit",
                    "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": config}}}]))]}})
            .to_string()
        };
        let plugin = r#"{"services": []}"#;
        let other = r#"{"rules": []}"#;
        let local = |path: &str| json!({"module": {"local": {"filename": path}}});
        let remote = |uri: &str| json!({"module": {"remote": {"http_uri": {"uri": uri}}}});
        // Named by its library: found, and a config it cannot read is broken.
        for module in [
            json!({"name": "meshsplit"}),
            local("/usr/lib/envoy/libmeshsplit.so"),
            local("/dist/libmeshsplit-0.2.0-linux-x86_64.so"),
            remote("https://example.com/m/libmeshsplit.so?v=2"),
        ] {
            assert_eq!(found(&filter(module.clone(), plugin)).len(), 1, "{module}");
            let broken = found(&filter(module.clone(), "not json"));
            assert_eq!(broken.len(), 1, "{module}");
        }
        // A library whose name does not say: found by a plugin config only.
        for module in [
            local("/etc/envoy/modules/split.so"),
            remote("https://x/download?f=1"),
        ] {
            assert_eq!(found(&filter(module.clone(), plugin)).len(), 1, "{module}");
            assert!(found(&filter(module.clone(), other)).is_empty(), "{module}");
            assert!(
                found(&filter(module.clone(), "not json")).is_empty(),
                "{module}"
            );
        }
        // Another module by name: not meshsplit, whatever its config.
        assert!(found(&filter(json!({"name": "composer"}), plugin)).is_empty());
        // `module` is what Envoy loads, whatever `name` says; a library whose name only has
        // meshsplit in it (`libmeshsplit-authz.so`) does not say either: another config is
        // another module's.
        for module in [
            json!({"name": "meshsplit", "module": {"local": {"filename": "/x/libcomposer.so"}}}),
            local("/opt/libmeshsplit-authz.so"),
        ] {
            assert!(found(&filter(module.clone(), other)).is_empty(), "{module}");
            assert!(
                found(&filter(module.clone(), "not json")).is_empty(),
                "{module}"
            );
        }
    }

    #[test]
    fn a_cluster_specifier_config_is_refused_what_the_specifier_cannot_do() {
        let config = r#"{"services": [{"name": "s", "upstreams": [
            {"name": "u", "cluster": "c", "authority": "a.internal", "weight": 1}]}]}"#;
        let mut f = Found {
            place: String::new(),
            plugin: "meshsplit".to_owned(),
            config: config.to_owned(),
            clusters: None,
            specifier: false,
            no_responses: false,
            broken: None,
            istio: false,
            origin: Origin::Text,
        };
        assert!(f.plan().is_ok());
        f.specifier = true;
        let err = f.plan().unwrap_err();
        assert_eq!(err.path, "services[0].upstreams[0].authority");
    }

    #[test]
    fn assign_cookie_is_refused_by_meshsplit_wasm_and_the_specifier_not_meshsplit_cookie_wasm() {
        let plugin = r#"{"services": [{"name": "web", "strategy": "sticky",
            "hash_on": {"cookie": "mesh-web"}, "assign_cookie": {},
            "upstreams": [{"name": "u", "cluster": "c", "weight": 1}]}]}"#;
        let filter = |module: &str| {
            json!({"name": "envoy.filters.http.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"name": "meshsplit", "vm_config": {"code": {"local": {"filename": module}}},
                           "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                             "value": plugin}}}})
        };
        let found = |module: &str| {
            let document = Document::detached(json!({"http_filters": [filter(module)]}));
            extract(std::slice::from_ref(&document)).remove(0)
        };
        let err = found("/etc/envoy/meshsplit.wasm").plan().unwrap_err();
        assert_eq!(err.path, "services[0].assign_cookie");
        assert!(err.message.contains("load meshsplit-cookie.wasm"), "{err}");
        assert!(found("/etc/envoy/meshsplit-cookie.wasm").plan().is_ok());
        let mut specifier = found("/etc/envoy/meshsplit-cookie.wasm");
        specifier.specifier = true;
        assert!(specifier
            .plan()
            .unwrap_err()
            .message
            .contains("cannot touch"));
    }

    #[test]
    fn wasm_plugin_config_object_becomes_json_text() {
        let f = found(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
             metadata: {name: split, namespace: shop}\n\
             spec:\n  url: oci://example/meshsplit:1\n  pluginConfig:\n    services:\n    - name: a\n",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].place, "WasmPlugin shop/split");
        assert_eq!(f[0].plugin, "shop.split");
        assert_eq!(f[0].config, r#"{"services":[{"name":"a"}]}"#);
    }

    #[test]
    fn wasm_plugin_without_plugin_config_is_an_empty_config() {
        let f = found("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p}\nspec: {url: file:///m.wasm}\n");
        assert_eq!(
            (f[0].place.as_str(), f[0].config.as_str()),
            ("WasmPlugin p", "")
        );
    }

    #[test]
    fn traffic_extension_wasm_plugin_config_is_found_and_lua_ignored() {
        let text = "apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\n\
                    metadata: {name: w}\nspec:\n  wasm:\n    url: oci://x\n    pluginConfig: {services: []}\n\
                    ---\n\
                    apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\n\
                    metadata: {name: l}\nspec:\n  lua: {inlineCode: x}\n";
        let f = found(text);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].place.as_str(), f[0].config.as_str()),
            ("TrafficExtension w", r#"{"services":[]}"#)
        );
    }

    #[test]
    fn multi_document_yaml_numbers_documents_without_a_name() {
        let text = "services: []\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
                    apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p}\n\
                    spec: {pluginConfig: {services: []}}\n---\ncluster_header: x\n";
        assert_eq!(places(text), ["document 1", "WasmPlugin p", "document 4"]);
    }

    #[test]
    fn kubernetes_list_items_are_searched() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
             "metadata": {"name": "p"}, "spec": {"pluginConfig": {"services": []}}},
        ]});
        assert_eq!(places(&list.to_string()), ["WasmPlugin p"]);
    }

    #[test]
    fn wasm_filters_without_a_string_configuration_are_not_meshsplit() {
        let mut structured = wasm("other", "");
        structured["config"]["root_id"] = json!("other");
        structured["config"]["configuration"] =
            json!({"@type": "type.googleapis.com/google.protobuf.Struct", "value": {"a": 1}});
        let mut absent = structured.clone();
        absent["config"]
            .as_object_mut()
            .unwrap()
            .remove("configuration");
        let bootstrap = json!({"static_resources": {"listeners": [listener(json!([
            {"name": "a", "typed_config": structured},
            {"name": "b", "typed_config": absent},
            {"name": "lua", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}},
        ]))]}});
        assert!(found(&bootstrap.to_string()).is_empty());
    }

    #[test]
    fn a_meshsplit_filter_whose_config_cannot_be_read_is_broken_not_unrelated() {
        let configuration = |c: Value| {
            let mut filter = wasm("other", "");
            filter["config"]["root_id"] = json!("other");
            filter["config"]["configuration"] = c;
            filter
        };
        let string = "type.googleapis.com/google.protobuf.StringValue";
        let map = configuration(json!({"@type": string, "value": {"services": []}}));
        let misspelled = configuration(
            json!({"@type": "type.googleapis.com/google.protobuf.Stringvalue", "value": "{}"}),
        );
        let mut by_module = misspelled.clone();
        by_module["config"]["vm_config"]["code"]["local"]["filename"] =
            json!("/etc/envoy/meshsplit.wasm");
        let bootstrap = json!({"static_resources": {"listeners": [listener(json!([
            {"name": "meshsplit", "typed_config": map},
            {"name": "split", "typed_config": by_module},
            {"name": "other", "typed_config": misspelled},
        ]))]}});
        let found = found(&bootstrap.to_string());
        let broken: Vec<_> = found.iter().map(|f| f.broken.as_deref().unwrap()).collect();
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(
            broken[0].starts_with("configuration: value is a map, not a string"),
            "{broken:?}"
        );
        assert!(broken[1].contains("@type is \"type.googleapis.com/google.protobuf.Stringvalue\""));
        assert!(found[0].plan().is_err());
    }

    #[test]
    fn string_value_without_value_is_the_empty_string() {
        let mut filter = wasm("m", "");
        filter["config"]["configuration"]
            .as_object_mut()
            .unwrap()
            .remove("value");
        let bootstrap = json!({"static_resources": {"listeners": [listener(json!([{"name": "w", "typed_config": filter}]))]}});
        assert_eq!(found(&bootstrap.to_string())[0].config, "");
    }

    #[test]
    fn other_documents_are_searched_everywhere_and_placed_by_path() {
        // An LDS-style Listener resource on its own.
        let text = listener(json!([wasm_entry("m", "A")])).to_string();
        assert_eq!(
            places(&text),
            ["filter_chains[0].filters[0].typed_config.http_filters[0] m"]
        );
    }

    #[test]
    fn plugin_config_without_a_services_list_is_still_one() {
        assert_eq!(
            found("{\"servics\": [], \"cluster_header\": \"x\"}").len(),
            1
        );
    }

    #[test]
    fn docker_compose_services_are_not_a_plugin_config() {
        assert!(found("services:\n  web: {image: envoyproxy/envoy}\n").is_empty());
    }

    #[test]
    fn documents_without_configs_give_nothing() {
        assert!(found("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r}\n").is_empty());
        assert!(found("{\"admin\": {}}").is_empty());
    }
}

#[cfg(test)]
mod module_tests {
    use super::module_sees_responses;

    #[test]
    fn a_modules_name_tells_whether_it_sees_responses() {
        for (source, sees) in [
            ("/etc/envoy/meshsplit.wasm", Some(false)),
            ("meshsplit-0.2.0.wasm", Some(false)),
            ("oci://REGISTRY/meshsplit:TAG", Some(false)),
            (
                "oci://registry.example/team/meshsplit@sha256:abc",
                Some(false),
            ),
            (
                "https://example.com/meshsplit/0.2.0/meshsplit.wasm?x=1",
                Some(false),
            ),
            (
                "file:///var/local/lib/wasm/meshsplit-cookie.wasm",
                Some(true),
            ),
            ("meshsplit-cookie-0.2.0.wasm", Some(true)),
            ("oci://REGISTRY/meshsplit-cookie:TAG", Some(true)),
            ("oci://REGISTRY/splitter:TAG", None),
            ("", None),
        ] {
            assert_eq!(module_sees_responses(source), sees, "{source}");
        }
    }

    #[test]
    fn a_module_file_is_judged_by_its_exports() {
        let dir = std::env::temp_dir().join(format!("meshsplit-exports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A module whose name says nothing: an export section with one function export each.
        let module = |export: &str| {
            let mut bytes = b"\0asm\x01\0\0\0".to_vec();
            let mut section = vec![1u8, export.len() as u8];
            section.extend_from_slice(export.as_bytes());
            section.extend_from_slice(&[0, 0]);
            bytes.push(7);
            bytes.push(section.len() as u8);
            bytes.extend(section);
            bytes
        };
        let with = dir.join("custom-a.wasm");
        let without = dir.join("custom-b.wasm");
        std::fs::write(&with, module("proxy_on_response_headers")).unwrap();
        std::fs::write(&without, module("proxy_on_request_headers")).unwrap();
        assert_eq!(module_sees_responses(with.to_str().unwrap()), Some(true));
        assert_eq!(
            module_sees_responses(&format!("file://{}", without.display())),
            Some(false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
