//! Kubernetes mode's policy source (`policy_source: kubernetes`): kube-rs watchers on
//! CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, and the Namespaces,
//! Nodes, Services and EndpointSlices the policies' selectors read, each object handed to
//! the controller as one policy document named `Kind namespace/name` (cluster-scoped:
//! `Kind name`), so that it goes through the same per-document pipeline as a policy file: a bad
//! object is refused with its name, line and field while the rest keeps enforcing, and its
//! previous version stays in force.
//!
//! A relist (the first list, a 410 Gone, a reconnect) is gathered whole and compared with what
//! the controller already has: only objects that changed, appeared or went are sent, so a relist
//! never removes and re-adds what the new state also has. While the API server is unreachable
//! nothing is sent, and the last state keeps enforcing; the watchers retry with kube-rs's
//! default backoff (0.8 s doubling to 30 s).
//!
//! A refused object gets a Kubernetes Event ([`events`]). Pods are [`pods`]' (this node's are its
//! endpoints, the others' addresses get their labels' identities).
//!
//! EndpointSlices count for Services without selector (toServices).
//!
//! Not yet: status conditions on refused objects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tracing::{info, warn};

pub mod events;
pub mod pods;

use super::{FileChange, FileContent, SourceEvent};
use crate::config::KubernetesSection;

/// The kinds watched: (group, version, kind, plural).
const KINDS: &[(&str, &str, &str, &str)] = &[
    (
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    ),
    (
        "cilium.io",
        "v2",
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
    ),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
    ),
    // Their labels feed namespaceSelector and namespace labels in identities.
    ("", "v1", "Namespace", "namespaces"),
    // Their labels feed host policies' nodeSelector; the others' addresses are remote-node.
    ("", "v1", "Node", "nodes"),
    // Their selectors feed toServices.
    ("", "v1", "Service", "services"),
    // A Service without selector stands for its slices' addresses in toServices (those of
    // Services with selectors, made by the EndpointSlice controller, are left out: the
    // selector says the same, and they change with every pod).
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
];

/// The label the EndpointSlice controller puts on the slices it makes from selectors.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Whether an object of `kind` counts for policy (see [`KINDS`]).
fn wanted(kind: &str, obj: &DynamicObject) -> bool {
    kind != "EndpointSlice"
        || obj
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY))
            .map(String::as_str)
            != Some(SLICE_CONTROLLER)
}

/// The source's name in `ward status` and logs.
pub(crate) const SOURCE: &str = "kubernetes";

/// The document name of an object: `Kind namespace/name`, or `Kind name` when cluster-scoped.
pub fn document_name(kind: &str, namespace: Option<&str>, name: &str) -> PathBuf {
    PathBuf::from(match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    })
}

