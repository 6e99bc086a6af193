"""Each diagnosis of `flower-ctx doctor`, triggered for real in simulated VMs: wrong CA, address not
in the SANs, SuperLink down, expired certificate, WireGuard peer without a handshake. Each message
names the fix."""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import requires_flower, requires_netns, requires_wireguard_go
from tests.rig import Rig, SimVM, write_context
from tests.tls_helpers import Issued, build_ca, build_server

pytestmark = [requires_netns, requires_flower, pytest.mark.root, pytest.mark.netns, pytest.mark.flower,
              pytest.mark.slow]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
NOW = datetime.datetime.now(datetime.timezone.utc)


def fctx(vm: SimVM, *args: str, check: bool = True) -> tuple[int, str]:
    out = vm.run([sys.executable, "-m", "flower_ctx", *args], check=check, timeout=180, env=ENV)
    return out.returncode, out.stdout + out.stderr


def boot(vm: SimVM, values: dict[str, str]) -> None:
    base = {"ETH0_IP": str(vm.eth0_ip), "TOKEN": "YES", "REPORT_READY": "YES", "FL_LOG_LEVEL": "INFO"}
    write_context(vm.path("/run/one-context/context.sh.network"), {**base, **values})


def doctor(vm: SimVM, role: str) -> tuple[int, dict[str, dict[str, str]]]:
    code, out = fctx(vm, "doctor", "--role", role, "--json", check=False)
    doc = json.loads(out[: out.rindex("}") + 1])
    checks: dict[str, dict[str, str]] = {}
    for c in doc["checks"]:
        checks.setdefault(c["name"], c)
    return code, checks


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[SimVM, SimVM]]:
    with Rig("fcdr") as rig:
        link = rig.add_vm("link", 1)
        node = rig.add_vm("node", 2)
        boot(link, {"FL_TLS_ENABLED": "YES"})
        fctx(link, "configure", "--role", "superlink")
        _, out = fctx(link, "bootstrap", "--role", "superlink", "--wait", "90")
        assert "ready: Fleet API" in out, out
        yield link, node


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def configure_node(node: SimVM, **values: str) -> None:
    boot(node, values)
    fctx(node, "configure", "--role", "supernode")


def test_healthy_link_has_no_problem(lab: tuple[SimVM, SimVM]) -> None:
    link, node = lab
    code, checks = doctor(link, "superlink")
    assert code == 0, checks
    assert checks["fleet api"]["level"] == "ok" and checks["server sans"]["level"] == "ok"
    ca = link.path("/opt/flower/certs/ca.crt").read_bytes()
    configure_node(node, FL_SUPERLINK_ADDRESS=f"{link.eth0_ip}:9092", FL_SSL_CA_CERTFILE=b64(ca))
    code, checks = doctor(node, "supernode")
    assert checks["superlink"]["level"] == "ok", checks["superlink"]
    # The SuperNode itself is not started here: doctor says so, with the fix.
    assert code == 1 and checks["service"]["level"] == "problem" and "bootstrap" in checks["service"]["fix"]


def test_wrong_ca(lab: tuple[SimVM, SimVM]) -> None:
    link, node = lab
    other = build_ca("Somebody else's CA")
    configure_node(node, FL_SUPERLINK_ADDRESS=f"{link.eth0_ip}:9092", FL_SSL_CA_CERTFILE=b64(other.cert_pem))
    code, checks = doctor(node, "supernode")
    c = checks["superlink"]
    assert code == 1 and c["level"] == "problem"
    link_ca = x509.load_pem_x509_certificate(link.path("/opt/flower/certs/ca.crt").read_bytes())
    from flower_ctx.pem import fingerprint

    assert fingerprint(other.cert) in c["message"] and fingerprint(link_ca) in c["message"]
    assert "FL_SSL_CA_CERTFILE" in c["fix"] and "ca export" in c["fix"]


def test_address_not_in_sans(lab: tuple[SimVM, SimVM]) -> None:
    link, node = lab
    # The SuperLink is also reachable on a second address (say a NAT or tunnel address) that its
    # certificate does not name because FL_CERT_EXTRA_SAN was not set.
    link.run(["ip", "addr", "add", "198.18.1.77/32", "dev", "eth0"])
    node.run(["ip", "route", "add", "198.18.1.77/32", "via", str(node.gateway)], check=False)
    ca = link.path("/opt/flower/certs/ca.crt").read_bytes()
    configure_node(node, FL_SUPERLINK_ADDRESS="198.18.1.77:9092", FL_SSL_CA_CERTFILE=b64(ca))
    code, checks = doctor(node, "supernode")
    c = checks["superlink"]
    assert code == 1 and c["level"] == "problem", c
    assert "198.18.1.77" in c["message"] and f"IP:{link.eth0_ip}" in c["message"]
    assert c["fix"] == "set FL_CERT_EXTRA_SAN=IP:198.18.1.77 on the SuperLink"


