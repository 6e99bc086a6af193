"""A OneFlow double: service templates, instantiation from the CLI and from Sunstone, and the VMs
OpenNebula makes of them, on top of the OneGate double (``tests/onegate_server.py``).

Written from the research notes (``../shared/research/opennebula-upstream-behaviour.md``,
``/work/notes/opennebula-more.md`` sections 1, 2 and 6), never from upstream code. It reproduces
what decides whether a flower-ctx template works, warts included:

- **Schema per version.** 6.10 (table A: roles need an integer ``vm_template``; service
  ``custom_attrs``) and 7.x (table B: roles need ``type: vm`` and ``template_id``; service and
  role ``user_inputs``). Unknown keys are kept; ``null``/``false`` count as absent (Ruby
  truthiness: ``0`` and ``""`` are present); integers go through Ruby's ``Integer()`` (``"5"`` ->
  5, ``"5x"`` -> "must be an Integer"); the role name regexp is Ruby's line-anchored ``^\\w+$``;
  min_vms <= cardinality <= max_vms; unique role names. Error texts in the version's style
  (``KEY: 'vm_template' is required;`` / ``Mandatory document key 'type (string)' is missing from
  {...}``). 7.x first converts a 6.x template when *every* role has ``vm_template`` or
  ``vm_template_contents``, warts included: quotes stripped from the contents, role
  ``custom_attrs_values`` dropped, and a failed conversion is a crash (500), not a 400.
- **check_user_inputs.** Every declared input needs a key in the values (400 "Verify that every
  ..."); values are never checked. A schema error at instantiate time is a 500.
- **Two clients.** :meth:`OneFlow.cli` runs ``oneflow-template create FILE`` and
  ``oneflow-template instantiate ID [FILE]``, prompting like ``OpenNebulaHelper.parse_user_inputs``
  with the ``answers`` given in prompt order (an answer is one typed line; ``"<<EDITOR>>"``
  makes the next answer the editor's file): ``text64`` answers (the default included) are
  base64-encoded, ``list`` answers are option numbers, ``boolean`` must be ``YES``/``NO``, an
  empty optional number/range/list answer is dropped (and the server then refuses the request),
  ``M`` is not enforced for text. :meth:`OneFlow.web_instantiate` is the Sunstone/FireEdge form:
  text is trimmed and passed through (no base64), every value is sent as JS ``String(value)``
  (a boolean switch becomes ``"true"``/``"false"``), keys upper-cased; 6.10's form also rewrites
  each role's ``vm_template_contents`` (flat ``KEY = "value"`` pairs kept, a ``CONTEXT=[...]``
  vector flattened, the answers appended as ``KEY = "value"``, empty ones dropped).
- **Value delivery.** 7.x: service values deep-merged with role values (role wins); each goes
  into the role's ``template_contents`` as a top-level attribute (-> USER_TEMPLATE) and as
  ``CONTEXT[KEY] = "$KEY"``; the VM template is deep-merged with that and rewritten through
  ``Hash.to_raw`` (``"`` escaped as ``\\"``, and ``,`` inserted before every newline *inside a
  vector*: a multi-line value written in the VM template's CONTEXT comes back with ``,\\n``; an
  input's own value is a top-level attribute and keeps its newlines). 6.10: ``$NAME`` in
  ``vm_template_contents`` is replaced as plain text (role value, else service value; a
  ``gsub``, so ``$FL_X`` also rewrites the front of ``$FL_X_Y``; quotes in a value are not
  escaped and break the template), the text is merged over the VM template top-level attribute
  by attribute (a ``CONTEXT`` there replaces the VM template's whole CONTEXT), and its
  attributes land in USER_TEMPLATE; a value reaches CONTEXT only through the VM template's
  ``NAME = "$NAME"``.
- **The core.** OpenNebula template text is parsed like ``template_parser.l``/``template_syntax.y``
  (names upper-cased, ``\\"`` unescaped, multi-line quoted values, syntax errors fail the VM).
  CONTEXT ``$VAR`` references are resolved once at creation against the VM's template then user
  template (``$NAME`` is the VM name, ``$VMID``, ``$UID``/``$UNAME``/``$GID``/``$GNAME``,
  ``$USER[ATTR]``, ``$NIC[IP]``); ``NETWORK=YES`` adds the NIC variables from the
  ``nic_context`` callback; ``TOKEN=YES`` adds ``ONEGATE_ENDPOINT`` and ``VMID``.
- **VMs and services.** Names ``<role>_<n>_(service_<id>)`` with a per-role counter from 0, never
  reused; VMIDs allocated from the OneGate double; USER_TEMPLATE gets SERVICE_ID and ROLE_NAME.
  Each VM is registered in the OneGate double (NICs, USER_TEMPLATE, its CONTEXT for
  ``GET /service?extended=true``) and the service with its roles, so ``GET /service``, ``/vm`` and
  ``/vms/<id>`` reflect it. ``deployment: straight`` deploys a role once every VM of its parents
  is ready; with ``ready_status_gate`` a VM is ready when OneGate shows ``USER_TEMPLATE/READY ==
  'YES'`` or an update's text (quotes and blanks removed) contains ``READY=YES`` - so
  ``FL_READY=YES`` alone counts too, as in EventManager. No deadline: a parent that never reports
  keeps the service DEPLOYING. Scaling adds VMs with new numbers (SCALING until they are ready)
  or terminates the oldest.

API (everything a lab needs)::

    flow = OneFlow(onegate, version="7.4.0",                      # or "6.10.5"; "7" and "6.10" too
                   nic_context=lambda role, vm_name, vmid: {...},  # ETH0_IP, ETH0_MAC, ... (quick: called
                                                                   # with the double's lock held)
                   on_vm_created=lambda record: ...,               # a VmRecord, from the worker thread
                   on_reconfigure=lambda record: ...,              # after update_context
                   onegate_endpoint=None,                          # CONTEXT ONEGATE_ENDPOINT (default onegate.url)
                   user_attrs={"SSH_PUBLIC_KEY": "..."})           # the owner's attributes, for $USER[...]
    with flow:                                                     # starts/stops the worker thread
        tid = flow.add_vm_template(HW + vm_template_text)          # template text, e.g. CPU/MEMORY/DISK/NIC
                                                                   # plus `flower-ctx oneflow vm-template ROLE`
        out = flow.cli(["oneflow-template", "create", path])       # "ID: 0\\n"; CliError on failure
        out = flow.cli(["oneflow-template", "instantiate", "0"], answers=[...])
        sid = flow.web_instantiate(0, {"FL_SUPERLINK_ADDRESS": "...", ...})
        tid = flow.create_template(doc_or_json); sid = flow.instantiate(tid, merge_template)  # the API
        flow.settle()                                              # wait until pending events are handled
        flow.wait_state(sid, "RUNNING", timeout=60)                # service state name
        flow.service(sid)                                          # ServiceState: state, roles, log
        flow.vms(sid, role="supernode")                            # [VmRecord] in creation order
        flow.record(vmid); flow.template(tid)                      # one VM; a stored service template
        flow.scale(sid, "supernode", 3)
        flow.update_context(vmid, {"FL_LOG_LEVEL": "DEBUG", "OLD": None})  # onevm updateconf

``VmRecord``: ``id``, ``name``, ``role``, ``service_id``, ``context`` (the final CONTEXT:
exactly what OpenNebula writes into context.sh), ``token`` (its OneGate token), ``user_template``
(at creation; OneGate holds the live one), ``template``; ``context_sh()`` renders context.sh
with ``flower_ctx.context.render``. Callbacks run in the worker thread, outside the double's
lock; an exception they raise is re-raised by the next ``settle``/``wait_state``. Give the OneGate
double the same version (``OneGateServer(version="7.4.0")``: 500 bodies differ).
Errors: :class:`OneFlowError` (``status``, ``message``: the HTTP answer of oneflow-server),
:class:`CliError` (``status``, ``output``: what the CLI printed), :class:`WebFormError` (the form
refuses to submit). The OneGate double is not started or bound
here; the lab binds it where its VMs can reach it (``tests/netns_thread.py``).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flower_ctx import context as ctxmod
from tests.onegate_server import FakeRole, FakeService, OneGateServer, version_tuple

SHORT_VERSIONS = {"6.10": "6.10.5", "7": "7.4.0"}

SERVICE_STATES = (
    "PENDING", "DEPLOYING", "RUNNING", "UNDEPLOYING", "WARNING", "DONE", "FAILED_UNDEPLOYING",
    "FAILED_DEPLOYING", "SCALING", "FAILED_SCALING", "COOLDOWN", "DEPLOYING_NETS", "UNDEPLOYING_NETS",
    "FAILED_DEPLOYING_NETS", "FAILED_UNDEPLOYING_NETS", "HOLD",
)
ROLE_STATES = (
    "PENDING", "DEPLOYING", "RUNNING", "UNDEPLOYING", "WARNING", "DONE", "FAILED_UNDEPLOYING",
    "FAILED_DEPLOYING", "SCALING", "FAILED_SCALING", "COOLDOWN", "HOLD",
)
VM_NAME_TEMPLATE = "$ROLE_NAME_$VM_NUMBER_(service_$SERVICE_ID)"  # oneflow-server.conf default

# Top-level attributes oned keeps in the VM's TEMPLATE; every other one lands in USER_TEMPLATE.
TEMPLATE_ATTRS = frozenset({
    "NAME", "CPU", "VCPU", "MEMORY", "DISK", "NIC", "NIC_ALIAS", "NIC_DEFAULT", "CONTEXT", "OS",
    "FEATURES", "GRAPHICS", "INPUT", "RAW", "CPU_MODEL", "TOPOLOGY", "NUMA_NODE", "PCI",
    "SCHED_ACTION", "VMGROUP", "MEMORY_COST", "CPU_COST", "DISK_COST", "TEMPLATE_ID", "VMID",
    "SECURITY_GROUP_RULE", "SPICE_OPTIONS", "VIDEO", "IOTHREADS", "BACKUP_CONFIG", "TM_MAD_SYSTEM",
    "AUTOMATIC_REQUIREMENTS", "AUTOMATIC_DS_REQUIREMENTS", "AUTOMATIC_NIC_REQUIREMENTS", "EMULATOR",
})


def full_version(version: str) -> str:
    return SHORT_VERSIONS.get(version, version)


# =================================================================================================
# Errors


class OneFlowError(Exception):
    """An oneflow-server answer that is not a success: ``status`` and its body ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class CliError(Exception):
    """``oneflow-template`` exited non-zero; ``output`` is everything it printed."""

    def __init__(self, status: int, output: str) -> None:
        super().__init__(output)
        self.status = status
        self.output = output


