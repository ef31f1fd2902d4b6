//! `meshsplit render`: from a plugin config, the manifests that route its split with a control
//! plane's own, supported APIs, no EnvoyFilter: the filter writes the chosen upstream's name
//! into the upstream header (`upstream_header`), and a VirtualService or an HTTPRoute matches
//! it, one route per upstream, then a default route that is itself the weighted split (so a
//! request the filter did not tag, from a pod without it or while its module is not loaded,
//! still splits by the config's weights). Every route removes the header before the upstream.
//!
//! | target | module | routes | per version |
//! |---|---|---|---|
//! | `sidecar` | WasmPlugin, client side | VirtualService | DestinationRule subsets |
//! | `sidecar-httproute` | WasmPlugin, client side | HTTPRoute, parent the Service (GAMMA) | a Service |
//! | `ambient` | WasmPlugin on the waypoint (`targetRefs` the Service) | HTTPRoute, parent the Service | a Service |
//! | `envoy-gateway` | EnvoyExtensionPolicy on the HTTPRoute | HTTPRoute, parent the Gateway | a Service |
//!
//! With `--native` (Envoy Gateway only), the module is the native build, an Envoy dynamic
//! module: the EnvoyExtensionPolicy's `dynamicModule` entry instead of `wasm`, and an
//! EnvoyProxy that registers the module, since Envoy Gateway loads only the modules an
//! EnvoyProxy names (`internal/gatewayapi/envoyextensionpolicy.go`, `buildDynamicModules`).

use std::path::PathBuf;

use meshsplit::plan::{Plan, ServiceFrom, DEFAULT_UPSTREAM_HEADER};
use serde_json::{json, Map, Value};

use crate::load::{compile, find, pick, Failure};
use crate::output::{say, say_err};
use crate::Status;

/// Print the Kubernetes manifests that route a config's split with Istio's or Envoy Gateway's
/// own routing APIs (no EnvoyFilter): the module's resource with the config, and per service
/// the routes that match the upstream header.
///
/// Examples:
///   meshsplit render --target sidecar --module oci://REGISTRY/meshsplit:0.2.0 meshsplit.json
///   meshsplit render --target envoy-gateway --gateway eg --module https://example.com/meshsplit.wasm --sha256 HEX meshsplit.json
///   meshsplit render --target envoy-gateway --native --module file:///usr/lib/envoy/libmeshsplit.so meshsplit.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The plugin config, or a file holding it; `-` reads standard input.
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// Which control plane and mode the manifests are for.
    #[arg(long, value_enum)]
    target: Target,
    /// The namespace of the services, and of the manifests.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The services' port.
    #[arg(long, default_value_t = 9080)]
    port: u16,
    /// Where the control plane fetches the module: `oci://…`, `https://…` (give --sha256) or,
    /// for Istio, `file://…`. With --native: the library on the proxy's filesystem,
    /// `file:///PATH`, or `https://…` with --sha256, which Envoy fetches.
    #[arg(long, value_name = "URL")]
    module: String,
    /// The sha256 the fetched module must have (for an `oci://` module, its image digest).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// envoy-gateway: the Gateway (in --namespace) the HTTPRoutes attach to.
    #[arg(long, default_value = "eg")]
    gateway: String,
    /// The pod label that tells a service's versions apart; its value is the upstream's name.
    #[arg(long, default_value = "version")]
    version_label: String,
    /// The pod label that names the service (per-version Services select on it too).
    #[arg(long, default_value = "app")]
    app_label: String,
    /// ambient: the waypoint the per-version Services use (`istio.io/use-waypoint`), so that
    /// the waypoint sends to them itself.
    #[arg(long, default_value = "waypoint")]
    waypoint: String,
    /// Which config, when the file holds several (in the order `meshsplit check` lists them).
    #[arg(long, value_name = "N")]
    config_index: Option<usize>,
    /// envoy-gateway: run the native build (the Envoy dynamic module libmeshsplit.so) instead of
    /// the wasm module: the EnvoyExtensionPolicy's `dynamicModule`, and an EnvoyProxy that
    /// registers the module, to be attached to the Gateway.
    #[arg(long)]
    native: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Istio sidecars: a WasmPlugin on the client side, a VirtualService and DestinationRule
    /// subsets.
    Sidecar,
    /// Istio sidecars: a WasmPlugin on the client side, an HTTPRoute whose parent is the Service
    /// (Gateway API for the mesh), one Service per version.
    SidecarHttproute,
    /// Istio ambient: a WasmPlugin attached to the service's waypoint, an HTTPRoute, one Service
    /// per version.
    Ambient,
    /// Envoy Gateway: an EnvoyExtensionPolicy on the HTTPRoute, the HTTPRoute on the Gateway,
    /// one Service per version.
    EnvoyGateway,
}

