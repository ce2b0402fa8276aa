//! The controller: the only writer of node state. It owns the datapath and the node's
//! [`Desired`] state, takes typed [`SourceEvent`]s from one inbox (policy files, the admin
//! socket's endpoint commands), recomputes what a change affects, writes the kernel maps (the
//! datapath diffs them), and publishes an `Arc` snapshot that the proxies, the admin server
//! and the flow writer read without locks. It never imports the proxies, the admin server or
//! the composition root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bpf_redirect::{ApplyStats, Hook};
use l7_rules::diag::{Diagnostic, Origin, Severity};
use l7_rules::engine::Engine;
use l7_rules::source::{LineIndex, LoadError, PolicySet, PolicyStore};
use tracing::{debug, error, info, warn};

use crate::config::{Config, EndpointConfig};
use crate::datapath::Kernel;
use crate::metrics::Metrics;
use crate::sources::{FileChange, FileContent, SourceEvent};
use crate::state::{Desired, NodeState, Recompute, Settings, Update, ViewError, HOST_ENDPOINT_ID};

/// How often a policy change whose write failed is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// How often learned DNS addresses are checked for expiry (while there are any).
pub const FQDN_GC: Duration = Duration::from_secs(1);
/// How often the fqdn cache's listing is rebuilt while answers keep changing it.
const ROWS_EVERY: Duration = Duration::from_millis(250);

/// What the controller last did, for `ward status`.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub last_apply: Option<Applied>,
    /// Why the last policy change was rejected (cleared by the next accepted one).
    pub last_error: Option<String>,
    /// The hooks the datapath has attached.
    pub links: Vec<(String, Hook)>,
    /// Each refused document (a file, or `Kind namespace/name`) and its errors.
    pub rejected: BTreeMap<String, String>,
}

/// One change written to the maps.
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    pub at: SystemTime,
    pub stats: ApplyStats,
    /// Recomputing and writing the maps.
    pub took: Duration,
    pub recompute: Recompute,
    /// From the policy file's modification to the maps written (file changes only).
    pub change_to_maps: Option<Duration>,
}

/// What readers hold: the published snapshot and status. Nothing here writes state.
#[derive(Clone)]
pub struct Published {
    pub state: Arc<ArcSwap<NodeState>>,
    pub status: Arc<ArcSwap<Status>>,
    /// The policy objects in force, as written (`ward policy get`).
    pub documents: Arc<ArcSwap<Vec<serde_json::Value>>>,
    /// The `toFQDNs` cache (`ward fqdn cache list`).
    pub fqdn: Arc<ArcSwap<Vec<crate::fqdn::CacheRow>>>,
}

/// The objects of `store` as written, in key order.
fn documents(store: &PolicyStore) -> Vec<serde_json::Value> {
    store
        .objects()
        .filter_map(|(_, o)| serde_json::to_value(o.value()).ok())
        .collect()
}

/// A change could not be applied; the previous state stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        source: Box<bpf_redirect::Error>,
    },
}

fn kernel(what: impl Into<String>) -> impl FnOnce(bpf_redirect::Error) -> ControllerError {
    let what = what.into();
    move |source| ControllerError::Kernel {
        what,
        source: Box::new(source),
    }
}

/// The policy files `ward run` starts from, in a store: every file must load.
pub fn initial_store(files: &BTreeMap<PathBuf, String>) -> Result<PolicyStore, LoadError> {
    let mut store = PolicyStore::default();
    let mut diagnostics = Vec::new();
    for (path, text) in files {
        if let Err(mut e) = store.put_file(&path.display().to_string(), text) {
            diagnostics.append(&mut e.diagnostics);
        }
    }
    if diagnostics.is_empty() {
        Ok(store)
    } else {
        Err(LoadError { diagnostics })
    }
}

/// The policy set of `store` for this node: refused when this node would load a policy it
/// cannot enforce.
pub fn policy_set(
    store: &PolicyStore,
    files: &BTreeMap<PathBuf, String>,
    cfg: &Config,
) -> Result<PolicySet, LoadError> {
    let set = store.snapshot();
    let unenforced = unenforced_fields(&set, files, cfg);
    if unenforced.is_empty() {
        return Ok(set);
    }
    Err(LoadError {
        diagnostics: unenforced.into_iter().chain(set.warnings).collect(),
    })
}

/// Policy fields this node would load and not enforce: never accepted silently. A host policy
/// that selects the node needs the uplink hooks: without them, traffic between the node and
/// the outside would pass unjudged while `ward-check` says it is judged.
fn unenforced_fields(
    set: &PolicySet,
    files: &BTreeMap<PathBuf, String>,
    cfg: &Config,
) -> Vec<Diagnostic> {
    use l7_rules::model::Subject;
    if cfg.uplink.is_some() {
        return Vec::new();
    }
    let node_labels = Settings::from_config(cfg).node_label_set(&set.catalog);
    let mut out = Vec::new();
    for p in &set.policies {
        let Subject::Nodes(sel) = &p.subject else {
            continue;
        };
        if !sel.matches(&node_labels) || !(p.ingress.present || p.egress.present) {
            continue;
        }
        let field = format!("{}.nodeSelector", p.spec_path);
        let line = files
            .get(&PathBuf::from(&p.meta.file))
            .and_then(|text| LineIndex::build(text).line_of(p.meta.document, &field));
        out.push(Diagnostic {
            severity: Severity::Error,
            origin: Origin::File {
                path: p.meta.file.clone(),
                line,
                document: p.meta.document,
            },
            object: Some(format!("{} {}", p.meta.kind.as_str(), p.meta.id())),
            field,
            message: "this host policy selects the node, but the node config names no `uplink`: \
                traffic between the node and the outside would not be enforced (only traffic \
                with local pods would); set `uplink` to the node's external interface"
                .into(),
        });
    }
    out
}

/// Logs every diagnostic of a failed load at ERROR (errors) / WARN (warnings).
pub fn log_load_error(e: &LoadError) {
    for d in &e.diagnostics {
        match d.severity {
            Severity::Error => error!("{d}"),
            Severity::Warning => warn!("{d}"),
        }
    }
}

pub fn make_engine(set: PolicySet, settings: &Settings) -> Arc<Engine> {
    let mut e = Engine::new(set);
    settings.apply_to(&mut e);
    Arc::new(e)
}

/// The single writer of node state.
pub struct Controller<K: Kernel> {
    cfg: Arc<Config>,
    settings: Settings,
    kernel: K,
    /// The policy objects in force, and the texts of the files they came from.
    store: PolicyStore,
    texts: BTreeMap<PathBuf, String>,
    /// Files whose current version was refused (their previous version stays in force).
    rejected: BTreeMap<PathBuf, Vec<Diagnostic>>,
    /// File changes seen but not yet in force because the set they make was refused or could
    /// not be written: tried again with every later change (and, after a write error, every
    /// [`RETRY`]), never dropped.
    pending: BTreeMap<PathBuf, FileContent>,
    /// The newest modification among the pending changes.
    pending_modified: Option<SystemTime>,
    /// Why the pending changes are not in force.
    pending_error: Option<String>,
    /// The last write failed (not the policy): retry on a timer.
    retry: bool,
    /// A source that cannot read its input, and why.
    source_errors: BTreeMap<&'static str, String>,
    desired: Desired,
    generation: u64,
    published: Published,
    metrics: Arc<Metrics>,
    /// The node's own addresses (the host identity's), asked at every change.
    host_addresses: fn() -> Vec<Ipv4Addr>,
    /// Addresses learned from DNS answers.
    fqdn: crate::fqdn::FqdnCache,
    /// When `ward fqdn cache list`'s rows were last published.
    rows_at: Instant,
    /// Policies or endpoints changed since the Kubernetes checkpoint was written.
    checkpoint_dirty: bool,
    /// Kubernetes mode: this node's pods, and the interfaces `ward-cni` reported.
    pods: Pods,
    /// Other nodes' pods changed since the checkpoint was written: written at most every
    /// [`CHECKPOINT_EVERY`] (there can be many, and they change often).
    remote_dirty: bool,
    checkpoint_at: Instant,
}

