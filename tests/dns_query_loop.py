"""A bounded DNS query loop, run inside an endpoint namespace by the tests and the benchmark.

``python dns_query_loop.py SERVER COUNT NAME...``: sends COUNT A queries for the NAMEs in turn
to SERVER:53, one at a time, each waiting at most 1 s (no retry: a lost answer is a failure),
about 2 ms apart, and prints {"sent", "answered", "failed", "wrong"} as JSON ("wrong": an answer
that is not NOERROR with an address).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

from bpfnet.dns import wire


def main() -> int:
    server, count, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sent = answered = failed = wrong = 0
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for i in range(count):
            qid = i & 0xFFFF
            name = names[i % len(names)]
            msg = wire.HEADER.pack(qid, wire.FLAG_RD, 1, 0, 0, 0) + wire.encode_name(name)
            msg += struct.pack("!HH", wire.QTYPE_A, wire.CLASS_IN)
            s.sendto(msg, (server, 53))
            sent += 1
            while True:
                try:
                    reply = s.recv(4096)
                except TimeoutError:
                    failed += 1
                    break
                if wire.message_id(reply) != qid:
                    continue  # a late answer to an earlier query
                answered += 1
                if wire.rcode_of(reply) != wire.RCODE_NOERROR or wire.HEADER.unpack_from(reply)[3] < 1:
                    wrong += 1
                break
            time.sleep(0.002)
    print(json.dumps({"sent": sent, "answered": answered, "failed": failed, "wrong": wrong}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
