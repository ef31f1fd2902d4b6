//! `meshsplit apply CONFIG --to ECDS_FILE [--watch]`: checks a plugin config and writes it into
//! the ECDS resource file Envoy watches, atomically; with `--watch`, again on every save.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::ecds::{refusals_for_wasm, EXTENSION_TYPE, WASM_TYPE};
use crate::load::{compile, compile_text, find, pick, Failure, Loaded};
use crate::output::say;
use crate::preview::{diff, Diff};
use crate::replace::{lock, target, write_atomically};
use crate::source::decode;
use crate::Status;

const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Check a plugin config and write it into the ECDS file Envoy watches.
///
/// Checks CONFIG as `meshsplit check` does (any file `check` takes; an invalid config is
/// reported with the same line, exit 1, and nothing is written). Then replaces the plugin
/// configuration inside the ECDS resource already in ECDS_FILE, a DiscoveryResponse holding
/// one TypedExtensionConfig with the wasm filter, keeping everything else (vm_config, names,
/// other fields); bumps version_info; writes a temporary file in the same directory, syncs it
/// and renames it over ECDS_FILE, so Envoy never reads a half-written file. The new file keeps
/// the owner, group and mode of the old one; a symlink is written through to its target. An
/// advisory lock (.ECDS_FILE.lock, next to it) keeps two runs at once from losing an update.
/// Prints what changed, as `meshsplit preview NEW --against OLD` would.
///
/// An ECDS file Envoy would reject is refused (exit 1, with the reason): more than one
/// resource, a resource that is not a TypedExtensionConfig, has no name or another name than
/// --name, or holds another filter than wasm.
///
/// Without ECDS_FILE (or with an empty one, or one whose resources list is empty), --module
/// creates a resource running that module. Writing the config ECDS_FILE already holds changes
/// nothing (no version bump).
///
/// With --watch, applies CONFIG and then again whenever it changes (checked every 100 ms;
/// in-place writes and rename-based saves alike), once its content has stayed the same for
/// --settle-ms, so a file still being written is never applied; prints one line per apply or
/// refusal with a UTC timestamp. An invalid save is refused and not written: the previous
/// config keeps serving. Ctrl-C (or SIGTERM) ends it with exit status 0.
///
/// Exit status: 0 applied (or nothing to change); 1 the config is invalid, or Envoy would
/// reject ECDS_FILE; 2 usage or I/O error, or CONFIG is not valid JSON or YAML (a syntax
/// error, as `check` reports it).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The plugin config, or a file holding it.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// The ECDS file (a DiscoveryResponse) Envoy's `config_discovery` reads.
    #[arg(long = "to", value_name = "ECDS_FILE")]
    pub to: PathBuf,
    /// Keep running and apply CONFIG again whenever it changes.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: how long CONFIG must stay unchanged (content, size and modification time)
    /// before it is applied.
    #[arg(long, value_name = "MS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub settle_ms: u64,
    /// Create ECDS_FILE, if missing, with a resource running this wasm module.
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
    /// The filter's name in the listener, which the resource must have (Envoy rejects a
    /// resource under another name) [default for a new resource: meshsplit].
    #[arg(long)]
    name: Option<String>,
    /// vm_config.vm_id of a new resource.
    #[arg(long, default_value = "meshsplit")]
    vm_id: String,
    /// root_id of a new resource.
    #[arg(long, default_value = "meshsplit")]
    root_id: String,
    /// Which config of a CONFIG file that holds several (from 1, in the order `check` lists them).
    #[arg(long, value_name = "N")]
    pub config_index: Option<usize>,
    /// Sample keys per sticky service in the printed changes.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
}

/// A usage error when the ECDS file does not exist and no `--module` says how to create it.
pub fn missing_target(args: &Args) -> Option<Status> {
    (!args.to.exists() && args.module.is_none()).then(|| {
        Failure::usage(format!(
            "{}: no such file; give --module PATH to create it with a new resource",
            args.to.display()
        ))
        .report()
    })
}

/// `meshsplit apply` without `--watch` (`main.rs` sends `--watch` to `watch::run`).
pub fn run(args: &Args) -> Status {
    if let Some(status) = missing_target(args) {
        return status;
    }
    let name = args.config.display().to_string();
    let loaded = find(&args.config)
        .and_then(|found| pick(&name, found, args.config_index))
        .and_then(|found| compile(&name, &found));
    match loaded.and_then(|new| apply(args, &new)) {
        Ok(Applied::Written { from, to, diff }) => {
            say!(
                "applied {} to {}: version {} → {to}",
                args.config.display(),
                args.to.display(),
                from.as_deref().unwrap_or("(new file)")
            );
            crate::output::out(format_args!("{}", diff.text()));
            Status::Ok
        }
        Ok(Applied::Unchanged { version }) => {
            say!(
                "unchanged: {} already holds this config (version {version})",
                args.to.display()
            );
            Status::Ok
        }
        Err(failure) => failure.report(),
    }
}

