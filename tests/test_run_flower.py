"""Real Flower 1.39 SuperLink and SuperNodes started through ``flower-ctx run`` (subprocesses, TLS
with the test's own PKI, free loopback ports), observed on the wire.

The relay terminates TLS on both sides (it presents a certificate of the test CA and verifies the
SuperLink with it), so the product's TLS configuration runs unchanged and the HTTP/2 frames stay
readable: request paths, grpc-status trailers, PING/ACK and GOAWAY.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from flower_ctx.commands.run import flower_argv
from tests.flower_envs import bin_dir, ctx_argv, flower_python, requires_flower_139
from tests.runtime_helpers import (
    FrameRelay,
    Proc,
    free_port,
    goaways,
    is_acked,
    keepalive_pings,
    make_pki,
    relay_tls_contexts,
    stage_runtime_config,
)

pytestmark = [requires_flower_139, pytest.mark.flower, pytest.mark.slow]
PY = flower_python("1.39") or sys.executable  # the gRPC era: Flower 1.39

T, TIMEOUT = 2, 1  # small values through the runtime config (the CONTEXT validator keeps its 10 s floor)
WINDOW = 14.0


def _paths(events, direction: str = "c2s") -> list[str]:
    return [e.header(":path") or "" for e in events if e.kind == "HEADERS" and e.direction == direction]


def test_superlink_and_supernodes_register_and_keepalive_on_the_wire(tmp_path: Path, procs: list[Proc]) -> None:
    pki = make_pki(tmp_path / "pki")
    fleet = free_port()
    stage_runtime_config(tmp_path / "L", "superlink", pki,
                         fleet_api_address=f"127.0.0.1:{fleet}", http_api={"port": free_port()})
    tls = relay_tls_contexts(pki)
    with FrameRelay(("127.0.0.1", fleet), tls=tls) as agent_relay, \
            FrameRelay(("127.0.0.1", fleet), tls=tls) as stock_relay:
        stage_runtime_config(
            tmp_path / "N", "supernode", pki, superlink_address=f"127.0.0.1:{agent_relay.port}",
            http_api={"port": free_port()}, keepalive={"time_s": T, "timeout_s": TIMEOUT})
        stock_doc = stage_runtime_config(
            tmp_path / "S", "supernode", pki, superlink_address=f"127.0.0.1:{stock_relay.port}",
            http_api={"port": free_port()})

        link = Proc(ctx_argv(PY, "run", "superlink", "--root", str(tmp_path / "L"))).start()
        procs.append(link)
        link.wait_for("Starting Fleet API", 60)
        agent = Proc(ctx_argv(PY, "run", "supernode", "--root", str(tmp_path / "N"))).start()
        procs.append(agent)
        # The same Flower, same argv, but Flower's own console script: no agent options.
        stock_argv = [str(bin_dir(PY) / "flower-supernode"), *flower_argv(stock_doc, "1.39.0")[1:]]
        stock_env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                     "PATH": f"{bin_dir(PY)}{os.pathsep}{os.environ.get('PATH', '')}"}
        stock = Proc(stock_argv, env=stock_env).start()
        procs.append(stock)
        agent.wait_for("SuperNode ID", 60)
        stock.wait_for("SuperNode ID", 60)
        start = time.monotonic()
        time.sleep(WINDOW)
        end = time.monotonic()
        agent_events, stock_events = agent_relay.snapshot(), stock_relay.snapshot()
        assert agent.popen.poll() is None and stock.popen.poll() is None and link.popen.poll() is None

    # Registered and activated, then polling the whole window on one TLS connection, every call OK.
    for events, relay in ((agent_events, agent_relay), (stock_events, stock_relay)):
        paths = _paths(events)
        assert "/flwr.proto.Fleet/RegisterNode" in paths and "/flwr.proto.Fleet/ActivateNode" in paths
        polls = [e.t for e in events if e.kind == "HEADERS" and e.header(":path") == "/flwr.proto.Fleet/PullMessages"]
        assert len([t for t in polls if t >= start]) >= 3 and max(polls) > end - 5, "SuperNode stopped polling"
        statuses = [e.header("grpc-status") for e in events if e.kind == "HEADERS" and e.header("grpc-status")]
        assert statuses and set(statuses) == {"0"}, statuses
        assert relay.connections == 1
        assert goaways(events) == []
    assert link.text().count("Activated node_id") == 2

    # The agent's channel: the patch reported it, and keepalive PINGs leave T s after the last frame
    # from the SuperLink, each acknowledged within t.
    assert f"target=127.0.0.1:{agent_relay.port} secure=yes: keepalive_time_ms={T * 1000}" in agent.text()
    pings = [(p, gap) for p, gap in keepalive_pings(agent_events, min_idle=0.75 * T) if p.t >= start]
    gaps = [round(gap, 2) for _, gap in pings]
    print(f"agent keepalive pings in {WINDOW:.0f}s: {len(pings)}, idle gap before each: {gaps}")
    assert len(pings) >= 3
    assert all(T - 0.2 <= gap <= T + 0.6 for gap in gaps), gaps
    assert all(is_acked(p, agent_events, within=TIMEOUT) for p, _ in pings)

    # Stock Flower: its PINGs are BDP probes right after DATA, never after an idle gap.
    stock_pings = [e for e in stock_events if e.kind == "PING" and not e.ack and e.direction == "c2s"]
    stock_keepalive = keepalive_pings(stock_events, min_idle=0.75 * T)
    print(f"stock client PINGs: {len(stock_pings)}, of them keepalive: {len(stock_keepalive)}")
    assert stock_keepalive == []
