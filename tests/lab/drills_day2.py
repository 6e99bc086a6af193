"""Day-two drills of the three-zone lab (issue 15): the SuperLink's certificate renewed while a run
trains, and a SuperLink VM rebuilt from a fresh disk plus `flower-ctx restore`. Found by
``drills.all_drills``; each leaves the federation healthy."""

from __future__ import annotations

import datetime
import os
import re
import threading
import time
from typing import Any

from tests.lab.drills import _check, node_pids, round_with_everyone, wait_ready, zone_slots
from tests.lab.three_zone import OPS, PUBLIC_IP, Lab, LabError, lab_venv, log, wait_for

# The certificate a new TLS handshake gets, verified with the VM's own CA file: notAfter, then issuer.
SERVED = """
import socket, ssl, sys
from cryptography import x509
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as raw, \\
        ctx.wrap_socket(raw, server_hostname=sys.argv[1]) as tls:
    der = tls.getpeercert(binary_form=True)
cert = x509.load_der_x509_certificate(der)
print(cert.not_valid_after_utc.isoformat())
print(cert.issuer.rfc4514_string())
"""


def _served(lab: Lab, slot: str) -> list[str]:
    return lab.vm(slot).python(SERVED, PUBLIC_IP, "9092", "/opt/flower/certs/ca.crt", timeout=30).stdout.splitlines()


def served_not_after(lab: Lab, slot: str) -> datetime.datetime:
    """What a zone-C SuperNode VM gets on a new handshake with the SuperLink's public address."""
    return datetime.datetime.fromisoformat(_served(lab, slot)[0])


def served_issuer(lab: Lab, slot: str) -> str:
    return _served(lab, slot)[1]


def run_in_background(lab: Lab, rounds: int, round_sleep: float) -> tuple[threading.Thread, dict[str, Any]]:
    """A `flwr run` on the SuperLink VM in a thread; its result (or error) lands in the dict."""
    box: dict[str, Any] = {}

    def train() -> None:
        try:
            box["result"] = lab.train(rounds=rounds, round_sleep=round_sleep, timeout=300)
        except BaseException as exc:  # reported by the drill
            box["error"] = exc

    runner = threading.Thread(target=train, name="drill-run")
    runner.start()
    return runner, box


def finished(runner: threading.Thread, box: dict[str, Any], across: str, nodes: int) -> dict[str, float]:
    """The background run's result once it ended: 4 rounds, every one of ``nodes`` SuperNodes, no failure."""
    runner.join(320)  # already ended when the drill's own wait joined it
    if "error" in box:
        raise LabError(f"the run across {across} failed: {box['error']}")
    res = box["result"]
    _check(res["rounds"] == 4 and res["failures"] == 0 and res["nodes"] == nodes, f"the run: {res}")
    return res


