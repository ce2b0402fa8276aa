//! The node's desired state, kept current one change at a time.
//!
//! A change (a new policy set, endpoints added or removed, the node's addresses) recomputes
//! only the kernel policy entries it can affect:
//! - an endpoint whose own identity changed, or whose set of selecting policies changed (a
//!   policy that selects it was added, edited or removed), is recomputed whole;
//! - every other endpoint keeps its entries, minus those of identities that left the node's
//!   identity table, plus entries for identities that joined it (a new pod's labels, a new
//!   CIDR of a policy), computed for those identities alone.
//!
//! An address whose identity is already known changes the ipcache only. Namespace and Service
//! objects, the enforcement mode and node labels change what every selector sees: those
//! recompute everything. Entries for one identity never depend on other identities (the
//! precedence fix-up is per identity), except wildcard entries of egress named ports, which
//! depend on every peer's named ports: an identity change involving named ports recomputes
//! every endpoint. The test `incremental_updates_equal_a_full_build` holds this against a full
//! build over a random sequence of changes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bpf_redirect::PolicyEntry;
use ipnet::IpNet;
use l7_rules::check::PeerSpec;
use l7_rules::engine::{Enforcement, Engine};
use l7_rules::identity::{Identity, IdentityTable, Peer, Reserved};
use l7_rules::model::{Direction, L7Parser, Policy};

use super::entries::{metrics_allow, to_policy_entry};
use super::{Settings, ViewError, HOST_ENDPOINT_ID};
use crate::config::EndpointConfig;

/// One endpoint's computed part (a pod's, or the host's).
#[derive(Clone, Debug)]
pub(super) struct Computed {
    pub peer: Arc<Peer>,
    /// A fingerprint of the policies that select it.
    selection: u64,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    /// Its kernel policy entries, each with the L7 parser it would redirect to when no
    /// listener serves that parser (the entry then drops: fail closed).
    pub entries: Arc<Vec<(PolicyEntry, Option<L7Parser>)>>,
}

/// What one update recomputed (for logs, metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recompute {
    /// Endpoints (the host counts) whose entries were computed whole.
    pub whole: usize,
    /// Endpoints whose entries were patched for changed identities only.
    pub patched: usize,
    /// Identities that joined, left or changed in the node's identity table.
    pub identities: usize,
}

/// One change to the desired state.
#[derive(Default)]
pub struct Update {
    pub engine: Option<Arc<Engine>>,
    pub upsert: Vec<(u16, EndpointConfig)>,
    pub remove: Vec<u16>,
    pub host_ips: Option<Vec<Ipv4Addr>>,
    /// Learned addresses whose names changed: every name each now answers, or `None` when
    /// it answers none any more.
    pub fqdn: Vec<(Ipv4Addr, Option<Vec<String>>)>,
    /// Other nodes' pods that appeared, changed (by address) or went (`None`).
    pub remote: Vec<(Ipv4Addr, Option<RemotePod>)>,
}

/// A pod of another node: what its identity is computed from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemotePod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The node's desired state: its inputs and every endpoint's computed entries.
#[derive(Clone)]
pub struct Desired {
    pub(super) engine: Arc<Engine>,
    pub(super) settings: Settings,
    /// Per policy of the engine's set (by address), a fingerprint of its compiled form.
    prints: Arc<HashMap<usize, u64>>,
    world_print: u64,
    pub(super) configs: BTreeMap<u16, EndpointConfig>,
    pub(super) computed: BTreeMap<u16, Computed>,
    pub(super) host: Option<Computed>,
    pub(super) identities: IdentityTable,
    pub(super) cidrs: Vec<(IpNet, Arc<Peer>)>,
    pub(super) host_ips: Vec<Ipv4Addr>,
    /// The engine's toFQDNs selectors, compiled.
    pub(super) fqdn_selectors: Arc<l7_rules::l7::dns::FqdnSelectorSet>,
    /// Learned addresses and their names.
    pub(super) fqdn: super::Learned,
    /// The peer of each learned address the selectors select, unless the address is an
    /// endpoint's, the node's, or a policy's /32 (those keep their own identity). Kept across
    /// updates: only addresses whose names changed are recomputed, or every one after the
    /// selectors, the endpoints or the node's addresses changed.
    pub(super) fqdn_peers: super::FqdnPeers,
    /// Per identity of learned addresses: the peer the identity table shows for it (the first
    /// address given it that is still there) and how many addresses have it.
    fqdn_ids: imbl::OrdMap<Identity, (Arc<Peer>, usize)>,
    /// Other nodes' pods by address, and their peers (their labels' identities), unless the
    /// address is a local endpoint's, the node's, or a policy's /32.
    remote_pods: imbl::OrdMap<Ipv4Addr, Arc<RemotePod>>,
    /// Other nodes' addresses (their Node objects'): `remote-node`, before any pod there.
    remote_nodes: Arc<BTreeSet<Ipv4Addr>>,
    pub(super) remote: super::addresses::AddressPeers,
}

fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Fingerprints of what every selector and every entry depends on beyond the policies: the
/// catalog (namespace labels, services), the enforcement mode, node labels, and the settings.
fn world_print(engine: &Engine, settings: &Settings) -> u64 {
    hash_of(&format!(
        "{:?}|{:?}|{}|{}|{settings:?}",
        engine.set.catalog, engine.mode, engine.node_labels, engine.allow_localhost
    ))
}

/// The address of a policy in its engine's set: stable while the engine lives.
fn key(p: &Policy) -> usize {
    std::ptr::from_ref(p) as usize
}

fn policy_prints(engine: &Engine) -> HashMap<usize, u64> {
    engine
        .set
        .policies
        .iter()
        .map(|p| (key(p), hash_of(&format!("{p:?}"))))
        .collect()
}

impl Desired {
    /// The state of `endpoints` under `engine`, built whole.
    pub fn new(
        engine: Arc<Engine>,
        settings: Settings,
        endpoints: &[(u16, EndpointConfig)],
        host_ips: &[Ipv4Addr],
    ) -> Result<(Desired, Recompute), ViewError> {
        let empty = Desired {
            prints: Arc::new(policy_prints(&engine)),
            world_print: world_print(&engine, &settings),
            engine: engine.clone(),
            settings,
            configs: BTreeMap::new(),
            computed: BTreeMap::new(),
            host: None,
            identities: IdentityTable::with_reserved(),
            cidrs: Vec::new(),
            host_ips: Vec::new(),
            fqdn_selectors: Arc::new(engine.fqdn_selector_set()),
            fqdn: Default::default(),
            fqdn_peers: Default::default(),
            fqdn_ids: Default::default(),
            remote_pods: Default::default(),
            remote_nodes: Default::default(),
            remote: Default::default(),
        };
        empty.update(Update {
            engine: Some(engine),
            upsert: endpoints.to_vec(),
            remove: Vec::new(),
            host_ips: Some(host_ips.to_vec()),
            fqdn: Vec::new(),
            remote: Vec::new(),
        })
    }

    /// The ipcache entry an address stands for by itself (another node's pod, or a learned
    /// address), if any.
    pub fn address_entry(&self, ip: Ipv4Addr) -> Option<bpf_redirect::IpcacheEntry> {
        self.remote
            .get(&ip)
            .or_else(|| self.fqdn_peers.get(&ip))
            .map(|p| super::NodeState::fqdn_entry(ip, p))
    }

    /// Other nodes' pods, by address.
    pub fn remote_pods(&self) -> impl Iterator<Item = (Ipv4Addr, &RemotePod)> {
        self.remote_pods.iter().map(|(ip, p)| (*ip, &**p))
    }

    pub fn endpoint_configs(&self) -> impl Iterator<Item = (u16, &EndpointConfig)> {
        self.configs.iter().map(|(id, c)| (*id, c))
    }

