//! Where a plugin config sits in its file, so that an error's position is the file's own.
//!
//! The filter reads a config as JSON text, and its errors give positions in that text
//! (`at line 1 column 407`). That text is the file's only when the file is the config, as JSON.
//! A config written in YAML (a YAML file, a WasmPlugin's `pluginConfig`) is handed to the filter
//! as JSON made from the YAML, on one line: its positions are replaced by the line and column of
//! the YAML node the error's path names. A config embedded as a string (an Envoy
//! `StringValue`) keeps the filter's position, said to be inside the string, with the file's
//! line where it can be known (a literal block scalar, `value: |`, keeps the lines).

use std::fmt;
use std::rc::Rc;

use meshsplit::plan::ConfigError;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path from a document's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Field(String),
    Index(usize),
}

/// A node of a file: the document it is in (counted from 0 in the file's YAML stream, empty
/// documents included) and its path from that document's root.
#[derive(Debug, Clone)]
pub struct Node {
    /// The file's text; `None` for a document that is no file's.
    file: Option<Rc<str>>,
    document: usize,
    path: Vec<Key>,
}

/// A line and column in a file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

impl Node {
    /// The root of document `document` of the file whose text is `file`.
    pub fn root(file: Option<Rc<str>>, document: usize) -> Self {
        Self {
            file,
            document,
            path: Vec::new(),
        }
    }

    pub fn field(&self, name: &str) -> Self {
        self.child(Key::Field(name.to_owned()))
    }

    pub fn index(&self, index: usize) -> Self {
        self.child(Key::Index(index))
    }

    /// The node at `keys` below this one.
    pub fn join(&self, keys: &[Key]) -> Self {
        let mut node = self.clone();
        node.path.extend_from_slice(keys);
        node
    }

    fn child(&self, key: Key) -> Self {
        self.join(std::slice::from_ref(&key))
    }

    /// Where the node starts in the file: for a map entry, its key. A path that leaves the file's
    /// nodes stops at the last node it reaches. `None` when the file is not at hand or its
    /// text is not YAML (JSON is).
    pub fn locate(&self) -> Option<Mark> {
        self.find(true)
    }

    /// Where the node starts; a map entry's at its key when `at_key`, else at its value.
    fn find(&self, at_key: bool) -> Option<Mark> {
        let file = self.file.as_deref()?;
        let document = serde_norway::Deserializer::from_str(file).nth(self.document)?;
        let locate = Locate {
            path: &self.path,
            at_key,
        };
        let error = match locate.deserialize(document) {
            Ok(()) => return None,
            Err(error) => error,
        };
        if !error.to_string().contains(HERE) {
            return None;
        }
        let location = error.location()?;
        Some(Mark {
            line: location.line(),
            column: location.column(),
        })
    }

    /// Where the string at this node starts, and how its lines are the file's.
    fn string_start(&self) -> Option<(Mark, Lines)> {
        let mark = self.find(false)?;
        let file = self.file.as_deref()?;
        let line = file.lines().nth(mark.line.checked_sub(1)?)?;
        let start = line.char_indices().nth(mark.column.checked_sub(1)?)?.0;
        let rest = line.get(start..)?;
        let lines = match rest.chars().next() {
            Some('|') => Lines::Literal,
            Some(quote @ ('"' | '\'')) if closes(rest.get(1..)?, quote) => Lines::One,
            _ => Lines::Folded,
        };
        Some((mark, lines))
    }
}

/// How the lines of a string's text are the file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// A literal block scalar (`|`): the text's line N is the file's line `start + N`.
    Literal,
    /// A quoted string closed on the line it starts on: all its text is on that line.
    One,
    /// Anything else: the text's line breaks are not the file's.
    Folded,
}

/// Whether a string quoted with `quote` whose text (after the opening quote) starts `rest` ends
/// on this line.
fn closes(rest: &str, quote: char) -> bool {
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quote == '"' => {
                chars.next();
            }
            // In single quotes, '' is a quote.
            '\'' if quote == '\'' => {
                if !chars.as_str().starts_with('\'') {
                    return true;
                }
                chars.next();
            }
            c if c == quote => return true,
            _ => {}
        }
    }
    false
}

/// How a config's text relates to its file.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The text is the file's own (a JSON plugin config file): positions are the file's. Also a
    /// config that is no file's, whose positions are its own.
    Text,
    /// JSON made from the YAML node here: positions are replaced by the node's.
    Node(Node),
    /// The text of the string at this node (a `StringValue`'s `value`).
    Embedded(Node),
}

