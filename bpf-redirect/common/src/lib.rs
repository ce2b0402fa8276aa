//! Map key/value types and stable constants shared by Ward's C TC programs
//! (`bpf-redirect/ebpf/ward.h`) and the aya loader.
//!
//! Owns: the byte layout of every pinned map, drop reason codes, event kinds,
//! counter indices and the packet marks. Must not: depend on `std`, hold
//! `bool`/`enum`/`Option` in map values, or renumber a published constant
//! (append only). Every struct has explicit padding and const size asserts; a
//! layout test (`tests/layout.rs`) compares sizes and offsets with the C header.
#![no_std]

use core::mem::{offset_of, size_of};

/// Pinned map names (`<pin root>/<name>`).
pub mod map_names {
    pub const IPCACHE: &str = "ward_ipcache";
    pub const POLICY: &str = "ward_policy";
    pub const ENDPOINTS: &str = "ward_endpoints";
    pub const CT: &str = "ward_ct";
    pub const EVENTS: &str = "ward_events";
    pub const COUNTERS: &str = "ward_counters";
    /// LRU hash `u64` socket cookie → `u8`: the proxy's upstream sockets.
    pub const PROXY_SOCKETS: &str = "ward_proxy_sockets";
    /// LRU hash TCP 4-tuple → proxy port: SYNs reusing a proxy-side TIME_WAIT tuple, for
    /// the `sk_lookup` program.
    pub const TW_REDIRECT: &str = "ward_tw_redirect";
    /// Sockhash proxy port → the proxy's listening socket.
    pub const LISTENERS: &str = "ward_listeners";
    /// The six original maps (kept with its original type for compatibility;
    /// see [`EVERY`] for the complete list).
    pub const ALL: [&str; 6] = [IPCACHE, POLICY, ENDPOINTS, CT, EVENTS, COUNTERS];
    /// Every pinned map of this build.
    pub const EVERY: [&str; 9] = [
        IPCACHE,
        POLICY,
        ENDPOINTS,
        CT,
        EVENTS,
        COUNTERS,
        PROXY_SOCKETS,
        TW_REDIRECT,
        LISTENERS,
    ];
}

/// Program (function) names in the object.
pub mod program_names {
    pub const FROM_ENDPOINT: &str = "ward_from_endpoint";
    pub const TO_ENDPOINT: &str = "ward_to_endpoint";
    pub const FROM_NETDEV: &str = "ward_from_netdev";
    pub const TO_NETDEV: &str = "ward_to_netdev";
    /// The node network namespace's listener lookup (`BPF_PROG_TYPE_SK_LOOKUP`).
    pub const SK_LOOKUP: &str = "ward_sk_lookup";
}

pub const IPCACHE_MAX: u32 = 65536;
pub const POLICY_MAX: u32 = 65536;
pub const ENDPOINTS_MAX: u32 = 4096;
pub const CT_MAX: u32 = 131072;
pub const EVENTS_BYTES: u32 = 256 * 1024;
pub const COUNTERS_MAX: u32 = 128;
pub const PROXY_SOCKETS_MAX: u32 = 65536;
pub const TW_REDIRECT_MAX: u32 = 4096;
pub const LISTENERS_MAX: u32 = 16;

/// Reserved identities (Cilium's numbers).
pub const ID_UNKNOWN: u32 = 0;
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;

/// `skb->mark` bits. A redirected packet carries
/// `MARK_PROXY_REDIRECT | proxy_port << 16`; the fwmark rule matches
/// `MARK_PROXY_REDIRECT/MARK_MASK`. The proxy sets `SO_MARK = MARK_PROXY_UPSTREAM`
/// on its upstream sockets **and** registers their cookies in
/// `ward_proxy_sockets` (`bpf_redirect::ProxySockets`); only then does the
/// to-endpoint program track them without a second policy decision. A mark
/// without a registered socket is an ordinary host flow (policy applies).
pub const MARK_MASK: u32 = 0x0f00;
pub const MARK_PROXY_REDIRECT: u32 = 0x0200;
pub const MARK_PROXY_UPSTREAM: u32 = 0x0a00;

/// Hook numbers (`Event::hook`, conntrack origin).
pub const HOOK_FROM_ENDPOINT: u8 = 1;
pub const HOOK_TO_ENDPOINT: u8 = 2;
pub const HOOK_FROM_NETDEV: u8 = 3;
pub const HOOK_TO_NETDEV: u8 = 4;

/// The host endpoint's id (Cilium's `reserved:host` endpoint): the node's addresses map to it
/// in the ipcache, and host policies are its policy entries.
pub const HOST_ENDPOINT_ID: u16 = 0xffff;

