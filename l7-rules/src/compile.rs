//! Raw YAML types → compiled model. This is where validation lives: every check reports the
//! field path, and compilation carries on so that all errors of a document come out at once.

use crate::diag::DocContext;
use crate::identity::Entity;
use crate::l7::dns::NamePattern;
use crate::l7::http::{HeaderMatch, HeaderRequirement, HttpRule, MismatchAction, Pattern};
use crate::l7::kafka::{ApiKeySet, KafkaRule};
use crate::labels::{
    Label, LabelSet, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE, SOURCE_K8S, SOURCE_RESERVED,
};
use crate::model::*;
use crate::raw;
use crate::selector::{LabelSelector, Operator, Requirement};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Most ports one `toPorts` element may list (Cilium's limit).
pub const MAX_PORTS_PER_RULE: usize = 40;
/// Longest Kafka topic name (Cilium's validation).
pub const MAX_KAFKA_TOPIC_LEN: usize = 255;

/// How peer endpoint selectors get a namespace requirement added.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// CNP / NetworkPolicy: `k8s:io.kubernetes.pod.namespace=<ns>`.
    Namespaced(&'a str),
    /// CCNP: `k8s:io.kubernetes.pod.namespace` must exist (pods only).
    Clusterwide,
}

/// Compiles a CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy document.
pub fn cilium_policy(
    raw: raw::CiliumPolicy,
    meta: Arc<PolicyMeta>,
    cx: &mut DocContext<'_>,
) -> Vec<Policy> {
    let clusterwide = meta.kind == PolicyKind::CiliumClusterwideNetworkPolicy;
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let scope = if clusterwide {
        Scope::Clusterwide
    } else {
        Scope::Namespaced(&ns)
    };
    let mut out = Vec::new();
    match (raw.spec, raw.specs) {
        (None, None) => cx.error("spec", "the policy has neither `spec` nor `specs`"),
        (spec, specs) => {
            if let Some(rule) = spec {
                out.extend(cilium_rule(rule, "spec", &meta, scope, cx));
            }
            for (i, rule) in specs.into_iter().flatten().enumerate() {
                out.extend(cilium_rule(rule, &format!("specs[{i}]"), &meta, scope, cx));
            }
        }
    }
    out
}

fn cilium_rule(
    rule: raw::Rule,
    at: &str,
    meta: &Arc<PolicyMeta>,
    scope: Scope<'_>,
    cx: &mut DocContext<'_>,
) -> Option<Policy> {
    let subject = match (&rule.endpoint_selector, &rule.node_selector) {
        (Some(_), Some(_)) => {
            cx.error(
                &format!("{at}.nodeSelector"),
                "`endpointSelector` and `nodeSelector` are mutually exclusive",
            );
            return None;
        }
        (None, None) => {
            cx.error(
                &format!("{at}.endpointSelector"),
                "the rule needs an `endpointSelector` (or a `nodeSelector` for host policies)",
            );
            return None;
        }
        (Some(sel), None) => {
            let mut s = selector(sel, &format!("{at}.endpointSelector"), cx)?;
            if let Scope::Namespaced(ns) = scope {
                // A namespaced policy only ever selects pods of its own namespace: Cilium
                // replaces any namespace match in the subject selector with its own.
                let before = s.requirements.len();
                s.requirements.retain(|r| r.key != POD_NAMESPACE);
                if s.requirements.len() != before {
                    cx.warn(
                        &format!("{at}.endpointSelector"),
                        format!("a namespace match in the endpointSelector of a namespaced policy is replaced by the policy's own namespace {ns:?}"),
                    );
                }
                s.requirements.push(Requirement::new(
                    &format!("{SOURCE_K8S}:{POD_NAMESPACE}"),
                    Operator::In(vec![ns.to_string()]),
                ));
            }
            Subject::Endpoints(s)
        }
        (None, Some(sel)) => {
            if let Scope::Namespaced(_) = scope {
                cx.error(
                    &format!("{at}.nodeSelector"),
                    "`nodeSelector` is only valid in a CiliumClusterwideNetworkPolicy",
                );
                return None;
            }
            Subject::Nodes(selector(sel, &format!("{at}.nodeSelector"), cx)?)
        }
    };
    let host_policy = matches!(subject, Subject::Nodes(_));
    let defaults = rule.enable_default_deny.unwrap_or_default();

    let mut ingress = DirectionRules::default();
    let mut egress = DirectionRules::default();
    let n_in =
        rule.ingress.as_ref().map_or(0, Vec::len) + rule.ingress_deny.as_ref().map_or(0, Vec::len);
    let n_eg =
        rule.egress.as_ref().map_or(0, Vec::len) + rule.egress_deny.as_ref().map_or(0, Vec::len);
    for (field, list_len, rules_present) in [
        ("ingress", rule.ingress.as_ref().map(Vec::len), n_in),
        ("egress", rule.egress.as_ref().map(Vec::len), n_eg),
    ] {
        if list_len == Some(0) && rules_present == 0 {
            cx.warn(
                &format!("{at}.{field}"),
                format!(
                    "`{field}: []` is an empty section: it does not switch the endpoint into \
                     {field} default deny (only a non-empty section does); write `{field}: [{{}}]` \
                     to deny all {field} traffic"
                ),
            );
        }
    }
    ingress.present = n_in > 0;
    egress.present = n_eg > 0;
    ingress.default_deny = defaults.ingress.unwrap_or(ingress.present);
    egress.default_deny = defaults.egress.unwrap_or(egress.present);

    let section =
        |rules: Option<Vec<RuleIn>>, field: &str, direction, deny, cx: &mut DocContext<'_>| {
            let mut out = Vec::new();
            for (i, r) in rules.into_iter().flatten().enumerate() {
                let path = format!("{at}.{field}[{i}]");
                out.extend(filters(
                    r,
                    &path,
                    meta,
                    direction,
                    deny,
                    scope,
                    host_policy,
                    cx,
                ));
            }
            out
        };
    ingress.filters.extend(section(
        rules_in(rule.ingress),
        "ingress",
        Direction::Ingress,
        false,
        cx,
    ));
    ingress.filters.extend(section(
        rules_in(rule.ingress_deny),
        "ingressDeny",
        Direction::Ingress,
        true,
        cx,
    ));
    egress.filters.extend(section(
        rules_in(rule.egress),
        "egress",
        Direction::Egress,
        false,
        cx,
    ));
    egress.filters.extend(section(
        rules_in(rule.egress_deny),
        "egressDeny",
        Direction::Egress,
        true,
        cx,
    ));
    if let Some(labels) = &rule.labels {
        for (i, l) in labels.iter().enumerate() {
            if l.key.is_empty() {
                cx.error(&format!("{at}.labels[{i}].key"), "label key is empty");
            }
        }
    }
    Some(Policy {
        meta: meta.clone(),
        spec_path: at.to_string(),
        subject,
        ingress,
        egress,
        description: rule.description,
    })
}

