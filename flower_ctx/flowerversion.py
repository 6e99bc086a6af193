"""FLOWER_VERSION: keep the image's Flower, or try (bounded) to install the requested release.

The image bakes Flower 1.39.0 into the agent's virtualenv. When CONTEXT asks for another release
below 1.40 (validation refuses 1.40+), configure tries ``pip install flwr==X`` into the same
virtualenv with a time limit; on any failure the baked version stays and the result says so.
"""

from __future__ import annotations

import subprocess
import sys

from .model import Config
from .paths import Paths
from .plan import Change, StepResult
from .supervisor import child_environment

INSTALL_TIMEOUT_S = 300


def installed_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def apply(config: Config, paths: Paths, *, dry_run: bool = False, timeout: float = INSTALL_TIMEOUT_S) -> StepResult:
    result = StepResult("flower")
    have = installed_version()
    want = config.flower_version
    result.facts["flower_version"] = have or "not installed"
    if have == want:
        result.changes.append(Change(f"flwr {want}", "unchanged", "installed"))
        return result
    what = f"flwr {have or '-'} -> {want}"
    if dry_run:
        result.changes.append(Change(what, "would-update", "pip install into the agent's virtualenv"))
        return result
    if paths.staged:
        result.skipped.append(f"pip install flwr=={want} (installed: {have or 'none'})")
        return result
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", f"flwr=={want}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_environment())
        ok, why = out.returncode == 0, (out.stderr.strip().splitlines() or ["pip failed"])[-1][:200]
    except subprocess.TimeoutExpired:
        ok, why = False, f"no result within {timeout:g} s"
    if ok:
        result.changes.append(Change(what, "updated", "installed with pip"))
        result.facts["flower_version"] = want
    else:
        result.changes.append(Change(what, "skipped", f"kept {have}"))
        result.warnings.append(f"FLOWER_VERSION: could not install Flower {want} ({why}); running the image's {have}")
    return result
