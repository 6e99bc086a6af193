"""Metrics for Prometheus, through node_exporter's textfile collector.

Why a file and not a ``/metrics`` endpoint: an OpenNebula VM is monitored by the node_exporter
it already runs (Debian's ``prometheus-node-exporter`` reads ``*.prom`` files from
``/var/lib/prometheus/node-exporter``); a file adds no listening port to an appliance whose
attack surface is kept small on purpose, needs no daemon of its own, and the last values stay
readable (with their timestamp) when the agent is down. The readiness watch rewrites the file
atomically every ``EVERY_S`` seconds; ``flower-ctx metrics`` prints the same text.

Pure: ``render`` turns the facts ``status`` shows (``inspect.facts``) into the text format.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable
from typing import Any

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
FILE_NAME = "flower_ctx.prom"
EVERY_S = 15.0


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, object], float]]) -> None:
        samples = list(samples)
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) and value != int(value) else str(int(value))


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def render(facts: dict[str, Any], *, ready: bool | None, agent_version: str, now: float | None = None) -> str:
    """The Prometheus text exposition of one VM (see the module docstring for the metric set)."""
    now = time.time() if now is None else now
    out = _Out()
    role = facts.get("role", "")
    fv = facts.get("flower_version") or {}
    out.metric("flower_ctx_info", "gauge", "The agent, the role of this VM and the Flower it runs.",
               [({"role": role, "flower_version": fv.get("installed") or "", "agent_version": agent_version}, 1)])
    service = facts.get("service") or {}
    if role != "gateway":  # a site gateway runs no Flower
        out.metric("flower_up", "gauge", "1 when the Flower process of this VM's role runs.",
                   [({"role": role}, 1 if service.get("running") else 0)])
    gw = facts.get("gateway") or {}
    if gw:
        out.metric("flower_gateway_forwarding", "gauge", "1 when this site gateway forwards (IPv4 forwarding on).",
                   [({}, 1 if gw.get("forwarding") else 0)])
        sl = gw.get("superlink")
        if sl:
            out.metric("flower_gateway_superlink_reachable", "gauge",
                       "1 when the SuperLink answers through this gateway (the check its SuperNodes' handshake makes).",
                       [({"superlink": sl.get("address", "")}, 1 if sl.get("ok") else 0)])
    if ready is not None:
        out.metric("flower_ready", "gauge", "1 when the role really serves (the readiness published to OneGate).",
                   [({"role": role}, 1 if ready else 0)])
    fed = facts.get("federation") or {}
    if "supernodes" in fed:
        nodes = fed["supernodes"]
        out.metric("flower_supernodes_registered", "gauge", "SuperNodes registered with this SuperLink.",
                   [({}, sum(1 for n in nodes if n.get("status") != "unregistered"))])
        out.metric("flower_supernodes_connected", "gauge", "SuperNodes online (heartbeating) now.",
                   [({}, int(fed.get("connected", 0)))])
        out.metric("flower_supernode_last_heartbeat_age_seconds", "gauge",
                   "Seconds since each online SuperNode's last heartbeat.",
                   [({"node_id": n.get("node_id"), "name": n.get("name") or ""}, float(n["last_heartbeat_age"]))
                    for n in nodes if n.get("last_heartbeat_age") is not None])
    certs = []
    tls = facts.get("tls") or {}
    for key, label in (("server", "server"), ("ca", "ca")):
        info = tls.get(key) or {}
        ts = _timestamp(info.get("not_after_iso", ""))
        if ts is not None:
            certs.append(({"cert": label}, ts))
    out.metric("flower_certificate_expiry_timestamp_seconds", "gauge",
               "When each certificate of this VM stops being valid (Unix time).", certs)
    wg = facts.get("wireguard") or {}
    peers = [p for p in wg.get("peers") or [] if p.get("latest_handshake_age") is not None]
    out.metric("flower_wireguard_peer_last_handshake_age_seconds", "gauge",
               "Seconds since the last WireGuard handshake with each peer of wg0.",
               [({"peer": p.get("public_key", "")}, float(p["latest_handshake_age"])) for p in peers])
    never = [p for p in wg.get("peers") or [] if p.get("latest_handshake_age") is None]
    out.metric("flower_wireguard_peer_never_handshaked", "gauge", "1 for each wg0 peer without any handshake yet.",
               [({"peer": p.get("public_key", "")}, 1) for p in never])
    og = facts.get("onegate")
    if isinstance(og, dict) and og.get("time"):
        ok = bool(og.get("published")) and not og.get("onegate_problem")
        out.metric("flower_onegate_last_publication_success", "gauge",
                   "1 when the last publication to OneGate went through.", [({}, 1 if ok else 0)])
        out.metric("flower_onegate_last_publication_timestamp_seconds", "gauge",
                   "When the agent last published to OneGate (Unix time).", [({}, float(og["time"]))])
    out.metric("flower_ctx_metrics_timestamp_seconds", "gauge", "When these values were taken (Unix time).",
               [({}, float(int(now)))])
    return "\n".join(out.lines) + "\n"


def write(paths: Any, text: str) -> None:
    """The textfile collector's file, written atomically (node_exporter never reads half a file)."""
    from pathlib import Path

    from .files import ensure_dir, write_file

    directory = paths.root / TEXTFILE_DIR.lstrip("/")
    ensure_dir(Path(directory), 0o755)
    write_file(Path(directory) / FILE_NAME, text.encode(), 0o644)
