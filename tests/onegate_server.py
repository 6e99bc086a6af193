"""A OneGate test double that behaves like the real server (research/opennebula-contracts.md 1, 2, 8).

Threaded ``http.server`` on 127.0.0.1 (or any address given, e.g. inside a test namespace). It holds
VMs and OneFlow services and enforces what the real ``onegate-server.rb`` does:

- ``X-ONEGATE-TOKEN`` + ``X-ONEGATE-VMID`` on every request, else 401 ``Not authorized``;
- ``PUT /vm`` and ``PUT /vms/<id>``: form ``data=...&type=1|2`` (type also in the query) or a raw
  body; literal ``\\n`` becomes a newline; restricted attributes give 403; values the server's naive
  quoting breaks on (empty, ``, " \\ [ ]``) give 500; delete of a missing attribute gives 500
  ``attribute not found``; names are upper-cased and merged into USER_TEMPLATE;
- ``GET /vm``, ``GET /vms/<id>``: ``VM`` with string scalars, ``TEMPLATE`` holding only ``NIC`` and
  ``NIC_ALIAS`` (always arrays); other VMs only inside the caller's service (400 otherwise);
- ``GET /service``: ``id`` a string, integer ``state``/``cardinality``/``deploy_id``, ``running``
  null, a 6-field ``vm_info`` (the full, non-normalised VM hash only with ``extended``, with the
  VM's whole ``TEMPLATE.CONTEXT`` when the VM was given one: every VM of a service can read it);
- plain-text error bodies with ``Content-Type: application/json; charset=utf-8``;
- ``version`` (default ``7.0.0``): from 7.1.80 on, every 500 answers ``Internal server error`` (the
  server's ``error 500`` block), "attribute not found" included; before, the real text.

For the OneFlow double (``tests/oneflow_double.py``): :meth:`OneGateServer.add_vm` takes NICs,
the final CONTEXT and extra TEMPLATE attributes; :class:`FakeRole` a ``cardinality`` (the wanted
count, shown in ``GET /service`` even before the VMs exist); :meth:`add_listener` calls
``fn(vm_id, type, data)`` after every accepted ``PUT`` (outside the lock), as oned's update event
reaches OneFlow's EventManager; :meth:`remove_vm` takes a terminated VM away.

Fault switches: :meth:`OneGateServer.go_down` / :meth:`go_up` (connection refused),
``drop_connections`` (accept then close), ``slow`` (seconds before answering), ``trickle`` (seconds
between body bytes), :meth:`fail_next`
(5xx bursts), ``disabled`` permissions (403). Every request is recorded (:attr:`requests`) with its
parsed body so tests can assert bodies and ordering; the token itself is never recorded.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

RESTRICTED_ATTRS = ("SCHED_REQUIREMENTS", "SERVICE_ID", "ROLE_NAME")
NIC_KEYS = ("IP", "IP6_LINK", "IP6_SITE", "IP6_GLOBAL", "NETWORK", "MAC", "NAME", "PARENT", "EXTERNAL", "EXTERNAL_IP")
# Every token any server instance issued in this process: tests scan outputs for them.
ISSUED_TOKENS: set[str] = set()


@dataclass
class FakeVM:
    id: int
    name: str
    token: str
    stime: int
    user_template: dict[str, Any] = field(default_factory=dict)
    nics: list[dict[str, str]] = field(default_factory=list)
    state: int = 3
    lcm_state: int = 3
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"
    context: dict[str, str] | None = None  # TEMPLATE/CONTEXT as oned holds it (extended /service)
    template: dict[str, Any] = field(default_factory=dict)  # other TEMPLATE attributes (CPU, MEMORY, VMID)


@dataclass
class FakeRole:
    name: str
    node_ids: list[int] = field(default_factory=list)
    state: int = 2
    cardinality: int | None = None  # None: the number of nodes


@dataclass
class FakeService:
    id: int
    name: str
    roles: list[FakeRole] | None = field(default_factory=list)
    state: int = 2


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it (the token is reduced to whether it was right)."""

    seq: int
    time: float  # time.monotonic() on arrival (system-wide clock: comparable across processes)
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: str  # raw body text as received
    data: str | None  # the attribute text after parsing (form ``data`` or raw body, \n expanded)
    type: str | None  # "1" update, "2" delete, None for reads
    vmid: str | None  # X-ONEGATE-VMID
    token_sent: bool
    token_ok: bool
    status: int = 0
    answer: str = ""
    logged: str = ""  # the error text the server logs (the answer hides it from 7.1.80 on)

    @property
    def attrs(self) -> dict[str, str]:
        """The ``K=V`` lines of an update, upper-cased names, in order (for assertions)."""
        if self.type != "1" or not self.data:
            return {}
        out: dict[str, str] = {}
        for line in self.data.split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip().upper()] = v
        return out


