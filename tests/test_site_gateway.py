"""Site gateways end to end on simulated VMs (tests/gateway_rig.py): a hub, one zone gateway and
SuperNodes behind it with no WireGuard of their own, all configured from CONTEXT by the real
flower-ctx inside each VM, with wireguard-go. Zone 2's networks have MTU 1450, as OpenNebula's VXLAN
networks do.

Timings are printed (pytest -s) and never asserted: bench/gateway.py measures them as ratios.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import requires_netns, requires_nft, requires_wireguard_go
from tests.gateway_rig import (
    GW_LAN,
    GW_WG,
    LAN_NET,
    TCP_SINK,
    TUNNEL_NET,
    GatewaySite,
    configure,
    flower_ctx,
    peers_b64,
    snmp,
    wg_keypair,
)
from tests.rig import Rig, SimVM, write_context

pytestmark = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.wireguard,
    pytest.mark.slow,
    requires_netns,
    requires_wireguard_go,
    requires_nft,
]

VXLAN_MTU = 1450


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewaySite]:
    with Rig("fcgw") as rig:
        s = GatewaySite(rig, tmp_path_factory.mktemp("fcgw-ctx"), wan_mtu=VXLAN_MTU, lan_mtu=VXLAN_MTU)
        try:
            yield s.build(supernodes=2, onegate=True)
        finally:
            s.close()


def ip(vm: SimVM, *args: str) -> str:
    return vm.run(["ip", *args]).stdout


def wg_go_pid(vm: SimVM) -> int:
    pids = [p for p in vm.pids() if Path(f"/proc/{p}/comm").read_text().strip().startswith("wireguard-go")]
    assert len(pids) == 1, pids
    return pids[0]


def routing_events(raw: bytes) -> list[str]:
    """``ip monitor`` lines, less the kernel's own IPv6 link-local set-up on young veths (DAD)."""
    return [line for line in raw.decode().splitlines()
            if not any(k in line for k in ("fe80:", "ff00::", "multicast", "ff02::"))]


def hub_state(site: GatewaySite) -> dict[str, str]:
    """Everything about the hub that a zone change could touch. Private keys appear hashed only;
    what WireGuard learns and counts by itself (handshake times, byte counters) is left out."""
    hub = site.hub
    assert hub is not None
    dump = hub.run(["wg", "show", "wg0", "dump"]).stdout.splitlines()
    iface = dump[0].split("\t")
    peers = sorted("\t".join(f[:4] + f[7:]) for f in (line.split("\t") for line in dump[1:]))
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(hub.path("/etc/wireguard").iterdir())}
    return {
        "interface": "\t".join([hashlib.sha256(iface[0].encode()).hexdigest(), *iface[1:]]),
        "peers": "\n".join(peers),
        "link": re.sub(r"\s+", " ", ip(hub, "-d", "link", "show", "wg0")),
        "addresses": ip(hub, "addr", "show", "dev", "wg0"),
        "routes": ip(hub, "route", "show", "table", "main"),
        "wireguard-go": str(wg_go_pid(hub)),
        "files": json.dumps(files),
        "context": hashlib.sha256(Path(site.hub_ctx()).read_bytes()).hexdigest(),
        "runtime": hub.path("/opt/flower/config/superlink.json").read_text(),
        "nft": hub.run(["nft", "list", "table", "inet", "flower_ctx"]).stdout,
    }


# --- configuration as built ---------------------------------------------------------------------


