//! The node model: endpoints + the loaded policy set → identities, the ipcache view the proxy
//! resolves peers with, and the [`DesiredState`] for the kernel maps. A [`NodeState`] is an
//! immutable snapshot; the daemon swaps it atomically on every change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bpf_redirect::{DesiredState, Endpoint, Interface, IpcacheEntry};
use ipnet::IpNet;
use l7_rules::engine::Engine;
use l7_rules::identity::{IdentityTable, Peer, Reserved};
use l7_rules::model::L7Parser;

use crate::config::{Config, EndpointConfig, Enforcement};

pub mod addresses;
pub mod checkpoint;
mod desired;
mod entries;

pub use desired::{Desired, Recompute, RemotePod, Update};

/// Settings that shape the view (from the node config).
#[derive(Clone, Debug)]
pub struct Settings {
    pub http_port: u16,
    pub dns_port: Option<u16>,
    pub kafka_port: Option<u16>,
    pub audit: bool,
    pub enforcement: Enforcement,
    pub node_labels: BTreeMap<String, String>,
    /// This node's name: its Node object's labels add to `node_labels`, and other Node
    /// objects' addresses are `remote-node`.
    pub node_name: Option<String>,
    /// The host endpoint is in audit mode.
    pub host_audit: bool,
    /// Ward's metrics port when it listens on a non-loopback address (a host policy must not
    /// cut it unless a rule says so).
    pub metrics_port: Option<u16>,
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            http_port: c.listeners.http,
            dns_port: c.listeners.dns,
            kafka_port: c.listeners.kafka,
            audit: c.audit,
            enforcement: c.enforcement,
            node_labels: c.node.labels.clone(),
            node_name: c.node.name.clone(),
            host_audit: c.node.audit,
            metrics_port: c
                .metrics
                .filter(|a| !a.ip().is_loopback())
                .map(|a| a.port()),
        }
    }

    pub fn apply_to(&self, engine: &mut Engine) {
        engine.mode = match self.enforcement {
            Enforcement::Default => l7_rules::engine::EnforcementMode::Default,
            Enforcement::Always => l7_rules::engine::EnforcementMode::Always,
            Enforcement::Never => l7_rules::engine::EnforcementMode::Never,
        };
        engine.node_labels = self.node_label_set(&engine.set.catalog);
    }

    /// The node's labels as a host policy's `nodeSelector` sees them: the node config's, and
    /// over them its Node object's (from the API, or a policy file).
    pub fn node_label_set(&self, catalog: &l7_rules::model::Catalog) -> l7_rules::labels::LabelSet {
        let mut labels = self.node_labels.clone();
        if let Some(own) = self.node_name.as_ref().and_then(|n| catalog.nodes.get(n)) {
            labels.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        l7_rules::labels::LabelSet::new(
            labels
                .iter()
                .map(|(k, v)| l7_rules::labels::Label::new("k8s", k, v))
                .collect(),
        )
    }

    /// Other nodes' addresses (their Node objects'): the `remote-node` entity.
    pub fn remote_node_addresses<'a>(
        &'a self,
        catalog: &'a l7_rules::model::Catalog,
    ) -> impl Iterator<Item = Ipv4Addr> + 'a {
        catalog
            .node_addresses
            .iter()
            .filter(move |(name, _)| self.node_name.as_ref() != Some(*name))
            .flat_map(|(_, ips)| ips.iter())
            .filter_map(|ip| match ip {
                std::net::IpAddr::V4(v4) => Some(*v4),
                std::net::IpAddr::V6(_) => None,
            })
    }

    pub(super) fn proxy_port(&self, parser: L7Parser) -> Option<u16> {
        match parser {
            L7Parser::Http => Some(self.http_port),
            L7Parser::Dns => self.dns_port,
            L7Parser::Kafka => self.kafka_port,
        }
    }
}

/// Learned addresses and the names each answered (a persistent map: snapshots share it, and a
/// change of one address costs that address, not a copy).
pub type Learned = imbl::OrdMap<Ipv4Addr, Arc<[String]>>;

/// The peer of each learned address some `toFQDNs` selector selects (persistent, as
/// [`Learned`]).
pub type FqdnPeers = imbl::OrdMap<Ipv4Addr, Arc<Peer>>;

/// An endpoint as the node knows it.
#[derive(Clone, Debug)]
pub struct EndpointInfo {
    pub id: u16,
    pub config: EndpointConfig,
    pub peer: Arc<Peer>,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
}

