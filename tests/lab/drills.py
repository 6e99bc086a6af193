"""Failure drills of the three-zone lab. Each breaks something the way it breaks in a real multi-site
federation, checks the diagnosis an operator gets (``flower-ctx doctor``, ``FL_ERROR`` in the zone's
OneGate, the one-apps status), repairs it the way the operator guide says (``onevm updateconf``
where CONTEXT changes), and prints the measured detection or recovery time. Each returns its
figures and leaves the federation healthy for the next one."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab.three_zone import NAT_TIMEOUT_S, PUBLIC_IP, Lab, LabError, lab_bin, lab_flower, log, wait_for
from tests.rig import SimVM

LOST = "Connection attempt failed"  # what a SuperNode logs when its Fleet connection died
WATCH_BOUND_S = 20.0  # FL_READY follows an outage within this (watch every 5 s + 3 s probe + OneGate)


def said(check: dict[str, str]) -> str:
    """A doctor check as one line: its message (without a repeated fix) and its fix."""
    return f"{check['message'].split('; fix:')[0]} -> fix: {check.get('fix', '')}"


def _check(cond: object, msg: str) -> None:
    if not cond:
        raise LabError(msg)


def stop_service(lab: Lab, slot: str, service: str) -> None:
    """Stop a supervised service on a VM (what `systemctl stop` does): SIGTERM to its process group,
    by the PID in its pid file."""
    try:
        pid = lab.flower_pid(slot, service)
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_for(lambda: not _alive(pid), 30, f"{service} on {slot} to stop", 0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def node_pids(lab: Lab) -> dict[str, int]:
    return {m["slot"]: lab.flower_pid(m["slot"], "supernode") for m in lab.supernodes()}


def one_round(lab: Lab, timeout: float = 180) -> float:
    """A one-round `flwr run` that needs every SuperNode: the federation works."""
    return lab.train(rounds=1, timeout=timeout)["seconds"]


def round_with_everyone(lab: Lab, what: str, tries: int = 3) -> tuple[int, float]:
    """A round with every SuperNode right after a node came back (restore, a stock SuperNode replaced):
    Flower may still sample it under its previous session and lose that reply. Each such round is
    logged with Flower's error; returns how many rounds lost a reply before one had every SuperNode,
    and that round's seconds."""
    for attempt in range(tries):
        try:
            return attempt, one_round(lab)
        except AssertionError as exc:  # LabError (under `python -m`, a second module copy's class)
            why = "; ".join(sorted(set(lab.last_errors)))[:300] or str(exc)[:300]
            log(f"round {attempt + 1} {what} lost a reply: {why}")
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def zone_slots(lab: Lab, zone: str) -> list[str]:
    return [m["slot"] for m in lab.supernodes() if m["zone"] == zone]


def _drill_table(lab: Lab, rules: list[str]) -> None:
    body = "".join(f"    {r}\n" for r in rules)
    lab.rig.router_run("nft", "-f", "-", input=(
        "table ip fclabdrill {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n"
        f"{body}  }}\n}}\n"))


def _drop_drill_table(lab: Lab) -> None:
    lab.rig.router_run("nft", "delete", "table", "ip", "fclabdrill", check=False)


class ReadinessSampler:
    """Reads a zone's OneGate USER_TEMPLATEs every ``period`` seconds (through the cloud process)
    and keeps, per VM, when FL_READY/READY changed; counts samples where READY=YES sits next to an
    FL_READY other than YES."""

    def __init__(self, lab: Lab, zone: str, period: float = 0.2) -> None:
        self.lab, self.zone, self.period = lab, zone, period
        self.samples = 0
        self.violations: list[tuple[float, str, dict[str, str]]] = []
        self.changes: dict[str, list[tuple[float, str, str, str]]] = {}  # vmid -> (t, FL_READY, READY, FL_ERROR)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                uts = self.lab.request("user-templates", zone=self.zone, timeout=10)
            except Exception:  # the cloud busy for a moment: the next sample
                uts = {}
            for vmid, ut in uts.items():
                if ut.get("ROLE_NAME") != "supernode":
                    continue
                self.samples += 1
                state = (ut.get("FL_READY", ""), ut.get("READY", ""), ut.get("FL_ERROR", ""))
                seen = self.changes.setdefault(vmid, [])
                if not seen or seen[-1][1:] != state:
                    seen.append((t, *state))
                if state[1] == "YES" and state[0] != "YES":
                    self.violations.append((t, vmid, dict(ut)))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - t)))

    def first(self, vmid: int | str, after: float, fl_ready: str, ready: str | None = None) -> float | None:
        """When VM ``vmid`` first showed FL_READY=fl_ready (and READY=ready) after ``after``."""
        for t, fl, rd, _ in self.changes.get(str(vmid), []):
            if t >= after and fl == fl_ready and (ready is None or rd == ready):
                return t
        return None

    def state_at(self, vmid: int | str, t: float) -> tuple[str, str, str] | None:
        last = None
        for ts, fl, rd, err in self.changes.get(str(vmid), []):
            if ts > t:
                break
            last = (fl, rd, err)
        return last

    def __enter__(self) -> ReadinessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def _vmid(lab: Lab, slot: str) -> int:
    return int(lab.machine(slot)["vmid"])


