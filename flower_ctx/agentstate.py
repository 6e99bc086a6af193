"""Small JSON records the agent keeps between runs under /etc/flower-ctx (no secrets in them).

- ``discovered.json``: the SuperLink a SuperNode found through OneGate, so a later ``configure``
  keeps using it (a re-run must not reset the runtime config to "no address").
- ``publication.json``: the last OneGate publication and its result, for ``status``.

Each record is checked on the way in: a damaged one (a full disk, a hand edit) is named, never a crash.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import FlowerCtxError
from .files import ensure_dir, read_file, write_file
from .model import HostPort
from .paths import Paths
from .values import Invalid, host_port


class StateFileError(FlowerCtxError):
    """A record under /etc/flower-ctx is damaged; the message names it and what to do."""


def _str_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, str) and len(v) < 4096)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) < 256 and all(isinstance(x, str) and len(x) < 256 for x in v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40


# name -> {key: (required, check)}: what a record must hold to be used.
SHAPES: dict[str, dict[str, tuple[bool, Callable[[Any], bool]]]] = {
    "discovered.json": {
        "endpoint": (True, lambda v: isinstance(v, str) and len(v) < 512),
        "tls": (True, lambda v: isinstance(v, bool)),
        "ca_fingerprint": (False, _str_or_none),
        "superlink_vm": (False, _str_or_none),
    },
    "ca-pin.json": {
        "fingerprint": (True, lambda v: isinstance(v, str) and v.startswith("sha256:") and len(v) == 71),
        "fingerprints": (False, lambda v: isinstance(v, list) and len(v) <= 8 and all(isinstance(x, str) for x in v)),
        "vm": (False, _str_or_none),
        "time": (False, _int),
        "refused": (False, lambda v: isinstance(v, dict) and all(isinstance(x, (str, int)) for x in v.values())),
    },
    "ca-rotation.json": {
        "phase": (True, lambda v: v in ("started", "finished")),
        "current": (True, _str_or_none),
        "next": (False, _str_or_none),
        "previous": (False, _str_or_none),
        "time": (False, _int),
    },
    "admission.json": {
        "ours": (True, lambda v: isinstance(v, list) and len(v) <= 4096 and all(isinstance(x, str) for x in v)),
        "onegate": (True, lambda v: isinstance(v, list) and len(v) <= 4096 and all(isinstance(x, str) for x in v)),
    },
    "app-dependencies.json": {
        "installed": (True, _str_list),  # canonical names FL_APP_DEPENDENCIES installed (may be changed later)
        "failed": (False, _str_or_none),  # why the last attempt failed, or None
        "time": (False, _int),
    },
    "identity.json": {
        "vmid": (True, _str_or_none),
        "name": (True, lambda v: isinstance(v, str) and len(v) < 256),
        "number": (True, lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**6),
    },
    "gateway.json": {
        "address": (True, lambda v: isinstance(v, str) and len(v) < 64),
        "routes": (True, _str_list),
        "source": (False, _str_or_none),
    },
    "publication.json": {
        "time": (True, _int),
        "published": (True, lambda v: isinstance(v, bool)),
        "ready": (False, lambda v: isinstance(v, bool)),
        "error": (False, _str_or_none),
        "onegate_problem": (False, _str_or_none),
        "reason": (False, _str_or_none),
        "sent": (False, _str_list),
        "deleted": (False, _str_list),
    },
}


def _path(paths: Paths, name: str) -> Path:
    return paths.agent_dir / name


def read(paths: Paths, name: str) -> dict[str, Any] | None:
    """The record ``name``; None when there is none. StateFileError when it is damaged."""
    path = _path(paths, name)
    try:
        data = read_file(path, limit=1024 * 1024)
    except FileNotFoundError:
        return None
    except (OSError, FlowerCtxError) as exc:
        raise StateFileError(f"{path}: cannot read it ({exc})") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    wrong = ["not a JSON object"] if not isinstance(doc, dict) else [
        key for key, (required, ok) in SHAPES.get(name, {}).items()
        if (key in doc and not ok(doc[key])) or (required and key not in doc)
    ]
    if wrong:
        raise StateFileError(
            f"{path} is damaged ({', '.join(wrong)}): delete it; flower-ctx writes it again at the next run"
        )
    assert isinstance(doc, dict)
    return doc


def read_or_none(paths: Paths, name: str) -> dict[str, Any] | None:
    """The record, or None when it is absent or damaged (for callers that can do without it)."""
    try:
        return read(paths, name)
    except StateFileError:
        return None


def write(paths: Paths, name: str, doc: dict[str, Any]) -> bool:
    ensure_dir(paths.agent_dir, 0o700)
    change = write_file(_path(paths, name), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o600)
    return change.outcome.value != "unchanged"


def discovered_superlink(paths: Paths) -> HostPort | None:
    """The SuperLink found earlier; None when unknown (a damaged record means: discover again)."""
    doc = read_or_none(paths, "discovered.json")
    if not doc:
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