def test_expired_certificate_then_superlink_down(lab: tuple[SimVM, SimVM]) -> None:
    link, node = lab
    certs = "/opt/flower/certs/"
    ca = Issued(
        x509.load_pem_x509_certificate(link.path(certs + "ca.crt").read_bytes()),
        serialization.load_pem_private_key(link.path(certs + "ca.key").read_bytes(), None),
    )
    # A VM that missed its renewal: the server certificate under the same CA expired yesterday.
    expired = build_server(ca, [f"IP:{link.eth0_ip}", "IP:127.0.0.1", "DNS:localhost"],
                           not_before=NOW - datetime.timedelta(days=400), not_after=NOW - datetime.timedelta(days=1))
    link.path(certs + "server.key").write_bytes(expired.key_pem)
    link.path(certs + "server.pem").write_bytes(expired.cert_pem + ca.cert_pem)
    code, out = fctx(link, "bootstrap", "--role", "superlink", "--wait", "20", check=False)
    # No restart: the running SuperLink reloads its certificate files itself (certreload), serves the
    # expired one, and the readiness handshake names why it cannot verify.
    assert "unchanged" in out and "expired on" in out and code == 1, out
    code, checks = doctor(link, "superlink")
    assert checks["server cert"]["level"] == "problem" and "expired" in checks["server cert"]["message"]
    assert "flower-ctx configure" in checks["server cert"]["fix"]
    configure_node(node, FL_SUPERLINK_ADDRESS=f"{link.eth0_ip}:9092", FL_SSL_CA_CERTFILE=b64(ca.cert_pem))
    code, checks = doctor(node, "supernode")
    assert checks["superlink"]["level"] == "problem" and "expired" in checks["superlink"]["message"]
    assert "configure on the SuperLink" in checks["superlink"]["fix"]

    # configure repairs it (re-issue within 30 days of expiry, and after); Flower reloads it.
    _, out = fctx(link, "configure", "--role", "superlink")
    assert "server.pem" in out
    _, out = fctx(link, "bootstrap", "--role", "superlink", "--wait", "90")
    assert "ready: Fleet API" in out, out
    code, checks = doctor(node, "supernode")
    assert checks["superlink"]["level"] == "ok", checks["superlink"]

    # SuperLink down: stop it (by its PID file) and ask again.
    pid = int(link.path("/opt/flower/run/superlink.pid").read_text().split()[0])
    os.killpg(pid, signal.SIGTERM)  # the process group: Flower's own children go too
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the SuperLink did not stop"
    code, checks = doctor(node, "supernode")
    c = checks["superlink"]
    assert c["level"] == "problem" and "9092" in c["message"], c
    assert "flower-ctx status there" in c["fix"] and "TCP 9092" in c["fix"]
    code, checks = doctor(link, "superlink")
    assert checks["service"]["level"] == "problem" and "bootstrap" in checks["service"]["fix"]


@requires_wireguard_go
def test_wireguard_peer_without_handshake(lab: tuple[SimVM, SimVM]) -> None:
    _, node = lab
    from flower_ctx.wireguard.keys import generate_private_key, public_key_from_private

    hub_pub = public_key_from_private(generate_private_key())
    # The hub's endpoint is an address nobody answers on: the tunnel never completes a handshake.
    configure_node(node, FL_TLS_ENABLED="NO", FL_SUPERLINK_ADDRESS="10.10.9.1:9092", FL_WG_ENABLED="YES",
                   FL_WG_ADDRESS="10.10.9.2/24", FL_WG_PEER_PUBLIC_KEY=hub_pub,
                   FL_WG_PEER_ENDPOINT="198.18.9.9:51820", FL_WG_PEER_ALLOWED_IPS="10.10.9.0/24")
    code, checks = doctor(node, "supernode")
    peer = checks["wg peer"]
    assert code == 1 and peer["level"] == "problem" and "never completed a handshake" in peer["message"]
    assert "UDP 51820" in peer["fix"] and "public key" in peer["fix"]
    assert "never completed a handshake" in checks["superlink"]["fix"]
