// SPDX-License-Identifier: GPL-2.0
/*
 * Ward TC datapath (IPv4). Three entry points share one set of pinned maps:
 *
 *   ward_from_endpoint  host-side veth, TC ingress (packets leaving a pod)
 *   ward_to_endpoint    host-side veth, TC egress  (packets entering a pod)
 *   ward_from_netdev    uplink, TC ingress         (packets from outside)
 *   ward_to_netdev      uplink, TC egress          (packets the node sends out)
 *
 * Every hook judges a packet the same way: the source endpoint's egress
 * policy when the source is a local endpoint, and the destination endpoint's
 * ingress policy when the destination is one. The uplink drops sources that
 * are local endpoints or the host (anti-spoofing) before conntrack. Allowed
 * flows get a conntrack entry (TCP: only from a pure SYN); redirects are
 * bpf_sk_assign'ed to the proxy's transparent listener (fail closed when
 * there is none). Replies skip policy; forward packets of established flows
 * are re-checked at every hook they cross, whichever hook created the entry,
 * so removing a rule cuts a flow. Verdict = return value, always.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ward.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WARD_IPCACHE_MAX);
	__type(key, struct ward_ipcache_key);
	__type(value, struct ward_ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ward_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WARD_POLICY_MAX);
	__type(key, struct ward_policy_key);
	__type(value, struct ward_policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ward_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WARD_ENDPOINTS_MAX);
	__type(key, __u32);
	__type(value, struct ward_endpoint);
} ward_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WARD_CT_MAX);
	__type(key, struct ward_ct_key);
	__type(value, struct ward_ct_value);
} ward_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WARD_EVENTS_BYTES);
} ward_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WARD_COUNTERS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ward_counters SEC(".maps");

/* Socket cookies of the proxy's upstream sockets (value unused, 1). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WARD_PROXY_SOCKETS_MAX);
	__type(key, __u64);
	__type(value, __u8);
} ward_proxy_sockets SEC(".maps");

/*
 * A SYN that reuses the 4-tuple of a proxy-side TIME_WAIT socket must not be
 * bpf_sk_assign'ed to the listener: the kernel would then skip its TIME_WAIT
 * handling, find the old socket as a duplicate when it hashes the new request
 * socket, and drop the SYN until TIME_WAIT ends (about 60 s). Such a SYN is
 * instead delivered locally unassigned; the kernel's TIME_WAIT code asks for
 * a listener, ward_sk_lookup finds the tuple here and hands it the proxy's
 * listener (from ward_listeners), and the kernel retires the TIME_WAIT socket.
 * Value: the proxy port.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WARD_TW_REDIRECT_MAX);
	__type(key, struct ward_tw_key);
	__type(value, __u32);
} ward_tw_redirect SEC(".maps");

/* The proxy's listening sockets, by proxy port (inserted by ward run). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WARD_LISTENERS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} ward_listeners SEC(".maps");

#define NSEC 1000000000ULL
#define CT_LIFETIME_TCP (21600ULL * NSEC)
#define CT_LIFETIME_CLOSING (10ULL * NSEC)
#define CT_LIFETIME_OTHER (60ULL * NSEC)

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8

#define IP_OFFSET_MASK 0x1fff

/* flow.ct_mode: which conntrack operations apply to this packet. */
#define CTM_FWD 0x1    /* look up the packet's own tuple (forward) */
#define CTM_REV 0x2    /* look up the swapped tuple (reply) */
#define CTM_CREATE 0x4 /* a new flow gets an entry */
#define CTM_ALL (CTM_FWD | CTM_REV | CTM_CREATE)

struct flow {
	struct ward_ct_key key;
	/* ICMP destination-unreachable (not frag-needed): the tuple of the packet it is about,
	 * as that packet was sent (inner.proto 0 when there is none). */
	struct ward_ct_key inner;
	__u32 ifindex;
	__u16 dport_host; /* for policy keys / events */
	__u8 tcp_flags;
	__u8 hook;
	__u8 ct_state;
	__u8 l4_ok;
	__u8 ct_mode; /* CTM_* */
};

