"""The pure part of WireGuard reconciliation: state types and the difference between two states.

Both backends (wireguard-go over UAPI, kernel over netlink) read the live device into
:class:`DeviceState` and apply a :class:`DevicePlan`; the link (MTU, addresses, up, routes) is read
into :class:`LinkState` and changed by a :class:`LinkPlan`. Nothing here does I/O, so every rule of
"change only what differs" is unit-tested directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import ApplyError
from ..model import IPInterface, IPNetwork
from .keys import clamp, short

Endpoint = tuple[str, int]  # (IP literal in compressed form, port)


@dataclass(frozen=True)
class PeerState:
    public_key: str  # base64
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0
    allowed_ips: frozenset[IPNetwork] = frozenset()
    preshared_key: bytes | None = field(default=None, repr=False)  # raw; None = no PSK
    last_handshake: float | None = None  # epoch seconds; None = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class DeviceState:
    private_key: bytes | None = field(default=None, repr=False)  # raw, as the device holds it
    listen_port: int = 0
    peers: dict[str, PeerState] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredPeer:
    public_key: str
    allowed_ips: frozenset[IPNetwork]
    endpoint: Endpoint | None = None  # None: leave whatever the device learned
    persistent_keepalive: int = 0
    preshared_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DesiredDevice:
    private_key: bytes = field(repr=False)
    listen_port: int
    peers: tuple[DesiredPeer, ...]


@dataclass(frozen=True)
class PeerPlan:
    """What to send for one peer. Fields left None are not sent (the device keeps its value)."""

    public_key: str
    action: str  # "create", "update" or "remove"
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    set_preshared_key: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)  # with set_preshared_key; None = clear
    allowed_ips: tuple[IPNetwork, ...] | None = None  # full replacement list when it differs
    changed: tuple[str, ...] = ()  # field names, for the report

    def describe(self) -> str:
        return f"peer {short(self.public_key)}"


@dataclass(frozen=True)
class DevicePlan:
    private_key: bytes | None = field(default=None, repr=False)  # set when it differs
    listen_port: int | None = None  # set only when it differs: a re-sent port rebinds the socket
    peers: tuple[PeerPlan, ...] = ()

    @property
    def empty(self) -> bool:
        return self.private_key is None and self.listen_port is None and not self.peers


def _sorted_ips(ips: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(ips, key=lambda n: (n.version, n.network_address.packed, n.prefixlen)))


def plan_device(desired: DesiredDevice, current: DeviceState) -> DevicePlan:
    """The smallest set of changes that turns ``current`` into ``desired``.

    Never replaces all peers (that drops every session); compares private keys clamped (the device
    returns the clamped form); leaves a learned endpoint alone when none is configured.
    """
    private_key = None
    if current.private_key is None or clamp(current.private_key) != clamp(desired.private_key):
        private_key = desired.private_key
    listen_port = desired.listen_port if current.listen_port != desired.listen_port else None

    plans: list[PeerPlan] = []
    wanted = {p.public_key: p for p in desired.peers}
    for peer in desired.peers:
        have = current.peers.get(peer.public_key)
        plan = _plan_peer(peer, have)
        if plan is not None:
            plans.append(plan)
    for key in sorted(current.peers):
        if key not in wanted:
            plans.append(PeerPlan(public_key=key, action="remove", changed=("removed",)))
    return DevicePlan(private_key=private_key, listen_port=listen_port, peers=tuple(plans))


def _plan_peer(peer: DesiredPeer, have: PeerState | None) -> PeerPlan | None:
    if have is None:
        return PeerPlan(
            public_key=peer.public_key,
            action="create",
            endpoint=peer.endpoint,
            persistent_keepalive=peer.persistent_keepalive,
            set_preshared_key=peer.preshared_key is not None,
            preshared_key=peer.preshared_key,
            allowed_ips=_sorted_ips(peer.allowed_ips),
            changed=("created",),
        )
    changed: list[str] = []
    endpoint = None
    if peer.endpoint is not None and peer.endpoint != have.endpoint:
        endpoint = peer.endpoint
        changed.append("endpoint")
    keepalive = None
    if peer.persistent_keepalive != have.persistent_keepalive:
        keepalive = peer.persistent_keepalive
        changed.append("persistent-keepalive")
    set_psk = peer.preshared_key != have.preshared_key
    if set_psk:
        changed.append("preshared-key")
    allowed = None
    if peer.allowed_ips != have.allowed_ips:
        allowed = _sorted_ips(peer.allowed_ips)
        changed.append("allowed-ips")
    if not changed:
        return None
    return PeerPlan(
        public_key=peer.public_key,
        action="update",
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        set_preshared_key=set_psk,
        preshared_key=peer.preshared_key if set_psk else None,
        allowed_ips=allowed,
        changed=tuple(changed),
    )


# --- link -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkAddress:
    address: IPInterface
    scope: int = 0  # 0 universe; 253 link: the kernel's own fe80:: on the tun


@dataclass(frozen=True)
class LinkState:
    kind: str | None  # IFLA_INFO_KIND: "wireguard" (kernel), "tun" (wireguard-go), other = not ours
    ifindex: int
    mtu: int
    up: bool
    addresses: tuple[LinkAddress, ...] = ()
    routes: frozenset[IPNetwork] = frozenset()  # routes on the link tagged with our protocol number


@dataclass(frozen=True)
class LinkPlan:
    mtu: int | None = None
    add_addresses: tuple[IPInterface, ...] = ()
    del_addresses: tuple[IPInterface, ...] = ()
    set_up: bool = False
    add_routes: tuple[IPNetwork, ...] = ()
    del_routes: tuple[IPNetwork, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.mtu is not None
            or self.add_addresses
            or self.del_addresses
            or self.set_up
            or self.add_routes
            or self.del_routes
        )


def _managed(addr: LinkAddress) -> bool:
    """Addresses the agent owns: global scope and not link-local (the kernel adds and owns fe80::)."""
    return addr.scope == 0 and not addr.address.ip.is_link_local


def desired_routes(address: IPInterface, peers: Iterable[DesiredPeer]) -> tuple[frozenset[IPNetwork], list[str]]:
    """Routes for the peers' allowed IPs, minus what the connected prefix already covers.

    A /0 is never routed (it would replace the VM's default route and cut the underlay the tunnel
    itself runs on); it is reported as a warning instead.
    """
    from ..underlay import routed

    routes: set[IPNetwork] = set()
    warnings: list[str] = []
    for peer in peers:
        for net in peer.allowed_ips:
            if net.prefixlen == 0:
                warnings.append(
                    f"wg0 peer {short(peer.public_key)}: allowed IP {net} is accepted on the tunnel "
                    "but not routed (a default route through wg0 would cut the underlay)"
                )
        routes |= routed(address.network, peer.allowed_ips)
    return frozenset(routes), warnings


def plan_link(address: IPInterface, mtu: int, routes: frozenset[IPNetwork], current: LinkState) -> LinkPlan:
    have = {a.address for a in current.addresses if _managed(a)}
    want = {address}
    return LinkPlan(
        mtu=mtu if current.mtu != mtu else None,
        add_addresses=tuple(sorted(want - have, key=str)),
        del_addresses=tuple(sorted(have - want, key=str)),
        set_up=not current.up,
        add_routes=_sorted_ips(routes - current.routes),
        del_routes=_sorted_ips(current.routes - routes),
    )


# --- which backend ------------------------------------------------------------------------------


def choose_backend(link_kind: str | None, link_exists: bool, uapi_alive: bool) -> str:
    """``kernel``, ``userspace`` (reuse a live wireguard-go) or ``create`` (no wg0 yet).

    A wg0 that exists but is not WireGuard (a veth, a persistent tun nobody serves) is an error:
    deleting someone else's interface is never the agent's call.
    """
    if not link_exists:
        return "create"
    if link_kind == "wireguard":
        return "kernel"
    if link_kind == "tun" and uapi_alive:
        return "userspace"
    what = f"kind={link_kind}" if link_kind else "unknown kind"
    if link_kind == "tun":
        what += ", no live wireguard-go socket"
    raise ApplyError(
        f"wg0 exists but is not a WireGuard interface ({what}); flower-ctx will not touch it. "
        "Remove or rename it (ip link del wg0) and run configure again."
    )


def parse_network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)
