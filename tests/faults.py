"""Crash injection for tests: kill the process at its N-th file write (after the temp file is
complete, before the rename). Production code reads no environment variable for this: a test puts
the hook in place from Python, here, and then runs the real command in the same process.

    python -m tests.faults N configure --role superlink --context F --root DIR
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from flower_ctx import files


def kill_at_write(n: int) -> None:
    """Install a hook that SIGKILLs this process at its ``n``-th completed temp file."""
    count = 0

    def hook(stage: str, path: Path) -> None:
        nonlocal count
        if stage == "temp-written":
            count += 1
            if count == n:
                os.kill(os.getpid(), signal.SIGKILL)

    files.FAULT_HOOK = hook


if __name__ == "__main__":
    kill_at_write(int(sys.argv[1]))
    from flower_ctx.cli import main

    main(sys.argv[2:])
