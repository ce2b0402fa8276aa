//! Diagnostics: every error or warning names where its object came from (a file's path, line
//! and document, or a cluster object's kind, namespace and name), the object and the field path.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// Where the object a diagnostic is about came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A YAML document in a policy file.
    File {
        path: String,
        /// 1-based line of the field (or of the closest enclosing field found).
        line: Option<usize>,
        /// 0-based YAML document index in the file.
        document: usize,
    },
    /// An object read from the cluster (no file, no line).
    Object {
        kind: String,
        namespace: Option<String>,
        name: String,
    },
}

impl Origin {
    /// A whole file (reading or listing it failed), before any document.
    pub fn file(path: impl Into<String>) -> Origin {
        Origin::File {
            path: path.into(),
            line: None,
            document: 0,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line,
                document,
            } => {
                write!(f, "{path}")?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                write!(f, ": document {document}")
            }
            Origin::Object {
                kind,
                namespace: Some(ns),
                name,
            } => write!(f, "{kind} {ns}/{name}"),
            Origin::Object {
                kind,
                namespace: None,
                name,
            } => write!(f, "{kind} {name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    /// `CiliumNetworkPolicy default/rule1`, when known.
    pub object: Option<String>,
    /// `spec.ingress[0].toPorts[0].rules.http[1].path`.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    /// An error about a whole file (it cannot be listed or read).
    pub fn file_error(path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            origin: Origin::file(path),
            object: None,
            field: String::new(),
            message: message.into(),
        }
    }

    /// The file the object came from, if it came from one.
    pub fn file(&self) -> Option<&str> {
        match &self.origin {
            Origin::File { path, .. } => Some(path),
            Origin::Object { .. } => None,
        }
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        match &self.origin {
            Origin::File { line, .. } => *line,
            Origin::Object { .. } => None,
        }
    }

    /// The 0-based YAML document index in the file.
    pub fn document(&self) -> Option<usize> {
        match &self.origin {
            Origin::File { document, .. } => Some(*document),
            Origin::Object { .. } => None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.origin)?;
        // A cluster object's origin already names it.
        if let (Origin::File { .. }, Some(obj)) = (&self.origin, &self.object) {
            write!(f, " ({obj})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a field of a document is written: the source format knows (the YAML source's
/// `LineIndex`); a diagnostic only asks.
pub trait FieldLines {
    /// The 1-based line of `field` (`spec.ingress[0]…`) in document `document`, if known.
    fn line_of(&self, document: usize, field: &str) -> Option<usize>;
}

/// Collects diagnostics for one document (or one cluster object), resolving field paths to
/// lines when the text they came from is known.
pub struct DocContext<'a> {
    /// Where every diagnostic points; a file origin's line is filled in per field.
    origin: Origin,
    /// Field path → line for a file's documents; `None` for a cluster object.
    lines: Option<&'a dyn FieldLines>,
    pub object: Option<String>,
    pub diags: Vec<Diagnostic>,
}

impl<'a> DocContext<'a> {
    /// Diagnostics for document `document` of file `path`, which starts at line `doc_line`
    /// (the fallback when a field has no line of its own).
    pub fn for_file(
        path: &str,
        document: usize,
        lines: Option<&'a dyn FieldLines>,
        doc_line: usize,
    ) -> DocContext<'a> {
        DocContext {
            origin: Origin::File {
                path: path.to_string(),
                line: Some(doc_line),
                document,
            },
            lines,
            object: None,
            diags: Vec::new(),
        }
    }

    /// Diagnostics for an object that did not come from a file.
    pub fn for_object(kind: &str, namespace: Option<&str>, name: &str) -> DocContext<'a> {
        DocContext {
            origin: Origin::Object {
                kind: kind.to_string(),
                namespace: namespace.map(str::to_string),
                name: name.to_string(),
            },
            lines: None,
            object: None,
            diags: Vec::new(),
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    fn push(&mut self, severity: Severity, field: &str, message: String) {
        let mut origin = self.origin.clone();
        if let Origin::File { line, document, .. } = &mut origin {
            if let Some(found) = self.lines.and_then(|l| l.line_of(*document, field)) {
                *line = Some(found);
            }
        }
        self.diags.push(Diagnostic {
            severity,
            origin,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_by_origin() {
        let file = Diagnostic {
            severity: Severity::Error,
            origin: Origin::File {
                path: "p.yaml".into(),
                line: Some(7),
                document: 1,
            },
            object: Some("CiliumNetworkPolicy default/rule1".into()),
            field: "spec.ingress[0]".into(),
            message: "bad".into(),
        };
        assert_eq!(
            file.to_string(),
            "error: p.yaml:7: document 1 (CiliumNetworkPolicy default/rule1): spec.ingress[0]: bad"
        );
        let whole_file = Diagnostic::file_error("p.yaml", "cannot read: gone");
        assert_eq!(
            whole_file.to_string(),
            "error: p.yaml: document 0: cannot read: gone"
        );
        let object = Diagnostic {
            severity: Severity::Warning,
            origin: Origin::Object {
                kind: "CiliumNetworkPolicy".into(),
                namespace: Some("default".into()),
                name: "rule1".into(),
            },
            object: Some("CiliumNetworkPolicy default/rule1".into()),
            field: "spec.ingress[0]".into(),
            message: "bad".into(),
        };
        assert_eq!(
            object.to_string(),
            "warning: CiliumNetworkPolicy default/rule1: spec.ingress[0]: bad"
        );
        let cluster_wide = Diagnostic {
            origin: Origin::Object {
                kind: "CiliumClusterwideNetworkPolicy".into(),
                namespace: None,
                name: "all".into(),
            },
            field: String::new(),
            ..object
        };
        assert_eq!(
            cluster_wide.to_string(),
            "warning: CiliumClusterwideNetworkPolicy all: bad"
        );
        assert_eq!(cluster_wide.file(), None);
        assert_eq!(file.line(), Some(7));
    }
}
