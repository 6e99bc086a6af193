"""The Packer service directories and the provisioning script.

There is no packer binary or KVM here, so what can be checked without them is: the HCL parses
(python-hcl2); the one-apps layout and Makefile route of research note 5 (opennebula-more.md 5):
names that survive the Makefile's split at the first digit or dot, the variables build.sh passes and
nothing else, a base image that ``-var distro=service_X`` does not choose, host paths that resolve
from the one-apps root whether a service directory is used from this tree, linked into one-apps'
packer/ or copied there; the ``prepare`` script (run with a stand-in mkisofs); a stand-in of the
one-apps Makefile driven by ``Makefile.local.example``; the .gitignore against every build leftover;
and provision.sh's ``--files-only`` mode into a scratch root.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flower_ctx.context import parse
from tests.conftest import REPO, requires_root

hcl2 = pytest.importorskip("hcl2", reason="needs python-hcl2 (the test extra)")

PACKER = REPO / "packer"
SERVICES = {"superlink": PACKER / "service_FlowerSuperLink", "supernode": PACKER / "service_FlowerSuperNode"}
SCRIPTS = PACKER / "scripts"
PROVISION = SCRIPTS / "provision.sh"
# What one-apps' packer/vars-common.pkr.hcl declares (research note 5); build.sh passes the first seven.
BUILD_SH_VARS = ("appliance_name", "distro", "version", "input_dir", "output_dir", "headless", "arch")
ONE_APPS_COMMON = {*BUILD_SH_VARS, "command_format", "arch_vars"}


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals; strip them for comparisons."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return hcl2.load(fh)


def blocks(items: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in items.items():
        if not key.startswith("__"):
            yield unquote(key), value


def declared_variables(files: list[Path]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for block in load(f).get("variable", []):
            for name, body in blocks(block):
                assert name not in out, f"variable {name} declared twice ({f})"
                out[name] = body
    return out


def own_files(service: Path) -> list[Path]:
    """The service directory's own .pkr.hcl files (vars-common is a link to a shared file)."""
    return sorted(f for f in service.glob("*.pkr.hcl") if f.name != "vars-common.pkr.hcl")