struct decision {
	__u32 src_identity;
	__u32 dst_identity;
	__u16 src_endpoint;
	__u16 dst_endpoint;
	__u16 proxy_port;
	__u16 reason;      /* drop reason, 0 = pass */
	__u16 audit_reason; /* set when audit turned a drop into a pass */
	__u8 policy_dir;
	__u8 pad;
	__u32 cookie;
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ward_counters, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline void emit(const struct flow *f, const struct decision *d, __u8 kind,
				 __u16 reason)
{
	struct ward_event *e = bpf_ringbuf_reserve(&ward_events, sizeof(*e), 0);

	if (!e) {
		count(WARD_CNT_EVENTS_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->saddr = f->key.saddr;
	e->daddr = f->key.daddr;
	e->sport = bpf_ntohs(f->key.sport);
	e->dport = f->dport_host;
	e->src_identity = d->src_identity;
	e->dst_identity = d->dst_identity;
	e->src_endpoint = d->src_endpoint;
	e->dst_endpoint = d->dst_endpoint;
	e->ifindex = f->ifindex;
	e->cookie = d->cookie;
	e->proxy_port = d->proxy_port;
	e->reason = reason;
	e->kind = kind;
	e->proto = f->key.proto;
	e->hook = f->hook;
	e->tcp_flags = f->tcp_flags;
	e->policy_dir = d->policy_dir;
	e->ct_state = f->ct_state;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int drop(const struct flow *f, const struct decision *d, __u16 reason)
{
	count(WARD_CNT_DROPPED);
	if (reason < WARD_DROP_REASON_MAX)
		count(WARD_CNT_DROP_BASE + reason);
	emit(f, d, WARD_EVENT_DROP, reason);
	return TC_ACT_SHOT;
}

static __always_inline void resolve(__be32 addr, __u32 *identity, __u16 *endpoint)
{
	struct ward_ipcache_key k = { .prefixlen = 32 };
	struct ward_ipcache_value *v;

	__builtin_memcpy(k.addr, &addr, 4);
	v = bpf_map_lookup_elem(&ward_ipcache, &k);
	if (v) {
		*identity = v->identity;
		*endpoint = v->endpoint_id;
	} else {
		*identity = WARD_ID_WORLD;
		*endpoint = 0;
	}
}

/*
 * docs/policy-semantics.md §6.2 (__policy_can_access): L3 lookup with the peer
 * identity, then the L4-only lookup with identity 0; take the L4-only entry
 * when there is no L3 entry, when it has higher precedence, or equal
 * precedence and a longer proto/port prefix. No entry = default deny.
 * Returns 0 (pass; *proxy_port / *cookie filled) or a drop reason.
 */
static __always_inline __u16 policy_can_access(__u16 endpoint, __u32 identity, __u8 egress,
					       const struct flow *f, __u16 *proxy_port,
					       __u32 *cookie)
{
	struct ward_policy_key k = {
		.prefixlen = WARD_POLICY_FULL_PREFIX,
		.endpoint_id = endpoint,
		.identity = identity,
		.egress = egress,
		.proto = f->key.proto,
		.dport = bpf_htons(f->dport_host),
	};
	struct ward_policy_value *l3, *l4, *p;

	l3 = bpf_map_lookup_elem(&ward_policy, &k);
	if (l3 && l3->deny && l3->precedence == 0xffffffff)
		return WARD_DROP_POLICY_DENY;
	k.identity = 0;
	l4 = bpf_map_lookup_elem(&ward_policy, &k);
	p = l3;
	if (l4 && (!l3 || l4->precedence > l3->precedence ||
		   (l4->precedence == l3->precedence &&
		    l4->lpm_prefix_length > l3->lpm_prefix_length)))
		p = l4;
	if (!p)
		return WARD_DROP_POLICY;
	*cookie = p->cookie;
	if (p->deny)
		return WARD_DROP_POLICY_DENY;
	*proxy_port = p->proxy_port;
	return 0;
}

/* A host policy selects the node (its endpoint enforces a direction). */
static __always_inline int host_firewall_on(void)
{
	__u32 key = WARD_HOST_ENDPOINT_ID;
	struct ward_endpoint *ep = bpf_map_lookup_elem(&ward_endpoints, &key);

	return ep && (ep->flags & (WARD_EP_INGRESS_ENFORCE | WARD_EP_EGRESS_ENFORCE));
}

/* One direction of one endpoint's policy, with audit mode folded in. */
static __always_inline __u16 check_endpoint(struct decision *d, __u16 endpoint, __u32 peer,
					    __u8 egress, const struct flow *f)
{
	__u32 key = endpoint;
	struct ward_endpoint *ep = bpf_map_lookup_elem(&ward_endpoints, &key);
	__u32 need = egress ? WARD_EP_EGRESS_ENFORCE : WARD_EP_INGRESS_ENFORCE;
	__u16 port = 0, reason;
	__u32 cookie = 0;

	if (!ep)
		return WARD_DROP_UNKNOWN_ENDPOINT; /* never "not enforced" by omission */
	if (!(ep->flags & need))
		return 0;
	reason = policy_can_access(endpoint, peer, egress, f, &port, &cookie);
	if (reason) {
		d->cookie = cookie;
		d->policy_dir = egress ? WARD_DIR_EGRESS : WARD_DIR_INGRESS;
		if (ep->flags & WARD_EP_AUDIT) {
			if (!d->audit_reason)
				d->audit_reason = reason;
			return 0;
		}
		return reason;
	}
	if (port && !d->proxy_port) {
		d->proxy_port = port;
		d->cookie = cookie;
		d->policy_dir = egress ? WARD_DIR_EGRESS : WARD_DIR_INGRESS;
	} else if (!d->proxy_port && !d->policy_dir) {
		d->cookie = cookie;
		d->policy_dir = egress ? WARD_DIR_EGRESS : WARD_DIR_INGRESS;
	}
	return 0;
}

/*
 * Local source's egress and local destination's ingress, at every hook: a flow
 * that reaches a pod through a Service/DNAT or any other path than its own
 * veth is still held to the source endpoint's egress policy.
 */
static __always_inline __u16 evaluate(struct decision *d, const struct flow *f)
{
	__u16 reason;

	if (d->src_endpoint) {
		reason = check_endpoint(d, d->src_endpoint, d->dst_identity, 1, f);
		if (reason)
			return reason;
	}
	if (d->dst_endpoint) {
		reason = check_endpoint(d, d->dst_endpoint, d->src_identity, 0, f);
		if (reason)
			return reason;
	}
	return 0;
}

/*
 * docs/datapath.md §A: original tuple first (bpf_skc_lookup_tcp returns the
 * request sock during the handshake and the accepted socket afterwards), then
 * the listener at 127.0.0.1:proxy_port. UDP likewise: first a socket bound
 * exactly to the original destination address and port (the proxy's
 * transparent reply sockets), never a wildcard-bound one (a host daemon on
 * 0.0.0.0:53 must not receive pod traffic), then the listener.
 */
static __always_inline __u16 assign_to_proxy(struct __sk_buff *skb, const struct flow *f,
					     __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long ret;

	t.ipv4.saddr = f->key.saddr;
	t.ipv4.daddr = f->key.daddr;
	t.ipv4.sport = f->key.sport;
	t.ipv4.dport = f->key.dport;
	if (f->key.proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT)
				goto assign;
			if (sk->state == BPF_TCP_TIME_WAIT &&
			    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
				struct ward_tw_key k = {
					.saddr = f->key.saddr,
					.daddr = f->key.daddr,
					.sport = f->key.sport,
					.dport = f->key.dport,
				};
				__u32 port = proxy_port;

				bpf_sk_release(sk);
				/* Only with a listener to take it (a sockhash lookup holds a reference). */
				sk = bpf_map_lookup_elem(&ward_listeners, &port);
				if (!sk)
					return WARD_DROP_NO_PROXY_SOCKET;
				bpf_sk_release(sk);
				if (bpf_map_update_elem(&ward_tw_redirect, &k, &port, BPF_ANY))
					return WARD_DROP_NO_PROXY_SOCKET;
				/* Local delivery (fwmark route), no assignment: see
				 * ward_tw_redirect. */
				skb->mark = WARD_MARK_PROXY_REDIRECT | ((__u32)proxy_port << 16);
				return 0;
			}
			bpf_sk_release(sk);
		}
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = bpf_htons(proxy_port);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return WARD_DROP_NO_PROXY_SOCKET;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return WARD_DROP_NO_PROXY_SOCKET;
		}
	} else if (f->key.proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			if (sk->src_ip4 == f->key.daddr && sk->src_port == f->dport_host)
				goto assign;
			bpf_sk_release(sk);
		}
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = bpf_htons(proxy_port);
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return WARD_DROP_NO_PROXY_SOCKET;
	} else {
		return WARD_DROP_REDIRECT_UNSUPPORTED;
	}
assign:
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (ret)
		return WARD_DROP_SK_ASSIGN_FAILED;
	skb->mark = WARD_MARK_PROXY_REDIRECT | ((__u32)proxy_port << 16);
	return 0;
}

