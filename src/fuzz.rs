//! Fuzzing on stable Rust, as plain tests named `fuzz_*`: proptest's runner feeds a target
//! inputs made from a seed corpus by random byte-level and token-level mutations (bit flips,
//! byte inserts, deletes and copies, splices between seeds, interesting tokens), plus purely
//! random bytes. No coverage feedback: the seeds and the tokens steer it instead.
//!
//! - `FUZZ_CASES`: cases per target (default [`DEFAULT_CASES`], so `make test` stays fast);
//! - `FUZZ_SECONDS`: keep running batches of `FUZZ_CASES` (default 2000 then) until that many
//!   seconds have passed (`make fuzz`);
//! - `FUZZ_SEED`: the run's seed (decimal or `0x` hex); random otherwise, and printed.
//!
//! A failure prints the smallest failing input proptest found, as a Rust byte string to paste
//! into a regression test, and the seed that replays the batch. Nothing is written to disk.

// Shared by the library's and the command's tests; each uses a part of it.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

pub use proptest::test_runner::TestCaseError;

/// Cases per target in a plain `cargo test` run.
pub const DEFAULT_CASES: u64 = 5000;
/// Cases per batch when running for `FUZZ_SECONDS` without `FUZZ_CASES`.
const TIMED_BATCH: u64 = 2000;
/// Inputs are cut to this size, so one case stays cheap.
const MAX_LEN: usize = 64 * 1024;

/// Where inputs start from: seeds to mutate, and tokens that mutations insert.
#[derive(Default)]
pub struct Corpus {
    pub seeds: Vec<Vec<u8>>,
    pub tokens: Vec<Vec<u8>>,
    /// More inputs that splices take pieces from, but that are not mutated themselves (files
    /// that a target always refuses as a whole).
    pub donors: Vec<Vec<u8>>,
}

impl Corpus {
    /// A seed or a donor.
    fn any_input(&self, index: &Index) -> &[u8] {
        let n = self.seeds.len() + self.donors.len();
        if n == 0 {
            return &[];
        }
        let i = index.index(n);
        match self.seeds.get(i) {
            Some(seed) => seed,
            None => &self.donors[i - self.seeds.len()],
        }
    }
}

/// One input; printed as a Rust byte string literal.
#[derive(Clone)]
pub struct Input(pub Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&literal(&self.0))
    }
}

/// `bytes` as a Rust byte string literal (`b"..."`).
pub fn literal(bytes: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    /// Copies `len` bytes from one place to another.
    Duplicate(Index, u8, Index),
    /// Inserts a piece of another seed.
    Splice {
        seed: Index,
        from: Index,
        len: u16,
        at: Index,
    },
    /// Keeps the input up to `at`, then another seed from `from`.
    Crossover {
        seed: Index,
        at: Index,
        from: Index,
    },
    InsertToken(Index, Index),
    /// Inserts a token many times (deep nesting, long names).
    RepeatToken(Index, Index, u16),
    /// Replaces one lexical span (a word, a number, a quoted string, a punctuation byte).
    ReplaceSpan(Index, Index),
    DeleteSpan(Index),
    DuplicateSpan(Index),
    SwapSpans(Index, Index),
    Truncate(Index),
    /// Edits the first JSON object in the input as a value, so that the result stays JSON.
    Json(Vec<JsonEdit>, bool),
}

