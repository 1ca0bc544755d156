/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one place that updates endpoint counters, and the verdicts that go with
 * them: a program ends with drop() or to_kernel() (count and verdict in one
 * call, in the style of Cilium's send_drop_notify), or counts its redirect.
 *
 * Counters live in the per-CPU array endpoint_counters, so plain increments
 * are safe: a tc program runs with migration disabled and nothing else on this
 * CPU touches this CPU's copy at the same time.
 */
#ifndef BPFNET_METRICS_H
#define BPFNET_METRICS_H

#include <uapi/linux/pkt_cls.h>

#include "maps.h"

enum count_kind {
	COUNT_FAST = 0,   /* redirected by bpfnet */
	COUNT_KERNEL = 1, /* passed to the kernel */
	COUNT_DROP = 2,   /* dropped, see reason */
	COUNT_TUNNEL = 3, /* to / from another host through the overlay tunnel */
};

/*
 * How many packets one skb counts as. A GSO super-packet (TCP over veth hands
 * up to 64 KB to one program run) counts as the gso_segs segments it stands
 * for, i.e. what the sender's TCP/UDP sent and what a wire would carry;
 * anything else is one. gso_segs is 0 when the sender did not fill it in
 * (packet sockets with a virtio-net header): one packet then. Bytes stay
 * skb->len, so a super-packet's headers are counted once.
 */
static __always_inline __u32 skb_packets(struct __sk_buff *skb)
{
	__u32 segs = skb->gso_segs;

	return segs > 1 ? segs : 1;
}

static __always_inline void metrics_count(__u32 ep_id, enum direction dir, enum count_kind kind,
					  enum drop_reason reason, __u32 packets, __u32 bytes)
{
	struct endpoint_counters *c;
	struct path_counters *p;
	__u32 key = ep_id;

	c = endpoint_counters.lookup(&key);
	if (!c)
		return; /* id out of range: nothing to count into */
	p = &c->dir[dir == DIR_RX ? DIR_RX : DIR_TX];
	if (kind == COUNT_FAST) {
		p->fast_packets += packets;
		p->fast_bytes += bytes;
	} else if (kind == COUNT_KERNEL) {
		p->kernel_packets += packets;
		p->kernel_bytes += bytes;
	} else if (kind == COUNT_TUNNEL) {
		p->tunnel_packets += packets;
		p->tunnel_bytes += bytes;
	} else if ((__u32)reason < DROP_REASON_COUNT) {
		p->drops[reason] += packets;
	}
}

/* Count skb as dropped for reason on endpoint ep_id's direction dir; returns
 * the verdict that drops it. Every drop goes through here. */
static __always_inline int drop(struct __sk_buff *skb, __u32 ep_id, enum direction dir,
				enum drop_reason reason)
{
	metrics_count(ep_id, dir, COUNT_DROP, reason, skb_packets(skb), 0);
	return TC_ACT_SHOT;
}

/* Count skb as left to the kernel (bridge, routing); returns the verdict that
 * hands it on unchanged. */
static __always_inline int to_kernel(struct __sk_buff *skb, __u32 ep_id, enum direction dir)
{
	metrics_count(ep_id, dir, COUNT_KERNEL, 0, skb_packets(skb), skb->len);
	return TC_ACT_OK;
}

#endif