/// The L3 fields of a rule, whichever direction it is.
struct PeersIn {
    endpoints: Option<Vec<raw::Selector>>,
    cidr: Option<Vec<String>>,
    cidr_set: Option<Vec<raw::CidrRule>>,
    entities: Option<Vec<String>>,
    services: Option<Vec<raw::ServiceRef>>,
    fqdns: Option<Vec<raw::FqdnSelector>>,
    unsupported: Vec<(&'static str, bool)>,
}

/// A `toPorts` element, allow or deny form.
struct PortsIn {
    ports: Option<Vec<raw::PortProtocol>>,
    rules: Option<raw::L7Rules>,
    tls: Vec<(&'static str, bool)>,
}

impl From<raw::PortRule> for PortsIn {
    fn from(p: raw::PortRule) -> PortsIn {
        PortsIn {
            ports: p.ports,
            rules: p.rules,
            tls: vec![
                ("terminatingTLS", p.terminating_tls.is_some()),
                ("originatingTLS", p.originating_tls.is_some()),
                ("serverNames", p.server_names.is_some()),
                ("listener", p.listener.is_some()),
            ],
        }
    }
}

impl From<raw::PortDenyRule> for PortsIn {
    fn from(p: raw::PortDenyRule) -> PortsIn {
        PortsIn {
            ports: p.ports,
            rules: None,
            tls: vec![],
        }
    }
}

struct RuleIn {
    peers: PeersIn,
    ports: Option<Vec<PortsIn>>,
    icmps: Option<Vec<raw::IcmpRule>>,
}

fn rules_in<R: Into<RuleIn>>(rules: Option<Vec<R>>) -> Option<Vec<RuleIn>> {
    rules.map(|v| v.into_iter().map(Into::into).collect())
}

fn ports_in<P: Into<PortsIn>>(ports: Option<Vec<P>>) -> Option<Vec<PortsIn>> {
    ports.map(|v| v.into_iter().map(Into::into).collect())
}

impl From<raw::IngressRule> for RuleIn {
    fn from(r: raw::IngressRule) -> RuleIn {
        RuleIn {
            peers: PeersIn {
                endpoints: r.from_endpoints,
                cidr: r.from_cidr,
                cidr_set: r.from_cidr_set,
                entities: r.from_entities,
                services: None,
                fqdns: None,
                unsupported: vec![
                    ("fromRequires", r.from_requires.is_some()),
                    ("fromGroups", r.from_groups.is_some()),
                    ("fromNodes", r.from_nodes.is_some()),
                    ("authentication", r.authentication.is_some()),
                ],
            },
            ports: ports_in(r.to_ports),
            icmps: r.icmps,
        }
    }
}

impl From<raw::IngressDenyRule> for RuleIn {
    fn from(r: raw::IngressDenyRule) -> RuleIn {
        RuleIn {
            peers: PeersIn {
                endpoints: r.from_endpoints,
                cidr: r.from_cidr,
                cidr_set: r.from_cidr_set,
                entities: r.from_entities,
                services: None,
                fqdns: None,
                unsupported: vec![
                    ("fromRequires", r.from_requires.is_some()),
                    ("fromGroups", r.from_groups.is_some()),
                    ("fromNodes", r.from_nodes.is_some()),
                ],
            },
            ports: ports_in(r.to_ports),
            icmps: r.icmps,
        }
    }
}

impl From<raw::EgressRule> for RuleIn {
    fn from(r: raw::EgressRule) -> RuleIn {
        RuleIn {
            peers: PeersIn {
                endpoints: r.to_endpoints,
                cidr: r.to_cidr,
                cidr_set: r.to_cidr_set,
                entities: r.to_entities,
                services: r.to_services,
                fqdns: r.to_fqdns,
                unsupported: vec![
                    ("toRequires", r.to_requires.is_some()),
                    ("toGroups", r.to_groups.is_some()),
                    ("toNodes", r.to_nodes.is_some()),
                    ("authentication", r.authentication.is_some()),
                ],
            },
            ports: ports_in(r.to_ports),
            icmps: r.icmps,
        }
    }
}

impl From<raw::EgressDenyRule> for RuleIn {
    fn from(r: raw::EgressDenyRule) -> RuleIn {
        RuleIn {
            peers: PeersIn {
                endpoints: r.to_endpoints,
                cidr: r.to_cidr,
                cidr_set: r.to_cidr_set,
                entities: r.to_entities,
                services: r.to_services,
                fqdns: None,
                unsupported: vec![
                    ("toRequires", r.to_requires.is_some()),
                    ("toGroups", r.to_groups.is_some()),
                    ("toNodes", r.to_nodes.is_some()),
                ],
            },
            ports: ports_in(r.to_ports),
            icmps: r.icmps,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn filters(
    rule: RuleIn,
    path: &str,
    meta: &Arc<PolicyMeta>,
    direction: Direction,
    deny: bool,
    scope: Scope<'_>,
    host_policy: bool,
    cx: &mut DocContext<'_>,
) -> Vec<Filter> {
    let peers = peers(rule.peers, path, direction, scope, cx);
    let has_ports = rule.ports.as_ref().is_some_and(|p| !p.is_empty());
    let has_icmps = rule.icmps.as_ref().is_some_and(|p| !p.is_empty());
    if has_ports && has_icmps {
        cx.error(
            &format!("{path}.icmps"),
            "`icmps` cannot be combined with `toPorts` in one rule; write two rules",
        );
        return vec![];
    }
    let Some(peers) = peers else { return vec![] };
    if matches!(peers, PeerSelector::All) && !has_ports && !has_icmps {
        // `ingress: [{}]`: selects nothing, but the section still enables default deny.
        return vec![];
    }
    let peers = Arc::new(peers);
    let mk = |sub: String, l4: L4, l7: Option<L7>| Filter {
        origin: RuleRef {
            policy: meta.clone(),
            path: sub,
        },
        direction,
        deny,
        peers: peers.clone(),
        l4,
        l7,
        priority: 0,
    };
    let rel = path.strip_prefix("spec.").unwrap_or(path).to_string();
    let mut out = Vec::new();
    if has_icmps {
        for (i, icmp) in rule.icmps.into_iter().flatten().enumerate() {
            let p = format!("{path}.icmps[{i}]");
            let types = icmp_types(icmp, &p, cx);
            out.push(mk(format!("{rel}.icmps[{i}]"), L4::Icmp(types), None));
        }
        return out;
    }
    if !has_ports {
        return vec![mk(rel, L4::Any, None)];
    }
    for (j, pr) in rule.ports.into_iter().flatten().enumerate() {
        let p = format!("{path}.toPorts[{j}]");
        for (name, set) in &pr.tls {
            if *set {
                cx.error(
                    &format!("{p}.{name}"),
                    format!("`{name}` (TLS interception) is not supported by Ward"),
                );
            }
        }
        let written = pr.ports.as_deref().unwrap_or(&[]);
        let ports = port_list(written, &p, cx);
        let l7 = pr.rules.and_then(|r| {
            l7_rules(
                r,
                &format!("{p}.rules"),
                meta,
                &format!("{rel}.toPorts[{j}]"),
                cx,
            )
        });
        if let Some(l7) = &l7 {
            check_l7_ports(l7, &ports, direction, host_policy, &p, cx);
            if l7.parser() != L7Parser::Dns {
                for (k, pp) in written.iter().enumerate() {
                    let proto = pp.protocol.as_deref().unwrap_or("ANY");
                    if !proto.eq_ignore_ascii_case("TCP") {
                        cx.error(
                            &format!("{p}.ports[{k}].protocol"),
                            format!(
                                "L7 rules can only apply to TCP (not {}) except for DNS rules; write `protocol: TCP`",
                                if proto.is_empty() { "ANY" } else { proto }
                            ),
                        );
                    }
                }
            }
        }
        let l4 = if ports.is_empty() {
            if l7.is_some() && written.is_empty() {
                cx.error(
                    &format!("{p}.ports"),
                    "L7 rules need at least one port: the proxy listens per port",
                );
            }
            L4::Any
        } else {
            L4::Ports(ports)
        };
        out.push(mk(format!("{rel}.toPorts[{j}]"), l4, l7));
    }
    out
}

fn peers(
    p: PeersIn,
    path: &str,
    direction: Direction,
    scope: Scope<'_>,
    cx: &mut DocContext<'_>,
) -> Option<PeerSelector> {
    let (pre, other) = match direction {
        Direction::Ingress => ("from", "to"),
        Direction::Egress => ("to", "from"),
    };
    let _ = other;
    for (name, set) in &p.unsupported {
        if *set {
            cx.error(
                &format!("{path}.{name}"),
                format!("`{name}` is not supported by Ward; select peers with endpoints, entities or CIDRs"),
            );
        }
    }
    let groups: Vec<&str> = [
        ("Endpoints", p.endpoints.is_some()),
        ("CIDR", p.cidr.is_some() || p.cidr_set.is_some()),
        ("Entities", p.entities.is_some()),
        ("Services", p.services.is_some()),
        ("FQDNs", p.fqdns.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| n)
    .collect();
    if groups.len() > 1 {
        cx.error(
            path,
            format!(
                "combining {} in one rule is not supported (Cilium rejects it too); write one rule per peer kind",
                groups
                    .iter()
                    .map(|g| format!("`{pre}{g}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        );
        return None;
    }
    if groups.is_empty() {
        return Some(PeerSelector::All);
    }
    let mut terms = Vec::new();
    let mut ok = true;
    for (i, sel) in p.endpoints.iter().flatten().enumerate() {
        let field = format!("{path}.{pre}Endpoints[{i}]");
        match selector(sel, &field, cx) {
            Some(mut s) => {
                inject_namespace(&mut s, scope);
                terms.push(PeerTerm::Endpoints(s));
            }
            None => ok = false,
        }
    }
    for (i, c) in p.cidr.iter().flatten().enumerate() {
        match parse_cidr(c) {
            Ok(net) => terms.push(PeerTerm::Cidr {
                net,
                except: vec![],
            }),
            Err(e) => {
                cx.error(&format!("{path}.{pre}CIDR[{i}]"), e);
                ok = false;
            }
        }
    }
    for (i, c) in p.cidr_set.iter().flatten().enumerate() {
        let field = format!("{path}.{pre}CIDRSet[{i}]");
        if c.cidr_group_ref.is_some() || c.cidr_group_selector.is_some() {
            cx.error(
                &field,
                "CIDR groups (`cidrGroupRef`/`cidrGroupSelector`) are not supported by Ward; list the CIDRs",
            );
            ok = false;
            continue;
        }
        let Some(cidr) = &c.cidr else {
            cx.error(&format!("{field}.cidr"), "`cidr` is required");
            ok = false;
            continue;
        };
        let net = match parse_cidr(cidr) {
            Ok(n) => n,
            Err(e) => {
                cx.error(&format!("{field}.cidr"), e);
                ok = false;
                continue;
            }
        };
        let mut except = Vec::new();
        for (k, e) in c.except.iter().flatten().enumerate() {
            match parse_cidr(e) {
                Ok(en) if net.contains(&en) => except.push(en),
                Ok(en) => {
                    cx.error(
                        &format!("{field}.except[{k}]"),
                        format!("{en} is not inside {net}; an `except` must be a subnet of `cidr`"),
                    );
                    ok = false;
                }
                Err(err) => {
                    cx.error(&format!("{field}.except[{k}]"), err);
                    ok = false;
                }
            }
        }
        terms.push(PeerTerm::Cidr { net, except });
    }
    for (i, e) in p.entities.iter().flatten().enumerate() {
        match Entity::parse(e) {
            Some(ent) => terms.push(PeerTerm::Entity(ent)),
            None => {
                cx.error(
                    &format!("{path}.{pre}Entities[{i}]"),
                    format!("unknown entity {e:?}; known: {}", Entity::NAMES.join(", ")),
                );
                ok = false;
            }
        }
    }
    for (i, s) in p.services.iter().flatten().enumerate() {
        let field = format!("{path}.toServices[{i}]");
        match (&s.k8s_service, &s.k8s_service_selector) {
            (Some(svc), None) => terms.push(PeerTerm::Service {
                namespace: svc.namespace.clone().unwrap_or_else(|| match scope {
                    Scope::Namespaced(ns) => ns.to_string(),
                    Scope::Clusterwide => "default".to_string(),
                }),
                name: svc.service_name.clone(),
            }),
            (None, Some(sel)) => match selector(
                &sel.selector,
                &format!("{field}.k8sServiceSelector.selector"),
                cx,
            ) {
                Some(s) => terms.push(PeerTerm::ServiceSelector {
                    namespace: sel.namespace.clone(),
                    selector: s,
                }),
                None => ok = false,
            },
            _ => {
                cx.error(
                    &field,
                    "exactly one of `k8sService` and `k8sServiceSelector` is required",
                );
                ok = false;
            }
        }
    }
    for (i, f) in p.fqdns.iter().flatten().enumerate() {
        let field = format!("{path}.toFQDNs[{i}]");
        match (&f.match_name, &f.match_pattern) {
            (Some(n), None) => match NamePattern::name(n) {
                Ok(p) => terms.push(PeerTerm::Fqdn(p)),
                Err(e) => {
                    cx.error(&format!("{field}.matchName"), e);
                    ok = false;
                }
            },
            (None, Some(pat)) => match NamePattern::pattern(pat) {
                Ok(p) => {
                    warn_star_dot(pat, p.written(), &format!("{field}.matchPattern"), cx);
                    terms.push(PeerTerm::Fqdn(p))
                }
                Err(e) => {
                    cx.error(&format!("{field}.matchPattern"), e);
                    ok = false;
                }
            },
            _ => {
                cx.error(
                    &field,
                    "exactly one of `matchName` and `matchPattern` is required",
                );
                ok = false;
            }
        }
    }
    ok.then_some(PeerSelector::Any(terms))
}

fn warn_star_dot(pattern: &str, _written: &str, field: &str, cx: &mut DocContext<'_>) {
    if let Some(base) = pattern.strip_prefix("*.") {
        if !base.contains('*') {
            cx.warn(
                field,
                format!(
                    "`{pattern}` matches names under {base} but not {base} itself; add `matchName: {base}` if it is meant"
                ),
            );
        }
    }
}

fn inject_namespace(sel: &mut LabelSelector, scope: Scope<'_>) {
    // Selectors of reserved identities (`reserved:host`) name no pod, and selectors on
    // namespace labels choose their namespaces themselves: nothing to inject.
    if sel.requirements.iter().any(|r| {
        r.source.as_deref() == Some(SOURCE_RESERVED) || r.key.starts_with(NAMESPACE_LABELS_PREFIX)
    }) {
        return;
    }
    let key = format!("{SOURCE_K8S}:{POD_NAMESPACE}");
    match scope {
        Scope::Namespaced(ns) => {
            sel.inject_if_absent(Requirement::new(&key, Operator::In(vec![ns.to_string()])))
        }
        Scope::Clusterwide => sel.inject_if_absent(Requirement::new(&key, Operator::Exists)),
    }
}

/// Compiles `matchLabels` + `matchExpressions`.
pub fn selector(s: &raw::Selector, path: &str, cx: &mut DocContext<'_>) -> Option<LabelSelector> {
    let mut out = LabelSelector::default();
    let mut ok = true;
    for (k, v) in s.match_labels.iter().flatten() {
        if k.is_empty() {
            cx.error(&format!("{path}.matchLabels"), "empty label key");
            ok = false;
            continue;
        }
        out.requirements.push(Requirement::new(
            k,
            Operator::In(vec![v.clone().into_string()]),
        ));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let field = format!("{path}.matchExpressions[{i}]");
        let values: Vec<String> = e
            .values
            .iter()
            .flatten()
            .cloned()
            .map(raw::StringLike::into_string)
            .collect();
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                cx.error(
                    &format!("{field}.values"),
                    format!("operator {} needs at least one value", e.operator),
                );
                ok = false;
                continue;
            }
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                cx.error(
                    &format!("{field}.values"),
                    format!("operator {} takes no values", e.operator),
                );
                ok = false;
                continue;
            }
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                cx.error(
                    &format!("{field}.operator"),
                    format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                );
                ok = false;
                continue;
            }
        };
        out.requirements.push(Requirement::new(&e.key, op));
    }
    ok.then_some(out)
}

/// Parses a CIDR or a bare address (→ /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{text} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR (like 10.0.0.0/8) or an IP address"))
}

fn port_list(list: &[raw::PortProtocol], path: &str, cx: &mut DocContext<'_>) -> Vec<PortMatch> {
    if list.len() > MAX_PORTS_PER_RULE {
        cx.error(
            &format!("{path}.ports"),
            format!(
                "{} ports in one toPorts element; at most {MAX_PORTS_PER_RULE} are allowed",
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (k, pp) in list.iter().enumerate() {
        let field = format!("{path}.ports[{k}]");
        let protos: Vec<Protocol> = match pp.protocol.as_deref() {
            None | Some("") | Some("ANY") | Some("any") => {
                vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            }
            Some(p) => match Protocol::parse(p) {
                Some(Protocol::Tcp) => vec![Protocol::Tcp],
                Some(Protocol::Udp) => vec![Protocol::Udp],
                Some(Protocol::Sctp) => vec![Protocol::Sctp],
                _ => {
                    cx.error(
                        &format!("{field}.protocol"),
                        format!("unknown protocol {p:?}; use TCP, UDP, SCTP or ANY (ICMP goes in `icmps`)"),
                    );
                    continue;
                }
            },
        };
        let Some(port) = parse_port(pp.port.clone(), pp.end_port, &field, cx) else {
            continue;
        };
        for protocol in protos {
            out.push(PortMatch {
                protocol,
                port: port.clone(),
            });
        }
    }
    out
}

fn parse_port(
    port: Option<raw::StringLike>,
    end_port: Option<i64>,
    field: &str,
    cx: &mut DocContext<'_>,
) -> Option<Port> {
    let text = port.map(raw::StringLike::into_string).unwrap_or_default();
    let start: u16 = if text.is_empty() {
        0
    } else if let Ok(n) = text.parse::<i64>() {
        match u16::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                cx.error(
                    &format!("{field}.port"),
                    format!("port {n} is outside 0-65535"),
                );
                return None;
            }
        }
    } else {
        let valid = text.len() <= 15
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && text.chars().any(|c| c.is_ascii_lowercase())
            && !text.starts_with('-')
            && !text.ends_with('-');
        if !valid {
            cx.error(
                &format!("{field}.port"),
                format!("{text:?} is neither a port number nor a valid port name (lower-case IANA service name)"),
            );
            return None;
        }
        if end_port.is_some() {
            cx.error(
                &format!("{field}.endPort"),
                "`endPort` cannot be used with a named port",
            );
            return None;
        }
        return Some(Port::Named(text));
    };
    match end_port {
        None | Some(0) => Some(if start == 0 {
            Port::Range(0, u16::MAX)
        } else {
            Port::Range(start, start)
        }),
        Some(e) => {
            let Ok(e) = u16::try_from(e) else {
                cx.error(
                    &format!("{field}.endPort"),
                    format!("endPort {e} is outside 0-65535"),
                );
                return None;
            };
            if start == 0 {
                cx.error(
                    &format!("{field}.endPort"),
                    "`endPort` needs a non-zero `port`",
                );
                return None;
            }
            if e < start {
                cx.error(
                    &format!("{field}.endPort"),
                    format!("endPort {e} is below port {start}"),
                );
                return None;
            }
            Some(Port::Range(start, e))
        }
    }
}

fn icmp_types(icmp: raw::IcmpRule, path: &str, cx: &mut DocContext<'_>) -> Vec<(Protocol, u8)> {
    let mut out = Vec::new();
    for (i, f) in icmp.fields.into_iter().flatten().enumerate() {
        let field = format!("{path}.fields[{i}]");
        let proto = match f.family.as_deref().unwrap_or("IPv4") {
            "IPv4" => Protocol::Icmp,
            "IPv6" => Protocol::Icmpv6,
            other => {
                cx.error(
                    &format!("{field}.family"),
                    format!("unknown family {other:?}; use IPv4 or IPv6"),
                );
                continue;
            }
        };
        let text = f.icmp_type.into_string();
        let ty = match text.parse::<u8>() {
            Ok(t) => Some(t),
            Err(_) => icmp_type_by_name(&text, proto == Protocol::Icmpv6),
        };
        match ty {
            Some(t) => out.push((proto, t)),
            None => cx.error(
                &format!("{field}.type"),
                format!("{text:?} is not an ICMP type number (0-255) or a known type name"),
            ),
        }
    }
    out
}

/// Cilium's ICMP type names.
fn icmp_type_by_name(name: &str, v6: bool) -> Option<u8> {
    let v4 = [
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    let v6t = [
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
    ];
    let table: &[(&str, u8)] = if v6 { &v6t } else { &v4 };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn check_l7_ports(
    l7: &L7,
    ports: &[PortMatch],
    direction: Direction,
    host_policy: bool,
    path: &str,
    cx: &mut DocContext<'_>,
) {
    let parser = l7.parser();
    if parser == L7Parser::Dns && direction == Direction::Ingress {
        cx.error(
            &format!("{path}.rules.dns"),
            "DNS rules are only valid on egress",
        );
    }
    if host_policy && !(parser == L7Parser::Dns && direction == Direction::Egress) {
        cx.error(
            &format!("{path}.rules"),
            "host policies (nodeSelector) only support DNS L7 rules on egress",
        );
    }
    for (k, pm) in ports.iter().enumerate() {
        let _ = k;
        match &pm.port {
            Port::Range(0, u16::MAX) => cx.error(
                &format!("{path}.ports"),
                "L7 rules need an explicit port; port 0 (all ports) is rejected",
            ),
            Port::Range(lo, hi) if lo != hi && parser == L7Parser::Dns => cx.error(
                &format!("{path}.ports"),
                "DNS rules cannot use port ranges (`endPort`)",
            ),
            _ => {}
        }
    }
}

fn l7_rules(
    r: raw::L7Rules,
    path: &str,
    meta: &Arc<PolicyMeta>,
    rel: &str,
    cx: &mut DocContext<'_>,
) -> Option<L7> {
    if r.l7proto.is_some() || r.l7.is_some() {
        cx.error(
            &format!("{path}.l7proto"),
            "generic `l7proto`/`l7` rules (proxylib parsers) are not supported by Ward",
        );
    }
    let kinds: Vec<&str> = [
        ("http", r.http.is_some() || r.grpc.is_some()),
        ("kafka", r.kafka.is_some()),
        ("dns", r.dns.is_some()),
    ]
    .into_iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| n)
    .collect();
    if kinds.len() > 1 {
        cx.error(
            path,
            format!(
                "multiple L7 protocol rule types specified in single rule ({}); use one per toPorts element",
                kinds.join(", ")
            ),
        );
        return None;
    }
    let origin = |sub: String| RuleRef {
        policy: meta.clone(),
        path: sub,
    };
    if r.http.is_some() || r.grpc.is_some() {
        let mut rules = Vec::new();
        let http = r.http.unwrap_or_default();
        let grpc = r.grpc.unwrap_or_default();
        if http.is_empty() && grpc.is_empty() {
            // `http: []` is "no L7 rules": plain L4 allow, no redirect (§1.4).
            return None;
        }
        for (i, h) in http.into_iter().enumerate() {
            if let Some(rule) = http_rule(
                h,
                &format!("{path}.http[{i}]"),
                origin(format!("{rel}.rules.http[{i}]")),
                cx,
            ) {
                rules.push(Arc::new(rule));
            }
        }
        for (i, g) in grpc.into_iter().enumerate() {
            if let Some(rule) = grpc_rule(
                g,
                &format!("{path}.grpc[{i}]"),
                origin(format!("{rel}.rules.grpc[{i}]")),
                cx,
            ) {
                rules.push(Arc::new(rule));
            }
        }
        return Some(L7::Http(rules));
    }
    if let Some(kafka) = r.kafka {
        if kafka.is_empty() {
            return None;
        }
        let mut rules = Vec::new();
        for (i, k) in kafka.into_iter().enumerate() {
            if let Some(rule) = kafka_rule(
                k,
                &format!("{path}.kafka[{i}]"),
                origin(format!("{rel}.rules.kafka[{i}]")),
                cx,
            ) {
                rules.push(Arc::new(rule));
            }
        }
        return Some(L7::Kafka(rules));
    }
    if let Some(dns) = r.dns {
        if dns.is_empty() {
            return None;
        }
        let mut patterns = Vec::new();
        for (i, d) in dns.iter().enumerate() {
            let field = format!("{path}.dns[{i}]");
            let o = origin(format!("{rel}.rules.dns[{i}]"));
            match (&d.match_name, &d.match_pattern) {
                (Some(n), None) => match NamePattern::name(n) {
                    Ok(p) => patterns.push((p, o)),
                    Err(e) => cx.error(&format!("{field}.matchName"), e),
                },
                (None, Some(pat)) => match NamePattern::pattern(pat) {
                    Ok(p) => {
                        let base_listed = pat.strip_prefix("*.").is_some_and(|base| {
                            dns.iter().any(|o| {
                                o.match_name.as_deref().map(|n| n.trim_end_matches('.'))
                                    == Some(base.trim_end_matches('.'))
                            })
                        });
                        if !base_listed {
                            warn_star_dot(pat, p.written(), &format!("{field}.matchPattern"), cx);
                        }
                        patterns.push((p, o))
                    }
                    Err(e) => cx.error(&format!("{field}.matchPattern"), e),
                },
                (Some(_), Some(_)) => cx.error(
                    &field,
                    "`matchName` and `matchPattern` are mutually exclusive; write two entries",
                ),
                (None, None) => {
                    cx.error(&field, "one of `matchName` or `matchPattern` is required")
                }
            }
        }
        return Some(L7::Dns(patterns));
    }
    None
}

fn compile_pattern(
    source: &str,
    field: &str,
    what: &str,
    cx: &mut DocContext<'_>,
) -> Option<Pattern> {
    match Pattern::compile(source) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.error(field, format!("invalid {what} regex {source:?}: {e}"));
            None
        }
    }
}

fn http_rule(
    h: raw::HttpRule,
    path: &str,
    origin: RuleRef,
    cx: &mut DocContext<'_>,
) -> Option<HttpRule> {
    let errors_before = cx.diags.len();
    let method = h
        .method
        .as_deref()
        .map(|m| compile_pattern(m, &format!("{path}.method"), "method", cx));
    let url = h
        .path
        .as_deref()
        .map(|p| compile_pattern(p, &format!("{path}.path"), "path", cx));
    let host = h
        .host
        .as_deref()
        .map(|p| compile_pattern(p, &format!("{path}.host"), "host", cx));
    let mut headers = Vec::new();
    for (i, text) in h.headers.iter().flatten().enumerate() {
        let field = format!("{path}.headers[{i}]");
        // Envoy/Cilium: split on the first space; the key loses a trailing ':'.
        let (key, value) = match text.split_once(' ') {
            Some((k, v)) => (k.trim_end_matches(':'), Some(v)),
            None => (text.as_str(), None),
        };
        if value.is_none() && key.contains(':') {
            cx.warn(
                &field,
                format!(
                    "header {text:?} has no space after ':', so Cilium reads it as a presence check for a header literally named {key:?}, which no request carries; write {:?}",
                    text.replacen(':', ": ", 1)
                ),
            );
        }
        if key.is_empty() {
            cx.error(&field, "empty header name");
            continue;
        }
        headers.push(HeaderRequirement {
            name: key.to_ascii_lowercase().into(),
            value: value.map(Into::into),
        });
    }
    let mut header_matches = Vec::new();
    for (i, hm) in h.header_matches.into_iter().flatten().enumerate() {
        let field = format!("{path}.headerMatches[{i}]");
        let Some(name) = hm.name.filter(|n| !n.is_empty()) else {
            cx.error(&format!("{field}.name"), "`name` is required");
            continue;
        };
        let mismatch = match hm.mismatch.as_deref().unwrap_or("") {
            "" => MismatchAction::Fail,
            "LOG" => MismatchAction::Log,
            "ADD" => MismatchAction::Add,
            "DELETE" => MismatchAction::Delete,
            "REPLACE" => MismatchAction::Replace,
            other => {
                cx.error(
                    &format!("{field}.mismatch"),
                    format!("unknown mismatch action {other:?}; use LOG, ADD, DELETE or REPLACE (or omit it)"),
                );
                continue;
            }
        };
        // Ward reads no Kubernetes secrets: a secret without an inline value can never match.
        let unreadable_secret = hm.secret.is_some() && hm.value.is_none();
        if unreadable_secret {
            cx.warn(
                &format!("{field}.secret"),
                "Ward cannot read Kubernetes secrets: without an inline `value` this header match never succeeds and the rule denies",
            );
        }
        if matches!(mismatch, MismatchAction::Add | MismatchAction::Replace)
            && hm.value.is_none()
            && hm.secret.is_none()
        {
            cx.error(&format!("{field}.value"), "ADD and REPLACE need a `value`");
            continue;
        }
        header_matches.push(HeaderMatch {
            name: name.to_ascii_lowercase().into(),
            value: hm.value.map(Into::into),
            mismatch,
            secret: hm.secret.is_some(),
            unreadable_secret,
        });
    }
    if cx.diags[errors_before..]
        .iter()
        .any(|d| d.severity == crate::diag::Severity::Error)
    {
        return None;
    }
    let mut summary = http_summary(
        h.method.as_deref(),
        h.path.as_deref(),
        h.host.as_deref(),
        h.headers.as_deref().unwrap_or(&[]),
    );
    for hm in &header_matches {
        match (&hm.value, hm.secret) {
            (_, true) => summary.push_str(&format!(" [{}: [redacted]]", hm.name)),
            (Some(v), false) => summary.push_str(&format!(" [{}: {v}]", hm.name)),
            (None, false) => summary.push_str(&format!(" [{}]", hm.name)),
        }
    }
    Some(HttpRule {
        method: method.flatten(),
        path: url.flatten(),
        host: host.flatten(),
        headers,
        header_matches,
        origin,
        summary,
    })
}

fn http_summary(
    method: Option<&str>,
    path: Option<&str>,
    host: Option<&str>,
    headers: &[String],
) -> String {
    let mut s = format!("{} {}", method.unwrap_or("*"), path.unwrap_or("*"));
    if let Some(h) = host {
        s.push_str(&format!(" host {h}"));
    }
    for h in headers {
        s.push_str(&format!(" [{h}]"));
    }
    s
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Ward's native gRPC form: `{service: "pkg.Svc", method: "Get"}` is `POST /pkg.Svc/Get`.
fn grpc_rule(
    g: raw::GrpcRule,
    path: &str,
    origin: RuleRef,
    cx: &mut DocContext<'_>,
) -> Option<HttpRule> {
    if !g.service.split('.').all(is_ident) {
        cx.error(
            &format!("{path}.service"),
            format!(
                "{:?} is not a fully-qualified gRPC service name like \"pkg.Service\"",
                g.service
            ),
        );
        return None;
    }
    if let Some(m) = &g.method {
        if !is_ident(m) {
            cx.error(
                &format!("{path}.method"),
                format!("{m:?} is not a gRPC method name"),
            );
            return None;
        }
    }
    let service_re = regex::escape(&g.service);
    let path_re = match &g.method {
        Some(m) => format!("/{service_re}/{m}"),
        None => format!("/{service_re}/[^/?]+"),
    };
    let summary = format!("gRPC {}/{}", g.service, g.method.as_deref().unwrap_or("*"));
    Some(HttpRule {
        method: Some(Pattern::compile("POST").ok()?),
        path: Some(Pattern::compile(&path_re).ok()?),
        host: None,
        headers: vec![],
        header_matches: vec![],
        origin,
        summary,
    })
}

fn kafka_rule(
    k: raw::KafkaRule,
    path: &str,
    origin: RuleRef,
    cx: &mut DocContext<'_>,
) -> Option<KafkaRule> {
    let mut ok = true;
    let mut api_keys = ApiKeySet::default();
    match (&k.role, &k.api_key) {
        (Some(_), Some(_)) => {
            cx.error(path, "`role` and `apiKey` are mutually exclusive");
            ok = false;
        }
        (Some(role), None) => match role.to_ascii_lowercase().as_str() {
            "produce" => api_keys = ApiKeySet::from_keys(parsers::kafka::ROLE_PRODUCE),
            "consume" => api_keys = ApiKeySet::from_keys(parsers::kafka::ROLE_CONSUME),
            other => {
                cx.error(
                    &format!("{path}.role"),
                    format!("unknown role {other:?}; use produce or consume"),
                );
                ok = false;
            }
        },
        (None, Some(key)) => match parsers::kafka::api_key_from_name(key) {
            Some(n) => api_keys.insert(n),
            None => {
                cx.error(
                    &format!("{path}.apiKey"),
                    format!("unknown Kafka API key {key:?}"),
                );
                ok = false;
            }
        },
        (None, None) => {}
    }
    let api_version = match k.api_version.map(raw::StringLike::into_string) {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => match s.parse::<i16>() {
            Ok(v) if v >= 0 => Some(v),
            _ => {
                cx.error(
                    &format!("{path}.apiVersion"),
                    format!("{s:?} is not a Kafka API version (0-32767)"),
                );
                ok = false;
                None
            }
        },
    };
    let topic = k.topic.filter(|t| !t.is_empty());
    if let Some(t) = &topic {
        if t.len() > MAX_KAFKA_TOPIC_LEN {
            cx.error(
                &format!("{path}.topic"),
                format!("topic longer than {MAX_KAFKA_TOPIC_LEN} characters"),
            );
            ok = false;
        } else if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            cx.error(
                &format!("{path}.topic"),
                format!("{t:?} is not a valid topic name (letters, digits, '.', '_', '-')"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let summary = format!(
        "{} topic {}{}",
        k.role
            .as_deref()
            .map(|r| format!("role {r}"))
            .or(k.api_key.as_deref().map(|a| format!("apiKey {a}")))
            .unwrap_or_else(|| "any request".into()),
        topic.as_deref().unwrap_or("*"),
        k.client_id
            .as_deref()
            .map(|c| format!(" clientID {c}"))
            .unwrap_or_default()
    );
    Some(KafkaRule {
        api_keys,
        api_version,
        client_id: k.client_id.filter(|c| !c.is_empty()).map(Into::into),
        topic: topic.map(Into::into),
        origin,
        summary,
    })
}

/// Compiles a Kubernetes NetworkPolicy (Cilium's translation of it).
pub fn k8s_policy(
    raw: raw::K8sNetworkPolicy,
    meta: Arc<PolicyMeta>,
    cx: &mut DocContext<'_>,
) -> Option<Policy> {
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let scope = Scope::Namespaced(&ns);
    let mut subject = selector(&raw.spec.pod_selector, "spec.podSelector", cx)?;
    subject.inject_if_absent(Requirement::new(
        &format!("{SOURCE_K8S}:{POD_NAMESPACE}"),
        Operator::In(vec![ns.clone()]),
    ));
    let (mut has_in, mut has_eg) = (
        true,
        raw.spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
    );
    if let Some(types) = &raw.spec.policy_types {
        has_in = false;
        has_eg = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => has_in = true,
                "Egress" => has_eg = true,
                other => cx.error(
                    &format!("spec.policyTypes[{i}]"),
                    format!("unknown policy type {other:?}; use Ingress or Egress"),
                ),
            }
        }
    }
    let mut ingress = DirectionRules {
        present: has_in,
        default_deny: has_in,
        filters: vec![],
    };
    let mut egress = DirectionRules {
        present: has_eg,
        default_deny: has_eg,
        filters: vec![],
    };
    let mk_peers = |peers: &Option<Vec<raw::K8sPeer>>,
                    path: &str,
                    cx: &mut DocContext<'_>|
     -> Option<PeerSelector> {
        let Some(list) = peers.as_ref().filter(|l| !l.is_empty()) else {
            return Some(PeerSelector::All);
        };
        let mut terms = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let field = format!("{path}[{i}]");
            match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
                (Some(b), None, None) => {
                    let net = match parse_cidr(&b.cidr) {
                        Ok(n) => n,
                        Err(e) => {
                            cx.error(&format!("{field}.ipBlock.cidr"), e);
                            return None;
                        }
                    };
                    let mut except = Vec::new();
                    for (k, e) in b.except.iter().flatten().enumerate() {
                        match parse_cidr(e) {
                            Ok(en) if net.contains(&en) => except.push(en),
                            Ok(en) => {
                                cx.error(
                                    &format!("{field}.ipBlock.except[{k}]"),
                                    format!("{en} is not inside {net}"),
                                );
                                return None;
                            }
                            Err(err) => {
                                cx.error(&format!("{field}.ipBlock.except[{k}]"), err);
                                return None;
                            }
                        }
                    }
                    terms.push(PeerTerm::Cidr { net, except });
                }
                (Some(_), _, _) => {
                    cx.error(
                        &format!("{field}.ipBlock"),
                        "`ipBlock` cannot be combined with `podSelector`/`namespaceSelector`",
                    );
                    return None;
                }
                (None, pod, nsel) => {
                    let mut sel = match pod {
                        Some(ps) => selector(ps, &format!("{field}.podSelector"), cx)?,
                        None => LabelSelector::default(),
                    };
                    match nsel {
                        None => inject_namespace(&mut sel, Scope::Namespaced(&ns)),
                        Some(n) => {
                            let nsel = selector(n, &format!("{field}.namespaceSelector"), cx)?;
                            for r in nsel.requirements {
                                sel.requirements.push(Requirement {
                                    source: Some(SOURCE_K8S.to_string()),
                                    key: format!("{NAMESPACE_LABELS_PREFIX}{}", r.key),
                                    op: r.op,
                                });
                            }
                            sel.inject_if_absent(Requirement::new(
                                &format!("{SOURCE_K8S}:{POD_NAMESPACE}"),
                                Operator::Exists,
                            ));
                        }
                    }
                    terms.push(PeerTerm::Endpoints(sel));
                }
            }
        }
        Some(PeerSelector::Any(terms))
    };
    let k8s_ports =
        |ports: &Option<Vec<raw::K8sPort>>, path: &str, cx: &mut DocContext<'_>| -> L4 {
            let Some(list) = ports.as_ref().filter(|l| !l.is_empty()) else {
                return L4::Any;
            };
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let field = format!("{path}[{i}]");
                let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    other => {
                        cx.error(
                            &format!("{field}.protocol"),
                            format!("unknown protocol {other:?}; use TCP, UDP or SCTP"),
                        );
                        continue;
                    }
                };
                if let Some(port) = parse_port(p.port.clone(), p.end_port, &field, cx) {
                    out.push(PortMatch {
                        protocol: proto,
                        port,
                    });
                }
            }
            L4::Ports(out)
        };
    let _ = scope;
    for (i, r) in raw.spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{i}]");
        let Some(peers) = mk_peers(&r.from, &format!("{path}.from"), cx) else {
            continue;
        };
        let l4 = k8s_ports(&r.ports, &format!("{path}.ports"), cx);
        ingress.filters.push(Filter {
            origin: RuleRef {
                policy: meta.clone(),
                path: format!("ingress[{i}]"),
            },
            direction: Direction::Ingress,
            deny: false,
            peers: Arc::new(peers),
            l4,
            l7: None,
            priority: 0,
        });
    }
    for (i, r) in raw.spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{i}]");
        let Some(peers) = mk_peers(&r.to, &format!("{path}.to"), cx) else {
            continue;
        };
        let l4 = k8s_ports(&r.ports, &format!("{path}.ports"), cx);
        egress.filters.push(Filter {
            origin: RuleRef {
                policy: meta.clone(),
                path: format!("egress[{i}]"),
            },
            direction: Direction::Egress,
            deny: false,
            peers: Arc::new(peers),
            l4,
            l7: None,
            priority: 0,
        });
    }
    if raw.spec.ingress.as_ref().is_some_and(|v| !v.is_empty()) && !has_in {
        cx.warn(
            "spec.ingress",
            "`policyTypes` does not list Ingress, so these ingress rules are ignored",
        );
        ingress.filters.clear();
    }
    if raw.spec.egress.as_ref().is_some_and(|v| !v.is_empty()) && !has_eg {
        cx.warn(
            "spec.egress",
            "`policyTypes` does not list Egress, so these egress rules are ignored",
        );
        egress.filters.clear();
    }
    Some(Policy {
        meta,
        spec_path: "spec".into(),
        subject: Subject::Endpoints(subject),
        ingress,
        egress,
        description: None,
    })
}

/// Labels of a Service object as a label set (`k8s:` source), for `k8sServiceSelector`.
pub fn service_labels(labels: &BTreeMap<String, String>) -> LabelSet {
    LabelSet::new(
        labels
            .iter()
            .map(|(k, v)| Label::new(SOURCE_K8S, k, v))
            .collect(),
    )
}