pub fn run(args: &Args) -> Status {
    match render(args) {
        Ok((text, notes)) => {
            for note in notes {
                say_err!("note: {note}");
            }
            say!("{}", text.trim_end());
            Status::Ok
        }
        Err(failure) => failure.report(),
    }
}

/// One upstream as the routes see it.
struct Version {
    name: String,
    weight: u32,
}

/// One service as the routes see it.
struct Routed {
    name: String,
    hosts: Vec<String>,
    versions: Vec<Version>,
}

/// The manifests, and notes on what render changed in the config.
fn render(args: &Args) -> Result<(String, Vec<String>), Failure> {
    let name = args.config.display().to_string();
    let found = pick(&name, find(&args.config)?, args.config_index)?;
    let loaded = compile(&name, &found)?;
    let mut raw: Value =
        serde_json::from_str(&loaded.text).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
    check_label("--namespace", &args.namespace)?;
    if args.target == Target::EnvoyGateway {
        check_label("--gateway", &args.gateway)?;
    }
    if args.target == Target::Ambient {
        check_label("--waypoint", &args.waypoint)?;
    }
    if args.native && args.target != Target::EnvoyGateway {
        return Err(Failure::usage(
            "--native: only Envoy Gateway loads a dynamic module from its own API \
             (EnvoyExtensionPolicy dynamicModule); Istio's WasmPlugin runs wasm modules",
        ));
    }
    if args.port == 0 {
        return Err(Failure::usage(
            "--port 0: expected the services' port, 1 to 65535",
        ));
    }
    check_label_key("--version-label", &args.version_label)?;
    check_label_key("--app-label", &args.app_label)?;
    if loaded.plan.service_from != ServiceFrom::Authority {
        // The routes match the host: with another key a client could name one service in the
        // key and reach a version of another (names such as v2 repeat across services).
        return Err(Failure::usage(
            "service_from: render writes routes per host, so the service must be chosen by the \
             host: use \"service_from\": \"authority\" (the default)",
        ));
    }
    let services = routed_services(&loaded.plan, args)?;
    let header = loaded
        .plan
        .headers
        .upstream
        .clone()
        .unwrap_or_else(|| DEFAULT_UPSTREAM_HEADER.to_owned());
    let notes = plugin_config(&mut raw, args, &services, &header);
    // What the module will get must be a config it accepts (render adds hosts, which could be
    // another service's).
    if let Err(e) = Plan::from_json(raw.to_string().as_bytes()) {
        return Err(Failure::usage(format!(
            "the rendered plugin config is invalid: {e} (render adds the names of each \
             service's Kubernetes Service to its hosts)"
        )));
    }
    // (a comment above the document, the document)
    let mut docs: Vec<(String, Value)> = Vec::new();
    docs.push((String::new(), module_resource(args, &services, raw)?));
    if args.native {
        docs.push(envoy_proxy(args, native_source(args)?));
    }
    for service in &services {
        match args.target {
            Target::Sidecar => {
                docs.push((String::new(), destination_rule(args, service)));
                docs.push((String::new(), virtual_service(args, service, &header)));
            }
            Target::SidecarHttproute | Target::Ambient | Target::EnvoyGateway => {
                for version in &service.versions {
                    docs.push((String::new(), version_service(args, service, version)));
                }
                docs.push((String::new(), http_route(args, service, &header)));
            }
        }
    }
    let mut text = String::from(HEADER);
    for (comment, doc) in docs {
        text.push_str("---\n");
        text.push_str(&comment);
        yaml(&doc, 0, &mut text);
    }
    Ok((text, notes))
}

