"""Routes through the zone's site gateway (FL_GATEWAY_ROUTES via FL_GATEWAY_ADDRESS): the configure step
of the VMs behind a gateway (SuperNodes; the SuperLink behind a hub gateway).

Each route is ``NET via GATEWAY`` in the main table, tagged with flower-ctx's route protocol (77, the
one wg0's routes carry), so the agent finds its own and nobody else's. Reconciled like wg0's: read the
routes of ours that have a next hop, add (replace) what is missing, delete what is no longer wanted;
a re-run with the same CONTEXT sends nothing. With FL_GATEWAY_ROUTES empty every such route of ours
is removed. Before anything changes, the routes are checked against the live machine: they must not
cover the VM's own connected networks, its default gateway, or everything (underlay.py), and the
gateway must be on one of the VM's own networks.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from .. import agentstate
from ..errors import ApplyError, FlowerCtxError
from ..model import Config, IPAddress, IPNetwork, Role
from ..paths import Paths
from ..plan import Change, StepResult
from . import STATE

STEP = "gateway routes"
MAIN_TABLE = 254
RTPROT_KERNEL = 2
SCOPE_LINK = 253


@dataclass(frozen=True, order=True)
class GwRoute:
    net: IPNetwork
    via: IPAddress

    def __str__(self) -> str:
        return f"{self.net} via {self.via}"


def _key(r: GwRoute) -> tuple[int, bytes, int, bytes]:
    return (r.net.version, r.net.network_address.packed, r.net.prefixlen, r.via.packed)


def plan(desired: frozenset[GwRoute], current: frozenset[GwRoute]) -> tuple[list[GwRoute], list[GwRoute]]:
    """(routes to add or replace, routes to delete): only the differences."""
    return sorted(desired - current, key=_key), sorted(current - desired, key=_key)


# --- reading the machine -------------------------------------------------------------------------


def _family(ip: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def read_current(ipr: Any) -> frozenset[GwRoute]:
    """Our routes that have a next hop (wg0's routes have none: they point at the link)."""
    from ..wireguard.link import RTPROT_FLOWER_CTX

    found: set[GwRoute] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=MAIN_TABLE):
            gw = r.get_attr("RTA_GATEWAY")
            dst = r.get_attr("RTA_DST")
            if r["proto"] != RTPROT_FLOWER_CTX or not gw or dst is None:
                continue
            found.add(GwRoute(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False),
                              ipaddress.ip_address(gw.split("%")[0])))
    return frozenset(found)


def connected_networks(ipr: Any, exclude: tuple[str, ...] = ("wg0",)) -> list[tuple[str, IPNetwork]]:
    """The VM's own networks: the kernel's connected routes (not link-local, not on ``exclude``)."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    out: list[tuple[str, IPNetwork]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=MAIN_TABLE):
            dst = r.get_attr("RTA_DST")
            if r["proto"] != RTPROT_KERNEL or dst is None or r["dst_len"] == 0:
                continue
            name = names.get(r.get_attr("RTA_OIF"), "?")
            net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
            if name in exclude or name == "lo" or net.is_link_local or net.is_multicast:
                continue
            out.append((str(name), net))
    return out


# --- the step ------------------------------------------------------------------------------------


def _record(paths: Paths, via: IPAddress | None, routes: tuple[IPNetwork, ...], source: str) -> None:
    from ..files import unlink

    try:
        if via is None:
            unlink(paths.agent_dir / STATE)
        else:
            agentstate.write(paths, STATE, {"address": str(via), "routes": [str(r) for r in routes],
                                            "source": source})
    except FlowerCtxError:
        pass  # status then says less; the routes themselves are what matters


def gateway_address(config: Config, paths: Paths, ipr: Any) -> tuple[IPAddress, str]:
    """FL_GATEWAY_ADDRESS, else the gateway role's VM of this OneFlow service (OneGate), else the
    address found last time (OneGate down at boot must not take the routes away)."""
    if config.gateway_address is not None:
        return config.gateway_address, "FL_GATEWAY_ADDRESS"
    from ..boot import client_for
    from .discover import GatewayDiscoveryError, find_gateway

    networks = [net for _, net in connected_networks(ipr)]
    client = client_for(config.onegate, paths, timeout=5.0, retries=2, deadline=20.0)
    problem = "OneGate is not configured (TOKEN=YES in the VM template)"
    if client is not None:
        try:
            ip, vm = find_gateway(client, networks)
            return ip, f"OneGate: the gateway role's VM {vm}"
        except (GatewayDiscoveryError, FlowerCtxError) as exc:
            problem = str(exc)
    last = agentstate.read_or_none(paths, STATE)
    if last:
        try:
            return ipaddress.ip_address(last["address"]), f"last known ({problem})"
        except ValueError:
            pass
    raise ApplyError(f"FL_GATEWAY_ROUTES is set and FL_GATEWAY_ADDRESS is empty, but the gateway could not be "
                     f"found: {problem}. Set FL_GATEWAY_ADDRESS to the gateway's address on this VM's network")


def _check(config: Config, routes: list[IPNetwork], via: IPAddress, ipr: Any) -> None:
    """The live checks: routes that keep the underlay, a gateway on one of the VM's own networks."""
    from .. import underlay
    from ..wireguard.link import default_gateways

    own = connected_networks(ipr)
    if not any(via.version == net.version and via in net for _, net in own):
        shown = ", ".join(f"{net} ({dev})" for dev, net in own) or "none"
        raise ApplyError(f"the gateway {via} is on none of this VM's networks ({shown}): it must be reachable "
                         "directly, on the same segment")
    keep = [("the VM's default gateway", gw) for gw in default_gateways(ipr) if gw != via]
    keep.append(("the gateway itself", via))
    found = underlay.problems(routes, keep, [(f"this VM's own network on {dev}", net) for dev, net in own],
                              label="FL_GATEWAY_ROUTES", into="the gateway")
    if found:
        raise ApplyError("nothing changed: " + "; ".join(found))


