/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ward datapath: map key/value layouts and stable constants shared by the TC
 * programs (ward.bpf.c) and user space. The Rust mirror lives in
 * bpf-redirect/common/src/lib.rs; tests/layout.rs compiles this header with
 * the host C compiler and compares every size and offset.
 *
 * Rules: explicit padding, no bool/enum in map values, numbers below are
 * never renumbered (append only).
 */
#ifndef WARD_H
#define WARD_H

#include <linux/types.h>

/* ---- Map names (pinned as <pin root>/<name>) -------------------------- */
/* ward_ipcache, ward_policy, ward_endpoints, ward_ct, ward_events, ward_counters,
 * ward_proxy_sockets */

#define WARD_IPCACHE_MAX 65536
#define WARD_POLICY_MAX 65536
#define WARD_ENDPOINTS_MAX 4096
#define WARD_CT_MAX 131072
#define WARD_EVENTS_BYTES (256 * 1024)
#define WARD_COUNTERS_MAX 128
#define WARD_PROXY_SOCKETS_MAX 65536
#define WARD_TW_REDIRECT_MAX 4096
#define WARD_LISTENERS_MAX 16

/* ---- Reserved identities (Cilium numbering) --------------------------- */
#define WARD_ID_UNKNOWN 0
#define WARD_ID_HOST 1
#define WARD_ID_WORLD 2

/* ---- Marks -------------------------------------------------------------
 * Redirected packets carry WARD_MARK_PROXY_REDIRECT | proxy_port << 16; the
 * fwmark rule (mark & WARD_MARK_MASK == WARD_MARK_PROXY_REDIRECT) sends them
 * to the local route table. The proxy sets SO_MARK = WARD_MARK_PROXY_UPSTREAM
 * on its upstream sockets AND registers each socket's cookie (SO_COOKIE) in
 * ward_proxy_sockets; the to-endpoint program honours the mark only when the
 * packet's socket cookie is registered (the mark alone is forgeable by any
 * host socket with CAP_NET_RAW), and then tracks the flow without
 * re-evaluating policy (the redirect already did).
 */
#define WARD_MARK_MASK 0x0f00
#define WARD_MARK_PROXY_REDIRECT 0x0200
#define WARD_MARK_PROXY_UPSTREAM 0x0a00

/* ---- Hooks (event.hook, ct.origin_hook) ------------------------------- */
#define WARD_HOOK_FROM_ENDPOINT 1 /* host-side veth, TC ingress */
#define WARD_HOOK_TO_ENDPOINT 2   /* host-side veth, TC egress */
#define WARD_HOOK_FROM_NETDEV 3   /* uplink, TC ingress */
#define WARD_HOOK_TO_NETDEV 4     /* uplink, TC egress */

/*
 * The host endpoint (Cilium's reserved:host endpoint): the node's own
 * addresses are ipcache entries {identity 1, this endpoint id}; its policy
 * (host policies, CCNP nodeSelector) lives in ward_policy under this id.
 */
#define WARD_HOST_ENDPOINT_ID 0xffff

/* ---- Drop reasons (stable; never renumber) ---------------------------- */
#define WARD_DROP_POLICY 1              /* no allow entry (default deny) */
#define WARD_DROP_POLICY_DENY 2         /* explicit deny entry won */
#define WARD_DROP_NO_PROXY_SOCKET 3     /* redirect, but no proxy listener */
#define WARD_DROP_INVALID_SOURCE 4      /* source IP not this endpoint's */
#define WARD_DROP_FRAG_NOSUPPORT 5      /* non-first IPv4 fragment */
#define WARD_DROP_UNSUPPORTED_L3 6      /* IPv6 / unknown L3 at an endpoint */
#define WARD_DROP_INVALID_PACKET 7      /* truncated / malformed headers */
#define WARD_DROP_SK_ASSIGN_FAILED 8    /* bpf_sk_assign returned an error */
#define WARD_DROP_UNKNOWN_ENDPOINT 9    /* endpoint id without endpoint config */
#define WARD_DROP_CT_CREATE_FAILED 10   /* conntrack insert failed */
#define WARD_DROP_REDIRECT_UNSUPPORTED 11 /* redirect verdict at an egress hook */
#define WARD_DROP_CT_NO_ENTRY 12        /* TCP without conntrack entry, not a pure SYN */
#define WARD_DROP_PROXIED_ICMP_ERROR 13 /* ICMP error about a proxied flow's pod-sourced leg */
#define WARD_DROP_REASON_MAX 64

/* ---- Event kinds ------------------------------------------------------- */
#define WARD_EVENT_DROP 1     /* packet dropped, see reason */
#define WARD_EVENT_ALLOW 2    /* new flow allowed */
#define WARD_EVENT_REDIRECT 3 /* new flow assigned to the proxy */
#define WARD_EVENT_AUDIT 4    /* would be dropped (reason), allowed by audit */

/* ---- Conntrack states in events --------------------------------------- */
#define WARD_CT_NEW 0
#define WARD_CT_ESTABLISHED 1
#define WARD_CT_REPLY 2

/* ---- Policy direction in events ---------------------------------------- */
#define WARD_DIR_NONE 0
#define WARD_DIR_INGRESS 1
#define WARD_DIR_EGRESS 2

