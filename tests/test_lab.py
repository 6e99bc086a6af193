"""The three-zone federation lab (tests/lab/three_zone.py) as tests: up, a real `flwr run` across the
zones, every failure drill, down; and the operator guide's walkthrough checked against the commands
the lab runs."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import REPO, requires_flower, requires_netns, requires_nft, requires_wireguard_go
from tests.lab.three_zone import DRILLS, NODES, WALKTHROUGH, Lab, lab_session

F = TypeVar("F", bound=Callable[..., Any])
GUIDE = REPO / "docs" / "multi-site-federation.md"
lab_marks = [requires_netns, requires_wireguard_go, requires_nft, requires_flower, pytest.mark.root,
             pytest.mark.netns, pytest.mark.wireguard, pytest.mark.flower, pytest.mark.slow]


def guide_commands() -> list[str]:
    """Commands of the guide's walkthrough: the lines of its ```sh lab fenced blocks."""
    text = GUIDE.read_text()
    blocks = re.findall(r"^```sh lab\n(.*?)^```", text, re.M | re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_guide_walkthrough_is_the_lab_walkthrough() -> None:
    cmds = guide_commands()
    assert cmds, "no ```sh lab blocks in the guide"
    assert set(cmds) == set(WALKTHROUGH), (sorted(set(cmds) - set(WALKTHROUGH)), sorted(set(WALKTHROUGH) - set(cmds)))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_session() as lab:
        lab.up()
        yield lab


def _lab_netns(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"{tag}-")]


def lab_test(fn: F) -> F:
    """Root, namespaces, wireguard-go, nftables and Flower: skipped with the reason when missing."""
    for mark in reversed(lab_marks):
        fn = mark(fn)
    return fn


@lab_test
def test_up_and_train_across_three_zones(lab: Lab) -> None:
    assert len(_lab_netns(lab.rig.tag)) == 7  # router + SuperLink + 4 SuperNodes + spare
    for name in NODES:
        assert lab.onegate(name)["READY"] == "YES"
        assert lab.onegate(name)["FL_SUPERLINK"].endswith(":9092")
    # Each zone's OneGate answers its own zone only.
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 5030), timeout=2); print('open')"
    own = lab.vm("b1").python(probe, "198.18.2.1", check=False)
    other = lab.vm("b1").python(probe, "198.18.1.1", check=False)
    assert own.stdout.strip() == "open" and other.returncode != 0
    result = lab.train(rounds=3)
    assert result["rounds"] == 3 and result["nodes"] == len(NODES) and result["failures"] == 0
    assert result["error"] < 0.05  # FedAvg over four partitions converged toward the true model


@lab_test
@pytest.mark.parametrize("name", DRILLS)
def test_drill(lab: Lab, name: str) -> None:
    from tests.lab.drills import run_drill

    figures = run_drill(lab, name)
    assert figures and all(v >= 0 for v in figures.values())


def _gone(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie (killed; this machine's PID 1 does not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@lab_test
def test_walkthrough_commands_ran_and_down_leaves_nothing(lab: Lab) -> None:
    missing = [c for c in WALKTHROUGH if c not in lab.ran]
    assert not missing, missing
    holders = [vm.pid for vm in lab.rig.vms.values()]
    flower = [p for vm in lab.rig.vms.values() for p in vm.pids()]
    assert flower, "the lab should be running Flower processes"
    vm_names = list(lab.rig.vms)
    lab.rig.close()
    assert _lab_netns(lab.rig.tag) == []
    for pid in holders + flower:
        assert _gone(pid), f"process {pid} survived"
    # The VMs' mount namespaces died with their last process; nothing was ever created on the host's
    # own interfaces (the router-side veths and zone bridges lived in the router namespace).
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    ours = {f"r{n}" for n in vm_names} | {"bz1", "bz2", "bz3"}
    assert not [ln for ln in host_links.splitlines() if ln.split(": ")[1].split("@")[0] in ours]