def apply(config: Config, paths: Paths, *, dry_run: bool = False) -> StepResult:
    """Make our next-hop routes match FL_GATEWAY_ROUTES (see the module docstring)."""
    result = StepResult(STEP)
    if config.role is Role.GATEWAY:
        return result
    routes = tuple(config.gateway_routes)
    if paths.staged:
        if routes:
            result.skipped.append(f"routes {', '.join(map(str, routes))} via "
                                  f"{config.gateway_address or 'the gateway found through OneGate'}")
        return result
    if not routes and agentstate.read_or_none(paths, STATE) is None:
        return result  # none wanted and none made: netlink (and pyroute2's import) not needed
    from ..wireguard.link import RTPROT_FLOWER_CTX, open_iproute

    ipr = open_iproute()
    try:
        current = read_current(ipr)
        if not routes and not current:
            return result
        via: IPAddress | None = None
        desired: frozenset[GwRoute] = frozenset()
        source = ""
        if routes:
            via, source = gateway_address(config, paths, ipr)
            _check(config, list(routes), via, ipr)
            desired = frozenset(GwRoute(net, via) for net in routes)
            result.facts["gateway"] = f"{via} ({source})"
        add, delete = plan(desired, current)
        if not dry_run:
            from pyroute2.netlink.exceptions import NetlinkError

            try:
                for r in add:
                    ipr.route("replace", dst=str(r.net), gateway=str(r.via), proto=RTPROT_FLOWER_CTX,
                              family=_family(r.net), table=MAIN_TABLE)
                for r in delete:
                    try:
                        ipr.route("del", dst=str(r.net), gateway=str(r.via), proto=RTPROT_FLOWER_CTX,
                                  family=_family(r.net), table=MAIN_TABLE)
                    except NetlinkError as exc:
                        if exc.code != errno.ESRCH:  # replaced above or already gone: fine
                            raise
            except NetlinkError as exc:
                raise ApplyError(f"netlink refused a route: {exc.args[-1]} (errno {exc.code})") from exc
            _record(paths, via, routes, source)
        for r in add:
            result.changes.append(Change(f"route {r}", "would-create" if dry_run else "created"))
        for r in delete:
            result.changes.append(Change(f"route {r}", "would-remove" if dry_run else "removed",
                                         "no longer in FL_GATEWAY_ROUTES" if routes else "FL_GATEWAY_ROUTES is empty"))
        if not add and not delete:
            result.changes.append(Change("routes via the gateway", "unchanged", f"{len(desired)} route(s)"))
    finally:
        ipr.close()
    return result


def status(paths: Paths) -> dict[str, Any] | None:
    """The gateway in use and whether each route is in place (None: no gateway routes here)."""
    record = agentstate.read_or_none(paths, STATE)
    if paths.staged:
        return record and {**record, "present": None}
    from ..wireguard.link import open_iproute

    try:
        ipr = open_iproute()
    except Exception:  # a broken netlink must not break status/doctor
        return record and {**record, "present": None}
    try:
        live = read_current(ipr)
    finally:
        ipr.close()
    if not record and not live:
        return None
    present = {str(r.net): str(r.via) for r in live}
    record = record or {"address": None, "routes": [], "source": None}
    return {
        **record,
        "present": {r: present.get(r) == record["address"] for r in record["routes"]},
        "stray": sorted(f"{n} via {v}" for n, v in present.items() if n not in record["routes"]),
    }
