//! Where node state comes from. A source knows an input format and turns what changed into
//! typed [`SourceEvent`]s for the controller, the only writer of node state; no source touches
//! the datapath. File mode is the policy files ([`files`]) plus the admin socket's endpoint
//! commands ([`admin`]).

pub mod admin;
pub mod files;
#[cfg(feature = "kubernetes")]
pub mod kube;

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
    /// The process this one took the sockets over from has drained: learn what its final
    /// FQDN checkpoint holds that this one's cache lacks.
    RestoreFqdn,
    /// Write the FQDN checkpoint now (a drained process, before the next one reads it).
    SaveFqdn { reply: Reply<()> },
    /// A local endpoint to add (its id is answered).
    EndpointAdd {
        endpoint: EndpointConfig,
        reply: Reply<u16>,
    },
    /// One of this node's pods as its object in the API says (its address and interface may
    /// be unknown yet: empty). It is an endpoint once it has both, from the object, the route
    /// to it or `ward-cni`; changed in place when one of that name exists (same id: its hooks
    /// stay attached, so a relabelled pod is never unenforced in between). Answers the
    /// endpoint's id, or none while it waits.
    Pod {
        endpoint: EndpointConfig,
        reply: Reply<Option<u16>>,
    },
    /// One of this node's pods is gone (or no endpoint any more: finished, host network).
    PodGone {
        namespace: String,
        name: String,
        reply: Reply<()>,
    },
    /// `ward-cni` ADD: a pod's interface and addresses.
    CniAdd {
        attachment: crate::admin::api::CniAttachment,
        reply: Reply<Option<u16>>,
    },
    /// `ward-cni` DEL: the pod's sandbox is going; so is its endpoint.
    CniDel {
        container_id: String,
        namespace: String,
        name: String,
        reply: Reply<()>,
    },
    /// The source's first state has been sent whole (Kubernetes mode: every watcher listed
    /// once): the node is ready once it is applied.
    Synced { source: &'static str },
    /// Other nodes' pods that appeared, changed or went (`None`), by address.
    RemotePods(Vec<(std::net::Ipv4Addr, Option<crate::state::RemotePod>)>),
    /// A local endpoint to remove, by name.
    EndpointRemove { name: String, reply: Reply<()> },
    /// Addresses an allowed DNS answer carried for a name some `toFQDNs` selector selects
    /// (sent by the DNS proxy, which holds the answer until `done`).
    FqdnLearned(FqdnAnswer),
}

/// What one DNS answer taught.
#[derive(Debug)]
pub struct FqdnAnswer {
    /// The client that asked (an endpoint's address).
    pub client: std::net::Ipv4Addr,
    /// The query name, normalised (lower-case, trailing dot).
    pub name: String,
    pub ips: Vec<std::net::Ipv4Addr>,
    /// The answer's TTL, seconds.
    pub ttl: u32,
    /// Answered once the maps hold the addresses (or nothing changed).
    pub done: tokio::sync::oneshot::Sender<()>,
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
