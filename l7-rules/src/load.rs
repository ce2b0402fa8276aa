//! Loading policy files: YAML documents → typed raw structs → compiled policies, with every
//! error located by file, line, document, object and field path. A file with any error
//! contributes nothing; all errors of all files are reported together.

use crate::compile;
use crate::diag::{Diagnostic, DocContext, Origin, Severity};
use crate::model::*;
use crate::raw;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Largest policy file accepted (a guard against feeding the loader something huge by mistake).
pub const MAX_POLICY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Field path → line, per document, built from the YAML event stream.
#[derive(Debug, Default)]
pub struct LineIndex {
    /// (document, path) → 1-based line.
    lines: HashMap<(usize, String), usize>,
    /// 1-based line where each document starts.
    pub doc_starts: Vec<usize>,
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

/// Everything loaded from a set of policy files.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub catalog: Catalog,
    /// Warnings of files that loaded (errors make `load` fail instead).
    pub warnings: Vec<Diagnostic>,
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
}

/// Loading failed: at least one error. Carries every diagnostic (errors and warnings).
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in policy files", self.errors().count())]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Expands files and directories (recursively, `*.yaml`/`*.yml`, sorted) into a file list.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        collect(p, &mut out, &mut diags);
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { diagnostics: diags })
    }
}

fn collect(p: &Path, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let io_error = |msg: String| Diagnostic::file_error(p.display().to_string(), msg);
    match std::fs::metadata(p) {
        Err(e) => diags.push(io_error(format!("cannot read: {e}"))),
        Ok(m) if m.is_dir() => match std::fs::read_dir(p) {
            Err(e) => diags.push(io_error(format!("cannot list directory: {e}"))),
            Ok(entries) => {
                let mut children: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                for c in children {
                    let name = c.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with('.') {
                        continue;
                    }
                    if c.is_dir() || name.ends_with(".yaml") || name.ends_with(".yml") {
                        collect(&c, out, diags);
                    }
                }
            }
        },
        Ok(_) => out.push(p.to_path_buf()),
    }
}

/// Loads files and directories. Fails if any document has an error; warnings ride along.
pub fn load_paths(paths: &[PathBuf]) -> Result<PolicySet, LoadError> {
    let files = policy_files(paths)?;
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::metadata(f) {
            Ok(m) if m.len() > MAX_POLICY_FILE_BYTES => diags.push(Diagnostic::file_error(
                name,
                format!("file is larger than {MAX_POLICY_FILE_BYTES} bytes"),
            )),
            _ => match std::fs::read_to_string(f) {
                Ok(text) => sources.push((name, text)),
                Err(e) => diags.push(Diagnostic::file_error(name, format!("cannot read: {e}"))),
            },
        }
    }
    let mut set = load_sources(&sources).map_err(|mut e| {
        diags.append(&mut e.diagnostics);
        LoadError {
            diagnostics: std::mem::take(&mut diags),
        }
    })?;
    if !diags.is_empty() {
        diags.append(&mut set.warnings);
        return Err(LoadError { diagnostics: diags });
    }
    set.files = files;
    Ok(set)
}

/// Loads in-memory sources `(file name, YAML text)`.
pub fn load_sources(sources: &[(String, String)]) -> Result<PolicySet, LoadError> {
    let mut set = PolicySet::default();
    let mut diags = Vec::new();
    for (name, text) in sources {
        load_file(name, text, &mut set, &mut diags);
    }
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(LoadError { diagnostics: diags });
    }
    crate::lint::cross_policy_warnings(&set.policies, &mut diags);
    crate::lint::fqdn_without_dns(&set.policies, &mut diags);
    set.warnings = diags;
    Ok(set)
}

