"""OneGate down, 5xx bursts, slow answers, dropped connections: every call is bounded in attempts and
in time (a call that could block longer than its deadline fails the test), and publishing readiness
reports the degraded state instead of failing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from flower_ctx.onegate import OneGateClient, OneGateUnavailable
from flower_ctx.readiness import HealthResult, publish_ready
from tests.onegate_server import FakeVM, OneGateServer, access_for, assert_no_token

# Slack on top of a deadline for thread scheduling and socket teardown on a busy 2-core machine.
SLACK = 0.35


# Every test here: no issued token in DEBUG logs or in anything printed (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("no_token_in_output")


@pytest.fixture
def gate() -> Iterator[OneGateServer]:
    srv = OneGateServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _timed(fn: Callable[[], object]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def test_down_retries_a_bounded_number_of_times(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.go_down()
    client = OneGateClient(access_for(gate, vm), timeout=1.0, retries=3, backoff=0.05)
    elapsed, exc = _timed(client.get_vm)
    assert isinstance(exc, OneGateUnavailable)
    assert client.attempts == 4
    assert "connection refused" in str(exc) and "4 attempts" in str(exc)
    # 3 backoffs of at most 0.05, 0.1, 0.2 s; refused connections answer at once.
    assert elapsed < 0.35 + SLACK
    assert_no_token(str(exc))


def test_5xx_burst_shorter_than_the_retries_is_ridden_out(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.fail_next(2, status=503)
    client = OneGateClient(access_for(gate, vm), timeout=2.0, retries=3, backoff=0.02)
    client.update_vm({"FL_READY": "YES"})
    statuses = [r.status for r in gate.recorded(vm)]
    assert statuses == [503, 503, 200]
    assert gate.user_template(vm)["FL_READY"] == "YES"


def test_5xx_burst_longer_than_the_retries_fails_after_exactly_retries_plus_one(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.fail_next(50, status=500)
    client = OneGateClient(access_for(gate, vm), timeout=2.0, retries=2, backoff=0.02)
    elapsed, exc = _timed(client.get_vm)
    assert isinstance(exc, OneGateUnavailable) and "HTTP 500" in str(exc)
    assert len(gate.recorded(vm)) == 3
    assert elapsed < 0.06 + 0.2 + SLACK


def test_slow_server_each_attempt_cut_at_the_timeout(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.slow = 5.0
    client = OneGateClient(access_for(gate, vm), timeout=0.4, retries=2, backoff=0.02)
    elapsed, exc = _timed(client.get_vm)
    assert isinstance(exc, OneGateUnavailable) and "timed out" in str(exc)
    assert client.attempts == 3
    assert elapsed < 3 * 0.4 + 0.06 + SLACK


def test_a_trickling_answer_is_cut_at_the_attempt_timeout(gate: OneGateServer) -> None:
    """requests' read timeout is per socket read; the client bounds the whole exchange."""
    vm = gate.add_vm()
    gate.trickle = 0.05  # a /vm answer of ~250 bytes would take > 10 s
    client = OneGateClient(access_for(gate, vm), timeout=0.4, retries=1, backoff=0.02)
    elapsed, exc = _timed(client.get_vm)
    assert isinstance(exc, OneGateUnavailable) and "timed out" in str(exc)
    assert client.attempts == 2
    assert elapsed < 2 * 0.4 + 0.02 + SLACK


def test_dropped_connections_are_retried_and_bounded(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.drop_connections = True
    client = OneGateClient(access_for(gate, vm), timeout=1.0, retries=3, backoff=0.02)
    _, exc = _timed(lambda: client.update_vm({"A": "b"}))
    assert isinstance(exc, OneGateUnavailable)
    assert gate.dropped == 4 and client.attempts == 4


def test_comes_back_while_retrying(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.go_down()
    timer = threading.Timer(0.4, gate.go_up)
    timer.start()
    try:
        client = OneGateClient(access_for(gate, vm), timeout=1.0, retries=6, backoff=0.1)
        doc = client.get_vm()
    finally:
        timer.join()
    assert doc["VM"]["ID"] == str(vm.id)
    assert client.attempts >= 2


FAULTS: dict[str, Callable[[OneGateServer], None]] = {
    "down": lambda s: s.go_down(),
    "slow": lambda s: setattr(s, "slow", 30.0),
    "5xx": lambda s: s.fail_next(10_000),
    "drop": lambda s: setattr(s, "drop_connections", True),
    "trickle": lambda s: setattr(s, "trickle", 0.2),
}
CALLS: dict[str, Callable[[OneGateClient, FakeVM], object]] = {
    "get_vm": lambda c, vm: c.get_vm(),
    "get_vm_by_id": lambda c, vm: c.get_vm_by_id(vm.id),
    "get_service": lambda c, vm: c.get_service(),
    "update_vm": lambda c, vm: c.update_vm({"FL_READY": "YES"}),
    "delete_vm_attr": lambda c, vm: c.delete_vm_attr("READY"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("call", list(CALLS))
def test_no_call_outlives_its_deadline(gate: OneGateServer, fault: str, call: str) -> None:
    """Generous retries and timeouts, a short deadline: the deadline wins for every call and fault."""
    vm = gate.add_vm()
    FAULTS[fault](gate)
    deadline = 0.5
    client = OneGateClient(access_for(gate, vm), timeout=5.0, retries=50, backoff=0.05, deadline=deadline)
    elapsed, exc = _timed(lambda: CALLS[call](client, vm))
    if (call, fault) == ("update_vm", "trickle"):
        assert exc is None  # a successful update has an empty body: nothing to trickle
    else:
        assert isinstance(exc, OneGateUnavailable), exc
    assert elapsed <= deadline + SLACK, f"{call} under {fault} blocked {elapsed:.2f} s (deadline {deadline} s)"
    assert client.attempts <= 50


def test_publish_ready_with_onegate_down_reports_degraded_and_returns(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.go_down()
    client = OneGateClient(access_for(gate, vm), timeout=1.0, retries=2, backoff=0.05, deadline=1.0)
    called = []

    def health() -> HealthResult:
        called.append(True)
        return HealthResult(True)

    start = time.monotonic()
    result = publish_ready(client, {"FL_ROLE": "superlink"}, health)
    elapsed = time.monotonic() - start
    assert result.degraded and not result.ready and result.healthy
    assert called, "the health check still runs: the local state is reported"
    assert "OneGate" in (result.onegate_problem or "")
    assert elapsed < 1.0 + SLACK
    assert_no_token(result.onegate_problem or "")


def test_publish_ready_with_a_5xx_burst_completes(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    client = OneGateClient(access_for(gate, vm), timeout=2.0, retries=3, backoff=0.02)
    gate.fail_next(2)
    result = publish_ready(client, {"FL_ROLE": "superlink"}, lambda: HealthResult(True))
    assert result.ready and not result.degraded
    assert gate.user_template(vm)["READY"] == "YES"


def test_slow_onegate_during_publish_is_bounded(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.slow = 30.0
    client = OneGateClient(access_for(gate, vm), timeout=5.0, retries=5, backoff=0.05, deadline=0.6)
    start = time.monotonic()
    result = publish_ready(client, {"FL_ROLE": "superlink"}, lambda: HealthResult(True))
    assert time.monotonic() - start < 0.6 + SLACK
    assert result.degraded and not result.ready
