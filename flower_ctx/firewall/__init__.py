"""The appliance's host firewall (FL_FIREWALL): an nftables table of its own, ``inet flower_ctx``.

On the SuperLink it lets the Fleet port through only from FL_FLEET_ALLOWED_SOURCES (any when
empty) and, with FL_FLEET_ON_TUNNEL_ONLY=YES, only on wg0; it drops Flower's loopback-only ports
(HTTP/Control API, ServerAppIo) arriving from outside, as a second fence behind their loopback
binding; and it accepts the WireGuard UDP port when wg0 is on. On a gateway it clamps the TCP MSS of
connections forwarded through wg0 to wg0's MTU (nothing is dropped). Nothing outside the table is
touched; FL_FIREWALL=NO removes the table; a re-run with the same settings changes nothing.
"""

from __future__ import annotations

from ..model import Config, Role
from ..paths import Paths
from ..plan import Change, StepResult
from .rules import TABLE_FAMILY, TABLE_NAME, Ports, gateway_ruleset, ruleset

STEP = "firewall"
WHAT = f"nftables table {TABLE_FAMILY} {TABLE_NAME}"


def ports_for(config: Config) -> Ports:
    from ..runtime import FLEET_API_ADDRESS, SUPERLINK_HTTP_PORT

    return Ports(
        fleet=int(FLEET_API_ADDRESS.rsplit(":", 1)[1]),
        loopback_only=(SUPERLINK_HTTP_PORT, 9091, 9093),
        wireguard=config.wg.listen_port if config.wg is not None else None,
    )


def apply(config: Config, paths: Paths, *, dry_run: bool = False) -> StepResult:
    """Make the appliance's table match the config (see the module docstring)."""
    from . import nft

    result = StepResult(STEP)
    wanted = config.role in (Role.SUPERLINK, Role.GATEWAY) and config.firewall
    if paths.staged:
        if wanted:
            what = "Fleet port rules" if config.role is Role.SUPERLINK else "TCP MSS clamping on wg0"
            result.skipped.append(f"{WHAT}: {what} (--root: system effect not performed)")
        return result
    if not nft.available():
        if wanted:
            result.warnings.append("FL_FIREWALL=YES but nft is not installed: the appliance's firewall is not applied "
                                   "(apt-get install nftables)")
        return result
    have = nft.current_digest()
    if not wanted:
        if have is not None:
            if not dry_run:
                nft.delete()
            result.changes.append(Change(WHAT, "would-remove" if dry_run else "removed", "FL_FIREWALL=NO"))
        return result
    if config.role is Role.GATEWAY:
        mtu = _wg0_mtu()
        if mtu is None:
            result.warnings.append("wg0 is not there: the gateway's TCP MSS clamping waits for the next configure")
            return result
        body, digest = gateway_ruleset(mtu)
        detail = f"TCP MSS of connections through wg0 clamped to {mtu - 40} (wg0 MTU {mtu})"
    else:
        body, digest = ruleset(config.fleet_sources, config.fleet_tunnel_only, ports_for(config))
        detail = ("Fleet port from " + (",".join(map(str, config.fleet_sources)) or "any source")
                  + (", on wg0 only" if config.fleet_tunnel_only else ""))
    result.facts["firewall"] = detail
    if have == digest:
        result.changes.append(Change(WHAT, "unchanged"))
        return result
    if not dry_run:
        nft.replace(body, digest, exists=have is not None)
    outcome = ("would-create" if have is None else "would-update") if dry_run else ("created" if have is None
                                                                                      else "updated")
    result.changes.append(Change(WHAT, outcome, detail))
    return result


def _wg0_mtu() -> int | None:
    """wg0's live MTU (the wireguard step set it just before: FL_WG_MTU or derived)."""
    from ..wireguard import IFNAME
    from ..wireguard.link import open_iproute, read_link

    ipr = open_iproute()
    try:
        link = read_link(ipr, IFNAME)
    finally:
        ipr.close()
    return link.mtu if link is not None else None
