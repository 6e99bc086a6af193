"""OneFlow 7.x service templates built from the variable registry (pure functions, no I/O).

Three shapes match the reference deployment (DESIGN section 1):

- ``coordinator``: the SuperLink alone, a singleton, TLS on (zone A);
- ``training-site``: SuperNodes alone, no parents, with ``FL_SUPERLINK_ADDRESS`` and
  ``FL_SSL_CA_CERTFILE`` mandatory because OneGate cannot reach across zones (zones B, C);
- ``single-site``: both roles in one service, the SuperNode role a child of the SuperLink role
  (``deployment: straight``) so SuperNodes start once the SuperLink reported READY.

Each role offers only the inputs of its own role (role-level ``user_inputs``). Secret variables
are never offered: OneFlow copies every answered input into the VM's USER_TEMPLATE, which any VM of
the same service can read through OneGate ``GET /vms/<id>`` (research note 1.5, 6.1). Secrets go
into the VM template's CONTEXT instead, or are generated on the VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import Role
from .variables import REGISTRY, Variable, user_input

KINDS = ("coordinator", "training-site", "single-site")

# OneFlow role names: must match ^\w+$ and are what SuperNodes look up in GET /service.
ROLE_NAMES = {Role.SUPERLINK: "superlink", Role.SUPERNODE: "supernode"}

# What every role VM needs in CONTEXT; OneFlow sets none of it (research note 2). The VM templates
# must carry it too (a VM template used outside OneFlow has no template_contents).
REQUIRED_CONTEXT = {"TOKEN": "YES", "REPORT_READY": "YES", "NETWORK": "YES"}

DEFAULT_SUPERNODES = 2

VM_TEMPLATE_NOTE = (
    "Role VM templates must set CONTEXT TOKEN=YES (OneGate access) and REPORT_READY=YES (readiness gate); "
    "flower-ctx reports READY=YES only when Flower really serves."
)

DESCRIPTIONS = {
    "coordinator": "Flower coordinator (zone A): one SuperLink with TLS, Fleet API on port 9092. "
    "Export its CA with `flower-ctx ca export` for the training sites.",
    "training-site": "Flower training site (zone B, C, ...): SuperNodes that dial a SuperLink in another zone. "
    "FL_SUPERLINK_ADDRESS and FL_SSL_CA_CERTFILE are mandatory (no OneGate across zones).",
    "single-site": "Flower federation in one zone: a SuperLink and SuperNodes that discover it and its CA "
    "through OneGate. SuperNodes deploy after the SuperLink is READY.",
}


@dataclass(frozen=True)
class InputRule:
    """How one variable is offered in one template: mandatory or not, and its default."""

    mandatory: bool = False
    default: str | None = None  # None: the registry default


# Per template kind and role: the rules that differ from "optional, registry default".
RULES: dict[str, dict[Role, dict[str, InputRule]]] = {
    "coordinator": {Role.SUPERLINK: {"FL_TLS_ENABLED": InputRule(default="YES")}},
    "training-site": {
        Role.SUPERNODE: {
            "FL_TLS_ENABLED": InputRule(default="YES"),
            "FL_SUPERLINK_ADDRESS": InputRule(mandatory=True),
            "FL_SSL_CA_CERTFILE": InputRule(mandatory=True),
        }
    },
    "single-site": {
        Role.SUPERLINK: {"FL_TLS_ENABLED": InputRule(default="YES")},
        Role.SUPERNODE: {"FL_TLS_ENABLED": InputRule(default="YES")},
    },
}


def offered(role: Role) -> list[Variable]:
    """The registry variables a role VM accepts as OneFlow inputs, in registry order."""
    return [var for var in REGISTRY if var.applies_to(role) and not var.secret]


def role_user_inputs(kind: str, role: Role) -> dict[str, str]:
    """``{NAME: "M|type|desc|params|default"}`` for one role of one template kind."""
    rules = RULES.get(kind, {}).get(role, {})
    out: dict[str, str] = {}
    for var in offered(role):
        rule = rules.get(var.name, InputRule())
        out[var.name] = user_input(var, mandatory=rule.mandatory, default=rule.default)
    return out


def _role(
    kind: str,
    role: Role,
    template_id: int,
    cardinality: int,
    *,
    min_vms: int,
    max_vms: int | None = None,
    parents: list[str] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": ROLE_NAMES[role],
        "type": "vm",
        "template_id": template_id,
        "cardinality": cardinality,
        "min_vms": min_vms,
    }
    if max_vms is not None:
        doc["max_vms"] = max_vms
    if parents:
        doc["parents"] = parents
    # Deep-merged into the VM template (research note 6.1): belt and braces for TOKEN/REPORT_READY.
    doc["template_contents"] = {"CONTEXT": dict(REQUIRED_CONTEXT)}
    doc["user_inputs"] = role_user_inputs(kind, role)
    return doc


def build(
    kind: str,
    superlink_template_id: int = 0,
    supernode_template_id: int = 0,
    *,
    name: str | None = None,
    supernodes: int = DEFAULT_SUPERNODES,
) -> dict[str, Any]:
    """The OneFlow 7.x service template document for ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}; expected one of {', '.join(KINDS)}")
    if supernodes < 1:
        raise ValueError("supernodes must be at least 1")
    roles: list[dict[str, Any]] = []
    if kind in ("coordinator", "single-site"):
        roles.append(_role(kind, Role.SUPERLINK, superlink_template_id, 1, min_vms=1, max_vms=1))
    if kind in ("training-site", "single-site"):
        parents = [ROLE_NAMES[Role.SUPERLINK]] if kind == "single-site" else None
        roles.append(_role(kind, Role.SUPERNODE, supernode_template_id, supernodes, min_vms=1, parents=parents))
    has_parents = any(r.get("parents") for r in roles)
    return {
        "name": name or f"flower-{kind}",
        "description": f"{DESCRIPTIONS[kind]} {VM_TEMPLATE_NOTE}",
        "deployment": "straight" if has_parents else "none",
        "ready_status_gate": True,
        "roles": roles,
    }
