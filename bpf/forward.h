/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The forwarding decision shared by the endpoint and bridge programs: which
 * endpoint (if any) a unicast IP packet may be handed to directly, and the
 * redirect itself. Anything not positively recognised stays on the kernel
 * path: the fast path is an optimisation, never the only way a packet works.
 */
#ifndef BPFNET_FORWARD_H
#define BPFNET_FORWARD_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "parsing.h"
#include "maps.h"
#include "metrics.h"

#ifndef BPFNET_REDIRECT_PEER
#error "BPFNET_REDIRECT_PEER (the mode) comes from abi.cflags()"
#endif

/*
 * Marker in skb->cb[0..1] for packets we bpf_redirect() to a host veth's
 * egress. The endpoint egress program sees them again there; the marker tells
 * it they were already counted as fast path. cb[] (qdisc_skb_cb data) is not
 * cleared on the redirect, and two magic words make a stale match from other
 * users of skb->cb (e.g. the bridge) practically impossible.
 */
#define BPFNET_CB_MARK0 0xb9f0fa57
#define BPFNET_CB_MARK1 0x5eedc0de

/* True (and the marker cleared) for a packet one of our programs redirected
 * here and already counted. */
static __always_inline int take_redirect_mark(struct __sk_buff *skb)
{
	if (skb->cb[0] != BPFNET_CB_MARK0 || skb->cb[1] != BPFNET_CB_MARK1)
		return 0;
	skb->cb[0] = 0;
	skb->cb[1] = 0;
	return 1;
}

/* The endpoint in slot id, or NULL for an empty slot (ifindex 0) or an id
 * out of range. An array lookup: inlined by the JIT, no hashing. */
static __always_inline struct endpoint *endpoint_at(__u32 id)
{
	struct endpoint *ep = endpoint_by_id.lookup(&id);

	if (!ep || ep->ifindex == 0)
		return NULL;
	return ep;
}

/* The endpoint behind a host-side veth, or NULL. One hash lookup. */
static __always_inline struct endpoint *lookup_endpoint(__u32 ifindex)
{
	return endpoint_by_ifindex.lookup(&ifindex);
}

/* Network id's config, or NULL for an empty slot (bridge_ifindex 0). */
static __always_inline struct network *lookup_network(__u32 id)
{
	struct network *net = network_by_id.lookup(&id);

	if (!net || net->bridge_ifindex == 0)
		return NULL;
	return net;
}

/* The endpoint of network_id that owns iph->daddr, or NULL. Fragments stay on
 * the kernel path. */
static __always_inline struct endpoint *fast_target_ipv4(__u32 network_id, struct iphdr *iph)
{
	struct ep_ipv4_key key = {};
	__u32 *id;

	if (ipv4_is_fragment(iph))
		return NULL;
	key.network_id = network_id;
	key.addr = iph->daddr;
	id = endpoint_id_by_ipv4.lookup(&key);
	if (!id)
		return NULL;
	return endpoint_at(*id);
}

/* The endpoint of network_id that owns ip6h->daddr, or NULL. Only TCP, UDP
 * and non-ND ICMPv6 (icmp6_is_nd()) directly after the fixed header qualify:
 * extension headers are not parsed. nexthdr: what parse_ip6hdr() returned. */
static __always_inline struct endpoint *fast_target_ipv6(__u32 network_id, struct ipv6hdr *ip6h,
							 int nexthdr, struct hdr_cursor *nh,
							 void *data_end)
{
	struct ep_ipv6_key key = {};
	__u32 *id;

	if (ip6h->daddr.in6_u.u6_addr8[0] == 0xff)
		return NULL; /* multicast */
	switch (nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		break;
	case IPPROTO_ICMPV6_:
		if (icmp6_is_nd(nh, data_end))
			return NULL;
		break;
	default:
		return NULL;
	}
	key.network_id = network_id;
	__builtin_memcpy(key.addr, &ip6h->daddr, sizeof(key.addr));
	id = endpoint_id_by_ipv6.lookup(&key);
	if (!id)
		return NULL;
	return endpoint_at(*id);
}

/* The endpoint of network_id a parsed unicast IP packet may go to directly,
 * or NULL (p after parse_ip(); anything else is not a fast-path candidate). */
static __always_inline struct endpoint *fast_target(__u32 network_id, struct packet *p)
{
	if (p->proto == ETH_P_IP_BE)
		return fast_target_ipv4(network_id, p->iph);
	if (p->proto == ETH_P_IPV6_BE)
		return fast_target_ipv6(network_id, p->ip6h, p->l4proto, &p->nh, p->data_end);
	return NULL;
}

/* What icc=false lets through between two endpoints of one network: all but
 * unicast IPv4/IPv6, i.e. multicast and broadcast frames, ARP and other
 * non-IP protocols, IPv6 neighbour discovery (icmp6_is_nd()), and IPv6 too
 * short to judge. p after packet_start(). */
