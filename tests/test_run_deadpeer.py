"""Dead-peer detection with real Flower processes in a network namespace this test creates.

SuperLink, an agent SuperNode (keepalive T=2 s, t=1 s) and a stock Flower SuperNode run inside one
namespace and talk over its own loopback (TLS). nftables then silently drops every packet to and
from the Fleet port: the agent SuperNode must report the connection lost within T + t + a small
margin; stock Flower must not have noticed after five times that long.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flower_ctx.commands.run import flower_argv
from tests.conftest import requires_netns, requires_nft
from tests.flower_envs import flower_python, requires_flower_139
from tests.runtime_helpers import Proc, kill_tree, make_pki, stage_runtime_config

pytestmark = [requires_flower_139, requires_netns, requires_nft, pytest.mark.flower, pytest.mark.netns,
              pytest.mark.root, pytest.mark.slow]

PREFIX = "fcka"
T, TIMEOUT = 2, 1
MARGIN = 2.0
LOST = "Connection attempt failed"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _remove_netns(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            kill_tree(int(pid))
    _ip("netns", "del", name, check=False)


def _sweep_leftovers() -> None:
    """Namespaces of crashed earlier runs (their PID is gone) are removed, never a live run's."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        suffix = name[len(PREFIX):]
        if name.startswith(PREFIX) and suffix.isdigit() and not Path(f"/proc/{suffix}").exists():
            _remove_netns(name)


@pytest.fixture
def netns() -> Iterator[str]:
    _sweep_leftovers()
    name = f"{PREFIX}{os.getpid()}"
    _remove_netns(name)  # a leftover of this very PID (reused) would be ours
    _ip("netns", "add", name)
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], check=True, text=True, input=(
            "table inet fcka {\n chain in { type filter hook input priority 0; policy accept; }\n}\n"))
        yield name
    finally:
        _remove_netns(name)


def _in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def test_blackholed_superlink_is_detected_within_keepalive_bounds(tmp_path: Path, netns: str) -> None:
    pki = make_pki(tmp_path / "pki")
    stage_runtime_config(tmp_path / "L", "superlink", pki, fleet_api_address="127.0.0.1:9092")
    stage_runtime_config(tmp_path / "N", "supernode", pki, superlink_address="127.0.0.1:9092",
                         keepalive={"time_s": T, "timeout_s": TIMEOUT})
    stock_doc = stage_runtime_config(tmp_path / "S", "supernode", pki, superlink_address="127.0.0.1:9092",
                                     http_api={"port": 9095})
    py = flower_python("1.39") or sys.executable  # the gRPC era: Flower 1.39
    venv_bin = str(Path(py).parent)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    cli = [py, "-m", "flower_ctx.cli", "run"]
    procs = [
        Proc(_in_ns(netns, [*cli, "superlink", "--root", str(tmp_path / "L")]), env=env),
        Proc(_in_ns(netns, [*cli, "supernode", "--root", str(tmp_path / "N")]), env=env),
        Proc(_in_ns(netns, [f"{venv_bin}/flower-supernode", *flower_argv(stock_doc, "1.39.0")[1:]]), env=env),
    ]
    link, agent, stock = procs
    try:
        link.start().wait_for("Starting Fleet API", 60)
        agent.start()
        stock.start()
        agent.wait_for("SuperNode ID", 60)
        stock.wait_for("SuperNode ID", 60)
        time.sleep(3)  # steady state: both polling
        for rule in ("tcp dport 9092 drop", "tcp sport 9092 drop"):
            subprocess.run(["ip", "netns", "exec", netns, "nft", "add", "rule", "inet", "fcka", "in",
                            *rule.split()], check=True)
        dropped = time.monotonic()

        detected = agent.wait_for(LOST, T + TIMEOUT + MARGIN + 5, after=dropped) - dropped
        observe = 5 * (T + TIMEOUT)
        time.sleep(max(0.0, dropped + observe - time.monotonic()))
        stock_detected = stock.first(LOST, after=dropped)
        print(f"\nblackhole at t=0: agent SuperNode (keepalive {T}s/{TIMEOUT}s) reported the connection lost "
              f"after {detected:.2f}s; stock SuperNode: "
              + (f"after {stock_detected - dropped:.2f}s" if stock_detected else f"nothing after {observe:.0f}s"))
        assert detected <= T + TIMEOUT + MARGIN, f"agent SuperNode took {detected:.2f}s"
        assert stock_detected is None, "stock Flower noticed the dead link: the comparison proves nothing"
    finally:
        for p in reversed(procs):
            p.kill()
