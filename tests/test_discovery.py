"""SuperLink discovery through OneGate: the real call sequence against the double, CA verification,
fallbacks, backoff, faults, and a SuperNode-side process that starts before the SuperLink publishes
and finds it within one backoff step of the publication."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flower_ctx.discovery import FINAL_POLL_S, DiscoveryError, discover_superlink, parse_endpoint
from flower_ctx.model import HostPort
from flower_ctx.onegate import OneGateClient, encode_value
from flower_ctx.readiness import HealthResult, publish_ready, superlink_attrs
from tests.factories import make_config
from tests.onegate_server import FakeVM, OneGateServer, access_for, assert_no_token, make_ca_pem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.fixture(scope="module")
def ca_pem() -> bytes:
    return make_ca_pem()


class FakeTime:
    """A clock and sleep for discover_superlink; ``at(t, fn)`` runs fn once fake time reaches t."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.start = self.now
        self.sleeps: list[float] = []
        self._hooks: list[tuple[float, Callable[[], None]]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        due = [h for h in self._hooks if h[0] <= self.now - self.start]
        self._hooks = [h for h in self._hooks if h not in due]
        for _, fn in due:
            fn()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._hooks.append((t, fn))


def _service(gate: OneGateServer, sl_ut: dict[str, str] | None = None, role: str = "superlink"):  # type: ignore[no-untyped-def]
    sl = gate.add_vm("superlink_0", ips=("192.0.2.77",), user_template=sl_ut or {})
    sn = gate.add_vm("supernode_0", ips=("192.0.2.88",))
    gate.add_service("flower", {role: [sl], "supernode": [sn]})
    return sl, sn


def _client(gate: OneGateServer, vm: FakeVM) -> OneGateClient:
    return OneGateClient(access_for(gate, vm), timeout=2.0, retries=1, backoff=0.01)


def _publish(gate: OneGateServer, sl: FakeVM, ca_pem: bytes, tls: bool = True) -> None:
    cfg = make_config("superlink", tls_enabled=tls)
    attrs = superlink_attrs(cfg, ca_pem=ca_pem if tls else None, endpoint=HostPort("192.0.2.77", 9092))
    assert publish_ready(_client(gate, sl), attrs, lambda: HealthResult(True)).ready


def _fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


# -- the happy paths -------------------------------------------------------------------------------


def test_finds_a_published_superlink_with_its_ca(gate: OneGateServer, ca_pem: bytes) -> None:
    sl, sn = _service(gate)
    _publish(gate, sl, ca_pem)
    found = discover_superlink(_client(gate, sn), deadline_s=5)
    assert found.endpoint == HostPort("192.0.2.77", 9092)
    assert found.tls and found.ca_pem == ca_pem
    assert found.ca_fingerprint == _fingerprint(ca_pem)
    assert found.vm_id == str(sl.id)
    assert [r.path for r in gate.recorded(sn)] == ["/service", f"/vms/{sl.id}"]


def test_tls_off_has_no_ca(gate: OneGateServer) -> None:
    sl, sn = _service(gate)
    _publish(gate, sl, b"", tls=False)
    found = discover_superlink(_client(gate, sn), deadline_s=5)
    assert (found.tls, found.ca_pem, found.ca_fingerprint) == (False, None, None)


def test_falls_back_to_the_first_nic_ip_and_port_9092(gate: OneGateServer) -> None:
    sl, sn = _service(gate, {"FL_TLS": "NO"})
    found = discover_superlink(_client(gate, sn), deadline_s=5)
    assert found.endpoint == HostPort("192.0.2.77", 9092)


def test_role_name_is_case_insensitive(gate: OneGateServer) -> None:
    sl, sn = _service(gate, {"FL_TLS": "NO", "FL_ENDPOINT": "192.0.2.5:19092"}, role="SuperLink")
    assert discover_superlink(_client(gate, sn), deadline_s=5).endpoint == HostPort("192.0.2.5", 19092)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.5:9092", "10.0.0.5", 9092),
        ("2001:db8::5:9092", "2001:db8::5", 9092),
        ("[2001:db8::5]:9093", "2001:db8::5", 9093),
        ("superlink.example:443", "superlink.example", 443),
        ("10.0.0.5", "10.0.0.5", 9092),
    ],
)
def test_parse_endpoint(text: str, host: str, port: int) -> None:
    assert parse_endpoint(text) == HostPort(host, port)


@pytest.mark.parametrize("text", ["", ":9092", "10.0.0.5:0", "10.0.0.5:99999", "[2001:db8::5", "a:b:c", "x:port"])
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


# -- what is missing is named ----------------------------------------------------------------------