const HEADER: &str = "\
# Generated by `meshsplit render`: the filter writes the chosen upstream's name into the upstream
# header and these routes match it; untagged requests take the default route, which splits by the
# config's weights. Every route removes the header before the upstream sees it.
";

/// The services with names Kubernetes takes (DNS labels: a Service is named after each
/// service and version).
fn routed_services(plan: &Plan, args: &Args) -> Result<Vec<Routed>, Failure> {
    let mut out = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new(); // (Kubernetes name, what it names)
    let mesh = args.target != Target::EnvoyGateway;
    for (s, service) in plan.services.iter().enumerate() {
        check_label(&format!("services[{s}].name"), &service.name)?;
        names.push((service.name.clone(), format!("services[{s}]")));
        if args.target != Target::Sidecar && service.upstreams.len() + 1 > MAX_RULES {
            return Err(Failure::usage(format!(
                "services[{s}].upstreams: an HTTPRoute holds at most {MAX_RULES} rules, and \
                 {} upstreams need {} (one per upstream and the default)",
                service.upstreams.len(),
                service.upstreams.len() + 1
            )));
        }
        let mut versions = Vec::new();
        for (u, upstream) in service.upstreams.iter().enumerate() {
            let field = format!("services[{s}].upstreams[{u}].name");
            check_label(&field, &upstream.name)?;
            let combined = format!("{}-{}", service.name, upstream.name);
            if combined.len() > 63 {
                return Err(Failure::usage(format!(
                    "{field}: the version's Service would be named {combined:?}, longer than \
                     Kubernetes' 63 characters; shorten the names"
                )));
            }
            if args.target != Target::Sidecar {
                names.push((combined, field));
            }
            versions.push(Version {
                name: upstream.name.clone(),
                weight: upstream.weight,
            });
        }
        let hosts = plan.hosts_of(s);
        if mesh {
            // The routes are the Kubernetes Service's named after the service: a host of
            // another Service would be split by the filter and routed by that Service's routes.
            let ns = &args.namespace;
            let own = [
                service.name.clone(),
                format!("{}.{ns}", service.name),
                format!("{}.{ns}.svc", service.name),
                fqdn(args, &service.name),
            ];
            if let Some(other) = hosts
                .iter()
                .find(|h| !own.iter().any(|o| o == without_port(h)))
            {
                return Err(Failure::usage(format!(
                    "services[{s}].hosts: {other:?} is not a name of the Kubernetes Service \
                     {:?} in namespace {ns:?}, whose routes render writes (a service is \
                     named after its Kubernetes Service)",
                    service.name
                )));
            }
        }
        out.push(Routed {
            name: service.name.clone(),
            hosts,
            versions,
        });
    }
    names.sort();
    if let Some([(name, first), (_, second)]) = names
        .windows(2)
        .find(|w| w.first().map(|a| &a.0) == w.get(1).map(|b| &b.0))
    {
        return Err(Failure::usage(format!(
            "{second}: the Service {name:?} it needs is also the one of {first}; rename one"
        )));
    }
    Ok(out)
}

/// A host without its `:port` (an IPv6 literal in brackets keeps its colons).
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && !name.contains(':')
                && port.chars().all(|c| c.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

/// The rules an HTTPRoute may have (the Gateway API's CRD).
const MAX_RULES: usize = 16;

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn check_label_key(flag: &str, key: &str) -> Result<(), Failure> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && key.matches('/').count() <= 1;
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{flag} {key:?}: not a Kubernetes label key"
        )))
    }
}

/// A DNS-1035 label, as Kubernetes requires of a Service name and Istio of a subset name.
fn check_label(field: &str, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{field}: {name:?} cannot name a Kubernetes Service or subset: use lowercase letters, \
             digits and '-', starting with a letter, at most 63 characters"
        )))
    }
}

