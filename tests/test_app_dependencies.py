"""Issue 15, apps: FL_APP_DEPENDENCIES installs an app's packages without rebuilding images, and
FL_RUNTIME_DEPENDENCY_INSTALL opts in to Flower's own per-run installation.

The installs here are real pip runs into this virtualenv, from a local directory of packages built by
the test (PIP_NO_INDEX + PIP_FIND_LINKS stand in for the VM's package index); every package a test
installs is uninstalled by it. The attacks: a source distribution whose build script runs as root,
an app package that drags grpcio to another version, and a pin that replaces a package Flower runs on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_ctx import agentstate
from flower_ctx.apps import dependencies as deps
from flower_ctx.commands.run import flower_argv, prepare_environment
from flower_ctx.config import load_config
from flower_ctx.errors import ValidationError
from flower_ctx.paths import Paths
from flower_ctx.runtime import build_runtime_config, problems
from flower_ctx.values import Invalid, app_requirements
from tests.factories import make_config

SUPERNODE = {"FL_SUPERLINK_ADDRESS": "192.0.2.1:9092", "FL_SSL_CA_CERTFILE": "", "FL_TLS_ENABLED": "NO",
             "FL_ALLOW_INSECURE": "YES"}


# --- the value: exact pins only ------------------------------------------------------------------

def test_pins_are_normalised_and_rendered_back() -> None:
    assert app_requirements("numpy==1.26.4, Pandas_Extra==2.2.2rc1\nscikit.learn==1.5.0") == (
        ("numpy", "1.26.4"), ("pandas-extra", "2.2.2rc1"), ("scikit-learn", "1.5.0"))


@pytest.mark.parametrize("value, says", [
    ("numpy>=1.26", "exact pin"),
    ("numpy", "exact pin"),
    ("numpy[extra]==1.0", "exact pin"),
    ("numpy==1.0;python_version>'3'", "exact pin"),
    ("--index-url=http://evil==1.0", "exact pin"),
    ("-e==1.0", "exact pin"),
    ("pkg @ https://evil.example/x.whl", "exact pin"),
    ("numpy==1.0+local", "exact pin"),
    ("numpy==1!2.0", "exact pin"),
    ("numpy==1.*", "exact pin"),
    ("flwr==1.38.0", "part of the appliance"),
    ("Flower-CTX==9", "part of the appliance"),
    ("pip==24.0", "part of the appliance"),
    ("numpy==1.0,NumPy==1.1", "twice"),
    (",".join(f"p{i}==1" for i in range(33)), "at most 32"),
])
def test_anything_but_an_exact_pin_is_refused(value: str, says: str) -> None:
    with pytest.raises(Invalid, match=says):
        app_requirements(value)


def test_a_bad_pin_is_a_validation_error_naming_the_variable() -> None:
    with pytest.raises(ValidationError) as err:
        load_config("supernode", {**SUPERNODE, "FL_APP_DEPENDENCIES": "numpy>=1"})
    assert "FL_APP_DEPENDENCIES" in str(err.value) and "exact pin" in str(err.value)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcXYZ019.-_=,; +!*[]@:/<>~\n"), max_size=60))
def test_what_is_accepted_is_what_pip_reads_as_one_exact_release(text: str) -> None:
    """Differential against `packaging` (pip's own parser): an accepted entry is one requirement, no
    extras, marker or URL, exactly one == specifier, a public version; nothing pip could take as an option."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        pins = app_requirements(text)
    except Invalid:
        return
    assert 1 <= len(pins) <= 32
    for name, version in pins:
        assert not name.startswith("-")
        req = Requirement(f"{name}=={version}")
        assert not req.extras and req.marker is None and req.url is None
        (spec,) = req.specifier
        assert spec.operator == "==" and "*" not in spec.version
        parsed = Version(version)
        assert parsed.local is None and parsed.epoch == 0
    assert app_requirements(",".join(f"{n}=={v}" for n, v in pins)) == pins


# --- Flower's own per-run installation: off unless CONTEXT opts in ---------------------------------

@pytest.mark.parametrize("opt_in", [False, True])
def test_runtime_install_reaches_flower_only_when_opted_in(tmp_path: Path, opt_in: bool) -> None:
    paths = Paths(tmp_path)
    for role in ("superlink", "supernode"):
        cfg = make_config(role, runtime_dependency_install=opt_in,
                          superlink_address=None if role == "superlink" else
                          load_config("supernode", SUPERNODE).superlink_address)
        doc = build_runtime_config(cfg, paths)
        assert problems(doc, role) == []
        # An inherited environment cannot override what CONTEXT decided.
        env = prepare_environment(doc, {"PATH": "/usr/bin", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "0"
                                        if not opt_in else "1"})
        assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == ("0" if opt_in else "1")
        argv = flower_argv(doc)
        assert ("--allow-runtime-dependency-installation" in argv) == (opt_in and role == "supernode")


def test_flower_reads_the_environment_as_we_set_it() -> None:
    """The SuperLink side is an environment variable: check Flower's own reading of it."""
    pytest.importorskip("flwr")
    import importlib

    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not its function

    for value, enabled in (("1", False), ("0", True)):
        os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = value
        try:
            assert flower_superlink._runtime_dependency_install_default() is enabled
        finally:
            del os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"]


def test_a_planted_runtime_config_cannot_smuggle_a_value() -> None:
    doc = build_runtime_config(make_config("superlink"), Paths(Path("/")))
    doc["runtime_dependency_install"] = "yes; rm -rf /"
    assert any("runtime_dependency_install" in p for p in problems(doc, "superlink"))


# --- real installs from a local package directory --------------------------------------------------

def _wheel(dirpath: Path, name: str, version: str, *, requires: tuple[str, ...] = (), body: str = "") -> Path:
    """A minimal pure-Python wheel, as `pip wheel` would build it."""
    mod = name.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    files = {
        f"{mod}/__init__.py": (body or f"VERSION = {version!r}\n").encode(),
        f"{info}/METADATA": ("Metadata-Version: 2.1\n"
                             f"Name: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = dirpath / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


def _sdist(dirpath: Path, name: str, version: str, marker: Path) -> Path:
    """A source distribution whose build script writes ``marker``: code run by whoever builds it."""
    mod = name.replace("-", "_")
    top = f"{mod}-{version}"
    setup = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran as ' + __import__('getpass').getuser())\n"
             f"from setuptools import setup\nsetup(name={name!r}, version={version!r}, py_modules=[])\n")
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    out = dirpath / f"{top}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for path, text in ((f"{top}/setup.py", setup), (f"{top}/PKG-INFO", pkg_info)):
            data = text.encode()
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return out


class LivePaths(Paths):
    """This machine's virtualenv is the one pip installs into; only the agent's records go to tmp."""

    @property
    def staged(self) -> bool:
        return False


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, list[str]]]:
    """(directory pip installs from, a fresh name prefix, names to uninstall at the end)."""
    where = tmp_path / "index"
    where.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(where))
    installed: list[str] = []
    yield where, f"fcx-t{secrets.token_hex(4)}", installed
    if installed:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *installed], check=False,
                       capture_output=True)