impl Origin {
    /// `error` (the filter's, for this config's text) with positions in the file's terms.
    pub fn describe(&self, error: &ConfigError) -> String {
        let Some((message, at)) = split_position(&error.message) else {
            return error.to_string();
        };
        let message = match self {
            Origin::Text => return error.to_string(),
            Origin::Node(node) => {
                let target = node.join(&parse_path(&error.path));
                match target.locate() {
                    Some(mark) => format!("{message} at {mark}"),
                    None => message.to_owned(),
                }
            }
            Origin::Embedded(node) => format!("{message} at {}", inside(node, at)),
        };
        let error = ConfigError {
            path: error.path.clone(),
            message,
        };
        error.to_string()
    }

    /// Where position `at` of the config's text is, in words: `line 3 column 5`, or for an
    /// embedded string `line 3 column 5 inside the embedded JSON string (line 94 of the file)`.
    pub fn place(&self, at: Mark) -> String {
        match self {
            Origin::Embedded(node) => inside(node, at),
            Origin::Text | Origin::Node(_) => at.to_string(),
        }
    }
}

/// Position `at` of the text of the string at `node`, in the string and in the file.
fn inside(node: &Node, at: Mark) -> String {
    let file = match node.string_start() {
        Some((start, Lines::Literal)) => format!(" (line {} of the file)", start.line + at.line),
        Some((start, Lines::One)) => format!(" (line {} of the file)", start.line),
        Some((start, Lines::Folded)) => {
            format!(" (the string starts at line {} of the file)", start.line)
        }
        None => String::new(),
    };
    format!("{at} inside the embedded JSON string{file}")
}

/// `(message, position)` of a message that ends in serde_json's `at line L column C`.
pub fn split_position(message: &str) -> Option<(&str, Mark)> {
    let (message, tail) = message.rsplit_once(" at line ")?;
    let (line, column) = tail.split_once(" column ")?;
    Some((
        message,
        Mark {
            line: line.parse().ok()?,
            column: column.parse().ok()?,
        },
    ))
}

/// The keys of a config error's path, `services[0].upstreams[1].weight`.
fn parse_path(path: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            keys.push(Key::Field(name.to_owned()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(index) = index.parse() {
                keys.push(Key::Index(index));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    keys
}

/// The error [`Locate`] stops with; the YAML deserializer gives it the position of the node
/// being read.
const HERE: &str = "\u{0}meshsplit-node-here";

/// Walks `path` down a YAML document and fails at the node it ends on (at the key, for a map
/// entry, when `at_key`), or at the last node it reaches. Never succeeds where the path leads
/// anywhere.
struct Locate<'a> {
    path: &'a [Key],
    at_key: bool,
}

fn here<E: de::Error>() -> E {
    E::custom(HERE)
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.path.is_empty() {
            deserializer.deserialize_any(Stop)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Key::Field(name), rest)) = self.path.split_first() else {
            return Err(here());
        };
        let last = rest.is_empty() && self.at_key;
        while let Some(found) = map.next_key_seed(KeyIs { name, last })? {
            if found {
                return map.next_value_seed(Locate {
                    path: rest,
                    at_key: self.at_key,
                });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(here())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Key::Index(index), rest)) = self.path.split_first() else {
            return Err(here());
        };
        for _ in 0..*index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(here());
            }
        }
        match seq.next_element_seed(Locate {
            path: rest,
            at_key: self.at_key,
        })? {
            Some(()) => Ok(()),
            None => Err(here()),
        }
    }

    // Any other node is where the path leaves the document.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(here())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(here())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(here())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(here())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(here())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }
}

/// Fails at any node: the one the path ends on.
struct Stop;

impl<'de> Visitor<'de> for Stop {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any node")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(here())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(here())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(here())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(here())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(here())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(here())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(here())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }
}

/// A map key: whether it is `name`; the last step of a path stops at the key itself.
struct KeyIs<'a> {
    name: &'a str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        let found = key == self.name;
        if found && self.last {
            return Err(here());
        }
        Ok(found)
    }
    fn visit_bool<E: de::Error>(self, key: bool) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_i64<E: de::Error>(self, key: i64) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_u64<E: de::Error>(self, key: u64) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_f64<E: de::Error>(self, key: f64) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.visit_str("null")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(text: &str, document: usize) -> Node {
        Node::root(Some(Rc::from(text)), document)
    }

    fn at(line: usize, column: usize) -> Option<Mark> {
        Some(Mark { line, column })
    }

    const YAML: &str = "\
# a comment
services:
- name: reviews
  upstreams:
  - name: v1
    weight: 1
  - {name: v2, wieght: 3}
