//! BPF_PROG_TEST_RUN on synthetic packets: the policy decision table of the
//! TC programs without any interface. Each test uses its own pin root and runs
//! inside a private network namespace (so socket lookups see nothing real).

use std::net::Ipv4Addr;

use bpf_redirect::{
    common::{counter, drop_reason, precedence},
    port_range_prefixes, Datapath, DesiredState, DropReason, Endpoint, EventKind, Hook, Interface,
    IpcacheEntry, PolicyDirection, PolicyEntry,
};
use ward_tests::datapath::{allow, events, run, with_datapath, LO};
use ward_tests::packet::*;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const AUDITED: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const ID_CLIENT: u32 = 1001;
const ID_SERVER: u32 = 1002;
const ID_AUDITED: u32 = 1003;

fn ep(id: u16, ip: Ipv4Addr, identity: u32, ingress: bool, egress: bool, audit: bool) -> Endpoint {
    Endpoint {
        endpoint_id: id,
        interface: Interface::Index(LO),
        ips: vec![ip],
        identity,
        ingress_enforced: ingress,
        egress_enforced: egress,
        audit,
    }
}

/// client (ep 1, egress enforced) -> server (ep 2, ingress+egress enforced).
fn base_state() -> DesiredState {
    DesiredState {
        endpoints: vec![
            ep(1, CLIENT, ID_CLIENT, false, true, false),
            ep(2, SERVER, ID_SERVER, true, true, false),
            ep(3, AUDITED, ID_AUDITED, false, true, true),
        ],
        ipcache: vec![IpcacheEntry {
            addr: Ipv4Addr::new(192, 0, 2, 0),
            prefix_len: 24,
            identity: 16_777_217,
            endpoint_id: 0,
        }],
        policy: vec![
            allow(1, ID_SERVER, true, 6, 80),
            allow(2, ID_CLIENT, false, 6, 80),
        ],
    }
}

#[test]
fn allow_creates_conntrack_and_allow_event() {
    with_datapath("allow_creates_conntrack_and_allow_event", |dp| {
        dp.apply(&base_state()).unwrap();
        let _ = events(dp);
        let syn = tcp(CLIENT, 40000, SERVER, 80, TCP_SYN);
        assert_eq!(run(dp, Hook::FromEndpoint, &syn), TC_ACT_OK);
        let ev = events(dp);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, EventKind::Allow);
        assert_eq!(
            (ev[0].src_identity, ev[0].dst_identity),
            (ID_CLIENT, ID_SERVER)
        );
        assert_eq!((ev[0].src_endpoint, ev[0].dst_endpoint), (1, 2));
        let ct = dp.conntrack().unwrap();
        assert_eq!(ct.len(), 1);
        assert_eq!(ct[0].0.dport_be, 80u16.to_be());
        assert_eq!(dp.counters().unwrap().get(counter::NEW_ALLOWED), 1);
    });
}

#[test]
fn default_deny_drops_with_policy_reason_and_event() {
    with_datapath("default_deny_drops_with_policy_reason_and_event", |dp| {
        dp.apply(&base_state()).unwrap();
        let _ = events(dp);
        // Egress of the client has no entry for 81.
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40001, SERVER, 81, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        let ev = events(dp);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, EventKind::Drop(DropReason::POLICY));
        assert_eq!(ev[0].dst.port(), 81);
        assert_eq!(ev[0].policy_direction, PolicyDirection::Egress);
        // Ingress side: client egress allows 82, server ingress does not.
        let mut s = base_state();
        s.policy.push(allow(1, ID_SERVER, true, 6, 82));
        dp.apply(&s).unwrap();
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40002, SERVER, 82, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        let ev = events(dp);
        assert_eq!(ev[0].policy_direction, PolicyDirection::Ingress);
        let c = dp.counters().unwrap();
        assert_eq!(c.drops(drop_reason::POLICY), 2);
        assert!(dp.conntrack().unwrap().is_empty());
    });
}

