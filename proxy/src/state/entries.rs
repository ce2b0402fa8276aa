//! One engine map entry → one kernel policy entry, and the node's own implicit entries.

use bpf_redirect::PolicyEntry;
use l7_rules::engine::MapEntry;
use l7_rules::model::{Direction, L7Parser};

use super::{Settings, HOST_ENDPOINT_ID};

/// One engine map entry → one kernel policy entry of endpoint `id`.
/// The parser is returned when it has no listener: the entry then drops (fail closed).
pub(super) fn to_policy_entry(
    id: u16,
    e: &MapEntry,
    settings: &Settings,
) -> (PolicyEntry, Option<L7Parser>) {
    let k = &e.key;
    let (proto, port, plen) = match k.prefix_len {
        0 => (0, 0, 0),
        n => (k.protocol, k.port, n - 8),
    };
    // A redirect to a protocol with no listener fails closed: the flow needs L7 checks that
    // nothing can make, so the datapath drops it instead of letting it through unchecked.
    let mut deny = e.value.deny;
    let mut unproxied = None;
    let proxy_port = match e.value.redirect {
        None => 0,
        Some(parser) => match settings.proxy_port(parser) {
            Some(p) => p,
            None => {
                unproxied = Some(parser);
                deny = true;
                0
            }
        },
    };
    let entry = PolicyEntry {
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
    };
    (entry, unproxied)
}

/// Ward's own metrics endpoint stays reachable under a host ingress default deny: an allow of
/// TCP `port` from any peer, unless a host rule says otherwise on that port (an entry for it,
/// or a deny covering it). Like Cilium's implicit allows, it is the node's, not a policy's.
pub(super) fn metrics_allow(host_entries: &[PolicyEntry], port: u16) -> Option<PolicyEntry> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
