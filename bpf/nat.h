/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fast path for published ports: established flows from outside the host
 * to a published port, and their replies, translated here instead of by the
 * kernel's conntrack/NAT, routing and bridge.
 *
 * The kernel's nftables DNAT (controller/outside) stays the one place where a
 * flow is admitted; this only takes over once the kernel has carried it:
 *
 *   uplink_ingress, first packet to a published port (published_ports):
 *       both directions written to published_flows as FLOW_NEW, the packet
 *       goes on to the kernel (DNAT, the user's firewall, routing).
 *   bridge_egress, that flow's packet DNATed and routed to the endpoint by the
 *       kernel: FLOW_ESTABLISHED. TCP: only a packet that ACKs without
 *       SYN/FIN/RST, i.e. conntrack has seen the handshake complete; UDP: any.
 *       Only a packet whose (source, destination) match the entry written at
 *       the uplink promotes it: what other rules rewrote (SNAT, another DNAT,
 *       a source port conntrack had to change) is never fast-pathed.
 *   uplink_ingress, established: destination address and port rewritten to
 *       the endpoint's (IPv4 header checksum, L4 checksum incl. pseudo-header),
 *       TTL/hop limit decremented as routing would, MACs set, and
 *       bpf_redirect_peer into the endpoint (bpf_redirect in mode redirect).
 *   ep_ingress, a reply of an established flow: source rewritten back to the
 *       host's address and port, FIB lookup, out through the uplink with
 *       bpf_redirect (neighbour known) or bpf_redirect_neigh.
 *
 * Consistency with the kernel's conntrack entry, which no longer sees the
 * fast-pathed packets:
 * - TCP FIN or RST in either direction removes both entries and goes to the
 *   kernel, so conntrack closes its entry as usual. The kernel judges those
 *   packets after missing the flow's sequence numbers, so the controller sets
 *   nf_conntrack_tcp_be_liberal in the managed namespace (as the kernel's own
 *   flowtable does per offloaded flow; kube-proxy offers the same); an
 *   established entry lives 5 days in conntrack, far longer than an idle
 *   flow here (FLOW_TCP_IDLE).
 * - UDP: one packet per direction every FLOW_REFRESH goes the kernel's way,
 *   which keeps conntrack's entry (30 s, 120 s once a stream) alive; an entry
 *   here idle for FLOW_UDP_IDLE (< 30 s - FLOW_REFRESH) is dropped first, so
 *   the kernel's entry always outlives ours.
 * - An idle entry is dropped when its next packet comes: that packet takes
 *   the kernel's path, which still knows the flow, and learning starts over.
 * Anything not positively recognised (fragments, IPv4 options, IPv6
 * extension headers, TTL <= 1, a packet larger than the endpoint's MTU, a FIB
 * lookup that does not succeed, which includes the uplink's MTU) goes to the
 * kernel unchanged.
 */
#ifndef BPFNET_NAT_H
#define BPFNET_NAT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "forward.h"

#if !defined(FLOW_TCP_IDLE) || !defined(FLOW_UDP_IDLE) || !defined(FLOW_REFRESH)
#error "FLOW_TCP_IDLE, FLOW_UDP_IDLE and FLOW_REFRESH (seconds) come from abi.cflags()"
#endif

/* bcc 0.26 declares bpf_redirect_neigh without its plen argument: the real one. */
static long (*bpfnet_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				     __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

#define NS_PER_S 1000000000ULL
#define PACKET_HOST_ 0 /* skb->pkt_type: to us (not broadcast, multicast, another host) */
#define AF_INET_ 2
#define AF_INET6_ 10
#define TCP_FLAG_FIN_ 0x01
#define TCP_FLAG_SYN_ 0x02
#define TCP_FLAG_RST_ 0x04
#define TCP_FLAG_ACK_ 0x10

/* One TCP/UDP packet as the fast path needs it. */
struct nat_pkt {
	struct flow_key key; /* its tuple as it arrived */
	__u32 l3_off;        /* offset of the IP header */
	__u32 l4_off;        /* offset of the TCP/UDP header */
	__u32 ip_len;        /* IP length (skb->len minus Ethernet) */
	__u8 tcp_flags;
	__u8 ttl;            /* TTL / hop limit */
	__u8 proto;
	__u8 family;         /* 4, 6 */
};

/* Fill n from p (after parse_ip()): 0, or -1 when the packet is not a fast
 * path candidate. */
static __always_inline int nat_parse(struct __sk_buff *skb, struct packet *p, struct nat_pkt *n)
{
	void *data = (void *)(long)skb->data;
	__be16 *ports;
	__u8 *l4;

	if (p->proto == ETH_P_IP_BE && p->iph) {
		struct iphdr *iph = p->iph;

		if (iph->ihl != 5 || ipv4_is_fragment(iph))
			return -1;
		n->family = 4;
		n->key.saddr[0] = iph->saddr;
		n->key.daddr[0] = iph->daddr;
		n->ttl = iph->ttl;
	} else if (p->proto == ETH_P_IPV6_BE && p->ip6h) {
		struct ipv6hdr *ip6h = p->ip6h;

		n->family = 6;
		__builtin_memcpy(n->key.saddr, &ip6h->saddr, 16);
		__builtin_memcpy(n->key.daddr, &ip6h->daddr, 16);
		n->ttl = ip6h->hop_limit;
	} else {
		return -1;
	}
	if (p->l4proto != IPPROTO_TCP && p->l4proto != IPPROTO_UDP)
		return -1;
	l4 = p->nh.pos;
	if (p->l4proto == IPPROTO_TCP) {
		if ((void *)(l4 + sizeof(struct tcphdr)) > p->data_end)
			return -1;
		n->tcp_flags = l4[13];
	} else {
		if ((void *)(l4 + sizeof(struct udphdr)) > p->data_end)
			return -1;
		n->tcp_flags = 0;
	}
	ports = (__be16 *)l4;
	n->key.sport = ports[0];
	n->key.dport = ports[1];
	n->key.proto = (__u8)p->l4proto;
	n->key.family = n->family;
	n->proto = (__u8)p->l4proto;
	n->l3_off = (__u32)((void *)(p->eth + 1) - data);
	n->l4_off = (__u32)((void *)l4 - data);
	n->ip_len = skb->len > sizeof(struct ethhdr) ? skb->len - sizeof(struct ethhdr) : 0;
	return 0;
}

static __always_inline int tcp_ends(const struct nat_pkt *n)
{
	return n->proto == IPPROTO_TCP && (n->tcp_flags & (TCP_FLAG_FIN_ | TCP_FLAG_RST_));
}

/* The key of the other direction of flow f, whose direction key is k. */
static __always_inline void flow_twin_key(const struct flow_key *k, const struct flow *f,
					  struct flow_key *twin)
{
	if (f->dir == FLOW_IN) {
		/* in: client -> host; out: endpoint -> client */
		__builtin_memcpy(twin->saddr, f->addr, 16);
		twin->sport = f->port;
		__builtin_memcpy(twin->daddr, k->saddr, 16);
		twin->dport = k->sport;
	} else {
		/* out: endpoint -> client; in: client -> host */
		__builtin_memcpy(twin->saddr, k->daddr, 16);
		twin->sport = k->dport;
		__builtin_memcpy(twin->daddr, f->addr, 16);
		twin->dport = f->port;
	}
	twin->proto = k->proto;
	twin->family = k->family;
	twin->pad[0] = 0;
	twin->pad[1] = 0;
}

/* Forget both directions of flow f (key k). */
static __always_inline void flow_end(struct flow_key *k, struct flow *f)
{
	struct flow_key twin = {};

	flow_twin_key(k, f, &twin);
	published_flows.delete(&twin);
	published_flows.delete(k);
}

/*
 * Whether entry f (key k) may carry this packet now; -1 when the packet goes
 * to the kernel. The entry is removed when the flow ends (TCP FIN/RST), when
 * a SYN reuses its tuple (a new connection conntrack must see) and when it
 * was idle too long; a UDP entry due for a refresh lets one packet through.
 */
static __always_inline int flow_usable(struct flow_key *k, struct flow *f, struct nat_pkt *n,
				       __u64 now)
{
	__u64 idle = n->proto == IPPROTO_TCP ? FLOW_TCP_IDLE * NS_PER_S : FLOW_UDP_IDLE * NS_PER_S;

	if (tcp_ends(n) || now - f->last_ns > idle ||
	    (f->state == FLOW_ESTABLISHED && (n->tcp_flags & TCP_FLAG_SYN_))) {
		flow_end(k, f);
		return -1;
	}
	if (f->state != FLOW_ESTABLISHED)
		return -1;
	if (n->ttl <= 1)
		return -1; /* the kernel answers with ICMP time exceeded */
	if (n->proto == IPPROTO_UDP && now - f->kernel_ns > FLOW_REFRESH * NS_PER_S) {
		f->kernel_ns = now;
		f->last_ns = now;
		return -1;
	}
	return 0;
}

/*
 * Rewrite the destination (dst=1) or source address and port of n's packet
 * to addr/port, fixing the IPv4 header checksum and the L4 checksum (the
 * pseudo-header includes the addresses), and decrement the TTL / hop limit.
 * The helpers handle CHECKSUM_PARTIAL (GSO) skbs; a zero UDP checksum over
 * IPv4 (none) stays zero. Packet pointers are invalid afterwards.
 */
static __always_inline void nat_rewrite(struct __sk_buff *skb, struct nat_pkt *n, int dst,
					const __u32 *addr, __be16 port)
{
	__u32 csum_off = n->l4_off + (n->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							      : offsetof(struct udphdr, check));
	__u64 mangled = n->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 port_off = n->l4_off + (dst ? 2 : 0);
	__be16 old_port = dst ? n->key.dport : n->key.sport;
	const __u32 *old = dst ? n->key.daddr : n->key.saddr;

	if (n->family == 4) {
		__u32 addr_off = n->l3_off + (dst ? offsetof(struct iphdr, daddr)
						  : offsetof(struct iphdr, saddr));
		__u32 check_off = n->l3_off + offsetof(struct iphdr, check);
		/* TTL and protocol are one 16-bit word of the header checksum */
		__be16 old_word = bpfnet_htons(((__u16)n->ttl << 8) | n->proto);
		__be16 new_word = bpfnet_htons(((__u16)(n->ttl - 1) << 8) | n->proto);
		__u8 ttl = n->ttl - 1;

		bpf_l4_csum_replace(skb, csum_off, old[0], addr[0],
				    BPF_F_PSEUDO_HDR | mangled | sizeof(__u32));
		bpf_l3_csum_replace(skb, check_off, old[0], addr[0], sizeof(__u32));
		bpf_l3_csum_replace(skb, check_off, old_word, new_word, sizeof(__u16));
		bpf_skb_store_bytes(skb, addr_off, (void *)addr, sizeof(__u32), 0);
		bpf_skb_store_bytes(skb, n->l3_off + offsetof(struct iphdr, ttl), &ttl, 1, 0);
	} else {
		__u32 addr_off = n->l3_off + (dst ? offsetof(struct ipv6hdr, daddr)
						  : offsetof(struct ipv6hdr, saddr));
		__u32 from[4], to[4];
		__u8 hlim = n->ttl - 1;
		__s64 diff;

		__builtin_memcpy(from, old, 16);
		__builtin_memcpy(to, addr, 16);
		diff = bpf_csum_diff(from, 16, to, 16, 0);
		bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled);
		bpf_skb_store_bytes(skb, addr_off, to, 16, 0);
		bpf_skb_store_bytes(skb, n->l3_off + offsetof(struct ipv6hdr, hop_limit), &hlim, 1, 0);
	}
	if (port != old_port) {
		bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | sizeof(__be16));
		bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0);
	}
}

