"""Which CAs each connected SuperNode trusts: what tells a CA rotation it may finish.

A SuperLink cannot ask a SuperNode anything (SuperNodes dial out), so each SuperNode says it on its
own connection: ``flower-ctx run`` gives its gRPC channel a user agent naming the fingerprints of
every CA in its ``ca.crt`` (``flower-ctx-trust/sha256:...,sha256:...``), and the SuperLink's
``flower-ctx run`` records, per SuperNode public key (Flower's ``flwr-public-key-bin`` metadata),
the fingerprints it last announced, in ``state/trust-report.json`` (written by the ``flower`` user,
read by the agent as untrusted input). ``flower-ctx ca rotate --finish`` then checks that every
SuperNode online trusts the next CA, and ``status`` shows who does not yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("flower_ctx.trust")

PREFIX = "flower-ctx-trust/"
REPORT = "trust-report.json"
FLUSH_S = 5.0
MAX_ENTRIES = 4096


def fingerprints(ca_pem: bytes) -> list[str]:
    from .pem import fingerprint, load_certs

    return [fingerprint(c) for c in load_certs(ca_pem)]


def user_agent(ca_pem: bytes) -> str:
    return PREFIX + ",".join(fingerprints(ca_pem))


def parse_user_agent(value: str) -> list[str] | None:
    """The fingerprints a user agent announces (anywhere in it: gRPC appends its own), or None."""
    at = value.find(PREFIX)
    if at < 0:
        return None
    text = value[at + len(PREFIX):].split(" ", 1)[0]
    fps = [f for f in text.split(",") if len(f) == 71 and f.startswith("sha256:")]
    return fps[:8] or None


def key_id(public_key_pem: bytes) -> str:
    """A short, stable name of a SuperNode public key (the hash of its PEM)."""
    return hashlib.sha256(public_key_pem.strip()).hexdigest()[:32]


class Recorder:
    """A gRPC server interceptor that notes what each SuperNode announces; flushed to ``path``."""

    def __init__(self, path: Path) -> None:
        import grpc

        self._base = grpc.ServerInterceptor
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self._dirty = False
        self._flusher: threading.Thread | None = None

    def note(self, metadata: Any) -> None:
        agent, key = None, None
        for k, v in metadata or ():
            if k == "user-agent" and isinstance(v, str):
                agent = v
            elif k == "flwr-public-key-bin" and isinstance(v, bytes):
                key = v
        fps = parse_user_agent(agent) if agent else None
        if not fps or not key:
            return
        kid = key_id(key)
        with self.lock:
            old = self.entries.get(kid)
            if old is None and len(self.entries) >= MAX_ENTRIES:
                return
            changed = old is None or old["trust"] != fps
            self.entries[kid] = {"trust": fps, "seen": int(time.time())}
            if changed or time.time() - old["seen"] > 30:
                self._dirty = True
        self._start()

    def _start(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._loop, name="flower-ctx-trust", daemon=True)
            self._flusher.start()

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if not self._dirty:
                return
            doc = json.dumps(self.entries, sort_keys=True)
            self._dirty = False
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(doc)
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("trust report not written: %s", exc)


def interceptor(path: Path) -> Any:
    """A ``grpc.ServerInterceptor`` recording into ``path`` (grpc imported here: Flower's process)."""
    import grpc

    recorder = Recorder(path)

    class TrustInterceptor(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
            try:
                recorder.note(handler_call_details.invocation_metadata)
            except Exception:  # never in Flower's way
                log.debug("trust report: could not note a call", exc_info=True)
            return continuation(handler_call_details)

    return TrustInterceptor()


def read_report(paths: Any) -> dict[str, dict[str, Any]]:
    """The SuperLink's trust report ({key id: {"trust": [fps], "seen": epoch}}); {} when absent or
    unusable (it is written by the flower user: read without following links, checked)."""
    from .errors import FlowerCtxError
    from .files import read_file

    try:
        doc = json.loads(read_file(paths.state_dir / REPORT, limit=4 * 1024 * 1024))
    except (OSError, FlowerCtxError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for kid, entry in list(doc.items())[:MAX_ENTRIES]:
        if not (isinstance(kid, str) and isinstance(entry, dict) and isinstance(entry.get("trust"), list)
                and isinstance(entry.get("seen"), int)):
            continue
        fps = [f for f in entry["trust"] if isinstance(f, str) and len(f) == 71 and f.startswith("sha256:")]
        out[kid] = {"trust": fps, "seen": entry["seen"]}
    return out
