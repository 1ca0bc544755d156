/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Routed networks (driver routed): cross-host packets bypass the bridge and
 * the kernel's forwarding, in the style of Cilium's native routing.
 *
 * A routed network's struct network carries its cluster subnet(s)
 * (routed4/routed4_plen, routed6/routed6_plen; plen 0: not routed), and the
 * array routed_networks lists the ids of the routed networks (0: empty) so
 * the uplink can find which network a destination belongs to in a few
 * inlined array lookups.
 *
 *   send (ep_ingress), routed_send(): a unicast IP packet from an endpoint to
 *       an address in its network's cluster subnet that is not a local
 *       endpoint: bpf_fib_lookup from the bridge; if the route leaves through
 *       another interface (another node's block, via its advertise address):
 *       TTL/hop limit decremented (IPv4 checksum fixed incrementally), MACs
 *       from the FIB, bpf_redirect to the uplink, or bpf_redirect_neigh while
 *       the neighbour is unresolved. icc=false: dropped (DROP_POLICY).
 *   receive (uplink_ingress), routed_recv(): a packet to this host from an
 *       address of a routed network's cluster subnet to a local endpoint of
 *       that network: TTL decremented, source MAC the bridge's, destination
 *       MAC the endpoint's, bpf_redirect_peer into it. icc=false: dropped.
 *
 * Everything else (TTL <= 1, fragments needed, no route, own block, sources
 * outside the cluster subnet, a source claiming a local endpoint's address)
 * returns -1 and the caller hands the packet to the kernel unchanged, which
 * then answers with ICMP errors, applies the user's firewall, etc.
 */
#ifndef BPFNET_ROUTED_H
#define BPFNET_ROUTED_H

#include "nat.h"

#if !defined(MAX_ROUTED)
#error "MAX_ROUTED comes from abi.cflags()"
#endif

#define ROUTED_NONE (-1)

/* What routed_send/recv read of a packet before any helper call moves it. */
struct routed_pkt {
	__u32 saddr[4]; /* network byte order; IPv4 in the first word */
	__u32 daddr[4];
	__u16 tot_len;  /* IP length (host order) */
	__u8 family;    /* 4, 6 */
	__u8 ttl;       /* TTL / hop limit */
	__u8 proto;
	__u8 tos;
};

/* True if a (network byte order words) lies in prefix net/plen; plen 0: never. */
static __always_inline int routed_in_prefix(const __u32 *a, const __u32 *net, __u32 plen, __u32 max)
{
	if (plen == 0 || plen > max)
		return 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 bits, mask;

		if (plen <= (__u32)(32 * i))
			break;
		bits = plen - 32 * i;
		mask = bits >= 32 ? 0xffffffffU : bpf_htonl(~0U << (32 - bits));
		if ((a[i] ^ net[i]) & mask)
			return 0;
	}
	return 1;
}

/* Read the IP header after the Ethernet header into r. 0 or -1: not IP, truncated. */
static __always_inline int routed_parse(struct __sk_buff *skb, struct routed_pkt *r)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == ETH_P_IP_BE) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl < 5)
			return -1;
		r->family = 4;
		r->saddr[0] = iph->saddr;
		r->daddr[0] = iph->daddr;
		r->ttl = iph->ttl;
		r->proto = iph->protocol;
		r->tos = iph->tos;
		r->tot_len = bpf_ntohs(iph->tot_len);
		return 0;
	}
	if (eth->h_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		r->family = 6;
		__builtin_memcpy(r->saddr, &ip6h->saddr, 16);
		__builtin_memcpy(r->daddr, &ip6h->daddr, 16);
		r->ttl = ip6h->hop_limit;
		r->proto = ip6h->nexthdr;
		r->tot_len = bpf_ntohs(ip6h->payload_len) + sizeof(struct ipv6hdr);
		return 0;
	}
	return -1;
}

/* True if addr (r's family) is in net's cluster subnet. */
static __always_inline int routed_member(const struct network *net, const struct routed_pkt *r,
					 const __u32 *addr)
{
	if (r->family == 4)
		return routed_in_prefix(addr, &net->routed4, net->routed4_plen, 32);
	return routed_in_prefix(addr, net->routed6, net->routed6_plen, 128);
}

/* Decrement the TTL / hop limit as forwarding would (r->ttl > 1 checked). */
static __always_inline void routed_dec_ttl(struct __sk_buff *skb, const struct routed_pkt *r)
{
	__u8 ttl = r->ttl - 1;

	if (r->family == 4) {
		__u32 l3 = sizeof(struct ethhdr);
		__be16 old_word = bpfnet_htons(((__u16)r->ttl << 8) | r->proto);
		__be16 new_word = bpfnet_htons(((__u16)ttl << 8) | r->proto);

		bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), old_word, new_word,
				    sizeof(__u16));
		bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, ttl), &ttl, 1, 0);
	} else {
		bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + offsetof(struct ipv6hdr, hop_limit),
				    &ttl, 1, 0);
	}
}

