"""Damaged state and concurrent daemons: one-line errors, nothing used blindly, locks that die with their holder.

Issue 10 defects #10 (0-byte state file), #11 (corrupt/unreadable state), #12 (disk full),
#16 (two daemons on one state dir / namespace). Pure file and SQLite tests: no root needed,
except the immutable-directory case (chattr).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bpfnet.daemonlock import DaemonLock
from bpfnet.errors import Conflict
from bpfnet.state import DB_NAME, StateError, StorageFull, Store

CFG = {"name": "bridge", "bridge": "bpfnet0", "subnet4": "172.30.0.0/16"}


def filled(tmp_path: Path, n: int = 300) -> Path:
    """A state dir whose database holds one network and N endpoints with leases."""
    state = tmp_path / "state"
    s = Store(str(state))
    s.claim_meta("hostns", "ns")
    s.add_network("bridge", CFG, is_default=True)
    for i in range(n):
        s.reserve_endpoint(f"e{i}", "bridge", f"e{i}", False, "02:42:ac:1e:00:02",
                           [(f"172.30.{i // 250}.{i % 250 + 2}", 4)], 4096, 1.0, lambda j: f"bnv{j}")
    s.close()
    return state


def test_new_and_empty_files_are_fresh(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "new"))
    assert s.fresh
    s.claim_meta("hostns", "ns")
    s.close()
    assert not Store(str(tmp_path / "new")).fresh
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / DB_NAME).write_bytes(b"")  # defect #10: a 0-byte file is an empty database
    assert Store(str(empty)).fresh


def test_existing_state_is_not_fresh(tmp_path: Path) -> None:
    s = Store(str(filled(tmp_path, 3)))
    assert not s.fresh and len(s.endpoints()) == 3


def test_garbage_file_is_one_line_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="is not a SQLite database") as err:
        Store(str(state))
    assert "\n" not in err.value.message and "--reconcile=adopt" in err.value.message
    assert (state / DB_NAME).read_bytes().startswith(b"this is not sqlite")  # left untouched


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    state = filled(tmp_path)
    db = state / DB_NAME
    for extra in state.glob(DB_NAME + "-*"):
        extra.unlink()
    data = db.read_bytes()
    assert len(data) > 8192
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match="damaged|integrity check|not a SQLite") as err:
        Store(str(state))
    assert "\n" not in err.value.message


def test_integrity_check_failure_is_refused(tmp_path: Path) -> None:
    state = filled(tmp_path)
    db = state / DB_NAME
    # Break the leases index without touching the table: the file still opens, but
    # integrity_check finds the index out of step with its table.
    c = sqlite3.connect(db)
    c.execute("PRAGMA writable_schema=ON")
    root = c.execute("SELECT rootpage FROM sqlite_master WHERE name='leases_by_endpoint'").fetchone()[0]
    page_size = c.execute("PRAGMA page_size").fetchone()[0]
    c.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size + 100)
        f.write(os.urandom(page_size - 200))
    with pytest.raises(StateError, match="integrity check|damaged") as err:
        Store(str(state))
    assert "\n" not in err.value.message


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StateError, match="is not a directory"):
        Store(str(f))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root and chattr")
def test_unwritable_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "ro"
    state.mkdir()
    if subprocess.run(["chattr", "+i", str(state)], check=False, capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        with pytest.raises(StateError) as err:
            Store(str(state))
        assert "\n" not in err.value.message and str(state) in err.value.message
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)


def test_disk_full_is_507_and_changes_nothing(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "state"))
    s.add_network("bridge", CFG, is_default=True)
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count = {pages}")  # what a full disk looks like to SQLite
    with pytest.raises(StorageFull) as err:
        for i in range(2000):
            s.add_network(f"n{i}", {**CFG, "name": f"n{i}", "pad": "x" * 2000})
    assert err.value.status == 507 and "disk is full" in err.value.message
    before = len(s.networks())
    with pytest.raises(StorageFull):
        s.add_network("more", {**CFG, "name": "more", "pad": "x" * 5000})
    assert len(s.networks()) == before and s.network("more") is None
    s._db.execute("PRAGMA max_page_count = 1073741823")
    s.add_network("after", {**CFG, "name": "after"})  # usable again once there is room


# locks ----------------------------------------------------------------------
def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = rf"another bpfnet daemon \(pid {os.getpid()}\) is using --state-dir X"
    with DaemonLock(path, "--state-dir X"), pytest.raises(Conflict, match=holder):
        DaemonLock(path, "--state-dir X").acquire()
    assert not path.exists()  # removed with the lock
    with DaemonLock(path, "--state-dir X"):
        assert path.read_text().strip() == str(os.getpid())


def test_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    path = tmp_path / "y.lock"
    code = ("import sys, time; from pathlib import Path; from bpfnet.daemonlock import DaemonLock;"
            f"DaemonLock(Path({str(path)!r}), 'x').acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(Conflict, match=f"pid {holder.pid}"):
            DaemonLock(path, "x").acquire()
        holder.kill()
        holder.wait(timeout=10)
        deadline = time.monotonic() + 5
        while True:
            try:
                DaemonLock(path, "x").acquire().release()
                break
            except Conflict:
                assert time.monotonic() < deadline, "lock outlived its SIGKILLed holder"
                time.sleep(0.05)
    finally:
        if holder.poll() is None:
            holder.kill()
