"""Small JSON records the agent keeps between runs under /etc/flower-ctx (no secrets in them).

- ``discovered.json``: the SuperLink a SuperNode found through OneGate, so a later ``configure``
  keeps using it (a re-run must not reset the runtime config to "no address").
- ``publication.json``: the last OneGate publication and its result, for ``status``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .files import ensure_dir, write_file
from .model import HostPort
from .paths import Paths
from .values import Invalid, host_port


def _path(paths: Paths, name: str) -> Path:
    return paths.agent_dir / name


def read(paths: Paths, name: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(_path(paths, name).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write(paths: Paths, name: str, doc: dict[str, Any]) -> bool:
    ensure_dir(paths.agent_dir, 0o700)
    change = write_file(_path(paths, name), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o600)
    return change.outcome.value != "unchanged"


def discovered_superlink(paths: Paths) -> HostPort | None:
    doc = read(paths, "discovered.json")
    if not doc or not isinstance(doc.get("endpoint"), str):
        return None
    try:
        return host_port(doc["endpoint"])
    except Invalid:
        return None


def record_discovery(paths: Paths, endpoint: HostPort, tls: bool, ca_fingerprint: str | None, vm_id: str) -> bool:
    return write(
        paths,
        "discovered.json",
        {"endpoint": str(endpoint), "tls": tls, "ca_fingerprint": ca_fingerprint, "superlink_vm": vm_id},
    )


def record_publication(paths: Paths, doc: dict[str, Any]) -> None:
    write(paths, "publication.json", {"time": int(time.time()), **doc})