def locals_of(service: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in own_files(service):
        for block in load(f).get("locals", []):
            out.update(dict(blocks(block)))
    return out


def main_file(role: str) -> Path:
    service = SERVICES[role]
    return service / f"{service.name.removeprefix('service_')}.pkr.hcl"


def gen_context(role: str) -> dict[str, str]:
    out = subprocess.run([str(SERVICES[role] / "gen_context")], capture_output=True, check=True, timeout=30)
    return parse(out.stdout, origin="gen_context")


def build_sh_vars(name: str, input_dir: str) -> dict[str, str]:
    """The -var values of one-apps' packer/build.sh for `make NAME` (research note 5)."""
    distro = re.sub(r"[0-9.].*", "", name)  # the Makefile's DISTRO_NAME
    return {"appliance_name": name, "distro": distro, "version": "", "input_dir": input_dir,
            "output_dir": f"build/{name}", "headless": "true", "arch": "x86_64"}


class Template:
    """The few HCL expression forms these templates use, evaluated; anything else fails the test
    (keeps the templates simple enough to check without packer)."""

    EXPR = re.compile(r"\$\{([^}]*)\}")

    def __init__(self, service: Path, variables: dict[str, str], path_root: str) -> None:
        self.locals = locals_of(service)
        self.vars = variables
        self.path_root = path_root

    def one(self, expr: str) -> str:
        expr = expr.strip()
        if m := re.fullmatch(r"var\.(\w+)", expr):
            return self.vars[m[1]]
        if m := re.fullmatch(r"local\.(\w+)", expr):
            return self.eval(self.locals[m[1]])
        if m := re.fullmatch(r"local\.(\w+)\[var\.(\w+)\]", expr):
            return self.eval(self.locals[m[1]][self.vars[m[2]]])
        if expr == "path.root":
            return self.path_root
        raise AssertionError(f"an expression this test does not evaluate: {expr}")

    def eval(self, value: Any) -> str:
        return self.EXPR.sub(lambda m: self.one(m[1]), unquote(value))


def _qemu_source(role: str) -> dict[str, Any]:
    for block in load(main_file(role))["source"]:
        if '"qemu"' in block:
            return next(iter(block['"qemu"'].values()))
    raise AssertionError("no qemu source")


def _builds(role: str) -> list[dict[str, Any]]:
    return load(main_file(role))["build"]


def _appliance_build(role: str) -> dict[str, Any]:
    return next(b for b in _builds(role) if any("qemu" in s for s in b["sources"]))


def _steps(role: str) -> list[tuple[str, dict[str, Any]]]:
    return [next(blocks(p)) for p in _appliance_build(role)["provisioner"]]


def host_paths(role: str, t: Template) -> dict[str, list[str]]:
    """Every path on the build host the templates read, evaluated: what must exist (``read``)
    and what prepare must have made (``made``), relative to the directory packer runs in."""
    read, made = [], []
    src = _qemu_source(role)
    read.append(t.eval(src["iso_url"]))
    made.append(t.eval(next(a[1] for a in src["qemuargs"] if unquote(a[0]) == "-cdrom")))
    for kind, body in _steps(role):
        if kind == "file":
            paths = [t.eval(s) for s in body.get("sources", [])]
            if "source" in body:
                paths.append(t.eval(body["source"]))
            for p in paths:
                (made if p.endswith("-flower-ctx.tar.gz") else read).append(p)
    for post in _appliance_build(role)["post-processor"]:
        _, body = next(blocks(post))
        read += [t.eval(s) for s in body.get("scripts", [])]
    return {"read": read, "made": made}


# --- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", SERVICES)
def test_service_directory_layout(role: str) -> None:
    service = SERVICES[role]
    link = service / "vars-common.pkr.hcl"
    assert link.is_symlink() and os.readlink(link) == "../vars-common.pkr.hcl"
    assert main_file(role).is_file()
    assert (service / "variables.pkr.hcl").is_file()
    for script in ("gen_context", "prepare"):
        assert (service / script).stat().st_mode & 0o111, f"{script} must be executable"
    for f in service.glob("*.pkr.hcl"):
        assert isinstance(load(f), dict), f
    # One prepare, the same in both directories (each must be whole when copied alone).
    assert (service / "prepare").read_bytes() == (SERVICES["superlink"] / "prepare").read_bytes()


@pytest.mark.parametrize("role", SERVICES)
def test_names_survive_the_makefile_split(role: str) -> None:
    name = SERVICES[role].name
    # The Makefile cuts a target at its first digit or dot (the rest is a version) and build.sh
    # then looks for packer/<the part before>: no digit, no dot.
    assert re.fullmatch(r"service_[A-Za-z_]+", name), name
    assert build_sh_vars(name, "")["distro"] == name
    # The image is named for the appliance: vm_name (the file build.sh converts) is appliance_name,
    # and manifest.sh names it after the directory without service_.
    assert unquote(_qemu_source(role)["vm_name"]) == "${var.appliance_name}"
    assert name.removeprefix("service_") == f"Flower{'SuperLink' if role == 'superlink' else 'SuperNode'}"


@pytest.mark.parametrize("role", SERVICES)
def test_variables_work_with_both_vars_common_files(role: str) -> None:
    service = SERVICES[role]
    ours = declared_variables([PACKER / "vars-common.pkr.hcl"])
    # Ours declares exactly what one-apps' declares, so the link may find either.
    assert set(ours) == ONE_APPS_COMMON
    own = declared_variables(own_files(service))
    assert not set(own) & ONE_APPS_COMMON, "a service directory may not redeclare a one-apps variable"
    text = "".join(f.read_text() for f in own_files(service))
    used = set(re.findall(r"\bvar\.(\w+)", text))
    assert used <= set(own) | ONE_APPS_COMMON
    # Only what build.sh passes or what has a default here: nothing for an operator to add.
    assert used - set(own) <= set(BUILD_SH_VARS)
    assert all("default" in body for body in own.values())
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= set(locals_of(service))
    assert unquote(own["flower_role"]["default"]) == role


def test_qemu_plugin_is_pinned() -> None:
    doc = load(PACKER / "vars-common.pkr.hcl")
    qemu = doc["packer"][0]["required_plugins"][0]["qemu"]
    assert unquote(qemu["source"]) == "github.com/hashicorp/qemu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", unquote(qemu["version"]))


