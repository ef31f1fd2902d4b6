//! Table of malformed configurations: each one must be rejected with the exact JSON path of
//! the offending field and a message that says what is wrong with it.

use super::*;

/// The table (`config_error_cases.json`, shared with tests/test_schema.py, which holds the JSON
/// Schema to the same cases): a valid configuration that uses every field, `base`, and cases that
/// each damage one spot of it.
const TABLE: &str = include_str!("config_error_cases.json");

#[derive(serde::Deserialize)]
struct Table {
    base: String,
    cases: Vec<RawCase>,
}

#[derive(serde::Deserialize)]
struct RawCase {
    what: String,
    /// `[find, replace]` pairs applied to `base` in turn; each `find` occurs once.
    #[serde(default)]
    patches: Vec<(String, String)>,
    /// A whole document instead of `base`.
    #[serde(default)]
    document: Option<String>,
    /// `base` cut before the first occurrence of this text.
    #[serde(default)]
    cut_before: Option<String>,
    /// Text appended to `base`.
    #[serde(default)]
    append: Option<String>,
    path: String,
    message: String,
}

struct Case {
    what: String,
    json: String,
    path: String,
    message: String,
}

fn table() -> Table {
    serde_json::from_str(TABLE).unwrap()
}

fn cases() -> Vec<Case> {
    let Table { base, cases } = table();
    cases
        .into_iter()
        .map(|c| {
            let json = if let Some(document) = c.document {
                document
            } else if let Some(cut) = &c.cut_before {
                base[..base.find(cut.as_str()).unwrap()].to_owned()
            } else if let Some(tail) = &c.append {
                format!("{base}{tail}")
            } else {
                let mut json = base.clone();
                for (find, replace) in &c.patches {
                    assert_eq!(
                        json.matches(find.as_str()).count(),
                        1,
                        "{}: {find:?}",
                        c.what
                    );
                    json = json.replacen(find.as_str(), replace, 1);
                }
                assert!(!c.patches.is_empty(), "{}: no damage", c.what);
                json
            };
            Case {
                what: c.what,
                json,
                path: c.path,
                message: c.message,
            }
        })
        .collect()
}

/// Words of serde's and Rust's vocabulary an operator should never have to read.
const JARGON: &[&str] = &[
    "newtype",
    "variant",
    "struct",
    "map",
    "sequence",
    "u64",
    "u32",
    "f64",
    "usize",
    // serde's quoting of a name (`unknown field `x``); a backquote inside a list of characters
    // a cookie name may use is the configuration's own words.
    " `",
    "invalid type",
    "invalid value",
];

#[test]
fn no_message_speaks_serde() {
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(e) = Plan::from_json(case.json.as_bytes()) {
            let message = e.to_string();
            for word in JARGON {
                if message.contains(word) {
                    failures.push(format!("{}: {word:?} in {message:?}", case.what));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_base_configuration_is_valid() {
    Plan::from_json(table().base.as_bytes()).unwrap();
}

#[test]
fn every_malformed_configuration_names_the_offending_field() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        match Plan::from_json(case.json.as_bytes()) {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(e) => {
                let shown = e.to_string();
                let expected_start = if case.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", case.path)
                };
                if e.path != case.path
                    || !shown.starts_with(&expected_start)
                    || !e.message.contains(case.message.as_str())
                {
                    failures.push(format!(
                        "{}:\n    expected path {:?} and a message containing {:?}\n    got {shown:?}",
                        case.what, case.path, case.message
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
