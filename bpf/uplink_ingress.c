/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc ingress on an uplink (an interface of the managed namespace that is not
 * bpfnet's, carrying traffic from outside the host): established flows to a
 * published port are translated and redirected straight into their endpoint;
 * everything else goes on to the kernel unchanged. The logic is in nat.h.
 */
#include "nat.h"

int uplink_ingress(struct __sk_buff *skb)
{
	return published_in(skb);
}
