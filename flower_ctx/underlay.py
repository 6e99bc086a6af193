"""Which networks may be routed into wg0 without cutting the VM off its underlay. Pure functions.

The tunnel's own packets, OneGate and the VM's default gateway must keep leaving through the VM's
real NIC. A route through wg0 for any of them (or routes that together take every address, such as
the two halves 0.0.0.0/1 and 128.0.0.0/1) would send them into the tunnel they carry: the VM loses
its peers, its readiness reports and its operator. Validation refuses such AllowedIPs when the
addresses are known from CONTEXT; configure refuses them again once names are resolved, before any
route is touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .model import IPAddress, IPNetwork

EVERYTHING = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def routed(connected: IPNetwork, allowed: Iterable[IPNetwork]) -> set[IPNetwork]:
    """The allowed IPs that become routes on wg0: not a /0 (accepted on the tunnel, never routed)
    and not inside the tunnel's own connected prefix."""
    out: set[IPNetwork] = set()
    for net in allowed:
        if net.prefixlen == 0:
            continue
        if net.version == connected.version and net.subnet_of(connected):  # type: ignore[arg-type]
            continue
        out.add(net)
    return out


def problems(routes: Iterable[IPNetwork], keep: Iterable[tuple[str, IPAddress]]) -> list[str]:
    """Why these routes would cut the underlay ([] when they would not). ``keep`` lists what must
    stay reachable outside the tunnel, as (what it is, address)."""
    routes = list(routes)
    out: list[str] = []
    for everything in EVERYTHING:
        same = [r for r in routes if r.version == everything.version]
        if same and everything in ipaddress.collapse_addresses(same):  # type: ignore[arg-type]
            shown = ", ".join(str(r) for r in sorted(same, key=lambda n: (n.network_address, n.prefixlen))[:6])
            out.append(
                f"AllowedIPs {shown} together cover every IPv{everything.version} address: routed through wg0 they "
                f"would replace the VM's default route and cut it off. Use {everything} (accepted on the tunnel, "
                "never routed) or list only the networks behind the tunnel"
            )
    for what, address in keep:
        inside = [r for r in routes if r.version == address.version and address in r]
        if inside:
            out.append(
                f"AllowedIPs {inside[0]} contains {address}, {what}: its packets would be routed into wg0 and "
                "never arrive. Narrow the AllowedIPs so they leave it out"
            )
    return out
