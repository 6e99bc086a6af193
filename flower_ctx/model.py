"""Typed values the validators produce. Pure data: no I/O, no heavy imports."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Role(str, enum.Enum):
    SUPERLINK = "superlink"
    SUPERNODE = "supernode"
    # A zone's site gateway (or the coordinator zone's hub gateway): a WireGuard node that forwards
    # between its zone's network and the tunnel; it runs no Flower (docs/site-gateways.md).
    GATEWAY = "gateway"

    @property
    def letter(self) -> str:
        return {"superlink": "L", "supernode": "N", "gateway": "G"}[self.value]

    @property
    def label(self) -> str:
        return {"superlink": "SuperLink", "supernode": "SuperNode", "gateway": "gateway"}[self.value]


@dataclass(frozen=True)
class Secret:
    """A secret value. ``repr``/``str`` never show it; use ``.reveal()`` where it must be written."""

    _value: bytes = field(repr=False)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(********)"

    __str__ = __repr__


@dataclass(frozen=True)
class HostPort:
    """``host:port``; ``host`` is an IP address or a DNS name (resolved at apply time)."""

    host: str
    port: int

    @property
    def ip(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        ip = self.ip
        if ip is not None and ip.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SanEntry:
    """A subjectAltName: kind ``IP`` (value is a normalised address) or ``DNS`` (lower-case name)."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Nic:
    """A NIC of the VM from CONTEXT (``ETHn_IP``, ``ETHn_IP6``)."""

    index: int
    ip: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None
    network: ipaddress.IPv4Network | None = None  # from ETHn_IP and ETHn_MASK, when both are given


@dataclass(frozen=True)
class WgPeer:
    public_key: str  # canonical base64 (44 chars)
    allowed_ips: tuple[IPNetwork, ...]
    endpoint: HostPort | None = None
    persistent_keepalive: int = 0  # seconds, 0 = off; the default already applied
    preshared_key: Secret | None = None
    source: str = ""  # e.g. "FL_WG_PEERS section 2" or "FL_WG_PEER_*": for messages


@dataclass(frozen=True)
class WgConfig:
    # This VM's tunnel address. With a pool (FL_WG_ADDRESS given as a network), it is the pool's
    # network address until identity.apply() gives the VM its own host in the pool.
    address: IPInterface
    private_key: Secret | None  # None: generate once on the VM and keep it
    listen_port: int
    mtu: int | None  # None: derived from the underlay at apply time (wireguard/mtu.py)
    peers: tuple[WgPeer, ...]
    forward: bool
    pool: IPNetwork | None = None  # FL_WG_ADDRESS as a pool shared by the VMs of one role

    @property
    def unresolved(self) -> bool:
        """A pool address not yet turned into this VM's own address."""
        return self.pool is not None and self.address.ip == self.pool.network_address


@dataclass(frozen=True)
class PkiMaterial:
    """Operator-supplied PEM material (already checked to parse)."""

    ca_pem: bytes | None = None
    cert_pem: bytes | None = None  # leaf first, chain allowed
    key_pem: Secret | None = None


@dataclass(frozen=True)
class OneGateAccess:
    endpoint: str | None
    vmid: str | None
    token: Secret | None

    @property
    def usable(self) -> bool:
        return bool(self.endpoint and self.vmid and self.token)


@dataclass(frozen=True)
class Config:
    """The validated configuration of one VM for one role. Built only by ``config.load_config``."""

    role: Role
    flower_version: str
    tls_enabled: bool
    log_level: str
    isolation: str
    keepalive_time: int  # seconds
    keepalive_timeout: int  # seconds
    pki: PkiMaterial  # L: operator PKI when all three set; N: ca_pem = the CA to trust
    cert_extra_san: tuple[SanEntry, ...]
    database: str  # relative to /opt/flower
    superlink_address: HostPort | None
    node_config: tuple[tuple[str, str], ...]
    max_retries: int
    max_wait_time: int
    wg: WgConfig | None  # None when FL_WG_ENABLED=NO
    nics: tuple[Nic, ...]
    onegate: OneGateAccess
    # Who may join and reach the SuperLink (issue 13); SuperNode: only allow_insecure applies.
    supernode_auth: bool = False  # TLS on and FL_SUPERNODE_AUTH=YES: L --enable-supernode-auth, N presents its key
    admitted_keys: tuple[Any, ...] = ()  # admission.keys.PublicKey from FL_SUPERNODE_PUBLIC_KEYS
    auth_onegate: bool = False  # also admit this service's SuperNodes published in OneGate
    firewall: bool = False
    fleet_sources: tuple[IPNetwork, ...] = ()  # empty: any
    fleet_tunnel_only: bool = False
    allow_insecure: bool = False
    # Networks reached through this zone's site gateway (FL_GATEWAY_ROUTES) and the gateway's address
    # on this VM's network (FL_GATEWAY_ADDRESS; None with routes: discovered through OneGate).
    gateway_routes: tuple[IPNetwork, ...] = ()
    gateway_address: IPAddress | None = None
    app_dependencies: tuple[tuple[str, str], ...] = ()  # FL_APP_DEPENDENCIES: (canonical name, version)
    runtime_dependency_install: bool = False  # FL_RUNTIME_DEPENDENCY_INSTALL
    warnings: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # CONTEXT names that are not flower-ctx's (other software's)
    inline_secrets: tuple[str, ...] = ()  # secrets given in CONTEXT itself, not as file: (readable via OneGate)
    bootstrap_wait: int = 90  # FL_BOOTSTRAP_WAIT: seconds bootstrap waits for readiness

    @property
    def operator_pki(self) -> bool:
        return self.role is Role.SUPERLINK and self.pki.cert_pem is not None
