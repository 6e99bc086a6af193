"""The appliance's own nftables table (issue 13): the Fleet port only from FL_FLEET_ALLOWED_SOURCES
(and only on wg0 when asked), Flower's loopback ports never from outside, nothing else touched,
re-runs change nothing, FL_FIREWALL=NO removes it. Proven with real connections between
simulated VMs."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator

import pytest

from flower_ctx.firewall.rules import Ports, ruleset, table_text
from tests.conftest import requires_netns, requires_nft
from tests.rig import Rig, SimVM, write_context

LISTEN = ("import socket,sys,time\nss=[]\nfor p in sys.argv[1:]:\n s=socket.socket();"
          "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',int(p)));s.listen();ss.append(s)\n"
          "print('up',flush=True)\ntime.sleep(600)\n")
CONNECT = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1.5);"
           "print('open')\nexcept OSError as e:\n print('closed',type(e).__name__)\n")


def test_ruleset_text_is_stable_and_complete() -> None:
    nets = [ipaddress.ip_network("198.18.2.0/24"), ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("10.0.0.0/8")]
    body, digest = ruleset(nets, True, Ports(wireguard=51820))
    again, digest2 = ruleset(list(reversed(nets)), True, Ports(wireguard=51820))
    assert (body, digest) == (again, digest2)  # order of the operator's list does not matter
    assert 'tcp dport 9092 iifname != "wg0" drop' in body and "udp dport 51820 accept" in body
    assert "elements = { 10.0.0.0/8, 198.18.2.0/24 }" in body and "fd00::/8" in body
    assert body.index("@fleet_v4 accept") < body.index("tcp dport 9092 drop")
    open_body, _ = ruleset([], False, Ports())
    assert "9092" not in open_body and "tcp dport { 8000, 9091, 9093 } drop" in open_body
    assert table_text(body, digest).startswith('table inet flower_ctx {\n  comment "flower-ctx ')


@pytest.fixture
def rig() -> Iterator[Rig]:
    with Rig("fcfw") as r:
        r.add_vm("link", 1)
        r.add_vm("ok", 2)
        r.add_vm("bad", 3)
        yield r


def _configure(vm: SimVM, **values: str) -> str:
    ctx = vm.path("/run/one-context/context.sh.network")
    write_context(ctx, {"ETH0_IP": str(vm.eth0_ip), **values})
    out = vm.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "superlink"], check=False, timeout=120,
                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _probe(vm: SimVM, target: SimVM, port: int) -> str:
    return vm.python(CONNECT, str(target.eth0_ip), str(port)).stdout.split()[0]


@requires_netns
@requires_nft
@pytest.mark.root
@pytest.mark.netns
def test_fleet_port_only_from_allowed_sources_and_loopback_ports_never(rig: Rig) -> None:
    link, ok, bad = rig.vms["link"], rig.vms["ok"], rig.vms["bad"]
    listener = link.popen([sys.executable, "-c", LISTEN, "9092", "8000"], stdout=-1, stderr=-1)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == b"up"
        # Before: everything is reachable (a listener on 0.0.0.0 is what the attack would use).
        assert _probe(bad, link, 9092) == "open" and _probe(ok, link, 8000) == "open"
        before = link.run(["nft", "list", "ruleset"]).stdout

        out = _configure(link, FL_FLEET_ALLOWED_SOURCES=f"{ok.eth0_ip}/32,192.0.2.0/24")
        assert next(ln for ln in out.splitlines() if "nftables table" in ln).split()[0] == "created", out
        assert _probe(ok, link, 9092) == "open"
        assert _probe(bad, link, 9092) == "closed"  # outside FL_FLEET_ALLOWED_SOURCES: never connects
        assert _probe(ok, link, 8000) == "closed"  # Flower's loopback API, even if bound wide
        after = link.run(["nft", "list", "ruleset"]).stdout
        assert before in after and after.count("table ") == before.count("table ") + 1  # nothing else touched

        again = _configure(link, FL_FLEET_ALLOWED_SOURCES=f"{ok.eth0_ip}/32,192.0.2.0/24")
        line = next(ln for ln in again.splitlines() if "nftables table" in ln)
        assert line.split()[0] == "unchanged", again

        # On wg0 only: no wg0 here, so the Fleet port is closed to every source.
        off = _configure(link, FL_FIREWALL="NO")
        assert "removed" in next(ln for ln in off.splitlines() if "nftables table" in ln)
        assert link.run(["nft", "list", "ruleset"]).stdout == before
        assert _probe(bad, link, 9092) == "open"
    finally:
        listener.kill()
        listener.wait(timeout=10)