# ---------------------------------------------------------------------------------------------


def drill_tunnel(lab: Lab) -> dict[str, float]:
    """WireGuard path down (UDP 51820 dropped in the WAN), then restored: the spokes' SuperNodes
    notice through gRPC keepalive, doctor names the tunnel, and they reconnect without a restart."""
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
    _check(node_pids(lab) == pids, f"a SuperNode was restarted: {pids} -> {node_pids(lab)}")
    _check(lab.doctor("b1")["superlink"]["level"] == "ok", "doctor on b1 still sees a problem")
    log(f"drill tunnel: dead tunnel noticed by the SuperNode after {detected:.1f}s (keepalive 60/20s); "
        f"after restore, a round with all {len(pids)} SuperNodes completed {recovered:.1f}s later "
        f"(round {took:.1f}s), no SuperNode restarted")
    return {"detect_s": detected, "recover_s": recovered}


def drill_readiness_outage(lab: Lab) -> dict[str, float]:
    """The tunnel down turns FL_READY=NO (and READY withdrawn) in zone B's OneGate within a bound,
    and back to READY=YES after recovery: the readiness watch (flower-ctx-watch@supernode), not a
    reboot, keeps OneGate current."""
    slots = zone_slots(lab, "B")
    vmids = {s: _vmid(lab, s) for s in slots}
    with ReadinessSampler(lab, "B") as sampler:
        time.sleep(0.5)
        t_down = time.monotonic()
        _drill_table(lab, ["udp dport 51820 drop", "udp sport 51820 drop"])
        try:
            wait_for(lambda: all(sampler.first(v, t_down, "NO") for v in vmids.values()), 60,
                     "zone B's SuperNodes to show FL_READY=NO")
        finally:
            t_up = time.monotonic()
            _drop_drill_table(lab)
        wait_for(lambda: all(sampler.first(v, t_up, "YES", "YES") for v in vmids.values()), 90,
                 "zone B's SuperNodes to show READY=YES again")
        time.sleep(0.5)
    down_s = {s: sampler.first(v, t_down, "NO") - t_down for s, v in vmids.items()}  # type: ignore[operator]
    up_s = {s: sampler.first(v, t_up, "YES", "YES") - t_up for s, v in vmids.items()}  # type: ignore[operator]
    errors = {s: (sampler.state_at(v, t_up) or ("", "", ""))[2] for s, v in vmids.items()}
    for s, v in vmids.items():
        st = sampler.state_at(v, t_up)
        _check(st is not None and st[1] != "YES", f"{s}: READY not withdrawn during the outage: {st}")
    _check(not sampler.violations, f"READY=YES next to FL_READY!=YES: {sampler.violations[:3]}")
    _check(max(down_s.values()) <= WATCH_BOUND_S, f"FL_READY=NO took longer than {WATCH_BOUND_S}s: {down_s}")
    log("drill readiness-outage: tunnel down -> FL_READY=NO, READY withdrawn in OneGate B after "
        + ", ".join(f"{s} {t:.1f}s" for s, t in down_s.items())
        + f" (bound {WATCH_BOUND_S:.0f}s: watch every 5s + 3s probe); FL_ERROR {errors[slots[0]]!r}; "
        "tunnel back -> READY=YES after " + ", ".join(f"{s} {t:.1f}s" for s, t in up_s.items())
        + f"; {sampler.samples} samples every 0.2s, 0 with READY=YES and FL_READY!=YES")
    return {"ready_no_s": max(down_s.values()), "ready_yes_s": max(up_s.values()), "samples": sampler.samples}


