"""The one-apps hook (one-apps-hooks/appliance.sh) driven the way one-apps drives it.

Only the one-apps framework is stood in for: a small bash driver sources the hook, exports the
context variables as one-contextd does, runs service_<step>, always runs service_cleanup and
records <step>_success/_failure in a status file as service.sh does. `flower-ctx` is either a stub
that records its argv (to check exactly what the hook asks for) or the real one, run into a
staging root through FLOWER_CTX_ROOT (the hook then passes `--root DIR` and writes its report
under DIR).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx.reference import one_apps
from flower_ctx.variables import REGISTRY
from tests.conftest import REPO

HOOKS = REPO / "one-apps-hooks"
HOOK = HOOKS / "appliance.sh"
REAL_CTX = Path(sys.executable).parent / "flower-ctx"
ROLES = ("superlink", "supernode")
PARAM_ROLES = (*ROLES, "gateway")  # the SuperNode image also carries the gateway's table
SEP = "\x1f"

STUB = r"""#!/usr/bin/env bash
# Records argv, one invocation per line, fields separated by \x1f; behaves per STUB_* variables.
( IFS=$'\x1f'; echo "$*" ) >>"$STUB_LOG"
case "$1" in
    --version) echo "flower-ctx 9.9.9" ;;
    configure) echo "stub configure"; exit "${STUB_CONFIGURE_RC:-0}" ;;
    bootstrap) echo "stub bootstrap"; exit "${STUB_BOOTSTRAP_RC:-0}" ;;
    status) [ -n "${STUB_STATUS_JSON:-}" ] || { echo "No such command 'status'." >&2; exit 2; }
            printf '%s\n' "$STUB_STATUS_JSON" ;;
    context) echo "FL_STUB = \"O|text|stub||\"" ;;
    *) exit 2 ;;
esac
"""

# Anything that could report READY behind flower-ctx's back.
SPY = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >>"$SPY_LOG"
exit 0
"""

DRIVER = r"""
set -e
umask 0077
if [ -n "${CONTEXT_FILE:-}" ]; then set -a; . "$CONTEXT_FILE"; set +a; fi
. "$HOOK"
one_apps_step() {
    local step=$1 rc=0
    echo "${step}_started" >"$STATUS_FILE"
    "service_${step}" || rc=$?
    service_cleanup
    if [ "$rc" -eq 0 ]; then echo "${step}_success" >"$STATUS_FILE"; else echo "${step}_failure" >"$STATUS_FILE"; fi
    return "$rc"
}
for step in $STEPS; do
    one_apps_step "$step" || exit $?
done
"""

SECRETS = {
    "FL_WG_PRIVATE_KEY": "cHJpdmF0ZS1rZXktdGhhdC1tdXN0LW5vdC1sZWFrISE=",
    "FL_SSL_KEYFILE": "c2VjcmV0LWtleS1wZW0=",
}


class Harness:
    def __init__(self, tmp: Path, role: str | None = "superlink") -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.stub = self.bin / "flower-ctx"
        self.stub.write_text(STUB)
        self.stub.chmod(0o755)
        for spy in ("onegate", "curl", "wget"):
            (self.bin / spy).write_text(SPY)
            (self.bin / spy).chmod(0o755)
        self.appliance = tmp / "appliance"
        self.appliance.mkdir()
        if role is not None:
            (self.appliance / "role").write_text(role + "\n")
            shutil.copy(HOOKS / f"params-{role}.sh", self.appliance)
        self.log = tmp / "argv.log"
        self.spy_log = tmp / "spy.log"
        self.status = tmp / "status"
        self.report = tmp / "report" / "config"

    def run(self, steps: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.tmp),
            "LANG": "C",
            "HOOK": str(HOOK),
            "STEPS": steps,
            "STATUS_FILE": str(self.status),
            "STUB_LOG": str(self.log),
            "SPY_LOG": str(self.spy_log),
            "FLOWER_CTX": str(self.stub),
            "FLOWER_APPLIANCE_DIR": str(self.appliance),
            "ONE_SERVICE_REPORT": str(self.report),
            "ETH0_IP": "192.0.2.10",
            **SECRETS,
        }
        base.update(env)
        return subprocess.run(["bash", "-c", DRIVER], env=base, capture_output=True, text=True, timeout=120)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split(SEP) for line in self.log.read_text().splitlines()]

    def non_status_calls(self) -> list[list[str]]:
        return [c for c in self.calls() if c[0] != "status"]

    def spied(self) -> str:
        return self.spy_log.read_text() if self.spy_log.exists() else ""


