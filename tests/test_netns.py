"""bpfnet.netns: namespaces made on a throwaway thread are real, separate and visible to ip netns."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from bpfnet import netns

pytestmark = pytest.mark.kernel


def test_create_is_separate_visible_and_idempotent() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    names = [f"bpfnet-tn{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    mine = os.stat("/proc/self/ns/net").st_ino
    try:
        assert all(netns.create(n) for n in names)
        assert netns.create(names[0]) is False  # exists: success, nothing new
        inodes = {netns.inode(n) for n in names}
        assert len(inodes) == 2 and mine not in inodes
        assert os.stat("/proc/self/ns/net").st_ino == mine  # the caller never moved
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert all(n in listed for n in names)
        links = subprocess.run(["ip", "-n", names[0], "-o", "link"], capture_output=True, text=True,
                               check=True).stdout
        assert [line.split(": ")[1] for line in links.splitlines()] == ["lo"]
        assert netns.run_in(names[1], lambda: os.stat("/proc/thread-self/ns/net").st_ino) == netns.inode(names[1])
    finally:
        for n in names:
            netns.remove(n)
    assert not any(netns.exists(n) for n in names)
