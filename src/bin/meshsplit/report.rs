//! The lines of a `meshsplit check` report, shared by the checks of plugin configurations
//! (`check.rs`) and of Istio route patches (`route_patches.rs`).

use crate::Status;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    Valid(String),
    Invalid(String),
    /// A config that is not valid JSON (a syntax error), like a file that is not: an input
    /// error, whatever the file around it holds.
    Syntax(String),
    Warning(String),
    Note(String),
}

impl Line {
    pub(crate) fn status(&self, strict: bool) -> Status {
        match self {
            Line::Valid(_) | Line::Note(_) => Status::Ok,
            Line::Warning(_) if !strict => Status::Ok,
            Line::Warning(_) | Line::Invalid(_) => Status::Invalid,
            Line::Syntax(_) => Status::Error,
        }
    }
}
