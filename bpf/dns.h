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
 *
 * The answer path (dns_reply): an A or AAAA query an endpoint sends over IPv4
 * to its network's gateway, port 53, for a name in dns_names (its network's
 * endpoint names, aliases, hostnames, bare and NAME.NETWORK, as the resolver
 * process has them) is answered here: the query becomes the answer in place
 * (the question kept in the asker's spelling, an EDNS record left out, the
 * answer records appended with bpf_skb_store_bytes) and goes straight back
 * into the endpoint. No user space on the way: such lookups are answered
 * while the daemon, and even the resolver process, are down, at the cost of
 * one program run. Everything else to the gateway's port 53 (other names and
 * types, IPv6 transport, TCP, anything unusual) goes on to the resolver
 * process, counted as passed. The answer's UDP checksum is 0 (IPv4 allows
 * "none"); the IPv4 header checksum is computed anew.
 */
#ifndef BPFNET_DNS_H
#define BPFNET_DNS_H

#include <uapi/linux/udp.h>
#include "forward.h"
#include "parsing.h"
#include "maps.h"

#define DNS_PORT 53
#define DNS_TTL 600 /* what the resolver process (and Docker) give */
#define DNS_HDR 12
#define DNS_MSG_OFF (ETH_HLEN + 20 + 8) /* Ethernet, IPv4 without options, UDP */
#define DNS_PACKET_MAX 512              /* longer queries are the resolver's */
#define DNS_COPY_MAX 127                /* bytes of the question copied: > DNS_NAME_MAX + 4, 2^n - 1 */
#define DNS_QR 0x8000
#define DNS_AA 0x0400
#define DNS_TC 0x0200
#define DNS_RD 0x0100
#define DNS_RA 0x0080
#define DNS_OPCODE 0x7800
#define DNS_TYPE_A 1
#define DNS_TYPE_AAAA 28

enum dns_count { DNS_COUNT_A, DNS_COUNT_AAAA, DNS_COUNT_PASSED };
enum dns_verdict { DNS_NOT_A_QUERY, DNS_ANSWERED, DNS_PASSED };

