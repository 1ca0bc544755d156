"""Container runtimes as clients of bpfnet: the CNI executable and Docker's network and IPAM driver.

Boundary: a plugin translates a runtime's protocol into bpfnet's own requests and
adds no second path to the kernel. ``cni`` is a separate executable (``bpfnet-cni``)
that talks to the running daemon over its API socket; ``docker`` runs inside the
daemon and calls the services, as the API routes do.
"""
