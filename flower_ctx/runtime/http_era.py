"""Flower 1.40, 1.41, 1.42: the Fleet API on HTTP/1.1, in the same FastAPI application (and on the
same uvicorn port) as the Control and Runtime APIs (docs/flower-eras.md).

Exposure. Flower has no flag that puts Fleet and Control on different addresses, and its open-source
Control API has no authentication. So Flower is started on loopback only (``--host 127.0.0.1 --port
8000``: Control, Runtime, SuperExec and ``flwr`` stay there), and flower-ctx replaces the one
``uvicorn.run`` call of ``flwr.superlink.cli.flower_superlink`` by the same server started on two
sockets it binds itself: Flower's loopback one and the public Fleet address of the runtime
configuration (``fleet_api_address``, 0.0.0.0:9092). Requests that arrive on the public socket pass
only when their method and path are exactly one of the application's own Fleet routes
(``POST /v1/fleet/...``) or ``GET|HEAD /health``; everything else gets the 404 of an unknown route.
If the hook is not taken (a Flower that changed), nothing listens publicly: it fails closed.

Keepalive (``http_keepalive``): the listening sockets carry SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT and
TCP_USER_TIMEOUT, which Linux copies to every accepted connection; on the SuperNode,
``ProtobufClient.__init__`` (the base of Flower's ``FleetHttpClient``) gets an httpx transport with
the same socket options and a connect timeout of t, and the heartbeat interval is set from T and t.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import FlowerCtxError
from . import http_keepalive
from .common import common_tail, split_host_port, supernode_args, tls_args, trust_agent, trust_report_path

log = logging.getLogger("flower_ctx.run")

FLEET_PREFIX = "/v1/fleet/"
HEALTH = {("GET", "/health"), ("HEAD", "/health")}
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
UVICORN_STARTUP_FAILURE = 3  # uvicorn.main.STARTUP_FAILURE


class HookError(FlowerCtxError):
    """A hook of the HTTP era could not be placed: this Flower is not the one it was written for."""


def argv(doc: dict[str, Any]) -> list[str]:
    role = doc["role"]
    out = ["flower-superlink" if role == "superlink" else "flower-supernode", *tls_args(doc, role),
           "--isolation", doc["isolation"]]
    if role == "superlink":
        # No --fleet-api-type/--fleet-api-address: deprecated, and meaningful only for the legacy
        # gRPC Fleet server (FLWR_INTERNAL_GRPC_FLEET_API=1), which flower-ctx does not start.
        out += ["--database", doc["database"]]
        if doc.get("supernode_auth"):
            out += ["--enable-supernode-auth"]
    else:
        out += supernode_args(doc)  # --superlink is the HTTP Fleet address, host:port without scheme
    return out + common_tail(doc)


def install(doc: dict[str, Any]) -> str:
    ka = doc["keepalive"]
    time_s, timeout_s = int(ka["time_s"]), int(ka["timeout_s"])
    if doc["role"] == "superlink":
        return install_superlink(time_s, timeout_s, split_host_port(doc["fleet_api_address"]),
                                 trust_report=trust_report_path(doc))
    return install_supernode(time_s, timeout_s, user_agent=trust_agent(doc))


# ---------------------------------------------------------------- SuperLink: the Fleet-only listener


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
NOT_FOUND = b'{"detail":"Not Found"}'


def fleet_routes(app: Any) -> frozenset[tuple[str, str]]:
    """(method, path) of the application's Fleet routes, read from the application itself (FastAPI
    0.13x keeps included routers nested: ``iter_route_contexts`` flattens them with full paths)."""
    routes: Iterable[Any] = getattr(app, "routes", ())
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]

        routes = list(iter_route_contexts(list(routes)))
    except ImportError:
        pass
    out = set()
    for route in routes:
        path = getattr(route, "path", "")
        if isinstance(path, str) and path.startswith(FLEET_PREFIX):
            out.update((m, path) for m in (getattr(route, "methods", None) or ()))
    return frozenset(out)


class FleetOnlyOnPublic:
    """ASGI: connections that arrived on ``public_port`` reach only ``allowed`` (method, path) pairs;
    the loopback listener (another port) reaches the whole application. The path checked is the
    ASGI ``path`` the router matches too, compared whole: no prefix or normalisation differences."""

    def __init__(self, app: Any, public_port: int, allowed: Iterable[tuple[str, str]], recorder: Any = None) -> None:
        self.app = app
        self.public_port = public_port
        self.allowed = frozenset(allowed)
        self.recorder = recorder  # trust.Recorder: which CAs each SuperNode announces (CA rotation)

    def admits(self, scope: Scope) -> bool:
        if scope.get("type") not in ("http", "websocket"):
            return True  # lifespan: the application's own start-up and shutdown
        server = scope.get("server") or (None, None)
        if server[1] != self.public_port:
            return True
        if scope["type"] != "http" or scope.get("root_path"):
            return False
        return (scope.get("method", ""), scope.get("path", "")) in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.admits(scope):
            if self.recorder is not None and scope.get("type") == "http":
                try:
                    self.recorder.note_http(scope.get("headers"))
                except Exception:  # never in Flower's way
                    log.debug("trust report: could not note a request", exc_info=True)
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(NOT_FOUND)).encode())]})
        await send({"type": "http.response.body", "body": NOT_FOUND})


def bind_listener(host: str, port: int, options: list[tuple[int, int, int]]) -> socket.socket:
    """A listening TCP socket with ``options`` (inherited by accepted sockets on Linux). A wildcard
    host (0.0.0.0 or ::) binds dual-stack [::] where IPv6 exists, as gRPC's Fleet server did."""
    wildcard = host in ("0.0.0.0", "::", "")
    if wildcard:
        candidates = [(socket.AF_INET6, "::")] if socket.has_ipv6 else []
        if host != "::":
            candidates.append((socket.AF_INET, "0.0.0.0"))  # no IPv6 on this machine
    else:
        candidates = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    last: OSError = OSError(errno.EAFNOSUPPORT, f"cannot listen on {host}:{port}: no IPv6 here")
    for n, (family, addr) in enumerate(candidates):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            last = exc
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and wildcard:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for level, opt, value in options:
                sock.setsockopt(level, opt, value)
            sock.bind((addr, port))
            sock.listen(2048)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if n + 1 < len(candidates) and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue  # IPv6 present but unusable: the IPv4 wildcard
            raise
    raise last


