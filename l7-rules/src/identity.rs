//! Numeric security identities and the peers they stand for.
//!
//! Reserved identities keep Cilium's numbers (docs/policy-semantics.md §6.4). Pod identities are
//! derived from their security labels: the same labels give the same number (≥ 256), on every run.
//! CIDR and FQDN identities are node-local and carry the local-scope bit (1 << 24).

use crate::labels::{Label, LabelSet, SOURCE_CIDR, SOURCE_FQDN, SOURCE_RESERVED};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A numeric security identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(pub u32);

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The wildcard identity used for L4-only map entries.
pub const WILDCARD: Identity = Identity(0);
/// First identity number for label-derived (cluster-scoped) identities.
pub const MIN_CLUSTER_IDENTITY: u32 = 256;
/// Last identity number for label-derived identities (Cilium's default cluster range).
pub const MAX_CLUSTER_IDENTITY: u32 = 65535;
/// Node-local identities (CIDR, FQDN) have this bit set.
pub const LOCAL_SCOPE: u32 = 1 << 24;

/// Reserved identities with Cilium's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reserved {
    Host = 1,
    World = 2,
    Unmanaged = 3,
    Health = 4,
    Init = 5,
    RemoteNode = 6,
    KubeApiserver = 7,
    Ingress = 8,
    WorldIpv4 = 9,
    WorldIpv6 = 10,
}

impl Reserved {
    pub const ALL: [Reserved; 10] = [
        Reserved::Host,
        Reserved::World,
        Reserved::Unmanaged,
        Reserved::Health,
        Reserved::Init,
        Reserved::RemoteNode,
        Reserved::KubeApiserver,
        Reserved::Ingress,
        Reserved::WorldIpv4,
        Reserved::WorldIpv6,
    ];

    pub fn identity(self) -> Identity {
        Identity(self as u32)
    }

    pub fn name(self) -> &'static str {
        match self {
            Reserved::Host => "host",
            Reserved::World => "world",
            Reserved::Unmanaged => "unmanaged",
            Reserved::Health => "health",
            Reserved::Init => "init",
            Reserved::RemoteNode => "remote-node",
            Reserved::KubeApiserver => "kube-apiserver",
            Reserved::Ingress => "ingress",
            Reserved::WorldIpv4 => "world-ipv4",
            Reserved::WorldIpv6 => "world-ipv6",
        }
    }

    pub fn from_name(name: &str) -> Option<Reserved> {
        Reserved::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The labels the reserved identity carries (kube-apiserver also carries remote-node).
    pub fn labels(self) -> LabelSet {
        let mut labels = vec![Label::new(SOURCE_RESERVED, self.name(), "")];
        if self == Reserved::KubeApiserver {
            labels.push(Label::new(SOURCE_RESERVED, "remote-node", ""));
        }
        LabelSet::new(labels)
    }
}

/// Policy entities (`fromEntities` / `toEntities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    All,
    World,
    WorldIpv4,
    WorldIpv6,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Ingress,
    Unmanaged,
    None,
}

impl Entity {
    pub const NAMES: [&'static str; 13] = [
        "all",
        "world",
        "world-ipv4",
        "world-ipv6",
        "cluster",
        "host",
        "remote-node",
        "kube-apiserver",
        "health",
        "init",
        "ingress",
        "unmanaged",
        "none",
    ];

    pub fn parse(name: &str) -> Option<Entity> {
        Some(match name {
            "all" => Entity::All,
            "world" => Entity::World,
            "world-ipv4" => Entity::WorldIpv4,
            "world-ipv6" => Entity::WorldIpv6,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "ingress" => Entity::Ingress,
            "unmanaged" => Entity::Unmanaged,
            "none" => Entity::None,
            _ => return Option::None,
        })
    }

    /// Whether the entity selects the peer (docs/policy-semantics.md §6.4).
    pub fn selects(self, peer: &Peer) -> bool {
        match self {
            Entity::All => true,
            Entity::None => false,
            Entity::World => peer.is_world(),
            Entity::WorldIpv4 => peer.is_world() && peer.family_v4() != Some(false),
            Entity::WorldIpv6 => peer.is_world() && peer.family_v4() != Some(true),
            Entity::Cluster => match &peer.kind {
                PeerKind::Endpoint => true,
                PeerKind::Reserved(r) => !matches!(
                    r,
                    Reserved::World | Reserved::WorldIpv4 | Reserved::WorldIpv6
                ),
                PeerKind::Cidr(_) | PeerKind::Fqdn { .. } => false,
            },
            Entity::Host => peer.kind == PeerKind::Reserved(Reserved::Host),
            Entity::RemoteNode => matches!(
                peer.kind,
                PeerKind::Reserved(Reserved::RemoteNode | Reserved::KubeApiserver)
            ),
            Entity::KubeApiserver => peer.kind == PeerKind::Reserved(Reserved::KubeApiserver),
            Entity::Health => peer.kind == PeerKind::Reserved(Reserved::Health),
            Entity::Init => peer.kind == PeerKind::Reserved(Reserved::Init),
            Entity::Ingress => peer.kind == PeerKind::Reserved(Reserved::Ingress),
            Entity::Unmanaged => peer.kind == PeerKind::Reserved(Reserved::Unmanaged),
        }
    }
}