/* ---- Counters (per-CPU array index) ------------------------------------ */
#define WARD_CNT_FROM_ENDPOINT 0
#define WARD_CNT_TO_ENDPOINT 1
#define WARD_CNT_FROM_NETDEV 2
#define WARD_CNT_NEW_ALLOWED 3
#define WARD_CNT_NEW_REDIRECTED 4
#define WARD_CNT_CT_ESTABLISHED 5
#define WARD_CNT_CT_REPLY 6
#define WARD_CNT_AUDITED 7
#define WARD_CNT_UNTRACKED_PASS 8
#define WARD_CNT_DROPPED 9
#define WARD_CNT_EVENTS_LOST 10
#define WARD_CNT_ICMP_FRAG_NEEDED 11
#define WARD_CNT_PROXY_UPSTREAM 12
#define WARD_CNT_PROXY_MARK_UNREGISTERED 13 /* upstream mark without a registered socket */
#define WARD_CNT_TO_NETDEV 14
#define WARD_CNT_PROXY_REPLY 15 /* a reply to a proxied flow handed to the proxy's socket */
#define WARD_CNT_DROP_BASE 64 /* + drop reason */

/* ---- Endpoint flags ----------------------------------------------------- */
#define WARD_EP_INGRESS_ENFORCE 0x1
#define WARD_EP_EGRESS_ENFORCE 0x2
#define WARD_EP_AUDIT 0x4

/* ---- Conntrack flags ---------------------------------------------------- */
#define WARD_CT_F_CLOSING 0x1
#define WARD_CT_F_AUDITED 0x2
#define WARD_CT_F_PROXY_UPSTREAM 0x4
#define WARD_CT_F_SYN 0x8 /* created by a pure TCP SYN from the key's source (the initiator) */

/* ---- ipcache: LPM trie, IPv4 ------------------------------------------- */
struct ward_ipcache_key {
	__u32 prefixlen; /* 0..=32 */
	__u8 addr[4];    /* network order */
};

struct ward_ipcache_value {
	__u32 identity;
	__u16 endpoint_id; /* 0 = not a local endpoint */
	__u16 flags;       /* reserved, 0 */
};

/* ---- Policy: LPM trie, one map, keys scoped by endpoint id --------------
 * Cilium's key {prefixlen, sec_label, egress, protocol, dport} with the owning
 * endpoint in front. endpoint_id, pad, identity and egress are always matched
 * exactly (WARD_POLICY_STATIC_PREFIX bits); protocol + dport form the 24-bit
 * LPM suffix: +0 any proto/port, +8 proto any port, +8+n port prefix, +24
 * exact port.
 */
#define WARD_POLICY_STATIC_PREFIX 72
#define WARD_POLICY_FULL_PREFIX 96

struct ward_policy_key {
	__u32 prefixlen;
	__u16 endpoint_id;
	__u16 pad;
	__u32 identity; /* peer identity, 0 = any */
	__u8 egress;    /* 1 = egress policy of endpoint_id, 0 = ingress */
	__u8 proto;     /* IPPROTO_*, 0 = any */
	__be16 dport;   /* network order; ICMP type for ICMP */
};

struct ward_policy_value {
	__u16 proxy_port;       /* host order, 0 = no redirect */
	__u8 deny;              /* 1 = deny */
	__u8 lpm_prefix_length; /* proto+port prefix bits of this key, 0..=24 */
	__u32 precedence;       /* higher wins (docs/policy-semantics.md §6.2) */
	__u32 cookie;           /* opaque rule id, copied to events */
};

/* ---- Per-endpoint config: hash, key = endpoint id ---------------------- */
struct ward_endpoint {
	__u32 ifindex;  /* host-side veth */
	__u32 identity;
	__u32 flags;    /* WARD_EP_* */
	__u32 pad;
};

/* ---- Conntrack: LRU hash, key = original-direction tuple --------------- */
/* A TCP 4-tuple in network byte order (ward_tw_redirect). */
struct ward_tw_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

struct ward_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo: id as sport, 0 as dport */
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ward_ct_value {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 packets_fwd;
	__u32 packets_rev;
	__u32 src_identity;
	__u32 dst_identity;
	__u16 src_endpoint;
	__u16 dst_endpoint;
	__u16 proxy_port;
	__u8 flags;       /* WARD_CT_F_* */
	__u8 origin_hook; /* WARD_HOOK_* that created the entry (the key's saddr
			   * is always the initiator; forward packets are
			   * re-checked at every hook) */
};

/* ---- Ring buffer event ------------------------------------------------- */
struct ward_event {
	__u64 ts_ns;       /* bpf_ktime_get_ns */
	__be32 saddr;
	__be32 daddr;
	__u16 sport;       /* host order */
	__u16 dport;       /* host order; ICMP type */
	__u32 src_identity;
	__u32 dst_identity;
	__u16 src_endpoint;
	__u16 dst_endpoint;
	__u32 ifindex;
	__u32 cookie;
	__u16 proxy_port;
	__u16 reason;      /* WARD_DROP_* for DROP and AUDIT, else 0 */
	__u8 kind;         /* WARD_EVENT_* */
	__u8 proto;
	__u8 hook;         /* WARD_HOOK_* */
	__u8 tcp_flags;
	__u8 policy_dir;   /* WARD_DIR_* of the deciding policy */
	__u8 ct_state;     /* WARD_CT_* */
	__u8 pad[6];
};

#endif /* WARD_H */
