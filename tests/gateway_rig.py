"""A zone behind a site gateway, built from simulated VMs (tests/rig): the pieces the site-gateway
tests, bench/gateway.py and (later) the three-zone lab drive.

    zone 1 (198.18.1.0/24)            WAN router             zone 2 (198.18.2.0/24, MTU wan_mtu)
     hub    eth0 198.18.1.2   <---------------------------->  gw   eth0 198.18.2.2
            wg0  10.10.9.1/24    <== WireGuard UDP 51820 ==>        wg0  10.10.9.2/24
                                                                    eth1 192.168.2.1/24 --+
                                                           zone 2's VM network (lan_mtu)  |
                                                           192.168.2.0/24: sn1 .11, sn2 .12, ...
                                                           (+ OneGate double at .254 when asked)

Everything is configured from CONTEXT files by the real ``flower-ctx`` inside each VM. The hub is a
SuperLink (TLS generated, its WireGuard key generated on the VM); the gateway is ``--role gateway``
with one peer, the hub; SuperNodes have no tunnel: ``FL_GATEWAY_ROUTES=10.10.9.0/24`` via the
gateway (given, or found through the OneGate double of their OneFlow service). The hub admits the
zone with one peer: the gateway's tunnel address and the zone's network.

With ``hub_gateway=True`` zone 1 has a hub gateway instead (``hgw``: eth0 198.18.1.2, eth1
192.168.1.1, wg0 10.10.9.1) and the SuperLink (``link``, 192.168.1.5, no WireGuard) behind it on zone 1's
network, routing the tunnel and zone 2's network back through it; SuperNodes dial 192.168.1.5.

Traffic stays inside the namespaces: a TLS listener on the hub's tunnel address (the Fleet port) and
clients in the SuperNode VMs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rig import Rig, SimVM, write_context

REPO = Path(__file__).resolve().parent.parent
HUB_WG, GW_WG = "10.10.9.1", "10.10.9.2"
TUNNEL_NET = "10.10.9.0/24"
LAN_NET, GW_LAN = "192.168.2.0/24", "192.168.2.1"
A_NET, HUB_LAN, LINK_LAN = "192.168.1.0/24", "192.168.1.1", "192.168.1.5"  # zone 1 behind a hub gateway
FLEET_PORT = 9092

# A TLS server in the hub VM on the Fleet port. Per connection, the first line says what to do:
# "sha N" reads N bytes and answers "<sha256> <peer address> <server-side MSS>"; "echo" echoes lines.
TLS_SERVER = r"""
import hashlib, socket, ssl, sys, threading
addr, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port)); srv.listen(64)
print("listening", flush=True)

def handle(raw, peer):
    try:
        with ctx.wrap_socket(raw, server_side=True) as tls:
            f = tls.makefile("rb")
            words = f.readline().split()
            if words[:1] == [b"sha"]:
                left, h = int(words[1]), hashlib.sha256()
                while left:
                    b = f.read(min(left, 1 << 16))
                    if not b: break
                    h.update(b); left -= len(b)
                mss = tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
                tls.sendall(f"{h.hexdigest()} {peer[0]} {mss}\n".encode())
            elif words[:1] == [b"echo"]:
                for line in f:
                    tls.sendall(line)
    except (OSError, ValueError):
        pass

while True:
    c, peer = srv.accept()
    threading.Thread(target=handle, args=(c, peer), daemon=True).start()
"""

# In a SuperNode VM: a TLS connection verified with the CA configure installed, N random bytes,
# the hub's answer checked. Prints "<ok> <seconds> <peer as the hub saw it> <client MSS> <server MSS>".
TLS_CLIENT = r"""
import hashlib, os, socket, ssl, sys, time
host, port, size, timeout, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
data = os.urandom(size)
t0 = time.perf_counter()
with socket.create_connection((host, port), timeout=timeout) as raw, \
        ctx.wrap_socket(raw, server_hostname=host) as tls:
    mss = tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    tls.sendall(f"sha {size}\n".encode())
    view = memoryview(data)
    for i in range(0, size, 1 << 16):
        tls.sendall(view[i:i + (1 << 16)])
    reply = tls.makefile("rb").readline().decode().split()
