"""The registry: every CONTEXT variable flower-ctx reads, declared once.

Validation (``config``), ``context check``, the generated reference (``docs/context-variables.md``),
the OpenNebula USER_INPUTS strings, the one-apps ``ONE_SERVICE_PARAMS`` rows and the OneFlow
templates are all produced from this table. Per-value parsing is in ``values``; rules that
involve several variables are in ``config``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import values as v
from .model import Role

L = frozenset({Role.SUPERLINK})
N = frozenset({Role.SUPERNODE})
G = frozenset({Role.GATEWAY})
LN = L | N
NG = N | G
LG = L | G
LNG = L | N | G

ALIAS_PREFIX = "ONEAPP_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ISOLATIONS = ("subprocess", "process")


@dataclass(frozen=True)
class Variable:
    name: str
    roles: frozenset[Role]
    type: str  # OpenNebula USER_INPUT type: text, text64, password, number, boolean, list
    description: str
    parse: Callable[[str], Any]
    default: str | None = None  # as written in CONTEXT; None = no default (unset)
    choices: tuple[str, ...] = ()
    bounds: tuple[int, int] | None = None
    secret: bool = False
    group: str = "general"
    display: Callable[[Any], str] = str
    stage: str = "configure"  # the one-apps stage that reads it
    input: bool = True  # offered as a OneFlow input (False: a constant of the role's VM template)
    accepted: str = ""  # what values are accepted, when bounds/choices do not say it

    @property
    def alias(self) -> str:
        return ALIAS_PREFIX + self.name

    @property
    def roles_text(self) -> str:
        order = "LNG"
        return " ".join(r.letter for r in sorted(self.roles, key=lambda r: order.index(r.letter)))

    def applies_to(self, role: Role) -> bool:
        return role in self.roles

    @property
    def params(self) -> str:
        """The 4th field of a USER_INPUT string."""
        if self.type == "list":
            return ",".join(self.choices)
        return ""

    @property
    def constraint(self) -> str:
        """A short human description of what values are accepted (for docs and --help)."""
        if self.accepted:
            return self.accepted
        if self.bounds is not None:
            return f"{self.bounds[0]}..{self.bounds[1]}"
        if self.choices:
            return " | ".join(self.choices)
        if self.type == "boolean":
            return "YES | NO"
        return ""


def _num(lo: int, hi: int) -> Callable[[str], int]:
    return partial(v.integer, lo=lo, hi=hi)


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    return partial(v.choice, choices=choices)


def _yes_no(b: bool) -> str:
    return "YES" if b else "NO"


def _pem_bytes(value: str) -> bytes:
    return v.text64_content(value, lambda b: b.lstrip().startswith(b"-----BEGIN"), "PEM text (-----BEGIN ...)")


def _pem_summary(raw: bytes) -> str:
    n = raw.count(b"-----BEGIN")
    return f"PEM, {len(raw)} bytes, {n} block{'s' if n != 1 else ''}"


# A wg-quick section header ([Peer], or an [Interface] pasted by mistake: the parser then names it).
_PEER_HEADER = re.compile(rb"^[ \t]*\[[A-Za-z]+\][ \t]*,?[ \t]*\r?$", re.M)


def _peers_text(value: str) -> str:
    raw = v.text64_content(value, lambda b: _PEER_HEADER.search(b) is not None, "[Peer] sections")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise v.Invalid("decodes to bytes that are not UTF-8 text; expected [Peer] sections") from None


def _peers_summary(text: str) -> str:
    n = sum(1 for line in text.splitlines() if line.strip().lower() == "[peer]")
    return f"{n} [Peer] section{'s' if n != 1 else ''}"


def _node_keys(value: str) -> tuple[Any, ...]:
    from .admission.keys import parse_list

    text = v.text64_content(value, lambda b: b"ecdsa-sha2-nistp" in b, "SuperNode public keys (ecdsa-sha2-...)")
    try:
        return parse_list(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise v.Invalid(str(exc) if isinstance(exc, ValueError) else "is not UTF-8 text") from None


def _node_keys_display(keys: Any) -> str:
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''}"


def _sans_display(entries: Any) -> str:
    return ",".join(str(e) for e in entries)


def _node_config_display(pairs: Any) -> str:
    return " ".join(f"{k}={val}" for k, val in pairs)


def _mtu(value: str) -> int:
    """0 (derive it from the underlay) or an MTU in 1280..9000."""
    n = v.integer(value, 0, 10**9)
    if n != 0 and not 1280 <= n <= 9000:
        raise v.Invalid(f"must be 0 (derived from the underlay) or from 1280 to 9000 (IPv6's minimum MTU is 1280), "
                        f"got {n}")
    return n


def _mtu_display(n: Any) -> str:
    return "0 (derived from the underlay)" if n == 0 else str(n)


def _version_display(t: Any) -> str:
    return ".".join(str(x) for x in t)


REGISTRY: tuple[Variable, ...] = (
    Variable(
        "FLOWER_VERSION", LN, "text",
        "Flower release X.Y.Z from 1.39.0 to 1.42.x (1.39: gRPC Fleet API; 1.40+: HTTP Fleet API, kept apart "
        "from the Control API by flower-ctx). Unset: the Flower the image ships. When it differs from the "
        "installed one, flower-ctx tries to install it and keeps the installed one on failure.",
        v.flower_version, default=v.FLOWER_BAKED, display=_version_display,
    ),
    Variable(
        "FL_TLS_ENABLED", LNG, "boolean",
        "TLS on the Fleet API (SuperNode to SuperLink). Mandatory across zones. A gateway checks the SuperLink "
        "behind it with a TLS handshake.",
        v.boolean, default="YES", display=_yes_no, group="tls",
    ),
    Variable(
        "FL_LOG_LEVEL", LNG, "list", "Verbosity of Flower and of the agent.",
        _choice(LOG_LEVELS), default="INFO", choices=LOG_LEVELS,
    ),
    Variable(
        "FL_BOOTSTRAP_WAIT", LNG, "number",
        "Seconds the boot (one-apps' bootstrap step) waits for this VM to be ready before it records "
        "bootstrap_failure; not ready 5 s in, FL_READY=NO is published at once. The readiness watch keeps "
        "checking either way and publishes READY=YES when the VM is ready.",
        _num(5, 3600), default="90", bounds=(5, 3600),
    ),
    Variable(
        "FL_ISOLATION", LN, "list", "How Flower runs ServerApps/ClientApps (Flower's --isolation).",
        _choice(ISOLATIONS), default="subprocess", choices=ISOLATIONS,
    ),
    Variable(
        "FL_GRPC_KEEPALIVE_TIME", LN, "number",
        "Seconds between gRPC keepalive pings on the Fleet API connection; keeps NAT and firewall state alive.",
        _num(10, 7200), default="60", bounds=(10, 7200), group="keepalive",
    ),
    Variable(
        "FL_GRPC_KEEPALIVE_TIMEOUT", LN, "number",
        "Seconds to wait for a ping acknowledgement before the connection is declared dead; below the interval.",
        _num(1, 600), default="20", bounds=(1, 600), group="keepalive",
    ),
    Variable(
        "FL_SSL_CA_CERTFILE", LNG, "text64",
        "Base64 of a PEM CA certificate. SuperLink: with FL_SSL_CERTFILE and FL_SSL_KEYFILE, your own PKI "
        "(all three or none). SuperNode: the CA to trust (mandatory across zones with TLS). Gateway: the CA its "
        "SuperLink check trusts.",
        _pem_bytes, display=_pem_summary, group="tls",
    ),
    Variable(
        "FL_SSL_CERTFILE", L, "text64",
        "Base64 of the PEM server certificate (chain allowed) for operator PKI.",
        _pem_bytes, display=_pem_summary, group="tls",
    ),
    Variable(
        "FL_SSL_KEYFILE", L, "text64", "Base64 of the PEM private key of FL_SSL_CERTFILE.",
        _pem_bytes, secret=True, group="tls",
    ),
    Variable(
        "FL_CERT_EXTRA_SAN", L, "text",
        "Extra names for the generated server certificate, comma-separated IP:a.b.c.d, IP:v6 or DNS:name "
        "(tunnel, public or NAT addresses SuperNodes dial). Ignored under operator PKI.",
        v.san_list, display=_sans_display, group="tls",
    ),
    Variable(
        "FL_SUPERNODE_AUTH", LN, "boolean",
        "SuperLink: only admitted SuperNodes may join (Flower's SuperNode authentication: each proves its key). "
        "SuperNode: YES presents this VM's key, which the SuperLink must admit; NO lets Flower register a "
        "throwaway key itself, which only a SuperLink with FL_SUPERNODE_AUTH=NO accepts. Needs TLS.",
        v.boolean, default="YES", display=_yes_no, group="trust",
    ),
    Variable(
        "FL_SUPERNODE_PUBLIC_KEYS", L, "text64",
        "SuperNodes admitted from other zones: their public keys, one per line as `flower-ctx node key` prints "
        "them (ecdsa-sha2-nistp384 AAAA... [name]). A key removed from here is unregistered.",
        _node_keys, display=_node_keys_display, group="trust",
    ),
    Variable(
        "FL_SUPERNODE_AUTH_ONEGATE", L, "boolean",
        "Also admit the SuperNodes of this VM's own OneFlow service (their FL_NODE_PUBLIC_KEY in OneGate).",
        v.boolean, default="YES", display=_yes_no, group="trust",
    ),
    Variable(
        "FL_FIREWALL", LG, "boolean",
        "An nftables table of the appliance's own (inet flower_ctx): Fleet port only from "
        "FL_FLEET_ALLOWED_SOURCES, Control ports never from outside, the WireGuard port open when wg0 is on. "
        "Gateway: the TCP MSS of connections forwarded through wg0 is clamped to the route's MTU.",
        v.boolean, default="YES", display=_yes_no, group="trust",
    ),
    Variable(
        "FL_FLEET_ALLOWED_SOURCES", L, "text",
        "Networks allowed to reach the Fleet port (9092), comma-separated CIDRs; empty: any.",
        v.network_list, display=lambda t: ",".join(str(x) for x in t), group="trust",
    ),
    Variable(
        "FL_FLEET_ON_TUNNEL_ONLY", L, "boolean",
        "The Fleet port answers only on wg0 (needs FL_WG_ENABLED=YES and FL_FIREWALL=YES).",
        v.boolean, default="NO", display=_yes_no, group="trust",
    ),
    Variable(
        "FL_ALLOW_INSECURE", LN, "boolean",
        "Accept FL_TLS_ENABLED=NO on a SuperLink with a public address or towards a SuperLink address that is "
        "not private (otherwise refused).",
        v.boolean, default="NO", display=_yes_no, group="trust",
    ),
    Variable(
        "FL_DATABASE", L, "text",
        "SuperLink state database under /opt/flower/state, as state/NAME ([A-Za-z0-9._/-], no '..').",
        v.relative_path, default="state/state.db",
    ),
    Variable(
        "FL_SUPERLINK_ADDRESS", NG, "text",
        "SuperLink Fleet API as host:port or [v6]:port. Empty: discovered through OneGate (same OneFlow "
        "service only); mandatory across zones. Gateway: the address its SuperNodes dial, checked through it.",
        v.host_port, group="supernode",
    ),
    Variable(
        "FL_NODE_CONFIG", N, "text",
        "Flower node config: key=value pairs separated by spaces (e.g. partition-id=0 num-partitions=2).",
        v.node_config, display=_node_config_display, group="supernode",
    ),
    Variable(
        "FL_MAX_RETRIES", N, "number", "SuperNode reconnection attempts; 0 = retry forever.",
        _num(0, 1_000_000), default="0", bounds=(0, 1_000_000), group="supernode",
    ),
    Variable(
        "FL_MAX_WAIT_TIME", N, "number", "Total seconds the SuperNode keeps reconnecting; 0 = forever.",
        _num(0, 31_536_000), default="0", bounds=(0, 31_536_000), group="supernode",
    ),
    Variable(
        "FL_WG_ENABLED", LNG, "boolean", "Bring up the WireGuard interface wg0 (always on a gateway).",
        v.boolean, default="NO", display=_yes_no, group="wireguard",
    ),
    Variable(
        "FL_WG_ADDRESS", LNG, "text",
        "This VM's tunnel address with prefix, e.g. 10.10.9.0/31 or 10.10.9.1/24; required when enabled.",
        v.interface_cidr, group="wireguard",
    ),
    Variable(
        "FL_WG_PRIVATE_KEY", LNG, "password",
        "WireGuard private key (base64, as from `wg genkey`). Empty: generated once on the VM, kept across "
        "reboots, never leaves it.",
        v.wg_key, secret=True, group="wireguard",
    ),
    Variable(
        "FL_WG_LISTEN_PORT", LNG, "number", "WireGuard UDP listen port.",
        _num(1, 65535), default="51820", bounds=(1, 65535), group="wireguard",
    ),
    Variable(
        "FL_WG_MTU", LNG, "number",
        "MTU of wg0, 1280..9000. 0 (the default): the MTU of the underlay interface that carries the tunnel (the "
        "route to the peers' endpoints, else the default route) minus 80, e.g. 1370 on a VXLAN network of MTU 1450.",
        _mtu, default="0", bounds=(0, 9000), accepted="0, 1280..9000", group="wireguard", display=_mtu_display,
    ),
    Variable(
        "FL_WG_PEERS", LNG, "text64",
        "Base64 of one or more wg-quick [Peer] sections (PublicKey, Endpoint, AllowedIPs, PersistentKeepalive, "
        "PresharedKey).",
        _peers_text, display=_peers_summary, group="wireguard",
    ),
    Variable(
        "FL_WG_PEER_PUBLIC_KEY", LNG, "text", "One peer without a [Peer] section: its public key.",
        v.wg_key, group="wireguard",
    ),
    Variable(
        "FL_WG_PEER_ENDPOINT", LNG, "text", "That peer's endpoint host:port (hostnames resolved when applied).",
        v.host_port, group="wireguard",
    ),
    Variable(
        "FL_WG_PEER_ALLOWED_IPS", LNG, "text", "That peer's allowed IPs, comma-separated networks.",
        v.network_list,
        display=lambda t: ",".join(str(x) for x in t), group="wireguard",
    ),
    Variable(
        "FL_WG_PERSISTENT_KEEPALIVE", LNG, "number",
        "Seconds between WireGuard keepalives for peers that do not set PersistentKeepalive; 0 = off.",
        _num(0, 65535), default="25", bounds=(0, 65535), group="wireguard",
    ),
    Variable(
        "FL_WG_FORWARD", LNG, "boolean",
        "Enable IPv4 forwarding (a hub between sites; always on a gateway).",
        v.boolean, default="NO", display=_yes_no, group="wireguard",
    ),
    Variable(
        "FL_GATEWAY_ROUTES", LN, "text",
        "Networks reached through this zone's site gateway rather than the default route, comma-separated "
        "(e.g. the tunnel network 10.10.9.0/24 with the SuperLink's address). The routes carry flower-ctx's "
        "route protocol and are reconciled at every configure.",
        v.network_list, display=lambda t: ",".join(str(x) for x in t), group="gateway",
    ),
    Variable(
        "FL_GATEWAY_ADDRESS", LN, "text",
        "The site gateway's address on this VM's network. Empty with FL_GATEWAY_ROUTES: the VM of the gateway "
        "role of this VM's OneFlow service (its NIC address, read through OneGate).",
        v.ip_address, group="gateway",
    ),
    Variable(
        "FL_APPLIANCE_ROLE", NG, "text",
        "What a VM of the SuperNode image is: supernode (default) or gateway, its zone's site gateway. Set by "
        "the VM template (`flower-ctx oneflow vm-template gateway`) or by the gateway role of a "
        "training-site-gateway service, never a OneFlow input.",
        _choice(("supernode", "gateway")), choices=("supernode", "gateway"), group="gateway", input=False,
    ),
    Variable(
        "FL_APP_DEPENDENCIES", LN, "text",
        "Python packages the Flower apps need, as exact pins (numpy==1.26.4,pandas==2.2.2; at most 32). "
        "configure installs them into the agent's virtualenv as wheels only, never changing a package "
        "Flower runs on; on failure it warns and Flower runs without them.",
        v.app_requirements, display=lambda t: ",".join(f"{n}=={ver}" for n, ver in t), group="apps",
    ),
    Variable(
        "FL_RUNTIME_DEPENDENCY_INSTALL", LN, "boolean",
        "Let Flower install each submitted app's own dependencies (uv sync from the package index, into "
        "a per-run environment). Whoever can submit a run then chooses what is downloaded here.",
        v.boolean, default="NO", display=_yes_no, group="apps",
    ),
)

BY_NAME: dict[str, Variable] = {var.name: var for var in REGISTRY}
BY_ALIAS: dict[str, Variable] = {var.alias: var for var in REGISTRY}

GROUP_TITLES = {
    "general": "General",
    "tls": "TLS",
    "keepalive": "gRPC keepalive",
    "supernode": "SuperNode",
    "wireguard": "WireGuard",
    "trust": "Who may join and reach the SuperLink",
    "apps": "Apps and their dependencies",
    "gateway": "Site gateways",
}


def all_names() -> frozenset[str]:
    """Every name flower-ctx reads from CONTEXT: canonical and alias."""
    return frozenset(BY_NAME) | frozenset(BY_ALIAS)


def user_input(var: Variable, mandatory: bool = False, default: str | None = None) -> str:
    """The OpenNebula ``M|type|description|params|default`` string."""
    desc = var.description.replace("|", "/")
    dflt = var.default if default is None else default
    return f"{'M' if mandatory else 'O'}|{var.type}|{desc}|{var.params}|{dflt or ''}"

