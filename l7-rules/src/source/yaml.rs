//! One YAML text → its documents' objects, every error located by line and document; and the
//! index from field paths to lines that locates them.

use super::object::{compile_object, Object};
use crate::diag::{Diagnostic, DocContext, FieldLines, Origin, Severity};
use serde::Deserialize;
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The objects of a file that has no error: `(document index, object)`, in document order.
/// Empty documents hold no object.
pub type FileObjects = Vec<(usize, Object)>;

/// Parses every document of file `path`. Any error rejects the whole file: the error carries
/// every diagnostic of the file (errors and warnings), in document order.
pub fn parse_file(path: &str, text: &str) -> Result<FileObjects, Vec<Diagnostic>> {
    let lines = LineIndex::build(text);
    let mut objects = Vec::new();
    let mut diags = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_line = lines.doc_starts.get(doc).copied().unwrap_or(1);
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    origin: Origin::File {
                        path: path.to_string(),
                        line: e.location().map(|l| l.line()),
                        document: doc,
                    },
                    object: None,
                    field: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                // The stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let cx = DocContext::for_file(path, doc, Some(&lines), doc_line);
        match compile_object(value, cx) {
            Ok(object) => {
                diags.extend(object.warnings.iter().cloned());
                objects.push((doc, object));
            }
            Err(mut d) => diags.append(&mut d),
        }
    }
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(diags);
    }
    Ok(objects)
}

/// Field path → line, per document, built from the YAML event stream.
#[derive(Debug, Default)]
pub struct LineIndex {
    /// (document, path) → 1-based line.
    lines: HashMap<(usize, String), usize>,
    /// 1-based line where each document starts.
    pub doc_starts: Vec<usize>,
}

impl FieldLines for LineIndex {
    fn line_of(&self, document: usize, field: &str) -> Option<usize> {
        LineIndex::line_of(self, document, field)
    }
}

impl LineIndex {
    pub fn build(text: &str) -> LineIndex {
        let mut b = IndexBuilder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error stops indexing; serde_yaml reports the error with its own location.
        let _ = parser.load(&mut b, true);
        b.index
    }

    /// The line of `path`, or of its closest ancestor that has one.
    pub fn line_of(&self, document: usize, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(&(document, p.to_string())) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map {
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        index: usize,
    },
}

#[derive(Default)]
struct IndexBuilder {
    index: LineIndex,
    doc: usize,
    stack: Vec<Frame>,
    /// The path of the node being started, by frame.
    paths: Vec<String>,
    in_doc: bool,
}

impl IndexBuilder {
    fn current_child_path(&self) -> Option<String> {
        let parent = self.paths.last()?;
        match self.stack.last()? {
            Frame::Map {
                key: Some(k),
                expecting_key: false,
            } => Some(if parent.is_empty() {
                k.clone()
            } else {
                format!("{parent}.{k}")
            }),
            Frame::Seq { index } => Some(format!("{parent}[{index}]")),
            _ => None,
        }
    }

    /// Called when a value node (scalar or collection) starts.
    fn value_started(&mut self, line: usize) -> Option<String> {
        let path = self.current_child_path();
        if let Some(p) = &path {
            self.index
                .lines
                .entry((self.doc, p.clone()))
                .or_insert(line);
        }
        path
    }

    /// Called when a value node ends.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, expecting_key }) => {
                *key = None;
                *expecting_key = true;
            }
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::DocumentStart => {
                self.in_doc = true;
                self.stack.clear();
                self.paths = vec![String::new()];
                while self.index.doc_starts.len() <= self.doc {
                    self.index.doc_starts.push(line);
                }
                self.index.doc_starts[self.doc] = line;
            }
            Event::DocumentEnd => {
                if self.in_doc {
                    self.doc += 1;
                }
                self.in_doc = false;
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.value_started(line)
                };
                self.paths.push(path.unwrap_or_default());
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        key: None,
                        expecting_key: true,
                    }
                } else {
                    Frame::Seq { index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.paths.pop();
                self.value_done();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key, expecting_key }) = self.stack.last_mut() {
                    if *expecting_key {
                        *key = Some(value);
                        *expecting_key = false;
                        // Index the key's line as the field's line.
                        if let Some(p) = self.current_child_path() {
                            self.index.lines.entry((self.doc, p)).or_insert(line);
                        }
                        return;
                    }
                }
                self.value_started(line);
                self.value_done();
            }
            Event::Alias(_) => {
                self.value_started(line);
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_finds_nested_fields() {
        let text = "a: 1\n---\nspec:\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        org: empire\n    toPorts:\n    - ports:\n      - port: \"80\"\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of(0, "a"), Some(1));
        assert_eq!(idx.line_of(1, "spec"), Some(3));
        assert_eq!(idx.line_of(1, "spec.ingress"), Some(4));
        assert_eq!(
            idx.line_of(1, "spec.ingress[0].fromEndpoints[0].matchLabels.org"),
            Some(7)
        );
        assert_eq!(
            idx.line_of(1, "spec.ingress[0].toPorts[0].ports[0].port"),
            Some(10)
        );
        // Unknown leaf: nearest ancestor.
        assert_eq!(
            idx.line_of(1, "spec.ingress[0].toPorts[0].ports[0].nope"),
            Some(10)
        );
    }
}
