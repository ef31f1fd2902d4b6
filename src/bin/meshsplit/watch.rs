//! `meshsplit apply --watch`: apply CONFIG whenever a save of it is complete.

use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::apply::{apply, Applied, Args};
use crate::load::{compile, found_in, pick, Failure};
use crate::output::say;
use crate::source::decode;
use crate::Status;

/// How often `--watch` looks at CONFIG.
///
/// Polling, not file-system events: reading a small file ten times a second costs nothing
/// measurable, needs no dependency, and sees every way a file can change: editors that write in
/// place, editors that write a new file and rename it over the old one (the path is opened
/// afresh each time), and file systems that send no events at all (network mounts, bind mounts
/// into containers, Kubernetes ConfigMap volumes). The content is compared, not only the
/// mtime, so coarse timestamps cannot hide a save. A change is seen within one interval.
const POLL: Duration = Duration::from_millis(100);

/// What one look at CONFIG saw: its bytes (or why they could not be read), size and
/// modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Look {
    content: Result<Vec<u8>, String>,
    stamp: Option<(u64, Option<SystemTime>)>,
}

fn look(path: &std::path::Path) -> Look {
    let stamp = fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    let content = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "no such file (missing?)".to_owned(),
        _ => format!("cannot read: {e}"),
    });
    Look { content, stamp }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The `--watch` loop: apply CONFIG whenever its content changes and then settles, until
/// Ctrl-C or SIGTERM.
///
/// A save is applied only once CONFIG has looked the same (bytes, size and modification time)
/// on every look for `--settle-ms`. A file written in place (a shell redirection, a paste, an
/// editor without rename) is seen part-written on some looks, and a truncated YAML or JSON file
/// is often a valid config (an upstream or a rule missing): validity says nothing about being
/// finished, quiet does. A writer that pauses longer than the settle time mid-file cannot be
/// told from one that finished: raise --settle-ms for such writers, or save by rename.
pub fn run(args: &Args) -> Status {
    if let Some(status) = crate::apply::missing_target(args) {
        return status;
    }
    if args.config.as_os_str() == "-" {
        return Failure::usage("--watch needs CONFIG to be a file, not standard input").report();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        return Failure::usage(format!("cannot handle Ctrl-C: {e}")).report();
    }
    let settle = Duration::from_millis(args.settle_ms);
    let name = args.config.display().to_string();
    say!(
        "{} watching {name}: applying it to {} on every change, once unchanged for {} ms \
         (Ctrl-C to stop)",
        now(),
        args.to.display(),
        args.settle_ms
    );
    // The content last handled (applied, found unchanged, or refused), and the look being
    // waited on with the time it was first seen.
    let mut handled: Option<Result<Vec<u8>, String>> = None;
    let mut pending: Option<(Look, Instant)> = None;
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        let current = look(&args.config);
        if handled.as_ref() == Some(&current.content) {
            pending = None;
        } else {
            match &pending {
                Some((seen, since)) if *seen == current => {
                    if since.elapsed() >= settle
                        && handle(args, &name, &current.content, &mut last_error)
                    {
                        handled = Some(current.content);
                        pending = None;
                    }
                }
                _ => pending = Some((current, Instant::now())),
            }
        }
        std::thread::sleep(POLL);
    }
    say!("{} stopped watching {name}", now());
    Status::Ok
}

/// Applies (or refuses) one settled content and prints its line; `false` when the apply
/// failed and is to be retried on the next look (the ECDS file may come back).
fn handle(
    args: &Args,
    name: &str,
    content: &Result<Vec<u8>, String>,
    last_error: &mut String,
) -> bool {
    let loaded = match content {
        Err(why) => Err(Failure::usage(format!("{name}: {why}"))),
        Ok(bytes) => decode(bytes.clone())
            .map_err(|e| Failure::usage(format!("{name}: {e}")))
            .and_then(|text| found_in(name, &text))
            .and_then(|found| pick(name, found, args.config_index))
            .and_then(|found| compile(name, &found)),
    };
    let new = match loaded {
        Ok(new) => new,
        Err(failure) => {
            let what = match failure.status {
                Status::Invalid => failure.message.replace('\n', "; "),
                _ => failure.message,
            };
            say!(
                "{} refused: {what}; the previous config keeps serving",
                now()
            );
            last_error.clear();
            return true;
        }
    };
    match apply(args, &new) {
        Ok(Applied::Written { from, to, diff }) => {
            say!(
                "{} applied {name} to {} (version {} → {to}): {}",
                now(),
                args.to.display(),
                from.as_deref().unwrap_or("(new file)"),
                diff.one_line()
            );
        }
        Ok(Applied::Unchanged { version }) => {
            say!(
                "{} unchanged: {} already holds {name} (version {version})",
                now(),
                args.to.display()
            );
        }
        // Retried on the next look; said once.
        Err(failure) => {
            if failure.message != *last_error {
                say!("{} error: {}", now(), failure.message);
                *last_error = failure.message;
            }
            return false;
        }
    }
    last_error.clear();
    true
}