def _pip_show(name: str) -> str | None:
    return deps.installed_versions().get(name)


def _import_version(module: str) -> str:
    out = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.VERSION)"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_pins_are_installed_once_and_moved_only_when_ours(tmp_path: Path, index: tuple[Path, str, list[str]]) -> None:
    where, name, installed = index
    installed.append(name)
    for ver in ("1.0", "2.0"):
        _wheel(where, name, ver)
    paths = LivePaths(tmp_path / "root")
    cfg = make_config("supernode", app_dependencies=((name, "1.0"),))

    r = deps.apply(cfg, paths)
    assert [c.outcome for c in r.changes] == ["updated"] and not r.warnings, r
    assert _import_version(name.replace("-", "_")) == "1.0"  # what a ClientApp's `import` sees
    assert agentstate.read(paths, deps.RECORD)["installed"] == [name]
    # The same pins again: nothing to do, no pip run (the index is gone and it still succeeds).
    for f in where.iterdir():
        f.rename(tmp_path / f.name)
    r = deps.apply(cfg, paths)
    assert [c.outcome for c in r.changes] == ["unchanged"], r
    for f in tmp_path.glob("*.whl"):
        f.rename(where / f.name)
    # A package an earlier FL_APP_DEPENDENCIES installed may move to a new pin.
    r = deps.apply(make_config("supernode", app_dependencies=((name, "2.0"),)), paths)
    assert [c.outcome for c in r.changes] == ["updated"] and not r.warnings, r
    assert _import_version(name.replace("-", "_")) == "2.0"


