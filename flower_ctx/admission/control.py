"""Flower's Control API on loopback, for what the agent administers: SuperNode registration and
the node and run lists that ``status`` shows.

Flower 1.39 and later serve the Control API as protobuf over HTTP(S) on the SuperLink's
``--host:--port`` (127.0.0.1:8000 here, with the Fleet TLS certificate): ``POST /v1/control/<rpc>``
with ``Content-Type: application/protobuf`` and Flower's own ``control_pb2`` message as body;
errors come back as JSON ``{"code": N, "detail": "..."}`` (read in the flwr wheel, research note
supernode-auth-139). Without account authentication (the open-source default) anyone who reaches
that port can register nodes: it must stay on loopback, which the runtime config guarantees.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from ..errors import FlowerCtxError

MEDIA_TYPE = "application/protobuf"
TIMEOUT_S = 10.0
MAX_ANSWER = 16 * 1024 * 1024


class ControlError(FlowerCtxError):
    """The Control API refused or could not be reached; ``code`` is Flower's error code if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


KEY_IN_USE = 23  # Flower: "Public key already in use." (also for a key unregistered before)


@dataclass(frozen=True)
class Node:
    node_id: int
    status: str  # registered | online | offline | unregistered
    public_key_pem: bytes
    name: str
    online_until: float
    heartbeat_interval: float
    last_activated_at: str
    registered_at: str

    @property
    def last_heartbeat(self) -> float | None:
        """Epoch seconds of the last heartbeat of an online node (Flower sets online_until to the
        heartbeat time + 2 intervals); None when it is not online."""
        if self.status != "online" or not self.online_until:
            return None
        return self.online_until - 2 * self.heartbeat_interval


@dataclass(frozen=True)
class Run:
    run_id: int
    app: str
    status: str  # pending | starting | running | finished[:completed|failed|stopped]
    pending_at: str
    finished_at: str


class ControlClient:
    """One SuperLink's Control API at ``host:port``; TLS verified with ``ca_pem`` (None: plain HTTP)."""

    def __init__(self, host: str, port: int, ca_pem: bytes | None, timeout: float = TIMEOUT_S) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._ctx: ssl.SSLContext | None = None
        if ca_pem is not None:
            self._ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii"))

    def _call(self, rpc: str, request: Any, response_type: Any) -> Any:
        import http.client

        cls = http.client.HTTPSConnection if self._ctx is not None else http.client.HTTPConnection
        kw = {"context": self._ctx} if self._ctx is not None else {}
        conn = cls(self.host, self.port, timeout=self.timeout, **kw)
        try:
            conn.request("POST", f"/v1/control/{rpc}", body=request.SerializeToString(),
                         headers={"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE})
            resp = conn.getresponse()
            body = resp.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise ControlError(f"Flower's Control API at {self.host}:{self.port} did not answer "
                               f"({exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__})"
                               ) from None
        finally:
            conn.close()
        if len(body) > MAX_ANSWER:
            raise ControlError("Flower's Control API answered with more than 16 MiB")
        if resp.status != 200:
            code, detail = None, body[:200].decode("utf-8", "replace")
            try:
                doc = json.loads(body)
                code, detail = int(doc.get("code")), str(doc.get("detail", ""))[:200]
            except (ValueError, TypeError, AttributeError):
                pass
            raise ControlError(f"Flower's Control API refused {rpc}: HTTP {resp.status} {detail}", code)
        out = response_type()
        try:
            out.ParseFromString(body)
        except Exception:  # DecodeError: an answer that is not the message
            raise ControlError(f"Flower's Control API answered {rpc} with something that is not its message") from None
        return out

    def register(self, public_key_pem: bytes, name: str = "") -> int:
        from flwr.proto import control_pb2

        req = control_pb2.RegisterNodeRequest(public_key=public_key_pem)
        if name:
            req.name = name
        return int(self._call("register-node", req, control_pb2.RegisterNodeResponse).node_id)

    def unregister(self, node_id: int) -> None:
        from flwr.proto import control_pb2

        self._call("unregister-node", control_pb2.UnregisterNodeRequest(node_id=node_id),
                   control_pb2.UnregisterNodeResponse)

    def list_nodes(self) -> list[Node]:
        from flwr.proto import control_pb2

        res = self._call("list-nodes", control_pb2.ListNodesRequest(), control_pb2.ListNodesResponse)
        return [Node(n.node_id, n.status, bytes(n.public_key), n.name, n.online_until, n.heartbeat_interval,
                     n.last_activated_at, n.registered_at) for n in res.nodes_info]

    def list_runs(self) -> list[Run]:
        from flwr.proto import control_pb2

        res = self._call("list-runs", control_pb2.ListRunsRequest(), control_pb2.ListRunsResponse)
        out = []
        for run_id, r in res.run_dict.items():
            status = r.status.status + (f":{r.status.sub_status}" if r.status.sub_status else "")
            out.append(Run(int(run_id), f"{r.fab_id}=={r.fab_version}" if r.fab_id else r.fab_hash[:12], status,
                           r.pending_at, r.finished_at))
        return sorted(out, key=lambda r: r.pending_at)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
