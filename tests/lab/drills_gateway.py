"""Drills of the lab variant "gateway" (issue 16): zone B is one site gateway (the zone's only
WireGuard tunnel) and SuperNodes behind it without WireGuard (`python -m tests.lab.three_zone
--variant gateway all`, tests/test_lab_gateway.py). Found by ``drills.all_drills``; each leaves the
federation healthy."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from tests.lab.drills import _check, round_with_everyone, wait_for_new, wait_ready, zone_slots
from tests.lab.three_zone import HUB_WG, PUBLIC_IP, Lab, log, wait_for

CONTEXT_CD = "/run/oneapps-double/cdrom/context.sh"  # the VM's context CD, as an updateconf rewrites it


def gateway_slot(lab: Lab) -> str:
    return next(m["slot"] for m in lab.machines("B", "gateway"))


def zone_a_network_state(lab: Lab) -> dict[str, Any]:
    """What a change in zone B must leave alone on the SuperLink VM: its CONTEXT (from its context CD)
    and its tunnel: wg0's index, addresses, routes, listen port and each peer's key, allowed IPs and
    keepalive (never the private key `wg show dump` prints first, nor counters and handshake times)."""
    from flower_ctx.context import parse

    vm = lab.link
    dump = vm.run(["wg", "show", "wg0", "dump"]).stdout.splitlines()
    port = dump[0].split("\t")[2]
    peers = sorted((f[0], f[3], f[7]) for f in (ln.split("\t") for ln in dump[1:]))
    link = vm.run(["ip", "-o", "link", "show", "wg0"]).stdout.split(":")[0]
    addrs = vm.run(["ip", "-o", "addr", "show", "dev", "wg0"]).stdout.split()
    routes = vm.run(["ip", "route", "show", "dev", "wg0"]).stdout.strip()
    return {"context": parse(vm.path(CONTEXT_CD).read_bytes()),
            "wg0": {"ifindex": link, "port": port, "peers": peers, "addresses": [a for a in addrs if "/" in a],
                    "routes": routes}}


def drill_gateway_scale(lab: Lab) -> dict[str, float]:
    """A fourth SuperNode in zone B (`oneflow scale`): it reaches the SuperLink through the gateway with
    nothing changed in zone A (the SuperLink's CONTEXT and wg0 compared before and after); admitting its
    key (FL_SUPERNODE_PUBLIC_KEYS, the SuperNode authentication) is the only change there, and it leaves
    wg0 as it was. Then it trains."""
    sid = lab.state["services"]["B"]
    before_vms = {m["vmid"] for m in lab.machines("B")}
    n = len(zone_slots(lab, "B")) + 1
    state0 = zone_a_network_state(lab)
    link_pid = lab.flower_pid("link", "superlink")
    t0 = time.monotonic()
    lab.front_end("B", f"oneflow scale {sid} supernode {n}", record=False)
    new = wait_for_new(lab, before_vms)
    slot = new["slot"]
    wait_for(lambda: "waiting for it to accept" in lab.user_template(slot).get("FL_ERROR", ""), 120,
             f"{slot} to reach the SuperLink through the gateway")
    reached = time.monotonic() - t0
    state1 = zone_a_network_state(lab)
    _check(state1 == state0, f"zone A changed while zone B grew: {state0} -> {state1}")
    _check(not lab.vm(slot).path("/etc/wireguard/wg0.conf").exists()
           and lab.vm(slot).run(["ip", "link", "show", "wg0"], check=False).returncode != 0,
           f"{slot} has a WireGuard tunnel of its own")
    route = lab.vm(slot).run(["ip", "route", "get", HUB_WG]).stdout.split()
    gw_ip = lab.info["slots"][gateway_slot(lab)]["ip"]
    _check(route[route.index("via") + 1] == gw_ip if "via" in route else False,
           f"{slot} does not route {HUB_WG} through the gateway {gw_ip}: {route}")
    # Admission: the SuperLink must learn the new key (issue 13); nothing else.
    key = lab.on_vm(slot, "flower-ctx node key", stdout_only=True, record=False)[1].strip()
    lab.state["keys"].append(key)
    lab.save()
    t1 = time.monotonic()
    lab.updateconf("link", {"FL_SUPERNODE_PUBLIC_KEYS": "\n".join(lab.state["keys"])}, "admit-b4.txt")
    wait_ready(lab, [slot], 120, "after its key was admitted")
    ready = time.monotonic() - t1
    state2 = zone_a_network_state(lab)
    changed = sorted(k for k in state0["context"].keys() | state2["context"].keys()
                     if state0["context"].get(k) != state2["context"].get(k))
    _check(changed == ["FL_SUPERNODE_PUBLIC_KEYS"], f"zone A's CONTEXT changed beyond the admission: {changed}")
    _check(state2["wg0"] == state0["wg0"], f"the hub's wg0 changed: {state0['wg0']} -> {state2['wg0']}")
    _check(lab.flower_pid("link", "superlink") == link_pid, "the SuperLink was restarted")
    lab.wait_service("B", "RUNNING", 120)
    _, round_s = round_with_everyone(lab, "after the scale")
    log(f"drill gateway-scale: `oneflow scale {sid} supernode {n}` -> VM {new['vmid']} ({slot}, no WireGuard, "
        f"{HUB_WG} via the gateway {gw_ip}) reached the SuperLink through the gateway {reached:.1f}s after the "
        f"scale with zone A untouched (the SuperLink's CONTEXT and wg0: index, addresses, routes, port, "
        f"{len(state0['wg0']['peers'])} peer(s) with their allowed IPs: identical); its key admitted by updateconf "
        f"(CONTEXT changed: {changed}; wg0 identical; SuperLink pid unchanged): READY {ready:.1f}s later; a round "
        f"with all {len(lab.supernodes())} SuperNodes in {round_s:.1f}s")
    return {"reached_s": reached, "ready_after_admission_s": ready, "round_s": round_s}


def drill_gateway_restart(lab: Lab) -> dict[str, float]:
    """The zone's gateway reboots in the middle of a run: how long until every SuperNode behind it
    trains again (the first round after the reboot with every SuperNode's reply), rounds that lost a
    reply meanwhile, and whether the SuperNodes' Flower had to restart (forwarding keeps no state: their
    connections should resume)."""
    gw = gateway_slot(lab)
    b_slots = zone_slots(lab, "B")
    pids = {s: lab.flower_pid(s, "supernode") for s in b_slots}
    everyone = len(lab.supernodes())
    progress: list[tuple[float, int, int]] = []
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = lab.train(rounds=5, round_sleep=2, timeout=300, nodes=0, progress=progress)
        except BaseException as exc:  # reported below
            box["error"] = exc

    runner = threading.Thread(target=run, name="drill-run")
    runner.start()
    try:
        wait_for(lambda: len(progress) >= 2 or not runner.is_alive(), 180, "two rounds of the run", 0.2)
        _check(runner.is_alive(), f"the run ended early: {box}")
        t0 = time.monotonic()
        vmid = lab.machine(gw)["vmid"]
        lab.front_end("B", f"onevm reboot {vmid}", record=False)
        lab.request("wait", zone="B", vmids=[vmid], limit=120, timeout=150)  # its boot (one-apps) has ended
        wait_ready(lab, [gw], 120, "after its reboot")
        gw_ready = time.monotonic() - t0
    finally:
        runner.join(320)
    after = [(t - t0, ok, bad) for t, ok, bad in progress if t > t0]
    back = next((dt for dt, ok, bad in after if ok == everyone and bad == 0), None)
    lost = sum(1 for _, ok, bad in after if ok < everyone or bad)
    if back is None:  # the run ended (or failed) before a full round: the next one measures it
        attempts, _ = round_with_everyone(lab, "after the gateway's reboot", tries=4)
        back = time.monotonic() - t0
        lost += attempts
    restarted = sorted(s for s in b_slots if lab.flower_pid(s, "supernode") != pids[s])
    wait_ready(lab, b_slots, 120, "after the gateway's reboot")
    # What the guide says of a gateway restart: the run goes on, the zone's SuperNodes keep their Flower
    # (their connections resume through the rebooted gateway) and train again within seconds.
    _check("error" not in box, f"the run failed across the gateway's reboot: {box.get('error')}")
    _check(not restarted, f"zone-B SuperNodes restarted their Flower: {restarted}")
    _check(back < 60, f"every SuperNode trained again only {back:.1f}s after the reboot began")
    log(f"drill gateway-restart: gateway {gw} rebooted after round {len([p for p in progress if p[0] <= t0])} of "
        f"a 5-round run: its boot ended and READY again {gw_ready:.1f}s later; every SuperNode behind it (and "
        f"everyone else) trained again {back:.1f}s after the reboot began (the first round with all {everyone} "
        f"replies); rounds that lost a reply meanwhile: {lost}; rounds after the reboot "
        f"{[(round(dt, 1), ok, bad) for dt, ok, bad in after]}; run {'ok' if 'result' in box else box.get('error')}; "
        f"zone-B SuperNodes whose Flower restarted: {restarted or 'none'}")
    return {"gateway_ready_s": gw_ready, "trained_again_s": back, "rounds_lost": float(lost)}


# A TLS sink on the SuperLink VM (its own certificate), beside Flower's ports: the path a model update
# takes to the Fleet API, without Flower's own overhead in the figure.
def _serve(lab: Lab) -> subprocess.Popen[bytes]:
    from tests.gateway_rig import TLS_SERVER

    proc = lab.link.popen([sys.executable, "-c", TLS_SERVER, "0.0.0.0", "9192", "/opt/flower/certs/server.pem",
                           "/opt/flower/certs/server.key"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
    return proc


def drill_gateway_throughput(lab: Lab, mb: int = 32, runs: int = 5) -> dict[str, float]:
    """A large model update (MB megabytes over TLS, verified with the CA the SuperNode has) from a zone-B
    SuperNode to the SuperLink VM, through the gateway (WireGuard, wireguard-go here) and over the
    direct public path (zone B's NAT, the SuperLink's 1:1 NAT), alternately in the same lab run."""
    from tests.gateway_rig import TLS_CLIENT
    from tests.runtime_helpers import kill_tree

    slot = zone_slots(lab, "B")[0]
    vm = lab.vm(slot)
    size = mb << 20
    server = _serve(lab)
    times: dict[str, list[float]] = {"gateway": [], "public": []}
    seen: dict[str, str] = {}
    try:
        for _ in range(runs):
            for name, host in (("gateway", HUB_WG), ("public", PUBLIC_IP)):
                r = vm.run([sys.executable, "-c", TLS_CLIENT, host, "9192", str(size), "120",
                            "/opt/flower/certs/ca.crt"], timeout=240)
                ok, seconds, peer, *_ = r.stdout.split()
                _check(ok == "True", f"the {name} transfer was not intact: {r.stdout}")
                times[name].append(float(seconds))
                seen[name] = peer
    finally:
        kill_tree(server.pid)
        server.wait(10)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: size * 8 / v / 1e6 for k, v in med.items()}
    ratio = rate["gateway"] / rate["public"]
    _check(seen["gateway"] == lab.info["slots"][slot]["ip"], f"through the gateway the SuperLink saw {seen}")
    log(f"drill gateway-throughput: {mb} MB over TLS from {slot} to the SuperLink VM, median of {runs} each, "
        f"alternating: through the gateway (WireGuard) {med['gateway']:.2f}s = {rate['gateway']:.0f} Mbit/s "
        f"(the SuperLink saw {seen['gateway']}, the SuperNode's own address), public path {med['public']:.2f}s = "
        f"{rate['public']:.0f} Mbit/s (seen as {seen['public']}, zone B's NAT): ratio {ratio:.2f}")
    return {"gateway_mbit": rate["gateway"], "public_mbit": rate["public"], "ratio": ratio}


GATEWAY_DRILLS = {"gateway-scale": drill_gateway_scale, "gateway-restart": drill_gateway_restart,
                  "gateway-throughput": drill_gateway_throughput}
