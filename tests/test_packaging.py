"""The wheel ships every package of the source tree (an editable install hides a missing one)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_controller_package_is_listed_in_pyproject() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {"bpfnet." + ".".join(p.parent.relative_to(ROOT / "controller").parts)
             for p in (ROOT / "controller").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found} | {"bpfnet.bpf"}
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"
