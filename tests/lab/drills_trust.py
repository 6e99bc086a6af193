"""Trust drills of the three-zone lab (issue 13): who may join the federation and who may dial the
Fleet API. Each breaks in the way an attacker or a removed site would, shows what the operator sees,
and leaves the federation healthy (found by ``drills.all_drills``)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

from tests.lab.drills import _alive, _check, node_pids, one_round, wait_ready, zone_slots
from tests.lab.three_zone import PUBLIC_IP, Lab, lab_bin, lab_flower, log, wait_for

ROGUE_DIR = "/root/rogue"  # the rogue's own key, in the attacker's home on a zone-C VM
PROBE = ("import socket,sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
         "except OSError as exc:\n"
         "    print(type(exc).__name__)\n")


def federation(lab: Lab) -> dict[str, object]:
    """What `flower-ctx status --json` on the SuperLink VM says about the federation."""
    _, out = lab.on_vm("link", "flower-ctx status --json", record=False, stdout_only=True)
    return json.loads(out[: out.rindex("}") + 1])["federation"]


def drill_rogue(lab: Lab) -> dict[str, float]:
    """A rogue SuperNode on a zone-C VM: the right CA (public: pasted into every zone) and the right
    address, but a key the SuperLink never admitted. Stock Flower, started by hand next to the VM's
    own SuperNode: refused at activation, never listed as a node, and the round trains on the four
    admitted SuperNodes only."""
    from flower_ctx.admission.keys import generate
    from flower_ctx.commands.run import flower_argv, prepare_environment

    slot = zone_slots(lab, "C")[0]
    vm = lab.vm(slot)
    home = vm.path(ROGUE_DIR)
    home.mkdir(mode=0o700, exist_ok=True)
    private, public = generate()
    fd = os.open(home / "node.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    doc = json.loads(vm.path("/opt/flower/config/supernode.json").read_text())
    doc["node_key"] = f"{ROGUE_DIR}/node.key"
    doc["http_api"] = {"host": "127.0.0.1", "port": 9096}  # beside the VM's own SuperNode
    env = prepare_environment(doc, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    log_path = home / "supernode.log"
    before = {n["node_id"] for n in federation(lab)["supernodes"]}  # type: ignore[index]
    t0 = time.monotonic()
    with open(log_path, "wb") as out:
        proc = vm.popen([str(lab_bin() / "flower-supernode"), *flower_argv(doc, lab_flower())[1:]],
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                        start_new_session=True)
    try:
        wait_for(lambda: "Failed to activate SuperNode" in log_path.read_text(errors="replace")
                 or proc.poll() is not None, 90, "the rogue SuperNode to be answered")
        refused = time.monotonic() - t0
        round_s = one_round(lab)  # four admitted SuperNodes; the rogue is not one of them
        text = log_path.read_text(errors="replace")
        fed = federation(lab)
        after = {n["node_id"] for n in fed["supernodes"]}  # type: ignore[index]
        _check("Failed to activate SuperNode" in text, f"the rogue was not refused:\n{text[-2000:]}")
        _check("Received" not in text, f"the rogue received a message:\n{text[-2000:]}")
        _check(after == before and fed["connected"] == len(lab.supernodes()), f"the node list changed: {fed}")
        _check(public.line.split()[1][:40] not in json.dumps(fed), "the rogue's key is listed")
    finally:
        from tests.runtime_helpers import kill_tree

        kill_tree(proc.pid)
        proc.wait(10)
    log(f"drill rogue: stock Flower SuperNode on {slot} with the CA and {PUBLIC_IP}:9092 but an unadmitted key: "
        f"refused ('Failed to activate SuperNode') {refused:.1f}s after it started, exit {proc.returncode}; "
        f"never listed (status: {fed['connected']} connected, the same {len(before)} node ids); a round "
        f"with the {len(lab.supernodes())} admitted SuperNodes completed in {round_s:.1f}s; its log holds no "
        "message received")
    return {"refused_s": refused, "round_s": round_s}


def drill_lockout(lab: Lab) -> dict[str, float]:
    """Zone C removed from the federation: its keys taken out of FL_SUPERNODE_PUBLIC_KEYS by updateconf
    of the SuperLink. Its SuperNodes are unregistered without a SuperLink restart and their Flower
    stops within a bound; zones A and B keep training. The site rejoins the way the guide says: new keys
    (`flower-ctx node key --new`: Flower never takes an unregistered key back) admitted by updateconf."""
    c_slots = zone_slots(lab, "C")
    b_slots = [m["slot"] for m in lab.supernodes() if m["zone"] != "C"]  # zone B's and zone A's own
    c_keys = {s: lab.on_vm(s, "flower-ctx node key", stdout_only=True, record=False)[1].strip() for s in c_slots}
    kept = [k for k in lab.state["keys"] if k not in c_keys.values()]
    _check(len(kept) == len(lab.state["keys"]) - len(c_slots), "zone C's keys are not in the SuperLink's list")
    link_pid = lab.flower_pid("link", "superlink")
    b_pids = {s: lab.flower_pid(s, "supernode") for s in b_slots}
    c_pids = {s: lab.flower_pid(s, "supernode") for s in c_slots}
    t0 = time.monotonic()
    lab.updateconf("link", {"FL_SUPERNODE_PUBLIC_KEYS": "\n".join(kept)}, "lockout.txt")
    applied = time.monotonic() - t0
    try:
        wait_for(lambda: not any(_alive(p) for p in c_pids.values()), 60, "zone C's Flower to be locked out", 0.2)
    except AssertionError as exc:  # what the operator would look at: the SuperLink's and the SuperNodes' logs
        watch = lab.link.path("/opt/flower/run/watch-superlink.log").read_text(errors="replace")[-1500:]
        nodes = "".join(f"\n--- {s}:\n{lab.node_log(s)[-1200:]}" for s in c_slots)
        raise AssertionError(f"{exc}\n--- SuperLink watch:\n{watch}{nodes}") from None
    locked = time.monotonic() - t0
    wait_for(lambda: all("not admitted" in lab.user_template(s).get("FL_ERROR", "") for s in c_slots), 60,
             "zone C's FL_ERROR to say it is not admitted")
    errors = {s: lab.user_template(s).get("FL_ERROR", "") for s in c_slots}
    res = lab.train(rounds=1, timeout=180, nodes=len(b_slots), min_nodes=len(b_slots))
    _check(res["nodes"] == len(b_slots), f"not only zones A and B trained: {res}")
    _check(lab.flower_pid("link", "superlink") == link_pid, "the SuperLink was restarted to lock a site out")
    _check({s: lab.flower_pid(s, "supernode") for s in b_slots} == b_pids, "a zone-A or zone-B SuperNode was restarted")
    fed = federation(lab)
    states = sorted(n["status"] for n in fed["supernodes"])  # type: ignore[index]
    log(f"drill lockout: zone C's {len(c_slots)} keys removed by updateconf (reconfigure {applied:.1f}s): their "
        f"Flower stopped {locked:.1f}s after updateconf began, SuperLink pid unchanged; FL_ERROR C "
        f"{errors[c_slots[0]][:110]!r}; zones A and B alone trained a round in {res['seconds']:.1f}s; status lists "
        f"{states}")
    # The site rejoins with new keys.
    t1 = time.monotonic()
    new = {s: lab.on_vm(s, "flower-ctx node key --new", stdout_only=True, record=False)[1].strip() for s in c_slots}
    lab.state["keys"] = kept + list(new.values())
    lab.save()
    lab.updateconf("link", {"FL_SUPERNODE_PUBLIC_KEYS": "\n".join(lab.state["keys"])}, "readmit.txt")
    for s in c_slots:  # what the guide says after `node key --new`
        lab.on_vm(s, "flower-ctx bootstrap --role supernode", record=False, check=False)
    wait_ready(lab, c_slots, 180, "after zone C's new keys were admitted")
    back = time.monotonic() - t1
    one_round(lab)
    log(f"drill lockout: zone C back with new keys (node key --new, updateconf): READY {back:.1f}s later and "
        "trained with every SuperNode")
    return {"locked_out_s": locked, "rejoin_s": back}


def drill_firewall(lab: Lab) -> dict[str, float]:
    """The appliance's firewall: FL_FLEET_ALLOWED_SOURCES on the SuperLink (the tunnel's network, zone
    A's own and zone C's) by updateconf. Before, a zone-B VM reaches the Fleet API on the public address
    outside its tunnel (what any host on the WAN can do); after, that connection is dropped, while
    zone A (its own network), zone B (through wg0) and zone C (public address) keep training, without
    a Flower restart."""
    slot = zone_slots(lab, "B")[0]
    vm = lab.vm(slot)
    link_pid = lab.flower_pid("link", "superlink")
    pids = node_pids(lab)
    before = vm.python(PROBE, PUBLIC_IP, "9092", check=False).stdout.strip()
    _check(before == "open", f"the attack does not reproduce: {slot} -> {PUBLIC_IP}:9092 {before}")
    allowed = "10.10.9.0/24,198.18.1.0/24,198.18.3.0/24"  # the tunnel, zone A's own network, zone C
    t0 = time.monotonic()
    result = lab.updateconf("link", {"FL_FLEET_ALLOWED_SOURCES": allowed}, "fleet-sources.txt")
    try:
        _check(result["status"] == "bootstrap_success\n", f"the SuperLink's reconfigure: {result['status']!r}")
        took = time.monotonic() - t0
        after = vm.python(PROBE, PUBLIC_IP, "9092", check=False).stdout.strip()
        _check(after != "open", f"{slot} still reaches {PUBLIC_IP}:9092 from outside {allowed}")
        rules = lab.link.run(["nft", "list", "table", "inet", "flower_ctx"], check=False).stdout
        _check("9092" in rules and "10.10.9.0/24" in rules, f"the appliance's table:\n{rules}")
        round_s = one_round(lab)
        _check(lab.flower_pid("link", "superlink") == link_pid, "the SuperLink was restarted for a firewall change")
        _check(node_pids(lab) == pids, "a SuperNode was restarted")
    finally:
        lab.updateconf("link", {"FL_FLEET_ALLOWED_SOURCES": ""}, "fleet-sources-any.txt")
    again = vm.python(PROBE, PUBLIC_IP, "9092", check=False).stdout.strip()
    _check(again == "open", f"FL_FLEET_ALLOWED_SOURCES emptied but {slot} is still kept out: {again}")
    log(f"drill firewall: {slot} (198.18.2.0/24, outside its tunnel) -> {PUBLIC_IP}:9092: {before} before; "
        f"FL_FLEET_ALLOWED_SOURCES='{allowed}' by updateconf ({took:.1f}s): {after}; zones A, B (wg0) and C trained "
        f"a round in {round_s:.1f}s, no Flower restarted; emptied again: {again}")
    return {"apply_s": took, "round_s": round_s}


# The compromised VM of zone A's service: root there reads its own OneGate token from its context CD and
# rewrites the SuperLink's discovery attributes (PUT /vms/ID, which OneGate allows inside a service), again
# and again so the SuperLink's own resync does not undo it between two looks.
REWRITE = """
import sys, time, urllib.parse, urllib.request
onegate, vmid, target, ca_b64, fp, endpoint = sys.argv[1:7]
token = open("/run/oneapps-double/cdrom/token.txt").read().strip()
data = "FL_CA_CERT=%s\\nFL_CA_FINGERPRINT=%s\\nFL_ENDPOINT=%s" % (ca_b64, fp, endpoint)
body = urllib.parse.urlencode({"data": data, "type": "1"}).encode()
while True:
    req = urllib.request.Request("%s/vms/%s" % (onegate, target), data=body, method="PUT",
                                 headers={"X-ONEGATE-TOKEN": token, "X-ONEGATE-VMID": vmid,
                                          "Content-Type": "application/x-www-form-urlencoded"})
    try:
        urllib.request.urlopen(req, timeout=3).read()
        print("rewritten", flush=True)
    except OSError as exc:
        print("refused", exc, flush=True)
    time.sleep(0.3)
