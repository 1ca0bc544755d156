"""What the tests with real container runtimes (podman, dockerd) share.

- ``busybox_tar``: a root filesystem of Debian's busybox-static (/bin/busybox and a link per
  applet) as a tar, imported offline with ``podman import`` / ``docker import``: nothing is pulled.
- ``OutsideDirs``: directories and files outside the test's temp dir that a runtime creates as
  it runs (/run/runc, /var/lib/cni/results, podman's blob info cache, ...); those that did not
  exist before are removed at the end (directories if empty), and whatever is left is reported.
- ``in_netns``: the argv prefix that runs a runtime inside a test namespace. ``nsenter --net``
  changes only the network namespace; ``ip netns exec`` would also remount /sys, hiding the
  cgroup mounts the runtimes need.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def busybox_tar(path: Path) -> Path:
    """Write a busybox root filesystem to PATH (a tar) and return PATH."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "root", "var", "www"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), "bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        index = path.parent / "index.html"
        index.write_text("hello from bpfnet\n")
        tar.add(str(index), "www/index.html")
    return path


def in_netns(ns: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}"]


def runtime_skip_reason(*programs: str) -> str | None:
    """Why a runtime test cannot run here, or None."""
    for program in programs:
        if shutil.which(program) is None:
            return f"{program} is not installed (scripts/setup installs it)"
    if not BUSYBOX.exists():
        return f"{BUSYBOX} is missing (Debian's busybox-static; scripts/setup installs it)"
    return None


class OutsideDirs:
    """Directories (and files) a runtime may create outside the test's own; removed at the end
    if the test's run created them (directories only when empty)."""

    def __init__(self, *paths: str) -> None:
        self.paths = [Path(p) for p in paths]
        self.existed = {p: p.exists() for p in self.paths}

    def leftovers(self, names: set[str]) -> list[str]:
        """Entries among NAMES (e.g. container ids) still present in any of the directories."""
        out = []
        for p in self.paths:
            if p.is_dir():
                out += [str(p / e) for e in os.listdir(p) if any(n in e for n in names)]
        return out

    def cleanup(self) -> list[str]:
        """Remove what this run created (deepest first), directories when empty; list the non-empty ones."""
        left = []
        for p in sorted(self.paths, key=lambda x: len(x.parts), reverse=True):
            if self.existed[p] or not p.exists():
                continue
            if not p.is_dir():
                p.unlink()
                continue
            try:
                p.rmdir()
            except OSError:
                left.append(f"{p} (not empty: {sorted(os.listdir(p))[:5]})")
        return left