/// What kind of thing a peer is; decides which selectors can select it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// A pod (local or elsewhere in the cluster), known by its labels.
    Endpoint,
    Reserved(Reserved),
    /// An address outside the cluster. The prefix is the longest CIDR the policies mention
    /// that contains the address (its CIDR identity), or the address itself.
    Cidr(IpNet),
    /// An address learned from a DNS answer for `names` (lower-case, trailing dot).
    Fqdn {
        ip: IpAddr,
        names: Vec<String>,
    },
}

/// The other side of a flow, as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub identity: Identity,
    pub labels: LabelSet,
    pub kind: PeerKind,
    /// The address of the peer, when known (used for CIDR selection and reporting).
    pub ip: Option<IpAddr>,
    /// Named container ports of the peer (for egress rules with named ports).
    pub named_ports: BTreeMap<String, u16>,
    /// A display name (`default/xwing`, `world`, `10.0.0.1`).
    pub display: String,
}

impl Peer {
    pub fn is_world(&self) -> bool {
        matches!(
            self.kind,
            PeerKind::Cidr(_)
                | PeerKind::Fqdn { .. }
                | PeerKind::Reserved(Reserved::World | Reserved::WorldIpv4 | Reserved::WorldIpv6)
        )
    }

    /// Some(true) for IPv4, Some(false) for IPv6, None when unknown.
    pub fn family_v4(&self) -> Option<bool> {
        match (&self.kind, self.ip) {
            (_, Some(ip)) => Some(ip.is_ipv4()),
            (PeerKind::Reserved(Reserved::WorldIpv4), _) => Some(true),
            (PeerKind::Reserved(Reserved::WorldIpv6), _) => Some(false),
            _ => None,
        }
    }

    pub fn reserved(r: Reserved) -> Peer {
        Peer {
            identity: r.identity(),
            labels: r.labels(),
            kind: PeerKind::Reserved(r),
            ip: None,
            named_ports: BTreeMap::new(),
            display: r.name().to_string(),
        }
    }

    pub fn endpoint(labels: LabelSet, display: String) -> Peer {
        Peer {
            identity: endpoint_identity(&labels),
            labels,
            kind: PeerKind::Endpoint,
            ip: None,
            named_ports: BTreeMap::new(),
            display,
        }
    }

    /// An outside address: its identity is the CIDR identity of `prefix` (the longest policy
    /// CIDR containing it), or world when no policy CIDR contains it.
    pub fn cidr(ip: IpAddr, prefix: Option<IpNet>) -> Peer {
        let (identity, labels, kind) = match prefix {
            Some(net) => (cidr_identity(&net), cidr_labels(&net), PeerKind::Cidr(net)),
            None => {
                let host = IpNet::from(ip);
                (
                    Reserved::World.identity(),
                    Reserved::World.labels(),
                    PeerKind::Cidr(host),
                )
            }
        };
        Peer {
            identity,
            labels,
            kind,
            ip: Some(ip),
            named_ports: BTreeMap::new(),
            display: ip.to_string(),
        }
    }

    /// An address learned from DNS answers for `names`; `selectors` are the toFQDNs selectors
    /// (as written) whose pattern matches one of the names: they become `fqdn:` labels.
    pub fn fqdn(ip: IpAddr, names: Vec<String>, selectors: &[String]) -> Peer {
        let mut labels: Vec<Label> = selectors
            .iter()
            .map(|s| Label::new(SOURCE_FQDN, s, ""))
            .collect();
        labels.push(Label::new(SOURCE_RESERVED, "world", ""));
        let labels = LabelSet::new(labels);
        let identity = Identity(LOCAL_SCOPE | (stable_hash(&labels.to_string()) & 0x00ff_ffff));
        let display = format!("{ip} ({})", names.join(","));
        Peer {
            identity,
            labels,
            kind: PeerKind::Fqdn { ip, names },
            ip: Some(ip),
            named_ports: BTreeMap::new(),
            display,
        }
    }
}

/// Labels of a CIDR identity: its prefix and every enclosing prefix, plus world.
pub fn cidr_labels(net: &IpNet) -> LabelSet {
    let mut labels = vec![Label::new(SOURCE_RESERVED, "world", "")];
    let max = net.max_prefix_len();
    for len in 0..=net.prefix_len() {
        if let Ok(sup) = IpNet::new(net.addr(), len) {
            let sup = sup.trunc();
            let _ = max;
            labels.push(Label::new(SOURCE_CIDR, &sup.to_string(), ""));
        }
    }
    LabelSet::new(labels)
}

