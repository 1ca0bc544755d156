"""Kernel adapter for bpfnet's nftables table, sysctls and addresses of the managed namespace.

Boundary: runs ``nft`` (the daemon's threads, and so its children, live in the managed
namespace) and reads addresses over netlink; decides nothing: the script to apply comes
from ``outside.ruleset``. Only the ``inet bpfnet`` table is ever named, so other tables
(firewalld, Docker, the user's) are never read or touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Protocol

from .. import netns
from ..errors import BpfnetError
from .ruleset import FAMILY, TABLE, Plan, render

NFT_TIMEOUT = 30.0


class NftError(BpfnetError):
    """nft refused a script or could not be run."""


class OutsideKernel(Protocol):
    def unusable(self) -> str | None:
        """None when nft is installed and the kernel takes bpfnet's (empty) table, else why not."""
    def apply(self, script: str) -> None:
        """Run SCRIPT as one nft transaction (all or nothing)."""
    def table_exists(self) -> bool: ...
    def counters(self) -> dict[str, tuple[int, int]]:
        """Named counters of bpfnet's table: name -> (packets, bytes); {} without the table."""
    def chains(self) -> list[str]:
        """Names of the chains of bpfnet's table; [] without the table."""
    def delete_table(self) -> bool:
        """Delete bpfnet's table; False when there was none."""
    def local_addresses(self) -> set[IPv4Address | IPv6Address]:
        """Every address of the managed namespace's interfaces."""
    def links(self) -> dict[int, str]:
        """ifindex -> name of the managed namespace's interfaces."""
    def addressed_links(self) -> set[int]:
        """ifindexes of the interfaces that have an address other than a link-local one."""
    def write_sysctls(self, sysctls: Mapping[str, str]) -> None: ...


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        return subprocess.run([nft, *args], input=stdin, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise NftError("nft is not installed (Debian's nftables package); run scripts/setup") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"nft {' '.join(args)} did not finish within {NFT_TIMEOUT:.0f} s") from None


class NftKernel:
    """``OutsideKernel`` through the nft command and pyroute2 (IPR: the managed namespace's)."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr

    def unusable(self) -> str | None:
        if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
            return "nft is not installed (Debian's nftables package)"
        # -c: the kernel checks the whole transaction (nat and filter chains of an inet table)
        # and commits nothing
        done = _run(["-c", "-f", "-"], stdin=render(Plan()))
        if done.returncode != 0:
            return f"the kernel refuses nftables' inet nat chains: {done.stderr.strip().splitlines()[-1:]}"
        return None

    def apply(self, script: str) -> None:
        done = _run(["-f", "-"], stdin=script)
        if done.returncode != 0:
            raise NftError(f"nft refused bpfnet's ruleset: {done.stderr.strip().splitlines()[-1:] or done.returncode}")

    def table_exists(self) -> bool:
        return _run(["list", "table", FAMILY, TABLE]).returncode == 0

    def counters(self) -> dict[str, tuple[int, int]]:
        done = _run(["-j", "list", "counters", "table", FAMILY, TABLE])
        if done.returncode != 0:
            return {}
        out: dict[str, tuple[int, int]] = {}
        for item in json.loads(done.stdout or "{}").get("nftables", []):
            c = item.get("counter")
            if c and c.get("table") == TABLE and c.get("family") == FAMILY:
                out[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return out

    def chains(self) -> list[str]:
        done = _run(["-j", "list", "table", FAMILY, TABLE])
        if done.returncode != 0:
            return []
        return [str(item["chain"]["name"]) for item in json.loads(done.stdout or "{}").get("nftables", [])
                if "chain" in item]

    def delete_table(self) -> bool:
        if not self.table_exists():
            return False
        done = _run(["delete", "table", FAMILY, TABLE])
        if done.returncode != 0:
            raise NftError(f"nft could not delete table {FAMILY} {TABLE}: {done.stderr.strip()}")
        return True

    def local_addresses(self) -> set[IPv4Address | IPv6Address]:
        out: set[IPv4Address | IPv6Address] = set()
        for msg in self.ipr.get_addr():
            address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if address:
                out.add(ip_address(address.split("%")[0]))
        return out

    def links(self) -> dict[int, str]:
        return {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in self.ipr.get_links()}

    def addressed_links(self) -> set[int]:
        out: set[int] = set()
        for msg in self.ipr.get_addr():
            address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if address and not ip_address(address.split("%")[0]).is_link_local:
                out.add(int(msg["index"]))
        return out

    def write_sysctls(self, sysctls: Mapping[str, str]) -> None:
        netns.write_sysctls(dict(sysctls))
