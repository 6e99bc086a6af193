"""The three-zone federation lab: one Flower federation across three simulated OpenNebula zones,
created the way OpenNebula runs it.

    python -m tests.lab.three_zone [--variant per-node|gateway] up | train | drill NAME | down | all

``up`` starts the lab's cloud (``tests/lab/cloud.py``: per zone a OneGate and a OneFlow double of
that zone's OpenNebula version, and pre-built appliance VMs booted through the one-apps double) in
a background process, then runs the operator's walkthrough of docs/multi-site-federation.md, command
for command: VM templates from ``flower-ctx oneflow vm-template``, service templates from
``flower-ctx oneflow template``, ``oneflow-template create`` and ``instantiate`` (prompted, zones A
and B) or Sunstone's form (zone C), ``flower-ctx ca export`` and ``wg key`` on the SuperLink,
``flower-ctx wg peer`` and ``node key`` on the training sites' SuperNodes, and ``onevm updateconf``
of the SuperLink with their tunnel peers and admission keys. Nothing is run by hand at boot: every
VM is configured and bootstrapped by one-apps (net-90) and reports READY through flower-ctx and
net-99. ``train`` runs ``flwr run`` on the SuperLink VM; ``drill NAME`` one failure drill; ``down``
stops the cloud by PID and removes everything; ``all`` does up, train, every drill and down.

Zone A (198.18.1.0/24, OpenNebula 7.4, CLI): the coordinator service, one SuperLink VM, which is
also the WireGuard hub 10.10.9.1 and is reached from the WAN at 203.0.113.10 (1:1 NAT in the
router), and two SuperNodes of zone A's own data that find it and its CA through OneGate. Zone B
(198.18.2.0/24, 6.10.5, CLI): a training site of two SuperNodes over WireGuard, their tunnel
addresses taken from the pool 10.10.9.64/27 (a third VM is kept for the scale drill); in the variant
``gateway`` instead one site gateway (10.10.9.2, the zone's only tunnel) and three SuperNodes behind
it without WireGuard (a fourth for the gateway-scale drill), zone B then behind a NAT of its own
(203.0.113.20). Zone C (198.18.3.0/24, 7.2, Sunstone): a training site of two SuperNodes dialling
the public address with TLS. Each zone's OneGate answers that zone only.

Must run as root with ``ip netns``, wireguard-go and nftables. ``down`` (and every failure path of
``all``) leaves no namespace, interface, mount or process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import cloud
from tests.lab.cloud import (
    PREFIX,
    PUBLIC_IP,
    SUPERLINK_TEMPLATE_ID,
    SUPERNODE_TEMPLATE_ID,
    CloudError,
    lab_flower,
    lab_venv,
)
from tests.rig import Rig, SimVM, cleanup_leftovers

REPO = Path(__file__).resolve().parents[2]
APP_DIR = Path(__file__).resolve().parent / "app"
STATE_DIR = cloud.DEFAULT_DIR
STATE = STATE_DIR / "state.json"
OPS = STATE_DIR / "ops"  # the operator's working directories, one per zone front-end

HUB_WG = "10.10.9.1"
WG_POOL = "10.10.9.64/27"  # zone B's SuperNodes: host 2 + the VM's number in its role
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAT_TIMEOUT_S = 12  # the aggressive NAT's established-timeout (drill "nat"): above keepalive 10 s, below heartbeat gaps

# The lab's images carry Flower 1.42 by default (tests/flower_envs.LAB_MINOR; FLOWER_CTX_LAB_FLOWER=1.39
# for the gRPC era), the image's own release, which the templates offer as FLOWER_VERSION's default:
# the operator presses Enter there. The 1.39 lab answers 1.39.0 in every zone (the default would make
# flower-ctx try to install 1.42 at every configure: no network here). The guide shows the default
# lab's answers; ``answers`` gives the ones this lab types.
ANSWERS = {  # what the operator types (zones A, B) or fills in (zone C); "" everywhere else
    "A": {"FL_CERT_EXTRA_SAN": f"IP:{PUBLIC_IP}"},
    "B": {"FL_SSL_CA_CERTFILE": "<flower-ctx ca export>",
          "FL_SUPERLINK_ADDRESS": f"{HUB_WG}:9092", "FL_NODE_CONFIG": "site=2", "FL_BOOTSTRAP_WAIT": "30",
          "FL_WG_ENABLED": "YES",
          "FL_WG_ADDRESS": WG_POOL,
          "FL_WG_PEER_PUBLIC_KEY": "<hub public key>", "FL_WG_PEER_ENDPOINT": f"{PUBLIC_IP}:51820",
          "FL_WG_PEER_ALLOWED_IPS": f"{HUB_WG}/32"},
    "C": {"FL_SSL_CA_CERTFILE": "<flower-ctx ca export>",
          "FL_SUPERLINK_ADDRESS": f"{PUBLIC_IP}:9092", "FL_NODE_CONFIG": "site=3", "FL_BOOTSTRAP_WAIT": "30"},
}



GATEWAY_WG = "10.10.9.2"  # the zone-B site gateway's tunnel address (lab variant "gateway")
# Zone B in the "gateway" variant: a training-site-gateway service (docs/site-gateways.md).
ANSWERS_GATEWAY_B = {
    "FL_SSL_CA_CERTFILE": "<flower-ctx ca export>", "FL_SUPERLINK_ADDRESS": f"{HUB_WG}:9092",
    "FL_WG_ADDRESS": f"{GATEWAY_WG}/24", "FL_WG_PEER_PUBLIC_KEY": "<hub public key>",
    "FL_WG_PEER_ENDPOINT": f"{PUBLIC_IP}:51820", "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/24",
    "FL_GATEWAY_ROUTES": "10.10.9.0/24", "FL_NODE_CONFIG": "site=2", "FL_BOOTSTRAP_WAIT": "30",
}


def answers(zone: str, variant: str = "per-node") -> dict[str, str]:
    """What the operator answers in ZONE for this lab's Flower (the guide shows the default lab's)."""
    from flower_ctx.values import FLOWER_BAKED

    flower = lab_flower()
    given = ANSWERS_GATEWAY_B if (zone, variant) == ("B", "gateway") else ANSWERS[zone]
    return {**given, **({"FLOWER_VERSION": flower} if flower != FLOWER_BAKED else {})}


def lab_bin() -> Path:
    """bin/ of the images' virtualenv: stock Flower's console scripts of the lab's release."""
    return lab_venv() / "bin"


