"""The resolver process: start it, adopt the one a previous daemon left, hand it its state.

Boundary: processes and files in the daemon's DNS directory (``<state-dir>/dns``): the state
file the resolver reads, the stats file it writes, its pidfile. Decides nothing about names.
The resolver runs in a session of its own, so that neither the daemon's exit, nor its SIGKILL,
nor a Ctrl-C to its terminal stops it: the next daemon finds it by the pidfile (checked against
/proc/PID/cmdline, so a recycled PID is never taken for it) and keeps it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .server import MODULE, PIDFILE, STATE, STATS

log = logging.getLogger(__name__)
ACK_TIMEOUT = 2.0
# How long a start waits for the new resolver's pidfile. Not an error when it takes longer (an
# emulated kernel, a loaded host): the child keeps starting and is never started twice.
START_WAIT = 5.0


class ResolverProcess:
    def __init__(self, directory: Path, log_level: str = "info") -> None:
        self.dir = directory
        self.log_level = log_level
        self.child: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.last_state: dict[str, Any] | None = None

    def _cmdline(self, pid: int) -> list[str]:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        return raw.decode(errors="replace").split("\0")

    def pid(self) -> int | None:
        """The running resolver of this directory, if any."""
        if self.child is not None and self.child.poll() is not None:
            self.child = None  # reaped: it died
        try:
            pid = int((self.dir / PIDFILE).read_text().strip())
        except (OSError, ValueError):
            return None
        cmd = self._cmdline(pid)
        if MODULE in cmd and str(self.dir) in cmd:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return None
            return None if state in ("Z", "X") else pid
        return None

    def ensure(self) -> tuple[int, bool]:
        """(pid, started): the running resolver, started if there is none."""
        pid = self.pid()
        if pid is not None:
            return pid, False
        if self.child is not None and self.child.poll() is None:
            return self.child.pid, False  # started before and still coming up
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "resolver.log").open("ab") as out:
            self.child = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--dir", str(self.dir), "--log-level", self.log_level],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise RuntimeError(f"the DNS resolver exited at once (status {self.child.returncode}); "
                                   f"see {self.dir / 'resolver.log'}")
            if self.pid() == self.child.pid:
                return self.child.pid, True
            time.sleep(0.01)
        log.warning("the DNS resolver (pid %d) is still starting after %.0f s; it answers once it has "
                    "(see %s)", self.child.pid, START_WAIT, self.dir / "resolver.log")
        return self.child.pid, True

    def push(self, state: dict[str, Any], wait: bool = True) -> bool:
        """Hand STATE to the resolver (atomic file, then SIGHUP); with WAIT, until it has loaded it.
        False when it did not confirm in time (it also re-reads the file on its own)."""
        self.generation = max(self.generation + 1, time.time_ns() // 1_000_000)
        state = {**state, "generation": self.generation}
        self.last_state = state
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE}.{os.getpid()}"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.dir / STATE)
        pid = self._signal(signal.SIGHUP)
        if pid is None:
            return False
        if not wait:
            return True
        deadline = time.monotonic() + ACK_TIMEOUT
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats is not None and int(stats.get("generation", -1)) >= self.generation:
                return True
            time.sleep(0.002)
        log.warning("the DNS resolver (pid %d) did not load state %d within %.0f s", pid, self.generation,
                    ACK_TIMEOUT)
        return False

    def _signal(self, sig: int) -> int | None:
        """Send SIG to the running resolver; its pid, or None when none runs."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        return pid

    def stats(self) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.dir / STATS).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def stop(self, timeout: float = 3.0) -> bool:
        """SIGTERM the resolver (SIGKILL after TIMEOUT); False if none ran."""
        pid = self._signal(signal.SIGTERM)
        if pid is None:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() == pid:
            if self.child is not None and self.child.pid == pid:
                self.child.poll()
            time.sleep(0.02)
        if self.pid() == pid:
            os.kill(pid, signal.SIGKILL)
        if self.child is not None:
            self.child.wait(timeout=timeout)
            self.child = None
        return True
