"""The agent's gRPC options observed on the wire: plain grpcio servers and clients on loopback,
through the HTTP/2 frame-decoding relay.

- The server options are in force: a client pinging every second while idle is never sent GOAWAY by
  a server built with the agent's options, and is sent ``too_many_pings`` by Flower's stock server.
- Guard: every option key the agent sets changes observable behaviour when removed (grpcio silently
  ignores a key it does not know, so comparing names would prove nothing).
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from flower_ctx.runtime import grpc_keepalive as ka
from tests.conftest import requires_flower
from tests.runtime_helpers import FrameEvent, FrameRelay, free_port, goaways, is_acked, keepalive_pings

pytestmark = pytest.mark.slow

ENHANCE_YOUR_CALM = 0xB
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


def _handler() -> grpc.GenericRpcHandler:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    return grpc.method_handlers_generic_handler("t", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


def _user_timeouts(port: int) -> list[int]:
    """TCP_USER_TIMEOUT (ms) of grpcio's own connected sockets in this process that use ``port``
    (grpcio's sockets are AF_INET6 dual-stack; the relay's are AF_INET and skipped)."""
    values = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            s = socket.socket(fileno=fd)
        except OSError:  # not a socket
            os.close(fd)
            continue
        with s:
            if s.type != socket.SOCK_STREAM or s.family != socket.AF_INET6:
                continue
            try:
                ends = (s.getsockname()[1], s.getpeername()[1])
            except OSError:
                continue
            if port in ends:
                values.append(s.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT))
    return values


@dataclass
class Observed:
    events: list[FrameEvent] = field(default_factory=list)
    client_user_timeouts: list[int] = field(default_factory=list)
    server_user_timeouts: list[int] = field(default_factory=list)
    start: float = 0.0

    def keepalive(self, direction: str) -> list[FrameEvent]:
        return [p for p, _ in keepalive_pings(self.events, direction=direction, min_idle=0.7) if p.t >= self.start]

    def too_many_pings(self) -> bool:
        return any(g.direction == "s2c" and g.error_code == ENHANCE_YOUR_CALM and g.debug == b"too_many_pings"
                   for g in goaways(self.events))


def run_idle(server_factory: Callable[[int], grpc.Server], client_options: list, idle: float) -> Observed:
    """Server <- relay <- client: one RPC, then ``idle`` seconds with no call in flight."""
    port = free_port()
    server = server_factory(port)
    server.start()
    try:
        with FrameRelay(("127.0.0.1", port)) as relay:
            channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=client_options)
            try:
                assert channel.unary_unary("/t/Echo")(b"hi", timeout=10, wait_for_ready=True) == b"hi"
                obs = Observed(start=time.monotonic())
                time.sleep(idle)
                obs.client_user_timeouts = _user_timeouts(relay.port)
                obs.server_user_timeouts = _user_timeouts(port)
                obs.events = relay.snapshot()
                return obs
            finally:
                channel.close()
    finally:
        server.stop(None)


def plain_server(options: list) -> Callable[[int], grpc.Server]:
    def make(port: int) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        server.add_generic_rpc_handlers((_handler(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        return server

    return make


def flower_stock_server(port: int) -> grpc.Server:
    """A server built by Flower 1.39's own ``generic_create_grpc_server`` (its stock options)."""
    from flwr.supercore.grpc import generic_create_grpc_server

    def add(_servicer: Any, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((_handler(),))

    return generic_create_grpc_server((None, add), f"127.0.0.1:{port}", max_concurrent_workers=2)


def without(options: list, key: str) -> list:
    return [o for o in options if o[0] != key]


def _parallel(jobs: dict[str, Callable[[], Observed]], workers: int = 24) -> dict[str, Observed]:
    # Each rig holds a few dozen descriptors (grpcio's pollers, the relay's loop): raise the soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(8192, hard)), hard))
    with futures.ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        running = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result(timeout=60) for name, f in running.items()}


@requires_flower
def test_agent_server_tolerates_a_pinging_client_where_flower_stock_sends_goaway() -> None:
    client = ka.client_options(1, 1)  # pings every second while idle
    got = _parallel({
        "agent": lambda: run_idle(plain_server(ka.server_options(60, 20)), client, 8.0),
        "stock": lambda: run_idle(flower_stock_server, client, 8.0),
    })
    agent, stock = got["agent"], got["stock"]
    pings = agent.keepalive("c2s")
    print(f"\nagent server: {len(pings)} client pings in 8 s, GOAWAY: {goaways(agent.events)}; "
          f"stock Flower server: GOAWAY {[(g.error_code, g.debug) for g in goaways(stock.events)]}")
    assert len(pings) >= 6 and all(is_acked(p, agent.events) for p in pings)
    assert goaways(agent.events) == []
    assert stock.too_many_pings()


