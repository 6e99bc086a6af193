"""Flower 1.42 serves Fleet, Control and Runtime from one application; the Control API must answer
only on the SuperLink's loopback (issue 17). Two simulated VMs in two zones (tests/rig): the
SuperLink VM runs `flower-ctx run superlink` (TLS, certificate for its eth0 address), the SuperNode
VM runs `flower-ctx run supernode` against the SuperLink's public address. From the SuperNode VM,
every route of Flower's application that is not a Fleet route (all Control routes, Runtime, the
API docs) is refused on the Fleet port and Flower's own port is unreachable; the SuperNode joins
through TLS and a federated run completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import requires_netns
from tests.flower_envs import ctx_argv, flower_env, flower_python, requires_flower_142
from tests.http_helpers import flwr_home, flwr_run, probe_routes, superlink_routes, wait_port
from tests.rig import Rig
from tests.runtime_helpers import Proc, make_pki, stage_runtime_config

pytestmark = [requires_flower_142, requires_netns, pytest.mark.flower, pytest.mark.netns, pytest.mark.root,
              pytest.mark.slow]


@pytest.fixture
def rig() -> Iterator[Rig]:
    with Rig("fcex") as r:
        yield r


def test_control_api_is_unreachable_from_a_supernode_network_and_fleet_works(tmp_path: Path, rig: Rig) -> None:
    py = flower_python("1.42")
    assert py is not None
    link_vm, node_vm = rig.add_vm("link", 1), rig.add_vm("node", 2)
    public = str(link_vm.eth0_ip)
    pki = make_pki(tmp_path / "pki", sans=("127.0.0.1", public))
    stage_runtime_config(tmp_path / "L", "superlink", pki, keepalive={"time_s": 10, "timeout_s": 5})
    stage_runtime_config(tmp_path / "N", "supernode", pki, superlink_address=f"{public}:9092",
                         keepalive={"time_s": 10, "timeout_s": 5})
    env = flower_env(py)
    procs = [Proc([*link_vm.prefix(), *ctx_argv(py, "run", "superlink", "--root", str(tmp_path / "L"))], env=env),
             Proc([*node_vm.prefix(), *ctx_argv(py, "run", "supernode", "--root", str(tmp_path / "N"))], env=env)]
    link, node = procs
    try:
        link.start().wait_for("public Fleet API on", 90)
        wait_port(public, 9092, prefix=node_vm.prefix())
        node.start().wait_for("SuperNode ID", 90)

        listening = link_vm.run(["ss", "-tlnH"]).stdout
        assert "127.0.0.1:8000" in listening and ":9092" in listening, listening

        routes = superlink_routes(py)
        others = [(m, p) for m, p, _ in routes if not p.startswith("/v1/fleet/") and p != "/health"]
        control = [(m, p) for m, p, tag in routes if p.startswith("/v1/control/")]
        assert len(control) >= 40 and set(control) <= set(others)
        on_fleet = probe_routes(node_vm.prefix(), py, public, 9092, pki.ca, others)
        answered = [(m, p, s) for m, p, s, _ in on_fleet if s != 404]
        assert answered == [], answered
        on_flower = probe_routes(node_vm.prefix(), py, public, 8000, pki.ca, control[:3])
        assert all(s is None and "ConnectionRefused" in why for _, _, s, why in on_flower), on_flower
        print(f"\nfrom the SuperNode VM: {len(on_fleet)} non-Fleet routes ({len(control)} Control) answered 404 "
              f"on {public}:9092; {public}:8000 refused the connection")

        # Fleet through TLS: the SuperNode joined above; a federated run goes through it.
        home = flwr_home(tmp_path / "flwr", "127.0.0.1:8000", pki.ca)
        flwr_run(py, home, tmp_path, rounds=1, prefix=link_vm.prefix())
    finally:
        for p in reversed(procs):
            p.kill()
