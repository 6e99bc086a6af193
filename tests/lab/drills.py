"""Failure drills of the three-zone lab. Each breaks something the way it breaks in a real multi-site
federation, checks the diagnosis an operator gets (``flower-ctx doctor``, ``FL_ERROR`` in the zone's
OneGate), repairs it the way the operator guide says, and prints the measured detection or recovery
time. Each returns its figures; each leaves the federation healthy for the next one."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.lab.three_zone import NAT_TIMEOUT_S, NODES, PUBLIC_IP, SPARE, Lab, LabError, log, wait_for
from tests.rig import SimVM

LOST = "Connection attempt failed"  # what a SuperNode logs when its Fleet connection died


def said(check: dict[str, str]) -> str:
    """A doctor check as one line: its message (without a repeated fix) and its fix."""
    return f"{check['message'].split('; fix:')[0]} -> fix: {check.get('fix', '')}"


def _check(cond: object, msg: str) -> None:
    if not cond:
        raise LabError(msg)


def stop_flower(lab: Lab, name: str, role: str) -> None:
    """Stop Flower on a VM by the PID in its pid file (its process group: Flower's children too)."""
    vm = lab.vm(name)
    pid = lab.flower_pid(vm, role)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, f"{role} on {name} to stop", 0.1)


def node_pids(lab: Lab) -> dict[str, int]:
    return {n: lab.flower_pid(lab.vm(n), "supernode") for n in NODES}


def one_round(lab: Lab) -> float:
    """A one-round `flwr run` that needs all four SuperNodes: the federation works."""
    return lab.train(rounds=1, timeout=180)["seconds"]


def _drill_table(lab: Lab, rules: list[str]) -> None:
    body = "".join(f"    {r}\n" for r in rules)
    lab.rig.router_run("nft", "-f", "-", input=(
        "table ip fclabdrill {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n"
        f"{body}  }}\n}}\n"))


def _drop_drill_table(lab: Lab) -> None:
    lab.rig.router_run("nft", "delete", "table", "ip", "fclabdrill", check=False)


def drill_tunnel(lab: Lab) -> dict[str, float]:
    """WireGuard path down (UDP 51820 dropped in the WAN), then restored: the spokes' SuperNodes
    notice, and reconnect without a restart."""
    pids = node_pids(lab)
    lost_before = lab.node_log("b1").count(LOST)
    _drill_table(lab, ["udp dport 51820 drop", "udp sport 51820 drop"])
    try:
        detected = wait_for(lambda: lab.node_log("b1").count(LOST) > lost_before, 120,
                            "b1 to notice the dead tunnel")
        checks = lab.doctor("b1")
        sl = checks["superlink"]
        _check(sl["level"] == "problem", f"doctor on b1 did not see the tunnel down: {sl}")
        _check(checks["wg peer"]["level"] != "ok" or "handshake" in sl.get("fix", ""), f"no tunnel hint: {checks}")
        log(f"drill tunnel: doctor on b1 says: {said(sl)}")
    finally:
        _drop_drill_table(lab)
    restored = time.monotonic()
    took = one_round(lab)
    recovered = time.monotonic() - restored
    _check(node_pids(lab) == pids, "a SuperNode was restarted")
    _check(lab.doctor("b1")["superlink"]["level"] == "ok", "doctor on b1 still sees a problem")
    b1 = lab.values["b1"]
    ka = (b1.get("FL_GRPC_KEEPALIVE_TIME") or "60", b1.get("FL_GRPC_KEEPALIVE_TIMEOUT") or "20")
    log(f"drill tunnel: dead tunnel noticed by the SuperNode after {detected:.1f}s (keepalive {ka[0]}/{ka[1]}s); "
        f"after restore, a round with all 4 SuperNodes completed {recovered:.1f}s later (round {took:.1f}s), "
        f"no SuperNode restarted")
    return {"detect_s": detected, "recover_s": recovered}


def drill_superlink_restart(lab: Lab) -> dict[str, float]:
    """The SuperLink VM's Flower dies and comes back: SuperNodes reconnect on their own, and the CA
    they pinned is the one the restarted SuperLink serves."""
    ca = lab.link.path("/opt/flower/certs/ca.crt").read_bytes()
    fp = lab.onegate("link").get("FL_CA_FINGERPRINT")
    pids = node_pids(lab)
    stop_flower(lab, "link", "superlink")
    t0 = time.monotonic()
    _, out = lab.fctx(lab.link, "bootstrap", "--role", "superlink", "--wait", "120")
    _check("ready: Fleet API" in out, out)
    one_round(lab)
    recovered = time.monotonic() - t0
    _check(lab.link.path("/opt/flower/certs/ca.crt").read_bytes() == ca, "the CA changed")
    _check(lab.onegate("link").get("FL_CA_FINGERPRINT") == fp, "the published CA fingerprint changed")
    _check(node_pids(lab) == pids, "a SuperNode was restarted")
    log(f"drill superlink-restart: SuperLink restarted; all 4 SuperNodes trained again {recovered:.1f}s "
        f"after the restart began, CA unchanged ({fp}), no SuperNode restarted")
    return {"recover_s": recovered}