# The walkthrough of docs/multi-site-federation.md, command for command (tests/test_lab.py checks
# the guide's ```sh lab blocks against this list, and that the lab really ran each one).
WALKTHROUGH = [
    # zone A front-end
    "flower-ctx oneflow vm-template superlink > superlink-context.txt",
    f"onetemplate update {SUPERLINK_TEMPLATE_ID} superlink-context.txt --append",
    "flower-ctx oneflow vm-template supernode > supernode-context.txt",
    f"onetemplate update {SUPERNODE_TEMPLATE_ID} supernode-context.txt --append",
    f"flower-ctx oneflow template single-site --superlink-template-id {SUPERLINK_TEMPLATE_ID}"
    f" --supernode-template-id {SUPERNODE_TEMPLATE_ID} > coordinator.json",
    "oneflow-template create coordinator.json",
    "oneflow-template instantiate 0",
    "oneflow show 0",
    # the SuperLink VM
    "flower-ctx status",
    "flower-ctx ca export",
    "flower-ctx wg key",
    # zone B front-end (OpenNebula 6.10)
    "flower-ctx oneflow vm-template supernode --opennebula 6.10 > supernode-context.txt",
    f"flower-ctx oneflow template training-site --opennebula 6.10 --supernode-template-id {SUPERNODE_TEMPLATE_ID}"
    " > training-site.json",
    "oneflow-template create training-site.json",
    # zone C front-end (OpenNebula 7)
    f"flower-ctx oneflow template training-site --supernode-template-id {SUPERNODE_TEMPLATE_ID} > training-site.json",
    # the training sites' SuperNode VMs
    "flower-ctx wg peer",
    "flower-ctx node key",
    # zone A front-end again
    "onevm updateconf 100 superlink-update.txt --append",
    # checks
    "flower-ctx doctor",
    "flwr run . lab --stream",
]
DRILLS = ["tunnel", "readiness-outage", "superlink-restart", "wrong-ca", "san-missing", "bad-context",
          "zone-b-first", "scale", "rogue", "onegate-rewrite", "lockout", "firewall", "renewal", "rotation", "restore",
          "nat"]
# The drills of the lab variant "gateway" (zone B behind one site gateway: tests/lab/drills_gateway.py).
GATEWAY_VARIANT_DRILLS = ["gateway-scale", "gateway-restart", "gateway-throughput"]
# Beyond CI's 30-minute budget: run by `all` and by the test suite with FLOWER_CTX_FULL_SUITE=1 only.
FULL_SUITE_DRILLS = {"rotation"}


class LabError(AssertionError):
    pass


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.5) -> float:
    """Poll until ``predicate`` is truthy; return the seconds it took."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def typed_answers(template: dict[str, Any], values: dict[str, str]) -> str:
    """The lines an operator types at ``oneflow-template instantiate``'s prompts: the value, the
    option's number for a list, Enter (empty) for the default."""
    inputs = template.get("user_inputs") or template.get("custom_attrs") or {}
    lines = []
    for key, spec in inputs.items():
        cfg = str(spec).split("|")
        value = values.get(key)
        if value is None:
            lines.append("")
        elif cfg[1].strip() == "list":
            lines.append(str(cfg[3].split(",").index(value)))
        else:
            lines.append(value)
    return "\n".join(lines) + "\n"


