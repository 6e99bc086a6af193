"""A SuperNode whose Flower gave up on its SuperLink exits, so that its supervisor starts it again.

Flower's retry invokers (``flwr/supercore/retry/grpc_retry.py`` in 1.39, ``http_retry.py`` in 1.40+)
stop retrying on a TLS handshake failure and log "SSL/TLS handshake error detected.": the right
stop for a wrong CA, but the SuperNode process then stays alive without a connection and never
tries again, also once the SuperLink serves a certificate it trusts (the lab's SuperLink rebuilt
from a fresh disk, then restored from its backup: idle for minutes, READY=YES next to it). After
that line flower-ctx ends the process with EXIT_GAVE_UP; systemd's Restart=on-failure (or the
built-in supervisor's watch) starts a fresh SuperNode, which connects once the certificate verifies
and otherwise exits again with the cause named by the readiness watch.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

GAVE_UP = "SSL/TLS handshake error detected."
GRACE_S = 3.0  # Flower may still exit by itself (its own shutdown path) within this
EXIT_GAVE_UP = 75  # EX_TEMPFAIL: a restart may succeed

log = logging.getLogger("flower_ctx.run")


def _exit() -> None:
    log.error("Flower gave up on the SuperLink after a TLS handshake error and would never retry: exiting so "
              "that its supervisor starts it again")
    for handler in logging.getLogger("flower_ctx").handlers + logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_GAVE_UP)  # Flower's threads hold the interpreter: only this ends it at once


class GiveUpWatch(logging.Handler):
    """A handler on Flower's logger: at its give-up line, ``on_give_up`` runs GRACE_S later (once)."""

    def __init__(self, on_give_up: Callable[[], None] = _exit, grace: float = GRACE_S) -> None:
        super().__init__(logging.DEBUG)
        self.on_give_up, self.grace = on_give_up, grace
        self.timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            gave_up = self.timer is None and str(record.msg).startswith(GAVE_UP)
        except Exception:  # a record whose message cannot be read is not the one we look for
            return
        if gave_up:
            self.timer = threading.Timer(self.grace, self.on_give_up)
            self.timer.daemon = True
            self.timer.start()


def install() -> GiveUpWatch:
    """Watch Flower's logger (``flwr``) in this process for its give-up line."""
    watch = GiveUpWatch()
    logging.getLogger("flwr").addHandler(watch)
    return watch
