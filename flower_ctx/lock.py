"""One writer at a time per machine: the boot hook, an operator at the console, the watch."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator

from .errors import FlowerCtxError
from .files import ensure_dir, open_lock
from .paths import Paths


class MachineBusy(FlowerCtxError):
    """Another flower-ctx holds the machine lock (the watch tries again at its next check)."""


@contextlib.contextmanager
def machine_lock(paths: Paths, wait: bool = True) -> Iterator[None]:
    """One writer at a time per machine (boot hook vs an operator at the console, configure vs
    bootstrap vs the watch). ``wait=False`` raises MachineBusy instead of waiting."""
    ensure_dir(paths.agent_dir, 0o700)
    fd = open_lock(paths.agent_dir / "configure.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise MachineBusy("another flower-ctx configure is running") from None
            print("waiting for another flower-ctx configure to finish...", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
