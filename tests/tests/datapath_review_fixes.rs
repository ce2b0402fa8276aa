//! The reviewer's fail-open repros (H1, H2, M1, M2 and the TCP/ICMP conntrack
//! rules), each asserting the correct verdict with BPF_PROG_TEST_RUN.

use std::net::Ipv4Addr;

use bpf_redirect::{
    common::{counter, drop_reason, map_names, IpcacheKey, IpcacheValue},
    Datapath, DesiredState, DropReason, Endpoint, EventKind, Hook, Interface, IpcacheEntry,
    PolicyDirection,
};
use ward_tests::datapath::{allow, events, run, with_datapath, LO};
use ward_tests::netns::must;
use ward_tests::packet::*;

const OK: u32 = 0;
const SHOT: u32 = 2;
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IDA: u32 = 1001;
const IDB: u32 = 1002;
const ID_CIDR: u32 = 16_777_217;

fn ep(id: u16, ip: Ipv4Addr, identity: u32, ingress: bool, egress: bool, ifx: u32) -> Endpoint {
    Endpoint {
        endpoint_id: id,
        interface: Interface::Index(ifx),
        ips: vec![ip],
        identity,
        ingress_enforced: ingress,
        egress_enforced: egress,
        audit: false,
    }
}

fn last_drop(dp: &Datapath) -> Option<u16> {
    events(dp).into_iter().rev().find_map(|e| match e.kind {
        EventKind::Drop(r) => Some(r.0),
        _ => None,
    })
}

// ---- H1 ----

/// R1: a packet with a local pod's source arriving on the uplink is dropped
/// before conntrack, so it cannot pre-create state that skips the pod's egress.
#[test]
fn uplink_drops_spoofed_local_sources_before_conntrack() {
    with_datapath(
        "uplink_drops_spoofed_local_sources_before_conntrack",
        |dp| {
            // A's egress allows nothing to B:5432; B's ingress admits A on 5432.
            dp.apply(&DesiredState {
                endpoints: vec![
                    ep(1, A, IDA, false, true, LO),
                    ep(2, B, IDB, true, false, LO),
                ],
                ipcache: vec![IpcacheEntry {
                    addr: HOST,
                    prefix_len: 32,
                    identity: bpf_redirect::common::ID_HOST,
                    endpoint_id: 0,
                }],
                policy: vec![allow(2, IDA, false, 6, 5432), allow(2, 1, false, 6, 5432)],
            })
            .unwrap();
            let _ = events(dp);
            let p = tcp(A, 40000, B, 5432, TCP_SYN);
            assert_eq!(run(dp, Hook::FromEndpoint, &p), SHOT);
            assert_eq!(run(dp, Hook::FromNetdev, &p), SHOT, "spoofed pod source");
            assert_eq!(last_drop(dp), Some(drop_reason::INVALID_SOURCE));
            assert!(
                dp.conntrack().unwrap().is_empty(),
                "no state from the uplink"
            );
            assert_eq!(
                run(dp, Hook::FromEndpoint, &p),
                SHOT,
                "egress still applies"
            );
            // The host identity never arrives from outside either (even though B admits it).
            let h = tcp(HOST, 40001, B, 5432, TCP_SYN);
            assert_eq!(run(dp, Hook::FromNetdev, &h), SHOT);
            assert_eq!(last_drop(dp), Some(drop_reason::INVALID_SOURCE));
            // Also for destinations that are not endpoints (checked before the untracked pass).
            let h = tcp(A, 40002, Ipv4Addr::new(10, 9, 9, 9), 22, TCP_SYN);
            assert_eq!(run(dp, Hook::FromNetdev, &h), SHOT);
            assert_eq!(dp.counters().unwrap().drops(drop_reason::INVALID_SOURCE), 3);
        },
    );
}

