"""Read what is on the machine (no changes): the facts behind ``status`` and ``doctor``. No secrets."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from . import agentstate
from .flowerversion import installed_version
from .health import runtime_doc
from .paths import Paths

ROLES = ("superlink", "supernode", "gateway")
EXPIRY_WARN_DAYS = 30


def detect_role(paths: Paths) -> str | None:
    """The role configure set up here (the runtime config present); None when not configured."""
    from .files import exists

    found = [r for r in ROLES if exists(paths.runtime_config(r))]
    return found[0] if len(found) == 1 else None


@dataclass
class CertInfo:
    path: str
    subject: str = ""
    fingerprint: str = ""
    not_after: str = ""
    not_after_iso: str = ""  # 2027-11-28T20:53:00Z
    days_left: int | None = None
    sans: list[str] = field(default_factory=list)
    problem: str | None = None


def bundle_fingerprints(path: Any) -> list[str]:
    """Fingerprints of every certificate of a CA file (a trust bundle during a rotation)."""
    from . import pem
    from .errors import FlowerCtxError
    from .files import read_file

    try:
        return [pem.fingerprint(c) for c in pem.load_certs(read_file(path))]
    except (OSError, FlowerCtxError):
        return []


def cert_info(path: Any, now: datetime.datetime | None = None) -> CertInfo | None:
    from . import pem
    from .errors import FlowerCtxError
    from .files import read_file

    try:
        data = read_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return CertInfo(str(path), problem=f"unreadable: {exc.strerror}")
    except FlowerCtxError as exc:
        return CertInfo(str(path), problem=str(exc))
    try:
        cert = pem.load_certs(data)[0]
    except pem.PemError as exc:
        return CertInfo(str(path), problem=str(exc))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    days = (cert.not_valid_after_utc - now).days
    return CertInfo(
        str(path),
        subject=cert.subject.rfc4514_string(),
        fingerprint=pem.fingerprint(cert),
        not_after=cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        not_after_iso=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        days_left=days,
        sans=pem.san_entries(cert),
        problem=pem.validity_problem(cert, now),
    )


def wg_status(paths: Paths) -> Any:
    if paths.staged:
        return None
    try:
        from .wireguard import status

        return status(paths)
    except Exception:  # a broken or absent netlink must not break status/doctor
        return None


def federation(paths: Paths, doc: dict[str, Any]) -> dict[str, Any]:
    """The SuperLink's view through its Control API on loopback (as `flwr supernode ls` and `flwr ls`):
    the SuperNodes registered and connected, their last heartbeat, and the runs."""
    import time

    from . import agentstate
    from .admission.control import ControlClient, ControlError
    from .admission.keys import from_pem
    from .errors import FlowerCtxError
    from .files import read_file

    http = doc.get("http_api") or {}
    try:
        ca = read_file(paths.ca_cert) if (doc.get("tls") or {}).get("enabled") else None
        control = ControlClient(str(http.get("host", "127.0.0.1")), int(http.get("port", 8000)), ca, timeout=3.0)
        nodes, runs = control.list_nodes(), control.list_runs()
    except (ControlError, OSError, FlowerCtxError, ValueError) as exc:
        return {"error": str(exc)}
    from . import trust

    report = trust.read_report(paths)
    state = agentstate.read_or_none(paths, "admission.json") or {}
    from_list = set(state.get("ours", []))
    from_onegate = {" ".join(s.split()[:2]) for s in state.get("onegate", [])}
    now = time.time()
    listed = []
    for n in sorted(nodes, key=lambda n: (n.status, n.name, n.node_id)):
        try:
            line = from_pem(n.public_key_pem).line
        except FlowerCtxError:
            line = ""
        by = "onegate" if line in from_onegate else "flower-ctx" if line in from_list else "by hand"
        beat = n.last_heartbeat
        announced = report.get(trust.key_id(n.public_key_pem)) or {}
        listed.append({"node_id": n.node_id, "name": n.name, "status": n.status, "admitted": by,
                       "last_heartbeat_age": round(now - beat, 1) if beat else None,
                       "trusts": announced.get("trust", [])})
    return {
        "supernodes": listed,
        "connected": sum(1 for n in nodes if n.status == "online"),
        "runs": [{"run_id": r.run_id, "app": r.app, "status": r.status, "pending_at": r.pending_at,
                  "finished_at": r.finished_at} for r in runs[-10:]],
    }


def _onegate_record(paths: Paths) -> dict[str, Any] | None:
    try:
        return agentstate.read(paths, "publication.json")
    except agentstate.StateFileError as exc:
        return {"time": 0, "published": False, "reason": str(exc)}


def gateway_facts(paths: Paths) -> dict[str, Any]:
    """What status shows on a gateway: the tunnel, forwarding, routes, the hub, the SuperLink through it."""
    from .gateway.health import inspect as inspect_gateway

    doc = runtime_doc(paths, "gateway") or {}
    st = inspect_gateway(paths)
    out: dict[str, Any] = {
        "role": "gateway",
        "configured": bool(doc),
        "tls": {"enabled": bool((doc.get("tls") or {}).get("enabled"))},
        "superlink_address": doc.get("superlink_address"),
        "gateway": st.to_dict(),
        "wireguard": st.wg.to_dict() if st.wg is not None else None,
        "onegate": _onegate_record(paths),
    }
    ca = cert_info(paths.ca_cert)
    if ca is not None:
        out["tls"]["ca"] = ca.__dict__
    return out


def facts(paths: Paths, role: str) -> dict[str, Any]:
    """Everything status shows, as plain JSON-able data."""
    from .supervisor import for_machine

    if role == "gateway":
        return gateway_facts(paths)
    doc = runtime_doc(paths, role) or {}
    sup = for_machine(paths)
    state = sup.state(role)
    out: dict[str, Any] = {
        "role": role,
        "configured": bool(doc),
        "flower_version": {"configured": doc.get("flower_version"), "installed": installed_version()},
        "service": {"manager": state.manager, "running": state.running, "pid": state.pid, "detail": state.detail},
        "keepalive": doc.get("keepalive"),
        "tls": {"enabled": bool((doc.get("tls") or {}).get("enabled"))},
    }
    if role == "superlink":
        from . import rotation

        out["fleet_api_address"] = doc.get("fleet_api_address")
        out["tls"]["rotation"] = rotation.state(paths)
        out["supernode_auth"] = bool(doc.get("supernode_auth"))
        if state.running:
            out["federation"] = federation(paths, doc)
    else:
        out["superlink_address"] = doc.get("superlink_address")
        disc = agentstate.read_or_none(paths, "discovered.json")
        if disc:
            out["discovered"] = disc
        pin = agentstate.read_or_none(paths, "ca-pin.json")
        if pin:
            out["tls"]["pinned_ca"] = pin
    ca = cert_info(paths.ca_cert)
    if ca is not None:
        out["tls"]["ca"] = ca.__dict__
        out["tls"]["trust_bundle"] = bundle_fingerprints(paths.ca_cert)
    if role == "superlink":
        server = cert_info(paths.server_cert)
        if server is not None:
            out["tls"]["server"] = server.__dict__
    wg = wg_status(paths)
    if wg is not None:
        out["wireguard"] = wg.to_dict()
    else:
        out["wireguard"] = None
    from .gateway.routes import status as gateway_routes

    out["gateway_routes"] = gateway_routes(paths)
    out["onegate"] = _onegate_record(paths)
    return out
