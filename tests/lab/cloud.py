"""The lab's cloud: three OpenNebula zones as doubles, running in a background process.

    python -m tests.lab.cloud serve [--dir /run/fclab]     (started by ``three_zone up``)

Per zone, a front-end double: the OneGate double (``tests/onegate_server.py``) bound in the WAN
router namespace on the zone gateway, port 5030, reachable from that zone only (the router's nft
input chain), and the OneFlow double (``tests/oneflow_double.py``) on top of it, both of the zone's
OpenNebula version. The zones differ on purpose, to cover both schemas and both clients:

    zone A  7.4.0   CLI (oneflow-template instantiate, prompted)   the coordinator: the SuperLink and two
                                                                   SuperNodes that find it through OneGate
    zone B  6.10.5  CLI (custom_attrs, $NAME substitution)         a training site over WireGuard
    zone C  7.2.0   Sunstone's form (web_instantiate, no base64)   a training site over the public NAT

The VMs OneFlow creates are pre-built slots (simulated VMs of ``tests/rig``, installed as appliance
images by ``oneapps_double.install``: the files ``provision.sh --files-only`` installs, on this
checkout's virtualenv). The OneFlow double's ``nic_context`` gives a new VM the next free slot of
its role in its zone (its NIC), ``on_vm_created`` boots the slot through the one-apps double with
the CONTEXT exactly as OneFlow built it and the VM's OneGate token on the context CD, and
``on_reconfigure`` (``onevm updateconf``) runs one-context's reconfigure on it. Boots and
reconfigures run in threads of their own, one at a time per VM, and are recorded (``vms``, ``wait``).

The doubles must outlive the lab command that started them, so they live here, and the lab talks to
this process over a unix socket (``DIR/cloud.sock``, mode 0600): one JSON object per line, one
request per connection, answered by ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``.
``tests/lab/one_cli.py`` turns the operator's OpenNebula commands (onetemplate, oneflow-template,
oneflow, onevm) into these requests, so the walkthrough runs as typed. Operations: ``ping``,
``info``, ``vms``, ``wait``, ``onetemplate-update``, ``oneflow-template`` (the CLI, with the typed
answers), ``web-instantiate``, ``oneflow-show``, ``oneflow-list``, ``oneflow-scale``, ``onevm-show``,
``onevm-updateconf``, ``onevm-reboot``, ``onevm-poweroff``, ``onevm-resume``, ``user-templates``,
``audit``, ``scan`` (tokens and private keys in outputs, VM logs and OneGate), ``shutdown``. OneGate
tokens never leave this process except on the VMs' context CDs.

Every OneGate update of the lab is audited here (a listener on each OneGate double): after each
accepted PUT the VM's USER_TEMPLATE is read, and one holding READY=YES next to an FL_READY other
than YES is counted as a violation of the readiness rule (``audit``).

The process owns the rig (its namespaces carry this process's pid), so ``down`` kills it by PID and
removes what a killed process left behind (``tests.rig.cleanup_leftovers``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.flower_envs import LAB_MINOR

PREFIX = "fclab"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = Path("/run/fclab")
OG_PORT = 5030
PUBLIC_IP = "203.0.113.10"  # the SuperLink's "public" address (1:1 NAT in the router)
SUPERLINK_TEMPLATE_ID = 11  # the appliances' VM templates, as imported from the marketplace
SUPERNODE_TEMPLATE_ID = 12

# The Flower the lab's images carry (tests/flower_envs.LAB_MINOR): 1.42 by default (.venv-flwr142: the
# HTTP era, what the appliance image bakes; CI runs it), or FLOWER_CTX_LAB_FLOWER=1.39 (the main test
# virtualenv: the gRPC era; the slower job, README).
LAB_FLOWERS = {"1.39": "1.39.0", "1.42": "1.42.0"}


def lab_flower() -> str:
    """The release the lab's images carry (FLOWER_VERSION answered in every zone)."""
    if LAB_MINOR not in LAB_FLOWERS:
        raise SystemExit(f"FLOWER_CTX_LAB_FLOWER={LAB_MINOR!r}: choose one of {', '.join(LAB_FLOWERS)}")
    return LAB_FLOWERS[LAB_MINOR]


