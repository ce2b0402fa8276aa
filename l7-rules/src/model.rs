//! The compiled policy model: what a policy *means* once validated. Illegal states are
//! unrepresentable here: a filter has exactly one kind of L4 match and at most one L7 protocol,
//! Kafka roles are already API-key sets, and every pattern is compiled.

use crate::identity::{Entity, Peer, PeerKind, Reserved};
use crate::l7::dns::NamePattern;
use crate::l7::http::HttpRule;
use crate::l7::kafka::KafkaRule;
use crate::labels::{LabelSet, SOURCE_K8S};
use crate::selector::LabelSelector;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// Where a policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMeta {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
    /// The file the policy came from; empty for a cluster object (see [`PolicyMeta::origin`]).
    pub file: String,
    /// 0-based index of the YAML document in the file (0 for a cluster object).
    pub document: usize,
}

impl PolicyMeta {
    /// `namespace/name` for namespaced policies, `name` for clusterwide ones.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Where the policy came from, for diagnostics about it as a whole (no line).
    pub fn origin(&self) -> crate::diag::Origin {
        if self.file.is_empty() {
            return crate::diag::Origin::Object {
                kind: self.kind.as_str().to_string(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            };
        }
        crate::diag::Origin::File {
            path: self.file.clone(),
            line: None,
            document: self.document,
        }
    }
}

/// A pointer to the rule (or the part of one) responsible for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: Arc<PolicyMeta>,
    /// Field path inside the spec: `ingress[0].toPorts[0]`, `egressDeny[1]`.
    pub path: String,
}

impl RuleRef {
    /// A reference for unit tests.
    pub fn test(path: &str) -> RuleRef {
        RuleRef {
            policy: Arc::new(PolicyMeta {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: Some("default".into()),
                name: "test".into(),
                file: "test.yaml".into(),
                document: 0,
            }),
            path: path.to_string(),
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.policy.id(), self.path)
    }
}

/// Which endpoints a policy applies to.
#[derive(Clone, Debug)]
pub enum Subject {
    /// Pods whose labels match (namespace already injected for namespaced kinds).
    Endpoints(LabelSelector),
    /// The node itself (host policies, CCNP `nodeSelector`), matched against node labels.
    Nodes(LabelSelector),
}

/// One term of a peer selector; a peer is selected when any term selects it.
#[derive(Clone, Debug)]
pub enum PeerTerm {
    Endpoints(LabelSelector),
    Entity(Entity),
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
    Fqdn(NamePattern),
    /// `toServices.k8sService`: the pods behind the named Service.
    Service {
        namespace: String,
        name: String,
    },
    /// `toServices.k8sServiceSelector`: the pods behind Services whose labels match.
    ServiceSelector {
        namespace: Option<String>,
        selector: LabelSelector,
    },
}

/// The peers a rule applies to.
#[derive(Clone, Debug)]
pub enum PeerSelector {
    /// No L3 field: every peer (L4-only rule). Uses the wildcard identity in the kernel map.
    All,
    /// Union of terms; an empty list selects nothing (`fromEndpoints: []`).
    Any(Vec<PeerTerm>),
}

impl PeerSelector {
    pub fn is_wildcard(&self) -> bool {
        match self {
            PeerSelector::All => true,
            PeerSelector::Any(terms) => terms
                .iter()
                .any(|t| matches!(t, PeerTerm::Entity(Entity::All))),
        }
    }

    pub fn selects(&self, peer: &Peer, catalog: &Catalog) -> bool {
        match self {
            PeerSelector::All => true,
            PeerSelector::Any(terms) => terms.iter().any(|t| t.selects(peer, catalog)),
        }
    }
}

impl PeerTerm {
    pub fn selects(&self, peer: &Peer, catalog: &Catalog) -> bool {
        match self {
            PeerTerm::Endpoints(sel) => sel.matches(&peer.labels),
            PeerTerm::Entity(e) => e.selects(peer),
            PeerTerm::Cidr { net, except } => {
                let prefix = match &peer.kind {
                    PeerKind::Cidr(p) => *p,
                    PeerKind::Fqdn { ip, .. } => IpNet::from(*ip),
                    // A zero-length prefix is the world label of its family (Cilium's
                    // IPStringToLabel), so 0.0.0.0/0 selects the world identities too.
                    PeerKind::Reserved(
                        r @ (Reserved::World | Reserved::WorldIpv4 | Reserved::WorldIpv6),
                    ) => {
                        return net.prefix_len() == 0
                            && except.is_empty()
                            && !matches!(
                                (net, r),
                                (IpNet::V4(_), Reserved::WorldIpv6)
                                    | (IpNet::V6(_), Reserved::WorldIpv4)
                            );
                    }
                    _ => return false,
                };
                net.contains(&prefix) && !except.iter().any(|e| e.contains(&prefix))
            }
            PeerTerm::Fqdn(pattern) => match &peer.kind {
                PeerKind::Fqdn { names, .. } => names
                    .iter()
                    .any(|n| crate::l7::dns::pattern_matches(pattern, n)),
                _ => false,
            },
            PeerTerm::Service { .. } | PeerTerm::ServiceSelector { .. } => catalog
                .services
                .iter()
                .filter(|s| self.names_service(s))
                .any(|s| s.selects(peer, catalog)),
        }
    }

    /// Whether this `toServices` term names `svc` (by name, or by a selector of its labels).
    pub fn names_service(&self, svc: &ServiceDef) -> bool {
        match self {
            PeerTerm::Service { namespace, name } => {
                svc.namespace == *namespace && svc.name == *name
            }
            PeerTerm::ServiceSelector {
                namespace,
                selector,
            } => {
                namespace.as_ref().is_none_or(|ns| *ns == svc.namespace)
                    && selector.matches(&svc.labels)
            }
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        }
    }

