//! Plugin configs for `preview` and `apply`: found in a file the way `check` finds them, and
//! compiled with the filter's own code.

use std::path::PathBuf;

use meshsplit::plan::Plan;
use serde_json::Value;

use crate::check::{check_one, read};
use crate::extract::{extract, Found};
use crate::output::{say, say_err};
use crate::report::Line;
use crate::source::parse_file;
use crate::Status;

/// A valid plugin config and where it came from.
pub struct Loaded {
    /// `FILE[: place]`, as `check` names it.
    pub at: String,
    /// The configuration text, as the filter receives it.
    pub text: String,
    pub plan: Plan,
    /// Per service (in `plan.services` order): the key that selects it (its first host, else
    /// its name) and its JSON, to tell unchanged services from edited ones.
    pub services: Vec<(String, Value)>,
}

impl Loaded {
    pub fn key(&self, service: usize) -> &str {
        self.services
            .get(service)
            .map_or("", |(key, _)| key.as_str())
    }

    pub fn json(&self, service: usize) -> Option<&Value> {
        self.services.get(service).map(|(_, json)| json)
    }

    /// The index of the service called `name`.
    pub fn service(&self, name: &str) -> Option<usize> {
        self.plan.services.iter().position(|s| s.name == name)
    }
}

/// Why configs could not be loaded: the message to print and the exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: Status,
    /// For an invalid config, the lines `check` prints (to standard output); otherwise an error
    /// message (for standard error).
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            status: Status::Error,
            message: message.into(),
        }
    }

    /// Prints the failure where it belongs and returns its status.
    pub fn report(&self) -> Status {
        match self.status {
            Status::Invalid => say!("{}", self.message),
            _ => say_err!("error: {}", self.message),
        }
        self.status
    }
}

/// Every plugin config in the file at `path` (`-`: standard input), as `check` finds them.
pub fn find(path: &PathBuf) -> Result<Vec<Found>, Failure> {
    let name = path.display().to_string();
    let text = read(path).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
    found_in(&name, &text)
}

/// Every plugin config in `text`, the content of file `name`.
pub fn found_in(name: &str, text: &str) -> Result<Vec<Found>, Failure> {
    let documents = parse_file(name, text).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
    let found = extract(&documents);
    if found.is_empty() {
        return Err(Failure::usage(format!("{name}: no meshsplit config found")));
    }
    Ok(found)
}

/// The one config of a file, or the `index`-th (counted from 1, in the order `check` lists
/// them) when the file holds several.
pub fn pick(name: &str, mut found: Vec<Found>, index: Option<usize>) -> Result<Found, Failure> {
    let count = found.len();
    match index {
        None if count == 1 => Ok(found.remove(0)),
        None => Err(Failure::usage(format!(
            "{name} holds {count} meshsplit configs; choose one with --config-index N (1 to {count}, \
             in the order `meshsplit check` lists them)"
        ))),
        Some(i) if (1..=count).contains(&i) => Ok(found.remove(i - 1)),
        Some(i) => Err(Failure::usage(format!(
            "{name}: --config-index {i} is out of range: the file holds {count} meshsplit config{}",
            if count == 1 { "" } else { "s" }
        ))),
    }
}

/// Compiles one found config; an invalid one fails with the line `check` prints for it.
pub fn compile(name: &str, found: &Found) -> Result<Loaded, Failure> {
    let invalid = |lines: Vec<Line>| Failure {
        status: lines
            .iter()
            .map(|l| l.status(true))
            .max()
            .unwrap_or(Status::Invalid)
            .max(Status::Invalid),
        message: lines
            .iter()
            .filter(|l| matches!(l, Line::Invalid(_) | Line::Syntax(_)))
            .map(Line::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let plan = match found.plan() {
        Ok(plan) => plan,
        Err(_) => return Err(invalid(check_one(name, found))),
    };
    let at = if found.place.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {}", found.place)
    };
    Ok(Loaded {
        at,
        text: found.config.clone(),
        services: service_keys(&found.config, &plan),
        plan,
    })
}

/// Compiles plugin configuration text that is not in a file of its own (the one an ECDS file
/// holds); `None` when it is not valid.
pub fn compile_text(at: &str, text: &str) -> Option<Loaded> {
    let plan = Plan::from_json(text.as_bytes()).ok()?;
    Some(Loaded {
        at: at.to_owned(),
        text: text.to_owned(),
        services: service_keys(text, &plan),
        plan,
    })
}

fn service_keys(text: &str, plan: &Plan) -> Vec<(String, Value)> {
    let raw: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let services = raw.get("services").and_then(Value::as_array);
    plan.services
        .iter()
        .enumerate()
        .map(|(i, service)| {
            let json = services
                .and_then(|s| s.get(i))
                .cloned()
                .unwrap_or(Value::Null);
            let host = json
                .get("hosts")
                .and_then(Value::as_array)
                .and_then(|h| h.first())
                .and_then(Value::as_str)
                .unwrap_or(&service.name)
                .to_owned();
            (host, json)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"services": [
        {"name": "a", "upstreams": [{"name": "v1", "cluster": "a1", "weight": 1}]},
        {"name": "b", "hosts": ["b.example:8080", "b"], "upstreams": [{"name": "v1", "cluster": "b1", "weight": 1}]}]}"#;

    #[test]
    fn service_keys_are_the_first_host_or_the_name() {
        let found = found_in("f", CONFIG).unwrap();
        let loaded = compile("f", &found[0]).unwrap();
        assert_eq!(loaded.at, "f");
        assert_eq!((loaded.key(0), loaded.key(1)), ("a", "b.example:8080"));
        assert_eq!(loaded.service("b"), Some(1));
    }

    #[test]
    fn invalid_config_fails_with_the_check_line() {
        let found = found_in("f", r#"{"services": []}"#).unwrap();
        let failure = compile("f", &found[0]).err().unwrap();
        assert_eq!(failure.status, Status::Invalid);
        assert_eq!(
            failure.message,
            "f: invalid configuration: services: must list at least one service"
        );
    }

    #[test]
    fn several_configs_need_an_index() {
        // A stream of two JSON documents is YAML: a `.yaml` file.
        let two = format!("{CONFIG}\n---\n{CONFIG}\n");
        let found = || found_in("f.yaml", &two).unwrap();
        assert_eq!(
            pick("f", found(), None).err().unwrap().status,
            Status::Error
        );
        assert_eq!(pick("f", found(), Some(2)).unwrap().place, "document 2");
        assert!(pick("f", found(), Some(3)).is_err());
    }
}
