"""Crash safety: SIGKILL a real TLS apply at each file write, then show the next run converges.

The child process runs ``flower_ctx.tls.apply`` with ``tests.faults.kill_at_write(N)`` installed (the
process is killed at its N-th write, after the temp file is complete and before the rename).
After each kill, every file on disk must be whole (old or new, never truncated), and a normal run
must leave a consistent pair set: keys match certificates, the server chains to the CA, and a CA
that existed before the crash is byte-identical.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flower_ctx import tls
from flower_ctx.paths import Paths
from tests import tls_helpers as h
from tests.conftest import REPO
from tests.test_tls import assert_consistent

CHILD = """
import json, pathlib, sys
from flower_ctx import tls
from tests.faults import kill_at_write
if sys.argv[3] != "-":
    kill_at_write(int(sys.argv[3]))
from flower_ctx.paths import Paths
from tests.test_tls_crash import config_for
r = tls.apply(config_for(json.loads(sys.argv[2])), Paths(pathlib.Path(sys.argv[1])))
print(json.dumps([c.outcome for c in r.changes]))
"""


def config_for(spec: dict[str, Any]) -> Any:
    from flower_ctx.model import PkiMaterial, SanEntry, Secret
    from tests.factories import make_config

    extra = tuple(SanEntry(*e.split(":", 1)) for e in spec["extra"])
    pki = PkiMaterial()
    if spec.get("operator"):
        o = {k: Path(v).read_bytes() for k, v in spec["operator"].items()}
        pki = PkiMaterial(ca_pem=o["ca"], cert_pem=o["cert"], key_pem=Secret(o["key"]))
    return make_config(cert_extra_san=extra, pki=pki)


def run_child(root: Path, spec: dict[str, Any], fault_at: int | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), json.dumps(spec), "-" if fault_at is None else str(fault_at)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_whole(paths: Paths) -> None:
    """Whatever exists under its final name parses completely (a crash never leaves half a file)."""
    for name in ("ca.crt", "server.pem"):
        p = paths.certs_dir / name
        if p.exists():
            assert x509.load_pem_x509_certificates(p.read_bytes())
    for name in ("ca.key", "server.key"):
        p = paths.certs_dir / name
        if p.exists():
            serialization.load_pem_private_key(p.read_bytes(), None)
            assert p.stat().st_mode & 0o077 == 0  # even a key written just before the crash is private


def no_temps(paths: Paths) -> bool:
    return not [p for p in paths.certs_dir.iterdir() if p.name.endswith(".tmp")]


def crash_matrix(
    tmp_path: Path,
    prepare: Any,
    spec: dict[str, Any],
    writes: int,
    keep_ca: bool,
    next_spec: dict[str, Any] | None = None,
) -> None:
    """For N = 1..writes: prepare a tree, kill the run at write N, check, re-run (with ``next_spec``,
    default the same CONTEXT), check convergence."""
    crashed_spec, spec = spec, next_spec or spec
    for n in range(1, writes + 2):
        root = tmp_path / f"crash-{n}"
        root.mkdir()
        paths = Paths(root)
        prepare(paths)
        ca_before = paths.ca_cert.read_bytes() if keep_ca else None
        proc = run_child(root, crashed_spec, n)
        if n <= writes:
            assert proc.returncode == -signal.SIGKILL, (n, proc.returncode, proc.stderr[-1500:])
            assert_whole(paths)
        else:
            # One more than the counted writes: the run completes, so every write was covered.
            assert proc.returncode == 0, proc.stderr[-1500:]
        result = tls.apply(config_for(spec), paths)
        assert_whole(paths)
        if spec.get("operator"):
            ops = {k: Path(v).read_bytes() for k, v in spec["operator"].items()}
            assert paths.server_key.read_bytes() == ops["key"]
            assert paths.server_cert.read_bytes() == ops["cert"]
            assert paths.ca_cert.read_bytes() == ops["ca"]
        else:
            assert_consistent(paths)
            sans = {str(s) for s in tls.cert_sans(x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0])}
            assert {str(s) for s in tls.server_sans(config_for(spec))} == sans
        if ca_before is not None:
            assert paths.ca_cert.read_bytes() == ca_before
        assert no_temps(paths)
        assert not tls.apply(config_for(spec), paths).changed  # converged: a third run is quiet
        if n > writes and next_spec is None:
            assert not result.changed


@pytest.mark.slow
def test_crash_at_each_write_of_a_fresh_generation(tmp_path: Path) -> None:
    crash_matrix(tmp_path, lambda p: None, {"extra": []}, writes=4, keep_ca=False)


@pytest.mark.slow
def test_crash_at_each_write_of_a_reissue_keeps_the_ca(tmp_path: Path) -> None:
    def prepare(paths: Paths) -> None:
        tls.apply(config_for({"extra": []}), paths)

    crash_matrix(tmp_path, prepare, {"extra": ["DNS:new.example.org"]}, writes=2, keep_ca=True)


@pytest.mark.slow
def test_crash_during_a_reissue_then_the_old_context_is_back(tmp_path: Path) -> None:
    """The SAN change that caused the re-issue is rolled back before the next boot: the old server.pem
    matches the SANs again, but server.key may already be the new one; the run must notice."""

    def prepare(paths: Paths) -> None:
        tls.apply(config_for({"extra": []}), paths)

    crash_matrix(tmp_path, prepare, {"extra": ["DNS:new.example.org"]}, writes=2, keep_ca=True, next_spec={"extra": []})


@pytest.mark.slow
def test_crash_at_each_write_of_operator_pki(tmp_path: Path) -> None:
    root = h.build_ca("Operator Root")
    srv = h.build_server(root, ["IP:192.0.2.10"])
    files = {}
    for name, data in (("ca", root.cert_pem), ("cert", srv.cert_pem), ("key", srv.key_pem)):
        files[name] = str(tmp_path / f"op-{name}.pem")
        Path(files[name]).write_bytes(data)

    def prepare(paths: Paths) -> None:
        tls.apply(config_for({"extra": []}), paths)  # a generated set is there before

    crash_matrix(tmp_path, prepare, {"extra": [], "operator": files}, writes=3, keep_ca=False)