def _spare_context(lab: Lab, ca_b64: str) -> dict[str, str]:
    return lab.supernode_context(SPARE, ca_b64, "public", partition=9)


def drill_wrong_ca(lab: Lab) -> dict[str, float]:
    """A training site pastes another deployment's CA: doctor and FL_ERROR name both fingerprints."""
    from cryptography import x509

    from flower_ctx.pem import fingerprint
    from tests.tls_helpers import build_ca

    was_running = _spare_running(lab)
    other = build_ca("Another deployment's CA")
    lab.boot_files(SPARE, _spare_context(lab, base64.b64encode(other.cert_pem).decode()))
    lab.fctx(lab.vm(SPARE), "configure", "--role", "supernode")
    t0 = time.monotonic()
    code, out = lab.fctx(lab.vm(SPARE), "bootstrap", "--role", "supernode", "--wait", "30", check=False)
    detected = time.monotonic() - t0
    try:
        real = fingerprint(x509.load_pem_x509_certificate(lab.link.path("/opt/flower/certs/ca.crt").read_bytes()))
        sl = lab.doctor(SPARE)["superlink"]
        _check(sl["level"] == "problem" and fingerprint(other.cert) in sl["message"] and real in sl["message"],
               f"doctor did not name both CAs: {sl}")
        _check("FL_SSL_CA_CERTFILE" in sl["fix"] and "ca export" in sl["fix"], f"fix: {sl}")
        ut = lab.onegate(SPARE)
        _check(ut.get("READY") != "YES" and "CA" in ut.get("FL_ERROR", ""), f"OneGate B: {ut}")
        log(f"drill wrong-ca: bootstrap exit {code} after {detected:.1f}s; FL_ERROR={ut['FL_ERROR']}; "
            f"doctor: {said(sl)}")
    finally:
        _restore_spare(lab, was_running)
    return {"detect_s": detected}


def _spare_running(lab: Lab) -> bool:
    pid_file = lab.vm(SPARE).path("/opt/flower/run/supernode.pid")
    return pid_file.exists() and Path(f"/proc/{pid_file.read_text().split()[0]}").exists()


def _restore_spare(lab: Lab, was_running: bool) -> None:
    """Back to how the drill found it: a SuperNode the SuperLink knows must keep answering, or
    the next rounds wait for it."""
    if was_running:
        lab.boot_files(SPARE, _spare_context(lab, lab.ca_b64))
        lab.fctx(lab.vm(SPARE), "configure", "--role", "supernode")
        lab.fctx(lab.vm(SPARE), "bootstrap", "--role", "supernode", "--wait", "120")
    elif _spare_running(lab):
        stop_flower(lab, SPARE, "supernode")


def _set_superlink_san(lab: Lab, on: bool) -> None:
    values = dict(lab.values["link"])
    values["FL_CERT_EXTRA_SAN"] = f"IP:{PUBLIC_IP}" if on else ""
    lab.boot_files("link", values)
    lab.fctx(lab.link, "configure", "--role", "superlink")
    _, out = lab.fctx(lab.link, "bootstrap", "--role", "superlink", "--wait", "120")
    _check("ready: Fleet API" in out, out)


def drill_san_missing(lab: Lab) -> dict[str, float]:
    """The SuperLink is reached on its public (NAT) address, which its certificate does not name
    without FL_CERT_EXTRA_SAN: doctor says which variable to set; setting it repairs the federation."""
    was_running = _spare_running(lab)
    _set_superlink_san(lab, on=False)
    try:
        lab.boot_files(SPARE, _spare_context(lab, lab.ca_b64))
        lab.fctx(lab.vm(SPARE), "configure", "--role", "supernode")
        sl = lab.doctor(SPARE)["superlink"]
        _check(sl["level"] == "problem" and PUBLIC_IP in sl["message"], f"doctor: {sl}")
        _check(sl["fix"] == f"set FL_CERT_EXTRA_SAN=IP:{PUBLIC_IP} on the SuperLink", f"fix: {sl}")
        log(f"drill san-missing: doctor: {said(sl)}")
    finally:
        t0 = time.monotonic()
        _set_superlink_san(lab, on=True)
    _restore_spare(lab, was_running)
    one_round(lab)
    recovered = time.monotonic() - t0
    log(f"drill san-missing: FL_CERT_EXTRA_SAN restored; all 4 SuperNodes trained again {recovered:.1f}s later")
    return {"recover_s": recovered}


