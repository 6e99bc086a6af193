"""The three-zone lab's variant "gateway" (issue 16): zone B is a training-site-gateway service, one
site gateway VM (the zone's only WireGuard tunnel, forwarding) and three SuperNodes behind it without
WireGuard, created by OneFlow once the gateway is READY; zones A and C as in tests/test_lab.py. A run
trains across the three zones; the drills grow zone B by a SuperNode without touching zone A, reboot the
gateway mid-run, and compare a model update's throughput through the gateway with the public path.

About 5 minutes: beyond CI's budget next to the default lab, so it runs with FLOWER_CTX_FULL_SUITE=1
(the complete job) or by hand: `python -m tests.lab.three_zone --variant gateway all`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flower_envs import FULL_SUITE
from tests.lab.three_zone import GATEWAY_VARIANT_DRILLS, HUB_WG, Lab, down, lab_session, report
from tests.test_lab import _gone, _lab_netns, lab_test

pytestmark = pytest.mark.skipif(not FULL_SUITE, reason="beyond CI's time budget: FLOWER_CTX_FULL_SUITE=1 runs it")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_session("gateway") as lab:
        lab.up()
        yield lab


@lab_test
def test_zone_b_behind_one_gateway_trains_across_three_zones(lab: Lab) -> None:
    gw = [m for m in lab.machines("B") if m["role"] == "gateway"]
    nodes = lab.supernodes()
    assert len(gw) == 1 and sorted(m["zone"] for m in nodes) == ["A", "A", "B", "B", "B", "C", "C"]
    gw_ip = lab.info["slots"][gw[0]["slot"]]["ip"]
    for m in [*gw, *nodes]:
        ut = lab.user_template(m["slot"])
        assert ut["READY"] == "YES" and ut["FL_READY"] == "YES", (m["slot"], ut)
    for m in (m for m in nodes if m["zone"] == "B"):
        vm = lab.vm(m["slot"])
        assert vm.run(["ip", "link", "show", "wg0"], check=False).returncode != 0  # no tunnel of its own
        route = vm.run(["ip", "route", "get", HUB_WG]).stdout.split()
        assert route[route.index("via") + 1] == gw_ip, route  # the tunnel network through the gateway
        runtime = json.loads(vm.path("/opt/flower/config/supernode.json").read_text())
        assert runtime["superlink_address"].startswith(f"{HUB_WG}:"), runtime
    # The hub lists one peer for zone B: the gateway's tunnel address and zone B's network.
    dump = lab.link.run(["wg", "show", "wg0", "allowed-ips"]).stdout.split("\n")
    peers = [ln.split("\t")[1].split() for ln in dump if ln.strip()]
    assert peers == [["10.10.9.2/32", "198.18.2.0/24"]], peers
    result = lab.train(rounds=3)
    assert result["rounds"] == 3 and result["nodes"] == len(nodes) and result["failures"] == 0
    assert result["error"] < 0.05


@lab_test
@pytest.mark.parametrize("name", GATEWAY_VARIANT_DRILLS)
def test_gateway_drill(lab: Lab, name: str) -> None:
    from tests.lab.drills import run_drill

    figures = run_drill(lab, name)
    assert figures and all(v >= 0 for v in figures.values())


@lab_test
def test_readiness_never_lied_no_secret_leaked_and_down_leaves_nothing(lab: Lab) -> None:
    report(lab)
    audit = lab.request("audit")
    assert audit["updates"] > 30 and audit["violations"] == 0, audit
    scan = lab.request("scan", texts=lab.outputs)
    assert scan["secrets"] > 20 and not scan["found_in"], scan
    vms = [lab.vm(n) for n in lab.info["slots"]]
    pids = [vm.pid for vm in vms] + [p for vm in vms for p in vm.pids()] + [lab.state["cloud_pid"]]
    tag = lab.info["tag"]
    down()
    assert _lab_netns(tag) == []
    assert all(_gone(p) for p in pids)
    assert not Path("/run/fclab").exists()
