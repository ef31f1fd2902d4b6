//! Reading a file into documents: one JSON document, or a YAML stream of one or more.

use serde::Deserialize;
use serde_json::Value;

/// One document of a file.
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    /// The document's text, when the file is one document that starts like JSON. A plugin config
    /// is checked from this text, so it gets the errors Envoy would give for the same bytes.
    pub text: Option<String>,
}

/// The text of a file's bytes, without a leading UTF-8 byte order mark.
///
/// Every command reads files through this, so a BOM changes nothing: the text after it is parsed
/// as strictly as the same text without one (a BOM before `{` would otherwise turn a JSON file
/// into YAML, which takes trailing commas), and a config is delivered without it.
pub fn decode(bytes: Vec<u8>) -> Result<String, String> {
    let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Parses `text` as JSON when it looks like JSON (starts with `{` or `[`), otherwise as a YAML
/// stream; empty YAML documents are dropped. The error says what the text is not.
pub fn parse(text: &str) -> Result<Vec<Document>, String> {
    let looks_like_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
    if looks_like_json {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => {
                return Ok(vec![Document {
                    value,
                    text: Some(text.to_owned()),
                }])
            }
            // A YAML flow mapping need not be JSON, so try YAML before reporting the JSON
            // error, the more precise one for a `{`. One such document keeps its text: if it is
            // a plugin config, the filter would get this text and reject it as not JSON.
            Err(json_error) => {
                let mut documents =
                    parse_yaml(text).map_err(|_| format!("not valid JSON: {json_error}"))?;
                if let [document] = documents.as_mut_slice() {
                    document.text = Some(text.to_owned());
                }
                return Ok(documents);
            }
        }
    }
    parse_yaml(text).map_err(|e| format!("not valid YAML: {e}"))
}

fn parse_yaml(text: &str) -> Result<Vec<Document>, serde_norway::Error> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            documents.push(Document { value, text: None });
        }
    }
    Ok(documents)
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
    fn yaml_flow_mapping_is_not_mistaken_for_broken_json() {
        let docs = parse("{a: 1}").unwrap();
        assert_eq!(docs[0].value, serde_json::json!({"a": 1}));
    }

    #[test]
    fn json_like_yaml_keeps_its_text_too() {
        let docs = parse("{\"services\": [],}").unwrap();
        assert_eq!(docs[0].text.as_deref(), Some("{\"services\": [],}"));
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
