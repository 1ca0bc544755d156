/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc egress on a network's bridge device: what the host namespace sends into
 * the network (the gateway answering, routed traffic). Unicast IPv4/IPv6 to a
 * known endpoint is redirected straight out of that endpoint's host veth with
 * its MAC as destination and counted as the endpoint's fast-path RX. Anything
 * else goes through the bridge; the endpoint egress program counts it when it
 * arrives. A packet of a flow to a published port that the kernel has DNATed
 * here promotes the flow to the fast path (nat.h). On an internal network, what comes from outside it (not the
 * gateway) is dropped (DROP_INTERNAL) before it is redirected.
 */
#include "forward.h"
#include "nat.h"

int bridge_egress(struct __sk_buff *skb)
{
	struct packet p;
	struct endpoint *dst;
	struct network *net;
	__u32 *network_id, key, len;
	int verdict;

	key = skb->ifindex;
	network_id = network_by_bridge_ifindex.lookup(&key);
	if (!network_id)
		return TC_ACT_OK;
	if (skb->vlan_present)
		return TC_ACT_OK;
	/* Received on an endpoint's veth and sent out of the bridge device without
	 * being routed by this host: br_netfilter's "bridged DNAT" (an endpoint
	 * reaching a published port of its own network while
	 * bridge-nf-call-iptables=1). Its POSTROUTING (masquerade, un-DNAT of the
	 * replies) runs only on the bridge's own forwarding path, so leave the
	 * packet to the bridge. Routed packets carry the bridge's or the uplink's
	 * ifindex here. */
	if (skb->ingress_ifindex && lookup_endpoint(skb->ingress_ifindex))
		return TC_ACT_OK;
	pull_headers(skb);
	len = skb->len;
	packet_start(&p, skb);
	if (p.proto < 0 || mac_is_multicast(p.eth->h_dest) || parse_ip(&p) < 0)
		return TC_ACT_OK;
	dst = fast_target(*network_id, &p);
	if (!dst)
		return TC_ACT_OK;
	net = lookup_network(*network_id);
	if (net && net->internal && !internal_peer_allowed(*network_id, net, &p, 1))
		return drop(skb, dst->id, DIR_RX, DROP_INTERNAL);
	/* routed from outside: the kernel carried a published-port flow (nat.h) */
	published_learn(skb, &p, dst);
	/* bpf_redirect_peer is only valid at tc ingress, so this is always a
	 * plain redirect to the veth's egress (marked, see forward.h). */
	verdict = redirect_to_endpoint(skb, p.eth, dst, 0);
	metrics_count(dst->id, DIR_RX, COUNT_FAST, 0, skb_packets(skb), len);
	return verdict;
}