def lab_venv() -> Path:
    """The virtualenv installed as /opt/flower/venv of every image (the Flower of ``lab_flower``)."""
    from tests.flower_envs import flower_python

    lab_flower()
    python = flower_python(LAB_MINOR)
    if python is None:
        raise SystemExit(f"no Python with Flower {LAB_MINOR} (test.sh makes .venv-flwr{LAB_MINOR.replace('.', '')})")
    return Path(python).parent.parent


@dataclass(frozen=True)
class Zone:
    letter: str
    index: int  # 198.18.<index>.0/24, gateway .1
    version: str  # OneFlow and OneGate
    client: str  # how the lab instantiates here: "cli" or "web"
    slots: dict[str, tuple[str, ...]]  # role -> pre-built VMs (slot names), in the order they are used
    first_vmid: int

    @property
    def frontend(self) -> str:
        return f"one-{self.letter.lower()}"

    @property
    def gateway(self) -> str:
        return f"198.18.{self.index}.1"


# The lab's variants differ in zone B only: "per-node" (default), a WireGuard tunnel per SuperNode;
# "gateway", one site gateway VM (the SuperNode image as role gateway, the zone's only tunnel) and
# SuperNodes behind it without WireGuard (docs/site-gateways.md). Zone B then sits behind its own NAT
# (ZONE_B_PUBLIC): the hub routes zone B's network into wg0, so the gateway's tunnel packets must not
# come from that network.
VARIANTS = ("per-node", "gateway")
ZONE_B_PUBLIC = "203.0.113.20"


def zones_for(variant: str) -> dict[str, Zone]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown lab variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    b_slots = {"supernode": ("b1", "b2", "b3")} if variant == "per-node" else \
        {"gateway": ("bg",), "supernode": ("b1", "b2", "b3", "b4")}
    return {
        "A": Zone("A", 1, "7.4.0", "cli", {"superlink": ("link",), "supernode": ("a1", "a2")}, 100),
        "B": Zone("B", 2, "6.10.5", "cli", b_slots, 200),
        "C": Zone("C", 3, "7.2.0", "web", {"supernode": ("c1", "c2")}, 300),
    }


ZONES = zones_for("per-node")  # the cloud process sets its variant's (serve --variant)

ROUTER_NFT = """
table ip fclab {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr %(public)s dnat to %(link)s
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr %(link)s oifname != "bz1" snat to %(public)s
%(zone_b_nat)s  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid drop
    ct state established,related accept
    ct status dnat accept
    iifname "bz1" accept
    # A zone's network is one segment: its VMs reach each other (br_netfilter hands bridged packets here).
    iifname "bz2" oifname "bz2" accept
    iifname "bz3" oifname "bz3" accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport %(og)d ip daddr 198.18.1.1 iifname != "bz1" drop
    tcp dport %(og)d ip daddr 198.18.2.1 iifname != "bz2" drop
    tcp dport %(og)d ip daddr 198.18.3.1 iifname != "bz3" drop
  }
}
"""


def hardware_template(zone: Zone, role: str) -> str:
    """The role's VM template as the appliance import leaves it: no CONTEXT yet (the operator adds
    it with ``onetemplate update ID FILE --append``, from ``flower-ctx oneflow vm-template``)."""
    image = "Service FlowerSuperLink" if role == "superlink" else "Service FlowerSuperNode"  # gateway: SuperNode's
    return (f'NAME = "{image}"\nCPU = "1"\nVCPU = "2"\nMEMORY = "2048"\n'
            f'DISK = [ IMAGE = "{image}" ]\nNIC = [ NETWORK = "zone-{zone.letter.lower()}" ]\n')


