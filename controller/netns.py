"""Named network namespaces and running code inside them.

Boundary: create/remove/list namespaces visible to ``ip netns`` (bind mounts
under /run/netns), move the daemon process into the namespace it manages, and
run short functions (sysctl writes) in another namespace on a private thread.
setns(2) changes only the calling thread, which is why per-namespace work runs
on a throwaway thread instead of switching the daemon's threads back and forth.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as _netns

log = logging.getLogger(__name__)
RUN_DIR = Path("/run/netns")
T = TypeVar("T")


CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
OWN_NETNS = "/proc/thread-self/ns/net"


def exists(name: str) -> bool:
    """Named namespace NAME exists; an absolute path must be a network namespace's file."""
    if os.path.isabs(name):
        return is_netns_file(name)
    return (RUN_DIR / name).exists()


def is_netns_file(path: str) -> bool:
    """PATH is a network namespace's file (a bind mount like /run/netns/NAME, or /proc/PID/ns/net).

    Checked by stat first (a file of the namespace filesystem, nsfs), so that nothing
    else, a device or a FIFO, is ever opened; then its type by NS_GET_NSTYPE.
    """
    try:
        st, own = os.stat(path), os.stat(OWN_NETNS)
    except OSError:
        return False
    if st.st_dev != own.st_dev or not stat.S_ISREG(st.st_mode):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return int(fcntl.ioctl(fd, NS_GET_NSTYPE)) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def is_own(path: str) -> bool:
    """PATH is the calling thread's network namespace (the daemon's: the managed one)."""
    try:
        return os.stat(path).st_ino == os.stat(OWN_NETNS).st_ino
    except OSError:
        return False


def create(name: str, setup: Callable[[], None] | None = None) -> bool:
    """Create the named namespace; False if it already existed.

    A throwaway thread unshares its network namespace and bind-mounts
    /proc/thread-self/ns/net on /run/netns/NAME (what `ip netns add` does).
    pyroute2's netns.create forks a helper process for this, ~8 ms a call.
    SETUP (e.g. sysctl writes) then runs on that same thread, inside the new
    namespace, which spares a second thread and setns; if it fails, the
    namespace is removed again and its exception raised.
    """
    if exists(name):
        return False

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
        _netns.attach(name, "thread-self")
        if setup is not None:
            try:
                setup()
            except BaseException:
                remove(name)
                raise

    try:
        _on_thread(f"netns-create-{name}", body)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    log.debug("created netns %s", name)
    return True


def names() -> list[str]:
    """Every named namespace (what ``ip netns list`` shows)."""
    try:
        return sorted(p.name for p in RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def remove(name: str) -> None:
    """Remove the named namespace; missing is success."""
    if not exists(name):
        return
    _netns.remove(name)
    log.debug("removed netns %s", name)


def inode(name: str) -> int:
    return os.stat(RUN_DIR / name).st_ino


def enter(name: str) -> bool:
    """Move the calling thread (call before starting threads) into NAME, creating it if missing."""
    created = create(name)
    _netns.setns(name, flags=0)
    log.info("managing network namespace %s%s", name, " (created)" if created else "")
    return created


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Run fn on a fresh thread that has joined namespace NAME; re-raise its exception."""
    def body() -> T:
        _netns.setns(name, flags=0)
        return fn()

    return _on_thread(f"netns-{name}", body)


def _on_thread(label: str, fn: Callable[[], T]) -> T:
    """Run fn on a fresh thread (whose namespaces it may change) and hand back its result or exception."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error.append(exc)

    t = threading.Thread(target=body, name=label)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's namespace (/proc/sys is per network namespace).

    KEY is slash-separated ("net/ipv6/conf/br.0/forwarding") because
    interface names may contain dots.
    """
    (Path("/proc/sys") / key).write_text(value)


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        write_sysctl(key, value)
