"""The network side of wg0 through pyroute2 ``IPRoute``: MTU, addresses, link state, routes for the
peers' allowed IPs (tagged with our own routing-protocol number) and IPv4 forwarding.

Used by both backends. pyroute2 is imported inside functions: it costs ~150 ms to import.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Any

from ..errors import ApplyError
from ..model import IPNetwork
from .reconcile import LinkAddress, LinkPlan, LinkState

# Routes flower-ctx adds carry this rtm_protocol, so stale ones can be found and removed without
# touching routes anyone else made (0-4 are the kernel's, well-known daemons use 8-192; 77 is free).
RTPROT_FLOWER_CTX = 77
MAIN_TABLE = 254
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def open_iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _family(net: IPNetwork) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def read_link(ipr: Any, ifname: str) -> LinkState | None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return None
    idx = found[0]
    link = ipr.get_links(idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    addresses = []
    for a in ipr.get_addr(index=idx):
        addr = a.get_attr("IFA_ADDRESS")
        if addr is None:
            continue
        addresses.append(LinkAddress(ipaddress.ip_interface(f"{addr}/{a['prefixlen']}"), a["scope"]))
    routes: set[IPNetwork] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=MAIN_TABLE):
            if r["proto"] != RTPROT_FLOWER_CTX or r.get_attr("RTA_OIF") != idx:
                continue
            dst = r.get_attr("RTA_DST")
            if dst is None:
                continue
            routes.add(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False))
    return LinkState(
        kind=kind,
        ifindex=idx,
        mtu=link.get_attr("IFLA_MTU"),
        up=bool(link["flags"] & 1),
        addresses=tuple(addresses),
        routes=frozenset(routes),
    )


def apply_link_plan(ipr: Any, ifindex: int, plan: LinkPlan) -> None:
    """Apply a link plan: MTU and addresses before up, routes last (they need the link up)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        if plan.mtu is not None:
            ipr.link("set", index=ifindex, mtu=plan.mtu)
        for addr in plan.del_addresses:
            ipr.addr("del", index=ifindex, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        for addr in plan.add_addresses:
            ipr.addr("add", index=ifindex, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        if plan.set_up:
            ipr.link("set", index=ifindex, state="up")
        for net in plan.del_routes:
            _route_del(ipr, ifindex, net, NetlinkError)
        for net in plan.add_routes:
            # replace: an equal route of someone else's (another proto) is taken over, not an error.
            ipr.route(
                "replace", dst=str(net), oif=ifindex, proto=RTPROT_FLOWER_CTX, family=_family(net), table=MAIN_TABLE
            )
    except NetlinkError as exc:
        raise ApplyError(f"wg0: netlink refused a change: {exc.args[-1]} (errno {exc.code})") from exc


def _route_del(ipr: Any, ifindex: int, net: IPNetwork, netlink_error: type[Exception]) -> None:
    try:
        ipr.route("del", dst=str(net), oif=ifindex, proto=RTPROT_FLOWER_CTX, family=_family(net), table=MAIN_TABLE)
    except netlink_error as exc:
        if getattr(exc, "code", None) != errno.ESRCH:  # already gone: fine
            raise


def default_gateways(ipr: Any) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The gateways of the main table's default routes (the VM's way out on the underlay)."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=MAIN_TABLE):
            if r["dst_len"] != 0:
                continue
            gw = r.get_attr("RTA_GATEWAY")
            if gw:
                out.append(ipaddress.ip_address(gw.split("%")[0]))
    return out


def create_kernel_link(ipr: Any, ifname: str) -> bool:
    """Create a kernel WireGuard link. False when the kernel has no WireGuard (use wireguard-go)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.link("add", ifname=ifname, kind="wireguard")
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
            return False
        raise ApplyError(f"cannot create {ifname}: {exc.args[-1]} (errno {exc.code})") from exc
    return True


def forwarding_enabled(path: Path = IP_FORWARD) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


IPV4_CONF = Path("/proc/sys/net/ipv4/conf")


def redirecting(conf: Path = IPV4_CONF) -> list[str]:
    """The IPv4 conf entries (all, default, each interface) with send_redirects on."""
    try:
        entries = sorted(p.name for p in conf.iterdir())
    except OSError:
        return []
    out = []
    for name in entries:
        try:
            if (conf / name / "send_redirects").read_text().strip() == "1":
                out.append(name)
        except OSError:
            continue
    return out


def stop_redirects(conf: Path = IPV4_CONF) -> list[str]:
    """send_redirects off everywhere (an interface sends them when its own entry or ``all`` says so).
    Why: a forwarding VM on its peers' own network (a site gateway with one NIC) routes a packet back
    out the interface it came in on whenever wg0 is missing (a boot, a restart), and Linux then tells
    the sender to use the default gateway instead; the SuperNode caches that redirect for minutes and
    keeps sending tunnel traffic there (the lab's gateway-restart drill: 2 of 4 cut off). Returns the
    entries turned off."""
    done = []
    for name in redirecting(conf):
        try:
            (conf / name / "send_redirects").write_text("0\n")
        except OSError as exc:
            raise ApplyError(f"cannot turn off ICMP redirects ({conf / name}): {exc.strerror}") from exc
        done.append(name)
    return done


def enable_forwarding(path: Path = IP_FORWARD) -> None:
    """Turn IPv4 forwarding on (never off: something else on the VM may rely on it)."""
    try:
        path.write_text("1\n")
    except OSError as exc:
        raise ApplyError(f"cannot enable IPv4 forwarding ({path}): {exc.strerror}") from exc
