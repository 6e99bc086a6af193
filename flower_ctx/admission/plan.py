"""Who may join: the SuperLink's registered SuperNode keys made to match what the operator admits.

Admitted = the keys in FL_SUPERNODE_PUBLIC_KEYS (other zones) plus, with
FL_SUPERNODE_AUTH_ONEGATE=YES, the FL_NODE_PUBLIC_KEY published by SuperNodes of this VM's own
OneFlow service. Registered = Flower's node list (Control API). The plan registers what is admitted
and missing, and unregisters what flower-ctx registered earlier and is no longer admitted; a node
registered by hand (``flwr supernode register``) is never touched. Flower never accepts a key again
once it was unregistered ("Public key already in use"): such a key is reported, with the fix.

OneGate is untrusted and may be down: keys learnt from it are remembered, and a OneGate that does
not answer changes nothing (an outage must not lock a site out).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .control import Node
from .keys import PublicKey, from_pem, parse_line


@dataclass(frozen=True)
class Plan:
    register: tuple[PublicKey, ...] = ()
    unregister: tuple[tuple[int, str], ...] = ()  # (node_id, key line)
    burned: tuple[PublicKey, ...] = ()  # admitted but unregistered before: Flower refuses them
    admitted: tuple[str, ...] = ()  # key lines admitted and registered (online or not)


def registered_keys(nodes: Iterable[Node]) -> tuple[dict[str, Node], set[str]]:
    """Flower's node list as {key line: node} for live registrations, and the set of burned lines."""
    live: dict[str, Node] = {}
    burned: set[str] = set()
    for n in nodes:
        try:
            line = from_pem(n.public_key_pem).line
        except Exception:  # a node registered with a key we cannot read: not ours to manage
            continue
        if n.status == "unregistered":
            burned.add(line)
        else:
            live[line] = n
    return live, burned - set(live)


def plan(desired: Sequence[PublicKey], nodes: Iterable[Node], ours: Iterable[str]) -> Plan:
    """What to change so the admitted keys are registered and only they (among ``ours``, the keys
    flower-ctx registered before)."""
    live, burned = registered_keys(nodes)
    want = {k.line: k for k in desired}
    register = tuple(k for line, k in want.items() if line not in live and line not in burned)
    unregister = tuple((live[line].node_id, line) for line in sorted(set(ours) & set(live)) if line not in want)
    return Plan(
        register=register,
        unregister=unregister,
        burned=tuple(k for line, k in want.items() if line in burned),
        admitted=tuple(line for line in want if line in live),
    )


@dataclass
class OneGateKeys:
    """FL_NODE_PUBLIC_KEY of this service's SuperNodes, from one GET /service?extended=true."""

    keys: list[PublicKey] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # why some published values were not taken


def from_service(doc: dict[str, Any], own_vmid: str | None) -> OneGateKeys:
    """The keys the SuperNodes of the service publish. Raises OneGateProtocolError on a document
    of the wrong shape (the caller then keeps what it knew)."""
    from ..onegate import items, obj, text

    out = OneGateKeys()
    service = obj(doc.get("SERVICE"), "SERVICE")
    for role in items(service.get("roles"), "SERVICE.roles"):
        role = obj(role, "role")
        for node in items(role.get("nodes"), "role nodes"):
            vm = obj(obj(obj(node, "node").get("vm_info"), "vm_info").get("VM"), "vm_info.VM")
            vm_id = text(vm.get("ID"), "VM.ID") or "?"
            if vm_id == own_vmid:
                continue
            ut = obj(vm.get("USER_TEMPLATE"), "VM.USER_TEMPLATE")
            published = text(ut.get("FL_NODE_PUBLIC_KEY"), "FL_NODE_PUBLIC_KEY")
            if not published:
                continue
            try:
                key = parse_line(published)
            except ValueError as exc:
                out.ignored.append(f"VM {vm_id}: FL_NODE_PUBLIC_KEY {exc}")
                continue
            name = text(vm.get("NAME"), "VM.NAME") or f"vm-{vm_id}"
            out.keys.append(PublicKey(key.line, _node_name(name)))
    return out


def _node_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._@:()/-]", "_", text)[:64]