    /// The state after `update`, and what it recomputed. On error nothing changes.
    pub fn update(&self, update: Update) -> Result<(Desired, Recompute), ViewError> {
        let mut next = self.clone();
        let mut whole_world = false;
        let mut selectors_changed = false;
        // What the learned addresses' peers depend on besides their names.
        let fqdn_whole = update.engine.is_some()
            || !update.upsert.is_empty()
            || !update.remove.is_empty()
            || update
                .host_ips
                .as_ref()
                .is_some_and(|ips| *ips != next.host_ips);
        if let Some(engine) = update.engine {
            let world = world_print(&engine, &next.settings);
            whole_world = world != next.world_print;
            next.world_print = world;
            next.prints = Arc::new(policy_prints(&engine));
            let selectors = engine.fqdn_selector_set();
            selectors_changed = selectors != *next.fqdn_selectors;
            next.fqdn_selectors = Arc::new(selectors);
            next.remote_nodes = Arc::new(
                next.settings
                    .remote_node_addresses(&engine.set.catalog)
                    .collect(),
            );
            next.engine = engine;
        }
        let mut remote_changed = Vec::with_capacity(update.remote.len());
        for (ip, pod) in update.remote {
            match pod {
                Some(p) => next.remote_pods.insert(ip, Arc::new(p)),
                None => next.remote_pods.remove(&ip),
            };
            remote_changed.push(ip);
        }
        let mut fqdn_changed = Vec::with_capacity(update.fqdn.len());
        for (ip, names) in update.fqdn {
            match names {
                Some(n) => next.fqdn.insert(ip, n.into()),
                None => next.fqdn.remove(&ip),
            };
            fqdn_changed.push(ip);
        }
        for id in &update.remove {
            next.configs.remove(id);
            next.computed.remove(id);
        }
        for (id, cfg) in update.upsert {
            next.configs.insert(id, cfg);
        }
        if let Some(ips) = update.host_ips {
            next.host_ips = ips;
        }
        let engine = next.engine.clone();

        // Peers and the identity table, in a fixed order (endpoints by id, then policy CIDRs):
        // the first peer of an identity is the one the table keeps.
        let mut identities = IdentityTable::with_reserved();
        let mut peers = BTreeMap::new();
        for (id, cfg) in &next.configs {
            let peer = endpoint_peer(&engine, cfg);
            identities.insert(peer.clone())?;
            peers.insert(*id, Arc::new(peer));
        }
        let mut cidrs = Vec::new();
        for net in engine.policy_cidrs() {
            if !matches!(net, IpNet::V4(_)) {
                continue;
            }
            let peer = Peer::cidr(net.addr(), Some(net));
            identities.insert(peer.clone())?;
            cidrs.push((net, Arc::new(peer)));
        }
        // Addresses learned from DNS answers, as /32s with the identity of the selectors that
        // select their names. The identity table gets one peer per such identity.
        let mut own: HashSet<Ipv4Addr> = next
            .configs
            .values()
            .flat_map(|c| c.ips.iter().copied())
            .chain(next.host_ips.iter().copied())
            .chain(cidrs.iter().filter_map(|(n, _)| match n {
                IpNet::V4(v4) if v4.prefix_len() == 32 => Some(v4.addr()),
                _ => None,
            }))
            .collect();
        // Other nodes' pods: their labels' identities (the same as a local pod's with those
        // labels). Recomputed whole when what identities depend on changed.
        let remote_ips: Vec<Ipv4Addr> = if fqdn_whole {
            next.remote = Default::default();
            let mut ips: Vec<Ipv4Addr> = next.remote_pods.keys().copied().collect();
            ips.extend(next.remote_nodes.iter().copied());
            ips
        } else {
            remote_changed
        };
        let remote_node = Arc::new(Peer::reserved(Reserved::RemoteNode));
        for ip in remote_ips {
            if own.contains(&ip) {
                next.remote.set(ip, None);
                continue;
            }
            if next.remote_nodes.contains(&ip) {
                next.remote.set(ip, Some(remote_node.clone()));
                continue;
            }
            let peer = next
                .remote_pods
                .get(&ip)
                .map(|pod| Arc::new(remote_peer(&engine, ip, pod)))
                .filter(|p| {
                    // Identities are hashes of labels: two label sets can collide. Such a pod
                    // is left out (its traffic is judged as the world's, failing closed),
                    // never judged with another pod's labels.
                    let other = identities
                        .get(p.identity)
                        .map(|t| &t.labels)
                        .or_else(|| next.remote.shown_for(p.identity).map(|t| &t.labels));
                    let clash = other.is_some_and(|labels| *labels != p.labels);
                    if clash {
                        tracing::warn!(
                            pod = %p.display,
                            identity = p.identity.0,
                            "another node's pod has the identity of other labels (a hash collision): its traffic is judged as the world's"
                        );
                    }
                    !clash
                });
            next.remote.set(ip, peer);
        }
        for peer in next.remote.shown() {
            // Another peer with that identity (a local pod with the same labels) is already
            // there: the table keeps the first.
            if identities.get(peer.identity).is_none() {
                identities.insert(Peer::clone(peer))?;
            }
        }
        // A pod's or a node's address is its own, never a learned one.
        own.extend(next.remote_pods.keys().copied());
        own.extend(next.remote_nodes.iter().copied());
        if fqdn_whole {
            let old = std::mem::take(&mut next.fqdn_peers);
            next.fqdn_ids = imbl::OrdMap::new();
            let changed: HashSet<Ipv4Addr> = fqdn_changed.into_iter().collect();
            let ips: Vec<Ipv4Addr> = next.fqdn.keys().copied().collect();
            for ip in ips {
                let kept = (!selectors_changed && !changed.contains(&ip))
                    .then(|| old.get(&ip).cloned())
                    .flatten();
                next.set_fqdn_peer(ip, kept, &own);
            }
        } else {
            for ip in fqdn_changed {
                next.set_fqdn_peer(ip, None, &own);
            }
        }
        for (peer, _) in next.fqdn_ids.values() {
            if identities.get(peer.identity).is_none() {
                identities.insert(Peer::clone(peer))?;
            }
        }
        cidrs.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));

        // Identities that joined, left, or now stand for another peer.
        let mut changed: BTreeSet<Identity> = BTreeSet::new();
        let mut named_ports = false;
        for p in self.identities.iter() {
            if identities.get(p.identity) != Some(p) {
                changed.insert(p.identity);
                named_ports |= !p.named_ports.is_empty();
            }
        }
        for p in identities.iter() {
            if self.identities.get(p.identity) != Some(p) {
                changed.insert(p.identity);
                named_ports |= !p.named_ports.is_empty();
            }
        }
        let mut joined = IdentityTable::default();
        for id in &changed {
            if let Some(p) = identities.get(*id) {
                joined.insert(p.clone())?;
            }
        }

        let mut stats = Recompute {
            identities: changed.len(),
            ..Recompute::default()
        };
        let whole = whole_world || named_ports;
        let step = |old: Option<&Computed>, peer: Arc<Peer>, id: u16, stats: &mut Recompute| {
            let selection = selection_print(&engine, &next.prints, &peer);
            match old {
                Some(o) if !whole && o.peer == peer && o.selection == selection => {
                    if changed.is_empty() {
                        return o.clone();
                    }
                    stats.patched += 1;
                    patch(&engine, &next.settings, id, o, &changed, &joined)
                }
                _ => {
                    stats.whole += 1;
                    compute(&engine, &next.settings, id, peer, selection, &identities)
                }
            }
        };
        let mut computed = BTreeMap::new();
        for (id, peer) in peers {
            let c = step(self.computed.get(&id), peer, id, &mut stats);
            computed.insert(id, c);
        }
        let host = step(
            self.host.as_ref(),
            Arc::new(Peer::reserved(Reserved::Host)),
            HOST_ENDPOINT_ID,
            &mut stats,
        );
        next.computed = computed;
        next.host = Some(host);
        next.identities = identities;
        next.cidrs = cidrs;
        Ok((next, stats))
    }
}