@dataclass
class Lab:
    info: dict[str, Any]  # the cloud process: pid, rig tag, slots, zones
    state: dict[str, Any] = field(default_factory=dict)  # kept across invocations (state.json)
    ran: list[str] = field(default_factory=list)  # operator commands run, as typed
    figures: dict[str, float] = field(default_factory=dict)
    last_errors: list[str] = field(default_factory=list)  # error replies of the last `flwr run`
    outputs: list[str] = field(default_factory=list, repr=False)  # what the operator's commands printed

    # ------------------------------------------------------------------ plumbing

    def request(self, op: str, timeout: float = 600, **args: Any) -> Any:
        return cloud.request(STATE_DIR, op, timeout=timeout, **args)

    @property
    def rig(self) -> Rig:
        return Rig.attach(PREFIX, self.info["tag"], [self.vm(n) for n in self.info["slots"]])

    def vm(self, slot: str) -> SimVM:
        s = self.info["slots"][slot]
        return SimVM.attach(s["netns"], slot, s["index"], s["host"], s["pid"])

    @property
    def link(self) -> SimVM:
        return self.vm("link")

    def machines(self, zone: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.request("vms", zone=zone) if role is None or m["role"] == role]

    def supernodes(self) -> list[dict[str, Any]]:
        return [m for m in self.machines(role="supernode") if m["powered"]]

    def machine(self, slot: str) -> dict[str, Any]:
        return next(m for m in self.machines() if m["slot"] == slot)

    def user_template(self, slot: str) -> dict[str, str]:
        """The VM's USER_TEMPLATE as its zone's OneGate holds it."""
        m = self.machine(slot)
        return self.request("user-templates", zone=m["zone"])[str(m["vmid"])]

    def front_end(self, zone: str, cmd: str, stdin: str | None = None, check: bool = True,
                  record: bool = True) -> tuple[int, str]:
        """An operator command against zone ZONE's front-end (ONE_XMLRPC / ONEFLOW_URL point there),
        run by ``sh`` as typed, in that zone's working directory."""
        if record:
            self.ran.append(cmd)
        workdir = OPS / zone
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fe = self.info["zones"][zone]["frontend"]
        env = {"PATH": f"{STATE_DIR / 'bin'}:{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
               "ONE_XMLRPC": f"http://{fe}:2633/RPC2", "ONEFLOW_URL": f"http://{fe}:2474", "LANG": "C.UTF-8",
               "HOME": str(workdir)}
        r = subprocess.run(["sh", "-c", cmd], cwd=workdir, env=env, input=stdin, capture_output=True, text=True,
                           timeout=300)
        out = r.stdout + r.stderr
        self.outputs.append(out)
        if check and r.returncode != 0:
            raise LabError(f"[zone {zone}] {cmd} -> {r.returncode}\n{out[-3000:]}")
        return r.returncode, out

    def on_vm(self, slot: str, cmd: str, check: bool = True, record: bool = True, stdout_only: bool = False,
              timeout: float = 240) -> tuple[int, str]:
        """An operator command on a VM (what `ssh root@VM CMD` runs), the appliance's PATH."""
        if record:
            self.ran.append(cmd)
        r = self.vm(slot).run(["env", "-C", "/root", "sh", "-c", cmd], check=False, timeout=timeout,
                              env={"PATH": VM_PATH, "LANG": "C.UTF-8", "HOME": "/root"})
        out = r.stdout if stdout_only else r.stdout + r.stderr
        self.outputs.append(r.stdout + r.stderr)
        if check and r.returncode != 0:
            raise LabError(f"[{slot}] {cmd} -> {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r.returncode, out

    def superlink_log(self) -> str:
        return self.link.path("/opt/flower/run/superlink.log").read_text(errors="replace")

    def node_log(self, slot: str) -> str:
        p = self.vm(slot).path("/opt/flower/run/supernode.log")
        return p.read_text(errors="replace") if p.exists() else ""

    def flower_pid(self, slot: str, service: str) -> int:
        return int(self.vm(slot).path(f"/opt/flower/run/{service}.pid").read_text().split()[0])

    def doctor(self, slot: str) -> dict[str, dict[str, str]]:
        r = self.vm(slot).run(["flower-ctx", "doctor", "--json"], check=False, timeout=120,
                              env={"PATH": VM_PATH})
        doc = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
        checks: dict[str, dict[str, str]] = {}
        for c in doc["checks"]:
            checks.setdefault(c["name"], c)
        return checks

    def ready(self, slot: str) -> bool:
        ut = self.user_template(slot)
        return ut.get("READY") == "YES" and ut.get("FL_READY") == "YES"

    def wait_ready(self, slots: list[str], timeout: float, what: str = "") -> dict[str, float]:
        """Seconds until each VM shows FL_READY=YES and READY=YES in its zone's OneGate."""
        t0, took = time.monotonic(), {}
        while True:
            for s in slots:
                if s not in took and self.ready(s):
                    took[s] = time.monotonic() - t0
            if len(took) == len(slots):
                return took
            if time.monotonic() - t0 > timeout:
                late = {s: self.user_template(s).get("FL_ERROR") for s in slots if s not in took}
                raise LabError(f"not READY after {timeout:.0f}s{' ' + what if what else ''}: {late}")
            time.sleep(0.5)

    def service(self, zone: str) -> dict[str, Any]:
        return self.request("oneflow-show", zone=zone, id=self.state["services"][zone])

    def wait_service(self, zone: str, state: str, timeout: float) -> float:
        return wait_for(lambda: self.service(zone)["state"] == state, timeout,
                        f"zone {zone}'s service to be {state}")

    def wait_jobs(self, zone: str | None = None, timeout: float = 300) -> list[dict[str, Any]]:
        """Until the VMs' boots and reconfigures (one-apps) have ended; their records."""
        return self.request("wait", zone=zone, limit=timeout, timeout=timeout + 30)

    def updateconf(self, slot: str, values: dict[str, str], name: str, record: bool = False) -> dict[str, Any]:
        """``onevm updateconf VMID FILE --append`` with a CONTEXT section of ``values``; waits until the
        VM's one-context reconfigure (net-90: configure + bootstrap, net-99) has ended."""
        m = self.machine(slot)
        body = ",\n".join(f'  {k} = "{v}"' for k, v in values.items())
        path = OPS / m["zone"] / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"CONTEXT = [\n{body} ]\n")
        self.front_end(m["zone"], f"onevm updateconf {m['vmid']} {name} --append", record=record)
        # The reconfigure job is queued before the command returns: wait for it to end.
        [doc] = self.request("wait", zone=m["zone"], vmids=[m["vmid"]], limit=300, timeout=330)
        job = doc["jobs"][-1]
        if job["error"]:
            raise LabError(f"{slot}: reconfigure failed in the double:\n{job['error']}")
        return job["result"]

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(STATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"info": self.info, "state": self.state}, fh)

    @classmethod
    def load(cls) -> Lab:
        doc = json.loads(STATE.read_text())
        return cls(doc["info"], doc["state"])

    @classmethod
    def start(cls, variant: str = "per-node") -> Lab:
        """Start the cloud process (a previous lab is removed first) and the operator's tools."""
        from tests.lab.one_cli import install_shims

        down()
        t0 = time.monotonic()
        pid = cloud.start(STATE_DIR, variant=variant)
        lab = cls(cloud.request(STATE_DIR, "info"))
        lab.state["cloud_pid"] = pid
        install_shims(STATE_DIR)
        lab.save()
        lab.figures["cloud_start_s"] = time.monotonic() - t0
        return lab

    # ------------------------------------------------------------------ up

    def instantiate_cli(self, zone: str, template_file: str, values: dict[str, str]) -> int:
        _, out = self.front_end(zone, f"oneflow-template create {template_file}")
        tid = int(re.search(r"ID: (\d+)", out).group(1))  # type: ignore[union-attr]
        answers = typed_answers(json.loads((OPS / zone / template_file).read_text()), values)
        _, out = self.front_end(zone, f"oneflow-template instantiate {tid}", stdin=answers)
        return int(re.findall(r"^ID: (\d+)", out, re.M)[-1])

    def up(self) -> None:
        t0 = time.monotonic()
        # Zone A: the coordinator service (OpenNebula 7.4, the CLI): the SuperLink and, as its `straight`
        # children, two SuperNodes of zone A's own data that find it (address and CA) through OneGate and
        # are admitted from the keys they publish there (FL_SUPERNODE_AUTH_ONEGATE).
        self.front_end("A", "flower-ctx oneflow vm-template superlink > superlink-context.txt")
        self.front_end("A", f"onetemplate update {SUPERLINK_TEMPLATE_ID} superlink-context.txt --append")
        self.front_end("A", "flower-ctx oneflow vm-template supernode > supernode-context.txt")
        self.front_end("A", f"onetemplate update {SUPERNODE_TEMPLATE_ID} supernode-context.txt --append")
        self.front_end("A", f"flower-ctx oneflow template single-site --superlink-template-id {SUPERLINK_TEMPLATE_ID}"
                            f" --supernode-template-id {SUPERNODE_TEMPLATE_ID} > coordinator.json")
        sid = self.instantiate_cli("A", "coordinator.json", answers("A"))
        self.state["services"] = {"A": sid}
        self.wait_service("A", "RUNNING", 240)
        _, shown = self.front_end("A", f"oneflow show {sid}")
        link = self.machine("link")
        self.state["link_vmid"] = link["vmid"]
        self.figures["up.zone_a_s"] = time.monotonic() - t0
        local = [m for m in self.machines("A", "supernode")]
        log(f"up: zone A: service {sid} RUNNING, SuperLink VM {link['vmid']} {link['name']} and SuperNode VMs "
            f"{', '.join(str(m['vmid']) for m in local)} READY ({self.figures['up.zone_a_s']:.1f}s; the SuperNodes "
            "found it and were admitted through OneGate)")
        # On the SuperLink VM: what the training sites need.
        self.on_vm("link", "flower-ctx status")
        _, ca = self.on_vm("link", "flower-ctx ca export", stdout_only=True)
        self.state["ca_b64"] = ca.strip()
        # The hub's WireGuard key is made and kept on its VM; only the public half is printed.
        self.state["hub_pub"] = self.on_vm("link", "flower-ctx wg key", stdout_only=True)[1].strip()
        self.save()
        fill = {"<flower-ctx ca export>": self.state["ca_b64"], "<hub public key>": self.state["hub_pub"]}
        if self.info.get("variant") == "gateway":
            self._up_behind_a_gateway(t0, fill)
            return
        # Zone B: a training site over WireGuard (OpenNebula 6.10.5, the CLI: the CA typed is
        # base64-encoded once more by the CLI).
        t1 = time.monotonic()
        self.front_end("B", "flower-ctx oneflow vm-template supernode --opennebula 6.10 > supernode-context.txt")
        self.front_end("B", f"onetemplate update {SUPERNODE_TEMPLATE_ID} supernode-context.txt --append")
        self.front_end("B", "flower-ctx oneflow template training-site --opennebula 6.10 --supernode-template-id "
                            f"{SUPERNODE_TEMPLATE_ID} > training-site.json")
        values_b = {k: fill.get(v, v) for k, v in answers("B").items()}
        self.state["services"]["B"] = self.instantiate_cli("B", "training-site.json", values_b)
        self._zone_c(fill)
        # The SuperNodes boot (configure + bootstrap by one-apps); not admitted and, in zone B, without
        # a hub yet, they are not ready: bootstrap exits 1, net-99 stays silent, the services DEPLOYING.
        boots = self.wait_jobs(timeout=300)
        nodes = [m for m in boots if m["role"] == "supernode" and m["zone"] != "A"]
        self.figures["up.sites_boot_s"] = max(j["ended"] - j["started"] for m in nodes for j in m["jobs"])
        for m in nodes:
            result = m["jobs"][-1]["result"] or {}
            ut = self.user_template(m["slot"])
            net99 = next((s["output"] for s in result.get("scripts", []) if s["name"] == "net-99-report-ready"), "")
            if ut.get("READY") == "YES" or "Reported READY" in net99:
                raise LabError(f"{m['slot']} READY before its SuperLink admitted it: {ut}")
            log(f"up: zone {m['zone']} VM {m['vmid']} {m['name']} ({m['slot']}): one-apps "
                f"{(result.get('status') or '?').strip()}, net-99 silent, FL_READY={ut.get('FL_READY')} "
                f"FL_ERROR={ut.get('FL_ERROR', '')[:100]!r}")
        for zone in ("B", "C"):
            state = self.service(zone)["state"]
            if state != "DEPLOYING":
                raise LabError(f"zone {zone}'s service is {state} before any SuperNode is ready")
        # From each SuperNode: its [Peer] section for the hub (zone B) and its admission key.
        peers, keys = [], []
        for m in nodes:
            if m["zone"] == "B":
                peers.append(self.on_vm(m["slot"], "flower-ctx wg peer", stdout_only=True)[1].strip())
            keys.append(self.on_vm(m["slot"], "flower-ctx node key", stdout_only=True)[1].strip())
        self.state["peers"], self.state["keys"] = peers, keys
        # Zone A: the hub's tunnel and the admitted keys, by updateconf of the SuperLink VM.
        t2 = time.monotonic()
        result = self.updateconf("link", {
            "FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": f"{HUB_WG}/24",
            "FL_WG_PEERS": "\n\n".join(peers), "FL_SUPERNODE_PUBLIC_KEYS": "\n".join(keys)},
            "superlink-update.txt", record=True)
        if result.get("status") != "bootstrap_success\n":
            raise LabError(f"the SuperLink's reconfigure ended {result.get('status')!r}")
        link_reconf = time.monotonic() - t2
        took = self.wait_ready([m["slot"] for m in nodes], 180, "after the SuperLink admitted them")
        for zone in ("B", "C"):
            self.wait_service(zone, "RUNNING", 60)
            self.front_end(zone, f"oneflow show {self.state['services'][zone]}")
        self.figures["up.link_reconfigure_s"] = link_reconf
        self.figures["up.nodes_ready_after_updateconf_s"] = max(took.values()) + link_reconf
        log(f"up: SuperLink reconfigured (hub on, {len(peers)} peers, {len(keys)} keys) in {link_reconf:.1f}s; "
            "READY=YES, by their readiness watch, after "
            + ", ".join(f"{s} {t + link_reconf:.1f}s" for s, t in sorted(took.items()))
            + f"; services B and C RUNNING ({time.monotonic() - t1:.1f}s after zone B's instantiate)")
        self.on_vm("b1", "flower-ctx doctor")
        _, status = self.on_vm("link", "flower-ctx status")
        scan = self.request("scan", texts=self.outputs)
        if scan["found_in"]:
            raise LabError(f"a secret where none may be: {scan['found_in']}")
        self.figures["up_s"] = time.monotonic() - t0
        self.save()
        log(f"up: {len(nodes)} SuperNodes READY in zones B and C, {len(local)} in zone A "
            f"({self.figures['up_s']:.1f}s)")

    def _zone_c(self, fill: dict[str, str]) -> None:
        """Zone C: a training site over the public address (OpenNebula 7.2, Sunstone's form)."""
        self.front_end("C", "flower-ctx oneflow vm-template supernode > supernode-context.txt")
        self.front_end("C", f"onetemplate update {SUPERNODE_TEMPLATE_ID} supernode-context.txt --append")
        self.front_end("C", "flower-ctx oneflow template training-site --supernode-template-id "
                            f"{SUPERNODE_TEMPLATE_ID} > training-site.json")
        _, out = self.front_end("C", "oneflow-template create training-site.json")
        tid = int(re.search(r"ID: (\d+)", out).group(1))  # type: ignore[union-attr]
        values_c = {k: fill.get(v, v) for k, v in answers("C").items()}
        self.state["services"]["C"] = self.request("web-instantiate", zone="C", id=tid, values=values_c)
        self.save()

    def _up_behind_a_gateway(self, t0: float, fill: dict[str, str]) -> None:
        """Lab variant "gateway": zone B is a training-site-gateway service (docs/site-gateways.md): one
        site gateway (the zone's only tunnel) and three SuperNodes without WireGuard, its `straight`
        children, created once the gateway is READY. The hub lists the gateway alone."""
        t1 = time.monotonic()
        self.front_end("B", "flower-ctx oneflow vm-template supernode --opennebula 6.10 > supernode-context.txt")
        self.front_end("B", f"onetemplate update {SUPERNODE_TEMPLATE_ID} supernode-context.txt --append")
        self.front_end("B", "flower-ctx oneflow template training-site-gateway --opennebula 6.10 "
                            f"--supernode-template-id {SUPERNODE_TEMPLATE_ID} --supernodes 3 > training-site.json")
        values_b = {k: fill.get(v, v) for k, v in answers("B", "gateway").items()}
        self.state["services"]["B"] = self.instantiate_cli("B", "training-site.json", values_b)
        self._zone_c(fill)
        boots = self.wait_jobs(timeout=300)
        gw = next(m for m in boots if m["role"] == "gateway")
        ut = self.user_template(gw["slot"])
        if ut.get("READY") == "YES":
            raise LabError(f"the gateway is READY before the hub lists it: {ut}")
        if any(m["zone"] == "B" and m["role"] == "supernode" for m in boots):
            raise LabError("zone B's SuperNodes were created before their gateway was READY")
        log(f"up: zone B gateway VM {gw['vmid']} ({gw['slot']}): FL_READY={ut.get('FL_READY')} "
            f"FL_ERROR={ut.get('FL_ERROR', '')[:100]!r}; its SuperNodes wait for it (straight)")
        # The gateway's [Peer] (its tunnel address and zone B's network), zone C's keys, into the hub.
        peer = self.on_vm(gw["slot"], "flower-ctx wg peer", stdout_only=True)[1].strip()
        c_nodes = [m for m in boots if m["zone"] == "C"]
        keys = [self.on_vm(m["slot"], "flower-ctx node key", stdout_only=True)[1].strip() for m in c_nodes]
        t2 = time.monotonic()
        self.updateconf("link", {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": f"{HUB_WG}/24", "FL_WG_PEERS": peer,
                                 "FL_SUPERNODE_PUBLIC_KEYS": "\n".join(keys)}, "superlink-update.txt")
        self.wait_ready([gw["slot"]], 120, "after the hub listed it")
        gw_ready = time.monotonic() - t2
        # OneFlow now creates zone B's SuperNodes; they boot, route through the gateway, wait for admission.
        wait_for(lambda: len(self.machines("B", "supernode")) == 3, 120, "zone B's SuperNodes to be created")
        b_nodes = [m for m in self.wait_jobs("B", timeout=300) if m["role"] == "supernode"]
        for m in b_nodes:
            err = self.user_template(m["slot"]).get("FL_ERROR", "")
            if "waiting for it to accept" not in err:
                raise LabError(f"{m['slot']} does not reach the SuperLink through the gateway: {err!r}")
        keys += [self.on_vm(m["slot"], "flower-ctx node key", stdout_only=True)[1].strip() for m in b_nodes]
        self.state["peers"], self.state["keys"] = [peer], keys
        self.save()
        t3 = time.monotonic()
        self.updateconf("link", {"FL_SUPERNODE_PUBLIC_KEYS": "\n".join(keys)}, "admit-zone-b.txt")
        nodes = b_nodes + c_nodes
        self.wait_ready([m["slot"] for m in nodes], 180, "after the SuperLink admitted them")
        for zone in ("B", "C"):
            self.wait_service(zone, "RUNNING", 60)
        self.figures["up.gateway_ready_after_hub_s"] = gw_ready
        self.figures["up.nodes_ready_after_admission_s"] = time.monotonic() - t3
        self.figures["up_s"] = time.monotonic() - t0
        self.save()
        scan = self.request("scan", texts=self.outputs)
        if scan["found_in"]:
            raise LabError(f"a secret where none may be: {scan['found_in']}")
        log(f"up: gateway READY {gw_ready:.1f}s after the hub listed it; zone B's 3 SuperNodes (no WireGuard) "
            f"created then, admitted by a second updateconf; {len(nodes)} SuperNodes READY in zones B and C, 2 in "
            f"zone A ({self.figures['up_s']:.1f}s; zone B {time.monotonic() - t1:.1f}s after its instantiate)")

    # ------------------------------------------------------------------ train

    def train(self, rounds: int = 3, round_sleep: float = 0, timeout: float = 300,
              nodes: int | None = None, min_nodes: int | None = None,
              progress: list[tuple[float, int, int]] | None = None) -> dict[str, float]:
        """`flwr run` on the SuperLink VM (Control API on its loopback); returns the parsed result.
        ``nodes``: how many must train (default: every SuperNode powered on); ``min_nodes``: the app's
        min-nodes (default 4: the ServerApp waits for that many before the first round). ``progress``:
        gets (monotonic time, replies, failures) as each round's aggregation is logged."""
        expected = len(self.supernodes()) if nodes is None else nodes
        home = self.link.path("/opt/flower/cli")
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:8000"\n'
            'root-certificates = "/opt/flower/certs/ca.crt"\n')
        app = self.link.path("/opt/flower/app")
        if app.exists():
            shutil.rmtree(app)
        shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
        cmd = "flwr run . lab --stream"
        if rounds != 3 or round_sleep or min_nodes is not None:
            cmd += f" --run-config 'num-server-rounds={rounds} round-sleep={round_sleep}"
            cmd += f" min-nodes={min_nodes}'" if min_nodes is not None else "'"
        self.ran.append(cmd)
        start = time.monotonic()
        argv = ["env", "-C", "/opt/flower/app", "FLWR_HOME=/opt/flower/cli", "FLWR_TELEMETRY_ENABLED=0",
                f"PATH={VM_PATH}", "sh", "-c", cmd]
        if progress is None:
            r = self.link.run(argv, check=False, timeout=timeout)
        else:
            r = self._streamed(argv, timeout, progress)
        took = time.monotonic() - start
        out = r.stdout + r.stderr
        self.outputs.append(out)
        found = re.search(r"FCLAB-RESULT rounds=(\d+) nodes=(\d+) error=([\d.]+)", out)
        if r.returncode != 0 or found is None:
            raise LabError(f"flwr run failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        failures = [int(n) for n in re.findall(r"aggregate_train: Received \d+ results and (\d+) failures", out)]
        result = {"rounds": float(found.group(1)), "nodes": float(found.group(2)),
                  "error": float(found.group(3)), "seconds": took, "failures": float(max(failures, default=0))}
        self.last_errors = re.findall(r"Received error in reply from node \d+: (.*)", out)
        if result["rounds"] != rounds or result["nodes"] < expected:
            raise LabError(f"expected {rounds} rounds by at least {expected} SuperNodes, got {result}")
        log(f"train: {rounds} round(s) completed, each by {int(result['nodes'])} SuperNodes in zones A, B and C, "
            f"in {took:.1f}s; distance to the true model {result['error']:.4f}")
        return result

    def _streamed(self, argv: list[str], timeout: float,
                  progress: list[tuple[float, int, int]]) -> subprocess.CompletedProcess[str]:
        """``link.run`` that notes each round's aggregation as its line arrives (killed by PID at timeout)."""
        from tests.runtime_helpers import kill_tree

        proc = self.link.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, start_new_session=True)
        timer = threading.Timer(timeout, kill_tree, args=(proc.pid,))
        timer.start()
        lines = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                m = re.search(r"aggregate_train: Received (\d+) results and (\d+) failures", line)
                if m:
                    progress.append((time.monotonic(), int(m.group(1)), int(m.group(2))))
            proc.wait()
        finally:
            timer.cancel()
        return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines), "")


