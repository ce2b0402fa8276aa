//! Resolution and decision. One function, [`ConnectionPolicy::decide`] (in [`decide`]), gives the
//! verdict for a connection and (when redirected) for each of its L7 requests; the kernel map entries come from the same code path
//! ([`Engine::map_entries`]), so `ward-check` says exactly what the datapath will do.
//!
//! Decision order (docs/policy-semantics.md §2, §6.2), written once here:
//! 1. enforcement: an endpoint is unrestricted in a direction until a selecting policy has a
//!    non-empty section for it (`default` mode);
//! 2. L3/L4: per peer identity, the map entries of every filter that selects the peer (identity
//!    entries) or every peer (wildcard entries); each lookup takes the highest precedence among
//!    the entries matching the packet — deny (255) > proxy redirect (129–254) > allow (1) — and
//!    the identity and wildcard results are combined as `__policy_can_access` does;
//! 3. L7 (redirected flows): the OR of the L7 rules of every allow filter that selects the peer
//!    on that port; one such filter without L7 rules lets every request through;
//! 4. audit mode turns a deny into an audited allow that still reports the would-be deny.

use crate::identity::{Identity, IdentityTable, Peer, PeerKind, Reserved, WILDCARD};
use crate::l7::dns::DnsMatcher;
use crate::l7::http::{HttpRequest, HttpRule, HttpRuleSet};
use crate::l7::kafka::{KafkaRequest, KafkaRule};
use crate::model::*;
use crate::source::PolicySet;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

pub mod decide;
pub use decide::{ConnectionPolicy, Decision, Reason, Verdict};

/// Agent-wide enforcement mode (`--enable-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    #[default]
    Default,
    Always,
    Never,
}

/// Low byte of an entry's precedence (§6.2).
pub const PRECEDENCE_DENY: u8 = 255;
pub const PRECEDENCE_ALLOW: u8 = 1;
/// Priority of the synthesised default-allow rule: the lowest there is.
pub const LOWEST_PRIORITY: u32 = 0x00ff_ffff;

/// Key of one kernel policy-map entry, as Cilium lays it out (§6.1): identity and direction are
/// exact, protocol + port form a 24-bit LPM suffix of `prefix_len` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapKey {
    pub identity: Identity,
    pub direction: Direction,
    /// IP protocol number; 0 when `prefix_len` is 0.
    pub protocol: u8,
    /// Destination port (ICMP type for ICMP); only the top `prefix_len - 8` bits count.
    pub port: u16,
    /// 0 = any protocol/port, 8 = protocol with any port, 24 = exact port.
    pub prefix_len: u8,
}

impl MapKey {
    /// Whether this key covers `other` (is equal or broader and contains it).
    pub fn covers(&self, other: &MapKey) -> bool {
        if self.prefix_len > other.prefix_len {
            return false;
        }
        if self.prefix_len == 0 {
            return true;
        }
        if self.protocol != other.protocol {
            return false;
        }
        let bits = u32::from(self.prefix_len - 8);
        if bits == 0 {
            return true;
        }
        let mask: u16 = (!0u16) << (16 - bits);
        self.port & mask == other.port & mask
    }

    fn packet(identity: Identity, direction: Direction, protocol: u8, port: u16) -> MapKey {
        MapKey {
            identity,
            direction,
            protocol,
            port,
            prefix_len: 24,
        }
    }
}

/// Value of one kernel policy-map entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapValue {
    pub deny: bool,
    /// Redirect to the proxy listener of this parser.
    pub redirect: Option<L7Parser>,
    pub precedence: u32,
    /// The rule that produced it (or `None` for the synthesised default-allow).
    pub origin: Option<RuleRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub key: MapKey,
    pub value: MapValue,
}

/// Splits `lo..=hi` into aligned power-of-two blocks: `(start, port_prefix_bits)`.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

fn precedence(priority: u32, byte: u8) -> u32 {
    ((LOWEST_PRIORITY - priority.min(LOWEST_PRIORITY)) << 8) | u32::from(byte)
}

