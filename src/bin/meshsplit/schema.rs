//! `meshsplit schema`: the JSON Schema (draft 2020-12) of the plugin configuration, derived from
//! the filter's own config types (`meshsplit::config`) and their doc comments. Shipped as
//! `docs/meshsplit.schema.json`; editors validate and complete a config against it.

use meshsplit::config::RawConfig;

use crate::Status;

/// Print the JSON Schema of the meshsplit plugin configuration (draft 2020-12).
///
/// Editors validate and complete a configuration against it as it is typed. Save it next to
/// your configuration:
///
///     meshsplit schema > meshsplit.schema.json
///
/// and name it in a JSON configuration (the filter ignores the field):
///
///     {"$schema": "./meshsplit.schema.json", "services": [...]}
///
/// For a YAML configuration, put this comment on its first line (the YAML language server, as
/// in VS Code's YAML extension):
///
///     # yaml-language-server: $schema=./meshsplit.schema.json
///
/// or map file names to the schema in the editor's settings (VS Code: "json.schemas",
/// "yaml.schemas"). A configuration embedded in an Envoy or Istio file as a string is not
/// validated by an editor, and the schema cannot express every rule (host syntax, unique
/// names, rollout steps): `meshsplit check` checks everything.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    #[test]
    fn help_says_how_to_save_and_use_the_schema() {
        let help = Cli::command().render_long_help().to_string();
        for words in [
            "meshsplit schema > meshsplit.schema.json",
            "\"$schema\": \"./meshsplit.schema.json\"",
            "# yaml-language-server: $schema=./meshsplit.schema.json",
            "\"json.schemas\"",
        ] {
            assert!(help.contains(words), "{words}\n{help}");
        }
    }

    #[test]
    fn the_strategy_decides_where_hash_on_belongs() {
        let schema: serde_json::Value = serde_json::from_str(&super::render()).unwrap();
        let rules = &schema["$defs"]["service"]["allOf"][0];
        assert_eq!(rules["if"]["properties"]["strategy"]["const"], "sticky");
        assert_eq!(rules["then"]["required"][0], "hash_on");
        assert_eq!(rules["else"]["properties"]["hash_on"]["type"], "null");
    }
}