/// The least time between two checkpoints written for other nodes' pods alone.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Kubernetes mode's pods on this node. A pod is an endpoint once it has an address (from its
/// object, else from `ward-cni`) and an interface (from `ward-cni`, else the route the watcher
/// found), until it goes or `ward-cni` DEL removes its sandbox.
#[derive(Default)]
struct Pods {
    /// (namespace, name) → the endpoint its object stands for (address, interface: as seen).
    seen: BTreeMap<(String, String), EndpointConfig>,
    /// (namespace, name) → what `ward-cni` ADD reported.
    cni: BTreeMap<(String, String), crate::admin::api::CniAttachment>,
    /// Pods whose sandbox `ward-cni` DEL removed: no endpoint until another ADD.
    deleted: std::collections::BTreeSet<(String, String)>,
}

impl<K: Kernel> Controller<K> {
    /// Computes the first state from `files` (already checked into `set`) and the config's
    /// endpoints, and writes it to the maps. Attaches nothing.
    pub fn start(
        cfg: Arc<Config>,
        files: BTreeMap<PathBuf, String>,
        store: PolicyStore,
        set: PolicySet,
        kernel: K,
        metrics: Arc<Metrics>,
        host_addresses: fn() -> Vec<Ipv4Addr>,
    ) -> Result<Controller<K>, ControllerError> {
        let settings = Settings::from_config(&cfg);
        let endpoints: Vec<(u16, EndpointConfig)> = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| ((i + 1) as u16, e.clone()))
            .collect();
        let engine = make_engine(set, &settings);
        let (desired, recompute) =
            Desired::new(engine, settings.clone(), &endpoints, &host_addresses())?;
        let state = NodeState::from_desired(1, &desired);
        let in_force = documents(&store);
        let mut c = Controller {
            settings,
            kernel,
            store,
            texts: files,
            rejected: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_modified: None,
            pending_error: None,
            retry: false,
            source_errors: BTreeMap::new(),
            desired,
            generation: 0,
            published: Published {
                state: Arc::new(ArcSwap::from_pointee(state)),
                status: Arc::new(ArcSwap::from_pointee(Status::default())),
                documents: Arc::new(ArcSwap::from_pointee(in_force)),
                fqdn: Arc::new(ArcSwap::from_pointee(Vec::new())),
            },
            fqdn: crate::fqdn::FqdnCache::new(
                cfg.dns.min_ttl,
                cfg.dns.max_ips_per_name,
                cfg.dns.max_entries,
            ),
            cfg,
            metrics,
            host_addresses,
            rows_at: Instant::now(),
            checkpoint_dirty: false,
            pods: Pods::default(),
            remote_dirty: false,
            checkpoint_at: Instant::now(),
        };
        // A restart from the checkpoint: its pods and their interfaces.
        for e in c.cfg.endpoints.iter() {
            if c.cfg.kubernetes.restored_pods.contains(&e.qualified()) {
                let key = (e.namespace.clone(), e.name.clone());
                c.pods.seen.insert(key, e.clone());
            }
        }
        for a in &c.cfg.kubernetes.restored_cni {
            let key = (a.namespace.clone(), a.name.clone());
            c.pods.cni.insert(key, a.clone());
        }
        // Learned addresses from the previous process's checkpoint go into the first commit,
        // so a restart never drops a `toFQDNs` address the maps held.
        let (desired, recompute) = if c.restore_fqdn() > 0 {
            let (desired, _) = c.update(Update::default())?;
            (desired, recompute)
        } else {
            (c.desired.clone(), recompute)
        };
        c.commit(desired, recompute, None)?;
        let remote: Vec<_> = c
            .cfg
            .kubernetes
            .restored_remote
            .iter()
            .map(|(ip, p)| (*ip, Some(p.clone())))
            .collect();
        if !remote.is_empty() {
            c.remote_pods(remote);
            c.remote_dirty = false;
        }
        Ok(c)
    }

    /// What readers hold.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        let mut s = Status::clone(&self.published.status.load());
        f(&mut s);
        self.published.status.store(Arc::new(s));
    }

    fn refresh_links(&self) {
        let links = self.kernel.attached().unwrap_or_default();
        self.set_status(|s| s.links = links);
    }

    /// Writes `desired` to the maps and publishes it. On error nothing is published and the
    /// previous state stays the controller's.
    fn commit(
        &mut self,
        desired: Desired,
        recompute: Recompute,
        modified: Option<SystemTime>,
    ) -> Result<(), ControllerError> {
        let started = Instant::now();
        let generation = self.generation + 1;
        let state = NodeState::from_desired(generation, &desired);
        let stats = self
            .kernel
            .apply(&state.kernel_state())
            .map_err(kernel("applying the maps"))?;
        // The learned addresses' changes are in the maps now.
        self.fqdn.clear_changes();
        let took = started.elapsed();
        let change_to_maps = modified.and_then(|m| SystemTime::now().duration_since(m).ok());
        self.metrics.applied(took, change_to_maps);
        if !state.unproxied.is_empty() {
            warn!(parsers = ?state.unproxied, "L7 rules of these protocols have no listener configured: their flows are DROPPED (fail closed) until a listener for them exists");
        }
        info!(
            generation,
            policies = state.policy_count(),
            endpoints = state.endpoints.len(),
            recomputed = recompute.whole,
            patched = recompute.patched,
            written = stats.written(),
            deleted = stats.deleted(),
            took_ms = took.as_secs_f64() * 1000.0,
            change_to_maps_ms = change_to_maps.map(|d| d.as_secs_f64() * 1000.0),
            "policy applied"
        );
        self.desired = desired;
        self.generation = generation;
        self.published.state.store(Arc::new(state));
        self.set_status(|s| {
            s.last_apply = Some(Applied {
                at: SystemTime::now(),
                stats,
                took,
                recompute,
                change_to_maps,
            })
        });
        Ok(())
    }

    fn update(&self, update: Update) -> Result<(Desired, Recompute), ControllerError> {
        Ok(self.desired.update(Update {
            host_ips: Some((self.host_addresses)()),
            fqdn: self.fqdn.changes(),
            ..update
        })?)
    }

    /// Addresses learned from DNS answers: into the cache and, when that changes which
    /// addresses answer which names, into the maps; then every waiting answer is released.
    fn learned(&mut self, answers: Vec<crate::sources::FqdnAnswer>) {
        let now = Instant::now();
        let count = answers.len();
        let mut changed = false;
        for a in &answers {
            let endpoint = self
                .desired
                .endpoint_configs()
                .find(|(_, e)| e.ips.contains(&a.client))
                .map(|(id, _)| id);
            let Some(endpoint) = endpoint else { continue };
            changed |= self.fqdn.learn(endpoint, &a.name, &a.ips, a.ttl, now);
        }
        let cached = now.elapsed();
        let (computed, written) = if changed {
            self.write_fqdn("DNS answers")
        } else {
            Default::default()
        };
        for a in answers {
            let _ = a.done.send(());
        }
        if changed {
            info!(
                answers = count,
                cache_ms = cached.as_secs_f64() * 1000.0,
                compute_ms = computed.as_secs_f64() * 1000.0,
                write_ms = written.as_secs_f64() * 1000.0,
                took_ms = now.elapsed().as_secs_f64() * 1000.0,
                "DNS answers learned"
            );
        }
    }

    /// Writes the cache's changes to the maps; how long computing the new state and writing
    /// it took. When the changed addresses' identities are all known already (the policy
    /// entries stay as they are), only their ipcache entries are written: the common case,
    /// whose cost is the changed addresses', not the cache's.
    fn write_fqdn(&mut self, why: &str) -> (Duration, Duration) {
        let started = Instant::now();
        let mut times = (Duration::ZERO, Duration::ZERO);
        match self.update(Update::default()) {
            Ok((desired, recompute)) => {
                times.0 = started.elapsed();
                let ips: Vec<Ipv4Addr> =
                    self.fqdn.changes().into_iter().map(|(ip, _)| ip).collect();
                let written = if recompute == Recompute::default() {
                    self.commit_addresses(desired, &ips)
                } else {
                    self.commit(desired, recompute, None)
                };
                if written.is_ok() {
                    self.fqdn.clear_changes();
                }
                if let Err(e) = written {
                    warn!(error = %e, "writing {why} to the maps; retried");
                    self.retry = true;
                }
                times.1 = started.elapsed() - times.0;
            }
            Err(e) => warn!(error = %e, "computing {why}"),
        }
        // The listing is rebuilt at most every ROWS_EVERY while learning (and every second by
        // the expiry check): it is O(cache), a commit of new names is not.
        if self.rows_at.elapsed() >= ROWS_EVERY {
            self.publish_rows();
        }
        times
    }

    /// Commits `desired`, which differs from the current state only in what addresses `ips`
    /// stand for by themselves (learned addresses, other nodes' pods), all with identities the
    /// policy entries already name: their ipcache entries are written and deleted one by one,
    /// and the snapshot published.
    fn commit_addresses(
        &mut self,
        desired: Desired,
        ips: &[Ipv4Addr],
    ) -> Result<(), ControllerError> {
        let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
        for ip in ips {
            match (self.desired.address_entry(*ip), desired.address_entry(*ip)) {
                (Some(o), Some(n)) if o == n => {}
                (_, Some(n)) => upserts.push(n),
                (Some(o), None) => deletes.push(o),
                (None, None) => {}
            }
        }
        self.kernel
            .write_ipcache(&upserts, &deletes)
            .map_err(kernel("writing addresses to the ipcache"))?;
        let generation = self.generation + 1;
        let state = NodeState::from_desired(generation, &desired);
        debug!(
            generation,
            written = upserts.len(),
            deleted = deletes.len(),
            "addresses written"
        );
        self.desired = desired;
        self.generation = generation;
        self.published.state.store(Arc::new(state));
        Ok(())
    }

    /// Other nodes' pods changed.
    fn remote_pods(&mut self, changes: Vec<(Ipv4Addr, Option<crate::state::RemotePod>)>) {
        let ips: Vec<Ipv4Addr> = changes.iter().map(|(ip, _)| *ip).collect();
        let result = self
            .update(Update {
                remote: changes,
                ..Update::default()
            })
            .and_then(|(desired, recompute)| {
                if recompute == Recompute::default() {
                    self.commit_addresses(desired, &ips)
                } else {
                    self.commit(desired, recompute, None)
                }
            });
        if let Err(e) = result {
            warn!(error = %e, "writing other nodes' pods to the maps");
        }
        self.remote_dirty = true;
    }

    /// Other nodes' pods are due in the checkpoint: how long until then.
    fn remote_checkpoint_in(&self) -> Option<Duration> {
        self.remote_dirty
            .then(|| CHECKPOINT_EVERY.saturating_sub(self.checkpoint_at.elapsed()))
    }

    fn publish_rows(&mut self) {
        let rows = self.fqdn.rows(Instant::now());
        self.save_fqdn(&rows);
        self.published.fqdn.store(Arc::new(rows));
        self.rows_at = Instant::now();
    }

    /// Writes the learned addresses to the FQDN checkpoint (by endpoint address, which a
    /// restart keeps; ids may change), replacing it whole.
    fn save_fqdn(&self, rows: &[crate::fqdn::CacheRow]) {
        let addresses: BTreeMap<u16, Ipv4Addr> = self
            .desired
            .endpoint_configs()
            .filter_map(|(id, e)| Some((id, *e.ips.first()?)))
            .collect();
        let saved: Vec<crate::fqdn::SavedRow> = rows
            .iter()
            .filter_map(|r| crate::fqdn::SavedRow::from_row(r, *addresses.get(&r.endpoint)?))
            .collect();
        let path = crate::fqdn::checkpoint_path(&self.cfg.admin_socket);
        if let Err(e) = crate::fqdn::write_checkpoint(&path, &saved) {
            warn!(error = %e, path = %path.display(), "writing the FQDN checkpoint");
        }
    }

    /// Learns what the FQDN checkpoint holds (addresses whose time is left, and zombies for
    /// a second, so their live connections keep them). How many rows were learned.
    fn restore_fqdn(&mut self) -> usize {
        let path = crate::fqdn::checkpoint_path(&self.cfg.admin_socket);
        let rows = match crate::fqdn::read_checkpoint(&path) {
            Ok(Some(rows)) => rows,
            Ok(None) => return 0,
            Err(e) => {
                warn!(error = %e, path = %path.display(), "the FQDN checkpoint does not read; learned addresses start empty");
                return 0;
            }
        };
        let now = Instant::now();
        let mut learned = 0;
        for r in rows {
            let Some(ttl) = r.ttl_left(SystemTime::now()) else {
                continue;
            };
            let endpoint = self
                .desired
                .endpoint_configs()
                .find(|(_, e)| e.ips.contains(&r.client))
                .map(|(id, _)| id);
            let Some(endpoint) = endpoint else { continue };
            self.fqdn.learn(endpoint, &r.name, &[r.ip], ttl, now);
            learned += 1;
        }
        if learned > 0 {
            info!(learned, path = %path.display(), "learned DNS addresses restored from the FQDN checkpoint");
        }
        learned
    }

    /// Drops learned addresses whose time passed (keeping those with live connections).
    /// Conntrack (a walk of the whole map) is read only when some entry's time has passed.
    fn expire_fqdn(&mut self) {
        let now = Instant::now();
        if self.fqdn.due(now) {
            let live = self.kernel.live_destinations().unwrap_or_else(|e| {
                warn!(error = %e, "reading conntrack; learned addresses are kept for now");
                self.fqdn.addresses().collect()
            });
            if self.fqdn.expire(now, &live) {
                self.write_fqdn("expired DNS addresses");
            }
        }
        if self.fqdn.rows_dirty() {
            self.publish_rows();
        }
    }

    fn attach_endpoint(&mut self, iface: &str) -> Result<(), ControllerError> {
        for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
            let outcome = self
                .kernel
                .attach(iface, hook)
                .map_err(kernel(format!("attaching {hook:?} to {iface}")))?;
            info!(iface, ?hook, ?outcome, "attached");
        }
        Ok(())
    }

    /// Attaches every endpoint's hooks and the uplink's, and detaches the links of a previous
    /// run's endpoints that are gone from the config.
    pub fn attach_all(&mut self) -> Result<(), ControllerError> {
        let wanted: Vec<String> = self
            .desired
            .endpoint_configs()
            .map(|(_, e)| e.interface.clone())
            .collect();
        for i in &wanted {
            self.attach_endpoint(i)?;
        }
        if let Some(u) = self.cfg.uplink.clone() {
            for hook in [Hook::FromNetdev, Hook::ToNetdev] {
                let outcome = self
                    .kernel
                    .attach(&u, hook)
                    .map_err(kernel(format!("attaching {hook:?} to the uplink {u}")))?;
                info!(iface = %u, ?hook, ?outcome, "attached uplink");
            }
        }
        let attached = self
            .kernel
            .attached()
            .map_err(kernel("listing the attached links"))?;
        for (iface, hook) in attached {
            let keep = match hook {
                Hook::FromNetdev | Hook::ToNetdev => {
                    self.cfg.uplink.as_deref() == Some(iface.as_str())
                }
                _ => wanted.contains(&iface),
            };
            if !keep {
                self.kernel
                    .detach(&iface, hook)
                    .map_err(kernel(format!("detaching {hook:?} from {iface}")))?;
                info!(%iface, ?hook, "detached stale link");
            }
        }
        self.refresh_links();
        Ok(())
    }

    /// Serves the inbox until every sender is gone. Events that arrive together are handled
    /// together: consecutive policy-file changes become one policy set and one map write.
    pub fn run(mut self, inbox: mpsc::Receiver<SourceEvent>) {
        let mut next_gc = Instant::now() + FQDN_GC;
        loop {
            if Instant::now() >= next_gc {
                self.expire_fqdn();
                next_gc = Instant::now() + FQDN_GC;
            }
            let first = if self.retry
                || !self.fqdn.is_empty()
                || self.fqdn.rows_dirty()
                || self.remote_dirty
            {
                let mut wait = if self.fqdn.is_empty() {
                    RETRY
                } else {
                    next_gc.saturating_duration_since(Instant::now())
                };
                if let Some(due) = self.remote_checkpoint_in() {
                    wait = wait.min(due);
                }
                match inbox.recv_timeout(wait) {
                    Ok(e) => e,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.remote_checkpoint_in() == Some(Duration::ZERO) {
                            self.write_checkpoint();
                        }
                        if self.retry {
                            self.retry = false;
                            self.apply_pending();
                            if self.fqdn.has_changes() {
                                self.write_fqdn("learned DNS addresses");
                            }
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match inbox.recv() {
                    Ok(e) => e,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            batch.extend(inbox.try_iter());
            let mut files: Vec<FileChange> = Vec::new();
            let mut modified = None;
            let mut answers = Vec::new();
            for event in batch {
                match event {
                    SourceEvent::FqdnLearned(a) => {
                        answers.push(a);
                        continue;
                    }
                    SourceEvent::PolicyFiles {
                        changes,
                        modified: m,
                    } => {
                        files.extend(changes);
                        modified = modified.max(m);
                        continue;
                    }
                    other => {
                        if !files.is_empty() {
                            self.policy_files(std::mem::take(&mut files), modified.take());
                        }
                        self.handle(other);
                    }
                }
            }
            if !files.is_empty() {
                self.policy_files(files, modified);
            }
            if !answers.is_empty() {
                self.learned(answers);
            }
            if self.checkpoint_dirty || self.remote_checkpoint_in() == Some(Duration::ZERO) {
                self.write_checkpoint();
            }
        }
        // The inbox closed: the process stops. The next one starts from what was learned.
        self.publish_rows();
    }

    /// Kubernetes mode: writes the policy documents in force and the endpoints for a restart
    /// while the API server is unreachable.
    fn write_checkpoint(&mut self) {
        self.checkpoint_dirty = false;
        self.remote_dirty = false;
        self.checkpoint_at = Instant::now();
        if self.cfg.policy_source != crate::config::PolicySource::Kubernetes {
            return;
        }
        let c = crate::state::checkpoint::Checkpoint {
            documents: self
                .texts
                .iter()
                .map(|(k, v)| (k.display().to_string(), v.clone()))
                .collect(),
            // The pods: every endpoint but the node config file's own.
            endpoints: self
                .desired
                .endpoint_configs()
                .filter(|(_, e)| {
                    self.cfg.kubernetes.restored_pods.contains(&e.qualified())
                        || !self
                            .cfg
                            .endpoints
                            .iter()
                            .any(|c| c.qualified() == e.qualified())
                })
                .map(|(_, e)| e.clone())
                .collect(),
            cni: self.pods.cni.values().cloned().collect(),
            remote: self
                .desired
                .remote_pods()
                .map(|(ip, p)| (ip, p.clone()))
                .collect(),
        };
        if let Err(e) = c.write(&self.cfg.kubernetes.checkpoint) {
            warn!(error = %e, path = %self.cfg.kubernetes.checkpoint.display(), "writing the Kubernetes checkpoint");
        }
    }

    /// One event (policy-file events go through [`Controller::policy_files`]).
    pub fn handle(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::PolicyFiles { changes, modified } => self.policy_files(changes, modified),
            SourceEvent::SourceError {
                source,
                diagnostics,
            } => {
                let e = LoadError { diagnostics };
                error!("{source}: cannot be read; the previous policy stays in force");
                log_load_error(&e);
                self.metrics.reload("rejected");
                let text = e
                    .errors()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                self.source_errors.insert(source, text);
                self.publish_rejections();
            }
            SourceEvent::SaveFqdn { reply } => {
                self.publish_rows();
                let _ = reply.try_send(Ok(()));
            }
            SourceEvent::RestoreFqdn => {
                if self.restore_fqdn() > 0 && self.fqdn.has_changes() {
                    self.write_fqdn("restored DNS addresses");
                }
            }
            SourceEvent::SourceRecovered { source } => {
                if self.source_errors.remove(source).is_some() {
                    info!("{source}: readable again");
                    self.publish_rejections();
                }
            }
            SourceEvent::EndpointAdd { endpoint, reply } => {
                self.checkpoint_dirty = true;
                let _ = reply.try_send(self.add_endpoint(endpoint));
                self.apply_pending();
            }
            SourceEvent::FqdnLearned(a) => self.learned(vec![a]),
            SourceEvent::Pod { endpoint, reply } => {
                self.checkpoint_dirty = true;
                let key = (endpoint.namespace.clone(), endpoint.name.clone());
                self.pods.seen.insert(key.clone(), endpoint);
                let _ = reply.try_send(self.settle_pod(&key));
                self.apply_pending();
            }
            SourceEvent::PodGone {
                namespace,
                name,
                reply,
            } => {
                self.checkpoint_dirty = true;
                let key = (namespace, name);
                self.pods.seen.remove(&key);
                self.pods.cni.remove(&key);
                self.pods.deleted.remove(&key);
                let _ = reply.try_send(self.settle_pod(&key).map(|_| ()));
                self.apply_pending();
            }
            SourceEvent::CniAdd { attachment, reply } => {
                let _ = reply.try_send(self.cni_add(attachment));
                self.apply_pending();
            }
            SourceEvent::CniDel {
                container_id,
                namespace,
                name,
                reply,
            } => {
                let _ = reply.try_send(self.cni_del(&container_id, namespace, name));
                self.apply_pending();
            }
            SourceEvent::RemotePods(changes) => self.remote_pods(changes),
            SourceEvent::Synced { source } => {
                info!("{source}: first state applied; ready");
                self.metrics.ready.set(1);
            }
            SourceEvent::EndpointRemove { name, reply } => {
                self.checkpoint_dirty = true;
                let _ = reply.try_send(self.remove_endpoint(&name));
                // A pending change may have failed on this endpoint's vanished interface.
                self.apply_pending();
            }
        }
    }

    /// `ward status`'s policy error: every file whose current version is refused, why the
    /// pending changes are not in force, and every source that cannot read its input.
    fn publish_rejections(&self) {
        let mut lines: Vec<String> = self
            .rejected
            .values()
            .flatten()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.to_string())
            .collect();
        lines.extend(self.pending_error.clone());
        lines.extend(self.source_errors.values().cloned());
        let text = (!lines.is_empty()).then(|| lines.join("\n"));
        let rejected: BTreeMap<String, String> = self
            .rejected
            .iter()
            .filter_map(|(path, diags)| {
                let errors: Vec<String> = diags
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .map(|d| d.to_string())
                    .collect();
                (!errors.is_empty()).then(|| (path.display().to_string(), errors.join("\n")))
            })
            .collect();
        self.metrics.rejected_documents.set(rejected.len() as i64);
        self.set_status(|s| {
            s.last_error = text;
            s.rejected = rejected;
        });
    }

    /// Policy files changed. Each file is all or nothing: a file with an error is refused
    /// (logged, and shown by `ward status` until it changes again) and its previous version
    /// stays in force, while the other files' changes apply. When the set they make is refused
    /// (this node cannot enforce it) or cannot be written, the changes stay pending and are
    /// tried again with every later change.
    pub fn policy_files(&mut self, changes: Vec<FileChange>, modified: Option<SystemTime>) {
        self.checkpoint_dirty = true;
        for c in changes {
            self.pending.insert(c.path, c.content);
        }
        self.pending_modified = self.pending_modified.max(modified);
        self.apply_pending();
    }

    /// Tries to put the pending file changes in force.
    fn apply_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut store = self.store.clone();
        let mut texts = self.texts.clone();
        let mut changed = false;
        let mut refused = false;
        let mut kept = BTreeMap::new();
        for (path, content) in std::mem::take(&mut self.pending) {
            let name = path.display().to_string();
            match &content {
                FileContent::Text(text) => match store.put_file(&name, text) {
                    Ok(change) => {
                        changed |= !change.is_empty();
                        self.rejected.remove(&path);
                        texts.insert(path.clone(), text.clone());
                        kept.insert(path, content);
                    }
                    Err(e) => {
                        // Refused for good, until the file changes again.
                        error!("policy file {name} rejected; its previous version stays in force");
                        log_load_error(&e);
                        refused = true;
                        self.rejected.insert(path, e.diagnostics);
                    }
                },
                FileContent::Removed => {
                    changed |= !store.remove_file(&name).is_empty();
                    self.rejected.remove(&path);
                    texts.remove(&path);
                    kept.insert(path, content);
                }
                FileContent::Unreadable(diagnostics) => {
                    log_load_error(&LoadError {
                        diagnostics: diagnostics.clone(),
                    });
                    refused = true;
                    self.rejected.insert(path, diagnostics.clone());
                }
            }
        }
        if refused {
            self.metrics.reload("rejected");
        }
        self.retry = false;
        if !changed {
            self.pending_modified = None;
            self.pending_error = None;
            self.publish_rejections();
            return;
        }
        let set = match policy_set(&store, &texts, &self.cfg) {
            Ok(set) => set,
            Err(e) => {
                error!("policy change rejected; the previous policy stays in force until the files change");
                log_load_error(&e);
                self.metrics.reload("rejected");
                self.pending = kept;
                self.pending_error = Some(
                    e.errors()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
                self.publish_rejections();
                return;
            }
        };
        for w in &set.warnings {
            warn!("{w}");
        }
        let engine = make_engine(set, &self.settings);
        let applied = self
            .update(Update {
                engine: Some(engine),
                ..Update::default()
            })
            .and_then(|(desired, recompute)| {
                self.commit(desired, recompute, self.pending_modified)
            });
        match applied {
            Ok(()) => {
                self.published.documents.store(Arc::new(documents(&store)));
                self.store = store;
                self.texts = texts;
                self.checkpoint_dirty = true;
                self.pending_modified = None;
                self.pending_error = None;
                self.metrics.reload("applied");
                self.publish_rejections();
            }
            Err(e) => {
                error!(error = %e, "policy change could not be applied; the previous policy stays in force, retrying");
                self.metrics.reload("rejected");
                self.pending = kept;
                self.pending_error = Some(format!("not applied yet: {e}"));
                self.retry = true;
                self.publish_rejections();
            }
        }
    }

    /// Why `e` cannot be endpoint `id` (a new one: `None`): an invalid field, or an
    /// interface or address another endpoint has.
    fn endpoint_conflict(&self, e: &EndpointConfig, id: Option<u16>) -> Result<(), String> {
        let problems = crate::config::check_endpoint(e);
        if !problems.is_empty() {
            return Err(problems
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; "));
        }
        for (other, o) in self.desired.endpoint_configs() {
            if Some(other) == id {
                continue;
            }
            if id.is_none() && o.name == e.name && o.namespace == e.namespace {
                return Err(format!("endpoint {} exists", e.qualified()));
            }
            if o.interface == e.interface {
                return Err(format!(
                    "interface {} is endpoint {:?}'s",
                    e.interface, o.name
                ));
            }
            if let Some(ip) = e.ips.iter().find(|ip| o.ips.contains(ip)) {
                return Err(format!("{ip} belongs to endpoint {:?}", o.name));
            }
        }
        Ok(())
    }

    fn add_endpoint(&mut self, e: EndpointConfig) -> Result<u16, String> {
        self.endpoint_conflict(&e, None)?;
        let id = (1..HOST_ENDPOINT_ID)
            .find(|id| !self.desired.endpoint_configs().any(|(i, _)| i == *id))
            .ok_or("no endpoint id left")?;
        let (desired, recompute) = self
            .update(Update {
                upsert: vec![(id, e.clone())],
                ..Update::default()
            })
            .map_err(|e| e.to_string())?;
        self.commit(desired, recompute, None)
            .map_err(|e| e.to_string())?;
        if let Err(err) = self.attach_endpoint(&e.interface) {
            // A hook that did attach would drop the pod's traffic once its entries are gone.
            for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
                if let Err(d) = self.kernel.detach(&e.interface, hook) {
                    error!(error = %d, iface = %e.interface, ?hook, "detaching after a failed attach");
                }
            }
            let undone = self
                .update(Update {
                    remove: vec![id],
                    ..Update::default()
                })
                .and_then(|(d, r)| self.commit(d, r, None));
            if let Err(u) = undone {
                error!(error = %u, "removing an endpoint whose hooks failed to attach");
            }
            self.refresh_links();
            return Err(err.to_string());
        }
        self.refresh_links();
        info!(name = %e.name, id, "endpoint added");
        Ok(id)
    }

    /// Adds `e`, or changes the endpoint of its name in place: same id, its new labels,
    /// addresses or interface in one commit, hooks moved only when the interface changed.
    fn upsert_endpoint(&mut self, e: EndpointConfig) -> Result<u16, String> {
        let Some((id, old)) = self
            .desired
            .endpoint_configs()
            .find(|(_, o)| o.name == e.name && o.namespace == e.namespace)
            .map(|(id, o)| (id, o.clone()))
        else {
            return self.add_endpoint(e);
        };
        if old == e {
            return Ok(id);
        }
        self.endpoint_conflict(&e, Some(id))?;
        if old.interface != e.interface {
            self.attach_endpoint(&e.interface)
                .map_err(|err| err.to_string())?;
        }
        let (desired, recompute) = self
            .update(Update {
                upsert: vec![(id, e.clone())],
                ..Update::default()
            })
            .map_err(|e| e.to_string())?;
        self.commit(desired, recompute, None)
            .map_err(|e| e.to_string())?;
        if old.interface != e.interface {
            for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
                if let Err(err) = self.kernel.detach(&old.interface, hook) {
                    warn!(error = %err, iface = %old.interface, ?hook, "detaching an endpoint's old interface");
                }
            }
            self.refresh_links();
        }
        info!(name = %e.name, id, "endpoint changed");
        Ok(id)
    }

    /// `ward-cni` ADD: the pod's interface (and addresses, until its object has one).
    fn cni_add(&mut self, a: crate::admin::api::CniAttachment) -> Result<Option<u16>, String> {
        if self.cfg.policy_source != crate::config::PolicySource::Kubernetes {
            return Err(
                "ward-cni needs `policy_source: kubernetes` (a pod's labels come from \
                 the API); this node's endpoints come from its config file"
                    .into(),
            );
        }
        if a.interface.is_empty() {
            return Err("ward-cni ADD without a host-side interface".into());
        }
        info!(pod = %format!("{}/{}", a.namespace, a.name), interface = %a.interface, container = %a.container_id, "ward-cni ADD");
        let key = (a.namespace.clone(), a.name.clone());
        self.pods.deleted.remove(&key);
        self.pods.cni.insert(key.clone(), a);
        self.checkpoint_dirty = true;
        self.settle_pod(&key)
    }

    /// `ward-cni` DEL: the sandbox goes, and with it the pod's endpoint. A DEL for a sandbox
    /// that is not the pod's current one (an older one's, repeated) changes nothing.
    fn cni_del(
        &mut self,
        container_id: &str,
        namespace: String,
        name: String,
    ) -> Result<(), String> {
        let key = (namespace, name);
        if self
            .pods
            .cni
            .get(&key)
            .is_some_and(|a| a.container_id != container_id)
        {
            return Ok(());
        }
        info!(pod = %format!("{}/{}", key.0, key.1), container = %container_id, "ward-cni DEL");
        self.pods.cni.remove(&key);
        self.pods.deleted.insert(key.clone());
        self.checkpoint_dirty = true;
        self.settle_pod(&key).map(|_| ())
    }

    /// Makes pod `key`'s endpoint what its object and `ward-cni` say: added, changed in place,
    /// removed, or none yet (it waits for an address or an interface).
    fn settle_pod(&mut self, key: &(String, String)) -> Result<Option<u16>, String> {
        let want = match self.pods.seen.get(key) {
            Some(_) if self.pods.deleted.contains(key) => None,
            Some(seen) => {
                let mut e = seen.clone();
                if let Some(a) = self.pods.cni.get(key) {
                    e.interface = a.interface.clone();
                    if e.ips.is_empty() {
                        e.ips = a.ips.clone();
                    }
                }
                if e.interface.is_empty() || e.ips.is_empty() {
                    info!(pod = %format!("{}/{}", key.0, key.1), "pod waits for its address and interface (its object's address, a route to it, or ward-cni ADD)");
                    None
                } else {
                    Some(e)
                }
            }
            None => None,
        };
        match want {
            Some(e) => self.upsert_endpoint(e).map(Some),
            None => {
                let had = self
                    .desired
                    .endpoint_configs()
                    .any(|(_, e)| e.namespace == key.0 && e.name == key.1);
                if had {
                    self.remove_endpoint_in(&key.1, Some(&key.0))?;
                }
                Ok(None)
            }
        }
    }

    fn remove_endpoint(&mut self, name: &str) -> Result<(), String> {
        self.remove_endpoint_in(name, None)
    }

    /// Removes the endpoint `name` (of `namespace`, when given; `name` may also be
    /// `namespace/name`). A bare name two namespaces share is refused as ambiguous.
    fn remove_endpoint_in(&mut self, name: &str, namespace: Option<&str>) -> Result<(), String> {
        let spec = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        let found: Vec<(u16, EndpointConfig)> = self
            .desired
            .endpoint_configs()
            .filter(|(_, e)| e.is(&spec))
            .map(|(id, e)| (id, e.clone()))
            .collect();
        let (id, e) = match found.as_slice() {
            [] => return Err(format!("no endpoint {spec:?}")),
            [one] => one.clone(),
            more => {
                return Err(format!(
                    "{spec:?} names {} endpoints ({}): give namespace/name",
                    more.len(),
                    more.iter()
                        .map(|(_, e)| e.qualified())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        // What it learned from DNS goes with it.
        self.fqdn.remove_endpoint(id);
        // Its entries go first: an endpoint still published as enforced never lacks hooks.
        let (desired, recompute) = self
            .update(Update {
                remove: vec![id],
                ..Update::default()
            })
            .map_err(|e| e.to_string())?;
        self.commit(desired, recompute, None)
            .map_err(|e| e.to_string())?;
        for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
            self.kernel
                .detach(&e.interface, hook)
                .map_err(|err| format!("detaching {hook:?} from {}: {err}", e.interface))?;
        }
        self.refresh_links();
        info!(name, "endpoint removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A datapath that records what it is asked.
    #[derive(Clone, Default)]
    struct Recorder {
        applied: Arc<Mutex<Vec<bpf_redirect::DesiredState>>>,
        links: Arc<Mutex<Vec<(String, Hook)>>>,
        refuse_attach: Option<String>,
        /// Applies to fail before the next one succeeds.
        fail_applies: Arc<Mutex<usize>>,
    }

    impl Kernel for Recorder {
        fn apply(
            &mut self,
            desired: &bpf_redirect::DesiredState,
        ) -> bpf_redirect::Result<ApplyStats> {
            let mut fail = self.fail_applies.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(bpf_redirect::Error::MissingMap("failed by the test"));
            }
            self.applied.lock().unwrap().push(desired.clone());
            Ok(ApplyStats::default())
        }
        /// Recorded as the last applied state with the entries written and deleted.
        fn write_ipcache(
            &mut self,
            upserts: &[bpf_redirect::IpcacheEntry],
            deletes: &[bpf_redirect::IpcacheEntry],
        ) -> bpf_redirect::Result<bpf_redirect::MapDiff> {
            let mut applied = self.applied.lock().unwrap();
            let mut next = applied.last().cloned().unwrap_or_default();
            let key = |e: &bpf_redirect::IpcacheEntry| (e.addr, e.prefix_len);
            next.ipcache
                .retain(|e| !upserts.iter().chain(deletes).any(|u| key(u) == key(e)));
            next.ipcache.extend(upserts.iter().cloned());
            applied.push(next);
            Ok(bpf_redirect::MapDiff {
                written: upserts.len(),
                deleted: deletes.len(),
                unchanged: 0,
            })
        }
        fn attach(
            &mut self,
            iface: &str,
            hook: Hook,
        ) -> bpf_redirect::Result<bpf_redirect::AttachOutcome> {
            // The second hook fails: the first one is attached by then.
            if self.refuse_attach.as_deref() == Some(iface) && hook == Hook::ToEndpoint {
                return Err(bpf_redirect::Error::MissingMap("refused by the test"));
            }
            let mut links = self.links.lock().unwrap();
            if !links.contains(&(iface.to_string(), hook)) {
                links.push((iface.to_string(), hook));
            }
            Ok(bpf_redirect::AttachOutcome::Created)
        }
        fn detach(&mut self, iface: &str, hook: Hook) -> bpf_redirect::Result<bool> {
            let mut links = self.links.lock().unwrap();
            let before = links.len();
            links.retain(|l| l != &(iface.to_string(), hook));
            Ok(links.len() != before)
        }
        fn attached(&self) -> bpf_redirect::Result<Vec<(String, Hook)>> {
            Ok(self.links.lock().unwrap().clone())
        }
    }

    const RULE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: POST, path: /v1/request-landing}]}
"#;

    fn endpoint(name: &str, class: &str, n: u8) -> EndpointConfig {
        EndpointConfig {
            name: name.into(),
            namespace: "default".into(),
            labels: [("org", "empire"), ("class", class)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![Ipv4Addr::new(10, 200, n, 2)],
            interface: format!("lxc{n}"),
            named_ports: BTreeMap::new(),
            audit: false,
        }
    }

    fn no_addresses() -> Vec<Ipv4Addr> {
        vec![Ipv4Addr::new(10, 200, 0, 1)]
    }

    fn started(kernel: Recorder) -> Controller<Recorder> {
        let mut cfg = Config::parse(
            "node.yaml",
            "policy_dirs: [/nonexistent]\nendpoints:\n- {name: deathstar-1, labels: {org: empire, class: deathstar}, ips: [10.200.1.2], interface: lxc1}\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        // Each controller its own FQDN checkpoint (beside the admin socket).
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cfg.admin_socket = std::env::temp_dir()
            .join(format!("ward-controller-test-{}-{n}", std::process::id()))
            .join("admin.sock");
        let files: BTreeMap<PathBuf, String> =
            [(PathBuf::from("/p/rule1.yaml"), RULE.to_string())].into();
        let store = initial_store(&files).unwrap();
        let set = policy_set(&store, &files, &cfg).unwrap();
        let mut c = Controller::start(
            Arc::new(cfg),
            files,
            store,
            set,
            kernel,
            Arc::new(Metrics::new()),
            no_addresses,
        )
        .unwrap();
        c.attach_all().unwrap();
        c
    }

    fn redirects_to(state: &NodeState, from: &str) -> bool {
        let id = state.endpoint_by_name("deathstar-1").unwrap().id;
        let Some(peer) = state.endpoint_by_name(from) else {
            return false;
        };
        state.desired.policy.iter().any(|p| {
            p.endpoint_id == id
                && p.identity == peer.peer.identity.0
                && !p.egress
                && p.proxy_port == 15001
        })
    }

    fn file(path: &str, content: FileContent) -> Vec<FileChange> {
        vec![FileChange {
            path: path.into(),
            content,
        }]
    }

    /// The controller driven by synthetic source events, no files and no kernel: endpoints
    /// come and go, a policy is edited, broken and fixed, and every published snapshot and
    /// map write follows.
    #[test]
    fn the_controller_applies_source_events_and_publishes_each_state() {
        let kernel = Recorder::default();
        let mut c = started(kernel.clone());
        let published = c.published();
        assert_eq!(kernel.applied.lock().unwrap().len(), 1);
        assert_eq!(
            published.status.load().links.len(),
            2,
            "deathstar's two hooks"
        );

        // An endpoint from the admin socket: attached, its identity allowed through the
        // proxy, and only the deathstar's entries patched for it.
        let (reply, answer) = mpsc::sync_channel(1);
        c.handle(SourceEvent::EndpointAdd {
            endpoint: endpoint("tiefighter", "tiefighter", 3),
            reply,
        });
        assert_eq!(answer.recv().unwrap(), Ok(2));
        let state = published.state.load_full();
        assert!(redirects_to(&state, "tiefighter"));
        assert_eq!(published.status.load().links.len(), 4);
        let applied = published.status.load().last_apply.unwrap();
        assert_eq!((applied.recompute.whole, applied.recompute.patched), (1, 2));

        // A duplicate name is refused and nothing is written.
        let writes = kernel.applied.lock().unwrap().len();
        let (reply, answer) = mpsc::sync_channel(1);
        c.handle(SourceEvent::EndpointAdd {
            endpoint: endpoint("tiefighter", "tiefighter", 4),
            reply,
        });
        assert!(answer.recv().unwrap().unwrap_err().contains("exists"));
        assert_eq!(kernel.applied.lock().unwrap().len(), writes);

        // A broken policy file: rejected with its line, its previous version stays.
        let generation = published.state.load().generation;
        c.policy_files(
            file(
                "/p/rule1.yaml",
                FileContent::Text(RULE.replace("endpointSelector", "endpointSelectr")),
            ),
            None,
        );
        assert_eq!(published.state.load().generation, generation);
        let error = published.status.load().last_error.clone().unwrap();
        assert!(error.contains("/p/rule1.yaml:6"), "{error}");
        assert!(redirects_to(&published.state.load(), "tiefighter"));
        // `ward policy get` shows the version in force, not the refused one.
        let documents = published.documents.load();
        assert_eq!(documents.len(), 1);
        assert!(documents[0]["spec"].get("endpointSelector").is_some());

        // Another file changes meanwhile: it applies; the broken one is still refused (its
        // previous version still in force, its error still shown).
        c.policy_files(
            file(
                "/p/other.yaml",
                FileContent::Text(RULE.replace("rule1", "other").replace("deathstar", "x")),
            ),
            Some(SystemTime::now()),
        );
        let state = published.state.load_full();
        assert!(state.generation > generation);
        assert_eq!(state.policy_count(), 2);
        assert_eq!(published.documents.load().len(), 2);
        assert!(redirects_to(&state, "tiefighter"));
        let error = published.status.load().last_error.clone().unwrap();
        assert!(error.contains("/p/rule1.yaml:6"), "{error}");

        // A comment-only edit changes no object: nothing is written.
        let writes = kernel.applied.lock().unwrap().len();
        c.policy_files(
            file(
                "/p/other.yaml",
                FileContent::Text(
                    "# a comment\n".to_string()
                        + &RULE.replace("rule1", "other").replace("deathstar", "x"),
                ),
            ),
            None,
        );
        assert_eq!(kernel.applied.lock().unwrap().len(), writes);

        // Fixed, and the rule no longer covers tiefighters: the new policy is in force and
        // the change-to-maps time is reported.
        let generation = published.state.load().generation;
        let modified = SystemTime::now() - Duration::from_millis(50);
        c.policy_files(
            file(
                "/p/rule1.yaml",
                FileContent::Text(RULE.replace("{org: empire}", "{class: mediabot}")),
            ),
            Some(modified),
        );
        let state = published.state.load_full();
        assert!(state.generation > generation);
        assert!(!redirects_to(&state, "tiefighter"));
        let status = published.status.load();
        assert!(status.last_error.is_none());
        assert!(status.last_apply.unwrap().change_to_maps.unwrap() >= Duration::from_millis(50));
        assert_eq!(state.engine.set.files.len(), 2);

        // Removing the file removes its policy.
        c.policy_files(file("/p/rule1.yaml", FileContent::Removed), None);
        assert_eq!(published.state.load().policy_count(), 1);

        // An endpoint whose hooks cannot attach is not kept.
        let mut refusing = kernel.clone();
        refusing.refuse_attach = Some("lxc9".into());
        c.kernel = refusing;
        let (reply, answer) = mpsc::sync_channel(1);
        c.handle(SourceEvent::EndpointAdd {
            endpoint: endpoint("xwing", "xwing", 9),
            reply,
        });
        assert!(answer.recv().unwrap().is_err());
        assert!(published.state.load().endpoint_by_name("xwing").is_none());
        assert!(
            !published
                .status
                .load()
                .links
                .iter()
                .any(|(i, _)| i == "lxc9"),
            "the hook that did attach is detached again"
        );

        // Removal detaches and unpublishes.
        let (reply, answer) = mpsc::sync_channel(1);
        c.handle(SourceEvent::EndpointRemove {
            name: "tiefighter".into(),
            reply,
        });
        assert_eq!(answer.recv().unwrap(), Ok(()));
        assert!(published
            .state
            .load()
            .endpoint_by_name("tiefighter")
            .is_none());
        assert_eq!(published.status.load().links.len(), 2);
    }

    /// Pods of one name in two namespaces are two endpoints; a bare name that both have is
    /// refused as ambiguous, `namespace/name` is not. A pod waits for an interface, and goes
    /// when it is gone.
    #[test]
    fn pods_are_endpoints_by_namespace_and_name() {
        let kernel = Recorder::default();
        let mut c = started(kernel.clone());
        let published = c.published();
        let pod = |ns: &str, n: u8, interface: &str| {
            let mut e = endpoint("redis-0", "redis", n);
            e.namespace = ns.into();
            e.interface = interface.into();
            e
        };
        let ask = |c: &mut Controller<Recorder>, endpoint: EndpointConfig| {
            let (reply, answer) = mpsc::sync_channel(1);
            c.handle(SourceEvent::Pod { endpoint, reply });
            answer.recv().unwrap()
        };
        assert!(matches!(ask(&mut c, pod("a", 20, "lxc20")), Ok(Some(_))));
        assert!(matches!(ask(&mut c, pod("b", 21, "lxc21")), Ok(Some(_))));
        // No interface yet: it waits, no endpoint.
        assert_eq!(ask(&mut c, pod("c", 22, "")), Ok(None));
        let state = published.state.load_full();
        assert!(state.endpoint_by_name("a/redis-0").is_some());
        assert!(state.endpoint_by_name("b/redis-0").is_some());
        assert!(state.endpoint_by_name("c/redis-0").is_none());
        let (reply, answer) = mpsc::sync_channel(1);
        c.handle(SourceEvent::EndpointRemove {
            name: "redis-0".into(),
            reply,
        });
        assert!(answer
            .recv()
            .unwrap()
            .unwrap_err()
            .contains("a/redis-0, b/redis-0"));
        let (reply, answer) = mpsc::sync_channel(1);
        c.handle(SourceEvent::PodGone {
            namespace: "a".into(),
            name: "redis-0".into(),
            reply,
        });
        assert_eq!(answer.recv().unwrap(), Ok(()));
        let state = published.state.load_full();
        assert!(state.endpoint_by_name("a/redis-0").is_none());
        assert!(state.endpoint_by_name("b/redis-0").is_some());
    }

    /// Events that arrive together are applied together: one map write for a burst of file
    /// changes, and the run loop ends when every source is gone.
    #[test]
    fn a_burst_of_file_changes_is_one_write() {
        let kernel = Recorder::default();
        let c = started(kernel.clone());
        let published = c.published();
        let (events, inbox) = mpsc::channel();
        for i in 0..5 {
            events
                .send(SourceEvent::PolicyFiles {
                    changes: file(
                        &format!("/p/extra-{i}.yaml"),
                        FileContent::Text(RULE.replace("rule1", &format!("rule-{i}"))),
                    ),
                    modified: None,
                })
                .unwrap();
        }
        drop(events);
        c.run(inbox);
        assert_eq!(
            kernel.applied.lock().unwrap().len(),
            2,
            "start, then one write"
        );
        assert_eq!(published.state.load().policy_count(), 6);
    }

    const HOST_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host}
spec:
  nodeSelector: {}
  ingress: [{fromEntities: [cluster]}]
"#;

    /// Changes that cannot be put in force yet are kept, shown, and tried again: a set this
    /// node cannot enforce waits for the files to change, a failed write is retried, and
    /// neither loses the other files' changes made meanwhile.
    #[test]
    fn changes_not_yet_in_force_are_kept_and_tried_again() {
        let kernel = Recorder::default();
        let mut c = started(kernel.clone());
        let published = c.published();
        // A host policy on a node without an uplink, and an edit of rule1 in the same batch:
        // the set is refused whole; neither is in force, and the reason is shown.
        let generation = published.state.load().generation;
        let edited = RULE.replace("{org: empire}", "{class: mediabot}");
        c.policy_files(
            vec![
                FileChange {
                    path: "/p/host.yaml".into(),
                    content: FileContent::Text(HOST_POLICY.into()),
                },
                FileChange {
                    path: "/p/rule1.yaml".into(),
                    content: FileContent::Text(edited.clone()),
                },
            ],
            None,
        );
        assert_eq!(published.state.load().generation, generation);
        let error = published.status.load().last_error.clone().unwrap();
        assert!(error.contains("uplink"), "{error}");
        // An unrelated change does not clear it: the refused set is still what the files say.
        c.policy_files(
            file("/p/empty.yaml", FileContent::Text(String::new())),
            None,
        );
        assert_eq!(published.state.load().generation, generation);
        assert!(published.status.load().last_error.is_some());
        // The host policy goes: rule1's edit, kept all along, is now in force.
        c.policy_files(file("/p/host.yaml", FileContent::Removed), None);
        let state = published.state.load_full();
        assert!(state.generation > generation);
        assert_eq!(state.policy_count(), 1);
        assert!(
            published.documents.load()[0]["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"]
                .get("class")
                .is_some()
        );
        assert!(published.status.load().last_error.is_none());

        // A write that fails is retried (here by the next event; `run` retries every RETRY).
        *kernel.fail_applies.lock().unwrap() = 1;
        let generation = published.state.load().generation;
        c.policy_files(file("/p/rule1.yaml", FileContent::Text(RULE.into())), None);
        assert_eq!(published.state.load().generation, generation);
        let error = published.status.load().last_error.clone().unwrap();
        assert!(error.contains("not applied yet"), "{error}");
        assert!(c.retry);
        c.apply_pending();
        assert!(published.state.load().generation > generation);
        assert!(
            published.documents.load()[0]["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"]
                .get("org")
                .is_some()
        );
        assert!(published.status.load().last_error.is_none());
        assert!(!c.retry);

        // A source that cannot read its input, and reads it again.
        c.handle(SourceEvent::SourceError {
            source: "policy files",
            diagnostics: vec![Diagnostic::file_error("/p", "cannot list directory")],
        });
        assert!(published.status.load().last_error.is_some());
        c.handle(SourceEvent::SourceRecovered {
            source: "policy files",
        });
        assert!(published.status.load().last_error.is_none());
    }
}
