//! The desired contents of the maps, as the proxy computes them, and their
//! translation to map keys/values.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    common::{self, EndpointValue, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue},
    Error, Result,
};

/// How an endpoint's host-side veth is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    Index(u32),
    /// Resolved with `if_nametoindex` in the calling thread's network namespace.
    Name(String),
}

/// A local endpoint (pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Non-zero.
    pub endpoint_id: u16,
    pub interface: Interface,
    /// Each becomes a /32 ipcache entry `{identity, endpoint_id}`.
    pub ips: Vec<Ipv4Addr>,
    pub identity: u32,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    /// Policy drops become allows with an AUDIT event.
    pub audit: bool,
}

/// An ipcache entry for a non-endpoint prefix (or an endpoint on another node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub identity: u32,
    /// 0 unless a local endpoint. A non-zero id must name an endpoint listed in
    /// the same [`DesiredState`] and is only valid on a /32 (validated by `apply`).
    pub endpoint_id: u16,
}

impl IpcacheEntry {
    /// Its LPM key (prefix length, masked address) and value.
    pub(crate) fn compile(&self) -> Result<((u32, IpcacheKey), IpcacheValue)> {
        if self.prefix_len > 32 {
            return Err(Error::Invalid(format!("ipcache {self:?}: prefix > 32")));
        }
        let masked = u32::from(self.addr)
            & u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0);
        let key = (
            u32::from(self.prefix_len),
            IpcacheKey {
                addr: masked.to_be_bytes(),
            },
        );
        let val = IpcacheValue {
            identity: self.identity,
            endpoint_id: self.endpoint_id,
            flags: 0,
        };
        Ok((key, val))
    }
}

/// One L3/L4 policy map entry of one endpoint (Cilium's key + value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub endpoint_id: u16,
    /// Peer identity; 0 = any peer.
    pub identity: u32,
    /// `true` = the endpoint's egress policy (peer is the destination).
    pub egress: bool,
    /// IP protocol number; 0 = any protocol (then port and prefix must be 0).
    pub proto: u8,
    /// Port (ICMP: type); bits beyond `port_prefix_len` must be zero.
    pub port: u16,
    /// 0 = any port of `proto`, 16 = exact port, in between = a range block
    /// (see [`port_range_prefixes`]).
    pub port_prefix_len: u8,
    pub deny: bool,
    /// 0 = no redirect.
    pub proxy_port: u16,
    /// Higher wins; see `common::precedence`.
    pub precedence: u32,
    /// Opaque rule id copied into events.
    pub cookie: u32,
}

/// Everything the maps should contain (endpoints, ipcache, policy). `apply`
/// makes the maps equal to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub endpoints: Vec<Endpoint>,
    pub ipcache: Vec<IpcacheEntry>,
    pub policy: Vec<PolicyEntry>,
}

/// Per-map result of a diff.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub written: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

/// What `apply` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub endpoints: MapDiff,
    pub ipcache: MapDiff,
    pub policy: MapDiff,
}

impl ApplyStats {
    pub fn written(&self) -> usize {
        self.endpoints.written + self.ipcache.written + self.policy.written
    }
    pub fn deleted(&self) -> usize {
        self.endpoints.deleted + self.ipcache.deleted + self.policy.deleted
    }
}

pub(crate) struct Compiled {
    pub endpoints: BTreeMap<u32, EndpointValue>,
    pub ipcache: BTreeMap<(u32, IpcacheKey), IpcacheValue>,
    pub policy: BTreeMap<(u32, PolicyKey), PolicyValue>,
}

impl PolicyEntry {
    /// The LPM key (prefix length, data) of this entry.
    pub fn key(&self) -> Result<(u32, PolicyKey)> {
        if self.port_prefix_len > 16 {
            return Err(Error::Invalid(format!(
                "policy entry {self:?}: port_prefix_len > 16"
            )));
        }
        if self.proto == 0 && (self.port != 0 || self.port_prefix_len != 0) {
            return Err(Error::Invalid(format!(
                "policy entry {self:?}: a port needs a protocol"
            )));
        }
        let mask: u16 = if self.port_prefix_len == 0 {
            0
        } else {
            u16::MAX << (16 - self.port_prefix_len)
        };
        if self.port & !mask != 0 {
            return Err(Error::Invalid(format!(
                "policy entry {self:?}: port has bits beyond its prefix"
            )));
        }
        if self.deny && self.proxy_port != 0 {
            return Err(Error::Invalid(format!(
                "policy entry {self:?}: a deny cannot redirect"
            )));
        }
        let l4_bits = if self.proto == 0 {
            0
        } else {
            8 + u32::from(self.port_prefix_len)
        };
        Ok((
            common::POLICY_STATIC_PREFIX + l4_bits,
            PolicyKey {
                endpoint_id: self.endpoint_id,
                pad: 0,
                identity: self.identity,
                egress: u8::from(self.egress),
                proto: self.proto,
                dport_be: self.port.to_be(),
            },
        ))
    }