def render_template(attrs: list[tuple[str, Any]]) -> str:
    """OpenNebula template text for parsed attributes (``"`` escaped as the parser expects)."""
    def q(v: str) -> str:
        return '"' + v.replace('"', '\\"') + '"'

    out = []
    for name, value in attrs:
        if isinstance(value, dict):
            out.append(f"{name} = [\n" + ",\n".join(f"  {k} = {q(v)}" for k, v in value.items()) + " ]")
        else:
            out.append(f"{name} = {q(value)}")
    return "\n".join(out) + "\n"


# =================================================================================================
# The cloud process


@dataclass
class Job:
    kind: str  # boot | reconfigure | reboot | resume
    started: float
    ended: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Machine:
    """A VM OneFlow made, on its slot."""

    zone: str
    vmid: int
    name: str
    role: str
    service_id: int
    slot: str
    jobs: list[Job] = field(default_factory=list)
    powered: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def busy(self) -> bool:
        return any(j.ended is None for j in self.jobs)


def _summary(run: Any, status: str | None) -> dict[str, Any]:
    return {"unit": run.unit, "stages": list(run.stages), "seconds": run.seconds, "status": status,
            "killed": len(run.killed),
            "scripts": [{"stage": s.stage, "name": s.name, "rc": s.rc, "output": s.output[-4000:]}
                        for s in run.scripts]}


