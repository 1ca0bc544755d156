/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc egress on a network's bridge device: what the host namespace sends into
 * the network (the gateway answering, routed traffic). Unicast IPv4/IPv6 to a
 * known endpoint is redirected straight out of that endpoint's host veth with
 * its MAC as destination and counted as the endpoint's fast-path RX. Anything
 * else goes through the bridge; the endpoint egress program counts it when it
 * arrives.
 */
#include "forward.h"

int bridge_egress(struct __sk_buff *skb)
{
	struct hdr_cursor nh;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct ipv6hdr *ip6h;
	struct endpoint *dst = NULL;
	void *data_end;
	__u32 *network_id, key, len;
	int verdict;

	key = skb->ifindex;
	network_id = network_by_bridge_ifindex.lookup(&key);
	if (!network_id)
		return TC_ACT_OK;
	if (skb->vlan_present)
		return TC_ACT_OK;
	pull_headers(skb);
	len = skb->len;
	nh.pos = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (parse_ethhdr(&nh, data_end, &eth) < 0)
		return TC_ACT_OK;
	if (mac_is_multicast(eth->h_dest))
		return TC_ACT_OK;
	if (eth->h_proto == ETH_P_IP_BE) {
		if (parse_iphdr(&nh, data_end, &iph) < 0)
			return TC_ACT_OK;
		dst = fast_target_ipv4(*network_id, iph);
	} else if (eth->h_proto == ETH_P_IPV6_BE) {
		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			return TC_ACT_OK;
		dst = fast_target_ipv6(*network_id, ip6h, &nh, data_end);
	}
	if (!dst)
		return TC_ACT_OK;
	/* bpf_redirect_peer is only valid at tc ingress, so this is always a
	 * plain redirect to the veth's egress (marked, see forward.h). */
	verdict = redirect_to_endpoint(skb, eth, dst, 0);
	metrics_count(dst->id, DIR_RX, COUNT_FAST, 0, skb_packets(skb), len);
	return verdict;
}
