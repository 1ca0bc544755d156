"""DNS for endpoints: bpfnet's embedded resolver against dnsmasq, side by side in one run.

One bpfnet daemon (``--bip 10.160.0.1/20``) with N endpoints (10, then 1000) on its default
network and an upstream dnsmasq in an endpoint of a network of its own (10.161.0.2, zone
``test.example``). The baseline is a second dnsmasq in the managed namespace on the same
gateway address, port 5300, serving the same names from a hosts file and forwarding the rest
to the same upstream without a cache (``--cache-size=0``: bpfnet's resolver does not cache,
and neither does Docker's embedded DNS) — Docker's usual set-up, a dnsmasq-like forwarder on
the host. From one endpoint:

- queries per second: ``dnsperf -l SECONDS -q 20`` (20 outstanding), over endpoint names and
  over forwarded names;
- latency: one query at a time (``probe``), 1000 queries, p50 and p99 of the round trip;
- a restart: 2000 queries one at a time while the daemon is stopped and started, then SIGKILLed
  and started: lost answers.

``python -m bench.dns [SECONDS] [--write]``: --write puts the figures into bench/dns.json and
the DNS section of RESULTS.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import env
from .topology import BpfnetDaemon

log = logging.getLogger("bench.dns")
GW = "10.160.0.1"
UPSTREAM = "10.161.0.2"
BASELINE_PORT = 5300
SIZES = tuple(int(n) for n in os.environ.get("BPFNET_DNS_SIZES", "10,1000").split(","))
FORWARDED = [f"f{i}.test.example" for i in range(50)]
OUT_JSON = "dns.json"


def _query(name: str, qid: int) -> bytes:
    from bpfnet.dns import wire

    return (wire.HEADER.pack(qid, wire.FLAG_RD, 1, 0, 0, 0) + wire.encode_name(name)
            + struct.pack("!HH", wire.QTYPE_A, wire.CLASS_IN))


def probe(server: str, port: int, count: int, names: list[str], pause: float = 0.0) -> dict[str, Any]:
    """COUNT queries one at a time, 1 s timeout each, no retry: round-trip percentiles and losses."""
    from bpfnet.dns import wire

    times: list[float] = []
    failed = wrong = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for i in range(count):
            qid = i & 0xFFFF
            started = time.perf_counter()
            s.sendto(_query(names[i % len(names)], qid), (server, port))
            while True:
                try:
                    reply = s.recv(4096)
                except TimeoutError:
                    failed += 1
                    break
                if wire.message_id(reply) == qid:
                    times.append(time.perf_counter() - started)
                    if wire.rcode_of(reply) != wire.RCODE_NOERROR or wire.HEADER.unpack_from(reply)[3] < 1:
                        wrong += 1
                    break
            if pause:
                time.sleep(pause)
    times.sort()

    def pct(p: float) -> float:
        return round(times[min(len(times) - 1, int(p * len(times)))] * 1e6, 1) if times else 0.0

    return {"sent": count, "failed": failed, "wrong": wrong, "p50_us": pct(0.5), "p99_us": pct(0.99)}


def _probe_in(ns: str, server: str, port: int, count: int, names: list[str], pause: float = 0.0) -> dict[str, Any]:
    r = env.run([env.PYTHON, "-m", "bench.dns", "probe", server, str(port), str(count), str(pause), *names],
                ns=ns, timeout=600)
    return dict(json.loads(r.stdout))


def dnsperf(ns: str, server: str, port: int, names: list[str], seconds: float, workdir: Path) -> dict[str, Any]:
    data = workdir / f"queries-{port}-{len(names)}.txt"
    data.write_text("".join(f"{n} A\n" for n in names))
    r = env.run(["dnsperf", "-s", server, "-p", str(port), "-d", str(data), "-l", str(seconds), "-q", "20",
                 "-c", "1", "-t", "2"], ns=ns, timeout=seconds + 60)

    def number(label: str) -> float:
        m = re.search(rf"{label}:\s+([0-9.]+)", r.stdout)
        return float(m.group(1)) if m else 0.0

    return {"qps": round(number("Queries per second")), "lost": int(number("Queries lost")),
            "completed": int(number("Queries completed"))}


def _dnsmasq(ns: str, workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    return env.spawn(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                      "--bind-interfaces", "--user=root", f"--pid-file={workdir}/dnsmasq-{time.time_ns()}.pid",
                      *args], ns=ns)


def _wait_answer(ns: str, server: str, port: int, name: str) -> None:
    def ok() -> bool:
        try:
            return _probe_in(ns, server, port, 1, [name])["failed"] == 0
        except RuntimeError:
            return False
    env.wait_until(ok, timeout=20, what=f"{server}:{port} to answer {name}")


def measure(seconds: float) -> dict[str, Any]:
    work = Path(env.tmpdir("dns"))
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver 127.0.0.53\nnameserver {UPSTREAM}\n")
    d = BpfnetDaemon("dns", "redirect-peer", "fd00:b0:d5::/64",
                     extra=("--bip", f"{GW}/20", "--resolv-conf", str(resolv)))
    d.start()
    d.client.post("/v1/networks", {"name": "up", "subnet4": "10.161.0.0/24"})
    up = d.client.post("/v1/endpoints", {"name": env.ns_name("dns-up"), "network": "up", "ip": UPSTREAM})
    d.endpoints.append(up["name"])
    _dnsmasq(up["netns"], work, f"--listen-address={UPSTREAM}", "--local=/test.example/",
             *[f"--host-record={n},192.0.2.{i % 250 + 1}" for i, n in enumerate(FORWARDED)])
    client = d.add_endpoint(d.endpoint_name(0))
    sizes: dict[str, Any] = {}
    baseline: subprocess.Popen[bytes] | None = None
    have = 1
    for size in SIZES:
        started = time.monotonic()
        while len(d.endpoints) - 1 < size:
            d.add_endpoint(d.endpoint_name(len(d.endpoints) - 1))
        add_s = time.monotonic() - started
        added, have = size - have, size
        names = [n for n in d.endpoints if n != up["name"]]
        hosts = work / "hosts"
        lines = []
        for ep in d.client.get("/v1/endpoints"):
            if ep["network"] == "bridge":
                lines.append(f"{ep['ipv4'].split('/')[0]} {ep['name']} {ep['name']}.bridge")
        hosts.write_text("\n".join(lines) + "\n")
        if baseline is not None:
            env.stop(baseline)
        baseline = _dnsmasq(d.netns, work, f"--listen-address={GW}", f"--port={BASELINE_PORT}",
                            f"--addn-hosts={hosts}", f"--server={UPSTREAM}", "--cache-size=0")
        _wait_answer(client.ns, GW, BASELINE_PORT, names[-1])
        _wait_answer(client.ns, GW, 53, names[-1])
        row: dict[str, Any] = {"endpoints": size, "add_ms_per_endpoint": round(add_s * 1000 / max(added, 1), 1)}
        for label, port in (("bpfnet", 53), ("dnsmasq", BASELINE_PORT)):
            row[label] = {"names": dnsperf(client.ns, GW, port, names, seconds, work),
                          "forwarded": dnsperf(client.ns, GW, port, FORWARDED, seconds, work),
                          "names_latency": _probe_in(client.ns, GW, port, 1000, names),
                          "forwarded_latency": _probe_in(client.ns, GW, port, 1000, FORWARDED)}
        sizes[str(size)] = row
        log.info("%d endpoints: %s", size, json.dumps(row))
    restart = _restart_losses(d, client.ns, names[:10])
    return {"sizes": sizes, "restart": restart, "seconds": seconds, "machine": env.machine()}


def _restart_losses(d: BpfnetDaemon, ns: str, names: list[str]) -> dict[str, Any]:
    """2000 queries one at a time (about 2 ms apart) while the daemon restarts and is SIGKILLed."""
    proc = env.spawn([env.PYTHON, "-m", "bench.dns", "probe", GW, "53", "2000", "0.002", *names], ns=ns,
                     stdout=subprocess.PIPE)
    time.sleep(0.5)
    assert d.proc is not None
    env.stop(d.proc, timeout=20)
    d.start()
    env.stop(d.proc, sig=9)
    d.start()
    out, _ = proc.communicate(timeout=300)
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else 0.0


def markdown(doc: dict[str, Any]) -> list[str]:
    intro = ("bpfnet's embedded resolver (a Python process on the network's gateway, port 53) against dnsmasq "
             "on the same address (port 5300) serving the same names from a hosts file and forwarding the "
             "rest, uncached, to the same upstream dnsmasq; queried from one endpoint. qps: dnsperf, 20 "
             f"outstanding, {doc['seconds']:g} s; latency: one query at a time, 1000 queries.")
    head = ("| endpoints | queries | bpfnet qps | dnsmasq qps | ratio | bpfnet p50 / p99 µs | dnsmasq p50 / p99 µs "
            "| p99 ratio |")
    lines = ["## DNS for endpoints", "", intro, "", head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size, row in doc["sizes"].items():
        for kind in ("names", "forwarded"):
            b, m = row["bpfnet"], row["dnsmasq"]
            bl, ml = b[f"{kind}_latency"], m[f"{kind}_latency"]
            lines.append(f"| {size} | {'endpoint names' if kind == 'names' else 'forwarded'} | {b[kind]['qps']} "
                         f"| {m[kind]['qps']} | {ratio(b[kind]['qps'], m[kind]['qps'])}x | {bl['p50_us']} / "
                         f"{bl['p99_us']} | {ml['p50_us']} / {ml['p99_us']} | {ratio(bl['p99_us'], ml['p99_us'])}x |")
    r = doc["restart"]
    restart = (f"Across a daemon restart and a SIGKILL (2000 endpoint-name queries one at a time, no retry): "
               f"**{r['failed']} lost**, {r['wrong']} wrong.")
    lines += ["", restart,
              "Endpoint add with DNS (files, resolver state handed over and confirmed): " + ", ".join(
                  f"{row['add_ms_per_endpoint']} ms per add up to {size}" for size, row in doc["sizes"].items())
              + "."]
    return lines + [""]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "probe":
        server, port, count, pause, *names = argv[1:]
        print(json.dumps(probe(server, int(port), int(count), names, float(pause))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from bpfnet.datapath import bpffs

    write = "--write" in argv
    args = [a for a in argv if a != "--write"]
    seconds = float(args[0]) if args else 3.0
    env.install_handlers()
    env.sweep_dead_runs()
    try:
        with bpffs.mounted():
            doc = measure(seconds)
    finally:
        env.cleanup()
    print(json.dumps(doc, indent=1))
    if write:
        from . import report

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, OUT_JSON), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        with open(os.path.join(here, "results.json"), encoding="utf-8") as f:
            report.write(json.load(f), here)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
