/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc ingress on an uplink (an interface of the managed namespace that is not
 * bpfnet's, carrying traffic from outside the host): established flows to a
 * published port are translated and redirected straight into their endpoint
 * (nat.h), packets from another node of a routed network to a local endpoint
 * are delivered straight into it (routed.h); everything else goes on to the
 * kernel unchanged.
 */
#include "routed.h"

int uplink_ingress(struct __sk_buff *skb)
{
	int verdict = routed_recv(skb);

	if (verdict != ROUTED_NONE)
		return verdict;
	return published_in(skb);
}
