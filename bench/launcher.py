#!/usr/bin/env python3
"""Start-up overhead of ``flower-ctx run`` against Flower's own console script.

Both sides start a fresh interpreter, import Flower and reach Flower's argument parser, which
exits at ``--version``:
  stock     <venv>/bin/flower-supernode --insecure ... --version
  launcher  flower-ctx run supernode --root STAGE  (CLI, runtime config, version check, gRPC patch
            install + self-test, entry-point lookup), then Flower's same entry point with --version
Runs alternate (same machine, same run) and the script prints medians, minimums and their ratio.

Usage: python bench/launcher.py [--runs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAUNCHER = """
import sys
from flower_ctx.cli import main
from flower_ctx.commands import run
_argv = run.flower_argv
run.flower_argv = lambda doc, version=None: [*_argv(doc, version), "--version"]  # stop in Flower's parser
main(["run", "supernode", "--root", sys.argv[1]])
"""


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "Flower version" not in proc.stdout + proc.stderr:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()

    from flower_ctx import runtime
    from flower_ctx.commands.run import flower_argv
    from flower_ctx.model import HostPort
    from flower_ctx.paths import Paths
    from tests.factories import make_config

    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryDirectory(prefix="fcka-bench-") as tmp:
        config = dataclasses.replace(make_config("supernode", tls_enabled=False),
                                     superlink_address=HostPort("127.0.0.1", 9092))
        runtime.apply(config, Paths(Path(tmp)))
        doc = runtime.build_runtime_config(config, Paths(Path(tmp)))
        stock_argv = [str(venv_bin / "flower-supernode"), *flower_argv(doc)[1:], "--version"]
        launcher_argv = [sys.executable, "-c", LAUNCHER, tmp]
        _time(stock_argv, env), _time(launcher_argv, env)  # warm the page cache for both
        stock: list[float] = []
        launcher: list[float] = []
        for _ in range(args.runs):
            stock.append(_time(stock_argv, env))
            launcher.append(_time(launcher_argv, env))

    def row(name: str, xs: list[float]) -> str:
        return f"{name:28} median {statistics.median(xs) * 1000:7.1f} ms   min {min(xs) * 1000:7.1f} ms"

    print(f"runs: {args.runs} each, alternating; {os.cpu_count()} cores")
    print(row("flower-supernode (stock)", stock))
    print(row("flower-ctx run supernode", launcher))
    ratio = statistics.median(launcher) / statistics.median(stock)
    print(f"launcher / stock: median ratio {ratio:.3f}, min ratio {min(launcher) / min(stock):.3f}, "
          f"overhead {1000 * (statistics.median(launcher) - statistics.median(stock)):+.1f} ms (median)")


if __name__ == "__main__":
    main()
