/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Overlay networks across hosts: the encapsulating side (an endpoint sends to
 * an endpoint on another host), the decapsulating side (what another host
 * sent), and ARP answered for remote endpoints.
 *
 * Two ways to carry a frame, the same VXLAN on the wire (UDP 4789, the
 * network's VNI, the inner Ethernet frame), so hosts of either kind interwork:
 *
 *   native (tunnel_config.vtep set, the default): the programs write and strip
 *       the outer headers themselves. tunnel_encap() looks up the route to the
 *       remote VTEP (bpf_fib_lookup from the uplink), grows the frame with
 *       bpf_skb_adjust_room() (encapsulation flags, so GSO super-packets are
 *       segmented as UDP tunnel packets), writes outer IPv4/UDP/VXLAN and the
 *       inner Ethernet header and redirects to the uplink (bpf_redirect, or
 *       bpf_redirect_neigh while the neighbour is unresolved). On the
 *       receiving host tunnel_recv() in uplink_ingress checks the outer
 *       headers, the VNI, the inner destination (a local endpoint) and source
 *       (an endpoint the sending VTEP owns), strips 50 bytes and delivers with
 *       bpf_redirect_peer(). Neither host's VXLAN device, UDP socket, route
 *       lookup per packet or GRO cell is on the way.
 *   device (--overlay-encap device, and whatever the native path declines):
 *       as Cilium does, one collect-metadata ("external") VXLAN device per
 *       managed namespace (bpfnet_vx) carries every overlay network: the
 *       sender's program sets the tunnel key (remote VTEP, VNI) with
 *       bpf_skb_set_tunnel_key() and redirects the frame to the device, which
 *       encapsulates it; tunnel_ingress on the device's tc ingress reads the
 *       key and delivers as above.
 *
 * The native receive side declines (the device path takes over, and its
 * program drops and counts what no endpoint takes): GSO super-packets (only
 * kernels with BPF_F_ADJ_ROOM_DECAP_L4_UDP, newer than 6.18, can clear their
 * tunnel GSO state in a program), kernels whose bpf_skb_adjust_room() lacks
 * the decapsulation flags (before 6.3), fragments, anything not for a local
 * endpoint of the VNI's network or not from its VTEP, icc=false networks.
 * The native send side declines (device path) when the FIB has no route to
 * the remote VTEP or the outer packet would not fit the route's MTU (the
 * device then sends the endpoint its ICMP error).
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

#include <uapi/linux/udp.h>

#include "nat.h"

#define ARPOP_REQUEST_BE bpfnet_htons(1)
#define ARPOP_REPLY_BE bpfnet_htons(2)
#define BPFNET_TUNNEL_TTL 64
#define VXLAN_PORT_BE bpfnet_htons(4789)
#define VXLAN_FLAG_VNI_BE bpfnet_htonl(0x08000000) /* the I flag: the VNI is valid */

/* Flags of bpf_skb_adjust_room() newer than the uapi header bcc compiles with
 * (6.1): removing an outer IPv4 header in front of an inner IPv4/IPv6 one. */
#define ADJ_ROOM_DECAP_L3_IPV4_ (1ULL << 7)
#define ADJ_ROOM_DECAP_L3_IPV6_ (1ULL << 8)

/* What tunnel_encap() writes behind the outer Ethernet header: 50 bytes. */
struct vxlan_encap {
	struct iphdr ip;
	struct udphdr udp;
	__be32 vx_flags;
	__be32 vx_vni;       /* VNI << 8 */
	struct ethhdr inner; /* the endpoint's frame's own header */
} __attribute__((packed));

#define VXLAN_ROOM ((__s32)sizeof(struct vxlan_encap))
/* Linear bytes tunnel_recv() reads: outer Ethernet, the 50 bytes, the inner IPv6 header. */
#define VXLAN_PULL_LEN (sizeof(struct ethhdr) + sizeof(struct vxlan_encap) + sizeof(struct ipv6hdr))