def drill_superlink_restart(lab: Lab) -> dict[str, float]:
    """The SuperLink's Flower dies: its supervisor (systemd on a VM, the built-in one here) starts it
    again, SuperNodes reconnect on their own, and the CA they pinned is the one it serves."""
    ca = lab.link.path("/opt/flower/certs/ca.crt").read_bytes()
    fp = lab.user_template("link").get("FL_CA_FINGERPRINT")
    pids = node_pids(lab)
    old = lab.flower_pid("link", "superlink")
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _pid_changed(lab, "link", "superlink", old), 60, "the SuperLink to be started again", 0.2)
    wait_for(lambda: _listening(lab.link, 8000) and _listening(lab.link, 9092), 60, "the SuperLink's APIs", 0.2)
    restarted = time.monotonic() - t0
    one_round(lab)
    recovered = time.monotonic() - t0
    _check(lab.link.path("/opt/flower/certs/ca.crt").read_bytes() == ca, "the CA changed")
    _check(lab.user_template("link").get("FL_CA_FINGERPRINT") == fp, "the published CA fingerprint changed")
    _check(node_pids(lab) == pids, "a SuperNode was restarted")
    log(f"drill superlink-restart: SuperLink killed; started again by its supervisor after {restarted:.1f}s; "
        f"all {len(pids)} SuperNodes trained again {recovered:.1f}s after the kill, CA unchanged ({fp}), "
        "no SuperNode restarted")
    return {"restart_s": restarted, "recover_s": recovered}


def _listening(vm: SimVM, port: int) -> bool:
    out = vm.run(["ss", "-Htln", f"sport = :{port}"], check=False, timeout=10).stdout
    return bool(out.strip())


def _pid_changed(lab: Lab, slot: str, service: str, old: int) -> bool:
    try:
        new = lab.flower_pid(slot, service)
    except (OSError, ValueError):
        return False
    return new != old and _alive(new)


def drill_wrong_ca(lab: Lab) -> dict[str, float]:
    """A training site is given another deployment's CA (onevm updateconf): bootstrap stops at once,
    doctor and FL_ERROR name both fingerprints; the right CA by updateconf repairs it."""
    from cryptography import x509

    from flower_ctx.pem import fingerprint
    from tests.tls_helpers import build_ca

    other = build_ca("Another deployment's CA")
    t0 = time.monotonic()
    result = lab.updateconf("c2", {"FL_SSL_CA_CERTFILE": base64.b64encode(other.cert_pem).decode()}, "wrong-ca.txt")
    detected = time.monotonic() - t0
    try:
        _check(result["status"] == "bootstrap_failure\n", f"one-apps status after the wrong CA: {result['status']!r}")
        real = fingerprint(x509.load_pem_x509_certificate(lab.link.path("/opt/flower/certs/ca.crt").read_bytes()))
        sl = lab.doctor("c2")["superlink"]
        _check(sl["level"] == "problem" and fingerprint(other.cert) in sl["message"] and real in sl["message"],
               f"doctor did not name both CAs: {sl}")
        _check("FL_SSL_CA_CERTFILE" in sl["fix"] and "ca export" in sl["fix"], f"fix: {sl}")
        ut = lab.user_template("c2")
        _check(ut.get("READY") != "YES" and "CA" in ut.get("FL_ERROR", ""), f"OneGate C: {ut}")
        log(f"drill wrong-ca: updateconf -> one-apps bootstrap_failure after {detected:.1f}s; "
            f"FL_ERROR={ut['FL_ERROR']}; doctor: {said(sl)}")
    finally:
        t1 = time.monotonic()
        result = lab.updateconf("c2", {"FL_SSL_CA_CERTFILE": lab.state["ca_b64"]}, "right-ca.txt")
        wait_ready(lab, ["c2"], 120, "after the right CA")
    fixed = time.monotonic() - t1
    log(f"drill wrong-ca: the right CA by updateconf: READY=YES {fixed:.1f}s later (one-apps "
        f"{result['status'].strip()})")
    return {"detect_s": detected, "fix_s": fixed}


