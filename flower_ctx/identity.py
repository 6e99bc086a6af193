"""Values that differ per VM inside one OneFlow role, derived from the VM's number in its role.

OneFlow gives every VM of a role the same inputs, so per-VM values cannot come from them. What is
per-VM, stable across reboots and unique inside the role is the number in the name OneFlow gives
the VM: ``<role>_<n>_(service_<id>)``, counted from 0 and never reused (research: OneFlow's
``vm_name_template`` and ``last_vmname``; the position in the role's node list is not stable, it
shifts when OneFlow scales down, which removes the oldest VMs). The name comes from OneGate
(``GET /vm``) once, at the first configure, and is kept in ``/etc/flower-ctx/identity.json`` with
the VMID, so a later rename or an unreachable OneGate changes nothing.

Derived: the tunnel address when ``FL_WG_ADDRESS`` is a pool (host ``2 + n`` of the network: the
first host is left for a hub or gateway), and ``partition-id=n`` in the node config when
``FL_NODE_CONFIG`` does not set one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

from . import agentstate
from .errors import ApplyError, FlowerCtxError
from .model import Config, IPInterface, IPNetwork, Role
from .paths import Paths

STATE = "identity.json"
NAME_RE = re.compile(r"(?P<role>\w+?)_(?P<n>[0-9]{1,6})_\(service_[0-9]+\)\Z")
FIRST_HOST = 2  # host 1 of a pool is left for the hub or the zone's gateway


def vm_number_from_name(name: str) -> int | None:
    m = NAME_RE.match(name)
    return int(m.group("n")) if m else None


def vm_number(
    config: Config, paths: Paths, *, ask_onegate: bool = True, remember: bool = True, client: Any = None
) -> int | None:
    """This VM's number in its OneFlow role; None when it is not a OneFlow VM or OneGate cannot say.
    ``client``: the OneGate client to ask (default: this VM's own, none when staging)."""
    cached = agentstate.read_or_none(paths, STATE)
    if cached and cached.get("vmid") == config.onegate.vmid and isinstance(cached.get("number"), int):
        return int(cached["number"])
    if not ask_onegate:
        return None
    from .boot import client_for
    from .onegate import obj, text

    client = client or client_for(config.onegate, paths, timeout=5.0, retries=2, deadline=20.0)
    if client is None:
        return None
    try:
        doc = client.get_vm()
        name = text(obj(doc.get("VM"), "VM").get("NAME"), "VM.NAME")
    except FlowerCtxError as exc:
        raise ApplyError(f"this VM's name (for its number in its OneFlow role) could not be read from OneGate: {exc}") \
            from None
    number = vm_number_from_name(name or "")
    if number is not None and remember:
        agentstate.write(paths, STATE, {"vmid": config.onegate.vmid, "name": name, "number": number})
    return number


def pool_address(pool: IPNetwork, number: int) -> IPInterface:
    """Host ``FIRST_HOST + number`` of ``pool``, with the pool's prefix."""
    offset = FIRST_HOST + number
    last = pool.num_addresses - (2 if pool.version == 4 else 1)  # v4: not the broadcast address
    if offset > last:
        raise ApplyError(
            f"FL_WG_ADDRESS {pool}: this VM is number {number} in its role, and host {offset} does not fit the "
            f"pool (hosts {FIRST_HOST}..{last}); give the role a larger pool"
        )
    return ipaddress.ip_interface(f"{pool.network_address + offset}/{pool.prefixlen}")


def apply(
    config: Config, paths: Paths, *, ask_onegate: bool = True, remember: bool = True, client: Any = None
) -> tuple[Config, int | None]:
    """``config`` with its per-VM values filled in, and the VM's number (None when unknown).
    Raises ApplyError when a pool address is asked for and the number cannot be known."""
    wg = config.wg
    wants_partition = config.role is Role.SUPERNODE and not any(k == "partition-id" for k, _ in config.node_config)
    if not (wg is not None and wg.unresolved) and not wants_partition:
        return config, None
    number = vm_number(config, paths, ask_onegate=ask_onegate and (client is not None or not paths.staged),
                       remember=remember, client=client)
    changes: dict = {}
    if wg is not None and wg.unresolved:
        assert wg.pool is not None
        if number is None:
            raise ApplyError(
                f"FL_WG_ADDRESS {wg.pool} is a pool: each VM takes host {FIRST_HOST} + its number in its OneFlow "
                "role (from its name, e.g. supernode_3_(service_12)), and this VM's name does not say it "
                + ("(--root: OneGate is not asked)" if paths.staged else "(not a OneFlow VM, or OneGate unreachable)")
                + "; set FL_WG_ADDRESS to this VM's own address, e.g. " + str(pool_address(wg.pool, 0))
            )
        changes["wg"] = dataclasses.replace(wg, address=pool_address(wg.pool, number))
    if wants_partition and number is not None:
        changes["node_config"] = (*config.node_config, ("partition-id", str(number)))
    return dataclasses.replace(config, **changes), number