def drill_zone_b_first(lab: Lab) -> dict[str, float]:
    """Zone B boots while zone A's SuperLink is not up: the SuperNode waits, exits 0, and becomes
    READY by itself once the SuperLink appears."""
    if _spare_running(lab):
        stop_flower(lab, SPARE, "supernode")  # a fresh boot of zone B's VM
    stop_flower(lab, "link", "superlink")
    try:
        lab.boot_files(SPARE, _spare_context(lab, lab.ca_b64))
        lab.fctx(lab.vm(SPARE), "configure", "--role", "supernode")
        code, out = lab.fctx(lab.vm(SPARE), "bootstrap", "--role", "supernode", "--wait", "10", check=False)
        _check(code == 0 and "waiting for SuperLink" in out, f"bootstrap before zone A: {code} {out}")
        _check(lab.onegate(SPARE).get("READY") != "YES", "READY before the SuperLink exists")
    finally:
        t_link = time.monotonic()
        _, out = lab.fctx(lab.link, "bootstrap", "--role", "superlink", "--wait", "120")
    link_ready = time.monotonic() - t_link
    wait_for(lambda: lab.onegate(SPARE).get("READY") == "YES", 120, "the spare to become READY", 0.2)
    became = time.monotonic() - t_link
    log(f"drill zone-b-first: SuperNode booted before its SuperLink waited (exit 0); READY=YES in OneGate B "
        f"{became:.1f}s after the SuperLink's bootstrap began (that bootstrap took {link_ready:.1f}s)")
    # The spare stays in the federation (a SuperLink only forgets a vanished node after its heartbeat
    # patience): the next rounds train on five SuperNodes.
    one_round(lab)
    return {"ready_after_s": became}


def _set_keepalive(lab: Lab, time_s: str, timeout_s: str) -> None:
    """The operator's fix for an aggressive NAT: FL_GRPC_KEEPALIVE_TIME below its idle timeout, on every
    SuperNode (configure + bootstrap restart them gracefully)."""
    for name in NODES:
        lab.boot_files(name, {**lab.values[name], "FL_GRPC_KEEPALIVE_TIME": time_s,
                              "FL_GRPC_KEEPALIVE_TIMEOUT": timeout_s})
        lab.fctx(lab.vm(name), "configure", "--role", "supernode")
        _, out = lab.fctx(lab.vm(name), "bootstrap", "--role", "supernode", "--wait", "120")
        _check("ready: SuperNode running" in out, out)


