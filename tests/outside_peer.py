"""Tiny peer for the outside tests, run inside a test namespace with ``ip netns exec``.

serve PORT...      TCP and UDP on [::]:PORT (IPv4 too): answer every line / datagram with
                   the address the request came from ("who am I to you"), then a newline
ask PROTO HOST PORT  one request; print the answer (exit 1 on timeout or refusal)
hold HOST PORT     one TCP connection: for each line on stdin, send it, print the answer
repeat PROTO HOST PORT N  one connection (UDP: one socket): N requests, print each answer
"""

from __future__ import annotations

import selectors
import socket
import sys

TIMEOUT = 3.0


def _peer(addr: tuple[str, ...]) -> bytes:
    host = addr[0]
    return (host.removeprefix("::ffff:") + "\n").encode()


def serve(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            sel.register(s, selectors.EVENT_READ, "listen" if kind == socket.SOCK_STREAM else "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data == "listen":
                conn, addr = s.accept()
                sel.register(conn, selectors.EVENT_READ, _peer(addr))
            elif key.data == "udp":
                data, addr = s.recvfrom(2048)
                s.sendto(_peer(addr), addr)
            else:
                try:
                    data = s.recv(2048)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    continue
                s.sendall(key.data * data.count(b"\n"))


def _connect(proto: str, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    s.connect((host, port))
    return s


def ask(proto: str, host: str, port: int) -> int:
    try:
        with _connect(proto, host, port) as s:
            s.send(b"who\n")
            print(s.recv(2048).decode().strip())
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def hold(host: str, port: int) -> None:
    with _connect("tcp", host, port) as s:
        s.settimeout(30)
        print("connected", flush=True)
        for line in sys.stdin:
            s.sendall(line.encode())
            print(s.recv(2048).decode().strip(), flush=True)


def repeat(proto: str, host: str, port: int, n: int) -> int:
    try:
        with _connect(proto, host, port) as s:
            for _ in range(n):
                s.send(b"who\n")
                print(s.recv(2048).decode().strip(), flush=True)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "serve":
        serve([int(p) for p in rest])
    elif cmd == "ask":
        sys.exit(ask(rest[0], rest[1], int(rest[2])))
    elif cmd == "repeat":
        sys.exit(repeat(rest[0], rest[1], int(rest[2]), int(rest[3])))
    else:
        hold(rest[0], int(rest[1]))