/*
 * A reply to a proxied flow (the reverse of a conntrack entry with a proxy
 * port), arriving at an ingress hook: the proxy's upstream leg used the
 * client's own address (the DNS proxy does, as Cilium's does), so the answer
 * is addressed to the pod but belongs to the proxy's socket bound to that
 * address. Hand it to that socket (local delivery through the fwmark route);
 * with no such socket the packet is dropped: a pod never receives an answer
 * the proxy did not judge.
 */
static __always_inline __u16 assign_reply_to_proxy(struct __sk_buff *skb, const struct flow *f,
						   __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long ret;

	t.ipv4.saddr = f->key.saddr;
	t.ipv4.daddr = f->key.daddr;
	t.ipv4.sport = f->key.sport;
	t.ipv4.dport = f->key.dport;
	if (f->key.proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return WARD_DROP_NO_PROXY_SOCKET;
		/* Only a socket bound to the pod's own address and port (not a listener). */
		if (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT ||
		    sk->src_ip4 != f->key.daddr || sk->src_port != f->dport_host) {
			bpf_sk_release(sk);
			return WARD_DROP_NO_PROXY_SOCKET;
		}
	} else if (f->key.proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return WARD_DROP_NO_PROXY_SOCKET;
		/* Only a socket bound to the pod's own address and port (not a wildcard one). */
		if (sk->src_ip4 != f->key.daddr || sk->src_port != f->dport_host) {
			bpf_sk_release(sk);
			return WARD_DROP_NO_PROXY_SOCKET;
		}
	} else {
		return WARD_DROP_NO_PROXY_SOCKET;
	}
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (ret)
		return WARD_DROP_SK_ASSIGN_FAILED;
	skb->mark = WARD_MARK_PROXY_REDIRECT | ((__u32)proxy_port << 16);
	return 0;
}

