//! Reading a file into documents: one JSON document, or a YAML stream of one or more.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;

use crate::position::Node;

/// One document of a file.
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    /// The document's text, when the file is one JSON document. A plugin config is checked from
    /// this text, so it gets the errors Envoy would give for the same bytes.
    pub text: Option<String>,
    /// The document's root in its file, to find where a node of it is.
    pub node: Node,
}

impl Document {
    /// A document that is no file's (one a command built).
    pub fn detached(value: Value) -> Self {
        Self {
            value,
            text: None,
            node: Node::root(None, 0),
        }
    }
}

/// The text of a file's bytes, without a leading UTF-8 byte order mark.
///
/// Every command reads files through this, so a BOM changes nothing: the text after it is parsed
/// as strictly as the same text without one, and a config is delivered without it.
pub fn decode(bytes: Vec<u8>) -> Result<String, String> {
    let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Parses the text of file `name`: a `.yaml` or `.yml` file as a YAML stream, whatever it looks
/// like (a YAML flow mapping looks like JSON); any other file (standard input too) as [`parse`]
/// does.
pub fn parse_file(name: &str, text: &str) -> Result<Vec<Document>, String> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        return parse_yaml(text).map_err(|e| format!("not valid YAML: {e}"));
    }
    parse(text)
}

/// Parses `text` as JSON when it looks like JSON (starts with `{` or `[`), otherwise as a YAML
/// stream; empty YAML documents are dropped. The error says what the text is not, and for JSON
/// what was probably meant ([`json_hint`]).
pub fn parse(text: &str) -> Result<Vec<Document>, String> {
    let looks_like_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
    if looks_like_json {
        return match serde_json::from_str::<Value>(text) {
            Ok(value) => Ok(vec![Document {
                value,
                text: Some(text.to_owned()),
                node: Node::root(Some(Rc::from(text)), 0),
            }]),
            Err(error) => Err(format!("not valid JSON: {}", with_hint(text, &error))),
        };
    }
    parse_yaml(text).map_err(|e| format!("not valid YAML: {e}"))
}

fn parse_yaml(text: &str) -> Result<Vec<Document>, serde_norway::Error> {
    let file: Rc<str> = Rc::from(text);
    let mut documents = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            documents.push(Document {
                value,
                text: None,
                node: Node::root(Some(Rc::clone(&file)), index),
            });
        }
    }
    Ok(documents)
}

/// serde_json's `error` for the text of a file, with a hint when the mistake is a common one.
fn with_hint(text: &str, error: &serde_json::Error) -> String {
    match json_hint(text, error) {
        Some(hint) if hint.yaml_takes_it => format!(
            "{error}; {} (a file named .yaml or .yml is read as YAML, which takes this)",
            hint.words
        ),
        Some(hint) => format!("{error}; {}", hint.words),
        None => error.to_string(),
    }
}

/// What JSON that does not parse probably needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    pub words: &'static str,
    /// YAML (in flow style, which looks like JSON) takes what JSON does not.
    pub yaml_takes_it: bool,
}

