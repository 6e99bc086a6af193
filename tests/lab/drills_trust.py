"""Trust drills of the three-zone lab (issue 13): who may join the federation and who may dial the
Fleet API. Each breaks in the way an attacker or a removed site would, shows what the operator sees,
and leaves the federation healthy (found by ``drills.all_drills``)."""

from __future__ import annotations

import json
import os
import subprocess
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
    stops within a bound; zone B keeps training. The site rejoins the way the guide says: new keys
    (`flower-ctx node key --new`: Flower never takes an unregistered key back) admitted by updateconf."""
    c_slots = zone_slots(lab, "C")
    b_slots = zone_slots(lab, "B")
    c_keys = {s: lab.on_vm(s, "flower-ctx node key", stdout_only=True, record=False)[1].strip() for s in c_slots}
    kept = [k for k in lab.state["keys"] if k not in c_keys.values()]
    _check(len(kept) == len(lab.state["keys"]) - len(c_slots), "zone C's keys are not in the SuperLink's list")
    link_pid = lab.flower_pid("link", "superlink")
    b_pids = {s: lab.flower_pid(s, "supernode") for s in b_slots}
    c_pids = {s: lab.flower_pid(s, "supernode") for s in c_slots}
    t0 = time.monotonic()
    lab.updateconf("link", {"FL_SUPERNODE_PUBLIC_KEYS": "\n".join(kept)}, "lockout.txt")
    applied = time.monotonic() - t0
    wait_for(lambda: not any(_alive(p) for p in c_pids.values()), 60, "zone C's Flower to be locked out", 0.2)
    locked = time.monotonic() - t0
    wait_for(lambda: all("not admitted" in lab.user_template(s).get("FL_ERROR", "") for s in c_slots), 60,
             "zone C's FL_ERROR to say it is not admitted")
    errors = {s: lab.user_template(s).get("FL_ERROR", "") for s in c_slots}
    res = lab.train(rounds=1, timeout=180, nodes=len(b_slots), min_nodes=len(b_slots))
    _check(res["nodes"] == len(b_slots), f"not only zone B trained: {res}")
    _check(lab.flower_pid("link", "superlink") == link_pid, "the SuperLink was restarted to lock a site out")
    _check({s: lab.flower_pid(s, "supernode") for s in b_slots} == b_pids, "a zone-B SuperNode was restarted")
    fed = federation(lab)
    states = sorted(n["status"] for n in fed["supernodes"])  # type: ignore[index]
    log(f"drill lockout: zone C's {len(c_slots)} keys removed by updateconf (reconfigure {applied:.1f}s): their "
        f"Flower stopped {locked:.1f}s after updateconf began, SuperLink pid unchanged; FL_ERROR C "
        f"{errors[c_slots[0]][:110]!r}; zone B alone trained a round in {res['seconds']:.1f}s; status lists "
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
    """The appliance's firewall: FL_FLEET_ALLOWED_SOURCES on the SuperLink (the tunnel's network and
    zone C's) by updateconf. Before, a zone-B VM reaches the Fleet API on the public address outside
    its tunnel (what any host on the WAN can do); after, that connection is dropped, while zone B
    (through wg0) and zone C (public address) keep training, without a Flower restart."""
    slot = zone_slots(lab, "B")[0]
    vm = lab.vm(slot)
    link_pid = lab.flower_pid("link", "superlink")
    pids = node_pids(lab)
    before = vm.python(PROBE, PUBLIC_IP, "9092", check=False).stdout.strip()
    _check(before == "open", f"the attack does not reproduce: {slot} -> {PUBLIC_IP}:9092 {before}")
    allowed = "10.10.9.0/24,198.18.3.0/24"
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
        f"FL_FLEET_ALLOWED_SOURCES='{allowed}' by updateconf ({took:.1f}s): {after}; zones B (wg0) and C trained "
        f"a round in {round_s:.1f}s, no Flower restarted; emptied again: {again}")
    return {"apply_s": took, "round_s": round_s}


TRUST_DRILLS = {"rogue": drill_rogue, "lockout": drill_lockout, "firewall": drill_firewall}
