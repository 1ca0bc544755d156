/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc egress on an endpoint's host-side veth: every packet about to be
 * delivered to the endpoint, whether the bridge forwarded it (kernel path) or
 * one of our programs bpf_redirect()ed it here (marked in skb->cb, already
 * counted as fast path).
 *
 * It also enforces icc=false for what reaches the endpoint through the bridge
 * from another endpoint of its network (unicast IP only, see icc_exempt()), so
 * the policy holds even for destinations the fast path does not know, and
 * internal networks: unicast IP from outside the network is dropped
 * (DROP_INTERNAL; bridge_egress checks what it redirects itself).
 */
#include "forward.h"

int ep_egress(struct __sk_buff *skb)
{
	struct packet p;
	struct endpoint *ep, *src;
	struct network *net;
	__u32 in_ifindex;

	if (take_redirect_mark(skb))
		return TC_ACT_OK;
	ep = lookup_endpoint(skb->ifindex);
	if (!ep)
		return TC_ACT_OK;
	net = lookup_network(ep->network_id);
	if (net && net->internal) {
		pull_headers(skb);
		packet_start(&p, skb);
		if (!internal_peer_allowed(ep->network_id, net, &p, 1))
			return drop(skb, ep->id, DIR_RX, DROP_INTERNAL);
	}
	in_ifindex = skb->ingress_ifindex;
	if (in_ifindex == 0 || in_ifindex == skb->ifindex)
		goto kernel; /* sent by the host itself */
	src = lookup_endpoint(in_ifindex);
	if (!src || src->network_id != ep->network_id)
		goto kernel;
	if (!net || net->icc)
		goto kernel;
	pull_headers(skb);
	packet_start(&p, skb);
	if (icc_exempt(&p))
		goto kernel;
	return drop(skb, ep->id, DIR_RX, DROP_POLICY);

kernel: /* one exit, so the counting code is inlined once */
	return to_kernel(skb, ep->id, DIR_RX);
}
