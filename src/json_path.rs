//! The JSON path (`services[0].upstreams[1].weight`) of a position in a JSON document.
//!
//! serde_json reports where an error happened as a line and column; this scanner turns that
//! position back into the path of the field being read, so configuration errors can name it.
//! (A path-tracking deserializer wrapper does the same at a far larger module size.)

enum Frame {
    Object { key: Option<String>, in_value: bool },
    Array { index: usize },
}

/// Byte offset of a 1-based line and column (as serde_json counts them) in `text`.
pub fn offset_of(text: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0;
    for _ in 1..line {
        match text
            .get(offset..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            Some(newline) => offset += newline + 1,
            None => return text.len(),
        }
    }
    (offset + column).min(text.len())
}

/// The path of the innermost field or element open at byte `offset`; empty at the top level.
pub fn path_at(text: &[u8], offset: usize) -> String {
    let text = text.get(..offset).unwrap_or(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'{' => stack.push(Frame::Object {
                key: None,
                in_value: false,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b':' => {
                if let Some(Frame::Object { in_value, .. }) = stack.last_mut() {
                    *in_value = true;
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { key, in_value }) => {
                    *key = None;
                    *in_value = false;
                }
                None => {}
            },
            b'"' => {
                let (string, end) = read_string(text, i + 1);
                if let Some(Frame::Object {
                    key,
                    in_value: false,
                }) = stack.last_mut()
                {
                    *key = Some(string);
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// Reads a string body starting after its opening quote; returns it (escapes kept as written,
/// except `\"` and `\\`) and the index after the closing quote (or the end of the text).
fn read_string(text: &[u8], start: usize) -> (String, usize) {
    let mut bytes = Vec::new();
    let mut i = start;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'"' => return (String::from_utf8_lossy(&bytes).into_owned(), i + 1),
            b'\\' => {
                if let Some(&next) = text.get(i + 1) {
                    if next != b'"' && next != b'\\' {
                        bytes.push(b'\\');
                    }
                    bytes.push(next);
                }
                i += 2;
            }
            _ => {
                bytes.push(byte);
                i += 1;
            }
        }
    }
    (String::from_utf8_lossy(&bytes).into_owned(), i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_before(text: &str, marker: &str) -> String {
        path_at(text.as_bytes(), text.find(marker).unwrap())
    }

    #[test]
    fn top_level_is_empty() {
        assert_eq!(path_at(b"{}", 1), "");
        assert_eq!(path_at(b"", 0), "");
    }

    #[test]
    fn nested_fields_and_indexes() {
        let text =
            r#"{"services": [{"name": "a"}, {"upstreams": [{"weight": 1}, {"weight": X}]}]}"#;
        assert_eq!(path_before(text, "X"), "services[1].upstreams[1].weight");
    }

    #[test]
    fn key_just_read_is_part_of_the_path() {
        let text = r#"{"services": [{"nmae""#;
        assert_eq!(path_at(text.as_bytes(), text.len()), "services[0].nmae");
    }

    #[test]
    fn closed_containers_are_left() {
        let text = r#"{"a": [1, 2], "b": {"c": 1}, "d": X}"#;
        assert_eq!(path_before(text, "X"), "d");
    }

    #[test]
    fn strings_with_brackets_and_escaped_quotes_do_not_confuse_it() {
        let text = r#"{"a": "x[{\"y", "k\"ey": X}"#;
        assert_eq!(path_before(text, "X"), "k\"ey");
    }

    #[test]
    fn offset_of_counts_lines_and_columns() {
        let text = b"ab\ncde\nf";
        assert_eq!(offset_of(text, 1, 2), 2);
        assert_eq!(offset_of(text, 2, 3), 6);
        assert_eq!(offset_of(text, 9, 1), text.len());
    }
}
