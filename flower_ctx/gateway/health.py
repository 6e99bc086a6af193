"""What a gateway is doing, for ``status``, ``doctor``, readiness and the watch (no changes, no secrets).

A gateway serves when: wg0 is up, IPv4 forwarding is on, the routes of its peers' allowed IPs are on
wg0, every peer it dials (one with an endpoint: the hub) completed a handshake recently, and the
SuperLink its SuperNodes dial answers *through it*: a TLS handshake verified with the CA, as a
SuperNode makes it, from the gateway's own address on the zone network. That source address matters:
from it the packets cross the hub exactly like a SuperNode's, so a hub whose AllowedIPs for this
gateway lack the zone's network fails here too (and is named), not only on the SuperNodes.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from ..health import Health, probe_with_local_ca, runtime_doc, tcp_error
from ..model import Config
from ..paths import Paths

STALE_HANDSHAKE_S = 180  # WireGuard re-handshakes every 2 minutes while packets flow (keepalive 25 s)


@dataclass
class GatewayState:
    configured: bool
    wg: Any = None  # wireguard.WgStatus
    forwarding: bool = False
    expected_routes: list[str] = field(default_factory=list)
    missing_routes: list[str] = field(default_factory=list)
    dialled: list[dict[str, Any]] = field(default_factory=list)  # peers with an endpoint (the hub)
    superlink: dict[str, Any] | None = None  # the probe through the gateway
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, fix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "configured": self.configured,
            "forwarding": self.forwarding,
            "routes": {"expected": self.expected_routes, "missing": self.missing_routes},
            "hub": self.dialled,
            "superlink": self.superlink,
            "problems": [{"problem": p, "fix": f} for p, f in self.problems],
        }


def _live_routes(paths: Paths) -> set[str]:
    from ..wireguard import IFNAME
    from ..wireguard.link import open_iproute, read_link

    ipr = open_iproute()
    try:
        link = read_link(ipr, IFNAME)
    finally:
        ipr.close()
    return {str(r) for r in link.routes} if link is not None else set()


def _probe(doc: dict[str, Any], paths: Paths, timeout: float) -> dict[str, Any] | None:
    """The SuperLink, through this gateway, from its zone address; with a diagnosis when only the
    gateway's own tunnel address gets through (the hub does not route the zone's network back)."""
    from ..values import Invalid, host_port

    target_text = doc.get("superlink_address")
    if not target_text:
        return None
    try:
        target = host_port(str(target_text))
    except Invalid:
        return None
    source = doc.get("probe_source")
    tls = bool((doc.get("tls") or {}).get("enabled"))

    def once(src: str | None) -> tuple[bool, str, str]:
        if tls:
            result = probe_with_local_ca(paths, target, timeout, source=src)
            if result is not None:
                return result.ok, result.message, result.kind.value
        err = tcp_error(target, timeout, source=src)
        if err is None:
            return True, f"{target} accepts connections (TCP" + (", no CA to verify TLS)" if tls else ", TLS off)"), \
                "ok"
        return False, f"{target} unreachable: {err}", "unreachable"

    ok, message, kind = once(source)
    out = {"address": str(target), "from": source, "ok": ok, "kind": kind, "message": message}
    if not ok and source and kind == "unreachable":
        alone, _, _ = once(None)
        if alone and doc.get("dials"):
            out["hub_routes_zone"] = False
            out["message"] = (f"{target} answers from this gateway's tunnel address but not from its zone address "
                              f"{source}: the hub does not route this zone's network back through the tunnel")
        elif alone:
            out["superlink_routes_back"] = False
            out["message"] = (f"{target} answers this hub gateway on its own network but not from the tunnel "
                              f"address {source}: the SuperLink does not route the tunnel's networks back through "
                              "this gateway")
    return out


def zone_network(source: str | None) -> str | None:
    """The connected network of the gateway's zone address (what the hub must route back)."""
    if not source:
        return None
    from ..wireguard.link import open_iproute
    from .routes import connected_networks

    ipr = open_iproute()
    try:
        ip = ipaddress.ip_address(source)
        for _, net in connected_networks(ipr):
            if ip.version == net.version and ip in net:
                return str(net)
    except ValueError:
        return None
    finally:
        ipr.close()
    return None


