/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc ingress on an endpoint's host-side veth: every packet the endpoint sends.
 *
 * 1. Source validation: the source MAC, IPv4/IPv6 source and ARP sender must
 *    be the endpoint's own (IPv6 :: is allowed for DAD). Otherwise: drop,
 *    counted as DROP_SPOOFED_SOURCE.
 * 2. Unicast IPv4/IPv6 to another endpoint of the same network: drop if the
 *    network has icc=false (DROP_POLICY), else rewrite the destination MAC and
 *    redirect straight to it (fast path).
 * 3. Everything else goes to the kernel (bridge) unchanged.
 */
#include "forward.h"

static __always_inline int ipv6_src_allowed(const struct endpoint *ep, const struct ipv6hdr *ip6h)
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

int ep_ingress(struct __sk_buff *skb)
{
	struct hdr_cursor nh;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct ipv6hdr *ip6h;
	struct arp_eth_ipv4 *arp;
	struct endpoint *src, *dst = NULL;
	struct network *net;
	void *data, *data_end;
	__u32 len, pkts, src_id;
	__be32 spa;
	int verdict;

	pull_headers(skb);
	src = lookup_endpoint(skb->ifindex);
	if (!src)
		return TC_ACT_OK; /* not (yet) an endpoint we know: the kernel decides */
	src_id = src->id;
	len = skb->len;
	pkts = skb_packets(skb);

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	nh.pos = data;
	if (parse_ethhdr(&nh, data_end, &eth) < 0)
		goto pass;
	if (!mac_equal(eth->h_source, src->mac))
		goto spoofed;
	if (skb->vlan_present)
		goto pass; /* tag already in skb metadata: leave VLANs to the kernel */

	if (eth->h_proto == ETH_P_ARP_BE) {
		if (parse_arp(&nh, data_end, &arp) < 0)
			goto pass;
		__builtin_memcpy(&spa, &arp->spa, sizeof(spa));
		if (!mac_equal(arp->sha, src->mac) || (spa != src->ipv4 && spa != 0))
			goto spoofed;
		goto pass;
	} else if (eth->h_proto == ETH_P_IP_BE) {
		if (parse_iphdr(&nh, data_end, &iph) < 0)
			goto pass;
		if (iph->saddr != src->ipv4)
			goto spoofed;
		if (mac_is_multicast(eth->h_dest))
			goto pass;
		dst = fast_target_ipv4(src->network_id, iph);
	} else if (eth->h_proto == ETH_P_IPV6_BE) {
		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			goto pass;
		if (!ipv6_src_allowed(src, ip6h))
			goto spoofed;
		if (mac_is_multicast(eth->h_dest))
			goto pass;
		dst = fast_target_ipv6(src->network_id, ip6h, &nh, data_end);
	}
	/* only eth is used below: no helper that could move the data runs before
	 * redirect_to_endpoint() writes the destination MAC through it */
	if (!dst || dst->ifindex == src->ifindex)
		goto pass;
	net = lookup_network(src->network_id);
	if (!net)
		goto pass; /* network not configured (yet): the kernel decides */
	if (!net->icc) {
		metrics_count(src_id, DIR_TX, COUNT_DROP, DROP_POLICY, pkts, 0);
		return TC_ACT_SHOT;
	}
	verdict = redirect_to_endpoint(skb, eth, dst, BPFNET_REDIRECT_PEER);
	metrics_count(src_id, DIR_TX, COUNT_FAST, 0, pkts, len);
	metrics_count(dst->id, DIR_RX, COUNT_FAST, 0, pkts, len);
	return verdict;

pass:
	metrics_count(src_id, DIR_TX, COUNT_KERNEL, 0, pkts, len);
	return TC_ACT_OK;
spoofed:
	metrics_count(src_id, DIR_TX, COUNT_DROP, DROP_SPOOFED_SOURCE, pkts, 0);
	return TC_ACT_SHOT;
}