def _superlink_run(public: tuple[str, int], options: list[tuple[int, int, int]],
                   original: Callable[..., Any], trust_report: Any = None) -> Callable[..., Any]:
    def run(app: Any, **kwargs: Any) -> None:
        import uvicorn

        host, port = str(kwargs.pop("host", "127.0.0.1")), int(kwargs.pop("port", 8000))
        kwargs.pop("workers", None)
        kwargs.pop("reload", None)
        if host not in LOOPBACK_HOSTS:
            log.error("Flower's own HTTP listener must be on loopback, got %s: not starting", host)
            sys.exit(UVICORN_STARTUP_FAILURE)
        if public[1] == port:
            log.error("the public Fleet port %s is Flower's own loopback port: not starting", port)
            sys.exit(UVICORN_STARTUP_FAILURE)
        allowed = fleet_routes(app)
        if not any(path.endswith("/pull-messages") for _, path in allowed):
            log.error("this Flower's application has no Fleet routes under %s: not starting", FLEET_PREFIX)
            sys.exit(UVICORN_STARTUP_FAILURE)
        recorder = None
        if trust_report is not None:
            from ..trust import Recorder

            recorder = Recorder(trust_report)
        config = uvicorn.Config(FleetOnlyOnPublic(app, public[1], allowed | HEALTH, recorder), host=host, port=port,
                                **kwargs)
        sockets = [bind_listener(host, port, options), bind_listener(public[0], public[1], options)]
        shown = [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets]
        log.info("Flower HTTP API on %s (loopback: Control, Runtime, Fleet); public Fleet API on %s: only %d "
                 "Fleet routes and /health; socket options %s", shown[0], shown[1], len(allowed),
                 http_keepalive.describe(options))
        server = uvicorn.Server(config)
        try:
            server.run(sockets=sockets)
        except KeyboardInterrupt:
            pass
        finally:
            for s in sockets:
                s.close()
        if not server.started:
            sys.exit(UVICORN_STARTUP_FAILURE)

    run.__wrapped__ = original  # type: ignore[attr-defined]
    run.__flower_ctx_patch__ = True  # type: ignore[attr-defined]
    return run


