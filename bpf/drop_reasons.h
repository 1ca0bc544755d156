/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Why the datapath dropped a packet: the single list.
 *
 * Each entry is X(NAME, number, "description"). Numbers are dense from 0 and
 * index the drops[] array of every endpoint counter, so appending is the only
 * safe change (renumbering would mix up counters kept in pinned maps across a
 * daemon restart). controller/datapath/drop_reasons.py mirrors this list and
 * tests/test_drop_reasons.py checks that the two agree.
 */
#ifndef BPFNET_DROP_REASONS_H
#define BPFNET_DROP_REASONS_H

#define BPFNET_DROP_REASONS(X)                                                     \
	X(SPOOFED_SOURCE, 0, "source MAC, IPv4/IPv6 address or ARP sender is not the endpoint's own") \
	X(POLICY, 1, "icc=false: unicast between two endpoints of the same network") \
	X(INTERNAL, 2, "internal network: unicast IP to or from outside the network (not an endpoint or gateway)") \
	X(TUNNEL_SOURCE, 3, "from the overlay tunnel: the source is not an endpoint of that VTEP and network")

enum drop_reason {
#define BPFNET_X_ENUM(name, num, doc) DROP_##name = num,
	BPFNET_DROP_REASONS(BPFNET_X_ENUM)
#undef BPFNET_X_ENUM
};

/* Number of reasons, i.e. the length of drops[] in struct path_counters. */
enum {
#define BPFNET_X_COUNT(name, num, doc) +1
	DROP_REASON_COUNT = 0 BPFNET_DROP_REASONS(BPFNET_X_COUNT)
#undef BPFNET_X_COUNT
};

#endif
