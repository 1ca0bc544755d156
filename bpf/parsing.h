/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Header parsing with a cursor, in the style of the xdp-tutorial.
 *
 * Every parse_* function checks bounds against data_end before it touches a
 * byte (the verifier rejects the program otherwise) and returns -1 when the
 * header is not all there. Callers treat -1 as "not ours to judge": the packet
 * goes on to the kernel unchanged. Multi-byte fields stay in network byte
 * order; compare them against bpf_htons()/bpf_htonl() constants.
 */
#ifndef BPFNET_PARSING_H
#define BPFNET_PARSING_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>

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

static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	*ethhdr = eth;
	return 0;
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
	return 0;
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
	return 0;
}

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
