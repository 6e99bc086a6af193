"""Issue 14, OneGate: every answer is bounded in time and size, nothing outlives a call, and any
document of an unexpected shape is "OneGate unusable", never a crash.

Hostile servers are raw sockets on 127.0.0.1 run by this module's own threads (named ``hostile-*``
and stopped in teardown): an endless body, a body or headers trickled one byte every 0.2 s forever,
a huge Content-Length, 100000-deep JSON, header bombs, non-HTTP. For each, a real
:class:`OneGateClient` call must end within its deadline with a OneGateError subclass and a clear
message, its memory peak must stay bounded, and no thread or socket of the call may survive it.
Figures are printed (``pytest -s`` shows them).

Then hypothesis: arbitrary JSON documents (and "almost right" ones: the real shapes with one field
replaced) served as GET /vm, GET /service and GET /vms/<id> through every reader: publish_ready never
raises, discover_superlink raises only its own errors.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flower_ctx.discovery import Discovered, DiscoveryError, discover_superlink
from flower_ctx.errors import OneGateError
from flower_ctx.model import HostPort, OneGateAccess, Secret
from flower_ctx.onegate import (
    MAX_ANSWER_BYTES,
    OneGateClient,
    OneGateNotConfigured,
    OneGateProtocolError,
    OneGateUnavailable,
)
from flower_ctx.pem import fingerprint, load_certs
from flower_ctx.readiness import HealthResult, PublishResult, publish_ready
from flower_ctx.values import host_port
from tests.onegate_server import make_ca_pem

TOKEN = "hardening-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
DEADLINE = 0.6
SLACK = 0.5  # thread scheduling and teardown on a busy 2-core machine
MEMORY_LIMIT = 64 * 1024 * 1024
TRICKLE = 0.2


# --------------------------------------------------------------------------------------------------
# A raw-socket server whose every connection runs a behaviour


class Hostile:
    """127.0.0.1:<ephemeral>; each connection: read the request head, then ``behaviour(conn, stop)``."""

    def __init__(self, behaviour: Callable[[socket.socket, threading.Event], None]) -> None:
        self.behaviour = behaviour
        self.stop = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.connections = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        acceptor = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self.threads.append(acceptor)
        acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            conn.settimeout(None)
            self.behaviour(conn, self.stop)
        except OSError:
            pass  # the client hung up: what a bounded client does
        finally:
            conn.close()

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self._lock:
            self.bytes_sent += len(data)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.conns:  # wakes a sender blocked on a client that stopped reading
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)
        assert not [t for t in self.threads if t.is_alive()], "a hostile server thread did not stop"


def _headers(*lines: str) -> bytes:
    return ("\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json", *lines]) + "\r\n\r\n").encode()


def endless_body(srv: Hostile) -> Callable[[socket.socket, threading.Event], None]:
    chunk = b"[" * 65536

    def run(conn: socket.socket, stop: threading.Event) -> None:
        srv.send(conn, _headers("Connection: close"))
        while not stop.is_set():
            srv.send(conn, chunk)

    return run


def endless_chunked(srv: Hostile) -> Callable[[socket.socket, threading.Event], None]:
    chunk = b"10000\r\n" + b"{" * 0x10000 + b"\r\n"

    def run(conn: socket.socket, stop: threading.Event) -> None:
        srv.send(conn, _headers("Transfer-Encoding: chunked"))
        while not stop.is_set():
            srv.send(conn, chunk)

    return run


def trickle(prefix: bytes, byte: bytes) -> Callable[[Hostile], Callable[[socket.socket, threading.Event], None]]:
    def make(srv: Hostile) -> Callable[[socket.socket, threading.Event], None]:
        def run(conn: socket.socket, stop: threading.Event) -> None:
            if prefix:
                srv.send(conn, prefix)
            while not stop.wait(TRICKLE):
                srv.send(conn, byte)

        return run

    return make


def fixed(answer: bytes, hold: bool = False) -> Callable[[Hostile], Callable[[socket.socket, threading.Event], None]]:
    def make(srv: Hostile) -> Callable[[socket.socket, threading.Event], None]:
        def run(conn: socket.socket, stop: threading.Event) -> None:
            srv.send(conn, answer)
            if hold:
                stop.wait(30)

        return run

    return make


def silent(srv: Hostile) -> Callable[[socket.socket, threading.Event], None]:
    return lambda conn, stop: stop.wait(30)


def json_answer(body: bytes) -> bytes:
    return _headers(f"Content-Length: {len(body)}") + body


DEEP_LIST = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"VM":' * 100_000 + b"1" + b"}" * 100_000
# (name, behaviour factory, expected error class, fragment of the message)
HOSTILE: dict[str, tuple[Callable[[Hostile], Any], type[OneGateError], str]] = {
    "endless body": (endless_body, OneGateProtocolError, "longer than"),
    "endless chunked body": (endless_chunked, OneGateProtocolError, "longer than"),
    "trickled status line": (trickle(b"", b"H"), OneGateUnavailable, "timed out"),
    "trickled headers": (trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"), OneGateUnavailable, "timed out"),
    "trickled body": (trickle(_headers("Content-Length: 100000"), b"{"), OneGateUnavailable, "timed out"),
    "trickled endless headers": (trickle(b"HTTP/1.1 200 OK\r\n", b"X: y\r\n"), OneGateUnavailable, "OneGate GET"),
    "silent server": (silent, OneGateUnavailable, "timed out"),
    "huge Content-Length": (fixed(_headers("Content-Length: " + "9" * 40), hold=True), OneGateProtocolError,
                            "more than"),
    "Content-Length just over the cap": (fixed(_headers(f"Content-Length: {MAX_ANSWER_BYTES + 1}"), hold=True),
                                         OneGateProtocolError, "more than"),
    "100000-deep JSON list": (fixed(json_answer(DEEP_LIST)), OneGateProtocolError, "not JSON"),
    "100000-deep JSON object": (fixed(json_answer(DEEP_OBJECT)), OneGateProtocolError, "not JSON"),
    "header bomb": (fixed(_headers(*[f"X-{i}: y" for i in range(5000)])), OneGateUnavailable, "malformed HTTP"),
    "one endless header line": (fixed(_headers("X-Long: " + "a" * 200_000)), OneGateUnavailable, "malformed HTTP"),
    "not HTTP": (fixed(b"SSH-2.0-OpenSSH_9.2\r\n"), OneGateUnavailable, "malformed HTTP"),
    "binary junk": (fixed(os.urandom(4096)), OneGateUnavailable, "OneGate GET"),
    "HTML instead of JSON": (fixed(json_answer(b"<html><body>proxy error</body></html>")), OneGateProtocolError,
                             "not JSON"),
    "invalid UTF-8": (fixed(json_answer(b'{"VM": "\xff\xfe"}' + b"\xc0")), OneGateProtocolError, "not JSON"),
    "JSON list": (fixed(json_answer(b"[1, 2]")), OneGateProtocolError, "not an object"),
    "JSON NaN": (fixed(json_answer(b"NaN")), OneGateProtocolError, "not an object"),
}


# --------------------------------------------------------------------------------------------------
# Measuring what a call leaves behind


def _call_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("hostile")}


def client_sockets_to(port: int) -> list[int]:
    """Inodes of this process's TCP sockets whose remote port is ``port`` (the client side)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(int(target[8:-1]))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            inode = int(fields[9])
            if inode in mine and remote_port == port:
                found.append(inode)
    return found