class _HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class OneGateServer:
    """The double. Use as a context manager; ``url`` is the ONEGATE_ENDPOINT to give clients."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, version: str = "7.0.0") -> None:
        self.host = host
        self.port = port
        self.version = version
        self.listeners: list[Callable[[int, str, str], None]] = []
        self.vms: dict[int, FakeVM] = {}
        self.services: dict[int, FakeService] = {}
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        # Fault switches.
        self.slow: float = 0.0
        self.trickle: float = 0.0  # seconds between body bytes (a server that answers but crawls)
        self.drop_connections = False
        self.disabled: set[str] = set()  # e.g. {"vm.update", "service.show"}
        self._fail_budget = 0
        self._fail_status = 503
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self.dropped = 0  # connections closed unanswered by ``drop_connections``
        self._thread: threading.Thread | None = None
        self._next_vm = 40

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> OneGateServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"double": self})
        server_cls = _V6Server if ":" in self.host else _Server
        self._httpd = server_cls((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping for ``slow``
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def go_down(self) -> None:
        """Stop listening: clients get connection refused (the port stays reserved for go_up)."""
        self.stop()

    def go_up(self) -> None:
        self.start()

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next ``count`` requests (after auth) answer ``status`` (a 5xx burst)."""
        with self.lock:
            self._fail_budget = count
            self._fail_status = status

    @property
    def hides_500_text(self) -> bool:
        """OneGate 7.1.80 and later answer every 500 with "Internal server error" (commit e734a43)."""
        return version_tuple(self.version) >= (7, 1, 80)

    def add_listener(self, fn: Callable[[int, str, str], None]) -> None:
        """``fn(vm_id, type, data)`` after each accepted PUT update (type "1") or delete ("2")."""
        with self.lock:
            self.listeners.append(fn)

    # -- state ---------------------------------------------------------------------------------

    def add_vm(
        self,
        name: str = "",
        *,
        ips: Iterable[str] = ("192.0.2.10",),
        user_template: Mapping[str, Any] | None = None,
        vm_id: int | None = None,
        nics: Iterable[Mapping[str, str]] | None = None,
        context: Mapping[str, str] | None = None,
        template: Mapping[str, Any] | None = None,
    ) -> FakeVM:
        """A VM with a fresh token. ``nics`` (full NIC attributes) replaces ``ips``; ``context`` is
        the VM's final CONTEXT (shown by ``GET /service?extended=true``)."""
        with self.lock:
            if vm_id is None:
                vm_id = self._next_vm
            if vm_id in self.vms:
                raise ValueError(f"VM {vm_id} exists")
            self._next_vm = max(self._next_vm, vm_id) + 1
            token = secrets.token_urlsafe(32)
            ISSUED_TOKENS.add(token)
            if nics is not None:
                nic_list = [dict(n) for n in nics]
            else:
                nic_list = [
                    {"IP": ip, "MAC": f"02:00:c0:00:02:{i:02x}", "NAME": f"_NIC{i}", "NETWORK": "service"}
                    for i, ip in enumerate(ips)
                ]
            vm = FakeVM(
                id=vm_id,
                name=name or f"vm-{vm_id}",
                token=token,
                stime=int(time.time()),
                user_template=dict(user_template or {}),
                nics=nic_list,
                context=dict(context) if context is not None else None,
                template=dict(template or {}),
            )
            self.vms[vm_id] = vm
            return vm

    def add_service(self, name: str, roles: Mapping[str, Iterable[FakeVM]], service_id: int = 21) -> FakeService:
        """A OneFlow service; like OneFlow, sets SERVICE_ID and ROLE_NAME in each node's template."""
        with self.lock:
            svc = FakeService(id=service_id, name=name, roles=[])
            for role_name, vms in roles.items():
                role = FakeRole(role_name)
                for vm in vms:
                    self.add_node(svc, role, vm)
                assert svc.roles is not None
                svc.roles.append(role)
            self.services[service_id] = svc
            return svc

    def add_node(self, svc: FakeService, role: FakeRole, vm: FakeVM) -> None:
        with self.lock:
            role.node_ids.append(vm.id)
            vm.user_template["SERVICE_ID"] = str(svc.id)
            vm.user_template["ROLE_NAME"] = role.name

    def remove_vm(self, vm: FakeVM | int) -> None:
        """A terminated VM: gone from its role's nodes and unknown to OneGate (its token too)."""
        with self.lock:
            vm_id = vm.id if isinstance(vm, FakeVM) else vm
            self.vms.pop(vm_id, None)
            for svc in self.services.values():
                for role in svc.roles or []:
                    if vm_id in role.node_ids:
                        role.node_ids.remove(vm_id)

    def user_template(self, vm: FakeVM | int) -> dict[str, Any]:
        with self.lock:
            vm_id = vm.id if isinstance(vm, FakeVM) else vm
            return dict(self.vms[vm_id].user_template)

    def recorded(self, vm: FakeVM | None = None, method: str | None = None) -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (vm is None or r.vmid == str(vm.id)) and (method is None or r.method == method)
            ]

    # -- request handling (called by the handler threads) ---------------------------------------

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query, keep_blank_values=True)
        content_type = headers.get("content-type", "")
        text = body.decode("utf-8", "replace")
        form: dict[str, list[str]] = {}
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            form = parse_qs(text, keep_blank_values=True)
        vmid = headers.get("x-onegate-vmid")
        token = headers.get("x-onegate-token")
        data: str | None = None
        typ: str | None = None
        if method == "PUT" and parts.path.startswith("/vm"):
            data = form["data"][0] if "data" in form else text
            data = data.replace("\\n", "\n")
            typ = (form.get("type") or query.get("type") or ["1"])[0]
        with self.lock:
            vm = self._auth_vm(vmid, token)
            rec = Recorded(
                seq=len(self.requests),
                time=time.monotonic(),
                method=method,
                path=parts.path,
                query=query,
                content_type=content_type,
                body=text,
                data=data,
                type=typ,
                vmid=vmid,
                token_sent=bool(token),
                token_ok=vm is not None,
            )
            events: list[tuple[int, str, str]] = []
            try:
                if vm is None:
                    raise _HttpError(401, "Not authorized")
                if self._fail_budget > 0:
                    self._fail_budget -= 1
                    raise _HttpError(self._fail_status, "Service Unavailable")
                extended = bool((query.get("extended") or form.get("extended") or [""])[0])
                status, answer = self._route(vm, method, parts.path, data, typ, extended, events)
            except _HttpError as err:
                status, answer = err.status, err.text
            logged = answer if status >= 400 else ""
            if status == 500 and self.hides_500_text:
                answer = "Internal server error"
            self.requests.append(_with(rec, status=status, answer=answer, logged=logged))
            listeners = list(self.listeners) if events else []
        for fn in listeners:
            for event in events:
                fn(*event)
        return status, answer

    def _auth_vm(self, vmid: str | None, token: str | None) -> FakeVM | None:
        if not vmid or not token or not vmid.strip().isdigit():
            return None
        vm = self.vms.get(int(vmid))
        if vm is None or not secrets.compare_digest(vm.token, token):
            return None
        return vm

    def _allowed(self, action: str) -> None:
        if action in self.disabled:
            res, act = action.split(".", 1)
            raise _HttpError(403, f"Action ({act}) on resource ({res}) not supported")

    def _route(
        self,
        vm: FakeVM,
        method: str,
        path: str,
        data: str | None,
        typ: str | None,
        extended: bool,
        events: list[tuple[int, str, str]],
    ) -> tuple[int, str]:
        if method == "GET" and path == "/":
            return 200, json.dumps({"vm_info": f"{self.url}/vm", "service_info": f"{self.url}/service"})
        if path == "/vm":
            if method == "GET":
                self._allowed("vm.show")
                return 200, json.dumps(self._vm_hash(vm))
            if method == "PUT":
                self._allowed("vm.update")
                self._update(vm, data or "", typ or "1")
                events.append((vm.id, typ or "1", data or ""))
                return 200, ""
        if path.startswith("/vms/") and path[5:].isdigit():
            target = self._requested_vm(vm, int(path[5:]))
            if method == "GET":
                self._allowed("vm.show_by_id")
                return 200, json.dumps(self._vm_hash(target))
            if method == "PUT":
                self._allowed("vm.update_by_id")
                self._update(target, data or "", typ or "1")
                events.append((target.id, typ or "1", data or ""))
                return 200, ""
        if method == "GET" and path == "/service":
            self._allowed("service.show")
            svc = self._service_of(vm)
            return 200, json.dumps(self._service_hash(svc, extended))
        raise _HttpError(400, "OneGate server doesn't support this feature")

    def _service_of(self, vm: FakeVM) -> FakeService:
        sid = str(vm.user_template.get("SERVICE_ID", ""))
        if not sid.isdigit():
            raise _HttpError(400, "Empty or invalid SERVICE_ID")
        svc = self.services.get(int(sid))
        if svc is None:
            raise _HttpError(404, f"Service {sid} not found")
        if svc.roles is None:
            raise _HttpError(400, f"Service {sid} is empty.")
        if not any(vm.id in r.node_ids for r in svc.roles):
            raise _HttpError(400, f"Service {sid} does not contain VM {vm.id}.")
        return svc

    def _requested_vm(self, caller: FakeVM, target_id: int) -> FakeVM:
        sid = str(caller.user_template.get("SERVICE_ID", ""))
        if not sid.isdigit():
            raise _HttpError(
                400,
                "This VM does not belong to any Virtual Router or Service, so it cannot retrieve "
                "information from other VMs",
            )
        svc = self.services.get(int(sid))
        if svc is None:
            raise _HttpError(404, f"Service {sid} not found")
        if svc.roles is None:
            raise _HttpError(400, f"Service {sid} is empty.")
        if not any(target_id in r.node_ids for r in svc.roles):
            raise _HttpError(400, f"Service {sid} does not contain VM {target_id}.")
        target = self.vms.get(target_id)
        if target is None:
            raise _HttpError(404, f"[one.vm.info] Error getting virtual machine [{target_id}].")
        return target

    def _update(self, vm: FakeVM, data: str, typ: str) -> None:
        if typ == "2":
            name = data.strip().upper()
            if name in RESTRICTED_ATTRS:
                raise _HttpError(403, f"Attribute ({name}) cannot be deleted")
            if name not in vm.user_template:
                raise _HttpError(500, "attribute not found")
            del vm.user_template[name]
            return
        lines = [line for line in data.split("\n") if line.strip()]
        for line in lines:
            name = line.split("=", 1)[0].strip().upper()
            if name in RESTRICTED_ATTRS:
                raise _HttpError(403, f"Attribute ({name}) cannot be modified")
        parsed: dict[str, str] = {}
        for line in lines:
            # escape_attr wraps the value in double quotes; these break the template parser.
            if "=" not in line:
                raise _HttpError(500, f"syntax error, unexpected $end, expecting EQUAL at line 1, column {len(line)}")
            name, value = line.split("=", 1)
            name = name.strip().upper()
            if value == "" or any(c in value for c in ',"\\[]') or not name:
                raise _HttpError(500, "syntax error, unexpected STRING, expecting COMMA or CBRACKET")
            parsed[name] = value
        vm.user_template.update(parsed)  # all or nothing, like the template update

    @staticmethod
    def _vm_hash(vm: FakeVM) -> dict[str, Any]:
        nics = [{k: v for k, v in nic.items() if k in NIC_KEYS} for nic in vm.nics]
        return {
            "VM": {
                "NAME": vm.name,
                "ID": str(vm.id),
                "STATE": str(vm.state),
                "LCM_STATE": str(vm.lcm_state),
                "USER_TEMPLATE": {k: v for k, v in vm.user_template.items() if k != "SCHED_MESSAGE"},
                "TEMPLATE": {"NIC": nics, "NIC_ALIAS": []},
            }
        }

    def _full_hash(self, vm: FakeVM) -> dict[str, Any]:
        """The extended vm_info: the whole VM, not normalised (one NIC is an object)."""
        nics: Any = [dict(n, NIC_ID=str(i), NETWORK_ID="0") for i, n in enumerate(vm.nics)]
        if len(nics) == 1:
            nics = nics[0]
        if vm.context is not None:
            ctx = dict(vm.context)
        else:
            ctx = {f"ETH{i}_IP": n["IP"] for i, n in enumerate(vm.nics) if "IP" in n}
            ctx.update({"TOKEN": "YES", "VMID": str(vm.id), "ONEGATE_ENDPOINT": self.url})
        return {
            "VM": {
                "ID": str(vm.id),
                "UID": str(vm.uid),
                "GID": str(vm.gid),
                "UNAME": vm.uname,
                "GNAME": vm.gname,
                "NAME": vm.name,
                "STATE": str(vm.state),
                "LCM_STATE": str(vm.lcm_state),
                "STIME": str(vm.stime),
                "TEMPLATE": {**vm.template, "NIC": nics, "CONTEXT": ctx},
                "USER_TEMPLATE": dict(vm.user_template),
            }
        }

    def _service_hash(self, svc: FakeService, extended: bool) -> dict[str, Any]:
        roles = []
        for role in svc.roles or []:
            nodes = []
            for vm_id in role.node_ids:
                vm = self.vms.get(vm_id)
                if vm is None:
                    if extended:
                        raise _HttpError(404, f"[one.vm.info] Error getting virtual machine [{vm_id}].")
                    info: dict[str, Any] = {"VM": {"ID": str(vm_id)}}
                elif extended:
                    info = self._full_hash(vm)
                else:
                    info = {
                        "VM": {
                            "ID": str(vm.id),
                            "UID": str(vm.uid),
                            "GID": str(vm.gid),
                            "UNAME": vm.uname,
                            "GNAME": vm.gname,
                            "NAME": vm.name,
                        }
                    }
                nodes.append({"deploy_id": vm_id, "running": None, "vm_info": info})
            cardinality = role.cardinality if role.cardinality is not None else len(role.node_ids)
            roles.append({"name": role.name, "cardinality": cardinality, "state": role.state, "nodes": nodes})
        return {"SERVICE": {"name": svc.name, "id": str(svc.id), "state": svc.state, "roles": roles}}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"7.1.80"`` -> ``(7, 1, 80)``; ``"6.10"`` -> ``(6, 10, 0)``."""
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def _with(rec: Recorded, **changes: Any) -> Recorded:
    import dataclasses

    return dataclasses.replace(rec, **changes)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here (slow fault), not news


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    double: OneGateServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the double records requests itself

    def _serve(self, method: str) -> None:
        double = self.double
        if double.drop_connections:
            with double.lock:
                double.dropped += 1
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if double.slow > 0 and double._stop.wait(double.slow):
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = double.handle(method, self.path, headers, body)
        payload = answer.encode()
        self.send_response(status)
        # The real server sets a JSON content type on every answer, errors (plain text) included.
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if double.trickle > 0:
            for i in range(len(payload)):
                if double._stop.wait(double.trickle):
                    break
                self.wfile.write(payload[i : i + 1])
            return
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")


# -- helpers for the tests that use the double ------------------------------------------------------


def access_for(double: OneGateServer, vm: FakeVM, token: str | None = None) -> Any:
    """The OneGateAccess a VM of ``double`` would have (its endpoint, VMID and token)."""
    from flower_ctx.model import OneGateAccess, Secret

    return OneGateAccess(double.url, str(vm.id), Secret((token if token is not None else vm.token).encode()))


def assert_no_token(*texts: str) -> None:
    """Fail when any token this process's doubles issued appears in ``texts``."""
    blob = "\n".join(texts)
    leaked = [t for t in ISSUED_TOKENS if t in blob]
    assert not leaked, "a OneGate token appears in captured output"


