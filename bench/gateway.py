"""Site gateway figures, each as a ratio against a baseline measured in the same run (needs root,
ip netns, wireguard-go, nftables). Nothing is asserted; the machine's other load moves the absolute
numbers, so every figure is the median of --runs repetitions taken in turn.

1. A model update of --mb MB (TLS, to the hub's Fleet port) from a SuperNode behind the zone's
   gateway, against a SuperNode with its own WireGuard tunnel and a SuperNode dialling the hub's
   public address (no tunnel). Zones 2-4 have MTU --mtu (1450: OpenNebula's VXLAN networks).
2. wireguard-go on a --mtu underlay: 16 MiB of TCP through wg0 with the derived MTU (underlay - 80),
   with the IPv4-only figure (underlay - 60) and with the old fixed 1420; IP fragments counted.
3. The gateway rebooting (wg0 gone, forwarding and its nft table reset, configure as at boot): how
   long a SuperNode's established TLS connection stalls, and how soon it flows after configure.

    python bench/gateway.py [--runs N] [--mb MB] [--mtu MTU]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.gateway_rig import (  # noqa: E402
    FLEET_PORT,
    HUB_WG,
    TCP_SINK,
    GatewaySite,
    configure,
    peers_b64,
    snmp,
    wg_keypair,
)
from tests.rig import Rig, write_context  # noqa: E402

TCP_SEND = r"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = b"\0" * (1 << 16)
t0 = time.perf_counter()
c = socket.create_connection((host, port), timeout=60)
left = size
while left:
    left -= c.send(buf[:min(left, len(buf))])
c.shutdown(socket.SHUT_WR)
assert int(c.recv(64)) == size
print(f"{time.perf_counter() - t0:.4f}")
"""


def mbit(size: int, seconds: float) -> float:
    return size * 8 / seconds / 1e6


def wg_cpu(*vms: object) -> float:
    """CPU seconds (user + system) the wireguard-go daemons of these VMs have used so far: a figure
    the machine's other load does not inflate the way it does wall-clock throughput."""
    import os

    total = 0
    for vm in vms:
        for pid in vm.pids():  # type: ignore[attr-defined]
            try:
                if not Path(f"/proc/{pid}/comm").read_text().startswith("wireguard-go"):
                    continue
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def paths(runs: int, mb: int, mtu: int, tmp: Path) -> None:
    size = mb << 20
    with Rig("fcbgw") as rig:
        site = GatewaySite(rig, tmp / "paths", wan_mtu=mtu, lan_mtu=mtu)
        try:
            site.build(supernodes=1)
            assert site.hub is not None
            (sn,) = site.supernodes.values()
            # A SuperNode with its own tunnel (zone 3), one on the public path (zone 4).
            tun, pub = rig.add_vm("tun", 3, mtu=mtu), rig.add_vm("pub", 4, mtu=mtu)
            tkey, tpub = wg_keypair()
            r = configure(site.hub, "superlink", site.hub_ctx(FL_WG_PEERS=peers_b64(
                site.hub_peer(), {"PublicKey": tpub, "AllowedIPs": "10.10.9.3/32"})))
            assert r.returncode == 0, r.stderr
            common = {"FL_SSL_CA_CERTFILE": site.ca_b64, "FL_TLS_ENABLED": "YES"}
            for vm, values in (
                (tun, {**common, "FL_SUPERLINK_ADDRESS": f"{HUB_WG}:{FLEET_PORT}", "FL_WG_ENABLED": "YES",
                       "FL_WG_ADDRESS": "10.10.9.3/24", "FL_WG_PRIVATE_KEY": tkey,
                       "FL_WG_PEER_PUBLIC_KEY": site.hub_pub, "FL_WG_PEER_ENDPOINT": f"{site.hub.eth0_ip}:51820",
                       "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/24"}),
                (pub, {**common, "FL_SUPERLINK_ADDRESS": f"{site.hub.eth0_ip}:{FLEET_PORT}"}),
            ):
                r = configure(vm, "supernode", site.ctx(vm.name, values))
                assert r.returncode == 0, r.stderr
            site.serve_tls(str(site.hub.eth0_ip))  # the public path: the Fleet port on the hub's own address
            cases = {"gateway": (sn, HUB_WG), "own tunnel": (tun, HUB_WG), "public": (pub, str(site.hub.eth0_ip))}
            for vm, host in cases.values():  # warm up (handshakes, ARP)
                assert site.tls_transfer(vm, 1 << 16, host=host)[0]
            times: dict[str, list[float]] = {k: [] for k in cases}
            cpus: dict[str, list[float]] = {k: [] for k in cases}
            tunnel_vms = {"gateway": (site.gw, site.hub), "own tunnel": (tun, site.hub), "public": ()}
            for _ in range(runs):
                for name, (vm, host) in cases.items():
                    cpu = wg_cpu(*tunnel_vms[name])
                    ok, seconds, *_ = site.tls_transfer(vm, size, host=host, timeout=120)
                    assert ok, name
                    times[name].append(seconds)
                    cpus[name].append(wg_cpu(*tunnel_vms[name]) - cpu)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"\n1. {mb} MB model update over TLS to the hub's Fleet port, underlay MTU {mtu}, median of {runs}")
            for name, seconds in med.items():
                print(f"   {name:<11} {seconds:7.3f} s  {mbit(size, seconds):6.0f} Mbit/s  "
                      f"wireguard-go CPU (both ends) {statistics.median(cpus[name]):5.2f} s")
            print(f"   ratio gateway / own tunnel throughput: {med['own tunnel'] / med['gateway']:.2f}")
            print(f"   ratio gateway / public path throughput: {med['public'] / med['gateway']:.2f}")
            print(f"   ratio own tunnel / public path throughput: {med['public'] / med['own tunnel']:.2f}")
        finally:
            site.close()