fn fqdn(args: &Args, name: &str) -> String {
    format!("{name}.{}.svc.cluster.local", args.namespace)
}

/// The Envoy cluster the routes send `version` of `service` to, as the control plane names it:
/// what `meshsplit status` and `check` look for.
fn cluster(args: &Args, service: &Routed, index: usize, version: &Version) -> String {
    let port = args.port;
    match args.target {
        // pilot/pkg/model/service.go BuildSubsetKey
        Target::Sidecar => format!(
            "outbound|{port}|{}|{}",
            version.name,
            fqdn(args, &service.name)
        ),
        Target::SidecarHttproute => format!(
            "outbound|{port}||{}",
            fqdn(args, &format!("{}-{}", service.name, version.name))
        ),
        // pilot/pkg/networking/core/waypoint.go getWaypointDestinationCluster
        Target::Ambient => format!(
            "inbound-vip|{port}|http|{}",
            fqdn(args, &format!("{}-{}", service.name, version.name))
        ),
        // internal/xds/translator: one cluster per HTTPRoute rule, httproute/NS/NAME/rule/I
        Target::EnvoyGateway => {
            format!("httproute/{}/{}/rule/{index}", args.namespace, service.name)
        }
    }
}

/// The plugin config the module gets: the upstream header instead of the cluster header (no
/// route reads it, and it would reach the upstream), each upstream's `cluster` the one its
/// route sends to, the names a sidecar or waypoint sees as hosts, and no `authority` rewrite
/// (the filter would change the host before the route is matched again, so the request would
/// leave the service's virtual host). Returns notes on what changed.
fn plugin_config(raw: &mut Value, args: &Args, services: &[Routed], header: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(config) = raw.as_object_mut() else {
        return notes;
    };
    config.shift_remove("$schema");
    if config.shift_remove("cluster_header").is_some() {
        notes.push("cluster_header left out: these routes match the upstream header".to_owned());
    }
    config.shift_remove("upstream_header");
    // First, where a reader looks for what the routes match.
    let rest = std::mem::take(config);
    config.insert("upstream_header".into(), json!(header));
    config.extend(rest);
    let Some(list) = config.get_mut("services").and_then(Value::as_array_mut) else {
        return notes;
    };
    for (s, (raw_service, service)) in list.iter_mut().zip(services).enumerate() {
        let Some(raw_service) = raw_service.as_object_mut() else {
            continue;
        };
        if args.target != Target::EnvoyGateway {
            // The names a sidecar's or a waypoint's virtual host answers to (without a port,
            // which the filter ignores).
            let mut hosts = service.hosts.clone();
            let ns = &args.namespace;
            for name in [
                service.name.clone(),
                format!("{}.{ns}", service.name),
                format!("{}.{ns}.svc", service.name),
                fqdn(args, &service.name),
            ] {
                if !hosts.contains(&name) {
                    hosts.push(name);
                }
            }
            raw_service.insert("hosts".into(), json!(hosts));
        }
        let Some(upstreams) = raw_service
            .get_mut("upstreams")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for (u, (raw_upstream, version)) in upstreams.iter_mut().zip(&service.versions).enumerate()
        {
            let Some(raw_upstream) = raw_upstream.as_object_mut() else {
                continue;
            };
            raw_upstream.insert("cluster".into(), json!(cluster(args, service, u, version)));
            if raw_upstream.shift_remove("authority").is_some() {
                notes.push(format!(
                    "services[{s}].upstreams[{u}].authority left out: a filter that rewrites the \
                     host before the route is matched again sends the request out of the \
                     service's routes; rewrite it in the route if the upstream needs it"
                ));
            }
        }
    }
    notes
}