    fn value(&self, prefix: u32) -> PolicyValue {
        PolicyValue {
            proxy_port: self.proxy_port,
            deny: u8::from(self.deny),
            lpm_prefix_length: (prefix - common::POLICY_STATIC_PREFIX) as u8,
            precedence: self.precedence,
            cookie: self.cookie,
        }
    }
}

impl DesiredState {
    pub(crate) fn compile(&self) -> Result<Compiled> {
        let mut endpoints = BTreeMap::new();
        let mut ipcache = BTreeMap::new();
        let mut policy = BTreeMap::new();
        for e in &self.ipcache {
            let (key, val) = e.compile()?;
            if ipcache.insert(key, val).is_some_and(|old| old != val) {
                return Err(Error::Invalid(format!(
                    "ipcache {e:?} conflicts with another entry"
                )));
            }
        }
        for ep in &self.endpoints {
            if ep.endpoint_id == 0 {
                return Err(Error::Invalid(format!(
                    "endpoint {ep:?}: endpoint_id 0 is reserved"
                )));
            }
            let ifindex = match &ep.interface {
                Interface::Index(i) => *i,
                Interface::Name(n) => crate::sys::ifindex(n)?,
            };
            let flags = if ep.ingress_enforced {
                common::EP_INGRESS_ENFORCE
            } else {
                0
            } | if ep.egress_enforced {
                common::EP_EGRESS_ENFORCE
            } else {
                0
            } | if ep.audit { common::EP_AUDIT } else { 0 };
            let val = EndpointValue {
                ifindex,
                identity: ep.identity,
                flags,
                pad: 0,
            };
            if endpoints.insert(u32::from(ep.endpoint_id), val).is_some() {
                return Err(Error::Invalid(format!(
                    "endpoint id {} listed twice",
                    ep.endpoint_id
                )));
            }
            for ip in &ep.ips {
                let key = (32, IpcacheKey { addr: ip.octets() });
                let val = IpcacheValue {
                    identity: ep.identity,
                    endpoint_id: ep.endpoint_id,
                    flags: 0,
                };
                if ipcache.insert(key, val).is_some_and(|old| old != val) {
                    return Err(Error::Invalid(format!(
                        "endpoint {} ip {ip} conflicts with an ipcache entry",
                        ep.endpoint_id
                    )));
                }
            }
        }
        // An endpoint id in the ipcache without endpoint config would be
        // dropped by the datapath (UNKNOWN_ENDPOINT); refuse it up front.
        for e in &self.ipcache {
            if e.endpoint_id == 0 {
                continue;
            }
            if e.prefix_len != 32 {
                return Err(Error::Invalid(format!(
                    "ipcache {e:?}: an endpoint id is only valid on a /32"
                )));
            }
            if !endpoints.contains_key(&u32::from(e.endpoint_id)) {
                return Err(Error::Invalid(format!(
                    "ipcache {e:?}: endpoint id {} is not a listed endpoint",
                    e.endpoint_id
                )));
            }
        }
        for p in &self.policy {
            let (prefix, key) = p.key()?;
            let val = p.value(prefix);
            if policy
                .insert((prefix, key), val)
                .is_some_and(|old| old != val)
            {
                return Err(Error::Invalid(format!(
                    "policy entry {p:?} conflicts with another entry"
                )));
            }
        }
        Ok(Compiled {
            endpoints,
            ipcache,
            policy,
        })
    }
}

