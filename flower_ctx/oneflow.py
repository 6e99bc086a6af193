"""OneFlow service templates and role VM templates built from the variable registry (pure, no I/O).

Three shapes match the reference deployment (DESIGN section 1):

- ``coordinator``: the SuperLink alone, a singleton, TLS on (zone A);
- ``training-site``: SuperNodes alone, no parents, with ``FL_SUPERLINK_ADDRESS`` and
  ``FL_SSL_CA_CERTFILE`` mandatory because OneGate cannot reach across zones (zones B, C);
- ``single-site``: both roles in one service, the SuperNode role a child of the SuperLink role
  (``deployment: straight``) so SuperNodes start once the SuperLink reported READY.
- ``training-site-gateway``: a training site behind one site gateway (docs/site-gateways.md): a
  ``gateway`` role (one VM: WireGuard to the hub, forwarding) and the SuperNode role as its
  ``straight`` child, so SuperNodes start once the gateway reported READY (tunnel up, SuperLink
  answering through it). SuperNodes have no tunnel: they route ``FL_GATEWAY_ROUTES`` through the
  gateway, found through OneGate (the ``gateway`` role's VM). Both roles can use the SuperNode VM
  template: the gateway role sets ``FL_APPLIANCE_ROLE=gateway`` itself (7: in its
  ``template_contents`` CONTEXT; 6.10: a line of its ``vm_template_contents``, which the VM
  template's ``FL_APPLIANCE_ROLE = "$FL_APPLIANCE_ROLE"`` copies into CONTEXT).

Two OneFlow dialects, each usable from both clients (``oneflow-template instantiate`` and the
Sunstone/FireEdge instantiate form):

- ``7`` (7.0 and later): roles ``type: vm`` + ``template_id``; the inputs are service-level
  ``user_inputs``. FireEdge 7 never shows role-level ``user_inputs`` of a service template (it
  shows the service's and the role VM templates' USER_INPUTS), and the CLI asks service-level
  ones too. OneFlow 7 copies every answer into each VM's USER_TEMPLATE and, as ``NAME="$NAME"``,
  into its CONTEXT. ``template_contents`` carries TOKEN/REPORT_READY/NETWORK=YES.
- ``6.10``: roles ``vm_template`` (an integer); the inputs are service-level ``custom_attrs``.
  OneFlow 6.10 delivers a value only by replacing the text ``$NAME`` in the role's
  ``vm_template_contents``; so that text holds one ``NAME = "$NAME"`` line per input (a top-level
  attribute, which lands in USER_TEMPLATE) and the VM template's CONTEXT must say
  ``NAME = "$NAME"`` (``vm_template`` prints that). No CONTEXT vector goes into
  ``vm_template_contents``: the core would replace the VM template's whole CONTEXT with it, and
  6.10's FireEdge flattens it into top-level pairs anyway. The replacement is a plain ``gsub`` of
  ``$NAME``, so ``$FL_GRPC_KEEPALIVE_TIME`` would also eat the front of
  ``$FL_GRPC_KEEPALIVE_TIMEOUT``: a name is always written before any name that is a prefix of it.

Every input is offered in both dialects from the same rules. Booleans are offered as a ``YES,NO``
list: the service instantiate forms of FireEdge (6.10 and 7) send a boolean switch as
``String(value)``, i.e. ``true``/``false``, which is not a CONTEXT boolean; a list sends its option.

Secret variables are never offered: OneFlow copies every answered input into the VM's
USER_TEMPLATE, which any VM of the same service can read through OneGate ``GET /vms/<id>``. Secrets
are generated on the VM (``FL_WG_PRIVATE_KEY``) or given outside the service template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import Role
from .variables import REGISTRY, Variable

KINDS = ("coordinator", "training-site", "single-site", "training-site-gateway")
VERSIONS = ("6.10", "7")
DEFAULT_VERSION = "7"

# OneFlow role names: must match ^\w+$ and are what SuperNodes look up in GET /service.
ROLE_NAMES = {Role.SUPERLINK: "superlink", Role.SUPERNODE: "supernode", Role.GATEWAY: "gateway"}

# What every role VM needs in CONTEXT; OneFlow sets none of it. The VM templates must carry it
# too (6.10 has nowhere else to put it; a VM template used outside OneFlow has no template_contents).
REQUIRED_CONTEXT = {"TOKEN": "YES", "REPORT_READY": "YES", "NETWORK": "YES"}

DEFAULT_SUPERNODES = 2

VM_TEMPLATE_NOTE = (
    "Role VM templates must set CONTEXT TOKEN=YES (OneGate access) and REPORT_READY=YES (readiness gate) "
    "and pass every input to CONTEXT (print one with `flower-ctx oneflow vm-template ROLE`); "
    "flower-ctx reports READY=YES only when Flower really serves."
)

DESCRIPTIONS = {
    "coordinator": "Flower coordinator (zone A): one SuperLink with TLS, Fleet API on port 9092. "
    "Export its CA with `flower-ctx ca export` for the training sites.",
    "training-site": "Flower training site (zone B, C, ...): SuperNodes that dial a SuperLink in another zone. "
    "FL_SUPERLINK_ADDRESS and FL_SSL_CA_CERTFILE are mandatory (no OneGate across zones).",
    "single-site": "Flower federation in one zone: a SuperLink and SuperNodes that discover it and its CA "
    "through OneGate. SuperNodes deploy after the SuperLink is READY.",
    "training-site-gateway": "Flower training site behind one site gateway (zone B, C, ...): the gateway VM "
    "holds the zone's only WireGuard tunnel to the hub and forwards; SuperNodes (no tunnel) route "
    "FL_GATEWAY_ROUTES through it and deploy after it is READY. Adding SuperNodes changes nothing on the hub.",
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
    "training-site-gateway": {
        Role.GATEWAY: {
            "FL_TLS_ENABLED": InputRule(default="YES"),
            "FL_SUPERLINK_ADDRESS": InputRule(mandatory=True),
            "FL_SSL_CA_CERTFILE": InputRule(mandatory=True),
            "FL_WG_ADDRESS": InputRule(mandatory=True),
            "FL_WG_PEER_PUBLIC_KEY": InputRule(mandatory=True),
            "FL_WG_PEER_ENDPOINT": InputRule(mandatory=True),
            "FL_WG_PEER_ALLOWED_IPS": InputRule(mandatory=True),
        },
        Role.SUPERNODE: {
            "FL_TLS_ENABLED": InputRule(default="YES"),
            "FL_SUPERLINK_ADDRESS": InputRule(mandatory=True),
            "FL_SSL_CA_CERTFILE": InputRule(mandatory=True),
            "FL_GATEWAY_ROUTES": InputRule(mandatory=True),
        },
    },
}

# Variables a kind does not offer at all: in training-site-gateway the gateway's tunnel and forwarding
# are always on (offering them would let a SuperNode bring up a tunnel with the gateway's address), it
# has exactly one peer (the hub), and the SuperNodes find the gateway through OneGate.
NOT_OFFERED: dict[str, frozenset[str]] = {
    "training-site-gateway": frozenset({"FL_WG_ENABLED", "FL_WG_FORWARD", "FL_WG_PEERS", "FL_GATEWAY_ADDRESS"}),
}
# 6.10 only: inputs a role's vm_template_contents does not pass on (the VM then sees them unset). On 7
# OneFlow gives every VM every input; flower-ctx ignores the gateway's WireGuard inputs on a SuperNode
# behind a gateway (FL_WG_ENABLED stays NO there).
ROLE_SKIPS: dict[str, dict[Role, frozenset[str]]] = {
    "training-site-gateway": {Role.SUPERNODE: frozenset(v.name for v in REGISTRY if v.group == "wireguard")},
}
# Constants a role of a kind sets in its VMs' CONTEXT (what a role is, beyond its VM template).
ROLE_CONTEXT: dict[str, dict[Role, dict[str, str]]] = {
    "training-site-gateway": {Role.GATEWAY: {"FL_APPLIANCE_ROLE": "gateway"}},
}


def check_version(opennebula: str) -> str:
    if opennebula not in VERSIONS:
        raise ValueError(f"unknown OpenNebula version {opennebula!r}; expected one of {', '.join(VERSIONS)}")
    return opennebula


def roles_of(kind: str) -> tuple[Role, ...]:
    """The roles of a template kind, in deployment order."""
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}; expected one of {', '.join(KINDS)}")
    return {
        "coordinator": (Role.SUPERLINK,),
        "training-site": (Role.SUPERNODE,),
        "single-site": (Role.SUPERLINK, Role.SUPERNODE),
        "training-site-gateway": (Role.GATEWAY, Role.SUPERNODE),
    }[kind]


def offered(role: Role) -> list[Variable]:
    """The registry variables a role VM accepts as OneFlow inputs, in registry order."""
    return [var for var in REGISTRY if var.applies_to(role) and not var.secret and var.input]


def input_spec(var: Variable, rule: InputRule = InputRule()) -> str:
    """The ``M|type|description|params|default`` string OneFlow asks with (both clients, both
    versions). Booleans become a ``YES,NO`` list (see the module docstring)."""
    desc = var.description.replace("|", "/")
    default = var.default if rule.default is None else rule.default
    kind, params = var.type, var.params
    if kind == "boolean":
        kind, params = "list", "YES,NO"
    return f"{'M' if rule.mandatory else 'O'}|{kind}|{desc}|{params}|{default or ''}"


def service_inputs(kind: str) -> dict[str, str]:
    """The service-level inputs of a kind: every non-secret variable of its roles, mandatory ones
    first, then in registry order. In ``single-site`` a variable both roles read gets one answer
    for both (OneFlow gives every VM of the service every service-level input)."""
    roles = roles_of(kind)
    out: dict[str, tuple[bool, str]] = {}
    skip = NOT_OFFERED.get(kind, frozenset())
    for var in REGISTRY:
        users = [r for r in roles if var.applies_to(r) and not var.secret and var.input]
        if not users or var.name in skip:
            continue
        rules = [RULES.get(kind, {}).get(r, {}).get(var.name, InputRule()) for r in users]
        rule = InputRule(
            # One answer for every VM: mandatory when a role needs it (the others then ignore it or use it).
            mandatory=any(r.mandatory for r in rules),
            default=next((r.default for r in rules if r.default is not None), None),
        )
        out[var.name] = (rule.mandatory, input_spec(var, rule))
    ordered = [n for n, (m, _) in out.items() if m] + [n for n, (m, _) in out.items() if not m]
    return {n: out[n][1] for n in ordered}


def substitution_order(names: list[str]) -> list[str]:
    """``names`` reordered so no name comes after a name that is a prefix of it (6.10's ``gsub``
    of ``$NAME`` would replace the front of the longer one); otherwise the order is kept."""
    out: list[str] = []
    for name in names:
        at = next((i for i, done in enumerate(out) if name.startswith(done)), len(out))
        out.insert(at, name)
    return out


def template_contents_610(role: Role, inputs: dict[str, str], kind: str = "") -> str:
    """6.10 ``vm_template_contents``: the role's constants, then ``NAME = "$NAME"`` for each input the
    role's VMs read."""
    skip = ROLE_SKIPS.get(kind, {}).get(role, frozenset())
    names = [var.name for var in offered(role) if var.name in inputs and var.name not in skip]
    constants = ROLE_CONTEXT.get(kind, {}).get(role, {})
    return "".join(f'{k} = "{v}"\n' for k, v in constants.items()) + \
        "".join(f'{name} = "${name}"\n' for name in substitution_order(names))


