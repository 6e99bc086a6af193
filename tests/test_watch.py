"""Readiness that never lies: the watch, a failed configure, bootstrap's exit status (issue 12).

The watch runs in-process on a staging root against the OneGate double, with a scripted health
check standing in for Flower (the lab proves the same on real Flower and a real tunnel)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_ctx.context import render
from flower_ctx.health import Health
from flower_ctx.onegate import OneGateClient
from flower_ctx.paths import Paths
from flower_ctx.watch import Watch
from tests.conftest import REPO
from tests.onegate_server import OneGateServer, access_for

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


class _LockProbe:
    """A supervisor whose Flower has ended: records, at each keep_running, whether the machine lock
    was held (another open of the lock file cannot take it)."""

    manager = "builtin"

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.held: list[bool] = []

    def state(self, role: str):  # noqa: ANN201 - the supervisor's ServiceState shape
        from flower_ctx.supervisor import ServiceState

        return ServiceState(False, None, "not running", self.manager)

    def keep_running(self, role: str) -> str | None:
        import fcntl

        from flower_ctx.files import open_lock

        fd = open_lock(self.paths.agent_dir / "configure.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held.append(False)
        except BlockingIOError:
            self.held.append(True)
        finally:
            os.close(fd)
        return "started"


def test_watch_restarts_an_ended_flower_only_under_the_machine_lock(
        gate: OneGateServer, tmp_path: Path, stage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in supervisor's double start (found by the lab): bootstrap starting Flower while the
    watch restarted an ended one gave two copies, the pid file naming the one that lost the port.
    The watch's restart now takes the machine lock; while bootstrap or configure holds it, the watch
    leaves Flower alone and says nothing false to OneGate."""
    import flower_ctx.supervisor as supervisor_mod
    from flower_ctx.lock import machine_lock

    vm = gate.add_vm("superlink_0")
    ctx = _context(tmp_path, gate, vm)
    _configure(ctx, stage)
    probe = _LockProbe(Paths(stage))
    monkeypatch.setattr(supervisor_mod, "for_machine", lambda paths: probe)
    health, said = Scripted(), []
    w = _watch(ctx, stage, health, said)
    w.tick()
    assert probe.held == [True] and any("it had ended" in s for s in said)
    assert gate.user_template(vm)["FL_READY"] == "YES"

    w._restarted = float("-inf")  # as if RESTART_S had passed
    with machine_lock(Paths(stage)):  # bootstrap is (re)starting Flower right now
        w.tick()
    assert probe.held == [True], "the watch restarted Flower while bootstrap held the lock"
    assert gate.user_template(vm)["FL_READY"] == "YES"  # a busy lock is not an outage


def test_bootstrap_says_not_ready_early_instead_of_leaving_the_last_boots_ready(
        gate: OneGateServer, tmp_path: Path, stage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebooted VM whose SuperLink is down: bootstrap waits up to 90 s for it, and the READY=YES of
    the previous boot must not stand all that time. Still not ready INTERIM_S into the wait, the
    wait's health is published at once (READY withdrawn), once; the wait goes on."""
    from flower_ctx.boot import publish
    from flower_ctx.commands import bootstrap as bs
    from flower_ctx.config import load_config

    vm = gate.add_vm("superlink_0", user_template={"READY": "YES", "FL_READY": "YES"})
    ctx = _context(tmp_path, gate, vm)
    _configure(ctx, stage)
    down = Health(False, "Fleet API 192.0.2.10:9092 unreachable: Connection refused")
    checks: list[float] = []
    monkeypatch.setattr(bs, "check", lambda *a, **k: checks.append(time.monotonic()) or down)
    monkeypatch.setattr(bs, "INTERIM_S", 0.3)
    config = load_config("superlink", {"ETH0_IP": "192.0.2.10"})
    paths = Paths(stage)
    client = OneGateClient(access_for(gate, vm), timeout=2, retries=0)
    seen: list[tuple[float, dict[str, str]]] = []

    def interim(h: Health) -> None:
        publish(config, paths, client, h)
        seen.append((time.monotonic(), dict(gate.user_template(vm))))

    t0 = time.monotonic()
    health = bs._wait_health(config, paths, None, 1.5, interim=interim)
    assert not health.ok and time.monotonic() - t0 >= 1.5  # the wait went on after the interim report
    assert len(seen) == 1 and 0.3 <= seen[0][0] - t0 < 1.0, seen
    ut = seen[0][1]
    assert "READY" not in ut and ut["FL_READY"] == "NO" and "unreachable" in ut["FL_ERROR"]
    assert checks[-1] - seen[0][0] > 0.2  # still checking after it