/// Who an address is, for the proxy and for flows.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub peer: Arc<Peer>,
    /// Endpoint name, `host`, `world`, or the address.
    pub name: String,
    pub namespace: Option<String>,
    /// Index into [`NodeState::endpoints`] when a local endpoint.
    pub endpoint: Option<usize>,
}

impl PeerInfo {
    pub fn labels(&self) -> Vec<String> {
        self.peer.labels.iter().map(|l| l.to_string()).collect()
    }
}

/// An immutable snapshot of everything the proxy and the admin API read.
pub struct NodeState {
    pub generation: u64,
    pub engine: Arc<Engine>,
    pub settings: Settings,
    pub endpoints: Vec<EndpointInfo>,
    by_ip: HashMap<Ipv4Addr, usize>,
    host_ips: HashSet<Ipv4Addr>,
    host: Arc<Peer>,
    world: Arc<Peer>,
    /// The policies' CIDRs, longest prefix first.
    cidrs: Vec<(IpNet, Arc<Peer>)>,
    /// Learned addresses as /32s with their `toFQDNs` identities.
    pub fqdn_peers: FqdnPeers,
    /// Other nodes' pods as /32s with their labels' identities.
    pub remote_peers: imbl::OrdMap<Ipv4Addr, Arc<Peer>>,
    pub identities: IdentityTable,
    /// The maps' contents, except the learned addresses' ipcache entries (see
    /// [`NodeState::kernel_state`]).
    pub desired: DesiredState,
    /// L7 parsers that had no listener and were enforced at L3/L4 only.
    pub unproxied: Vec<L7Parser>,
    /// The host endpoint (`reserved:host`): the node's own addresses under host policies.
    pub host_endpoint: HostEndpoint,
    /// The policies' `toFQDNs` selectors: an allowed DNS answer for a name one selects is
    /// learned before it is released.
    pub fqdn_selectors: Arc<l7_rules::l7::dns::FqdnSelectorSet>,
    /// The learned addresses, with the names they answered (those a selector selects are in
    /// the ipcache).
    pub learned: Learned,
}

/// The host endpoint's state, as `cilium endpoint list` shows `reserved:host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEndpoint {
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub audit: bool,
}

/// The host endpoint's id in the datapath maps.
pub const HOST_ENDPOINT_ID: u16 = bpf_redirect::common::HOST_ENDPOINT_ID;

/// Building a view failed (the caller keeps the previous one).
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("identity collision: {0}")]
    Identity(#[from] l7_rules::identity::IdentityCollision),
}

impl NodeState {
    /// A snapshot of everything built whole (tests; `ward run` keeps a [`Desired`]).
    #[cfg(test)]
    pub fn build(
        generation: u64,
        engine: Arc<Engine>,
        settings: Settings,
        endpoints: &[(u16, EndpointConfig)],
        host_ips: &[Ipv4Addr],
    ) -> Result<NodeState, ViewError> {
        let (desired, _) = Desired::new(engine, settings, endpoints, host_ips)?;
        Ok(NodeState::from_desired(generation, &desired))
    }

