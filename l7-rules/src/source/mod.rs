//! Where policies come from, turned into one [`PolicySet`]: policy files ([`files`], each YAML
//! text parsed by [`yaml`]) and, through the [`store`], objects keyed one by one (a file's
//! documents, or cluster objects). Both meet in [`object`], which compiles one object with
//! every error located by origin, object and field path. An object (and a file) with any
//! error contributes nothing; all errors are reported together.
//!
//! `object.rs` is a module of its own, beside the three the layout names, because the YAML
//! files and the cluster objects share it and neither owns it.

pub mod files;
pub mod object;
pub mod store;
pub mod yaml;

pub use files::{load_paths, policy_files, read_policy_file, MAX_POLICY_FILE_BYTES};
pub use object::{Content, Object};
pub use store::{ObjectKey, PolicyStore, StoreChange};
pub use yaml::LineIndex;

use crate::diag::{Diagnostic, Severity};
use crate::model::{Catalog, Policy};
use std::path::PathBuf;

/// Everything loaded from a set of policy files (or from a store).
#[derive(Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub catalog: Catalog,
    /// Warnings of objects that loaded (errors make loading fail instead).
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

/// Loads in-memory sources `(file name, YAML text)`, in the order given.
pub fn load_sources(sources: &[(String, String)]) -> Result<PolicySet, LoadError> {
    let mut objects = Vec::new();
    // Every file's diagnostics in file order: warnings ride along with the errors.
    let mut diags = Vec::new();
    let mut failed = false;
    for (name, text) in sources {
        match yaml::parse_file(name, text) {
            Ok(file) => {
                for (_, o) in file {
                    diags.extend(o.warnings.iter().cloned());
                    objects.push(o);
                }
            }
            Err(mut d) => {
                failed = true;
                diags.append(&mut d);
            }
        }
    }
    if failed {
        return Err(LoadError { diagnostics: diags });
    }
    Ok(assemble(objects.iter(), Vec::new()))
}

/// One policy set from objects in order: their policies, their catalog objects (a later name
/// wins), their warnings, then the warnings that need every policy in view.
pub(crate) fn assemble<'a>(
    objects: impl Iterator<Item = &'a Object>,
    files: Vec<PathBuf>,
) -> PolicySet {
    let mut set = PolicySet {
        files,
        ..PolicySet::default()
    };
    for o in objects {
        set.warnings.extend(o.warnings.iter().cloned());
        match &o.content {
            Content::Policies(p) => set.policies.extend(p.iter().cloned()),
            Content::Namespace { name, labels } => {
                set.catalog.namespaces.insert(name.clone(), labels.clone());
            }
            Content::Node {
                name,
                labels,
                addresses,
            } => {
                set.catalog.nodes.insert(name.clone(), labels.clone());
                if !addresses.is_empty() {
                    set.catalog
                        .node_addresses
                        .insert(name.clone(), addresses.clone());
                }
            }
            Content::Service(s) => set.catalog.services.push(s.clone()),
            Content::EndpointSlice(s) => set.catalog.endpoint_slices.push(s.clone()),
        }
    }
    crate::lint::cross_policy_warnings(&set.policies, &mut set.warnings);
    crate::lint::fqdn_without_dns(&set.policies, &mut set.warnings);
    set
}