def socket_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def client_for(url: str, *, deadline: float | None = DEADLINE, timeout: float = 5.0, retries: int = 50
               ) -> OneGateClient:
    return OneGateClient(OneGateAccess(url, "7", Secret(TOKEN.encode())), timeout=timeout, retries=retries,
                         backoff=0.05, deadline=deadline)


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[Hostile], Any]], Hostile]]:
    made: list[Hostile] = []

    def start(factory: Callable[[Hostile], Any]) -> Hostile:
        srv = Hostile(lambda conn, stop: None)
        srv.behaviour = factory(srv)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.close()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_answer_is_bounded_and_leaves_nothing_behind(
    hostile: Callable[[Callable[[Hostile], Any]], Hostile], name: str
) -> None:
    factory, expected, fragment = HOSTILE[name]
    srv = hostile(factory)
    client = client_for(srv.url)
    threads_before, sockets_before, rss_before = _call_threads(), socket_fds(), rss_kb()
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.monotonic()
    try:
        client.get_vm()
    except Exception as exc:  # only its kind and message are kept: the caller lets it go
        kind, message = type(exc), str(exc)
    else:
        kind, message = type(None), ""
    elapsed = time.monotonic() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    threads_after = _call_threads()
    left_open = client_sockets_to(srv.port)
    rss_after = rss_kb()
    print(f"\n[onegate] {name}: gave up after {elapsed:.3f} s ({client.attempts} attempt(s)) with "
          f"{kind.__name__}; peak traced memory {peak / 1e6:.1f} MB, RSS {rss_before // 1024} -> "
          f"{rss_after // 1024} MB; threads {len(threads_before)} -> {len(threads_after)}; socket fds "
          f"{sockets_before} -> {socket_fds()} (client sockets to the server left open: {len(left_open)}); "
          f"server sent {srv.bytes_sent / 1e6:.1f} MB")
    assert issubclass(kind, expected), (kind, message)
    assert fragment in message and "OneGate" in message, message
    assert TOKEN not in message
    assert elapsed <= DEADLINE + SLACK, f"{name}: the call took {elapsed:.2f} s (deadline {DEADLINE} s)"
    assert peak < MEMORY_LIMIT, f"{name}: {peak} bytes at the peak"
    assert threads_after == threads_before, "a thread of the call outlived it"
    assert not left_open, "a socket of the call is still open to the server"
    assert srv.connections >= 1  # the server was really talked to