/// A conntrack entry created at one hook is re-checked at every other hook
/// its forward packets cross.
#[test]
fn forward_hits_are_rechecked_at_every_hook() {
    with_datapath("forward_hits_are_rechecked_at_every_hook", |dp| {
        let mut s = DesiredState {
            endpoints: vec![ep(1, A, IDA, true, true, LO), ep(2, B, IDB, true, true, LO)],
            ipcache: vec![IpcacheEntry {
                addr: Ipv4Addr::new(192, 0, 2, 0),
                prefix_len: 24,
                identity: ID_CIDR,
                endpoint_id: 0,
            }],
            policy: vec![
                allow(2, ID_CIDR, false, 6, 80),
                allow(1, IDB, true, 6, 80),
                allow(2, IDA, false, 6, 80),
            ],
        };
        dp.apply(&s).unwrap();
        // Outside -> B created at the uplink; its forward packets also cross B's veth.
        assert_eq!(
            run(dp, Hook::FromNetdev, &tcp(OUTSIDE, 5000, B, 80, TCP_SYN)),
            OK
        );
        assert_eq!(
            run(dp, Hook::ToEndpoint, &tcp(OUTSIDE, 5000, B, 80, TCP_SYN)),
            OK
        );
        // A -> B created at A's veth.
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(A, 40000, B, 80, TCP_SYN)),
            OK
        );
        assert_eq!(
            run(dp, Hook::ToEndpoint, &tcp(A, 40000, B, 80, TCP_ACK)),
            OK
        );
        // Remove B's ingress rule for the CIDR and A's egress rule.
        s.policy.retain(|p| p.identity == IDA);
        dp.apply(&s).unwrap();
        let _ = events(dp);
        assert_eq!(
            run(dp, Hook::ToEndpoint, &tcp(OUTSIDE, 5000, B, 80, TCP_ACK)),
            SHOT,
            "uplink-created entry re-checked at to-endpoint"
        );
        assert_eq!(last_drop(dp), Some(drop_reason::POLICY));
        assert_eq!(
            run(dp, Hook::ToEndpoint, &tcp(A, 40000, B, 80, TCP_ACK)),
            SHOT,
            "from-endpoint-created entry re-checked at to-endpoint (A's egress)"
        );
        let ev = events(dp);
        let d = ev
            .iter()
            .rev()
            .find(|e| matches!(e.kind, EventKind::Drop(_)))
            .unwrap();
        assert_eq!(d.policy_direction, PolicyDirection::Egress);
        assert_eq!(d.hook, Some(Hook::ToEndpoint));
    });
}

/// A flow reaching a pod at the to-endpoint hook from another local pod (the
/// Service/DNAT path: the pod sent it to a VIP) is held to the source's egress.
#[test]
fn to_endpoint_checks_local_source_egress() {
    with_datapath("to_endpoint_checks_local_source_egress", |dp| {
        dp.apply(&DesiredState {
            endpoints: vec![
                ep(1, A, IDA, false, true, LO),
                ep(2, B, IDB, true, false, LO),
            ],
            ipcache: vec![],
            policy: vec![
                allow(2, IDA, false, 6, 5432),
                allow(2, IDA, false, 6, 80),
                allow(1, IDB, true, 6, 80),
            ],
        })
        .unwrap();
        let _ = events(dp);
        assert_eq!(
            run(dp, Hook::ToEndpoint, &tcp(A, 40000, B, 5432, TCP_SYN)),
            SHOT
        );
        let ev = events(dp);
        assert_eq!(ev[0].kind, EventKind::Drop(DropReason::POLICY));
        assert_eq!(ev[0].policy_direction, PolicyDirection::Egress);
        assert_eq!(
            run(dp, Hook::ToEndpoint, &tcp(A, 40001, B, 80, TCP_SYN)),
            OK
        );
    });
}

// ---- H2 ----