def drill_san_missing(lab: Lab) -> dict[str, float]:
    """The SuperLink is reached on its public (NAT) address, which its certificate does not name
    without FL_CERT_EXTRA_SAN: doctor on a zone-C SuperNode says which variable to set; setting it
    again by updateconf repairs the federation."""
    slots = zone_slots(lab, "C")
    t0 = time.monotonic()
    lab.updateconf("link", {"FL_CERT_EXTRA_SAN": ""}, "no-extra-san.txt")
    try:
        wait_for(lambda: all("name mismatch" in lab.user_template(s).get("FL_ERROR", "") for s in slots), 90,
                 "zone C's FL_ERROR to name the certificate's names")
        detected = time.monotonic() - t0
        sl = lab.doctor(slots[0])["superlink"]
        _check(sl["level"] == "problem" and PUBLIC_IP in sl["message"], f"doctor: {sl}")
        _check(sl["fix"] == f"set FL_CERT_EXTRA_SAN=IP:{PUBLIC_IP} on the SuperLink", f"fix: {sl}")
        errors = {s: lab.user_template(s).get("FL_ERROR", "") for s in slots}
        log(f"drill san-missing: FL_CERT_EXTRA_SAN emptied by updateconf; zone C FL_READY=NO {detected:.1f}s later "
            f"(FL_ERROR {errors[slots[0]][:120]!r}); doctor: {said(sl)}")
    finally:
        t1 = time.monotonic()
        lab.updateconf("link", {"FL_CERT_EXTRA_SAN": f"IP:{PUBLIC_IP}"}, "extra-san.txt")
    lab.wait_ready(slots, 180, "after FL_CERT_EXTRA_SAN was set again")
    ready = time.monotonic() - t1
    one_round(lab)
    recovered = time.monotonic() - t1
    log(f"drill san-missing: FL_CERT_EXTRA_SAN set again by updateconf: zone C READY {ready:.1f}s later, "
        f"every SuperNode trained {recovered:.1f}s later")
    return {"detect_s": detected, "recover_s": recovered}


def drill_bad_context(lab: Lab) -> dict[str, float]:
    """An invalid value given to a running SuperNode by updateconf: configure refuses it (nothing
    changed), one-apps stops at configure_failure, OneGate shows FL_READY=NO and FL_ERROR naming the
    variable, READY withdrawn; the corrected value by updateconf makes it READY again."""
    slot = "b2"
    t0 = time.monotonic()
    result = lab.updateconf(slot, {"FL_GRPC_KEEPALIVE_TIME": "5"}, "bad-keepalive.txt")
    took = time.monotonic() - t0
    try:
        ut = lab.user_template(slot)
        net99 = next(s["output"] for s in result["scripts"] if s["name"] == "net-99-report-ready")
        _check(result["status"] == "configure_failure\n", f"one-apps status: {result['status']!r}")
        _check(net99 == "", f"net-99 said something: {net99!r}")
        _check(ut.get("FL_READY") == "NO" and ut.get("READY") != "YES", f"OneGate B: {ut}")
        _check("FL_GRPC_KEEPALIVE_TIME" in ut.get("FL_ERROR", ""), f"FL_ERROR does not name the variable: {ut}")
        log(f"drill bad-context: FL_GRPC_KEEPALIVE_TIME=5 by updateconf -> one-apps configure_failure, net-99 "
            f"silent, FL_READY=NO, READY withdrawn, FL_ERROR={ut['FL_ERROR']!r} ({took:.1f}s)")
    finally:
        t1 = time.monotonic()
        result = lab.updateconf(slot, {"FL_GRPC_KEEPALIVE_TIME": ""}, "keepalive-default.txt")
        lab.wait_ready([slot], 120, "after the value was corrected")
    fixed = time.monotonic() - t1
    log(f"drill bad-context: value corrected by updateconf -> one-apps {result['status'].strip()}, "
        f"READY=YES {fixed:.1f}s later")
    return {"report_s": took, "fix_s": fixed}


