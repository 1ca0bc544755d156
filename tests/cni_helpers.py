"""Running the ``bpfnet-cni`` executable as a CNI runtime does (environment, stdin, stdout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from helpers import ROOT

CNI_BIN = ROOT / ".venv" / "bin" / "bpfnet-cni"
CNI_PLUGINS_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins


def cni_cmd() -> list[str]:
    if CNI_BIN.exists():
        return [str(CNI_BIN)]
    return [sys.executable, "-m", "bpfnet.plugins.cni"]


@dataclass
class CniRun:
    returncode: int
    doc: Any  # stdout as JSON, None when empty
    stderr: str


def cni(command: str, conf: dict[str, Any], *, container_id: str = "", netns: str = "", ifname: str = "eth0",
        args: str = "", extra_env: dict[str, str] | None = None, plugin: list[str] | None = None) -> CniRun:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args,
           "CNI_PATH": CNI_PLUGINS_DIR, **(extra_env or {})}
    r = subprocess.run(plugin or cni_cmd(), input=json.dumps(conf), capture_output=True, text=True, env=env,
                       timeout=60, check=False)
    doc = json.loads(r.stdout) if r.stdout.strip() else None
    return CniRun(r.returncode, doc, r.stderr)