/// `value` as block YAML at `indent`. Every string a YAML parser could read as anything but that
/// string (a number, a boolean, a date such as a rollout's `start`, or one with special
/// characters) is written as a JSON string, which YAML reads as the same string.
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&pad);
                out.push_str(&scalar_text(key));
                out.push(':');
                nested(item, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the rest under it.
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(inner.trim_start());
                    }
                    _ => nested(item, indent, out),
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// After a key or a dash: an empty collection or a scalar on the same line, else the block on
/// the next lines (a list under a key at the key's indentation, as Kubernetes manifests do).
fn nested(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            yaml(item, indent, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(item));
            out.push('\n');
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::String(text) => scalar_text(text),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        // Written out without an exponent, which YAML 1.1 parsers would read as a string.
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.is_finite() => {
                let text = format!("{f}");
                if text.contains('.') {
                    text
                } else {
                    format!("{text}.0")
                }
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A string plain when YAML reads it back as this string, else JSON-quoted.
fn scalar_text(text: &str) -> String {
    const WORDS: [&str; 12] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "=", "<<",
    ];
    let plain = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:|~-+@".contains(c))
        && !text.ends_with(':')
        && !text.contains(": ")
        && !WORDS.contains(&text.to_ascii_lowercase().as_str());
    if plain {
        text.to_owned()
    } else {
        Value::String(text.to_owned()).to_string()
    }
}

fn metadata(args: &Args, name: &str) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(args.namespace));
    meta
}

/// The WasmPlugin (Istio) or EnvoyExtensionPolicy (Envoy Gateway) that runs the module with
/// `config`.
fn module_resource(args: &Args, services: &[Routed], config: Value) -> Result<Value, Failure> {
    let https = args.module.starts_with("https://") || args.module.starts_with("http://");
    if https && args.sha256.is_none() {
        return Err(Failure::usage(
            "--sha256 is required with an http(s) --module: the proxy checks what it fetched",
        ));
    }
    if let Some(sha) = &args.sha256 {
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Failure::usage(format!(
                "--sha256 {sha:?}: expected 64 hexadecimal digits"
            )));
        }
    }
    if args.target == Target::EnvoyGateway {
        let refs: Vec<Value> = services
            .iter()
            .map(|s| {
                json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": s.name})
            })
            .collect();
        // The policy targets the whole HTTPRoute: Envoy creates a filter that is disabled by
        // default only when the route matched before the filter runs enables it, and that is
        // the rule for untagged requests (for wasm and dynamic modules alike,
        // `internal/xds/translator/wasm.go`, `dynamicmodule.go`).
        let policy = |list: &str, module: Value| {
            json!({
                "apiVersion": "gateway.envoyproxy.io/v1alpha1",
                "kind": "EnvoyExtensionPolicy",
                "metadata": metadata(args, "meshsplit"),
                "spec": {"targetRefs": refs, list: [module]},
            })
        };
        if args.native {
            // The module itself is the EnvoyProxy's (`envoy_proxy`): the policy names it.
            return Ok(policy(
                "dynamicModule",
                json!({
                    "name": NATIVE_MODULE,
                    // The filter's name names its stats, as the wasm module's `name` does.
                    "filterName": "meshsplit",
                    "config": config,
                }),
            ));
        }
        let code = if let Some(image_ref) = args.module.strip_prefix("oci://") {
            let mut image = Map::new();
            image.insert("url".into(), json!(image_ref));
            if let Some(sha) = &args.sha256 {
                image.insert("sha256".into(), json!(sha));
            }
            json!({"type": "Image", "image": image})
        } else if https {
            json!({"type": "HTTP", "http": {"url": args.module, "sha256": args.sha256}})
        } else {
            return Err(Failure::usage(format!(
                "--module {:?}: Envoy Gateway fetches a module from oci:// or https://",
                args.module
            )));
        };
        return Ok(policy(
            "wasm",
            json!({
                "name": "meshsplit",
                "rootID": "meshsplit",
                "code": code,
                "config": config,
                // A module that cannot run leaves requests to the default route's split.
                "failOpen": true,
            }),
        ));
    }
    if !(args.module.starts_with("oci://") || https || args.module.starts_with("file://")) {
        return Err(Failure::usage(format!(
            "--module {:?}: Istio fetches a module from oci://, https:// or file://",
            args.module
        )));
    }
    let mut spec = Map::new();
    if args.target == Target::Ambient {
        let refs: Vec<Value> = services
            .iter()
            .map(|s| json!({"group": "", "kind": "Service", "name": s.name}))
            .collect();
        spec.insert("targetRefs".into(), json!(refs));
    } else {
        spec.insert(
            "match".into(),
            json!([{"mode": "CLIENT", "ports": [{"number": args.port}]}]),
        );
    }
    spec.insert("url".into(), json!(args.module));
    spec.insert("type".into(), json!("HTTP"));
    if let Some(sha) = &args.sha256 {
        spec.insert("sha256".into(), json!(sha));
    }
    spec.insert("pluginName".into(), json!("meshsplit"));
    // A module that cannot be fetched or run leaves requests to the default route's split,
    // instead of the agent's deny-all filter.
    spec.insert("failStrategy".into(), json!("FAIL_OPEN"));
    spec.insert("pluginConfig".into(), config);
    Ok(json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(args, "meshsplit"),
        "spec": spec,
    }))
}