/// The policy document of an object: its `apiVersion`, `kind`, `metadata` (name, namespace,
/// labels) and, for policies and Services, the rest but `status`, as YAML (a Namespace is its
/// labels, a Node its labels and addresses). Server-set fields are left out so that a status or resourceVersion
/// change alone is no change.
fn document(kind: &str, api_version: &str, obj: &DynamicObject) -> String {
    let mut meta = serde_json::Map::new();
    if let Some(n) = &obj.metadata.name {
        meta.insert("name".into(), n.clone().into());
    }
    if let Some(ns) = &obj.metadata.namespace {
        meta.insert("namespace".into(), ns.clone().into());
    }
    if let Some(l) = &obj.metadata.labels {
        meta.insert("labels".into(), serde_json::to_value(l).unwrap_or_default());
    }
    let mut doc = serde_json::Map::new();
    doc.insert("apiVersion".into(), api_version.into());
    doc.insert("kind".into(), kind.into());
    doc.insert("metadata".into(), meta.into());
    let labels_only = matches!(kind, "Namespace" | "Node");
    if let (serde_json::Value::Object(data), false) = (&obj.data, labels_only) {
        for (k, v) in data {
            if k != "status" {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
    // A Node's addresses make it `remote-node` elsewhere; the rest of its status (conditions,
    // heartbeats) changes all the time and matters to no policy.
    if kind == "Node" {
        let addresses: Vec<&serde_json::Value> = obj.data["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| matches!(a["type"].as_str(), Some("InternalIP" | "ExternalIP")))
            .collect();
        if !addresses.is_empty() {
            doc.insert(
                "status".into(),
                serde_json::json!({ "addresses": addresses }),
            );
        }
    }
    serde_yaml::to_string(&serde_json::Value::Object(doc)).unwrap_or_default()
}

/// Starts the watchers on a thread of their own until `stop`.
/// `documents`, `pods` and `cfg.restored_remote` (other nodes' pods) are what the controller
/// starts with (a checkpoint's): the first list is compared with them, so an object deleted
/// while Ward was down goes, and an unchanged one is not sent again.
pub fn spawn(
    cfg: KubernetesSection,
    node: Option<String>,
    documents: BTreeMap<PathBuf, String>,
    pods: Vec<crate::config::EndpointConfig>,
    status: Arc<arc_swap::ArcSwap<crate::controller::Status>>,
    events: mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("kubernetes".into())
        .spawn(move || {
            rt.block_on(async move {
                let client = match client(&cfg).await {
                    Ok(c) => c,
                    Err(e) => {
                        let message = format!("cannot build a Kubernetes client: {e}");
                        warn!("{SOURCE}: {message}");
                        source_error(&events, SOURCE, message);
                        return;
                    }
                };
                let mut tasks = vec![tokio::spawn(events::report(
                    client.clone(),
                    node.clone(),
                    status,
                ))];
                // Watchers still to list once; the last one says the source is synced.
                let unsynced = Arc::new(std::sync::atomic::AtomicUsize::new(
                    KINDS.len() + usize::from(node.is_some()),
                ));
                for (group, version, kind, plural) in KINDS {
                    let gvk = GroupVersionKind::gvk(group, version, kind);
                    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
                    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                    let prefix = format!("{kind} ");
                    let had: BTreeMap<PathBuf, String> = documents
                        .iter()
                        .filter(|(k, _)| k.to_string_lossy().starts_with(&prefix))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    tasks.push(tokio::spawn(watch_kind(
                        api,
                        kind,
                        ar.api_version.clone(),
                        had,
                        Synced(Some(unsynced.clone())),
                        events.clone(),
                    )));
                }
                // This node's pods are its endpoints (beside the node config's).
                match node {
                    Some(node) => {
                        let gvk = GroupVersionKind::gvk("", "v1", "Pod");
                        let ar = ApiResource::from_gvk_with_plural(&gvk, "pods");
                        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                        tasks.push(tokio::spawn(pods::watch(
                            api,
                            node,
                            pods.clone(),
                            cfg.restored_remote.clone(),
                            Synced(Some(unsynced.clone())),
                            events.clone(),
                        )));
                    }
                    None => {
                        warn!("{SOURCE}: `node.name` is not set: this node's pods are not watched")
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                for t in tasks {
                    t.abort();
                }
            });
        })
}

async fn client(cfg: &KubernetesSection) -> anyhow::Result<Client> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Counts the watchers that have not listed once yet; the last one to list tells the
/// controller (after its own changes, which go first in the inbox).
pub struct Synced(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Synced {
    /// This watcher listed: the first time, one fewer to wait for.
    pub fn listed(&mut self, events: &mpsc::Sender<SourceEvent>) {
        let Some(counter) = self.0.take() else {
            return;
        };
        if counter.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = events.send(SourceEvent::Synced { source: SOURCE });
        }
    }
}

/// The name a kind's watcher reports its errors under (`ward status`).
fn source_name(kind: &str) -> &'static str {
    match kind {
        "CiliumNetworkPolicy" => "kubernetes CiliumNetworkPolicy watch",
        "CiliumClusterwideNetworkPolicy" => "kubernetes CiliumClusterwideNetworkPolicy watch",
        "NetworkPolicy" => "kubernetes NetworkPolicy watch",
        "Namespace" => "kubernetes Namespace watch",
        "Node" => "kubernetes Node watch",
        "Service" => "kubernetes Service watch",
        "EndpointSlice" => "kubernetes EndpointSlice watch",
        _ => SOURCE,
    }
}

fn source_error(events: &mpsc::Sender<SourceEvent>, source: &'static str, message: String) {
    let _ = events.send(SourceEvent::SourceError {
        source,
        diagnostics: vec![l7_rules::diag::Diagnostic {
            severity: l7_rules::diag::Severity::Error,
            origin: l7_rules::diag::Origin::File {
                path: source.to_string(),
                line: None,
                document: 0,
            },
            object: None,
            field: String::new(),
            message,
        }],
    });
}

/// Watches one kind, sending each object's document as it changes.
async fn watch_kind(
    api: Api<DynamicObject>,
    kind: &'static str,
    api_version: String,
    had: BTreeMap<PathBuf, String>,
    mut synced: Synced,
    events: mpsc::Sender<SourceEvent>,
) {
    // What the controller has from this kind: document name → text.
    let mut sent = had;
    // A relist being gathered.
    let mut relist: Option<BTreeMap<PathBuf, String>> = None;
    let mut failing = false;
    let probe = api.clone();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // While failing, a one-item list every second tells when the API answers again (a
        // watch that resumes sends nothing until something changes).
        let item = tokio::select! {
            item = stream.next() => match item {
                Some(i) => i,
                None => break,
            },
            _ = tick.tick(), if failing => {
                if probe.list(&kube::api::ListParams::default().limit(1)).await.is_ok() {
                    info!(kind, "{SOURCE}: the API answers again");
                    failing = false;
                    let _ = events.send(SourceEvent::SourceRecovered {
                        source: source_name(kind),
                    });
                }
                continue;
            }
        };
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                if !failing {
                    warn!(kind, error = %e, "{SOURCE}: watch failed; the last state keeps enforcing, retrying");
                    failing = true;
                    source_error(
                        &events,
                        source_name(kind),
                        format!("watching {kind} objects: {e}; the last state keeps enforcing"),
                    );
                }
                continue;
            }
        };
        if failing {
            info!(kind, "{SOURCE}: watching again");
            failing = false;
            let _ = events.send(SourceEvent::SourceRecovered {
                source: source_name(kind),
            });
        }
        let mut changes = Vec::new();
        match event {
            Event::Init => relist = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                if wanted(kind, &obj) {
                    let (name, text) = named(kind, &api_version, &obj);
                    relist.get_or_insert_with(BTreeMap::new).insert(name, text);
                }
            }
            Event::InitDone => {
                let now = relist.take().unwrap_or_default();
                for (name, text) in &now {
                    if sent.get(name) != Some(text) {
                        changes.push(FileChange {
                            path: name.clone(),
                            content: FileContent::Text(text.clone()),
                        });
                    }
                }
                for name in sent.keys().filter(|n| !now.contains_key(*n)) {
                    changes.push(FileChange {
                        path: name.clone(),
                        content: FileContent::Removed,
                    });
                }
                info!(
                    kind,
                    objects = now.len(),
                    changed = changes.len(),
                    "{SOURCE}: listed"
                );
                sent = now;
                if !changes.is_empty() {
                    let _ = events.send(SourceEvent::PolicyFiles {
                        changes: std::mem::take(&mut changes),
                        modified: Some(SystemTime::now()),
                    });
                }
                synced.listed(&events);
            }
            Event::Apply(obj) if !wanted(kind, &obj) => {
                let (name, _) = named(kind, &api_version, &obj);
                if sent.remove(&name).is_some() {
                    changes.push(FileChange {
                        path: name,
                        content: FileContent::Removed,
                    });
                }
            }
            Event::Apply(obj) => {
                let (name, text) = named(kind, &api_version, &obj);
                if sent.get(&name) != Some(&text) {
                    sent.insert(name.clone(), text.clone());
                    changes.push(FileChange {
                        path: name,
                        content: FileContent::Text(text),
                    });
                }
            }
            Event::Delete(obj) => {
                let (name, _) = named(kind, &api_version, &obj);
                if sent.remove(&name).is_some() {
                    changes.push(FileChange {
                        path: name,
                        content: FileContent::Removed,
                    });
                }
            }
        }
        if !changes.is_empty() {
            let _ = events.send(SourceEvent::PolicyFiles {
                changes,
                modified: Some(SystemTime::now()),
            });
        }
    }
}

fn named(kind: &str, api_version: &str, obj: &DynamicObject) -> (PathBuf, String) {
    let name = document_name(
        kind,
        obj.metadata.namespace.as_deref(),
        obj.metadata.name.as_deref().unwrap_or(""),
    );
    (name, document(kind, api_version, obj))
}
