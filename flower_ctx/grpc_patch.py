"""Put the agent's keepalive options on every grpcio channel and server created in this process.

Two layers (research note grpc-keepalive.md section 2):
- ``deep``: wraps the private constructors ``grpc._channel.Channel.__init__`` and
  ``grpc._server._Server.__init__``. Every sync channel and server passes through them, however the
  public function was imported (``from grpc import secure_channel`` bound earlier included).
- ``public``: wraps ``grpc.insecure_channel``, ``grpc.secure_channel`` and ``grpc.server``; catches
  only callers that look the function up on the module after installation.
The deep layer is used when its private hooks have the expected shape and a self-test sees them
fire; otherwise the public layer is installed (and self-tested). ``grpc.aio`` is not covered:
Flower 1.39 does not use it.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import FlowerCtxError
from .keepalive import describe, merge_options

log = logging.getLogger("flower_ctx.grpc_patch")

DEEP = "deep"
PUBLIC = "public"


class PatchError(FlowerCtxError):
    """The keepalive patch could not be installed on any layer."""


@dataclass
class _State:
    layer: str
    client_options: list[tuple[str, Any]]
    server_options: list[tuple[str, Any]]
    server_interceptors: list[Any] = field(default_factory=list)  # added to every server (trust report)
    # (owner object, attribute name, original value): restored by uninstall().
    originals: list[tuple[Any, str, Any]] = field(default_factory=list)
    channels: int = 0
    servers: int = 0
    # Set during the self-test: its throw-away objects are recorded here, not counted or logged.
    probe: list[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE: _State | None = None


def installed_layer() -> str | None:
    """The layer in force, or None when the patch is not installed."""
    return _STATE.layer if _STATE is not None else None


def counts() -> tuple[int, int]:
    """(channels, servers) patched so far, self-test objects excluded."""
    if _STATE is None:
        return (0, 0)
    return (_STATE.channels, _STATE.servers)


def _rebind(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            ours: list[tuple[str, Any]]) -> tuple[inspect.BoundArguments, list[tuple[str, Any]]]:
    """Bind a call to ``func``'s signature and replace its ``options`` by the merged list."""
    bound = inspect.signature(func).bind(*args, **kwargs)
    merged = merge_options(bound.arguments.get("options"), ours)
    bound.arguments["options"] = merged
    return bound, merged


def _note(kind: str, merged: list[tuple[str, Any]], detail: str) -> None:
    state = _STATE
    if state is None:
        return
    with state.lock:
        if state.probe is not None:
            ours = state.client_options if kind == "channel" else state.server_options
            if all(item in merged for item in ours):
                state.probe.append(kind)
            return
        if kind == "channel":
            state.channels += 1
        else:
            state.servers += 1
    log.info("gRPC %s patched (%s layer)%s: %s", kind, state.layer, detail, describe(merged))


def _channel_detail(bound: inspect.BoundArguments) -> str:
    target = bound.arguments.get("target")
    secure = bound.arguments.get("credentials") is not None
    return f" target={target} secure={'yes' if secure else 'no'}"


def _wrap_channel_ctor(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = _STATE
        if state is None:
            return original(*args, **kwargs)
        bound, merged = _rebind(original, args, kwargs, state.client_options)
        result = original(*bound.args, **bound.kwargs)
        _note("channel", merged, _channel_detail(bound))
        return result

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__flower_ctx_patch__ = True  # type: ignore[attr-defined]
    return wrapper


def _wrap_server_ctor(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = _STATE
        if state is None:
            return original(*args, **kwargs)
        bound, merged = _rebind(original, args, kwargs, state.server_options)
        if state.server_interceptors and state.probe is None:
            bound.arguments["interceptors"] = [*(bound.arguments.get("interceptors") or ()), *state.server_interceptors]
        result = original(*bound.args, **bound.kwargs)
        _note("server", merged, "")
        return result

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__flower_ctx_patch__ = True  # type: ignore[attr-defined]
    return wrapper


def _has_options_param(func: Any) -> bool:
    try:
        return "options" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _deep_hooks() -> list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] | None:
    """The private constructors to wrap, or None when this grpcio does not have them as expected."""
    try:
        from grpc import _channel, _server
    except ImportError:
        return None
    channel_cls = getattr(_channel, "Channel", None)
    server_cls = getattr(_server, "_Server", None)
    if not (isinstance(channel_cls, type) and isinstance(server_cls, type)):
        return None
    channel_init = channel_cls.__dict__.get("__init__")
    server_init = server_cls.__dict__.get("__init__")
    if not (_has_options_param(channel_init) and _has_options_param(server_init)):
        return None
    return [(channel_cls, "__init__", _wrap_channel_ctor), (server_cls, "__init__", _wrap_server_ctor)]


def _public_hooks() -> list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]:
    import grpc

    return [
        (grpc, "insecure_channel", _wrap_channel_ctor),
        (grpc, "secure_channel", _wrap_channel_ctor),
        (grpc, "server", _wrap_server_ctor),
    ]


def _apply(state: _State, hooks: Sequence[tuple[Any, str, Callable[..., Any]]]) -> None:
    for owner, name, make in hooks:
        original = getattr(owner, name) if not isinstance(owner, type) else owner.__dict__[name]
        state.originals.append((owner, name, original))
        setattr(owner, name, make(original))


def _restore(state: _State) -> None:
    for owner, name, original in reversed(state.originals):
        setattr(owner, name, original)
    state.originals.clear()


def _self_test(state: _State) -> bool:
    """Create one channel and one server through the public API; the patch must see both."""
    from concurrent import futures

    import grpc

    seen: list[str] = []
    state.probe = seen
    try:
        channel = grpc.insecure_channel("127.0.0.1:9")  # never connects: channels are lazy
        channel.close()
        pool = futures.ThreadPoolExecutor(max_workers=1)
        try:
            server = grpc.server(pool)
            server.stop(None)
        finally:
            pool.shutdown(wait=False)
    finally:
        state.probe = None
    return "channel" in seen and "server" in seen


def install(client_options: list[tuple[str, Any]], server_options: list[tuple[str, Any]],
            *, layer: str = "auto", server_interceptors: Sequence[Any] = ()) -> str:
    """Install the patch (``layer``: auto, deep or public) and self-test it. Returns the layer used.
    ``server_interceptors`` are added to every gRPC server created afterwards."""
    global _STATE
    if _STATE is not None:
        uninstall()
    candidates = [DEEP, PUBLIC] if layer == "auto" else [layer]
    reasons: list[str] = []
    for name in candidates:
        hooks = _deep_hooks() if name == DEEP else _public_hooks()
        if hooks is None:
            reasons.append(f"{name}: grpcio private constructors not found or changed shape")
            continue
        state = _State(name, list(client_options), list(server_options), list(server_interceptors))
        _apply(state, hooks)
        _STATE = state
        if _self_test(state):
            if reasons:
                log.warning("gRPC keepalive patch: %s; using the %s layer", "; ".join(reasons), name)
            return name
        reasons.append(f"{name}: self-test did not see the patched constructors")
        _restore(state)
        _STATE = None
    raise PatchError("cannot apply gRPC keepalive options: " + "; ".join(reasons))


def uninstall() -> None:
    """Restore grpcio's constructors (tests; a process normally keeps the patch for its lifetime)."""
    global _STATE
    if _STATE is not None:
        _restore(_STATE)
        _STATE = None
