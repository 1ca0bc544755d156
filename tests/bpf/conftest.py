"""Fixtures for the datapath tests (helpers live in bpf_env.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from bpf_env import Env, inside, make_links, netns, pin_dir, skip_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason is None:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def env() -> Iterator[Env]:
    """One compile for all packet-level tests: mode redirect-peer, two networks
    (net 1 "brA" icc=true, net 2 "brB" icc=false), two endpoints each."""
    if skip_reason():
        pytest.skip(skip_reason() or "")
    from bpfnet.datapath.ebpf import EbpfDatapath

    # The main thread enters the namespace only around setup, teardown and each
    # test that uses env (see _inside_env_ns): holding it for the whole session
    # would move every later test (metrics on loopback, …) into it.
    with netns() as ns, pin_dir() as pins:
        with inside(ns):
            nets, eps = make_links(
                [("brA", "10.1", True), ("brB", "10.2", False)],
                [("a1", "brA", 2), ("a2", "brA", 3), ("b1", "brB", 2), ("b2", "brB", 3)])
            dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins, max_endpoints=4096)
        try:
            with inside(ns):
                dp.start(list(nets.values()), list(eps.values()))
            yield Env(ns, pins, dp, dict(nets), dict(eps))
        finally:
            with inside(ns):
                dp.cleanup()


@pytest.fixture(autouse=True)
def _inside_env_ns(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests using env run with this thread in env's namespace (test runs need its ifindexes)."""
    if "env" not in request.fixturenames:
        yield
        return
    env_ns = request.getfixturevalue("env").ns
    with inside(env_ns):
        yield
