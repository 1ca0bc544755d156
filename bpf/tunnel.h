/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Overlay networks across hosts: the encapsulating side (an endpoint sends to
 * an endpoint on another host), the decapsulating side (what the VXLAN device
 * received), and ARP answered for remote endpoints.
 *
 * As Cilium does, one collect-metadata ("external") VXLAN device per managed
 * namespace (bpfnet_vx) carries every overlay network: the sender's program
 * sets the tunnel key (the remote host's VTEP address and the network's VNI)
 * with bpf_skb_set_tunnel_key() and redirects the frame to the device, which
 * encapsulates it; no bridge, no FDB. On the receiving host, tunnel_ingress on
 * the device's tc ingress reads the key, finds the network by VNI and the
 * endpoint by address, checks that the inner source is an endpoint the
 * sending VTEP owns, and delivers with bpf_redirect_peer().
 *
 * Not carried across hosts: ARP (answered here, from the remote endpoint
 * table), IPv6 neighbour discovery (answered by the kernel's NDP proxy on the
 * network's bridge), broadcast and multicast (dropped at the receiver and
 * counted in tunnel_counters.rx_not_ip). Docker's overlay does not flood them
 * either: it programs static neighbour and FDB entries per remote endpoint.
 */
#ifndef BPFNET_TUNNEL_H
#define BPFNET_TUNNEL_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "forward.h"

#define ARPOP_REQUEST_BE bpfnet_htons(1)
#define ARPOP_REPLY_BE bpfnet_htons(2)
#define BPFNET_TUNNEL_TTL 64

/* The overlay's VXLAN device, or 0 when this host has no overlay. */
static __always_inline __u32 tunnel_ifindex(void)
{
	__u32 zero = 0;
	struct tunnel_config *cfg = tunnel_config.lookup(&zero);

	return cfg ? cfg->ifindex : 0;
}

/* The remote endpoint of network_id owning address a (network byte order). */
static __always_inline struct remote_endpoint *remote_ipv4(__u32 network_id, __be32 a)
{
	struct ep_ipv4_key key = {};

	key.network_id = network_id;
	key.addr = a;
	return remote_by_ipv4.lookup(&key);
}

static __always_inline struct remote_endpoint *remote_ipv6(__u32 network_id, const struct in6_addr *a)
{
	struct ep_ipv6_key key = {};

	key.network_id = network_id;
	__builtin_memcpy(key.addr, a, sizeof(key.addr));
	return remote_by_ipv6.lookup(&key);
}

/* The remote endpoint a parsed unicast IP packet of network_id is for, or
 * NULL. Unlike the local fast path every unicast IP qualifies (fragments,
 * extension headers): there is no other way to the other host. IPv6
 * neighbour discovery stays with the kernel (its NDP proxy answers). */
static __always_inline struct remote_endpoint *remote_target(__u32 network_id, struct packet *p)
{
	if (p->proto == ETH_P_IP_BE && p->iph)
		return remote_ipv4(network_id, p->iph->daddr);
	if (p->proto != ETH_P_IPV6_BE || !p->ip6h)
		return NULL;
	if (p->ip6h->daddr.in6_u.u6_addr8[0] == 0xff)
		return NULL;
	if (p->l4proto == IPPROTO_ICMPV6_ && icmp6_is_nd(&p->nh, p->data_end))
		return NULL;
	return remote_ipv6(network_id, &p->ip6h->daddr);
}

/*
 * Send the frame to the remote endpoint: its MAC as destination, the tunnel
 * key for the VXLAN device, redirect. Counted as the sender's tunnel TX. eth
 * as for redirect_to_endpoint(): bounds-checked, no data-moving helper since.
 * Without a tunnel device (not yet set up) the kernel gets the frame.
 */
static __always_inline int tunnel_send(struct __sk_buff *skb, struct ethhdr *eth,
				       const struct endpoint *src, const struct remote_endpoint *dst,
				       const struct network *net)
{
	struct bpf_tunnel_key key = {};
	__u32 ifindex = tunnel_ifindex();
	__u32 len = skb->len, pkts = skb_packets(skb);

	if (!ifindex || !net->vni)
		return to_kernel(skb, src->id, DIR_TX);
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN_);
	key.remote_ipv4 = __builtin_bswap32(dst->vtep); /* the helper takes host byte order */
	key.tunnel_id = net->vni;
	key.tunnel_ttl = BPFNET_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return to_kernel(skb, src->id, DIR_TX);
	metrics_count(src->id, DIR_TX, COUNT_TUNNEL, 0, pkts, len);
	return bpf_redirect(ifindex, 0);
}