def mtu_figures(runs: int, mtu: int, tmp: Path) -> None:
    size = 16 << 20
    with Rig("fcbmtu") as rig:
        a, b = rig.add_vm("ma", 7, mtu=mtu), rig.add_vm("mb", 7, mtu=mtu)
        (ka, pa), (kb, pb) = wg_keypair(), wg_keypair()

        def setup(wg_mtu: int) -> None:
            for vm, key, addr, peer, ep in ((a, ka, "10.10.7.1", pb, b.eth0_ip), (b, kb, "10.10.7.2", pa, a.eth0_ip)):
                ctx = write_context(tmp / f"{vm.name}.sh", {
                    "FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": f"{addr}/24", "FL_WG_PRIVATE_KEY": key,
                    "FL_WG_PEER_PUBLIC_KEY": peer, "FL_WG_PEER_ENDPOINT": f"{ep}:51820",
                    "FL_WG_PEER_ALLOWED_IPS": "10.10.7.0/24", "FL_WG_MTU": str(wg_mtu), "FL_TLS_ENABLED": "NO",
                    "FL_SUPERLINK_ADDRESS": "10.10.7.1:9092"})
                r = configure(vm, "supernode", ctx)
                assert r.returncode == 0, r.stderr

        setup(0)
        sink = a.popen([sys.executable, "-c", TCP_SINK, "10.10.7.1", "9000"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == b"listening"
            variants = {f"derived {mtu - 80} (underlay - 80)": 0, f"IPv4-only {mtu - 60} (underlay - 60)": mtu - 60,
                        "fixed 1420 (old default)": 1420}
            results: dict[str, tuple[list[float], list[int], list[float]]] = {k: ([], [], []) for k in variants}
            for _ in range(runs):
                for name, wg_mtu in variants.items():
                    setup(wg_mtu)
                    before, cpu = snmp(b), wg_cpu(a, b)
                    r = b.run([sys.executable, "-c", TCP_SEND, "10.10.7.1", "9000", str(size)], timeout=120)
                    results[name][0].append(float(r.stdout))
                    results[name][1].append(snmp(b)["Ip:FragCreates"] - before["Ip:FragCreates"])
                    results[name][2].append(wg_cpu(a, b) - cpu)
            print(f"\n2. 16 MiB of TCP through wireguard-go on an MTU {mtu} underlay, median of {runs}")
            first = next(iter(variants))
            base, base_cpu = statistics.median(results[first][0]), statistics.median(results[first][2])
            for name, (secs, frags, cpus) in results.items():
                med, cpu = statistics.median(secs), statistics.median(cpus)
                print(f"   {name:<30} {mbit(size, med):6.0f} Mbit/s  IP fragments sent {statistics.median(frags):7.0f}"
                      f"  wireguard-go CPU {cpu:5.2f} s  throughput ratio to derived {base / med:.2f}, "
                      f"CPU ratio {cpu / base_cpu if base_cpu else float('nan'):.2f}")
        finally:
            sink.kill()
            sink.wait()
            if sink.stdout:
                sink.stdout.close()


def reboot_figures(runs: int, mtu: int, tmp: Path) -> None:
    with Rig("fcbrb") as rig:
        site = GatewaySite(rig, tmp / "reboot", wan_mtu=mtu, lan_mtu=mtu)
        try:
            site.build(supernodes=1)
            (sn,) = site.supernodes.values()
            stalls, resumes, configures = [], [], []
            for _ in range(runs):
                client = site.echo_client(sn, duration=12, period=0.02)
                assert client.stdout is not None and client.stdout.readline().startswith("connected")
                time.sleep(2)
                down, up, r = site.reboot_gateway()
                assert r.returncode == 0, r.stderr
                out, _ = client.communicate(timeout=120)
                assert client.returncode == 0, out
                echoes = [float(line.split()[1]) for line in out.splitlines() if line.startswith("echo ")]
                stalls.append(max(b - a for a, b in zip(echoes, echoes[1:], strict=False)))
                resumes.append(min(t for t in echoes if t > up) - up)
                configures.append(up - down)
            print(f"\n3. Gateway reboot with a SuperNode's TLS connection open (echo every 20 ms), median of {runs}")
            print(f"   configure at boot (wg0, forwarding, MSS clamp): {statistics.median(configures):.2f} s")
            print(f"   the connection stalled {statistics.median(stalls):.2f} s in all, and flowed again "
                  f"{statistics.median(resumes):.2f} s after configure ended (same connection: no reconnect)")
            print(f"   ratio stall / configure time: {statistics.median(stalls) / statistics.median(configures):.2f}")
        finally:
            site.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=32, help="model update size in MB (default 32)")
    parser.add_argument("--mtu", type=int, default=1450, help="underlay MTU of the training zones (default 1450)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fc-bench-gw-") as tmp:
        paths(args.runs, args.mb, args.mtu, Path(tmp))
        mtu_figures(args.runs, args.mtu, Path(tmp))
        reboot_figures(max(1, args.runs // 2), args.mtu, Path(tmp))


if __name__ == "__main__":
    main()
