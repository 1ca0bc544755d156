/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Header parsing with a cursor, in the style of the xdp-tutorial.
 *
 * Every parse_* function checks bounds against data_end before it touches a
 * byte (the verifier rejects the program otherwise), moves the cursor past its
 * header and returns what comes next (the ethertype, the IP protocol / next
 * header), or -1 when the header is not all there or malformed, so callers
 * dispatch on the return value instead of reading the field again. Callers
 * treat -1 as "not ours to judge": the packet goes on to the kernel unchanged.
 * Multi-byte values stay in network byte order (the ethertype too); compare
 * them against the *_BE constants below.
 */
#ifndef BPFNET_PARSING_H
#define BPFNET_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bpfnet_htons(x) ((__be16)__builtin_bswap16(x))
#define bpfnet_htonl(x) ((__be32)__builtin_bswap32(x))
#else
#define bpfnet_htons(x) ((__be16)(x))
#define bpfnet_htonl(x) ((__be32)(x))
#endif

#define ETH_ALEN_ 6
#define ETH_P_IP_BE bpfnet_htons(0x0800)
#define ETH_P_IPV6_BE bpfnet_htons(0x86DD)
#define ETH_P_ARP_BE bpfnet_htons(0x0806)

/* IPv4 flags+fragment offset: MF bit and the 13-bit offset (host order). */
#define IP_MF_ 0x2000
#define IP_OFFMASK_ 0x1FFF

#define IPPROTO_ICMPV6_ 58
#define ICMPV6_ND_FIRST 133 /* Router Solicitation */
#define ICMPV6_ND_LAST 137  /* Redirect */

/* Bytes worth making linear before parsing: Ethernet (14) + the longest
 * header we read (IPv4 with options, 60) covers ARP (28) and IPv6 + ICMPv6
 * type (41) too. */
#define BPFNET_PULL_LEN 74

struct hdr_cursor {
	void *pos;
};

/* One packet as far as it has been parsed: the cursor and the headers found. */
struct packet {
	struct hdr_cursor nh; /* after the last parsed header */
	void *data_end;
	struct ethhdr *eth;
	int proto;             /* ethertype (network byte order), -1: no Ethernet header */
	struct iphdr *iph;     /* valid if proto is ETH_P_IP_BE and parse_ip() succeeded */
	struct ipv6hdr *ip6h;  /* valid if proto is ETH_P_IPV6_BE and parse_ip() succeeded */
	int l4proto;           /* IPv4 protocol / IPv6 next header */
};

/* ARP payload for Ethernet/IPv4 (RFC 826). Packed: the IPv4 fields sit at odd
 * offsets, the compiler then emits byte loads the verifier accepts. */
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ETH_ALEN_];
	__be32 spa;
	__u8 tha[ETH_ALEN_];
	__be32 tpa;
} __attribute__((packed));

/* Returns the ethertype (network byte order). */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	*ethhdr = eth;
	return eth->h_proto;
}

static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end,
				       struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if ((void *)(iph + 1) > data_end)
		return -1;
	hdrsize = iph->ihl * 4;
	if (hdrsize < (int)sizeof(*iph) || iph->version != 4)
		return -1;
	if (nh->pos + hdrsize > data_end)
		return -1;
	nh->pos += hdrsize;
	*iphdr = iph;
	return iph->protocol;
}

static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end,
					struct ipv6hdr **ip6hdr)
{
	struct ipv6hdr *ip6h = nh->pos;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	if (ip6h->version != 6)
		return -1;
	nh->pos = ip6h + 1;
	*ip6hdr = ip6h;
	return ip6h->nexthdr;
}

/* Returns 0: nothing follows an ARP payload. */
static __always_inline int parse_arp(struct hdr_cursor *nh, void *data_end,
				     struct arp_eth_ipv4 **arp)
{
	struct arp_eth_ipv4 *a = nh->pos;

	if ((void *)(a + 1) > data_end)
		return -1;
	/* Only Ethernet/IPv4 ARP has a sender we can validate. */
	if (a->htype != bpfnet_htons(1) || a->ptype != ETH_P_IP_BE || a->hlen != ETH_ALEN_ ||
	    a->plen != 4)
		return -1;
	nh->pos = a + 1;
	*arp = a;
	return 0;
}

/* Returns the ICMPv6 type, or -1 when the byte is missing. */
static __always_inline int parse_icmp6_type(struct hdr_cursor *nh, void *data_end)
{
	__u8 *type = nh->pos;

	if ((void *)(type + 1) > data_end)
		return -1;
	return *type;
}

/* Start parsing skb: cursor at the Ethernet header. */
static __always_inline void packet_start(struct packet *p, struct __sk_buff *skb)
{
	p->nh.pos = (void *)(long)skb->data;
	p->data_end = (void *)(long)skb->data_end;
	p->proto = parse_ethhdr(&p->nh, p->data_end, &p->eth);
	p->iph = NULL; /* set by parse_ip(): NULL tells callers it has not run */
	p->ip6h = NULL;
}

/* Parse the IPv4 or IPv6 header after the Ethernet header (p->proto says
 * which). Returns the L4 protocol (also in p->l4proto), or -1: not IP, or
 * the header is truncated or malformed. */
static __always_inline int parse_ip(struct packet *p)
{
	p->l4proto = -1;
	if (p->proto == ETH_P_IP_BE)
		p->l4proto = parse_iphdr(&p->nh, p->data_end, &p->iph);
	else if (p->proto == ETH_P_IPV6_BE)
		p->l4proto = parse_ip6hdr(&p->nh, p->data_end, &p->ip6h);
	return p->l4proto;
}

/* ICMPv6 neighbour discovery (RS, RA, NS, NA, Redirect), or an ICMPv6 packet
 * too short to tell; nh at the ICMPv6 header. Such packets belong to the
 * kernel's neighbour code: never fast-pathed, never blocked by icc=false
 * (icc blocks traffic, not address resolution). The one definition of that
 * exemption, used by forward.h for both. */
static __always_inline int icmp6_is_nd(struct hdr_cursor *nh, void *data_end)
{
	int type = parse_icmp6_type(nh, data_end);

	return type < 0 || (type >= ICMPV6_ND_FIRST && type <= ICMPV6_ND_LAST);
}

static __always_inline int mac_is_multicast(const __u8 *mac)
{
	return mac[0] & 1; /* also true for broadcast ff:ff:ff:ff:ff:ff */
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline int ipv4_is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpfnet_htons(IP_MF_ | IP_OFFMASK_)) != 0;
}

#endif
