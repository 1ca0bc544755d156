"""bpfnet's benchmark harness (``python -m bench``, ``make bench``).

Boundary: builds every topology in fresh network namespaces named
``bpfnet-b<run id>...``, drives the real ``bpfnet daemon`` (always with
``--netns``, a temporary ``--state-dir`` and a unix ``-H`` socket), measures,
and writes RESULTS.md, a JSON file and a PNG chart. It never changes the root
namespace's links, addresses, routes, sysctls or firewall, and removes what it
made also on failure, SIGTERM or Ctrl-C (see ``bench.env``).

Modules: ``env`` (processes, namespaces, clean-up, machine facts),
``topology`` (direct veth pair, bpfnet daemon variants), ``traffic`` (packet
rate, TCP, latency), ``scale`` (endpoint churn, RSS, scrape time, rate at N
endpoints), ``progrun`` (BPF_PROG_TEST_RUN ns/packet), ``runner``
(interleaved rounds, medians), ``report`` (RESULTS.md, JSON, PNG).
"""
