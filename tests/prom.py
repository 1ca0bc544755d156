"""A throwaway Debian Prometheus on loopback, and a small client for its query API (test support)."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import free_port

PROMETHEUS = shutil.which("prometheus")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as r:
            return json.load(r)

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of EXPR, or None when it has no result."""
        res = self.query(expr)
        assert len(res) <= 1, (expr, res)
        return float(res[0]["value"][1]) if res else None

    def wait(self, expr: str, ok: Callable[[float | None], bool], timeout: float = 20) -> float | None:
        """Poll EXPR until ok(value) holds; return the value (AssertionError with the last one)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.value(expr)
            except (OSError, urllib.error.URLError) as exc:  # Prometheus not up yet
                last = exc
            else:
                if ok(last):
                    return last  # type: ignore[no-any-return]
            time.sleep(0.25)
        raise AssertionError(f"{expr}: condition not met within {timeout}s, last value {last!r}")

    def wait_value(self, expr: str, timeout: float = 60.0) -> float:
        """The value of EXPR once it exists and is > 0."""
        value = self.wait(expr, lambda v: v is not None and v > 0, timeout)
        assert value is not None
        return value


@contextmanager
def running_prometheus(target: str, workdir: Path, rule_files: Sequence[Path] = ()) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1:<free port> scraping TARGET every second; stopped on exit."""
    assert PROMETHEUS is not None, "prometheus is not installed (Debian package 'prometheus')"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""\
        global:
          scrape_interval: 1s
          evaluation_interval: 1s
        rule_files: {json.dumps([str(r) for r in rule_files])}
        scrape_configs:
          - job_name: bpfnet
            static_configs:
              - targets: ["{target}"]
        """))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.returncode not in (0, -15):
            print(log_path.read_text()[-4000:])