/// Drop reasons. Stable: never renumber, only append.
pub mod drop_reason {
    /// No allow entry matched (default deny).
    pub const POLICY: u16 = 1;
    /// An explicit deny entry won.
    pub const POLICY_DENY: u16 = 2;
    /// Redirect verdict, but no proxy socket (fail closed).
    pub const NO_PROXY_SOCKET: u16 = 3;
    /// The source address is not the endpoint behind this veth (anti-spoofing).
    pub const INVALID_SOURCE: u16 = 4;
    /// Non-first IPv4 fragment (no L4 header to decide on).
    pub const FRAG_NOSUPPORT: u16 = 5;
    /// IPv6 or another non-IPv4/ARP protocol at an endpoint hook.
    pub const UNSUPPORTED_L3: u16 = 6;
    /// Truncated or malformed headers.
    pub const INVALID_PACKET: u16 = 7;
    /// `bpf_sk_assign` failed.
    pub const SK_ASSIGN_FAILED: u16 = 8;
    /// An endpoint id (ipcache) without endpoint config: the to-endpoint
    /// destination, or any source/destination whose policy would be checked.
    pub const UNKNOWN_ENDPOINT: u16 = 9;
    /// Conntrack insert failed.
    pub const CT_CREATE_FAILED: u16 = 10;
    /// A redirect verdict where `bpf_sk_assign` is impossible (TC egress, or not TCP/UDP).
    pub const REDIRECT_UNSUPPORTED: u16 = 11;
    /// A TCP packet without a conntrack entry that is not a pure SYN (SYN
    /// without ACK): not a new connection, and not part of a known one.
    pub const CT_NO_ENTRY: u16 = 12;
    /// An ICMP error about a proxied flow (the server's port unreachable, answering the
    /// proxy's upstream leg from the client's address): the proxy answers the client itself.
    pub const PROXIED_ICMP_ERROR: u16 = 13;
    /// Exclusive upper bound of reason numbers (counter slots).
    pub const MAX: u16 = 64;

    /// Human name of a reason code, for logs.
    pub const fn name(reason: u16) -> &'static str {
        match reason {
            POLICY => "Policy denied",
            POLICY_DENY => "Policy denied by denylist",
            NO_PROXY_SOCKET => "Proxy socket not found",
            INVALID_SOURCE => "Invalid source ip",
            FRAG_NOSUPPORT => "Fragmentation not supported",
            UNSUPPORTED_L3 => "Unsupported L3 protocol",
            INVALID_PACKET => "Invalid packet",
            SK_ASSIGN_FAILED => "Socket assign failed",
            UNKNOWN_ENDPOINT => "Unknown endpoint",
            CT_CREATE_FAILED => "Conntrack create failed",
            REDIRECT_UNSUPPORTED => "Redirect not supported here",
            CT_NO_ENTRY => "Not a new connection (no conntrack entry)",
            PROXIED_ICMP_ERROR => "ICMP error about a proxied flow",
            _ => "Unknown reason",
        }
    }
}

/// Event kinds (`RawEvent::kind`).
pub const EVENT_DROP: u8 = 1;
pub const EVENT_ALLOW: u8 = 2;
pub const EVENT_REDIRECT: u8 = 3;
pub const EVENT_AUDIT: u8 = 4;

/// Conntrack state in events.
pub const CT_NEW: u8 = 0;
pub const CT_ESTABLISHED: u8 = 1;
pub const CT_REPLY: u8 = 2;

/// Direction of the deciding policy in events.
pub const DIR_NONE: u8 = 0;
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// Per-CPU counter indices.
pub mod counter {
    pub const FROM_ENDPOINT: u32 = 0;
    pub const TO_ENDPOINT: u32 = 1;
    pub const FROM_NETDEV: u32 = 2;
    pub const NEW_ALLOWED: u32 = 3;
    pub const NEW_REDIRECTED: u32 = 4;
    pub const CT_ESTABLISHED: u32 = 5;
    pub const CT_REPLY: u32 = 6;
    pub const AUDITED: u32 = 7;
    pub const UNTRACKED_PASS: u32 = 8;
    pub const DROPPED: u32 = 9;
    pub const EVENTS_LOST: u32 = 10;
    pub const ICMP_FRAG_NEEDED: u32 = 11;
    pub const PROXY_UPSTREAM: u32 = 12;
    /// Packets with the proxy-upstream mark whose socket is not registered
    /// (treated as ordinary host packets).
    pub const PROXY_MARK_UNREGISTERED: u32 = 13;
    pub const TO_NETDEV: u32 = 14;
    /// Replies to a proxied flow handed to the proxy's socket bound to the client's address
    /// (the DNS proxy's upstream leg).
    pub const PROXY_REPLY: u32 = 15;
    /// `DROP_BASE + reason` counts drops per reason.
    pub const DROP_BASE: u32 = 64;
}

