"""Runtime configuration (runtime.apply / build_runtime_config), Flower's argv, the environment
``run`` gives Flower, refusals of ``flower-ctx run``, and the systemd units."""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx import runtime
from flower_ctx.commands import run as run_cmd
from flower_ctx.model import HostPort, Secret
from flower_ctx.paths import Paths
from tests.factories import make_config

REPO = Path(__file__).resolve().parent.parent


def _doc(stage: Path, role: str) -> dict:
    return json.loads(Paths(stage).runtime_config(role).read_text())


def test_superlink_apply_writes_config_and_state_dir(stage: Path) -> None:
    paths = Paths(stage)
    config = make_config("superlink", keepalive_time=90, keepalive_timeout=30, isolation="process")
    result = runtime.apply(config, paths)
    assert result.name == "runtime" and result.changed
    path = paths.runtime_config("superlink")
    assert path.stat().st_mode & 0o7777 == 0o640
    assert paths.state_dir.stat().st_mode & 0o7777 == 0o700
    doc = _doc(stage, "superlink")
    assert doc["schema"] == 1 and doc["role"] == "superlink"
    assert doc["keepalive"] == {"time_s": 90, "timeout_s": 30}
    assert doc["fleet_api_address"] == "0.0.0.0:9092"
    assert doc["http_api"]["host"] == "127.0.0.1"  # everything but the Fleet API stays on loopback
    assert doc["database"] == str(stage / "opt/flower/state/state.db")
    assert doc["tls"] == {"enabled": True, "ca_certfile": str(paths.ca_cert), "certfile": str(paths.server_cert),
                          "keyfile": str(paths.server_key)}
    assert doc["isolation"] == "process"
    # Re-run: nothing changes, the file is not rewritten.
    mtime = path.stat().st_mtime_ns
    again = runtime.apply(config, paths)
    assert not again.changed and path.stat().st_mtime_ns == mtime


def test_no_secret_is_written_inline(stage: Path) -> None:
    key = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
    config = make_config("superlink", pki=dataclasses.replace(make_config().pki, key_pem=Secret(key)))
    runtime.apply(config, Paths(stage))
    text = Paths(stage).runtime_config("superlink").read_text()
    assert "TOPSECRET" not in text and "PRIVATE KEY" not in text


def test_dry_run_changes_nothing(stage: Path) -> None:
    result = runtime.apply(make_config("superlink"), Paths(stage), dry_run=True)
    assert {c.outcome for c in result.changes} == {"would-create"}
    assert list(stage.iterdir()) == []


def test_database_outside_state_dir_gets_its_own_private_dir(stage: Path) -> None:
    runtime.apply(make_config("superlink", database="data/fl/link.db"), Paths(stage))
    assert (stage / "opt/flower/data/fl").stat().st_mode & 0o7777 == 0o700
    assert _doc(stage, "superlink")["database"] == str(stage / "opt/flower/data/fl/link.db")


def test_supernode_config_and_address_override(stage: Path) -> None:
    config = make_config("supernode", superlink_address=HostPort("203.0.113.5", 9092),
                         node_config=(("partition-id", "0"), ("name", '"site b"')), max_retries=5, max_wait_time=60)
    runtime.apply(config, Paths(stage))
    doc = _doc(stage, "supernode")
    assert doc["superlink_address"] == "203.0.113.5:9092"
    assert doc["tls"]["ca_certfile"] == str(Paths(stage).ca_cert) and doc["tls"]["keyfile"] is None
    assert "state_dir" not in doc and "fleet_api_address" not in doc
    argv = run_cmd.flower_argv(doc)
    assert argv[0] == "flower-supernode"
    assert argv[argv.index("--superlink") + 1] == "203.0.113.5:9092"
    assert argv[argv.index("--node-config") + 1] == 'partition-id=0 name="site b"'
    assert argv[argv.index("--max-retries") + 1] == "5" and argv[argv.index("--max-wait-time") + 1] == "60"
    assert argv[argv.index("--root-certificates") + 1] == doc["tls"]["ca_certfile"]
    # Discovery found an address later: it overrides the CONTEXT one.
    runtime.apply(config, Paths(stage), superlink_address=HostPort("2001:db8::1", 9092))
    assert _doc(stage, "supernode")["superlink_address"] == "[2001:db8::1]:9092"


