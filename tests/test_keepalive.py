"""keepalive option lists and the gRPC patch (deep layer, public fallback, self-test)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc import insecure_channel as bound_insecure_channel  # bound before the patch is installed
from grpc import secure_channel as bound_secure_channel
from grpc import server as bound_server
from hypothesis import given
from hypothesis import strategies as st

from flower_ctx.runtime import grpc_keepalive as ka
from flower_ctx.runtime import grpc_patch

# ---------------------------------------------------------------- option lists (DESIGN section 6)


@given(st.integers(10, 7200), st.integers(1, 600))
def test_option_lists_follow_the_design_table(time_s: int, timeout_s: int) -> None:
    client = dict(ka.client_options(time_s, timeout_s))
    server = dict(ka.server_options(time_s, timeout_s))
    assert client == {
        "grpc.keepalive_time_ms": time_s * 1000,
        "grpc.keepalive_timeout_ms": timeout_s * 1000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    assert server == {
        **client,
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.http2.max_ping_strikes": 0,
    }
    assert len(ka.server_options(time_s, timeout_s)) == len(server)  # no duplicate key


def test_the_non_existent_server_key_is_never_used() -> None:
    keys = [k for k, _ in ka.server_options(60, 20)]
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in keys


@pytest.mark.parametrize("bad", [(0, 1), (1, 0), (-5, 1), (2.5, 1)])
def test_option_lists_reject_non_positive_integers(bad: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError):
        ka.client_options(*bad)


keys = st.sampled_from(["a", "b", "grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.x"])
option_lists = st.lists(st.tuples(keys, st.integers(-5, 5)), max_size=8)


@given(option_lists, option_lists)
def test_merge_replaces_keys_and_never_duplicates(existing: list, ours: list) -> None:
    merged = ka.merge_options(existing, ours)
    ours_first = {}
    for k, v in ours:
        ours_first.setdefault(k, v)
    merged_keys = [k for k, _ in merged]
    for k, v in ours_first.items():
        assert merged_keys.count(k) == 1 and dict(merged)[k] == v
    # Everything else of ``existing`` survives, in order.
    assert [o for o in merged if o[0] not in ours_first] == [tuple(o) for o in existing if o[0] not in ours_first]
    assert ka.merge_options(merged, ours) == merged  # idempotent


def test_merge_keeps_the_position_of_a_replaced_key() -> None:
    existing = [("grpc.max_send_message_length", 7), ("grpc.keepalive_time_ms", 210000), ("x", 1)]
    merged = ka.merge_options(existing, ka.client_options(2, 1))
    assert merged[:3] == [("grpc.max_send_message_length", 7), ("grpc.keepalive_time_ms", 2000), ("x", 1)]


# ---------------------------------------------------------------- the patch


@pytest.fixture(autouse=True)
def _no_patch_left() -> Iterator[None]:
    yield
    grpc_patch.uninstall()


class Spy:
    """Stands in for grpcio's private constructors *below* the patch: records what grpcio receives."""

    def __init__(self) -> None:
        self.channel_options: list[list] = []
        self.server_options: list[list] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from grpc import _channel, _server

        real_channel = _channel.Channel.__init__
        real_server = _server._Server.__init__
        spy = self

        def channel_init(self: Any, target: str, options: Any, credentials: Any, compression: Any) -> None:
            spy.channel_options.append(list(options))
            real_channel(self, target, options, credentials, compression)

        def server_init(self: Any, thread_pool: Any, generic_handlers: Any, interceptors: Any, options: Any,
                        maximum_concurrent_rpcs: Any, compression: Any, xds: Any) -> None:
            spy.server_options.append(list(options))
            real_server(self, thread_pool, generic_handlers, interceptors, options, maximum_concurrent_rpcs,
                        compression, xds)

        monkeypatch.setattr(_channel.Channel, "__init__", channel_init)
        monkeypatch.setattr(_server._Server, "__init__", server_init)