/// Endpoint flags (`EndpointValue::flags`).
pub const EP_INGRESS_ENFORCE: u32 = 0x1;
pub const EP_EGRESS_ENFORCE: u32 = 0x2;
pub const EP_AUDIT: u32 = 0x4;

/// Conntrack flags.
pub const CT_F_CLOSING: u8 = 0x1;
pub const CT_F_AUDITED: u8 = 0x2;
pub const CT_F_PROXY_UPSTREAM: u8 = 0x4;
/// Created by a pure TCP SYN from the key's source (the initiator).
pub const CT_F_SYN: u8 = 0x8;

/// Policy key prefix bits that are always matched exactly (endpoint, pad, identity, egress).
pub const POLICY_STATIC_PREFIX: u32 = 72;
/// Full policy key prefix (static + proto 8 + port 16).
pub const POLICY_FULL_PREFIX: u32 = 96;

/// Precedence helpers (docs/policy-semantics.md §6.2): upper 24 bits are the inverted rule
/// priority (0 = highest), the low byte orders deny (255) > proxy redirect
/// (129..=254, or 2 without listener priority) > allow (1) > pass (0).
pub mod precedence {
    pub const DENY: u8 = 255;
    pub const REDIRECT: u8 = 2;
    pub const ALLOW: u8 = 1;
    pub const PASS: u8 = 0;
    /// Highest possible precedence: a deny at priority 0.
    pub const MAX: u32 = u32::MAX;

    /// `(0xffffff - priority) << 8 | low`; `priority` is clamped to 24 bits.
    pub const fn compose(priority: u32, low: u8) -> u32 {
        let p = if priority > 0x00ff_ffff {
            0x00ff_ffff
        } else {
            priority
        };
        ((0x00ff_ffff - p) << 8) | low as u32
    }
    pub const fn deny(priority: u32) -> u32 {
        compose(priority, DENY)
    }
    /// Lowest and highest valid listener priorities (docs/policy-semantics.md §6.2:
    /// explicit 1..=100, built-in parsers 101..=126).
    pub const LISTENER_PRIORITY_MIN: u8 = 1;
    pub const LISTENER_PRIORITY_MAX: u8 = 126;

    /// Proxy redirect; `listener_priority` 0 = none (low byte 2), else
    /// `255 - priority`. Priorities above [`LISTENER_PRIORITY_MAX`] are
    /// clamped to it (low byte 129), so a redirect always stays above every
    /// allow and below every deny; use [`try_redirect`] to reject them instead.
    pub const fn redirect(priority: u32, listener_priority: u8) -> u32 {
        if listener_priority == 0 {
            compose(priority, REDIRECT)
        } else if listener_priority > LISTENER_PRIORITY_MAX {
            compose(priority, 255 - LISTENER_PRIORITY_MAX)
        } else {
            compose(priority, 255 - listener_priority)
        }
    }
    /// Like [`redirect`], but `None` for a listener priority outside
    /// `0` (none) and `1..=126`.
    pub const fn try_redirect(priority: u32, listener_priority: u8) -> Option<u32> {
        if listener_priority > LISTENER_PRIORITY_MAX {
            None
        } else {
            Some(redirect(priority, listener_priority))
        }
    }
    pub const fn allow(priority: u32) -> u32 {
        compose(priority, ALLOW)
    }
}

/// ipcache LPM key: IPv4 prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    /// Network-order address bytes (the LPM data; aya adds the prefix length).
    pub addr: [u8; 4],
}

/// ipcache value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
    /// 0 = not a local endpoint.
    pub endpoint_id: u16,
    pub flags: u16,
}

/// Policy LPM key data (after the 4-byte prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint_id: u16,
    pub pad: u16,
    /// Peer identity; 0 = any.
    pub identity: u32,
    /// 1 = egress policy of `endpoint_id`, 0 = ingress.
    pub egress: u8,
    /// IP protocol; 0 = any (then `dport_be` must be 0).
    pub proto: u8,
    /// Destination port in network byte order (ICMP: type).
    pub dport_be: u16,
}

/// Policy value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Host order; 0 = no redirect.
    pub proxy_port: u16,
    /// 1 = deny.
    pub deny: u8,
    /// Proto+port prefix bits of the key, 0..=24.
    pub lpm_prefix_length: u8,
    pub precedence: u32,
    /// Opaque rule id, copied into events.
    pub cookie: u32,
}

