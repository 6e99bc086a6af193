"""Upgrading a SuperLink from Flower 1.39 to 1.42 by changing FLOWER_VERSION and rebooting (issue
17), with both virtualenvs on loopback: what happens to Flower's state database and to runs.

1. 1.39 (gRPC era): a finished run, then a long run cut by the "reboot" (SIGTERM to everything).
2. 1.42 on the same database: flower-ctx copies it first (``<db>.before-flwr-1.42.0``), Flower
   migrates it one way; the old runs are listed, the cut one as it was left; the SuperNode still on
   1.39 does not get in (its gRPC cannot talk to the HTTP Fleet API); on 1.42 the same SuperNode (same
   admitted key, SuperNode authentication on) gets in with its old node id and a new run completes.
3. Back to 1.39 on the upgraded database: flower-ctx refuses with the way back named; with the copy
   restored, 1.39 starts and lists the runs it knew.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flower_ctx.admission.control import ControlClient
from flower_ctx.admission.keys import generate
from flower_ctx.files import ensure_dir, write_file
from flower_ctx.paths import Paths
from flower_ctx.runtime import statedb
from tests.flower_envs import ctx_argv, flower_env, flower_python, requires_flower_139, requires_flower_142
from tests.http_helpers import flwr, flwr_home, flwr_run, run_ids, wait_port
from tests.runtime_helpers import Proc, free_port, kill_tree, make_pki, stage_runtime_config

pytestmark = [requires_flower_139, requires_flower_142, pytest.mark.flower, pytest.mark.slow]


def _stop(proc: Proc) -> None:
    """What a reboot does to the unit: SIGTERM, then the rest of the cgroup."""
    assert proc.popen is not None
    if proc.popen.poll() is None:
        os.kill(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(25)
        except subprocess.TimeoutExpired:
            pass
    kill_tree(proc.popen.pid)


def _runs(control: int, ca: Path) -> dict[str, str]:
    return {str(r.run_id): r.status for r in ControlClient("127.0.0.1", control, ca.read_bytes()).list_runs()}


def test_139_to_142_by_flower_version_and_reboot(tmp_path: Path, procs: list[Proc]) -> None:
    py139, py142 = flower_python("1.39"), flower_python("1.42")
    assert py139 is not None and py142 is not None
    pki = make_pki(tmp_path / "pki")
    fleet, control = free_port(), free_port()
    link_root = tmp_path / "L"
    doc = stage_runtime_config(link_root, "superlink", pki, fleet_api_address=f"127.0.0.1:{fleet}",
                               http_api={"port": control}, supernode_auth=True)
    db = Path(doc["database"])
    # One SuperNode VM, with its admitted key, kept across the upgrade (only Flower changes).
    node_root = tmp_path / "N"
    private, public = generate()
    node_paths = Paths(node_root)
    stage_runtime_config(node_root, "supernode", pki, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()}, node_key=str(node_paths.node_key))
    ensure_dir(node_paths.certs_dir, 0o755)
    write_file(node_paths.node_key, private, 0o600)
    home = flwr_home(tmp_path / "flwr", f"127.0.0.1:{control}", pki.ca)
    observed: list[str] = []

    def superlink(py: str) -> Proc:
        p = Proc(ctx_argv(py, "run", "superlink", "--root", str(link_root)), env=flower_env(py)).start()
        procs.append(p)
        return p

    def supernode(py: str) -> Proc:
        p = Proc(ctx_argv(py, "run", "supernode", "--root", str(node_root)), env=flower_env(py)).start()
        procs.append(p)
        return p

    # 1. Flower 1.39: one finished run, one cut by the reboot.
    link = superlink(py139)
    wait_port("127.0.0.1", control)
    node_id = ControlClient("127.0.0.1", control, pki.ca.read_bytes()).register(public.pem(), "site")
    node = supernode(py139)
    node.wait_for("SuperNode ID", 90)
    done = run_ids(flwr_run(py139, home, tmp_path, rounds=1))[0]
    cut = run_ids(flwr_run(py139, home, tmp_path, rounds=5, config="sleep-s=4.0", stream=False))[0]
    deadline = time.monotonic() + 60
    while _runs(control, pki.ca).get(cut) != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    before = _runs(control, pki.ca)
    assert before[done] == "finished:completed" and before[cut] == "running", before
    _stop(node)
    _stop(link)
    assert statedb.revision(db) == statedb.HEADS[(1, 39)]

    # 2. FLOWER_VERSION=1.42.0 and a reboot: the same runtime config, Flower 1.42.
    link = superlink(py142)
    link.wait_for("public Fleet API on", 90)
    wait_port("127.0.0.1", control)
    copy = statedb.backup_path(db, "1.42.0")
    assert "upgrades the state database" in link.text() and copy.is_file()
    assert statedb.revision(copy) == statedb.HEADS[(1, 39)] and statedb.revision(db) == statedb.HEADS[(1, 42)]
    after = _runs(control, pki.ca)
    observed.append(f"runs after the upgrade: {after} (before: {before})")
    assert after[done] == "finished:completed" and after[cut] in ("running", "finished:failed")

    old_node = supernode(py139)
    time.sleep(20)
    assert old_node.first("SuperNode ID") is None, "a 1.39 SuperNode joined a 1.42 SuperLink"
    state = f"exited {old_node.popen.returncode}" if old_node.popen.poll() is not None else "still retrying"
    observed.append(f"1.39 SuperNode against the 1.42 SuperLink: {state}, last line: "
                    + (old_node.text().splitlines()[-1] if old_node.lines else "-"))
    _stop(old_node)
    node = supernode(py142)
    node.wait_for(f"SuperNode ID: {node_id}", 90)  # its registration survived the migration
    new = run_ids(flwr_run(py142, home, tmp_path, rounds=1))[0]
    assert _runs(control, pki.ca)[new] == "finished:completed"
    observed.append(f"cut run {cut} after a 1.42 run: {_runs(control, pki.ca)[cut]}")
    if _runs(control, pki.ca)[cut] == "running":
        stop = flwr(py142, home, "stop", cut)
        observed.append(f"flwr stop {cut} (1.42): rc {stop.returncode}, then {_runs(control, pki.ca)[cut]}")
    _stop(node)
    _stop(link)

    # 3. Back to 1.39 without the copy: refused, with the way back.
    back = Proc(ctx_argv(py139, "run", "superlink", "--root", str(link_root)), env=flower_env(py139)).start()
    procs.append(back)
    assert back.popen is not None and back.popen.wait(60) == 1
    assert "upgraded by Flower 1.42" in back.text() and str(copy) in back.text(), back.text()
    # The way back: the copy taken before the upgrade; the WAL files belong to the upgraded database
    # (left in place, SQLite would replay the 1.42 changes onto the copy).
    shutil.copy2(copy, db)
    for wal in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        wal.unlink(missing_ok=True)
    link = superlink(py139)
    wait_port("127.0.0.1", control)
    restored = _runs(control, pki.ca)
    # The cut run is as the copy had it, or failed: its ServerApp's task heartbeat expired meanwhile.
    assert done in restored and new not in restored and restored[cut] in ("running", "finished:failed")
    observed.append(f"1.39 on the restored copy: {restored}")
    print("\n" + "\n".join(observed))