def down() -> list[str]:
    """Stop the cloud process by PID (it removes its rig), then anything a killed one left behind,
    and the state directory. A lab whose cloud process is alive but unknown here is left alone."""
    removed = []
    pid = None
    if STATE.exists():
        try:
            pid = int(json.loads(STATE.read_text())["state"]["cloud_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            pid = None
    if pid is not None:
        tag = f"{PREFIX}{pid}-"
        removed = [ln.split()[0] for ln in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                          text=True).stdout.splitlines() if ln.startswith(tag)]
        cloud.stop_pid(pid, STATE_DIR)
    removed += cleanup_leftovers(PREFIX)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return sorted(set(removed))


@contextmanager
def lab_session(variant: str = "per-node") -> Iterator[Lab]:
    """A lab that is torn down whatever happens (the test suite and `all` use this)."""
    lab = Lab.start(variant)
    try:
        yield lab
    finally:
        down()


def main(argv: list[str] | None = None) -> int:
    from tests.lab.drills import run_drill

    ap = argparse.ArgumentParser(prog="three_zone", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=cloud.VARIANTS, default="per-node",
                    help="zone B with a tunnel per SuperNode (default) or behind one site gateway (up, all)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    tr = sub.add_parser("train")
    tr.add_argument("--rounds", type=int, default=3)
    dr = sub.add_parser("drill")
    dr.add_argument("name", choices=DRILLS + GATEWAY_VARIANT_DRILLS)
    sub.add_parser("down")
    sub.add_parser("all")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces, nftables, wireguard-go)", file=sys.stderr)
        return 2
    if args.cmd == "down":
        log(f"down: removed {len(down())} namespaces")
        return 0
    if args.cmd == "all":
        return run_all(args.variant)
    if args.cmd == "up":
        lab = Lab.start(args.variant)
        try:
            lab.up()
        except BaseException:
            if os.environ.get("FLOWER_CTX_LAB_KEEP") != "1":  # kept to look into: `down` removes it
                down()
            raise
        report(lab)
        return 0
    lab = Lab.load()
    if args.cmd == "train":
        lab.train(args.rounds)
    else:
        run_drill(lab, args.name)
        lab.save()
    report(lab)
    return 0


def report(lab: Lab) -> None:
    try:
        audit = lab.request("audit")
        log(f"readiness audit: {audit['updates']} OneGate updates in the three zones, {audit['violations']} "
            "left a VM with READY=YES and FL_READY other than YES" + (f": {audit['examples']}" if
                                                                     audit["violations"] else ""))
        lab.figures["audit.updates"], lab.figures["audit.violations"] = audit["updates"], audit["violations"]
        scan = lab.request("scan", texts=lab.outputs)
        log(f"secret scan: {scan['secrets']} OneGate tokens and private-key lines looked for in {scan['scanned']} "
            f"command outputs, VM logs and OneGate documents ({scan['extended']} GET /service?extended=true): "
            + (f"FOUND: {scan['found_in']}" if scan["found_in"] else "none found"))
        lab.figures["scan.found"] = len(scan["found_in"])
    except (OSError, CloudError) as exc:
        log(f"readiness audit unavailable: {exc}")
    for key, value in sorted(lab.figures.items()):
        log(f"figure {key} = {value:.2f}")


def run_all(variant: str = "per-node") -> int:
    """up, train, every drill, down; exit 0 only when all passed and nothing was left behind."""
    from tests.lab.drills import run_drill

    failed: list[str] = []
    done: list[str] = []
    drills = DRILLS if variant == "per-node" else GATEWAY_VARIANT_DRILLS
    t0 = time.monotonic()
    with lab_session(variant) as lab:
        tag = lab.info["tag"]
        try:
            lab.up()
            result = lab.train()
            lab.figures.update({f"train.{k}": v for k, v in result.items()})
            done.append("up+train")
        except Exception as exc:  # nothing to drill without a federation
            failed.append("up/train")
            log(f"up/train: FAILED: {exc}")
        for name in drills if not failed else []:
            try:
                run_drill(lab, name)
                done.append(name)
            except Exception as exc:  # every drill runs; the summary names the failures
                failed.append(name)
                log(f"drill {name}: FAILED: {exc}")
        report(lab)
    left = [ln.split()[0] for ln in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True).stdout.splitlines() if ln.startswith(f"{tag}-")]
    if left:
        failed.append("down")
        log(f"down: left behind {left}")
    skipped = len(drills) + 1 - len(done) - len([f for f in failed if f != "down"])
    log(f"all: {len(done)} passed, {len(failed)} failed, {skipped} not run, in {time.monotonic() - t0:.0f}s"
        + (f" ({', '.join(failed)})" if failed else " (up+train, every drill, down)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