    /// The snapshot of `desired`: its computed entries assembled (nothing recomputed), the
    /// ipcache, and the address lookups the proxy and flows use.
    pub fn from_desired(generation: u64, desired: &Desired) -> NodeState {
        let settings = desired.settings.clone();
        let mut infos = Vec::new();
        let mut by_ip = HashMap::new();
        let mut eps = Vec::new();
        let mut policy = Vec::new();
        let mut unproxied = Vec::new();
        let mut ipcache = Vec::new();
        for (id, cfg) in &desired.configs {
            let Some(c) = desired.computed.get(id) else {
                continue;
            };
            for ip in &cfg.ips {
                by_ip.insert(*ip, infos.len());
            }
            for (e, parser) in c.entries.iter() {
                policy.push(e.clone());
                unproxied.extend(parser);
            }
            eps.push(Endpoint {
                endpoint_id: *id,
                interface: Interface::Name(cfg.interface.clone()),
                ips: cfg.ips.clone(),
                identity: c.peer.identity.0,
                ingress_enforced: c.ingress_enforced,
                egress_enforced: c.egress_enforced,
                audit: settings.audit || cfg.audit,
            });
            infos.push(EndpointInfo {
                id: *id,
                config: cfg.clone(),
                peer: c.peer.clone(),
                ingress_enforced: c.ingress_enforced,
                egress_enforced: c.egress_enforced,
            });
        }
        for (net, peer) in &desired.cidrs {
            let IpNet::V4(v4) = net else { continue };
            ipcache.push(IpcacheEntry {
                addr: v4.network(),
                prefix_len: v4.prefix_len(),
                identity: peer.identity.0,
                endpoint_id: 0,
            });
        }
        let host_ips: HashSet<Ipv4Addr> = desired
            .host_ips
            .iter()
            .copied()
            .filter(|ip| !by_ip.contains_key(ip))
            .collect();
        for ip in &host_ips {
            // A /32 host entry beats any policy CIDR that contains it, as in Cilium.
            ipcache.retain(|e: &IpcacheEntry| !(e.prefix_len == 32 && e.addr == *ip));
            ipcache.push(IpcacheEntry {
                addr: *ip,
                prefix_len: 32,
                identity: Reserved::Host.identity().0,
                endpoint_id: HOST_ENDPOINT_ID,
            });
        }
        // The host is an endpoint as in Cilium: host policies (CCNP `nodeSelector`, matched
        // against the node's labels) are resolved by the same engine into its own entries.
        let host = desired.host.as_ref();
        let host_endpoint = HostEndpoint {
            ingress_enforced: host.is_some_and(|h| h.ingress_enforced),
            egress_enforced: host.is_some_and(|h| h.egress_enforced),
            audit: settings.audit || settings.host_audit,
        };
        if let Some(h) = host {
            unproxied.extend(h.entries.iter().filter_map(|(_, p)| *p));
        }
        policy.extend(desired.host_entries());
        eps.push(Endpoint {
            endpoint_id: HOST_ENDPOINT_ID,
            // No veth: a packet with a host source on a pod's veth is spoofed.
            interface: Interface::Index(0),
            // Its addresses are the host ipcache entries above.
            ips: Vec::new(),
            identity: Reserved::Host.identity().0,
            ingress_enforced: host_endpoint.ingress_enforced,
            egress_enforced: host_endpoint.egress_enforced,
            audit: host_endpoint.audit,
        });
        unproxied.sort();
        unproxied.dedup();
        NodeState {
            generation,
            engine: desired.engine.clone(),
            settings,
            endpoints: infos,
            by_ip,
            host_ips,
            host: host
                .map(|h| h.peer.clone())
                .unwrap_or_else(|| Arc::new(Peer::reserved(Reserved::Host))),
            world: Arc::new(Peer::reserved(Reserved::World)),
            cidrs: desired.cidrs.clone(),
            fqdn_peers: desired.fqdn_peers.clone(),
            remote_peers: desired.remote.peers().clone(),
            identities: desired.identities.clone(),
            desired: DesiredState {
                endpoints: eps,
                ipcache,
                policy,
            },
            unproxied,
            host_endpoint,
            fqdn_selectors: desired.fqdn_selectors.clone(),
            learned: desired.fqdn.clone(),
        }
    }

    /// A learned address's ipcache entry.
    pub fn fqdn_entry(ip: Ipv4Addr, peer: &Peer) -> IpcacheEntry {
        IpcacheEntry {
            addr: ip,
            prefix_len: 32,
            identity: peer.identity.0,
            endpoint_id: 0,
        }
    }