fn load_file(name: &str, text: &str, set: &mut PolicySet, diags: &mut Vec<Diagnostic>) {
    let lines = LineIndex::build(text);
    let mut file_policies = Vec::new();
    let mut file_catalog = Catalog::default();
    let mut file_diags = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_line = lines.doc_starts.get(doc).copied().unwrap_or(1);
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                file_diags.push(Diagnostic {
                    severity: Severity::Error,
                    origin: Origin::File {
                        path: name.to_string(),
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
        let mut cx = DocContext::for_file(name, doc, Some(&lines), doc_line);
        load_document(
            value,
            name,
            doc,
            &mut cx,
            &mut file_policies,
            &mut file_catalog,
        );
        file_diags.append(&mut cx.diags);
    }
    let failed = file_diags.iter().any(|d| d.severity == Severity::Error);
    diags.append(&mut file_diags);
    if !failed {
        set.policies.append(&mut file_policies);
        set.catalog.namespaces.append(&mut file_catalog.namespaces);
        set.catalog.services.append(&mut file_catalog.services);
        set.catalog.nodes.append(&mut file_catalog.nodes);
    }
}

use serde::Deserialize;

fn load_document(
    value: serde_yaml::Value,
    file: &str,
    doc: usize,
    cx: &mut DocContext<'_>,
    policies: &mut Vec<Policy>,
    catalog: &mut Catalog,
) {
    let meta: raw::TypeMeta = match serde_yaml::from_value(value.clone()) {
        Ok(m) => m,
        Err(_) => {
            cx.error(
                "",
                "a policy document must be a mapping with `apiVersion` and `kind`",
            );
            return;
        }
    };
    let (Some(api), Some(kind)) = (meta.api_version.as_deref(), meta.kind.as_deref()) else {
        cx.error("kind", "`apiVersion` and `kind` are required");
        return;
    };
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let object_id = match (&namespace, &name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    };
    cx.object = Some(object_id);
    let policy_kind = match (api, kind) {
        ("cilium.io/v2" | "cilium.io/v2alpha1", "CiliumNetworkPolicy") => {
            Some(PolicyKind::CiliumNetworkPolicy)
        }
        ("cilium.io/v2" | "cilium.io/v2alpha1", "CiliumClusterwideNetworkPolicy") => {
            Some(PolicyKind::CiliumClusterwideNetworkPolicy)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => Some(PolicyKind::NetworkPolicy),
        // Only their names and labels matter: what namespaceSelector and a host policy's
        // nodeSelector select.
        ("v1", kind @ ("Namespace" | "Node")) => {
            if let Some(obj) = typed::<raw::Namespace>(value, cx) {
                let into = if kind == "Node" {
                    &mut catalog.nodes
                } else {
                    &mut catalog.namespaces
                };
                match obj.metadata.name {
                    Some(n) => {
                        into.insert(n, obj.metadata.labels);
                    }
                    None => cx.error("metadata.name", format!("a {kind} needs a name")),
                }
            }
            return;
        }
        ("v1", "Service") => {
            if let Some(svc) = typed::<raw::Service>(value, cx) {
                let Some(n) = svc.metadata.name else {
                    cx.error("metadata.name", "a Service needs a name");
                    return;
                };
                catalog.services.push(ServiceDef {
                    namespace: svc.metadata.namespace.unwrap_or_else(|| "default".into()),
                    name: n,
                    labels: compile::service_labels(&svc.metadata.labels),
                    selector: svc.spec.selector,
                });
            }
            return;
        }
        (_, "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
            cx.error(
                "apiVersion",
                format!("apiVersion {api:?} is not supported for {kind}; use cilium.io/v2"),
            );
            return;
        }
        (_, "NetworkPolicy") => {
            cx.error("apiVersion", format!("apiVersion {api:?} is not supported for NetworkPolicy; use networking.k8s.io/v1"));
            return;
        }
        _ => {
            cx.error(
                "kind",
                format!("unsupported kind {kind:?} ({api}); expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, Namespace or Service"),
            );
            return;
        }
    };
    let Some(policy_kind) = policy_kind else {
        return;
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        cx.error("metadata.name", "the policy needs `metadata.name`");
        return;
    };
    let namespace = match policy_kind {
        PolicyKind::CiliumClusterwideNetworkPolicy => {
            if namespace.is_some() {
                cx.warn(
                    "metadata.namespace",
                    "a CiliumClusterwideNetworkPolicy is not namespaced; `metadata.namespace` is ignored",
                );
            }
            None
        }
        _ => Some(namespace.unwrap_or_else(|| "default".to_string())),
    };
    let meta = Arc::new(PolicyMeta {
        kind: policy_kind,
        namespace,
        name,
        file: file.to_string(),
        document: doc,
    });
    match policy_kind {
        PolicyKind::NetworkPolicy => {
            if let Some(raw) = typed::<raw::K8sNetworkPolicy>(value, cx) {
                policies.extend(compile::k8s_policy(raw, meta, cx));
            }
        }
        _ => {
            if let Some(raw) = typed::<raw::CiliumPolicy>(value, cx) {
                policies.extend(compile::cilium_policy(raw, meta, cx));
            }
        }
    }
}

/// Most type errors collected from one document before giving up.
const MAX_TYPE_ERRORS: usize = 64;

/// Typed deserialisation with the failing field's path. Every error is reported: after one,
/// the offending node is removed and deserialisation retried, so that later errors (and the
/// semantic checks of what remains) are found in the same pass. Any error still rejects the
/// document: `None` is returned after reporting.
fn typed<T: serde::de::DeserializeOwned>(
    mut value: serde_yaml::Value,
    cx: &mut DocContext<'_>,
) -> Option<T> {
    let mut reported: std::collections::HashSet<String> = std::collections::HashSet::new();
    for _ in 0..MAX_TYPE_ERRORS {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            // After recovering, the rest is still compiled so its errors are reported too; the
            // errors already recorded reject the document.
            Ok(v) => return Some(v),
            Err(e) => {
                let segments: Vec<serde_path_to_error::Segment> =
                    e.path().iter().cloned().collect();
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let inner = e.into_inner().to_string();
                let message = inner
                    .split(" at line ")
                    .next()
                    .unwrap_or(&inner)
                    .to_string();
                let unknown = unknown_field_name(&message);
                let field = match &unknown {
                    Some(f) if path.ends_with(f.as_str()) => path.clone(),
                    Some(f) if !path.is_empty() => format!("{path}.{f}"),
                    Some(f) => f.clone(),
                    None => path.clone(),
                };
                let missing = message.starts_with("missing field");
                if !reported.insert(field.clone()) {
                    return None;
                }
                cx.error(&field, message);
                // A missing field cannot be removed; anything else can, to look further.
                let mut target = segments;
                if let Some(f) = unknown.as_ref().filter(|f| !path.ends_with(f.as_str())) {
                    target.push(serde_path_to_error::Segment::Map { key: f.clone() });
                }
                if missing || target.is_empty() || !remove_at(&mut value, &target) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the node at `path` from a YAML value; false if there is none.
fn remove_at(value: &mut serde_yaml::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => {
                match m.get_mut(key.as_str()) {
                    Some(n) => n,
                    None => return false,
                }
            }
            (Segment::Seq { index }, serde_yaml::Value::Sequence(v)) => match v.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, serde_yaml::Value::Sequence(v)) if *index < v.len() => {
            // Keep indices of later elements stable for their error paths.
            v[*index] = serde_yaml::Value::Null;
            true
        }
        _ => false,
    }
}

/// For "unknown field `x`, expected one of ..." the field itself belongs in the path.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
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