static __always_inline struct tunnel_config *tunnel_cfg(void)
{
	__u32 zero = 0;

	return tunnel_config.lookup(&zero);
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

static __always_inline void tunnel_count_native(int encap)
{
	__u32 zero = 0;
	struct tunnel_counters *c = tunnel_counters.lookup(&zero);

	if (!c)
		return;
	if (encap)
		c->tx_native += 1;
	else
		c->rx_native += 1;
}

/* The one's complement sum of the 20-byte IPv4 header h, folded: its checksum. */
static __always_inline __u16 ipv4_csum(struct iphdr *h)
{
	__u32 sum = (__u32)bpf_csum_diff(0, 0, (__be32 *)h, sizeof(*h), 0);

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * The native way: encapsulate in place and send out of the uplink. Returns
 * the verdict, or -1 before anything changed (no route to the VTEP, the
 * helper refused): the caller takes the device path. inner_proto: the
 * frame's ethertype; eth must not be used after this.
 */
static __always_inline int tunnel_encap(struct __sk_buff *skb, const struct endpoint *src,
					const struct remote_endpoint *dst, const struct network *net,
					const struct tunnel_config *cfg, __be16 inner_proto)
{
	struct bpf_fib_lookup fib = {};
	struct vxlan_encap h = {};
	__u32 len = skb->len, pkts = skb_packets(skb), outer;
	__be16 outer_proto = ETH_P_IP_BE;
	long rc;

	/* the outer packet is this host's own: an output lookup through the uplink */
	fib.family = AF_INET_;
	fib.ifindex = cfg->uplink_ifindex;
	fib.l4_protocol = IPPROTO_UDP;
	fib.ipv4_src = cfg->vtep;
	fib.ipv4_dst = dst->vtep;
	/* the outer packet must fit the route's MTU, else the device path sends the ICMP error
	 * (path MTU discovery); a GSO super-packet is checked per segment later: tot_len 0 */
	if (!skb->gso_size)
		fib.tot_len = len + VXLAN_ROOM - sizeof(struct ethhdr);
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	/* a GSO super-packet may pass 64 KB with the outer headers; segmentation
	 * rewrites the lengths and the checksum of every segment */
	outer = len + VXLAN_ROOM - sizeof(struct ethhdr);
	if (outer > 0xffff)
		outer = 0xffff;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.ttl = BPFNET_TUNNEL_TTL;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.tot_len = bpfnet_htons(outer);
	h.ip.id = (__be16)bpf_get_prandom_u32(); /* no DF, as the kernel's VXLAN device by default */
	h.ip.saddr = cfg->vtep;
	h.ip.daddr = dst->vtep;
	h.ip.check = ipv4_csum(&h.ip);
	/* the source port spreads flows over the underlay's ECMP paths, as the
	 * kernel does: from the inner flow's hash, in 32768..65535 */
	h.udp.source = bpfnet_htons(0x8000 | (bpf_get_hash_recalc(skb) & 0x7fff));
	h.udp.dest = VXLAN_PORT_BE;
	h.udp.len = bpfnet_htons(outer - sizeof(struct iphdr));
	/* h.udp.check stays 0: allowed for IPv4 (RFC 7348), the kernel's default */
	h.vx_flags = VXLAN_FLAG_VNI_BE;
	h.vx_vni = bpfnet_htonl(net->vni << 8);
	__builtin_memcpy(h.inner.h_dest, dst->mac, ETH_ALEN_);
	__builtin_memcpy(h.inner.h_source, src->mac, ETH_ALEN_);
	h.inner.h_proto = inner_proto;
	if (bpf_skb_adjust_room(skb, VXLAN_ROOM, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
					BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr))))
		return -1;
	bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &h, sizeof(h), 0);
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &outer_proto, sizeof(outer_proto), 0);
	metrics_count(src->id, DIR_TX, COUNT_TUNNEL, 0, pkts, len);
	tunnel_count_native(1);
	return fib_redirect(skb, rc, &fib, 4);
}

/*
 * Send the frame to the remote endpoint, counted as the sender's tunnel TX:
 * natively (tunnel_encap) where configured and possible, else through the
 * VXLAN device (its MAC as destination, the tunnel key, redirect). eth as for
 * redirect_to_endpoint(): bounds-checked, no data-moving helper since.
 * Without a tunnel device (not yet set up) the kernel gets the frame.
 */
static __always_inline int tunnel_send(struct __sk_buff *skb, struct ethhdr *eth,
				       const struct endpoint *src, const struct remote_endpoint *dst,
				       const struct network *net)
{
	struct bpf_tunnel_key key = {};
	struct tunnel_config *cfg = tunnel_cfg();
	__u32 len = skb->len, pkts = skb_packets(skb);
	__be16 inner_proto = eth->h_proto;
	int verdict;

	if (!cfg || !cfg->ifindex || !net->vni)
		return to_kernel(skb, src->id, DIR_TX);
	if (cfg->vtep) {
		verdict = tunnel_encap(skb, src, dst, net, cfg, inner_proto);
		if (verdict >= 0)
			return verdict;
		/* nothing changed, but the verifier forgets eth across the calls */
		eth = (void *)(long)skb->data;
		if ((void *)(eth + 1) > (void *)(long)skb->data_end)
			return to_kernel(skb, src->id, DIR_TX);
	}
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN_);
	key.remote_ipv4 = __builtin_bswap32(dst->vtep); /* the helper takes host byte order */
	key.tunnel_id = net->vni;
	key.tunnel_ttl = BPFNET_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return to_kernel(skb, src->id, DIR_TX);
	metrics_count(src->id, DIR_TX, COUNT_TUNNEL, 0, pkts, len);
	return bpf_redirect(cfg->ifindex, 0);
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

