/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The maps shared by all bpfnet programs, and the structs they hold.
 *
 * Every map is pinned under BPFNET_PIN_DIR (a -D cflag set by the controller,
 * e.g. "/sys/fs/bpf/bpfnet/<hostns>"). bcc opens a map that is already pinned
 * there instead of creating a new one, so a restarted daemon keeps its
 * counters and map entries.
 *
 * One definition: controller/datapath/abi.py declares every struct below
 * (field names, types, array sizes, in this order), every map and every limit.
 * The limits come in only as -D cflags from abi.py (no defaults here: a
 * missing one is an #error). The structs are written out here to be read, and
 * checked against abi.py field by field: the loader appends offsetof/sizeof
 * checks for every field to the source it compiles (a drift does not compile,
 * and the error names struct, field and both offsets), and before reusing a
 * pinned map it compares the map's BTF (member names, offsets, sizes) with
 * abi.py, replacing pins written by a build with another layout. Change a
 * struct here and in abi.py together. A map whose values change meaning but
 * not layout must still get a new name, or a restarted daemon would misread it.
 *
 * Lookup cost: hash lookups (hashing, bucket walk) are what the fast path
 * pays for per packet; array lookups are inlined by the JIT to a bounds check
 * and an add. So only what is keyed by something sparse (ifindex, address)
 * is a hash; the address maps yield a small dense id that indexes the arrays.
 *
 * Byte order: IPv4/IPv6 addresses are stored exactly as they appear on the
 * wire (network byte order) so the programs can compare and look them up
 * without swapping. Everything else is host byte order.
 */
#ifndef BPFNET_MAPS_H
#define BPFNET_MAPS_H

#include "drop_reasons.h"

#ifndef BPFNET_PIN_DIR
#error "BPFNET_PIN_DIR must be defined (-DBPFNET_PIN_DIR=\"/sys/fs/bpf/...\")"
#endif
/* The limits, from controller/datapath/abi.py via -D cflags (see above). */
#if !defined(MAX_ENDPOINTS) || !defined(MAX_NETWORKS) || !defined(MAX_EP_IPV6) || \
	!defined(MAX_GATEWAY6) || !defined(MAX_PUBLISHED) || !defined(MAX_ROUTED) || !defined(MAX_FLOWS) || \
	!defined(DNS_NAME_MAX) || !defined(DNS_MAX_ADDRS) || !defined(DNS_NAMES_PER_ENDPOINT)
#error "MAX_ENDPOINTS, MAX_NETWORKS, MAX_EP_IPV6, MAX_GATEWAY6, MAX_PUBLISHED, MAX_FLOWS and the DNS limits come from abi.cflags()"
#endif

/* The endpoint behind one host-side veth, at index id of endpoint_by_id. */
struct endpoint {
	__u32 id;         /* index in endpoint_by_id and endpoint_counters, < MAX_ENDPOINTS */
	__u32 network_id; /* index in network_by_id */
	__u32 ifindex;    /* host-side veth: redirect target; 0: empty slot */
	__u8 mac[6];      /* MAC of eth0 inside the endpoint */
	__u8 n_ipv6;      /* valid entries in ipv6[] */
	__u8 pad;
	__be32 ipv4;                    /* network byte order */
	__u32 ipv6[MAX_EP_IPV6][4];     /* network byte order; global ones + link-local */
};

/* One bridge network, at index id of network_by_id. */
struct network {
	__u32 id;             /* 1 .. MAX_NETWORKS - 1 */
	__u32 bridge_ifindex; /* 0: empty slot */
	__u8 icc;            /* 0: drop unicast between endpoints of this network */
	__u8 n_gateway6;     /* valid entries in gateway6[] */
	__u8 bridge_mac[6];
	__be32 gateway4;     /* network byte order */
	__u32 gateway6[MAX_GATEWAY6][4]; /* network byte order */
	__u8 internal;       /* 1: nothing leaves or enters (network create --internal) */
	__u32 vni;           /* overlay networks: VXLAN network identifier; 0: not an overlay */
	__be32 routed4;      /* routed networks: the cluster subnet (network byte order) */
	__u32 routed6[4];    /* ... and its IPv6 cluster subnet */
	__u8 routed4_plen;   /* 0: not a routed network (IPv4) */
	__u8 routed6_plen;   /* 0: no routed IPv6 */
	__u8 pad2[2];
};

/* Keys of the address maps. The network id is part of the key: the fast path
 * only ever goes to an endpoint of the sender's own network. */
struct ep_ipv4_key {
	__u32 network_id;
	__be32 addr; /* network byte order */
};

struct ep_ipv6_key {
	__u32 network_id;
	__u32 addr[4]; /* network byte order */
};

enum direction {
	DIR_TX = 0, /* packets the endpoint sends */
	DIR_RX = 1, /* packets delivered to the endpoint */
};

struct path_counters {
	__u64 fast_packets; /* forwarded by bpfnet's redirect */
	__u64 fast_bytes;
	__u64 kernel_packets; /* left to the kernel (bridge, routing) */
	__u64 kernel_bytes;
	__u64 tunnel_packets; /* sent to / received from another host through the overlay tunnel */
	__u64 tunnel_bytes;
	__u64 routed_packets; /* sent to / received from another host of a routed network (routed.h) */
	__u64 routed_bytes;
	__u64 drops[DROP_REASON_COUNT];
};

struct endpoint_counters {
	struct path_counters dir[2]; /* indexed by enum direction */
};

/* An endpoint of an overlay network on another host: where its packets go. */
struct remote_endpoint {
	__be32 vtep;   /* its host's --advertise-addr, network byte order */
	__u8 mac[6];   /* its eth0's MAC */
	__u8 pad[2];
};

/* The overlay's collect-metadata VXLAN device in this namespace, and this
 * host's VTEP for the programs' own encapsulation (bpf/tunnel.h). */
struct tunnel_config {
	__u32 ifindex;        /* 0: no overlay on this host */
	__be32 vtep;          /* --advertise-addr (network byte order); 0: through the device only */
	__u32 uplink_ifindex; /* the link holding it: where the outer route is looked up */
	__u32 pad;
};

struct tunnel_counters {
	__u64 rx_packets; /* decapsulated and delivered to a local endpoint */
	__u64 rx_bytes;
	__u64 rx_unknown; /* no network for the VNI, or no endpoint for the address */
	__u64 rx_not_ip;  /* ARP, broadcast, multicast: not carried across hosts */
	__u64 tx_native;  /* encapsulated by the endpoint program itself (not the device) */
	__u64 rx_native;  /* decapsulated by uplink_ingress itself (of rx_packets) */
};

/*
 * Published ports' fast path (bpf/nat.h). Addresses in __u32[4] in network
 * byte order, IPv4 in the first word and the rest zero; ports in network
 * byte order too (compared with and written to packet fields as they are).
 */

/* A published port as a packet from outside shows it. addr all zero: every
 * address of the host (a --publish without HOST_IP). */
struct published_key {
	__u32 addr[4];   /* host address */
	__be16 port;     /* host port */
	__u8 proto;      /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 family;     /* 4, 6 */
};

/* Where a published port leads: what the nftables DNAT rule translates to. */
struct published_port {
	__u32 addr[4];     /* the endpoint's address */
	__be16 port;       /* the endpoint's port */
	__u16 pad;
	__u32 endpoint_id; /* index in endpoint_by_id and endpoint_counters */
	__u32 slot;        /* index in published_port_counters */
};

/* One direction of a flow through a published port, as the packets show it:
 * in = (client, client port -> host address, host port), out = (endpoint,
 * endpoint port -> client, client port). */
struct flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

enum flow_state {
	FLOW_NEW = 0,         /* seen at the uplink; the kernel's NAT path carries it */
	FLOW_ESTABLISHED = 1, /* the kernel forwarded it established: the fast path carries it */
};

enum flow_dir {
	FLOW_IN = 0,  /* client -> endpoint: daddr, dport are rewritten */
	FLOW_OUT = 1, /* endpoint -> client: saddr, sport are rewritten */
};

struct flow {
	__u32 addr[4];     /* in: the endpoint's address (new daddr); out: the host's (new saddr) */
	__be16 port;       /* in: the endpoint's port; out: the host port */
	__u8 state;        /* enum flow_state */
	__u8 dir;          /* enum flow_dir */
	__u32 endpoint_id;
	__u32 slot;        /* published_port_counters index */
	__u64 last_ns;     /* bpf_ktime_get_ns() of this direction's last packet */
	__u64 kernel_ns;   /* ... of its last packet handed to the kernel (UDP refresh) */
};

/* Fast-pathed traffic of one published port, indexed by enum flow_dir.
 * Bytes are IP lengths (as nftables counts), packets are wire packets. */
struct port_counters {
	__u64 packets[2];
	__u64 bytes[2];
};

/* DNS (dns.h): a query name of a network, in wire form (lowercase labels
 * with their length bytes, the final zero byte, then zeros to the end). */
struct dns_name_key {
	__u32 network_id;
	__u8 name[DNS_NAME_MAX];
};

/* The addresses a name answers with (network byte order). */
struct dns_addrs {
	__u8 n_ipv4; /* valid entries in ipv4[] */
	__u8 n_ipv6; /* valid entries in ipv6[] */
	__u8 pad[2];
	__be32 ipv4[DNS_MAX_ADDRS];
	__u32 ipv6[DNS_MAX_ADDRS][4];
};

struct dns_counters {
	__u64 answered_a;    /* A queries answered by the datapath */
	__u64 answered_aaaa; /* AAAA queries answered by the datapath */
	__u64 passed;        /* queries to the gateway's port 53 left to the resolver */
};

#define BPFNET_PIN(name) BPFNET_PIN_DIR "/" #name

/* host-side veth ifindex -> endpoint: the sender's record in one hash lookup
 * (every packet an endpoint sends needs it). The same record is also in
 * endpoint_by_id, for the destination; a copy here saves an array lookup per
 * packet over storing only the id. */
BPF_TABLE_PINNED("hash", __u32, struct endpoint, endpoint_by_ifindex, MAX_ENDPOINTS,
		 BPFNET_PIN(endpoint_by_ifindex));
/* (network id, IPv4 in network byte order) -> endpoint id */
BPF_TABLE_PINNED("hash", struct ep_ipv4_key, __u32, endpoint_id_by_ipv4, MAX_ENDPOINTS,
		 BPFNET_PIN(endpoint_id_by_ipv4));
/* (network id, IPv6 in network byte order) -> endpoint id */
BPF_TABLE_PINNED("hash", struct ep_ipv6_key, __u32, endpoint_id_by_ipv6,
		 MAX_ENDPOINTS * MAX_EP_IPV6, BPFNET_PIN(endpoint_id_by_ipv6));
/* endpoint id -> endpoint. Array elements always exist: ifindex 0 marks an
 * empty slot. An array update overwrites the value in place (a hash update
 * swaps in a new element), so the controller writes a slot before any hash
 * map points at it and empties it only after none does. */
BPF_TABLE_PINNED("array", __u32, struct endpoint, endpoint_by_id, MAX_ENDPOINTS,
		 BPFNET_PIN(endpoint_by_id));
/* network id -> network config (icc, gateways); bridge_ifindex 0: empty slot */
BPF_TABLE_PINNED("array", __u32, struct network, network_by_id, MAX_NETWORKS,
		 BPFNET_PIN(network_by_id));
/* bridge ifindex -> network id, for the program on the bridge */
BPF_TABLE_PINNED("hash", __u32, __u32, network_by_bridge_ifindex, MAX_NETWORKS,
		 BPFNET_PIN(network_by_bridge_ifindex));
/* EndpointSpec.id -> counters; per CPU so updates need no atomics, summed
 * over CPUs by the controller. */
BPF_TABLE_PINNED("percpu_array", __u32, struct endpoint_counters, endpoint_counters,
		 MAX_ENDPOINTS, BPFNET_PIN(endpoint_counters));
/* (network id, query name) -> addresses: the names dns.h answers itself.
 * Written by the DNS service from the same records the resolver has. */
BPF_TABLE_PINNED("hash", struct dns_name_key, struct dns_addrs, dns_names,
		 MAX_ENDPOINTS * DNS_NAMES_PER_ENDPOINT, BPFNET_PIN(dns_names));
/* network id -> DNS counters; per CPU, summed by the controller. */
BPF_TABLE_PINNED("percpu_array", __u32, struct dns_counters, dns_counters, MAX_NETWORKS,
		 BPFNET_PIN(dns_counters));
/* Overlay networks (bpf/tunnel.h): (network id, address) -> an endpoint on another host */
BPF_TABLE_PINNED("hash", struct ep_ipv4_key, struct remote_endpoint, remote_by_ipv4, MAX_ENDPOINTS,
		 BPFNET_PIN(remote_by_ipv4));
BPF_TABLE_PINNED("hash", struct ep_ipv6_key, struct remote_endpoint, remote_by_ipv6,
		 MAX_ENDPOINTS * MAX_EP_IPV6, BPFNET_PIN(remote_by_ipv6));
/* VNI -> this host's network id, for what arrives through the tunnel */
BPF_TABLE_PINNED("hash", __u32, __u32, network_by_vni, MAX_NETWORKS, BPFNET_PIN(network_by_vni));
BPF_TABLE_PINNED("array", __u32, struct tunnel_config, tunnel_config, 1, BPFNET_PIN(tunnel_config));
BPF_TABLE_PINNED("percpu_array", __u32, struct tunnel_counters, tunnel_counters, 1,
		 BPFNET_PIN(tunnel_counters));

/* Routed networks (bpf/routed.h): slot -> network id (0: empty), what the
 * uplink walks to find the network of a destination. */
BPF_TABLE_PINNED("array", __u32, __u32, routed_networks, MAX_ROUTED, BPFNET_PIN(routed_networks));

/* published port -> its endpoint; written by the controller (outside service) */
BPF_TABLE_PINNED("hash", struct published_key, struct published_port, published_ports,
		 MAX_PUBLISHED, BPFNET_PIN(published_ports));
/* flow direction -> its translation; both directions of a flow are written by
 * uplink_ingress at its first packet, promoted by bridge_egress, removed at
 * FIN/RST or when idle. LRU: a full table evicts the oldest flows, which then
 * simply take the kernel's path again. */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow, published_flows, MAX_FLOWS,
		 BPFNET_PIN(published_flows));
/* published port slot -> fast-pathed packets and bytes (per CPU) */
BPF_TABLE_PINNED("percpu_array", __u32, struct port_counters, published_port_counters,
		 MAX_PUBLISHED, BPFNET_PIN(published_port_counters));

#endif
