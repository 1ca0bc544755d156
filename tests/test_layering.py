"""The parts of the controller import each other only downwards (README "Layout").

Face -> API + wiring -> Services -> (Store, Kernel adapters, Datapath) -> Pure. A new feature
that reaches past its layer (a service importing the CLI, an adapter importing a service, a
pure module touching the kernel) fails here, before it becomes a habit.
"""

from __future__ import annotations

import ast
from pathlib import Path

CONTROLLER = Path(__file__).resolve().parent.parent / "controller"

FACE = {"cli", "top", "demo", "demo_cluster", "client", "tables", "tls"}
WIRING = {"daemon", "api.routes", "api.server", "api"}
SERVICES = {"networks", "endpoints", "reconcile", "recovery", "ndp", "rollback", "runtime", "stats", "observer",
            "outside.service", "dns.service"}
ADAPTERS = {"kernel", "links", "netns", "outside.nft", "dns.files", "dns.supervisor", "dns.server", "sublinks", "routes"}
STORE = {"state", "daemonlock"}
PURE = {"config", "ipam", "addressing", "model", "errors", "snapshot", "schemas", "datapath.abi",
        "datapath.counters", "datapath.drop_reasons", "outside", "outside.ports", "outside.ruleset",
        "dns", "dns.rules", "dns.wire", "dns.records"}
# Runtime plugins (CNI, Docker) are clients of the services, like the CLI: never the kernel,
# the store or the datapath directly, and never the daemon's wiring.
PLUGINS = "plugins"
# Network drivers (bpfnet.drivers) are entered from the services and use the kernel adapters,
# the datapath and the cluster store: never the services above them (rollback and runtime,
# the services' plain helpers, aside), the API or the face.
DRIVERS = "drivers"
DRIVER_MAY_USE = {"rollback", "runtime"}
# The cluster store (bpfnet.cluster) is a store: etcd and pure logic, nothing above it.
CLUSTER = "cluster"
# What may never be imported from each layer.
FORBIDDEN = {
    "plugins": WIRING | ADAPTERS | STORE | {"datapath", "cli", "top", "demo", "drivers", "cluster"},
    "drivers": FACE | WIRING | (SERVICES - DRIVER_MAY_USE),
    "cluster": FACE | WIRING | SERVICES | ADAPTERS | {"datapath", "drivers"},
    "services": FACE | WIRING,
    "adapters": FACE | WIRING | SERVICES | STORE,
    "store": FACE | WIRING | SERVICES | ADAPTERS,
    "datapath": FACE | WIRING | SERVICES | ADAPTERS | STORE,
    "pure": FACE | WIRING | SERVICES | ADAPTERS | STORE,
}
# Third-party modules a pure module may use: no sockets, files or netlink among them.
PURE_THIRD_PARTY = {"pydantic", "pydantic_core"}
IO_MODULES = {"socket", "subprocess", "pyroute2", "bcc", "sqlite3", "ctypes", "aiohttp"}


def module_name(path: Path) -> str:
    rel = path.relative_to(CONTROLLER).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def layer(name: str) -> str | None:
    if name in PURE:
        return "pure"
    if name == PLUGINS or name.startswith(PLUGINS + "."):
        return "plugins"
    for label in (DRIVERS, CLUSTER):
        if name == label or name.startswith(label + "."):
            return label
    if name.startswith("datapath"):
        return "datapath"
    for label, members in (("services", SERVICES), ("adapters", ADAPTERS), ("store", STORE)):
        if name in members:
            return label
    return None


def imports(path: Path) -> set[str]:
    """Controller-relative names of the modules PATH imports (absolute ones prefixed 'ext:')."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.add("ext:" + (node.module or "").split(".")[0])
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module is None:
                out.update(".".join([*base, alias.name]) for alias in node.names)
            else:
                out.add(target)
        elif isinstance(node, ast.Import):
            out.update("ext:" + alias.name.split(".")[0] for alias in node.names)
    return out


def test_layers_import_only_downwards() -> None:
    problems = []
    for path in sorted(CONTROLLER.rglob("*.py")):
        name = module_name(path)
        mine = layer(name)
        if mine is None:
            continue
        for target in imports(path):
            if target.startswith("ext:"):
                if mine == "pure" and target[4:] in IO_MODULES:
                    problems.append(f"{name} (pure) imports {target[4:]}")
                continue
            if target in FORBIDDEN[mine] or any(target.startswith(f + ".") for f in FORBIDDEN[mine]):
                problems.append(f"{name} ({mine}) imports {target}")
    assert not problems, "\n".join(problems)


def test_the_rule_can_fail() -> None:
    """The checker sees a forbidden import when there is one."""
    assert "cli" in FORBIDDEN["services"] and layer("endpoints") == "services"
    assert "runtime" in imports(CONTROLLER / "endpoints.py")
    assert "ext:pyroute2" in imports(CONTROLLER / "links.py")
    assert layer("plugins.cni") == "plugins" and "links" in FORBIDDEN["plugins"]
    assert "client" in imports(CONTROLLER / "plugins" / "cni.py")
    assert layer("drivers.bridge") == "drivers" and "endpoints" in FORBIDDEN["drivers"]
    assert "runtime" in imports(CONTROLLER / "drivers" / "bridge.py") and "runtime" not in FORBIDDEN["drivers"]
