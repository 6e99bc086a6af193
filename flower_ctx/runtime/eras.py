"""The Flower eras flower-ctx runs, behind one face (docs/flower-eras.md).

- ``grpc`` (Flower 1.39): the Fleet API is gRPC on its own public address; Control and Runtime are
  HTTP on loopback. Keepalive: grpcio channel and server options (``grpc_era``).
- ``http`` (Flower 1.40, 1.41, 1.42): Fleet, Control and Runtime are one FastAPI application on one
  uvicorn port. Flower listens on loopback only; flower-ctx adds the public listener that answers
  the Fleet routes and nothing else, and puts TCP keepalive, TCP_USER_TIMEOUT, an httpx connect
  timeout and the heartbeat interval on the sockets Flower opens (``http_era``).

``for_version`` picks the era of the installed flwr; each era builds Flower's argv from the runtime
configuration and installs its hooks in this process before Flower's entry point is called. This
module imports nothing heavy: ``flower-ctx --help`` must stay fast.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import FlowerCtxError
from ..values import FLOWER_FIRST, FLOWER_LAST, flower_range_text


class UnsupportedFlower(FlowerCtxError):
    """The installed flwr is missing or outside the releases flower-ctx runs."""


@dataclass(frozen=True)
class Era:
    name: str  # "grpc" | "http"
    first: tuple[int, int]  # first and last major.minor of the era, inclusive
    last: tuple[int, int]
    module: str  # the module with argv(doc) and install(doc)
    summary: str

    def _impl(self) -> Any:
        return importlib.import_module(self.module)

    def argv(self, doc: dict[str, Any]) -> list[str]:
        """Flower's command line for the runtime configuration (argv[0] is the console script)."""
        return list(self._impl().argv(doc))

    def install(self, doc: dict[str, Any]) -> str:
        """Install this era's hooks (keepalive, exposure) in this process; a one-line description.
        Raises when a hook cannot be placed: Flower is then not started."""
        return str(self._impl().install(doc))


GRPC = Era("grpc", (1, 39), (1, 39), "flower_ctx.runtime.grpc_era",
           "Fleet API on gRPC (its own address); gRPC keepalive on every channel and server")
HTTP = Era("http", (1, 40), (1, 42), "flower_ctx.runtime.http_era",
           "Fleet API on HTTP/1.1 beside Control and Runtime; Flower on loopback, a Fleet-only public "
           "listener, TCP keepalive and heartbeat interval from the keepalive numbers")
ERAS = (GRPC, HTTP)


def parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric release components: "1.39.0" -> (1, 39, 0), "1.40.0rc1" -> (1, 40, 0)."""
    match = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if match is None:
        return ()
    return tuple(int(g) for g in match.groups() if g is not None)


def for_version(installed: str | None) -> Era:
    """The era of an installed flwr version; UnsupportedFlower when missing or out of range."""
    if installed is None:
        raise UnsupportedFlower("Flower (flwr) is not installed in this virtualenv: pip install 'flower-ctx[flower]'")
    minor = parse_version(installed)[:2]
    for era in ERAS:
        if era.first <= minor <= era.last:
            return era
    raise UnsupportedFlower(
        f"installed Flower {installed} is not supported: flower-ctx runs Flower {flower_range_text()} "
        f"(1.39 with the gRPC Fleet API, {'.'.join(map(str, HTTP.first))} to {'.'.join(map(str, HTTP.last))} "
        "with the HTTP Fleet API kept apart from the Control API). "
        f"Set FLOWER_VERSION to a release from {'.'.join(map(str, FLOWER_FIRST))} to "
        f"{'.'.join(map(str, FLOWER_LAST))}.x, or install one: pip install 'flwr=={FLOWER_LAST[0]}.{FLOWER_LAST[1]}.0'"
    )


def keepalive_summary(version: str | None, time_s: int, timeout_s: int) -> str:
    """How the keepalive numbers act on the Flower ``version`` (status and doctor say the same)."""
    try:
        era = for_version(version)
    except UnsupportedFlower:
        era = GRPC
    if era is HTTP:
        from .http_keepalive import heartbeat_interval

        h = heartbeat_interval(time_s, timeout_s)
        return (f"HTTP Fleet API: TCP keepalive probe after {time_s}s idle, connection dropped {time_s + timeout_s}s "
                f"after the last answer or {timeout_s}s after unacknowledged data; heartbeat every {h}s (the "
                f"SuperLink marks a silent SuperNode offline after {2 * h}s)")
    return f"ping every {time_s}s, timeout {timeout_s}s"


def installed() -> Era:
    """The era of the flwr installed in this virtualenv."""
    from ..flowerversion import installed_version

    return for_version(installed_version())
