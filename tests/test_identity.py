"""Per-VM values inside one OneFlow role: the tunnel address from a pool and the default partition id,
both from the VM's number in its role (issue 12)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx import identity
from flower_ctx.config import load_config
from flower_ctx.context import render
from flower_ctx.errors import ApplyError, ValidationError
from flower_ctx.onegate import OneGateClient
from flower_ctx.paths import Paths
from tests.conftest import REPO
from tests.onegate_server import OneGateServer

pytestmark = pytest.mark.usefixtures("no_token_in_output")
HUB = "yNr3m6SL0pNqY0bRN0n6H0Hjh8m0wY9bZQ0hQ2m3W1E="


@pytest.fixture
def gate() -> OneGateServer:
    with OneGateServer() as g:
        yield g


def _values(gate: OneGateServer, vm, **extra: str) -> dict[str, str]:
    return {"ETH0_IP": "192.0.2.20", "TOKEN": "YES", "ONEGATE_ENDPOINT": gate.url, "VMID": str(vm.id),
            "FL_TLS_ENABLED": "NO", "FL_SUPERLINK_ADDRESS": "10.10.9.1:9092", "FL_WG_ENABLED": "YES",
            "FL_WG_ADDRESS": "10.10.9.64/26", "FL_WG_PEER_PUBLIC_KEY": HUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.9.1/32",
            **extra}


@pytest.mark.parametrize(("name", "number"), [("supernode_0_(service_12)", 0), ("supernode_17_(service_3)", 17),
                                              ("gw_role_2_(service_9)", 2), ("supernode_x_(service_1)", None),
                                              ("my-vm", None), ("supernode_0_(service_12) ", None)])
def test_number_from_the_name_oneflow_gives(name: str, number: int | None) -> None:
    assert identity.vm_number_from_name(name) == number


def test_pool_hosts_skip_the_hub_and_stop_before_broadcast() -> None:
    pool = ipaddress.ip_network("10.10.9.64/29")
    assert [str(identity.pool_address(pool, n)) for n in range(5)] == [
        "10.10.9.66/29", "10.10.9.67/29", "10.10.9.68/29", "10.10.9.69/29", "10.10.9.70/29"]
    with pytest.raises(ApplyError, match="does not fit the pool"):
        identity.pool_address(pool, 5)  # .71 is the broadcast address
    assert str(identity.pool_address(ipaddress.ip_network("fd00:9::/120"), 0)) == "fd00:9::2/120"


def test_two_vms_of_one_role_get_different_stable_addresses(gate: OneGateServer, tmp_path: Path) -> None:
    got = {}
    for n in (0, 1):
        vm = gate.add_vm(f"supernode_{n}_(service_12)")
        root = Paths(tmp_path / f"vm{n}")
        cfg = load_config("supernode", _values(gate, vm), token=vm.token)
        assert cfg.wg is not None and cfg.wg.unresolved
        resolved, number = identity.apply(cfg, root, client=OneGateClient(cfg.onegate))
        assert number == n and resolved.wg is not None and not resolved.wg.unresolved
        got[n] = resolved
        # The number is kept: a rename (or OneGate down) later changes nothing.
        gate.vms[vm.id].name = "renamed"
        gate.go_down()
        again, _ = identity.apply(cfg, root, client=OneGateClient(cfg.onegate, retries=0))
        gate.go_up()
        assert again.wg == resolved.wg
    assert str(got[0].wg.address) == "10.10.9.66/26" and str(got[1].wg.address) == "10.10.9.67/26"
    # The default partition id comes from the same number; an explicit one is kept.
    assert ("partition-id", "1") in got[1].node_config
    vm = gate.add_vm("supernode_5_(service_12)")
    cfg = load_config("supernode", _values(gate, vm, FL_NODE_CONFIG="partition-id=9"), token=vm.token)
    resolved, _ = identity.apply(cfg, Paths(tmp_path / "vm5"), client=OneGateClient(cfg.onegate))
    assert resolved.node_config == (("partition-id", "9"),)


def test_a_pool_needs_a_oneflow_name(gate: OneGateServer, tmp_path: Path) -> None:
    vm = gate.add_vm("hand-made-vm")
    cfg = load_config("supernode", _values(gate, vm), token=vm.token)
    with pytest.raises(ApplyError, match="is a pool") as info:
        identity.apply(cfg, Paths(tmp_path / "r"), client=OneGateClient(cfg.onegate))
    assert "10.10.9.66/26" in str(info.value)  # the fix names an address to give instead


def test_a_host_address_is_not_a_pool_and_the_superlink_cannot_have_one(gate: OneGateServer) -> None:
    vm = gate.add_vm("supernode_0_(service_1)")
    for host in ("10.10.9.65/26", "10.10.9.0/31", "10.10.9.0/32"):
        cfg = load_config("supernode", _values(gate, vm, FL_WG_ADDRESS=host), token=vm.token)
        assert cfg.wg is not None and cfg.wg.pool is None
    with pytest.raises(ValidationError, match="FL_WG_ADDRESS: 10.10.9.0/24 is a network"):
        load_config("superlink", {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.10.9.0/24",
                                  "FL_WG_PEER_PUBLIC_KEY": HUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.9.64/26"})


def test_configure_writes_the_derived_address_everywhere(gate: OneGateServer, tmp_path: Path) -> None:
    vm = gate.add_vm("supernode_3_(service_12)")
    ctx = tmp_path / "context.sh"
    ctx.write_text(render(_values(gate, vm)))
    (tmp_path / "token.txt").write_text(vm.token)
    root = tmp_path / "root"
    # --root asks no OneGate: the number must already be known there.
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "supernode", "--context",
                          str(ctx), "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "FL_WG_ADDRESS 10.10.9.64/26 is a pool" in out.stderr
    cfg = load_config("supernode", _values(gate, vm), token=vm.token)
    # What the first configure on the VM does: ask OneGate once, keep the answer.
    identity.apply(cfg, Paths(root.resolve()), client=OneGateClient(cfg.onegate))
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "supernode", "--context",
                          str(ctx), "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "vm number: 3" in out.stdout and "10.10.9.69/26" in out.stdout
    assert "Address = 10.10.9.69/26" in (root / "etc/wireguard/wg0.conf").read_text()
    import json

    doc = json.loads((root / "opt/flower/config/supernode.json").read_text())
    assert doc["wg_address"] == "10.10.9.69/26" and doc["node_config"] == "partition-id=3"
