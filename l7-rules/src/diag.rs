//! Diagnostics: every error or warning names the file, line, document, object and field path.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based line of the field (or of the closest enclosing field found).
    pub line: Option<usize>,
    /// 0-based YAML document index in the file.
    pub document: usize,
    /// `CiliumNetworkPolicy default/rule1`, when known.
    pub object: Option<String>,
    /// `spec.ingress[0].toPorts[0].rules.http[1].path`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": document {}", self.document)?;
        if let Some(obj) = &self.object {
            write!(f, " ({obj})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects diagnostics for one document, resolving field paths to lines.
pub struct DocContext<'a> {
    pub file: &'a str,
    pub document: usize,
    pub object: Option<String>,
    pub lines: &'a crate::load::LineIndex,
    /// Line where this document starts (fallback when a field has no line).
    pub doc_line: usize,
    pub diags: Vec<Diagnostic>,
}

impl DocContext<'_> {
    fn push(&mut self, severity: Severity, field: &str, message: String) {
        let line = self
            .lines
            .line_of(self.document, field)
            .or(Some(self.doc_line));
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line,
            document: self.document,
            object: self.object.clone(),
            field: field.to_string(),
            message,
        });
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, field, message.into());
    }

    pub fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, field, message.into());
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
}