def inspect(paths: Paths, *, timeout: float = 3.0, now: float | None = None) -> GatewayState:
    """Everything about this gateway, from its runtime record and the live machine."""
    from ..inspect import wg_status
    from ..wireguard.link import forwarding_enabled

    doc = runtime_doc(paths, "gateway")
    if doc is None:
        return GatewayState(False, problems=[("not configured: no runtime record",
                                              "run flower-ctx configure --role gateway")])
    st = GatewayState(True)
    st.wg = wg_status(paths)
    st.forwarding = forwarding_enabled()
    st.expected_routes = [str(r) for r in doc.get("routes") or []]
    now = time.time() if now is None else now
    if st.wg is None:
        st.problems.append(("wg0 is not up", "run flower-ctx configure --role gateway"))
        return st
    if not st.wg.up:
        st.problems.append(("wg0 is down", "run flower-ctx configure --role gateway (it brings it up)"))
    if not st.forwarding:
        st.problems.append(("IPv4 forwarding is off: nothing reaches the SuperNodes",
                            "run flower-ctx configure --role gateway (it turns it on)"))
    if not paths.staged:
        live = _live_routes(paths)
        st.missing_routes = [r for r in st.expected_routes if r not in live]
        if st.missing_routes:
            st.problems.append((f"routes missing on wg0: {', '.join(st.missing_routes)}",
                                "run flower-ctx configure --role gateway (it adds them)"))
    dials = set(doc.get("dials") or [])
    for p in st.wg.peers:
        if p.public_key not in dials:
            continue
        age = p.latest_handshake_age
        st.dialled.append({"public_key": p.public_key, "endpoint": p.endpoint, "handshake_age": age})
        if age is None:
            st.problems.append((f"no handshake with the hub {p.public_key[:10]}... ({p.endpoint}) yet",
                                "check the hub's endpoint and UDP port, and that the hub lists this gateway's "
                                "public key (flower-ctx status here shows it)"))
        elif age > STALE_HANDSHAKE_S and p.persistent_keepalive:
            st.problems.append((f"last handshake with the hub {p.public_key[:10]}... {int(age)}s ago",
                                "the hub is gone or UDP is blocked between the zones"))
    st.superlink = _probe(doc, paths, timeout)
    if st.superlink is not None and not st.superlink["ok"]:
        if st.superlink.get("hub_routes_zone") is False:
            net = zone_network(st.superlink.get("from")) or "this zone's network"
            fix = f"on the hub, add {net} to the AllowedIPs of this gateway's [Peer] (one peer per zone gateway)"
        elif st.superlink.get("superlink_routes_back") is False:
            fix = ("on the SuperLink, set FL_GATEWAY_ROUTES to the tunnel network and every zone's network, via "
                   "this gateway (FL_GATEWAY_ADDRESS: its address on the SuperLink's network)")
        else:
            fix = ("check the SuperLink (flower-ctx status there) and the hub; the SuperNodes behind this gateway "
                   "dial the same address")
        st.problems.append((f"SuperLink through this gateway: {st.superlink['message']}", fix))
    return st


def check(config: Config, paths: Paths, *, timeout: float = 3.0) -> Health:
    """Readiness of a gateway (see the module docstring)."""
    st = inspect(paths, timeout=timeout)
    if st.problems:
        what = st.problems[0][0]
        waiting = st.superlink is not None and not st.superlink["ok"] and len(st.problems) == 1
        return Health(False, ("waiting for SuperLink: " if waiting else "") + what, waiting=waiting,
                      kind="gateway")
    parts = ["wg0 up", "forwarding on", f"{len(st.expected_routes)} route(s) on wg0"]
    ages = [d["handshake_age"] for d in st.dialled if d["handshake_age"] is not None]
    if ages:
        parts.append(f"hub handshake {int(min(ages))}s ago")
    if st.superlink is not None:
        parts.append(f"SuperLink {st.superlink['address']} " + ("verified with the CA" if st.superlink["kind"] == "ok"
                                                                and "TCP" not in st.superlink["message"]
                                                                else "reachable") + " through it")
    return Health(True, "gateway up: " + ", ".join(parts), kind="ok")
