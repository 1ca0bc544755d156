/* SPDX-License-Identifier: Apache-2.0 */
/*
 * DNS in the datapath.
 *
 * Multicast DNS (RFC 6762: UDP port 5353 to 224.0.0.251 or ff02::fb) between
 * endpoints is left to the bridge, which floods it like any multicast, so a
 * service one endpoint announces is browsed and resolved from the others.
 * Under icc=false endpoints must not reach each other, and must not learn
 * each other's names and services either: mdns_blocked() tells ep_ingress to
 * drop what an endpoint of such a network sends to the mDNS group
 * (DROP_POLICY), as it drops their unicast. Other multicast (IPv6 neighbour
 * discovery, MLD, IGMP) still passes: the gateway needs it.
 */
#ifndef BPFNET_DNS_H
#define BPFNET_DNS_H

#include <linux/udp.h>
#include "parsing.h"
#include "maps.h"

#define MDNS_PORT 5353
#define MDNS_GROUP4 0xE00000FB /* 224.0.0.251, host order */

/* p after parse_ip() (check_source's SOURCE_VALID_IP): UDP to the mDNS group and port. */
static __always_inline int is_mdns(const struct packet *p)
{
	struct udphdr *udp = p->nh.pos;

	if (p->l4proto != IPPROTO_UDP || (void *)(udp + 1) > p->data_end)
		return 0;
	if (udp->dest != bpfnet_htons(MDNS_PORT))
		return 0;
	if (p->iph)
		return p->iph->daddr == bpfnet_htonl(MDNS_GROUP4);
	if (p->ip6h) {
		const __u32 *a = p->ip6h->daddr.in6_u.u6_addr32;

		return a[0] == bpfnet_htonl(0xFF020000) && a[1] == 0 && a[2] == 0 &&
		       a[3] == bpfnet_htonl(0xFB);
	}
	return 0;
}

static __always_inline int mdns_blocked(const struct network *net, const struct packet *p)
{
	return net && !net->icc && is_mdns(p);
}

#endif