/// The endpoint whose policy is checked, and the flow.
#[derive(Clone, Debug)]
pub struct Flow<'a> {
    pub direction: Direction,
    /// The endpoint the policy belongs to: destination for ingress, source for egress.
    pub subject: &'a Peer,
    /// The other side.
    pub peer: &'a Peer,
    pub protocol: Protocol,
    /// Destination port, or ICMP type for ICMP.
    pub port: u16,
}

/// An L7 request to check on a redirected flow.
#[derive(Clone, Copy, Debug)]
pub enum L7Request<'a> {
    Http(HttpRequest<'a>),
    Kafka(KafkaRequest<'a>),
    Dns { name: &'a str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    L3L4,
    L7,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3L4Verdict {
    Allow,
    Deny,
    Redirect(L7Parser),
}

/// The L7 policy for one (subject, direction, peer, port): what the proxy enforces.
#[derive(Clone)]
pub enum L7Policy {
    /// Some selecting rule has no L7 rules for this port: every request passes.
    AllowAll(Option<RuleRef>),
    Http(Arc<HttpRuleSet>),
    Kafka(Arc<Vec<Arc<KafkaRule>>>),
    Dns(Arc<DnsMatcher>),
    /// Rules of different L7 protocols on the same port and peer: Cilium refuses to resolve
    /// such a policy; Ward denies every request and says why.
    Conflict(Vec<L7Parser>),
}

impl fmt::Debug for L7Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L7Policy::AllowAll(o) => write!(f, "AllowAll({o:?})"),
            L7Policy::Http(s) => write!(f, "Http({} rules)", s.len()),
            L7Policy::Kafka(r) => write!(f, "Kafka({} rules)", r.len()),
            L7Policy::Dns(_) => write!(f, "Dns"),
            L7Policy::Conflict(p) => write!(f, "Conflict({p:?})"),
        }
    }
}

/// (subject, direction, peer, protocol, port, named ports of the destination).
type L7CacheKey = (Identity, Direction, Identity, u8, u16, u64);

fn named_ports_key(p: &Peer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.named_ports.hash(&mut h);
    h.finish()
}

/// Policies plus the settings that change their effect.
pub struct Engine {
    pub set: PolicySet,
    pub mode: EnforcementMode,
    /// Node labels, for host policies (`nodeSelector`).
    pub node_labels: crate::labels::LabelSet,
    /// Ingress from the local host is always allowed to pods (`--allow-localhost=always`, what
    /// Cilium does in Kubernetes mode, §2.1).
    pub allow_localhost: bool,
    l7_cache: RwLock<HashMap<L7CacheKey, L7Policy>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.set.policies.len())
            .field("mode", &self.mode)
            .finish()
    }
}

/// Whether the subject's direction is enforced, and whether it is default-deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// No selecting policy has a section for this direction.
    Unrestricted,
    /// Enforced; `default_deny` false means only default-allow rules select it.
    Enforced { default_deny: bool },
}

impl Engine {
    pub fn new(set: PolicySet) -> Engine {
        Engine {
            set,
            mode: EnforcementMode::Default,
            node_labels: crate::labels::LabelSet::default(),
            allow_localhost: true,
            l7_cache: RwLock::new(HashMap::new()),
        }
    }

