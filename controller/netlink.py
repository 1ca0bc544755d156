"""pyroute2's ``IPRoute`` for long-lived sockets: the one the daemon and the datapath keep open.

Boundary: a subclass of ``pyroute2.IPRoute`` that fixes one leak and changes
nothing else. pyroute2 0.9 finishes a request when its answer arrives and then
frees the request's sequence number; the kernel's acknowledgement
(``NLMSG_ERROR`` with error 0, sent for ``NLM_F_ACK``) arrives after that and
lands in the socket's queue for unsolicited messages, which nothing reads on
a socket that joined no multicast group. Every request thus left one message
behind, each pinning a page of memory: the daemon grew by ~6 KiB per endpoint
add and remove (bench/hardening.py, 5,000 cycles: +16% RSS). After each
request this class empties that queue, per thread (pyroute2 keeps one per
thread), so use it only for sockets that do not listen to broadcasts.
"""

from __future__ import annotations

from pyroute2 import IPRoute as _IPRoute


class IPRoute(_IPRoute):  # type: ignore[misc]
    def _cleanup_transport(self) -> None:
        super()._cleanup_transport()
        queue = getattr(self.asyncore.local, "msg_queue", None)
        if queue is not None:
            # Only acknowledgements of finished requests end up here: see the module docstring.
            while not queue.root.empty():
                queue.root.get_nowait()
