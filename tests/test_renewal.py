"""Renewal without a reboot (issue 15): a SuperLink server certificate in its renewal window is
re-issued under the same CA by `flower-ctx renew` (what the daily timer runs) while a run trains;
the running Flower serves the new certificate on new TLS handshakes (1.39: gRPC Fleet API and its HTTPS
API; 1.42: the HTTPS Fleet and Control listeners) without a restart, the SuperNode never reconnects (1.39's
long-lived connection) and the run loses no round."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from flower_ctx.context import render
from tests.conftest import REPO
from tests.flower_envs import bin_dir, ctx_argv, eras_beside_the_lab, flower_env, flower_python
from tests.runtime_helpers import Proc, free_port

APP = REPO / "tests" / "lab" / "app"


def _served_not_after(port: int, ca: Path) -> datetime.datetime:
    """The notAfter of the certificate a new TLS handshake on ``port`` gets (verified with ``ca``)."""
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca))
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def _force_into_renewal_window(certs: Path) -> datetime.datetime:
    """Re-sign server.pem (same key, same SANs) by the CA to expire in 10 days: 'due' for renewal."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    old = x509.load_pem_x509_certificates((certs / "server.pem").read_bytes())[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject).public_key(old.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=10)))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    short = builder.sign(ca_key, hashes.SHA256())
    (certs / "server.pem").write_bytes(short.public_bytes(serialization.Encoding.PEM)
                                       + ca.public_bytes(serialization.Encoding.PEM))
    return short.not_valid_after_utc


# What the SuperLink logs once its Fleet API listens, per era.
FLEET_UP = {"1.39": "Starting Fleet API", "1.42": "public Fleet API on"}


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.parametrize("minor", eras_beside_the_lab())
def test_renewed_certificate_is_served_without_a_restart_while_a_run_trains(tmp_path: Path, procs: list[Proc],
                                                                           minor: str) -> None:
    py = flower_python(minor)
    if py is None:
        pytest.skip(f"needs a Python with flwr {minor} (test.sh makes it)")
    fenv = flower_env(py)

    def flower_ctx_argv(*args: str) -> list[str]:
        return ctx_argv(py, *args)

    link = tmp_path / "L"
    ctx = tmp_path / "link.sh"
    ctx.write_text(render({"ETH0_IP": "127.0.0.1", "FL_SUPERNODE_AUTH": "NO"}))
    out = subprocess.run(flower_ctx_argv("configure", "--role", "superlink", "--context", str(ctx), "--root",
                                         str(link)), capture_output=True, text=True, timeout=120, cwd=REPO, env=fenv)
    assert out.returncode == 0, out.stderr
    fleet, http = free_port(), free_port()
    doc_path = link / "opt/flower/config/superlink.json"
    doc = json.loads(doc_path.read_text())
    doc["fleet_api_address"] = f"127.0.0.1:{fleet}"
    doc["http_api"]["port"] = http
    doc_path.write_text(json.dumps(doc))
    certs = link / "opt/flower/certs"
    short_until = _force_into_renewal_window(certs)
    ca = certs / "ca.crt"

    superlink = Proc(flower_ctx_argv("run", "superlink", "--root", str(link)), env=fenv).start()
    procs.append(superlink)
    superlink.wait_for(FLEET_UP[minor], 90)
    node_root = tmp_path / "N"
    (node_root / "opt/flower/certs").mkdir(parents=True)
    shutil.copy(ca, node_root / "opt/flower/certs/ca.crt")
    from tests.runtime_helpers import stage_runtime_config

    stage_runtime_config(node_root, "supernode", None, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()},
                         tls={"enabled": True, "ca_certfile": str(node_root / "opt/flower/certs/ca.crt"),
                              "certfile": None, "keyfile": None})
    node = Proc(flower_ctx_argv("run", "supernode", "--root", str(node_root)), env=fenv).start()
    procs.append(node)
    node.wait_for("SuperNode ID", 60)
    assert abs((_served_not_after(fleet, ca) - short_until).total_seconds()) < 2

    # A run that spans the renewal: 4 rounds, each ClientApp sleeping 3 s.
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "t"\n\n[superlink.t]\naddress = "127.0.0.1:{http}"\n'
                                      f'root-certificates = "{ca}"\n')
    env = {**fenv, "FLWR_HOME": str(home)}
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    run = subprocess.Popen([str(bin_dir(py) / "flwr"), "run", ".", "t", "--stream", "--run-config",
                            "num-server-rounds=4 min-nodes=1 round-sleep=3"], cwd=app, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # into the run: the second round's replies reached the SuperLink
        while superlink.text().count("Push replies from node_id") < 2:
            assert time.monotonic() < deadline and run.poll() is None, superlink.text()[-3000:]
            time.sleep(0.2)
        t0 = time.monotonic()
        renew = subprocess.run(flower_ctx_argv("renew", "--role", "superlink", "--context", str(ctx), "--root",
                                               str(link)), capture_output=True, text=True, timeout=120, cwd=REPO,
                               env=fenv)
        assert renew.returncode == 0 and "server.pem" in renew.stdout, renew.stdout + renew.stderr
        deadline = time.monotonic() + 30  # gRPC (1.39): the very next handshake; uvicorn (1.42): its reload poll
        while (_served_not_after(fleet, ca) - short_until).days < 300:
            assert time.monotonic() < deadline, "the Fleet API never served the renewed certificate"
            time.sleep(0.2)
        served_after = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while (_served_not_after(http, ca) - short_until).days < 300:  # uvicorn: within its poll interval
            assert time.monotonic() < deadline, "the HTTPS API never served the renewed certificate"
            time.sleep(0.5)
        output, _ = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    found = re.search(r"FCLAB-RESULT rounds=(\d+) nodes=(\d+)", output)
    assert run.returncode == 0 and found and found.group(1) == "4", output[-3000:]
    failures = [int(n) for n in re.findall(r"Received \d+ results and (\d+) failures", output)]
    assert max(failures, default=0) == 0  # rounds lost: 0
    assert superlink.popen.poll() is None and node.popen.poll() is None  # nothing restarted
    if minor == "1.39":  # one long-lived gRPC connection (HTTP Fleet connections close when idle anyway)
        assert node.first("Connection attempt failed", after=t0) is None  # the SuperNode never reconnected
    print(f"\nrenewal while training (Flower {minor}): new certificate served"
          f" {served_after:.2f} s after `flower-ctx renew` began; "
          "rounds lost 0; SuperNode reconnections 0; SuperLink restarts 0")
