//! Printing that a closed standard output or error cannot abort.
//!
//! `println!` panics when the reader has gone (`meshsplit apply … | head -1`, a closed
//! terminal): Rust ignores SIGPIPE, so the write fails with EPIPE instead of ending the process.
//! The work a line reports is already done by then, so a line nobody reads is dropped: the
//! command ends with the status it would have had, and `apply --watch` keeps watching.

use std::fmt::Arguments;
use std::io::{self, Write as _};

/// Writes to standard output; a write error (a closed pipe) is dropped.
pub fn out(args: Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_fmt(args).and_then(|()| stdout.flush());
}

/// Writes to standard error; a write error is dropped.
pub fn err(args: Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// `println!` to standard output that never panics.
macro_rules! say {
    ($($arg:tt)*) => { $crate::output::out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that never panics.
macro_rules! say_err {
    ($($arg:tt)*) => { $crate::output::err(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {say, say_err};