    pub fn parse(text: &str) -> Option<Protocol> {
        Some(match text.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            "ICMP" => Protocol::Icmp,
            "ICMPV6" => Protocol::Icmpv6,
            _ => return None,
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A destination port: a range (a single port is `lo == hi`; all ports is `0..=65535`) or a
/// named container port resolved against the destination endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    Range(u16, u16),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortMatch {
    pub protocol: Protocol,
    pub port: Port,
}

/// The L4 part of a filter.
#[derive(Clone, Debug)]
pub enum L4 {
    /// No `toPorts`/`icmps`: every protocol and port (L3-only rule).
    Any,
    Ports(Vec<PortMatch>),
    /// ICMP types (protocol ICMP or ICMPv6, type as "port").
    Icmp(Vec<(Protocol, u8)>),
}

/// The L7 rules of a filter: exactly one protocol.
#[derive(Clone, Debug)]
pub enum L7 {
    Http(Vec<Arc<HttpRule>>),
    Kafka(Vec<Arc<KafkaRule>>),
    Dns(Vec<(NamePattern, RuleRef)>),
}

impl L7 {
    pub fn parser(&self) -> L7Parser {
        match self {
            L7::Http(_) => L7Parser::Http,
            L7::Kafka(_) => L7Parser::Kafka,
            L7::Dns(_) => L7Parser::Dns,
        }
    }
}

/// Which proxy listener a redirect goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L7Parser {
    Http,
    Kafka,
    Dns,
}

impl L7Parser {
    pub fn as_str(self) -> &'static str {
        match self {
            L7Parser::Http => "http",
            L7Parser::Kafka => "kafka",
            L7Parser::Dns => "dns",
        }
    }

    /// The low byte of a redirect's precedence (§6.2: 255 − listener priority).
    pub fn precedence_byte(self) -> u8 {
        match self {
            L7Parser::Http => 154,
            L7Parser::Dns => 134,
            // Kafka went through proxylib, which had no listener priority.
            L7Parser::Kafka => 2,
        }
    }
}

/// One enforceable unit: a rule (or one `toPorts`/`icmps` element of it) for one direction.
#[derive(Clone, Debug)]
pub struct Filter {
    pub origin: RuleRef,
    pub direction: Direction,
    pub deny: bool,
    pub peers: Arc<PeerSelector>,
    pub l4: L4,
    pub l7: Option<L7>,
    /// Cilium priority (0 = highest). Plain policies use 0; synthesised default-allow rules
    /// use the lowest.
    pub priority: u32,
}

/// Per-direction part of a policy.
#[derive(Clone, Debug, Default)]
pub struct DirectionRules {
    /// The policy has a non-empty section for this direction (allow or deny).
    pub present: bool,
    /// When present: whether it switches the endpoint into default deny (`enableDefaultDeny`).
    pub default_deny: bool,
    pub filters: Vec<Filter>,
}

/// One compiled policy (one `spec` or one element of `specs`).
#[derive(Clone, Debug)]
pub struct Policy {
    pub meta: Arc<PolicyMeta>,
    /// `spec` or `specs[N]`.
    pub spec_path: String,
    pub subject: Subject,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
    pub description: Option<String>,
}

impl Policy {
    pub fn direction(&self, d: Direction) -> &DirectionRules {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A Kubernetes Service known to the policy set (for `toServices`).
#[derive(Clone, Debug)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    pub labels: LabelSet,
    /// The pod selector; `None` = a service without selector (selects no pod).
    pub selector: Option<BTreeMap<String, String>>,
}

/// An EndpointSlice: addresses behind a Service.
#[derive(Clone, Debug)]
pub struct EndpointSliceDef {
    pub namespace: String,
    pub name: String,
    /// Its Service's name (in the same namespace).
    pub service: String,
    /// Its ready endpoints' addresses.
    pub addresses: Vec<std::net::IpAddr>,
}

impl ServiceDef {
    /// Whether `peer` is behind this Service: a pod its selector selects, or, for a Service
    /// without selector (Cilium's only kind for `toServices`), an address of its
    /// EndpointSlices, as the /32 (/128) CIDR identity it has.
    fn selects(&self, peer: &Peer, catalog: &Catalog) -> bool {
        let Some(sel) = &self.selector else {
            let ip = match &peer.kind {
                PeerKind::Cidr(net) if net.prefix_len() == net.max_prefix_len() => net.addr(),
                PeerKind::Fqdn { ip, .. } => *ip,
                _ => return false,
            };
            return self.addresses(catalog).any(|a| a == ip);
        };
        peer.kind == PeerKind::Endpoint
            && peer.labels.namespace() == Some(self.namespace.as_str())
            && sel
                .iter()
                .all(|(k, v)| peer.labels.values(Some(SOURCE_K8S), k).any(|x| x == v))
    }
}

impl ServiceDef {
    /// The addresses of this Service's EndpointSlices.
    pub fn addresses<'a>(
        &'a self,
        catalog: &'a Catalog,
    ) -> impl Iterator<Item = std::net::IpAddr> + 'a {
        catalog
            .endpoint_slices
            .iter()
            .filter(|s| s.namespace == self.namespace && s.service == self.name)
            .flat_map(|s| s.addresses.iter().copied())
    }
}

/// Objects that give policies context: namespaces (their labels), services, and nodes (their
/// labels, which host policies' `nodeSelector` selects).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub services: Vec<ServiceDef>,
    pub nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// Nodes' `InternalIP`/`ExternalIP` addresses, by node name: on every other node, traffic
    /// from them is the `remote-node` entity's.
    pub node_addresses: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// EndpointSlices (what a Service without selector stands for).
    pub endpoint_slices: Vec<EndpointSliceDef>,
}
