//! Where node state comes from. A source knows an input format and turns what changed into
//! typed [`SourceEvent`]s for the controller, the only writer of node state; no source touches
//! the datapath. File mode is the policy files ([`files`]) plus the admin socket's endpoint
//! commands ([`admin`]).

pub mod admin;
pub mod files;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::SystemTime;

use l7_rules::diag::Diagnostic;

use crate::config::EndpointConfig;

/// The answer to an event that waits for one.
pub type Reply<T> = mpsc::SyncSender<Result<T, String>>;

/// One change for the controller.
pub enum SourceEvent {
    /// Policy files changed: each with its new text, its removal, or why it cannot be read.
    /// `modified` is the newest modification time among them (for the change-to-maps time).
    PolicyFiles {
        changes: Vec<FileChange>,
        modified: Option<SystemTime>,
    },
    /// A source could not read its input at all (a policy directory gone): nothing changes.
    SourceError {
        source: &'static str,
        diagnostics: Vec<Diagnostic>,
    },
    /// The source reads its input again (its error is cleared).
    SourceRecovered { source: &'static str },
    /// A local endpoint to add (its id is answered).
    EndpointAdd {
        endpoint: EndpointConfig,
        reply: Reply<u16>,
    },
    /// A local endpoint to remove, by name.
    EndpointRemove { name: String, reply: Reply<()> },
}

/// One policy file's change.
#[derive(Clone, Debug)]
pub struct FileChange {
    pub path: PathBuf,
    pub content: FileContent,
}

#[derive(Clone, Debug)]
pub enum FileContent {
    Text(String),
    Removed,
    /// Unreadable or too large: rejected, its previous version stays in force.
    Unreadable(Vec<Diagnostic>),
}