def _role(
    role: Role,
    template_id: int,
    cardinality: int,
    opennebula: str,
    inputs: dict[str, str],
    *,
    min_vms: int,
    max_vms: int | None = None,
    parents: list[str] | None = None,
    kind: str = "",
) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": ROLE_NAMES[role]}
    if opennebula == "7":
        doc["type"] = "vm"
        doc["template_id"] = template_id
    else:
        doc["vm_template"] = template_id
    doc["cardinality"] = cardinality
    doc["min_vms"] = min_vms
    if max_vms is not None:
        doc["max_vms"] = max_vms
    if parents:
        doc["parents"] = parents
    if opennebula == "7":
        # Deep-merged into the VM template by OneFlow 7: belt and braces for TOKEN/REPORT_READY.
        doc["template_contents"] = {"CONTEXT": {**REQUIRED_CONTEXT, **ROLE_CONTEXT.get(kind, {}).get(role, {})}}
    else:
        doc["vm_template_contents"] = template_contents_610(role, inputs, kind)
    return doc


def build(
    kind: str,
    superlink_template_id: int = 0,
    supernode_template_id: int = 0,
    *,
    name: str | None = None,
    supernodes: int = DEFAULT_SUPERNODES,
    opennebula: str = DEFAULT_VERSION,
    gateway_template_id: int | None = None,
) -> dict[str, Any]:
    """The OneFlow service template document for ``kind`` (one of ``KINDS``) and ``opennebula``
    (one of ``VERSIONS``). The gateway role uses ``gateway_template_id``, by default the SuperNode's
    VM template (the gateway is a role of the SuperNode image)."""
    roles_wanted = roles_of(kind)
    check_version(opennebula)
    if supernodes < 1:
        raise ValueError("supernodes must be at least 1")
    inputs = service_inputs(kind)
    roles: list[dict[str, Any]] = []
    if Role.SUPERLINK in roles_wanted:
        roles.append(_role(Role.SUPERLINK, superlink_template_id, 1, opennebula, inputs, min_vms=1, max_vms=1))
    if Role.GATEWAY in roles_wanted:
        gw_template = supernode_template_id if gateway_template_id is None else gateway_template_id
        roles.append(_role(Role.GATEWAY, gw_template, 1, opennebula, inputs, min_vms=1, max_vms=1, kind=kind))
    if Role.SUPERNODE in roles_wanted:
        parent = next((r for r in (Role.SUPERLINK, Role.GATEWAY) if r in roles_wanted), None)
        parents = [ROLE_NAMES[parent]] if parent is not None else None
        roles.append(
            _role(Role.SUPERNODE, supernode_template_id, supernodes, opennebula, inputs, min_vms=1, parents=parents,
                  kind=kind)
        )
    has_parents = any(r.get("parents") for r in roles)
    doc: dict[str, Any] = {
        "name": name or f"flower-{kind}",
        "description": f"{DESCRIPTIONS[kind]} {VM_TEMPLATE_NOTE}",
        "deployment": "straight" if has_parents else "none",
        "ready_status_gate": True,
    }
    doc["user_inputs" if opennebula == "7" else "custom_attrs"] = inputs
    doc["roles"] = roles
    return doc


