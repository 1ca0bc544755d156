"""``python -m bench.daemon_shim [--profile PREFIX] DAEMON-ARGS...``: how the harness runs ``bpfnet daemon``.

Boundary: runs ``bpfnet daemon`` (``bpfnet.cli.main``) with DAEMON-ARGS
unchanged. The one addition, only with ``--profile PREFIX``:
``EndpointService.add``, ``.remove`` and the ``/metrics`` WSGI app each run
under a ``cProfile.Profile`` of their own (the harness sends those requests
one at a time) while the file PREFIX.on exists, so the harness can profile a
window of a long run; the statistics are dumped to PREFIX.add,
PREFIX.remove and PREFIX.scrape when the daemon returns (SIGTERM). Timed
requests run with PREFIX.on absent: then the wrappers only check for it.
"""

from __future__ import annotations

import cProfile
import os
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any


def main(argv: list[str]) -> int:
    out = None
    if argv[:1] == ["--profile"]:
        out, argv = argv[1], argv[2:]
    from bpfnet import cli
    from bpfnet.endpoints import EndpointService
    from bpfnet.metrics import server as metrics_server

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
        make_app = metrics_server._app

        def app_factory(registry: Any) -> Callable[..., Any]:
            app = make_app(registry)

            def whole(environ: Any, start_response: Any) -> list[bytes]:
                return list(app(environ, start_response))  # the body is made while iterating
            return profiled(whole, profiles["scrape"])

        metrics_server._app = app_factory
    try:
        return int(cli.main(["daemon", *argv]))
    finally:
        if out is not None:
            for what, prof in profiles.items():
                prof.dump_stats(f"{out}.{what}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
