"""wg0's MTU when FL_WG_MTU is empty: derived from the underlay that carries the tunnel.

The underlay MTU is the MTU of the interface the kernel would send the tunnel's packets through: the
route to each configured peer endpoint (its own ``mtu`` metric when the route has one, else its
interface's MTU), the smallest of them; with no endpoint (a hub waits for its spokes), the interface
of the default route; with neither, 1500. wg0 gets that minus :data:`OVERHEAD`.

Why 80 and not 60: a WireGuard data packet adds 32 bytes (16 header, 16 authentication tag) and a
UDP header (8) to the inner packet, then the outer IP header: 20 bytes over IPv4, 40 over IPv6. 80
is the worst case, the one wg-quick and the kernel's default 1420 (= 1500 - 80) use. A tunnel
derived with 60 from an IPv4 endpoint would fragment every full-size packet as soon as an endpoint
is (or resolves to, or is learnt as) IPv6, and a hub serves many spokes whose families it does not
choose; 20 bytes are 1.5 % of a 1370-byte packet. bench/gateway.py measures both.

OpenNebula's VXLAN networks have MTU 1450 (50 bytes of VXLAN over a 1500 fabric): there the derived
MTU is 1370, where the old fixed 1420 made every full-size tunnel packet 1500 bytes on a 1450 link,
fragmented into two (measured in tests/test_site_gateway.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

OVERHEAD = 80
FALLBACK_UNDERLAY = 1500
MIN_MTU = 1280  # IPv6's minimum (and FL_WG_MTU's lower bound)


def _metric_mtu(route: Any) -> int | None:
    metrics = route.get_attr("RTA_METRICS")
    if metrics is None:
        return None
    mtu = metrics.get_attr("RTAX_MTU")
    return int(mtu) if mtu else None


def _link_mtu(ipr: Any, index: int | None) -> tuple[int, str] | None:
    if not index:
        return None
    links = ipr.get_links(index)
    if not links:
        return None
    return int(links[0].get_attr("IFLA_MTU")), str(links[0].get_attr("IFLA_IFNAME"))


def route_mtu(ipr: Any, route: Any) -> tuple[int, str] | None:
    """(MTU, interface name) of a route: its mtu metric, else its interface's MTU."""
    found = _link_mtu(ipr, route.get_attr("RTA_OIF"))
    if found is None:
        return None
    metric = _metric_mtu(route)
    return (metric, found[1]) if metric else found


def underlay_mtu(ipr: Any, endpoints: Iterable[str]) -> tuple[int, str]:
    """The MTU of the underlay and how it was found (for the report)."""
    seen: list[tuple[int, str, str]] = []
    for ep in endpoints:
        family = socket.AF_INET6 if ":" in ep else socket.AF_INET
        try:
            routes = ipr.route("get", dst=ep, family=family)
        except Exception:  # no route to it (yet): the default route decides
            continue
        for r in routes:
            found = route_mtu(ipr, r)
            if found is not None:
                seen.append((found[0], found[1], f"route to {ep}"))
    if seen:
        mtu, dev, why = min(seen)
        return mtu, f"{dev} MTU {mtu} ({why})"
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=254):
            if r["dst_len"] != 0:
                continue
            found = route_mtu(ipr, r)
            if found is not None:
                return found[0], f"{found[1]} MTU {found[0]} (default route)"
    return FALLBACK_UNDERLAY, f"no route found, assumed {FALLBACK_UNDERLAY}"


def derive(ipr: Any, endpoints: Iterable[str]) -> tuple[int, str]:
    """wg0's MTU for this underlay: (mtu, explanation)."""
    underlay, how = underlay_mtu(ipr, endpoints)
    mtu = max(MIN_MTU, underlay - OVERHEAD)
    note = "" if mtu == underlay - OVERHEAD else f", raised to the minimum {MIN_MTU}"
    return mtu, f"derived: {how} - {OVERHEAD}{note}"