def drill_zone_b_first(lab: Lab) -> dict[str, float]:
    """Zone B's SuperNodes boot while zone A's SuperLink is powered off: they report FL_READY=NO
    (waiting for SuperLink) and are never READY meanwhile; once the SuperLink is back they become
    READY by themselves (their readiness watch). A sampler reads zone B's OneGate every 0.2 s for the
    whole drill: no sample may show READY=YES next to an FL_READY other than YES."""
    slots = zone_slots(lab, "B")
    vmids = {s: _vmid(lab, s) for s in slots}
    link_vmid = lab.state["link_vmid"]
    addresses = {s: _wg_address(lab, s) for s in slots}
    with ReadinessSampler(lab, "B") as sampler:
        time.sleep(0.5)
        lab.front_end("A", f"onevm poweroff {link_vmid}", record=False)
        t_boot = time.monotonic()
        for s in slots:
            lab.front_end("B", f"onevm reboot {vmids[s]}", record=False)

        def waiting(v: int) -> bool:
            state = sampler.state_at(v, time.monotonic())
            return (sampler.first(v, t_boot, "NO") is not None and state is not None
                    and "waiting for SuperLink" in state[2])

        wait_for(lambda: all(waiting(v) for v in vmids.values()), 150, "zone B to report waiting for its SuperLink")
        stale = {s: sampler.first(v, t_boot, "NO") - t_boot for s, v in vmids.items()}  # type: ignore[operator]
        time.sleep(2)  # zone B keeps waiting: never READY meanwhile
        t_link = time.monotonic()
        lab.front_end("A", f"onevm resume {link_vmid}", record=False)
        took = lab.wait_ready(slots, 180, "after the SuperLink came back")
        lab.wait_jobs(timeout=240)
        time.sleep(1)
    jobs = {m["slot"]: m["jobs"][-1] for m in lab.machines("B") if m["slot"] in slots}
    for s, v in vmids.items():
        first_yes = sampler.first(v, t_boot, "YES", "YES")
        _check(first_yes is not None and first_yes > t_link, f"{s} READY before the SuperLink was back")
    _check(not sampler.violations, f"READY=YES next to FL_READY!=YES: {sampler.violations[:3]}")
    _check({s: _wg_address(lab, s) for s in slots} == addresses, "a tunnel address changed across the reboot")
    how = {s: (j["result"] or {}).get("status", "?").strip() for s, j in jobs.items()}
    log("drill zone-b-first: SuperLink powered off, zone B rebooted; OneGate B kept the previous boot's "
        "READY=YES until bootstrap had waited 5 s for the SuperLink, then FL_READY=NO 'waiting for SuperLink', "
        "READY withdrawn (" + ", ".join(f"{s} {t:.1f}s" for s, t in stale.items()) + " after the reboot; one-apps "
        f"{how}); SuperLink resumed: READY=YES by the readiness watch after "
        + ", ".join(f"{s} {t:.1f}s" for s, t in took.items()) + f"; tunnel addresses kept {addresses}; "
        f"sampler: {sampler.samples} samples of zone B's OneGate every 0.2s, {len(sampler.violations)} with "
        "READY=YES and FL_READY!=YES")
    one_round(lab)
    return {"stale_ready_s": max(stale.values()), "ready_after_s": max(took.values()), "samples": sampler.samples,
            "violations": len(sampler.violations)}


def _wg_address(lab: Lab, slot: str) -> str:
    doc = json.loads(lab.vm(slot).path("/opt/flower/config/supernode.json").read_text())
    return str(doc.get("wg_address"))


def drill_scale(lab: Lab) -> dict[str, float]:
    """Zone B's role scaled by one VM (oneflow scale): the new VM takes the pool's next address, and
    once its [Peer] and key are added to the SuperLink by updateconf (registered through the Control
    API, no SuperLink restart) it is READY and trains."""
    sid = lab.state["services"]["B"]
    before = {m["vmid"] for m in lab.machines("B")}
    old_addresses = {s: _wg_address(lab, s) for s in zone_slots(lab, "B")}
    n = len(before) + 1
    t0 = time.monotonic()
    lab.front_end("B", f"oneflow scale {sid} supernode {n}", record=False)
    new = wait_for_new(lab, before)
    slot = new["slot"]
    wait_for(lambda: lab.on_vm(slot, "flower-ctx node key", check=False, record=False)[0] == 0, 120,
             f"{slot}'s first configure")
    peer = lab.on_vm(slot, "flower-ctx wg peer", stdout_only=True, record=False)[1].strip()
    key = lab.on_vm(slot, "flower-ctx node key", stdout_only=True, record=False)[1].strip()
    address = _wg_address(lab, slot)
    _check(address not in old_addresses.values(), f"{slot} got an address already used: {address}")
    _check(address.split("/")[0] in peer, f"wg peer does not name {address}: {peer}")
    lab.state["peers"].append(peer)
    lab.state["keys"].append(key)
    link_pid = lab.flower_pid("link", "superlink")
    t1 = time.monotonic()
    lab.updateconf("link", {"FL_WG_PEERS": "\n\n".join(lab.state["peers"]),
                            "FL_SUPERNODE_PUBLIC_KEYS": "\n".join(lab.state["keys"])}, "superlink-update.txt")
    _check(lab.flower_pid("link", "superlink") == link_pid, "the SuperLink was restarted to admit a SuperNode")
    lab.wait_ready([slot], 180, "after its key and peer were added")
    ready = time.monotonic() - t1
    lab.wait_service("B", "RUNNING", 120)
    lab.save()
    log(f"drill scale: `oneflow scale {sid} supernode {n}` -> VM {new['vmid']} {new['name']} on {slot}, tunnel "
        f"address {address} (the others keep {sorted(old_addresses.values())}); its peer and key added to the "
        f"SuperLink by updateconf (SuperLink pid unchanged): READY=YES {ready:.1f}s later, service B RUNNING "
        f"({time.monotonic() - t0:.1f}s after the scale)")
    rounds = lab.train(rounds=1, timeout=180)
    _check(rounds["nodes"] >= len(lab.supernodes()), f"the new SuperNode did not train: {rounds}")
    return {"ready_s": ready, "total_s": time.monotonic() - t0}


