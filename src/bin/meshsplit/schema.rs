//! `meshsplit schema`: the JSON Schema (draft 2020-12) of the plugin configuration, derived from
//! the filter's own config types (`meshsplit::config`) and their doc comments. Shipped as
//! `docs/meshsplit.schema.json`; editors validate and complete a config against it.

use meshsplit::config::RawConfig;

use crate::Status;

/// Print the JSON Schema of the meshsplit plugin configuration (draft 2020-12).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: &Args) -> Status {
    print!("{}", render());
    Status::Ok
}

/// The schema as `docs/meshsplit.schema.json` holds it: pretty-printed, ending in a newline;
/// each description one paragraph per line (doc comments wrap at 100 columns, editors wrap
/// for themselves).
pub fn render() -> String {
    let mut schema = serde_json::Value::from(schemars::schema_for!(RawConfig));
    unwrap_descriptions(&mut schema);
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    format!("{text}\n")
}

fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.replace('\n', " "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(item),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}
