"""Readiness that never lies: the watch, a failed configure, bootstrap's exit status (issue 12).

The watch runs in-process on a staging root against the OneGate double, with a scripted health
check standing in for Flower (the lab proves the same on real Flower and a real tunnel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx.context import render
from flower_ctx.health import Health
from flower_ctx.onegate import OneGateClient
from flower_ctx.paths import Paths
from flower_ctx.watch import Watch
from tests.conftest import REPO
from tests.onegate_server import OneGateServer

pytestmark = pytest.mark.usefixtures("no_token_in_output")


@pytest.fixture
def gate() -> OneGateServer:
    with OneGateServer() as g:
        yield g


def _context(tmp: Path, gate: OneGateServer, vm, **extra: str) -> Path:
    values = {"ETH0_IP": "192.0.2.10", "TOKEN": "YES", "REPORT_READY": "YES", "ONEGATE_ENDPOINT": gate.url,
              "VMID": str(vm.id), **extra}
    ctx = tmp / "context.sh"
    ctx.write_text(render(values))
    (tmp / "token.txt").write_text(vm.token)
    return ctx


def _configure(ctx: Path, root: Path, role: str = "superlink") -> None:
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", role, "--context", str(ctx),
                          "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


class Scripted:
    """A health check that answers what the test says, counting calls."""

    def __init__(self) -> None:
        self.health = Health(True, "Fleet API answers")
        self.calls = 0

    def __call__(self, *args: object, **kw: object) -> Health:
        self.calls += 1
        return self.health


def _watch(ctx: Path, root: Path, health: Scripted, said: list[str]) -> Watch:
    return Watch("superlink", Paths(root), ctx, interval=0.01, say=said.append,
                 client_factory=lambda access: OneGateClient(access, timeout=2, retries=0),
                 health_check=health)


def test_watch_follows_an_outage_and_withdraws_a_foreign_ready(gate: OneGateServer, tmp_path: Path,
                                                               stage: Path) -> None:
    vm = gate.add_vm("superlink_0")
    ctx = _context(tmp_path, gate, vm)
    _configure(ctx, stage)
    health, said = Scripted(), []
    w = _watch(ctx, stage, health, said)
    w.tick()
    ut = gate.user_template(vm)
    assert ut["READY"] == "YES" and ut["FL_READY"] == "YES" and ut["FL_ROLE"] == "superlink"
    puts = len(gate.recorded(vm, "PUT"))
    w.tick()  # nothing changed, no resync due: no request at all
    assert len(gate.recorded(vm, "PUT")) == puts

    health.health = Health(False, "Fleet API 192.0.2.10:9092 unreachable: Connection refused")
    w.tick()
    ut = gate.user_template(vm)
    assert "READY" not in ut and ut["FL_READY"] == "NO" and "unreachable" in ut["FL_ERROR"]
    # Never READY=YES next to FL_READY=NO: the READY delete came before the FL_READY=NO update.
    deletes = [r for r in gate.recorded(vm, "PUT") if r.type == "2"]
    updates = [r for r in gate.recorded(vm, "PUT") if r.type == "1" and r.attrs.get("FL_READY") == "NO"]
    assert deletes and updates and deletes[-1].seq < updates[-1].seq

    # Something else (one-apps' net-99, another VM of the service) sets READY=YES: the resync removes it.
    gate.vms[vm.id].user_template["READY"] = "YES"
    w._synced = float("-inf")  # as if RESYNC_S had passed
    w.tick()
    assert "READY" not in gate.user_template(vm)

    health.health = Health(True, "Fleet API answers")
    w.tick()
    assert gate.user_template(vm)["READY"] == "YES"
    assert any(s.startswith("not ready: Fleet API") for s in said) and said[-2] == "ready: Fleet API answers"


def test_watch_reports_a_bad_context_by_variable_names(gate: OneGateServer, tmp_path: Path, stage: Path) -> None:
    vm = gate.add_vm("superlink_0", user_template={"READY": "YES", "FL_READY": "YES"})
    ctx = _context(tmp_path, gate, vm)
    _configure(ctx, stage)
    secret_ish = "x" * 3 + "Zq8Lw3Nv9Kp2"
    ctx.write_text(ctx.read_text() + f"FL_GRPC_KEEPALIVE_TIME='{secret_ish}'\nFL_WG_ENABLED='maybe'\n")
    health, said = Scripted(), []
    _watch(ctx, stage, health, said).tick()
    ut = gate.user_template(vm)
    assert "READY" not in ut and ut["FL_READY"] == "NO"
    assert ut["FL_ERROR"].startswith("CONTEXT invalid: FL_GRPC_KEEPALIVE_TIME FL_WG_ENABLED (")
    assert secret_ish not in ut["FL_ERROR"] and health.calls == 0  # values are never published


def test_configure_failure_publishes_not_ready_and_withdraws_ready(gate: OneGateServer, tmp_path: Path) -> None:
    vm = gate.add_vm("superlink_0", user_template={"READY": "YES", "FL_READY": "YES", "FL_ENDPOINT": "x:1",
                                                  "FL_GRPC_KEEPALIVE_TIME": "60"})
    ctx = _context(tmp_path, gate, vm, FL_WG_ADDRESS="10.10.9.1", FL_WG_ENABLED="YES")
    # Not --root: only a real configure reports to OneGate; bad input changes nothing on the machine,
    # so this run stops at validation before touching any file.
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "superlink", "--context",
                          str(ctx)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    ut = gate.user_template(vm)
    assert "READY" not in ut and ut["FL_READY"] == "NO"
    assert ut["FL_ERROR"].startswith("CONTEXT invalid: FL_WG_ADDRESS")
    # Only readiness is touched: discovery attributes and OneFlow's copies of inputs stay.
    assert ut["FL_ENDPOINT"] == "x:1" and ut["FL_GRPC_KEEPALIVE_TIME"] == "60"
    assert "FL_READY=NO published" in out.stderr
