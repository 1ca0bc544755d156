"""bpfnet.datapath.bpffs in a private mount namespace: mounted when missing, unmounted after."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel

SCRIPT = r"""
import os, subprocess
from bpfnet.datapath import bpffs
subprocess.run(["umount", bpffs.BPFFS], check=False, capture_output=True)
assert not bpffs.is_mounted()
with bpffs.mounted():
    assert bpffs.is_mounted()
    assert set(os.listdir(bpffs.BPFFS)) <= bpffs.KERNEL_ENTRIES
assert not bpffs.is_mounted(), "mounted() left its own mount behind"
with bpffs.mounted():
    os.mkdir(bpffs.BPFFS + "/pinned")  # something of somebody's is still pinned: keep the mount
assert bpffs.is_mounted()
os.rmdir(bpffs.BPFFS + "/pinned")
assert bpffs.ensure_mounted() is False  # already there: nothing to do
print("ok")
"""


def test_mounted_mounts_and_unmounts_only_what_it_mounted() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    # a private mount namespace: the host's /sys/fs/bpf is never unmounted by this test
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
