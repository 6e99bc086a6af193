"""Which Python runs which Flower. A virtualenv holds one flwr, so the suite uses two (test.sh makes
both): the main ``.venv`` (pytest, and Flower 1.39 through the ``flower139`` extra, which the
gRPC-era tests and the 1.39 lab use) and ``.venv-flwr142`` (flower-ctx in editable mode with the
``flower`` extra, Flower 1.42: the HTTP-era tests and the three-zone lab by default). Tests of an
era start Flower, ``flower-ctx run`` and ``flwr`` as subprocesses of that era's Python, found here:

- this interpreter, when its flwr is of the wanted minor release;
- ``$FLOWER_CTX_PYTHON_<MAJOR><MINOR>`` (e.g. FLOWER_CTX_PYTHON_142), an interpreter to use;
- ``<repo>/.venv-flwr<MAJOR><MINOR>/bin/python``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ERAS = {"1.39": "grpc", "1.42": "http"}


def _minor_of(python: str) -> str | None:
    if python == sys.executable:
        try:
            from importlib import metadata

            version = metadata.version("flwr")
        except Exception:
            return None
    else:
        try:
            out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('flwr'))"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        version = out.stdout.strip()
    return ".".join(version.split(".")[:2])


@functools.cache
def flower_python(minor: str) -> str | None:
    """An interpreter whose flwr is ``minor`` (e.g. "1.42") and that imports flower_ctx; None if none."""
    digits = minor.replace(".", "")
    candidates = [sys.executable, os.environ.get(f"FLOWER_CTX_PYTHON_{digits}", ""),
                  str(REPO / f".venv-flwr{digits}" / "bin" / "python")]
    for python in candidates:
        if python and (python == sys.executable or Path(python).is_file()) and _minor_of(python) == minor:
            return python
    return None


def bin_dir(python: str) -> Path:
    """The virtualenv's bin/ (flower-supernode, flwr, flower-superexec) of ``python``."""
    return Path(python).parent


def flower_env(python: str, **extra: str) -> dict[str, str]:
    """Environment for Flower's own console scripts of that virtualenv."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{bin_dir(python)}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(extra)
    return env


def ctx_argv(python: str, *args: str) -> list[str]:
    """``flower-ctx ARGS`` with that interpreter (the source tree of this checkout)."""
    return [python, "-m", "flower_ctx.cli", *args]


def requires(minor: str) -> pytest.MarkDecorator:
    where = f".venv-flwr{minor.replace('.', '')}"
    return pytest.mark.skipif(flower_python(minor) is None,
                              reason=f"needs a Python with flwr {minor} ({where}, made by test.sh)")


requires_flower_139 = requires("1.39")
requires_flower_142 = requires("1.42")


# The Flower the three-zone lab's images carry: 1.42 by default (what the appliance image bakes; CI
# runs this lab), FLOWER_CTX_LAB_FLOWER=1.39 for the gRPC era (the slower job, README).
LAB_MINOR = os.environ.get("FLOWER_CTX_LAB_FLOWER", "1.42")

# The default run (CI) proves each era once where the three-zone lab already covers the lab's era:
# those tests run on the other era only unless FLOWER_CTX_FULL_SUITE=1 (the slower, complete job).
FULL_SUITE = os.environ.get("FLOWER_CTX_FULL_SUITE") == "1"


def eras_beside_the_lab() -> list[object]:
    """Parameters for a test run on both eras in the full suite, on the era the lab does not run in CI."""
    return [pytest.param(minor, marks=pytest.mark.skipif(
                minor == LAB_MINOR and not FULL_SUITE,
                reason=f"{minor} is covered by the three-zone lab; FLOWER_CTX_FULL_SUITE=1 runs it too"))
            for minor in ERAS]