def _sub(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    return path


def report_fields(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value.strip()
    return out


STATUS_DOC = {
    "role": "superlink",
    "tls": {"enabled": True, "ca": {"fingerprint": "sha256:" + "ab" * 32}},
    "wireguard": {"public_key": "Fo1Pu8kzGc4BXYvt7B3OD5n1QFzzBXIqpvH3xK0R+m8="},
    "service": {"running": True},
}


# --- static checks ---------------------------------------------------------------------------


def test_scripts_parse() -> None:
    for script in (HOOK, HOOKS / "generate-params.sh", *HOOKS.glob("params-*.sh")):
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt-get install shellcheck)")
def test_shellcheck_clean() -> None:
    scripts = [HOOK, HOOKS / "generate-params.sh", *sorted(HOOKS.glob("params-*.sh"))]
    out = subprocess.run(["shellcheck", "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("role", PARAM_ROLES)
def test_params_table_is_fresh(role: str) -> None:
    committed = (HOOKS / f"params-{role}.sh").read_text()
    # The body is exactly what the registry produces today: a stale table fails here.
    assert committed.endswith(one_apps(role))
    assert "Do not edit" in committed


def test_generator_reproduces_committed_tables(tmp_path: Path) -> None:
    env = {**os.environ, "FLOWER_CTX": str(REAL_CTX)}
    out = subprocess.run([str(HOOKS / "generate-params.sh"), str(tmp_path)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for role in PARAM_ROLES:
        assert (tmp_path / f"params-{role}.sh").read_bytes() == (HOOKS / f"params-{role}.sh").read_bytes(), (
            f"params-{role}.sh is stale: run one-apps-hooks/generate-params.sh"
        )


@pytest.mark.parametrize("role", PARAM_ROLES)
def test_params_are_stride_4_rows_of_the_role(role: str) -> None:
    script = f'. {HOOKS}/params-{role}.sh; for x in "${{ONE_SERVICE_PARAMS[@]}}"; do printf "%s\\0" "$x"; done'
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    items = out.stdout.decode().split("\0")[:-1]
    assert len(items) % 4 == 0
    rows = [items[i : i + 4] for i in range(0, len(items), 4)]
    expected = [v for v in REGISTRY if any(r.value == role for r in v.roles)]
    assert [r[0] for r in rows] == ["ONEAPP_" + v.name for v in expected]
    for (_name, stage, desc, spec), var in zip(rows, expected, strict=True):
        assert stage in ("install", "configure", "bootstrap")
        assert desc
        assert spec == f"O|{var.type}"  # 4th field: the user-input spec, never a default value


# --- lifecycle with the stub -----------------------------------------------------------------


def test_configure_and_bootstrap_call_flower_ctx(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    out = h.run("configure bootstrap", STUB_STATUS_JSON=json.dumps(STATUS_DOC))
    assert out.returncode == 0, out.stdout + out.stderr
    assert h.non_status_calls() == [
        ["configure", "--role", "superlink", "--env"],
        ["bootstrap", "--role", "superlink", "--env"],
    ]
    assert all(c[:2] == ["status", "--json"] for c in h.calls() if c[0] == "status")
    assert h.status.read_text() == "bootstrap_success\n"
    assert h.spied() == ""  # READY is flower-ctx's job, never the hook's
    mode = stat.S_IMODE(h.report.stat().st_mode)
    assert mode == 0o600
    fields = report_fields(h.report)
    assert fields["role"] == "superlink"
    assert fields["state"] == "ready"
    assert fields["ca_fingerprint"] == STATUS_DOC["tls"]["ca"]["fingerprint"]
    assert fields["wg_public_key"] == STATUS_DOC["wireguard"]["public_key"]
    assert fields["endpoint"] == "192.0.2.10:9092"
    everything = h.report.read_text() + out.stdout + out.stderr + h.log.read_text()
    for secret in SECRETS.values():
        assert secret not in everything


def test_failed_bootstrap_never_reports_ready(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    out = h.run("configure bootstrap", STUB_BOOTSTRAP_RC="1")
    assert out.returncode == 1
    assert h.status.read_text() == "bootstrap_failure\n"  # one-apps' net-99 then sends nothing
    assert h.spied() == ""
    assert report_fields(h.report)["state"].startswith("bootstrap failed (exit 1)")


def test_failed_configure_stops_before_bootstrap(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    out = h.run("configure bootstrap", STUB_CONFIGURE_RC="2")
    assert out.returncode == 2
    assert h.status.read_text() == "configure_failure\n"
    assert [c[0] for c in h.non_status_calls()] == ["configure"]
    assert report_fields(h.report)["state"].startswith("configure failed (exit 2)")


def test_staging_root_goes_to_flower_ctx_and_report(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    stage = tmp_path / "stage"
    out = h.run("configure", FLOWER_CTX_ROOT=str(stage), ONE_SERVICE_REPORT="/etc/one-appliance/config")
    assert out.returncode == 0, out.stderr
    assert h.non_status_calls() == [["configure", "--role", "superlink", "--env", "--root", str(stage)]]
    assert all("--root" in c for c in h.calls() if c[0] == "status")
    report = stage / "etc/one-appliance/config"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert report_fields(report)["role"] == "superlink"


def test_role_is_fixed_per_image(tmp_path: Path) -> None:
    node = Harness(_sub(tmp_path, "n"), role="supernode")
    assert node.run("configure").returncode == 0
    assert node.non_status_calls()[0][:3] == ["configure", "--role", "supernode"]
    bare = Harness(_sub(tmp_path, "x"), role=None)
    out = bare.run("install")
    assert out.returncode == 2 and "must hold superlink or supernode" in out.stderr
    assert bare.calls() == []


def test_supernode_image_is_the_gateway_when_its_context_says_so(tmp_path: Path) -> None:
    gw = Harness(_sub(tmp_path, "g"), role="supernode")
    shutil.copy(HOOKS / "params-gateway.sh", gw.appliance)  # provision.sh installs it on the SuperNode image
    out = gw.run("configure bootstrap", FL_APPLIANCE_ROLE="gateway")
    assert out.returncode == 0, out.stdout + out.stderr
    assert gw.non_status_calls() == [["configure", "--role", "gateway", "--env"],
                                     ["bootstrap", "--role", "gateway", "--env"]]
    fields = report_fields(gw.report)
    assert fields["role"] == "gateway" and fields["hub_peer"].startswith("flower-ctx wg peer")
    assert "[Flower gateway]" in gw.report.read_text()
    alias = Harness(_sub(tmp_path, "a"), role="supernode")
    shutil.copy(HOOKS / "params-gateway.sh", alias.appliance)
    assert alias.run("configure", ONEAPP_FL_APPLIANCE_ROLE="gateway").returncode == 0
    assert alias.non_status_calls()[0][:3] == ["configure", "--role", "gateway"]
    # Only the SuperNode image becomes a gateway; a SuperLink image stays what it is.
    link = Harness(_sub(tmp_path, "l"), role="superlink")
    assert link.run("configure", FL_APPLIANCE_ROLE="gateway").returncode == 0
    assert link.non_status_calls()[0][:3] == ["configure", "--role", "superlink"]
    node = Harness(_sub(tmp_path, "n"), role="supernode")
    assert node.run("configure", FL_APPLIANCE_ROLE="supernode").returncode == 0
    assert node.non_status_calls()[0][:3] == ["configure", "--role", "supernode"]


def test_cleanup_is_idempotent(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.run("configure").returncode == 0
    report = h.report.read_bytes()
    leftover = h.report.parent / "config.tmp.abc123"
    leftover.write_text("partial")
    for _ in range(3):
        out = h.run("cleanup")
        assert out.returncode == 0, out.stderr
    assert not leftover.exists()
    assert h.report.read_bytes() == report


def test_report_from_files_when_status_is_unavailable(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, x25519
    from cryptography.x509.oid import NameOID

    stage = tmp_path / "stage"
    (stage / "opt/flower/certs").mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (stage / "opt/flower/certs/ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    want_fp = "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    wg_priv = x25519.X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    priv_b64 = base64.b64encode(
        wg_priv.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    ).decode()
    want_pub = base64.b64encode(wg_priv.public_key().public_bytes(raw, serialization.PublicFormat.Raw)).decode()
    (stage / "etc/wireguard").mkdir(parents=True)
    (stage / "etc/wireguard/wg0.key").write_text(priv_b64 + "\n")

    h = Harness(tmp_path)
    out = h.run("configure", FLOWER_CTX_ROOT=str(stage), ONE_SERVICE_REPORT="/etc/one-appliance/config")
    assert out.returncode == 0, out.stderr
    fields = report_fields(stage / "etc/one-appliance/config")
    assert fields["source"] == "files"
    assert fields["ca_fingerprint"] == want_fp
    if shutil.which("wg"):
        assert fields["wg_public_key"] == want_pub
    text = (stage / "etc/one-appliance/config").read_text() + out.stdout + out.stderr + h.log.read_text()
    assert priv_b64 not in text


# --- with the real flower-ctx ----------------------------------------------------------------


def test_install_and_help_with_real_flower_ctx(tmp_path: Path) -> None:
    from flower_ctx import __version__

    h = Harness(tmp_path, role="supernode")
    out = h.run("install help", FLOWER_CTX=str(REAL_CTX))
    assert out.returncode == 0, out.stderr
    assert f"flower-ctx {__version__}" in out.stdout
    shown = {line.split(" = ")[0] for line in out.stdout.splitlines() if ' = "' in line}
    expected = {v.name for v in REGISTRY if any(r.value == "supernode" for r in v.roles)}
    assert shown == expected
    assert "TOKEN=YES" in out.stdout and "REPORT_READY=YES" in out.stdout


def _write_context(stage: Path, values: dict[str, str]) -> Path:
    ctx_dir = stage / "var/run/one-context"
    ctx_dir.mkdir(parents=True, exist_ok=True)
    path = ctx_dir / "context.sh.network"
    lines = ["# Context variables generated by OpenNebula"] + [f"{k}='{v}'" for k, v in sorted(values.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _parse_example(path: Path) -> dict[str, str]:
    from flower_ctx.context import read_file

    return read_file(path)


def test_real_configure_into_staging_root(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # SuperLink from the repository's example context, exported the way one-contextd does.
    link_stage = tmp_path / "link"
    example = _parse_example(REPO / "examples/superlink.context.sh")
    ctx = _write_context(link_stage, example)
    h = Harness(tmp_path)
    env = {
        "FLOWER_CTX": str(REAL_CTX),
        "FLOWER_CTX_ROOT": str(link_stage),
        "CONTEXT_FILE": str(ctx),
        "ONE_SERVICE_REPORT": "/etc/one-appliance/config",
    }
    first = h.run("configure", **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert h.status.read_text() == "configure_success\n"
    ca_pem = (link_stage / "opt/flower/certs/ca.crt").read_bytes()
    assert (link_stage / "opt/flower/config/superlink.json").is_file()
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    fields = report_fields(link_stage / "etc/one-appliance/config")
    assert fields["ca_fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert fields["endpoint"] == f"{example['ETH0_IP']}:9092"
    assert fields["tls"] == "YES"
    # Reconfigurable: the next boot re-runs configure, which changes nothing.
    again = h.run("configure", **env)
    assert again.returncode == 0, again.stderr
    assert "superlink: unchanged" in again.stdout
    assert (link_stage / "opt/flower/certs/ca.crt").read_bytes() == ca_pem

    # A SuperNode of another zone, trusting that CA: the two mandatory training-site answers.
    node_stage = tmp_path / "node"
    node_values = {
        "ETH0_IP": "198.51.100.20",
        "ETH0_MAC": "02:00:c6:33:64:14",
        "FL_SUPERLINK_ADDRESS": f"{example['ETH0_IP']}:9092",
        "FL_SSL_CA_CERTFILE": base64.b64encode(ca_pem).decode(),
        "FL_TLS_ENABLED": "YES",
    }
    node_ctx = _write_context(node_stage, node_values)
    node = Harness(_sub(tmp_path, "nodeh"), role="supernode")
    out = node.run(
        "configure",
        FLOWER_CTX=str(REAL_CTX),
        FLOWER_CTX_ROOT=str(node_stage),
        CONTEXT_FILE=str(node_ctx),
        ONE_SERVICE_REPORT="/etc/one-appliance/config",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (node_stage / "opt/flower/certs/ca.crt").read_bytes() == ca_pem
    node_fields = report_fields(node_stage / "etc/one-appliance/config")
    assert node_fields["role"] == "supernode"
    assert node_fields["superlink"] == f"{example['ETH0_IP']}:9092"
    assert node_fields["ca_fingerprint"] == fields["ca_fingerprint"]


def test_real_configure_refuses_bad_context(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    ctx = _write_context(stage, {"ETH0_IP": "192.0.2.10", "FL_GRPC_KEEPALIVE_TIME": "5"})
    h = Harness(tmp_path)
    out = h.run(
        "configure",
        FLOWER_CTX=str(REAL_CTX),
        FLOWER_CTX_ROOT=str(stage),
        CONTEXT_FILE=str(ctx),
        ONE_SERVICE_REPORT="/etc/one-appliance/config",
    )
    assert out.returncode == 2
    assert "FL_GRPC_KEEPALIVE_TIME" in out.stderr
    assert h.status.read_text() == "configure_failure\n"
    assert not (stage / "opt/flower/certs/ca.crt").exists()
    assert report_fields(stage / "etc/one-appliance/config")["state"].startswith("configure failed (exit 2)")
