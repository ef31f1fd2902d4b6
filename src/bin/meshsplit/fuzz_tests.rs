//! Fuzz target of `meshsplit check` (see `src/fuzz.rs`): any file text through the same steps as
//! the command (documents, the configs found in them, each config's report and plan).

use crate::check::check_one;
use crate::fuzz::{self, Corpus, TestCaseError};
use crate::load::{compile, found_in};

/// Reads `bytes` as `check` reads a file (invalid UTF-8 is an input error there, so it is
/// replaced here, to reach the parsers), then finds, checks and compiles every config.
/// Never panics; each config found gets a report line.
pub(crate) fn check_file(bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    // A `.yaml` file is always YAML; any other is JSON when it starts like JSON.
    for name in ["fuzz.yaml", "fuzz.json"] {
        let Ok(found) = found_in(name, &text) else {
            continue;
        };
        for config in &found {
            let lines = check_one(name, config);
            proptest::prop_assert!(!lines.is_empty(), "no report for {}", config.place);
            for line in &lines {
                let _ = line.to_string();
            }
            let _ = compile(name, config);
        }
    }
    Ok(())
}

#[test]
fn fuzz_check_extraction() {
    let seeds = fuzz::shipped_configs();
    let corpus = Corpus {
        seeds,
        tokens: fuzz::config_tokens(),
        donors: Vec::new(),
    };
    fuzz::fuzz("check_extraction", corpus, check_file);
}

#[test]
fn shipped_configs_are_found_and_checked() {
    for seed in fuzz::shipped_configs() {
        check_file(&seed).unwrap();
    }
}
