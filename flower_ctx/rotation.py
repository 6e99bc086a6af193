"""CA rotation with overlap (``flower-ctx ca rotate``): a new CA without an outage or a re-paste race.

1. ``ca rotate`` makes the next CA (``certs/ca-next.{crt,key}``) and publishes the trust bundle
   ``current + next`` as ``ca.crt`` (OneGate's FL_CA_CERT, ``ca export``). The server certificate
   stays under the current CA: nothing changes for anyone yet.
2. SuperNodes take the bundle: those of the SuperLink's own service from OneGate by themselves
   (it holds the CA they pinned), those of other zones through FL_SSL_CA_CERTFILE. Each announces
   on its connection which CAs it trusts (``trust``); ``status`` shows who does not trust the next
   CA yet.
3. ``ca rotate --finish``, once every SuperNode online trusts the next CA: the next CA becomes the
   current one (bundle ``next + previous``), the server certificate is re-issued under it and the
   running Flower serves it on new handshakes (``certreload``). Nobody lost trust at any point.
4. ``ca rotate --drop-old`` later removes the previous CA from the bundle.

Operator PKI rotates the same way through CONTEXT: FL_SSL_CA_CERTFILE takes the bundle, then
FL_SSL_CERTFILE/FL_SSL_KEYFILE from the next CA.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

from . import agentstate
from .errors import FlowerCtxError
from .files import exists, read_file, unlink, write_file
from .paths import Paths

STATE = "ca-rotation.json"
FRESH_S = 300  # a SuperNode's trust announcement counts when seen within this many seconds


class RotationError(FlowerCtxError):
    """The rotation cannot take this step (the message says why and what to do)."""


def next_paths(paths: Paths) -> tuple[Any, Any]:
    return paths.certs_dir / "ca-next.crt", paths.certs_dir / "ca-next.key"


def state(paths: Paths) -> dict[str, Any] | None:
    return agentstate.read_or_none(paths, STATE)


def _current(paths: Paths) -> tuple[list[Any], Any]:
    from . import pem

    try:
        certs = pem.load_certs(read_file(paths.ca_cert))
        key = pem.load_private_key(read_file(paths.ca_key))
    except (OSError, FlowerCtxError) as exc:
        raise RotationError(f"no usable generated CA here ({exc}): run flower-ctx configure on the SuperLink; with "
                            "operator PKI, rotate through FL_SSL_CA_CERTFILE instead") from None
    if not pem.key_matches_cert(key, certs[0]):
        raise RotationError(f"{paths.ca_key} does not belong to the first certificate of {paths.ca_cert}")
    return certs, key


def start(paths: Paths, now: datetime.datetime | None = None) -> str:
    """Step 1; returns the next CA's fingerprint."""
    from . import pem, tls

    crt, key = next_paths(paths)
    if exists(crt) or exists(key):
        raise RotationError("a rotation is already under way: finish it (flower-ctx ca rotate --finish)")
    certs, _ = _current(paths)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    next_key = tls.new_key()
    next_ca = tls.make_ca(next_key, now)
    write_file(key, tls.key_pem(next_key), 0o600, owner="root", group="root")  # key first, as everywhere
    write_file(crt, tls.cert_pem(next_ca), 0o644)
    write_file(paths.ca_cert, tls.cert_pem(certs[0], next_ca), 0o644)
    fp_next = pem.fingerprint(next_ca)
    agentstate.write(paths, STATE, {"phase": "started", "current": pem.fingerprint(certs[0]), "next": fp_next,
                                    "time": int(time.time())})
    return fp_next


@dataclass(frozen=True)
class Laggard:
    node_id: int
    name: str
    trusts: tuple[str, ...]  # what it last announced (empty: nothing announced recently)


def laggards(paths: Paths, next_fp: str, nodes: list[Any]) -> list[Laggard]:
    """SuperNodes online that have not announced trusting ``next_fp`` recently."""
    from . import trust

    report = trust.read_report(paths)
    now = time.time()
    out = []
    for n in nodes:
        if n.status != "online":
            continue
        entry = report.get(trust.key_id(n.public_key_pem))
        fresh = entry is not None and now - entry["seen"] <= FRESH_S
        if not fresh or next_fp not in entry["trust"]:
            out.append(Laggard(n.node_id, n.name, tuple(entry["trust"]) if fresh and entry else ()))
    return out


def finish(paths: Paths) -> tuple[str, str]:
    """Step 3 (files only; the caller re-issues the server certificate): returns (new, previous)."""
    from . import pem, tls

    st = state(paths) or {}
    crt, key = next_paths(paths)
    if st.get("phase") != "started" or not exists(crt) or not exists(key):
        raise RotationError("no rotation under way: start one with flower-ctx ca rotate")
    certs, _ = _current(paths)
    try:
        next_ca = pem.load_certs(read_file(crt))[0]
        next_key_pem = read_file(key)
        if not pem.key_matches_cert(pem.load_private_key(next_key_pem), next_ca):
            raise RotationError(f"{key} does not belong to {crt}")
    except (OSError, pem.PemError) as exc:
        raise RotationError(f"the next CA is unusable ({exc})") from None
    write_file(paths.ca_key, next_key_pem, 0o600, owner="root", group="root")
    write_file(paths.ca_cert, tls.cert_pem(next_ca, certs[0]), 0o644)
    unlink(key)
    unlink(crt)
    new, previous = pem.fingerprint(next_ca), pem.fingerprint(certs[0])
    agentstate.write(paths, STATE, {"phase": "finished", "current": new, "previous": previous,
                                    "time": int(time.time())})
    return new, previous


def drop_old(paths: Paths) -> str:
    """Step 4: the bundle becomes the current CA alone; returns the dropped fingerprint."""
    from . import pem, tls

    st = state(paths) or {}
    if st.get("phase") != "finished":
        raise RotationError("nothing to drop: no finished rotation (see flower-ctx status)")
    certs, _ = _current(paths)
    write_file(paths.ca_cert, tls.cert_pem(certs[0]), 0o644)
    unlink(paths.agent_dir / STATE)
    return str(st.get("previous")) if len(certs) > 1 else pem.fingerprint(certs[0])
