"""The provisioning script, the appliances' single install path, on a clean Debian root.

A minimal Debian 12 root made by debootstrap (cached under /var/cache/flower-ctx-tests, rebuilt
only when missing) is copied to a temporary directory with this repository inside it, then
packer/scripts/provision.sh runs in it through chroot, with nothing installed by hand: apt and pip
fetch from the package registries. The first run is under umask 0077 (what one-apps runs its steps
with): everything pip and venv write must still be readable by the `flower` user. Mounts are made
inside a private mount namespace (`unshare --mount`), so they vanish with the process even when the
test crashes.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flower_ctx import __version__
from tests.conftest import REPO, requires_root

pytestmark = [pytest.mark.slow, pytest.mark.root, requires_root]

CACHE = Path(os.environ.get("FLOWER_CTX_TEST_CACHE", "/var/cache/flower-ctx-tests"))
PRISTINE = CACHE / "bookworm-minbase"
COMPLETE = PRISTINE / ".flower-ctx-complete"
SRC_IN_ROOT = "/usr/local/src/flower-ctx"
PROVISION_TIMEOUT = 1500  # apt + a virtualenv with Flower and its dependencies from PyPI
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

if shutil.which("debootstrap") is None or shutil.which("unshare") is None or shutil.which("chroot") is None:
    pytestmark.append(pytest.mark.skip(reason="needs debootstrap, unshare and chroot (apt-get install debootstrap)"))


def _pristine_root() -> Path:
    """The cached clean root; built once (under a lock, so parallel runs build it once too)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if COMPLETE.exists():
            return PRISTINE
        partial = CACHE / f"bookworm-minbase.partial.{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(PRISTINE, ignore_errors=True)  # a crashed earlier build
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(partial)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.fail(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        (partial / COMPLETE.name).write_text("ok\n")
        partial.rename(PRISTINE)
        return PRISTINE


def _copy_repo(dest: Path) -> None:
    skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")
    shutil.copytree(REPO, dest, ignore=skip, symlinks=True)


def _no_mounts_under(root: Path) -> bool:
    return not any(os.path.ismount(root / sub) for sub in ("proc", "dev", "root/.cache/pip", "var/cache/apt/archives"))


def _passthrough_env(root: Path) -> dict[str, str]:
    """The host's pip and proxy settings, so pip in the chroot reaches PyPI the way the host does.

    Where the host trusts an extra CA for HTTPS (PIP_CERT), that bundle is copied into the root:
    the chroot's own ca-certificates package knows only the public CAs.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() in PROXY_VARS or k in ("PIP_DEFAULT_TIMEOUT",)}
    cert = os.environ.get("PIP_CERT")
    if cert and Path(cert).is_file():
        inside = root / "usr/local/share/flower-ctx-test/pip-ca.crt"
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert, inside)
        env["PIP_CERT"] = "/" + str(inside.relative_to(root))
    return env


def in_chroot(root: Path, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell command in the chroot, inside a private mount namespace with /proc and /dev.

    The package caches of the cache directory are bound in, so a re-run downloads little.
    """
    pip_cache = CACHE / "pip"
    apt_cache = CACHE / "apt-archives"
    pip_cache.mkdir(parents=True, exist_ok=True)
    (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
    (root / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _passthrough_env(root).items())
    script = f"""
set -e
mount -t proc proc {root}/proc
mount --bind /dev {root}/dev
mount --bind {pip_cache} {root}/root/.cache/pip
mount --bind {apt_cache} {root}/var/cache/apt/archives
exec chroot {root} /usr/bin/env -i PATH={CHROOT_PATH} HOME=/root LANG=C.UTF-8 \\
    PIP_CACHE_DIR=/root/.cache/pip DEBIAN_FRONTEND=noninteractive {env} /bin/bash -c "$1"
"""
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "chroot-run", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session we started: bash, apt, pip
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s in chroot: {command}\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A fresh copy of the clean root, provisioned as a SuperLink image; removed afterwards."""
    pristine = _pristine_root()
    root = tmp_path_factory.mktemp("debian") / "root"
    try:
        subprocess.run(["cp", "-a", str(pristine), str(root)], check=True)
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf", follow_symlinks=True)
        # No service may start inside a chroot during package installs.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        _copy_repo(root / SRC_IN_ROOT.lstrip("/"))
        first = in_chroot(
            root, f"umask 0077; bash {SRC_IN_ROOT}/packer/scripts/provision.sh --role superlink",
            timeout=PROVISION_TIMEOUT,
        )
        assert first.returncode == 0, f"provision.sh failed ({first.returncode}):\n{first.stdout[-6000:]}"
        yield root, first.stdout
    finally:
        # Mounts lived in the private namespace; refuse to delete through one that somehow remains.
        if root.exists() and _no_mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)


def _passwd(root: Path, user: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    return None


def _group_id(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    raise AssertionError(f"group {group} missing")


def _mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def test_flower_ctx_runs_inside(provisioned: tuple[Path, str]) -> None:
    root, log = provisioned
    assert f"done: flower-ctx {__version__}" in log
    for cmd in ("flower-ctx --version", "/opt/flower/venv/bin/flower-ctx --version"):
        out = in_chroot(root, cmd)
        assert out.returncode == 0, out.stdout
        assert out.stdout.strip() == f"flower-ctx {__version__}"
    # Flower's own CLI is on PATH for the operator (flwr run, flwr ls, ...).
    assert os.readlink(root / "usr/local/bin/flwr") == "/opt/flower/venv/bin/flwr"
    out = in_chroot(root, "command -v flwr && flwr --version")
    from flower_ctx.values import FLOWER_BAKED  # the image bakes the `flower` extra's release

    assert out.returncode == 0 and "/usr/local/bin/flwr" in out.stdout and FLOWER_BAKED in out.stdout, out.stdout
    # Flower is the pinned release, importable from the virtualenv, with its scripts on bin/.
    out = in_chroot(
        root, "/opt/flower/venv/bin/python3 -c 'import importlib.metadata as m; print(m.version(\"flwr\"))'"
    )
    assert out.stdout.strip() == FLOWER_BAKED, out.stdout
    for script in ("flower-superlink", "flower-supernode", "flower-superexec"):
        assert (root / "opt/flower/venv/bin" / script).is_file(), script


def test_system_packages_installed(provisioned: tuple[Path, str]) -> None:
    root, _ = provisioned
    out = in_chroot(root, "command -v wg wireguard-go ip nft && dpkg-query -W wireguard-tools wireguard-go nftables")
    assert out.returncode == 0, out.stdout


def test_flower_user(provisioned: tuple[Path, str]) -> None:
    root, _ = provisioned
    entry = _passwd(root, "flower")
    assert entry is not None, "user flower missing"
    _name, _pw, uid, gid, _gecos, home, shell = entry
    assert int(uid) < 1000, "must be a system user"
    assert int(gid) == _group_id(root, "flower")
    assert home == "/opt/flower"
    assert shell.endswith("/nologin")


def test_tree_permissions(provisioned: tuple[Path, str]) -> None:
    root, _ = provisioned
    flower = _passwd(root, "flower")
    assert flower is not None
    fuid, fgid = int(flower[2]), int(flower[3])
    expected = {
        "opt/flower": (0o755, 0, 0),
        "opt/flower/certs": (0o755, 0, 0),
        "opt/flower/config": (0o755, 0, 0),
        "opt/flower/state": (0o700, fuid, fgid),
        "etc/flower-ctx": (0o700, 0, 0),
        "etc/wireguard": (0o700, 0, 0),
        "etc/one-appliance": (0o750, 0, 0),
        "etc/one-appliance/service.d": (0o750, 0, 0),
    }
    for rel, want in expected.items():
        assert _mode_owner(root / rel) == want, f"{rel}: {oct(_mode_owner(root / rel)[0])} {_mode_owner(root / rel)}"
    # The virtualenv is root's: the service user cannot change the code it runs.
    for rel in ("opt/flower/venv", "opt/flower/venv/bin/flower-ctx"):
        mode, uid, _gid = _mode_owner(root / rel)
        assert uid == 0 and not mode & 0o022, rel


def test_virtualenv_is_readable_by_flower_despite_umask_0077(provisioned: tuple[Path, str]) -> None:
    """provision.sh ran under umask 0077: every file venv and pip wrote must still be readable (and
    every directory searchable) by others, i.e. by the `flower` user that runs Flower."""
    root, _ = provisioned
    venv = root / "opt/flower/venv"
    unreadable = []
    checked = 0
    for dirpath, dirnames, filenames in os.walk(venv):
        for name in dirnames:
            mode = (Path(dirpath) / name).lstat().st_mode
            if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
                unreadable.append(f"{oct(mode & 0o777)} {Path(dirpath, name).relative_to(root)}/")
        for name in filenames:
            mode = (Path(dirpath) / name).lstat().st_mode
            checked += 1
            if stat.S_ISREG(mode) and not mode & 0o004:
                unreadable.append(f"{oct(mode & 0o777)} {Path(dirpath, name).relative_to(root)}")
    assert checked > 1000  # flwr, grpcio, cryptography, ... really are there
    assert unreadable == [], unreadable[:20]
    # And as that user, for real: Flower imports.
    out = in_chroot(root, "runuser -u flower -- /opt/flower/venv/bin/python3 -c 'import flwr, flower_ctx'")
    assert out.returncode == 0, out.stdout


def test_files_only_installs_what_the_full_run_installs(provisioned: tuple[Path, str], tmp_path: Path) -> None:
    """--files-only (the test rigs' install) goes through the same functions: the same units, hook and links."""
    root, log = provisioned
    scratch = tmp_path / "root"
    (scratch / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2(root / "etc" / name, scratch / "etc" / name)
    out = subprocess.run(["bash", str(REPO / "packer/scripts/provision.sh"), "--role", "superlink", "--files-only",
                          "--root", str(scratch)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr

    def installed(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("provision: unit:", "provision: link:",
                                                                          "provision: one-apps hook:"))]

    assert installed(out.stdout) == installed(log) != []
    assert "user flower: exists" in out.stdout  # the same user database: nothing new
    for rel in ("etc/one-appliance/service.d/appliance.sh", "etc/one-appliance/flower/role",
                "etc/systemd/system/flower-superlink.service"):
        assert (scratch / rel).read_bytes() == (root / rel).read_bytes(), rel
    for rel in ("usr/local/bin/flower-ctx", "usr/local/bin/flwr"):
        assert os.readlink(scratch / rel) == os.readlink(root / rel), rel


def test_units_and_hook_installed(provisioned: tuple[Path, str]) -> None:
    root, _ = provisioned
    # Compared with the tree the script installed from (the repository copy inside the root).
    src = root / SRC_IN_ROOT.lstrip("/")
    units = sorted(p.name for p in (src / "systemd").glob("*.service"))
    assert {"flower-superlink.service", "flower-supernode.service"} <= set(units)
    for name in units:
        installed = root / "etc/systemd/system" / name
        assert installed.read_bytes() == (src / "systemd" / name).read_bytes()
        assert _mode_owner(installed) == (0o644, 0, 0)
    hook = root / "etc/one-appliance/service.d/appliance.sh"
    assert hook.read_bytes() == (src / "one-apps-hooks/appliance.sh").read_bytes()
    assert (root / "etc/one-appliance/flower/role").read_text() == "superlink\n"
    params = root / "etc/one-appliance/flower/params-superlink.sh"
    assert params.read_bytes() == (src / "one-apps-hooks/params-superlink.sh").read_bytes()
    # The hook loads in the image and its install step (what Packer runs) passes with the real flower-ctx.
    out = in_chroot(
        root,
        "set -e; . /etc/one-appliance/service.d/appliance.sh; service_install; "
        'echo "params=$(( ${#ONE_SERVICE_PARAMS[@]} / 4 ))"',
    )
    assert out.returncode == 0, out.stdout
    assert f"flower-ctx {__version__}" in out.stdout
    rows = int(out.stdout.rsplit("params=", 1)[1].split()[0])
    from flower_ctx.variables import REGISTRY

    assert rows == sum(1 for v in REGISTRY if any(r.value == "superlink" for r in v.roles))


def test_second_run_is_idempotent(provisioned: tuple[Path, str]) -> None:
    root, _ = provisioned
    watched = [
        "opt/flower/venv/bin/flower-ctx",
        "etc/one-appliance/flower/role",
        "etc/passwd",
        "etc/systemd/system/flower-superlink.service",
        "opt/flower/state",
    ]
    before = {rel: (root / rel).stat() for rel in watched}
    again = in_chroot(
        root, f"bash {SRC_IN_ROOT}/packer/scripts/provision.sh --role superlink", timeout=PROVISION_TIMEOUT
    )
    assert again.returncode == 0, again.stdout[-4000:]
    assert "packages: all present" in again.stdout
    assert "user flower: exists" in again.stdout
    for rel, st in before.items():
        now = (root / rel).stat()
        assert (now.st_mode, now.st_uid, now.st_gid) == (st.st_mode, st.st_uid, st.st_gid), rel
    users = [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()]
    assert users.count("flower") == 1
