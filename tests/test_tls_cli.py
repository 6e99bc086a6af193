"""The real ``flower-ctx`` command: configure twice (reboot), SAN change, crash at each write of a
configure run, ``ca export``, owners with a ``flower`` user, and no key material in any output."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flower_ctx.paths import Paths
from tests import tls_helpers as h
from tests.conftest import REPO, requires_root
from tests.test_tls import assert_consistent

FLOWER_UID = 4893  # an id the test's private /etc/passwd gives to "flower"


def write_context(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}='{v}'\n" for k, v in sorted(values.items())))
    return path


def cli(*args: str, env: dict[str, str] | None = None, kill_at_write: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    launcher = ["-m", "flower_ctx.cli"] if kill_at_write is None else ["-m", "tests.faults", str(kill_at_write)]
    return subprocess.run(
        [sys.executable, *launcher, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def configure(
    ctx: Path, root: Path, *extra: str, env: dict[str, str] | None = None, kill_at_write: int | None = None
) -> subprocess.CompletedProcess[str]:
    return cli("configure", "--role", "superlink", "--context", str(ctx), "--root", str(root), *extra, env=env,
               kill_at_write=kill_at_write)


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root: content, mtime_ns, inode."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (p.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def fingerprint(pem_bytes: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem_bytes).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_configure_twice_changes_nothing_then_san_change_keeps_ca(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", {"ETH0_IP": "192.0.2.5", "FL_CERT_EXTRA_SAN": "DNS:fl.example.org"})
    first = configure(ctx, root)
    assert first.returncode == 0, first.stderr
    before = tree(root)
    assert {"opt/flower/certs/ca.crt", "opt/flower/certs/server.pem"} <= set(before)
    again = configure(ctx, root)
    assert again.returncode == 0 and "unchanged" in again.stdout.splitlines()[-1]
    assert tree(root) == before  # byte-identical, same mtimes, same inodes: nothing rewritten

    write_context(ctx, {"ETH0_IP": "192.0.2.77", "FL_CERT_EXTRA_SAN": "DNS:fl.example.org,IP:203.0.113.8"})
    third = configure(ctx, root)
    assert third.returncode == 0, third.stderr
    after = tree(root)
    ca, srv = "opt/flower/certs/ca.crt", "opt/flower/certs/server.pem"
    assert after[ca] == before[ca] and after["opt/flower/certs/ca.key"] == before["opt/flower/certs/ca.key"]
    assert after[srv][0] != before[srv][0]
    leaf = x509.load_pem_x509_certificates(after[srv][0])[0]
    ips = {
        str(a)
        for a in leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.IPAddress
        )
    }
    assert {"192.0.2.77", "203.0.113.8"} <= ips and "192.0.2.5" not in ips
    h.verify_chain(after[srv][0], before[ca][0])  # the old CA, as a SuperNode pinned it


def test_crash_at_each_write_of_a_configure_run(tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "context.sh", {"ETH0_IP": "192.0.2.5"})
    n = 0
    while True:
        n += 1
        assert n < 30, "configure never completed"
        root = tmp_path / f"root-{n}"
        proc = configure(ctx, root, kill_at_write=n)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-1500:]
        rerun = configure(ctx, root)
        assert rerun.returncode == 0, rerun.stderr[-1500:]
        paths = Paths(root)
        assert_consistent(paths)
        assert not [p for p in paths.certs_dir.iterdir() if p.name.endswith(".tmp")]
        assert "unchanged" in configure(ctx, root).stdout.splitlines()[-1]
    assert n > 4  # the four TLS writes were each crashed at least once


def test_ca_export(tmp_path: Path) -> None:
    root = tmp_path / "root"
    missing = cli("ca", "export", "--root", str(root))
    assert missing.returncode == 1 and "no CA yet" in missing.stderr and missing.stdout == ""

    ctx = write_context(tmp_path / "context.sh", {"ETH0_IP": "192.0.2.5"})
    assert configure(ctx, root).returncode == 0
    ca_pem = Paths(root).ca_cert.read_bytes()
    out = cli("ca", "export", "--root", str(root))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and base64.b64decode(lines[0], validate=True) == ca_pem
    assert fingerprint(ca_pem) in out.stderr
    pem = cli("ca", "export", "--root", str(root), "--format", "pem")
    assert pem.returncode == 0 and pem.stdout.encode() == ca_pem

    # The exported line is what a SuperNode in another zone takes as FL_SSL_CA_CERTFILE.
    node_root = tmp_path / "node"
    node_ctx = write_context(
        tmp_path / "node.sh", {"FL_SUPERLINK_ADDRESS": "192.0.2.5:9092", "FL_SSL_CA_CERTFILE": lines[0]}
    )
    node = cli("configure", "--role", "supernode", "--context", str(node_ctx), "--root", str(node_root))
    assert node.returncode == 0, node.stderr
    assert Paths(node_root).ca_cert.read_bytes() == ca_pem

    Paths(root).ca_cert.write_bytes(
        Paths(root).server_cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    not_ca = cli("ca", "export", "--root", str(root))
    assert not_ca.returncode == 1 and "not a CA" in not_ca.stderr


def secret_needles(key_pem: bytes) -> list[str]:
    """Strings that would betray a P-256 private key: its scalar in hex and base64, and 16-character
    windows of the PEM body over the DER bytes that hold the scalar (bytes 36..68 of PKCS#8). The
    public half is excluded on purpose: it is in the certificates, which are public."""
    key = serialization.load_pem_private_key(key_pem, None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    body = b"".join(key_pem.strip().splitlines()[1:-1]).decode()
    assert base64.b64decode(body)[36:68] == scalar  # the layout this relies on
    windows = [body[i : i + 16] for i in range(44, 96 - 16, 4)]
    return [scalar.hex(), scalar.hex().upper(), base64.b64encode(scalar).decode()[:40], *windows]


def test_no_key_material_in_any_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", {"ETH0_IP": "192.0.2.5"})
    outputs = []
    for args in ([], [], ["--json"], ["--dry-run"]):
        proc = cli("--debug", "configure", "--role", "superlink", "--context", str(ctx), "--root", str(root), *args)
        outputs += [proc.stdout, proc.stderr]
    paths = Paths(root)
    secrets = [paths.ca_key.read_bytes(), paths.server_key.read_bytes()]
    # Re-issue (logs the reason) and export.
    write_context(ctx, {"ETH0_IP": "192.0.2.6"})
    proc = cli("--debug", "configure", "--role", "superlink", "--context", str(ctx), "--root", str(root))
    outputs += [proc.stdout, proc.stderr]
    secrets.append(paths.server_key.read_bytes())
    for fmt in ("base64", "pem"):
        proc = cli("ca", "export", "--root", str(root), "--format", fmt)
        outputs += [proc.stdout, proc.stderr]

    # Operator PKI, with a mismatch (validation error path) and then valid.
    ca = h.build_ca("Operator CA")
    srv = h.build_server(ca, ["DNS:other.example.org"])
    stray = h.build_server(ca, ["DNS:stray.example.org"])
    secrets += [srv.key_pem, stray.key_pem]
    op = {
        "FL_SSL_CA_CERTFILE": base64.b64encode(ca.cert_pem).decode(),
        "FL_SSL_CERTFILE": base64.b64encode(srv.cert_pem).decode(),
        "ETH0_IP": "192.0.2.5",
    }
    for key in (stray.key_pem, srv.key_pem):
        write_context(ctx, {**op, "FL_SSL_KEYFILE": base64.b64encode(key).decode()})
        proc = cli("--debug", "configure", "--role", "superlink", "--context", str(ctx), "--root", str(root), "--json")
        outputs += [proc.stdout, proc.stderr]
        proc = cli("context", "check", "--role", "superlink", "--context", str(ctx))
        outputs += [proc.stdout, proc.stderr]
    assert paths.server_key.read_bytes() == srv.key_pem  # the valid run did install it

    text = "\n".join(outputs)
    assert "PRIVATE KEY" not in text
    for secret in secrets:
        assert base64.b64encode(secret).decode()[:40] not in text  # the text64 form of the key
        assert not [needle for needle in secret_needles(secret) if needle in text]


@requires_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_owners_and_modes_with_a_flower_user(tmp_path: Path) -> None:
    """In a private mount namespace whose /etc/passwd and /etc/group have a ``flower`` user (the host's
    files are not touched), configure gives server.key to flower and keeps ca.key root-only."""
    passwd = tmp_path / "passwd"
    group = tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + f"flower:x:{FLOWER_UID}:{FLOWER_UID}::/opt/flower:/bin/false\n")
    group.write_text(Path("/etc/group").read_text() + f"flower:x:{FLOWER_UID}:\n")
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", {"ETH0_IP": "192.0.2.5"})
    script = (
        f"mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && "
        f"exec {sys.executable} -m flower_ctx.cli configure --role superlink --context {ctx} --root {root}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    paths = Paths(root)
    want = {
        "ca.key": (0o600, 0, 0),
        "ca.crt": (0o644, 0, 0),
        "server.key": (0o600, FLOWER_UID, FLOWER_UID),
        "server.pem": (0o644, 0, 0),
    }
    for name, (mode, uid, gid) in want.items():
        st = (paths.certs_dir / name).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid), name
    assert paths.certs_dir.stat().st_mode & 0o7777 == 0o755
    assert not paths.server_key.stat().st_mode & 0o077  # no group/other access to any key
