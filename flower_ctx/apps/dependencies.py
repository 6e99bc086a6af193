"""FL_APP_DEPENDENCIES: install exact pins into the agent's virtualenv, bounded and without surprises.

pip runs as root at configure, so what it may do is narrowed to what an operator would accept:

- wheels only (``--only-binary=:all:``): a source distribution would run its build script as root;
- every package already installed is held at its version by a constraints file, so an app pin (or
  one of its requirements) cannot replace grpcio, cryptography, or anything Flower runs on; only
  packages an earlier FL_APP_DEPENDENCIES installed may move to a new pin;
- the download has a time limit; the install then runs from the downloaded files only, with no time
  limit, so pip is never killed half-way through writing into the virtualenv.

A failure is a warning naming the variable: Flower still starts, and apps importing a missing package
fail with Python's own ImportError. ``doctor`` names pins that are not installed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import agentstate
from ..model import Config
from ..paths import Paths
from ..plan import Change, StepResult
from ..supervisor import child_environment
from ..values import canonical_package

STEP = "app dependencies"
RECORD = "app-dependencies.json"
DOWNLOAD_TIMEOUT_S = 900  # large wheels (torch) are hundreds of MB


def installed_versions() -> dict[str, str]:
    """Canonical name -> version of every distribution in the agent's virtualenv."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name and dist.version:
            out.setdefault(canonical_package(name), dist.version)
    return out


def missing(pins: tuple[tuple[str, str], ...], have: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The pins whose exact version is not installed."""
    have = installed_versions() if have is None else have
    return [(n, ver) for n, ver in pins if have.get(n) != ver]


def _ours(paths: Paths) -> set[str]:
    doc = agentstate.read_or_none(paths, RECORD)
    return set(doc["installed"]) if doc else set()


def constraints(have: dict[str, str], movable: set[str]) -> str:
    """A pip constraints file holding every installed package except ``movable`` at its version."""
    return "".join(f"{n}=={ver}\n" for n, ver in sorted(have.items()) if n not in movable)


def _why(out: subprocess.CompletedProcess[str], fallback: str) -> str:
    """pip's reason in one line: the conflict it found (printed on stdout), else its last ERROR line."""
    lines = [ln.strip() for ln in (out.stdout or "").splitlines()]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        cause = []
        for ln in lines[start:start + 8]:
            if not ln:
                break
            cause.append(ln.replace("The user requested (constraint)", "the appliance holds"))
        if cause:
            return ("conflict: " + "; ".join(cause))[:300]
    errors = [ln.strip() for ln in (out.stderr or "").splitlines() if ln.strip().startswith("ERROR")]
    return (errors or [fallback])[-1].removeprefix("ERROR: ")[:300]


def install(pins: list[tuple[str, str]], movable: set[str], *, timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[bool, str]:
    """(ok, why) of installing ``pins`` under the rules of the module docstring."""
    specs = [f"{n}=={ver}" for n, ver in pins]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    with tempfile.TemporaryDirectory(prefix="flower-ctx-appdeps-") as tmp:
        cons = Path(tmp, "constraints.txt")
        cons.write_text(constraints(installed_versions(), movable))
        wheels = Path(tmp, "wheels")
        rules = ["--only-binary=:all:", "--constraint", str(cons), "--progress-bar", "off"]
        try:
            out = subprocess.run([*pip, "download", *rules, "-d", str(wheels), *specs], capture_output=True,
                                 text=True, timeout=timeout, env=child_environment(), umask=0o022)
        except subprocess.TimeoutExpired:
            return False, f"the download did not finish within {timeout:g} s"
        if out.returncode != 0:
            return False, _why(out, "pip download failed")
        # umask 0022: files written under the one-apps umask 0077 would be unreadable for `flower`.
        out = subprocess.run([*pip, "install", *rules, "--no-index", "--find-links", str(wheels), *specs],
                             capture_output=True, text=True, env=child_environment(), umask=0o022)
        if out.returncode != 0:
            return False, _why(out, "pip install failed")
    return True, ""


def apply(config: Config, paths: Paths, *, dry_run: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S) -> StepResult:
    result = StepResult(STEP)
    pins = config.app_dependencies
    if not pins:
        return result
    todo = missing(pins)
    shown = ",".join(f"{n}=={ver}" for n, ver in todo)
    if not todo:
        result.changes.append(Change(f"{len(pins)} app package(s)", "unchanged", "installed"))
        return result
    if dry_run:
        result.changes.append(Change(shown, "would-update", "pip install (wheels only) into the agent's virtualenv"))
        return result
    if paths.staged:
        result.skipped.append(f"pip install {shown} (--root: the agent's virtualenv is not the staged machine's)")
        return result
    ours = _ours(paths)
    have = installed_versions()
    held = [f"{n}=={ver} (the appliance has {have[n]})" for n, ver in todo if n in have and n not in ours]
    if held:
        ok, why = False, ("would replace a package the agent or Flower runs on: " + ", ".join(held)
                          + "; pin the installed version or leave it out")
    else:
        ok, why = install(todo, ours | {n for n, _ in todo}, timeout=timeout)
    now = int(time.time())
    if ok:
        ours |= {n for n, _ in todo}
        result.changes.append(Change(shown, "updated", "installed with pip (wheels only)"))
    else:
        result.changes.append(Change(shown, "skipped", "not installed"))
        result.warnings.append(f"FL_APP_DEPENDENCIES: could not install {shown}: {why}. Flower runs without "
                               "them; fix the pins (wheels must exist for this Python and must not change a "
                               "package Flower uses) or the VM's access to the package index")
    agentstate.write(paths, RECORD, {"installed": sorted(ours), "failed": None if ok else why, "time": now})
    return result
