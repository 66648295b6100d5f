//! Diagnostics: what a policy load says about a file, with the place it says it.
//!
//! Every problem found while loading policies becomes one `Diagnostic`; a load collects all of
//! them before failing, so a user fixes a file in one pass instead of one error per run.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How bad a diagnostic is: errors refuse the load, warnings are printed and the load goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, located at `file:line:column` (1-based, as editors count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn error(loc: &Location, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, loc, message)
    }

    pub fn warning(loc: &Location, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, loc, message)
    }

    fn new(severity: Severity, loc: &Location, message: impl Into<String>) -> Self {
        Self {
            severity,
            file: loc.file.clone(),
            line: loc.line,
            column: loc.column,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Logs it as one event (for `serve` and reloads), the place as fields so a JSON log
    /// keeps them apart; `patternd check` prints the `Display` form instead.
    pub fn log(&self) {
        let file = self.file.display();
        match self.severity {
            Severity::Error => tracing::error!(
                target: "patternd::policy",
                %file, line = self.line, column = self.column, "{}", self.message
            ),
            Severity::Warning => tracing::warn!(
                target: "patternd::policy",
                %file, line = self.line, column = self.column, "{}", self.message
            ),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A place in a policy file. Kept on IR items so later stages (compile warnings, runtime
/// errors about a rule) can still point at the YAML that caused them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub fn new(file: &Path, line: usize, column: usize) -> Self {
        Self {
            file: file.to_path_buf(),
            line: line.max(1),
            column: column.max(1),
        }
    }

    /// The start of a file, for problems that have no better place (an unreadable file).
    pub fn file_start(file: &Path) -> Self {
        Self::new(file, 1, 1)
    }

    pub fn from_span(file: &Path, span: &marked_yaml::Span) -> Self {
        match span.start() {
            Some(m) => Self::new(file, m.line(), m.column()),
            None => Self::file_start(file),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// All diagnostics of a failed load, errors and warnings together.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.0))]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