def test_gateway_forwards_and_supernodes_have_no_tunnel(site: GatewaySite) -> None:
    gw = site.gw
    assert gw is not None
    assert gw.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    # It never redirects its SuperNodes (the lab's gateway-restart drill: while wg0 was missing, a
    # one-NIC gateway sent them to the default gateway, cached for minutes).
    assert gw.run(["sh", "-c", "cat /proc/sys/net/ipv4/conf/*/send_redirects"]).stdout.split() == ["0"] * len(
        gw.run(["ls", "/proc/sys/net/ipv4/conf"]).stdout.split())
    # The MTU derived from the 1450 underlay (route to the hub's endpoint): 1450 - 80.
    assert "mtu 1370" in ip(gw, "link", "show", "wg0")
    assert "mtu 1420" in ip(site.hub, "link", "show", "wg0")  # the hub's underlay is 1500
    for sn in site.supernodes.values():
        assert sn.run(["ip", "link", "show", "wg0"], check=False).returncode != 0
        assert f"{TUNNEL_NET} via {GW_LAN} dev eth0 proto 77" in ip(sn, "route")
        assert "default" not in ip(sn, "route")  # only the gateway leads out of zone 2's network
    # The hub routes the whole zone through its one peer for it.
    assert f"{LAN_NET} dev wg0 proto 77" in ip(site.hub, "route")
    allowed = site.hub.run(["wg", "show", "wg0", "allowed-ips"]).stdout.split()
    assert allowed == [site.gw_key[1], f"{GW_WG}/32", LAN_NET]
    # `flower-ctx wg peer` on the gateway prints exactly that [Peer] (its zone network found live).
    out = flower_ctx(gw, "wg", "peer")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["[Peer]", f"PublicKey = {site.gw_key[1]}", f"AllowedIPs = {GW_WG}/32, {LAN_NET}",
                                      ""]


def test_supernodes_reach_the_hub_listener_through_the_gateway(site: GatewaySite) -> None:
    for name, sn in site.supernodes.items():
        ok, seconds, seen_from, mss, server_mss = site.tls_transfer(sn, 4 << 20)
        assert ok, (name, seen_from)
        # No address translation: the hub sees the SuperNode's own address.
        assert seen_from == str(sn.eth0_ip)
        # The gateway clamps the MSS to its wg0 (1370 - 40 = 1330) both ways, no reliance on ICMP;
        # TCP_MAXSEG shows it less the 12 bytes of the timestamp option. Unclamped, the SuperNode
        # (eth0 1450) and the hub (wg0 1420) would settle on 1380.
        assert 1330 - 12 <= mss <= 1330 and 1330 - 12 <= server_mss <= 1330, (mss, server_mss)
        print(f"{name}: 4 MiB TLS through the gateway in {seconds:.3f} s ({4 * 8 / seconds:.0f} Mbit/s)")


def test_supernodes_found_the_gateway_through_onegate(site: GatewaySite) -> None:
    for sn in site.supernodes.values():
        record = json.loads(sn.path("/etc/flower-ctx/gateway.json").read_text())
        assert record["address"] == GW_LAN and record["routes"] == [TUNNEL_NET]
        assert record["source"].startswith("OneGate: the gateway role's VM ")
        st = json.loads(flower_ctx(sn, "status", "--json").stdout)
        assert st["gateway_routes"]["present"] == {TUNNEL_NET: True}