/// The name the EnvoyProxy registers the native module under, which the policy references.
const NATIVE_MODULE: &str = "meshsplit";

/// The native module's `source` in an EnvoyProxy `dynamicModules` entry: a library on the
/// proxy's filesystem (`file:///PATH`), or one Envoy fetches over http(s) and checks against
/// --sha256 (`api/v1alpha1/dynamic_module_types.go`).
fn native_source(args: &Args) -> Result<Value, Failure> {
    if let Some(path) = args.module.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Failure::usage(format!(
                "--module {:?}: a dynamic module on the proxy's filesystem is file:///PATH, an \
                 absolute path",
                args.module
            )));
        }
        if args.sha256.is_some() {
            return Err(Failure::usage(
                "--sha256: Envoy Gateway checks no digest of a dynamic module on the proxy's \
                 filesystem; give it with an https:// --module, which Envoy fetches",
            ));
        }
        return Ok(json!({"type": "Local", "local": {"path": path}}));
    }
    if args.module.starts_with("https://") || args.module.starts_with("http://") {
        let Some(sha) = &args.sha256 else {
            return Err(Failure::usage(
                "--sha256 is required with an http(s) --module: the proxy checks what it fetched",
            ));
        };
        check_module_url(&args.module)?;
        // The CRD takes lowercase hex only (module_resource checked it is 64 hex digits).
        let sha = sha.to_ascii_lowercase();
        return Ok(json!({"type": "Remote", "remote": {"url": args.module, "sha256": sha}}));
    }
    Err(Failure::usage(format!(
        "--module {:?}: Envoy Gateway loads a dynamic module from the proxy's filesystem \
         (file:///PATH) or from https:// (with --sha256)",
        args.module
    )))
}

/// An http(s) module URL Envoy can fetch: a host (the CRD's `^https?://[^/?#]+`), and a port, if
/// given, that is one (Envoy Gateway makes it a cluster's port).
fn check_module_url(url: &str) -> Result<(), Failure> {
    let bad = |why: &str| Err(Failure::usage(format!("--module {url:?}: {why}")));
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // An IPv6 literal's colons are inside its brackets.
    let (host, port) = match authority.rsplit_once(']') {
        Some((host, after)) => (host, after.strip_prefix(':')),
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return bad("the URL has no host");
    }
    if port.is_some_and(|port| !port.parse::<u16>().is_ok_and(|p| p > 0)) {
        return bad("the URL's port is not one from 1 to 65535");
    }
    Ok(())
}

/// The EnvoyProxy that registers the native module, with the comment that says how the
/// Gateway takes it.
fn envoy_proxy(args: &Args, source: Value) -> (String, Value) {
    let comment = format!(
        "\
# Envoy Gateway loads only the dynamic modules an EnvoyProxy registers. Attach this one to the
# Gateway {ns}/{gateway}: spec.infrastructure.parametersRef {{group: gateway.envoyproxy.io, kind:
# EnvoyProxy, name: meshsplit}}; StrategicMerge keeps the GatewayClass's EnvoyProxy settings, but
# not its dynamicModules: this list replaces that one, so copy the GatewayClass's entries here.
# If the Gateway already references an EnvoyProxy, add this dynamicModules entry to that one.
",
        ns = args.namespace,
        gateway = args.gateway
    );
    let doc = json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyProxy",
        "metadata": metadata(args, "meshsplit"),
        "spec": {
            "mergeType": "StrategicMerge",
            "dynamicModules": [{"name": NATIVE_MODULE, "source": source}],
        },
    });
    (comment, doc)
}

