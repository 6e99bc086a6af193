"""A rig of simulated VMs for integration tests (DESIGN section 11).

A simulated VM is a network namespace plus a private mount namespace held by a long-lived holder
process. Inside it, tmpfs mounts cover what a VM owns (``/run`` with ``/run/wireguard`` and
``/run/one-context``, ``/opt``, ``/etc/wireguard``, ``/etc/flower-ctx``) and overlays with a
tmpfs upper layer cover ``/etc`` and ``/root`` (Flower keeps its apps in ``~/.flwr``), so the real
``flower-ctx`` runs unmodified inside (``nsenter -t HOLDER -n -m``) and nothing it writes reaches the
host. ``/tmp`` stays shared, which is
how tests hand files in.

VMs sit in zones: each VM's ``eth0`` is a veth to a per-zone bridge ``bzI`` in a router namespace
(the simulated WAN), zone i being 198.18.i.0/24 with the router at .1 and the zone's VMs at .2, .3,
... in the order they are added (benchmarking range, never routed anywhere: nothing touches the
host's interfaces). Everything is removed by PID and by name, even when a test fails, and namespaces a
crashed run left behind (same prefix, owner PID dead) are removed when the next rig starts.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HOLDER_SCRIPT = r"""
set -e
mount -t tmpfs -o mode=0755,size=32m rig-run /run
mkdir -p /run/wireguard /run/one-context /run/.rig/upper /run/.rig/work
mount -t overlay rig-etc -o lowerdir=/etc,upperdir=/run/.rig/upper,workdir=/run/.rig/work /etc
mkdir -p /etc/wireguard /etc/flower-ctx
mount -t tmpfs -o mode=0700,size=4m rig-wg /etc/wireguard
mount -t tmpfs -o mode=0755,size=4m rig-ctx /etc/flower-ctx
mount -t tmpfs -o mode=0755,size=256m rig-opt /opt
mkdir -p /run/.rig/rupper /run/.rig/rwork
mount -t overlay rig-home -o lowerdir=/root,upperdir=/run/.rig/rupper,workdir=/run/.rig/rwork /root
mkdir -p /opt/flower
# node_exporter's textfile directory (the readiness watch writes its metrics there): the VM's own.
mkdir -p /var/lib/prometheus
mount -t tmpfs -o mode=0755,size=4m rig-prom /var/lib/prometheus
ip link set lo up
echo ready
exec sleep infinity
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_pids(name: str) -> list[int]:
    out = _ip("netns", "pids", name, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_netns(name: str) -> None:
    """Kill every process in the namespace by PID, then delete it (tolerates it being gone)."""
    for _ in range(3):
        pids = netns_pids(name)
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.05)
    _ip("netns", "del", name, check=False)