def test_a_source_distribution_never_runs_its_build_script(tmp_path: Path, index: tuple[Path, str, list[str]]) -> None:
    where, name, installed = index
    installed.append(name)
    marker = tmp_path / "build-script-ran"
    _sdist(where, name, "1.0", marker)
    # The attack, reproduced: an ordinary pip (no --only-binary) executes the package's setup.py.
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-build-isolation", "-d",
                    str(tmp_path / "dl"), f"{name}==1.0"], capture_output=True, text=True)
    assert marker.exists(), "the reproduction must run setup.py, or the test below proves nothing"
    marker.unlink()

    paths = LivePaths(tmp_path / "root")
    r = deps.apply(make_config("supernode", app_dependencies=((name, "1.0"),)), paths)
    assert not marker.exists()
    assert _pip_show(name) is None
    assert r.warnings and r.warnings[0].startswith("FL_APP_DEPENDENCIES: could not install")
    assert agentstate.read(paths, deps.RECORD)["failed"]


def test_an_app_package_cannot_drag_flowers_dependencies(tmp_path: Path, index: tuple[Path, str, list[str]]) -> None:
    where, name, installed = index
    installed.append(name)
    grpc_before = _pip_show("grpcio")
    assert grpc_before is not None
    # A package whose requirement would replace the grpcio Flower runs on, with that grpcio on offer.
    _wheel(where, "grpcio", "1.0.0", body="raise ImportError('replaced by an app package')\n")
    _wheel(where, name, "1.0", requires=("grpcio==1.0.0",))
    # The attack, reproduced against a throwaway target: plain pip takes the bad grpcio.
    target = tmp_path / "plain"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), f"{name}==1.0"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and (target / "grpcio-1.0.0.dist-info").is_dir(), out.stderr

    paths = LivePaths(tmp_path / "root")
    r = deps.apply(make_config("supernode", app_dependencies=((name, "1.0"),)), paths)
    assert _pip_show("grpcio") == grpc_before and _pip_show(name) is None
    assert r.warnings and "FL_APP_DEPENDENCIES" in r.warnings[0] and "grpcio" in r.warnings[0], r.warnings
    import grpc  # still the real one

    assert grpc.__version__ == grpc_before


def test_a_pin_cannot_replace_a_package_flower_runs_on(tmp_path: Path, index: tuple[Path, str, list[str]]) -> None:
    where, _, _ = index
    have = _pip_show("packaging")
    assert have is not None
    _wheel(where, "packaging", "20.0")
    r = deps.apply(make_config("supernode", app_dependencies=(("packaging", "20.0"),)), LivePaths(tmp_path))
    assert _pip_show("packaging") == have
    assert r.warnings and f"packaging==20.0 (the appliance has {have})" in r.warnings[0], r.warnings


def test_dry_run_and_staging_install_nothing(tmp_path: Path, index: tuple[Path, str, list[str]]) -> None:
    where, name, _ = index
    _wheel(where, name, "1.0")
    cfg = make_config("supernode", app_dependencies=((name, "1.0"),))
    r = deps.apply(cfg, LivePaths(tmp_path), dry_run=True)
    assert [c.outcome for c in r.changes] == ["would-update"]
    r = deps.apply(cfg, Paths(tmp_path))
    assert r.skipped and _pip_show(name) is None
    assert not (tmp_path / "etc/flower-ctx").exists()
