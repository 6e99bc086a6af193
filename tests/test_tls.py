"""TLS lifecycle on real files: generation, reboot stability, re-issue rules, modes, dry-run, roles."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_ctx import tls
from flower_ctx.config import load_config
from flower_ctx.model import Nic, Role, SanEntry
from flower_ctx.paths import Paths
from tests import tls_helpers as h
from tests.factories import make_config, make_wg

NOW = datetime.datetime.now(datetime.timezone.utc)
FILES = ("ca.key", "ca.crt", "server.key", "server.pem")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def snapshot(paths: Paths) -> dict[str, tuple[bytes, int, int, int]]:
    """content, mtime_ns, inode and mode of every file in certs/ (an inode change = a rewrite)."""
    out = {}
    for p in sorted(paths.certs_dir.iterdir()):
        st = p.stat()
        out[p.name] = (p.read_bytes(), st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode))
    return out


def leaf(paths: Paths) -> x509.Certificate:
    return x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0]


def sans_of(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)} | {
        f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)
    }


def outcomes(result: tls.StepResult) -> dict[str, str]:
    return {Path(c.what).name: c.outcome for c in result.changes}


def assert_consistent(paths: Paths, at: datetime.datetime | None = None) -> None:
    """Key matches certificate for both pairs; the server chain verifies under ca.crt (independently)."""
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert ca_key.public_key().public_bytes(der, pub) == ca_cert.public_key().public_bytes(der, pub)
    srv_key = serialization.load_pem_private_key(paths.server_key.read_bytes(), None)
    assert srv_key.public_key().public_bytes(der, pub) == leaf(paths).public_key().public_bytes(der, pub)
    h.verify_chain(paths.server_cert.read_bytes(), paths.ca_cert.read_bytes(), at)


# ------------------------------------------------------------------------------------------ SANs


def test_server_sans_lists_loopback_nics_wg_and_extra_once() -> None:
    cfg = make_config(
        nics=(
            Nic(0, ipaddress.IPv4Address("192.0.2.10"), ipaddress.IPv6Address("2001:db8::10")),
            Nic(1, ipaddress.IPv4Address("198.51.100.3")),
        ),
        wg=make_wg(address=ipaddress.ip_interface("10.10.9.0/31")),
        cert_extra_san=(SanEntry("DNS", "flower.example.org"), SanEntry("IP", "127.0.0.1")),
    )
    got = [str(s) for s in tls.server_sans(cfg, observed_addresses=[ipaddress.ip_address("203.0.113.9")])]
    assert got == [
        "DNS:localhost",
        "IP:127.0.0.1",
        "IP:::1",
        "IP:192.0.2.10",
        "IP:2001:db8::10",
        "IP:198.51.100.3",
        "IP:10.10.9.0",
        "DNS:flower.example.org",
    ]  # observed addresses are not used when CONTEXT names NICs; 127.0.0.1 is not repeated


def test_server_sans_use_observed_addresses_only_without_nics() -> None:
    cfg = make_config(nics=())
    got = [str(s) for s in tls.server_sans(cfg, [ipaddress.ip_address("203.0.113.9")])]
    assert got == ["DNS:localhost", "IP:127.0.0.1", "IP:::1", "IP:203.0.113.9"]


# ------------------------------------------------------------------------------------------ generation


def test_fresh_generation_files_modes_and_certificate_profile(stage: Path) -> None:
    paths = Paths(stage)
    cfg = make_config(cert_extra_san=(SanEntry("DNS", "flower.example.org"),), wg=make_wg())
    result = tls.apply(cfg, paths, now=NOW)
    assert result.name == "tls"
    assert outcomes(result) == {"certs": "created", **{f: "created" for f in FILES}}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths.certs_dir.iterdir()}
    assert modes == {"ca.key": 0o600, "ca.crt": 0o644, "server.key": 0o600, "server.pem": 0o644}
    assert paths.ca_key.stat().st_uid == 0 or os.geteuid() != 0
    assert_consistent(paths)

    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    srv = leaf(paths)
    for cert in (ca, srv):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_days = (ca.not_valid_after_utc - NOW).days
    srv_days = (srv.not_valid_after_utc - NOW).days
    assert 3649 <= ca_days <= 3650 and 364 <= srv_days <= 365
    assert sans_of(srv) == {
        "DNS:localhost",
        "IP:127.0.0.1",
        "IP:::1",
        "IP:192.0.2.10",
        "IP:10.10.9.0",
        "DNS:flower.example.org",
    }
    assert result.facts["server_sans"].split(",") == [str(s) for s in tls.server_sans(cfg)]
    import hashlib

    assert (
        result.facts["ca_fingerprint"]
        == "sha256:" + hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    )


def test_reboot_rerun_changes_nothing(stage: Path) -> None:
    """Same CONTEXT twice (through the real validator): byte-identical files, same mtimes and inodes."""
    paths = Paths(stage)
    values = {"ETH0_IP": "192.0.2.5", "FL_CERT_EXTRA_SAN": "DNS:flower.example.org"}
    tls.apply(load_config("superlink", values), paths)
    before = snapshot(paths)
    second = tls.apply(load_config("superlink", values), paths)
    assert not second.changed
    assert set(outcomes(second).values()) == {"unchanged"}
    assert snapshot(paths) == before


@pytest.mark.parametrize(
    "change",
    [{"FL_CERT_EXTRA_SAN": "DNS:flower.example.org,IP:203.0.113.7"}, {"ETH0_IP": "192.0.2.99"}],
    ids=["extra-san", "vm-ip"],
)
def test_san_change_reissues_under_the_same_ca(stage: Path, tmp_path: Path, change: dict[str, str]) -> None:
    paths = Paths(stage)
    values = {"ETH0_IP": "192.0.2.5", "FL_CERT_EXTRA_SAN": "DNS:flower.example.org"}
    tls.apply(load_config("superlink", values), paths)
    before = snapshot(paths)
    # A SuperNode elsewhere trusts the first run's CA.
    node = Paths(tmp_path / "node")
    tls.install_trusted_ca(paths.ca_cert.read_bytes(), node)

    result = tls.apply(load_config("superlink", {**values, **change}), paths)
    after = snapshot(paths)
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"]
    assert after["server.pem"][0] != before["server.pem"][0]
    assert after["server.key"][0] != before["server.key"][0]
    assert outcomes(result)["server.pem"] == "updated"
    assert "SANs changed" in next(c.detail for c in result.changes if c.what.endswith("server.pem"))
    new_value = next(iter(change.values())).split(",")[-1]
    want = f"IP:{new_value}" if not new_value.startswith(("IP:", "DNS:")) else new_value
    assert want in sans_of(leaf(paths))
    assert_consistent(paths)
    h.verify_chain(paths.server_cert.read_bytes(), node.ca_cert.read_bytes())
    # And a real handshake: the new server key/cert, a client trusting only the SuperNode's old CA copy.
    server, ports = h.start_server(paths.server_key.read_bytes(), paths.server_cert.read_bytes(), ["127.0.0.1"])
    try:
        assert h.grpc_call(f"127.0.0.1:{ports[0]}", node.ca_cert.read_bytes()) == "ok"
    finally:
        server.stop(0)


def test_renewal_within_30_days_keeps_ca(stage: Path) -> None:
    paths = Paths(stage)
    cfg = make_config()
    tls.apply(cfg, paths, now=NOW)
    before = snapshot(paths)
    quiet = tls.apply(cfg, paths, now=NOW + datetime.timedelta(days=300))  # 65 days left: keep
    assert not quiet.changed and snapshot(paths) == before
    result = tls.apply(cfg, paths, now=NOW + datetime.timedelta(days=340))  # 25 days left: renew
    assert outcomes(result)["server.pem"] == "updated"
    assert "within 30 days" in next(c.detail for c in result.changes if c.what.endswith("server.pem"))
    assert snapshot(paths)["ca.crt"] == before["ca.crt"]
    assert leaf(paths).not_valid_after_utc > NOW + datetime.timedelta(days=700)
    assert_consistent(paths, at=NOW + datetime.timedelta(days=340))


def test_ca_replaced_only_when_expired_or_key_lost(stage: Path) -> None:
    paths = Paths(stage)
    cfg = make_config()
    tls.apply(cfg, paths, now=NOW)
    old_ca = paths.ca_cert.read_bytes()
    old_fp = tls.pem.fingerprint(x509.load_pem_x509_certificate(old_ca))

    paths.ca_key.unlink()  # key lost: the CA cannot sign any more, a new one is unavoidable
    result = tls.apply(cfg, paths, now=NOW)
    assert paths.ca_cert.read_bytes() != old_ca
    assert any(old_fp in w and "ca.key is missing" in w for w in result.warnings)
    assert_consistent(paths)

    second_ca = paths.ca_cert.read_bytes()
    later = NOW + datetime.timedelta(days=3651)  # the CA itself has expired
    result = tls.apply(cfg, paths, now=later)
    assert paths.ca_cert.read_bytes() != second_ca
    assert any("expired" in w for w in result.warnings)
    assert x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()).not_valid_after_utc > later


def test_clock_behind_the_ca_keeps_everything(stage: Path) -> None:
    """A VM booting with its clock in the past (before NTP) must not replace the pinned CA, nor issue
    a certificate dated in the past; it says why."""
    paths = Paths(stage)
    tls.apply(make_config(), paths, now=NOW)
    before = snapshot(paths)
    early = NOW - datetime.timedelta(days=2)
    result = tls.apply(make_config(cert_extra_san=(SanEntry("DNS", "new.example.org"),)), paths, now=early)
    assert not result.changed and snapshot(paths) == before
    assert any("clock" in w and "NTP" in w for w in result.warnings)
    # A broken pair is still repaired, under the same CA.
    paths.server_key.unlink()
    tls.apply(make_config(), paths, now=early)
    assert paths.ca_cert.read_bytes() == before["ca.crt"][0]
    assert_consistent(paths, at=NOW)


def test_server_reissued_when_key_does_not_match(stage: Path) -> None:
    """As after a crash between writing server.key and server.pem."""
    paths = Paths(stage)
    cfg = make_config()
    tls.apply(cfg, paths, now=NOW)
    ca_before = paths.ca_cert.read_bytes()
    other = h.build_ca("stray")
    paths.server_key.write_bytes(other.key_pem)
    result = tls.apply(cfg, paths, now=NOW)
    assert "does not belong" in next(c.detail for c in result.changes if c.what.endswith("server.pem"))
    assert paths.ca_cert.read_bytes() == ca_before
    assert_consistent(paths)


def test_server_reissued_when_not_issued_by_ca(stage: Path) -> None:
    paths = Paths(stage)
    cfg = make_config()
    tls.apply(cfg, paths, now=NOW)
    ca_before = paths.ca_cert.read_bytes()
    foreign_ca = h.build_ca("foreign")
    foreign = h.build_server(foreign_ca, [str(s) for s in tls.server_sans(cfg)])
    paths.server_key.write_bytes(foreign.key_pem)
    paths.server_cert.write_bytes(foreign.cert_pem)
    result = tls.apply(cfg, paths, now=NOW)
    assert "not issued by the current CA" in next(c.detail for c in result.changes if c.what.endswith("server.pem"))
    assert paths.ca_cert.read_bytes() == ca_before
    assert_consistent(paths)


def test_modes_repaired_without_rewriting(stage: Path) -> None:
    paths = Paths(stage)
    cfg = make_config()
    tls.apply(cfg, paths)
    os.chmod(paths.server_key, 0o644)
    content, ino = paths.server_key.read_bytes(), paths.server_key.stat().st_ino
    dry = tls.apply(cfg, paths, dry_run=True)
    assert outcomes(dry)["server.key"] == "would-update"
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o644
    result = tls.apply(cfg, paths)
    assert outcomes(result)["server.key"] == "updated"
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert paths.server_key.read_bytes() == content and paths.server_key.stat().st_ino == ino


def test_dry_run_writes_nothing(stage: Path) -> None:
    paths = Paths(stage)
    cfg = make_config()
    fresh = tls.apply(cfg, paths, dry_run=True)
    assert list(stage.iterdir()) == []
    assert {c.outcome for c in fresh.changes} == {"would-create"}
    assert "ca_fingerprint" not in fresh.facts  # the CA it would create does not exist yet

    tls.apply(cfg, paths)
    before = snapshot(paths)
    changed = make_config(cert_extra_san=(SanEntry("IP", "203.0.113.7"),))
    plan = tls.apply(changed, paths, dry_run=True)
    assert outcomes(plan) == {
        "ca.key": "unchanged",
        "ca.crt": "unchanged",
        "server.key": "would-update",
        "server.pem": "would-update",
    }
    assert "IP:203.0.113.7" in plan.facts["server_sans"]
    assert snapshot(paths) == before


def test_tls_disabled_touches_nothing(stage: Path) -> None:
    paths = Paths(stage)
    off = make_config(tls_enabled=False)
    result = tls.apply(off, paths)
    assert result.facts["tls"] == "disabled" and not result.changes
    assert list(stage.iterdir()) == []
    tls.apply(make_config(), paths)
    before = snapshot(paths)
    tls.apply(make_config(tls_enabled=False, cert_extra_san=(SanEntry("DNS", "x.example"),)), paths)
    assert snapshot(paths) == before  # switching TLS off keeps the pinned CA for later


# ------------------------------------------------------------------------------------------ SuperNode


def test_supernode_installs_ca_from_context(stage: Path) -> None:
    ca = h.build_ca("Zone A CA")
    paths = Paths(stage)
    cfg = load_config("supernode", {"FL_SUPERLINK_ADDRESS": "10.10.9.0:9092", "FL_SSL_CA_CERTFILE": _b64(ca.cert_pem)})
    result = tls.apply(cfg, paths)
    assert paths.ca_cert.read_bytes() == ca.cert_pem
    assert stat.S_IMODE(paths.ca_cert.stat().st_mode) == 0o644
    assert sorted(p.name for p in paths.certs_dir.iterdir()) == ["ca.crt"]
    assert result.facts["ca_fingerprint"] == tls.pem.fingerprint(ca.cert)
    again = tls.apply(cfg, paths)
    assert not again.changed


def test_supernode_without_ca_waits_for_onegate(stage: Path) -> None:
    result = tls.apply(make_config(Role.SUPERNODE), Paths(stage))
    assert result.facts["ca_source"] == "OneGate" and not result.changes
    assert list(stage.iterdir()) == []


def test_install_trusted_ca_normalises_and_rejects_non_ca(stage: Path) -> None:
    paths = Paths(stage)
    ca = h.build_ca("Published CA")
    messy = ca.cert_pem.replace(b"\n", b"\r\n")  # as a copy through another tool may leave it
    result = tls.install_trusted_ca(messy, paths)
    assert paths.ca_cert.read_bytes() == ca.cert_pem
    assert result.facts["ca_fingerprint"] == tls.pem.fingerprint(ca.cert)
    server = h.build_server(ca, ["DNS:localhost"])
    with pytest.raises(tls.TlsError, match="not a CA certificate"):
        tls.install_trusted_ca(server.cert_pem, Paths(stage / "other"))
    with pytest.raises(tls.TlsError, match="not PEM"):
        tls.install_trusted_ca(b"garbage", Paths(stage / "other"))
    assert not (stage / "other").exists()
    assert tls.install_trusted_ca(ca.cert_pem, paths, dry_run=True).changed is False


# ------------------------------------------------------------------------------------------ operator PKI (apply)


def _operator_values(root: h.Issued, inter: h.Issued, srv: h.Issued, **extra: str) -> dict[str, str]:
    return {
        "FL_SSL_CA_CERTFILE": _b64(root.cert_pem),
        "FL_SSL_CERTFILE": _b64(srv.cert_pem + inter.cert_pem),
        "FL_SSL_KEYFILE": _b64(srv.key_pem),
        **extra,
    }


def test_operator_pki_installed_and_generated_ca_key_dropped(stage: Path) -> None:
    paths = Paths(stage)
    tls.apply(make_config(), paths)  # generated first, then the operator brings their PKI
    root = h.build_ca("Operator Root")
    inter = h.build_ca("Operator Intermediate", issuer=root)
    srv = h.build_server(inter, ["DNS:superlink.example.org", "IP:192.0.2.5"])
    cfg = load_config("superlink", _operator_values(root, inter, srv, ETH0_IP="192.0.2.5"))
    result = tls.apply(cfg, paths)
    assert paths.ca_cert.read_bytes() == root.cert_pem
    assert paths.server_cert.read_bytes() == srv.cert_pem + inter.cert_pem
    assert paths.server_key.read_bytes() == srv.key_pem
    assert not paths.ca_key.exists()
    assert outcomes(result)["ca.key"] == "removed"
    assert result.facts["ca_fingerprint"] == tls.pem.fingerprint(root.cert)
    assert result.facts["server_sans"] == "DNS:superlink.example.org,IP:192.0.2.5"
    assert result.warnings == []
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert not tls.apply(cfg, paths).changed
    # Real handshake through the intermediate, client trusting only the operator's root.
    server, ports = h.start_server(paths.server_key.read_bytes(), paths.server_cert.read_bytes(), ["127.0.0.1"])
    try:
        target = f"127.0.0.1:{ports[0]}"
        assert h.grpc_call(target, root.cert_pem, name_override="superlink.example.org") == "ok"
        assert h.grpc_call(target, root.cert_pem) == "error:UNAVAILABLE"  # 127.0.0.1 is not in its SANs
    finally:
        server.stop(0)


def test_operator_pki_san_warning_and_extra_san_ignored(stage: Path) -> None:
    root = h.build_ca("Operator Root")
    srv = h.build_server(root, ["DNS:elsewhere.example.org"])
    values = {
        "FL_SSL_CA_CERTFILE": _b64(root.cert_pem),
        "FL_SSL_CERTFILE": _b64(srv.cert_pem),
        "FL_SSL_KEYFILE": _b64(srv.key_pem),
        "ETH0_IP": "192.0.2.5",
    }
    result = tls.apply(load_config("superlink", values), Paths(stage))
    assert len(result.warnings) == 1
    assert "DNS:elsewhere.example.org" in result.warnings[0] and "IP:192.0.2.5" in result.warnings[0]
    # FL_CERT_EXTRA_SAN: the validator already warns; apply adds the same warning for Configs built
    # without it, never twice.
    with_extra = load_config("superlink", {**values, "FL_CERT_EXTRA_SAN": "DNS:elsewhere.example.org"})
    got = tls.apply(with_extra, Paths(stage)).warnings + list(with_extra.warnings)
    assert sum("FL_CERT_EXTRA_SAN" in w for w in got) == 1
    assert not any("contain none" in w for w in got)  # the extra name is in the certificate
    direct = make_config(pki=with_extra.pki, cert_extra_san=(SanEntry("DNS", "x.example.org"),), nics=with_extra.nics)
    assert any("FL_CERT_EXTRA_SAN is ignored" in w for w in tls.apply(direct, Paths(stage)).warnings)


# ------------------------------------------------------------------------------------------ property


_ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@settings(max_examples=150, deadline=None)
@given(
    nic_ips=st.lists(st.tuples(st.none() | st.ip_addresses(v=4), st.none() | st.ip_addresses(v=6)), max_size=4),
    observed=st.lists(_ips, max_size=3),
    extra=st.lists(
        _ips.map(lambda a: SanEntry("IP", str(a)))
        | st.sampled_from(
            [SanEntry("DNS", "a.example.org"), SanEntry("DNS", "localhost"), SanEntry("DNS", "b.example")]
        ),
        max_size=4,
    ),
    wg=st.booleans(),
)
def test_server_sans_property(
    nic_ips: list[tuple[Any, Any]], observed: list[Any], extra: list[SanEntry], wg: bool
) -> None:
    nics = tuple(Nic(i, a, b) for i, (a, b) in enumerate(nic_ips))
    cfg = make_config(nics=nics, cert_extra_san=tuple(extra), wg=make_wg() if wg else None)
    got = tls.server_sans(cfg, observed)
    assert len(got) == len(set(got))  # no duplicates
    assert got[:3] == [SanEntry("DNS", "localhost"), SanEntry("IP", "127.0.0.1"), SanEntry("IP", "::1")]
    expected = {"DNS:localhost", "IP:127.0.0.1", "IP:::1"} | {str(e) for e in extra}
    expected |= {f"IP:{a}" for pair in nic_ips for a in pair if a is not None}
    if not nics:
        expected |= {f"IP:{a}" for a in observed}
    if wg:
        expected.add("IP:10.10.9.0")
    assert {str(s) for s in got} == expected
