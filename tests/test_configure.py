"""`flower-ctx configure` end to end into a staging root: validation gate, idempotence, dry-run, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx.context import render
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "superlink.context.sh"


def configure(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx", "configure", *args], capture_output=True, text=True,
                          timeout=120)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*")) if "configure.lock" not in p.name}


def test_example_context_configures_a_superlink_and_rerun_is_unchanged(stage: Path) -> None:
    first = configure("--role", "superlink", "--context", str(EXAMPLE), "--root", str(stage))
    assert first.returncode == 0, first.stderr
    certs = stage / "opt/flower/certs"
    assert {p.name for p in certs.iterdir()} == {"ca.crt", "ca.key", "server.pem", "server.key"}
    assert (certs / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (certs / "server.key").stat().st_mode & 0o777 == 0o600
    runtime = json.loads((stage / "opt/flower/config/superlink.json").read_text())
    assert runtime["role"] == "superlink" and runtime["keepalive"] == {"time_s": 60, "timeout_s": 20}
    assert "PRIVATE KEY" not in json.dumps(runtime)
    before = snapshot(stage)
    second = configure("--role", "superlink", "--context", str(EXAMPLE), "--root", str(stage))
    assert second.returncode == 0 and "superlink: unchanged" in second.stdout
    assert snapshot(stage) == before
    dry = configure("--role", "superlink", "--context", str(EXAMPLE), "--root", str(stage), "--dry-run")
    assert dry.returncode == 0 and "unchanged" in dry.stdout


def test_dry_run_on_a_fresh_root_exits_1_and_writes_nothing(stage: Path) -> None:
    out = configure("--role", "superlink", "--context", str(EXAMPLE), "--root", str(stage), "--dry-run")
    assert out.returncode == 1, out.stderr
    assert "change(s) pending" in out.stdout
    assert list(stage.iterdir()) == []


def test_invalid_context_changes_nothing(tmp_path: Path, stage: Path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text(render({"FL_TLS_ENABLED": "YES", "FL_WG_ENABLED": "YES", "FL_GRPC_KEEPALIVE_TIMEOUT": "90"}))
    out = configure("--role", "superlink", "--context", str(ctx), "--root", str(stage))
    assert out.returncode == 2
    for name in ("FL_WG_ADDRESS", "FL_WG_PEERS", "FL_GRPC_KEEPALIVE_TIMEOUT"):
        assert f"\n{name}: " in "\n" + out.stderr
    assert list(stage.iterdir()) == []


def test_json_output(stage: Path) -> None:
    out = configure("--role", "superlink", "--context", str(EXAMPLE), "--root", str(stage), "--json")
    doc = json.loads(out.stdout)
    assert doc["changed"] is True
    assert [s["name"] for s in doc["steps"]] == [
        "identity", "flower", "app dependencies", "tls", "node key", "wireguard", "gateway routes", "firewall",
        "runtime"]
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["tls"]["facts"]["ca_fingerprint"].startswith("sha256:")


@pytest.mark.parametrize("role", ["superlink", "supernode"])
def test_help_says_what_it_does(role: str) -> None:
    out = configure("--help")
    assert out.returncode == 0 and "--root" in out.stdout and "--dry-run" in out.stdout


def test_root_under_a_shared_directory_leaves_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    out = configure("--role", "superlink", "--context", str(EXAMPLE), "--root", str(shared / "a" / "stage"))
    assert out.returncode == 0, out.stderr
    assert shared.stat().st_mode & 0o7777 == 0o1777
