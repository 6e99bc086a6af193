"""gRPC keepalive: the validated seconds turned into grpcio channel and server options.

Pure functions, no grpc import (DESIGN section 6). grpcio honours the *first* occurrence of a
duplicated key, so options are merged by replacing keys, never by appending.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# The lowest keepalive time the CONTEXT validator accepts (FL_GRPC_KEEPALIVE_TIME >= 10 s): a
# server allowing pings this often accepts every flower-ctx client by construction.
MIN_CLIENT_PING_INTERVAL_MS = 10_000

KEEPALIVE_TIME = "grpc.keepalive_time_ms"
KEEPALIVE_TIMEOUT = "grpc.keepalive_timeout_ms"
PERMIT_WITHOUT_CALLS = "grpc.keepalive_permit_without_calls"
MAX_PINGS_WITHOUT_DATA = "grpc.http2.max_pings_without_data"
# The real key. "grpc.http2.min_recv_ping_interval_without_data_ms" (older notes) does not exist and
# is silently ignored by grpcio.
MIN_PING_INTERVAL = "grpc.http2.min_ping_interval_without_data_ms"
MAX_PING_STRIKES = "grpc.http2.max_ping_strikes"

Option = tuple[str, Any]


def _check(time_s: int, timeout_s: int) -> None:
    if not (isinstance(time_s, int) and isinstance(timeout_s, int)) or time_s < 1 or timeout_s < 1:
        raise ValueError(f"keepalive time and timeout must be positive integers, got {time_s!r}/{timeout_s!r}")


def client_options(time_s: int, timeout_s: int) -> list[tuple[str, int]]:
    """Options of a SuperNode's client channel: ping after ``time_s`` idle, dead after ``timeout_s``."""
    _check(time_s, timeout_s)
    return [
        (KEEPALIVE_TIME, time_s * 1000),
        (KEEPALIVE_TIMEOUT, timeout_s * 1000),
        # Ping with no call in flight too: the poll loop leaves gaps between calls.
        (PERMIT_WITHOUT_CALLS, 1),
        # Without this grpcio sends 2 pings and then throttles to one per minute while no data flows.
        (MAX_PINGS_WITHOUT_DATA, 0),
    ]


def server_options(time_s: int, timeout_s: int) -> list[tuple[str, int]]:
    """Options of the SuperLink's servers: its own keepalive plus a ping policy that never GOAWAYs
    a flower-ctx client (``too_many_pings``)."""
    return [
        *client_options(time_s, timeout_s),
        (MIN_PING_INTERVAL, MIN_CLIENT_PING_INTERVAL_MS),
        (MAX_PING_STRIKES, 0),  # 0 = never send GOAWAY for pings
    ]


def merge_options(existing: Iterable[Sequence[Any]] | None, ours: Iterable[Sequence[Any]]) -> list[Option]:
    """``existing`` with every key of ``ours`` replaced by our value (first position kept), our
    other keys appended. Duplicates of our keys in ``existing`` are dropped: the first one would win."""
    ours_map: dict[str, Any] = {}
    for key, value in ours:
        ours_map.setdefault(key, value)
    merged: list[Option] = []
    placed: set[str] = set()
    for item in existing or ():
        key, value = item[0], item[1]
        if key in ours_map:
            if key not in placed:
                merged.append((key, ours_map[key]))
                placed.add(key)
            continue
        merged.append((key, value))
    merged.extend((key, value) for key, value in ours_map.items() if key not in placed)
    return merged


def describe(options: Iterable[Sequence[Any]]) -> str:
    """Short ``key=value`` text of the keepalive keys in ``options`` (for log lines)."""
    keys = (KEEPALIVE_TIME, KEEPALIVE_TIMEOUT, PERMIT_WITHOUT_CALLS, MAX_PINGS_WITHOUT_DATA,
            MIN_PING_INTERVAL, MAX_PING_STRIKES)
    values = {item[0]: item[1] for item in reversed(list(options))}  # first occurrence wins
    return " ".join(f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in keys if k in values)