def test_every_option_key_the_agent_sets_is_honoured_by_grpcio() -> None:
    client_full = ka.client_options(1, 1)
    server_full = ka.server_options(1, 1)
    permissive = ka.server_options(60, 20)  # the agent's defaults: accepts the client's pings, pings rarely
    # Under strikes>0 the min-interval key decides GOAWAY; a 500 ms value (below the client's 1 s) shows
    # the key name is read: with it no GOAWAY, without it (5 min default) too_many_pings.
    strict = without(ka.server_options(60, 20), ka.MAX_PING_STRIKES)
    strict_min = [*without(strict, ka.MIN_PING_INTERVAL), (ka.MIN_PING_INTERVAL, 500)]

    def c_pings(o: Observed) -> int:
        return len(o.keepalive("c2s"))

    def s_pings(o: Observed) -> int:
        return len(o.keepalive("s2c"))

    # key -> (job with the key, job without it, observation, check(with, without))
    cases: dict[str, tuple[Callable[[], Observed], Callable[[], Observed], Callable[[Observed], Any],
                           Callable[[Any, Any], bool]]] = {}
    assert set(dict(client_full)) <= set(dict(server_full))
    for key in dict(client_full):
        obs: Callable[[Observed], Any] = c_pings
        check: Callable[[Any, Any], bool] = lambda w, wo: w >= 3 and wo == 0  # noqa: E731
        if key == ka.MAX_PINGS_WITHOUT_DATA:
            check = lambda w, wo: w >= 3 and wo <= 2  # noqa: E731
        if key == ka.KEEPALIVE_TIMEOUT:
            obs, check = (lambda o: o.client_user_timeouts), (lambda w, wo: w == [1000] and wo and wo != [1000])
        cases[f"client {key}"] = (
            lambda: run_idle(plain_server(permissive), client_full, 5.0),
            lambda k=key: run_idle(plain_server(permissive), without(client_full, k), 5.0),
            obs, check)
    for key in dict(server_full):
        obs, check = s_pings, (lambda w, wo: w >= 3 and wo == 0)
        with_job = lambda: run_idle(plain_server(server_full), [], 5.0)  # noqa: E731
        without_job = lambda k=key: run_idle(plain_server(without(server_full, k)), [], 5.0)  # noqa: E731
        if key == ka.MAX_PINGS_WITHOUT_DATA:
            # grpcio 1.85 applies this key to clients only (proven by the client case above, same
            # name): a server never throttles its own pings. The agent's 0 (unlimited) is exactly what
            # a server does anyway, so the observation is "unlimited either way" (and stays so).
            check = lambda w, wo: w >= 3 and wo >= 3  # noqa: E731
        elif key == ka.KEEPALIVE_TIMEOUT:
            obs, check = (lambda o: o.server_user_timeouts), (lambda w, wo: w == [1000] and wo and wo != [1000])
        elif key == ka.MAX_PING_STRIKES:
            obs, check = (lambda o: o.too_many_pings()), (lambda w, wo: w is False and wo is True)
            with_job = lambda: run_idle(plain_server(permissive), client_full, 10.0)  # noqa: E731
            without_job = lambda: run_idle(plain_server(without(permissive, ka.MAX_PING_STRIKES)),  # noqa: E731
                                           client_full, 10.0)
        elif key == ka.MIN_PING_INTERVAL:
            obs, check = (lambda o: o.too_many_pings()), (lambda w, wo: w is False and wo is True)
            with_job = lambda: run_idle(plain_server(strict_min), client_full, 10.0)  # noqa: E731
            without_job = lambda: run_idle(plain_server(strict), client_full, 10.0)  # noqa: E731
        cases[f"server {key}"] = (with_job, without_job, obs, check)

    # The key of older planning notes really is ignored: same rig as the min-interval case, GOAWAY.
    wrong = [*strict, ("grpc.http2.min_recv_ping_interval_without_data_ms", 500)]
    cases["server (wrong key) min_recv_ping_interval"] = (
        lambda: run_idle(plain_server(wrong), client_full, 10.0),
        lambda: run_idle(plain_server(strict), client_full, 10.0),
        lambda o: o.too_many_pings(), lambda w, wo: w is True and wo is True)

    jobs: dict[str, Callable[[], Observed]] = {}
    for name, (with_job, without_job, _, _) in cases.items():
        jobs[f"{name} +"] = with_job
        jobs[f"{name} -"] = without_job
    got = _parallel(jobs)
    failures = []
    for name, (_, _, obs, check) in cases.items():
        w, wo = obs(got[f"{name} +"]), obs(got[f"{name} -"])
        print(f"{name:58} with: {w!s:8} without: {wo}")
        if not check(w, wo):
            failures.append(f"{name}: with={w} without={wo}")
    assert not failures, "keys with no observable effect:\n" + "\n".join(failures)
