"""Ways out of and into the managed namespace: masquerading, published ports, internal networks.

Boundary: ``ports`` and ``ruleset`` are pure (spec parsing, the nftables rules), ``nft`` is
the kernel adapter (the nft command, addresses, sysctls; decides nothing), ``service`` is
the policy the endpoint and network services call. Internal networks are enforced in the
datapath (``bpf/forward.h``: ``internal_peer_allowed``). Nothing is imported here, so the
pure modules can be used without the service's dependencies.
"""