#[derive(Debug, Clone)]
enum JsonEdit {
    /// Replaces a node with an interesting value.
    Replace(Index, Index),
    /// Replaces a node with a copy of another node of the same document.
    Copy(Index, Index),
    Delete(Index),
    /// Repeats an array element (duplicate names, hosts, steps).
    Duplicate(Index),
    /// Renames an object's key to another one the document uses.
    Rename(Index, Index),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let i = || any::<Index>();
    prop_oneof![
        4 => (i(), i()).prop_map(|(n, v)| JsonEdit::Replace(n, v)),
        2 => (i(), i()).prop_map(|(n, m)| JsonEdit::Copy(n, m)),
        2 => i().prop_map(JsonEdit::Delete),
        2 => i().prop_map(JsonEdit::Duplicate),
        1 => (i(), i()).prop_map(|(n, k)| JsonEdit::Rename(n, k)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = || any::<Index>();
    prop_oneof![
        2 => (i(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        1 => (i(), any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        1 => (i(), vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => (i(), 1u8..32).prop_map(|(at, n)| Mutation::Delete(at, n)),
        1 => (i(), 1u8..64, i()).prop_map(|(at, n, to)| Mutation::Duplicate(at, n, to)),
        2 => (i(), i(), 1u16..512, i()).prop_map(|(seed, from, len, at)| Mutation::Splice {
            seed,
            from,
            len,
            at
        }),
        1 => (i(), i(), i()).prop_map(|(seed, at, from)| Mutation::Crossover { seed, at, from }),
        4 => (i(), i()).prop_map(|(t, at)| Mutation::InsertToken(t, at)),
        1 => (i(), i(), 2u16..300).prop_map(|(t, at, n)| Mutation::RepeatToken(t, at, n)),
        5 => (i(), i()).prop_map(|(s, t)| Mutation::ReplaceSpan(s, t)),
        2 => i().prop_map(Mutation::DeleteSpan),
        1 => i().prop_map(Mutation::DuplicateSpan),
        1 => (i(), i()).prop_map(|(a, b)| Mutation::SwapSpans(a, b)),
        1 => i().prop_map(Mutation::Truncate),
        8 => (vec(json_edit(), 1..4), any::<bool>()).prop_map(|(e, pretty)| Mutation::Json(e, pretty)),
    ]
}

/// JSON values worth putting anywhere in a document.
const JSON_VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1",
    "2",
    "1000000",
    "1000001",
    "4294967296",
    "18446744073709551615",
    "-9223372036854775808",
    "0.5",
    "1.5",
    "1e300",
    "-0.0",
    "\"\"",
    "\" \"",
    "\"a\"",
    "\"A\"",
    "\"a b\"",
    "\" a\"",
    "\"a\\u0000\"",
    "\"\\u00ff\"",
    "\"\\ud83d\\udca5\"",
    "\"x-envoy-x\"",
    "\"cookie\"",
    "\":path\"",
    "\"Reviews\"",
    "\"*.example.com\"",
    "\"[::1]:80\"",
    "\"::1\"",
    "\"10.0.0.256\"",
    "\"a..b\"",
    "\"a.\"",
    "\"-a\"",
    "\"2026-12-01T10:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"v1\"",
    "\"v2\"",
    "\"weighted\"",
    "\"round_robin\"",
    "\"least_request\"",
    "\"sticky\"",
    "\"reject\"",
    "\"authority\"",
    "{}",
    "[]",
    "[null]",
    "{\"header\": \"x-h\"}",
    "{\"cookie\": \"c\"}",
    "{\"query\": \"q\"}",
    "{\"header\": \"x\", \"query\": \"q\"}",
];

/// JSON Pointers of every node of `value`, in document order.
fn pointers(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            out.push(at.clone());
            for (key, child) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            out.push(at.clone());
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// Applies `edits` to `value`.
fn edit_json(value: &mut serde_json::Value, edits: &[JsonEdit]) {
    use serde_json::Value;
    for edit in edits {
        let mut all = Vec::new();
        pointers(value, String::new(), &mut all);
        let node = |i: &Index| all[i.index(all.len())].clone();
        // The parent's pointer and the last segment, unescaped.
        let split = |p: &str| {
            let (parent, last) = p.rsplit_once('/')?;
            Some((
                parent.to_owned(),
                last.replace("~1", "/").replace("~0", "~"),
            ))
        };
        match edit {
            JsonEdit::Replace(n, v) => {
                let text = JSON_VALUES[v.index(JSON_VALUES.len())];
                if let (Some(slot), Ok(new)) = (
                    value.pointer_mut(&node(n)),
                    serde_json::from_str::<Value>(text),
                ) {
                    *slot = new;
                }
            }
            JsonEdit::Copy(n, m) => {
                let copy = value.pointer(&node(m)).cloned();
                if let (Some(slot), Some(copy)) = (value.pointer_mut(&node(n)), copy) {
                    *slot = copy;
                }
            }
            JsonEdit::Delete(n) => {
                let Some((parent, last)) = split(&node(n)) else {
                    continue;
                };
                match value.pointer_mut(&parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            JsonEdit::Duplicate(n) => {
                let Some((parent, last)) = split(&node(n)) else {
                    continue;
                };
                if let Some(Value::Array(items)) = value.pointer_mut(&parent) {
                    if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get(i)) {
                        let item = item.clone();
                        items.push(item);
                    }
                }
            }
            JsonEdit::Rename(n, k) => {
                let keys: Vec<String> = all
                    .iter()
                    .filter_map(|p| split(p))
                    .map(|(_, k)| k)
                    .collect();
                let Some((parent, last)) = split(&node(n)) else {
                    continue;
                };
                let new = keys[k.index(keys.len())].clone();
                if let Some(Value::Object(map)) = value.pointer_mut(&parent) {
                    if let Some(child) = map.remove(&last) {
                        map.insert(new, child);
                    }
                }
            }
        }
    }
}

/// Lexical spans: a quoted string, a run of word bytes (names and numbers), a run of white
/// space, or any other single byte.
fn spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b"_-.+".contains(&b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let b = bytes[i];
        i += 1;
        if b == b'"' {
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else if word(b) {
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
        } else if b.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        out.push((start, i));
    }
    out
}

/// A position from 0 to `len`, both included.
fn at(index: &Index, len: usize) -> usize {
    index.index(len + 1)
}

fn pick<'a>(items: &'a [Vec<u8>], index: &Index) -> &'a [u8] {
    if items.is_empty() {
        return &[];
    }
    &items[index.index(items.len())]
}

fn apply(corpus: &Corpus, input: &mut Vec<u8>, mutation: &Mutation) {
    let len = input.len();
    match mutation {
        Mutation::FlipBit(i, bit) if len > 0 => input[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) if len > 0 => input[i.index(len)] = *b,
        Mutation::Insert(i, bytes) => {
            let p = at(i, len);
            input.splice(p..p, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let p = at(i, len);
            input.drain(p..(p + usize::from(*n)).min(len));
        }
        Mutation::Duplicate(i, n, to) => {
            let p = at(i, len);
            let piece = input[p..(p + usize::from(*n)).min(len)].to_vec();
            let to = at(to, len);
            input.splice(to..to, piece);
        }
        Mutation::Splice {
            seed,
            from,
            len: n,
            at: i,
        } => {
            let other = corpus.any_input(seed);
            let from = at(from, other.len());
            let piece = &other[from..(from + usize::from(*n)).min(other.len())];
            let p = at(i, len);
            input.splice(p..p, piece.iter().copied());
        }
        Mutation::Crossover { seed, at: i, from } => {
            let other = corpus.any_input(seed);
            let from = at(from, other.len());
            input.truncate(at(i, len));
            input.extend_from_slice(&other[from..]);
        }
        Mutation::InsertToken(t, i) => {
            let p = at(i, len);
            input.splice(p..p, pick(&corpus.tokens, t).iter().copied());
        }
        Mutation::RepeatToken(t, i, n) => {
            let p = at(i, len);
            let token = pick(&corpus.tokens, t);
            input.splice(p..p, token.repeat(usize::from(*n)));
        }
        Mutation::ReplaceSpan(s, t) => {
            let spans = spans(input);
            if !spans.is_empty() {
                let (a, b) = spans[s.index(spans.len())];
                input.splice(a..b, pick(&corpus.tokens, t).iter().copied());
            }
        }
        Mutation::DeleteSpan(s) => {
            let spans = spans(input);
            if !spans.is_empty() {
                let (a, b) = spans[s.index(spans.len())];
                input.drain(a..b);
            }
        }
        Mutation::DuplicateSpan(s) => {
            let spans = spans(input);
            if !spans.is_empty() {
                let (a, b) = spans[s.index(spans.len())];
                let piece = input[a..b].to_vec();
                input.splice(b..b, piece);
            }
        }
        Mutation::SwapSpans(x, y) => {
            let spans = spans(input);
            if !spans.is_empty() {
                let (mut p, mut q) = (spans[x.index(spans.len())], spans[y.index(spans.len())]);
                if p.0 > q.0 {
                    std::mem::swap(&mut p, &mut q);
                }
                if p.1 <= q.0 {
                    let (first, second) = (input[p.0..p.1].to_vec(), input[q.0..q.1].to_vec());
                    input.splice(q.0..q.1, first);
                    input.splice(p.0..p.1, second);
                }
            }
        }
        Mutation::Truncate(i) => input.truncate(at(i, len)),
        Mutation::Json(edits, pretty) => {
            let Some(start) = input.iter().position(|&b| b == b'{') else {
                return;
            };
            let mut stream = serde_json::Deserializer::from_slice(&input[start..])
                .into_iter::<serde_json::Value>();
            let Some(Ok(mut value)) = stream.next() else {
                return;
            };
            let end = start + stream.byte_offset();
            edit_json(&mut value, edits);
            let text = if *pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            };
            if let Ok(text) = text {
                input.splice(start..end, text);
            }
        }
        Mutation::FlipBit(..) | Mutation::SetByte(..) => {}
    }
    input.truncate(MAX_LEN);
}

/// A few mutations mostly, sometimes many.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        4 => vec(mutation(), 1..=2),
        2 => vec(mutation(), 3..=6),
        1 => vec(mutation(), 7..=16),
    ]
}

/// Inputs: mostly mutated seeds, some random bytes and some random token strings.
fn inputs(corpus: Arc<Corpus>) -> impl Strategy<Value = Input> {
    let mutated = Arc::clone(&corpus);
    let tokens = Arc::clone(&corpus);
    let edited = Arc::clone(&corpus);
    prop_oneof![
        1 => vec(any::<u8>(), 0..512).prop_map(Input),
        1 => vec(any::<Index>(), 0..48).prop_map(move |picks| {
            Input(picks.iter().flat_map(|t| pick(&tokens.tokens, t).to_vec()).collect())
        }),
        8 => (any::<Index>(), mutations()).prop_map(move |(seed, mutations)| {
            let mut input = pick(&mutated.seeds, &seed).to_vec();
            for m in &mutations {
                apply(&mutated, &mut input, m);
            }
            Input(input)
        }),
        // Edits of JSON values only: documents that parse, so that validation is what decides.
        3 => (any::<Index>(), vec(json_edit(), 1..3)).prop_map(move |(seed, edits)| {
            let mut input = pick(&edited.seeds, &seed).to_vec();
            apply(&edited, &mut input, &Mutation::Json(edits, false));
            Input(input)
        }),
    ]
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={text:?} is not a number"),
    }
}

fn random_seed() -> u64 {
    // RandomState is seeded from the OS: a fresh seed per run without another crate.
    RandomState::new().build_hasher().finish()
}

/// Runs `check` on inputs made from `corpus` (see the module docs for the environment), and
/// prints one line: target, cases, seconds, seed.
pub fn fuzz(name: &str, corpus: Corpus, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) {
    let seconds = env_number("FUZZ_SECONDS");
    let cases = env_number("FUZZ_CASES").unwrap_or(if seconds.is_some() {
        TIMED_BATCH
    } else {
        DEFAULT_CASES
    });
    let seed = env_number("FUZZ_SEED").unwrap_or_else(random_seed);
    let strategy = inputs(Arc::new(corpus));
    let started = Instant::now();
    let mut done = 0u64;
    for batch in 0u64.. {
        let batch_seed = seed.wrapping_add(batch);
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&batch_seed.to_le_bytes());
        let config = Config {
            cases: u32::try_from(cases).unwrap_or(u32::MAX),
            failure_persistence: None,
            max_shrink_iters: 10_000,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        match runner.run(&strategy, |input| check(&input.0)) {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                eprintln!(
                    "fuzz {name}: failed: {reason}\n  input ({} bytes): {input:?}\n  replay: \
                     FUZZ_SEED={batch_seed:#x} FUZZ_CASES={cases}",
                    input.0.len()
                );
                // Once more outside the runner, so that a panic shows where it happened.
                if let Err(err) = check(&input.0) {
                    panic!("fuzz {name}: {err}");
                }
                panic!("fuzz {name}: {reason}");
            }
            Err(TestError::Abort(reason)) => panic!("fuzz {name}: aborted: {reason}"),
        }
        done += cases;
        match seconds {
            Some(limit) if started.elapsed().as_secs() < limit => {}
            _ => break,
        }
    }
    println!(
        "fuzz {name}: {done} cases in {:.1} s (FUZZ_SEED={seed:#x})",
        started.elapsed().as_secs_f64()
    );
}

/// Files in `dir` (relative to the crate) whose names end in one of `extensions`, sorted.
pub fn files(dir: &str, extensions: &[&str]) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.to_string_lossy();
            extensions.iter().any(|ext| name.ends_with(ext))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// The shipped configs: every JSON and YAML file in `envoy/` and `envoy/istio/`.
pub fn shipped_configs() -> Vec<Vec<u8>> {
    let mut seeds = files("envoy", &[".json", ".yaml"]);
    seeds.extend(files("envoy/istio", &[".yaml"]));
    seeds
}

/// The JSON objects with a `services` field embedded in `text` (plugin configs inside YAML
/// block scalars), each as its exact text.
pub fn embedded_plugin_configs(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, _) in text.iter().enumerate().filter(|(_, &b)| b == b'{') {
        let mut stream =
            serde_json::Deserializer::from_slice(&text[i..]).into_iter::<serde_json::Value>();
        if let Some(Ok(value)) = stream.next() {
            if value
                .get("services")
                .is_some_and(serde_json::Value::is_array)
            {
                out.push(text[i..i + stream.byte_offset()].to_vec());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Tokens worth inserting into any input: syntax of JSON and YAML, numbers at and beyond every
/// limit, bytes that are not UTF-8, separators of the request's own little grammars.
pub fn common_tokens() -> Vec<Vec<u8>> {
    let text: &[&str] = &[
        "\"",
        "\\",
        "\\\"",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        ";",
        "=",
        "&",
        "?",
        "#",
        "%",
        "+",
        "*",
        "/",
        ".",
        "-",
        "_",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\0",
        "''",
        "\"\"",
        "{}",
        "[]",
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "-1",
        "0.5",
        "1.5",
        "-1.5",
        "1e3",
        "1e309",
        "-1e309",
        "1e-400",
        "NaN",
        "Infinity",
        "255",
        "256",
        "65535",
        "65536",
        "1000000",
        "1000001",
        "2147483647",
        "2147483648",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999",
        "0x10",
        "010",
        "\\u0000",
        "\\ud800",
        "\\udc00\\ud800",
        "\\uffff",
        "%00",
        "%0",
        "%ff",
        "%FF",
        "%zz",
        "%2",
        "%25",
        "%3D",
        "%26",
        "%2B",
        "[::1]",
        "::1",
        "[::1]:8080",
        "10.0.0.1",
        "10.0.0.256",
        ":80",
        ":65536",
        ":",
        "..",
        "a.",
        "-a",
        "A",
        "\u{130}",
        "\u{212a}",
        "\u{feff}",
        "\u{202e}",
        "é",
        "💥",
        "---",
        "- ",
        "? ",
        "&a ",
        "*a",
        "!!str ",
        "!!binary ",
        "<<: ",
        "|",
        ">",
        "~",
        ".inf",
        ".nan",
        "%YAML 1.2\n",
        "# c\n",
    ];
    let bytes: &[&[u8]] = &[
        b"\xff",
        b"\xfe",
        b"\x80",
        b"\xc0\x80",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\x7f",
        b"\x1b",
    ];
    let mut tokens: Vec<Vec<u8>> = text.iter().map(|t| t.as_bytes().to_vec()).collect();
    tokens.extend(bytes.iter().map(|b| b.to_vec()));
    tokens.push(b"a".repeat(64));
    tokens.push(b"a".repeat(300));
    tokens.push(b"[".repeat(200));
    tokens.push(b"{\"a\":".repeat(200));
    tokens
}

/// Tokens of the plugin configuration: its field names, values and time stamps.
pub fn config_tokens() -> Vec<Vec<u8>> {
    let words = [
        "\"services\"",
        "\"name\"",
        "\"hosts\"",
        "\"upstreams\"",
        "\"cluster\"",
        "\"authority\"",
        "\"weight\"",
        "\"strategy\"",
        "\"hash_on\"",
        "\"rules\"",
        "\"match\"",
        "\"headers\"",
        "\"cookies\"",
        "\"query\"",
        "\"exact\"",
        "\"prefix\"",
        "\"present\"",
        "\"upstream\"",
        "\"guard\"",
        "\"error_rate\"",
        "\"min_requests\"",
        "\"window_s\"",
        "\"eject_s\"",
        "\"max_ejected_percent\"",
        "\"latency\"",
        "\"percentile\"",
        "\"threshold_ms\"",
        "\"rollout\"",
        "\"start\"",
        "\"interpolate\"",
        "\"steps\"",
        "\"at_s\"",
        "\"weights\"",
        "\"cluster_header\"",
        "\"service_from\"",
        "\"on_unknown_service\"",
        "\"authority\"",
        "\"header\"",
        "\"cookie\"",
        "\"weighted\"",
        "\"round_robin\"",
        "\"least_request\"",
        "\"sticky\"",
        "\"pass\"",
        "\"reject\"",
        "\"x-meshsplit-cluster\"",
        "\"x-envoy-original-dst-host\"",
        "\"host\"",
        "\":path\"",
        "\":authority\"",
        "\"2026-12-01T10:00:00Z\"",
        "\"1970-01-01T00:00:00Z\"",
        "\"9999-12-31T23:59:59.999Z\"",
        "\"2026-12-01T10:00:00+01:00\"",
        "\"2026-02-30T10:00:00Z\"",
        "\"v1\"",
        "\"v2\"",
        "\"reviews\"",
        "\"reviews_v1\"",
        "\"v1.0\"",
        "\"v1_0\"",
        "{\"name\": \"v9\", \"cluster\": \"c9\", \"weight\": 1}",
        "{\"name\": \"s9\", \"upstreams\": [{\"name\": \"v\", \"cluster\": \"c\", \"weight\": 1}]}",
        "{\"match\": {\"headers\": [{\"name\": \"x\", \"present\": true}]}, \"upstream\": \"v1\"}",
        "{\"at_s\": 18446744073709551615, \"weights\": {\"v1\": 1}}",
        "{\"error_rate\": 0.5}",
        "{\"latency\": {\"percentile\": 99.9, \"threshold_ms\": 250}}",
        "\"typed_config\"",
        "\"@type\"",
        "\"type.googleapis.com/google.protobuf.StringValue\"",
        "\"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\"",
        "\"configuration\"",
        "\"value\"",
        "\"config\"",
        "\"pluginConfig\"",
        "\"resources\"",
        "\"static_resources\"",
        "\"listeners\"",
        "\"apiVersion\"",
        "\"kind\"",
        "\"EnvoyFilter\"",
        "\"WasmPlugin\"",
        "\"TrafficExtension\"",
        "\"List\"",
        "\"items\"",
        "\"configPatches\"",
        "\"spec\"",
        "\"metadata\"",
        "\"default_config\"",
        "\"dynamic_module_config\"",
        "\"filter_config\"",
        "\"specifier_config\"",
    ];
    let mut tokens: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    // The same names bare, for YAML.
    tokens.extend(
        words
            .iter()
            .filter(|w| w.len() > 2 && !w.contains(' '))
            .map(|w| w.trim_matches('"').as_bytes().to_vec()),
    );
    tokens.extend(common_tokens());
    tokens
}