/// What one apply did.
pub enum Applied {
    Written {
        /// Versions before (none for a new file) and after.
        from: Option<String>,
        to: String,
        diff: Diff,
    },
    Unchanged {
        version: String,
    },
}

/// Writes `new` into the ECDS file, under its lock: read, change and rename happen with no
/// other `apply` in between, so what was read is what is replaced.
pub fn apply(args: &Args, new: &Loaded) -> Result<Applied, Failure> {
    let at = args.to.display().to_string();
    let io_error = |what: &str, e: io::Error| Failure::usage(format!("{at}: {what}: {e}"));
    let path = target(&args.to).map_err(|e| io_error("cannot follow", e))?;
    let _lock = lock(&path).map_err(|e| io_error("cannot lock", e))?;
    let fresh = || {
        args.module.as_ref().map(|module| {
            fresh_resource(
                args.name.as_deref().unwrap_or("meshsplit"),
                &args.vm_id,
                &args.root_id,
                module,
            )
        })
    };
    let no_file = || {
        Failure::usage(if path.exists() {
            format!("{at}: is empty; give --module PATH to create a resource in it")
        } else {
            format!("{at}: no such file; give --module PATH to create it with a new resource")
        })
    };
    // A missing or empty file (one made with `touch` for Envoy, which insists on an existing
    // path) is created afresh with --module.
    let text = match fs::read(&path) {
        Ok(bytes) => decode(bytes).map_err(|e| Failure::usage(format!("{at}: {e}")))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error("cannot read", e)),
    };
    let created = text.trim().is_empty();
    let mut response = if created {
        json!({"version_info": "0", "resources": [fresh().ok_or_else(no_file)?]})
    } else {
        serde_json::from_str(&text)
            .map_err(|e| Failure::usage(format!("{at}: not a JSON discovery response: {e}")))?
    };
    // A response without a resource (`"resources": []`) gets a new one with --module.
    if let Some(list) = response.get_mut("resources").and_then(Value::as_array_mut) {
        if list.is_empty() {
            list.extend(fresh());
        }
    }
    // Never write (or leave unreported) a file Envoy would reject.
    let refused = |response: &Value| {
        let reasons = refusals_for_wasm(response, args.name.as_deref());
        if reasons.is_empty() {
            return Ok(());
        }
        Err(Failure {
            status: Status::Invalid,
            message: format!(
                "{at}: Envoy would reject this ECDS file, nothing written: {}",
                reasons.join("; ")
            ),
        })
    };
    refused(&response)?;
    let old_version = response.get("version_info").map(version_text);
    let old_text = replace_configuration(&mut response, &new.text)
        .map_err(|e| Failure::usage(format!("{at}: {e}")))?;
    if old_text.as_deref() == Some(new.text.as_str()) {
        return Ok(Applied::Unchanged {
            version: old_version.unwrap_or_default(),
        });
    }
    // The module the resource runs must accept the configuration (meshsplit.wasm refuses
    // assign_cookie): never report success for a configuration Envoy's filter will refuse.
    let document = crate::source::Document::detached(response.clone());
    for found in crate::extract::extract(std::slice::from_ref(&document)) {
        if let Err(e) = found.plan() {
            return Err(Failure {
                status: Status::Invalid,
                message: format!(
                    "{at}: {}: the module this resource runs would refuse the configuration, \
                     nothing written: {e}",
                    found.place
                ),
            });
        }
    }
    let version = next_version(response.get("version_info"));
    if let Some(map) = response.as_object_mut() {
        map.insert("version_info".to_owned(), Value::String(version.clone()));
    }
    refused(&response)?;
    let mut bytes =
        serde_json::to_vec_pretty(&response).map_err(|e| Failure::usage(format!("{at}: {e}")))?;
    bytes.push(b'\n');
    write_atomically(&path, &bytes).map_err(|e| io_error("cannot write", e))?;
    let before = old_text.and_then(|t| compile_text(&format!("{at} (before)"), &t));
    Ok(Applied::Written {
        from: if created { None } else { old_version },
        to: version,
        diff: diff(before.as_ref(), new, None, args.keys),
    })
}

fn version_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The version after `old`: an integer (as a string or a number) plus one; anything else,
/// or nothing, starts again at "1".
pub fn next_version(old: Option<&Value>) -> String {
    let number = match old {
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    match number.and_then(|n| n.checked_add(1)) {
        Some(next) => next.to_string(),
        None => "1".to_owned(),
    }
}

/// A wasm filter resource (a `TypedExtensionConfig`) with no configuration yet.
pub fn fresh_resource(name: &str, vm_id: &str, root_id: &str, module: &Path) -> Value {
    json!({
        "@type": EXTENSION_TYPE,
        "name": name,
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": name,
                "root_id": root_id,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module.display().to_string()}},
                },
                "configuration": {"@type": STRING_VALUE_TYPE, "value": ""},
            },
        },
    })
}

