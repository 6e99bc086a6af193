"""Kernel backend: pyroute2's generic-netlink ``WireGuard`` client, mapped to the shared state types.

Only usable where the wireguard kernel module exists (the constructor binds the "wireguard" netlink
family). pyroute2's ``set()`` takes one peer per call and cannot ask for REPLACE_PEERS, which suits
the reconcile rule "never replace all peers" exactly.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from ..errors import ApplyError
from .keys import encode_key
from .reconcile import DevicePlan, DeviceState, PeerState, parse_network

ZERO_KEY_B64 = encode_key(bytes(32))


def open_wireguard() -> Any:
    """A pyroute2 WireGuard socket, or None when the kernel has no WireGuard netlink family."""
    try:
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:
        return None
    try:
        return WireGuard()
    except NetlinkError:
        return None


def _b64(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def read_device(wg: Any, ifname: str) -> DeviceState:
    """Merge the (possibly several) dump messages of one device into a DeviceState."""
    private_key: bytes | None = None
    listen_port = 0
    peers: dict[str, PeerState] = {}
    for msg in wg.info(ifname):
        pk = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if pk:
            raw = base64.b64decode(_b64(pk))
            private_key = raw if any(raw) else None
        port = msg.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = int(port)
        for p in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _b64(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            prev = peers.get(key)
            allowed = {parse_network(a["addr"]) for a in _allowed(p)}
            if prev is not None:
                # A large peer continues in the next message: only its allowed IPs are added.
                peers[key] = PeerState(**{**prev.__dict__, "allowed_ips": prev.allowed_ips | allowed})
                continue
            peers[key] = _peer_state(key, p, frozenset(allowed))
    return DeviceState(private_key=private_key, listen_port=listen_port, peers=peers)


def _allowed(p: Any) -> list[dict]:
    # pyroute2 decodes each allowed IP into a dict-like NLA with "addr" = "a.b.c.d/len".
    return [{"addr": a["addr"]} for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or () if a.get("addr")]


def _peer_state(key: str, p: Any, allowed: frozenset) -> PeerState:
    ep = p.get_attr("WGPEER_A_ENDPOINT")
    endpoint = None
    if ep and ep.get("addr") and ep.get("port"):
        endpoint = (ipaddress.ip_address(ep["addr"]).compressed, int(ep["port"]))
    psk_attr = p.get_attr("WGPEER_A_PRESHARED_KEY")
    psk = base64.b64decode(_b64(psk_attr)) if psk_attr else None
    hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
    hs_time = float(hs.get("tv_sec", 0)) + float(hs.get("tv_nsec", 0)) / 1e9
    return PeerState(
        public_key=key,
        endpoint=endpoint,
        persistent_keepalive=int(p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
        allowed_ips=allowed,
        preshared_key=psk if psk and any(psk) else None,
        last_handshake=hs_time if hs_time > 0 else None,
        rx_bytes=int(p.get_attr("WGPEER_A_RX_BYTES") or 0),
        tx_bytes=int(p.get_attr("WGPEER_A_TX_BYTES") or 0),
    )


def peer_request(plan_peer: Any) -> dict[str, Any]:
    """The ``peer=`` dict pyroute2's ``WireGuard.set`` takes for one PeerPlan."""
    req: dict[str, Any] = {"public_key": plan_peer.public_key}
    if plan_peer.action == "remove":
        req["remove"] = True
        return req
    if plan_peer.action == "update":
        req["update_only"] = True
    if plan_peer.endpoint is not None:
        req["endpoint_addr"], req["endpoint_port"] = plan_peer.endpoint
    if plan_peer.set_preshared_key:
        req["preshared_key"] = encode_key(plan_peer.preshared_key) if plan_peer.preshared_key else ZERO_KEY_B64
    if plan_peer.persistent_keepalive is not None:
        req["persistent_keepalive"] = plan_peer.persistent_keepalive
    if plan_peer.allowed_ips is not None:
        req["replace_allowed_ips"] = True
        req["allowed_ips"] = [str(n) for n in plan_peer.allowed_ips]
    return req


def apply_plan(wg: Any, ifname: str, plan: DevicePlan) -> None:
    """One ``set`` for the device fields that differ, then one per changed peer."""
    try:
        if plan.private_key is not None or plan.listen_port is not None:
            kwargs: dict[str, Any] = {}
            if plan.private_key is not None:
                kwargs["private_key"] = encode_key(plan.private_key)
            if plan.listen_port is not None:
                kwargs["listen_port"] = plan.listen_port
            wg.set(ifname, **kwargs)
        for p in plan.peers:
            wg.set(ifname, peer=peer_request(p))
    except ApplyError:
        raise
    except Exception as exc:  # NetlinkError or ValueError from pyroute2
        code = getattr(exc, "code", None)
        raise ApplyError(
            f"{ifname}: the kernel refused the WireGuard configuration "
            f"({type(exc).__name__}{f' errno {code}' if code else ''})"
        ) from exc
