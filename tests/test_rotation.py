"""CA rotation with overlap (issue 15), against real Flower (1.39 on gRPC, 1.42 on HTTP) on loopback: the
SuperLink makes the next CA and publishes the bundle; `--finish` refuses while a SuperNode online does not
trust the next CA (it says which); the SuperNode takes the bundle (what FL_SSL_CA_CERTFILE = `ca export` gives
it) and announces it on its connection; `--finish` then switches the CA and re-issues the server certificate
under it, served without a restart, while a run trains: no round lost."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from flower_ctx.context import render
from flower_ctx.pem import fingerprint, load_certs
from tests.conftest import REPO
from tests.flower_envs import bin_dir, ctx_argv, flower_env, flower_python
from tests.runtime_helpers import Proc, free_port, stage_runtime_config

APP = REPO / "tests" / "lab" / "app"


# What the SuperLink logs once its Fleet API listens, per era.
FLEET_UP = {"1.39": "Starting Fleet API", "1.42": "public Fleet API on"}


def _issuer_served(port: int, bundle: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(bundle))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        from cryptography import x509

        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).issuer.rfc4514_string()


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.parametrize("minor", ["1.39", "1.42"])
def test_rotation_overlaps_and_finishes_only_when_every_supernode_trusts_the_next_ca(
        tmp_path: Path, procs: list[Proc], minor: str) -> None:
    py = flower_python(minor)
    if py is None:
        pytest.skip(f"needs a Python with flwr {minor} (test.sh makes it)")
    fenv = flower_env(py)

    def _cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ctx_argv(py, *args), capture_output=True, text=True, timeout=120, cwd=REPO, env=fenv)

    link = tmp_path / "L"
    ctx = tmp_path / "link.sh"
    ctx.write_text(render({"ETH0_IP": "127.0.0.1", "FL_SUPERNODE_AUTH": "NO"}))
    assert _cli("configure", "--role", "superlink", "--context", str(ctx), "--root", str(link)).returncode == 0
    fleet, http = free_port(), free_port()
    doc_path = link / "opt/flower/config/superlink.json"
    doc = json.loads(doc_path.read_text())
    doc["fleet_api_address"], doc["http_api"]["port"] = f"127.0.0.1:{fleet}", http
    doc_path.write_text(json.dumps(doc))
    certs = link / "opt/flower/certs"
    old_fp = fingerprint(load_certs((certs / "ca.crt").read_bytes())[0])
    superlink = Proc(ctx_argv(py, "run", "superlink", "--root", str(link)), env=fenv).start()
    procs.append(superlink)
    superlink.wait_for(FLEET_UP[minor], 90)

    node_root = tmp_path / "N"
    node_ca = node_root / "opt/flower/certs/ca.crt"
    node_ca.parent.mkdir(parents=True)
    shutil.copy(certs / "ca.crt", node_ca)  # what FL_SSL_CA_CERTFILE = `flower-ctx ca export` installs
    stage_runtime_config(node_root, "supernode", None, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()},
                         tls={"enabled": True, "ca_certfile": str(node_ca), "certfile": None, "keyfile": None})

    def start_node() -> Proc:
        p = Proc(ctx_argv(py, "run", "supernode", "--root", str(node_root)), env=fenv).start()
        procs.append(p)
        p.wait_for("SuperNode ID", 60)
        return p

    node = start_node()
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "t"\n\n[superlink.t]\naddress = "127.0.0.1:{http}"\n'
                                      f'root-certificates = "{certs / "ca.crt"}"\n')
    env = {**fenv, "FLWR_HOME": str(home)}
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))

    # 1. The next CA; the bundle is what `ca export` now prints.
    out = _cli("ca", "rotate", "--root", str(link))
    assert out.returncode == 0, out.stderr
    next_fp = re.search(r"next CA (sha256:[0-9a-f]{64})", out.stdout).group(1)
    export = _cli("ca", "export", "--format", "pem", "--root", str(link))
    assert [fingerprint(c) for c in load_certs(export.stdout.encode())] == [old_fp, next_fp]
    assert "CN=" in _issuer_served(fleet, certs / "ca.crt")

    # 2. The SuperNode still trusts only the old CA: --finish refuses and names it.
    deadline = time.monotonic() + 30
    while True:
        refused = _cli("ca", "rotate", "--finish", "--context", str(ctx), "--root", str(link))
        if old_fp in refused.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)  # the SuperLink's trust report is written every few seconds
    assert refused.returncode == 1 and "do not trust the next CA" in refused.stderr, refused.stderr
    assert old_fp in refused.stderr
    status = _cli("status", "--root", str(link)).stdout
    assert f"started: next CA {next_fp}" in status

    # The operator gives it the bundle (FL_SSL_CA_CERTFILE = ca export): Flower restarts to trust it.
    node_ca.write_text(export.stdout)
    node.popen.terminate()  # a graceful restart, as systemd or the built-in supervisor does it
    node.popen.wait(30)
    node = start_node()
    run = subprocess.Popen([str(bin_dir(py) / "flwr"), "run", ".", "t", "--stream", "--run-config",
                            "num-server-rounds=4 min-nodes=1 round-sleep=3"], cwd=app, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # into the run, and the SuperNode's new trust announced
            done = _cli("ca", "rotate", "--finish", "--context", str(ctx), "--root", str(link))
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert done.returncode == 0, done.stdout + done.stderr
        t0 = time.monotonic()
        assert "served without a restart" in done.stdout
        # 3. New handshakes get a certificate issued by the next CA; the old CA is still trusted.
        assert [fingerprint(c) for c in load_certs((certs / "ca.crt").read_bytes())] == [next_fp, old_fp]
        next_subject = load_certs((certs / "ca.crt").read_bytes())[0].subject.rfc4514_string()
        deadline = time.monotonic() + 30  # gRPC: the next handshake; uvicorn (1.42 Fleet): its reload poll
        while _issuer_served(fleet, node_ca) != next_subject:
            assert time.monotonic() < deadline, "the Fleet API never served the certificate of the next CA"
            time.sleep(0.5)
        served_after = time.monotonic() - t0
        output, _ = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    found = re.search(r"FCLAB-RESULT rounds=(\d+)", output)
    assert run.returncode == 0 and found and found.group(1) == "4", output[-3000:]
    assert max((int(n) for n in re.findall(r"and (\d+) failures", output)), default=0) == 0, output[-4000:]
    assert superlink.popen.poll() is None and node.popen.poll() is None
    if minor == "1.39":  # one long-lived gRPC connection (HTTP Fleet connections close when idle anyway)
        assert node.first("Connection attempt failed", after=t0) is None
    # 4. Later: the previous CA leaves the bundle.
    assert _cli("ca", "rotate", "--drop-old", "--root", str(link)).returncode == 0
    assert [fingerprint(c) for c in load_certs((certs / "ca.crt").read_bytes())] == [next_fp]
    print(f"\nCA rotation across a run (Flower {minor}): next CA's certificate served {served_after:.1f} s after "
          "--finish; rounds lost 0; SuperNode restarts after --finish 0 (one planned restart to take the bundle)")