    /// Policies whose subject selects this endpoint.
    pub fn selecting<'a>(&'a self, subject: &'a Peer) -> impl Iterator<Item = &'a Policy> + 'a {
        self.set.policies.iter().filter(move |p| match &p.subject {
            Subject::Endpoints(sel) => {
                subject.kind == PeerKind::Endpoint && sel.matches(&subject.labels)
            }
            Subject::Nodes(sel) => {
                subject.kind == PeerKind::Reserved(Reserved::Host) && sel.matches(&self.node_labels)
            }
        })
    }

    pub fn enforcement(&self, subject: &Peer, direction: Direction) -> Enforcement {
        let always = self.mode == EnforcementMode::Always
            || subject
                .labels
                .values(Some("reserved"), "init")
                .next()
                .is_some();
        if self.mode == EnforcementMode::Never {
            return Enforcement::Unrestricted;
        }
        let mut present = false;
        let mut default_deny = false;
        for p in self.selecting(subject) {
            let d = p.direction(direction);
            if d.present {
                present = true;
                default_deny |= d.default_deny;
            }
        }
        if always {
            return Enforcement::Enforced { default_deny: true };
        }
        if present {
            Enforcement::Enforced { default_deny }
        } else {
            Enforcement::Unrestricted
        }
    }

    /// The filters that apply to the subject in a direction (plus the synthesised default-allow
    /// filter when only default-allow rules select it).
    fn filters<'a>(
        &'a self,
        subject: &'a Peer,
        direction: Direction,
        default_deny: bool,
    ) -> Vec<&'a Filter> {
        let mut out: Vec<&Filter> = self
            .selecting(subject)
            .flat_map(|p| p.direction(direction).filters.iter())
            .collect();
        if !default_deny {
            out.push(default_allow_filter(direction));
        }
        if self.allow_localhost
            && direction == Direction::Ingress
            && subject.kind == PeerKind::Endpoint
        {
            out.push(allow_localhost_filter());
        }
        out
    }

    /// Map entries produced by the filters for one peer: `(key, value)` for its identity (L3
    /// entries) and for the wildcard identity (L4-only entries), before precedence fix-up.
    fn raw_entries(
        &self,
        filters: &[&Filter],
        subject: &Peer,
        peer: &Peer,
        direction: Direction,
    ) -> Vec<MapEntry> {
        let mut out = Vec::new();
        for f in filters {
            let wildcard = f.peers.is_wildcard();
            if !wildcard && !f.peers.selects(peer, &self.set.catalog) {
                continue;
            }
            let identity = if wildcard { WILDCARD } else { peer.identity };
            let value = MapValue {
                deny: f.deny,
                redirect: if f.deny {
                    None
                } else {
                    f.l7.as_ref().map(L7::parser)
                },
                precedence: precedence(
                    f.priority,
                    if f.deny {
                        PRECEDENCE_DENY
                    } else {
                        f.l7.as_ref()
                            .map_or(PRECEDENCE_ALLOW, |l| l.parser().precedence_byte())
                    },
                ),
                origin: (f.priority != LOWEST_PRIORITY).then(|| f.origin.clone()),
            };
            // Named ports resolve against the destination: the subject on ingress, the peer on
            // egress. An unresolvable name contributes nothing.
            let dest = match direction {
                Direction::Ingress => subject,
                Direction::Egress => peer,
            };
            for key in filter_keys(f, identity, direction, dest) {
                out.push(MapEntry {
                    key,
                    value: value.clone(),
                });
            }
        }
        out
    }

    /// The kernel policy-map entries of `subject` for every identity in `identities`, after the
    /// precedence fix-up (each key carries the highest-precedence verdict of the entries that
    /// cover it, so an LPM lookup finds the right answer).
    pub fn map_entries(&self, subject: &Peer, identities: &IdentityTable) -> Vec<MapEntry> {
        let mut all = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            let default_deny = match self.enforcement(subject, direction) {
                Enforcement::Unrestricted => {
                    // Unrestricted: one allow-all wildcard entry.
                    all.push(MapEntry {
                        key: MapKey {
                            identity: WILDCARD,
                            direction,
                            protocol: 0,
                            port: 0,
                            prefix_len: 0,
                        },
                        value: MapValue {
                            deny: false,
                            redirect: None,
                            precedence: precedence(LOWEST_PRIORITY, PRECEDENCE_ALLOW),
                            origin: None,
                        },
                    });
                    continue;
                }
                Enforcement::Enforced { default_deny } => default_deny,
            };
            let filters = self.filters(subject, direction, default_deny);
            let mut by_identity: BTreeMap<Identity, Vec<MapEntry>> = BTreeMap::new();
            for peer in identities.iter() {
                for e in self.raw_entries(&filters, subject, peer, direction) {
                    let list = by_identity.entry(e.key.identity).or_default();
                    // Wildcard entries repeat for every peer (they differ only where egress
                    // named ports resolve differently per destination).
                    if e.key.identity != WILDCARD || !list.contains(&e) {
                        list.push(e);
                    }
                }
            }
            for (_, entries) in by_identity {
                all.extend(fixup(entries));
            }
        }
        all.sort_by_key(|e| e.key);
        all.dedup_by(|a, b| a.key == b.key);
        all
    }

    /// The L3/L4 verdict for a flow: which entry the datapath would pick.
    pub fn l3l4(&self, flow: &Flow<'_>) -> (L3L4Verdict, String, Option<RuleRef>) {
        let default_deny = match self.enforcement(flow.subject, flow.direction) {
            Enforcement::Unrestricted => {
                return (
                    L3L4Verdict::Allow,
                    format!(
                        "no policy selects {} for {}: all traffic allowed",
                        flow.subject.display, flow.direction
                    ),
                    None,
                )
            }
            Enforcement::Enforced { default_deny } => default_deny,
        };
        let filters = self.filters(flow.subject, flow.direction, default_deny);
        let entries = self.raw_entries(&filters, flow.subject, flow.peer, flow.direction);
        let proto = flow.protocol.number();
        let lookup = |identity: Identity| -> Option<(u32, u8, &MapEntry)> {
            let packet = MapKey::packet(identity, flow.direction, proto, flow.port);
            let matching: Vec<&MapEntry> = entries
                .iter()
                .filter(|e| e.key.identity == identity && e.key.covers(&packet))
                .collect();
            let longest = matching.iter().map(|e| e.key.prefix_len).max()?;
            let best = matching.iter().max_by_key(|e| e.value.precedence)?;
            // Ties in precedence: the first rule in policy order is reported.
            let best = matching
                .iter()
                .find(|e| e.value.precedence == best.value.precedence)
                .copied()?;
            Some((best.value.precedence, longest, best))
        };
        let p3 = lookup(flow.peer.identity);
        let p4 = lookup(WILDCARD);
        let chosen = match (p3, p4) {
            (None, None) => None,
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b),
            (Some(a), Some(b)) => {
                if (a.2.value.deny && a.0 == precedence(0, PRECEDENCE_DENY))
                    || !(b.0 > a.0 || (b.0 == a.0 && b.1 > a.1))
                {
                    Some(a)
                } else {
                    Some(b)
                }
            }
        };
        let what = format!("{} {}/{}", flow.direction, flow.port, flow.protocol);
        match chosen {
            None => {
                let enabling = self
                    .selecting(flow.subject)
                    .find(|p| {
                        p.direction(flow.direction).present
                            && p.direction(flow.direction).default_deny
                    })
                    .map(|p| RuleRef {
                        policy: p.meta.clone(),
                        path: String::new(),
                    });
                (
                    L3L4Verdict::Deny,
                    format!(
                        "{} is in {} default deny{} and no rule allows {} {} {}",
                        flow.subject.display,
                        flow.direction,
                        enabling
                            .as_ref()
                            .map(|r| format!(" (selected by {})", r.policy.id()))
                            .unwrap_or_default(),
                        what,
                        match flow.direction {
                            Direction::Ingress => "from",
                            Direction::Egress => "to",
                        },
                        flow.peer.display
                    ),
                    enabling,
                )
            }
            Some((_, _, e)) if e.value.deny => (
                L3L4Verdict::Deny,
                format!("{} denies {}", describe_origin(&e.value.origin), what),
                e.value.origin.clone(),
            ),
            Some((_, _, e)) => match e.value.redirect {
                Some(parser) => (
                    L3L4Verdict::Redirect(parser),
                    format!(
                        "{} redirects {} to the {} proxy",
                        describe_origin(&e.value.origin),
                        what,
                        parser.as_str()
                    ),
                    e.value.origin.clone(),
                ),
                None => (
                    L3L4Verdict::Allow,
                    format!("{} allows {}", describe_origin(&e.value.origin), what),
                    e.value.origin.clone(),
                ),
            },
        }
    }

    /// The L7 policy the proxy enforces for this (subject, direction, peer, port). Cached.
    pub fn l7_policy(&self, flow: &Flow<'_>) -> L7Policy {
        let dest = match flow.direction {
            Direction::Ingress => flow.subject,
            Direction::Egress => flow.peer,
        };
        let key = (
            flow.subject.identity,
            flow.direction,
            flow.peer.identity,
            flow.protocol.number(),
            flow.port,
            named_ports_key(dest),
        );
        if let Some(p) = self.l7_cache.read().ok().and_then(|c| c.get(&key).cloned()) {
            return p;
        }
        let p = self.compute_l7_policy(flow);
        if let Ok(mut c) = self.l7_cache.write() {
            c.insert(key, p.clone());
        }
        p
    }

    fn compute_l7_policy(&self, flow: &Flow<'_>) -> L7Policy {
        let default_deny = match self.enforcement(flow.subject, flow.direction) {
            Enforcement::Unrestricted => return L7Policy::AllowAll(None),
            Enforcement::Enforced { default_deny } => default_deny,
        };
        let filters = self.filters(flow.subject, flow.direction, default_deny);
        let proto = flow.protocol.number();
        let packet = MapKey::packet(flow.peer.identity, flow.direction, proto, flow.port);
        let dest = match flow.direction {
            Direction::Ingress => flow.subject,
            Direction::Egress => flow.peer,
        };
        let mut http: Vec<Arc<HttpRule>> = Vec::new();
        let mut kafka_rules: Vec<Arc<KafkaRule>> = Vec::new();
        let mut dns = Vec::new();
        let mut parsers = Vec::new();
        for f in &filters {
            // The localhost allow is a bare map entry, not a rule the proxy sees (§2.2).
            if f.deny
                || std::ptr::eq(*f, allow_localhost_filter())
                || !f.peers.selects(flow.peer, &self.set.catalog)
            {
                continue;
            }
            let id = if f.peers.is_wildcard() {
                WILDCARD
            } else {
                flow.peer.identity
            };
            let covers = filter_keys(f, id, flow.direction, dest).iter().any(|k| {
                k.covers(&MapKey {
                    identity: id,
                    ..packet
                })
            });
            if !covers {
                continue;
            }
            match &f.l7 {
                None => {
                    return L7Policy::AllowAll(
                        (f.priority != LOWEST_PRIORITY).then(|| f.origin.clone()),
                    )
                }
                Some(l7) => {
                    if !parsers.contains(&l7.parser()) {
                        parsers.push(l7.parser());
                    }
                    match l7 {
                        L7::Http(r) => http.extend(r.iter().cloned()),
                        L7::Kafka(r) => kafka_rules.extend(r.iter().cloned()),
                        L7::Dns(p) => dns.extend(p.iter().cloned()),
                    }
                }
            }
        }
        match parsers.as_slice() {
            [] => L7Policy::AllowAll(None),
            [L7Parser::Http] => L7Policy::Http(Arc::new(HttpRuleSet::new(http))),
            [L7Parser::Kafka] => L7Policy::Kafka(Arc::new(kafka_rules)),
            [L7Parser::Dns] => L7Policy::Dns(Arc::new(DnsMatcher::new(&dns))),
            _ => L7Policy::Conflict(parsers),
        }
    }
}