static __always_inline void port_count(__u32 slot, int dir, __u32 packets, __u32 bytes)
{
	struct port_counters *c = published_port_counters.lookup(&slot);

	if (!c)
		return;
	c->packets[dir == FLOW_OUT ? FLOW_OUT : FLOW_IN] += packets;
	c->bytes[dir == FLOW_OUT ? FLOW_OUT : FLOW_IN] += bytes;
}

/* The published port n's packet is addressed to, or NULL: first the port on
 * its destination address, then the port on every address. */
static __always_inline struct published_port *published_lookup(struct nat_pkt *n)
{
	struct published_key pk = {};
	struct published_port *pp;

	__builtin_memcpy(pk.addr, n->key.daddr, 16);
	pk.port = n->key.dport;
	pk.proto = n->proto;
	pk.family = n->family;
	pp = published_ports.lookup(&pk);
	if (pp)
		return pp;
	__builtin_memset(pk.addr, 0, sizeof(pk.addr));
	return published_ports.lookup(&pk);
}

static __always_inline void flow_init(struct flow *f, const __u32 *addr, __be16 port, __u8 dir,
				      const struct published_port *pp, __u64 now)
{
	__builtin_memcpy(f->addr, addr, 16);
	f->port = port;
	f->state = FLOW_NEW;
	f->dir = dir;
	f->endpoint_id = pp->endpoint_id;
	f->slot = pp->slot;
	f->last_ns = now;
	f->kernel_ns = now;
}

