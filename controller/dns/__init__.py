"""DNS for endpoints: resolv.conf and hosts files, the embedded resolver, its records.

Boundary: ``rules`` (resolv.conf and hosts by Docker's rules, name checks), ``wire`` (DNS
messages) and ``records`` (what the resolver answers, per network) are pure; ``files`` writes
and removes /etc/netns/<endpoint>/{resolv.conf,hosts} (kernel-adapter level: decides nothing);
``supervisor`` starts, adopts and feeds the resolver process; ``server`` IS that process
(``python -m bpfnet.dns.server``), which outlives the daemon so that lookups keep working while
it restarts; ``service`` is the policy the endpoint and network services call. Nothing is
imported here, so the pure modules can be used without the others' dependencies.
"""