/// The hint for serde_json's syntax `error` in `text`, for the mistakes of people used to YAML
/// or JavaScript: comments, single quotes, keys or strings without quotes, a comma after the
/// last item, a missing comma.
pub fn json_hint(text: &str, error: &serde_json::Error) -> Option<Hint> {
    if !(error.is_syntax() || error.is_eof()) {
        return None;
    }
    let message = error.to_string();
    let hint = |words| {
        Some(Hint {
            words,
            yaml_takes_it: true,
        })
    };
    if message.starts_with("trailing comma") {
        return hint("JSON allows no comma after the last item of an object or a list: remove it");
    }
    // serde_json's column is that of the character it stopped at.
    let line = text.lines().nth(error.line().checked_sub(1)?)?;
    let rest = line.get(error.column().saturating_sub(1)..)?;
    let next = rest.chars().next()?;
    let key = message.starts_with("key must be a string");
    match next {
        '#' => hint("JSON has no comments: remove the # comment"),
        '/' if rest.starts_with("//") || rest.starts_with("/*") => Some(Hint {
            words: "JSON has no comments: remove the // or /* */ comment",
            yaml_takes_it: false,
        }),
        '\'' => hint("JSON strings and keys take double quotes (\"name\"), not single quotes"),
        c if key && (c.is_alphanumeric() || c == '_' || c == '$') => {
            hint("JSON keys need double quotes (\"name\": value)")
        }
        c if message.starts_with("expected value") && c.is_alphabetic() => {
            hint("JSON strings need double quotes (\"text\")")
        }
        '"' | '{' | '[' if message.starts_with("expected `,`") => Some(Hint {
            words: "a comma is missing before this item",
            yaml_takes_it: false,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_document_keeps_its_text() {
        let docs = parse("  {\"services\": []}\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].text.as_deref(), Some("  {\"services\": []}\n"));
    }

    #[test]
    fn yaml_stream_gives_every_non_empty_document() {
        let docs = parse("a: 1\n---\n---\nb: [2]\n").unwrap();
        let values: Vec<_> = docs.iter().map(|d| d.value.to_string()).collect();
        assert_eq!(values, ["{\"a\":1}", "{\"b\":[2]}"]);
        assert!(docs.iter().all(|d| d.text.is_none()));
    }

    #[test]
    fn a_yaml_file_in_flow_style_is_yaml() {
        for name in ["f.yaml", "F.YML", "dir.json/f.yml"] {
            let docs = parse_file(name, "{a: 1, 'b': [2,], # c\n}").unwrap();
            assert_eq!(
                docs[0].value,
                serde_json::json!({"a": 1, "b": [2]}),
                "{name}"
            );
            // Its configs are made from the YAML, never read as the file's text.
            assert!(docs[0].text.is_none());
        }
        let err = parse_file("f.yaml", "{a: [1}").unwrap_err();
        assert!(err.starts_with("not valid YAML: "), "{err}");
    }

    #[test]
    fn any_other_file_that_starts_like_json_is_json() {
        for name in ["f.json", "-", "f"] {
            let err = parse_file(name, "{a: 1}").unwrap_err();
            assert!(
                err.starts_with("not valid JSON: key must be a string"),
                "{err}"
            );
        }
        let docs = parse_file("f.json", "{\"a\": 1}").unwrap();
        assert_eq!(docs[0].text.as_deref(), Some("{\"a\": 1}"));
    }

    /// The error for `text` and its hint.
    fn hint(text: &str) -> (String, Option<&'static str>) {
        let error = serde_json::from_str::<Value>(text).unwrap_err();
        (error.to_string(), json_hint(text, &error).map(|h| h.words))
    }

    #[test]
    fn common_json_mistakes_get_a_hint() {
        for (text, words) in [
            (
                "{\n  # weights\n  \"a\": 1}",
                "JSON has no comments: remove the # comment",
            ),
            (
                "{\"a\": 1 # weights\n}",
                "JSON has no comments: remove the # comment",
            ),
            (
                "{\"a\": 1, // weights\n}",
                "JSON has no comments: remove the // or /* */ comment",
            ),
            (
                "{/* weights */}",
                "JSON has no comments: remove the // or /* */ comment",
            ),
            (
                "{'a': 1}",
                "JSON strings and keys take double quotes (\"name\"), not single quotes",
            ),
            (
                "{\"a\": 'x'}",
                "JSON strings and keys take double quotes (\"name\"), not single quotes",
            ),
            ("{a: 1}", "JSON keys need double quotes (\"name\": value)"),
            (
                "{\"a\": 1, b: 2}",
                "JSON keys need double quotes (\"name\": value)",
            ),
            ("{\"a\": v1}", "JSON strings need double quotes (\"text\")"),
            (
                "{\"a\": [1, 2,]}",
                "JSON allows no comma after the last item of an object or a list: remove it",
            ),
            (
                "{\"a\": 1,\n}",
                "JSON allows no comma after the last item of an object or a list: remove it",
            ),
            (
                "{\"a\": 1\n \"b\": 2}",
                "a comma is missing before this item",
            ),
            (
                "[{\"a\": 1} {\"b\": 2}]",
                "a comma is missing before this item",
            ),
        ] {
            assert_eq!(hint(text).1, Some(words), "{text:?}: {}", hint(text).0);
        }
        for text in ["{\"a\": 1", "{\"a\": tru}", "{\"a\" 1}"] {
            assert_eq!(hint(text).1, None, "{text:?}");
        }
    }

    #[test]
    fn a_json_file_with_a_mistake_yaml_takes_says_so() {
        let err = parse("{\"services\": [],}").unwrap_err();
        assert_eq!(
            err,
            "not valid JSON: trailing comma at line 1 column 17; JSON allows no comma after the \
             last item of an object or a list: remove it (a file named .yaml or .yml is read as \
             YAML, which takes this)"
        );
        let err = parse("{\"a\": 1 \"b\": 2}").unwrap_err();
        assert_eq!(
            err,
            "not valid JSON: expected `,` or `}` at line 1 column 9; a comma is missing before \
             this item"
        );
    }

    #[test]
    fn broken_json_reports_the_json_error() {
        let err = parse("{\"services\": [}").unwrap_err();
        assert!(err.starts_with("not valid JSON: "), "{err}");
        assert!(err.contains("line 1 column"), "{err}");
    }

    #[test]
    fn broken_yaml_reports_the_yaml_error() {
        let err = parse("a: [1\nb: 2\n").unwrap_err();
        assert!(err.starts_with("not valid YAML: "), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_dropped_before_parsing() {
        let with_bom = b"\xef\xbb\xbf{\"services\": [],}".to_vec();
        let text = decode(with_bom).unwrap();
        assert_eq!(text, "{\"services\": [],}");
        assert_eq!(decode(b"a: 1".to_vec()).unwrap(), "a: 1");
        assert!(decode(vec![0xff])
            .unwrap_err()
            .starts_with("not UTF-8 text"));
    }

    #[test]
    fn comments_only_are_no_documents() {
        assert!(parse("# nothing here\n").unwrap().is_empty());
    }
}