def test_socket_is_closed_when_the_call_raises_even_if_the_error_is_kept(
    hostile: Callable[[Callable[[Hostile], Any]], Hostile]
) -> None:
    srv = hostile(HOSTILE["endless body"][0])
    client = client_for(srv.url)
    with pytest.raises(OneGateProtocolError) as info:
        client.get_vm()
    try:
        assert not client_sockets_to(srv.port), "the socket outlives the call while its error is kept"
    finally:
        del info  # lets the socket go, so the server thread ends in teardown


@pytest.mark.parametrize("name", ["endless body", "trickled body", "trickled headers"])
def test_repeated_calls_do_not_pile_up_threads_sockets_or_memory(
    hostile: Callable[[Callable[[Hostile], Any]], Hostile], name: str
) -> None:
    """What the watch does for hours: call again and again against a hostile server. Before issue 14
    every timed-out call left its worker thread and socket behind."""
    srv = hostile(HOSTILE[name][0])
    client = client_for(srv.url, deadline=0.4)
    threads_before, sockets_before = _call_threads(), socket_fds()
    tracemalloc.start()
    try:
        for _ in range(5):
            with pytest.raises(OneGateError):
                client.get_vm()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n[onegate] 5 x {name}: peak traced memory {peak / 1e6:.1f} MB, threads {len(threads_before)} -> "
          f"{len(_call_threads())}, sockets {sockets_before} -> {socket_fds()}")
    assert _call_threads() == threads_before
    assert not client_sockets_to(srv.port)
    assert peak < MEMORY_LIMIT


@pytest.mark.parametrize("call", ["get_vm_by_id", "get_service", "update_vm", "delete_vm_attr"])
@pytest.mark.parametrize("name", ["endless body", "trickled headers", "huge Content-Length"])
def test_every_call_is_bounded(hostile: Callable[[Callable[[Hostile], Any]], Hostile], name: str, call: str) -> None:
    srv = hostile(HOSTILE[name][0])
    client = client_for(srv.url)
    calls: dict[str, Callable[[], object]] = {
        "get_vm_by_id": lambda: client.get_vm_by_id(8),
        "get_service": lambda: client.get_service(extended=True),
        "update_vm": lambda: client.update_vm({"FL_READY": "YES"}),
        "delete_vm_attr": lambda: client.delete_vm_attr("FL_ERROR"),
    }
    start = time.monotonic()
    message = ""
    try:
        calls[call]()
    except OneGateError as exc:  # kept only as text (a kept exception is the test above)
        message = str(exc)
    assert time.monotonic() - start <= DEADLINE + SLACK
    assert "OneGate" in message
    assert not client_sockets_to(srv.port)


def test_attempt_timeout_bounds_each_attempt_without_a_call_deadline(
    hostile: Callable[[Callable[[Hostile], Any]], Hostile]
) -> None:
    """No call deadline: the per-attempt timeout still bounds a trickle (it is not per read)."""
    srv = hostile(HOSTILE["trickled body"][0])
    client = client_for(srv.url, deadline=None, timeout=0.5, retries=1)
    start = time.monotonic()
    with pytest.raises(OneGateUnavailable, match="2 attempts"):
        client.get_vm()
    assert time.monotonic() - start <= 2 * 0.5 + 0.1 + SLACK


