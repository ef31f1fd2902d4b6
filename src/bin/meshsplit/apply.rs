//! `meshsplit apply CONFIG --to ECDS_FILE [--watch]`: checks a plugin config and writes it into
//! the ECDS resource file Envoy watches, atomically; with `--watch`, again on every save.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::load::{compile, compile_text, find, found_in, pick, Failure, Loaded};
use crate::preview::{diff, Diff};
use crate::Status;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const EXTENSION_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// How often `--watch` looks at CONFIG.
///
/// Polling, not file-system events: reading a small file ten times a second costs nothing
/// measurable, needs no dependency, and sees every way a file can change: editors that write in
/// place, editors that write a new file and rename it over the old one (the path is opened
/// afresh each time), and file systems that send no events at all (network mounts, bind mounts
/// into containers, Kubernetes ConfigMap volumes). The content is compared, not the mtime, so
/// coarse timestamps cannot hide a save. A change is seen within one interval.
const POLL: Duration = Duration::from_millis(100);

/// Check a plugin config and write it into the ECDS file Envoy watches.
///
/// Checks CONFIG as `meshsplit check` does (any file `check` takes; an invalid config is
/// reported with the same line, exit 1, and nothing is written). Then replaces the plugin
/// configuration inside the ECDS resource already in ECDS_FILE, a DiscoveryResponse holding a
/// TypedExtensionConfig with the wasm filter, keeping everything else (vm_config, names, other
/// fields); bumps version_info; writes a temporary file in the same directory, syncs it and
/// renames it over ECDS_FILE, so Envoy never reads a half-written file. Prints what changed,
/// as `meshsplit preview NEW --against OLD` would.
///
/// Without ECDS_FILE (or with an empty one, or one without a wasm resource), --module creates
/// a resource running that module. Writing the config ECDS_FILE already holds changes nothing
/// (no version bump).
///
/// With --watch, applies CONFIG and then again whenever it changes (checked every 100 ms;
/// in-place writes and rename-based saves alike), printing one line per apply or refusal with
/// a UTC timestamp. An invalid save is refused and not written: the previous config keeps
/// serving. Ctrl-C (or SIGTERM) ends it with exit status 0.
///
/// Exit status: 0 applied (or nothing to change); 1 the config is invalid; 2 usage or I/O
/// error.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The plugin config, or a file holding it.
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// The ECDS file (a DiscoveryResponse) Envoy's `config_discovery` reads.
    #[arg(long = "to", value_name = "ECDS_FILE")]
    to: PathBuf,
    /// Keep running and apply CONFIG again whenever it changes.
    #[arg(long)]
    watch: bool,
    /// Create ECDS_FILE, if missing, with a resource running this wasm module.
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
    /// The resource (and plugin) name: which resource of ECDS_FILE to update, or the name of a
    /// new one [default for a new one: meshsplit].
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
    config_index: Option<usize>,
    /// Sample keys per sticky service in the printed changes.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
}

pub fn run(args: &Args) -> Status {
    if !args.to.exists() && args.module.is_none() {
        return Failure::usage(format!(
            "{}: no such file; give --module PATH to create it with a new resource",
            args.to.display()
        ))
        .report();
    }
    if args.watch {
        return watch(args);
    }
    let name = args.config.display().to_string();
    let loaded = find(&args.config)
        .and_then(|found| pick(&name, found, args.config_index))
        .and_then(|found| compile(&name, &found));
    match loaded.and_then(|new| apply(args, &new)) {
        Ok(Applied::Written { from, to, diff }) => {
            println!(
                "applied {} to {}: version {} → {to}",
                args.config.display(),
                args.to.display(),
                from.as_deref().unwrap_or("(new file)")
            );
            print!("{}", diff.text());
            Status::Ok
        }
        Ok(Applied::Unchanged { version }) => {
            println!(
                "unchanged: {} already holds this config (version {version})",
                args.to.display()
            );
            Status::Ok
        }
        Err(failure) => failure.report(),
    }
}

