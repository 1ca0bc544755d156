"""One daemon per state dir and per managed namespace: exclusive lock files.

Boundary: lock files only (flock(2) on a file holding the owner's PID). Two
daemons on the same ``--state-dir`` would both rewrite it, and two daemons
managing the same namespace would each reconcile away the other's endpoints
mid-add; both are refused at start with the other daemon's PID.

flock is released by the kernel when the holder dies (SIGKILL included), so a
crashed daemon never leaves a lock that blocks the next start. The file is
removed on release (it lives outside the repo, under /run/bpfnet, for the
namespace lock). Removing a lock file races with a newcomer that opened it
just before: the newcomer checks after locking that the path still names the
file it locked, and starts over if not.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import Conflict
from .state import StateError

log = logging.getLogger(__name__)
RUN_DIR = Path("/run/bpfnet")


class DaemonLock:
    """An exclusive lock on PATH held until release(); WHAT names the locked thing in errors."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise StateError(f"cannot create {self.path.parent} for the lock on {self.what}: "
                             f"{exc.strerror or exc}") from None
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StateError(f"cannot open lock file {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StateError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
                raise Conflict(f"another bpfnet daemon{self._holder()} is using {self.what}; "
                               "stop it first") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed it between our open and our lock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return self
        raise StateError(f"could not lock {self.path}: it keeps being replaced")

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still holding it: see the module docstring
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def state_dir_lock(state_dir: str) -> DaemonLock:
    return DaemonLock(Path(state_dir) / "bpfnet.lock", f"--state-dir {state_dir}")


def netns_lock(netns_name: str | None) -> DaemonLock:
    """The lock on the namespace a daemon manages: by name, or by inode for its own namespace."""
    if netns_name:
        return DaemonLock(RUN_DIR / f"netns-{netns_name}.lock", f"network namespace {netns_name}")
    ino = os.stat("/proc/self/ns/net").st_ino
    return DaemonLock(RUN_DIR / f"netns-ino{ino}.lock", "the daemon's own network namespace")
