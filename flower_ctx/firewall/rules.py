"""The appliance's own nftables table, as text (pure: computed from the validated config).

One table, ``inet flower_ctx``, hooked on input a little before the usual filter priority, policy
accept: it only ever drops what the operator's settings exclude, so nothing else on the host is
changed and removing the table removes every effect. Its comment carries a hash of the ruleset, so
a re-run with the same settings sees it is current and changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from ..model import IPNetwork

TABLE_FAMILY = "inet"
TABLE_NAME = "flower_ctx"
COMMENT_PREFIX = "flower-ctx "


@dataclass(frozen=True)
class Ports:
    fleet: int = 9092
    loopback_only: tuple[int, ...] = (8000, 9091, 9093)  # Flower's HTTP API, ServerAppIo, gRPC Control
    wireguard: int | None = None  # UDP listen port when wg0 is on


def ruleset(sources: Iterable[IPNetwork], tunnel_only: bool, ports: Ports) -> tuple[str, str]:
    """The table body (without its comment) and its hash. ``sources`` empty: any source."""
    v4 = sorted({s for s in sources if s.version == 4}, key=lambda n: (n.network_address, n.prefixlen))
    v6 = sorted({s for s in sources if s.version == 6}, key=lambda n: (n.network_address, n.prefixlen))
    lines: list[str] = []
    if v4:
        lines.append(f"  set fleet_v4 {{ type ipv4_addr; flags interval; elements = {{ {', '.join(map(str, v4))} }} }}")
    if v6:
        lines.append(f"  set fleet_v6 {{ type ipv6_addr; flags interval; elements = {{ {', '.join(map(str, v6))} }} }}")
    rules = ['iif "lo" accept']
    rules.append(f"tcp dport {{ {', '.join(str(p) for p in ports.loopback_only)} }} drop")
    if tunnel_only:
        rules.append(f'tcp dport {ports.fleet} iifname != "wg0" drop')
    if v4 or v6:
        if v4:
            rules.append(f"tcp dport {ports.fleet} ip saddr @fleet_v4 accept")
        if v6:
            rules.append(f"tcp dport {ports.fleet} ip6 saddr @fleet_v6 accept")
        rules.append(f"tcp dport {ports.fleet} drop")
    if ports.wireguard is not None:
        rules.append(f"udp dport {ports.wireguard} accept")
    lines.append("  chain input {")
    lines.append("    type filter hook input priority filter - 5; policy accept;")
    lines += [f"    {r}" for r in rules]
    lines.append("  }")
    body = "\n".join(lines)
    return body, hashlib.sha256(body.encode()).hexdigest()[:16]


def gateway_ruleset(wg_mtu: int, ifname: str = "wg0") -> tuple[str, str]:
    """A gateway's table: TCP connections forwarded through the tunnel (either way) get an MSS that fits
    wg0's MTU, so neither side depends on ICMP "fragmentation needed" reaching it (path MTU discovery
    through a tunnel fails silently where ICMP is filtered). Only ever lowers an MSS; drops nothing."""
    rules = []
    for family, headers in (("ipv4", 40), ("ipv6", 60)):
        mss = wg_mtu - headers
        for direction in ("iifname", "oifname"):
            rules.append(f'meta nfproto {family} {direction} "{ifname}" tcp flags syn / syn,rst '
                         f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}")
    lines = ["  chain forward {", "    type filter hook forward priority mangle; policy accept;"]
    lines += [f"    {r}" for r in rules]
    lines.append("  }")
    body = "\n".join(lines)
    return body, hashlib.sha256(body.encode()).hexdigest()[:16]


def table_text(body: str, digest: str) -> str:
    """A whole-table definition, for ``nft -f``."""
    return f'table {TABLE_FAMILY} {TABLE_NAME} {{\n  comment "{COMMENT_PREFIX}{digest}"\n{body}\n}}\n'