/// What one apply did.
enum Applied {
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

fn apply(args: &Args, new: &Loaded) -> Result<Applied, Failure> {
    let path = &args.to;
    let at = path.display().to_string();
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
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Failure::usage(format!("{at}: cannot read: {e}"))),
    };
    let created = text.trim().is_empty();
    let mut response = if created {
        json!({"version_info": "0", "resources": [fresh().ok_or_else(no_file)?]})
    } else {
        serde_json::from_str(&text)
            .map_err(|e| Failure::usage(format!("{at}: not a JSON discovery response: {e}")))?
    };
    // A response without the wasm resource (`"resources": []`) gets a new one with --module.
    if !has_wasm_resource(&response, args.name.as_deref()) {
        if let (Some(resource), Some(list)) = (
            fresh(),
            response.get_mut("resources").and_then(Value::as_array_mut),
        ) {
            list.push(resource);
        }
    }
    let old_version = response.get("version_info").map(version_text);
    let old_text = replace_configuration(&mut response, args.name.as_deref(), &new.text)
        .map_err(|e| Failure::usage(format!("{at}: {e}")))?;
    if old_text.as_deref() == Some(new.text.as_str()) {
        return Ok(Applied::Unchanged {
            version: old_version.unwrap_or_default(),
        });
    }
    let version = next_version(response.get("version_info"));
    if let Some(map) = response.as_object_mut() {
        map.insert("version_info".to_owned(), Value::String(version.clone()));
    }
    let mut bytes =
        serde_json::to_vec_pretty(&response).map_err(|e| Failure::usage(format!("{at}: {e}")))?;
    bytes.push(b'\n');
    write_atomically(path, &bytes)
        .map_err(|e| Failure::usage(format!("{at}: cannot write: {e}")))?;
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

fn is_wasm_resource(resource: &Value, name: Option<&str>) -> bool {
    let wasm = resource
        .get("typed_config")
        .and_then(|t| t.get("@type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == WASM_TYPE);
    wasm && name.is_none_or(|n| resource.get("name").and_then(Value::as_str) == Some(n))
}

/// Whether `response` lists a wasm filter resource (named `name`, if given).
pub fn has_wasm_resource(response: &Value, name: Option<&str>) -> bool {
    response
        .get("resources")
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|r| is_wasm_resource(r, name)))
}