def force_into_renewal_window(lab: Lab) -> datetime.datetime:
    """Re-sign the SuperLink's server.pem (same key, same names) by its CA to expire in 10 days: due
    for renewal. The file is replaced in place (mode and owner kept), as an aged certificate would be."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    certs = lab.link.path("/opt/flower/certs")
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    old = x509.load_pem_x509_certificates((certs / "server.pem").read_bytes())[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject)
               .public_key(old.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=10)))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    short = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    with open(certs / "server.pem", "r+b") as fh:
        fh.truncate(0)
        fh.write(short.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return short.not_valid_after_utc


def drill_renewal(lab: Lab) -> dict[str, float]:
    """The SuperLink's server certificate is 10 days from expiry; `flower-ctx renew` (what the daily
    flower-ctx-renew timer runs; the built-in supervisor's watch does it here) re-issues it under the
    same CA while a 4-round run trains across the zones: the Fleet API serves the new certificate
    without a restart, the run completes with every SuperNode, no round lost."""
    c = zone_slots(lab, "C")[0]
    link_pid = lab.flower_pid("link", "superlink")
    pids = node_pids(lab)
    short = force_into_renewal_window(lab)
    wait_for(lambda: abs((served_not_after(lab, c) - short).total_seconds()) < 2, 30,
             "the SuperLink to serve the aged certificate")
    pushes = lab.superlink_log().count("Push replies from node_id")
    runner, box = run_in_background(lab, 4, 3)
    try:
        wait_for(lambda: lab.superlink_log().count("Push replies from node_id") >= pushes + 2 * len(pids)
                 or not runner.is_alive(), 180, "the run's second round")
        _check(runner.is_alive(), f"the run ended before the renewal: {box}")
        t0 = time.monotonic()
        _, out = lab.on_vm("link", "flower-ctx renew --role superlink", record=False)
        _check("server.pem" in out, f"renew did not re-issue server.pem:\n{out}")
        wait_for(lambda: (served_not_after(lab, c) - short).days >= 300, 60, "the renewed certificate to be served",
                 0.2)
        served = time.monotonic() - t0
    finally:
        runner.join(320)
    res = finished(runner, box, "the renewal", len(pids))
    _check(lab.flower_pid("link", "superlink") == link_pid and node_pids(lab) == pids, "a Flower was restarted")
    fp = lab.user_template("link").get("FL_CERT_EXPIRES", "")
    log(f"drill renewal: server certificate aged to {short:%Y-%m-%d} (10 days left); `flower-ctx renew --role "
        f"superlink` during a 4-round run: the new one served on {PUBLIC_IP}:9092 {served:.2f}s after renew "
        f"began; the run completed 4 rounds with all {len(pids)} SuperNodes, {int(res['failures'])} failures "
        f"(rounds lost 0), no Flower restarted; OneGate FL_CERT_EXPIRES={fp}")
    return {"served_s": served, "rounds_lost": res["failures"]}


PASSPHRASE = "lab-backup-passphrase-0123"
FRESH_DISK = ("rm -rf /opt/flower /etc/flower-ctx/* /etc/wireguard/* /etc/wireguard/.[!.]* /etc/one-appliance "
              "/var/lib/flower /root/.flwr /root/superlink.backup /root/passphrase "
              "/var/lib/prometheus/node-exporter; "
              "umount /var/log; umount /usr/local; rm -f /run/.oneapps/mounted; rm -rf /run/.oneapps")


def drill_restore(lab: Lab) -> dict[str, float]:
    """The SuperLink VM's disk is lost. The operator had run `flower-ctx backup` (encrypted, kept off
    the VM); the VM comes back from the image with the same CONTEXT, one-apps configures it with a
    new CA (the training sites refuse it), and `flower-ctx restore` puts the CA, the hub's WireGuard
    key, the admissions and Flower's database back: READY with the same CA fingerprint, every
    SuperNode trains again, nothing changed in zones B and C."""
    from tests import oneapps_double as oa

    fp = lab.user_template("link").get("FL_CA_FINGERPRINT")
    ops = OPS / "A"
    lab.link.path("/root/passphrase").write_text(PASSPHRASE + "\n")
    os.chmod(lab.link.path("/root/passphrase"), 0o600)
    _, out = lab.on_vm("link", "flower-ctx backup /root/superlink.backup --passphrase-file /root/passphrase",
                       record=False)
    _check("(encrypted)" in out, out)
    saved = lab.link.path("/root/superlink.backup").read_bytes()  # `scp` to the operator's machine
    (ops / "superlink.backup").write_bytes(saved)
    sites = _site_jobs(lab)  # no reconfigure, reboot or restart may happen in zones B and C
    vmid = lab.state["link_vmid"]
    t0 = time.monotonic()
    lab.front_end("A", f"onevm poweroff {vmid}", record=False)
    lab.link.run(["sh", "-c", FRESH_DISK], timeout=60)  # the new disk: the image as built, nothing else
    oa.install(lab.link, "superlink", venv=lab_venv())  # the lab's image: its Flower
    lab.front_end("A", f"onevm resume {vmid}", record=False)
    lab.wait_jobs("A", timeout=240)
    new_fp = lab.user_template("link").get("FL_CA_FINGERPRINT")
    _check(new_fp and new_fp != fp, f"a fresh disk should make a new CA: {fp} -> {new_fp}")
    rebuilt = time.monotonic() - t0
    wait_for(lambda: all(not lab.ready(s) for s in zone_slots(lab, "C")), 90,
             "zone C to refuse the rebuilt SuperLink's new CA")
    t1 = time.monotonic()
    lab.link.path("/root/superlink.backup").write_bytes((ops / "superlink.backup").read_bytes())
    lab.link.path("/root/passphrase").write_text(PASSPHRASE + "\n")
    _, out = lab.on_vm("link", "flower-ctx restore /root/superlink.backup --passphrase-file /root/passphrase",
                       record=False, timeout=300)
    lab.link.path("/root/superlink.backup").unlink()
    lab.link.path("/root/passphrase").unlink()
    restored = time.monotonic() - t1
    wait_for(lambda: lab.user_template("link").get("FL_CA_FINGERPRINT") == fp, 60,
             "the restored CA's fingerprint in OneGate")
    took = wait_ready(lab, [m["slot"] for m in lab.supernodes()], 240, "after the restore")
    back = time.monotonic() - t1
    lost, round_s = round_with_everyone(lab, "after the restore")
    first = f"; {lost} round(s) right after it lost a reply first" if lost else ""
    _check(lab.ready("link") and lab.user_template("link").get("FL_CA_FINGERPRINT") == fp, "the SuperLink")
    _check(re.search(r"restored\s+\S*ca\.key", out), f"restore did not put the CA key back:\n{out}")
    _check(_site_jobs(lab) == sites, f"zones B or C were reconfigured or rebooted: {sites} -> {_site_jobs(lab)}")
    log(f"drill restore: SuperLink VM {vmid} rebuilt from a fresh disk ({rebuilt:.1f}s: one-apps made a new CA "
        f"{new_fp}, zone C refused it); `flower-ctx restore` took {restored:.1f}s; CA fingerprint back to {fp}; "
        "every SuperNode READY again after " + ", ".join(f"{s} {t + restored:.1f}s" for s, t in sorted(took.items()))
        + f" ({back:.1f}s after restore began), a round with all of them {round_s:.1f}s{first}; zones B and C: "
        "no updateconf, reconfigure or reboot")
    return {"restore_s": restored, "all_ready_s": back, "rounds_losing_a_reply": float(lost)}


def drill_rotation(lab: Lab) -> dict[str, float]:
    """A full CA rotation across the three zones while a run trains: `flower-ctx ca rotate` on the
    SuperLink makes the next CA; each training site gets the bundle `ca export` now prints (updateconf
    of FL_SSL_CA_CERTFILE: one planned Flower restart per SuperNode); `ca rotate --finish` refuses until
    every SuperNode online announces the next CA, then switches the server certificate during a 4-round
    run: the run completes with every SuperNode, no round lost; `--drop-old` ends the overlap."""
    from cryptography import x509

    from flower_ctx.pem import fingerprint

    old_fp = lab.user_template("link").get("FL_CA_FINGERPRINT")
    _, out = lab.on_vm("link", "flower-ctx ca rotate", record=False)
    found = re.search(r"next CA (sha256:[0-9a-f]{64})", out)
    _check(found, f"ca rotate did not name the next CA:\n{out}")
    next_fp = found.group(1)  # type: ignore[union-attr]
    bundle = lab.on_vm("link", "flower-ctx ca export", record=False, stdout_only=True)[1].strip()
    slots = [m["slot"] for m in lab.supernodes() if m["zone"] != "A"]
    local = zone_slots(lab, "A")  # they pinned the CA from OneGate: they take the bundle from there
    local_pids = {s: lab.flower_pid(s, "supernode") for s in local}
    t0 = time.monotonic()
    for slot in slots:  # the operator, zone by zone: FL_SSL_CA_CERTFILE = the bundle
        result = lab.updateconf(slot, {"FL_SSL_CA_CERTFILE": bundle}, "ca-bundle.txt")
        _check(result["status"] == "bootstrap_success\n", f"{slot} with the bundle: {result['status']!r}")
    wait_ready(lab, slots, 120, "with the CA bundle")
    distributed = time.monotonic() - t0

    def trusts_next(slot: str) -> bool:
        from flower_ctx.pem import load_certs

        pem = lab.vm(slot).path("/opt/flower/certs/ca.crt").read_bytes()
        return next_fp in [fingerprint(c) for c in load_certs(pem)]

    # Zone A's SuperNodes: the SuperLink publishes the bundle (its next resync) and their watch takes it
    # (its next look at OneGate: the bundle holds the CA they pinned), restarting Flower once to trust it.
    # Taken = installed and Flower restarted on it (the file is written just before the restart).
    wait_for(lambda: all(trusts_next(s) and lab.flower_pid(s, "supernode") != local_pids[s] for s in local), 150,
             "zone A's SuperNodes to take the bundle from OneGate")
    wait_ready(lab, local, 120, "with the bundle from OneGate")
    local_took = time.monotonic() - t0
    lab.state["ca_b64"] = bundle
    lab.save()
    pids = node_pids(lab)
    runner, box = run_in_background(lab, 4, 3)
    c = zone_slots(lab, "C")[0]
    try:
        t1 = time.monotonic()
        while True:  # the trust report: every SuperNode online announces the next CA on its connection
            code, fin = lab.on_vm("link", "flower-ctx ca rotate --finish", check=False, record=False)
            if code == 0 or time.monotonic() - t1 > 120:
                break
            time.sleep(2)
        _check(code == 0, f"ca rotate --finish never went through:\n{fin}")
        t2 = time.monotonic()
        next_subject = x509.load_pem_x509_certificates(lab.link.path("/opt/flower/certs/ca.crt").read_bytes())[0]
        _check(fingerprint(next_subject) == next_fp, "the SuperLink's CA file does not lead with the next CA")
        wait_for(lambda: served_issuer(lab, c) == next_subject.subject.rfc4514_string(), 60,
                 "the next CA's certificate to be served", 0.5)
        served = time.monotonic() - t2
    finally:
        runner.join(320)
    res = finished(runner, box, "the rotation", len(pids))
    moved = sorted(s for s, pid in node_pids(lab).items() if pids.get(s) != pid)
    if moved:
        said = {s: [ln for ln in lab.vm(s).path("/opt/flower/run/watch-supernode.log").read_text(
            errors="replace").splitlines() if "flower-supernode" in ln][-3:] for s in moved}
        _check(False, f"SuperNodes restarted after --finish: {said}")
    lab.on_vm("link", "flower-ctx ca rotate --drop-old", record=False)
    new_fp = lab.user_template("link").get("FL_CA_FINGERPRINT")
    log(f"drill rotation: `ca rotate` on the SuperLink (next CA {next_fp[:23]}...); the bundle given to the "
        f"{len(slots)} SuperNodes of zones B and C by updateconf (one planned restart each, {distributed:.1f}s); "
        f"zone A's {len(local)} took it from OneGate by themselves ({local_took:.1f}s after the first updateconf); "
        f"`ca rotate --finish` went through {t2 - t1:.1f}s into a 4-round run, the next CA's certificate was "
        f"served on {PUBLIC_IP}:9092 {served:.1f}s later; the run completed with all {len(pids)} SuperNodes, "
        f"{int(res['failures'])} failures (rounds lost 0), no SuperNode restarted after --finish; --drop-old: "
        f"OneGate FL_CA_FINGERPRINT {old_fp[:23]}... -> {str(new_fp)[:23]}...")
    return {"distribute_s": distributed, "served_s": served, "rounds_lost": res["failures"]}


def _site_jobs(lab: Lab) -> dict[str, list[tuple[str, float]]]:
    return {m["slot"]: [(j["kind"], j["started"]) for j in m["jobs"]] for m in lab.machines() if m["zone"] != "A"}


DAY2_DRILLS = {"renewal": drill_renewal, "rotation": drill_rotation, "restore": drill_restore}