def cleanup_leftovers(prefix: str) -> list[str]:
    """Remove namespaces ``<prefix><pid>-*`` whose creating process is dead (a crashed run)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(prefix):
            continue
        owner = name[len(prefix) :].split("-", 1)[0]
        if owner.isdigit() and _pid_alive(int(owner)) and int(owner) != os.getpid():
            continue  # a concurrent run: not ours to touch
        remove_netns(name)
        removed.append(name)
    return removed


class SimVM:
    """One simulated VM. ``run`` executes a command inside it; files are reachable from the host
    through ``/proc/HOLDER/root``."""

    def __init__(self, netns: str, name: str, zone: int, host: int = 2) -> None:
        self.netns, self.name, self.zone = netns, name, zone
        self.eth0_ip = ipaddress.ip_address(f"198.18.{zone}.{host}")
        self.gateway = ipaddress.ip_address(f"198.18.{zone}.1")
        _ip("netns", "add", netns)
        self.holder: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["ip", "netns", "exec", netns, "sh", "-c", HOLDER_SCRIPT],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._pid = self.holder.pid
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != b"ready":
            err = self.holder.stderr.read() if self.holder.stderr else b""
            self.destroy()
            raise RuntimeError(f"rig holder for {name} failed: {err.decode(errors='replace')}")

    @classmethod
    def attach(cls, netns: str, name: str, zone: int, host: int, pid: int) -> SimVM:
        """A handle on a VM another process created (e.g. the lab's ``up``), by its holder PID."""
        vm = cls.__new__(cls)
        vm.netns, vm.name, vm.zone, vm._pid = netns, name, zone, pid
        vm.eth0_ip = ipaddress.ip_address(f"198.18.{zone}.{host}")
        vm.gateway = ipaddress.ip_address(f"198.18.{zone}.1")
        vm.holder = None
        return vm

    @property
    def pid(self) -> int:
        return self._pid

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "--"]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.prefix(), *cmd], capture_output=True, text=True, timeout=timeout, input=input, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"[{self.name}] {' '.join(cmd)} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix(), *cmd], **kwargs)  # type: ignore[call-overload]

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-c", code, *args], check=check, timeout=timeout)

    def path(self, inside: str) -> Path:
        """Host path of a file inside the VM's private mounts."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def pids(self) -> list[int]:
        return [p for p in netns_pids(self.netns) if p != self.pid]

    def destroy(self) -> None:
        remove_netns(self.netns)
        if self.holder is None:  # attached: not our child, killed by PID above or here
            _kill_pids([self._pid] if _pid_alive(self._pid) else [])
            return
        if self.holder.poll() is None:
            _kill_pids([self.holder.pid])
        try:
            self.holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()


class Rig:
    """Router namespace plus VMs. Use as a context manager; ``close`` is safe to call twice."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = f"{prefix}{os.getpid()}"
        cleanup_leftovers(prefix)
        self.router = f"{self.tag}-wan"
        self.vms: dict[str, SimVM] = {}
        _ip("netns", "add", self.router)
        try:
            _ip("-n", self.router, "link", "set", "lo", "up")
            subprocess.run(
                ["ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                check=True,
                capture_output=True,
            )
        except BaseException:
            self.close()
            raise

    @classmethod
    def attach(cls, prefix: str, tag: str, vms: Sequence[SimVM]) -> Rig:
        """A handle on a rig another process built (no leftover sweep: its creator may be gone)."""
        rig = cls.__new__(cls)
        rig.prefix, rig.tag, rig.router = prefix, tag, f"{tag}-wan"
        rig.vms = {vm.name: vm for vm in vms}
        return rig

    def router_run(self, *cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """A command inside the router namespace (nft, sysctl, conntrack, ip)."""
        proc = subprocess.run(["ip", "netns", "exec", self.router, *cmd], capture_output=True, text=True,
                              input=input, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"[router] {' '.join(cmd)} -> {proc.returncode}: {proc.stderr}")
        return proc

    def bridge(self, zone: int) -> str:
        """The zone's segment in the router namespace (created with the zone's first VM)."""
        return f"bz{zone}"

    def _ensure_zone(self, zone: int, mtu: int) -> None:
        br = self.bridge(zone)
        if _ip("-n", self.router, "link", "show", br, check=False).returncode == 0:
            return
        _ip("-n", self.router, "link", "add", br, "mtu", str(mtu), "type", "bridge")
        _ip("-n", self.router, "addr", "add", f"198.18.{zone}.1/24", "dev", br)
        _ip("-n", self.router, "link", "set", br, "up")

    def add_vm(self, name: str, zone: int, mtu: int = 1500) -> SimVM:
        """A VM in zone ``zone`` (1..250): eth0 198.18.zone.N/24 (N = 2 for the zone's first VM, then 3,
        ...), default route via the WAN router at 198.18.zone.1."""
        assert name not in self.vms and 1 <= zone <= 250 and len(name) <= 12
        host = 2 + sum(1 for vm in self.vms.values() if vm.zone == zone)
        vm = SimVM(f"{self.tag}-{name}", name, zone, host)
        self.vms[name] = vm
        try:
            self._ensure_zone(zone, mtu)
            rside = f"r{name}"
            _ip(
                "-n",
                self.router,
                "link",
                "add",
                rside,
                "mtu",
                str(mtu),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                str(mtu),
                "netns",
                vm.netns,
            )
            _ip("-n", self.router, "link", "set", rside, "master", self.bridge(zone))
            _ip("-n", self.router, "link", "set", rside, "up")
            _ip("-n", vm.netns, "addr", "add", f"{vm.eth0_ip}/24", "dev", "eth0")
            _ip("-n", vm.netns, "link", "set", "eth0", "up")
            _ip("-n", vm.netns, "route", "add", "default", "via", str(vm.gateway))
        except BaseException:
            self.close()
            raise
        return vm

    # -- private segments (a zone's VM network behind its site gateway) -------------------------

    def add_lan(self, name: str, cidr: str, *, router_host: int | None = None, mtu: int = 1500) -> str:
        """An L2 segment of its own (bridge ``bl<name>`` in the router namespace) for ``cidr``, e.g. a
        zone's private VM network. The router has no address on it unless ``router_host`` is given
        (then host N of ``cidr``, where in-process doubles such as OneGate can listen); it routes
        nothing for it either way: the VMs on it reach other zones only through a gateway VM."""
        br = f"bl{name}"
        assert len(br) <= 15
        _ip("-n", self.router, "link", "add", br, "mtu", str(mtu), "type", "bridge")
        if router_host is not None:
            net = ipaddress.ip_network(cidr)
            _ip("-n", self.router, "addr", "add", f"{net.network_address + router_host}/{net.prefixlen}", "dev", br)
        _ip("-n", self.router, "link", "set", br, "up")
        return br

    def add_nic(self, vm: SimVM, lan: str, ifname: str, address: str, *, mtu: int = 1500) -> None:
        """Another NIC of ``vm``, on segment ``lan`` (from :meth:`add_lan`), with ``address`` (CIDR)."""
        rside = f"r{vm.name}{ifname[-1]}"
        assert len(rside) <= 15
        _ip("-n", self.router, "link", "add", rside, "mtu", str(mtu), "type", "veth", "peer", "name", ifname,
            "mtu", str(mtu), "netns", vm.netns)
        _ip("-n", self.router, "link", "set", rside, "master", lan)
        _ip("-n", self.router, "link", "set", rside, "up")
        _ip("-n", vm.netns, "addr", "add", address, "dev", ifname)
        _ip("-n", vm.netns, "link", "set", ifname, "up")

    def add_lan_vm(self, name: str, lan: str, address: str, *, zone: int, mtu: int = 1500) -> SimVM:
        """A VM whose only NIC (eth0, ``address`` in CIDR form) is on segment ``lan``: no default route,
        so it reaches other zones only through the routes it is given (its zone's site gateway)."""
        assert name not in self.vms and len(name) <= 12
        vm = SimVM(f"{self.tag}-{name}", name, zone, 250)
        vm.eth0_ip = ipaddress.ip_interface(address).ip
        vm.gateway = None  # type: ignore[assignment]
        self.vms[name] = vm
        try:
            self.add_nic(vm, lan, "eth0", address, mtu=mtu)
        except BaseException:
            self.close()
            raise
        return vm

    def close(self) -> None:
        for vm in list(self.vms.values()):
            vm.destroy()
        self.vms.clear()
        remove_netns(self.router)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_context(path: Path, values: dict[str, str]) -> Path:
    """A CONTEXT file as OpenNebula writes it: sorted ``NAME='value'`` lines, ``'`` as ``'\\''``."""
    lines = [f"{k}='" + v.replace("'", "'\\''") + "'" for k, v in sorted(values.items())]
    path.write_text("\n".join(lines) + "\n")
    return path
