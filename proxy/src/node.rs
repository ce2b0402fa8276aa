//! The node model: endpoints + the loaded policy set → identities, the ipcache view the proxy
//! resolves peers with, and the [`DesiredState`] for the kernel maps. A [`NodeView`] is an
//! immutable snapshot; the daemon swaps it atomically on every change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bpf_redirect::{DesiredState, Endpoint, Interface, IpcacheEntry, PolicyEntry};
use ipnet::IpNet;
use l7_rules::check::PeerSpec;
use l7_rules::engine::{Engine, MapEntry};
use l7_rules::identity::{IdentityTable, Peer, Reserved};
use l7_rules::model::{Direction, L7Parser};

use crate::config::{Config, EndpointConfig, Enforcement};

/// Settings that shape the view (from the node config).
#[derive(Clone, Debug)]
pub struct Settings {
    pub http_port: u16,
    pub dns_port: Option<u16>,
    pub kafka_port: Option<u16>,
    pub audit: bool,
    pub enforcement: Enforcement,
    pub node_labels: BTreeMap<String, String>,
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
        engine.node_labels = self.node_label_set();
    }

    /// The node's labels as a host policy's `nodeSelector` sees them.
    pub fn node_label_set(&self) -> l7_rules::labels::LabelSet {
        l7_rules::labels::LabelSet::new(
            self.node_labels
                .iter()
                .map(|(k, v)| l7_rules::labels::Label::new("k8s", k, v))
                .collect(),
        )
    }

    fn proxy_port(&self, parser: L7Parser) -> Option<u16> {
        match parser {
            L7Parser::Http => Some(self.http_port),
            L7Parser::Dns => self.dns_port,
            L7Parser::Kafka => self.kafka_port,
        }
    }
}

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
    /// Index into [`NodeView::endpoints`] when a local endpoint.
    pub endpoint: Option<usize>,
}

impl PeerInfo {
    pub fn labels(&self) -> Vec<String> {
        self.peer.labels.iter().map(|l| l.to_string()).collect()
    }
}

