"""The three-zone federation lab: one Flower federation across three simulated OpenNebula zones.

    python -m tests.lab.three_zone up | train | drill NAME | down | all

Zone A (198.18.1.0/24) holds the SuperLink VM, zones B and C (198.18.2/3.0/24) two SuperNode VMs
each plus, in B, a spare VM the drills use. A WAN router namespace joins the zones: it gives the
SuperLink the "public" address 203.0.113.10 by 1:1 NAT, forwards nothing else between zones, and
serves each zone its own OneGate double on the zone gateway (reachable from that zone only).

Both cross-zone transports of the operator guide run at once: b1 and c1 are WireGuard spokes of a
hub on the SuperLink and dial 10.10.9.1:9092 through the tunnel; b2 and c2 dial the public address
203.0.113.10:9092 with TLS. Every VM is configured only by ``flower-ctx configure`` + ``bootstrap``
from a context.sh written the way OpenNebula writes it (OneFlow's empty inputs included); the CA
goes from zone A to B/C by ``flower-ctx ca export`` into ``FL_SSL_CA_CERTFILE``, as the guide says.

Must run as root with ``ip netns``, wireguard-go and nftables. ``down`` (and every failure path of
``all``) leaves no namespace, interface, mount or process behind.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.rig import Rig, SimVM, cleanup_leftovers, write_context

PREFIX = "fclab"
REPO = Path(__file__).resolve().parents[2]
APP_DIR = Path(__file__).resolve().parent / "app"
STATE_DIR = Path("/run/fclab")
STATE = STATE_DIR / "state.json"

PUBLIC_IP = "203.0.113.10"  # the SuperLink's "public" address (1:1 NAT in the router)
HUB_WG = "10.10.9.1"
OG_PORT = 5030
ZONES = {"A": 1, "B": 2, "C": 3}
# name -> (zone letter, transport); the order is the boot order of `up`.
NODES = {"b1": ("B", "wg"), "b2": ("B", "public"), "c1": ("C", "wg"), "c2": ("C", "public")}
SPARE = "b3"  # zone B, used by the drills that need a SuperNode of their own
VM_IDS = {"link": 10, "b1": 20, "b2": 21, "b3": 22, "c1": 30, "c2": 31}
SERVICE_IDS = {"A": 100, "B": 200, "C": 300}
WG_ADDR = {"b1": "10.10.9.2", "c1": "10.10.9.3"}
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
NAT_TIMEOUT_S = 15  # the aggressive NAT's established-timeout (drill "nat"): above keepalive 10 s, below heartbeat gaps

# The walkthrough of docs/multi-site-federation.md, command for command (tests/test_lab.py checks
# the guide against this list, and that the lab really ran each one).
WALKTHROUGH = [
    "flower-ctx oneflow template coordinator --superlink-template-id 11",
    "flower-ctx oneflow template training-site --supernode-template-id 12 --supernodes 2",
    "flower-ctx wg keygen",
    "flower-ctx configure --role superlink",
    "flower-ctx bootstrap --role superlink --wait 120",
    "flower-ctx status",
    "flower-ctx ca export",
    "flower-ctx configure --role supernode",
    "flower-ctx bootstrap --role supernode --wait 120",
    "flower-ctx doctor",
    "flwr run . lab --stream",
]
DRILLS = ["tunnel", "superlink-restart", "wrong-ca", "san-missing", "zone-b-first", "nat"]


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


ROUTER_NFT = """
table ip fclab {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr %(public)s dnat to %(link)s
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr %(link)s oifname != "bz1" snat to %(public)s
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid drop
    ct state established,related accept
    ct status dnat accept
    iifname "bz1" accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport %(og)d ip daddr 198.18.1.1 iifname != "bz1" drop
    tcp dport %(og)d ip daddr 198.18.2.1 iifname != "bz2" drop
    tcp dport %(og)d ip daddr 198.18.3.1 iifname != "bz3" drop
  }
}
"""


@dataclass
class Lab:
    rig: Rig
    tokens: dict[str, str] = field(default_factory=dict)  # VM name -> OneGate token (never printed)
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # VM name -> CONTEXT
    ran: list[str] = field(default_factory=list)  # operator commands run, as typed
    figures: dict[str, float] = field(default_factory=dict)
    ca_b64: str = ""  # `flower-ctx ca export` of the SuperLink
    last_errors: list[str] = field(default_factory=list)  # error replies of the last `flwr run`

    # ------------------------------------------------------------------ plumbing

    @property
    def link(self) -> SimVM:
        return self.rig.vms["link"]

    def vm(self, name: str) -> SimVM:
        return self.rig.vms[name]

    def fctx(self, vm: SimVM, *args: str, check: bool = True, timeout: float = 240,
             stdout_only: bool = False) -> tuple[int, str]:
        """``flower-ctx ARGS`` inside ``vm``, recorded as the operator would type it."""
        self.ran.append(" ".join(("flower-ctx", *args)))
        r = vm.run([sys.executable, "-m", "flower_ctx", *args], check=False, timeout=timeout, env=ENV)
        out = r.stdout if stdout_only else r.stdout + r.stderr
        if check and r.returncode != 0:
            raise LabError(f"[{vm.name}] flower-ctx {' '.join(args)} -> {r.returncode}\n{out}")
        return r.returncode, out

    def boot_files(self, name: str, values: dict[str, str]) -> None:
        """What one-context leaves behind: context.sh.network (0400) and one_env with TOKENTXT."""
        vm = self.vm(name)
        self.values[name] = values
        ctx = vm.path("/run/one-context/context.sh.network")
        if ctx.exists():
            ctx.chmod(0o600)
        write_context(ctx, values)
        ctx.chmod(0o400)
        env = vm.path("/run/one-context/one_env")
        env.write_text(f'export TOKENTXT="{self.tokens[name]}"\nexport VMID="{values["VMID"]}"\n'
                       f'export ONEGATE_ENDPOINT="{values["ONEGATE_ENDPOINT"]}"\n')
        env.chmod(0o400)

    def base_context(self, name: str) -> dict[str, str]:
        vm = self.vm(name)
        return {
            "ETH0_IP": str(vm.eth0_ip), "ETH0_MASK": "255.255.255.0", "ETH0_GATEWAY": str(vm.gateway),
            "ETH0_MAC": f"02:00:c6:12:{vm.zone:02x}:{int(str(vm.eth0_ip).rsplit('.', 1)[1]):02x}",
            "NETWORK": "YES", "TOKEN": "YES", "REPORT_READY": "YES", "VMID": str(VM_IDS[name]),
            "ONEGATE_ENDPOINT": f"http://{vm.gateway}:{OG_PORT}", "SET_HOSTNAME": name,
            # OneFlow passes every declared but unanswered user input as ''.
            "FL_LOG_LEVEL": "", "FL_ISOLATION": "", "FLOWER_VERSION": "", "FL_NODE_CONFIG": "",
            "FL_GRPC_KEEPALIVE_TIME": "", "FL_GRPC_KEEPALIVE_TIMEOUT": "", "FL_TLS_ENABLED": "YES",
            "FL_WG_ENABLED": "", "FL_WG_PRIVATE_KEY": "", "FL_WG_PEERS": "", "FL_SSL_CA_CERTFILE": "",
        }

    def onegate(self, name: str) -> dict[str, str]:
        """The VM's USER_TEMPLATE as its zone's OneGate holds it (GET /vm from inside the VM)."""
        vm = self.vm(name)
        code = ("import json,sys,urllib.request as u\n"
                "r=u.Request(sys.argv[1]+'/vm',headers={'X-ONEGATE-TOKEN':sys.stdin.read(),"
                "'X-ONEGATE-VMID':sys.argv[2]})\n"
                "print(json.dumps(json.load(u.urlopen(r,timeout=5))['VM']['USER_TEMPLATE']))")
        r = vm.run([sys.executable, "-c", code, f"http://{vm.gateway}:{OG_PORT}", str(VM_IDS[name])],
                   input=self.tokens[name], timeout=30)
        return json.loads(r.stdout)

    def superlink_log(self) -> str:
        return self.link.path("/opt/flower/run/superlink.log").read_text(errors="replace")

    def node_log(self, name: str) -> str:
        p = self.vm(name).path("/opt/flower/run/supernode.log")
        return p.read_text(errors="replace") if p.exists() else ""

    def flower_pid(self, vm: SimVM, role: str) -> int:
        return int(vm.path(f"/opt/flower/run/{role}.pid").read_text().split()[0])

    def doctor(self, name: str, role: str = "supernode") -> dict[str, dict[str, str]]:
        self.ran.append("flower-ctx doctor")
        r = self.vm(name).run([sys.executable, "-m", "flower_ctx", "doctor", "--role", role, "--json"],
                              check=False, timeout=120, env=ENV)
        doc = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
        checks: dict[str, dict[str, str]] = {}
        for c in doc["checks"]:
            checks.setdefault(c["name"], c)
        return checks

    # ------------------------------------------------------------------ up

    def build_network(self) -> None:
        for name, zone in (("link", 1), ("b1", 2), ("b2", 2), (SPARE, 2), ("c1", 3), ("c2", 3)):
            self.rig.add_vm(name, zone)
        self.rig.router_run("nft", "-f", "-", input=ROUTER_NFT % {
            "public": PUBLIC_IP, "link": self.link.eth0_ip, "og": OG_PORT})
        # Strict conntrack: a packet of a flow the NAT forgot is dropped, not picked up mid-stream.
        self.rig.router_run("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0")

    def start_onegates(self) -> None:
        """One OneGate double per zone, bound to the zone gateway in the router namespace."""
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        members = {"A": ["link"], "B": ["b1", "b2", SPARE], "C": ["c1", "c2"]}
        for zone, names in members.items():
            spec = {"vms": [{"id": VM_IDS[n], "name": n, "ips": [str(self.vm(n).eth0_ip)]} for n in names],
                    "services": [{"id": SERVICE_IDS[zone], "name": f"flower-{zone.lower()}",
                                  "roles": {"superlink" if zone == "A" else "supernode": [VM_IDS[n] for n in names]}}]}
            spec_file, tok_file = STATE_DIR / f"og-{zone}.json", STATE_DIR / f"og-{zone}.tokens"
            spec_file.write_text(json.dumps(spec))
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.rig.router, sys.executable, "-m", "tests.onegate_server",
                 "--host", f"198.18.{ZONES[zone]}.1", "--port", str(OG_PORT), "--spec", str(spec_file),
                 "--tokens", str(tok_file)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise LabError(f"OneGate of zone {zone} did not start")
            proc.stdout.close()
            ids = json.loads(tok_file.read_text())
            self.tokens.update({n: ids[str(VM_IDS[n])] for n in names})

    def service_templates(self) -> None:
        """The OneFlow templates of the guide: one coordinator (zone A), one training site per zone.
        The lab's OneGate doubles hold the services these templates describe."""
        for args in (("coordinator", "--superlink-template-id", "11"),
                     ("training-site", "--supernode-template-id", "12", "--supernodes", "2")):
            _, out = self.fctx(self.vm(SPARE), "oneflow", "template", *args, stdout_only=True)
            roles = [r["name"] for r in json.loads(out)["roles"]]
            if roles != (["superlink"] if args[0] == "coordinator" else ["supernode"]):
                raise LabError(f"unexpected {args[0]} template roles: {roles}")

    def keygen(self) -> tuple[str, str]:
        """`flower-ctx wg keygen` on the operator's workstation (here: inside the spare VM)."""
        _, out = self.fctx(self.vm(SPARE), "wg", "keygen")
        found = dict(re.findall(r"^(private|public) key\s+(\S+)", out, re.M))
        return found["private"], found["public"]

    def superlink_context(self, spokes: dict[str, str], extra_san: bool = True) -> dict[str, str]:
        peers = "".join(f"[Peer]\nPublicKey = {pub}\nAllowedIPs = {WG_ADDR[n]}/32\n\n" for n, pub in spokes.items())
        return {**self.base_context("link"),
                "FL_CERT_EXTRA_SAN": f"IP:{PUBLIC_IP}" if extra_san else "",
                "FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": f"{HUB_WG}/24", "FL_WG_FORWARD": "NO",
                "FL_WG_PEERS": base64.b64encode(peers.encode()).decode()}

    def supernode_context(self, name: str, ca_b64: str, transport: str, wg_key: str = "", hub_pub: str = "",
                          partition: int = 0) -> dict[str, str]:
        values = {**self.base_context(name), "FL_SSL_CA_CERTFILE": ca_b64,
                  "FL_NODE_CONFIG": f"partition-id={partition}"}
        if transport == "wg":
            values.update({"FL_SUPERLINK_ADDRESS": f"{HUB_WG}:9092", "FL_WG_ENABLED": "YES",
                           "FL_WG_ADDRESS": f"{WG_ADDR[name]}/24", "FL_WG_PRIVATE_KEY": wg_key,
                           "FL_WG_PEER_PUBLIC_KEY": hub_pub, "FL_WG_PEER_ENDPOINT": f"{PUBLIC_IP}:51820",
                           "FL_WG_PEER_ALLOWED_IPS": f"{HUB_WG}/32"})
        else:
            values["FL_SUPERLINK_ADDRESS"] = f"{PUBLIC_IP}:9092"
        return values

    def up(self) -> None:
        t0 = time.monotonic()
        self.build_network()
        self.start_onegates()
        self.save()
        self.service_templates()
        spoke_keys = {n: self.keygen() for n, (_, tr) in NODES.items() if tr == "wg"}
        # Zone A: the SuperLink and WireGuard hub.
        self.boot_files("link", self.superlink_context({n: k[1] for n, k in spoke_keys.items()}))
        self.fctx(self.link, "configure", "--role", "superlink")
        _, out = self.fctx(self.link, "bootstrap", "--role", "superlink", "--wait", "120")
        if "ready: Fleet API" not in out:
            raise LabError(out)
        _, status = self.fctx(self.link, "status")
        hub_pub = re.search(r"wg public key\s+(\S+)", status)
        if hub_pub is None:
            raise LabError(f"no WireGuard public key in status:\n{status}")
        _, ca = self.fctx(self.link, "ca", "export", stdout_only=True)
        self.ca_b64 = ca.strip()
        # Zones B and C: SuperNodes; the CA pasted into FL_SSL_CA_CERTFILE.
        for i, (name, (_, transport)) in enumerate(NODES.items()):
            key = spoke_keys.get(name, ("", ""))[0]
            self.boot_files(name, self.supernode_context(name, self.ca_b64, transport, key, hub_pub.group(1), i))
            self.fctx(self.vm(name), "configure", "--role", "supernode")
            _, out = self.fctx(self.vm(name), "bootstrap", "--role", "supernode", "--wait", "120")
            if "ready: SuperNode running" not in out:
                raise LabError(f"{name}: {out}")
        wait_for(lambda: self.superlink_log().count("Activated node_id") >= len(NODES), 90, "4 registrations")
        for name in NODES:
            ut = self.onegate(name)
            if ut.get("READY") != "YES":
                raise LabError(f"{name} not READY in OneGate: {ut}")
        _, doc = self.fctx(self.vm("b1"), "doctor")
        self.figures["up_s"] = time.monotonic() - t0
        log(f"up: SuperLink in zone A, {len(NODES)} SuperNodes in B/C registered, READY=YES in their "
            f"zone's OneGate ({self.figures['up_s']:.1f}s)")

    # ------------------------------------------------------------------ train

    def train(self, rounds: int = 3, round_sleep: float = 0, timeout: float = 300) -> dict[str, float]:
        """`flwr run` inside the SuperLink VM (Control API on loopback); returns the parsed result."""
        home = self.link.path("/opt/flower/cli")
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:8000"\n'
            'root-certificates = "/opt/flower/certs/ca.crt"\n')
        app = self.link.path("/opt/flower/app")
        if app.exists():
            shutil.rmtree(app)
        shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
        self.ran.append("flwr run . lab --stream")
        cmd = ["env", "-C", "/opt/flower/app", "FLWR_HOME=/opt/flower/cli", "FLWR_TELEMETRY_ENABLED=0",
               f"PATH={Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
               f"{Path(sys.executable).parent}/flwr", "run", ".", "lab", "--stream",
               "--run-config", f"num-server-rounds={rounds} round-sleep={round_sleep}"]
        start = time.monotonic()
        r = self.link.run(cmd, check=False, timeout=timeout)
        took = time.monotonic() - start
        out = r.stdout + r.stderr
        found = re.search(r"FCLAB-RESULT rounds=(\d+) nodes=(\d+) error=([\d.]+)", out)
        if r.returncode != 0 or found is None:
            raise LabError(f"flwr run failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        failures = [int(n) for n in re.findall(r"aggregate_train: Received \d+ results and (\d+) failures", out)]
        result = {"rounds": float(found.group(1)), "nodes": float(found.group(2)),
                  "error": float(found.group(3)), "seconds": took, "failures": float(max(failures, default=0))}
        self.last_errors = re.findall(r"Received error in reply from node \d+: (.*)", out)
        if result["rounds"] != rounds or result["nodes"] < len(NODES):
            raise LabError(f"expected {rounds} rounds by at least {len(NODES)} SuperNodes, got {result}")
        log(f"train: {rounds} rounds completed, each by {int(result['nodes'])} SuperNodes in zones B and C, "
            f"in {took:.1f}s; distance to the true model {result['error']:.4f}")
        return result

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        doc = {"tag": self.rig.tag, "vms": [
            {"netns": vm.netns, "name": vm.name, "zone": vm.zone, "host": int(str(vm.eth0_ip).rsplit(".", 1)[1]),
             "pid": vm.pid} for vm in self.rig.vms.values()],
            "tokens": self.tokens, "values": self.values, "ca_b64": getattr(self, "ca_b64", "")}
        fd = os.open(STATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)

    @classmethod
    def load(cls) -> Lab:
        doc = json.loads(STATE.read_text())
        vms = [SimVM.attach(v["netns"], v["name"], v["zone"], v["host"], v["pid"]) for v in doc["vms"]]
        lab = cls(Rig.attach(PREFIX, doc["tag"], vms), tokens=doc["tokens"], values=doc["values"])
        lab.ca_b64 = doc["ca_b64"]
        return lab


def down() -> list[str]:
    """Remove every lab namespace (processes killed by PID first) and the state directory; a lab
    whose creator is still running (a concurrent test) is left alone."""
    removed = []
    if STATE.exists():
        try:
            lab = Lab.load()
            removed = [vm.netns for vm in lab.rig.vms.values()] + [lab.rig.router]
            lab.rig.close()
        except (OSError, ValueError, KeyError):
            pass
    removed += cleanup_leftovers(PREFIX)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return removed


@contextmanager
def lab_session() -> Iterator[Lab]:
    """A lab that is torn down whatever happens (the test suite and `all` use this)."""
    rig = Rig(PREFIX)
    lab = Lab(rig)
    try:
        yield lab
    finally:
        rig.close()
        shutil.rmtree(STATE_DIR, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from tests.lab.drills import run_drill

    ap = argparse.ArgumentParser(prog="three_zone", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    tr = sub.add_parser("train")
    tr.add_argument("--rounds", type=int, default=3)
    dr = sub.add_parser("drill")
    dr.add_argument("name", choices=DRILLS)
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
        return run_all()
    if args.cmd == "up":
        down()  # a previous lab is replaced, never merged
        lab = Lab(Rig(PREFIX))
        try:
            lab.up()
            lab.save()
        except BaseException:
            lab.rig.close()
            shutil.rmtree(STATE_DIR, ignore_errors=True)
            raise
        return 0
    lab = Lab.load()
    if args.cmd == "train":
        lab.train(args.rounds)
    else:
        run_drill(lab, args.name)
        lab.save()
    return 0


def run_all() -> int:
    """up, train, every drill, down; exit 0 only when all passed and nothing was left behind."""
    from tests.lab.drills import run_drill

    down()
    failed: list[str] = []
    t0 = time.monotonic()
    with lab_session() as lab:
        tag = lab.rig.tag
        try:
            lab.up()
            result = lab.train()
            lab.figures.update({f"train.{k}": v for k, v in result.items()})
        except Exception as exc:  # nothing to drill without a federation
            failed.append("up/train")
            log(f"up/train: FAILED: {exc}")
        for name in DRILLS if not failed else []:
            try:
                run_drill(lab, name)
            except Exception as exc:  # every drill runs; the summary names the failures
                failed.append(name)
                log(f"drill {name}: FAILED: {exc}")
    left = [ln.split()[0] for ln in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True).stdout.splitlines() if ln.startswith(f"{tag}-")]
    if left:
        failed.append("down")
        log(f"down: left behind {left}")
    for key, value in sorted(lab.figures.items()):
        log(f"figure {key} = {value:.2f}")
    total = len(DRILLS) + 2
    log(f"all: {total - len(failed)} passed, {len(failed)} failed in {time.monotonic() - t0:.0f}s"
        + (f" ({', '.join(failed)})" if failed else " (up+train, every drill, down)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