def _make_all() -> None:
    from concurrent import futures

    flower_opts = [("grpc.max_send_message_length", 123), ("grpc.keepalive_time_ms", 210000)]
    bound_insecure_channel("127.0.0.1:9", options=flower_opts).close()
    bound_secure_channel("127.0.0.1:9", grpc.ssl_channel_credentials(), options=flower_opts).close()
    pool = futures.ThreadPoolExecutor(max_workers=1)
    bound_server(pool, options=[("grpc.keepalive_permit_without_calls", 0)]).stop(None)
    pool.shutdown(wait=False)


def test_deep_layer_catches_functions_imported_before_installation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spy = Spy()
    spy.install(monkeypatch)
    caplog.set_level(logging.INFO, logger="flower_ctx.grpc_patch")
    assert grpc_patch.install(ka.client_options(2, 1), ka.server_options(2, 1)) == "deep"
    spy.channel_options.clear()
    spy.server_options.clear()
    _make_all()

    assert len(spy.channel_options) == 2 and len(spy.server_options) == 1
    for options in spy.channel_options:
        assert options[0] == ("grpc.max_send_message_length", 123)  # Flower's own options kept
        assert [k for k, _ in options].count("grpc.keepalive_time_ms") == 1
        assert set(ka.client_options(2, 1)) <= set(options)
    assert set(ka.server_options(2, 1)) <= set(spy.server_options[0])
    assert ("grpc.keepalive_permit_without_calls", 0) not in spy.server_options[0]
    assert grpc_patch.counts() == (2, 1)  # the self-test's own objects are not counted
    lines = [r.getMessage() for r in caplog.records if "patched" in r.getMessage()]
    assert len(lines) == 3
    assert any("target=127.0.0.1:9 secure=yes" in line and "keepalive_time_ms=2000" in line for line in lines)
    assert any(line.startswith("gRPC server patched") and "max_ping_strikes=0" in line for line in lines)


def test_falls_back_to_the_public_layer_when_the_private_hook_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from grpc import _channel

    seen: list[list] = []
    real = _channel.Channel.__init__

    def reshaped(self: Any, *args: Any, **kwargs: Any) -> None:  # a grpcio whose constructor changed shape
        seen.append(list(args[1]))
        real(self, *args, **kwargs)

    monkeypatch.setattr(_channel.Channel, "__init__", reshaped)
    caplog.set_level(logging.WARNING, logger="flower_ctx.grpc_patch")
    assert grpc_patch.install(ka.client_options(2, 1), ka.server_options(2, 1)) == "public"
    assert "using the public layer" in caplog.text
    seen.clear()
    grpc.insecure_channel("127.0.0.1:9", options=[("grpc.keepalive_time_ms", 5)]).close()
    assert set(ka.client_options(2, 1)) <= set(seen[-1]) and ("grpc.keepalive_time_ms", 5) not in seen[-1]
    # The public layer's known limit: a function bound before installation is not caught.
    bound_insecure_channel("127.0.0.1:9").close()
    assert seen[-1] == []
    grpc_patch.uninstall()
    assert grpc.insecure_channel is bound_insecure_channel  # restored


def test_forcing_the_deep_layer_without_its_hook_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from grpc import _server

    monkeypatch.delattr(_server._Server, "__init__")  # falls back to grpc.Server's: no options parameter
    with pytest.raises(grpc_patch.PatchError, match="deep"):
        grpc_patch.install(ka.client_options(2, 1), ka.server_options(2, 1), layer="deep")
    assert grpc_patch.installed_layer() is None


def test_uninstall_restores_grpcio() -> None:
    from grpc import _channel, _server

    before = (_channel.Channel.__init__, _server._Server.__init__)
    grpc_patch.install(ka.client_options(2, 1), ka.server_options(2, 1))
    assert _channel.Channel.__init__ is not before[0]
    grpc_patch.uninstall()
    assert (_channel.Channel.__init__, _server._Server.__init__) == before