/// R2: after a re-check cut a flow, the responder's next segment does not
/// create a flipped entry that would turn the initiator's packets into "replies".
#[test]
fn direction_flip_cannot_escape_the_recheck() {
    with_datapath("direction_flip_cannot_escape_the_recheck", |dp| {
        let mut s = DesiredState {
            endpoints: vec![
                ep(1, A, IDA, false, true, LO),
                ep(2, B, IDB, true, true, LO),
            ],
            ipcache: vec![],
            policy: vec![
                allow(1, IDB, true, 6, 80),
                allow(2, IDA, false, 6, 80),
                allow(2, IDA, true, 0, 0),
            ],
        };
        dp.apply(&s).unwrap();
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(A, 40000, B, 80, TCP_SYN)),
            OK
        );
        s.policy.retain(|p| p.endpoint_id != 1);
        dp.apply(&s).unwrap();
        let _ = events(dp);
        let a1 = run(dp, Hook::FromEndpoint, &tcp(A, 40000, B, 80, TCP_ACK));
        let b1 = run(dp, Hook::FromEndpoint, &tcp(B, 80, A, 40000, TCP_ACK));
        assert_eq!(last_drop(dp), Some(drop_reason::CT_NO_ENTRY));
        let a2 = run(dp, Hook::FromEndpoint, &tcp(A, 40000, B, 80, TCP_ACK));
        let a3 = run(dp, Hook::FromEndpoint, &tcp(A, 40000, B, 80, TCP_ACK));
        assert_eq!((a1, b1, a2, a3), (SHOT, SHOT, SHOT, SHOT));
        assert!(dp.conntrack().unwrap().is_empty());
        assert_eq!(dp.counters().unwrap().drops(drop_reason::CT_NO_ENTRY), 3);
    });
}

/// R6: only a pure SYN creates TCP state; a mid-stream packet without state
/// is dropped with CT_NO_ENTRY instead of opening a 6-hour entry.
#[test]
fn tcp_state_is_created_only_by_a_pure_syn() {
    with_datapath("tcp_state_is_created_only_by_a_pure_syn", |dp| {
        dp.apply(&DesiredState {
            endpoints: vec![ep(1, A, IDA, false, true, LO)],
            ipcache: vec![],
            policy: vec![allow(1, 2, true, 6, 443)],
        })
        .unwrap();
        let _ = events(dp);
        let g = Ipv4Addr::new(8, 8, 8, 8);
        for flags in [
            TCP_ACK,
            TCP_SYN | TCP_ACK,
            0x01 | TCP_ACK,
            0x04,
            TCP_SYN | 0x04,
        ] {
            assert_eq!(
                run(dp, Hook::FromEndpoint, &tcp(A, 1, g, 443, flags)),
                SHOT,
                "flags {flags:#x}"
            );
            assert_eq!(last_drop(dp), Some(drop_reason::CT_NO_ENTRY));
        }
        assert!(dp.conntrack().unwrap().is_empty());
        assert_eq!(run(dp, Hook::FromEndpoint, &tcp(A, 1, g, 443, TCP_SYN)), OK);
        let ct = dp.conntrack().unwrap();
        assert_eq!(ct.len(), 1);
        assert_ne!(ct[0].1.flags & bpf_redirect::common::CT_F_SYN, 0);
        assert_eq!(
            ct[0].1.origin_hook,
            bpf_redirect::common::HOOK_FROM_ENDPOINT
        );
        assert_eq!(run(dp, Hook::FromEndpoint, &tcp(A, 1, g, 443, TCP_ACK)), OK);
        assert_eq!(
            DropReason(drop_reason::CT_NO_ENTRY).name(),
            "Not a new connection (no conntrack entry)"
        );
    });
}

/// A pure SYN from the responder's side of a live entry is a connection attempt
/// of its own (policy), not a reply.
#[test]
fn responder_syn_is_not_a_reply() {
    with_datapath("responder_syn_is_not_a_reply", |dp| {
        dp.apply(&DesiredState {
            endpoints: vec![ep(1, A, IDA, true, true, LO), ep(2, B, IDB, true, true, LO)],
            ipcache: vec![],
            policy: vec![allow(1, IDB, true, 6, 80), allow(2, IDA, false, 6, 80)],
        })
        .unwrap();
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(A, 40000, B, 80, TCP_SYN)),
            OK
        );
        let _ = events(dp);
        // B may not open connections to A.
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(B, 80, A, 40000, TCP_SYN)),
            SHOT
        );
        assert_eq!(last_drop(dp), Some(drop_reason::POLICY));
        // Its real reply passes.
        assert_eq!(
            run(
                dp,
                Hook::FromEndpoint,
                &tcp(B, 80, A, 40000, TCP_SYN | TCP_ACK)
            ),
            OK
        );
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(B, 80, A, 40000, TCP_ACK)),
            OK
        );
    });
}