/* First packet of a flow to a published port: remember both directions as
 * FLOW_NEW (an existing entry is left alone). TCP: only a SYN starts one, so
 * the packets that close a connection never start an entry, and a connection
 * older than its entry stays on the kernel's path. */
static __always_inline void flow_learn(struct nat_pkt *n, struct published_port *pp, __u64 now)
{
	struct flow in = {}, out = {};
	struct flow_key out_key = {};

	if (n->proto == IPPROTO_TCP &&
	    (n->tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_ACK_ | TCP_FLAG_FIN_ | TCP_FLAG_RST_)) !=
		    TCP_FLAG_SYN_)
		return;
	flow_init(&in, pp->addr, pp->port, FLOW_IN, pp, now);
	flow_init(&out, n->key.daddr, n->key.dport, FLOW_OUT, pp, now);
	flow_twin_key(&n->key, &in, &out_key);
	published_flows.insert(&out_key, &out);
	published_flows.insert(&n->key, &in);
}

/*
 * uplink_ingress: a packet from outside. Returns the verdict: a redirect into
 * the endpoint for an established flow, TC_ACT_OK (the kernel's path, the
 * packet unchanged) for everything else.
 */
static __always_inline int published_in(struct __sk_buff *skb)
{
	struct packet p;
	struct nat_pkt n = {};
	struct flow *f;
	struct published_port *pp;
	struct endpoint *ep;
	struct network *net;
	__u32 pkts, len, mtu;
	__u64 now;
	void *data, *data_end;
	struct ethhdr *eth;

	pull_headers(skb);
	packet_start(&p, skb);
	/* only frames addressed to this host (not seen in promiscuous mode) */
	if (p.proto < 0 || skb->pkt_type != PACKET_HOST_ || skb->vlan_present)
		return TC_ACT_OK;
	if (parse_ip(&p) < 0 || nat_parse(skb, &p, &n) < 0)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	f = published_flows.lookup(&n.key);
	if (f && f->dir != FLOW_IN)
		return TC_ACT_OK;
	if (!f || flow_usable(&n.key, f, &n, now) < 0) {
		/* a flow's first packet, or a SYN reusing the tuple of one that ended
		 * (flow_usable() removed it); anything else learns nothing */
		pp = published_lookup(&n);
		if (pp)
			flow_learn(&n, pp, now);
		return TC_ACT_OK;
	}
	ep = endpoint_at(f->endpoint_id);
	net = ep ? lookup_network(ep->network_id) : NULL;
	if (!ep || !net) {
		flow_end(&n.key, f); /* the endpoint went away */
		return TC_ACT_OK;
	}
	mtu = 0;
	if (bpf_check_mtu(skb, ep->ifindex, &mtu, 0, 0))
		return TC_ACT_OK; /* too big for the endpoint's link: the kernel sends the ICMP error */
	f->last_ns = now;
	pkts = skb_packets(skb);
	len = skb->len;
	nat_rewrite(skb, &n, 1, f->addr, f->port);
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), net->bridge_mac, ETH_ALEN_, 0);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT; /* cannot happen: the header was there before the rewrite */
	port_count(f->slot, FLOW_IN, pkts, n.ip_len);
	metrics_count(ep->id, DIR_RX, COUNT_FAST, 0, pkts, len);
	return redirect_to_endpoint(skb, eth, ep, BPFNET_REDIRECT_PEER);
}

