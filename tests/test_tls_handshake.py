"""Real grpcio handshakes with the generated material, and the probe's diagnosis of each failure."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flower_ctx import tls
from flower_ctx.model import SanEntry
from flower_ctx.paths import Paths
from flower_ctx.probe import ProbeKind, probe_tls
from tests import tls_helpers as h
from tests.conftest import REPO, requires_netns
from tests.factories import make_config, make_wg

NOW = datetime.datetime.now(datetime.timezone.utc)
DNS_NAME = "superlink.zone-a.example.org"


def fp(pem_bytes: bytes) -> str:
    """Fingerprint computed here, independently of flower_ctx.pem."""
    der = x509.load_pem_x509_certificate(pem_bytes).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def generated(stage: Path) -> Paths:
    paths = Paths(stage)
    tls.apply(make_config(cert_extra_san=(SanEntry("DNS", DNS_NAME),)), paths)
    return paths


@pytest.fixture
def served(generated: Paths) -> Iterator[tuple[Paths, dict[str, int]]]:
    """A grpcio server using the generated key and certificate on 127.0.0.1, 127.0.0.2 and ::1."""
    hosts = ["127.0.0.1", "127.0.0.2"] + (["::1"] if _have_ipv6_loopback() else [])
    server, ports = h.start_server(generated.server_key.read_bytes(), generated.server_cert.read_bytes(), hosts)
    try:
        yield generated, dict(zip(hosts, ports, strict=True))
    finally:
        server.stop(0)


def test_grpc_client_trusting_only_the_ca_dials_each_san(served: tuple[Paths, dict[str, int]]) -> None:
    paths, ports = served
    ca = paths.ca_cert.read_bytes()
    assert h.grpc_call(f"127.0.0.1:{ports['127.0.0.1']}", ca) == "ok"
    if "::1" in ports:
        assert h.grpc_call(f"[::1]:{ports['::1']}", ca) == "ok"
        assert probe_tls("::1", ports["::1"], ca).kind is ProbeKind.OK
    # A DNS: SAN, the name mapped onto the loopback address through the target name override.
    assert h.grpc_call(f"127.0.0.1:{ports['127.0.0.1']}", ca, name_override=DNS_NAME) == "ok"
    ok = probe_tls("127.0.0.1", ports["127.0.0.1"], ca, server_name=DNS_NAME)
    assert ok.kind is ProbeKind.OK and ok.ca_fingerprint == fp(ca)
    assert f"DNS:{DNS_NAME}" in ok.sans


def test_dial_to_an_address_not_in_the_sans_is_rejected_and_diagnosed(
    served: tuple[Paths, dict[str, int]],
) -> None:
    paths, ports = served
    ca = paths.ca_cert.read_bytes()
    assert h.grpc_call(f"127.0.0.2:{ports['127.0.0.2']}", ca) == "error:UNAVAILABLE"
    result = probe_tls("127.0.0.2", ports["127.0.0.2"], ca)
    assert result.kind is ProbeKind.NAME_MISMATCH
    assert "127.0.0.2" in result.message and "IP:127.0.0.1" in result.message and DNS_NAME in result.message
    assert "FL_CERT_EXTRA_SAN" in result.message and "IP:127.0.0.2" in result.message
    # A DNS name not in the certificate, through the override.
    assert h.grpc_call(f"127.0.0.1:{ports['127.0.0.1']}", ca, name_override="other.example.org") != "ok"
    named = probe_tls("127.0.0.1", ports["127.0.0.1"], ca, server_name="other.example.org")
    assert named.kind is ProbeKind.NAME_MISMATCH and "DNS:other.example.org" in named.message


def test_client_with_another_ca_is_rejected_and_both_fingerprints_named(
    served: tuple[Paths, dict[str, int]],
) -> None:
    paths, ports = served
    other = h.build_ca("Zone B CA")
    target = f"127.0.0.1:{ports['127.0.0.1']}"
    assert h.grpc_call(target, other.cert_pem) == "error:UNAVAILABLE"
    result = probe_tls("127.0.0.1", ports["127.0.0.1"], other.cert_pem)
    assert result.kind is ProbeKind.CA_MISMATCH
    mine, theirs = fp(other.cert_pem), fp(paths.ca_cert.read_bytes())
    assert mine in result.message and theirs in result.message
    assert result.ca_fingerprint == mine and result.issuer_fingerprint == theirs
    assert "FL_SSL_CA_CERTFILE" in result.message


@pytest.mark.parametrize("kind", ["expired", "not_yet_valid"])
def test_expired_and_not_yet_valid_certificates(kind: str) -> None:
    ca = h.build_ca("Dated CA")
    if kind == "expired":
        srv = h.build_server(ca, ["IP:127.0.0.1"], NOW - datetime.timedelta(days=30), NOW - datetime.timedelta(days=1))
    else:
        srv = h.build_server(ca, ["IP:127.0.0.1"], NOW + datetime.timedelta(days=1), NOW + datetime.timedelta(days=30))
    server, ports = h.start_server(srv.key_pem, srv.cert_pem, ["127.0.0.1"])
    try:
        assert h.grpc_call(f"127.0.0.1:{ports[0]}", ca.cert_pem) == "error:UNAVAILABLE"
        result = probe_tls("127.0.0.1", ports[0], ca.cert_pem)
    finally:
        server.stop(0)
    assert result.kind is ProbeKind(kind)
    assert ("expired on" if kind == "expired" else "not valid before") in result.message


def test_unreachable_not_tls_and_bad_ca() -> None:
    ca = h.build_ca("Some CA")
    port = h.free_port()  # bound then closed: nothing listens there
    result = probe_tls("127.0.0.1", port, ca.cert_pem, timeout=2)
    assert result.kind is ProbeKind.UNREACHABLE and "refused" in result.message.lower()

    server, ports = h.start_server(b"", None, ["127.0.0.1"])  # a plaintext gRPC server
    try:
        result = probe_tls("127.0.0.1", ports[0], ca.cert_pem, timeout=3)
    finally:
        server.stop(0)
    assert result.kind is ProbeKind.NOT_TLS and "FL_TLS_ENABLED" in result.message

    result = probe_tls("127.0.0.1", port, b"not a certificate")
    assert result.kind is ProbeKind.BAD_CA and "FL_SSL_CA_CERTFILE" in result.message

    result = probe_tls("no-such-host.invalid", 9092, ca.cert_pem, timeout=2)
    assert result.kind is ProbeKind.UNREACHABLE and "resolve" in result.message


# ------------------------------------------------------------------------------------------ namespaces


def _ns(*argv: str, ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, timeout=10)


def _remove_leftovers() -> None:
    """Namespaces of earlier runs of these tests whose process is gone (a crashed or killed run)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        m = re.fullmatch(r"fctl-(\d+)", line.split()[0]) if line.strip() else None
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", m.group(0)], capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A private network namespace (unique name; a same-name leftover is removed first)."""
    name = f"fctl-{os.getpid()}"
    _remove_leftovers()
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        _ns("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in_ns(ns: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_CTX_FAULT")}
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@requires_netns
def test_wireguard_address_in_a_namespace(netns: str, stage: Path) -> None:
    """The WG address is a SAN: a grpcio server on it in a namespace accepts a client trusting only the
    CA; an address of the same VM that is not in the SANs is rejected with the probe's diagnosis."""
    # No dummy module here: the namespace's own loopback carries the tunnel-style addresses.
    _ns("ip", "addr", "add", "10.10.9.0/31", "dev", "lo", ns=netns)
    _ns("ip", "addr", "add", "10.10.8.5/32", "dev", "lo", ns=netns)
    paths = Paths(stage)
    tls.apply(make_config(wg=make_wg()), paths)
    proc = _in_ns(netns, ["-m", "tests.tls_helpers", "dial-matrix", str(paths.certs_dir), "10.10.9.0", "10.10.8.5"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["10.10.9.0"]["grpc"] == "ok" and out["10.10.9.0"]["probe"] == "ok"
    assert out["10.10.8.5"]["grpc"] == "error:UNAVAILABLE"
    assert out["10.10.8.5"]["probe"] == "name_mismatch"
    assert "10.10.8.5" in out["10.10.8.5"]["message"] and "IP:10.10.9.0" in out["10.10.8.5"]["message"]


@requires_netns
def test_sans_from_the_default_route_interface_without_nics(netns: str, stage: Path) -> None:
    """No ETHn_IP in CONTEXT: the addresses of the default route's interface go into the SANs
    (global ones only), read inside a namespace whose interfaces the test made."""
    # A veth pair with both ends inside the namespace stands in for the VM's NIC (no dummy module).
    _ns("ip", "link", "add", "fctleth0", "type", "veth", "peer", "name", "fctleth1", ns=netns)
    _ns("ip", "link", "set", "fctleth1", "up", ns=netns)
    _ns("ip", "link", "set", "fctleth0", "up", ns=netns)
    _ns("ip", "addr", "add", "198.51.100.7/24", "dev", "fctleth0", ns=netns)
    _ns("ip", "-6", "addr", "add", "2001:db8:5::7/64", "dev", "fctleth0", "nodad", ns=netns)
    _ns("ip", "route", "add", "default", "via", "198.51.100.1", "dev", "fctleth0", ns=netns)
    _ns("ip", "addr", "add", "203.0.113.50/24", "dev", "fctleth1", ns=netns)  # not on the default route
    code = (
        "import sys, pathlib; from flower_ctx import tls; from flower_ctx.paths import Paths;"
        "from tests.factories import make_config;"
        "r = tls.apply(make_config(nics=()), Paths(pathlib.Path(sys.argv[1])));"
        "print(r.facts['server_sans'])"
    )
    proc = _in_ns(netns, ["-c", code, str(stage)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    sans = proc.stdout.strip().split(",")
    assert sans == ["DNS:localhost", "IP:127.0.0.1", "IP:::1", "IP:198.51.100.7", "IP:2001:db8:5::7"]
    cert = x509.load_pem_x509_certificates(Paths(stage).server_cert.read_bytes())[0]
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert {str(i) for i in ips} == {"127.0.0.1", "::1", "198.51.100.7", "2001:db8:5::7"}