// ---- M1 ----

/// R3: an ICMP entry made by one type does not turn other types into replies;
/// only an echo reply matches an echo request's entry.
#[test]
fn icmp_conntrack_is_for_echo_only() {
    with_datapath("icmp_conntrack_is_for_echo_only", |dp| {
        dp.apply(&DesiredState {
            endpoints: vec![ep(1, A, IDA, true, true, LO), ep(2, B, IDB, true, true, LO)],
            ipcache: vec![],
            policy: vec![
                allow(1, IDB, true, 1, 13),
                allow(2, IDA, false, 1, 13),
                allow(1, IDB, true, 1, 8),
                allow(2, IDA, false, 1, 8),
            ],
        })
        .unwrap();
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(B, A, 5, 1, 0)), SHOT);
        // A -> B timestamp: allowed by policy, creates no state.
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(A, B, 13, 0, 0)), OK);
        assert!(dp.conntrack().unwrap().is_empty());
        assert_eq!(
            run(dp, Hook::FromEndpoint, &icmp(B, A, 5, 1, 0)),
            SHOT,
            "redirect"
        );
        assert_eq!(
            run(dp, Hook::FromEndpoint, &icmp(B, A, 3, 3, 0)),
            SHOT,
            "port unreachable"
        );
        assert_eq!(
            run(dp, Hook::FromEndpoint, &icmp(B, A, 14, 0, 0)),
            SHOT,
            "timestamp reply"
        );
        // Echo request id 0 creates state; B's echo *request* with id 0 is not its reply.
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(A, B, 8, 0, 0)), OK);
        assert_eq!(dp.conntrack().unwrap().len(), 1);
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(B, A, 8, 0, 0)), SHOT);
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(B, A, 3, 3, 0)), SHOT);
        // Its echo reply is.
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(B, A, 0, 0, 0)), OK);
        assert_eq!(dp.counters().unwrap().get(counter::CT_REPLY), 1);
        // Frag-needed always passes.
        assert_eq!(run(dp, Hook::FromEndpoint, &icmp(B, A, 3, 4, 0)), OK);
    });
}

// ---- M2 ----

