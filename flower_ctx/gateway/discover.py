"""The gateway of this VM's OneFlow service, through OneGate: the ``gateway`` role's VM and its NIC
address on one of this VM's networks.

The address comes from the VM's NIC (``TEMPLATE/NIC/IP``, set by OpenNebula), never from an attribute
the gateway publishes: any VM of a service can rewrite another's USER_TEMPLATE, none can move a NIC.
``deployment: straight`` creates the SuperNodes only once the gateway is READY, so one look is enough
at the first boot; later boots fall back to the address found last time when OneGate does not answer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from ..errors import FlowerCtxError, OneGateError
from ..model import IPAddress, IPNetwork
from ..onegate import items, obj, text
from . import ROLE_NAME


class GatewayDiscoveryError(FlowerCtxError):
    """No usable gateway in this VM's service; the message says what was missing."""


def _role_vm_ids(service_doc: dict[str, Any]) -> list[str]:
    service = obj(service_doc.get("SERVICE"), "SERVICE")
    ids: list[str] = []
    for role in items(service.get("roles"), "SERVICE.roles"):
        role = obj(role, "SERVICE.roles[]")
        if (text(role.get("name"), "role name") or "").lower() != ROLE_NAME:
            continue
        for node in items(role.get("nodes"), "role nodes"):
            node = obj(node, "role node")
            vm_id = text(node.get("deploy_id"), "deploy_id")
            if vm_id is None:
                vm_id = text(obj(obj(node.get("vm_info"), "vm_info").get("VM"), "vm_info.VM").get("ID"),
                             "vm_info.VM.ID")
            vm_id = (vm_id or "").strip()
            if re.fullmatch(r"[0-9]{1,12}", vm_id) and vm_id not in ids:
                ids.append(vm_id)
    return ids


def nic_addresses(vm_doc: dict[str, Any]) -> list[IPAddress]:
    vm = obj(vm_doc.get("VM"), "VM")
    out: list[IPAddress] = []
    for nic in items(obj(vm.get("TEMPLATE"), "VM.TEMPLATE").get("NIC"), "VM.TEMPLATE.NIC"):
        nic = obj(nic, "NIC")
        for key in ("IP", "IP6_GLOBAL", "IP6_ULA", "IP6"):
            value = text(nic.get(key), f"NIC {key}")
            if value:
                try:
                    out.append(ipaddress.ip_address(value.strip()))
                except ValueError:
                    continue
    return out


def find_gateway(client: Any, networks: Sequence[IPNetwork]) -> tuple[IPAddress, str]:
    """(the gateway's address on one of ``networks``, its VM id). Raises GatewayDiscoveryError."""
    try:
        ids = _role_vm_ids(client.get_service())
    except OneGateError as exc:
        raise GatewayDiscoveryError(f"OneGate could not list this VM's service ({exc})") from None
    if not ids:
        raise GatewayDiscoveryError(f"this VM's OneFlow service has no {ROLE_NAME!r} role with a VM")
    seen: list[str] = []
    for vm_id in ids:
        try:
            addresses = nic_addresses(client.get_vm_by_id(vm_id))
        except OneGateError as exc:
            seen.append(f"VM {vm_id}: {exc}")
            continue
        for ip in addresses:
            if any(ip.version == net.version and ip in net for net in networks):
                return ip, vm_id
        seen.append(f"VM {vm_id} has {', '.join(map(str, addresses)) or 'no address'}")
    shown = ", ".join(map(str, networks)) or "none"
    raise GatewayDiscoveryError(f"no VM of the {ROLE_NAME!r} role has an address on this VM's networks ({shown}): "
                                + "; ".join(seen))
