"""Dead-link detection on the HTTP Fleet API (Flower 1.42) with real processes in a network
namespace this test creates, as tests/test_run_deadpeer.py does for 1.39's gRPC.

SuperLink, an agent SuperNode (keepalive T=4 s, t=2 s) and a stock Flower 1.42 SuperNode talk over
the namespace's loopback with TLS, the SuperNodes through flower-ctx's public Fleet listener.
nftables then silently drops every packet to and from the Fleet port. The agent SuperNode must
report the connection lost within T + t + a small margin (its next 3-s poll meets TCP_USER_TIMEOUT
= t); stock Flower only notices when its 30-s read timeout ends. On the SuperLink side the agent's
connections are gone within the same bound and the node is marked offline 2H after its last
heartbeat (H = 10 s, Flower's minimum), where stock Flower's node stays online for 2 x 30 s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flower_ctx.commands.run import flower_argv
from tests.conftest import requires_netns, requires_nft
from tests.flower_envs import bin_dir, ctx_argv, flower_env, flower_python, requires_flower_142
from tests.http_helpers import wait_port
from tests.runtime_helpers import Proc, kill_tree, make_pki, stage_runtime_config

pytestmark = [requires_flower_142, requires_netns, requires_nft, pytest.mark.flower, pytest.mark.netns,
              pytest.mark.root, pytest.mark.slow]

PREFIX = "fchd"
T, TIMEOUT = 4, 2
MARGIN = 2.0
LOST = "Connection attempt failed"
CONTROL = 8000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _remove_netns(name: str) -> None:
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            kill_tree(int(pid))
    _ip("netns", "del", name, check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = name[len(PREFIX):]
        if name.startswith(PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove_netns(name)
    name = f"{PREFIX}{os.getpid()}"
    _remove_netns(name)
    _ip("netns", "add", name)
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], check=True, text=True, input=(
            "table inet fchd {\n chain in { type filter hook input priority 0; policy accept; }\n}\n"))
        yield name
    finally:
        _remove_netns(name)


def _node_statuses(ns: str, py: str, ca: Path) -> dict[str, str]:
    """name -> status of every SuperNode, from the Control API on the SuperLink's loopback."""
    code = ("import sys; from flower_ctx.admission.control import ControlClient\n"
            f"c = ControlClient('127.0.0.1', {CONTROL}, open(sys.argv[1], 'rb').read())\n"
            "print(' '.join(f'{n.node_id}={n.status}' for n in c.list_nodes()))")
    out = subprocess.run(["ip", "netns", "exec", ns, py, "-c", code, str(ca)], capture_output=True, text=True,
                         timeout=30, cwd=str(Path(__file__).resolve().parent.parent))
    return dict(x.split("=") for x in out.stdout.split())


def _established(ns: str, port: int) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len([x for x in out.splitlines() if x.strip()])


def test_silently_dropped_fleet_link_is_noticed_within_keepalive_bounds(tmp_path: Path, netns: str) -> None:
    py = flower_python("1.42")
    assert py is not None
    pki = make_pki(tmp_path / "pki")
    stage_runtime_config(tmp_path / "L", "superlink", pki, keepalive={"time_s": T, "timeout_s": TIMEOUT},
                         fleet_api_address="127.0.0.1:9092")
    stage_runtime_config(tmp_path / "N", "supernode", pki, superlink_address="127.0.0.1:9092",
                         keepalive={"time_s": T, "timeout_s": TIMEOUT})
    stock_doc = stage_runtime_config(tmp_path / "S", "supernode", pki, superlink_address="127.0.0.1:9092",
                                     http_api={"port": 9095})
    env = flower_env(py)
    ns = ["ip", "netns", "exec", netns]
    link = Proc([*ns, *ctx_argv(py, "run", "superlink", "--root", str(tmp_path / "L"))], env=env)
    agent = Proc([*ns, *ctx_argv(py, "run", "supernode", "--root", str(tmp_path / "N"))], env=env)
    stock = Proc([*ns, str(bin_dir(py) / "flower-supernode"), *flower_argv(stock_doc, "1.42.0")[1:]], env=env)
    procs = [link, agent, stock]
    try:
        link.start().wait_for("public Fleet API on", 90)
        wait_port("127.0.0.1", 9092, prefix=ns)
        agent.start()
        stock.start()
        agent.wait_for("SuperNode ID", 90)
        stock.wait_for("SuperNode ID", 90)
        ids = {"agent": agent.text().split("SuperNode ID: ")[1].split()[0],
               "stock": stock.text().split("SuperNode ID: ")[1].split()[0]}
        time.sleep(4)  # steady state: both polling, heartbeats sent
        assert set(_node_statuses(netns, py, pki.ca).values()) == {"online"}
        for rule in ("tcp dport 9092 drop", "tcp sport 9092 drop"):
            subprocess.run([*ns, "nft", "add", "rule", "inet", "fchd", "in", *rule.split()], check=True)
        dropped = time.monotonic()

        detected = agent.wait_for(LOST, T + TIMEOUT + MARGIN + 10, after=dropped) - dropped
        server_gone = None
        offline: dict[str, float] = {}
        while time.monotonic() < dropped + 26:
            now = time.monotonic() - dropped
            if server_gone is None and _established(netns, 9092) == 0:
                server_gone = now
            for who, status in ((w, _node_statuses(netns, py, pki.ca).get(i)) for w, i in ids.items()):
                if status == "offline" and who not in offline:
                    offline[who] = now
            time.sleep(0.5)
        stock_detected = stock.first(LOST, after=dropped)
        gone = f"{server_gone:.1f}s" if server_gone is not None else "never"
        print(f"\nFleet port blackholed at t=0 (HTTP, Flower 1.42): agent SuperNode (keepalive {T}s/{TIMEOUT}s) "
              f"noticed after {detected:.1f}s; stock SuperNode: "
              + (f"after {stock_detected - dropped:.1f}s" if stock_detected else "nothing after 26s")
              + f"; SuperLink's Fleet connections gone after {gone}; offline after "
              + (", ".join(f"{k} {v:.1f}s" for k, v in offline.items()) or "-"))
        assert detected <= T + TIMEOUT + MARGIN, f"agent SuperNode took {detected:.2f}s"
        assert stock_detected is None, "stock Flower noticed the dead link: the comparison proves nothing"
        assert server_gone is not None and server_gone <= 5 + TIMEOUT + MARGIN, server_gone  # uvicorn's 5-s idle close
        assert "agent" in offline and offline["agent"] <= 2 * 10 + MARGIN, offline  # 2H after the last heartbeat
        assert "stock" not in offline, "stock Flower's node went offline as fast: the comparison proves nothing"
    finally:
        for p in reversed(procs):
            p.kill()