@pytest.mark.parametrize("body", [
    b"[]", b'"VM"', b"null", b"1e999", b'{"VM": []}', b'{"VM": "x"}', b'{"VM": {"USER_TEMPLATE": []}}',
    b'{"VM": {"USER_TEMPLATE": "READY=YES"}}', b'{"VM": {"USER_TEMPLATE": 7}}', b'{"VM": 1}',
    b"\xef\xbb\xbf{}", DEEP_OBJECT, b"",
])
def test_publish_ready_reports_an_unusable_vm_document(
    hostile: Callable[[Callable[[Hostile], Any]], Hostile], body: bytes
) -> None:
    srv = hostile(fixed(json_answer(body)))
    client = client_for(srv.url)
    start = time.monotonic()
    result = publish_ready(client, {"FL_ROLE": "superlink"}, lambda: HealthResult(True))
    assert time.monotonic() - start <= DEADLINE + SLACK
    assert isinstance(result, PublishResult) and result.degraded and not result.ready
    assert result.healthy  # the local state is still reported
    assert "OneGate unusable" in (result.onegate_problem or ""), result.onegate_problem


def test_publish_ready_survives_every_hostile_server(hostile: Callable[[Callable[[Hostile], Any]], Hostile]) -> None:
    for name, (factory, _, _) in HOSTILE.items():
        srv = hostile(factory)
        start = time.monotonic()
        result = publish_ready(client_for(srv.url), {"FL_ROLE": "superlink"}, lambda: HealthResult(True))
        assert time.monotonic() - start <= DEADLINE + SLACK, name
        assert result.degraded and not result.ready and TOKEN not in (result.onegate_problem or ""), name


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:99999", "http://127.0.0.1:" + "9" * 5000, "http://[::1", "http://a]b:5030",
])
def test_an_endpoint_urlsplit_refuses_is_not_a_usable_onegate(endpoint: str) -> None:
    # Validation refuses it (exit 2, test_hardening_errors); a client handed one anyway says OneGate is
    # not usable, with the module's own error, before any request.
    with pytest.raises(OneGateNotConfigured, match="not an http"):
        client_for(endpoint)


# --------------------------------------------------------------------------------------------------
# Hypothesis: arbitrary and almost-right documents through every reader


class _DocHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    docs: dict[str, bytes] = {}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?")[0]
        key = "/vms" if path.startswith("/vms/") else path
        self._answer(self.docs.get(key, b"{}"))

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._answer(b"")


@pytest.fixture(scope="module")
def doc_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    docs: dict[str, bytes] = {}
    handler = type("H", (_DocHandler,), {"docs": docs})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="hostile-docs",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", docs
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


CA_PEM = make_ca_pem("hardening CA")
CA_FP = fingerprint(load_certs(CA_PEM)[0])
REAL: dict[str, Any] = {
    "/vm": {"VM": {"NAME": "node", "ID": "8", "STATE": "3", "LCM_STATE": "3",
                   "USER_TEMPLATE": {"FL_ROLE": "supernode", "SERVICE_ID": "21", "ROLE_NAME": "supernode"},
                   "TEMPLATE": {"NIC": [{"IP": "192.0.2.21", "NAME": "_NIC0"}], "NIC_ALIAS": []}}},
    "/service": {"SERVICE": {"name": "flower", "id": "21", "state": 2, "roles": [
        {"name": "superlink", "cardinality": 1, "state": 2,
         "nodes": [{"deploy_id": 7, "running": None, "vm_info": {"VM": {"ID": "7", "NAME": "sl"}}}]},
        {"name": "supernode", "cardinality": 1, "state": 2,
         "nodes": [{"deploy_id": 8, "running": None, "vm_info": {"VM": {"ID": "8"}}}]}]}},
    "/vms": {"VM": {"NAME": "sl", "ID": "7", "STATE": "3", "LCM_STATE": "3",
                    "USER_TEMPLATE": {"FL_TLS": "YES", "FL_ENDPOINT": "192.0.2.10:9092",
                                      "FL_CA_CERT": base64.b64encode(CA_PEM).decode(), "FL_CA_FINGERPRINT": CA_FP},
                    "TEMPLATE": {"NIC": [{"IP": "192.0.2.10"}], "NIC_ALIAS": []}}},
}
VOCABULARY = ["VM", "USER_TEMPLATE", "TEMPLATE", "NIC", "IP", "IP6", "IP6_GLOBAL", "SERVICE", "roles", "name",
              "nodes", "deploy_id", "vm_info", "ID", "FL_TLS", "FL_ENDPOINT", "FL_CA_CERT", "FL_CA_FINGERPRINT",
              "superlink", "READY"]

leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
          | st.sampled_from(VOCABULARY + ["YES", "NO", "192.0.2.1", "[::1]:1", "-x:1", "7"]))
keys = st.sampled_from(VOCABULARY) | st.text(max_size=8)
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                           max_leaves=12)


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*here, i))
    return out


@st.composite
def almost_right(draw: st.DrawFn, which: str) -> Any:
    """The real document with one to three fields (or the whole) replaced by a wrong-typed value."""
    doc = copy.deepcopy(REAL[which])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        value = draw(json_values)
        if not path:
            return value
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    return doc


def documents(which: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        almost_right(which).map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda d: json.dumps(d).encode()),
        st.just(json.dumps(REAL[which]).encode()),
        st.binary(max_size=40),
    )


def _printable_endpoint(hp: HostPort) -> None:
    text = str(hp)
    assert text.isascii() and text.isprintable() and " " not in text and not text.startswith("-"), text
    assert len(text) <= 300 and host_port(text) == hp


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(vm=documents("/vm"), service=documents("/service"), other=documents("/vms"))
def test_any_document_through_every_reader(doc_server: tuple[str, dict[str, bytes]], vm: bytes, service: bytes,
                                           other: bytes) -> None:
    url, docs = doc_server
    docs.update({"/vm": vm, "/service": service, "/vms": other})
    client = client_for(url, deadline=2.0, retries=0)

    result = publish_ready(client, {"FL_ROLE": "supernode", "FL_VERSION": "1.39.0"}, lambda: HealthResult(True))
    assert isinstance(result, PublishResult)  # never raises: OneGate trouble is in the result
    event("publish degraded" if result.degraded else "publish ok")
    if result.degraded:
        assert result.onegate_problem and not result.ready

    try:
        found = discover_superlink(client, deadline_s=0, sleep=lambda s: None)
    except (DiscoveryError, OneGateError) as exc:
        event(type(exc).__name__)
        assert str(exc)
    else:
        event("discovered")
        assert isinstance(found, Discovered)
        _printable_endpoint(found.endpoint)
        assert found.tls is (found.ca_pem is not None)


def test_the_real_documents_do_discover(doc_server: tuple[str, dict[str, bytes]]) -> None:
    """The baseline of the property above: unmodified shapes find the SuperLink and publish."""
    url, docs = doc_server
    docs.update({k: json.dumps(v).encode() for k, v in REAL.items()})
    client = client_for(url, deadline=2.0, retries=0)
    found = discover_superlink(client, deadline_s=0, sleep=lambda s: None)
    assert found.endpoint == HostPort("192.0.2.10", 9092) and found.ca_fingerprint == CA_FP
    result = publish_ready(client, {"FL_ROLE": "supernode"}, lambda: HealthResult(True))
    assert result.ready and not result.degraded


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(other=almost_right("/vms"))
def test_almost_right_superlink_documents_through_discovery(doc_server: tuple[str, dict[str, bytes]],
                                                            other: Any) -> None:
    """The service is right and only the SuperLink VM's document is off: every field of the path that
    yields the endpoint and the CA (USER_TEMPLATE, FL_ENDPOINT, NIC, FL_CA_CERT...) meets a wrong type."""
    url, docs = doc_server
    docs.update({"/vm": json.dumps(REAL["/vm"]).encode(), "/service": json.dumps(REAL["/service"]).encode(),
                 "/vms": json.dumps(other).encode()})
    client = client_for(url, deadline=2.0, retries=0)
    try:
        found = discover_superlink(client, deadline_s=0, sleep=lambda s: None)
    except (DiscoveryError, OneGateError) as exc:
        event(type(exc).__name__)
        assert str(exc) and TOKEN not in str(exc)
    else:
        event("discovered")
        _printable_endpoint(found.endpoint)
        if found.tls:
            assert found.ca_pem == CA_PEM and found.ca_fingerprint == CA_FP