/// Splits the inclusive port range `lo..=hi` into `(port, prefix_len)` blocks
/// (Cilium's `keysForRange`): each block covers `port .. port + 2^(16-prefix)`.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let (mut start, end) = (u32::from(lo), u32::from(hi));
    while start <= end {
        // Largest aligned block starting at `start` that fits in [start, end].
        let mut size_bits = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while size_bits > 0 && start + (1u32 << size_bits) - 1 > end {
            size_bits -= 1;
        }
        out.push((start as u16, (16 - size_bits) as u8));
        start += 1u32 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type RangeCase = (u16, u16, &'static [(u16, u8)]);

    #[test]
    fn port_ranges_split_into_aligned_blocks() {
        let cases: &[RangeCase] = &[
            (80, 80, &[(80, 16)]),
            (0, 65535, &[(0, 0)]),
            (8080, 8083, &[(8080, 14)]),
            (1, 4, &[(1, 16), (2, 15), (4, 16)]),
            (65535, 65535, &[(65535, 16)]),
            (10, 5, &[]),
        ];
        for (lo, hi, want) in cases {
            assert_eq!(port_range_prefixes(*lo, *hi), *want, "{lo}..={hi}");
        }
        // Coverage is exact for an awkward range.
        let blocks = port_range_prefixes(1000, 2999);
        let covered: u32 = blocks.iter().map(|(_, p)| 1u32 << (16 - p)).sum();
        assert_eq!(covered, 2000);
    }

    fn entry() -> PolicyEntry {
        PolicyEntry {
            endpoint_id: 7,
            identity: 42,
            egress: true,
            proto: 6,
            port: 80,
            port_prefix_len: 16,
            deny: false,
            proxy_port: 0,
            precedence: common::precedence::allow(0),
            cookie: 0,
        }
    }

    #[test]
    fn policy_keys_and_validation() {
        let (prefix, key) = entry().key().unwrap();
        assert_eq!(prefix, common::POLICY_FULL_PREFIX);
        assert_eq!(key.dport_be, 80u16.to_be());
        let l3 = PolicyEntry {
            proto: 0,
            port: 0,
            port_prefix_len: 0,
            ..entry()
        };
        assert_eq!(l3.key().unwrap().0, common::POLICY_STATIC_PREFIX);
        let any_port = PolicyEntry {
            port: 0,
            port_prefix_len: 0,
            ..entry()
        };
        assert_eq!(any_port.key().unwrap().0, common::POLICY_STATIC_PREFIX + 8);
        for bad in [
            PolicyEntry {
                port_prefix_len: 17,
                ..entry()
            },
            PolicyEntry {
                proto: 0,
                ..entry()
            },
            PolicyEntry {
                port: 81,
                port_prefix_len: 15,
                ..entry()
            },
            PolicyEntry {
                deny: true,
                proxy_port: 15001,
                ..entry()
            },
        ] {
            assert!(bad.key().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_become_ipcache_entries_and_conflicts_fail() {
        let ep = Endpoint {
            endpoint_id: 3,
            interface: Interface::Index(9),
            ips: vec![Ipv4Addr::new(10, 0, 0, 3)],
            identity: 1000,
            ingress_enforced: true,
            egress_enforced: false,
            audit: true,
        };
        let s = DesiredState {
            endpoints: vec![ep.clone()],
            ..Default::default()
        };
        let c = s.compile().unwrap();
        assert_eq!(c.ipcache.len(), 1);
        assert_eq!(
            c.endpoints[&3].flags,
            common::EP_INGRESS_ENFORCE | common::EP_AUDIT
        );
        let conflicting = DesiredState {
            endpoints: vec![ep],
            ipcache: vec![IpcacheEntry {
                addr: Ipv4Addr::new(10, 0, 0, 3),
                prefix_len: 32,
                identity: 2,
                endpoint_id: 0,
            }],
            ..Default::default()
        };
        assert!(conflicting.compile().is_err());
    }

    #[test]
    fn ipcache_endpoint_ids_must_name_listed_endpoints_on_host_routes() {
        let ep = Endpoint {
            endpoint_id: 3,
            interface: Interface::Index(9),
            ips: vec![Ipv4Addr::new(10, 0, 0, 3)],
            identity: 1000,
            ingress_enforced: true,
            egress_enforced: true,
            audit: false,
        };
        let with = |e: IpcacheEntry| DesiredState {
            endpoints: vec![ep.clone()],
            ipcache: vec![e],
            ..Default::default()
        };
        let base = IpcacheEntry {
            addr: Ipv4Addr::new(10, 0, 0, 4),
            prefix_len: 32,
            identity: 1000,
            endpoint_id: 3,
        };
        // A second IP of a listed endpoint: fine.
        assert!(with(base.clone()).compile().is_ok());
        // Unknown endpoint id.
        let unknown = with(IpcacheEntry {
            endpoint_id: 7,
            ..base.clone()
        });
        assert!(unknown.compile().is_err());
        // Endpoint id on a CIDR.
        let cidr = with(IpcacheEntry {
            addr: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 24,
            ..base
        });
        assert!(cidr.compile().is_err());
    }
}