def vm_template(role: Role | str, opennebula: str = DEFAULT_VERSION) -> str:
    """The CONTEXT a role's VM template needs (OpenNebula template syntax): OneGate, network,
    the readiness report, and ``NAME = "$NAME"`` for every input, so answers reach CONTEXT on 6.10
    (where nothing else puts them there) as on 7.x (where OneFlow adds the same lines itself).
    The SuperNode image's template also serves a ``training-site-gateway`` service's gateway role
    (which sets FL_APPLIANCE_ROLE); ``gateway`` prints a template that is always a gateway."""
    role = Role(role)
    check_version(opennebula)
    title = {Role.SUPERLINK: "SuperLink", Role.SUPERNODE: "SuperNode",
             Role.GATEWAY: "site gateway (SuperNode image)"}[role]
    secrets = [var.name for var in REGISTRY if var.applies_to(role) and var.secret]
    lines = [
        f"# CONTEXT of the Flower {title} VM template (OpenNebula {opennebula}{'.x' if opennebula == '7' else ''}).",
        "# Add it to the image's VM template: onetemplate update ID FILE --append (it replaces the",
        "# template's CONTEXT; CPU, MEMORY, DISK, NIC stay). Each NAME = \"$NAME\" line passes a OneFlow",
        "# input into CONTEXT (OneFlow 6.10 puts inputs only into USER_TEMPLATE); unanswered = empty = unset.",
        f"# Secrets ({', '.join(secrets)}) are never inputs: see docs/appliance.md.",
        "CONTEXT = [",
    ]
    entries = [f'{k} = "{v}"' for k, v in REQUIRED_CONTEXT.items()]
    entries.append('SSH_PUBLIC_KEY = "$USER[SSH_PUBLIC_KEY]"')
    if role is Role.GATEWAY:
        entries.append('FL_APPLIANCE_ROLE = "gateway"')
    elif role is Role.SUPERNODE:
        # Empty (a SuperNode) unless a service's gateway role sets it (training-site-gateway).
        entries.append('FL_APPLIANCE_ROLE = "$FL_APPLIANCE_ROLE"')
    # The SuperNode image also serves the gateway role: its VM template passes both roles' inputs.
    served = {role, Role.GATEWAY} if role is Role.SUPERNODE else {role}
    entries += [f'{var.name} = "${var.name}"' for var in REGISTRY
                if var in [v for r in served for v in offered(r)]]
    lines += [f"  {e}," for e in entries[:-1]] + [f"  {entries[-1]} ]"]
    return "\n".join(lines) + "\n"