";

    #[test]
    fn a_path_is_found_at_its_key_or_its_item() {
        let root = node(YAML, 0);
        let path = |p: &str| root.join(&parse_path(p)).locate();
        assert_eq!(path("services"), at(2, 1));
        assert_eq!(path("services[0]"), at(3, 3));
        assert_eq!(path("services[0].upstreams[0].weight"), at(6, 5));
        assert_eq!(path("services[0].upstreams[1]"), at(7, 5));
        assert_eq!(path("services[0].upstreams[1].wieght"), at(7, 16));
        // A path that leaves the document stops at the last node it reaches.
        assert_eq!(path("services[0].upstreams[5].weight"), at(5, 3));
        assert_eq!(path("services[0].upstreams[0].weight.x"), at(6, 13));
        assert_eq!(root.locate(), at(2, 1));
    }

    #[test]
    fn documents_are_counted_in_the_stream_empty_ones_too() {
        let text = "---\n# empty\n---\na: 1\n---\nb:\n  c: 2\n";
        assert_eq!(node(text, 2).field("b").field("c").locate(), at(7, 3));
        assert_eq!(node(text, 5).locate(), None);
        assert_eq!(Node::root(None, 0).locate(), None);
    }

    #[test]
    fn paths_of_config_errors_are_read() {
        assert_eq!(
            parse_path("services[0].upstreams[12].weight"),
            [
                Key::Field("services".into()),
                Key::Index(0),
                Key::Field("upstreams".into()),
                Key::Index(12),
                Key::Field("weight".into()),
            ]
        );
        assert_eq!(parse_path(""), []);
        assert_eq!(
            split_position("unknown field at line 1 column 407"),
            Some((
                "unknown field",
                Mark {
                    line: 1,
                    column: 407
                }
            ))
        );
        assert_eq!(split_position("must be at most 5"), None);
    }

    fn error(path: &str, message: &str) -> ConfigError {
        ConfigError {
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn a_yaml_node_gets_the_files_position_instead_of_the_jsons() {
        let origin = Origin::Node(node(YAML, 0));
        assert_eq!(
            origin.describe(&error(
                "services[0].upstreams[1].wieght",
                "unknown field \"wieght\" at line 1 column 137"
            )),
            "services[0].upstreams[1].wieght: unknown field \"wieght\" at line 7 column 16"
        );
        // No position: nothing to replace.
        assert_eq!(
            origin.describe(&error(
                "services[0].upstreams[0].weight",
                "must be at most 1"
            )),
            "services[0].upstreams[0].weight: must be at most 1"
        );
        // JSON text that is the file's keeps its positions.
        assert_eq!(
            Origin::Text.describe(&error("x", "bad at line 3 column 4")),
            "x: bad at line 3 column 4"
        );
    }

    #[test]
    fn an_embedded_string_gives_both_its_own_position_and_the_files_line() {
        let text = "\
config:
  literal: |
    {
      \"a\": 1
    }
  quoted: \"{\\\"a\\\": 1}\"
  single: '{''a'': 1}'
  folded: \"{\\\"a\\\":
    1}\"
";
        let root = node(text, 0).field("config");
        let mark = Mark { line: 2, column: 7 };
        let place = |key: &str| Origin::Embedded(root.field(key)).place(mark);
        assert_eq!(
            place("literal"),
            "line 2 column 7 inside the embedded JSON string (line 4 of the file)"
        );
        assert_eq!(
            place("quoted"),
            "line 2 column 7 inside the embedded JSON string (line 6 of the file)"
        );
        assert_eq!(
            place("single"),
            "line 2 column 7 inside the embedded JSON string (line 7 of the file)"
        );
        assert_eq!(
            place("folded"),
            "line 2 column 7 inside the embedded JSON string (the string starts at line 8 of \
             the file)"
        );
        assert_eq!(
            Origin::Embedded(Node::root(None, 0)).place(mark),
            "line 2 column 7 inside the embedded JSON string"
        );
        assert_eq!(Origin::Text.place(mark), "line 2 column 7");
    }
}