    /// Everything the maps hold: [`NodeState::desired`], the learned addresses and other
    /// nodes' pods.
    pub fn kernel_state(&self) -> std::borrow::Cow<'_, DesiredState> {
        if self.fqdn_peers.is_empty() && self.remote_peers.is_empty() {
            return std::borrow::Cow::Borrowed(&self.desired);
        }
        let mut all = self.desired.clone();
        all.ipcache.extend(
            self.fqdn_peers
                .iter()
                .chain(self.remote_peers.iter())
                .map(|(ip, peer)| NodeState::fqdn_entry(*ip, peer)),
        );
        std::borrow::Cow::Owned(all)
    }

    /// Resolves an address as the ipcache does: endpoint, host, longest policy CIDR, world.
    pub fn resolve(&self, ip: IpAddr) -> PeerInfo {
        let IpAddr::V4(v4) = ip else {
            return self.world_info(ip);
        };
        if let Some(&i) = self.by_ip.get(&v4) {
            let e = &self.endpoints[i];
            return PeerInfo {
                peer: e.peer.clone(),
                name: e.config.name.clone(),
                namespace: Some(e.config.namespace.clone()),
                endpoint: Some(i),
            };
        }
        if self.host_ips.contains(&v4) || v4.is_loopback() {
            return PeerInfo {
                peer: self.host.clone(),
                name: "host".into(),
                namespace: None,
                endpoint: None,
            };
        }
        // Another node's pod.
        if let Some(p) = self.remote_peers.get(&v4) {
            return PeerInfo {
                peer: p.clone(),
                name: p.display.clone(),
                namespace: p.display.split_once('/').map(|(ns, _)| ns.to_string()),
                endpoint: None,
            };
        }
        // A policy's /32 first (a learned address never shadows it), then a learned address,
        // then the longest policy prefix.
        let cidr = self.cidrs.iter().find(|(n, _)| n.contains(&ip));
        let fqdn = match cidr {
            Some((n, _)) if n.prefix_len() == 32 => None,
            _ => self.fqdn_peers.get(&v4),
        };
        if let Some(p) = fqdn.or(cidr.map(|(_, p)| p)) {
            return PeerInfo {
                peer: p.clone(),
                name: ip.to_string(),
                namespace: None,
                endpoint: None,
            };
        }
        self.world_info(ip)
    }

    fn world_info(&self, _ip: IpAddr) -> PeerInfo {
        PeerInfo {
            peer: self.world.clone(),
            name: "world".into(),
            namespace: None,
            endpoint: None,
        }
    }

    /// The node's own addresses (the host endpoint's), sorted.
    pub fn host_ips(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self.host_ips.iter().copied().collect();
        ips.sort();
        ips
    }

    /// The endpoint `name` names (`namespace/name`, or a name alone: the first of that name).
    pub fn endpoint_by_name(&self, name: &str) -> Option<&EndpointInfo> {
        self.endpoints.iter().find(|e| e.config.is(name))
    }

    /// Number of policy documents loaded.
    pub fn policy_count(&self) -> usize {
        self.engine.set.policies.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bpf_redirect::PolicyEntry;
    use l7_rules::model::Direction;

    const L7: &str = r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
spec:
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing"
  - fromCIDR: [192.0.2.0/24]
"#;

    fn ep(name: &str, labels: &[(&str, &str)], ip: [u8; 4], iface: &str) -> EndpointConfig {
        EndpointConfig {
            name: name.into(),
            namespace: "default".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![Ipv4Addr::from(ip)],
            interface: iface.into(),
            named_ports: BTreeMap::new(),
            audit: false,
        }
    }

    fn settings() -> Settings {
        Settings {
            http_port: 15001,
            dns_port: None,
            kafka_port: None,
            audit: false,
            enforcement: Enforcement::Default,
            node_labels: BTreeMap::new(),
            node_name: None,
            host_audit: false,
            metrics_port: None,
        }
    }

    /// What the datapath's `policy_can_access` answers from the view's policy entries (the
    /// C program's lookup, replayed on the entries `ward run` writes).
    fn kernel_allows(
        view: &NodeState,
        endpoint_id: u16,
        egress: bool,
        identity: u32,
        proto: u8,
        port: u16,
    ) -> bool {
        let ep = view
            .desired
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == endpoint_id)
            .expect("endpoint in the desired state");
        let enforced = if egress {
            ep.egress_enforced
        } else {
            ep.ingress_enforced
        };
        if !enforced {
            return true;
        }
        let key_len = |p: &PolicyEntry| {
            if p.proto == 0 {
                0
            } else {
                8 + p.port_prefix_len
            }
        };
        let covers = |p: &PolicyEntry| {
            p.proto == 0
                || (p.proto == proto
                    && (p.port_prefix_len == 0
                        || (p.port ^ port) >> (16 - u32::from(p.port_prefix_len)) == 0))
        };
        let lookup = |id: u32| {
            view.desired
                .policy
                .iter()
                .filter(|p| p.endpoint_id == endpoint_id && p.egress == egress && p.identity == id)
                .filter(|p| covers(p))
                .max_by_key(|p| key_len(p))
        };
        let l3 = lookup(identity);
        if l3.is_some_and(|p| p.deny && p.precedence == u32::MAX) {
            return false;
        }
        let l4 = lookup(0);
        let chosen = match (l3, l4) {
            (Some(a), Some(b))
                if b.precedence > a.precedence
                    || (b.precedence == a.precedence && key_len(b) > key_len(a)) =>
            {
                Some(b)
            }
            (Some(a), _) => Some(a),
            (None, b) => b,
        };
        chosen.is_some_and(|p| !p.deny) || ep.audit
    }

    /// Every host-policy case of `config/cases/` gets the same verdict from `ward-check` and
    /// from the kernel entries `ward run` writes for the host endpoint.
    #[test]
    fn host_policy_cases_agree_between_ward_check_and_the_node() {
        use l7_rules::check::{answer, Case, PeerJson};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut compared = 0;
        for entry in std::fs::read_dir(root.join("config/cases")).unwrap() {
            let path = entry.unwrap().path();
            let scene = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let is_host = |p: &PeerJson| matches!(p, PeerJson::Entity(e) if e == "host");
            let host_lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .filter(|l| {
                    // Cases whose subject is the host: its ingress, or its egress.
                    let c: Case = serde_json::from_str(l).unwrap();
                    match c.direction.as_deref() {
                        Some("ingress") => is_host(&c.to),
                        Some("egress") => is_host(&c.from),
                        _ => false,
                    }
                })
                .collect();
            if host_lines.is_empty() {
                continue;
            }
            let set =
                l7_rules::source::load_paths(&[root.join("config/policies").join(&scene)]).unwrap();
            // The node: the scene's `v1 Node` (as ward-check reads it) gives the labels.
            let node_labels = set
                .catalog
                .nodes
                .values()
                .next()
                .cloned()
                .unwrap_or_default();
            let mut settings = settings();
            settings.node_labels = node_labels.clone();
            let mut engine = Engine::new(set);
            settings.apply_to(&mut engine);
            let engine = Arc::new(engine);
            // Every labelled peer of the cases becomes an endpoint of the node.
            let mut endpoints: Vec<(u16, EndpointConfig)> = Vec::new();
            let mut seen = Vec::new();
            for l in &host_lines {
                let c: Case = serde_json::from_str(l).unwrap();
                for peer in [c.from, c.to] {
                    let PeerJson::Object(spec) = peer else {
                        continue;
                    };
                    if spec.labels.is_empty() || seen.contains(&spec.labels) {
                        continue;
                    }
                    seen.push(spec.labels.clone());
                    let n = endpoints.len() as u8 + 1;
                    let mut cfg = ep("pod", &[], [10, 200, n, 2], &format!("veth{n}"));
                    cfg.name = format!("pod{n}");
                    cfg.labels = spec.labels.clone();
                    cfg.namespace = spec.namespace.clone().unwrap_or_else(|| "default".into());
                    endpoints.push((u16::from(n), cfg));
                }
            }
            let view = NodeState::build(
                1,
                engine.clone(),
                settings,
                &endpoints,
                &[Ipv4Addr::new(10, 200, 1, 1)],
            )
            .unwrap();
            for l in host_lines {
                let c: Case = serde_json::from_str(l).unwrap();
                let (name, q, _) = c.question().unwrap();
                let want = answer(&engine, &q).unwrap().allowed;
                let egress = q.direction == Some(Direction::Egress);
                let other = if egress { &q.to } else { &q.from };
                let identity = engine.peer(other).identity.0;
                let got = kernel_allows(
                    &view,
                    HOST_ENDPOINT_ID,
                    egress,
                    identity,
                    q.protocol.number(),
                    q.port,
                );
                assert_eq!(got, want, "{scene}: {name:?}");
                compared += 1;
            }
        }
        assert!(compared >= 10, "only {compared} host cases compared");
    }

    /// deathstar-1 (10.200.1.2), tiefighter (10.200.3.2), xwing (10.200.4.2); host 10.200.1.1.
    pub(crate) fn starwars_view() -> NodeState {
        let set = l7_rules::source::load_sources(&[("rule1.yaml".into(), L7.into())]).unwrap();
        let engine = Arc::new(Engine::new(set));
        let eps = vec![
            (
                1,
                ep(
                    "deathstar-1",
                    &[("org", "empire"), ("class", "deathstar")],
                    [10, 200, 1, 2],
                    "h1",
                ),
            ),
            (
                3,
                ep(
                    "tiefighter",
                    &[("org", "empire"), ("class", "tiefighter")],
                    [10, 200, 3, 2],
                    "h3",
                ),
            ),
            (
                4,
                ep(
                    "xwing",
                    &[("org", "alliance"), ("class", "xwing")],
                    [10, 200, 4, 2],
                    "h4",
                ),
            ),
        ];
        NodeState::build(7, engine, settings(), &eps, &[Ipv4Addr::new(10, 200, 1, 1)]).unwrap()
    }

    /// Other nodes' Node objects give their addresses the `remote-node` identity, before a pod
    /// at the same address; this node's own Node object does not (its addresses are `host`).
    #[test]
    fn other_nodes_addresses_are_remote_node() {
        let nodes = "apiVersion: v1\nkind: Node\nmetadata: {name: node-b, labels: {zone: b}}\n\
            status: {addresses: [{type: InternalIP, address: 10.250.9.2}, {type: Hostname, address: node-b}]}\n\
            ---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {zone: a}}\n\
            status: {addresses: [{type: InternalIP, address: 10.250.9.1}]}\n";
        let set = l7_rules::source::load_sources(&[
            ("rule1.yaml".into(), L7.into()),
            ("nodes.yaml".into(), nodes.into()),
        ])
        .unwrap();
        let mut settings = settings();
        settings.node_name = Some("node-a".into());
        let mut engine = Engine::new(set);
        settings.apply_to(&mut engine);
        assert!(
            engine.node_labels.to_string().contains("zone=a"),
            "{}",
            engine.node_labels
        );
        let remote_pod = RemotePod {
            namespace: "default".into(),
            name: "on-the-node".into(),
            labels: [("org".to_string(), "empire".to_string())].into(),
        };
        let (d, _) = Desired::new(Arc::new(engine), settings, &[], &[]).unwrap();
        let (d, _) = d
            .update(Update {
                remote: vec![(Ipv4Addr::new(10, 250, 9, 2), Some(remote_pod))],
                ..Update::default()
            })
            .unwrap();
        let v = NodeState::from_desired(1, &d);
        let r = |ip: &str| v.resolve(ip.parse().unwrap()).peer.identity;
        assert_eq!(r("10.250.9.2"), Reserved::RemoteNode.identity());
        assert_eq!(r("10.250.9.1"), Reserved::World.identity());
        assert!(v
            .kernel_state()
            .ipcache
            .iter()
            .any(|e| e.addr == Ipv4Addr::new(10, 250, 9, 2) && e.identity == 6));
    }

    #[test]
    fn resolve_follows_the_ipcache_order() {
        let v = starwars_view();
        let r = |ip: &str| v.resolve(ip.parse().unwrap());
        assert_eq!(r("10.200.4.2").name, "xwing");
        assert_eq!(r("10.200.4.2").namespace.as_deref(), Some("default"));
        assert_eq!(r("10.200.1.1").peer.identity, Reserved::Host.identity());
        assert_eq!(r("192.0.2.7").name, "192.0.2.7");
        assert!(r("192.0.2.7").peer.identity.0 & l7_rules::identity::LOCAL_SCOPE != 0);
        assert_eq!(r("8.8.8.8").peer.identity, Reserved::World.identity());
        assert_eq!(r("8.8.8.8").name, "world");
    }

    #[test]
    fn desired_state_redirects_http_to_the_listener() {
        let v = starwars_view();
        let ds = &v.desired;
        // Three pods and the host endpoint, which no host policy selects here.
        assert_eq!(ds.endpoints.len(), 4);
        let host = &ds.endpoints[3];
        assert_eq!((host.endpoint_id, host.identity), (HOST_ENDPOINT_ID, 1));
        assert!(!host.ingress_enforced && !host.egress_enforced);
        let deathstar = &ds.endpoints[0];
        assert!(deathstar.ingress_enforced && !deathstar.egress_enforced);
        let tie = v.endpoint_by_name("tiefighter").unwrap().peer.identity.0;
        let xwing = v.endpoint_by_name("xwing").unwrap().peer.identity.0;
        let redirect = ds
            .policy
            .iter()
            .find(|p| p.endpoint_id == 1 && p.identity == tie && !p.egress)
            .expect("entry for tiefighter");
        assert_eq!(
            (redirect.proto, redirect.port, redirect.port_prefix_len),
            (6, 80, 16)
        );
        assert_eq!(redirect.proxy_port, 15001);
        assert!(!ds
            .policy
            .iter()
            .any(|p| p.endpoint_id == 1 && p.identity == xwing && !p.egress));
        // The CIDR identity is in the ipcache, the host too.
        assert!(ds
            .ipcache
            .iter()
            .any(|e| e.prefix_len == 24 && e.addr == Ipv4Addr::new(192, 0, 2, 0)));
        assert!(ds
            .ipcache
            .iter()
            .any(|e| e.identity == 1 && e.addr == Ipv4Addr::new(10, 200, 1, 1)));
        assert!(v.unproxied.is_empty());
    }
}