/*
 * An ARP request from src for a remote endpoint's address, answered in place
 * (turned into the reply and sent back out of the veth it came from), as no
 * broadcast crosses hosts. Returns the verdict, or -1: not such a request
 * (the kernel gets it). p after packet_start(), sender already validated.
 */
static __always_inline int arp_answer_remote(struct __sk_buff *skb, const struct endpoint *src,
					     struct packet *p)
{
	struct arp_eth_ipv4 *arp = (void *)(p->eth + 1);
	struct remote_endpoint *dst;
	__be32 tpa, spa;

	if (p->proto != ETH_P_ARP_BE || (void *)(arp + 1) > p->data_end)
		return -1;
	if (arp->oper != ARPOP_REQUEST_BE || arp->htype != bpfnet_htons(1) || arp->ptype != ETH_P_IP_BE)
		return -1;
	__builtin_memcpy(&tpa, &arp->tpa, sizeof(tpa));
	__builtin_memcpy(&spa, &arp->spa, sizeof(spa));
	dst = remote_ipv4(src->network_id, tpa);
	if (!dst || spa == 0)
		return -1; /* not remote, or an ARP probe (duplicate address detection) */
	arp->oper = ARPOP_REPLY_BE;
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN_);
	__builtin_memcpy(&arp->tpa, &spa, sizeof(spa));
	__builtin_memcpy(arp->sha, dst->mac, ETH_ALEN_);
	__builtin_memcpy(&arp->spa, &tpa, sizeof(tpa));
	__builtin_memcpy(p->eth->h_dest, p->eth->h_source, ETH_ALEN_);
	__builtin_memcpy(p->eth->h_source, dst->mac, ETH_ALEN_);
	skb->cb[0] = BPFNET_CB_MARK0; /* counted here: the egress program lets it pass */
	skb->cb[1] = BPFNET_CB_MARK1;
	metrics_count(src->id, DIR_RX, COUNT_FAST, 0, 1, skb->len);
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline void tunnel_count(int what, __u32 len)
{
	__u32 zero = 0;
	struct tunnel_counters *c = tunnel_counters.lookup(&zero);

	if (!c)
		return;
	if (what == 0) {
		c->rx_packets += 1;
		c->rx_bytes += len;
	} else if (what == 1) {
		c->rx_unknown += 1;
	} else {
		c->rx_not_ip += 1;
	}
}

#define TUNNEL_RX_DELIVERED 0
#define TUNNEL_RX_UNKNOWN 1
#define TUNNEL_RX_NOT_IP 2

/* The local endpoint of network_id that owns the destination of a parsed IP
 * packet (any unicast IP: this is the only way in from the tunnel). */
static __always_inline struct endpoint *tunnel_local_target(__u32 network_id, struct packet *p)
{
	__u32 *id;

	if (p->proto == ETH_P_IP_BE) {
		struct ep_ipv4_key key = {};

		key.network_id = network_id;
		key.addr = p->iph->daddr;
		id = endpoint_id_by_ipv4.lookup(&key);
	} else {
		struct ep_ipv6_key key = {};

		key.network_id = network_id;
		__builtin_memcpy(key.addr, &p->ip6h->daddr, sizeof(key.addr));
		id = endpoint_id_by_ipv6.lookup(&key);
	}
	return id ? endpoint_at(*id) : NULL;
}

/* The inner source is an endpoint of network_id on the host that sent it. */
static __always_inline int tunnel_source_valid(__u32 network_id, struct packet *p, __be32 vtep)
{
	struct remote_endpoint *r;

	if (p->proto == ETH_P_IP_BE)
		r = remote_ipv4(network_id, p->iph->saddr);
	else
		r = remote_ipv6(network_id, &p->ip6h->saddr);
	return r && r->vtep == vtep;
}

#endif