"""
# Where the attacker wants the SuperNodes: a Fleet port of its own, counting every connection.
SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
while True:
    c, peer = s.accept()
    print("connection from", peer[0], flush=True)
    c.close()
"""


def drill_onegate_rewrite(lab: Lab) -> dict[str, float]:
    """A VM of zone A's own service (a2, compromised) rewrites the SuperLink's OneGate attributes:
    another CA, and its own address as the endpoint, again and again. Zone A's other SuperNode (a1)
    looks at OneGate again (bootstrap, what one-apps runs at every boot; its watch does every 60 s) and
    refuses the CA it did not pin: bootstrap exits 1, FL_ERROR with both fingerprints, `status` and
    `doctor` name them; it never dials the attacker and trains on with the real SuperLink. Once the
    writes stop, the SuperLink's resync publishes its own values again (and says so) and a1 is READY
    again without the operator."""
    from flower_ctx.pem import fingerprint, load_certs
    from tests.onegate_server import make_ca_pem
    from tests.runtime_helpers import kill_tree

    victim, attacker = zone_slots(lab, "A")[:2]
    link_vmid, a_vmid = lab.state["link_vmid"], lab.machine(attacker)["vmid"]
    pinned = lab.user_template("link")["FL_CA_FINGERPRINT"]
    evil = make_ca_pem("attacker CA")
    evil_fp = fingerprint(load_certs(evil)[0])
    a_ip = lab.info["slots"][attacker]["ip"]
    avm = lab.vm(attacker)
    home = avm.path("/root/attack")
    home.mkdir(mode=0o700, exist_ok=True)
    pids = node_pids(lab)
    procs = []
    try:
        with open(home / "sink.log", "wb") as out:
            procs.append(avm.popen([sys.executable, "-c", SINK, a_ip, "9092"], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True))
        t0 = time.monotonic()
        with open(home / "rewrite.log", "wb") as out:
            procs.append(avm.popen([sys.executable, "-c", REWRITE, lab.info["zones"]["A"]["onegate"], str(a_vmid),
                                    str(link_vmid), base64.b64encode(evil).decode(), evil_fp, f"{a_ip}:9092"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True))
        wait_for(lambda: lab.user_template("link").get("FL_CA_FINGERPRINT") == evil_fp, 30,
                 "the attacker's rewrite of the SuperLink's attributes")  # the attack is real
        # a1 looks at OneGate again: what one-apps runs at every boot (flower-ctx bootstrap), here without
        # the reboot (its watch would look within 60 s too).
        code, boot_out = lab.on_vm(victim, "flower-ctx bootstrap --role supernode", check=False, record=False)
        _check(code == 1 and evil_fp in boot_out, f"bootstrap on {victim} did not refuse ({code}):\n{boot_out}")
        wait_for(lambda: pinned in lab.user_template(victim).get("FL_ERROR", ""), 90,
                 f"{victim} to refuse the rewritten CA", 0.5)
        refused = time.monotonic() - t0
        error = lab.user_template(victim)["FL_ERROR"]
        _check(evil_fp in error and lab.user_template(victim).get("READY") != "YES", f"FL_ERROR: {error!r}")
        _, status = lab.on_vm(victim, "flower-ctx status", record=False, check=False)
        doctor = lab.doctor(victim).get("ca pin", {})
        _check(evil_fp in status and pinned in status, f"status does not name both CAs:\n{status}")
        _check(evil_fp in doctor.get("message", "") and pinned in doctor.get("message", ""), f"doctor: {doctor}")
        round_s = one_round(lab)  # every SuperNode, a1 included: it trains with the real SuperLink
        runtime = json.loads(lab.vm(victim).path("/opt/flower/config/supernode.json").read_text())
        _check(a_ip not in json.dumps(runtime), f"{victim} now dials the attacker: {runtime}")
        sink = (home / "sink.log").read_text()
        _check("connection" not in sink, f"a SuperNode dialled the attacker's address:\n{sink}")
        _check(node_pids(lab) == pids, "a SuperNode's Flower was restarted")
        writes = (home / "rewrite.log").read_text().count("rewritten")
    finally:
        for proc in procs:
            kill_tree(proc.pid)
            proc.wait(10)
    # The writes stop: the SuperLink's resync (30 s) publishes its own values again, a1 follows.
    t1 = time.monotonic()
    wait_for(lambda: lab.user_template("link").get("FL_CA_FINGERPRINT") == pinned, 60,
             "the SuperLink to publish its own CA again")
    restored = time.monotonic() - t1
    wait_ready(lab, [victim], 60, "after the rewrites stopped")
    back = time.monotonic() - t1
    said = lab.link.path("/opt/flower/run/watch-superlink.log")
    lines = [ln for ln in said.read_text(errors="replace").splitlines() if "rewrite" in ln] if said.exists() else []
    _check(lines and "FL_CA_CERT" in lines[-1], "the SuperLink's watch did not say its attributes were rewritten")
    log(f"drill onegate-rewrite: {attacker} (a VM of zone A's service, its own OneGate token) rewrote the "
        f"SuperLink's FL_CA_CERT/FL_ENDPOINT {writes} times (attacker CA {evil_fp[:19]}..., endpoint {a_ip}:9092); "
        f"{victim}'s boot-time check (flower-ctx bootstrap) refused it, exit 1, published {refused:.1f}s after the "
        f"writes began: "
        f"FL_ERROR {error[:170]!r}; status and doctor name both CAs; it never dialled {a_ip} (0 connections), "
        f"kept its Flower and trained a round with every SuperNode ({round_s:.1f}s). Writes stopped: the "
        f"SuperLink's own values back {restored:.1f}s later (its watch: {lines[-1].split('watch: ')[-1][:120]!r}), "
        f"{victim} READY {back:.1f}s after the writes stopped")
    return {"refused_s": refused, "round_s": round_s, "restored_s": restored, "ready_again_s": back}


TRUST_DRILLS = {"rogue": drill_rogue, "lockout": drill_lockout, "firewall": drill_firewall,
                "onegate-rewrite": drill_onegate_rewrite}
