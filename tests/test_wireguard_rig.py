"""WireGuard end to end on simulated VMs: a hub and two spokes in three zones joined by a WAN router.

Each VM is configured from a CONTEXT file only, by the real code running inside the VM
(``nsenter`` into its network and mount namespaces), with wireguard-go (no kernel module here).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_netns, requires_wireguard_go
from tests.gateway_rig import peers_b64, wg_keypair
from tests.rig import Rig, SimVM, write_context

pytestmark = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.wireguard,
    pytest.mark.slow,
    requires_netns,
    requires_wireguard_go,
]

MTU = 1380  # not wireguard-go's default 1420, so the test sees ours applied
HUB_WG, S1_WG, S2_WG = "10.10.9.1", "10.10.9.2", "10.10.9.3"


@dataclass
class Run:
    returncode: int
    stdout: str  # the wireguard step: one "what<TAB>outcome<TAB>detail" line per change
    stderr: str
    doc: dict = field(default_factory=dict)  # configure --json output


def configure(vm: SimVM, role: str, ctx: Path) -> Run:
    """`flower-ctx configure --role ROLE --context CTX --json`, run inside ``vm``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = vm.run(
        [sys.executable, "-m", "flower_ctx.cli", "configure", "--role", role, "--context", str(ctx), "--json"],
        check=False,
        env=env,
        timeout=120,
    )
    if r.returncode not in (0,) or not r.stdout.strip():
        return Run(r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    (step,) = [st for st in doc["steps"] if st["name"] == "wireguard"]
    lines = [f"{c['what']}\t{c['outcome']}\t{c['detail']}" for c in step["changes"]]
    lines += [f"fact {k}={v}" for k, v in sorted(step["facts"].items())]
    return Run(r.returncode, "\n".join(lines) + "\n", r.stderr, doc)


def wg_show(vm: SimVM, *what: str) -> str:
    return vm.run(["wg", "show", "wg0", *what]).stdout.strip()


TCP_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    h = hashlib.sha256()
    while True:
        b = c.recv(65536)
        if not b: break
        h.update(b)
    c.sendall(h.hexdigest().encode()); c.close()
"""

TCP_CLIENT = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
c.sendall(data); c.shutdown(socket.SHUT_WR)
reply = c.recv(100).decode()
print(mss, reply == hashlib.sha256(data).hexdigest())
"""


@dataclass
class Net:
    rig: Rig
    hub: SimVM
    s1: SimVM
    s2: SimVM
    ctx_dir: Path
    hub_values: dict[str, str]
    hub_pub: str = ""
    servers: list[subprocess.Popen] = field(default_factory=list)

    def hub_ctx(self, **changes: str) -> Path:
        self.hub_values.update(changes)
        return write_context(self.ctx_dir / "hub.sh", self.hub_values)

    def tcp(self, client: SimVM, dst: str, port: int, size: int = 1 << 20, timeout: float = 5) -> tuple[int, bool]:
        r = client.python(TCP_CLIENT, dst, str(port), str(size), str(timeout), check=False, timeout=timeout + 30)
        if r.returncode != 0:
            return 0, False
        mss, ok = r.stdout.split()
        return int(mss), ok == "True"

    def serve(self, vm: SimVM, addr: str, port: int) -> None:
        proc = vm.popen(
            [sys.executable, "-c", TCP_SERVER, addr, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    ctx_dir = tmp_path_factory.mktemp("fcwg-ctx")
    with Rig("fcwg") as rig:
        hub, s1, s2 = rig.add_vm("hub", 1), rig.add_vm("s1", 2), rig.add_vm("s2", 3)
        (k1, p1), (k2, p2) = wg_keypair(), wg_keypair()
        # The hub generates its own key (FL_WG_PRIVATE_KEY empty); the spokes' keys are operator-given.
        hub_values = {
            "FL_WG_ENABLED": "YES",
            "FL_WG_ADDRESS": f"{HUB_WG}/24",
            "FL_WG_MTU": str(MTU),
            "FL_TLS_ENABLED": "NO",
            "FL_WG_PRIVATE_KEY": "",
            "FL_WG_FORWARD": "NO",
            "FL_WG_PEERS": peers_b64(
                {"PublicKey": p1, "AllowedIPs": f"{S1_WG}/32"}, {"PublicKey": p2, "AllowedIPs": f"{S2_WG}/32"}
            ),
        }
        n = Net(rig, hub, s1, s2, ctx_dir, hub_values)
        try:
            r = configure(hub, "superlink", n.hub_ctx())
            assert r.returncode == 0, r.stderr
            n.hub_pub = wg_show(hub, "public-key")
            for vm, key, addr in ((s1, k1, S1_WG), (s2, k2, S2_WG)):
                ctx = write_context(
                    ctx_dir / f"{vm.name}.sh",
                    {
                        "FL_WG_ENABLED": "YES",
                        "FL_WG_ADDRESS": f"{addr}/24",
                        "FL_WG_PRIVATE_KEY": key,
                        "FL_WG_MTU": str(MTU),
                        "FL_WG_PEER_PUBLIC_KEY": n.hub_pub,
                        "FL_WG_PEER_ENDPOINT": f"{hub.eth0_ip}:51820",
                        "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/24",
                        "FL_SUPERLINK_ADDRESS": f"{HUB_WG}:9092",
                        "FL_TLS_ENABLED": "NO",
                    },
                )
                r = configure(vm, "supernode", ctx)
                assert r.returncode == 0, r.stderr
            yield n
        finally:
            for p in n.servers:
                p.kill()
                p.wait()
                if p.stdout:
                    p.stdout.close()


def wg_go_pid(vm: SimVM) -> int:
    pids = [p for p in vm.pids() if Path(f"/proc/{p}/comm").read_text().strip().startswith("wireguard-go")]
    assert len(pids) == 1, pids
    return pids[0]


def udp_inodes(vm: SimVM, port: int) -> set[str]:
    out = vm.run(["cat", "/proc/net/udp", "/proc/net/udp6"]).stdout
    return {f[9] for f in (ln.split() for ln in out.splitlines()[1:]) if len(f) > 9 and f[1].endswith(f":{port:04X}")}


def test_spoke_to_hub_tcp_through_the_tunnel_with_the_configured_mtu(net: Net) -> None:
    for vm in (net.hub, net.s1, net.s2):
        assert f"mtu {MTU}" in vm.run(["ip", "link", "show", "wg0"]).stdout
    net.serve(net.hub, HUB_WG, 9092)
    for spoke in (net.s1, net.s2):
        mss, ok = net.tcp(spoke, HUB_WG, 9092)
        assert ok
        # The MSS follows the tunnel MTU (minus IPv4+TCP headers, maybe options): 1420 would give > 1340.
        assert MTU - 40 - 40 <= mss <= MTU - 40
    handshakes = wg_show(net.hub, "latest-handshakes").splitlines()
    assert len(handshakes) == 2 and all(int(line.split()[1]) > 0 for line in handshakes)


def test_spoke_to_spoke_only_with_forwarding_on_the_hub(net: Net) -> None:
    net.serve(net.s2, S2_WG, 9093)
    assert net.tcp(net.s1, S2_WG, 9093, size=1000, timeout=2) == (0, False)  # hub does not forward yet
    r = configure(net.hub, "superlink", net.hub_ctx(FL_WG_FORWARD="YES"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^ipv4 forwarding\tupdated", r.stdout, re.M)
    assert net.hub.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    mss, ok = net.tcp(net.s1, S2_WG, 9093, size=1 << 20)
    assert ok and mss <= MTU - 40


def test_rerun_with_the_same_context_changes_nothing(net: Net) -> None:
    vms = {"hub": (net.hub, "superlink", net.hub_ctx()), "s1": (net.s1, "supernode", net.ctx_dir / "s1.sh")}
    before = {
        name: (
            wg_go_pid(vm),
            vm.run(["cat", "/sys/class/net/wg0/ifindex"]).stdout,
            sorted(wg_show(vm, "latest-handshakes").splitlines()),  # wg lists peers in no fixed order
            udp_inodes(vm, 51820),
        )
        for name, (vm, _, _) in vms.items()
    }
    monitors = {
        name: vm.popen(["ip", "monitor", "link", "address", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for name, (vm, _, _) in vms.items()
    }
    try:
        time.sleep(0.3)  # let ip monitor subscribe
        outs = {name: configure(vm, role, ctx) for name, (vm, role, ctx) in vms.items()}
        time.sleep(0.3)
    finally:
        for m in monitors.values():
            m.send_signal(signal.SIGTERM)
    events = {name: m.communicate(timeout=5)[0].decode() for name, m in monitors.items()}
    for name, r in outs.items():
        assert r.returncode == 0, r.stderr
        assert re.search(r"^wg0\tunchanged\t", r.stdout, re.M), r.stdout
        if r.doc:  # the real configure: the whole command reports no change
            assert r.doc["changed"] is False, r.doc
        assert not re.search(r"\t(created|updated|removed)\t", r.stdout), r.stdout
        assert events[name] == "", f"netlink events on {name} during a no-op re-run:\n{events[name]}"
        vm = vms[name][0]
        after = (
            wg_go_pid(vm),
            vm.run(["cat", "/sys/class/net/wg0/ifindex"]).stdout,
            sorted(wg_show(vm, "latest-handshakes").splitlines()),  # wg lists peers in no fixed order
            udp_inodes(vm, 51820),
        )
        assert after == before[name]  # same daemon, same interface, no handshake reset, port not rebound
        assert before[name][3], "the UDP socket should be visible"


def test_changing_one_peers_allowed_ips_changes_only_that_peer(net: Net) -> None:
    peers = base64.b64decode(net.hub_values["FL_WG_PEERS"]).decode()
    p1 = wg_show(net.s1, "public-key")
    p2 = wg_show(net.s2, "public-key")
    hs1_before = [ln for ln in wg_show(net.hub, "latest-handshakes").splitlines() if ln.startswith(p1)]
    ep1_before = [ln for ln in wg_show(net.hub, "endpoints").splitlines() if ln.startswith(p1)]
    new_peers = peers.replace(f"AllowedIPs = {S2_WG}/32", f"AllowedIPs = {S2_WG}/32, 198.51.100.0/24")
    assert new_peers != peers
    r = configure(net.hub, "superlink", net.hub_ctx(FL_WG_PEERS=base64.b64encode(new_peers.encode()).decode()))
    assert r.returncode == 0, r.stderr
    changed = [ln for ln in r.stdout.splitlines() if re.search(r"\t(created|updated|removed)\t", ln)]
    assert sorted(changed) == sorted(
        [
            "/etc/wireguard/wg0.conf\tupdated\twg-quick syntax, key by path",
            f"wg0 peer {p2[:8]}…\tupdated\tallowed-ips",
            "wg0 route 198.51.100.0/24\tcreated\t",
        ]
    ), r.stdout
    allowed = dict(ln.split("\t") for ln in wg_show(net.hub, "allowed-ips").splitlines())
    assert allowed[p2].split() == [f"{S2_WG}/32", "198.51.100.0/24"] and allowed[p1] == f"{S1_WG}/32"
    assert [ln for ln in wg_show(net.hub, "latest-handshakes").splitlines() if ln.startswith(p1)] == hs1_before
    assert [ln for ln in wg_show(net.hub, "endpoints").splitlines() if ln.startswith(p1)] == ep1_before
    assert "198.51.100.0/24 dev wg0 proto 77" in net.hub.run(["ip", "route"]).stdout
    # and back: the route tagged with our protocol is removed, nothing else
    r = configure(net.hub, "superlink", net.hub_ctx(FL_WG_PEERS=base64.b64encode(peers.encode()).decode()))
    assert "wg0 route 198.51.100.0/24\tremoved" in r.stdout
    assert "198.51.100.0/24" not in net.hub.run(["ip", "route"]).stdout


def test_generated_key_survives_a_reboot_and_is_never_printed(net: Net) -> None:
    key_file = net.hub.path("/etc/wireguard/wg0.key")
    key = key_file.read_text().strip()
    st = key_file.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
    conf = net.hub.path("/etc/wireguard/wg0.conf").read_text()
    assert key not in conf and "PostUp = wg set %i private-key /etc/wireguard/wg0.key" in conf
    # "Reboot": wireguard-go dies hard (the link goes, a stale socket stays); configure runs again.
    old_pid = wg_go_pid(net.hub)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while net.hub.run(["ip", "link", "show", "wg0"], check=False).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = configure(net.hub, "superlink", net.hub_ctx())
    assert r.returncode == 0, r.stderr
    assert "wg0 interface\tcreated" in r.stdout
    assert key_file.read_text().strip() == key and "/etc/wireguard/wg0.key\tunchanged" in r.stdout
    assert wg_show(net.hub, "public-key") == net.hub_pub and wg_wg_pid_changed(net.hub, old_pid)
    status = net.hub.python(
        "import json,sys; from flower_ctx.wireguard import status; print(json.dumps(status().to_dict()))", timeout=30
    )
    for output in (r.stdout, r.stderr, status.stdout, status.stderr):
        assert key not in output
    # The restarted hub lost its sessions and learned endpoints (that is why re-runs never restart
    # it); a spoke re-handshakes when its packets go unanswered (~15 s by the WireGuard timers).
    mss, ok = net.tcp(net.s1, HUB_WG, 9092, size=1 << 16, timeout=40)
    assert ok


def wg_wg_pid_changed(vm: SimVM, old: int) -> bool:
    return wg_go_pid(vm) != old


def test_status_reports_each_peer(net: Net) -> None:
    import json

    r = net.hub.python(
        "import json; from flower_ctx.wireguard import status; print(json.dumps(status().to_dict()))", timeout=30
    )
    st = json.loads(r.stdout)
    assert st["backend"] == "wireguard-go" and st["public_key"] == net.hub_pub and st["mtu"] == MTU
    by_key = {p["public_key"]: p for p in st["peers"]}
    p1 = wg_show(net.s1, "public-key")
    assert by_key[p1]["allowed_ips"] == [f"{S1_WG}/32"]
    assert by_key[p1]["endpoint"] == f"{net.s1.eth0_ip}:51820"
    assert 0 <= by_key[p1]["latest_handshake_age"] < 180 and by_key[p1]["rx_bytes"] > 0 and by_key[p1]["tx_bytes"] > 0


def test_wg_quick_brings_up_the_rendered_conf(net: Net) -> None:
    """wg0.conf (key by path through PostUp) is usable by wg-quick as it is."""
    vm = net.rig.add_vm("q", 4)
    for name in ("wg0.conf", "wg0.key"):
        data = net.hub.path(f"/etc/wireguard/{name}").read_bytes()
        vm.path(f"/etc/wireguard/{name}").write_bytes(data)
    r = vm.run(
        ["wg-quick", "up", "wg0"], check=False, env={**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}
    )
    assert r.returncode == 0, r.stderr
    assert wg_show(vm, "public-key") == net.hub_pub
    assert wg_show(vm, "listen-port") == "51820"
    assert sorted(wg_show(vm, "peers").split()) == sorted(wg_show(net.hub, "peers").split())
    assert f"mtu {MTU}" in vm.run(["ip", "link", "show", "wg0"]).stdout


def test_bad_input_exits_2_naming_the_variable_and_changes_nothing(net: Net) -> None:
    vm = net.rig.add_vm("bad", 5)
    good = {
        "FL_WG_ENABLED": "YES",
        "FL_WG_ADDRESS": "10.10.9.9/24",
        "FL_TLS_ENABLED": "NO",
        "FL_WG_PEER_PUBLIC_KEY": net.hub_pub,
        "FL_WG_PEER_ENDPOINT": "198.18.1.2:51820",
        "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/24",
        "FL_SUPERLINK_ADDRESS": "10.10.9.1:9092",
    }
    pub_a, pub_b = wg_keypair()[1], wg_keypair()[1]
    cases = {
        "FL_WG_PRIVATE_KEY": {"FL_WG_PRIVATE_KEY": base64.b64encode(bytes(31)).decode()},  # wrong length
        "FL_WG_PEER_PUBLIC_KEY": {"FL_WG_PEER_PUBLIC_KEY": "not*base64*at*all"},
        "FL_WG_PEER_ENDPOINT": {"FL_WG_PEER_ENDPOINT": "198.18.1.2"},  # no port
        "FL_WG_MTU": {"FL_WG_MTU": "1279"},
        "FL_WG_PEERS": {
            "FL_WG_PEERS": peers_b64(
                {"PublicKey": pub_a, "AllowedIPs": "10.20.0.0/16"}, {"PublicKey": pub_a, "AllowedIPs": "10.30.0.0/16"}
            )
        },
    }
    overlap = {
        "FL_WG_PEERS": peers_b64(
            {"PublicKey": pub_a, "AllowedIPs": "10.20.0.0/16"}, {"PublicKey": pub_b, "AllowedIPs": "10.20.5.0/24"}
        )
    }
    for i, (name, bad) in enumerate([*cases.items(), ("FL_WG_PEERS", overlap)]):
        ctx = write_context(net.ctx_dir / f"bad{i}.sh", {**good, **bad})
        r = configure(vm, "supernode", ctx)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert name in r.stderr
        assert list(vm.path("/etc/wireguard").iterdir()) == []
        assert vm.run(["ip", "link", "show", "wg0"], check=False).returncode != 0


def test_a_wg0_that_is_not_wireguard_is_refused_and_left_alone(net: Net) -> None:
    vm = net.rig.add_vm("veth", 6)
    vm.run(["ip", "link", "add", "wg0", "type", "veth", "peer", "name", "wg0peer"])
    r = configure(vm, "supernode", net.ctx_dir / "s1.sh")
    assert r.returncode == 1 and "not a WireGuard interface (kind=veth)" in r.stderr
    assert "veth" in vm.run(["ip", "-d", "link", "show", "wg0"]).stdout


def test_drift_is_repaired_in_one_run_and_the_next_run_is_unchanged(net: Net) -> None:
    vm, ctx = net.s2, net.ctx_dir / "s2.sh"
    vm.run(["ip", "link", "set", "wg0", "mtu", "1500"])
    vm.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "wg0"])
    vm.run(["wg", "set", "wg0", "peer", net.hub_pub, "persistent-keepalive", "off"])
    vm.run(["ip", "link", "set", "wg0", "down"])
    r = configure(vm, "supernode", ctx)
    assert r.returncode == 0, r.stderr
    changed = sorted(ln for ln in r.stdout.splitlines() if re.search(r"\t(created|updated|removed)\t", ln))
    assert changed == sorted(
        [
            f"wg0 peer {net.hub_pub[:8]}…\tupdated\tpersistent-keepalive",
            f"wg0 mtu\tupdated\t{MTU}",
            "wg0 address 10.99.0.1/24\tremoved\t",
            "wg0 link\tupdated\tup",
        ]
    ), r.stdout
    assert wg_show(vm, "persistent-keepalive").split()[-1] == "25"
    again = configure(vm, "supernode", ctx)
    assert re.search(r"^wg0\tunchanged\t", again.stdout, re.M), again.stdout
    assert net.tcp(vm, HUB_WG, 9092, size=1 << 16, timeout=20)[1]


def test_rig_removes_namespaces_left_by_a_crashed_run() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"fcwg{dead.pid}-crashed"
    subprocess.run(["ip", "netns", "add", name], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while not subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with Rig("fcwg"):
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert name not in listed
        assert orphan.wait(timeout=5) != 0  # killed by PID by the rig's cleanup
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