class WebFormError(Exception):
    """Sunstone's form refuses to submit (a mandatory input left empty, a value not an option)."""


class TemplateSyntaxError(Exception):
    """The core could not parse an OpenNebula template text."""


class _ParseException(Exception):
    """Validator::ParseException (a 400 at create, a 500 at instantiate)."""


class _RubyCrash(Exception):
    """An exception oneflow-server does not rescue: Sinatra answers 500 with its message."""


# =================================================================================================
# Ruby semantics the server relies on


def truthy(value: Any) -> bool:
    """Ruby truthiness: only nil and false are false (0, "", [] and {} are true)."""
    return value is not None and value is not False


def ruby_integer(value: Any) -> int:
    """Kernel#Integer: ints as they are, floats truncated, strings in Ruby's integer syntax
    (blanks around, sign, ``0x``/``0b``/``0o``/leading-0 octal, ``_`` between digits)."""
    if isinstance(value, (bool, list, dict)):
        kind = {True: "true", False: "false", list: "Array", dict: "Hash"}
        name = kind[value] if isinstance(value, bool) else kind[type(value)]
        raise TypeError(f"can't convert {name} into Integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _RubyCrash(f"{value}")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F](?:_?[0-9a-fA-F])*|0[bB][01](?:_?[01])*|"
                         r"0[oO]?[0-7](?:_?[0-7])*|[0-9](?:_?[0-9])*)\s*", value)
        if not m:
            raise ValueError(f'invalid value for Integer(): "{value}"')
        sign, body = m.groups()
        body = body.replace("_", "").lower()
        if body.startswith("0x"):
            n = int(body[2:], 16)
        elif body.startswith("0b"):
            n = int(body[2:], 2)
        elif body.startswith("0o"):
            n = int(body[2:], 8)
        elif len(body) > 1 and body.startswith("0"):
            n = int(body[1:], 8)
        else:
            n = int(body)
        return -n if sign == "-" else n
    raise TypeError(f"can't convert {type(value).__name__} into Integer")


def ruby_to_i(value: Any) -> int:
    """String#to_i / Integer#to_i / nil.to_i: a leading integer, else 0; others have no to_i."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _RubyCrash(f"undefined method 'to_i' for {str(value).lower()}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        m = re.match(r"\s*([+-]?\d+(?:_\d+)*)", value)
        return int(m.group(1).replace("_", "")) if m else 0
    raise _RubyCrash(f"undefined method 'to_i' for an instance of {type(value).__name__}")


def ruby_inspect_schema(schema: Mapping[str, Any]) -> str:
    parts = [f":{k}=>{':' + v if isinstance(v, str) else str(v).lower()}" for k, v in schema.items()
             if k in ("type", "required")]
    return "{" + ", ".join(parts) + "}"


def deep_merge_7(a: Mapping[str, Any], b: Mapping[str, Any], merge_array: bool = True) -> dict[str, Any]:
    """Hash#deep_merge of 7.x: hashes recursively; arrays concatenated (uniq when all hashes)
    when ``merge_array``; anything else from ``b``."""
    target = dict(a)
    for key, value in b.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            target[key] = deep_merge_7(current, value, merge_array)
        elif isinstance(value, list) and isinstance(current, list) and merge_array:
            merged = current + value
            if all(isinstance(e, dict) for e in merged):
                uniq: list[Any] = []
                for e in merged:
                    if e not in uniq:
                        uniq.append(e)
                merged = uniq
            target[key] = merged
        else:
            target[key] = value
    return target


def deep_merge_610(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Hash#deep_merge of 6.10: hashes recursively; arrays of hashes merged element by element
    (by index); any other array replaces."""
    target = dict(a)
    for key, value in b.items():
        mine = a.get(key)
        if isinstance(value, dict) and isinstance(mine, dict):
            target[key] = deep_merge_610(mine, value)
        elif isinstance(value, list) and isinstance(mine, list):
            out = list(mine)
            for i, elem in enumerate(value):
                if i < len(mine) and isinstance(mine[i], dict) and isinstance(elem, dict):
                    if i < len(out):
                        out[i] = deep_merge_610(mine[i], elem)
                else:
                    out = list(value)
            target[key] = out
        else:
            target[key] = value
    return target


def ruby_gsub_replacement(replacement: str, matched: str) -> str:
    """What String#gsub!(str, replacement) inserts: ``\\\\`` is one backslash, ``\\&``/``\\0``
    the match."""
    return re.sub(r"\\(\\|&|0)", lambda m: "\\" if m.group(1) == "\\" else matched, replacement)


# =================================================================================================
# Schemas (tables A and B of the notes, in a small notation of our own)


def _s(kind: str, **kw: Any) -> dict[str, Any]:
    return {"type": kind, **kw}


_SHUTDOWN = ["terminate", "terminate-hard", "shutdown", "shutdown-hard"]
_POLICY_TYPES = ["CHANGE", "CARDINALITY", "PERCENTAGE_CHANGE"]
_ELASTICITY = _s("object", properties={
    "type": _s("string", enum=_POLICY_TYPES, required=True),
    "adjust": _s("integer", required=True),
    "min_adjust_step": _s("integer", minimum=1),
    "period_number": _s("integer", minimum=0),
    "period": _s("integer", minimum=0),
    "expression": _s("string", required=True),
    "cooldown": _s("integer", minimum=0),
})
_SCHEDULED = _s("object", properties={
    "type": _s("string", enum=_POLICY_TYPES, required=True),
    "adjust": _s("integer", required=True),
    "min_adjust_step": _s("integer", minimum=1),
    "start_time": _s("string"),
    "recurrence": _s("string"),
})
_OBJ = _s("object", properties={})
_COMMON_ROLE = {
    "parents": _s("array", items=_s("string")),
    "shutdown_action": _s("string", enum=_SHUTDOWN),
    "min_vms": _s("integer", minimum=0),
    "max_vms": _s("integer", minimum=0),
    "cooldown": _s("integer", minimum=0),
    "on_hold": _s("boolean"),
    "elasticity_policies": _s("array", items=_ELASTICITY),
    "scheduled_policies": _s("array", items=_SCHEDULED),
}
ROLE_SCHEMA_610 = _s("object", properties={
    "name": _s("string", required=True, regex=r"^\w+$"),
    "cardinality": _s("integer", default=0, minimum=0),
    "vm_template": _s("integer", required=True),
    "vm_template_contents": _s("string"),
    "custom_attrs": _OBJ,
    "custom_attrs_values": _OBJ,
    **_COMMON_ROLE,
})
VM_ROLE_SCHEMA_7 = _s("object", properties={
    "name": _s("string", required=True, regex=r"^\w+$"),
    "type": _s("string", enum=["vm"], required=True),
    "cardinality": _s("integer", default=0, minimum=0),
    "template_id": _s("integer", required=True),
    "template_contents": _OBJ,
    "user_inputs": _OBJ,
    "user_inputs_values": _OBJ,
    **_COMMON_ROLE,
})
VR_ROLE_SCHEMA_7 = _s("object", properties={
    "name": _s("string", required=True, regex=r"^\w+$"),
    "type": _s("string", enum=["vr"], required=True),
    "template_id": _s("integer", required=True),
    "cardinality": _s("integer", default=0, minimum=0),
    "template_contents": _OBJ,
    "user_inputs": _OBJ,
    "user_inputs_values": _OBJ,
    "on_hold": _s("boolean"),
    "parents": _s("array", items=_s("string")),
})
_SERVICE_COMMON = {
    "name": _s("string", required=True),
    "deployment": _s("string", enum=["none", "straight"], default="none"),
    "description": _s("string", default=""),
    "shutdown_action": _s("string", enum=_SHUTDOWN),
}
_SERVICE_TAIL = {
    "ready_status_gate": _s("boolean"),
    "automatic_deletion": _s("boolean"),
    "networks": _OBJ,
    "networks_values": _s("array", items=_OBJ),
    "on_hold": _s("boolean"),
}
SERVICE_SCHEMA_610 = _s("object", properties={
    **_SERVICE_COMMON,
    "roles": _s("array", items=ROLE_SCHEMA_610, required=True),
    "custom_attrs": _OBJ,
    "custom_attrs_values": _OBJ,
    **_SERVICE_TAIL,
})
SERVICE_SCHEMA_7 = _s("object", properties={
    **_SERVICE_COMMON,
    "roles": _s("array", items=None, required=True),  # each role validated on its own (by type)
    "user_inputs": _OBJ,
    "user_inputs_values": _OBJ,
    **_SERVICE_TAIL,
})