class Cloud:
    def __init__(self, state_dir: Path) -> None:
        from tests.rig import Rig

        self.dir = state_dir
        self.rig = Rig(PREFIX)
        self.lock = threading.RLock()
        self.slots: dict[str, Any] = {}  # slot name -> SimVM
        self.slot_zone: dict[str, str] = {}
        self.slot_role: dict[str, str] = {}
        self.slot_of: dict[tuple[str, int], str] = {}  # (zone, vmid) -> slot
        self.machines: dict[tuple[str, int], Machine] = {}
        self.onegates: dict[str, Any] = {}
        self.flows: dict[str, Any] = {}
        self.audit = {"updates": 0, "violations": 0, "examples": []}
        self.stopping = threading.Event()

    # -- build ------------------------------------------------------------------------------------

    def build(self) -> None:
        from tests import oneapps_double as oa

        for zone in ZONES.values():
            for role, names in zone.slots.items():
                for name in names:
                    self.slots[name] = self.rig.add_vm(name, zone.index)
                    self.slot_zone[name], self.slot_role[name] = zone.letter, role
        link = self.slots[ZONES["A"].slots["superlink"][0]]
        zone_b_nat = f'    ip saddr 198.18.2.0/24 oifname != "bz2" snat to {ZONE_B_PUBLIC}\n' \
            if "gateway" in ZONES["B"].slots else ""
        self.rig.router_run("nft", "-f", "-", input=ROUTER_NFT % {
            "public": PUBLIC_IP, "link": link.eth0_ip, "og": OG_PORT, "zone_b_nat": zone_b_nat})
        # Strict conntrack: a packet of a flow the NAT forgot is dropped, not picked up mid-stream.
        self.rig.router_run("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0")
        # Every slot becomes an appliance image of its role (two at a time: this is a 2-core machine).
        errors: list[str] = []

        def install(name: str) -> None:
            try:
                image = "superlink" if self.slot_role[name] == "superlink" else "supernode"  # a gateway too
                oa.install(self.slots[name], image, venv=venv)
            except BaseException as exc:  # reported below
                errors.append(f"{name}: {exc}")

        names = list(self.slots)
        venv = lab_venv()
        for i in range(0, len(names), 2):
            threads = [threading.Thread(target=install, args=(n,)) for n in names[i:i + 2]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise RuntimeError("installing the appliance images failed:\n" + "\n".join(errors))
        for zone in ZONES.values():
            self._front_end(zone)

    def _front_end(self, zone: Zone) -> None:
        from tests.netns_thread import call_in_netns
        from tests.oneflow_double import OneFlow
        from tests.onegate_server import OneGateServer

        og = OneGateServer(zone.gateway, OG_PORT, version=zone.version)
        og._next_vm = zone.first_vmid  # VMIDs of this zone's oned (each zone counts on its own)
        call_in_netns(self.rig.router, og.start)
        og.add_listener(lambda vm_id, typ, data, z=zone.letter: self._audit(z, vm_id))
        flow = OneFlow(og, zone.version, nic_context=self._nic_context(zone),
                       on_vm_created=lambda rec, z=zone.letter: self._created(z, rec),
                       on_reconfigure=lambda rec, z=zone.letter: self._reconfigured(z, rec))
        for role in zone.slots:
            if role == "gateway":
                continue  # the gateway role uses the SuperNode's VM template (training-site-gateway)
            tid = SUPERLINK_TEMPLATE_ID if role == "superlink" else SUPERNODE_TEMPLATE_ID
            flow.add_vm_template(hardware_template(zone, role), tid)
        flow.start()
        self.onegates[zone.letter], self.flows[zone.letter] = og, flow

    def _nic_context(self, zone: Zone) -> Callable[[str, str, int], dict[str, str]]:
        def nic(role: str, vm_name: str, vmid: int) -> dict[str, str]:
            with self.lock:
                used = set(self.slot_of.values())
                free = [n for n in zone.slots.get(role, ()) if n not in used]
                if not free:
                    raise RuntimeError(f"zone {zone.letter}: no pre-built VM left for role {role} ({vm_name})")
                self.slot_of[(zone.letter, vmid)] = free[0]
                vm = self.slots[free[0]]
            host = int(str(vm.eth0_ip).rsplit(".", 1)[1])
            return {"ETH0_IP": str(vm.eth0_ip), "ETH0_MASK": "255.255.255.0", "ETH0_GATEWAY": str(vm.gateway),
                    "ETH0_DNS": str(vm.gateway), "ETH0_MAC": f"02:00:c6:12:{zone.index:02x}:{host:02x}",
                    "ETH0_NETWORK": f"198.18.{zone.index}.0", "ETH0_NETWORK_NAME": f"zone-{zone.letter.lower()}"}
        return nic

    # -- VM lifecycle --------------------------------------------------------------------------------

    def _created(self, zone: str, rec: Any) -> None:
        slot = self.slot_of[(zone, rec.id)]
        m = Machine(zone, rec.id, rec.name, rec.role, rec.service_id, slot)
        with self.lock:
            self.machines[(zone, rec.id)] = m
        self._job(m, "boot", lambda: self._boot(m, rec.context, rec.token))

    def _reconfigured(self, zone: str, rec: Any) -> None:
        from tests import oneapps_double as oa

        m = self.machines[(zone, rec.id)]
        context = dict(rec.context)
        if m.powered:  # a powered-off VM reads its new CD at its next boot
            self._job(m, "reconfigure", lambda: _summary(oa.reconfigure(self.slots[m.slot], context),
                                                         oa.status(self.slots[m.slot])))

    def _boot(self, m: Machine, context: dict[str, str], token: str) -> dict[str, Any]:
        from tests import oneapps_double as oa

        vm = self.slots[m.slot]
        return _summary(oa.boot(vm, context, token), oa.status(vm))

    def _job(self, m: Machine, kind: str, work: Callable[[], dict[str, Any]]) -> None:
        job = Job(kind, time.time())
        with self.lock:
            m.jobs.append(job)

        def run() -> None:
            with m.lock:  # one boot or reconfigure at a time per VM, in order
                try:
                    job.result = work()
                except BaseException:
                    job.error = traceback.format_exc()[-4000:]
                finally:
                    job.ended = time.time()

        threading.Thread(target=run, name=f"{kind}-{m.zone}{m.vmid}", daemon=True).start()

    def _power_off(self, m: Machine) -> None:
        """What powering the VM off does to it: every process gone, /run emptied (the slot's private
        /etc, /opt and keys stay: they are its disk)."""
        from tests import oneapps_double as oa
        from tests.rig import _kill_pids

        vm = self.slots[m.slot]
        oa.stop_unit(vm, "boot")
        for _ in range(20):
            pids = vm.pids()
            if not pids:
                break
            _kill_pids(pids)
            time.sleep(0.1)
        vm.run(["sh", "-c", "rm -rf /run/one-context/* /run/oneapps-double/*.pid /run/wireguard/* "
                            "/run/one-appliance-service.pid; nft flush ruleset; ip link del wg0 2>/dev/null; true"])
        m.powered = False

    def _power_on(self, m: Machine) -> dict[str, Any]:
        """Boot again with the VM's current CONTEXT (a new CD, as after an updateconf while off)."""
        rec = self.flows[m.zone].record(m.vmid)
        m.powered = True
        return self._boot(m, rec.context, rec.token)

    def _audit(self, zone: str, vm_id: int) -> None:
        og = self.onegates[zone]
        with og.lock:
            vm = og.vms.get(vm_id)
            ut = dict(vm.user_template) if vm else {}
        with self.lock:
            self.audit["updates"] += 1
            if ut.get("READY") == "YES" and ut.get("FL_READY") != "YES":
                self.audit["violations"] += 1
                if len(self.audit["examples"]) < 5:
                    self.audit["examples"].append({"zone": zone, "vmid": vm_id, "FL_READY": ut.get("FL_READY"),
                                                   "FL_ERROR": ut.get("FL_ERROR"), "time": time.time()})

    # -- requests -----------------------------------------------------------------------------------

    def machine(self, zone: str, vmid: int) -> Machine:
        try:
            return self.machines[(zone, int(vmid))]
        except KeyError:
            raise LookupError(f"[VirtualMachineInfo] Error getting virtual machine [{vmid}] in zone {zone}.") from None

    def machine_doc(self, m: Machine) -> dict[str, Any]:
        vm = self.slots[m.slot]
        last = m.jobs[-1] if m.jobs else None
        return {"zone": m.zone, "vmid": m.vmid, "name": m.name, "role": m.role, "service_id": m.service_id,
                "slot": m.slot, "ip": str(vm.eth0_ip), "busy": m.busy(), "powered": m.powered,
                "jobs": [{"kind": j.kind, "started": j.started, "ended": j.ended, "error": j.error,
                          "result": j.result} for j in m.jobs[-3:]],
                "last": last.kind if last else None}

    def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        zone = req.get("zone")
        if zone is not None and zone not in ZONES:
            raise LookupError(f"no zone {zone!r}")
        if op == "ping":
            return "pong"
        if op == "info":
            return {"tag": self.rig.tag, "router": self.rig.router, "pid": os.getpid(), "variant": VARIANT,
                    "slots": {n: {"zone": self.slot_zone[n], "role": self.slot_role[n], "netns": vm.netns,
                                  "pid": vm.pid, "ip": str(vm.eth0_ip),
                                  "host": int(str(vm.eth0_ip).rsplit(".", 1)[1]), "index": vm.zone}
                              for n, vm in self.slots.items()},
                    "zones": {z.letter: {"version": z.version, "client": z.client, "frontend": z.frontend,
                                         "onegate": f"http://{z.gateway}:{OG_PORT}"} for z in ZONES.values()}}
        if op == "vms":
            with self.lock:
                ms = [m for m in self.machines.values() if zone is None or m.zone == zone]
            return [self.machine_doc(m) for m in sorted(ms, key=lambda m: (m.zone, m.vmid))]
        if op == "wait":
            return self._wait(zone, req.get("vmids"), float(req.get("limit", 300)))
        if op == "onetemplate-update":
            return self._onetemplate_update(zone, int(req["id"]), req["text"], bool(req.get("append")))
        if op == "oneflow-template":
            from tests.oneflow_double import CliError

            try:
                return {"status": 0, "output": self.flows[zone].cli(req["argv"], req.get("answers") or [])}
            except CliError as exc:
                return {"status": exc.status, "output": exc.output}
        if op == "web-instantiate":
            return self.flows[zone].web_instantiate(int(req["id"]), req.get("values") or {})
        if op == "oneflow-show":
            return self._service_doc(zone, int(req["id"]))
        if op == "oneflow-list":
            flow = self.flows[zone]
            with flow.lock:
                ids = sorted(flow.services)
            return [self._service_doc(zone, i) for i in ids]
        if op == "oneflow-scale":
            self.flows[zone].scale(int(req["id"]), req["role"], int(req["cardinality"]))
            return self._service_doc(zone, int(req["id"]))
        if op == "onevm-show":
            m = self.machine(zone, req["id"])
            return {**self.machine_doc(m), "user_template": self.onegates[zone].user_template(m.vmid)}
        if op == "onevm-updateconf":
            return self._updateconf(zone, int(req["id"]), req["text"], bool(req.get("append")))
        if op in ("onevm-reboot", "onevm-poweroff", "onevm-resume"):
            m = self.machine(zone, req["id"])
            if op == "onevm-poweroff":
                with m.lock:
                    self._power_off(m)
            elif op == "onevm-resume":
                if m.powered:
                    raise ValueError(f"VM {m.vmid} is not powered off")
                self._job(m, "resume", lambda: self._power_on(m))
            else:
                def reboot() -> dict[str, Any]:
                    self._power_off(m)
                    return self._power_on(m)
                self._job(m, "reboot", reboot)
            return self.machine_doc(m)
        if op == "user-templates":
            og = self.onegates[zone]
            with og.lock:
                return {str(i): dict(vm.user_template) for i, vm in og.vms.items()}
        if op == "audit":
            with self.lock:
                return json.loads(json.dumps(self.audit))
        if op == "scan":
            return self._scan(req.get("texts") or [], req.get("secrets") or [])
        if op == "shutdown":
            self.stopping.set()
            return "bye"
        raise ValueError(f"unknown op {op!r}")

    def _scan(self, texts: list[str], extra: list[str]) -> dict[str, Any]:
        """Look for secrets where none may be: every OneGate token this cloud issued, the private keys
        on the VMs (WireGuard, TLS, the SuperNodes' node keys: each line of their PEM bodies) and
        ``extra`` (e.g. a key the operator made), in ``texts`` (what the operator's commands printed),
        in every VM's logs (Flower's and flower-ctx's, the one-apps step logs, status and report,
        one-contextd's journal) and in every document each zone's OneGate serves: every USER_TEMPLATE, every
VM's ``GET /vm`` and every service's ``GET /service?extended=true`` (the full CONTEXT of each VM of
the service, readable by all of them). Says where, never what."""
        from tests.onegate_server import ISSUED_TOKENS

        needles = {t: "token" for t in ISSUED_TOKENS} | {e: "key" for e in extra if e}
        for vm in self.slots.values():
            for key_file in ("/etc/wireguard/wg0.key", "/opt/flower/certs/node.key", "/opt/flower/certs/ca.key",
                             "/opt/flower/certs/server.key"):
                path = vm.path(key_file)
                if path.is_file():
                    for line in path.read_text(errors="replace").splitlines():
                        if len(line.strip()) >= 40 and "-----" not in line:
                            needles[line.strip()] = "key"
        logs = ("/opt/flower/run", "/var/log/one-appliance", "/var/log/one-context-double.log",
                "/etc/one-appliance/config", "/etc/one-appliance/status")
        sources: dict[str, str] = {f"output {i}": t for i, t in enumerate(texts)}
        for name, vm in self.slots.items():
            for where in logs:
                root = vm.path(where)
                files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) \
                    if root.is_dir() else []
                for f in files:
                    sources[f"{name}:{where}/{f.name}" if f != root else f"{name}:{where}"] = \
                        f.read_text(errors="replace")
        for zone, og in self.onegates.items():
            with og.lock:
                for vmid, fake in og.vms.items():
                    sources[f"OneGate {zone} VM {vmid}"] = json.dumps(fake.user_template)
                    # GET /vm as the VM itself reads it (the whole VM: CONTEXT included).
                    sources[f"OneGate {zone} GET /vm of VM {vmid}"] = json.dumps(og._full_hash(fake))
                # GET /service?extended=true: every VM of a service reads the full CONTEXT of every other.
                for sid, svc in og.services.items():
                    try:
                        doc = og._service_hash(svc, True)
                    except Exception as exc:  # upstream's 404 for a VM gone mid-listing: nothing served
                        doc = {"error": str(exc)}
                    sources[f"OneGate {zone} GET /service/{sid}?extended=true"] = json.dumps(doc)
        found = sorted({f"{kind} in {where}" for where, text in sources.items()
                        for needle, kind in needles.items() if needle in text})
        extended = [w for w, text in sources.items() if w.endswith("?extended=true") and '"CONTEXT"' in text]
        return {"scanned": len(sources), "secrets": len(needles), "found_in": found, "extended": len(extended)}

    def _wait(self, zone: str | None, vmids: list[int] | None, timeout: float) -> list[dict[str, Any]]:
        """Until OneFlow has nothing pending and the VMs' boots and reconfigures have ended."""
        end = time.monotonic() + timeout
        for z in ([zone] if zone else list(ZONES)):
            self.flows[z].settle(max(1.0, end - time.monotonic()))
        while True:
            with self.lock:
                ms = [m for m in self.machines.values() if (zone is None or m.zone == zone)
                      and (not vmids or m.vmid in vmids)]
            if not any(m.busy() for m in ms):
                return [self.machine_doc(m) for m in ms]
            if time.monotonic() > end:
                raise TimeoutError(f"VMs still booting after {timeout:.0f}s: "
                                   f"{[m.vmid for m in ms if m.busy()]}")
            time.sleep(0.2)

    def _onetemplate_update(self, zone: str, tid: int, text: str, append: bool) -> str:
        from tests.oneflow_double import merge_templates, parse_template

        flow = self.flows[zone]
        new = parse_template(text)
        with flow.lock:
            if tid not in flow.vm_templates:
                raise LookupError(f"[one.template.info] Error getting VM template [{tid}].")
            old = flow.vm_templates[tid].attrs
        attrs = merge_templates(old, new) if append else new
        flow.add_vm_template(render_template(attrs), tid)
        return ""

    def _updateconf(self, zone: str, vmid: int, text: str, append: bool) -> dict[str, Any]:
        from tests.oneflow_double import parse_template

        if not append:
            raise ValueError("only `onevm updateconf ID FILE --append` is modelled (without it the CONTEXT "
                             "given replaces the VM's whole CONTEXT)")
        m = self.machine(zone, vmid)
        contexts = [v for n, v in parse_template(text) if n == "CONTEXT" and isinstance(v, dict)]
        changes: dict[str, str | None] = {}
        for ctx in contexts:
            changes.update(ctx)
        bad = [k for k in changes if k.startswith("ETH")]
        if bad:
            raise ValueError(f"Unable to update {bad[0]}, update NIC to update network context")
        self.flows[zone].update_context(m.vmid, changes)
        return self.machine_doc(m)

    def _service_doc(self, zone: str, sid: int) -> dict[str, Any]:
        flow = self.flows[zone]
        with flow.lock:
            svc = flow.service(sid)
            return {"id": svc.id, "name": svc.name, "state": svc.state, "log": list(svc.log),
                    "roles": [{"name": r.name, "state": r.state, "cardinality": r.cardinality,
                               "nodes": [{"vmid": v, "name": flow.records[v].name} for v in r.nodes
                                         if v in flow.records]}
                              for r in svc.roles.values()]}

    # -- shutdown ----------------------------------------------------------------------------------

    def close(self) -> None:
        for flow in self.flows.values():
            flow.stop()
        for og in self.onegates.values():
            og.stop()
        self.rig.close()