@pytest.mark.parametrize("role", SERVICES)
def test_distro_does_not_choose_the_base_image(role: str) -> None:
    service = SERVICES[role]
    for f in own_files(service):
        assert "var.distro" not in f.read_text(), f
    for distro in (service.name, "ubuntu2404", "alma8", ""):
        variables = {**build_sh_vars(service.name, f"packer/{service.name}"), "distro": distro}
        t = Template(service, variables, f"packer/{service.name}")
        assert t.eval(_qemu_source(role)["iso_url"]) == "export/ubuntu2404.qcow2"
    # Another architecture is not silently given the x86_64 image.
    t = Template(service, {**build_sh_vars(service.name, ""), "arch": "aarch64"}, "")
    with pytest.raises(KeyError):
        t.eval(_qemu_source(role)["iso_url"])


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
    steps = _steps(role)
    inline = [" ".join(unquote(x) for x in body.get("inline", [])) for kind, body in steps if kind == "shell"]
    order = [name for line in inline for name in re.findall(r"packer/scripts/(\S+\.sh)", line)]
    assert order == ["81-configure-ssh.sh", "83-install-flower.sh", "82-configure-context.sh"]
    # The source tree is uploaded first: the scripts come from it.
    first_kind, first = steps[0]
    assert first_kind == "file" and unquote(first["source"]) == "${local.source_tar}"
    install = next(body for kind, body in steps if kind == "shell" and "83-install-flower.sh" in str(body))
    assert unquote(install["environment_vars"][0]) == "FLOWER_ROLE=${var.flower_role}"
    last_kind, last = steps[-1]
    assert last_kind == "shell" and "/etc/one-appliance/service install" in unquote(last["inline"][0])
    dests = [unquote(body.get("destination", "")) for kind, body in steps if kind == "file"]
    assert "/etc/one-appliance/service" in dests and "/etc/one-appliance/lib/" in dests
    # The prepare build runs ./prepare (context CD from gen_context, the source tarball).
    prepare = next(b for b in _builds(role) if any("null" in s for s in b["sources"]))
    command = unquote(next(blocks(prepare["provisioner"][0]))[1]["inline"][0])
    assert command == "${path.root}/prepare ${var.input_dir} ${var.appliance_name} ${local.source_tar}"
    # The tarball is removed after a successful build.
    posts = [next(blocks(p))[1] for p in _appliance_build(role)["post-processor"]]
    assert any(unquote(x) == "rm -f ${local.source_tar}" for p in posts for x in p.get("inline", []))


# --- the two layouts and the Makefile route --------------------------------------------------

STAND_IN_VARS_COMMON = "\n".join(f'variable "{n}" {{\n  type = string\n}}\n' for n in sorted(ONE_APPS_COMMON))

MKISOFS = """#!/bin/sh
# stand-in: records its arguments, makes the -o file
while [ $# -gt 0 ]; do
    if [ "$1" = -o ]; then out="$2"; fi
    shift
done
echo iso >"$out"
"""


