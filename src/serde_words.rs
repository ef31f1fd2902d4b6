//! serde's error messages in the configuration's own words.
//!
//! serde and serde_json describe a mismatch in Rust terms: `invalid type: map, expected a
//! sequence`, `expected u64`, `expected struct RawConfig`, backquoted names. An operator wrote
//! JSON: these become `expected a list, got an object`, `expected a whole number`, `expected an
//! object`, and JSON-quoted names. Configure-time code only.

/// `message` (a serde_json error's text, perhaps ending in ` at line L column C`) reworded.
pub fn reword(message: &str) -> String {
    let (text, position) = split_position(message);
    let reworded = if let Some(rest) = text
        .strip_prefix("invalid type: ")
        .or_else(|| text.strip_prefix("invalid value: "))
    {
        match rest.rsplit_once(", expected ") {
            Some((got, expected)) => format!(
                "expected {}, got {}",
                expected_words(expected),
                got_words(got)
            ),
            None => quotes(text),
        }
    } else if let Some(rest) = text.strip_prefix("unknown variant ") {
        // A value outside a fixed set: `"strategy": "random"`.
        match rest.split_once(", expected ") {
            Some((got, expected)) => {
                format!(
                    "expected {}, got the string {}",
                    quotes(expected),
                    quotes(got)
                )
            }
            None => quotes(text),
        }
    } else if let Some(rest) = text.strip_prefix("invalid length ") {
        match rest.split_once(", expected ") {
            // serde reads an object from a list by position, and says so in these words when
            // the list runs out before a required field.
            Some((_, expected)) if expected.starts_with("struct ") => {
                "expected an object, got a list".to_owned()
            }
            Some((length, expected)) => {
                format!("expected {}, got {length} items", expected_words(expected))
            }
            None => quotes(text),
        }
    } else if text.starts_with("expected struct ") {
        "expected an object".to_owned()
    } else if let Some(words) = json_syntax(text) {
        words.to_owned()
    } else {
        quotes(text)
    };
    format!("{reworded}{position}")
}

/// (`text`, ` at line L column C` or "").
fn split_position(message: &str) -> (&str, &str) {
    match message.rfind(" at line ") {
        Some(at)
            if message
                .get(at..)
                .is_some_and(|tail| tail.contains(" column ")) =>
        {
            (
                message.get(..at).unwrap_or(message),
                message.get(at..).unwrap_or(""),
            )
        }
        _ => (message, ""),
    }
}

/// serde_json's syntax errors whose words are a parser's: `expected ident` where `tru` stands.
fn json_syntax(text: &str) -> Option<&'static str> {
    Some(match text {
        "expected ident" => "invalid JSON: expected true, false or null",
        "expected value" => "invalid JSON: expected a value",
        "EOF while parsing a value" => "invalid JSON: the document ends where a value should be",
        "EOF while parsing a list" => "invalid JSON: the document ends inside a list",
        "EOF while parsing an object" => "invalid JSON: the document ends inside an object",
        "EOF while parsing a string" => "invalid JSON: the document ends inside a string",
        _ => return None,
    })
}

/// What serde expected, in JSON's terms.
fn expected_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "an object".to_owned(),
        e if e.starts_with("struct ") => "an object".to_owned(),
        e => quotes(e),
    }
}

/// What the document held, in JSON's terms: `string "x"` is `the string "x"`, `integer `7``
/// the number 7, `map` an object.
fn got_words(got: &str) -> String {
    let ticked = |prefix: &str| {
        got.strip_prefix(prefix)
            .and_then(|v| v.strip_prefix('`'))
            .and_then(|v| v.strip_suffix('`'))
            .map(str::to_owned)
    };
    if let Some(string) = got.strip_prefix("string ") {
        format!("the string {string}")
    } else if let Some(n) = ticked("integer ").or_else(|| ticked("floating point ")) {
        format!("the number {n}")
    } else if let Some(b) = ticked("boolean ") {
        b
    } else {
        match got {
            "map" => "an object".to_owned(),
            "sequence" => "a list".to_owned(),
            "unit value" | "null" => "null".to_owned(),
            other => quotes(other),
        }
    }
}

/// serde's backquoted names (`field`) as JSON strings ("field").
fn quotes(text: &str) -> String {
    text.replace('`', "\"")
}

#[cfg(test)]
mod tests {
    use super::reword;

    #[test]
    fn rewords_serde_vocabulary() {
        for (serde, person) in [
            (
                "invalid type: map, expected a sequence at line 1 column 9",
                "expected a list, got an object at line 1 column 9",
            ),
            (
                "invalid type: integer `7`, expected a string",
                "expected a string, got the number 7",
            ),
            (
                "invalid type: string \"20\", expected u64",
                "expected a whole number (0 or more), got the string \"20\"",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "expected a whole number (0 or more), got the number -1",
            ),
            (
                "invalid type: string \"half\", expected f64",
                "expected a number, got the string \"half\"",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, got the string \"yes\"",
            ),
            (
                "invalid type: sequence, expected a string",
                "expected a string, got a list",
            ),
            (
                "invalid type: null, expected a string",
                "expected a string, got null",
            ),
            (
                "invalid type: floating point `1.5`, expected u32",
                "expected a whole number (0 or more), got the number 1.5",
            ),
            (
                "unknown variant `drop`, expected `pass` or `reject`",
                "expected \"pass\" or \"reject\", got the string \"drop\"",
            ),
            (
                "unknown field `wieght`, expected one of `name`, `weight`",
                "unknown field \"wieght\", expected one of \"name\", \"weight\"",
            ),
            (
                "missing field `services` at line 1 column 2",
                "missing field \"services\" at line 1 column 2",
            ),
            (
                "invalid type: sequence, expected struct RawConfig",
                "expected an object, got a list",
            ),
            ("expected struct RawConfig", "expected an object"),
            (
                "invalid length 4, expected struct RawConfig with 5 elements",
                "expected an object, got a list",
            ),
            (
                "trailing characters at line 3 column 1",
                "trailing characters at line 3 column 1",
            ),
            (
                "expected ident at line 4 column 3",
                "invalid JSON: expected true, false or null at line 4 column 3",
            ),
            (
                "expected `,` or `}` at line 1 column 5",
                "expected \",\" or \"}\" at line 1 column 5",
            ),
        ] {
            assert_eq!(reword(serde), person, "{serde}");
        }
    }

    #[test]
    fn a_string_that_looks_like_the_message_stays_whole() {
        assert_eq!(
            reword("invalid type: string \"a, expected b\", expected u64"),
            "expected a whole number (0 or more), got the string \"a, expected b\""
        );
    }
}
