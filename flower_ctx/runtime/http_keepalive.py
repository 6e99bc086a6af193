"""Keepalive for Flower's HTTP Fleet API (1.40+): the two CONTEXT numbers mapped to what its stack
offers. Pure functions, no import of httpx, uvicorn or Flower (docs/flower-eras.md section 4).

T = FL_GRPC_KEEPALIVE_TIME, t = FL_GRPC_KEEPALIVE_TIMEOUT (seconds).

Sockets (SuperNode's httpx connections and every connection the SuperLink accepts):
  SO_KEEPALIVE=1, TCP_KEEPIDLE=T, TCP_KEEPINTVL=t, TCP_KEEPCNT=1, TCP_USER_TIMEOUT=t*1000 ms.
  An idle connection sends its first probe after T and is reset when it is unanswered t later
  (T+t), like a gRPC keepalive ping; data unacknowledged for t resets the connection at once.
SuperNode httpx client: connect timeout t (socket options apply only once connected, so a dead
  path during a reconnect is bounded by the connect timeout), read/write/pool keep Flower's 30 s.
SuperNode heartbeat interval H = min(30, max(10, ceil((T+t)/2))): the SuperLink marks a node
  offline 2H after its last heartbeat, so within about T+t (Flower accepts 10..1800 s; 30 s is
  Flower's own value, never made slower).
"""

from __future__ import annotations

import math
import socket

HEARTBEAT_MIN = 10  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL
HEARTBEAT_FLOWER = 30  # flwr.common.constant.HEARTBEAT_DEFAULT_INTERVAL
HEARTBEAT_PATIENCE = 2  # flwr.common.constant.HEARTBEAT_PATIENCE
SocketOption = tuple[int, int, int]


def _check(time_s: int, timeout_s: int) -> None:
    if not (isinstance(time_s, int) and isinstance(timeout_s, int)) or time_s < 1 or timeout_s < 1:
        raise ValueError(f"keepalive time and timeout must be positive integers, got {time_s!r}/{timeout_s!r}")


def socket_options(time_s: int, timeout_s: int) -> list[SocketOption]:
    """(level, option, value) for ``setsockopt`` on every Fleet connection, both ends."""
    _check(time_s, timeout_s)
    return [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, time_s),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, timeout_s),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_s * 1000),
    ]


def connect_timeout(timeout_s: int) -> float:
    return float(timeout_s)


def heartbeat_interval(time_s: int, timeout_s: int) -> int:
    """The SuperNode's heartbeat interval H (seconds) announced to and used with the SuperLink."""
    _check(time_s, timeout_s)
    return min(HEARTBEAT_FLOWER, max(HEARTBEAT_MIN, math.ceil((time_s + timeout_s) / HEARTBEAT_PATIENCE)))


_NAMES = {
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "SO_KEEPALIVE",
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): "TCP_KEEPIDLE",
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): "TCP_KEEPINTVL",
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): "TCP_KEEPCNT",
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT): "TCP_USER_TIMEOUT",
}


def describe(options: list[SocketOption]) -> str:
    return " ".join(f"{_NAMES.get((level, opt), opt)}={value}" for level, opt, value in options)
