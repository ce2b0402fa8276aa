//! The shape every policy kind's rules are compiled from: a rule's peers, ports and L7
//! rules whichever direction it is, and how peer selectors get their namespace.

use crate::raw;

/// How peer endpoint selectors get a namespace requirement added.
#[derive(Clone, Copy)]
pub(super) enum Scope<'a> {
    /// CNP / NetworkPolicy: `k8s:io.kubernetes.pod.namespace=<ns>`.
    Namespaced(&'a str),
    /// CCNP: `k8s:io.kubernetes.pod.namespace` must exist (pods only).
    Clusterwide,
}

/// The L3 fields of a rule, whichever direction it is.
pub(super) struct PeersIn {
    pub(super) endpoints: Option<Vec<raw::Selector>>,
    pub(super) cidr: Option<Vec<String>>,
    pub(super) cidr_set: Option<Vec<raw::CidrRule>>,
    pub(super) entities: Option<Vec<String>>,
    pub(super) services: Option<Vec<raw::ServiceRef>>,
    pub(super) fqdns: Option<Vec<raw::FqdnSelector>>,
    pub(super) unsupported: Vec<(&'static str, bool)>,
}

/// A `toPorts` element, allow or deny form.
pub(super) struct PortsIn {
    pub(super) ports: Option<Vec<raw::PortProtocol>>,
    pub(super) rules: Option<raw::L7Rules>,
    pub(super) tls: Vec<(&'static str, bool)>,
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

pub(super) struct RuleIn {
    pub(super) peers: PeersIn,
    pub(super) ports: Option<Vec<PortsIn>>,
    pub(super) icmps: Option<Vec<raw::IcmpRule>>,
}

pub(super) fn rules_in<R: Into<RuleIn>>(rules: Option<Vec<R>>) -> Option<Vec<RuleIn>> {
    rules.map(|v| v.into_iter().map(Into::into).collect())
}

pub(super) fn ports_in<P: Into<PortsIn>>(ports: Option<Vec<P>>) -> Option<Vec<PortsIn>> {
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