def test_fingerprint_mismatch_is_never_accepted(gate: OneGateServer, ca_pem: bytes) -> None:
    other = make_ca_pem("another CA")
    sl, sn = _service(
        gate, {"FL_TLS": "YES", "FL_CA_CERT": encode_value(ca_pem), "FL_CA_FINGERPRINT": _fingerprint(other)}
    )
    ft = FakeTime()
    with pytest.raises(DiscoveryError) as err:
        discover_superlink(_client(gate, sn), deadline_s=60, sleep=ft.sleep, clock=ft.clock)
    assert "FL_CA_FINGERPRINT" in str(err.value) and _fingerprint(other) in str(err.value)


@pytest.mark.parametrize(
    ("ut", "needle"),
    [
        ({}, "has not published FL_TLS"),
        ({"FL_TLS": "YES"}, "has not published FL_CA_CERT"),
        ({"FL_TLS": "YES", "FL_CA_CERT": "!!notbase64"}, "unusable FL_CA_CERT"),
        ({"FL_TLS": "YES", "FL_CA_CERT": encode_value(b"hello")}, "unusable FL_CA_CERT"),
        ({"FL_TLS": "NO", "FL_ENDPOINT": "nohost:"}, "FL_ENDPOINT"),
    ],
)
def test_deadline_error_names_what_was_missing(gate: OneGateServer, ut: dict[str, str], needle: str) -> None:
    sl, sn = _service(gate, ut)
    ft = FakeTime()
    with pytest.raises(DiscoveryError) as err:
        discover_superlink(_client(gate, sn), deadline_s=30, sleep=ft.sleep, clock=ft.clock)
    assert needle in str(err.value) and "FL_SUPERLINK_ADDRESS" in str(err.value)
    assert sum(ft.sleeps) == pytest.approx(30)


def test_no_superlink_role(gate: OneGateServer) -> None:
    sn = gate.add_vm()
    gate.add_service("only-nodes", {"supernode": [sn]})
    ft = FakeTime()
    with pytest.raises(DiscoveryError) as err:
        discover_superlink(_client(gate, sn), deadline_s=10, sleep=ft.sleep, clock=ft.clock)
    assert "no role named 'superlink'" in str(err.value)


def test_not_in_a_service_fails_at_once(gate: OneGateServer) -> None:
    sn = gate.add_vm()
    ft = FakeTime()
    with pytest.raises(DiscoveryError) as err:
        discover_superlink(_client(gate, sn), deadline_s=300, sleep=ft.sleep, clock=ft.clock)
    assert "not part of a OneFlow service" in str(err.value) and "FL_SUPERLINK_ADDRESS" in str(err.value)
    assert ft.sleeps == [] and len(gate.recorded(sn)) == 1


def test_bad_token_fails_at_once(gate: OneGateServer) -> None:
    sl, sn = _service(gate)
    client = OneGateClient(access_for(gate, sn, token="nope"), timeout=2, retries=3, backoff=0.01)
    ft = FakeTime()
    with pytest.raises(DiscoveryError) as err:
        discover_superlink(client, deadline_s=300, sleep=ft.sleep, clock=ft.clock)
    assert "401" in str(err.value) and ft.sleeps == []


# -- polling ---------------------------------------------------------------------------------------


def test_backoff_schedule_and_one_request_per_poll(gate: OneGateServer) -> None:
    sl, sn = _service(gate)
    ft = FakeTime()
    with pytest.raises(DiscoveryError):
        discover_superlink(
            _client(gate, sn), deadline_s=120, initial_backoff=1, max_backoff=15, sleep=ft.sleep, clock=ft.clock
        )
    steps = [min(2.0**k, 15.0) for k in range(len(ft.sleeps))]
    for got, step in zip(ft.sleeps[:-1], steps, strict=False):
        assert 0.8 * step <= got <= step  # jitter only shortens a step
    assert sum(ft.sleeps) == pytest.approx(120)
    recs = gate.recorded(sn)
    assert recs[0].path == "/service"
    assert all(r.path == f"/vms/{sl.id}" for r in recs[1:])  # ids known: one request per poll
    assert len(recs) == len(ft.sleeps) + 2
    print(f"\n2-minute wait, backoff 1..15 s: {len(recs)} OneGate requests")


def test_publication_during_the_wait_is_seen_within_one_step(gate: OneGateServer, ca_pem: bytes) -> None:
    sl, sn = _service(gate)
    ft = FakeTime()
    ft.at(37.0, lambda: _publish(gate, sl, ca_pem))
    found = discover_superlink(_client(gate, sn), deadline_s=300, sleep=ft.sleep, clock=ft.clock)
    assert found.ca_pem == ca_pem
    delay = ft.now - ft.start - 37.0
    assert 0 <= delay <= ft.sleeps[-1] <= 15.0