/// R4: an ipcache endpoint id without endpoint config is refused by `apply`,
/// and if the maps hold one anyway the datapath drops (UNKNOWN_ENDPOINT)
/// instead of treating it as "not enforced".
#[test]
fn endpoint_id_without_config_is_refused_and_dropped() {
    with_datapath("endpoint_id_without_config_is_refused_and_dropped", |dp| {
        let x = Ipv4Addr::new(10, 0, 9, 9);
        let bad = DesiredState {
            endpoints: vec![ep(1, A, IDA, false, false, LO)],
            ipcache: vec![IpcacheEntry {
                addr: x,
                prefix_len: 32,
                identity: IDB,
                endpoint_id: 7,
            }],
            policy: vec![],
        };
        assert!(matches!(
            dp.apply(&bad),
            Err(bpf_redirect::Error::Invalid(_))
        ));
        let cidr = DesiredState {
            endpoints: vec![ep(1, A, IDA, false, false, LO)],
            ipcache: vec![IpcacheEntry {
                addr: Ipv4Addr::new(10, 0, 9, 0),
                prefix_len: 24,
                identity: IDB,
                endpoint_id: 1,
            }],
            policy: vec![],
        };
        assert!(matches!(
            dp.apply(&cidr),
            Err(bpf_redirect::Error::Invalid(_))
        ));
        dp.apply(&DesiredState {
            ipcache: vec![],
            ..bad
        })
        .unwrap();
        // Inconsistent maps (e.g. written by something else): write the entry directly.
        let data = aya::maps::MapData::from_pin(dp.pin_root().join(map_names::IPCACHE)).unwrap();
        let map = aya::maps::Map::from_map_data(data).unwrap();
        let mut lpm: aya::maps::LpmTrie<_, IpcacheKey, IpcacheValue> =
            aya::maps::LpmTrie::try_from(map).unwrap();
        lpm.insert(
            &aya::maps::lpm_trie::Key::new(32, IpcacheKey { addr: x.octets() }),
            IpcacheValue {
                identity: IDB,
                endpoint_id: 7,
                flags: 0,
            },
            0,
        )
        .unwrap();
        let _ = events(dp);
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(A, 1, x, 22, TCP_SYN)),
            SHOT
        );
        assert_eq!(last_drop(dp), Some(drop_reason::UNKNOWN_ENDPOINT));
        assert_eq!(
            run(
                dp,
                Hook::FromNetdev,
                &tcp(Ipv4Addr::new(192, 0, 2, 1), 1, x, 22, TCP_SYN)
            ),
            SHOT
        );
        assert_eq!(last_drop(dp), Some(drop_reason::UNKNOWN_ENDPOINT));
        assert!(dp.conntrack().unwrap().is_empty());
    });
}

/// `apply` writes before it deletes across maps: moving an IP from one
/// endpoint to a new one never leaves the ipcache naming a missing endpoint.
#[test]
fn apply_writes_all_maps_before_deleting() {
    with_datapath("apply_writes_all_maps_before_deleting", |dp| {
        let first = DesiredState {
            endpoints: vec![ep(1, A, IDA, false, true, LO)],
            ipcache: vec![],
            policy: vec![allow(1, 2, true, 6, 443)],
        };
        dp.apply(&first).unwrap();
        let second = DesiredState {
            endpoints: vec![ep(5, A, IDA, false, true, LO)],
            ipcache: vec![],
            policy: vec![allow(5, 2, true, 6, 443)],
        };
        let st = dp.apply(&second).unwrap();
        assert_eq!((st.endpoints.written, st.endpoints.deleted), (1, 1));
        assert_eq!((st.ipcache.written, st.ipcache.deleted), (1, 0));
        assert_eq!((st.policy.written, st.policy.deleted), (1, 1));
        let g = Ipv4Addr::new(8, 8, 8, 8);
        assert_eq!(run(dp, Hook::FromEndpoint, &tcp(A, 2, g, 443, TCP_SYN)), OK);
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(A, 3, g, 444, TCP_SYN)),
            SHOT
        );
    });
}

/// R5: a packet with another pod's source on this pod's veth is dropped.
#[test]
fn pod_to_pod_spoof_with_distinct_ifindex_is_dropped() {
    with_datapath("pod_to_pod_spoof_with_distinct_ifindex_is_dropped", |dp| {
        must(
            "ip",
            &["link", "add", "rv0", "type", "veth", "peer", "name", "rv1"],
        );
        let ifx = bpf_redirect::ifindex("rv0").unwrap();
        dp.apply(&DesiredState {
            endpoints: vec![
                ep(1, A, IDA, false, false, LO),
                ep(2, B, IDB, false, false, ifx),
            ],
            ipcache: vec![],
            policy: vec![],
        })
        .unwrap();
        assert_eq!(
            run(dp, Hook::FromEndpoint, &tcp(B, 1, A, 22, TCP_SYN)),
            SHOT
        );
        assert_eq!(dp.counters().unwrap().drops(drop_reason::INVALID_SOURCE), 1);
        assert_eq!(run(dp, Hook::FromEndpoint, &tcp(A, 1, B, 22, TCP_SYN)), OK);
    });
}