static __always_inline void dns_count(__u32 network_id, enum dns_count what)
{
	struct dns_counters *c = dns_counters.lookup(&network_id);

	if (!c)
		return;
	if (what == DNS_COUNT_A)
		c->answered_a++;
	else if (what == DNS_COUNT_AAAA)
		c->answered_aaaa++;
	else
		c->passed++;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* One answer record: a pointer to the question's name, type, IN, TTL, the address. */
struct dns_rr4 {
	__be16 name, type, class;
	__be32 ttl;
	__be16 len;
	__be32 addr;
} __attribute__((packed));

struct dns_rr6 {
	__be16 name, type, class;
	__be32 ttl;
	__be16 len;
	__u32 addr[4];
} __attribute__((packed));

/*
 * p after check_source() gave SOURCE_VALID_IP (parse_ip() done). Returns
 * DNS_NOT_A_QUERY when the packet is not a UDP/IPv4 query to the network's
 * gateway port 53 (nothing touched: the caller goes on), DNS_ANSWERED when
 * skb is now the answer, addressed to src (the caller sends it back), or
 * DNS_PASSED (for the resolver process, through the kernel). After the
 * latter two, p's pointers are stale.
 */
static __always_inline int dns_reply(struct __sk_buff *skb, struct endpoint *src, struct packet *p)
{
	struct dns_name_key key = {};
	__u8 hdr[DNS_HDR], buf[DNS_COPY_MAX + 1] = {}, tail[4];
	struct network *net;
	struct dns_addrs *a;
	struct udphdr *udp;
	struct ethhdr *eth;
	struct iphdr *iph;
	void *data, *data_end;
	__u8 *msg;
	__u32 len = 0, next = 0, qend, total, i;
	__u64 avail;
	__u16 flags, qtype, n;
	__be16 sport;
	__be32 client, gateway;

	if (!p->iph || p->l4proto != IPPROTO_UDP)
		return DNS_NOT_A_QUERY;
	net = lookup_network(src->network_id);
	if (!net || p->iph->daddr != net->gateway4)
		return DNS_NOT_A_QUERY;
	udp = p->nh.pos;
	if ((void *)(udp + 1) > p->data_end || udp->dest != bpfnet_htons(DNS_PORT))
		return DNS_NOT_A_QUERY;
	/* A query for the resolver: answered here or passed on. The query is read
	 * with bpf_skb_load_bytes (any skb, linear or not), the name from a copy. */
	if (p->iph->ihl != 5 || ipv4_is_fragment(p->iph) || skb->len > DNS_PACKET_MAX ||
	    skb->len < DNS_MSG_OFF + DNS_HDR + 5)
		goto pass;
	sport = udp->source;
	client = p->iph->saddr;
	gateway = p->iph->daddr;
	if (bpf_skb_load_bytes(skb, DNS_MSG_OFF, hdr, DNS_HDR) < 0)
		goto pass;
	flags = ((__u16)hdr[2] << 8) | hdr[3];
	/* a standard query (QR 0, opcode 0, not truncated) with one question, and at
	 * most one additional record (EDNS), which the answer leaves out */
	if ((flags & (DNS_QR | DNS_OPCODE | DNS_TC)) || hdr[4] != 0 || hdr[5] != 1 ||
	    (hdr[6] | hdr[7] | hdr[8] | hdr[9] | hdr[10]) != 0 || hdr[11] > 1)
		goto pass;
	avail = (__u64)skb->len - (DNS_MSG_OFF + DNS_HDR); /* skb->len >= that: checked above */
	if (avail > DNS_COPY_MAX)
		avail = DNS_COPY_MAX;
	/* keep clang from handing the helper the unclamped copy: the verifier must see the bound */
	asm volatile("" : "+r"(avail));
	avail &= DNS_COPY_MAX;
	if (avail < 5 || bpf_skb_load_bytes(skb, DNS_MSG_OFF + DNS_HDR, buf, avail) < 0)
		goto pass;
	key.network_id = src->network_id;
#pragma unroll
	for (i = 0; i < DNS_NAME_MAX; i++) {
		__u8 c = buf[i];

		if (i == next) {
			if (c == 0) {
				len = i + 1;
				break;
			}
			if (c > 63)
				goto pass; /* a compression pointer or a bad length */
			next = i + 1 + c;
		} else if (c >= 'A' && c <= 'Z') {
			c += 'a' - 'A';
		}
		key.name[i] = c;
	}
	if (len == 0 || len + 4 > avail)
		goto pass; /* longer than any name in dns_names, or cut short */
	if (bpf_skb_load_bytes(skb, DNS_MSG_OFF + DNS_HDR + len, tail, 4) < 0)
		goto pass;
	qtype = ((__u16)tail[0] << 8) | tail[1];
	if (tail[2] != 0 || tail[3] != 1) /* class IN */
		goto pass;
	if (qtype != DNS_TYPE_A && qtype != DNS_TYPE_AAAA)
		goto pass;
	a = dns_names.lookup(&key);
	if (!a)
		goto pass;
	n = qtype == DNS_TYPE_A ? a->n_ipv4 : a->n_ipv6;
	if (n == 0 || n > DNS_MAX_ADDRS)
		goto pass; /* no record of this type: the resolver answers NODATA */

	qend = DNS_HDR + len + 4;
	total = DNS_MSG_OFF + qend +
		n * (qtype == DNS_TYPE_A ? sizeof(struct dns_rr4) : sizeof(struct dns_rr6));
	if (bpf_skb_change_tail(skb, total, 0) < 0)
		goto pass;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	iph = data + ETH_HLEN;
	udp = data + ETH_HLEN + sizeof(*iph);
	msg = data + DNS_MSG_OFF;
	if ((void *)(msg + DNS_HDR) > data_end)
		goto pass; /* cannot happen: the query was this long */
	__builtin_memcpy(eth->h_dest, src->mac, ETH_ALEN_);
	__builtin_memcpy(eth->h_source, net->bridge_mac, ETH_ALEN_);
	iph->saddr = gateway;
	iph->daddr = client;
	iph->tot_len = bpfnet_htons((__u16)(total - ETH_HLEN));
	iph->ttl = 64;
	iph->check = 0;
	iph->check = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)iph, sizeof(*iph), 0));
	udp->source = bpfnet_htons(DNS_PORT);
	udp->dest = sport;
	udp->len = bpfnet_htons((__u16)(total - ETH_HLEN - sizeof(*iph)));
	udp->check = 0;
	flags = DNS_QR | DNS_AA | DNS_RA | (flags & DNS_RD);
	msg[2] = flags >> 8;
	msg[3] = flags & 0xff;
	msg[6] = 0;
	msg[7] = n;
	msg[10] = 0;
	msg[11] = 0;
	if (qtype == DNS_TYPE_A) {
		struct dns_rr4 rr = {bpfnet_htons(0xC00C), bpfnet_htons(DNS_TYPE_A), bpfnet_htons(1),
				     bpfnet_htonl(DNS_TTL), bpfnet_htons(4), 0};

		for (i = 0; i < DNS_MAX_ADDRS && i < n; i++) {
			rr.addr = a->ipv4[i];
			bpf_skb_store_bytes(skb, DNS_MSG_OFF + qend + i * sizeof(rr), &rr, sizeof(rr), 0);
		}
		dns_count(src->network_id, DNS_COUNT_A);
	} else {
		struct dns_rr6 rr = {bpfnet_htons(0xC00C), bpfnet_htons(DNS_TYPE_AAAA), bpfnet_htons(1),
				     bpfnet_htonl(DNS_TTL), bpfnet_htons(16), {0}};

		for (i = 0; i < DNS_MAX_ADDRS && i < n; i++) {
			__builtin_memcpy(rr.addr, a->ipv6[i], sizeof(rr.addr));
			bpf_skb_store_bytes(skb, DNS_MSG_OFF + qend + i * sizeof(rr), &rr, sizeof(rr), 0);
		}
		dns_count(src->network_id, DNS_COUNT_AAAA);
	}
	metrics_count(src->id, DIR_TX, COUNT_FAST, 0, 1, DNS_MSG_OFF + qend);
	metrics_count(src->id, DIR_RX, COUNT_FAST, 0, 1, total);
	return DNS_ANSWERED;

pass:
	dns_count(src->network_id, DNS_COUNT_PASSED);
	return DNS_PASSED;
}


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
