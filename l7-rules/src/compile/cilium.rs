//! CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy documents → policies, and one
//! rule → its filters (one per `toPorts` / `icmps` element).

use super::l7::*;
use super::peers::*;
use super::ports::*;
use super::rule::*;
use crate::diag::DocContext;
use crate::labels::{POD_NAMESPACE, SOURCE_K8S};
use crate::model::*;
use crate::raw;
use crate::selector::{Operator, Requirement};
use std::sync::Arc;

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

pub(super) fn cilium_rule(
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

#[allow(clippy::too_many_arguments)]
pub(super) fn filters(
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