def wait_for_new(lab: Lab, before: set[int]) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def found() -> bool:
        for m in lab.machines("B"):
            if m["vmid"] not in before:
                box["m"] = m
                return True
        return False

    wait_for(found, 60, "OneFlow to create the new VM")
    return box["m"]


def _set_keepalive(lab: Lab, slots: list[str], time_s: str, timeout_s: str) -> None:
    """The operator's fix for an aggressive NAT: FL_GRPC_KEEPALIVE_TIME below its idle timeout, by
    updateconf of each SuperNode that crosses it (net-90 restarts Flower with the new values)."""
    for slot in slots:
        result = lab.updateconf(slot, {"FL_GRPC_KEEPALIVE_TIME": time_s, "FL_GRPC_KEEPALIVE_TIMEOUT": timeout_s},
                                "keepalive.txt")
        _check(result["status"] == "bootstrap_success\n", f"{slot}: {result['status']!r}")
    wait_ready(lab, slots, 120, "with the new keepalive")


def _start_stock_supernode(lab: Lab, slot: str) -> subprocess.Popen[bytes]:
    """Stock Flower in place of the VM's flower-ctx SuperNode: its supervised service and watch
    stopped, Flower's own console script started with the arguments flower-ctx uses (same key, CA,
    address), without `flower-ctx run` and so without keepalive."""
    from flower_ctx.commands.run import flower_argv, prepare_environment

    vm = lab.vm(slot)
    stop_service(lab, slot, "watch-supernode")
    stop_service(lab, slot, "supernode")
    doc = json.loads(vm.path("/opt/flower/config/supernode.json").read_text())
    doc["http_api"] = {"host": "127.0.0.1", "port": 9095}
    env = prepare_environment(doc, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    log_path = vm.path("/opt/flower/run/stock-supernode.log")
    with open(log_path, "wb") as out:
        proc = vm.popen([str(lab_bin() / "flower-supernode"), *flower_argv(doc, lab_flower())[1:]],
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                        start_new_session=True)
    # Connected and settled: its node activated, and no failed attempt for 10 s (Flower refuses to
    # activate a node the SuperLink still counts online, e.g. right after the VM's own SuperNode).
    seen = {"failures": -1, "since": time.monotonic()}

    def settled() -> bool:
        text = log_path.read_text(errors="replace")
        failures = text.count(LOST)
        if failures != seen["failures"]:
            seen["failures"], seen["since"] = failures, time.monotonic()
        return "SuperNode ID" in text and time.monotonic() - seen["since"] >= 10

    wait_for(settled, 120, "the stock SuperNode to connect and settle")
    return proc


def _stop_run(lab: Lab, output: str) -> None:
    found = re.search(r"Successfully started run (\d+)", output)
    if found:
        lab.link.run(["env", "FLWR_HOME=/opt/flower/cli", "PATH=/usr/local/bin:/usr/bin:/bin", "flwr", "stop",
                      found.group(1), "lab"], check=False, timeout=60)


def drill_nat(lab: Lab) -> dict[str, float]:
    """An aggressive stateful NAT in the WAN: conntrack forgets an established TCP flow after
    NAT_TIMEOUT_S idle seconds and drops what it forgot (no mid-stream pick-up). While a ClientApp
    runs, a Flower 1.39 SuperNode only sends heartbeats (about every 20 s), so its Fleet connection
    idles longer than that. Zone C dials the public address through that NAT: with
    FL_GRPC_KEEPALIVE_TIME=10 (given by updateconf) a long round completes (asserted); a stock Flower
    SuperNode in zone C usually stalls the round or loses its update (reported, not asserted: Flower's
    own retries sometimes get it through)."""
    sysctl = "net.netfilter.nf_conntrack_tcp_timeout_established"
    before = lab.rig.router_run("sysctl", "-n", sysctl).stdout.strip()
    sleep_s = 3 * NAT_TIMEOUT_S  # each ClientApp idles this long inside the round
    slots = zone_slots(lab, "C")
    _set_keepalive(lab, slots, "10", "5")
    lab.rig.router_run("sysctl", "-qw", f"{sysctl}={NAT_TIMEOUT_S}")
    stock: subprocess.Popen[bytes] | None = None
    stock_slot = slots[-1]
    try:
        t0 = time.monotonic()
        with FleetIdleSampler(lab.vm(slots[0])) as agent_idle:
            res = lab.train(rounds=1, round_sleep=sleep_s, timeout=sleep_s + 120)
        took = time.monotonic() - t0
        log(f"drill nat: keepalive 10/5 s on zone C: a round whose ClientApps ran {sleep_s}s completed with all "
            f"{int(res['nodes'])} SuperNodes in {took:.1f}s; {slots[0]}'s Fleet connection idled at most "
            f"{agent_idle.max_idle_s:.1f}s")

        from tests.flower_envs import FULL_SUITE

        if not FULL_SUITE:  # the stock half reports (never asserts) a figure and takes ~90 s
            log("drill nat: the stock-Flower comparison runs with FLOWER_CTX_FULL_SUITE=1 (beyond CI's time budget)")
            return {"round_s": took, "agent_max_idle_s": agent_idle.max_idle_s}
        stock = _start_stock_supernode(lab, stock_slot)
        limit = sleep_s + 30  # the round with keepalive took sleep_s + 11-15 s
        with FleetIdleSampler(lab.vm(stock_slot)) as stock_idle:
            try:
                res = lab.train(rounds=1, round_sleep=sleep_s, timeout=limit, nodes=len(lab.supernodes()) - 1)
                outcome = (f"completed in {res['seconds']:.1f}s without the stock SuperNode's update "
                           f"({int(res['failures'])} failed: {'; '.join(lab.last_errors)})")
                lost = res["failures"] >= 1
            except subprocess.TimeoutExpired as exc:
                outcome, lost = f"had not completed after {limit}s (stalled)", True
                _stop_run(lab, (exc.stdout or b"").decode(errors="replace")
                          if isinstance(exc.stdout, bytes) else exc.stdout or "")
        ss = lab.vm(stock_slot).run(["ss", "-tin", "dst", f"{PUBLIC_IP}:9092"], check=False).stdout
        if not lost:
            # Not asserted: in 2 of 5 runs stock Flower's update arrived anyway (not explained yet: its
            # heartbeat gaps of 17-22 s exceed the NAT's 12 s, so its flow should have been forgotten).
            stock_log = lab.vm(stock_slot).path("/opt/flower/run/stock-supernode.log").read_text(errors="replace")
            outcome = (f"completed in {res['seconds']:.1f}s WITH the stock SuperNode's update this time "
                       f"({stock_log.count('Connection attempt failed')} failed connection attempts in its log)")
        log(f"drill nat: same round with stock Flower on {stock_slot} (no keepalive; its Fleet connection idled "
            f"{stock_idle.max_idle_s:.1f}s): {outcome}; its socket: "
            + (" ".join(re.findall(r"(?:unacked|retrans|lastsnd|lastrcv):\S+", ss)) or "no connection"))
    finally:
        if stock is not None:
            from tests.runtime_helpers import kill_tree

            kill_tree(stock.pid)
            stock.wait(10)
        lab.rig.router_run("sysctl", "-qw", f"{sysctl}={before}")
    # Back to flower-ctx on that VM (what `systemctl start flower-supernode flower-ctx-watch@supernode` does).
    # bootstrap may give up before Flower activates the node again (the SuperLink counts it online for
    # two heartbeat intervals after the stock SuperNode was killed); its readiness watch carries on.
    t1 = time.monotonic()
    lab.on_vm(stock_slot, "flower-ctx bootstrap --role supernode", record=False, check=False)
    wait_ready(lab, [stock_slot], 240, "after flower-ctx took over again")
    lost_first, _ = round_with_everyone(lab, "after flower-ctx took over again")
    log(f"drill nat: NAT back to normal, flower-ctx's SuperNode back on {stock_slot}: a round with every "
        f"SuperNode completed {time.monotonic() - t1:.1f}s later ({lost_first} round(s) before it lost a reply)")
    return {"round_s": took, "agent_max_idle_s": agent_idle.max_idle_s, "stock_max_idle_s": stock_idle.max_idle_s,
            "stock_update_lost": float(lost)}


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
    "readiness-outage": drill_readiness_outage,
    "superlink-restart": drill_superlink_restart,
    "wrong-ca": drill_wrong_ca,
    "san-missing": drill_san_missing,
    "bad-context": drill_bad_context,
    "zone-b-first": drill_zone_b_first,
    "scale": drill_scale,
    "nat": drill_nat,
}


