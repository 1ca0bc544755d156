/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc ingress on an endpoint's host-side veth: every packet the endpoint sends.
 *
 * 1. Source validation (validate.h): the source MAC, IPv4/IPv6 source and ARP
 *    sender must be the endpoint's own. Otherwise: drop, counted as
 *    DROP_SPOOFED_SOURCE.
 * 2. Unicast IPv4/IPv6 to another endpoint of the same network: drop if the
 *    network has icc=false (DROP_POLICY), else rewrite the destination MAC and
 *    redirect straight to it (fast path).
 * 2b. Unicast IP to an endpoint of the same overlay network on another host
 *    (bpf/tunnel.h): the same icc rule, then encapsulated through the
 *    overlay's VXLAN device (tunnel path). An ARP request for such an
 *    endpoint is answered here.
 * 3. On an internal network, unicast IP to anything but an endpoint of the
 *    network or its gateway: drop (DROP_INTERNAL, see internal_peer_allowed()).
 * 3a. A DNS query to the network's gateway: answered here for the network's
 *    endpoint names (dns.h), else passed to the resolver process.
 * 4. Multicast DNS from an endpoint of an icc=false network: drop (DROP_POLICY,
 *    see dns.h); other multicast goes to the bridge.
 * 4a. A reply of an established flow through a published port (nat.h): source
 *    translated back to the host's address and port, straight out through the
 *    uplink.
 * 5. Everything else goes to the kernel (bridge) unchanged.
 */
#include "dns.h"
#include "forward.h"
#include "tunnel.h"
#include "nat.h"
#include "validate.h"

int ep_ingress(struct __sk_buff *skb)
{
	struct packet p;
	struct endpoint *src, *dst;
	struct remote_endpoint *remote;
	struct network *net;
	__u32 len, pkts;
	int verdict;

	pull_headers(skb);
	src = lookup_endpoint(skb->ifindex);
	if (!src)
		return TC_ACT_OK; /* not (yet) an endpoint we know: the kernel decides */
	packet_start(&p, skb);
	switch (check_source(skb, src, &p)) {
	case SOURCE_SPOOFED:
		return drop(skb, src->id, DIR_TX, DROP_SPOOFED_SOURCE);
	case SOURCE_KERNEL:
		verdict = arp_answer_remote(skb, src, &p);
		if (verdict >= 0)
			return verdict;
		goto kernel;
	case SOURCE_VALID_IP:
		break;
	}
	switch (dns_reply(skb, src, &p)) { /* a query to the gateway's resolver? */
	case DNS_ANSWERED:
		return redirect_back(skb, src, BPFNET_REDIRECT_PEER);
	case DNS_PASSED:
		goto kernel; /* p is stale: nothing below may read it */
	default:
		break;
	}
	if (mac_is_multicast(p.eth->h_dest)) {
		if (mdns_blocked(lookup_network(src->network_id), &p))
			return drop(skb, src->id, DIR_TX, DROP_POLICY);
		goto kernel;
	}
	dst = fast_target(src->network_id, &p);
	if (!dst || dst->ifindex == src->ifindex) {
		net = lookup_network(src->network_id);
		remote = (net && net->vni) ? remote_target(src->network_id, &p) : NULL;
		if (remote) {
			if (!net->icc)
				return drop(skb, src->id, DIR_TX, DROP_POLICY);
			return tunnel_send(skb, p.eth, src, remote, net);
		}
		if (net && net->internal && !internal_peer_allowed(src->network_id, net, &p, 0))
			return drop(skb, src->id, DIR_TX, DROP_INTERNAL);
		if (!dst) {
			verdict = published_out(skb, src, &p);
			if (verdict >= 0)
				return verdict;
		}
		goto kernel;
	}
	net = lookup_network(src->network_id);
	if (!net)
		goto kernel; /* network not configured (yet): the kernel decides */
	if (!net->icc)
		return drop(skb, src->id, DIR_TX, DROP_POLICY);
	/* only p.eth is used below: no helper that could move the data runs
	 * before redirect_to_endpoint() writes the destination MAC through it */
	len = skb->len;
	pkts = skb_packets(skb);
	verdict = redirect_to_endpoint(skb, p.eth, dst, BPFNET_REDIRECT_PEER);
	metrics_count(src->id, DIR_TX, COUNT_FAST, 0, pkts, len);
	metrics_count(dst->id, DIR_RX, COUNT_FAST, 0, pkts, len);
	return verdict;

kernel: /* one exit, so the counting code is inlined once */
	return to_kernel(skb, src->id, DIR_TX);
}