fn destination_rule(args: &Args, service: &Routed) -> Value {
    let subsets: Vec<Value> = service
        .versions
        .iter()
        .map(|v| json!({"name": v.name, "labels": {&args.version_label: v.name}}))
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(args, &service.name),
        "spec": {"host": fqdn(args, &service.name), "subsets": subsets},
    })
}

fn remove_header(header: &str) -> Value {
    json!({"request": {"remove": [header]}})
}

fn virtual_service(args: &Args, service: &Routed, header: &str) -> Value {
    let host = fqdn(args, &service.name);
    let destination =
        |v: &Version| json!({"host": host, "subset": v.name, "port": {"number": args.port}});
    let mut http: Vec<Value> = service
        .versions
        .iter()
        .map(|v| {
            json!({
                "name": format!("meshsplit-{}", v.name),
                "match": [{"port": args.port, "headers": {header: {"exact": v.name}}}],
                "route": [{"destination": destination(v)}],
                "headers": remove_header(header),
            })
        })
        .collect();
    let weighted: Vec<Value> = service
        .versions
        .iter()
        .map(|v| json!({"destination": destination(v), "weight": v.weight}))
        .collect();
    http.push(json!({
        "name": "meshsplit-default",
        // The service's other ports keep Istio's own routes: the filter runs on this one only.
        "match": [{"port": args.port}],
        "route": weighted,
        "headers": remove_header(header),
    }));
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(args, &service.name),
        "spec": {"hosts": [host], "http": http},
    })
}

fn version_service(args: &Args, service: &Routed, version: &Version) -> Value {
    let mut meta = metadata(args, &format!("{}-{}", service.name, version.name));
    if args.target == Target::Ambient {
        meta.insert(
            "labels".into(),
            json!({"istio.io/use-waypoint": args.waypoint}),
        );
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": {&args.app_label: service.name, &args.version_label: version.name},
            "ports": [{"name": "http", "port": args.port}],
        },
    })
}