pub(crate) fn summarize<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = items.collect();
    if all.len() > 5 {
        format!("{}, … {} more", all[..5].join(", "), all.len() - 5)
    } else {
        all.join(", ")
    }
}

pub(crate) fn describe_origin(o: &Option<RuleRef>) -> String {
    match o {
        Some(r) => r.to_string(),
        None => "the default-allow rule (no selecting policy enables default deny)".to_string(),
    }
}

/// The synthesised lowest-priority allow-all for directions where only default-allow rules
/// (`enableDefaultDeny: false`) select the endpoint.
fn default_allow_filter(direction: Direction) -> &'static Filter {
    use std::sync::OnceLock;
    static INGRESS: OnceLock<Filter> = OnceLock::new();
    static EGRESS: OnceLock<Filter> = OnceLock::new();
    let make = || Filter {
        origin: RuleRef {
            policy: Arc::new(PolicyMeta {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: None,
                name: "(default-allow)".into(),
                file: String::new(),
                document: 0,
            }),
            path: String::new(),
        },
        direction,
        deny: false,
        peers: Arc::new(PeerSelector::All),
        l4: L4::Any,
        l7: None,
        priority: LOWEST_PRIORITY,
    };
    match direction {
        Direction::Ingress => INGRESS.get_or_init(make),
        Direction::Egress => EGRESS.get_or_init(make),
    }
}

