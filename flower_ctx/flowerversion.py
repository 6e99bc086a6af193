"""FLOWER_VERSION: keep the image's Flower, or try (bounded) to install the requested release.

The image bakes Flower 1.42.0 into the agent's virtualenv (the ``flower`` extra). FLOWER_VERSION
unset means that installed Flower. When CONTEXT asks for another release (validation accepts 1.39.0
to 1.42.x), configure tries ``pip install flwr==X`` into the same virtualenv with a time limit; on
any failure the installed version stays and the result says so. ``flower-ctx run`` then picks the
runtime era of whatever is installed (``runtime.eras``).
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


def _install(want: str, timeout: float) -> tuple[bool, str]:
    """Download within ``timeout`` (the slow, failure-prone part), then install from the local files
    with no time limit: killing pip mid-install could leave the virtualenv without a working Flower."""
    import tempfile

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    with tempfile.TemporaryDirectory(prefix="flower-ctx-pip-") as tmp:
        try:
            out = subprocess.run([*pip, "download", "-d", tmp, f"flwr=={want}"], capture_output=True, text=True,
                                 timeout=timeout, env=child_environment(), umask=0o022)
        except subprocess.TimeoutExpired:
            return False, f"download did not finish within {timeout:g} s"
        if out.returncode != 0:
            return False, (out.stderr.strip().splitlines() or ["pip download failed"])[-1][:200]
        # umask 0022: the one-apps framework runs configure under umask 0077, and files pip writes
        # with that would be unreadable for the `flower` user that runs Flower.
        out = subprocess.run([*pip, "install", "--no-index", "--find-links", tmp, f"flwr=={want}"],
                             capture_output=True, text=True, env=child_environment(), umask=0o022)
        if out.returncode != 0:
            return False, (out.stderr.strip().splitlines() or ["pip install failed"])[-1][:200]
    return True, ""


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
    ok, why = _install(want, timeout)
    if ok:
        result.changes.append(Change(what, "updated", "installed with pip"))
        result.facts["flower_version"] = want
    else:
        result.changes.append(Change(what, "skipped", f"kept {have}"))
        result.warnings.append(f"FLOWER_VERSION: could not install Flower {want} ({why}); running the image's {have}")
    return result