/// Another node's pod as policy sees it: its labels with its namespace's.
fn remote_peer(engine: &Engine, ip: Ipv4Addr, pod: &RemotePod) -> Peer {
    let spec = PeerSpec {
        labels: pod.labels.clone(),
        namespace: Some(pod.namespace.clone()),
        ip: Some(IpAddr::V4(ip)),
        fqdn: None,
        named_ports: BTreeMap::new(),
        entity: None,
    };
    let mut peer = engine.peer(&spec);
    peer.display = format!("{}/{}", pod.namespace, pod.name);
    peer
}

/// An endpoint's peer as policy sees it: its labels with its namespace's.
pub(super) fn endpoint_peer(engine: &Engine, cfg: &EndpointConfig) -> Peer {
    let spec = PeerSpec {
        labels: cfg.labels.clone(),
        namespace: Some(cfg.namespace.clone()),
        ip: cfg.ips.first().map(|i| IpAddr::V4(*i)),
        fqdn: None,
        named_ports: cfg.named_ports.clone(),
        entity: None,
    };
    let mut peer = engine.peer(&spec);
    peer.display = format!("{}/{}", cfg.namespace, cfg.name);
    peer
}

/// A fingerprint of the policies that select `subject`.
fn selection_print(engine: &Engine, prints: &HashMap<usize, u64>, subject: &Peer) -> u64 {
    let mut h = DefaultHasher::new();
    for p in engine.selecting(subject) {
        prints.get(&key(p)).hash(&mut h);
    }
    h.finish()
}