static __always_inline __u64 ct_lifetime(const struct flow *f, const struct ward_ct_value *v)
{
	if (v->flags & WARD_CT_F_CLOSING)
		return CT_LIFETIME_CLOSING;
	if (f->key.proto == IPPROTO_TCP)
		return CT_LIFETIME_TCP;
	return CT_LIFETIME_OTHER;
}

/* Parse Ethernet/IPv4/L4 into f. Returns 0, or a drop reason, or -1 = pass (not IPv4 at uplink). */
static __always_inline int parse(struct __sk_buff *skb, struct flow *f, __u8 *frag_later)
{
	struct ethhdr eth;
	struct iphdr ip;
	__u32 l4off;
	__u8 l4[8];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return WARD_DROP_INVALID_PACKET;
	if (eth.h_proto != bpf_htons(ETH_P_IP)) {
		if (eth.h_proto == bpf_htons(ETH_P_ARP))
			return -1;
		/* At the uplink: not Ward's, unless a host policy must hold (see handle). */
		return f->hook >= WARD_HOOK_FROM_NETDEV ? -2 : WARD_DROP_UNSUPPORTED_L3;
	}
	if (bpf_skb_load_bytes(skb, sizeof(eth), &ip, sizeof(ip)))
		return WARD_DROP_INVALID_PACKET;
	if (ip.ihl < 5 || ip.version != 4)
		return WARD_DROP_INVALID_PACKET;
	f->key.saddr = ip.saddr;
	f->key.daddr = ip.daddr;
	f->key.proto = ip.protocol;
	f->ct_mode = CTM_ALL;
	*frag_later = (bpf_ntohs(ip.frag_off) & IP_OFFSET_MASK) != 0;
	if (*frag_later)
		return 0;
	l4off = sizeof(eth) + ip.ihl * 4;
	switch (ip.protocol) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, l4off, l4, 8) ||
		    bpf_skb_load_bytes(skb, l4off + 13, &f->tcp_flags, 1))
			return WARD_DROP_INVALID_PACKET;
		__builtin_memcpy(&f->key.sport, &l4[0], 2);
		__builtin_memcpy(&f->key.dport, &l4[2], 2);
		f->dport_host = bpf_ntohs(f->key.dport);
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, l4off, l4, 4))
			return WARD_DROP_INVALID_PACKET;
		__builtin_memcpy(&f->key.sport, &l4[0], 2);
		__builtin_memcpy(&f->key.dport, &l4[2], 2);
		f->dport_host = bpf_ntohs(f->key.dport);
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, l4off, l4, 8))
			return WARD_DROP_INVALID_PACKET;
		/*
		 * policy port = ICMP type; CT ports = echo id (request: sport,
		 * reply: dport). Only an echo request creates (and looks up its
		 * own) state, only an echo reply matches one as a reply; every
		 * other type is judged by policy alone, without conntrack.
		 */
		f->dport_host = l4[0];
		if (l4[0] == ICMP_DEST_UNREACH && l4[1] == ICMP_FRAG_NEEDED) {
			f->l4_ok = 2; /* frag-needed: always pass */
			f->ct_mode = 0;
		} else if (l4[0] == ICMP_DEST_UNREACH) {
			struct iphdr in;
			__u8 ports[4];

			f->ct_mode = 0;
			if (!bpf_skb_load_bytes(skb, l4off + 8, &in, sizeof(in)) && in.ihl >= 5 &&
			    (in.protocol == IPPROTO_UDP || in.protocol == IPPROTO_TCP) &&
			    !bpf_skb_load_bytes(skb, l4off + 8 + in.ihl * 4, ports, 4)) {
				f->inner.saddr = in.saddr;
				f->inner.daddr = in.daddr;
				__builtin_memcpy(&f->inner.sport, &ports[0], 2);
				__builtin_memcpy(&f->inner.dport, &ports[2], 2);
				f->inner.proto = in.protocol;
			}
		} else if (l4[0] == ICMP_ECHO_REQUEST) {
			__builtin_memcpy(&f->key.sport, &l4[4], 2);
			f->ct_mode = CTM_FWD | CTM_CREATE;
		} else if (l4[0] == ICMP_ECHO_REPLY) {
			__builtin_memcpy(&f->key.dport, &l4[4], 2);
			f->ct_mode = CTM_REV;
		} else {
			f->ct_mode = 0;
		}
		break;
	default:
		break;
	}
	return 0;
}

