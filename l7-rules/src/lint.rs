//! Warnings that need more than one rule in view: the known traps of
//! docs/policy-semantics.md §2.2.

use crate::diag::{Diagnostic, Severity};
use crate::model::*;

/// Two port lists share at least one (protocol, port).
fn overlaps(a: &L4, b: &L4) -> bool {
    match (a, b) {
        (L4::Any, _) | (_, L4::Any) => true,
        (L4::Ports(x), L4::Ports(y)) => x.iter().any(|p| {
            y.iter().any(|q| {
                p.protocol == q.protocol
                    && match (&p.port, &q.port) {
                        (Port::Range(a0, a1), Port::Range(b0, b1)) => a0 <= b1 && b0 <= a1,
                        (Port::Named(m), Port::Named(n)) => m == n,
                        _ => false,
                    }
            })
        }),
        _ => false,
    }
}

fn subject_key(s: &Subject) -> String {
    match s {
        Subject::Endpoints(sel) => format!("ep:{sel}"),
        Subject::Nodes(sel) => format!("node:{sel}"),
    }
}

/// Whether every endpoint `a` selects is also selected by `b`, as far as can be told without
/// endpoints: same selector, or `b` only constrains the namespace and `a` has the same one.
fn subject_covers(b: &Subject, a: &Subject) -> bool {
    if subject_key(a) == subject_key(b) {
        return true;
    }
    match (a, b) {
        (Subject::Endpoints(sa), Subject::Endpoints(sb)) => {
            sb.requirements.iter().all(|r| sa.requirements.contains(r))
        }
        _ => false,
    }
}

/// `toFQDNs` needs DNS visibility: addresses are learned only from answers that pass a
/// `rules.dns` port, so without one the rule never allows anything.
pub fn fqdn_without_dns(policies: &[Policy], diags: &mut Vec<Diagnostic>) {
    let has_dns = policies.iter().any(|p| {
        p.egress
            .filters
            .iter()
            .any(|f| matches!(f.l7, Some(L7::Dns(_))))
    });
    if has_dns {
        return;
    }
    for p in policies {
        for f in &p.egress.filters {
            if let PeerSelector::Any(terms) = &*f.peers {
                if terms.iter().any(|t| matches!(t, PeerTerm::Fqdn(_))) {
                    diags.push(Diagnostic {
                        severity: Severity::Warning,
                        origin: f.origin.policy.origin(),
                        object: Some(format!("{} {}", f.origin.policy.kind.as_str(), f.origin.policy.id())),
                        field: f.origin.path.clone(),
                        message: "toFQDNs only allows addresses learned from DNS answers that pass a `rules.dns` port, and no policy has one: add an egress rule to your DNS server with `rules: {dns: [{matchPattern: \"*\"}]}`".into(),
                    });
                    break;
                }
            }
        }
    }
}

/// An L4-only allow on the same subject, direction, port and (a superset of the) peers makes
/// the L7 rules of another rule ineffective: every request is allowed (§2.2, case 7A/7B).
pub fn cross_policy_warnings(policies: &[Policy], diags: &mut Vec<Diagnostic>) {
    for p in policies {
        for dir in [Direction::Ingress, Direction::Egress] {
            for a in p
                .direction(dir)
                .filters
                .iter()
                .filter(|f| f.l7.is_some() && !f.deny)
            {
                let neutraliser = policies
                    .iter()
                    .filter(|q| subject_covers(&q.subject, &p.subject))
                    .flat_map(|q| q.direction(dir).filters.iter())
                    .find(|b| {
                        !b.deny
                            && b.l7.is_none()
                            && overlaps(&a.l4, &b.l4)
                            && (b.peers.is_wildcard()
                                || format!("{:?}", b.peers) == format!("{:?}", a.peers))
                    });
                if let Some(b) = neutraliser {
                    diags.push(Diagnostic {
                        severity: Severity::Warning,
                        origin: a.origin.policy.origin(),
                        object: Some(format!(
                            "{} {}",
                            a.origin.policy.kind.as_str(),
                            a.origin.policy.id()
                        )),
                        field: a.origin.path.clone(),
                        message: format!(
                            "the L4-only allow at {} covers the same port and peers, so these L7 rules have no effect: every request is allowed (traffic still goes through the proxy)",
                            b.origin
                        ),
                    });
                }
            }
        }
    }
}
