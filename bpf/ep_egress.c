/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc egress on an endpoint's host-side veth: every packet about to be
 * delivered to the endpoint, whether the bridge forwarded it (kernel path) or
 * one of our programs bpf_redirect()ed it here (marked in skb->cb, already
 * counted as fast path).
 *
 * It also enforces icc=false for what reaches the endpoint through the bridge
 * from another endpoint of its network (unicast IP only, neighbour discovery
 * excepted), so the policy holds
 * even for destinations the fast path does not know.
 */
#include "forward.h"

int ep_egress(struct __sk_buff *skb)
{
	struct hdr_cursor nh;
	struct ethhdr *eth;
	struct endpoint *ep, *src;
	struct network *net;
	void *data_end;
	__u32 len, pkts, in_ifindex;

	if (skb->cb[0] == BPFNET_CB_MARK0 && skb->cb[1] == BPFNET_CB_MARK1) {
		skb->cb[0] = 0;
		skb->cb[1] = 0;
		return TC_ACT_OK;
	}
	ep = lookup_endpoint(skb->ifindex);
	if (!ep)
		return TC_ACT_OK;
	len = skb->len;
	pkts = skb_packets(skb);

	in_ifindex = skb->ingress_ifindex;
	if (in_ifindex == 0 || in_ifindex == skb->ifindex)
		goto pass; /* sent by the host itself */
	src = lookup_endpoint(in_ifindex);
	if (!src || src->network_id != ep->network_id)
		goto pass;
	net = lookup_network(ep->network_id);
	if (!net || net->icc)
		goto pass;
	pull_headers(skb);
	nh.pos = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (parse_ethhdr(&nh, data_end, &eth) < 0)
		goto pass;
	if (mac_is_multicast(eth->h_dest))
		goto pass;
	if (eth->h_proto != ETH_P_IP_BE && eth->h_proto != ETH_P_IPV6_BE)
		goto pass;
	if (eth->h_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6h;
		int type;

		/* Unicast neighbour advertisements must get through, like ARP
		 * does: icc=false blocks traffic, not address resolution. */
		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			goto pass;
		if (ip6h->nexthdr == IPPROTO_ICMPV6_) {
			type = parse_icmp6_type(&nh, data_end);
			if (type < 0 || (type >= ICMPV6_ND_FIRST && type <= ICMPV6_ND_LAST))
				goto pass;
		}
	}
	metrics_count(ep->id, DIR_RX, COUNT_DROP, DROP_POLICY, pkts, 0);
	return TC_ACT_SHOT;

pass:
	metrics_count(ep->id, DIR_RX, COUNT_KERNEL, 0, pkts, len);
	return TC_ACT_OK;
}
