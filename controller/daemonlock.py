"""One daemon per state dir and per managed namespace: exclusive locks.

Boundary: locks only. Two daemons on the same ``--state-dir`` would both
rewrite it, and two daemons managing the same namespace would each reconcile
away the other's endpoints mid-add; both are refused at start with the other
daemon's PID. Both locks are released by the kernel when the holder dies
(SIGKILL included), so a crashed daemon never blocks the next start.

- The state dir: flock(2) on ``<state-dir>/bpfnet.lock``, which holds the
  owner's PID and is removed on release. Removing a lock file races with a
  newcomer that opened it just before: the newcomer checks after locking that
  the path still names the file it locked, and starts over if not.
- The managed namespace: an abstract Unix socket (``@bpfnet-daemon``) bound
  inside it. Abstract socket names belong to a network namespace, so the lock
  is exactly "this namespace", whatever it is called, leaves no file behind
  anywhere, and SO_PEERCRED of a connection to it names the holder's PID.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import Conflict
from .state import StateError

log = logging.getLogger(__name__)
NETNS_LOCK_NAME = b"\0bpfnet-daemon"  # abstract: per network namespace, no file


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


class NetnsLock:
    """The lock on the network namespace the calling thread is in (see the module docstring)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._sock: socket.socket | None = None

    def acquire(self) -> Self:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(NETNS_LOCK_NAME)
            sock.listen(8)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise StateError(f"cannot lock {self.what}: {exc.strerror or exc}") from None
            raise Conflict(f"another bpfnet daemon{_holder_pid()} manages {self.what}; stop it first") from None
        self._sock = sock
        return self

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _holder_pid() -> str:
    """ (pid N) of whoever holds the namespace lock, via SO_PEERCRED, or "" if unknown."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(NETNS_LOCK_NAME)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return f" (pid {pid})" if pid > 0 else ""
    except OSError:
        return ""
    finally:
        probe.close()


def state_dir_lock(state_dir: str) -> DaemonLock:
    return DaemonLock(Path(state_dir) / "bpfnet.lock", f"--state-dir {state_dir}")


def netns_lock(netns_name: str | None) -> NetnsLock:
    """The lock on the namespace the caller has entered (call after entering it)."""
    return NetnsLock(f"network namespace {netns_name}" if netns_name else "the daemon's own network namespace")