def test_gateway_status_doctor_and_bootstrap(site: GatewaySite) -> None:
    gw = site.gw
    assert gw is not None
    out = flower_ctx(gw, "status", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    g = st["gateway"]
    assert st["role"] == "gateway" and g["forwarding"] is True and g["problems"] == []
    assert g["routes"] == {"expected": [], "missing": []}  # 10.10.9.0/24 is wg0's own connected network
    (hub,) = g["hub"]
    assert hub["public_key"] == site.hub_pub and 0 <= hub["handshake_age"] < 180
    assert g["superlink"]["ok"] and g["superlink"]["from"] == GW_LAN and g["superlink"]["kind"] == "ok"
    assert "verified with the configured CA" in g["superlink"]["message"]
    human = flower_ctx(gw, "status").stdout
    assert re.search(r"^forwarding\s+on$", human, re.M) and re.search(r"^superlink\s+ok: ", human, re.M)
    boot = flower_ctx(gw, "bootstrap", "--role", "gateway", "--context", str(site.gw_ctx()), "--wait", "30")
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "ready: gateway up: wg0 up, forwarding on" in boot.stdout
    assert "flower-gateway" not in boot.stdout  # no Flower on a gateway
    assert "readiness watch started" in boot.stdout
    published = site.onegate.user_template(int(site.gw_values["VMID"]))
    assert published["READY"] == "YES" and published["FL_ROLE"] == "gateway"
    assert published["FL_WG_PUBLIC_KEY"] == site.gw_key[1] and published["FL_WG_TUNNEL_ADDRESS"] == f"{GW_WG}/24"
    doc = flower_ctx(gw, "doctor", "--json", "--context", str(site.gw_ctx()))
    checks = json.loads(doc.stdout)
    assert doc.returncode == 0 and checks["problems"] == 0, doc.stdout
    names = {c["name"]: c["level"] for c in checks["checks"]}
    for name in ("wireguard", "forwarding", "routes", "hub", "superlink", "readiness watch", "onegate"):
        assert names[name] == "ok", (name, doc.stdout)


def test_gateway_names_a_hub_that_does_not_route_the_zone_back(site: GatewaySite) -> None:
    gw, hub = site.gw, site.hub
    assert gw is not None and hub is not None
    good = site.hub_values["FL_WG_PEERS"]
    try:
        r = configure(hub, "superlink", site.hub_ctx(FL_WG_PEERS=peers_b64(site.hub_peer(zone_net=""))))
        assert r.returncode == 0, r.stderr
        doc = flower_ctx(gw, "doctor", "--json", "--context", str(site.gw_ctx()))
        assert doc.returncode == 1
        (check,) = [c for c in json.loads(doc.stdout)["checks"] if c["name"] == "superlink"]
        assert check["level"] == "problem"
        assert "hub does not route this zone's network back" in check["message"]
        assert f"add {LAN_NET} to the AllowedIPs of this gateway's [Peer]" in check["fix"]
        sn = next(iter(site.supernodes.values()))
        assert site.tls_transfer(sn, 1000, timeout=3)[0] is False
    finally:
        r = configure(hub, "superlink", site.hub_ctx(FL_WG_PEERS=good))
        assert r.returncode == 0, r.stderr
    assert site.tls_transfer(next(iter(site.supernodes.values())), 1000)[0]


# --- growing the zone -----------------------------------------------------------------------------


def test_adding_a_supernode_changes_nothing_on_the_hub(site: GatewaySite) -> None:
    hub = site.hub
    assert hub is not None
    before = hub_state(site)
    monitor = hub.popen(["ip", "monitor", "link", "address", "route"], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # let ip monitor subscribe
        sn = site.add_supernode(f"sn{len(site.supernodes) + 1}")
        ok, _, seen_from, _, _ = site.tls_transfer(sn, 1 << 20)
        time.sleep(0.3)
    finally:
        monitor.send_signal(signal.SIGTERM)
    events = routing_events(monitor.communicate(timeout=5)[0])
    assert ok and seen_from == str(sn.eth0_ip)
    assert events == [], "netlink events on the hub while zone 2 grew:\n" + "\n".join(events)
    assert hub_state(site) == before
    # ... and a re-run of the hub's configure still finds nothing to do.
    r = configure(hub, "superlink", site.hub_ctx())
    assert r.returncode == 0 and not r.changes("wireguard") and not r.doc["changed"], r.stdout


# --- routes through the gateway, reconciled ----------------------------------------------------------


def test_supernode_routes_are_reconciled_like_wg0s(site: GatewaySite) -> None:
    name, sn = next(iter(site.supernodes.items()))
    ctx = site.sn_ctx(name)
    monitor = sn.popen(["ip", "monitor", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        again = configure(sn, "supernode", ctx)
        time.sleep(0.3)
    finally:
        monitor.send_signal(signal.SIGTERM)
    assert again.returncode == 0 and not again.changes("gateway routes"), again.stdout
    assert routing_events(monitor.communicate(timeout=5)[0]) == []
    # Drift: the route deleted by hand comes back; a route of someone else's is left alone.
    sn.run(["ip", "route", "del", TUNNEL_NET])
    sn.run(["ip", "route", "add", "203.0.113.0/24", "via", GW_LAN])
    r = configure(sn, "supernode", ctx)
    assert r.changes("gateway routes") == [f"route {TUNNEL_NET} via {GW_LAN}\tcreated"]
    assert "203.0.113.0/24 via 192.168.2.1 dev eth0 \n" in ip(sn, "route")  # not ours: no proto 77
    # One more network, then none: only ours are added and removed.
    r = configure(sn, "supernode", site.sn_ctx(name, FL_GATEWAY_ROUTES=f"{TUNNEL_NET},198.51.100.0/24"))
    assert r.changes("gateway routes") == [f"route 198.51.100.0/24 via {GW_LAN}\tcreated"]
    r = configure(sn, "supernode", site.sn_ctx(name, FL_GATEWAY_ROUTES=""))
    assert sorted(r.changes("gateway routes")) == sorted([f"route 198.51.100.0/24 via {GW_LAN}\tremoved",
                                                           f"route {TUNNEL_NET} via {GW_LAN}\tremoved"])
    assert "proto 77" not in ip(sn, "route") and "203.0.113.0/24" in ip(sn, "route")
    r = configure(sn, "supernode", site.sn_ctx(name, FL_GATEWAY_ROUTES=TUNNEL_NET))
    assert r.changes("gateway routes") == [f"route {TUNNEL_NET} via {GW_LAN}\tcreated"]
    sn.run(["ip", "route", "del", "203.0.113.0/24"])
    assert site.tls_transfer(sn, 1 << 16)[0]


def test_routes_that_would_cut_the_underlay_are_refused(site: GatewaySite) -> None:
    name, sn = next(iter(site.supernodes.items()))
    routes_before = ip(sn, "route")
    # The VM's own network through the gateway: refused by validation (ETH0_IP/ETH0_MASK) ...
    r = configure(sn, "supernode", site.sn_ctx(name, FL_GATEWAY_ROUTES=f"{TUNNEL_NET},{LAN_NET}"))
    assert r.returncode == 2 and "FL_GATEWAY_ROUTES" in r.stderr and "this VM's own network" in r.stderr
    # ... and by configure against the live routes when CONTEXT does not say the mask.
    values = {k: v for k, v in site.sn_values[name].items() if k not in ("ETH0_MASK", "ONEGATE_ENDPOINT", "VMID")}
    # Half of the VM's own network (the gateway and OneGate are not in it: validation has nothing to say).
    values.update(FL_GATEWAY_ADDRESS=GW_LAN, FL_GATEWAY_ROUTES=f"{TUNNEL_NET},192.168.2.128/25")
    bare = write_context(site.ctx_dir / name / "nomask.sh", values)
    r = configure(sn, "supernode", bare)
    assert r.returncode == 1 and "nothing changed" in r.stderr and "own network on eth0" in r.stderr
    assert ip(sn, "route") == routes_before
    # A gateway that is on none of the VM's networks.
    values.update(ETH0_MASK="255.255.255.0", FL_GATEWAY_ROUTES=TUNNEL_NET, FL_GATEWAY_ADDRESS="198.18.2.2")
    r = configure(sn, "supernode", write_context(site.ctx_dir / name / "far.sh", values))
    assert r.returncode == 1 and "on none of this VM's networks" in r.stderr
    assert ip(sn, "route") == routes_before
    configure(sn, "supernode", site.sn_ctx(name, FL_GATEWAY_ROUTES=TUNNEL_NET))
    # The hub: a zone's network that is its own network is refused, another zone's is fine.
    hub = site.hub
    assert hub is not None
    bad = peers_b64({"PublicKey": site.gw_key[1], "AllowedIPs": f"{GW_WG}/32, 198.18.1.0/24"})
    values = {**site.hub_values, "FL_WG_PEERS": bad}
    r = configure(hub, "superlink", write_context(site.ctx_dir / "hub" / "own.sh", values))
    assert r.returncode == 2 and "this VM's own network on ETH0" in r.stderr
    # A zone network that holds the gateway's own underlay address (the endpoint the hub learnt):
    # the hub would send the tunnel into itself.
    state = hub_state(site)
    bad = peers_b64({"PublicKey": site.gw_key[1], "AllowedIPs": f"{GW_WG}/32, {LAN_NET}, 198.18.2.0/24"})
    values = {**site.hub_values, "FL_WG_PEERS": bad}
    r = configure(hub, "superlink", write_context(site.ctx_dir / "hub" / "endpoint.sh", values))
    assert r.returncode == 1 and "nothing changed" in r.stderr, r.stderr
    assert "contains 198.18.2.2, the address peer" in r.stderr and "(learned endpoint)" in r.stderr
    assert hub_state(site)["peers"] == state["peers"] and hub_state(site)["routes"] == state["routes"]
    assert configure(hub, "superlink", site.hub_ctx()).returncode == 0  # clears the recorded failure


# --- the gateway restarting --------------------------------------------------------------------------


def test_gateway_restart_keeps_supernode_connections(site: GatewaySite) -> None:
    """A gateway reboot (wg0 recreated, forwarding and its nft table reset, configure at boot): a
    SuperNode's established TLS connection to the hub survives (forwarding keeps no per-connection
    state) and flows again once the tunnel is back; new connections work too."""
    name, sn = next(iter(site.supernodes.items()))
    client = site.echo_client(sn, duration=25)
    assert client.stdout is not None
    assert client.stdout.readline().startswith("connected")
    time.sleep(2)
    down, up, r = site.reboot_gateway()
    assert r.returncode == 0, r.stderr
    assert "wg0 interface\tcreated" in r.changes("wireguard")
    assert "ipv4 forwarding\tupdated" in r.changes("wireguard")
    out, err = client.communicate(timeout=90)
    assert client.returncode == 0, out + err
    echoes = [float(line.split()[1]) for line in out.splitlines() if line.startswith("echo ")]
    after = [t for t in echoes if t > up]
    assert after, "no echo after the gateway came back"
    gap = max(b - a for a, b in zip(echoes, echoes[1:], strict=False))
    print(f"gateway reboot: configure took {up - down:.2f} s; the SuperNode's connection stalled {gap:.2f} s "
          f"and resumed {after[0] - up:.2f} s after configure ended")
    ok, *_ = site.tls_transfer(sn, 1 << 20)
    assert ok


# --- MTU on a VXLAN-like underlay -------------------------------------------------------------------------

TCP_SEND = r"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = b"\0" * (1 << 16)
t0 = time.perf_counter()
c = socket.create_connection((host, port), timeout=60)
mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
left = size
while left:
    left -= c.send(buf[:min(left, len(buf))])
c.shutdown(socket.SHUT_WR)
got = int(c.recv(64))
print(got == size, f"{time.perf_counter() - t0:.4f}", mss)
"""


def test_mtu_derived_from_a_1450_underlay_does_not_fragment(tmp_path: Path) -> None:
    """Two VMs on an MTU 1450 segment: wg0 derived at 1370 carries a 16 MiB TCP transfer without a
    single IP fragment; FL_WG_MTU=1420 (the old default) makes every full-size tunnel packet 1500
    bytes on the 1450 link, which the sender's kernel splits in two."""
    with Rig("fcmtu") as rig:
        a, b = rig.add_vm("ma", 7, mtu=VXLAN_MTU), rig.add_vm("mb", 7, mtu=VXLAN_MTU)
        (ka, pa), (kb, pb) = wg_keypair(), wg_keypair()

        def ctx(name: str, key: str, addr: str, peer: str, endpoint: str, mtu: str) -> Path:
            return write_context(tmp_path / f"{name}.sh", {
                "FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": f"{addr}/24", "FL_WG_PRIVATE_KEY": key,
                "FL_WG_PEER_PUBLIC_KEY": peer, "FL_WG_PEER_ENDPOINT": f"{endpoint}:51820",
                "FL_WG_PEER_ALLOWED_IPS": "10.10.7.0/24", "FL_WG_MTU": mtu, "FL_TLS_ENABLED": "NO",
                "FL_SUPERLINK_ADDRESS": "10.10.7.1:9092"})

        def setup(mtu: str) -> list[str]:
            facts = []
            for vm, key, addr, peer, ep in ((a, ka, "10.10.7.1", pb, b.eth0_ip), (b, kb, "10.10.7.2", pa, a.eth0_ip)):
                r = configure(vm, "supernode", ctx(vm.name, key, addr, peer, str(ep), mtu))
                assert r.returncode == 0, r.stderr
                facts.append(r.facts("wireguard")["wg_mtu"])
            return facts

        facts = setup("0")
        assert facts == ["1370 (derived: eth0 MTU 1450 (route to 198.18.7.3) - 80)",
                         "1370 (derived: eth0 MTU 1450 (route to 198.18.7.2) - 80)"]
        assert not re.search(r"^MTU", a.path("/etc/wireguard/wg0.conf").read_text(), re.M)  # wg-quick derives it
        sink = a.popen([sys.executable, "-c", TCP_SINK, "10.10.7.1", "9000"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == b"listening"
            results = {}
            for mtu in ("0", "1420"):
                if mtu != "0":
                    setup(mtu)
                before_a, before_b = snmp(a), snmp(b)
                r = b.run([sys.executable, "-c", TCP_SEND, "10.10.7.1", "9000", str(16 << 20)], timeout=120)
                ok, seconds, mss = r.stdout.split()
                after_a, after_b = snmp(a), snmp(b)
                frags = after_b["Ip:FragCreates"] - before_b["Ip:FragCreates"]
                reasm = after_a["Ip:ReasmOKs"] - before_a["Ip:ReasmOKs"]
                results[mtu] = (ok == "True", float(seconds), int(mss), frags, reasm)
            print({k: f"ok={v[0]} {16 * 8 / v[1]:.0f} Mbit/s mss={v[2]} FragCreates={v[3]} ReasmOKs={v[4]}"
                   for k, v in results.items()})
            derived, old = results["0"], results["1420"]
            assert derived[0] and old[0]
            # TCP's MSS follows wg0's MTU (less 40 of headers and 12 of the timestamp option).
            assert derived[2] == 1370 - 52 and old[2] == 1420 - 52
            assert derived[3] == 0 and derived[4] == 0  # no fragment at all
            # Each full-size segment of 1420 becomes a 1500-byte UDP packet: two fragments each.
            assert old[3] >= 2 * (16 << 20) // 1380 * 0.9 and old[4] > 0
        finally:
            sink.kill()
            sink.wait()
            if sink.stdout:
                sink.stdout.close()


# --- the coordinator side: a hub gateway in zone A, the SuperLink on its private address ------------------


def test_hub_gateway_in_zone_a_routes_to_the_superlinks_private_address(tmp_path: Path) -> None:
    """Zone 1 with a hub gateway and the SuperLink (no WireGuard) behind it on 192.168.1.0/24; zone 2
    with its gateway. SuperNodes dial the SuperLink's private address, which its certificate names
    already (no FL_CERT_EXTRA_SAN); the SuperLink routes the tunnel and zone 2 back through the hub
    gateway (FL_GATEWAY_ROUTES); the hub gateway's check starts from its tunnel address."""
    from tests.gateway_rig import A_NET, HUB_LAN, LINK_LAN

    with Rig("fchgw") as rig:
        site = GatewaySite(rig, tmp_path)
        try:
            site.build(supernodes=2, hub_gateway=True)
            hub, link = site.hub, site.superlink
            assert hub is not None and link is not None
            assert link.run(["ip", "link", "show", "wg0"], check=False).returncode != 0
            assert f"{TUNNEL_NET} via {HUB_LAN} dev eth0 proto 77" in ip(link, "route")
            assert f"{LAN_NET} via {HUB_LAN} dev eth0 proto 77" in ip(link, "route")
            sans = json.loads(flower_ctx(link, "status", "--json").stdout)["tls"]["server"]["sans"]
            assert f"IP:{LINK_LAN}" in sans
            for sn in site.supernodes.values():
                assert f"{A_NET} via {GW_LAN} dev eth0 proto 77" in ip(sn, "route")
                ok, _, seen_from, *_ = site.tls_transfer(sn, 1 << 20)
                assert ok and seen_from == str(sn.eth0_ip)
            for gw, source in ((hub, "10.10.9.1"), (site.gw, GW_LAN)):
                assert gw is not None
                st = json.loads(flower_ctx(gw, "status", "--json").stdout)["gateway"]
                assert st["problems"] == [] and st["superlink"]["ok"] and st["superlink"]["from"] == source, st
            # The SuperLink without its route back for the tunnel network: the hub gateway names it.
            values = {"ETH0_IP": LINK_LAN, "ETH0_MASK": "255.255.255.0", "FL_TLS_ENABLED": "YES",
                      "FL_GATEWAY_ROUTES": LAN_NET, "FL_GATEWAY_ADDRESS": HUB_LAN}
            r = configure(link, "superlink", site.ctx("link", values))
            assert r.changes("gateway routes") == [f"route {TUNNEL_NET} via {HUB_LAN}\tremoved"]
            doc = flower_ctx(hub, "doctor", "--json", "--context", str(site.hub_ctx()))
            (check,) = [c for c in json.loads(doc.stdout)["checks"] if c["name"] == "superlink"]
            assert check["level"] == "problem" and "does not route the tunnel's networks back" in check["message"]
            assert "FL_GATEWAY_ROUTES" in check["fix"]
            values["FL_GATEWAY_ROUTES"] = f"{TUNNEL_NET},{LAN_NET}"
            assert configure(link, "superlink", site.ctx("link", values)).returncode == 0
            st = json.loads(flower_ctx(hub, "status", "--json").stdout)["gateway"]
            assert st["superlink"]["ok"], st
        finally:
            site.close()
