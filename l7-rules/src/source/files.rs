//! Policy files on disk: which files a set of paths names, reading them (bounded in size), and
//! loading them all at once.

use super::{load_sources, LoadError, PolicySet};
use crate::diag::Diagnostic;
use std::path::{Path, PathBuf};

/// Largest policy file accepted (a guard against feeding the loader something huge by mistake).
pub const MAX_POLICY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Expands files and directories (recursively, `*.yaml`/`*.yml`, sorted) into a file list.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        collect(p, true, &mut out, &mut diags);
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { diagnostics: diags })
    }
}

/// `root`: a path as configured (it must exist); otherwise found in a directory, and one
/// removed between the listing and the look (an editor's temporary file) is simply gone.
fn collect(p: &Path, root: bool, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let io_error = |msg: String| Diagnostic::file_error(p.display().to_string(), msg);
    match std::fs::metadata(p) {
        Err(e) if !root && e.kind() == std::io::ErrorKind::NotFound => {}
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
                        collect(&c, false, out, diags);
                    }
                }
            }
        },
        Ok(_) => out.push(p.to_path_buf()),
    }
}

/// Reads one policy file, refusing one larger than [`MAX_POLICY_FILE_BYTES`].
pub fn read_policy_file(path: &Path) -> Result<String, LoadError> {
    let name = path.display().to_string();
    let refused = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_POLICY_FILE_BYTES => Diagnostic::file_error(
            name,
            format!("file is larger than {MAX_POLICY_FILE_BYTES} bytes"),
        ),
        _ => match std::fs::read_to_string(path) {
            Ok(text) => return Ok(text),
            Err(e) => Diagnostic::file_error(name, format!("cannot read: {e}")),
        },
    };
    Err(LoadError {
        diagnostics: vec![refused],
    })
}

/// Loads files and directories. Fails if any document has an error; warnings ride along.
pub fn load_paths(paths: &[PathBuf]) -> Result<PolicySet, LoadError> {
    let files = policy_files(paths)?;
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for f in &files {
        match read_policy_file(f) {
            Ok(text) => sources.push((f.display().to_string(), text)),
            Err(mut e) => diags.append(&mut e.diagnostics),
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