class Validator:
    """The flow validator with ``default_values``, extra keys allowed, in one version's style."""

    def __init__(self, style: str) -> None:
        self.style = style  # "6.10" or "7"

    def validate(self, body: Any, schema: Mapping[str, Any], key: str = "") -> Any:
        kind = schema["type"]
        if kind == "object":
            return self._object(body, schema, key)
        if kind == "array":
            return self._array(body, schema, key)
        if kind == "string":
            return self._string(body, schema, key)
        if kind == "integer":
            return self._integer(body, schema, key)
        if kind == "boolean":
            if body is not True and body is not False:
                tail = "" if self.style == "6.10" else f" in {ruby_inspect_schema(schema)}"
                raise _ParseException(f"KEY: '{key}' is not allowed{tail};")
            return body
        raise AssertionError(kind)

    def _object(self, body: Any, schema: Mapping[str, Any], key: str) -> Any:
        if not isinstance(body, dict):
            if self.style == "6.10":
                raise _ParseException(f"KEY: {key} must be a Hash; SCHEMA:")
            raise _ParseException(f"KEY: '{key}' must be an Object;")
        for name, sub in schema["properties"].items():
            value = body.get(name)
            if truthy(value):
                body[name] = self.validate(value, sub, name)
                continue
            if sub.get("required"):
                if self.style == "6.10":
                    raise _ParseException(f"KEY: '{name}' is required;")
                dump = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
                raise _ParseException(f"Mandatory document key '{name} ({sub['type']})' is missing from {dump}")
            if "default" in sub:  # every default here is truthy in Ruby ("none", "", 0)
                body[name] = sub["default"]
        return body

    def _array(self, body: Any, schema: Mapping[str, Any], key: str) -> Any:
        if not isinstance(body, list):
            raise _ParseException(f"KEY: '{key}' must be an Array;")
        if schema.get("items") is None:
            return body
        return [self.validate(item, schema["items"], key) for item in body]

    def _string(self, body: Any, schema: Mapping[str, Any], key: str) -> Any:
        if not isinstance(body, str):
            raise _ParseException(f"KEY: '{key}' must be a String;")
        if "enum" in schema and body not in schema["enum"]:
            raise _ParseException(f"KEY: '{key}' must be one of {', '.join(schema['enum'])};")
        if "regex" in schema and not re.search(schema["regex"], body, re.M | re.ASCII):
            raise _ParseException(f"KEY: '{key}' must match regexp /{schema['regex']}/;")
        return body

    def _integer(self, body: Any, schema: Mapping[str, Any], key: str) -> int:
        try:
            value = ruby_integer(body)
        except ValueError:
            raise _ParseException(f"KEY: '{key}' must be an Integer;") from None
        except TypeError as exc:
            raise _RubyCrash(str(exc)) from None
        if "maximum" in schema and not value <= schema["maximum"]:
            raise _ParseException(f"KEY: '{key}' must be lower than or equal to {schema['maximum']};")
        if "minimum" in schema and not value >= schema["minimum"]:
            raise _ParseException(f"KEY: '{key}' must be greater than or equal to {schema['minimum']};")
        return value


def _check_values(template: dict[str, Any], style: str) -> None:
    """validate_values / validate_vmvalues: names, cardinality bounds, policies."""
    roles = template["roles"]
    for i, role in enumerate(roles):
        for other in roles[i + 1:]:
            if role.get("name") == other.get("name"):
                raise _ParseException(f"Role name '{role.get('name')}' is repeated")
        if style == "7" and role.get("type") == "vr":
            nics = (role.get("template_contents") or {}).get("NIC")
            if isinstance(nics, list) and ruby_to_i(role.get("cardinality")) > 1 and not any(
                    any(str(k).startswith("FLOATING") for k in n) for n in nics if isinstance(n, dict)):
                raise _ParseException(
                    f"Role '{role['name']}' with 'cardinality' greather than one must define a floating IP")
            continue
        if style == "7" and role.get("type") != "vm":
            raise _ParseException(f'Unsupported role type "{template.get("type") or ""}"')
        name = role.get("name")
        card = ruby_to_i(role.get("cardinality"))
        if role.get("min_vms") is not None and ruby_to_i(role["min_vms"]) > card:
            raise _ParseException(f"Role '{name}' 'cardinality' must be greater than or equal to 'min_vms'")
        if role.get("max_vms") is not None and ruby_to_i(role["max_vms"]) < card:
            raise _ParseException(f"Role '{name}' 'cardinality' must be lower than or equal to 'max_vms'")
        if (role.get("elasticity_policies") or role.get("scheduled_policies")) and (
                role.get("min_vms") is None or role.get("max_vms") is None):
            raise _ParseException(
                f"Role '{name}' with  'elasticity_policies' or 'scheduled_policies'must define both "
                "'min_vms' and 'max_vms'")
        for n, policy in enumerate(role.get("elasticity_policies") or []):
            if policy.get("expression", "") == "":
                raise _ParseException(f"Role '{name}', elasticity policy #{n} 'expression' cannot be empty")
        for n, policy in enumerate(role.get("scheduled_policies") or []):
            if policy.get("start_time") is not None and policy.get("recurrence") is not None:
                raise _ParseException(
                    f"Role '{name}', scheduled policy #{n} must define 'start_time' or 'recurrence', but not both")
            if policy.get("start_time") is None and policy.get("recurrence") is None:
                raise _ParseException(
                    f"Role '{name}', scheduled policy #{n} needs to define either 'start_time' or 'recurrence'")


def validate_610(template: dict[str, Any]) -> dict[str, Any]:
    """ServiceTemplate.validate of 6.10: the document, changed in place (defaults, integers)."""
    Validator("6.10").validate(template, SERVICE_SCHEMA_610)
    _check_values(template, "6.10")
    return template


def old_format(body: Mapping[str, Any]) -> bool:
    roles = body.get("roles")
    return "roles" in body and isinstance(roles, list) and all(
        isinstance(r, dict) and ("vm_template" in r or "vm_template_contents" in r) for r in roles)


def upgrade_template_contents(contents: str | None) -> dict[str, Any]:
    """7.x's reading of 6.x ``vm_template_contents``: lines ``KEY = value`` (newlines inside
    ``[...]`` kept), every ``"`` removed, ``[...]`` split on commas into one hash."""
    if not contents:
        return {}
    result: dict[str, Any] = {}
    for line in re.split(r"\n(?![^\[]*\])", contents):
        if "=" not in line:
            continue
        key, value = (p.strip() for p in line.split("=", 1))
        value = value.replace('"', "")
        parsed: Any
        if value.startswith("[") and value.endswith("]"):
            vector: dict[str, Any] = {}
            for element in re.split(r"\s*,\s*", value[1:-1]):
                parts = [p.strip() for p in element.split("=", 1)]
                vector[parts[0]] = parts[1] if len(parts) > 1 else None
            parsed = vector
        else:
            parsed = value
        if key in result:
            if isinstance(result[key], list):
                result[key].append(parsed)
            else:
                result[key] = [result[key], parsed]
        else:
            result[key] = parsed
    return {k: ([v] if isinstance(v, dict) else v) for k, v in result.items()}


def convert_template(body: dict[str, Any]) -> None:
    """7.x's in-place conversion of a 6.x template (commit 87c6d4a697), warts included."""
    try:
        for role in body["roles"]:
            role["template_id"] = ruby_to_i(role.get("vm_template"))
            role["type"] = "vm"
            if truthy(role.get("custom_attrs")):
                role["user_inputs"] = role["custom_attrs"]
            if truthy(body.get("custom_attrs_values")):
                body["user_inputs_values"] = role.get("custom_attrs_values")
            if truthy(role.get("vm_template_contents")):
                contents = role["vm_template_contents"]
                if not isinstance(contents, str):
                    raise _RubyCrash(f"undefined method 'split' for an instance of {type(contents).__name__}")
                role["template_contents"] = upgrade_template_contents(contents)
            role.pop("vm_template", None)
            for k in ("vm_template_contents", "custom_attrs", "custom_attrs_values"):
                if truthy(role.get(k)):
                    del role[k]
        if truthy(body.get("custom_attrs")):
            body["user_inputs"] = body["custom_attrs"]
        if truthy(body.get("custom_attrs_values")):
            body["user_inputs_values"] = body["custom_attrs_values"]
        for k in ("custom_attrs", "custom_attrs_values"):
            if truthy(body.get(k)):
                del body[k]
    except (_RubyCrash, TypeError, AttributeError):
        # The error path calls Validator::ParseException(msg), a method that does not exist.
        raise _RubyCrash("undefined method 'ParseException' for module Validator") from None


def validate_7(template: dict[str, Any], compat: bool = True) -> dict[str, Any]:
    """ServiceTemplate.validate of 7.x: 6.x conversion, schema, each role by type, values.
    ``compat=False`` checks table B alone (no conversion), to show what it requires."""
    if compat and old_format(template):
        convert_template(template)
    validator = Validator("7")
    validator.validate(template, SERVICE_SCHEMA_7)
    for role in template["roles"]:
        if not isinstance(role, dict):
            raise _RubyCrash(f"undefined method 'fetch' for an instance of {type(role).__name__}")
        kind = role.get("type", "vm")
        if kind == "vm":
            validator.validate(role, VM_ROLE_SCHEMA_7)
        elif kind == "vr":
            validator.validate(role, VR_ROLE_SCHEMA_7)
        else:
            raise _ParseException(f'Unsupported role type "{role.get("type")}"')
    _check_values(template, "7")
    return template