def install_superlink(time_s: int, timeout_s: int, public: tuple[str, int], *, trust_report: Any = None) -> str:
    import importlib

    import uvicorn

    try:
        # The module, not the function of the same name that flwr.superlink.cli re-exports.
        fs = importlib.import_module("flwr.superlink.cli.flower_superlink")
    except ImportError as exc:
        raise HookError(f"Flower's SuperLink module cannot be imported ({exc})") from None
    if getattr(fs, "uvicorn", None) is not uvicorn or not callable(getattr(fs, "_run_superlink_http_api", None)):
        raise HookError("flwr.superlink.cli.flower_superlink no longer starts its HTTP API through uvicorn.run: "
                        "the Fleet-only listener cannot be placed (this Flower release is not supported)")
    options = http_keepalive.socket_options(time_s, timeout_s)
    original = uvicorn.run
    if getattr(original, "__flower_ctx_patch__", False):
        original = original.__wrapped__  # type: ignore[attr-defined]
    uvicorn.run = _superlink_run(public, options, original, trust_report)  # type: ignore[assignment]
    log.info("HTTP era: Fleet API %s:%s for SuperNodes (Fleet routes only), keepalive %ss/%ss on every accepted "
             "connection", *public, time_s, timeout_s)
    return f"Fleet-only listener {public[0]}:{public[1]}, TCP keepalive {time_s}s/{timeout_s}s"


# ---------------------------------------------------------------- SuperNode: httpx client and heartbeat


def install_supernode(time_s: int, timeout_s: int, *, user_agent: str | None = None) -> str:
    import httpx

    try:
        import flwr.supercore.heartbeat as hb
        import flwr.supernode.fleet_http_connection as fhc
        from flwr.supercore.protobuf import client as pc
    except ImportError as exc:
        raise HookError(f"Flower's HTTP Fleet client cannot be imported ({exc})") from None
    for module in (hb, fhc):
        if not isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), (int, float)):
            raise HookError(f"{module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL: the heartbeat cannot be set")
    cls = getattr(pc, "ProtobufClient", None)
    if cls is None or "__init__" not in cls.__dict__:
        raise HookError("flwr.supercore.protobuf.client.ProtobufClient not found: keepalive cannot be placed")

    options = http_keepalive.socket_options(time_s, timeout_s)
    interval = http_keepalive.heartbeat_interval(time_s, timeout_s)
    hb.HEARTBEAT_DEFAULT_INTERVAL = interval  # how often the SuperNode sends
    fhc.HEARTBEAT_DEFAULT_INTERVAL = interval  # what it announces (the SuperLink's offline bound is 2x)

    original = cls.__dict__["__init__"]
    if getattr(original, "__flower_ctx_patch__", False):
        original = original.__wrapped__
    connect = http_keepalive.connect_timeout(timeout_s)

    def __init__(self: Any, base_url: str, *args: Any, **kwargs: Any) -> None:
        original(self, base_url, *args, **kwargs)
        verify = kwargs.get("verify", True)
        total = float(kwargs.get("timeout", 30.0))
        old = self._client
        # A custom transport ignores the client's verify: both get it.
        self._client = httpx.Client(verify=verify, timeout=httpx.Timeout(total, connect=min(total, connect)),
                                    follow_redirects=True, headers={"user-agent": user_agent} if user_agent else None,
                                    transport=httpx.HTTPTransport(verify=verify, socket_options=options))
        self._flower_ctx_keepalive = True
        old.close()
        log.debug("Fleet HTTP client for %s: connect timeout %ss, %s", base_url, min(total, connect),
                  http_keepalive.describe(options))

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    __init__.__flower_ctx_patch__ = True  # type: ignore[attr-defined]
    cls.__init__ = __init__
    probe = cls("http://127.0.0.1:9")  # never connects: clients are lazy
    try:
        if not getattr(probe, "_flower_ctx_keepalive", False):
            cls.__init__ = original
            raise HookError("the Fleet HTTP client hook did not run (self-test)")
    finally:
        probe.close()
    log.info("HTTP keepalive %ss/%ss on the Fleet client (%s, connect timeout %ss); heartbeat interval %ss "
             "(self-test passed)", time_s, timeout_s, http_keepalive.describe(options), connect, interval)
    return f"TCP keepalive {time_s}s/{timeout_s}s on the Fleet client, heartbeat {interval}s"