#define TUNNEL_NONE (-1)

/* Make the first n bytes linear (at most skb->len), as pull_headers() does. */
static __always_inline void pull_len(struct __sk_buff *skb, __u32 n)
{
	__u32 want = skb->len < n ? skb->len : n;

	if ((__u32)(skb->data_end - skb->data) < want)
		bpf_skb_pull_data(skb, want);
}

/*
 * uplink_ingress: a VXLAN packet to this host's VTEP for a local endpoint of
 * an overlay network, decapsulated and delivered straight into it (see the
 * top of this file). Returns the verdict, or TUNNEL_NONE: not such a packet,
 * or one the native path declines; the caller goes on (the kernel's UDP
 * socket then hands it to the VXLAN device and tunnel_ingress).
 */
static __always_inline int tunnel_recv(struct __sk_buff *skb)
{
	struct tunnel_config *cfg = tunnel_cfg();
	struct packet p = {};
	struct ethhdr *eth;
	struct iphdr *outer;
	struct udphdr *udp;
	struct vxlan_encap *h;
	struct endpoint *dst;
	struct network *net;
	__u8 inner_src[ETH_ALEN_];
	__be16 inner_proto;
	__u32 vni, *network_id, len, pkts;
	__u64 flags;

	if (!cfg || !cfg->vtep || skb->pkt_type != PACKET_HOST_ || skb->gso_size)
		return TUNNEL_NONE;
	pull_len(skb, VXLAN_PULL_LEN);
	eth = (void *)(long)skb->data;
	p.data_end = (void *)(long)skb->data_end;
	if ((void *)(eth + 1) > p.data_end || eth->h_proto != ETH_P_IP_BE)
		return TUNNEL_NONE;
	h = (void *)(eth + 1);
	if ((void *)(h + 1) > p.data_end)
		return TUNNEL_NONE;
	outer = &h->ip;
	udp = &h->udp;
	if (outer->version != 4 || outer->ihl != 5 || outer->protocol != IPPROTO_UDP ||
	    outer->daddr != cfg->vtep || udp->dest != VXLAN_PORT_BE ||
	    (outer->frag_off & bpfnet_htons(IP_MF_ | IP_OFFMASK_)) || !(h->vx_flags & VXLAN_FLAG_VNI_BE))
		return TUNNEL_NONE;
	vni = bpfnet_htonl(h->vx_vni) >> 8;
	network_id = network_by_vni.lookup(&vni);
	if (!network_id || mac_is_multicast(h->inner.h_dest))
		return TUNNEL_NONE;
	/* the inner packet, parsed as tunnel_ingress sees it after the device */
	p.eth = &h->inner;
	p.nh.pos = (void *)(h + 1);
	p.proto = h->inner.h_proto;
	if (p.proto != ETH_P_IP_BE && p.proto != ETH_P_IPV6_BE)
		return TUNNEL_NONE;
	if (parse_ip(&p) < 0)
		return TUNNEL_NONE;
	dst = tunnel_local_target(*network_id, &p);
	if (!dst || !tunnel_source_valid(*network_id, &p, outer->saddr))
		return TUNNEL_NONE;
	net = lookup_network(*network_id);
	if (!net || !net->icc)
		return TUNNEL_NONE;
	inner_proto = p.proto;
	__builtin_memcpy(inner_src, h->inner.h_source, ETH_ALEN_);
	flags = BPF_F_ADJ_ROOM_FIXED_GSO |
		(inner_proto == ETH_P_IP_BE ? ADJ_ROOM_DECAP_L3_IPV4_ : ADJ_ROOM_DECAP_L3_IPV6_);
	if (bpf_skb_adjust_room(skb, -VXLAN_ROOM, BPF_ADJ_ROOM_MAC, flags))
		return TUNNEL_NONE; /* a kernel without the decapsulation flags: the device's way */
	eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return TC_ACT_SHOT; /* cannot happen: the inner frame is at least that long */
	eth->h_proto = inner_proto;
	__builtin_memcpy(eth->h_source, inner_src, ETH_ALEN_);
	len = skb->len;
	pkts = skb_packets(skb);
	metrics_count(dst->id, DIR_RX, COUNT_TUNNEL, 0, pkts, len);
	tunnel_count(TUNNEL_RX_DELIVERED, len);
	tunnel_count_native(0);
	return redirect_to_endpoint(skb, eth, dst, BPFNET_REDIRECT_PEER);
}

#endif
