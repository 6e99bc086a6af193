"""Discovery polling: OneGate load during a 2-minute wait and detection delay after publication.

Runs the real ``discover_superlink`` and ``OneGateClient`` against the OneGate test double on
loopback, with a fake clock/sleep so that two minutes of waiting take a fraction of a second. The
SuperLink "publishes" at a chosen fake time; the SuperNode-side delay is the fake time from that
publication to discovery. Strategies: flower-ctx backoff (defaults 1..15 s, and 1..5 s) and the
fixed 10 s poll of the existing bash appliance (the baseline).

Usage: python bench/discovery.py   (prints a table; no assertion, no timing goal enforced)
"""

from __future__ import annotations

import os
import random
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flower_ctx.discovery import DiscoveryError, discover_superlink  # noqa: E402
from flower_ctx.onegate import OneGateClient  # noqa: E402
from tests.onegate_server import OneGateServer, access_for  # noqa: E402

WAIT_S = 120.0
PUBLISHED = {"FL_ROLE": "superlink", "FL_TLS": "NO", "FL_ENDPOINT": "192.0.2.77:9092"}


class FakeTime:
    def __init__(self, on_time: Callable[[float], None]) -> None:
        self.now = 0.0
        self._on_time = on_time

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self._on_time(self.now)


def _run(
    gate: OneGateServer, strategy: dict[str, float], publish_at: float | None, fixed: float | None
) -> tuple[float | None, int]:
    """One SuperNode waiting for one SuperLink. Returns (delay after publication, requests)."""
    sl = gate.add_vm("superlink_0", ips=("192.0.2.77",))
    sn = gate.add_vm("supernode_0")
    gate.add_service("flower", {"superlink": [sl], "supernode": [sn]}, service_id=1000 + sl.id)

    def on_time(now: float) -> None:
        if publish_at is not None and now >= publish_at and "FL_TLS" not in sl.user_template:
            with gate.lock:
                sl.user_template.update(PUBLISHED)

    ft = FakeTime(on_time)
    # The baseline sleeps exactly ``fixed`` seconds whatever discovery asks for.
    sleep = (lambda s: ft.sleep(min(fixed, WAIT_S * 2 - ft.now))) if fixed else ft.sleep
    client = OneGateClient(access_for(gate, sn), timeout=2.0, retries=0)
    try:
        discover_superlink(client, deadline_s=WAIT_S * 2, sleep=sleep, clock=ft.clock, **strategy)
        delay = ft.now - publish_at if publish_at is not None else None
    except DiscoveryError:
        delay = None
    return delay, len(gate.recorded(sn))


def main() -> None:
    random.seed(6)
    strategies: list[tuple[str, dict[str, float], float | None]] = [
        ("backoff 1..15 s (default)", {"initial_backoff": 1.0, "max_backoff": 15.0}, None),
        ("backoff 1..5 s", {"initial_backoff": 1.0, "max_backoff": 5.0}, None),
        ("fixed 10 s poll (baseline)", {"initial_backoff": 10.0, "max_backoff": 10.0}, 10.0),
    ]
    publish_times = [t / 2 for t in range(1, int(WAIT_S * 2) + 1)]  # 0.5 .. 120 s
    print("SuperNode waiting for its SuperLink through OneGate (fake clock, real HTTP on loopback)")
    print(f"publication at every 0.5 s from 0.5 to {WAIT_S:g} s; requests counted over a {WAIT_S:g} s wait\n")
    header = f"{'strategy':30} {'req/2min':>9} {'delay mean':>11} {'p95':>7} {'max':>7} {'delay@5s':>9} {'@30s':>6}"
    print(header)
    print("-" * len(header))
    rows = {}
    with OneGateServer() as gate:
        for name, strategy, fixed in strategies:
            _, load = _run(gate, strategy, WAIT_S, fixed)  # published only at the end of the wait
            load -= 1  # the poll that found it happened at WAIT_S: not part of the wait
            delays = [d for t in publish_times if (d := _run(gate, strategy, t, fixed)[0]) is not None]
            at5 = _run(gate, strategy, 5.0, fixed)[0]
            at30 = _run(gate, strategy, 30.0, fixed)[0]
            p95 = statistics.quantiles(delays, n=20)[-1]
            rows[name] = (load, statistics.mean(delays), max(delays))
            print(
                f"{name:30} {load:9d} {statistics.mean(delays):10.2f}s {p95:6.2f}s {max(delays):6.2f}s "
                f"{at5:8.2f}s {at30:5.2f}s"
            )
    base = rows["fixed 10 s poll (baseline)"]
    for name, (load, mean, worst) in rows.items():
        if name.startswith("fixed"):
            continue
        print(
            f"\n{name}: {load / base[0]:.2f}x the baseline's requests, mean delay {mean / base[1]:.2f}x, "
            f"worst delay {worst / base[2]:.2f}x"
        )


if __name__ == "__main__":
    main()