def make_ca_pem(common_name: str = "flower-ctx test CA") -> bytes:
    """A self-signed CA certificate (PEM), made here independently of flower_ctx."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def main(argv: list[str] | None = None) -> None:
    """Run the double as a process (e.g. inside a zone's namespace). ``--spec`` is JSON:
    ``{"vms": [{"id": 7, "name": "..", "ips": [".."], "user_template": {..}}],
    "services": [{"id": 21, "name": "..", "roles": {"superlink": [7]}}]}``. Prints one JSON line with
    the port; the tokens go to ``--tokens FILE`` (mode 0600), never to stdout."""
    import os

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--tokens", required=True)
    args = ap.parse_args(argv)
    with open(args.spec) as fh:
        spec = json.load(fh)
    double = OneGateServer(args.host, args.port)
    vms = {}
    for v in spec.get("vms", []):
        vms[v["id"]] = double.add_vm(
            v.get("name", ""), ips=v.get("ips", ()), user_template=v.get("user_template"), vm_id=v["id"]
        )
    for s in spec.get("services", []):
        double.add_service(
            s.get("name", "flower"), {r: [vms[i] for i in ids] for r, ids in s["roles"].items()}, s["id"]
        )
    fd = os.open(args.tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({str(i): vm.token for i, vm in vms.items()}, fh)
    double.start()
    print(json.dumps({"port": double.port}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()


if __name__ == "__main__":
    main()
