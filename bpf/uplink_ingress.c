/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc ingress on an uplink (an interface of the managed namespace that is not
 * bpfnet's, carrying traffic from outside the host): VXLAN packets of an
 * overlay network for a local endpoint are decapsulated and delivered
 * straight into it (tunnel.h), established flows to a published port are
 * translated and redirected straight into their endpoint (nat.h), packets
 * from another node of a routed network to a local endpoint are delivered
 * straight into it (routed.h); everything else goes on to the kernel
 * unchanged.
 */
#include "routed.h"
#include "tunnel.h"

int uplink_ingress(struct __sk_buff *skb)
{
	int verdict = tunnel_recv(skb);

	if (verdict != TUNNEL_NONE)
		return verdict;
	verdict = routed_recv(skb);
	if (verdict != ROUTED_NONE)
		return verdict;
	return published_in(skb);
}