#[test]
fn deny_precedes_allow() {
    with_datapath("deny_precedes_allow", |dp| {
        let mut s = base_state();
        // L3L4 allow for the server identity on 8080 ...
        s.policy.push(allow(1, ID_SERVER, true, 6, 8080));
        s.policy.push(allow(2, ID_CLIENT, false, 6, 8080));
        // ... and an L4-only (any identity) deny on the same port.
        s.policy.push(PolicyEntry {
            identity: 0,
            deny: true,
            precedence: precedence::deny(0),
            ..allow(1, 0, true, 6, 8080)
        });
        // An L3-only deny (any port) of another identity beats an L4-only allow.
        s.policy.push(PolicyEntry {
            deny: true,
            precedence: precedence::deny(0),
            ..allow(1, ID_AUDITED, true, 0, 0)
        });
        s.policy.push(allow(1, 0, true, 6, 81));
        dp.apply(&s).unwrap();
        let _ = events(dp);
        // Port 81 is allowed by the L4-only entry, except to the identity with the L3 deny.
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40004, OUTSIDE, 81, TCP_SYN)
            ),
            TC_ACT_OK
        );
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40004, AUDITED, 81, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        let _ = events(dp);
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40003, SERVER, 8080, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        let ev = events(dp);
        assert_eq!(ev[0].kind, EventKind::Drop(DropReason::POLICY_DENY));
    });
}

#[test]
fn l4_wildcard_versus_l3l4_entries() {
    with_datapath("l4_wildcard_versus_l3l4_entries", |dp| {
        let mut s = base_state();
        s.endpoints[1].ingress_enforced = false;
        // Equal precedence: the identity-0 entry with the longer proto/port prefix wins.
        s.policy.push(PolicyEntry {
            cookie: 11,
            ..allow(1, ID_SERVER, true, 6, 0)
        }); // tcp any port
        s.policy.push(PolicyEntry {
            cookie: 12,
            ..allow(1, 0, true, 6, 7000)
        }); // any peer, tcp/7000
            // Identity-specific exact port beats identity-0 proto-only.
        s.policy.push(PolicyEntry {
            cookie: 21,
            ..allow(1, ID_SERVER, true, 17, 53)
        });
        s.policy.push(PolicyEntry {
            cookie: 22,
            ..allow(1, 0, true, 17, 0)
        });
        // A redirect on a less specific (L4-only) key beats a plain L3L4 allow (higher precedence).
        s.policy.push(PolicyEntry {
            cookie: 31,
            ..allow(1, ID_SERVER, true, 6, 9090)
        });
        s.policy.push(PolicyEntry {
            cookie: 32,
            proxy_port: 15999,
            precedence: precedence::redirect(0, 0),
            ..allow(1, 0, true, 6, 9090)
        });
        dp.apply(&s).unwrap();
        let _ = events(dp);
        let cases: [(Vec<u8>, u32, u32); 4] = [
            (tcp(CLIENT, 40010, SERVER, 7000, TCP_SYN), TC_ACT_OK, 12),
            (tcp(CLIENT, 40011, SERVER, 7001, TCP_SYN), TC_ACT_OK, 11),
            (udp(CLIENT, 40012, SERVER, 53), TC_ACT_OK, 21),
            (udp(CLIENT, 40013, SERVER, 5353), TC_ACT_OK, 0),
        ];
        for (pkt, want, cookie) in cases {
            assert_eq!(run(dp, Hook::FromEndpoint, &pkt), want);
            let ev = events(dp);
            assert_eq!(ev[0].kind, EventKind::Allow);
            if cookie != 0 {
                assert_eq!(ev[0].cookie, cookie, "{:?}", ev[0]);
            }
        }
        // Redirect chosen; with no listener in this namespace: fail closed.
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40014, SERVER, 9090, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        let ev = events(dp);
        assert_eq!(ev[0].kind, EventKind::Drop(DropReason::NO_PROXY_SOCKET));
        assert!(dp
            .conntrack()
            .unwrap()
            .iter()
            .all(|(k, _)| k.dport_be != 9090u16.to_be()));
    });
}