/// Puts `text` as the plugin configuration of the one wasm resource of `response` (checked
/// with `refusals_for_wasm` first) and returns the configuration it held (`None`: it had
/// none). Nothing else changes.
pub fn replace_configuration(response: &mut Value, text: &str) -> Result<Option<String>, String> {
    let resource = response
        .get_mut("resources")
        .and_then(Value::as_array_mut)
        .ok_or("not a discovery response: no \"resources\" list")?
        .first_mut()
        .ok_or("no resource; give --module PATH to create one")?;
    let config = resource
        .get_mut("typed_config")
        .and_then(|t| t.get_mut("config"))
        .and_then(Value::as_object_mut)
        .ok_or("the wasm filter resource has no \"config\" object")?;
    let old = match config.get("configuration") {
        None => None,
        Some(configuration) => {
            let type_url = configuration.get("@type").and_then(Value::as_str);
            if type_url != Some(STRING_VALUE_TYPE) {
                return Err(format!(
                    "the plugin configuration is not a google.protobuf.StringValue (@type {})",
                    type_url.unwrap_or("missing")
                ));
            }
            Some(
                configuration
                    .get("value")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    let mut configuration = Map::new();
    configuration.insert(
        "@type".to_owned(),
        Value::String(STRING_VALUE_TYPE.to_owned()),
    );
    configuration.insert("value".to_owned(), Value::String(text.to_owned()));
    config.insert("configuration".to_owned(), Value::Object(configuration));
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> Value {
        json!({"version_info": "7", "resources": [{
            "@type": EXTENSION_TYPE,
            "name": "meshsplit",
            "typed_config": {"@type": WASM_TYPE, "config": {
                "name": "meshsplit", "root_id": "r",
                "vm_config": {"vm_id": "v", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": "/m.wasm"}}},
                "configuration": {"@type": STRING_VALUE_TYPE, "value": "OLD"},
                "fail_open": true}}}], "extra": 1})
    }

    #[test]
    fn versions_count_up_and_anything_else_starts_at_one() {
        assert_eq!(next_version(Some(&json!("7"))), "8");
        assert_eq!(next_version(Some(&json!(41))), "42");
        assert_eq!(next_version(Some(&json!("v7"))), "1");
        assert_eq!(next_version(Some(&json!(u64::MAX.to_string()))), "1");
        assert_eq!(next_version(None), "1");
    }

    #[test]
    fn replacing_keeps_every_other_field() {
        let mut r = response();
        let old = replace_configuration(&mut r, "NEW").unwrap();
        assert_eq!(old.as_deref(), Some("OLD"));
        let mut expected = response();
        expected["resources"][0]["typed_config"]["config"]["configuration"]["value"] = json!("NEW");
        assert_eq!(r, expected);
    }

    #[test]
    fn a_resource_without_configuration_gets_one() {
        let mut r = response();
        let config = r["resources"][0]["typed_config"]["config"]
            .as_object_mut()
            .unwrap();
        config.remove("configuration");
        assert_eq!(replace_configuration(&mut r, "NEW").unwrap(), None);
        assert_eq!(
            r["resources"][0]["typed_config"]["config"]["configuration"],
            json!({"@type": STRING_VALUE_TYPE, "value": "NEW"})
        );
    }

    #[test]
    fn a_second_resource_is_refused_as_envoy_would() {
        let mut r = response();
        let mut other = r["resources"][0].clone();
        other["name"] = json!("second");
        r["resources"].as_array_mut().unwrap().push(other);
        let reasons = refusals_for_wasm(&r, None);
        assert!(
            reasons[0].contains("Unexpected number of resources in ExtensionConfigDS response: 2"),
            "{reasons:?}"
        );
        let one = response();
        assert!(refusals_for_wasm(&one, Some("meshsplit")).is_empty());
        assert!(!refusals_for_wasm(&one, Some("third")).is_empty());
    }

    #[test]
    fn files_that_are_not_wasm_resources_are_refused() {
        assert!(replace_configuration(&mut json!({"a": 1}), "x").is_err());
        let mut structured = response();
        structured["resources"][0]["typed_config"]["config"]["configuration"] =
            json!({"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}});
        let err = replace_configuration(&mut structured, "x").unwrap_err();
        assert!(err.contains("not a google.protobuf.StringValue"), "{err}");
    }

    #[test]
    fn a_fresh_resource_runs_the_module_and_takes_a_configuration() {
        let mut r = json!({"resources": [
            fresh_resource("split", "vm", "root", Path::new("/x/meshsplit.wasm"))]});
        assert_eq!(
            replace_configuration(&mut r, "C").unwrap().as_deref(),
            Some("")
        );
        let config = &r["resources"][0]["typed_config"]["config"];
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            "/x/meshsplit.wasm"
        );
        assert_eq!(
            (config["name"].as_str(), config["root_id"].as_str()),
            (Some("split"), Some("root"))
        );
        assert_eq!(r["resources"][0]["name"], "split");
    }
}
