"""/etc/netns/<endpoint>/resolv.conf and hosts: the iproute2 convention (an adapter).

Boundary: writes, replaces and removes the two files and their directory; decides nothing.
``ip netns exec NAME`` bind-mounts every file of /etc/netns/NAME over the one of the same
name in /etc, so the endpoint's programs (glibc's resolver, getent) read them. A file is
written to a temporary name in the same directory and renamed over the old one, so a reader
never sees half a file. Only files that carry this daemon's header (``rules.GENERATED`` with
its owner) are ever replaced or removed: an adopted namespace may have files of its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .rules import GENERATED, is_generated_by

log = logging.getLogger(__name__)
ETC_NETNS = Path("/etc/netns")
NAMES = ("resolv.conf", "hosts")


class EndpointFiles:
    def __init__(self, owner: str, root: Path = ETC_NETNS) -> None:
        self.owner = owner
        self.root = root

    def directory(self, netns: str) -> Path:
        return self.root / netns

    def write(self, netns: str, contents: dict[str, str]) -> list[str]:
        """Write each file (name -> text) atomically; a file this daemon did not write is left
        alone. Returns the paths written."""
        directory = self.directory(netns)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in contents.items():
            path = directory / name
            try:
                old = path.read_text()
            except FileNotFoundError:
                old = None
            if old is not None and not is_generated_by(old, self.owner):
                log.warning("%s exists and bpfnet did not write it: left as it is", path)
                continue
            if old == text:
                written.append(str(path))
                continue
            tmp = directory / f".{name}.bpfnet-{os.getpid()}"
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            written.append(str(path))
        return written

    def remove(self, netns: str) -> list[str]:
        """Remove this daemon's files of NETNS, and the directory when that leaves it empty."""
        directory = self.directory(netns)
        removed = []
        for name in NAMES:
            path = directory / name
            try:
                if is_generated_by(path.read_text(), self.owner):
                    path.unlink()
                    removed.append(str(path))
            except FileNotFoundError:
                pass
        for stale in directory.glob(".*.bpfnet-*") if directory.is_dir() else ():
            stale.unlink(missing_ok=True)  # a write a killed daemon did not finish
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty (someone else's files) or missing
        return removed

    def mine(self) -> list[str]:
        """The namespaces whose directory holds a file this daemon wrote (for the CHECK after a crash)."""
        out = []
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        for directory in entries:
            for name in NAMES:
                try:
                    with (directory / name).open() as f:
                        head = f.read(len(GENERATED) + len(self.owner) + 4)
                except OSError:
                    continue
                if is_generated_by(head, self.owner):
                    out.append(directory.name)
                    break
        return out
