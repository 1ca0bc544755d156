"""The per-network endpoint limit is refused before any kernel work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bpfnet.config import NetworkConfig
from bpfnet.datapath import BridgeDatapath
from bpfnet.endpoints import BRIDGE_MAX_PORTS, EndpointService
from bpfnet.errors import Exhausted
from bpfnet.runtime import Runtime
from bpfnet.state import Store


class _Networks:
    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg

    def config(self, name: str) -> tuple[Any, NetworkConfig]:
        return None, self.cfg


def test_full_bridge_refused_with_a_clear_error(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    cfg = NetworkConfig.from_json({"name": "big", "bridge": "br-big", "subnet4": "10.0.0.0/16"})
    store.add_network("big", cfg.to_json())
    for i in range(BRIDGE_MAX_PORTS):
        row = store.reserve_endpoint(f"e{i}", "big", f"e{i}", False, "02:42:0a:00:00:01",
                                     [(f"10.0.{i // 250}.{i % 250 + 2}", 4)], 4096, 0.0, lambda n: f"bnv{n}")
        assert row is not None
    assert store.count_endpoints("big") == BRIDGE_MAX_PORTS
    rt = Runtime(store=store, datapath=BridgeDatapath(), ipr=None, hostns="unused")
    service = EndpointService(rt, _Networks(cfg))  # type: ignore[arg-type]
    with pytest.raises(Exhausted, match=f"network big has {BRIDGE_MAX_PORTS} endpoints"):
        service.add({"name": "one-more", "network": "big"})
    assert store.endpoint("one-more") is None
    assert store.count_endpoints("big") == BRIDGE_MAX_PORTS