/*
 * Out through the interface a successful bpf_fib_lookup() named (rc SUCCESS
 * or NO_NEIGH): MACs from the lookup and bpf_redirect, or bpf_redirect_neigh
 * to the next hop while its neighbour entry is unresolved (family 4 or 6).
 */
static __always_inline int fib_redirect(struct __sk_buff *skb, long rc, struct bpf_fib_lookup *fib,
					int family)
{
	struct bpf_redir_neigh nh = {};

	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), fib->dmac, ETH_ALEN_, 0);
		bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), fib->smac, ETH_ALEN_, 0);
		return bpf_redirect(fib->ifindex, 0);
	}
	if (family == 4) {
		nh.nh_family = AF_INET_;
		nh.ipv4_nh = fib->ipv4_dst; /* the next hop, as the lookup wrote it */
	} else {
		nh.nh_family = AF_INET6_;
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
	}
	return bpfnet_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
}

/*
 * ep_ingress: a packet endpoint src sends to outside its network (p after
 * check_source(): IP parsed). Returns the verdict for a reply of an
 * established published flow sent out through the uplink, or -1: not one,
 * the caller goes on as before.
 */
static __always_inline int published_out(struct __sk_buff *skb, struct endpoint *src,
					 struct packet *p)
{
	struct nat_pkt n = {};
	struct bpf_fib_lookup fib = {};
	struct flow *f;
	__u32 pkts, len;
	__u64 now;
	long rc;