/// The node-local identity of a CIDR: local scope bit + a stable hash of the prefix.
pub fn cidr_identity(net: &IpNet) -> Identity {
    Identity(LOCAL_SCOPE | (stable_hash(&net.trunc().to_string()) & 0x00ff_ffff))
}

/// The identity of a pod's label set: stable across runs and machines (a hash of the sorted
/// labels into Cilium's cluster range, 65,280 values). Collisions are not rare: with n label
/// sets the chance of one is about n²/131,000 (1 % at ~36, 50 % at ~300). They are detected by
/// [`IdentityTable`] and never judged with the wrong labels (see the node's Kubernetes mode).
pub fn endpoint_identity(labels: &LabelSet) -> Identity {
    let span = MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1;
    Identity(MIN_CLUSTER_IDENTITY + stable_hash(&labels.to_string()) % span)
}

/// FNV-1a: tiny, deterministic, good enough to spread label sets.
fn stable_hash(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Identities known on a node, with their labels: reserved ones, pods, CIDR and FQDN identities.
/// Resolution enumerates it to produce kernel map entries.
#[derive(Clone, Debug, Default)]
pub struct IdentityTable {
    peers: BTreeMap<Identity, Peer>,
}

/// Two different label sets hashed to the same identity number.
#[derive(Debug, thiserror::Error)]
#[error("identity {identity} collides: {existing} vs {new}")]
pub struct IdentityCollision {
    pub identity: Identity,
    pub existing: String,
    pub new: String,
}

impl IdentityTable {
    pub fn with_reserved() -> IdentityTable {
        let mut t = IdentityTable::default();
        for r in Reserved::ALL {
            t.peers.insert(r.identity(), Peer::reserved(r));
        }
        t
    }

    pub fn insert(&mut self, peer: Peer) -> Result<Identity, IdentityCollision> {
        let id = peer.identity;
        if let Some(existing) = self.peers.get(&id) {
            if existing.labels != peer.labels {
                return Err(IdentityCollision {
                    identity: id,
                    existing: existing.labels.to_string(),
                    new: peer.labels.to_string(),
                });
            }
            return Ok(id);
        }
        self.peers.insert(id, peer);
        Ok(id)
    }

    pub fn get(&self, id: Identity) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::pod_labels;

    #[test]
    fn reserved_numbers_match_cilium() {
        let want = [
            ("host", 1),
            ("world", 2),
            ("unmanaged", 3),
            ("health", 4),
            ("init", 5),
            ("remote-node", 6),
            ("kube-apiserver", 7),
            ("ingress", 8),
            ("world-ipv4", 9),
            ("world-ipv6", 10),
        ];
        for (name, id) in want {
            assert_eq!(Reserved::from_name(name).unwrap().identity(), Identity(id));
        }
    }

    #[test]
    fn same_labels_same_identity_in_cluster_range() {
        let mut l = BTreeMap::new();
        l.insert("org".to_string(), "empire".to_string());
        let a = endpoint_identity(&pod_labels(&l, "default", &BTreeMap::new(), None));
        let b = endpoint_identity(&pod_labels(&l, "default", &BTreeMap::new(), None));
        let c = endpoint_identity(&pod_labels(&l, "other", &BTreeMap::new(), None));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!((MIN_CLUSTER_IDENTITY..=MAX_CLUSTER_IDENTITY).contains(&a.0));
    }

    #[test]
    fn cidr_identities_are_local_scope_and_carry_enclosing_prefixes() {
        let net: IpNet = "10.96.0.0/12".parse().unwrap();
        assert_ne!(cidr_identity(&net).0 & LOCAL_SCOPE, 0);
        let labels = cidr_labels(&net);
        assert!(labels.values(Some("cidr"), "10.0.0.0/8").next().is_some());
        assert!(labels.values(Some("cidr"), "0.0.0.0/0").next().is_some());
        assert!(labels.values(Some("reserved"), "world").next().is_some());
    }

    #[test]
    fn entity_table() {
        let pod = Peer::endpoint(LabelSet::default(), "pod".into());
        let host = Peer::reserved(Reserved::Host);
        let apiserver = Peer::reserved(Reserved::KubeApiserver);
        let world = Peer::cidr("8.8.8.8".parse().unwrap(), None);
        let cases = [
            (Entity::All, &world, true),
            (Entity::World, &world, true),
            (Entity::World, &pod, false),
            (Entity::Cluster, &pod, true),
            (Entity::Cluster, &host, true),
            (Entity::Cluster, &world, false),
            (Entity::Host, &host, true),
            (Entity::Host, &pod, false),
            (Entity::RemoteNode, &apiserver, true),
            (Entity::KubeApiserver, &apiserver, true),
            (Entity::WorldIpv6, &world, false),
            (Entity::WorldIpv4, &world, true),
            (Entity::None, &world, false),
        ];
        for (e, p, want) in cases {
            assert_eq!(e.selects(p), want, "{e:?} {}", p.display);
        }
    }
}