def orphans(lab: Lab, slot: str, role: str = "supernode") -> list[int]:
    """`flower-ctx run ROLE` processes on the VM other than the one its supervisor's pid file names.

    flower-ctx's built-in supervisor (the stand-in for systemd in the simulated VMs) can start Flower
    twice when the readiness watch restarts an ended Flower while bootstrap restarts it for a new
    configuration (watch.py check_once calls keep_running without the machine lock): the pid file
    then names the start that lost the port, the watch restarts it every 10 s in vain, OneGate says
    FL_READY=NO, and the other keeps serving unsupervised."""
    try:
        current = lab.flower_pid(slot, role)
    except (OSError, ValueError):
        current = None
    found = []
    for pid in lab.vm(slot).pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flower_ctx" in argv and argv[argv.index(b"flower_ctx") + 1:argv.index(b"flower_ctx") + 3] == \
                [b"run", role.encode()] and pid != current and _alive(pid):
            found.append(pid)
    return found


def stop_strays(lab: Lab, slots: list[str]) -> int:
    """Report and stop the unsupervised copies ``orphans`` finds (what an operator would kill)."""
    stopped = 0
    for slot in slots:
        role = "superlink" if slot == "link" else "supernode"
        for pid in orphans(lab, slot, role):
            lab.figures["supervisor_races"] = lab.figures.get("supervisor_races", 0) + 1
            log(f"FLOWER-CTX BUG on {slot}: Flower started twice (built-in supervisor race between the watch and "
                f"bootstrap); stopping the unsupervised flower-ctx run {role}, pid {pid}")
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            stopped += 1
    return stopped


