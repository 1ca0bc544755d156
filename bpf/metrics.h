/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one place that updates endpoint counters.
 *
 * Counters live in the per-CPU array endpoint_counters, so plain increments
 * are safe: a tc program runs with migration disabled and nothing else on this
 * CPU touches this CPU's copy at the same time.
 */
#ifndef BPFNET_METRICS_H
#define BPFNET_METRICS_H

#include "maps.h"

enum count_kind {
	COUNT_FAST = 0,   /* redirected by bpfnet */
	COUNT_KERNEL = 1, /* passed to the kernel */
	COUNT_DROP = 2,   /* dropped, see reason */
};

static __always_inline void metrics_count(__u32 ep_id, enum direction dir, enum count_kind kind,
					  enum drop_reason reason, __u32 bytes)
{
	struct endpoint_counters *c;
	struct path_counters *p;
	__u32 key = ep_id;

	c = endpoint_counters.lookup(&key);
	if (!c)
		return; /* id out of range: nothing to count into */
	p = &c->dir[dir == DIR_RX ? DIR_RX : DIR_TX];
	if (kind == COUNT_FAST) {
		p->fast_packets++;
		p->fast_bytes += bytes;
	} else if (kind == COUNT_KERNEL) {
		p->kernel_packets++;
		p->kernel_bytes += bytes;
	} else if ((__u32)reason < DROP_REASON_COUNT) {
		p->drops[reason]++;
	}
}

#endif
