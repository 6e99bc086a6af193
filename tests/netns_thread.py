"""Open a listening socket inside a network namespace the test created, from this process.

Namespace membership is per thread on Linux: a helper thread enters the namespace (setns), creates
and binds the socket there, and leaves. The socket stays in that namespace, so an in-process test
double (e.g. the OneGate server) can serve simulated VMs without connecting anything to the host.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def call_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that is inside ``/var/run/netns/<netns>``; return its result."""
    box: dict[str, object] = {}

    def body() -> None:
        target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
            box["result"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc
        finally:
            os.close(target)
            # The thread ends here, so its namespace does not leak into other work.

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