static __always_inline void ct_fill(struct ward_ct_value *v, const struct decision *d,
				    __u64 now, __u8 flags, __u8 hook)
{
	__builtin_memset(v, 0, sizeof(*v));
	v->created_ns = now;
	v->last_seen_ns = now;
	v->packets_fwd = 1;
	v->src_identity = d->src_identity;
	v->dst_identity = d->dst_identity;
	v->src_endpoint = d->src_endpoint;
	v->dst_endpoint = d->dst_endpoint;
	v->proxy_port = d->proxy_port;
	v->flags = flags;
	v->origin_hook = hook;
}

/*
 * The proxy's upstream leg: the mark AND a socket registered in
 * ward_proxy_sockets. skb->sk is the sending socket for locally originated
 * packets at TC egress; no socket (forwarded packet) = cookie 0 = not ours.
 */
static __always_inline int is_proxy_upstream(struct __sk_buff *skb)
{
	__u64 cookie;

	if ((skb->mark & WARD_MARK_MASK) != WARD_MARK_PROXY_UPSTREAM)
		return 0;
	cookie = bpf_get_socket_cookie(skb);
	if (cookie && bpf_map_lookup_elem(&ward_proxy_sockets, &cookie))
		return 1;
	count(WARD_CNT_PROXY_MARK_UNREGISTERED);
	return 0;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 hook)
{
	struct flow f = {};
	struct decision d = {};
	struct ward_ct_key rkey;
	struct ward_ct_value *ct = 0, nct;
	__u64 now;
	__u8 frag_later = 0, pure_syn, upstream = 0;
	int ret;
	__u16 reason;

	f.hook = hook;
	f.ifindex = skb->ifindex;
	count(hook == WARD_HOOK_FROM_ENDPOINT ? WARD_CNT_FROM_ENDPOINT
		: hook == WARD_HOOK_TO_ENDPOINT	 ? WARD_CNT_TO_ENDPOINT
		: hook == WARD_HOOK_FROM_NETDEV	 ? WARD_CNT_FROM_NETDEV
						 : WARD_CNT_TO_NETDEV);

	ret = parse(skb, &f, &frag_later);
	/*
	 * IPv6 and other L3 at the uplink: the host firewall is IPv4-only, so
	 * while a host policy selects the node it fails closed there rather
	 * than let the node's IPv6 bypass it.
	 */
	if (ret == -2 && host_firewall_on())
		return drop(&f, &d, WARD_DROP_UNSUPPORTED_L3);
	if (ret < 0)
		return TC_ACT_OK;
	resolve(f.key.saddr, &d.src_identity, &d.src_endpoint);
	resolve(f.key.daddr, &d.dst_identity, &d.dst_endpoint);
	if (ret)
		return drop(&f, &d, ret);

	if (hook == WARD_HOOK_FROM_ENDPOINT) {
		/* Anti-spoofing: the source must be the endpoint behind this veth. */
		__u32 key = d.src_endpoint;
		struct ward_endpoint *ep = d.src_endpoint ? bpf_map_lookup_elem(&ward_endpoints, &key) : 0;

		if (!ep || ep->ifindex != f.ifindex)
			return drop(&f, &d, WARD_DROP_INVALID_SOURCE);
	} else if (hook == WARD_HOOK_TO_ENDPOINT) {
		__u32 key = d.dst_endpoint;
		struct ward_endpoint *ep = d.dst_endpoint ? bpf_map_lookup_elem(&ward_endpoints, &key) : 0;

		if (!ep)
			return drop(&f, &d, WARD_DROP_UNKNOWN_ENDPOINT);
	} else if (hook == WARD_HOOK_FROM_NETDEV) {
		/*
		 * Uplink anti-spoofing, before any conntrack lookup or creation:
		 * local endpoints and the host never arrive from outside.
		 */
		if (d.src_endpoint || d.src_identity == WARD_ID_HOST)
			return drop(&f, &d, WARD_DROP_INVALID_SOURCE);
		/*
		 * Traffic routed through the node, or for the host while no host
		 * policy selects it: not Ward's to judge.
		 */
		if (!d.dst_endpoint ||
		    (d.dst_endpoint == WARD_HOST_ENDPOINT_ID && !host_firewall_on())) {
			count(WARD_CNT_UNTRACKED_PASS);
			return TC_ACT_OK;
		}
	} else {
		/*
		 * Uplink egress judges the host's own traffic only, and only under
		 * a host policy: a packet with a node address but no local socket
		 * was forwarded and masqueraded (a pod's, judged at the pod's hook),
		 * and the proxy's upstream legs were decided at the redirect.
		 */
		if (d.src_endpoint != WARD_HOST_ENDPOINT_ID || !host_firewall_on() ||
		    !bpf_get_socket_cookie(skb) || is_proxy_upstream(skb)) {
			count(WARD_CNT_UNTRACKED_PASS);
			return TC_ACT_OK;
		}
	}

	if (frag_later)
		return drop(&f, &d, WARD_DROP_FRAG_NOSUPPORT);
	if (f.l4_ok == 2) {
		count(WARD_CNT_ICMP_FRAG_NEEDED);
		return TC_ACT_OK;
	}

	pure_syn = f.key.proto == IPPROTO_TCP &&
		   (f.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN)) ==
			   TCP_FLAG_SYN;
	if (hook == WARD_HOOK_TO_ENDPOINT)
		upstream = is_proxy_upstream(skb);

	now = bpf_ktime_get_ns();
	if (f.ct_mode & CTM_FWD) {
		ct = bpf_map_lookup_elem(&ward_ct, &f.key);
		if (ct && now - ct->last_seen_ns > ct_lifetime(&f, ct))
			ct = 0;
	}
	if (ct) {
		f.ct_state = WARD_CT_ESTABLISHED;
	} else {
		if (f.ct_mode & CTM_REV) {
			rkey.saddr = f.key.daddr;
			rkey.daddr = f.key.saddr;
			rkey.sport = f.key.dport;
			rkey.dport = f.key.sport;
			rkey.proto = f.key.proto;
			rkey.pad[0] = rkey.pad[1] = rkey.pad[2] = 0;
			ct = bpf_map_lookup_elem(&ward_ct, &rkey);
			if (ct && now - ct->last_seen_ns > ct_lifetime(&f, ct))
				ct = 0;
			/*
			 * Only the responder's side is a reply: a pure SYN from
			 * the responder opens a connection of its own (policy).
			 */
			if (ct && pure_syn)
				ct = 0;
		}
		if (ct) {
			/* Reply direction: no policy (docs/policy-semantics.md §6.3). */
			ct->last_seen_ns = now;
			ct->packets_rev += 1;
			if (f.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
				ct->flags |= WARD_CT_F_CLOSING;
			if (ct->proxy_port &&
			    (hook == WARD_HOOK_FROM_ENDPOINT || hook == WARD_HOOK_FROM_NETDEV)) {
				d.proxy_port = ct->proxy_port;
				f.ct_state = WARD_CT_REPLY;
				reason = assign_reply_to_proxy(skb, &f, ct->proxy_port);
				if (reason)
					return drop(&f, &d, reason);
				count(WARD_CNT_PROXY_REPLY);
				return TC_ACT_OK;
			}
			count(WARD_CNT_CT_REPLY);
			return TC_ACT_OK;
		}
		f.ct_state = WARD_CT_NEW;
	}

	if (ct) {
		ct->last_seen_ns = now;
		ct->packets_fwd += 1;
		if (pure_syn)
			ct->flags &= ~WARD_CT_F_CLOSING; /* tuple reused by a new connection */
		if (f.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			ct->flags |= WARD_CT_F_CLOSING;
		count(WARD_CNT_CT_ESTABLISHED);
		/*
		 * The proxy's upstream leg passes while its packets still come
		 * from a registered socket (also on the client's own tuple,
		 * when the proxy speaks from the client's address: the entry
		 * is then marked as the proxy's too); every other forward
		 * packet is re-checked here, whichever hook created the entry.
		 */
		if (upstream) {
			ct->flags |= WARD_CT_F_PROXY_UPSTREAM;
			return TC_ACT_OK;
		}
	} else {
		/*
		 * TCP state is only ever created by the initiator's SYN, except
		 * for the host's flows at the uplink: connections the node had
		 * before a host policy selected it (an SSH session) have no entry,
		 * so their packets go through policy (and audit mode) and, if
		 * allowed, create one.
		 */
		if (upstream) {
			/* The proxy's upstream leg: decided when the client's flow was redirected. */
			ct_fill(&nct, &d, now, WARD_CT_F_PROXY_UPSTREAM | WARD_CT_F_SYN, hook);
			if (bpf_map_update_elem(&ward_ct, &f.key, &nct, BPF_ANY))
				return drop(&f, &d, WARD_DROP_CT_CREATE_FAILED);
			count(WARD_CNT_PROXY_UPSTREAM);
			return TC_ACT_OK;
		}
		if (f.key.proto == IPPROTO_TCP && !pure_syn && hook < WARD_HOOK_FROM_NETDEV)
			return drop(&f, &d, WARD_DROP_CT_NO_ENTRY);
	}

	/*
	 * An ICMP error about a proxied flow's leg that the proxy sent from the client's
	 * address (the DNS server's port unreachable): it is the proxy's to handle, never the
	 * pod's (the pod did not send that packet and would see a refusal the proxy did not
	 * judge). The proxy answers the client when the server stays silent.
	 */
	if (f.inner.proto && (hook == WARD_HOOK_FROM_ENDPOINT || hook == WARD_HOOK_FROM_NETDEV)) {
		struct ward_ct_value *about = bpf_map_lookup_elem(&ward_ct, &f.inner);

		if (about && about->proxy_port)
			return drop(&f, &d, WARD_DROP_PROXIED_ICMP_ERROR);
	}

	reason = evaluate(&d, &f);
	if (reason) {
		/*
		 * A denied flow's entry goes, so its next packet is new again.
		 * A proxy-upstream entry stays: a forged packet on its tuple
		 * must not tear down the proxy's connection.
		 */
		if (ct && !(ct->flags & WARD_CT_F_PROXY_UPSTREAM))
			bpf_map_delete_elem(&ward_ct, &f.key);
		return drop(&f, &d, reason);
	}

	if (d.proxy_port) {
		/* bpf_sk_assign works at TC ingress only. */
		if (hook == WARD_HOOK_TO_ENDPOINT || hook == WARD_HOOK_TO_NETDEV)
			return drop(&f, &d, WARD_DROP_REDIRECT_UNSUPPORTED);
		reason = assign_to_proxy(skb, &f, d.proxy_port);
		if (reason)
			return drop(&f, &d, reason);
	}

	if (ct) {
		ct->proxy_port = d.proxy_port;
		return TC_ACT_OK;
	}

	if (f.ct_mode & CTM_CREATE) {
		ct_fill(&nct, &d, now,
			(d.audit_reason ? WARD_CT_F_AUDITED : 0) | (pure_syn ? WARD_CT_F_SYN : 0), hook);
		if (bpf_map_update_elem(&ward_ct, &f.key, &nct, BPF_ANY))
			return drop(&f, &d, WARD_DROP_CT_CREATE_FAILED);
		if (f.ct_mode & CTM_REV) {
			/*
			 * A closing entry of the opposite orientation (the
			 * responder's earlier connection on this tuple, port
			 * reuse) must not shadow this one's replies as forward
			 * packets. A live one stays: each side's packets then hit
			 * their own forward entry first and are re-checked.
			 */
			struct ward_ct_value *old;

			rkey.saddr = f.key.daddr;
			rkey.daddr = f.key.saddr;
			rkey.sport = f.key.dport;
			rkey.dport = f.key.sport;
			rkey.proto = f.key.proto;
			rkey.pad[0] = rkey.pad[1] = rkey.pad[2] = 0;
			old = bpf_map_lookup_elem(&ward_ct, &rkey);
			if (old && (old->flags & WARD_CT_F_CLOSING))
				bpf_map_delete_elem(&ward_ct, &rkey);
		}
	}

	if (d.audit_reason) {
		count(WARD_CNT_AUDITED);
		emit(&f, &d, WARD_EVENT_AUDIT, d.audit_reason);
	} else if (d.proxy_port) {
		count(WARD_CNT_NEW_REDIRECTED);
		emit(&f, &d, WARD_EVENT_REDIRECT, 0);
	} else {
		count(WARD_CNT_NEW_ALLOWED);
		emit(&f, &d, WARD_EVENT_ALLOW, 0);
	}
	return TC_ACT_OK;
}

SEC("classifier/from_endpoint")
int ward_from_endpoint(struct __sk_buff *skb)
{
	return handle(skb, WARD_HOOK_FROM_ENDPOINT);
}

SEC("classifier/to_endpoint")
int ward_to_endpoint(struct __sk_buff *skb)
{
	return handle(skb, WARD_HOOK_TO_ENDPOINT);
}

SEC("classifier/from_netdev")
int ward_from_netdev(struct __sk_buff *skb)
{
	return handle(skb, WARD_HOOK_FROM_NETDEV);
}

SEC("classifier/to_netdev")
int ward_to_netdev(struct __sk_buff *skb)
{
	return handle(skb, WARD_HOOK_TO_NETDEV);
}

/*
 * Listener lookup in the node's network namespace (BPF_PROG_TYPE_SK_LOOKUP):
 * only for the SYNs ward_tw_redirect names (a reused tuple in TIME_WAIT), it
 * selects the proxy's listener; every other lookup is left to the kernel.
 */
SEC("sk_lookup")
int ward_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct ward_tw_key k = {};
	struct bpf_sock *sk;
	__u32 *port;
	__u32 p;

	if (ctx->family != 2 /* AF_INET */ || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	k.saddr = ctx->remote_ip4;
	k.daddr = ctx->local_ip4;
	k.sport = ctx->remote_port;
	k.dport = bpf_htons((__u16)ctx->local_port);
	port = bpf_map_lookup_elem(&ward_tw_redirect, &k);
	if (!port)
		return SK_PASS;
	p = *port;
	bpf_map_delete_elem(&ward_tw_redirect, &k);
	/*
	 * A redirected flow never falls back to the kernel's own lookup (a host
	 * socket on the pod's port must not get it): no listener, no connection.
	 */
	sk = bpf_map_lookup_elem(&ward_listeners, &p);
	if (!sk)
		return SK_DROP;
	if (bpf_sk_assign(ctx, sk, 0)) {
		bpf_sk_release(sk);
		return SK_DROP;
	}
	bpf_sk_release(sk);
	return SK_PASS;
}
