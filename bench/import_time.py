"""How long `flower-ctx --help` and `context check` take to import, against importing the heavy
modules the agent keeps off that path (grpc, cryptography, pyroute2, requests), in the same run.

    python bench/import_time.py
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flower_ctx.context import render  # noqa: E402


def importtime_us(code: str, *args: str) -> int:
    """Sum of the top-level cumulative import times (µs) reported by -X importtime."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], capture_output=True, text=True)
    total = 0
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            total += int(m.group(1))
    return total


def wall_ms(argv: list[str], n: int = 7) -> float:
    import time

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / "context.sh"
        ctx.write_text(render({"ETH0_IP": "10.0.0.5", "FL_CERT_EXTRA_SAN": "IP:10.10.9.0", "VMID": "1"}))
        run_cli = (
            "import sys\nfrom flower_ctx.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass"
        )
        help_us = statistics.median(importtime_us(run_cli, "--help") for _ in range(5))
        check_us = statistics.median(
            importtime_us(run_cli, "context", "check", "--role", "superlink", "--context", str(ctx)) for _ in range(5)
        )
        heavy_us = statistics.median(
            importtime_us("import grpc, cryptography.x509, pyroute2, requests") for _ in range(5)
        )
        print(f"imports for `flower-ctx --help`:        {help_us / 1000:7.1f} ms")
        print(f"imports for `flower-ctx context check`: {check_us / 1000:7.1f} ms")
        print(f"baseline: grpc+cryptography+pyroute2+requests: {heavy_us / 1000:7.1f} ms")
        print(f"ratio help/baseline:  {help_us / heavy_us:.2f}")
        print(f"ratio check/baseline: {check_us / heavy_us:.2f}")
        py = wall_ms([sys.executable, "-c", "pass"])
        helpw = wall_ms([sys.executable, "-m", "flower_ctx", "--help"])
        print(f"wall: python -c pass {py:.0f} ms, flower-ctx --help {helpw:.0f} ms (median of 7)")


if __name__ == "__main__":
    main()