def _start_stock_supernode(lab: Lab) -> subprocess.Popen[bytes]:
    """Stock Flower on the spare VM (zone B, public address): Flower's own console script with the
    arguments flower-ctx would use, without `flower-ctx run` and so without keepalive."""
    import json

    from flower_ctx.commands.run import flower_argv, prepare_environment

    vm = lab.vm(SPARE)
    lab.boot_files(SPARE, _spare_context(lab, lab.ca_b64))
    lab.fctx(vm, "configure", "--role", "supernode")
    doc = json.loads(vm.path("/opt/flower/config/supernode.json").read_text())
    doc["http_api"] = {"host": "127.0.0.1", "port": 9095}
    env = prepare_environment(doc, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    log_path = vm.path("/opt/flower/run/stock-supernode.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = vm.popen([str(Path(sys.executable).parent / "flower-supernode"), *flower_argv(doc)[1:]],
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                        start_new_session=True)
    wait_for(lambda: "SuperNode ID" in log_path.read_text(errors="replace"), 60, "the stock SuperNode to register")
    return proc


def _stop_run(lab: Lab, output: str) -> None:
    found = re.search(r"Successfully started run (\d+)", output)
    if found:
        lab.link.run(["env", "FLWR_HOME=/opt/flower/cli", f"{Path(sys.executable).parent}/flwr", "stop",
                      found.group(1), "lab"], check=False, timeout=60)


def drill_nat(lab: Lab) -> dict[str, float]:
    """An aggressive stateful NAT in the WAN: conntrack forgets an established TCP flow after
    NAT_TIMEOUT_S idle seconds and drops what it forgot (no mid-stream pick-up). While a ClientApp
    runs, a Flower 1.39 SuperNode only sends heartbeats (about every 20 s), so its Fleet connection
    idles longer than that. With FL_GRPC_KEEPALIVE_TIME=10 a long round completes; a stock Flower
    SuperNode (no keepalive) in the same federation stalls the round."""
    sysctl = "net.netfilter.nf_conntrack_tcp_timeout_established"
    before = lab.rig.router_run("sysctl", "-n", sysctl).stdout.strip()
    sleep_s = 3 * NAT_TIMEOUT_S  # each ClientApp idles this long inside the round
    _set_keepalive(lab, "10", "5")
    lab.rig.router_run("sysctl", "-qw", f"{sysctl}={NAT_TIMEOUT_S}")
    stock: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.monotonic()
        with FleetIdleSampler(lab.vm("b2")) as agent_idle:
            res = lab.train(rounds=1, round_sleep=sleep_s, timeout=sleep_s + 120)
        took = time.monotonic() - t0
        _check(res["rounds"] == 1 and res["nodes"] >= len(NODES), str(res))
        log(f"drill nat: keepalive 10/5 s: a round whose ClientApps ran {sleep_s}s completed with all "
            f"{len(NODES)} SuperNodes in {took:.1f}s; b2's Fleet connection idled at most {agent_idle.max_idle_s:.1f}s")

        stock = _start_stock_supernode(lab)
        limit = sleep_s + 45  # the round would be done by then (see above)
        with FleetIdleSampler(lab.vm(SPARE)) as stock_idle:
            try:
                res = lab.train(rounds=1, round_sleep=sleep_s, timeout=limit)
                outcome = (f"completed in {res['seconds']:.1f}s without the stock SuperNode's update "
                           f"({int(res['failures'])} failed: {'; '.join(lab.last_errors)})")
                lost = res["failures"] >= 1
            except subprocess.TimeoutExpired as exc:
                outcome, lost = f"had not completed after {limit}s (stalled)", True
                _stop_run(lab, (exc.stdout or b"").decode(errors="replace")
                          if isinstance(exc.stdout, bytes) else exc.stdout or "")
        ss = lab.vm(SPARE).run(["ss", "-tin", "dst", f"{PUBLIC_IP}:9092"], check=False).stdout
        _check(lost, "the stock SuperNode's update arrived: the NAT forgot nothing, the comparison proves nothing")
        log(f"drill nat: same round with a stock Flower SuperNode added (no keepalive; its Fleet connection "
            f"idled {stock_idle.max_idle_s:.1f}s): {outcome}; its socket: "
            + (" ".join(re.findall(r"(?:unacked|retrans|lastsnd|lastrcv):\S+", ss)) or "no connection"))
    finally:
        if stock is not None:
            from tests.runtime_helpers import kill_tree

            kill_tree(stock.pid)
            stock.wait(10)
        lab.rig.router_run("sysctl", "-qw", f"{sysctl}={before}")
    # The SuperLink forgets the vanished stock SuperNode once its heartbeats are overdue.
    t1 = time.monotonic()
    one_round(lab)
    log(f"drill nat: NAT back to normal, stock SuperNode gone: a round with every remaining SuperNode "
        f"completed {time.monotonic() - t1:.1f}s later")
    return {"round_s": took, "agent_max_idle_s": agent_idle.max_idle_s, "stock_max_idle_s": stock_idle.max_idle_s}


class FleetIdleSampler:
    """Samples, once a second, how long a SuperNode's Fleet connection (to the public address) has
    been idle in both directions (``ss`` lastsnd/lastrcv); keeps the largest value seen."""

    def __init__(self, vm: SimVM) -> None:
        self.vm, self.max_idle_s = vm, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            out = self.vm.run(["ss", "-tin", "state", "established", "dst", f"{PUBLIC_IP}:9092"],
                              check=False, timeout=10).stdout
            for snd, rcv in re.findall(r"lastsnd:(\d+) lastrcv:(\d+)", out):
                self.max_idle_s = max(self.max_idle_s, min(int(snd), int(rcv)) / 1000)

    def __enter__(self) -> FleetIdleSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


DRILL_FUNCS: dict[str, Callable[[Lab], dict[str, float]]] = {
    "tunnel": drill_tunnel,
    "superlink-restart": drill_superlink_restart,
    "wrong-ca": drill_wrong_ca,
    "san-missing": drill_san_missing,
    "zone-b-first": drill_zone_b_first,
    "nat": drill_nat,
}


def run_drill(lab: Lab, name: str) -> dict[str, float]:
    log(f"drill {name}: start")
    figures = DRILL_FUNCS[name](lab)
    lab.figures.update({f"{name}.{k}": v for k, v in figures.items()})
    log(f"drill {name}: passed")
    return figures