fn entries_for(
    engine: &Engine,
    settings: &Settings,
    id: u16,
    subject: &Peer,
    identities: &IdentityTable,
    keep: impl Fn(Identity) -> bool,
) -> Vec<(PolicyEntry, Option<L7Parser>)> {
    engine
        .map_entries(subject, identities)
        .iter()
        .filter(|e| keep(e.key.identity))
        .map(|e| to_policy_entry(id, e, settings))
        .collect()
}

/// An endpoint's entries, computed whole.
fn compute(
    engine: &Engine,
    settings: &Settings,
    id: u16,
    peer: Arc<Peer>,
    selection: u64,
    identities: &IdentityTable,
) -> Computed {
    let enforced = |d| matches!(engine.enforcement(&peer, d), Enforcement::Enforced { .. });
    Computed {
        ingress_enforced: enforced(Direction::Ingress),
        egress_enforced: enforced(Direction::Egress),
        entries: Arc::new(entries_for(engine, settings, id, &peer, identities, |_| {
            true
        })),
        peer,
        selection,
    }
}

/// An endpoint's entries with those of `changed` identities replaced: dropped for identities
/// that left, computed for the ones in `joined` (which holds only changed identities).
fn patch(
    engine: &Engine,
    settings: &Settings,
    id: u16,
    old: &Computed,
    changed: &BTreeSet<Identity>,
    joined: &IdentityTable,
) -> Computed {
    let mut entries: Vec<(PolicyEntry, Option<L7Parser>)> = old
        .entries
        .iter()
        .filter(|(e, _)| !changed.contains(&Identity(e.identity)))
        .cloned()
        .collect();
    entries.extend(entries_for(engine, settings, id, &old.peer, joined, |i| {
        changed.contains(&i)
    }));
    Computed {
        entries: Arc::new(entries),
        ..old.clone()
    }
}

impl Desired {
    /// Recomputes the peer of learned address `ip` from its names (or takes `kept`, its peer
    /// as it was): none when no selector selects them or the address is one of `own`.
    fn set_fqdn_peer(&mut self, ip: Ipv4Addr, kept: Option<Arc<Peer>>, own: &HashSet<Ipv4Addr>) {
        if let Some(old) = self.fqdn_peers.remove(&ip) {
            self.forget_fqdn_id(&old);
        }
        if own.contains(&ip) {
            return;
        }
        let peer = match kept {
            Some(p) => p,
            None => {
                let Some(names) = self.fqdn.get(&ip) else {
                    return;
                };
                match Engine::fqdn_peer(IpAddr::V4(ip), names.to_vec(), &self.fqdn_selectors) {
                    Some(p) => Arc::new(p),
                    None => return,
                }
            }
        };
        match self.fqdn_ids.get_mut(&peer.identity) {
            Some((_, n)) => *n += 1,
            None => {
                self.fqdn_ids.insert(peer.identity, (peer.clone(), 1));
            }
        }
        self.fqdn_peers.insert(ip, peer);
    }

    /// `gone` no longer stands for a learned address: its identity counts one fewer, and
    /// when it was the one the identity table shows, another address of that identity does.
    fn forget_fqdn_id(&mut self, gone: &Arc<Peer>) {
        let id = gone.identity;
        let Some((shown, n)) = self.fqdn_ids.get_mut(&id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.fqdn_ids.remove(&id);
            return;
        }
        if Arc::ptr_eq(shown, gone) {
            // Rare (the shown address expired): a walk of the learned addresses.
            if let Some(other) = self.fqdn_peers.values().find(|p| p.identity == id) {
                *shown = other.clone();
            }
        }
    }

