"""Which networks may be routed into wg0 without cutting the VM off its underlay. Pure functions.

The tunnel's own packets, OneGate and the VM's default gateway must keep leaving through the VM's
real NIC. A route through wg0 for any of them (or routes that together take every address, such as
the two halves 0.0.0.0/1 and 128.0.0.0/1) would send them into the tunnel they carry: the VM loses
its peers, its readiness reports and its operator. Validation refuses such AllowedIPs when the
addresses are known from CONTEXT; configure refuses them again once names are resolved, before any
route is touched. The same rules hold for the routes through a zone's site gateway (FL_GATEWAY_ROUTES).

A zone's SuperNode network in a hub's AllowedIPs (one peer per zone gateway) is fine, as long as it is
not the hub's own network: zones must not share an address range (OpenNebula's default private
networks often do), which is refused with that advice.
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


def problems(
    routes: Iterable[IPNetwork],
    keep: Iterable[tuple[str, IPAddress]],
    own: Iterable[tuple[str, IPNetwork]] = (),
    *,
    label: str = "AllowedIPs",
    into: str = "wg0",
) -> list[str]:
    """Why these routes would cut the underlay ([] when they would not). ``keep`` lists what must
    stay reachable outside the tunnel, as (what it is, address); ``own`` the VM's own networks (its
    NICs' connected prefixes), as (what it is, network): a route equal to one, or inside one, would
    take (part of) the VM's own segment off its NIC. A route that contains an own network is fine:
    the longer, connected prefix still wins. ``label`` and ``into`` name the variable and where the
    routes lead, for the messages."""
    routes = list(routes)
    out: list[str] = []
    for everything in EVERYTHING:
        same = [r for r in routes if r.version == everything.version]
        if same and everything in ipaddress.collapse_addresses(same):  # type: ignore[arg-type]
            shown = ", ".join(str(r) for r in sorted(same, key=lambda n: (n.network_address, n.prefixlen))[:6])
            out.append(
                f"{label} {shown} together cover every IPv{everything.version} address: routed through {into} they "
                f"would replace the VM's default route and cut it off. "
                + (f"Use {everything} (accepted on the tunnel, never routed) or list" if label == "AllowedIPs"
                   else "List")
                + " only the networks behind the tunnel"
            )
    for what, address in keep:
        inside = [r for r in routes if r.version == address.version and address in r]
        if inside:
            out.append(
                f"{label} {inside[0]} contains {address}, {what}: its packets would be routed into {into} and "
                "never arrive. Narrow the routes so they leave it out"
            )
    for what, net in own:
        inside = [r for r in routes if r.version == net.version and r.subnet_of(net)]  # type: ignore[arg-type]
        if inside:
            out.append(
                f"{label} {inside[0]} is {'' if inside[0] == net else 'inside '}{net}, {what}: routed through "
                f"{into} it would take {'that network' if inside[0] == net else 'part of it'} off the VM's own NIC. "
                "The networks behind a tunnel must differ from the VM's own (give each zone its own OpenNebula "
                "network address range)"
            )
    return out
