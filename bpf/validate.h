/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Source validation: is a packet an endpoint sends really from that endpoint?
 *
 * An endpoint may send only from its own MAC, its own IPv4 address, one of
 * its IPv6 addresses (or "::", for DAD probes and their MLD reports), and ARP
 * only with its own MAC and IPv4 address (or 0.0.0.0, ARP probes) as sender.
 * What the check cannot parse (truncated headers, VLAN-tagged frames, other
 * protocols) is not ours to judge and goes to the kernel, which applies its
 * own rules.
 */
#ifndef BPFNET_VALIDATE_H
#define BPFNET_VALIDATE_H

#include "parsing.h"
#include "maps.h"

enum source_verdict {
	SOURCE_SPOOFED,  /* drop as DROP_SPOOFED_SOURCE */
	SOURCE_KERNEL,   /* valid or not checkable, and not IP: for the kernel */
	SOURCE_VALID_IP, /* IPv4/IPv6 from the endpoint's own address; parse_ip() done */
};

static __always_inline int ipv6_source_valid(const struct endpoint *ep,
					     const struct ipv6hdr *ip6h)
{
	__u32 s[4];

	__builtin_memcpy(s, &ip6h->saddr, sizeof(s));
	if ((s[0] | s[1] | s[2] | s[3]) == 0)
		return 1; /* "::": DAD probes and their MLD reports */
#pragma unroll
	for (int i = 0; i < MAX_EP_IPV6; i++) {
		if (i >= ep->n_ipv6)
			break;
		if (s[0] == ep->ipv6[i][0] && s[1] == ep->ipv6[i][1] && s[2] == ep->ipv6[i][2] &&
		    s[3] == ep->ipv6[i][3])
			return 1;
	}
	return 0;
}

static __always_inline int arp_sender_valid(const struct endpoint *ep,
					    const struct arp_eth_ipv4 *arp)
{
	__be32 spa;

	__builtin_memcpy(&spa, &arp->spa, sizeof(spa)); /* packed: at an odd offset */
	return mac_equal(arp->sha, ep->mac) && (spa == ep->ipv4 || spa == 0);
}

/* Check every source field ep could forge in p (after packet_start()). For
 * SOURCE_VALID_IP, p holds the parsed IP header for the forwarding decision. */
static __always_inline enum source_verdict check_source(struct __sk_buff *skb,
							 const struct endpoint *ep,
							 struct packet *p)
{
	struct arp_eth_ipv4 *arp;

	if (p->proto < 0)
		return SOURCE_KERNEL;
	if (!mac_equal(p->eth->h_source, ep->mac))
		return SOURCE_SPOOFED;
	if (skb->vlan_present)
		return SOURCE_KERNEL; /* tag already in skb metadata: leave VLANs to the kernel */
	if (p->proto == ETH_P_ARP_BE) {
		if (parse_arp(&p->nh, p->data_end, &arp) < 0)
			return SOURCE_KERNEL;
		return arp_sender_valid(ep, arp) ? SOURCE_KERNEL : SOURCE_SPOOFED;
	}
	if (parse_ip(p) < 0)
		return SOURCE_KERNEL; /* not IP, or a header we cannot read */
	if (p->proto == ETH_P_IP_BE)
		return p->iph->saddr == ep->ipv4 ? SOURCE_VALID_IP : SOURCE_SPOOFED;
	return ipv6_source_valid(ep, p->ip6h) ? SOURCE_VALID_IP : SOURCE_SPOOFED;
}

#endif
