"""Backup and restore of a VM's identity (issue 15): the file format (0600, sealed with a passphrase,
nothing outside the identity accepted back), and a SuperLink VM rebuilt from a fresh disk that
keeps its CA fingerprint and its SuperNode registrations, so a SuperNode of another zone reconnects
with no change on its side."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_ctx import backup as bk
from flower_ctx.context import render
from flower_ctx.paths import Paths
from flower_ctx.pem import fingerprint, load_certs
from tests.conftest import REPO, requires_flower, requires_netns
from tests.rig import Rig, SimVM, write_context


def _cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, **kw)  # type: ignore[call-overload]


def _superlink_root(tmp: Path, name: str) -> Path:
    ctx = tmp / f"{name}.sh"
    ctx.write_text(render({"ETH0_IP": "192.0.2.10"}))
    root = tmp / name
    out = _cli("configure", "--role", "superlink", "--context", str(ctx), "--root", str(root))
    assert out.returncode == 0, out.stderr
    db = sqlite3.connect(root / "opt/flower/state/state.db")
    db.execute("CREATE TABLE node (node_id INTEGER, public_key BLOB)")
    db.execute("INSERT INTO node VALUES (42, x'0102')")
    db.commit()
    db.close()
    (root / "etc/flower-ctx/admission.json").write_text(json.dumps({"ours": ["k"], "onegate": []}))
    return root


def test_backup_is_private_sealed_and_restores_the_same_ca(tmp_path: Path) -> None:
    old = _superlink_root(tmp_path, "old")
    secret = tmp_path / "pass"
    secret.write_text("correct horse battery staple\n")
    out = _cli("backup", str(tmp_path / "sl.fct"), "--root", str(old), "--passphrase-file", str(secret))
    assert out.returncode == 0, out.stderr
    data = (tmp_path / "sl.fct").read_bytes()
    assert (tmp_path / "sl.fct").stat().st_mode & 0o777 == 0o600
    ca_key = (old / "opt/flower/certs/ca.key").read_bytes()
    assert b"PRIVATE KEY" not in data and ca_key[40:80] not in data  # sealed: no key material in clear

    # A rebuilt VM: a fresh disk configured again has a new CA...
    new = tmp_path / "new"
    ctx = tmp_path / "new.sh"
    ctx.write_text(render({"ETH0_IP": "192.0.2.10"}))
    assert _cli("configure", "--role", "superlink", "--context", str(ctx), "--root", str(new)).returncode == 0
    fp = lambda root: fingerprint(load_certs((root / "opt/flower/certs/ca.crt").read_bytes())[0])  # noqa: E731
    assert fp(new) != fp(old)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    refused = _cli("restore", str(tmp_path / "sl.fct"), "--root", str(new), "--passphrase-file", str(wrong))
    assert refused.returncode == 1 and "wrong passphrase" in refused.stderr and fp(new) != fp(old)
    # ...restore puts the old identity back; configure then keeps it (valid CA with its key).
    out = _cli("restore", str(tmp_path / "sl.fct"), "--root", str(new), "--passphrase-file", str(secret))
    assert out.returncode == 0, out.stderr
    assert _cli("configure", "--role", "superlink", "--context", str(ctx), "--root", str(new)).returncode == 0
    assert fp(new) == fp(old)
    assert (new / "opt/flower/certs/ca.key").stat().st_mode & 0o777 == 0o600
    rows = sqlite3.connect(new / "opt/flower/state/state.db").execute("SELECT node_id FROM node").fetchall()
    assert rows == [(42,)]


def test_restore_takes_nothing_but_the_identity(tmp_path: Path) -> None:
    old = _superlink_root(tmp_path, "old")
    files = bk.collect("superlink", Paths(old), str(old / "opt/flower/state/state.db"))
    assert set(files) == {"ca.crt", "ca.key", "admission.json", "state.db"}
    for name, data in (("../../etc/shadow", b"x"), ("server.key", b"x"), ("passwd", b"root::0:0")):
        with pytest.raises(bk.BackupError):
            bk.check("superlink", bk.unpack(bk.pack("superlink", {**files, name: data}, None), None)[1], Paths(old))
    mismatched = {**files, "ca.key": (old / "opt/flower/certs/server.key").read_bytes()}
    with pytest.raises(bk.BackupError, match="does not belong"):
        bk.check("superlink", mismatched, Paths(old))
    sealed = bytearray(bk.pack("superlink", files, b"a long passphrase"))
    sealed[-20] ^= 1  # one bit changed in the sealed archive
    with pytest.raises(bk.BackupError, match="changed"):
        bk.unpack(bytes(sealed), b"a long passphrase")
    with pytest.raises(bk.BackupError, match="not a flower-ctx backup"):
        bk.unpack(b"#!/bin/sh\nrm -rf /\n", None)


ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def _fctx(vm: SimVM, *args: str, check: bool = True) -> str:
    out = vm.run([sys.executable, "-m", "flower_ctx", *args], check=check, timeout=240, env=ENV)
    return out.stdout + out.stderr


def _node_id(vm: SimVM) -> str:
    import re

    text = vm.path("/opt/flower/run/supernode.log").read_text(errors="replace")
    found = re.findall(r"SuperNode ID: (\d+)", text)
    return found[-1] if found else ""


@requires_netns
@requires_flower
@pytest.mark.root
@pytest.mark.netns
@pytest.mark.flower
@pytest.mark.slow
def test_rebuilt_superlink_keeps_its_ca_and_its_supernodes(tmp_path: Path) -> None:
    with Rig("fcbk") as rig:
        link, node = rig.add_vm("link", 1), rig.add_vm("node", 2)
        link_ctx = {"ETH0_IP": str(link.eth0_ip)}
        write_context(link.path("/run/one-context/context.sh.network"), link_ctx)
        _fctx(link, "configure", "--role", "superlink")
        ca_b64 = _fctx(link, "ca", "export").split()[0]
        write_context(node.path("/run/one-context/context.sh.network"), {
            "ETH0_IP": str(node.eth0_ip), "FL_SUPERLINK_ADDRESS": f"{link.eth0_ip}:9092",
            "FL_SSL_CA_CERTFILE": ca_b64})
        _fctx(node, "configure", "--role", "supernode")
        key = _fctx(node, "node", "key").strip().splitlines()[-1]
        write_context(link.path("/run/one-context/context.sh.network"), {**link_ctx, "FL_SUPERNODE_PUBLIC_KEYS": key})
        _fctx(link, "configure", "--role", "superlink")
        _fctx(link, "bootstrap", "--role", "superlink")
        _fctx(node, "bootstrap", "--role", "supernode")
        first_id = _node_id(node)
        assert first_id
        before = _fctx(link, "ca", "export").split()[0]
        backup = Path("/tmp") / f"fcbk-{rig.tag}.fct"  # the operator keeps it off the VM
        try:
            _fctx(link, "backup", str(backup))

            # The SuperLink's disk is lost: a new VM with the same address boots from the same CONTEXT.
            link.destroy()
            del rig.vms["link"]
            t0 = time.monotonic()
            link = rig.add_vm("link", 1)
            write_context(link.path("/run/one-context/context.sh.network"), {**link_ctx,
                                                                            "FL_SUPERNODE_PUBLIC_KEYS": key})
            _fctx(link, "configure", "--role", "superlink")
            assert _fctx(link, "ca", "export").split()[0] != before  # a fresh disk: a new CA
            out = _fctx(link, "restore", str(backup))
            assert "restored" in out and "ready: Fleet API" in out, out
            assert _fctx(link, "ca", "export").split()[0] == before  # the same CA fingerprint
        finally:
            backup.unlink(missing_ok=True)
        # Zone B changed nothing: its SuperNode reconnects by itself, with the same node id.
        deadline = time.monotonic() + 120
        while "Connection successful" not in node.path("/opt/flower/run/supernode.log").read_text(errors="replace") \
                or "online" not in _fctx(link, "status"):
            assert time.monotonic() < deadline, _fctx(link, "status")
            time.sleep(1)
        print(f"\nSuperLink rebuilt from a fresh disk + restore: its SuperNode trains again "
              f"{time.monotonic() - t0:.1f} s after the new VM started")
        status = _fctx(link, "status")
        assert "1 connected of 1 registered" in status, status
        assert f" {first_id} online" in status  # the registration came back with the database: same node id