/// Per-endpoint config (hash key: `u32` endpoint id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    pub ifindex: u32,
    pub identity: u32,
    /// `EP_*` flags.
    pub flags: u32,
    pub pad: u32,
}

/// Conntrack key: original-direction tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Conntrack value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets_fwd: u32,
    pub packets_rev: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub src_endpoint: u16,
    pub dst_endpoint: u16,
    pub proxy_port: u16,
    pub flags: u8,
    pub origin_hook: u8,
}

/// Ring buffer record, exactly as the kernel writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawEvent {
    pub ts_ns: u64,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub src_endpoint: u16,
    pub dst_endpoint: u16,
    pub ifindex: u32,
    pub cookie: u32,
    pub proxy_port: u16,
    pub reason: u16,
    pub kind: u8,
    pub proto: u8,
    pub hook: u8,
    pub tcp_flags: u8,
    pub policy_dir: u8,
    pub ct_state: u8,
    pub pad: [u8; 6],
}

const _: () = assert!(size_of::<IpcacheKey>() == 4);
const _: () = assert!(size_of::<IpcacheValue>() == 8);
const _: () = assert!(size_of::<PolicyKey>() == 12);
const _: () = assert!(size_of::<PolicyValue>() == 12);
const _: () = assert!(size_of::<EndpointValue>() == 16);
const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtValue>() == 40);
const _: () = assert!(size_of::<RawEvent>() == 56);
const _: () = assert!(offset_of!(PolicyKey, identity) == 4);
const _: () = assert!(offset_of!(PolicyKey, egress) == 8);
const _: () = assert!(offset_of!(PolicyKey, dport_be) == 10);
const _: () = assert!(offset_of!(PolicyValue, precedence) == 4);
const _: () = assert!(offset_of!(CtKey, proto) == 12);
const _: () = assert!(offset_of!(CtValue, proxy_port) == 36);
const _: () = assert!(offset_of!(RawEvent, reason) == 42);
const _: () = assert!(offset_of!(RawEvent, kind) == 44);

impl RawEvent {
    /// Reads a record from ring buffer bytes (unaligned-safe). `None` if too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; RawEvent is plain old data with no invalid bit patterns.
        Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<Self>()) })
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are #[repr(C)], Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::IpcacheKey {}
    unsafe impl aya::Pod for super::IpcacheValue {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::EndpointValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::RawEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_orders_deny_redirect_allow() {
        let p = 0;
        assert!(precedence::deny(p) > precedence::redirect(p, 0));
        assert!(precedence::redirect(p, 101) > precedence::redirect(p, 0));
        assert!(precedence::redirect(p, 0) > precedence::allow(p));
        assert_eq!(precedence::deny(0), precedence::MAX);
        // A lower priority number wins across priorities.
        assert!(precedence::allow(0) > precedence::deny(1));
    }

    #[test]
    fn listener_priority_is_clamped_to_1_126() {
        // 255 would have produced low byte 0 (PASS, below allow), 254 low byte 1 (= ALLOW).
        for lp in [127u8, 200, 254, 255] {
            assert_eq!(precedence::redirect(0, lp), precedence::redirect(0, 126));
            assert!(precedence::redirect(0, lp) > precedence::allow(0));
            assert!(precedence::redirect(0, lp) > precedence::redirect(0, 0));
            assert_eq!(precedence::try_redirect(0, lp), None);
        }
        assert_eq!(precedence::redirect(0, 126) & 0xff, 129);
        assert_eq!(precedence::redirect(0, 1) & 0xff, 254);
        assert_eq!(
            precedence::try_redirect(0, 101),
            Some(precedence::redirect(0, 101))
        );
    }

    #[test]
    fn drop_reason_numbers_are_stable() {
        let table = [
            (drop_reason::POLICY, 1),
            (drop_reason::POLICY_DENY, 2),
            (drop_reason::NO_PROXY_SOCKET, 3),
            (drop_reason::INVALID_SOURCE, 4),
            (drop_reason::FRAG_NOSUPPORT, 5),
            (drop_reason::UNSUPPORTED_L3, 6),
            (drop_reason::INVALID_PACKET, 7),
            (drop_reason::SK_ASSIGN_FAILED, 8),
            (drop_reason::UNKNOWN_ENDPOINT, 9),
            (drop_reason::CT_CREATE_FAILED, 10),
            (drop_reason::REDIRECT_UNSUPPORTED, 11),
            (drop_reason::CT_NO_ENTRY, 12),
            (drop_reason::PROXIED_ICMP_ERROR, 13),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
    }
}