static __always_inline int icc_exempt(struct packet *p)
{
	if (p->proto < 0 || mac_is_multicast(p->eth->h_dest))
		return 1;
	if (p->proto == ETH_P_IP_BE)
		return 0;
	if (p->proto != ETH_P_IPV6_BE)
		return 1;
	p->l4proto = parse_ip6hdr(&p->nh, p->data_end, &p->ip6h);
	if (p->l4proto < 0)
		return 1;
	return p->l4proto == IPPROTO_ICMPV6_ && icmp6_is_nd(&p->nh, p->data_end);
}

/* IPv6 address a is one of net's gateways. */
static __always_inline int ipv6_is_gateway(const struct network *net, const __u32 *a)
{
#pragma unroll
	for (int i = 0; i < MAX_GATEWAY6; i++) {
		if (i >= net->n_gateway6)
			break;
		if (a[0] == net->gateway6[i][0] && a[1] == net->gateway6[i][1] &&
		    a[2] == net->gateway6[i][2] && a[3] == net->gateway6[i][3])
			return 1;
	}
	return 0;
}

/*
 * Internal networks (network create --internal): nothing leaves or enters.
 * Whether the peer of a packet may talk to an endpoint of network_id: the
 * destination of what the endpoint sends (from_peer=0) or the source of what
 * it receives (from_peer=1). Allowed: anything that is not unicast IP (ARP,
 * neighbour discovery, multicast, broadcast, too short to judge) and unicast
 * IP whose peer is the network's gateway, an IPv6 link-local address (on the
 * link by definition) or an endpoint of the network. p after packet_start();
 * parse_ip() is run here if it has not been.
 */
static __always_inline int internal_peer_allowed(__u32 network_id, const struct network *net,
						 struct packet *p, int from_peer)
{
	if (p->proto < 0 || mac_is_multicast(p->eth->h_dest))
		return 1;
	if (p->proto != ETH_P_IP_BE && p->proto != ETH_P_IPV6_BE)
		return 1;
	if (!p->iph && !p->ip6h && parse_ip(p) < 0)
		return 1;
	if (p->proto == ETH_P_IP_BE) {
		struct ep_ipv4_key key = {};

		if (!p->iph)
			return 1;
		key.addr = from_peer ? p->iph->saddr : p->iph->daddr;
		if (key.addr == net->gateway4)
			return 1;
		key.network_id = network_id;
		return endpoint_id_by_ipv4.lookup(&key) != NULL;
	} else {
		struct ep_ipv6_key key = {};
		struct in6_addr *a;

		if (!p->ip6h)
			return 1;
		a = from_peer ? &p->ip6h->saddr : &p->ip6h->daddr;
		if (a->in6_u.u6_addr8[0] == 0xff ||
		    (a->in6_u.u6_addr8[0] == 0xfe && (a->in6_u.u6_addr8[1] & 0xc0) == 0x80))
			return 1; /* multicast, link-local */
		__builtin_memcpy(key.addr, a, sizeof(key.addr));
		if (ipv6_is_gateway(net, key.addr))
			return 1;
		key.network_id = network_id;
		return endpoint_id_by_ipv6.lookup(&key) != NULL;
	}
}

/*
 * Set the destination MAC and redirect to dst. peer=1: into dst's eth0 ingress
 * (only valid from a tc ingress hook); peer=0: out of dst's host veth, marked
 * so its egress program does not count the packet a second time.
 *
 * eth must come from parse_ethhdr() on this skb with no helper call since
 * that could move the data (bpf_skb_pull_data, bpf_skb_store_bytes): it is
 * already bounds-checked, so the MAC is written directly instead of through
 * the bpf_skb_store_bytes() helper. A cloned skb is still safe: for programs
 * that write packet data the verifier adds a prologue that unclones it first.
 * No checksum covers the Ethernet header.
 */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct ethhdr *eth,
						struct endpoint *dst, int peer)
{
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN_);
	if (peer)
		return bpf_redirect_peer(dst->ifindex, 0);
	skb->cb[0] = BPFNET_CB_MARK0;
	skb->cb[1] = BPFNET_CB_MARK1;
	return bpf_redirect(dst->ifindex, 0);
}

/* Send skb (an answer to something src sent, its MACs already written) back
 * into src: into its eth0 (peer), or out of its host veth, marked as counted. */
static __always_inline int redirect_back(struct __sk_buff *skb, struct endpoint *src, int peer)
{
	if (peer)
		return bpf_redirect_peer(src->ifindex, 0);
	skb->cb[0] = BPFNET_CB_MARK0;
	skb->cb[1] = BPFNET_CB_MARK1;
	return bpf_redirect(src->ifindex, 0);
}

/* Make the first bytes linear: senders such as AF_PACKET can hand us skbs
 * whose headers are in fragments, and direct packet access only sees the
 * linear part. Only when needed: the helper call is not free, and on a cloned
 * skb (e.g. while tcpdump watches) it copies the head. Asking for more than
 * skb->len would fail, hence the min. */
static __always_inline void pull_headers(struct __sk_buff *skb)
{
	__u32 want = skb->len < BPFNET_PULL_LEN ? skb->len : BPFNET_PULL_LEN;
	__u32 linear = (__u32)(skb->data_end - skb->data);

	if (linear < want)
		bpf_skb_pull_data(skb, want);
}

#endif