def test_supernode_without_address_is_written_and_run_refuses(stage: Path) -> None:
    result = runtime.apply(make_config("supernode"), Paths(stage))
    assert any("discovery" in w for w in result.warnings)
    assert _doc(stage, "supernode")["superlink_address"] is None
    proc = subprocess.run([sys.executable, "-m", "flower_ctx.cli", "run", "supernode", "--root", str(stage)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no SuperLink address yet" in proc.stderr and "FL_SUPERLINK_ADDRESS" in proc.stderr


def test_superlink_argv_tls_and_insecure(stage: Path) -> None:
    runtime.apply(make_config("superlink"), Paths(stage))
    doc = _doc(stage, "superlink")
    argv = run_cmd.flower_argv(doc)
    assert argv[0] == "flower-superlink" and "--insecure" not in argv
    for flag, key in (("--ssl-ca-certfile", "ca_certfile"), ("--ssl-certfile", "certfile"),
                      ("--ssl-keyfile", "keyfile")):
        assert argv[argv.index(flag) + 1] == doc["tls"][key]
    assert argv[argv.index("--fleet-api-address") + 1] == "0.0.0.0:9092"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--database") + 1] == doc["database"]
    doc["tls"]["enabled"] = False
    insecure = run_cmd.flower_argv(doc)
    assert "--insecure" in insecure and not any(a.startswith("--ssl") for a in insecure)


def test_flower_139_to_142_run_and_the_rest_is_refused() -> None:
    for version in ("1.39.0", "1.40.0", "1.41.0", "1.42.0", "1.42.3", "1.40.0rc1"):
        assert run_cmd.check_flower_version(version) == version
    for version in ("1.38.0", "1.43.0", "2.0.0", "1.43.0rc1"):
        with pytest.raises(run_cmd.RunError, match=f"Flower {version} is not supported.*1.39.0 to 1.42.x"):
            run_cmd.check_flower_version(version)
    with pytest.raises(run_cmd.RunError, match="not installed"):
        run_cmd.check_flower_version(None)


def test_run_refuses_an_installed_flower_143(stage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.apply(make_config("superlink"), Paths(stage))
    monkeypatch.setattr(run_cmd, "installed_flower_version", lambda: "1.43.0")
    with pytest.raises(run_cmd.RunError, match="Flower 1.43.0 is not supported"):
        run_cmd.run_role("superlink", Paths(stage))


def test_run_without_configure_and_with_missing_tls_files(stage: Path) -> None:
    with pytest.raises(run_cmd.RunError, match="flower-ctx configure"):
        run_cmd.run_role("superlink", Paths(stage))
    runtime.apply(make_config("superlink"), Paths(stage))
    with pytest.raises(run_cmd.RunError, match="server.key: missing"):
        run_cmd.run_role("superlink", Paths(stage))
    with pytest.raises(run_cmd.RunConfigError, match="written for role"):
        Paths(stage).runtime_config("supernode").write_text(Paths(stage).runtime_config("superlink").read_text())
        run_cmd.run_role("supernode", Paths(stage))


def test_environment_puts_the_venv_first_and_disables_phone_home() -> None:
    env = {"PATH": f"/usr/bin:{Path(sys.executable).parent}:/bin"}
    run_cmd.prepare_environment({"log_level": "WARNING"}, env)
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    assert env["FLWR_LOG_LEVEL"] == "WARNING"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"


def test_run_help_is_cheap() -> None:
    code = ("import sys; from flower_ctx.cli import main\n"
            "try: main(['run', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('grpc', 'flwr', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "superlink|supernode" in out.stdout and out.stdout.strip().endswith("[]")


# ---------------------------------------------------------------- systemd units


@pytest.mark.parametrize("role", ["superlink", "supernode"])
def test_systemd_unit_keys(role: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "systemd" / f"flower-{role}.service")
    svc = parser["Service"]
    assert svc["ExecStart"].split()[-2:] == ["run", role]
    assert svc["User"] == "flower" and svc["Restart"] == "on-failure"
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")):
        assert svc[key] == value, key
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    if role == "superlink":
        assert "/opt/flower/state" in svc["ReadWritePaths"]  # ProtectSystem=strict: state must be writable


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (apt-get install systemd)")
@pytest.mark.parametrize("role", ["superlink", "supernode"])
def test_systemd_analyze_verify(role: str, tmp_path: Path) -> None:
    # The unit as shipped, with ExecStart pointing at this checkout's flower-ctx (no /opt/flower here).
    text = (REPO / "systemd" / f"flower-{role}.service").read_text()
    exe = Path(sys.executable).parent / "flower-ctx"
    unit = tmp_path / f"flower-{role}.service"
    unit.write_text(text.replace("/opt/flower/venv/bin/flower-ctx", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if unit.name in line]
    assert proc.returncode == 0 and not problems, proc.stderr