	if (nat_parse(skb, p, &n) < 0)
		return -1;
	f = published_flows.lookup(&n.key);
	if (!f || f->dir != FLOW_OUT || f->endpoint_id != src->id)
		return -1;
	now = bpf_ktime_get_ns();
	if (flow_usable(&n.key, f, &n, now) < 0)
		return -1;
	/* tot_len stays 0: the kernel then checks the skb itself against the route's MTU
	 * (is_skb_forwardable), which passes GSO super-packets a tot_len of 64 KB would fail */
	fib.ifindex = skb->ifindex;
	fib.l4_protocol = n.proto;
	fib.sport = f->port;
	fib.dport = n.key.dport;
	if (n.family == 4) {
		fib.family = AF_INET_;
		fib.ipv4_src = f->addr[0];
		fib.ipv4_dst = n.key.daddr[0];
	} else {
		fib.family = AF_INET6_;
		__builtin_memcpy(fib.ipv6_src, f->addr, 16);
		__builtin_memcpy(fib.ipv6_dst, n.key.daddr, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1; /* unreachable, forwarding off, needs fragmenting: the kernel says why */
	f->last_ns = now;
	pkts = skb_packets(skb);
	len = skb->len;
	nat_rewrite(skb, &n, 0, f->addr, f->port);
	port_count(f->slot, FLOW_OUT, pkts, n.ip_len);
	metrics_count(src->id, DIR_TX, COUNT_FAST, 0, pkts, len);
	return fib_redirect(skb, rc, &fib, n.family);
}

/*
 * bridge_egress: a packet the kernel routed to endpoint dst (p after
 * parse_ip()). When it belongs to a flow the uplink saw start, the kernel has
 * now DNATed and forwarded it: promote the flow (see the top of this file).
 */
static __always_inline void published_learn(struct __sk_buff *skb, struct packet *p,
					    struct endpoint *dst)
{
	struct nat_pkt n = {};
	struct flow_key out_key = {}, in_key = {};
	struct flow *out, *in;

	if (nat_parse(skb, p, &n) < 0)
		return;
	if (n.proto == IPPROTO_TCP &&
	    (n.tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_FIN_ | TCP_FLAG_RST_ | TCP_FLAG_ACK_)) !=
		    TCP_FLAG_ACK_)
		return;
	/* the reply direction's key: endpoint -> client */
	__builtin_memcpy(out_key.saddr, n.key.daddr, 16);
	__builtin_memcpy(out_key.daddr, n.key.saddr, 16);
	out_key.sport = n.key.dport;
	out_key.dport = n.key.sport;
	out_key.proto = n.proto;
	out_key.family = n.family;
	out = published_flows.lookup(&out_key);
	if (!out || out->dir != FLOW_OUT || out->endpoint_id != dst->id)
		return;
	flow_twin_key(&out_key, out, &in_key);
	in = published_flows.lookup(&in_key);
	if (!in || in->dir != FLOW_IN ||
	    (in->state == FLOW_ESTABLISHED && out->state == FLOW_ESTABLISHED))
		return;
	in->state = FLOW_ESTABLISHED;
	out->state = FLOW_ESTABLISHED;
}

#endif
