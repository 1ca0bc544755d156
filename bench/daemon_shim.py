"""``python -m bench.daemon_shim [--profile PREFIX] DAEMON-ARGS...``: how the harness runs ``bpfnet daemon``.

Boundary: runs ``bpfnet daemon`` (``bpfnet.cli.main``) with DAEMON-ARGS
unchanged, plus two optional, clearly separated additions:

- ``--profile PREFIX``: ``EndpointService.add``, ``.remove`` and the
  ``/metrics`` WSGI app each run under a ``cProfile.Profile`` of their own
  (the harness sends those requests one at a time) while the file
  PREFIX.on exists (so the harness can profile a window of a long run), and
  the statistics are dumped to PREFIX.add, PREFIX.remove and PREFIX.scrape
  when the daemon returns (SIGTERM). Used by the scale measurement's profile pass, never while timing.
- While the daemon does not yet build its datapath from ``--datapath``
  (``datapath_wired()`` is false: it still constructs ``BridgeDatapath``
  unconditionally), the datapath is built the way the daemon will:
  ``make_datapath(cfg.datapath, pin_dir(cfg.netns))`` right after the
  runtime is made, before reconciliation. Once the daemon wires it, this
  shim adds nothing. Results record which of the two was used.
"""

from __future__ import annotations

import cProfile
import inspect
import os
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any


def datapath_wired() -> bool:
    """True when ``bpfnet daemon`` itself honours --datapath."""
    from bpfnet.daemon import Daemon

    return "make_datapath" in inspect.getsource(Daemon)


def _wire_datapath() -> None:
    from bpfnet.daemon import Daemon, pin_dir
    from bpfnet.datapath import make_datapath

    original = Daemon._enter_and_build

    def enter_and_build(self: Any) -> None:
        original(self)
        if self.cfg.datapath != "bridge":
            self.rt.datapath = make_datapath(self.cfg.datapath, pin_dir(self.cfg.netns))

    Daemon._enter_and_build = enter_and_build


def main(argv: list[str]) -> int:
    out = None
    if argv[:1] == ["--profile"]:
        out, argv = argv[1], argv[2:]
    from bpfnet import cli, metrics
    from bpfnet.endpoints import EndpointService

    if not datapath_wired():
        _wire_datapath()
    profiles = {"add": cProfile.Profile(), "remove": cProfile.Profile(), "scrape": cProfile.Profile()}
    lock = threading.Lock()

    gate = f"{out}.on"

    def profiled(fn: Callable[..., Any], prof: cProfile.Profile) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not os.path.exists(gate):
                return fn(*args, **kwargs)
            with lock:
                return prof.runcall(fn, *args, **kwargs)
        return wrapper

    if out is not None:
        EndpointService.add = profiled(EndpointService.add, profiles["add"])
        EndpointService.remove = profiled(EndpointService.remove,
                                          profiles["remove"])
        make_app = metrics._app

        def app_factory(registry: Any) -> Callable[..., Any]:
            app = make_app(registry)

            def whole(environ: Any, start_response: Any) -> list[bytes]:
                return list(app(environ, start_response))  # the body is made while iterating
            return profiled(whole, profiles["scrape"])

        metrics._app = app_factory
    try:
        return int(cli.main(["daemon", *argv]))
    finally:
        if out is not None:
            for what, prof in profiles.items():
                prof.dump_stats(f"{out}.{what}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