dt = time.perf_counter() - t0
print(reply[0] == hashlib.sha256(data).hexdigest(), f"{dt:.4f}", reply[1], mss, reply[2])
"""

# A long-lived TLS connection: a line every `period` s, its echo awaited (up to 120 s: TCP retries
# through an outage). Prints "echo <monotonic> <n>" per echo; "error <what>" and exit 1 on failure.
ECHO_CLIENT = r"""
import socket, ssl, sys, time
host, port, ca, duration, period = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((host, port), timeout=10)
raw.settimeout(120)
tls = ctx.wrap_socket(raw, server_hostname=host)
tls.sendall(b"echo\n")
f = tls.makefile("rb")
end, n = time.monotonic() + duration, 0
print("connected", tls.getsockname()[1], flush=True)
try:
    while time.monotonic() < end:
        tls.sendall(f"ping {n}\n".encode())
        if f.readline() != f"ping {n}\n".encode():
            print("error bad echo", flush=True); sys.exit(1)
        print("echo", f"{time.monotonic():.3f}", n, flush=True)
        n += 1
        time.sleep(period)
except OSError as exc:
    print("error", exc, flush=True); sys.exit(1)
print("done", n, flush=True)
"""


def wg_keypair() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True).stdout.strip()
    return priv, pub


def peers_b64(*sections: dict[str, str]) -> str:
    text = "\n".join("[Peer]\n" + "".join(f"{k} = {v}\n" for k, v in s.items()) for s in sections)
    return base64.b64encode(text.encode()).decode()


@dataclass
class Configured:
    returncode: int
    stdout: str
    stderr: str
    doc: dict[str, Any] = field(default_factory=dict)

    def changes(self, step: str) -> list[str]:
        """``what<TAB>outcome`` of every change of ``step`` (created/updated/removed only)."""
        (st,) = [s for s in self.doc["steps"] if s["name"] == step]
        return [f"{c['what']}\t{c['outcome']}" for c in st["changes"]
                if c["outcome"] in ("created", "updated", "removed")]

    def facts(self, step: str) -> dict[str, str]:
        (st,) = [s for s in self.doc["steps"] if s["name"] == step]
        return st["facts"]


def flower_ctx(vm: SimVM, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return vm.run([sys.executable, "-m", "flower_ctx.cli", *args], check=False, env=env, timeout=timeout)


def configure(vm: SimVM, role: str, ctx: Path) -> Configured:
    r = flower_ctx(vm, "configure", "--role", role, "--context", str(ctx), "--json")
    doc = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
    return Configured(r.returncode, r.stdout, r.stderr, doc)


@dataclass
class GatewaySite:
    """The topology of the module docstring. ``build()`` makes and configures it; ``close()`` removes all."""

    rig: Rig
    ctx_dir: Path
    wan_mtu: int = 1500
    lan_mtu: int = 1500
    hub: SimVM | None = None  # the WireGuard hub: the SuperLink, or zone 1's hub gateway
    superlink: SimVM | None = None  # where the Fleet port listens (the hub, or the SuperLink behind it)
    superlink_host: str = HUB_WG  # what SuperNodes dial
    gw: SimVM | None = None
    supernodes: dict[str, SimVM] = field(default_factory=dict)
    lan: str = ""
    hub_values: dict[str, str] = field(default_factory=dict)
    gw_values: dict[str, str] = field(default_factory=dict)
    sn_values: dict[str, dict[str, str]] = field(default_factory=dict)
    gw_key: tuple[str, str] = ("", "")
    hub_pub: str = ""
    ca_b64: str = ""
    onegate: Any = None  # tests.onegate_server.OneGateServer when built with onegate=True
    onegate_service: Any = None
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    behind: str = TUNNEL_NET  # the networks behind the tunnel, as zone 2 routes them

    # -- building ----------------------------------------------------------------------------------

    def ctx(self, name: str, values: dict[str, str]) -> Path:
        """``<ctx_dir>/<name>/context.sh`` (with ``token.txt`` beside it when OneGate gave one)."""
        d = self.ctx_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return write_context(d / "context.sh", values)

    def hub_ctx(self, **changes: str) -> Path:
        self.hub_values.update(changes)
        return self.ctx("hub", self.hub_values)

    def gw_ctx(self, **changes: str) -> Path:
        self.gw_values.update(changes)
        return self.ctx("gw", self.gw_values)

    def sn_ctx(self, name: str, **changes: str) -> Path:
        self.sn_values[name].update(changes)
        return self.ctx(name, self.sn_values[name])

    def hub_peer(self, zone_net: str = LAN_NET) -> dict[str, str]:
        """The hub's [Peer] for zone 2: one peer for the whole zone, its network in AllowedIPs."""
        allowed = f"{GW_WG}/32" + (f", {zone_net}" if zone_net else "")
        return {"PublicKey": self.gw_key[1], "AllowedIPs": allowed}

    def build(self, supernodes: int = 2, *, onegate: bool = False, gw_firewall: bool = True,
              hub_gateway: bool = False) -> GatewaySite:
        rig = self.rig
        self.hub = rig.add_vm("hgw" if hub_gateway else "hub", 1)
        self.gw = rig.add_vm("gw", 2, mtu=self.wan_mtu)
        self.lan = rig.add_lan("2", LAN_NET, router_host=254 if onegate else None, mtu=self.lan_mtu)
        rig.add_nic(self.gw, self.lan, "eth1", f"{GW_LAN}/24", mtu=self.lan_mtu)
        self.gw_key = wg_keypair()
        if hub_gateway:
            self._zone_a_behind_a_hub_gateway()
        else:
            # Zone A: the SuperLink is the hub; its key is generated on the VM.
            self.hub_values = {
                "ETH0_IP": str(self.hub.eth0_ip), "ETH0_MASK": "255.255.255.0",
                "FL_TLS_ENABLED": "YES", "FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": f"{HUB_WG}/24",
                "FL_WG_PEERS": peers_b64(self.hub_peer()),
            }
            r = configure(self.hub, "superlink", self.hub_ctx())
            assert r.returncode == 0, r.stderr
            self.superlink, self.superlink_host = self.hub, HUB_WG
            self.ca_b64 = base64.b64encode(self.hub.path("/opt/flower/certs/ca.crt").read_bytes()).decode()
        self.hub_pub = self.hub.run(["wg", "show", "wg0", "public-key"]).stdout.strip()
        self.serve_tls(self.superlink_host)
        if onegate:
            self._start_onegate()
        behind = f"{TUNNEL_NET},{A_NET}" if hub_gateway else TUNNEL_NET
        # Zone B's gateway: one peer, the hub; the SuperLink check goes to what SuperNodes dial.
        self.gw_values = {
            "ETH0_IP": str(self.gw.eth0_ip), "ETH0_MASK": "255.255.255.0",
            "ETH1_IP": GW_LAN, "ETH1_MASK": "255.255.255.0",
            "FL_APPLIANCE_ROLE": "gateway",
            "FL_WG_ADDRESS": f"{GW_WG}/24", "FL_WG_PRIVATE_KEY": self.gw_key[0],
            "FL_WG_PEER_PUBLIC_KEY": self.hub_pub, "FL_WG_PEER_ENDPOINT": f"{self.hub.eth0_ip}:51820",
            "FL_WG_PEER_ALLOWED_IPS": behind,
            "FL_SUPERLINK_ADDRESS": f"{self.superlink_host}:{FLEET_PORT}", "FL_SSL_CA_CERTFILE": self.ca_b64,
            "FL_FIREWALL": "YES" if gw_firewall else "NO",
        }
        self.behind = behind
        self._onegate_access("gw", self.gw_values)
        r = configure(self.gw, "gateway", self.gw_ctx())
        assert r.returncode == 0, r.stderr
        for i in range(supernodes):
            self.add_supernode(f"sn{i + 1}")
        return self

    def _zone_a_behind_a_hub_gateway(self) -> None:
        """Zone 1: the SuperLink on its own network behind a hub gateway (no WireGuard on the SuperLink)."""
        rig, hub = self.rig, self.hub
        assert hub is not None
        lan1 = rig.add_lan("1", A_NET)
        rig.add_nic(hub, lan1, "eth1", f"{HUB_LAN}/24")
        link = rig.add_lan_vm("link", lan1, f"{LINK_LAN}/24", zone=1)
        self.superlink, self.superlink_host = link, LINK_LAN
        # The SuperLink routes the tunnel and zone 2 back through the hub gateway; its certificate
        # names its own address (ETH0_IP): nothing for FL_CERT_EXTRA_SAN.
        r = configure(link, "superlink", self.ctx("link", {
            "ETH0_IP": LINK_LAN, "ETH0_MASK": "255.255.255.0", "FL_TLS_ENABLED": "YES",
            "FL_GATEWAY_ROUTES": f"{TUNNEL_NET},{LAN_NET}", "FL_GATEWAY_ADDRESS": HUB_LAN}))
        assert r.returncode == 0, r.stderr
        self.ca_b64 = base64.b64encode(link.path("/opt/flower/certs/ca.crt").read_bytes()).decode()
        self.hub_values = {
            "ETH0_IP": str(hub.eth0_ip), "ETH0_MASK": "255.255.255.0", "ETH1_IP": HUB_LAN, "ETH1_MASK": "255.255.255.0",
            "FL_APPLIANCE_ROLE": "gateway", "FL_WG_ADDRESS": f"{HUB_WG}/24", "FL_WG_PEERS": peers_b64(self.hub_peer()),
            "FL_SUPERLINK_ADDRESS": f"{LINK_LAN}:{FLEET_PORT}", "FL_SSL_CA_CERTFILE": self.ca_b64,
        }
        r = configure(hub, "gateway", self.hub_ctx())
        assert r.returncode == 0, r.stderr

    def add_supernode(self, name: str, *, via_onegate: bool | None = None) -> SimVM:
        """A SuperNode VM on zone 2's network with no tunnel: routes via the gateway, then configure."""
        host = 11 + len(self.supernodes)
        vm = self.rig.add_lan_vm(name, self.lan, f"192.168.2.{host}/24", zone=2, mtu=self.lan_mtu)
        self.supernodes[name] = vm
        use_onegate = self.onegate is not None if via_onegate is None else via_onegate
        self.sn_values[name] = {
            "ETH0_IP": f"192.168.2.{host}", "ETH0_MASK": "255.255.255.0",
            "FL_SUPERLINK_ADDRESS": f"{self.superlink_host}:{FLEET_PORT}", "FL_SSL_CA_CERTFILE": self.ca_b64,
            "FL_GATEWAY_ROUTES": self.behind,
            "FL_GATEWAY_ADDRESS": "" if use_onegate else GW_LAN,
        }
        if use_onegate:
            self._onegate_access(name, self.sn_values[name], role="supernode")
        r = configure(vm, "supernode", self.sn_ctx(name))
        assert r.returncode == 0, r.stderr
        return vm

    # -- OneGate: the zone's service (gateway + supernode roles), answered from the router namespace --

    def _start_onegate(self) -> None:
        from tests.netns_thread import call_in_netns
        from tests.onegate_server import OneGateServer

        self.onegate = OneGateServer("0.0.0.0", 0, version="7.4.0")
        call_in_netns(self.rig.router, self.onegate.start)
        self.onegate_service = self.onegate.add_service("training-site-gateway", {"gateway": [], "supernode": []})

    def _onegate_access(self, name: str, values: dict[str, str], role: str = "gateway") -> None:
        if self.onegate is None:
            return
        from tests.onegate_server import FakeRole

        ips = [values[k] for k in ("ETH0_IP", "ETH1_IP") if values.get(k)]
        vm = self.onegate.add_vm(f"{role}_{len(self.sn_values) - 1 if role == 'supernode' else 0}_(service_21)",
                                 ips=ips)
        roles = {r.name: r for r in self.onegate_service.roles}
        role_obj: FakeRole = roles[role]
        self.onegate.add_node(self.onegate_service, role_obj, vm)
        values.update({"ONEGATE_ENDPOINT": f"http://192.168.2.254:{self.onegate.port}", "VMID": str(vm.id),
                       "TOKEN": "YES"})
        d = self.ctx_dir / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "token.txt").write_text(vm.token + "\n")

    # -- traffic -------------------------------------------------------------------------------------

    def serve_tls(self, addr: str = HUB_WG, port: int = FLEET_PORT) -> None:
        assert self.superlink is not None
        proc = self.superlink.popen([sys.executable, "-c", TLS_SERVER, addr, str(port), "/opt/flower/certs/server.pem",
                               "/opt/flower/certs/server.key"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"

    def tls_transfer(self, vm: SimVM, size: int = 1 << 20, host: str | None = None, timeout: float = 20,
                     ca: str = "/opt/flower/certs/ca.crt") -> tuple[bool, float, str, int, int]:
        """(verified and intact, seconds, source address the SuperLink saw, client MSS, server MSS)."""
        host = host or self.superlink_host
        r = vm.run([sys.executable, "-c", TLS_CLIENT, host, str(FLEET_PORT), str(size), str(timeout), ca],
                   check=False, timeout=timeout + 60)
        if r.returncode != 0:
            return False, 0.0, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "", 0, 0
        ok, dt, peer, mss, server_mss = r.stdout.split()
        return ok == "True", float(dt), peer, int(mss), int(server_mss)

    def echo_client(self, vm: SimVM, duration: float, period: float = 0.05) -> subprocess.Popen[str]:
        return vm.popen([sys.executable, "-c", ECHO_CLIENT, self.superlink_host, str(FLEET_PORT),
                         "/opt/flower/certs/ca.crt",
                         str(duration), str(period)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # -- a gateway reboot: wg0 gone, forwarding and its nft table reset, then the boot's configure ----

    def reboot_gateway(self) -> tuple[float, float, Configured]:
        """Kill wireguard-go (wg0 disappears), reset what a reboot resets, run configure as the boot
        does. Returns (time the outage began, time configure ended, its result), monotonic."""
        assert self.gw is not None
        down = time.monotonic()
        for pid in self.gw.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith("wireguard-go"):
                    os.kill(pid, 9)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while self.gw.run(["ip", "link", "show", "wg0"], check=False).returncode == 0:
            assert time.monotonic() < deadline, "wg0 still there after SIGKILL"
            time.sleep(0.02)
        self.gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        self.gw.run(["nft", "delete", "table", "inet", "flower_ctx"], check=False)
        r = configure(self.gw, "gateway", self.gw_ctx())
        return down, time.monotonic(), r

    def close(self) -> None:
        for p in self.servers:
            p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
        self.servers.clear()
        if self.onegate is not None:
            self.onegate.stop()
            self.onegate = None


def snmp(vm: SimVM) -> dict[str, int]:
    """The VM's /proc/net/snmp and netstat counters as "Proto:Name" -> value (its own namespace)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = vm.run(["cat", path]).stdout.splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=False):
            proto, names = head.split(":", 1)
            for n, v in zip(names.split(), vals.split(":", 1)[1].split(), strict=False):
                out[f"{proto}:{n}"] = int(v)
    return out


# A TCP sink for throughput runs: counts what one connection sends, answers the count, closes.
TCP_SINK = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 16)
        if not b: break
        n += len(b)
    c.sendall(str(n).encode()); c.close()
"""