/*
 * ep_ingress: endpoint src of network net sends a unicast IP packet that is
 * not for a local endpoint. Returns the verdict, or ROUTED_NONE: not a
 * cross-host packet of a routed network, the caller goes on.
 */
static __always_inline int routed_send(struct __sk_buff *skb, struct endpoint *src,
				       const struct network *net)
{
	struct routed_pkt r = {};
	struct bpf_fib_lookup fib = {};
	__u32 pkts, len;
	long rc;

	if (!net || (!net->routed4_plen && !net->routed6_plen))
		return ROUTED_NONE;
	if (routed_parse(skb, &r) < 0 || !routed_member(net, &r, r.daddr))
		return ROUTED_NONE;
	fib.ifindex = net->bridge_ifindex; /* routed as if it came in through the bridge */
	fib.l4_protocol = r.proto;
	/* tot_len stays 0: the kernel then checks the skb itself against the route's MTU, which
	 * is right for GSO super-packets too (a tot_len of 64 KB would be "needs fragmenting") */
	if (r.family == 4) {
		fib.family = AF_INET_;
		fib.tos = r.tos;
		fib.ipv4_src = r.saddr[0];
		fib.ipv4_dst = r.daddr[0];
	} else {
		fib.family = AF_INET6_;
		__builtin_memcpy(fib.ipv6_src, r.saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, r.daddr, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return ROUTED_NONE; /* no route, forwarding off, too big: the kernel says why */
	if (fib.ifindex == net->bridge_ifindex)
		return ROUTED_NONE; /* this node's own block (the gateway, a free address) */
	if (!net->icc)
		return drop(skb, src->id, DIR_TX, DROP_POLICY);
	if (r.ttl <= 1)
		return ROUTED_NONE; /* the kernel sends time exceeded */
	pkts = skb_packets(skb);
	len = skb->len;
	routed_dec_ttl(skb, &r);
	metrics_count(src->id, DIR_TX, COUNT_ROUTED, 0, pkts, len);
	return fib_redirect(skb, rc, &fib, r.family);
}

/* The local endpoint of network_id with address a (r's family), or NULL. */
static __always_inline struct endpoint *routed_local(__u32 network_id, const struct routed_pkt *r,
						     const __u32 *a)
{
	__u32 *id;

	if (r->family == 4) {
		struct ep_ipv4_key k4 = {.network_id = network_id, .addr = a[0]};

		id = endpoint_id_by_ipv4.lookup(&k4);
	} else {
		struct ep_ipv6_key k6 = {.network_id = network_id};

		__builtin_memcpy(k6.addr, a, 16);
		id = endpoint_id_by_ipv6.lookup(&k6);
	}
	return id ? endpoint_at(*id) : NULL;
}

/*
 * uplink_ingress: a packet from outside the host. Returns the verdict for a
 * packet from another node of a routed network to a local endpoint of it,
 * or ROUTED_NONE.
 */
static __always_inline int routed_recv(struct __sk_buff *skb)
{
	struct routed_pkt r = {};
	struct network *net = NULL;
	struct endpoint *ep;
	__u32 pkts, len, mtu = 0;

	if (skb->pkt_type != PACKET_HOST_ || skb->vlan_present)
		return ROUTED_NONE;
	pull_headers(skb);
	if (routed_parse(skb, &r) < 0)
		return ROUTED_NONE;
#pragma unroll
	for (__u32 i = 0; i < MAX_ROUTED; i++) {
		__u32 slot = i;
		__u32 *id = routed_networks.lookup(&slot);
		struct network *n;

		if (!id || !*id)
			continue;
		n = lookup_network(*id);
		if (n && routed_member(n, &r, r.daddr)) {
			net = n;
			break;
		}
	}
	if (!net || !routed_member(net, &r, r.saddr))
		return ROUTED_NONE; /* not ours, or from outside the cluster subnet */
	ep = routed_local(net->id, &r, r.daddr);
	if (!ep || routed_local(net->id, &r, r.saddr))
		return ROUTED_NONE; /* no such endpoint, or a source claiming a local one */
	if (!net->icc)
		return drop(skb, ep->id, DIR_RX, DROP_POLICY);
	if (r.ttl <= 1)
		return ROUTED_NONE;
	if (bpf_check_mtu(skb, ep->ifindex, &mtu, 0, 0))
		return ROUTED_NONE; /* too big for the endpoint's link: the kernel sends the ICMP error */
	pkts = skb_packets(skb);
	len = skb->len;
	routed_dec_ttl(skb, &r);
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), net->bridge_mac, ETH_ALEN_, 0);
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), ep->mac, ETH_ALEN_, 0);
	metrics_count(ep->id, DIR_RX, COUNT_ROUTED, 0, pkts, len);
	return redirect_back(skb, ep, BPFNET_REDIRECT_PEER);
}

#endif
