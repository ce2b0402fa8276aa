//! Layout safety: compiles a tiny C program against `ebpf/ward.h` with the host
//! C compiler, prints every size, offset and constant, and compares them with
//! the Rust mirror in `bpf-redirect-common`. Needs `cc`, not root.

use std::{collections::HashMap, mem::offset_of, mem::size_of, path::PathBuf, process::Command};

use bpf_redirect_common::{self as c, counter, drop_reason};

/// (C expression, Rust value) pairs. LPM keys: aya's `Key<K>` is `{u32 prefix_len, K}` packed,
/// so Rust offsets of key data are +4.
fn expected() -> Vec<(&'static str, usize)> {
    vec![
        (
            "sizeof(struct ward_ipcache_key)",
            4 + size_of::<c::IpcacheKey>(),
        ),
        (
            "offsetof(struct ward_ipcache_key, addr)",
            4 + offset_of!(c::IpcacheKey, addr),
        ),
        (
            "sizeof(struct ward_ipcache_value)",
            size_of::<c::IpcacheValue>(),
        ),
        (
            "offsetof(struct ward_ipcache_value, identity)",
            offset_of!(c::IpcacheValue, identity),
        ),
        (
            "offsetof(struct ward_ipcache_value, endpoint_id)",
            offset_of!(c::IpcacheValue, endpoint_id),
        ),
        (
            "offsetof(struct ward_ipcache_value, flags)",
            offset_of!(c::IpcacheValue, flags),
        ),
        (
            "sizeof(struct ward_policy_key)",
            4 + size_of::<c::PolicyKey>(),
        ),
        (
            "offsetof(struct ward_policy_key, endpoint_id)",
            4 + offset_of!(c::PolicyKey, endpoint_id),
        ),
        (
            "offsetof(struct ward_policy_key, pad)",
            4 + offset_of!(c::PolicyKey, pad),
        ),
        (
            "offsetof(struct ward_policy_key, identity)",
            4 + offset_of!(c::PolicyKey, identity),
        ),
        (
            "offsetof(struct ward_policy_key, egress)",
            4 + offset_of!(c::PolicyKey, egress),
        ),
        (
            "offsetof(struct ward_policy_key, proto)",
            4 + offset_of!(c::PolicyKey, proto),
        ),
        (
            "offsetof(struct ward_policy_key, dport)",
            4 + offset_of!(c::PolicyKey, dport_be),
        ),
        (
            "sizeof(struct ward_policy_value)",
            size_of::<c::PolicyValue>(),
        ),
        (
            "offsetof(struct ward_policy_value, proxy_port)",
            offset_of!(c::PolicyValue, proxy_port),
        ),
        (
            "offsetof(struct ward_policy_value, deny)",
            offset_of!(c::PolicyValue, deny),
        ),
        (
            "offsetof(struct ward_policy_value, lpm_prefix_length)",
            offset_of!(c::PolicyValue, lpm_prefix_length),
        ),
        (
            "offsetof(struct ward_policy_value, precedence)",
            offset_of!(c::PolicyValue, precedence),
        ),
        (
            "offsetof(struct ward_policy_value, cookie)",
            offset_of!(c::PolicyValue, cookie),
        ),
        (
            "sizeof(struct ward_endpoint)",
            size_of::<c::EndpointValue>(),
        ),
        (
            "offsetof(struct ward_endpoint, ifindex)",
            offset_of!(c::EndpointValue, ifindex),
        ),
        (
            "offsetof(struct ward_endpoint, identity)",
            offset_of!(c::EndpointValue, identity),
        ),
        (
            "offsetof(struct ward_endpoint, flags)",
            offset_of!(c::EndpointValue, flags),
        ),
        (
            "offsetof(struct ward_endpoint, pad)",
            offset_of!(c::EndpointValue, pad),
        ),
        ("sizeof(struct ward_ct_key)", size_of::<c::CtKey>()),
        (
            "offsetof(struct ward_ct_key, saddr)",
            offset_of!(c::CtKey, saddr),
        ),
        (
            "offsetof(struct ward_ct_key, daddr)",
            offset_of!(c::CtKey, daddr),
        ),
        (
            "offsetof(struct ward_ct_key, sport)",
            offset_of!(c::CtKey, sport_be),
        ),
        (
            "offsetof(struct ward_ct_key, dport)",
            offset_of!(c::CtKey, dport_be),
        ),
        (
            "offsetof(struct ward_ct_key, proto)",
            offset_of!(c::CtKey, proto),
        ),
        (
            "offsetof(struct ward_ct_key, pad)",
            offset_of!(c::CtKey, pad),
        ),
        ("sizeof(struct ward_ct_value)", size_of::<c::CtValue>()),
        (
            "offsetof(struct ward_ct_value, created_ns)",
            offset_of!(c::CtValue, created_ns),
        ),
        (
            "offsetof(struct ward_ct_value, last_seen_ns)",
            offset_of!(c::CtValue, last_seen_ns),
        ),
        (
            "offsetof(struct ward_ct_value, packets_fwd)",
            offset_of!(c::CtValue, packets_fwd),
        ),
        (
            "offsetof(struct ward_ct_value, packets_rev)",
            offset_of!(c::CtValue, packets_rev),
        ),
        (
            "offsetof(struct ward_ct_value, src_identity)",
            offset_of!(c::CtValue, src_identity),
        ),
        (
            "offsetof(struct ward_ct_value, dst_identity)",
            offset_of!(c::CtValue, dst_identity),
        ),
        (
            "offsetof(struct ward_ct_value, src_endpoint)",
            offset_of!(c::CtValue, src_endpoint),
        ),
        (
            "offsetof(struct ward_ct_value, dst_endpoint)",
            offset_of!(c::CtValue, dst_endpoint),
        ),
        (
            "offsetof(struct ward_ct_value, proxy_port)",
            offset_of!(c::CtValue, proxy_port),
        ),
        (
            "offsetof(struct ward_ct_value, flags)",
            offset_of!(c::CtValue, flags),
        ),
        (
            "offsetof(struct ward_ct_value, origin_hook)",
            offset_of!(c::CtValue, origin_hook),
        ),
        ("sizeof(struct ward_event)", size_of::<c::RawEvent>()),
        (
            "offsetof(struct ward_event, ts_ns)",
            offset_of!(c::RawEvent, ts_ns),
        ),
        (
            "offsetof(struct ward_event, saddr)",
            offset_of!(c::RawEvent, saddr),
        ),
        (
            "offsetof(struct ward_event, daddr)",
            offset_of!(c::RawEvent, daddr),
        ),
        (
            "offsetof(struct ward_event, sport)",
            offset_of!(c::RawEvent, sport),
        ),
        (
            "offsetof(struct ward_event, dport)",
            offset_of!(c::RawEvent, dport),
        ),
        (
            "offsetof(struct ward_event, src_identity)",
            offset_of!(c::RawEvent, src_identity),
        ),
        (
            "offsetof(struct ward_event, dst_identity)",
            offset_of!(c::RawEvent, dst_identity),
        ),
        (
            "offsetof(struct ward_event, src_endpoint)",
            offset_of!(c::RawEvent, src_endpoint),
        ),
        (
            "offsetof(struct ward_event, dst_endpoint)",
            offset_of!(c::RawEvent, dst_endpoint),
        ),
        (
            "offsetof(struct ward_event, ifindex)",
            offset_of!(c::RawEvent, ifindex),
        ),
        (
            "offsetof(struct ward_event, cookie)",
            offset_of!(c::RawEvent, cookie),
        ),
        (
            "offsetof(struct ward_event, proxy_port)",
            offset_of!(c::RawEvent, proxy_port),
        ),
        (
            "offsetof(struct ward_event, reason)",
            offset_of!(c::RawEvent, reason),
        ),
        (
            "offsetof(struct ward_event, kind)",
            offset_of!(c::RawEvent, kind),
        ),
        (
            "offsetof(struct ward_event, proto)",
            offset_of!(c::RawEvent, proto),
        ),
        (
            "offsetof(struct ward_event, hook)",
            offset_of!(c::RawEvent, hook),
        ),
        (
            "offsetof(struct ward_event, tcp_flags)",
            offset_of!(c::RawEvent, tcp_flags),
        ),
        (
            "offsetof(struct ward_event, policy_dir)",
            offset_of!(c::RawEvent, policy_dir),
        ),
        (
            "offsetof(struct ward_event, ct_state)",
            offset_of!(c::RawEvent, ct_state),
        ),
        (
            "offsetof(struct ward_event, pad)",
            offset_of!(c::RawEvent, pad),
        ),
        // Constants.
        ("WARD_IPCACHE_MAX", c::IPCACHE_MAX as usize),
        ("WARD_POLICY_MAX", c::POLICY_MAX as usize),
        ("WARD_ENDPOINTS_MAX", c::ENDPOINTS_MAX as usize),
        ("WARD_CT_MAX", c::CT_MAX as usize),
        ("WARD_EVENTS_BYTES", c::EVENTS_BYTES as usize),
        ("WARD_COUNTERS_MAX", c::COUNTERS_MAX as usize),
        ("WARD_PROXY_SOCKETS_MAX", c::PROXY_SOCKETS_MAX as usize),
        ("WARD_TW_REDIRECT_MAX", c::TW_REDIRECT_MAX as usize),
        ("WARD_LISTENERS_MAX", c::LISTENERS_MAX as usize),
        ("WARD_ID_WORLD", c::ID_WORLD as usize),
        ("WARD_ID_HOST", c::ID_HOST as usize),
        ("WARD_MARK_MASK", c::MARK_MASK as usize),
        ("WARD_MARK_PROXY_REDIRECT", c::MARK_PROXY_REDIRECT as usize),
        ("WARD_MARK_PROXY_UPSTREAM", c::MARK_PROXY_UPSTREAM as usize),
        ("WARD_HOOK_FROM_ENDPOINT", c::HOOK_FROM_ENDPOINT as usize),
        ("WARD_HOOK_TO_ENDPOINT", c::HOOK_TO_ENDPOINT as usize),
        ("WARD_HOOK_FROM_NETDEV", c::HOOK_FROM_NETDEV as usize),
        ("WARD_HOOK_TO_NETDEV", c::HOOK_TO_NETDEV as usize),
        ("WARD_HOST_ENDPOINT_ID", c::HOST_ENDPOINT_ID as usize),
        ("WARD_DROP_POLICY", drop_reason::POLICY as usize),
        ("WARD_DROP_POLICY_DENY", drop_reason::POLICY_DENY as usize),
        (
            "WARD_DROP_NO_PROXY_SOCKET",
            drop_reason::NO_PROXY_SOCKET as usize,
        ),
        (
            "WARD_DROP_INVALID_SOURCE",
            drop_reason::INVALID_SOURCE as usize,
        ),
        (
            "WARD_DROP_FRAG_NOSUPPORT",
            drop_reason::FRAG_NOSUPPORT as usize,
        ),
        (
            "WARD_DROP_UNSUPPORTED_L3",
            drop_reason::UNSUPPORTED_L3 as usize,
        ),
        (
            "WARD_DROP_INVALID_PACKET",
            drop_reason::INVALID_PACKET as usize,
        ),
        (
            "WARD_DROP_SK_ASSIGN_FAILED",
            drop_reason::SK_ASSIGN_FAILED as usize,
        ),
        (
            "WARD_DROP_UNKNOWN_ENDPOINT",
            drop_reason::UNKNOWN_ENDPOINT as usize,
        ),
        (
            "WARD_DROP_CT_CREATE_FAILED",
            drop_reason::CT_CREATE_FAILED as usize,
        ),
        (
            "WARD_DROP_REDIRECT_UNSUPPORTED",
            drop_reason::REDIRECT_UNSUPPORTED as usize,
        ),
        ("WARD_DROP_CT_NO_ENTRY", drop_reason::CT_NO_ENTRY as usize),
        (
            "WARD_DROP_PROXIED_ICMP_ERROR",
            drop_reason::PROXIED_ICMP_ERROR as usize,
        ),
        ("WARD_DROP_REASON_MAX", drop_reason::MAX as usize),
        ("WARD_EVENT_DROP", c::EVENT_DROP as usize),
        ("WARD_EVENT_ALLOW", c::EVENT_ALLOW as usize),
        ("WARD_EVENT_REDIRECT", c::EVENT_REDIRECT as usize),
        ("WARD_EVENT_AUDIT", c::EVENT_AUDIT as usize),
        ("WARD_CT_NEW", c::CT_NEW as usize),
        ("WARD_CT_ESTABLISHED", c::CT_ESTABLISHED as usize),
        ("WARD_CT_REPLY", c::CT_REPLY as usize),
        ("WARD_DIR_INGRESS", c::DIR_INGRESS as usize),
        ("WARD_DIR_EGRESS", c::DIR_EGRESS as usize),
        ("WARD_CNT_FROM_ENDPOINT", counter::FROM_ENDPOINT as usize),
        ("WARD_CNT_TO_ENDPOINT", counter::TO_ENDPOINT as usize),
        ("WARD_CNT_FROM_NETDEV", counter::FROM_NETDEV as usize),
        ("WARD_CNT_TO_NETDEV", counter::TO_NETDEV as usize),
        ("WARD_CNT_NEW_ALLOWED", counter::NEW_ALLOWED as usize),
        ("WARD_CNT_NEW_REDIRECTED", counter::NEW_REDIRECTED as usize),
        ("WARD_CNT_CT_ESTABLISHED", counter::CT_ESTABLISHED as usize),
        ("WARD_CNT_CT_REPLY", counter::CT_REPLY as usize),
        ("WARD_CNT_AUDITED", counter::AUDITED as usize),
        ("WARD_CNT_UNTRACKED_PASS", counter::UNTRACKED_PASS as usize),
        ("WARD_CNT_DROPPED", counter::DROPPED as usize),
        ("WARD_CNT_EVENTS_LOST", counter::EVENTS_LOST as usize),
        (
            "WARD_CNT_ICMP_FRAG_NEEDED",
            counter::ICMP_FRAG_NEEDED as usize,
        ),
        ("WARD_CNT_PROXY_UPSTREAM", counter::PROXY_UPSTREAM as usize),
        (
            "WARD_CNT_PROXY_MARK_UNREGISTERED",
            counter::PROXY_MARK_UNREGISTERED as usize,
        ),
        ("WARD_CNT_TO_NETDEV", counter::TO_NETDEV as usize),
        ("WARD_CNT_PROXY_REPLY", counter::PROXY_REPLY as usize),
        ("WARD_CNT_DROP_BASE", counter::DROP_BASE as usize),
        ("WARD_EP_INGRESS_ENFORCE", c::EP_INGRESS_ENFORCE as usize),
        ("WARD_EP_EGRESS_ENFORCE", c::EP_EGRESS_ENFORCE as usize),
        ("WARD_EP_AUDIT", c::EP_AUDIT as usize),
        ("WARD_CT_F_CLOSING", c::CT_F_CLOSING as usize),
        ("WARD_CT_F_AUDITED", c::CT_F_AUDITED as usize),
        ("WARD_CT_F_PROXY_UPSTREAM", c::CT_F_PROXY_UPSTREAM as usize),
        ("WARD_CT_F_SYN", c::CT_F_SYN as usize),
        (
            "WARD_POLICY_STATIC_PREFIX",
            c::POLICY_STATIC_PREFIX as usize,
        ),
        ("WARD_POLICY_FULL_PREFIX", c::POLICY_FULL_PREFIX as usize),
    ]
}

#[test]
fn rust_types_match_the_c_header() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("ward-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exp = expected();
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"ward.h\"\nint main(void) {\n",
    );
    for (expr, _) in &exp {
        src.push_str(&format!(
            "  printf(\"%s=%lu\\n\", \"{expr}\", (unsigned long)({expr}));\n"
        ));
    }
    src.push_str("  return 0;\n}\n");
    let c_file = dir.join("layout.c");
    let bin = dir.join("layout");
    std::fs::write(&c_file, src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg(format!("-I{}", manifest.join("ebpf").display()))
        .arg(&c_file)
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let got: HashMap<String, usize> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    let mut mismatches = Vec::new();
    for (expr, want) in exp {
        if got.get(expr) != Some(&want) {
            mismatches.push(format!("{expr}: C {:?}, Rust {want}", got.get(expr)));
        }
    }
    assert!(
        mismatches.is_empty(),
        "layout mismatches:\n{}",
        mismatches.join("\n")
    );
}