#[test]
fn port_ranges() {
    with_datapath("port_ranges", |dp| {
        let mut s = base_state();
        s.endpoints[1].ingress_enforced = false;
        for (port, len) in port_range_prefixes(8000, 8099) {
            s.policy.push(PolicyEntry {
                port,
                port_prefix_len: len,
                ..allow(1, ID_SERVER, true, 6, 0)
            });
        }
        dp.apply(&s).unwrap();
        for (port, want) in [
            (7999, TC_ACT_SHOT),
            (8000, TC_ACT_OK),
            (8050, TC_ACT_OK),
            (8099, TC_ACT_OK),
            (8100, TC_ACT_SHOT),
        ] {
            assert_eq!(
                run(
                    dp,
                    Hook::FromEndpoint,
                    &tcp(CLIENT, 40020, SERVER, port, TCP_SYN)
                ),
                want,
                "port {port}"
            );
        }
    });
}

#[test]
fn audit_mode_allows_and_reports() {
    with_datapath("audit_mode_allows_and_reports", |dp| {
        dp.apply(&base_state()).unwrap();
        let _ = events(dp);
        // Endpoint 3 enforces egress in audit mode and has no entries.
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(AUDITED, 40030, OUTSIDE, 443, TCP_SYN)
            ),
            TC_ACT_OK
        );
        let ev = events(dp);
        assert_eq!(ev[0].kind, EventKind::Audit(DropReason::POLICY));
        assert_eq!(dp.counters().unwrap().get(counter::AUDITED), 1);
    });
}

#[test]
fn conntrack_reply_passes_and_unsolicited_is_dropped() {
    with_datapath("conntrack_reply_passes_and_unsolicited_is_dropped", |dp| {
        dp.apply(&base_state()).unwrap();
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40040, SERVER, 80, TCP_SYN)
            ),
            TC_ACT_OK
        );
        // The server enforces egress with no entries: only the reply may leave.
        let synack = tcp(SERVER, 80, CLIENT, 40040, TCP_SYN | TCP_ACK);
        assert_eq!(run(dp, Hook::FromEndpoint, &synack), TC_ACT_OK);
        assert_eq!(run(dp, Hook::ToEndpoint, &synack), TC_ACT_OK);
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(SERVER, 80, CLIENT, 40041, TCP_ACK)
            ),
            TC_ACT_SHOT
        );
        assert_eq!(dp.counters().unwrap().get(counter::CT_REPLY), 2);
        // ICMP echo: request creates state, reply matches it.
        let mut s = base_state();
        s.policy.push(allow(1, ID_SERVER, true, 1, 8));
        s.policy.push(allow(2, ID_CLIENT, false, 1, 8));
        dp.apply(&s).unwrap();
        assert_eq!(
            run(dp, Hook::FromEndpoint, &icmp(CLIENT, SERVER, 8, 0, 77)),
            TC_ACT_OK
        );
        assert_eq!(
            run(dp, Hook::FromEndpoint, &icmp(SERVER, CLIENT, 0, 0, 77)),
            TC_ACT_OK
        );
        assert_eq!(
            run(dp, Hook::FromEndpoint, &icmp(SERVER, CLIENT, 0, 0, 78)),
            TC_ACT_SHOT
        );
    });
}

#[test]
fn established_flow_is_rechecked_after_rule_removal() {
    with_datapath("established_flow_is_rechecked_after_rule_removal", |dp| {
        dp.apply(&base_state()).unwrap();
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40050, SERVER, 80, TCP_SYN)
            ),
            TC_ACT_OK
        );
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40050, SERVER, 80, TCP_ACK)
            ),
            TC_ACT_OK
        );
        assert_eq!(dp.counters().unwrap().get(counter::CT_ESTABLISHED), 1);
        let _ = events(dp);
        let mut s = base_state();
        s.policy.retain(|p| !p.egress);
        let stats = dp.apply(&s).unwrap();
        assert_eq!((stats.policy.written, stats.policy.deleted), (0, 1));
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(CLIENT, 40050, SERVER, 80, TCP_ACK)
            ),
            TC_ACT_SHOT
        );
        let ev = events(dp);
        assert_eq!(ev[0].kind, EventKind::Drop(DropReason::POLICY));
        assert_eq!(ev[0].ct_state, bpf_redirect::common::CT_ESTABLISHED);
        assert!(
            dp.conntrack().unwrap().is_empty(),
            "denied flow's entry removed"
        );
    });
}

