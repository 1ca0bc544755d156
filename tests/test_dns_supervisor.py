"""The resolver's supervisor when the resolver is slow to come up (an emulated kernel, a loaded
host): the start is not an error, and the resolver is never started twice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from bpfnet.dns import supervisor
from bpfnet.dns.supervisor import PIDFILE, ResolverProcess

# Stands in for `python -m bpfnet.dns.server --dir DIR ...`: its command line carries the module
# and the directory, as the supervisor checks, and it writes its pidfile only after a while.
SLOW = """#!/bin/bash
sleep 0.6
echo $$ > "$4/{pidfile}"
while :; do sleep 0.2; done
"""


def test_a_slow_resolver_is_waited_for_not_started_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "python"
    fake.write_text(SLOW.format(pidfile=PIDFILE))
    fake.chmod(0o755)
    monkeypatch.setattr(supervisor.sys, "executable", str(fake))
    monkeypatch.setattr(supervisor, "START_WAIT", 0.1)
    proc = ResolverProcess(tmp_path / "dns")
    try:
        pid, started = proc.ensure()  # not up within START_WAIT: no error
        assert started and proc.pid() is None
        assert proc.ensure() == (pid, False)  # still coming up: the same child, no second one
        deadline = time.monotonic() + 10
        while proc.pid() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid() == pid
        assert proc.ensure() == (pid, False)
    finally:
        if proc.child is not None:
            os.kill(proc.child.pid, signal.SIGKILL)
            proc.child.wait()
