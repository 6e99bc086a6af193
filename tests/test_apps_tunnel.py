"""Issue 15, running apps: a run submitted from an operator's machine through an SSH tunnel completes,
while the Control API stays on the SuperLink VM's loopback.

Three simulated VMs: the SuperLink (with a real OpenSSH sshd on its eth0), a SuperNode in another zone,
and the operator's machine in a third. The operator first tries the Control API directly (refused:
nothing listens there but loopback), then opens `ssh -L` to the SuperLink VM and runs `flwr run`
against the local end of the tunnel, verifying the SuperLink with the CA from `flower-ctx ca export`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_netns
from tests.flower_envs import bin_dir, eras_beside_the_lab, flower_python
from tests.rig import Rig, SimVM, write_context

pytestmark = [requires_netns, pytest.mark.root, pytest.mark.netns, pytest.mark.flower,
              pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists())
                                 or not shutil.which("ssh"), reason="needs OpenSSH (openssh-server, openssh-client)")]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
CONTROL_PORT = 8000  # the SuperLink's HTTP API (Control API in Flower 1.39), on loopback
SSH_PORT = 2222
LOCAL_END = 18000
APP = REPO / "tests" / "lab" / "app"


def fctx(vm: SimVM, py: str, *args: str, timeout: float = 180) -> str:
    out = vm.run([py, "-m", "flower_ctx", *args], timeout=timeout, env=ENV)
    return out.stdout + out.stderr


def boot(vm: SimVM, values: dict[str, str]) -> None:
    base = {"ETH0_IP": str(vm.eth0_ip), "FL_LOG_LEVEL": "INFO"}
    write_context(vm.path("/run/one-context/context.sh.network"), {**base, **values})


@pytest.fixture(params=eras_beside_the_lab())
def py(request: pytest.FixtureRequest) -> str:
    """The Python (and so the Flower release) every VM of the site runs."""
    found = flower_python(request.param)
    if found is None:
        pytest.skip(f"needs a Python with flwr {request.param} (test.sh makes it)")
    return found


@pytest.fixture
def site(tmp_path: Path, py: str) -> Iterator[tuple[SimVM, SimVM, SimVM]]:
    with Rig("fcssh") as rig:
        link, node, operator = rig.add_vm("link", 1), rig.add_vm("node", 2), rig.add_vm("op", 3)
        boot(link, {"FL_TLS_ENABLED": "YES", "FL_SUPERNODE_AUTH": "NO"})
        fctx(link, py, "configure", "--role", "superlink")
        assert "ready: Fleet API" in fctx(link, py, "bootstrap", "--role", "superlink", "--wait", "90")
        ca_line = link.run([py, "-m", "flower_ctx", "ca", "export"], env=ENV).stdout.strip()
        # Authentication off on both ends: this test is about submitting runs, not admission.
        boot(node, {"FL_SUPERLINK_ADDRESS": f"{link.eth0_ip}:9092", "FL_SSL_CA_CERTFILE": ca_line,
                    "FL_SUPERNODE_AUTH": "NO"})
        fctx(node, py, "configure", "--role", "supernode")
        out = fctx(node, py, "bootstrap", "--role", "supernode", "--wait", "90")
        assert "ready" in out, out
        yield link, node, operator


def _sshd(link: SimVM, keys: Path) -> subprocess.Popen[bytes]:
    """A real sshd on the SuperLink VM's eth0: key login only, forwarding allowed (OpenSSH's default)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "operator")], check=True)
    shutil.copy(keys / "operator.pub", keys / "authorized_keys")
    (keys / "sshd_config").write_text(
        f"ListenAddress {link.eth0_ip}:{SSH_PORT}\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPidFile none\nAllowTcpForwarding local\nGatewayPorts no\n")
    link.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])  # its privilege-separation directory (the VM's /run)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = link.popen([sshd, "-D", "-e", "-f", str(keys / "sshd_config")], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT)
    link.run(["sh", "-c", f"for i in $(seq 100); do ss -ltn | grep -q ':{SSH_PORT} ' && exit 0; sleep 0.1; done; "
              "exit 1"])
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_run_submitted_through_an_ssh_tunnel_completes(site: tuple[SimVM, SimVM, SimVM], tmp_path: Path,
                                                         py: str) -> None:
    link, _node, operator = site
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    # What the operator has on their machine: the CA as `flower-ctx ca export --format pem` prints it.
    ca = tmp_path / "superlink-ca.pem"
    ca.write_text(link.run([py, "-m", "flower_ctx", "ca", "export", "--format", "pem"], env=ENV).stdout)
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    flwr = str(bin_dir(py) / "flwr")

    def submit(address: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        home = tmp_path / f"flwr-{address.replace(':', '_')}"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(f'[superlink]\ndefault = "vm"\n\n[superlink.vm]\naddress = "{address}"\n'
                                          f'root-certificates = "{ca}"\n')
        env = {**ENV, "HOME": str(tmp_path), "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
               "PATH": f"{bin_dir(py)}:{ENV['PATH']}"}
        return operator.run(["sh", "-c", f"cd {app} && exec {flwr} run . vm --stream --run-config "
                             "'num-server-rounds=2 min-nodes=1'"], env=env, check=False, timeout=timeout)

    # Straight at the SuperLink VM: the Control API is not there (loopback only).
    probe = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
             "except OSError as exc:\n    print(type(exc).__name__)\nelse:\n    print('connected')\n")
    assert operator.python(probe, str(link.eth0_ip), "9092").stdout.strip() == "connected"  # the VM is reachable
    # Nothing listens there but on loopback, and the appliance's firewall drops the port besides.
    assert operator.python(probe, str(link.eth0_ip), str(CONTROL_PORT)).stdout.strip() in (
        "ConnectionRefusedError", "TimeoutError")
    refused = submit(f"{link.eth0_ip}:{CONTROL_PORT}", timeout=60)
    assert refused.returncode != 0 and "FCLAB-RESULT" not in refused.stdout

    sshd = _sshd(link, keys)
    known = keys / "known_hosts"
    known.write_text(f"[{link.eth0_ip}]:{SSH_PORT} " + (keys / "host.pub").read_text().split(" ", 2)[0] + " "
                     + (keys / "host.pub").read_text().split()[1] + "\n")
    tunnel = operator.popen(["ssh", "-F", "/dev/null", "-N", "-p", str(SSH_PORT), "-i", str(keys / "operator"),
                             "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                             "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                             "-L", f"127.0.0.1:{LOCAL_END}:127.0.0.1:{CONTROL_PORT}", f"root@{link.eth0_ip}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        operator.run(["sh", "-c", f"for i in $(seq 100); do ss -ltn | grep -q '127.0.0.1:{LOCAL_END} ' && exit 0; "
                      "sleep 0.1; done; exit 1"], timeout=20)
        done = submit(f"127.0.0.1:{LOCAL_END}")
    finally:
        _kill(tunnel)
        _kill(sshd)
    found = re.search(r"FCLAB-RESULT rounds=(\d+) nodes=(\d+)", done.stdout)
    assert done.returncode == 0 and found and found.group(1) == "2", done.stdout[-3000:] + done.stderr[-2000:]
    # And the run is on the SuperLink, as `flower-ctx status` there shows it.
    status = fctx(link, py, "status", "--role", "superlink")
    assert re.search(r"run\b.*(finished|completed)", status, re.I), status