    /// The host's entries, with the implicit allow of Ward's own metrics port.
    pub(super) fn host_entries(&self) -> Vec<PolicyEntry> {
        let Some(host) = &self.host else {
            return Vec::new();
        };
        let mut out: Vec<PolicyEntry> = host.entries.iter().map(|(e, _)| e.clone()).collect();
        if host.ingress_enforced {
            if let Some(port) = self.settings.metrics_port {
                if let Some(p) = metrics_allow(&out, port) {
                    out.push(p);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Enforcement;
    use crate::state::NodeState;

    fn settings() -> Settings {
        Settings {
            http_port: 15001,
            dns_port: Some(15053),
            kafka_port: None,
            audit: false,
            enforcement: Enforcement::Default,
            node_labels: [("node-access".to_string(), "restricted".to_string())].into(),
            node_name: None,
            host_audit: false,
            metrics_port: Some(9962),
        }
    }

    /// Every scene's policy set, and an empty one.
    fn engines(settings: &Settings) -> Vec<Arc<Engine>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policies");
        let mut dirs: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        // Egress to a named port: resolved per destination, also for the wildcard peer.
        let named = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named-port, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire}}
  egress:
  - toEndpoints: [{matchLabels: {app: postgres}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
  - toPorts: [{ports: [{port: http, protocol: TCP}]}]
"#;
        // Two toFQDNs selectors: an address answering names of both has a third identity.
        let fqdn = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn-two, namespace: default}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchPattern: "*.a.test"}, {matchName: "x.b.test"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toFQDNs: [{matchName: "x.b.test"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
        let mut sets = vec![
            l7_rules::source::load_sources(&[]).unwrap(),
            l7_rules::source::load_sources(&[("named.yaml".into(), named.into())]).unwrap(),
            l7_rules::source::load_sources(&[("fqdn.yaml".into(), fqdn.into())]).unwrap(),
        ];
        for d in dirs {
            sets.push(l7_rules::source::load_paths(&[d]).unwrap());
        }
        sets.into_iter()
            .map(|set| {
                let mut e = Engine::new(set);
                settings.apply_to(&mut e);
                Arc::new(e)
            })
            .collect()
    }

    /// Pods the scenes' selectors pick (and some they do not), one with a named port.
    fn template(n: u64, id: u16) -> EndpointConfig {
        const LABELS: [&[(&str, &str)]; 9] = [
            &[("org", "empire"), ("class", "deathstar")],
            &[("org", "empire"), ("class", "tiefighter")],
            &[("org", "alliance"), ("class", "xwing")],
            &[("app", "myService"), ("env", "dev")],
            &[("role", "backend")],
            &[("app", "postgres")],
            &[("app", "kafka-consumer")],
            &[("app", "nginx")],
            &[("app", "unselected")],
        ];
        let labels = LABELS[(n % LABELS.len() as u64) as usize];
        EndpointConfig {
            name: format!("pod{id}"),
            namespace: if n % 5 == 4 { "prod" } else { "default" }.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![Ipv4Addr::new(10, 200, id as u8, 2)],
            interface: format!("lxc{id}"),
            named_ports: if n % 4 == 3 {
                [("http".to_string(), 8080)].into()
            } else {
                BTreeMap::new()
            },
            audit: false,
        }
    }

    fn sorted(state: &NodeState) -> String {
        let d = state.kernel_state();
        let mut policy: Vec<String> = d.policy.iter().map(|p| format!("{p:?}")).collect();
        let mut ipcache: Vec<String> = d.ipcache.iter().map(|p| format!("{p:?}")).collect();
        let mut eps: Vec<String> = d.endpoints.iter().map(|p| format!("{p:?}")).collect();
        policy.sort();
        ipcache.sort();
        eps.sort();
        format!("{eps:#?}\n{ipcache:#?}\n{policy:#?}\n{:?}", state.unproxied)
    }

    /// A random walk of endpoint, policy and address changes: after every step the
    /// incrementally kept state equals the state built whole from the same inputs, and the
    /// changes that should not recompute everything did not.
    #[test]
    fn incremental_updates_equal_a_full_build() {
        let settings = settings();
        let engines = engines(&settings);
        let mut seed: u64 = 0x5eed_1234_abcd_0001;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let host_ip_sets = [
            vec![Ipv4Addr::new(10, 200, 0, 1)],
            vec![Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(192, 0, 2, 1)],
        ];
        let (mut state, _) =
            Desired::new(engines[0].clone(), settings.clone(), &[], &host_ip_sets[0]).unwrap();
        let mut engine = engines[0].clone();
        let mut host_ips = host_ip_sets[0].clone();
        // Learned addresses: outside every policy CIDR but one policy /32 (20.1.1.1) and one
        // host address (192.0.2.1), which keep their own identities.
        let pool: Vec<Ipv4Addr> = (1..=10)
            .map(|i| Ipv4Addr::new(203, 0, 113, i))
            .chain([Ipv4Addr::new(20, 1, 1, 1), Ipv4Addr::new(192, 0, 2, 1)])
            .collect();
        let names = [
            "p.a.test.",
            "q.a.test.",
            "x.b.test.",
            "api.github.com.",
            "y.c.test.",
        ];
        let mut learned: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        // Other nodes' pods: a pool with a local endpoint's address (10.200.1.2, endpoint 1
        // when it exists) and an address the learned pool has too.
        let remote_pool: Vec<Ipv4Addr> = (1..=5)
            .map(|i| Ipv4Addr::new(198, 51, 100, i))
            .chain([Ipv4Addr::new(10, 200, 1, 2), Ipv4Addr::new(203, 0, 113, 1)])
            .collect();
        let mut remote: BTreeMap<Ipv4Addr, RemotePod> = BTreeMap::new();
        let (mut patched, mut untouched, mut fqdn_written, mut remote_seen) = (0, 0, 0, 0);
        for step in 0..600 {
            let roll = next() % 100;
            let mut update = Update::default();
            let what;
            if roll < 10 {
                // Another node's pod appears, is relabelled, or goes.
                let ip = remote_pool[(next() % remote_pool.len() as u64) as usize];
                if next() % 3 == 0 {
                    remote.remove(&ip);
                    update.remote.push((ip, None));
                    what = format!("remote pod {ip} gone");
                } else {
                    let t = template(next(), 1);
                    let pod = RemotePod {
                        namespace: t.namespace,
                        name: format!("r{}", ip.octets()[3]),
                        labels: t.labels,
                    };
                    remote.insert(ip, pod.clone());
                    update.remote.push((ip, Some(pod)));
                    what = format!("remote pod {ip}");
                }
            } else if roll < 25 {
                // An address learns a name, or forgets all of its names.
                let ip = pool[(next() % pool.len() as u64) as usize];
                if next() % 4 == 0 {
                    learned.remove(&ip);
                    update.fqdn.push((ip, None));
                    what = format!("forget {ip}");
                } else {
                    let n = names[(next() % names.len() as u64) as usize].to_string();
                    let now = learned.entry(ip).or_default();
                    if !now.contains(&n) {
                        now.push(n.clone());
                        now.sort();
                    }
                    update.fqdn.push((ip, Some(now.clone())));
                    what = format!("learn {ip} {n}");
                }
            } else if roll < 55 {
                let id = (next() % 12 + 1) as u16;
                update.upsert.push((id, template(next(), id)));
                what = format!("upsert {id}");
            } else if roll < 70 {
                let ids: Vec<u16> = state.configs.keys().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                let id = ids[(next() % ids.len() as u64) as usize];
                update.remove.push(id);
                what = format!("remove {id}");
            } else if roll < 90 {
                // The named-port set or the toFQDNs one a third of the time: the first's
                // wildcard entries depend on every peer, the second has learned identities.
                let i = match next() % 3 {
                    0 => 1 + (next() % 2) as usize,
                    _ => (next() % engines.len() as u64) as usize,
                };
                engine = engines[i].clone();
                update.engine = Some(engine.clone());
                what = format!("policy set {i}");
            } else {
                host_ips = host_ip_sets[(next() % 2) as usize].clone();
                update.host_ips = Some(host_ips.clone());
                what = "host addresses".into();
            }
            let (after, stats) = state.update(update).unwrap();
            state = after;
            let endpoints: Vec<(u16, EndpointConfig)> = state
                .configs
                .iter()
                .map(|(id, c)| (*id, c.clone()))
                .collect();
            let (full, _) =
                Desired::new(engine.clone(), settings.clone(), &endpoints, &host_ips).unwrap();
            let (full, _) = full
                .update(Update {
                    fqdn: learned
                        .iter()
                        .map(|(ip, n)| (*ip, Some(n.clone())))
                        .collect(),
                    remote: remote
                        .iter()
                        .map(|(ip, p)| (*ip, Some(p.clone())))
                        .collect(),
                    ..Update::default()
                })
                .unwrap();
            let full = NodeState::from_desired(1, &full);
            let kept = NodeState::from_desired(1, &state);
            assert_eq!(sorted(&kept), sorted(&full), "step {step}: {what}");
            patched += stats.patched;
            remote_seen += usize::from(!kept.remote_peers.is_empty());
            fqdn_written += usize::from(kept.fqdn_peers.values().any(|p| {
                kept.desired
                    .policy
                    .iter()
                    .any(|e| e.identity == p.identity.0)
            }));
            untouched += usize::from(stats.whole == 0 && stats.patched == 0);
        }
        assert!(patched > 100, "only {patched} endpoints patched");
        assert!(untouched > 20, "only {untouched} steps recomputed nothing");
        assert!(
            fqdn_written > 20,
            "only {fqdn_written} steps had learned addresses"
        );
        assert!(
            remote_seen > 100,
            "only {remote_seen} steps had other nodes' pods"
        );
    }

    /// A learned address whose identity is known changes the ipcache alone; an identity
    /// leaves the table (and the entries) with its last address.
    #[test]
    fn learned_addresses_change_the_ipcache_and_identities_leave_with_their_last_address() {
        let settings = settings();
        let engine = engines(&settings)[2].clone();
        let (d, _) = Desired::new(
            engine,
            settings,
            &[(1, template(0, 1))],
            &[Ipv4Addr::new(10, 200, 0, 1)],
        )
        .unwrap();
        let learn = |d: &Desired, ip: [u8; 4], names: Option<&[&str]>| {
            d.update(Update {
                fqdn: vec![(
                    Ipv4Addr::from(ip),
                    names.map(|n| n.iter().map(|s| s.to_string()).collect()),
                )],
                ..Update::default()
            })
            .unwrap()
        };
        let (d, first) = learn(&d, [203, 0, 113, 1], Some(&["p.a.test."]));
        // A new identity: its entries are computed.
        assert_eq!(first.identities, 1);
        let a = d.fqdn_peers[&Ipv4Addr::new(203, 0, 113, 1)].identity;
        let state = NodeState::from_desired(1, &d);
        assert!(state.desired.policy.iter().any(|e| e.identity == a.0));
        // A second address of the same identity: nothing recomputed.
        let (d, second) = learn(&d, [203, 0, 113, 2], Some(&["q.a.test."]));
        assert_eq!(second, Recompute::default());
        assert_eq!(d.fqdn_peers[&Ipv4Addr::new(203, 0, 113, 2)].identity, a);
        // The first (the one the table shows) now answers a name no selector selects; the
        // identity stays for the second (which the table shows now), then leaves with it.
        let (d, third) = learn(&d, [203, 0, 113, 1], Some(&["y.c.test."]));
        assert_eq!(third.whole, 0);
        assert_eq!(
            d.identities.get(a).and_then(|p| p.ip),
            Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)))
        );
        assert!(d.identities.get(a).is_some());
        let (d, _) = learn(&d, [203, 0, 113, 2], None);
        assert!(d.identities.get(a).is_none());
        let state = NodeState::from_desired(2, &d);
        assert!(!state.desired.policy.iter().any(|e| e.identity == a.0));
        assert!(state
            .kernel_state()
            .ipcache
            .iter()
            .all(|e| e.identity != a.0));
        // The node's own address keeps the host identity whatever it answers.
        let (d, _) = learn(&d, [10, 200, 0, 1], Some(&["x.b.test."]));
        assert!(d.fqdn_peers.is_empty());
    }

    #[test]
    fn a_pod_with_known_labels_or_an_address_change_recomputes_no_entry() {
        let settings = settings();
        let engine = engines(&settings)
            .into_iter()
            .find(|e| {
                e.set
                    .policies
                    .iter()
                    .any(|p| p.meta.file.contains("starwars-l7"))
            })
            .unwrap();
        let eps = [(1, template(0, 1)), (2, template(1, 2))];
        let (state, first) =
            Desired::new(engine, settings, &eps, &[Ipv4Addr::new(10, 200, 0, 1)]).unwrap();
        assert_eq!(first.whole, 3, "two pods and the host");
        // A second tiefighter: its identity is known, so only its own entries are computed.
        let (state, r) = state
            .update(Update {
                upsert: vec![(3, template(1, 3))],
                ..Update::default()
            })
            .unwrap();
        assert_eq!((r.whole, r.patched, r.identities), (1, 0, 0));
        // An xwing: a new identity; deathstar's entries are patched for it, not recomputed.
        let (state, r) = state
            .update(Update {
                upsert: vec![(4, template(2, 4))],
                ..Update::default()
            })
            .unwrap();
        assert_eq!((r.whole, r.patched, r.identities), (1, 4, 1));
        // The node's addresses: the ipcache only.
        let (_, r) = state
            .update(Update {
                host_ips: Some(vec![Ipv4Addr::new(10, 200, 0, 9)]),
                ..Update::default()
            })
            .unwrap();
        assert_eq!(r, Recompute::default());
    }
}