/// Puts `text` as the plugin configuration of the wasm resource of `response` (the one named
/// `name`, or the only one) and returns the configuration it held (`None`: it had none).
/// Nothing else changes.
pub fn replace_configuration(
    response: &mut Value,
    name: Option<&str>,
    text: &str,
) -> Result<Option<String>, String> {
    let resources = response
        .get_mut("resources")
        .and_then(Value::as_array_mut)
        .ok_or("not a discovery response: no \"resources\" list")?;
    let mut candidates: Vec<&mut Value> = resources
        .iter_mut()
        .filter(|r| is_wasm_resource(r, name))
        .collect();
    let resource = match (candidates.len(), name) {
        (1, _) => candidates.pop(),
        (0, Some(n)) => return Err(format!("no wasm filter resource named {n:?}")),
        (0, None) => return Err("no wasm filter resource (typed_config of type envoy.extensions.filters.http.wasm.v3.Wasm)".to_owned()),
        (n, Some(name)) => return Err(format!("{n} wasm filter resources are named {name:?}")),
        (n, None) => return Err(format!("{n} wasm filter resources; choose one with --name")),
    };
    let config = resource
        .and_then(|r| r.get_mut("typed_config"))
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

/// Writes `bytes` to a temporary file next to `path` (same permissions as `path`), syncs it and
/// renames it over `path`: readers see the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is synced.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The `--watch` loop: apply CONFIG whenever its content changes, until Ctrl-C or SIGTERM.
fn watch(args: &Args) -> Status {
    if args.config.as_os_str() == "-" {
        return Failure::usage("--watch needs CONFIG to be a file, not standard input").report();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        return Failure::usage(format!("cannot handle Ctrl-C: {e}")).report();
    }
    let name = args.config.display().to_string();
    println!(
        "{} watching {name}: applying it to {} on every change (Ctrl-C to stop)",
        now(),
        args.to.display()
    );
    // The content last handled (applied, found unchanged, or refused), and an invalid content
    // seen once: a save that is still being written in place looks invalid, so a refusal waits
    // for the same content on the next look.
    let mut handled: Option<Option<Vec<u8>>> = None;
    let mut suspect: Option<Option<Vec<u8>>> = None;
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        let current = fs::read(&args.config).ok();
        if handled.as_ref() != Some(&current) {
            let loaded = match &current {
                None => Err(Failure::usage(format!("{name}: cannot read (missing?)"))),
                Some(bytes) => String::from_utf8(bytes.clone())
                    .map_err(|e| Failure::usage(format!("{name}: not UTF-8 text: {e}")))
                    .and_then(|text| found_in(&name, &text))
                    .and_then(|found| pick(&name, found, args.config_index))
                    .and_then(|found| compile(&name, &found)),
            };
            match loaded {
                Ok(new) => match apply(args, &new) {
                    Ok(Applied::Written { from, to, diff }) => {
                        println!(
                            "{} applied {name} to {} (version {} → {to}): {}",
                            now(),
                            args.to.display(),
                            from.as_deref().unwrap_or("(new file)"),
                            diff.one_line()
                        );
                        handled = Some(current);
                        last_error.clear();
                    }
                    Ok(Applied::Unchanged { version }) => {
                        println!(
                            "{} unchanged: {} already holds {name} (version {version})",
                            now(),
                            args.to.display()
                        );
                        handled = Some(current);
                        last_error.clear();
                    }
                    // Retried on the next look (the ECDS file may come back); said once.
                    Err(failure) if failure.message != last_error => {
                        println!("{} error: {}", now(), failure.message);
                        last_error = failure.message;
                    }
                    Err(_) => {}
                },
                Err(failure) if suspect.as_ref() == Some(&current) => {
                    let what = match failure.status {
                        Status::Invalid => failure.message.replace('\n', "; "),
                        _ => failure.message,
                    };
                    println!(
                        "{} refused: {what}; the previous config keeps serving",
                        now()
                    );
                    handled = Some(current);
                    suspect = None;
                }
                Err(_) => suspect = Some(current),
            }
        }
        std::thread::sleep(POLL);
    }
    println!("{} stopped watching {name}", now());
    Status::Ok
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
        let old = replace_configuration(&mut r, None, "NEW").unwrap();
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
        assert_eq!(replace_configuration(&mut r, None, "NEW").unwrap(), None);
        assert_eq!(
            r["resources"][0]["typed_config"]["config"]["configuration"],
            json!({"@type": STRING_VALUE_TYPE, "value": "NEW"})
        );
    }

    #[test]
    fn the_resource_is_found_by_name_when_there_are_several() {
        let mut r = response();
        let mut other = r["resources"][0].clone();
        other["name"] = json!("second");
        r["resources"].as_array_mut().unwrap().push(other);
        let err = replace_configuration(&mut r.clone(), None, "NEW").unwrap_err();
        assert!(err.contains("choose one with --name"), "{err}");
        replace_configuration(&mut r, Some("second"), "NEW").unwrap();
        assert_eq!(
            r["resources"][0]["typed_config"]["config"]["configuration"]["value"],
            "OLD"
        );
        assert_eq!(
            r["resources"][1]["typed_config"]["config"]["configuration"]["value"],
            "NEW"
        );
        assert!(replace_configuration(&mut r, Some("third"), "NEW").is_err());
    }

    #[test]
    fn files_that_are_not_wasm_resources_are_refused() {
        assert!(replace_configuration(&mut json!({"a": 1}), None, "x").is_err());
        let mut structured = response();
        structured["resources"][0]["typed_config"]["config"]["configuration"] =
            json!({"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}});
        let err = replace_configuration(&mut structured, None, "x").unwrap_err();
        assert!(err.contains("not a google.protobuf.StringValue"), "{err}");
    }

    #[test]
    fn a_fresh_resource_runs_the_module_and_takes_a_configuration() {
        let mut r = json!({"resources": [
            fresh_resource("split", "vm", "root", Path::new("/x/meshsplit.wasm"))]});
        assert_eq!(
            replace_configuration(&mut r, None, "C").unwrap().as_deref(),
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

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("meshsplit-apply-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ecds.json");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