/// An immutable snapshot of everything the proxy and the admin API read.
pub struct NodeView {
    pub generation: u64,
    pub engine: Arc<Engine>,
    pub settings: Settings,
    pub endpoints: Vec<EndpointInfo>,
    by_ip: HashMap<Ipv4Addr, usize>,
    host_ips: HashSet<Ipv4Addr>,
    host: Arc<Peer>,
    world: Arc<Peer>,
    cidrs: Vec<(IpNet, Arc<Peer>)>,
    pub identities: IdentityTable,
    pub desired: DesiredState,
    /// L7 parsers that had no listener and were enforced at L3/L4 only.
    pub unproxied: Vec<L7Parser>,
    /// The host endpoint (`reserved:host`): the node's own addresses under host policies.
    pub host_endpoint: HostEndpoint,
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

impl NodeView {
    pub fn build(
        generation: u64,
        engine: Arc<Engine>,
        settings: Settings,
        endpoints: &[(u16, EndpointConfig)],
        host_ips: &[Ipv4Addr],
    ) -> Result<NodeView, ViewError> {
        let mut identities = IdentityTable::with_reserved();
        let mut infos = Vec::new();
        let mut by_ip = HashMap::new();
        for (id, cfg) in endpoints {
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
            identities.insert(peer.clone())?;
            let enforced = |d| {
                matches!(
                    engine.enforcement(&peer, d),
                    l7_rules::engine::Enforcement::Enforced { .. }
                )
            };
            let (ingress_enforced, egress_enforced) =
                (enforced(Direction::Ingress), enforced(Direction::Egress));
            for ip in &cfg.ips {
                by_ip.insert(*ip, infos.len());
            }
            infos.push(EndpointInfo {
                id: *id,
                config: cfg.clone(),
                peer: Arc::new(peer),
                ingress_enforced,
                egress_enforced,
            });
        }
        let mut cidrs = Vec::new();
        let mut ipcache = Vec::new();
        for net in engine.policy_cidrs() {
            let IpNet::V4(v4) = net else { continue };
            let peer = Peer::cidr(net.addr(), Some(net));
            identities.insert(peer.clone())?;
            ipcache.push(IpcacheEntry {
                addr: v4.network(),
                prefix_len: v4.prefix_len(),
                identity: peer.identity.0,
                endpoint_id: 0,
            });
            cidrs.push((net, Arc::new(peer)));
        }
        let host_ips: HashSet<Ipv4Addr> = host_ips
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
        let mut policy = Vec::new();
        let mut unproxied = Vec::new();
        let mut eps = Vec::new();
        for info in &infos {
            for e in engine.map_entries(&info.peer, &identities) {
                if let Some(p) = to_policy_entry(info.id, &e, &settings, &mut unproxied) {
                    policy.push(p);
                }
            }
            eps.push(Endpoint {
                endpoint_id: info.id,
                interface: Interface::Name(info.config.interface.clone()),
                ips: info.config.ips.clone(),
                identity: info.peer.identity.0,
                ingress_enforced: info.ingress_enforced,
                egress_enforced: info.egress_enforced,
                audit: settings.audit || info.config.audit,
            });
        }
        // The host is an endpoint as in Cilium: host policies (CCNP `nodeSelector`, matched
        // against the node's labels) are resolved by the same engine into its own entries.
        let host = Peer::reserved(Reserved::Host);
        let enforced = |d| {
            matches!(
                engine.enforcement(&host, d),
                l7_rules::engine::Enforcement::Enforced { .. }
            )
        };
        let host_endpoint = HostEndpoint {
            ingress_enforced: enforced(Direction::Ingress),
            egress_enforced: enforced(Direction::Egress),
            audit: settings.audit || settings.host_audit,
        };
        let first_host_entry = policy.len();
        for e in engine.map_entries(&host, &identities) {
            if let Some(p) = to_policy_entry(HOST_ENDPOINT_ID, &e, &settings, &mut unproxied) {
                policy.push(p);
            }
        }
        if host_endpoint.ingress_enforced {
            if let Some(port) = settings.metrics_port {
                if let Some(p) = metrics_allow(&policy[first_host_entry..], port) {
                    policy.push(p);
                }
            }
        }
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
        cidrs.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        Ok(NodeView {
            generation,
            engine,
            settings,
            endpoints: infos,
            by_ip,
            host_ips,
            host: Arc::new(host),
            world: Arc::new(Peer::reserved(Reserved::World)),
            cidrs,
            identities,
            desired: DesiredState {
                endpoints: eps,
                ipcache,
                policy,
            },
            unproxied,
            host_endpoint,
        })
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
        if let Some((_, p)) = self.cidrs.iter().find(|(n, _)| n.contains(&ip)) {
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

    pub fn endpoint_by_name(&self, name: &str) -> Option<&EndpointInfo> {
        self.endpoints.iter().find(|e| e.config.name == name)
    }

    /// Number of policy documents loaded.
    pub fn policy_count(&self) -> usize {
        self.engine.set.policies.len()
    }
}

/// One engine map entry → one kernel policy entry of endpoint `id`.
fn to_policy_entry(
    id: u16,
    e: &MapEntry,
    settings: &Settings,
    unproxied: &mut Vec<L7Parser>,
) -> Option<PolicyEntry> {
    let k = &e.key;
    let (proto, port, plen) = match k.prefix_len {
        0 => (0, 0, 0),
        n => (k.protocol, k.port, n - 8),
    };
    // A redirect to a protocol with no listener fails closed: the flow needs L7 checks that
    // nothing can make, so the datapath drops it instead of letting it through unchecked.
    let mut deny = e.value.deny;
    let proxy_port = match e.value.redirect {
        None => 0,
        Some(parser) => match settings.proxy_port(parser) {
            Some(p) => p,
            None => {
                unproxied.push(parser);
                deny = true;
                0
            }
        },
    };
    Some(PolicyEntry {
        endpoint_id: id,
        identity: k.identity.0,
        egress: k.direction == Direction::Egress,
        proto,
        port,
        port_prefix_len: plen,
        deny,
        proxy_port,
        precedence: e.value.precedence,
        cookie: 0,
    })
}

/// Ward's own metrics endpoint stays reachable under a host ingress default deny: an allow of
/// TCP `port` from any peer, unless a host rule says otherwise on that port (an entry for it,
/// or a deny covering it). Like Cilium's implicit allows, it is the node's, not a policy's.
fn metrics_allow(host_entries: &[PolicyEntry], port: u16) -> Option<PolicyEntry> {
    let covers = |p: &&PolicyEntry| {
        !p.egress
            && (p.proto == 0
                || (p.proto == 6
                    && (p.port_prefix_len == 0
                        || (p.port ^ port) >> (16 - u32::from(p.port_prefix_len)) == 0)))
    };
    let mut covering = host_entries.iter().filter(covers);
    // A rule names the port (for any peer), or a deny covers it.
    let said = covering.any(|p| p.deny || (p.proto == 6 && p.port_prefix_len == 16));
    (!said).then(|| PolicyEntry {
        endpoint_id: HOST_ENDPOINT_ID,
        identity: 0,
        egress: false,
        proto: 6,
        port,
        port_prefix_len: 16,
        deny: false,
        proxy_port: 0,
        precedence: u32::from(l7_rules::engine::PRECEDENCE_ALLOW),
        cookie: 0,
    })
}

/// IPv4 addresses configured on interfaces of this network namespace (host identity).
pub fn local_ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a valid node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family we check before casting.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(ip);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
            host_audit: false,
            metrics_port: None,
        }
    }

    #[test]
    fn a_host_policy_does_not_cut_the_metrics_port_unless_a_rule_says_so() {
        let entry = |identity, proto, port, plen, deny| PolicyEntry {
            endpoint_id: HOST_ENDPOINT_ID,
            identity,
            egress: false,
            proto,
            port,
            port_prefix_len: plen,
            deny,
            proxy_port: 0,
            precedence: 1,
            cookie: 0,
        };
        // Default deny with an unrelated allow: the metrics port is allowed from anyone.
        let allow = metrics_allow(&[entry(0, 6, 8080, 16, false)], 9962).unwrap();
        assert_eq!(
            (allow.identity, allow.proto, allow.port, allow.deny),
            (0, 6, 9962, false)
        );
        // A rule on that port, or a deny covering it, decides instead.
        assert!(metrics_allow(&[entry(0, 6, 9962, 16, false)], 9962).is_none());
        assert!(metrics_allow(&[entry(42, 6, 9962, 16, true)], 9962).is_none());
        // "9962 from prometheus only" is a rule that says so.
        assert!(metrics_allow(&[entry(42, 6, 9962, 16, false)], 9962).is_none());
        assert!(metrics_allow(&[entry(0, 0, 0, 0, true)], 9962).is_none());
        assert!(metrics_allow(&[entry(0, 6, 8192, 3, true)], 9962).is_none());
        assert!(metrics_allow(&[entry(0, 6, 8192, 3, true)], 80).is_some());
    }

    /// What the datapath's `policy_can_access` answers from the view's policy entries (the
    /// C program's lookup, replayed on the entries `ward run` writes).
    fn kernel_allows(
        view: &NodeView,
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
            let view = NodeView::build(
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
    pub(crate) fn starwars_view() -> NodeView {
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
        NodeView::build(7, engine, settings(), &eps, &[Ipv4Addr::new(10, 200, 1, 1)]).unwrap()
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
