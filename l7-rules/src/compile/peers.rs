//! Peer selectors: endpoints, namespaces, CIDRs, entities, services and FQDN patterns.

use super::rule::*;
use crate::diag::DocContext;
use crate::identity::Entity;
use crate::l7::dns::NamePattern;
use crate::labels::{NAMESPACE_LABELS_PREFIX, POD_NAMESPACE, SOURCE_K8S, SOURCE_RESERVED};
use crate::model::*;
use crate::raw;
use crate::selector::{LabelSelector, Operator, Requirement};
use ipnet::IpNet;
use std::net::IpAddr;

pub(super) fn peers(
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

pub(super) fn warn_star_dot(pattern: &str, _written: &str, field: &str, cx: &mut DocContext<'_>) {
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

pub(super) fn inject_namespace(sel: &mut LabelSelector, scope: Scope<'_>) {
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