/// Cilium's implicit allow of ingress from the local host (k8s mode `--allow-localhost`).
fn allow_localhost_filter() -> &'static Filter {
    use std::sync::OnceLock;
    static F: OnceLock<Filter> = OnceLock::new();
    F.get_or_init(|| Filter {
        origin: RuleRef {
            policy: Arc::new(PolicyMeta {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: None,
                name: "(allow-localhost)".into(),
                file: String::new(),
                document: 0,
            }),
            path: "ingress from host is always allowed in Kubernetes mode".into(),
        },
        direction: Direction::Ingress,
        deny: false,
        peers: Arc::new(PeerSelector::Any(vec![PeerTerm::Entity(
            crate::identity::Entity::Host,
        )])),
        l4: L4::Any,
        l7: None,
        priority: 0,
    })
}

/// The map keys one filter produces for one identity.
fn filter_keys(f: &Filter, identity: Identity, direction: Direction, dest: &Peer) -> Vec<MapKey> {
    let key = |protocol: u8, port: u16, prefix_len: u8| MapKey {
        identity,
        direction,
        protocol,
        port,
        prefix_len,
    };
    match &f.l4 {
        L4::Any => vec![key(0, 0, 0)],
        L4::Icmp(types) => types
            .iter()
            .map(|(p, t)| key(p.number(), u16::from(*t), 24))
            .collect(),
        L4::Ports(ports) => {
            let mut out = Vec::new();
            for pm in ports {
                let (lo, hi) = match &pm.port {
                    Port::Range(lo, hi) => (*lo, *hi),
                    Port::Named(name) => match dest.named_ports.get(name) {
                        Some(p) => (*p, *p),
                        None => continue,
                    },
                };
                for (start, bits) in port_range_prefixes(lo, hi) {
                    out.push(key(pm.protocol.number(), start, 8 + bits));
                }
            }
            out
        }
    }
}