class _Handler(socketserver.StreamRequestHandler):
    cloud: Cloud

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            req = json.loads(line)
            doc = {"ok": True, "result": self.cloud.handle(req)}
        except Exception as exc:  # answered to the client, which raises it
            doc = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc()[-2000:]}
        self.wfile.write((json.dumps(doc) + "\n").encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


VARIANT = "per-node"


def serve(state_dir: Path, variant: str = "per-node") -> int:
    global ZONES, VARIANT
    ZONES, VARIANT = zones_for(variant), variant
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = state_dir / "cloud.sock"
    sock.unlink(missing_ok=True)
    cloud = Cloud(state_dir)
    signal.signal(signal.SIGTERM, lambda *_: cloud.stopping.set())
    server: _Server | None = None
    try:
        t0 = time.monotonic()
        cloud.build()
        handler = type("Handler", (_Handler,), {"cloud": cloud})
        old = os.umask(0o177)
        try:
            server = _Server(str(sock), handler)
        finally:
            os.umask(old)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        print(json.dumps({"ready": True, "pid": os.getpid(), "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)
        while not cloud.stopping.wait(0.5):
            pass
        return 0
    except BaseException:
        traceback.print_exc()
        print(json.dumps({"ready": False}), flush=True)
        return 1
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        sock.unlink(missing_ok=True)
        cloud.close()


# =================================================================================================
# The client side


class CloudError(AssertionError):
    pass


def request(state_dir: Path, op: str, timeout: float = 600, **args: Any) -> Any:
    """One request to the cloud process; its result, or CloudError with the cloud's error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(state_dir / "cloud.sock"))
        s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    if not chunks:
        raise CloudError(f"the cloud process closed the connection ({op})")
    doc = json.loads(b"".join(chunks))
    if not doc.get("ok"):
        raise CloudError(doc.get("error", "?"))
    return doc["result"]


def start(state_dir: Path, timeout: float = 300, variant: str = "per-node") -> int:
    """Start the cloud process in the background (its own session); wait until it serves. Returns its pid."""
    import subprocess

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(state_dir / "cloud.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tests.lab.cloud", "serve", "--dir", str(state_dir),
                                 "--variant", variant],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        log.close()
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    try:
        doc = json.loads(line or b"{}")
    except ValueError:
        doc = {}
    if not doc.get("ready"):
        tail = (state_dir / "cloud.log").read_text(errors="replace")[-4000:]
        stop_pid(proc.pid)
        raise CloudError(f"the cloud process did not start:\n{tail}")
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pid(pid: int, state_dir: Path | None = None, grace: float = 60) -> None:
    """Stop the cloud process: ask it (it closes the rig), else SIGTERM, then SIGKILL, by PID."""
    if state_dir is not None and _alive(pid):
        try:
            request(state_dir, "shutdown", timeout=10)
        except (OSError, CloudError, ValueError):
            pass
    deadline = time.monotonic() + grace
    sent_term = False
    while _alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if not sent_term and time.monotonic() > deadline - grace / 2:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            sent_term = True
        time.sleep(0.2)
    try:
        os.waitpid(pid, os.WNOHANG)  # our child when started by this process
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.cloud", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    sv.add_argument("--variant", choices=VARIANTS, default="per-node")
    args = ap.parse_args(argv)
    return serve(args.dir, args.variant)


if __name__ == "__main__":
    sys.exit(main())
