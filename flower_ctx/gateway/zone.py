"""Where a gateway's SuperLink check starts from: the address its SuperNodes' packets come from.

A site gateway (it dials the hub): its address on the zone's VM network. With one NIC (the usual
OpenNebula zone: the gateway and the SuperNodes on one private network, the hub dialled through the
zone's NAT) that NIC's; with several, the first NIC address (CONTEXT ``ETHn_IP``) not on the interface
that carries the tunnel (the route to the hub's endpoint): the SuperNodes are on the other side.

A hub gateway (it dials no one: the zones' gateways dial it): its tunnel address. Packets from the
zones reach the SuperLink from the tunnel side, and the check then needs the SuperLink's routes back
through this gateway, as theirs do.
"""

from __future__ import annotations

import ipaddress
import socket

from ..model import Config
from ..paths import Paths


def zone_address(config: Config, paths: Paths) -> str | None:
    nics = [str(n.ip) for n in sorted(config.nics, key=lambda n: n.index) if n.ip is not None]
    if config.wg is not None and not any(p.endpoint is not None for p in config.wg.peers):
        return str(config.wg.address.ip)  # a hub gateway
    if len(nics) <= 1 or paths.staged or config.wg is None:
        return nics[0] if nics else None
    endpoints = [p.endpoint.ip for p in config.wg.peers if p.endpoint is not None and p.endpoint.ip is not None]
    if not endpoints:  # names only: resolved at apply time, not here
        return nics[0]
    from ..wireguard.link import open_iproute

    ipr = open_iproute()
    try:
        tunnel_side: set[str] = set()
        for ep in endpoints:
            try:
                routes = ipr.route("get", dst=str(ep), family=socket.AF_INET if ep.version == 4 else socket.AF_INET6)
            except Exception:  # no route: nothing to exclude for it
                continue
            for r in routes:
                oif = r.get_attr("RTA_OIF")
                for a in ipr.get_addr(index=oif) if oif else []:
                    addr = a.get_attr("IFA_ADDRESS")
                    if addr:
                        tunnel_side.add(str(ipaddress.ip_address(addr)))
    finally:
        ipr.close()
    return next((ip for ip in nics if ip not in tunnel_side), nics[0])