/// Gives every key the highest-precedence verdict among the entries (of the same identity and
/// direction) that cover it, so that a longest-prefix lookup returns that verdict.
fn fixup(entries: Vec<MapEntry>) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::with_capacity(entries.len());
    for e in &entries {
        if out
            .iter()
            .any(|o| o.key == e.key && o.value.precedence >= e.value.precedence)
        {
            continue;
        }
        let best = entries
            .iter()
            .filter(|c| c.key.direction == e.key.direction && c.key.covers(&e.key))
            .max_by_key(|c| c.value.precedence)
            .map(|c| c.value.clone())
            .unwrap_or_else(|| e.value.clone());
        out.retain(|o| o.key != e.key);
        out.push(MapEntry {
            key: e.key,
            value: best,
        });
    }
    out
}

/// Identity helpers used by tools and tests.
pub fn is_local_endpoint(p: &Peer) -> bool {
    p.kind == PeerKind::Endpoint || p.kind == PeerKind::Reserved(Reserved::Host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(8080, 8083), vec![(8080, 14)]);
        assert_eq!(port_range_prefixes(1, 3), vec![(1, 16), (2, 15)]);
        // Every port inside, none outside.
        let blocks = port_range_prefixes(1000, 2047);
        for p in [999u16, 1000, 1500, 2047, 2048] {
            let inside = blocks.iter().any(|(s, bits)| {
                let mask: u16 = if *bits == 0 {
                    0
                } else {
                    (!0u16) << (16 - bits)
                };
                p & mask == *s & mask
            });
            assert_eq!(inside, (1000..=2047).contains(&p), "{p}");
        }
    }

    #[test]
    fn key_coverage() {
        let k = |protocol, port, prefix_len| MapKey {
            identity: WILDCARD,
            direction: Direction::Ingress,
            protocol,
            port,
            prefix_len,
        };
        assert!(k(0, 0, 0).covers(&k(6, 80, 24)));
        assert!(k(6, 0, 8).covers(&k(6, 80, 24)));
        assert!(!k(17, 0, 8).covers(&k(6, 80, 24)));
        assert!(k(6, 8080, 22).covers(&k(6, 8083, 24)));
        assert!(!k(6, 8080, 22).covers(&k(6, 8084, 24)));
        assert!(!k(6, 80, 24).covers(&k(6, 0, 8)));
    }
}