def wait_ready(lab: Lab, slots: list[str], timeout: float, what: str = "") -> dict[str, float]:
    """``lab.wait_ready``, with one repair of the built-in supervisor's race (see ``orphans``)."""
    try:
        return lab.wait_ready(slots, timeout / 2, what)
    except LabError:
        if not stop_strays(lab, slots):
            raise
    return lab.wait_ready(slots, timeout / 2, what)


def healthy(lab: Lab, timeout: float = 90) -> None:
    """What every drill leaves behind: every SuperNode READY in its zone's OneGate (strays of the
    built-in supervisor's race reported and stopped first)."""
    slots = [m["slot"] for m in lab.supernodes()]
    stop_strays(lab, ["link", *slots])
    wait_ready(lab, slots, timeout, "at the end of the drill")


def all_drills() -> dict[str, Callable[[Lab], dict[str, float]]]:
    """Every drill by name: this module's and those kept in their own modules (they use this
    module's helpers, so they are imported here, not at the top)."""
    from tests.lab.drills_day2 import DAY2_DRILLS
    from tests.lab.drills_gateway import GATEWAY_DRILLS
    from tests.lab.drills_trust import TRUST_DRILLS

    return {**DRILL_FUNCS, **TRUST_DRILLS, **DAY2_DRILLS, **GATEWAY_DRILLS}


def run_drill(lab: Lab, name: str) -> dict[str, float]:
    log(f"drill {name}: start")
    t0 = time.monotonic()
    figures = all_drills()[name](lab)
    healthy(lab)
    figures["drill_s"] = time.monotonic() - t0
    lab.figures.update({f"{name}.{k}": v for k, v in figures.items()})
    log(f"drill {name}: passed ({figures['drill_s']:.0f}s)")
    return figures