#[test]
fn icmp_frag_needed_always_passes_and_others_follow_policy() {
    with_datapath(
        "icmp_frag_needed_always_passes_and_others_follow_policy",
        |dp| {
            dp.apply(&base_state()).unwrap();
            assert_eq!(
                run(dp, Hook::FromEndpoint, &icmp(CLIENT, SERVER, 3, 4, 0)),
                TC_ACT_OK
            );
            assert_eq!(
                run(dp, Hook::FromEndpoint, &icmp(CLIENT, SERVER, 3, 1, 0)),
                TC_ACT_SHOT
            );
            assert_eq!(
                run(dp, Hook::FromEndpoint, &icmp(CLIENT, SERVER, 8, 0, 5)),
                TC_ACT_SHOT
            );
            let c = dp.counters().unwrap();
            assert_eq!(c.get(counter::ICMP_FRAG_NEEDED), 1);
        },
    );
}

#[test]
fn spoofed_source_fragments_and_ipv6_are_dropped() {
    with_datapath("spoofed_source_fragments_and_ipv6_are_dropped", |dp| {
        dp.apply(&base_state()).unwrap();
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(OUTSIDE, 1, SERVER, 80, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        assert_eq!(
            run(dp, Hook::FromEndpoint, &fragment(CLIENT, SERVER)),
            TC_ACT_SHOT
        );
        let mut v6 = vec![0u8; 54];
        v6[12] = 0x86;
        v6[13] = 0xdd;
        v6[14] = 0x60;
        assert_eq!(run(dp, Hook::FromEndpoint, &v6), TC_ACT_SHOT);
        let c = dp.counters().unwrap();
        assert_eq!(c.drops(drop_reason::INVALID_SOURCE), 1);
        assert_eq!(c.drops(drop_reason::FRAG_NOSUPPORT), 1);
        assert_eq!(c.drops(drop_reason::UNSUPPORTED_L3), 1);
        // ARP passes.
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(run(dp, Hook::FromEndpoint, &arp), TC_ACT_OK);
    });
}

#[test]
fn uplink_ingress_enforces_local_destinations_only() {
    with_datapath("uplink_ingress_enforces_local_destinations_only", |dp| {
        let cidr_identity = 16_777_217;
        dp.apply(&base_state()).unwrap();
        let _ = events(dp);
        // To a local endpoint: the server's ingress policy has nothing for the CIDR identity.
        assert_eq!(
            run(
                dp,
                Hook::FromNetdev,
                &tcp(OUTSIDE, 5000, SERVER, 80, TCP_SYN)
            ),
            TC_ACT_SHOT
        );
        let ev = events(dp);
        assert_eq!(ev[0].src_identity, cidr_identity);
        assert_eq!(ev[0].hook, Some(Hook::FromNetdev));
        let mut s = base_state();
        s.policy.push(allow(2, cidr_identity, false, 6, 80));
        dp.apply(&s).unwrap();
        assert_eq!(
            run(
                dp,
                Hook::FromNetdev,
                &tcp(OUTSIDE, 5000, SERVER, 80, TCP_SYN)
            ),
            TC_ACT_OK
        );
        // The reply leaves through the server's veth via conntrack.
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(SERVER, 80, OUTSIDE, 5000, TCP_SYN | TCP_ACK)
            ),
            TC_ACT_OK
        );
        // Not for an endpoint: not Ward's business.
        assert_eq!(
            run(
                dp,
                Hook::FromNetdev,
                &tcp(OUTSIDE, 5000, Ipv4Addr::new(10, 9, 9, 9), 22, TCP_SYN)
            ),
            TC_ACT_OK
        );
        assert_eq!(dp.counters().unwrap().get(counter::UNTRACKED_PASS), 1);
    });
}

