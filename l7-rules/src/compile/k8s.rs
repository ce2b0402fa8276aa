//! Kubernetes NetworkPolicy → policies.

use super::peers::*;
use super::ports::*;
use super::rule::*;
use crate::diag::DocContext;
use crate::labels::{Label, LabelSet, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE, SOURCE_K8S};
use crate::model::*;
use crate::raw;
use crate::selector::{LabelSelector, Operator, Requirement};
use std::collections::BTreeMap;
use std::sync::Arc;

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