@pytest.fixture
def one_apps(tmp_path: Path) -> Path:
    """A stand-in one-apps checkout: the files the templates read from its root, and its
    packer/vars-common.pkr.hcl declaring the same names (research note 5)."""
    root = tmp_path / "one-apps"
    for rel in ("appliances/service.sh", "appliances/lib/common.sh", "appliances/lib/functions.sh",
                "appliances/scripts/net-90-service-appliance", "appliances/scripts/net-99-report-ready",
                "packer/postprocess.sh", "export/ubuntu2404.qcow2"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("stand-in\n")
    (root / "packer/vars-common.pkr.hcl").write_text(STAND_IN_VARS_COMMON)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mkisofs").write_text(MKISOFS)
    (bin_dir / "mkisofs").chmod(0o755)
    return root


def _layout(one_apps: Path, role: str, how: str) -> tuple[Path, str]:
    """The service directory as packer sees it, and the input_dir build.sh (or the README) passes."""
    service = SERVICES[role]
    if how == "own tree":
        return service, str(service)
    target = one_apps / "packer" / service.name
    if how == "linked":
        target.symlink_to(service)
    else:  # copied, with flower-ctx checked out inside the one-apps root
        shutil.copytree(service, target, symlinks=True)
        (one_apps / "flower-ctx").symlink_to(REPO)
    return target, f"packer/{service.name}"


@pytest.mark.parametrize("how", ["own tree", "linked", "copied"])
@pytest.mark.parametrize("role", SERVICES)
def test_host_paths_resolve_in_every_layout(one_apps: Path, role: str, how: str) -> None:
    service, input_dir = _layout(one_apps, role, how)
    name = SERVICES[role].name
    if how == "copied":
        # The link now finds one-apps' vars-common: every name the templates use is declared once.
        assert (service / "vars-common.pkr.hcl").resolve() == one_apps / "packer/vars-common.pkr.hcl"
        declared = declared_variables(sorted(service.glob("*.pkr.hcl")))
        text = "".join(f.read_text() for f in own_files(service))
        assert set(re.findall(r"\bvar\.(\w+)", text)) <= set(declared)
    t = Template(service, build_sh_vars(name, input_dir), str(service))
    paths = host_paths(role, t)
    for rel in paths["read"]:
        assert (one_apps / rel).is_file(), f"{how}: {rel} is not in the one-apps root"

    # prepare finds this flower-ctx tree with no variable, and makes what the templates read.
    env = {"PATH": f"{one_apps.parent / 'bin'}:/usr/bin:/bin", "HOME": str(one_apps.parent)}
    found = subprocess.run([str(service / "prepare"), "--print-source"], cwd=one_apps, env=env,
                           capture_output=True, text=True, timeout=30)
    assert found.returncode == 0 and Path(found.stdout.strip()) == REPO.resolve(), found.stderr
    context_dir = Path(input_dir) / "context" if Path(input_dir).is_absolute() else one_apps / input_dir / "context"
    made = [one_apps / p for p in paths["made"]]
    try:
        prepare = next(b for b in _builds(role) if any("null" in s for s in b["sources"]))
        command = t.eval(next(blocks(prepare["provisioner"][0]))[1]["inline"][0])
        out = subprocess.run(["bash", "-c", command], cwd=one_apps, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        for path in made:
            assert path.is_file(), f"{how}: prepare did not make {path}"
        iso = next(p for p in made if p.name.endswith("-context.iso"))
        # Exactly where build.sh deletes it afterwards: INPUT_DIR/<name>-context.iso and INPUT_DIR/context/.
        assert iso == one_apps / input_dir / f"{name}-context.iso"
        assert parse((context_dir / "context.sh").read_bytes())["SET_HOSTNAME"] == f"flower-{role}"
        tarball = next(p for p in made if p.name.endswith("-flower-ctx.tar.gz"))
        assert tarball == one_apps / "build" / f"{name}-flower-ctx.tar.gz"
        with tarfile.open(tarball) as tar:
            names = set(tar.getnames())
        assert {"setup.cfg", "packer/scripts/provision.sh", "flower_ctx/__init__.py"} <= names
        assert not any(n.startswith((".git/", ".venv/")) for n in names)
        if how != "copied":
            # With the directory used in place or linked, the leftovers land in this tree: ignored.
            leftovers = [iso.resolve(), (context_dir / "context.sh").resolve()]
            assert all(p.is_relative_to(REPO) for p in leftovers), leftovers
            ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", *map(str, leftovers)],
                                     capture_output=True, text=True)
            assert len(ignored.stdout.split()) == len(leftovers), ignored.stdout + ignored.stderr
    finally:
        for path in made:
            path.unlink(missing_ok=True)
        shutil.rmtree(context_dir, ignore_errors=True)


def test_prepare_without_a_source_tree_says_so(one_apps: Path) -> None:
    service = one_apps / "packer" / SERVICES["superlink"].name
    shutil.copytree(SERVICES["superlink"], service, symlinks=True)  # copied, and no flower-ctx checkout
    out = subprocess.run([str(service / "prepare"), "--print-source"], cwd=one_apps, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 1 and "no flower-ctx source tree found" in out.stderr
    out = subprocess.run([str(service / "prepare"), "--print-source"], cwd=one_apps, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "FLOWER_CTX_SRC": str(REPO)}, timeout=30)
    assert out.returncode == 0 and Path(out.stdout.strip()) == REPO.resolve()


STAND_IN_MAKEFILE = r"""# Stand-in of one-apps' Makefile, as research note 5 describes it.
include Makefile.config
-include Makefile.local
$(DISTROS) $(SERVICES): %: packer-%
packer-%: $(DIR_EXPORT)/%.qcow2
	@$(INFO) "Packer $* done"
$(DIR_EXPORT)/%.qcow2:
	$(eval DISTRO_NAME := $(shell echo $* | sed 's/[0-9\.].*//'))
	$(eval DISTRO_VER  := $(shell echo $* | sed 's/^.[^0-9\.]*\(.*\)/\1/'))
	packer/build.sh '$(DISTRO_NAME)' '$(DISTRO_VER)' $@
"""

STAND_IN_CONFIG = """DISTROS := ubuntu2404 alma8
SERVICES_AMD64 := service_example
SERVICES := $(SERVICES_AMD64)
DIR_EXPORT := export
INFO := echo
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_local_builds_the_right_image_from_the_right_directory(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text(STAND_IN_MAKEFILE)
    (tmp_path / "Makefile.config").write_text(STAND_IN_CONFIG)
    shutil.copy(PACKER / "Makefile.local.example", tmp_path / "Makefile.local")
    for service in SERVICES.values():
        out = subprocess.run(["make", "-n", service.name], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = [line for line in out.stdout.splitlines() if "build.sh" in line]
        # The base image first, then this service, found as packer/<its whole name>.
        assert lines == ["packer/build.sh 'ubuntu' '2404' export/ubuntu2404.qcow2",
                         f"packer/build.sh '{service.name}' '' export/{service.name}.qcow2"], out.stdout


def test_gitignore_covers_build_leftovers() -> None:
    leftovers = [
        "export/service_FlowerSuperLink.qcow2", "export/service_FlowerSuperLink.yaml",
        "build/service_FlowerSuperLink/service_FlowerSuperLink", "build/service_FlowerSuperNode-flower-ctx.tar.gz",
        "packer/service_FlowerSuperLink/service_FlowerSuperLink-context.iso",
        "packer/service_FlowerSuperNode/service_FlowerSuperNode-cloud-init.iso",
        "packer/service_FlowerSuperLink/context/context.sh",
        "packer/service_FlowerSuperLink/service_FlowerSuperLink-flower-ctx.tar.gz",
        "packer_cache/port", "packer/service_FlowerSuperLink/packer_cache/x", "crash.log",
        "packer/service_FlowerSuperNode/crash.log",
    ]
    out = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *leftovers],
                         capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(leftovers), set(leftovers) - set(out.stdout.split())
    tracked = [str(p.relative_to(REPO)) for s in SERVICES.values() for p in s.iterdir()]
    tracked += ["packer/Makefile.local.example", "packer/scripts/provision.sh", "packer/README.md"]
    out = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *tracked], capture_output=True,
                         text=True)
    assert out.stdout == "", out.stdout


# --- scripts ---------------------------------------------------------------------------------


def _all_scripts() -> list[Path]:
    per_service = [s / name for s in SERVICES.values() for name in ("gen_context", "prepare")]
    return [*sorted(SCRIPTS.glob("*.sh")), *per_service]


def test_scripts_exist_and_provision_is_the_install_path() -> None:
    for name in ("81-configure-ssh.sh", "82-configure-context.sh", "83-install-flower.sh", "provision.sh"):
        assert (SCRIPTS / name).is_file(), name
    assert "packer/scripts/provision.sh" in (SCRIPTS / "83-install-flower.sh").read_text()


def test_shell_scripts_parse() -> None:
    for script in _all_scripts():
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt-get install shellcheck)")
def test_shellcheck_clean() -> None:
    out = subprocess.run(["shellcheck", *map(str, _all_scripts())], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_provision_refuses_bad_arguments(tmp_path: Path) -> None:
    for args in ([], ["--role", "coordinator"], ["--role"], ["--bogus"], ["--role", "superlink", "--venv", "/x"],
                 ["--role", "superlink", "--root", str(tmp_path)], ["--role", "superlink", "--files-only", "--root"],
                 ["--role", "superlink", "--files-only", "--venv"]):
        out = subprocess.run(["bash", str(PROVISION), *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (args, out.stderr)
        assert "usage:" in out.stderr
    out = subprocess.run(["bash", str(PROVISION), "--role", "superlink", "--src", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "not the flower-ctx source tree" in out.stderr


# --- provision.sh --files-only ---------------------------------------------------------------


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A root with this system's user database (no `flower` user) and a stand-in virtualenv."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    venv_bin = root / "srv/venv/bin"
    venv_bin.mkdir(parents=True)
    for exe in ("python3", "flower-ctx", "flwr"):
        (venv_bin / exe).write_text("#!/bin/sh\n")
        (venv_bin / exe).chmod(0o755)
    return root


def files_only(root: Path, *extra: str, role: str = "superlink") -> subprocess.CompletedProcess[str]:
    # Under the umask one-apps runs its steps with: the script's own umask must win.
    args = " ".join(["--role", role, "--files-only", "--root", str(root), *extra])
    return subprocess.run(["bash", "-c", f"umask 0077; exec bash {PROVISION} {args}"], capture_output=True,
                          text=True, timeout=60)


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


@requires_root
def test_files_only_installs_the_appliance_files(scratch_root: Path) -> None:
    root = scratch_root
    out = files_only(root, "--venv", "/srv/venv")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "packages:" not in out.stdout and "virtualenv: installing" not in out.stdout  # no apt, no pip
    flower = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                  if line.startswith("flower:"))
    assert flower[5] == "/opt/flower" and flower[6].endswith("/nologin")
    assert int(flower[2]) < 1000
    uid, gid = int(flower[2]), int(flower[3])
    hook = root / "etc/one-appliance/service.d/appliance.sh"
    assert hook.read_bytes() == (REPO / "one-apps-hooks/appliance.sh").read_bytes()
    assert (root / "etc/one-appliance/flower/role").read_text() == "superlink\n"
    assert (root / "etc/one-appliance/flower/params-superlink.sh").read_bytes() == \
        (REPO / "one-apps-hooks/params-superlink.sh").read_bytes()
    for unit in (REPO / "systemd").glob("*.service"):
        installed = root / "etc/systemd/system" / unit.name
        assert installed.read_bytes() == unit.read_bytes() and _mode(installed) == 0o644
    expected = {"etc/one-appliance": 0o750, "etc/one-appliance/service.d": 0o750, "opt/flower": 0o755,
                "opt/flower/certs": 0o755, "opt/flower/config": 0o755, "etc/flower-ctx": 0o700,
                "etc/wireguard": 0o700, "etc/one-appliance/flower/role": 0o644,
                "etc/one-appliance/service.d/appliance.sh": 0o644}
    for rel, mode in expected.items():
        assert _mode(root / rel) == mode, (rel, oct(_mode(root / rel)))
    state = (root / "opt/flower/state").stat()
    assert (_mode(root / "opt/flower/state"), state.st_uid, state.st_gid) == (0o700, uid, gid)
    # The image's virtualenv path points at the given one; the operator's commands at the image path.
    assert os.readlink(root / "opt/flower/venv") == "/srv/venv"
    for name in ("flower-ctx", "flwr"):
        assert os.readlink(root / "usr/local/bin" / name) == f"/opt/flower/venv/bin/{name}"
    # A second run changes nothing and creates no second user.
    again = files_only(root, "--venv", "/srv/venv")
    assert again.returncode == 0 and "user flower: exists" in again.stdout
    assert [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()].count("flower") == 1


@requires_root
def test_files_only_refusals(scratch_root: Path, tmp_path: Path) -> None:
    out = files_only(scratch_root, "--venv", "/nowhere")
    assert out.returncode == 1 and "not a virtualenv" in out.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    out = files_only(bare)
    assert out.returncode == 1 and "etc/passwd missing" in out.stderr
    out = files_only(Path("relative/root"))
    assert out.returncode == 2
    # A real virtualenv at the image path is never replaced by a link.
    (scratch_root / "opt/flower/venv/bin").mkdir(parents=True)
    out = files_only(scratch_root, "--venv", "/srv/venv")
    assert out.returncode == 1 and "refusing to replace" in out.stderr
