"""Test rigs for the Flower runtime and keepalive tests.

- ``make_pki``: a CA and a server certificate made with cryptography (the test's own PKI).
- ``FrameRelay``: a TCP relay on loopback that decodes every HTTP/2 frame in both directions
  (hyperframe, hpack for request paths and grpc-status). With ``tls`` it terminates TLS on both
  sides (ALPN h2), so the product's TLS configuration runs unchanged while the frames stay readable.
- ``Proc``: a subprocess whose output lines are timestamped as they arrive, killed with its whole
  process tree by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path, sans: Sequence[str] = ("127.0.0.1", "localhost")) -> Pki:
    """CA + server certificate (ECDSA P-256) with ``sans`` (IPs or DNS names), written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fcka test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for san in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(pki.key, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- HTTP/2 frame relay


@dataclass(frozen=True)
class FrameEvent:
    t: float  # time.monotonic() when the relay read the frame
    conn: int
    direction: str  # "c2s" (client -> server) or "s2c"
    kind: str  # "PING", "GOAWAY", "HEADERS", "DATA", ...
    ack: bool = False
    opaque: bytes = b""
    error_code: int | None = None
    debug: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _FrameDecoder:
    """Incremental decoder of one direction of one HTTP/2 connection."""

    def __init__(self, conn: int, direction: str, sink: Callable[[FrameEvent], None]) -> None:
        import hpack

        self.conn, self.direction, self.sink = conn, direction, sink
        self.buf = bytearray()
        self.need_preface = direction == "c2s"
        self.hpack = hpack.Decoder()
        self.hpack.max_allowed_table_size = 1 << 16

    def feed(self, data: bytes) -> None:
        from hyperframe.frame import Frame

        self.buf += data
        if self.need_preface:
            if len(self.buf) < len(PREFACE):
                return
            del self.buf[: len(PREFACE)]
            self.need_preface = False
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
            if len(self.buf) < 9 + length:
                return
            body = bytes(self.buf[9 : 9 + length])
            del self.buf[: 9 + length]
            frame.parse_body(memoryview(body))
            self.sink(self._event(frame))

    def _event(self, frame: Any) -> FrameEvent:
        kind = type(frame).__name__.removesuffix("Frame").upper()
        now = time.monotonic()
        if kind == "PING":
            return FrameEvent(now, self.conn, self.direction, kind, "ACK" in frame.flags, bytes(frame.opaque_data))
        if kind == "GOAWAY":
            return FrameEvent(now, self.conn, self.direction, kind, error_code=frame.error_code,
                              debug=bytes(frame.additional_data))
        if kind == "HEADERS":
            try:  # raw: gRPC metadata may be binary (-bin headers)
                pairs = self.hpack.decode(bytes(frame.data), raw=True)
                headers = tuple((bytes(k).decode(errors="replace"), bytes(v).decode(errors="replace"))
                                for k, v in pairs)
            except Exception:  # a CONTINUATION-split block: grpcio does not split these small headers
                headers = ()
            return FrameEvent(now, self.conn, self.direction, kind, headers=headers)
        return FrameEvent(now, self.conn, self.direction, kind)


class FrameRelay:
    """127.0.0.1:<port> -> ``upstream``, decoding HTTP/2 frames. ``tls=(server_ctx, client_ctx)``
    terminates TLS towards the client and opens TLS to the upstream."""

    def __init__(self, upstream: tuple[str, int], *, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
                 upstream_hostname: str | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.upstream_hostname = upstream_hostname or upstream[0]
        self.events: list[FrameEvent] = []
        self.connections = 0
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="frame-relay", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def __enter__(self) -> FrameRelay:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = fut.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> int:
        server_ctx = self.tls[0] if self.tls else None
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=server_ctx)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _record(self, event: FrameEvent) -> None:
        with self._lock:
            self.events.append(event)

    def snapshot(self) -> list[FrameEvent]:
        with self._lock:
            return list(self.events)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            conn = self.connections
        try:
            client_ctx = self.tls[1] if self.tls else None
            s_reader, s_writer = await asyncio.open_connection(
                *self.upstream, ssl=client_ctx, server_hostname=self.upstream_hostname if client_ctx else None)
        except OSError:
            c_writer.close()
            return
        self._writers += [c_writer, s_writer]
        up = _FrameDecoder(conn, "c2s", self._record)
        down = _FrameDecoder(conn, "s2c", self._record)
        with contextlib.suppress(asyncio.CancelledError):  # close() cancels live connections
            await asyncio.gather(self._pump(c_reader, s_writer, up), self._pump(s_reader, c_writer, down),
                                 return_exceptions=True)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: _FrameDecoder) -> None:
        try:
            while data := await reader.read(65536):
                decoder.feed(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def relay_tls_contexts(pki: Pki) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server side presents the test server certificate; client side verifies the upstream with the CA."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.cert, pki.key)
    server_ctx.set_alpn_protocols(["h2"])
    client_ctx = ssl.create_default_context(cafile=str(pki.ca))
    client_ctx.set_alpn_protocols(["h2"])
    return server_ctx, client_ctx


def keepalive_pings(
    events: Iterable[FrameEvent], *, direction: str = "c2s", min_idle: float
) -> list[tuple[FrameEvent, float]]:
    """PINGs (not ACKs) sent in ``direction`` after at least ``min_idle`` s without a frame from the
    peer on that connection: keepalive pings. grpcio's other pings (BDP probes) go out right after
    DATA arrives, so the idle gap tells them apart on the wire. Returns (ping, idle gap)."""
    other = "s2c" if direction == "c2s" else "c2s"
    last_in: dict[int, float] = {}
    out: list[tuple[FrameEvent, float]] = []
    for ev in sorted(events, key=lambda e: e.t):
        if ev.direction == other:
            last_in[ev.conn] = ev.t
        elif ev.kind == "PING" and not ev.ack and ev.conn in last_in:
            gap = ev.t - last_in[ev.conn]
            if gap >= min_idle:
                out.append((ev, gap))
    return out


def is_acked(ping: FrameEvent, events: Iterable[FrameEvent], within: float = 1.0) -> bool:
    return any(e.kind == "PING" and e.ack and e.opaque == ping.opaque and e.conn == ping.conn
               and e.direction != ping.direction and 0 <= e.t - ping.t <= within for e in events)


def goaways(events: Iterable[FrameEvent]) -> list[FrameEvent]:
    return [e for e in events if e.kind == "GOAWAY"]


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process with timestamped output lines (stdout and stderr merged)."""

    argv: list[str]
    env: dict[str, str] | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self.popen = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=str(REPO))
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def first(self, needle: str, after: float = 0.0) -> float | None:
        for t, line in list(self.lines):
            if t >= after and needle in line:
                return t
        return None

    def wait_for(self, needle: str, timeout: float, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.first(needle, after)
            if t is not None:
                return t
            if self.popen is not None and self.popen.poll() is not None:
                time.sleep(0.2)  # let the reader drain
                t = self.first(needle, after)
                if t is not None:
                    return t
                raise AssertionError(f"process exited ({self.popen.returncode}) before {needle!r}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.text()}")

    def kill(self) -> None:
        if self.popen is None:
            return
        kill_tree(self.popen.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` (Flower's flower-superexec children run in their own session)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    for p in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def flower_ctx_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "flower_ctx.cli", *args]


# ---------------------------------------------------------------- runtime configs for a staging root


def stage_runtime_config(root: Path, role: str, pki: Pki | None, **changes: Any) -> dict[str, Any]:
    """Write ``<root>/opt/flower/config/<role>.json`` through ``runtime.apply`` (the product code),
    with the test's PKI copied to the product paths, then apply ``changes`` (free ports, small
    keepalive values) to the JSON directly. Returns the final document."""
    import dataclasses
    import json

    from flower_ctx import runtime
    from flower_ctx.model import HostPort
    from flower_ctx.paths import Paths
    from tests.factories import make_config

    paths = Paths(root)
    config = make_config(role, tls_enabled=pki is not None)
    if role == "supernode":
        config = dataclasses.replace(config, superlink_address=HostPort("127.0.0.1", 9092))
    runtime.apply(config, paths)
    if pki is not None:
        paths.certs_dir.mkdir(parents=True, exist_ok=True)
        paths.ca_cert.write_bytes(pki.ca.read_bytes())
        if role == "superlink":
            paths.server_cert.write_bytes(pki.cert.read_bytes())
            paths.server_key.write_bytes(pki.key.read_bytes())
            paths.server_key.chmod(0o600)
    path = paths.runtime_config(role)
    doc = json.loads(path.read_text())
    if role == "supernode":
        # These rigs test the wire, not admission: a SuperNode without a key self-registers with a
        # SuperLink that runs without SuperNode authentication (tests/test_admission.py covers keys).
        changes.setdefault("node_key", None)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    return doc