def test_a_replaced_superlink_vm_is_looked_up_again(gate: OneGateServer, ca_pem: bytes) -> None:
    old, sn = _service(gate)
    new = gate.add_vm("superlink_1", ips=("192.0.2.99",))

    def replace() -> None:
        svc = gate.services[21]
        role = next(r for r in svc.roles or [] if r.name == "superlink")
        role.node_ids.remove(old.id)
        gate.add_node(svc, role, new)
        _publish(gate, new, ca_pem)

    ft = FakeTime()
    ft.at(5.0, replace)
    found = discover_superlink(_client(gate, sn), deadline_s=60, sleep=ft.sleep, clock=ft.clock)
    assert found.vm_id == str(new.id)
    assert [r.path for r in gate.recorded(sn)].count("/service") == 2


def test_onegate_down_then_up(gate: OneGateServer, ca_pem: bytes) -> None:
    sl, sn = _service(gate)
    _publish(gate, sl, ca_pem)
    gate.go_down()
    ft = FakeTime()
    ft.at(20.0, gate.go_up)
    found = discover_superlink(_client(gate, sn), deadline_s=120, sleep=ft.sleep, clock=ft.clock)
    assert found.endpoint.port == 9092 and ft.now - ft.start >= 20.0


def test_discovery_never_outlives_its_deadline_against_a_slow_onegate(gate: OneGateServer) -> None:
    sl, sn = _service(gate)
    gate.slow = 30.0
    client = OneGateClient(access_for(gate, sn), timeout=10.0, retries=10, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(DiscoveryError) as err:
        discover_superlink(client, deadline_s=1.0, initial_backoff=0.1, max_backoff=0.2)
    elapsed = time.monotonic() - start
    assert elapsed <= 1.0 + FINAL_POLL_S + 0.35, elapsed
    assert "timed out" in str(err.value)


# -- a real SuperNode-side process ------------------------------------------------------------------

_SUPERNODE = r"""
import json, sys, time
from flower_ctx.discovery import discover_superlink
from flower_ctx.model import OneGateAccess, Secret
from flower_ctx.onegate import OneGateClient

cfg = json.loads(sys.stdin.readline())  # the token arrives on stdin: never argv or environment
access = OneGateAccess(cfg["endpoint"], cfg["vmid"], Secret(cfg.pop("token").encode()))
client = OneGateClient(access, timeout=2.0, retries=1, backoff=0.05)
print(json.dumps({"started": time.monotonic()}), flush=True)
found = discover_superlink(client, deadline_s=cfg["deadline"], initial_backoff=cfg["initial"], max_backoff=cfg["max"])
print(json.dumps({"found": time.monotonic(), "endpoint": str(found.endpoint), "tls": found.tls,
                  "fingerprint": found.ca_fingerprint, "ca": found.ca_pem.decode(), "requests": client.attempts}),
      flush=True)
"""


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from the SuperNode process within {timeout} s"
    return proc.stdout.readline()


def test_supernode_process_started_first_finds_the_superlink_within_one_backoff_step(
    gate: OneGateServer, ca_pem: bytes
) -> None:
    sl, sn = _service(gate)
    initial, max_backoff = 0.1, 0.8
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUPERNODE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdin is not None
        cfg = {
            "endpoint": gate.url,
            "vmid": str(sn.id),
            "token": sn.token,
            "deadline": 20,
            "initial": initial,
            "max": max_backoff,
        }
        proc.stdin.write(json.dumps(cfg) + "\n")
        proc.stdin.close()
        started = json.loads(_readline(proc, 20))["started"]
        time.sleep(2.5)  # the SuperNode polls, finds the VM but nothing published, backs off to 0.8 s
        waiting = len(gate.recorded(sn))
        assert waiting >= 3, "the SuperNode process should have been polling"
        _publish(gate, sl, ca_pem)
        published = next(r.time for r in gate.recorded(sl, "PUT") if "FL_ENDPOINT" in r.attrs)
        result = json.loads(_readline(proc, 10))
        proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert_no_token(out, err, json.dumps(result))
    delay = result["found"] - published
    elapsed_wait = published - started
    # Upper bound of polls in the wait: each sleep is at least 0.8 x its step.
    steps, t, polls = [], 0.0, 1
    while True:
        step = min(initial * 2 ** len(steps), max_backoff)
        if t + 0.8 * step > elapsed_wait:
            break
        steps.append(step)
        t += 0.8 * step
        polls += 1
    print(
        f"\nSuperNode process: publication seen {delay:.3f} s after it (backoff step {max_backoff} s); "
        f"{waiting} OneGate requests in the {elapsed_wait:.1f} s before publication"
    )
    assert 0 <= delay <= max_backoff + 0.3
    assert waiting <= polls + 1  # + the one GET /service
    assert result["endpoint"] == "192.0.2.77:9092" and result["tls"] is True
    assert result["ca"].encode() == ca_pem and result["fingerprint"] == _fingerprint(ca_pem)