def validate(version: str, template: dict[str, Any], *, compat: bool = True) -> dict[str, Any]:
    """Validate (and normalise, in place) a service template document as ``version`` does.
    Raises OneFlowError 400 (ParseException) or 500 (an unrescued crash)."""
    try:
        if version_tuple(full_version(version)) >= (7, 0, 0):
            return validate_7(template, compat)
        return validate_610(template)
    except _ParseException as exc:
        raise OneFlowError(400, str(exc)) from None
    except _RubyCrash as exc:
        raise OneFlowError(500, str(exc)) from None


# =================================================================================================
# OpenNebula template text (the core's parser), Hash.to_raw, $VAR resolution

Attr = tuple[str, "str | dict[str, str]"]

_BLANK = " \t"


class _Lexer:
    """template_parser.l: INITIAL and VALUE states, flex longest match."""

    def __init__(self, text: str) -> None:
        self.text, self.i, self.line, self.value_state = text, 0, 1, False

    def _error(self, what: str) -> TemplateSyntaxError:
        return TemplateSyntaxError(f"syntax error, unexpected {what} at line {self.line}")

    def tokens(self) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        t, n = self.text, len(self.text)
        while self.i < n:
            i = self.i
            if self.value_state:
                m_ob = re.match(r"[ \t]*\[[ \t\n]*", t[i:])
                m_q = _match_quoted(t, i)
                m_s = re.match(r"[^=#\s,\[\]]+", t[i:])
                cands = [(len(m_ob.group(0)) if m_ob else 0, "OBRACKET"),
                         (m_q - i if m_q else 0, "QSTRING"),
                         (len(m_s.group(0)) if m_s else 0, "STRING")]
                length, kind = max(cands, key=lambda c: c[0])
                if length == 0:
                    self._advance(1)  # no VALUE rule matches: flex echoes the character
                    continue
                lexeme = t[i:i + length]
                self.value_state = False
                if kind == "OBRACKET":
                    out.append(("OBRACKET", "[", self.line))
                elif kind == "QSTRING":
                    out.append(("STRING", lexeme[1:-1], self.line))
                else:
                    out.append(("STRING", lexeme, self.line))
                self._advance(length)
                continue
            rules = [  # in the order of template_parser.l: the first of equally long matches wins
                (re.match(r"[ \t]*#[^\n]*\n", t[i:]), "SKIP"),
                (re.match(r"[ \t\n]+", t[i:]), "SKIP"),
                (re.match(r"[A-Za-z0-9_]+", t[i:]), "VARIABLE"),
                (re.match(r"[ \t]*=[ \t]*", t[i:]), "EQUAL"),
                (re.match(r"[ \t]*=[ \t]*\n", t[i:]), "EQUAL_EMPTY"),
                (re.match(r"[ \t\n]*,[ \t\n]*", t[i:]), "COMMA"),
                (re.match(r"[ \t\n]*\][ \t\n]*", t[i:]), "CBRACKET"),
            ]
            best = max(((len(m.group(0)), k, m.group(0)) for m, k in rules if m), default=(0, "", ""))
            length, kind, lexeme = best
            if length == 0:
                self._advance(1)  # flex's default rule echoes an unmatched character
                continue
            if kind == "EQUAL":
                self.value_state = True
            if kind != "SKIP":
                out.append((kind, lexeme, self.line))
            self._advance(length)
        out.append(("$end", "", self.line))
        return out

    def _advance(self, length: int) -> None:
        self.line += self.text.count("\n", self.i, self.i + length)
        self.i += length


def _match_quoted(t: str, i: int) -> int | None:
    """End (exclusive) of ``"([^"]|\\")*"`` at ``i``, flex's longest match; None if none."""
    if i >= len(t) or t[i] != '"':
        return None
    last = None
    for j in range(i + 1, len(t)):
        if t[j] == '"':
            if j - 1 == i or t[j - 1] != "\\":
                return j + 1  # an unescaped quote: no longer match goes past it
            last = j + 1  # after a backslash the quote may end the string or be part of it
    return last


def _unescape(value: str) -> str:
    return value.replace('\\"', '"')


def parse_template(text: str) -> list[Attr]:
    """Parse OpenNebula template text into ``[(NAME, value)]``, values a string or a vector
    (a dict). Names are upper-cased; repeated names are kept (a multimap)."""
    toks = _Lexer(text).tokens()
    pos = 0
    attrs: list[Attr] = []

    def expect(*kinds: str) -> tuple[str, str, int]:
        nonlocal pos
        tok = toks[pos]
        if tok[0] not in kinds:
            raise TemplateSyntaxError(
                f"syntax error, unexpected {tok[0]}, expecting {' or '.join(kinds)} at line {tok[2]}")
        pos += 1
        return tok

    while toks[pos][0] != "$end":
        name = expect("VARIABLE")[1].upper()
        eq = expect("EQUAL", "EQUAL_EMPTY")
        if eq[0] == "EQUAL_EMPTY":
            attrs.append((name, ""))
            continue
        tok = expect("STRING", "OBRACKET")
        if tok[0] == "STRING":
            attrs.append((name, _unescape(tok[1])))
            continue
        vector: dict[str, str] = {}
        if toks[pos][0] == "CBRACKET":
            pos += 1
            attrs.append((name, vector))
            continue
        while True:
            sub = expect("VARIABLE")[1].upper()
            expect("EQUAL")
            value = expect("STRING")[1]
            vector.setdefault(sub, _unescape(value))  # std::map::insert keeps the first
            if expect("COMMA", "CBRACKET")[0] == "CBRACKET":
                break
        attrs.append((name, vector))
    return attrs


def to_hash(attrs: Sequence[Attr]) -> dict[str, Any]:
    """A template as ``to_hash`` gives it: sorted names, vectors as hashes, repeats as arrays."""
    out: dict[str, Any] = {}
    for name, value in sorted(attrs, key=lambda a: a[0]):
        v = dict(sorted(value.items())) if isinstance(value, dict) else value
        if name in out:
            out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [v]
        else:
            out[name] = v
    return out