#[test]
fn to_endpoint_forged_proxy_mark_without_registered_socket_is_subject_to_policy() {
    with_datapath(
        "to_endpoint_forged_proxy_mark_without_registered_socket_is_subject_to_policy",
        |dp| {
            dp.apply(&base_state()).unwrap();
            let _ = events(dp);
            let host = Ipv4Addr::new(10, 0, 2, 1);
            // Unmarked host -> server:80: world identity, not allowed by the server's ingress.
            assert_eq!(
                run(dp, Hook::ToEndpoint, &tcp(host, 50000, SERVER, 80, TCP_SYN)),
                TC_ACT_SHOT
            );
            // The proxy-upstream mark alone (any host socket with CAP_NET_RAW can set
            // it) does not exempt the flow: the test run's socket is not registered.
            let out = dp
                .test_run(
                    Hook::ToEndpoint,
                    &tcp(host, 50001, SERVER, 80, TCP_SYN),
                    LO,
                    bpf_redirect::common::MARK_PROXY_UPSTREAM,
                )
                .unwrap();
            assert_eq!(out.retval, TC_ACT_SHOT);
            let ev = events(dp);
            let last = ev.last().expect("drop event");
            assert_eq!(last.kind, EventKind::Drop(DropReason::POLICY));
            assert_eq!(last.policy_direction, PolicyDirection::Ingress);
            // ... so no state: the server's SYN-ACK is not a reply.
            assert_eq!(
                run(
                    dp,
                    Hook::FromEndpoint,
                    &tcp(SERVER, 80, host, 50001, TCP_SYN | TCP_ACK)
                ),
                TC_ACT_SHOT
            );
            let c = dp.counters().unwrap();
            assert_eq!(c.get(counter::PROXY_UPSTREAM), 0);
            assert_eq!(c.get(counter::PROXY_MARK_UNREGISTERED), 1);
            assert!(dp.conntrack().unwrap().is_empty());
            // The registry API round-trips (the netns test exercises a real socket).
            let mut reg = dp.proxy_sockets().unwrap();
            assert!(!reg.contains(42).unwrap());
            reg.insert(42).unwrap();
            assert!(reg.contains(42).unwrap());
            reg.remove(42).unwrap();
            reg.remove(42).unwrap(); // idempotent
            assert!(!reg.contains(42).unwrap());
        },
    );
}

#[test]
fn apply_writes_only_the_diff() {
    with_datapath("apply_writes_only_the_diff", |dp| {
        let s = base_state();
        let first = dp.apply(&s).unwrap();
        // 3 endpoints, 3 endpoint /32s + 1 CIDR, 2 policy entries.
        assert_eq!(first.endpoints.written, 3);
        assert_eq!(first.ipcache.written, 4);
        assert_eq!(first.policy.written, 2);
        let again = dp.apply(&s).unwrap();
        assert_eq!((again.written(), again.deleted()), (0, 0));
        assert_eq!(again.policy.unchanged, 2);
        let mut changed = s.clone();
        changed.policy[0].cookie = 99; // value change
        changed.policy.push(allow(1, ID_SERVER, true, 6, 443)); // new key
        changed.ipcache.clear(); // delete
        let third = dp.apply(&changed).unwrap();
        assert_eq!(third.policy.written, 2);
        assert_eq!(third.ipcache.deleted, 1);
        assert_eq!(third.endpoints.written, 0);
        // A reopened datapath sees the same pinned maps.
        let root = dp.pin_root().to_path_buf();
        let mut again = Datapath::open(&root).unwrap();
        assert_eq!(again.apply(&changed).unwrap().written(), 0);
    });
}