/// `attach` keeps a pinned link only when the attached program has our tag
/// AND uses the maps pinned now: a link whose program still references maps
/// that were unpinned and recreated is replaced (else `apply` would write
/// maps the attached program never reads).
#[test]
fn attach_replaces_a_program_bound_to_stale_maps() {
    with_datapath("attach_replaces_a_program_bound_to_stale_maps", |dp| {
        must(
            "ip",
            &["link", "add", "wd0", "type", "veth", "peer", "name", "wd1"],
        );
        must("ip", &["link", "set", "wd0", "up"]);
        assert_eq!(
            dp.attach("wd0", Hook::FromEndpoint).unwrap(),
            bpf_redirect::AttachOutcome::Created
        );
        let root = dp.pin_root().to_path_buf();
        // Same maps: kept.
        let mut again = Datapath::open(&root).unwrap();
        assert_eq!(
            again.attach("wd0", Hook::FromEndpoint).unwrap(),
            bpf_redirect::AttachOutcome::Kept
        );
        drop(again);
        // The map pins are recreated (e.g. removed by hand): same tag, other maps.
        for name in map_names::EVERY {
            std::fs::remove_file(root.join(name)).unwrap();
        }
        let mut fresh = Datapath::open(&root).unwrap();
        assert_eq!(
            fresh.attach("wd0", Hook::FromEndpoint).unwrap(),
            bpf_redirect::AttachOutcome::Replaced
        );
        assert_eq!(
            fresh
                .attached_program_id("wd0", Hook::FromEndpoint)
                .unwrap(),
            Some(fresh.program_id(Hook::FromEndpoint).unwrap())
        );
    });
}

/// `apply` diffs against what it last wrote, so an unchanged state writes nothing without
/// reading the maps; `resync` (as every `RESYNC_AFTER`) reads them back from the kernel, so
/// an entry removed behind its back is written again.
#[test]
fn apply_diffs_against_what_it_wrote_and_resync_reads_the_kernel() {
    with_datapath(
        "apply_diffs_against_what_it_wrote_and_resync_reads_the_kernel",
        |dp| {
            let state = DesiredState {
                endpoints: vec![ep(1, A, IDA, true, false, LO)],
                ipcache: vec![
                    IpcacheEntry {
                        addr: B,
                        prefix_len: 32,
                        identity: IDB,
                        endpoint_id: 0,
                    },
                    IpcacheEntry {
                        addr: OUTSIDE,
                        prefix_len: 32,
                        identity: ID_CIDR,
                        endpoint_id: 0,
                    },
                ],
                policy: vec![allow(1, IDB, false, 6, 80)],
            };
            let first = dp.apply(&state).unwrap();
            assert_eq!(first.ipcache.written, 3, "A's own entry and two peers");
            let again = dp.apply(&state).unwrap();
            assert_eq!((again.written(), again.deleted()), (0, 0));
            // Someone removes B's entry behind the datapath's back.
            let data =
                aya::maps::MapData::from_pin(dp.pin_root().join(map_names::IPCACHE)).unwrap();
            let map = aya::maps::Map::from_map_data(data).unwrap();
            let mut lpm: aya::maps::LpmTrie<_, IpcacheKey, IpcacheValue> =
                aya::maps::LpmTrie::try_from(map).unwrap();
            let key = aya::maps::lpm_trie::Key::new(32, IpcacheKey { addr: B.octets() });
            lpm.remove(&key).unwrap();
            // Until it reads the maps back, the datapath trusts what it wrote.
            assert_eq!(dp.apply(&state).unwrap().written(), 0);
            dp.resync();
            let fixed = dp.apply(&state).unwrap();
            assert_eq!((fixed.ipcache.written, fixed.written()), (1, 1));
            assert_eq!(lpm.get(&key, 0).unwrap().identity, IDB);
            // A change after that is one write.
            let mut moved = state.clone();
            moved.ipcache[1].identity = ID_CIDR + 1;
            let one = dp.apply(&moved).unwrap();
            assert_eq!((one.written(), one.deleted()), (1, 0));
        },
    );
}
