/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc ingress on the overlay's VXLAN device (bpfnet_vx): frames other hosts
 * sent to this host's endpoints, already decapsulated, tunnel key attached.
 *
 * 1. The VNI names the network (network_by_vni); unknown: drop, counted in
 *    tunnel_counters.rx_unknown.
 * 2. Only unicast IP is carried; anything else (ARP, broadcast, multicast):
 *    drop, counted as rx_not_ip.
 * 3. The destination must be a local endpoint of that network (else
 *    rx_unknown); the inner source an endpoint of that network on the host
 *    that sent it (else DROP_TUNNEL_SOURCE on the destination); icc=false
 *    drops it (DROP_POLICY), as between two local endpoints.
 * 4. Delivered straight into the endpoint (bpf_redirect_peer; in redirect
 *    mode out of its host veth), counted as its tunnel RX.
 */
#include "tunnel.h"

int tunnel_ingress(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct packet p;
	struct endpoint *dst;
	struct network *net;
	__u32 vni, *network_id, len, pkts;
	__be32 vtep;
	int verdict;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0) {
		tunnel_count(TUNNEL_RX_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	vni = key.tunnel_id;
	vtep = __builtin_bswap32(key.remote_ipv4);
	network_id = network_by_vni.lookup(&vni);
	if (!network_id) {
		tunnel_count(TUNNEL_RX_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	pull_headers(skb);
	packet_start(&p, skb);
	if (p.proto < 0 || mac_is_multicast(p.eth->h_dest) || parse_ip(&p) < 0) {
		tunnel_count(TUNNEL_RX_NOT_IP, 0);
		return TC_ACT_SHOT;
	}
	dst = tunnel_local_target(*network_id, &p);
	if (!dst) {
		tunnel_count(TUNNEL_RX_UNKNOWN, 0);
		return TC_ACT_SHOT;
	}
	if (!tunnel_source_valid(*network_id, &p, vtep))
		return drop(skb, dst->id, DIR_RX, DROP_TUNNEL_SOURCE);
	net = lookup_network(*network_id);
	if (!net || !net->icc)
		return drop(skb, dst->id, DIR_RX, DROP_POLICY);
	len = skb->len;
	pkts = skb_packets(skb);
	verdict = redirect_to_endpoint(skb, p.eth, dst, BPFNET_REDIRECT_PEER);
	metrics_count(dst->id, DIR_RX, COUNT_TUNNEL, 0, pkts, len);
	tunnel_count(TUNNEL_RX_DELIVERED, len);
	return verdict;
}
