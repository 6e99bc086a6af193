"""The command line: exit codes, messages naming variables, masking, generated docs, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx import __version__
from flower_ctx.context import render
from flower_ctx.reference import markdown, one_apps, user_inputs
from flower_ctx.variables import REGISTRY
from tests.conftest import REPO

HEAVY = ("grpc", "cryptography", "pyroute2", "requests", "flwr")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flower_ctx", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def write_ctx(tmp_path: Path, values: dict[str, str]) -> Path:
    ctx = tmp_path / "context.sh"
    ctx.write_bytes(render(values).encode())
    return ctx


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"flower-ctx {__version__}"
    out = run("--help")
    assert out.returncode == 0
    assert "context" in out.stdout and "Exit status: 0 ok, 1 failed, 2 bad input" in out.stdout
    sub = run("context", "check", "--help")
    assert sub.returncode == 0 and "--role" in sub.stdout and "--context" in sub.stdout


@pytest.mark.parametrize("argv", [["--help"], ["context", "check", "--role", "superlink", "--context", "{ctx}"]])
def test_help_and_check_do_not_import_heavy_modules(tmp_path: Path, argv: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"ETH0_IP": "10.0.0.5", "FL_CERT_EXTRA_SAN": "IP:10.10.9.0", "FL_WG_ENABLED": "NO"})
    argv = [a.replace("{ctx}", str(ctx)) for a in argv]
    code = (
        "import sys\nfrom flower_ctx.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('LOADED=' + ','.join(loaded), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert "LOADED=\n" in out.stderr, out.stderr


def test_check_prints_effective_values_and_sources(tmp_path: Path) -> None:
    ctx = write_ctx(
        tmp_path,
        {
            "FL_LOG_LEVEL": "DEBUG",
            "ONEAPP_FL_ISOLATION": "process",
            "FL_TLS_ENABLED": "",
            "FL_WG_PRIVATE_KEY": "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=",
        },
    )
    out = run("context", "check", "--role", "superlink", "--context", str(ctx))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:] if line.strip()}
    assert rows["FL_LOG_LEVEL"] == ["DEBUG", "context"]
    assert rows["FL_ISOLATION"] == ["process", "context", "(ONEAPP_FL_ISOLATION)"]
    assert rows["FL_TLS_ENABLED"] == ["YES", "default"]
    assert rows["FL_WG_PRIVATE_KEY"] == ["********", "context"]
    assert "YWFhYWFh" not in out.stdout + out.stderr
    assert "FL_WG_PRIVATE_KEY" in out.stderr and "ignored because FL_WG_ENABLED=NO" in out.stderr


def test_check_json_is_stable(tmp_path: Path) -> None:
    ctx = write_ctx(tmp_path, {"FL_GRPC_KEEPALIVE_TIME": "120"})
    out = run("context", "check", "--role", "supernode", "--context", str(ctx), "--json")
    doc = json.loads(out.stdout)
    assert doc["valid"] is True and doc["role"] == "supernode"
    assert doc["variables"]["FL_GRPC_KEEPALIVE_TIME"] == {"value": "120", "source": "context"}
    assert set(doc["variables"]) == {v.name for v in REGISTRY}


def test_bad_input_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    ctx = write_ctx(tmp_path, {"FL_TLS_ENABLED": "maybe", "FL_WG_MTU": "100", "FL_GRPC_KEEPALIVE_TIME": "5"})
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run("context", "check", "--role", "superlink", "--context", str(ctx))
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if ":" in line and not line.startswith("flower-ctx")]
    assert [line.split(":")[0] for line in lines] == ["FL_GRPC_KEEPALIVE_TIME", "FL_TLS_ENABLED", "FL_WG_MTU"]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"A='x\n", "never closed"), (b"\xff\n", "not valid UTF-8"), (b"echo pwned\n", "expected NAME='value'")],
)
def test_unreadable_context_exits_2(tmp_path: Path, content: bytes, fragment: str) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_bytes(content)
    out = run("context", "check", "--role", "supernode", "--context", str(ctx))
    assert out.returncode == 2 and fragment in out.stderr and str(ctx) in out.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("context", "check", "--role", "gateway", "--context", "x").returncode == 2
    assert run("context", "check").returncode == 2
    assert run("no-such-command").returncode == 2


def test_missing_context_exits_2(tmp_path: Path) -> None:
    out = run("context", "check", "--role", "superlink", "--context", str(tmp_path / "missing.sh"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_env_override_only_with_flag(tmp_path: Path) -> None:
    ctx = write_ctx(tmp_path, {"FL_LOG_LEVEL": "INFO"})
    env = {"PATH": "/usr/bin:/bin", "FL_LOG_LEVEL": "ERROR"}
    base = [
        sys.executable,
        "-m",
        "flower_ctx",
        "context",
        "check",
        "--role",
        "superlink",
        "--context",
        str(ctx),
        "--json",
    ]
    plain = json.loads(subprocess.run(base, capture_output=True, text=True, env=env, timeout=60).stdout)
    assert plain["variables"]["FL_LOG_LEVEL"]["value"] == "INFO"
    over = json.loads(subprocess.run([*base, "--env"], capture_output=True, text=True, env=env, timeout=60).stdout)
    assert over["variables"]["FL_LOG_LEVEL"] == {"value": "ERROR", "source": "environment"}


def test_generated_reference_is_committed_and_fresh() -> None:
    committed = (REPO / "docs" / "context-variables.md").read_text()
    assert committed == markdown(), (
        "docs/context-variables.md is stale: run `flower-ctx context reference > docs/context-variables.md`"
    )
    out = run("context", "reference", "--format", "markdown")
    assert out.stdout == committed


def test_reference_covers_every_variable() -> None:
    md = markdown()
    for var in REGISTRY:
        assert f"`{var.name}`" in md
    ui = user_inputs()
    for line in ui.splitlines():
        name, _, spec = line.partition(" = ")
        fields = spec.strip('"').split("|")
        assert len(fields) == 5 and fields[0] in ("M", "O"), line
        var = next(v for v in REGISTRY if v.name == name)
        assert fields[1] == var.type and fields[4] == (var.default or "")
        if var.type == "list":
            assert fields[4] in fields[3].split(",")
    rows = one_apps("superlink").splitlines()[1:-1]
    assert all(r.strip().startswith("'ONEAPP_") for r in rows)
    assert not any("FL_SUPERLINK_ADDRESS" in r for r in rows)