def _ruby_to_s(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def to_raw(content: Mapping[str, Any]) -> str:
    """Hash.to_raw (7.x): ``KEY = "value"`` lines, ``"`` escaped; a hash value becomes a vector
    whose lines are joined with ``,\\n`` - every newline inside its values included."""
    out = ""
    for key, value in content.items():
        if isinstance(value, dict):
            lines = to_raw(value).split("\n")
            while lines and lines[-1] == "":
                lines.pop()  # Ruby's split drops trailing empty strings
            out += f"{key} = [\n" + ",\n".join(lines) + "\n]\n"
        elif isinstance(value, list):
            for element in value:
                out += to_raw({key: element})
        else:
            out += f'{key} = "' + _ruby_to_s(value).replace('"', '\\"') + '"\n'
    return out


def merge_templates(base: Sequence[Attr], extra: Sequence[Attr]) -> list[Attr]:
    """Template::merge: every name of ``extra`` replaces all of that name in ``base``; empty
    vectors are not added."""
    names = {n for n, _ in extra}
    out = [(n, v) for n, v in base if n not in names]
    out += [(n, v) for n, v in extra if not (isinstance(v, dict) and not v)]
    return out


def _first(attrs: Sequence[Attr], name: str) -> str | dict[str, str] | None:
    for n, v in attrs:
        if n == name:
            return v
    return None


@dataclass
class _VmDoc:
    """What the core's variable parser can see of a VM being created."""

    name: str
    vmid: int
    template: list[Attr]
    user_template: list[Attr]
    user_attrs: Mapping[str, str]  # the owner's user template ($USER[...])
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"


def resolve_vars(value: str, vm: _VmDoc) -> str:
    """vm_var_syntax: ``$VAR``, ``$VAR[ATTR]``, ``$VAR[ATTR, K=V]`` replaced; the rest verbatim."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n and value[i + 1] == "$":
            out.append("\\$")
            i += 2
            continue
        if c != "$":
            out.append(c)
            i += 1
            continue
        m = re.match(r"[A-Za-z0-9_]+", value[i + 1:])
        if not m:
            i += 1  # a lone '$': the variable is empty, the next character is kept
            continue
        name = m.group(0).upper()  # vm_var_syntax upper-cases the names it looks up
        j = i + 1 + len(m.group(0))
        vm_m = re.match(r"\[[ \t]*([A-Za-z0-9_]+)(?:[ \t]*,[ \t]*([A-Za-z0-9_]+)[ \t]*=[ \t]*"
                        r"(\"[^\"]*\"|[A-Za-z0-9]+))?[ \t]*\]", value[j:])
        if vm_m:
            vname, vvar, vval = vm_m.group(1).upper(), vm_m.group(2) and vm_m.group(2).upper(), vm_m.group(3)
            vval = vval[1:-1] if vval and vval.startswith('"') else vval
            out.append(_vector_var(vm, name, vname, vvar, vval))
            i = j + len(vm_m.group(0))
        else:
            out.append(_single_var(vm, name))
            i = j
    return "".join(out)


def _single_var(vm: _VmDoc, name: str) -> str:
    special = {"UID": str(vm.uid), "UNAME": vm.uname, "GID": str(vm.gid), "GNAME": vm.gname, "NAME": vm.name}
    if name in special:
        return special[name]
    if name == "TEMPLATE":
        return ""
    for attrs in (vm.template, vm.user_template):
        v = _first(attrs, name)
        if isinstance(v, str) and v:
            return v
    return ""


def _vector_var(vm: _VmDoc, name: str, vname: str, vvar: str | None, vval: str | None) -> str:
    if name == "USER":
        return str(vm.user_attrs.get(vname, ""))
    if name in ("NETWORK", "IMAGE"):
        return ""  # pool lookups: not modelled
    vectors = [v for n, v in vm.template if n == name and isinstance(v, dict)]
    if vvar:
        vectors = [v for v in vectors if v.get(vvar.upper()) == vval]
    return vectors[0].get(vname.upper(), "") if vectors else ""


# =================================================================================================
# The CLI's prompting (OpenNebulaHelper.parse_user_inputs)

INT_EXP = re.compile(r"^-?\d+$", re.M)
FLOAT_EXP = re.compile(r"^-?\d+(\.\d+)?$", re.M)


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Terminal:
    def __init__(self, answers: Iterable[str]) -> None:
        self.answers = list(answers)
        self.out: list[str] = []

    def print(self, text: str = "", end: str = "\n") -> None:
        self.out.append(text + end)

    def readline(self) -> str:
        if not self.answers:
            self.out.append("end of file reached (EOFError)\n")
            raise _Exit(1)
        answer = self.answers.pop(0)
        if "\n" in answer:  # one line is read; the rest is typed ahead
            answer, rest = answer.split("\n", 1)
            self.answers.insert(0, rest)
        self.out.append(answer + "\n")  # the terminal echoes what is typed
        return answer

    def editor(self) -> str:
        if not self.answers:
            raise _Exit(1)
        return self.answers.pop(0)


def parse_user_inputs(inputs: Mapping[str, str], term: _Terminal) -> dict[str, Any]:
    term.print("There are some parameters that require user input. Use the string <<EDITOR>> to launch "
               "an editor (e.g. for multi-line inputs)")
    answers: dict[str, Any] = {}
    for key, spec in inputs.items():
        cfg = str(spec).split("|")
        if len(cfg) < 3:
            term.print(f"Malformed user input. It should have at least 3 parts separated by '|':\n  {key}: {spec}")
            raise _Exit(255)
        if len(cfg) > 3 and len(cfg) != 5:
            term.print(f"Malformed user input. It should have 5 parts separated by '|':\n  {key}: {spec}")
            raise _Exit(255)
        mandatory, kind, description = cfg[0], cfg[1].strip(), cfg[2].strip()
        params, initial = (cfg[3].strip(), cfg[4].strip()) if len(cfg) == 5 else ("", None)
        optional = mandatory.strip() == "O"
        term.print(f"  * ({key}) {description}")
        header = "    "
        if initial:
            header += f"Press enter for default ({initial}). "
        answer: Any
        if kind in ("text", "text64"):
            term.print(header, end="")
            answer = term.readline()
            if answer == "<<EDITOR>>":
                answer = term.editor()
            if answer == "":
                answer = initial
            if kind == "text64":
                if answer is None:
                    term.print("no implicit conversion of nil into String (TypeError)")
                    raise _Exit(1)
                answer = base64.b64encode(answer.encode()).decode()
        elif kind == "boolean":
            term.print(header, end="")
            answer = term.readline()
            if answer == "":
                answer = initial
            if answer not in ("YES", "NO"):
                term.print(f"Invalid boolean '{answer}'\nBoolean has to be YES or NO")
                raise _Exit(255)
        elif kind == "password":
            term.print(header, end="")
            answer = term.readline()
            if answer == "":
                answer = initial
        elif kind in ("number", "number-float"):
            header += "Integer: " if kind == "number" else "Float: "
            exp = INT_EXP if kind == "number" else FLOAT_EXP
            while True:
                term.print(header, end="")
                answer = term.readline()
                if answer == "":
                    answer = initial if initial is not None else ""
                noanswer = answer == "" and optional
                if noanswer or exp.search(answer):
                    break
            if noanswer:
                continue
        elif kind in ("range", "range-float"):
            lo, _, hi = params.partition("..")
            if not lo or not hi:
                term.print(f"Malformed user input. Parameters should be 'min..max':\n  {key}: {spec}")
                raise _Exit(255)
            exp = INT_EXP if kind == "range" else FLOAT_EXP
            lo_n, hi_n = (ruby_to_i(lo), ruby_to_i(hi)) if kind == "range" else (float(lo), float(hi))
            header += f"Integer in the range [{lo_n}..{hi_n}]: " if kind == "range" else \
                f"Float in the range [{lo_n}..{hi_n}]: "
            while True:
                term.print(header, end="")
                answer = term.readline()
                if answer == "":
                    answer = initial if initial is not None else ""
                noanswer = answer == "" and optional
                if noanswer or (exp.search(answer) and lo_n <= float(answer) <= hi_n):
                    break
            if noanswer:
                continue
        elif kind == "list":
            options = params.split(",")
            for n, opt in enumerate(options):
                term.print(f"    {n}  {opt}")
            term.print()
            header += "Please type the selection number: "
            while True:
                term.print(header, end="")
                typed = term.readline()
                if typed == "":
                    answer = initial
                else:
                    idx = ruby_to_i(typed)
                    answer = options[idx] if -len(options) <= idx < len(options) else None
                noanswer = answer == "" and optional
                if noanswer or answer in options:
                    break
            if noanswer:
                continue
        elif kind == "fixed":
            term.print(f"    Fixed value of ({initial}). Cannot be changed")
            answer = initial
        else:
            term.print(f"Wrong type for user input:\n  {key}: {spec}")
            raise _Exit(255)
        answers[key] = answer
    return answers


# =================================================================================================
# Sunstone / FireEdge


def _js_string(value: Any) -> str:
    """JavaScript's String(value) for what a form field holds."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _form_value(key: str, spec: str, given: Any, has: bool) -> Any:
    """What FireEdge's field for one user input holds at submit (its schemaUserInput cast)."""
    cfg = spec.split("|")
    mandatory = cfg[0].strip() == "M"
    kind = cfg[1].strip() if len(cfg) > 1 else "text"
    params = cfg[3].strip() if len(cfg) > 3 else ""
    default = cfg[4].strip() if len(cfg) > 4 else ""
    if kind in ("text", "text64", "password"):
        value = (str(given) if has else default).strip()  # yup string().trim()
        if mandatory and not value:
            raise WebFormError(f"{key} is a required field")
        return value
    if kind == "boolean":
        if not has:
            return default.upper() == "YES"
        if isinstance(given, bool):
            return given
        if str(given).upper() not in ("YES", "NO"):
            raise WebFormError(f"{key}: a switch is on or off, not {given!r}")
        return str(given).upper() == "YES"
    if kind == "list":
        options = [o for o in params.split(",") if o]
        value = str(given) if has else (default or (options[0] if options else ""))
        if value not in options:
            raise WebFormError(f"{key} must be one of the following values: {', '.join(options)}")
        return value
    if kind in ("number", "number-float", "range", "range-float"):
        text = str(given).strip() if has else default
        if text == "":
            if mandatory:
                raise WebFormError(f"{key} is a required field")
            return None  # an empty number field: NaN -> null
        try:
            return float(text)
        except ValueError:
            raise WebFormError(f"{key} must be a number") from None
    if kind == "fixed":
        return default
    return (str(given) if has else default).strip()


def _format_instantiate_610(contents: str, values: Mapping[str, Any]) -> str:
    """FireEdge 6.10's formatInstantiate: NIC/NIC_ALIAS/SCHED_ACTION vectors kept, every other
    ``KEY = "value"`` pair found (inside CONTEXT=[...] too) kept flat, the answers appended as
    ``KEY = "value"`` (not escaped), duplicates and pairs with an empty value dropped."""
    sections_re = r"(NIC|NIC_ALIAS|SCHED_ACTION)\s*=\s*\[[^\]]+\]"
    sections = []
    for section in re.finditer(sections_re, contents):
        header = re.match(r"^(NIC|NIC_ALIAS|SCHED_ACTION)", section.group(0))
        props = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', section.group(0)))
        body = ",\n".join(f'  {k.upper()} = "{v}"' for k, v in props.items())
        sections.append(f"{header.group(0) if header else ''} = [\n{body} ]")
    rest = re.sub(sections_re, "", contents)
    props = re.findall(r'(\w+\s*=\s*"[^"]*")', rest)
    props += [f'{k.upper()} = "{_js_template_literal(v)}"' for k, v in values.items()]
    unique: list[str] = []
    for p in props:
        if p not in unique:
            unique.append(p)
    kept = [p for p in unique if '= ""' not in p]
    return "\n".join(sections + kept) + "\n"


def _js_template_literal(value: Any) -> str:
    return _js_string(value)


# =================================================================================================
# The service model


@dataclass
class VmRecord:
    """One VM OneFlow made, as the lab needs it."""

    id: int
    name: str
    role: str
    service_id: int
    context: dict[str, str]
    token: str = field(repr=False)
    user_template: dict[str, Any]
    template: dict[str, Any]

    def context_sh(self) -> str:
        """context.sh exactly as OpenNebula writes it."""
        return ctxmod.render(self.context)


@dataclass
class RoleState:
    name: str
    body: dict[str, Any]
    parents: list[str]
    cardinality: int
    nodes: list[int] = field(default_factory=list)
    last_vmname: int = 0
    state: str = "PENDING"
    waiting: set[int] = field(default_factory=set)  # nodes not yet ready (the gate)
    fake: FakeRole | None = None


@dataclass
class ServiceState:
    id: int
    name: str
    body: dict[str, Any]
    template_id: int
    state: str = "PENDING"
    roles: dict[str, RoleState] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    fake: FakeService | None = None

    @property
    def gate(self) -> bool:
        return self.body.get("ready_status_gate") is True

    @property
    def straight(self) -> bool:
        return self.body.get("deployment") == "straight"


@dataclass
class _VmTemplate:
    id: int
    text: str
    attrs: list[Attr]


def default_nic_context(role: str, vm_name: str, vmid: int) -> dict[str, str]:
    """One NIC on 192.0.2.0/24 derived from the VMID (for tests that do not plug a network)."""
    host = 10 + vmid % 240
    return {
        "ETH0_IP": f"192.0.2.{host}",
        "ETH0_MASK": "255.255.255.0",
        "ETH0_GATEWAY": "192.0.2.1",
        "ETH0_DNS": "192.0.2.1",
        "ETH0_MAC": f"02:00:c0:00:02:{host:02x}",
        "ETH0_NETWORK": "192.0.2.0",
    }


class OneFlow:
    """The double: oneflow-server, its two clients and enough of oned (see the module docstring)."""

    def __init__(
        self,
        onegate: OneGateServer,
        version: str = "7.4.0",
        *,
        nic_context: Callable[[str, str, int], Mapping[str, str]] = default_nic_context,
        on_vm_created: Callable[[VmRecord], None] | None = None,
        on_reconfigure: Callable[[VmRecord], None] | None = None,
        onegate_endpoint: str | None = None,
        user_attrs: Mapping[str, str] | None = None,
    ) -> None:
        self.version = full_version(version)
        self.v7 = version_tuple(self.version) >= (7, 0, 0)
        self.onegate = onegate
        self.nic_context = nic_context
        self.on_vm_created = on_vm_created
        self.on_reconfigure = on_reconfigure
        self.onegate_endpoint = onegate_endpoint
        self.user_attrs = dict(user_attrs or {"SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFlower lab"})
        self.lock = threading.RLock()
        self.vm_templates: dict[int, _VmTemplate] = {}
        self.templates: dict[int, dict[str, Any]] = {}
        self.services: dict[int, ServiceState] = {}
        self.records: dict[int, VmRecord] = {}
        self.vm_service: dict[int, int] = {}
        self._ready_events: set[int] = set()
        self._next_template = 0
        self._next_vm_template = 0
        self._next_service = 0
        self._queue: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()
        self._busy = 0
        self._worker: threading.Thread | None = None
        self._stop = False
        self.errors: list[BaseException] = []  # exceptions raised by callbacks in the worker
        onegate.add_listener(self._onegate_event)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> OneFlow:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._worker is None:
            self._stop = False
            self._worker = threading.Thread(target=self._run, name="oneflow-double", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)
            self._worker = None
        if self._onegate_event in self.onegate.listeners:
            with self.onegate.lock:
                self.onegate.listeners.remove(self._onegate_event)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every queued event (deploys, readiness updates) has been handled."""
        self.start()
        end = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the OneFlow double did not settle")
                self._cond.wait(left)
        if self.errors:
            raise self.errors[0]

    def wait_state(self, service_id: int, state: str, timeout: float = 60.0) -> ServiceState:
        """Wait until the service is in ``state`` (a name: RUNNING, DEPLOYING, ...)."""
        end = time.monotonic() + timeout
        while True:
            self.settle(max(0.1, end - time.monotonic()))
            svc = self.service(service_id)
            if svc.state == state:
                return svc
            if time.monotonic() >= end:
                raise TimeoutError(f"service {service_id} is {svc.state}, not {state}")
            time.sleep(0.02)

    def _post(self, *event: Any) -> None:
        with self._cond:
            self._queue.append(event)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                event = self._queue.pop(0)
                self._busy += 1
            try:
                self._handle(event)
            except BaseException as exc:  # handed to settle()
                self.errors.append(exc)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    # -- VM templates ------------------------------------------------------------------------------

    def add_vm_template(self, text: str, template_id: int | None = None) -> int:
        """Register a VM template (OpenNebula template text, e.g. CPU/MEMORY plus the output of
        ``flower-ctx oneflow vm-template ROLE``). Raises TemplateSyntaxError like onetemplate create."""
        attrs = parse_template(text)
        with self.lock:
            tid = self._next_vm_template if template_id is None else template_id
            self._next_vm_template = max(self._next_vm_template, tid) + 1
            self.vm_templates[tid] = _VmTemplate(tid, text, attrs)
            return tid

    # -- the server API --------------------------------------------------------------------------

    def create_template(self, doc: str | Mapping[str, Any]) -> int:
        """``POST /service_template``: validate (400 on ParseException/JSON, 500 on a crash) and store."""
        text = doc if isinstance(doc, str) else json.dumps(doc)
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise OneFlowError(400, f"unexpected token at '{text[exc.pos:exc.pos + 20]}'") from None
        if not isinstance(body, dict):
            raise OneFlowError(500, f"undefined method 'key?' for an instance of {type(body).__name__}")
        validate(self.version, body)
        body["registration_time"] = int(time.time())
        with self.lock:
            tid = self._next_template
            self._next_template += 1
            self.templates[tid] = body
        return tid

    def template(self, template_id: int) -> dict[str, Any]:
        with self.lock:
            if template_id not in self.templates:
                raise OneFlowError(404, f"Error getting document [{template_id}].")
            return copy.deepcopy(self.templates[template_id])

    def instantiate(self, template_id: int, merge_template: Mapping[str, Any] | None = None) -> int:
        """``POST /service_template/<id>/action instantiate``; returns the service id. Deployment
        then proceeds in the worker thread (``settle``/``wait_state``)."""
        body = self.template(template_id)
        merge = copy.deepcopy(dict(merge_template or {}))
        if self.v7:
            inst = self._instantiate_7(body, merge)
        else:
            inst = self._instantiate_610(body, merge)
        return self._allocate(template_id, inst)

    def _instantiate_7(self, body: dict[str, Any], merge: dict[str, Any]) -> dict[str, Any]:
        try:
            if "custom_attrs_values" in merge:
                merge["user_inputs_values"] = merge.pop("custom_attrs_values")
            _check_user_inputs(body.get("user_inputs"), merge.get("user_inputs_values"))
            for role in body["roles"]:
                if not isinstance(role.get("template_contents", {}), dict):
                    raise ValueError(f"Error validating template_contents object for therole {role['name']}. "
                                     "The object must be a valid hash.")
                if role.get("user_inputs") is None:
                    continue
                roles_merge = merge.get("roles")
                if roles_merge is None:
                    raise ValueError("The Service template specifies user inputs for the role "
                                     f"{role['name']} but no values have been found")
                if not isinstance(roles_merge, list) or not roles_merge:
                    raise ValueError("The role user inputs are empty or do not have a valid format")
                merge_role = next((r for r in roles_merge if r.get("name") == role["name"]), None)
                if merge_role is None:
                    continue
                if "custom_attrs_values" in merge_role:
                    merge_role["user_inputs_values"] = merge_role.pop("custom_attrs_values")
                _check_user_inputs(role["user_inputs"], merge_role.get("user_inputs_values"))
        except ValueError as exc:
            raise OneFlowError(400, str(exc)) from None
        # ServiceTemplate#instantiate: roles merged by name, the rest deep-merged, validated again.
        extra_roles = merge.get("roles", [])
        if extra_roles:
            for i, role in enumerate(body["roles"]):
                extra = next((r for r in extra_roles if isinstance(r, dict) and r.get("name") == role["name"]), None)
                if extra is not None:
                    body["roles"][i] = deep_merge_7(role, extra)
            merge.pop("roles", None)
        inst = deep_merge_7(body, merge)
        try:
            validate(self.version, inst)
        except OneFlowError as exc:
            raise OneFlowError(500, exc.message) from None
        # generate_template_contents: every input into template_contents, and CONTEXT as $KEY.
        service_inputs = inst.get("user_inputs_values") or {}
        for role in inst["roles"]:
            contents = role.get("template_contents") or {}
            role_inputs = role.get("user_inputs_values") or {}
            if service_inputs or role_inputs:
                values = deep_merge_7(service_inputs, role_inputs)
                if "CONTEXT" not in contents:
                    contents["CONTEXT"] = {}
                for key, value in values.items():
                    contents[key] = value
                    contents["CONTEXT"][key] = f"${key}"
            role["template_contents"] = contents
        return inst

    def _instantiate_610(self, body: dict[str, Any], merge: dict[str, Any]) -> dict[str, Any]:
        try:
            _check_custom_attrs(body.get("custom_attrs"), merge.get("custom_attrs_values"))
            for role in body["roles"]:
                if role.get("custom_attrs") is None:
                    continue
                roles_merge = merge.get("roles")
                if roles_merge is None:
                    raise ValueError("The Service template specifies custom attributes for the role "
                                     f"{role['name']} but no values have been found")
                if not isinstance(roles_merge, list) or not roles_merge:
                    raise ValueError("The role custom attributes are empty or do not have a valid format")
                merge_role = next((r for r in roles_merge if r.get("name") == role["name"]), None)
                if merge_role is None:
                    raise ValueError("undefined method `[]' for nil:NilClass")
                _check_custom_attrs(role["custom_attrs"], merge_role.get("custom_attrs_values"))
        except ValueError as exc:
            raise OneFlowError(400, str(exc)) from None
        inst = deep_merge_610(body, merge)
        try:
            validate(self.version, inst)
        except OneFlowError as exc:
            raise OneFlowError(500, exc.message) from None
        # Service#resolve_attributes (at allocate): $NAME replaced as text, role value first.
        service_values = inst.get("custom_attrs_values")
        for role in inst["roles"]:
            contents = role.get("vm_template_contents")
            if contents:
                for key in re.findall(r"\$(\w+)", contents, re.ASCII):
                    role_values = role.get("custom_attrs_values")
                    if role_values is not None and key in role_values:
                        value = role_values[key]
                    elif service_values is not None and key in service_values:
                        value = service_values[key]
                    else:
                        continue
                    contents = contents.replace("$" + key, ruby_gsub_replacement(_ruby_to_s(value), "$" + key))
                role["vm_template_contents"] = contents
            if role.get("user_inputs_values"):
                contents = role.get("vm_template_contents") or ""
                for key, value in role["user_inputs_values"].items():
                    contents += f'\n{key}="{_ruby_to_s(value)}"'
                role["vm_template_contents"] = contents
        return inst

    def _allocate(self, template_id: int, inst: dict[str, Any]) -> int:
        with self.lock:
            sid = self._next_service
            self._next_service += 1
            svc = ServiceState(id=sid, name=str(inst["name"]), body=inst, template_id=template_id)
            fake = FakeService(id=sid, name=svc.name, roles=[], state=SERVICE_STATES.index("PENDING"))
            for role in inst["roles"]:
                rs = RoleState(
                    name=role["name"],
                    body=role,
                    parents=list(role.get("parents") or []),
                    cardinality=ruby_to_i(role.get("cardinality")),
                )
                rs.fake = FakeRole(role["name"], state=0, cardinality=rs.cardinality)
                assert fake.roles is not None
                fake.roles.append(rs.fake)
                svc.roles[rs.name] = rs
            svc.fake = fake
            self.services[sid] = svc
            with self.onegate.lock:
                self.onegate.services[sid] = fake
            self._set_state(svc, "DEPLOYING")
        self._post("evaluate", sid)
        return sid

    # -- the CLI -------------------------------------------------------------------------------------

    def cli(self, argv: Sequence[str], answers: Iterable[str] = ()) -> str:
        """Run ``oneflow-template create FILE`` or ``oneflow-template instantiate ID [FILE]``;
        ``answers`` are the lines typed at the prompts, in order. Returns what it printed;
        raises CliError (status, output) when it exits non-zero."""
        args = list(argv)
        if args and args[0] == "oneflow-template":
            args = args[1:]
        term = _Terminal(answers)
        try:
            if len(args) == 2 and args[0] == "create":
                text = Path(args[1]).read_text()
                try:
                    tid = self.create_template(text)
                except OneFlowError as exc:
                    term.print(exc.message)
                    raise _Exit(exc.status % 256 or 1) from None
                term.print(f"ID: {tid}")
            elif len(args) in (2, 3) and args[0] == "instantiate":
                tid = int(args[1])
                if len(args) == 3:
                    merge: dict[str, Any] = json.loads(Path(args[2]).read_text())
                else:
                    try:
                        body = self.template(tid)
                    except OneFlowError as exc:
                        term.print(exc.message)
                        raise _Exit(exc.status % 256 or 1) from None
                    merge = self._prompt(body, term)
                try:
                    sid = self.instantiate(tid, merge)
                except OneFlowError as exc:
                    term.print(exc.message)
                    raise _Exit(exc.status % 256 or 1) from None
                term.print(f"ID: {sid}")
            else:
                term.print("oneflow-template: only 'create FILE' and 'instantiate ID [FILE]' are modelled")
                raise _Exit(255)
        except _Exit as ex:
            raise CliError(ex.status, "".join(term.out)) from None
        return "".join(term.out)

    def _prompt(self, body: dict[str, Any], term: _Terminal) -> dict[str, Any]:
        """The CLI's questions: service inputs, then each role's, then networks."""
        svc_key, role_key, values_key = (
            ("user_inputs", "user_inputs", "user_inputs_values") if self.v7
            else ("custom_attrs", "custom_attrs", "custom_attrs_values"))
        merge: dict[str, Any] = {}
        if body.get(svc_key):
            merge[values_key] = parse_user_inputs(body[svc_key], term)
        roles = body.get("roles") or []
        asked = False
        for role in roles:
            if role_key not in role:
                continue
            term.print(f'> Please insert the user inputs for the role "{role["name"]}"')
            if role[role_key]:
                role[values_key] = parse_user_inputs(role[role_key], term)
            asked = True
        if asked:
            merge["roles"] = roles
        return merge

    # -- Sunstone ------------------------------------------------------------------------------------

    def web_instantiate(self, template_id: int, values: Mapping[str, Any] | None = None,
                        *, name: str | None = None) -> int:
        """Sunstone/FireEdge's service instantiate form: every service-level input shown with its
        default, ``values`` typed over them (a boolean switch as True/False or YES/NO), submitted
        as that version's FireEdge does. Returns the service id."""
        body = self.template(template_id)
        given = dict(values or {})
        inputs = body.get("user_inputs" if self.v7 else "custom_attrs") or {}
        form = {k: _form_value(k, str(spec), given.get(k), k in given) for k, spec in inputs.items()}
        unknown = set(given) - set(inputs)
        if unknown:
            raise WebFormError(f"the form has no field {sorted(unknown)}")
        strings = {k.upper(): _js_string(v) for k, v in form.items()}
        merge: dict[str, Any]
        if self.v7:
            merge = {"user_inputs_values": strings, "name": name or body["name"], "networks": {}, "networks_values": []}
            if version_tuple(self.version) >= (7, 1, 80):
                merge["roles"] = [dict(r) for r in body["roles"]]  # the stored roles, spread back
        else:
            roles = []
            for role in body["roles"]:
                role = dict(role)
                role["vm_template_contents"] = _format_instantiate_610(role.get("vm_template_contents") or "", form)
                roles.append(role)
            merge = {"custom_attrs_values": strings, "networks_values": [], "roles": roles,
                     "name": name or body["name"]}
        return self.instantiate(template_id, merge)

    # -- inspection ----------------------------------------------------------------------------------

    def service(self, service_id: int) -> ServiceState:
        with self.lock:
            return self.services[service_id]

    def vms(self, service_id: int, role: str | None = None) -> list[VmRecord]:
        with self.lock:
            svc = self.services[service_id]
            ids = [i for r in svc.roles.values() if role is None or r.name == role for i in r.nodes]
            return [self.records[i] for i in sorted(ids)]

    def record(self, vmid: int) -> VmRecord:
        with self.lock:
            return self.records[vmid]

    # -- operations ----------------------------------------------------------------------------------

    def scale(self, service_id: int, role: str, cardinality: int) -> None:
        """``oneflow scale``: more VMs get the next name numbers; fewer terminates the oldest."""
        with self.lock:
            svc = self.services[service_id]
            rs = svc.roles[role]
            if svc.state != "RUNNING":
                raise OneFlowError(405, f"Service cannot be scaled in state: {svc.state}")
            rs.cardinality = cardinality
            assert rs.fake is not None
            rs.fake.cardinality = cardinality
            if cardinality < len(rs.nodes):
                for vmid in rs.nodes[: len(rs.nodes) - cardinality]:
                    self.onegate.remove_vm(vmid)
                rs.nodes = rs.nodes[len(rs.nodes) - cardinality:]
                return
            if cardinality == len(rs.nodes):
                return
            self._set_role_state(rs, "SCALING")
            self._set_state(svc, "SCALING")
        self._post("scale", service_id, role)

    def update_context(self, vmid: int, changes: Mapping[str, str | None]) -> VmRecord:
        """``onevm updateconf``: change CONTEXT values (None removes one; ``$VAR`` resolved again),
        regenerate it, and call ``on_reconfigure`` (one-context's reconfigure on the VM)."""
        with self.lock:
            rec = self.records[vmid]
            doc = self._vm_doc(rec)
            ctx = dict(rec.context)
            for key, value in changes.items():
                if value is None:
                    ctx.pop(key.upper(), None)
                else:
                    ctx[key.upper()] = resolve_vars(value, doc)
            rec.context = ctx
            with self.onegate.lock:
                fake = self.onegate.vms.get(vmid)
                if fake is not None:
                    fake.context = dict(ctx)
        if self.on_reconfigure is not None:
            self.on_reconfigure(rec)
        return rec

    # -- the engine (worker thread) ------------------------------------------------------------------

    def _onegate_event(self, vm_id: int, typ: str, data: str) -> None:
        if vm_id in self.vm_service:
            self._post("vm", vm_id, typ, data)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "vm":
            _, vm_id, typ, data = event
            text = data if typ == "1" else self._user_template_text(vm_id)
            if "READY=YES" in text.replace('"', "").replace(" ", ""):
                with self.lock:
                    self._ready_events.add(vm_id)
            sid = self.vm_service.get(vm_id)
            if sid is not None:
                self._evaluate(sid)
        elif kind in ("evaluate", "scale"):
            self._evaluate(event[1])

    def _user_template_text(self, vm_id: int) -> str:
        with self.onegate.lock:
            vm = self.onegate.vms.get(vm_id)
            ut = dict(vm.user_template) if vm else {}
        return "\n".join(f'{k}="{v}"' for k, v in ut.items() if isinstance(v, str))

    def _is_ready(self, vm_id: int) -> bool:
        if vm_id in self._ready_events:
            return True
        with self.onegate.lock:
            vm = self.onegate.vms.get(vm_id)
            ready = vm.user_template.get("READY") if vm else None
        return isinstance(ready, str) and ready.strip() == "YES"

    def _evaluate(self, sid: int) -> None:
        """Deploy what may be deployed, move roles and the service forward; callbacks run last,
        outside the lock."""
        created: list[VmRecord] = []
        with self.lock:
            svc = self.services[sid]
            progress = True
            while progress and svc.state in ("DEPLOYING", "SCALING"):
                progress = False
                for rs in svc.roles.values():
                    if rs.state == "PENDING":
                        parents_ok = all(svc.roles[p].state == "RUNNING" for p in rs.parents if p in svc.roles)
                        if svc.straight and not parents_ok:
                            continue
                        progress = True
                    if rs.state in ("PENDING", "DEPLOYING", "SCALING") and len(rs.nodes) < rs.cardinality:
                        if not self._deploy(svc, rs, created):
                            break
                    elif rs.state == "PENDING":
                        self._set_role_state(rs, "DEPLOYING")
                    if rs.state in ("DEPLOYING", "SCALING"):
                        if svc.gate:
                            rs.waiting = {v for v in rs.waiting if not self._is_ready(v)}
                        else:
                            rs.waiting = set()
                        if not rs.waiting:
                            self._set_role_state(rs, "RUNNING")
                            progress = True
                if svc.state in ("DEPLOYING", "SCALING") and all(r.state == "RUNNING" for r in svc.roles.values()):
                    self._set_state(svc, "RUNNING")
        self._callbacks(created)

    def _callbacks(self, created: list[VmRecord]) -> None:
        for rec in created:
            if self.on_vm_created is not None:
                self.on_vm_created(rec)

    def _set_state(self, svc: ServiceState, state: str) -> None:
        svc.state = state
        if svc.fake is not None:
            with self.onegate.lock:
                svc.fake.state = SERVICE_STATES.index(state)

    def _set_role_state(self, rs: RoleState, state: str) -> None:
        rs.state = state
        if rs.fake is not None:
            with self.onegate.lock:
                rs.fake.state = ROLE_STATES.index(state)

    def _fail(self, svc: ServiceState, rs: RoleState, message: str) -> bool:
        failed = "FAILED_SCALING" if svc.state == "SCALING" else "FAILED_DEPLOYING"
        svc.log.append(message)
        self._set_role_state(rs, failed)
        self._set_state(svc, failed)
        return False

    def _extra_template(self, svc: ServiceState, rs: RoleState) -> tuple[_VmTemplate | None, str]:
        """The template text OneFlow passes to one.template.instantiate for this role."""
        body = rs.body
        tid = ruby_to_i(body.get("template_id") if self.v7 else body.get("vm_template"))
        vmt = self.vm_templates.get(tid)
        if self.v7:
            extra: dict[str, Any] = dict(body.get("template_contents") or {})
            if extra:
                if vmt is None:
                    return None, f"[one.template.info] Error getting VM template [{tid}]."
                extra = deep_merge_7(to_hash(vmt.attrs), extra, False)
            extra["SERVICE_ID"] = svc.id
            extra["ROLE_NAME"] = rs.name
            return vmt, to_raw(extra)
        text = body.get("vm_template_contents") or ""
        text += f"\nSERVICE_ID = {svc.id}"
        text += f'\nROLE_NAME = "{rs.name}"'
        return vmt, text

    def _deploy(self, svc: ServiceState, rs: RoleState, created: list[VmRecord]) -> bool:
        if rs.state == "PENDING":
            self._set_role_state(rs, "DEPLOYING")
        n_nodes = rs.cardinality - len(rs.nodes)
        if n_nodes <= 0:
            return True
        vmt, extra = self._extra_template(svc, rs)
        tid = vmt.id if vmt else ruby_to_i(rs.body.get("template_id") if self.v7 else rs.body.get("vm_template"))
        if vmt is None:
            return self._fail(svc, rs, f"Error instantiating VM Template {tid} in Role {rs.name}: "
                                       f"[one.template.instantiate] Error getting VM template [{tid}].")
        for _ in range(n_nodes):
            name = (VM_NAME_TEMPLATE.replace("$SERVICE_ID", str(svc.id)).replace("$SERVICE_NAME", svc.name)
                    .replace("$ROLE_NAME", rs.name).replace("$VM_NUMBER", str(rs.last_vmname)))
            rs.last_vmname += 1
            try:
                rec = self._create_vm(vmt, name, extra, svc, rs)
            except TemplateSyntaxError as exc:
                return self._fail(svc, rs, f"Error instantiating VM Template {tid} in Role {rs.name}: "
                                           f"[one.template.instantiate] Parse error: {exc}")
            rs.nodes.append(rec.id)
            rs.waiting.add(rec.id)
            created.append(rec)
        return True

    def _create_vm(self, vmt: _VmTemplate, name: str, extra_text: str, svc: ServiceState, rs: RoleState) -> VmRecord:
        """oned: merge, split TEMPLATE/USER_TEMPLATE, CONTEXT with NICs, $VARs, OneGate token."""
        attrs = merge_templates(vmt.attrs, parse_template(extra_text))
        template = [(n, v) for n, v in attrs if n in TEMPLATE_ATTRS and n not in ("NAME", "CONTEXT")]
        user_template = [(n, v) for n, v in attrs if n not in TEMPLATE_ATTRS]
        raw_context = _first(attrs, "CONTEXT")
        ut = _as_document(user_template)
        fake = self.onegate.add_vm(name, nics=[], user_template=ut)  # the VMID, taken atomically
        vmid = fake.id
        template += [("VMID", str(vmid)), ("TEMPLATE_ID", str(vmt.id))]
        doc = _VmDoc(name=name, vmid=vmid, template=template, user_template=user_template, user_attrs=self.user_attrs)
        context: dict[str, str] = {}
        if isinstance(raw_context, dict):
            ctx_in = dict(raw_context)
            if ctx_in.get("NETWORK", "").upper() == "YES":
                for key, value in self.nic_context(rs.name, name, vmid).items():
                    context[key.upper()] = str(value)
            for key, value in ctx_in.items():
                context[key] = resolve_vars(value, doc)
            if ctx_in.get("TOKEN", "").upper() == "YES":
                context["ONEGATE_ENDPOINT"] = self.onegate_endpoint or self.onegate.url
                context["VMID"] = str(vmid)
            context.setdefault("DISK_ID", "1")
            context.setdefault("TARGET", "hda")
        with self.onegate.lock:
            fake.nics = _nics_from_context(context)
            fake.context = dict(context)
            fake.template = _as_document(template)
        assert svc.fake is not None and rs.fake is not None
        self.onegate.add_node(svc.fake, rs.fake, fake)
        rec = VmRecord(id=vmid, name=name, role=rs.name, service_id=svc.id, context=context, token=fake.token,
                       user_template=dict(fake.user_template), template=_as_document(template))
        self.records[vmid] = rec
        self.vm_service[vmid] = svc.id
        return rec

    def _vm_doc(self, rec: VmRecord) -> _VmDoc:
        with self.onegate.lock:
            fake = self.onegate.vms.get(rec.id)
            ut = dict(fake.user_template) if fake else dict(rec.user_template)
        return _VmDoc(name=rec.name, vmid=rec.id, template=_as_attrs(rec.template), user_template=_as_attrs(ut),
                      user_attrs=self.user_attrs)


def _check_user_inputs(inputs: Any, values: Any) -> None:
    if not inputs:
        return
    if values is None:
        raise ValueError("The Service template specifies User Inputs but no values have been found")
    if not isinstance(inputs, dict) or not isinstance(values, dict):
        raise ValueError("Wrong User Inputs or User Inputs Values format")
    if set(inputs) - set(values):
        raise ValueError("Verify that every User Input have its corresponding value defined")


def _check_custom_attrs(attrs: Any, values: Any) -> None:
    if not attrs:
        return
    if values is None:
        raise ValueError("The Service template specifies custom attributes but no values have been found")
    if not isinstance(attrs, dict) or not isinstance(values, dict):
        raise ValueError("Wrong custom_attrs or custom_attrs_values format")
    if set(attrs) - set(values):
        raise ValueError("Verify that every custom attribute have its corresponding value defined")


def _as_document(attrs: Sequence[Attr]) -> dict[str, Any]:
    """Attributes as the VM document's JSON has them (a repeated name becomes an array)."""
    out: dict[str, Any] = {}
    for name, value in attrs:
        v = dict(value) if isinstance(value, dict) else value
        if name in out:
            out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [v]
        else:
            out[name] = v
    return out


def _as_attrs(doc: Mapping[str, Any]) -> list[Attr]:
    out: list[Attr] = []
    for name, value in doc.items():
        for v in value if isinstance(value, list) else [value]:
            out.append((name, dict(v) if isinstance(v, dict) else str(v)))
    return out


def _nics_from_context(context: Mapping[str, str]) -> list[dict[str, str]]:
    nics = []
    for n in sorted({int(m.group(1)) for k in context if (m := re.fullmatch(r"ETH(\d+)_MAC", k))}):
        nic = {"NIC_ID": str(n), "NAME": f"NIC{n}", "MAC": context[f"ETH{n}_MAC"],
               "NETWORK": context.get(f"ETH{n}_NETWORK_NAME", "flower")}
        if context.get(f"ETH{n}_IP"):
            nic["IP"] = context[f"ETH{n}_IP"]
        if context.get(f"ETH{n}_IP6"):
            nic["IP6_GLOBAL"] = context[f"ETH{n}_IP6"]
        nics.append(nic)
    return nics
