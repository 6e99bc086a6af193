"""The Packer service directories: HCL that parses (python-hcl2), the one-apps layout of research
note 5, variables and locals that are all declared, scripts that exist, lint clean and agree with
each other (the MAC of gen_context, the role of each image)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flower_ctx.context import parse
from tests.conftest import REPO

hcl2 = pytest.importorskip("hcl2", reason="needs python-hcl2 (the test extra)")

PACKER = REPO / "packer"
SERVICES = {"superlink": PACKER / "flower_superlink", "supernode": PACKER / "flower_supernode"}
SCRIPTS = PACKER / "scripts"


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals; strip them for comparisons."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return hcl2.load(fh)


def declared_variables(service: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(service.glob("*.pkr.hcl")):
        for block in load(f).get("variable", []):
            for name, body in block.items():
                name = unquote(name)
                assert name not in out, f"variable {name} declared twice in {service.name}"
                out[name] = body
    return out


def declared_locals(service: Path) -> set[str]:
    names: set[str] = set()
    for f in service.glob("*.pkr.hcl"):
        for block in load(f).get("locals", []):
            names |= set(block)
    return names


def main_file(role: str) -> Path:
    return SERVICES[role] / f"flower_{role}.pkr.hcl"


def gen_context(role: str) -> dict[str, str]:
    out = subprocess.run([str(SERVICES[role] / "gen_context")], capture_output=True, check=True, timeout=30)
    return parse(out.stdout, origin="gen_context")


@pytest.mark.parametrize("role", SERVICES)
def test_service_directory_layout(role: str) -> None:
    service = SERVICES[role]
    link = service / "vars-common.pkr.hcl"
    assert link.is_symlink() and link.resolve() == (PACKER / "vars-common.pkr.hcl").resolve()
    assert main_file(role).is_file()
    assert (service / "variables.pkr.hcl").is_file()
    assert (service / "gen_context").stat().st_mode & 0o111, "gen_context must be executable"
    for f in service.glob("*.pkr.hcl"):
        assert isinstance(load(f), dict), f


@pytest.mark.parametrize("role", SERVICES)
def test_every_reference_is_declared(role: str) -> None:
    service = SERVICES[role]
    variables = declared_variables(service)
    # What one-apps' packer/build.sh passes with -var must be declared, or Packer refuses.
    assert {"appliance_name", "distro", "version", "input_dir", "output_dir", "headless", "arch"} <= set(variables)
    text = "".join(f.read_text() for f in service.glob("*.pkr.hcl"))
    assert set(re.findall(r"\bvar\.(\w+)", text)) <= set(variables)
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= declared_locals(service)
    assert unquote(variables["flower_role"]["default"]) == role
    assert unquote(variables["appliance_name"]["default"]) == f"flower_{role}"


def test_qemu_plugin_is_pinned() -> None:
    doc = load(PACKER / "vars-common.pkr.hcl")
    qemu = doc["packer"][0]["required_plugins"][0]["qemu"]
    assert unquote(qemu["source"]) == "github.com/hashicorp/qemu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", unquote(qemu["version"]))


def _qemu_source(role: str) -> dict[str, Any]:
    for block in load(main_file(role))["source"]:
        if '"qemu"' in block:
            return next(iter(block['"qemu"'].values()))
    raise AssertionError("no qemu source")


def _builds(role: str) -> list[dict[str, Any]]:
    return load(main_file(role))["build"]


@pytest.mark.parametrize("role", SERVICES)
def test_qemu_source_matches_gen_context(role: str) -> None:
    src = _qemu_source(role)
    assert src["disk_image"] is True
    assert unquote(src["ssh_username"]) == "root"
    ctx = gen_context(role)
    assert unquote(src["ssh_password"]) == ctx["PASSWORD"]
    device = [unquote(a[1]) for a in src["qemuargs"] if unquote(a[0]) == "-device"]
    assert any(f"mac={ctx['ETH0_MAC']}" in d for d in device), "the NIC MAC must equal ETH0_MAC"
    assert any(unquote(a[0]) == "-cdrom" for a in src["qemuargs"])


@pytest.mark.parametrize("role", SERVICES)
def test_gen_context_prints_a_context(role: str) -> None:
    ctx = gen_context(role)
    assert ctx["NETWORK"] == "YES" and ctx["ETH0_METHOD"] == "dhcp"
    assert ctx["SET_HOSTNAME"] == f"flower-{role}"
    script = base64.b64decode(ctx["START_SCRIPT_BASE64"], validate=True)
    out = subprocess.run(["bash", "-n"], input=script, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert b"PermitRootLogin yes" in script


@pytest.mark.parametrize("role", SERVICES)
def test_provisioners_follow_one_apps_order(role: str) -> None:
    builds = _builds(role)
    appliance = next(b for b in builds if any("qemu" in s for s in b["sources"]))
    steps: list[tuple[str, dict[str, Any]]] = []
    for prov in appliance["provisioner"]:
        kind, body = next(iter(prov.items()))
        steps.append((unquote(kind), body))

    def script_names(body: dict[str, Any]) -> list[str]:
        return [Path(unquote(s)).name for s in body.get("scripts", [])]

    order = [name for kind, body in steps if kind == "shell" for name in script_names(body)]
    assert order == ["81-configure-ssh.sh", "83-install-flower.sh", "82-configure-context.sh"]
    install = next(body for kind, body in steps if kind == "shell" and "83-install-flower.sh" in script_names(body))
    assert unquote(install["environment_vars"][0]) == "FLOWER_ROLE=${var.flower_role}"
    last_kind, last = steps[-1]
    assert last_kind == "shell" and "/etc/one-appliance/service install" in unquote(last["inline"][0])
    dests = [unquote(body.get("destination", "")) for kind, body in steps if kind == "file"]
    assert "/etc/one-appliance/service" in dests and "/etc/one-appliance/lib/" in dests
    # The prepare build makes the context ISO from gen_context.
    prepare = next(b for b in builds if any("null" in s for s in b["sources"]))
    inline = " ".join(unquote(x) for x in prepare["provisioner"][0]['"shell-local"']["inline"])
    assert "gen_context" in inline and "mkisofs" in inline and "-V CONTEXT" in inline


def test_scripts_exist_and_provision_is_the_install_path() -> None:
    for name in ("81-configure-ssh.sh", "82-configure-context.sh", "83-install-flower.sh", "provision.sh"):
        assert (SCRIPTS / name).is_file(), name
    assert "packer/scripts/provision.sh" in (SCRIPTS / "83-install-flower.sh").read_text()


def test_shell_scripts_parse() -> None:
    scripts = [*SCRIPTS.glob("*.sh"), *(s / "gen_context" for s in SERVICES.values())]
    for script in scripts:
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt-get install shellcheck)")
def test_shellcheck_clean() -> None:
    scripts = [*sorted(SCRIPTS.glob("*.sh")), *(s / "gen_context" for s in SERVICES.values())]
    out = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_provision_refuses_bad_arguments(tmp_path: Path) -> None:
    script = SCRIPTS / "provision.sh"
    for args in ([], ["--role", "coordinator"], ["--role"], ["--bogus"]):
        out = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (args, out.stderr)
        assert "usage:" in out.stderr
    out = subprocess.run(
        ["bash", str(script), "--role", "superlink", "--src", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1 and "not the flower-ctx source tree" in out.stderr