fn http_route(args: &Args, service: &Routed, header: &str) -> Value {
    let backend =
        |v: &Version| json!({"name": format!("{}-{}", service.name, v.name), "port": args.port});
    let remove =
        json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": [header]}}]);
    let mut rules: Vec<Value> = service
        .versions
        .iter()
        .map(|v| {
            json!({
                "matches": [{"headers": [{"type": "Exact", "name": header, "value": v.name}]}],
                "filters": remove,
                "backendRefs": [backend(v)],
            })
        })
        .collect();
    let weighted: Vec<Value> = service
        .versions
        .iter()
        .map(|v| {
            json!({
                "name": format!("{}-{}", service.name, v.name),
                "port": args.port,
                "weight": v.weight,
            })
        })
        .collect();
    rules.push(json!({"filters": remove, "backendRefs": weighted}));
    let mut spec = Map::new();
    if args.target == Target::EnvoyGateway {
        spec.insert("parentRefs".into(), json!([{"name": args.gateway}]));
        // The Gateway API's hostnames: DNS names without a port (an IP is no hostname there).
        let mut hostnames: Vec<String> = Vec::new();
        for host in &service.hosts {
            let bare = without_port(host);
            let valid = bare.contains('.')
                && bare.parse::<std::net::Ipv4Addr>().is_err()
                && bare.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if valid && !hostnames.iter().any(|h| h == bare) {
                hostnames.push(bare.to_owned());
            }
        }
        if !hostnames.is_empty() {
            spec.insert("hostnames".into(), json!(hostnames));
        }
    } else {
        spec.insert(
            "parentRefs".into(),
            json!([{"group": "", "kind": "Service", "name": service.name, "port": args.port}]),
        );
    }
    spec.insert("rules".into(), json!(rules));
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(args, &service.name),
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_yaml_would_read_otherwise_are_quoted() {
        for (text, shown) in [
            ("v1", "v1"),
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local",
                "outbound|9080|v1|reviews.default.svc.cluster.local",
            ),
            (
                "oci://registry.example/meshsplit:0.2.0",
                "oci://registry.example/meshsplit:0.2.0",
            ),
            ("true", "\"true\""),
            ("No", "\"No\""),
            ("2026-12-01T10:00:00Z", "\"2026-12-01T10:00:00Z\""),
            ("80", "\"80\""),
            ("", "\"\""),
            ("*", "\"*\""),
            ("a: b", "\"a: b\""),
            ("", "\"\""),
        ] {
            assert_eq!(scalar_text(text), shown);
        }
    }

    #[test]
    fn block_yaml_of_nested_values() {
        let mut out = String::new();
        yaml(
            &json!({"a": [{"b": 1, "c": ["x"]}, "z"], "d": {}, "e": {"f": null}}),
            0,
            &mut out,
        );
        assert_eq!(out, "a:\n- b: 1\n  c:\n  - x\n- z\nd: {}\ne:\n  f: null\n");
    }

    fn native_args(module: &str, sha256: Option<&str>) -> Args {
        Args {
            config: PathBuf::from("-"),
            target: Target::EnvoyGateway,
            namespace: "default".into(),
            port: 9080,
            module: module.into(),
            sha256: sha256.map(str::to_owned),
            gateway: "eg".into(),
            version_label: "version".into(),
            app_label: "app".into(),
            waypoint: "waypoint".into(),
            config_index: None,
            native: true,
        }
    }

    #[test]
    fn native_sources_envoy_gateway_registers() {
        let sha = "AB".repeat(32);
        assert_eq!(
            native_source(&native_args("file:///usr/lib/envoy/libmeshsplit.so", None)).ok(),
            Some(json!({"type": "Local", "local": {"path": "/usr/lib/envoy/libmeshsplit.so"}}))
        );
        assert_eq!(
            native_source(&native_args(
                "https://example.com/libmeshsplit.so",
                Some(&sha)
            ))
            .ok(),
            Some(json!({"type": "Remote", "remote": {
                "url": "https://example.com/libmeshsplit.so", "sha256": "ab".repeat(32)}}))
        );
        for (module, sha256) in [
            ("file://libmeshsplit.so", None),
            ("file:///libmeshsplit.so", Some(sha.as_str())),
            ("oci://registry.example/meshsplit:0.2.0", None),
            ("https://example.com/libmeshsplit.so", None),
            ("https://", Some(sha.as_str())),
            ("https://?x", Some(sha.as_str())),
            ("https://:443/libmeshsplit.so", Some(sha.as_str())),
            (
                "http://example.com:99999/libmeshsplit.so",
                Some(sha.as_str()),
            ),
            ("http://example.com:0/libmeshsplit.so", Some(sha.as_str())),
        ] {
            assert!(
                native_source(&native_args(module, sha256)).is_err(),
                "{module}"
            );
        }
        for module in [
            "http://127.0.0.1:8000/libmeshsplit.so",
            "https://[::1]:8443/m/libmeshsplit.so?v=1",
        ] {
            assert!(
                native_source(&native_args(module, Some(&sha))).is_ok(),
                "{module}"
            );
        }
        let args = native_args("file:///l.so", None);
        let (comment, proxy) = envoy_proxy(&args, native_source(&args).unwrap_or_default());
        assert!(comment.lines().all(|l| l.starts_with("# ")), "{comment}");
        assert!(comment.contains("Gateway default/eg"), "{comment}");
        assert_eq!(
            proxy["spec"]["dynamicModules"][0]["name"],
            json!(NATIVE_MODULE)
        );
    }

    #[test]
    fn labels_kubernetes_takes() {
        assert!(check_label("f", "v1").is_ok());
        assert!(check_label("f", "reviews-canary").is_ok());
        for bad in ["", "V1", "1v", "v_1", "v-", &"a".repeat(64)] {
            assert!(check_label("f", bad).is_err(), "{bad}");
        }
    }
}
