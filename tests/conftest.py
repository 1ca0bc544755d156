"""Shared fixtures: real bpfnet daemons in throwaway namespaces.

Fixtures
--------
``daemons``        function-scoped :class:`helpers.DaemonFactory`; ``daemons.start(*flags)``
                   spawns ``bpfnet daemon --netns bpfnet-t<hex> --state-dir <tmp> -H unix://<tmp>
                   --datapath bridge --metrics-addr 127.0.0.1:0 *flags`` and waits until it answers.
``module_daemons`` the same, shared by one test module (start one daemon per module where
                   tests don't conflict).
``netns_factory``  ``netns_factory(suffix)`` makes an extra namespace ``bpfnet-t<hex>-<suffix>``
                   removed afterwards.

Everything is killed/removed afterwards even when the test fails, and a teardown error is
raised if a namespace named after the test's tag is left. Tests marked ``kernel`` are
skipped unless running as root with ``ip`` available.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bpfnet.datapath import bpffs
from cluster import Cluster
from helpers import DaemonFactory, is_root, make_netns, unique_tag


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if not is_root():
        reason = "needs root (namespaces, veths)"
    elif shutil.which("ip") is None:
        reason = "needs iproute2 (ip)"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)



@pytest.fixture(scope="session", autouse=True)
def _bpffs() -> Iterator[None]:
    """bpffs for the whole run; unmounted at the end (also after failures) if the
    run had to mount it, so its kernel-made entries do not outlive the run."""
    if not is_root():
        yield
        return
    with bpffs.mounted():
        yield


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    with DaemonFactory(tmp_path / "daemons") as factory:
        yield factory


@pytest.fixture(scope="module")
def module_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    with DaemonFactory(tmp_path_factory.mktemp("daemons")) as factory:
        yield factory


@pytest.fixture
def netns_factory(daemons: DaemonFactory) -> Callable[[str], str]:
    tag = unique_tag()

    def make(suffix: str) -> str:
        return make_netns(daemons.track_netns(f"{tag}-{suffix}"))

    return make


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One etcd and three hosts (daemons with --cluster-store), shared by the session's cluster
    tests (tests/cluster.py); everything removed afterwards, etcd stopped by its PID."""
    if not is_root() or shutil.which("etcd") is None:
        pytest.skip("needs root and Debian's etcd-server")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.etcd.start()
        for _ in range(3):
            c.add_host()
        yield c
    finally:
        left = c.cleanup()
        if left:
            raise AssertionError(f"cluster cleanup left these behind: {left}")
