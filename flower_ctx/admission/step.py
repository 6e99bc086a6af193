"""The admission steps: a SuperNode's key (configure), a SuperLink's registrations (bootstrap, watch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .. import agentstate
from ..errors import FlowerCtxError, OneGateError
from ..files import ensure_dir, exists, read_file, write_file
from ..model import Config, Role
from ..paths import Paths
from ..plan import Change, StepResult
from .keys import NodeKeyError, PublicKey, generate, parse_line, public_of

log = logging.getLogger(__name__)
STATE = "admission.json"
FLOWER_USER = "flower"


def node_public_key(paths: Paths) -> PublicKey | None:
    """This SuperNode's public key; None before its first configure (or without TLS)."""
    try:
        return public_of(read_file(paths.node_key))
    except (OSError, FlowerCtxError):
        return None


def ensure_node_key(config: Config, paths: Paths, *, dry_run: bool = False) -> StepResult:
    """SuperNode with TLS: the identity key exists (generated once, never replaced silently)."""
    result = StepResult("node key")
    if config.role is not Role.SUPERNODE or not config.tls_enabled:
        return result
    shown = str(paths.node_key)
    if exists(paths.node_key):
        try:
            private = read_file(paths.node_key)
            public = public_of(private)
        except (OSError, FlowerCtxError) as exc:
            raise NodeKeyError(f"{shown} {exc}: fix or delete it (a new key must then be admitted on the "
                               "SuperLink again)") from None
        if dry_run:
            result.changes.append(Change(shown, "unchanged"))
        else:
            change = write_file(paths.node_key, private, 0o600, owner=FLOWER_USER, group=FLOWER_USER)
            result.changes.append(Change(shown, change.outcome.value, change.note))
    elif dry_run:
        result.changes.append(Change(shown, "would-create", "a new SuperNode key"))
        return result
    else:
        private, public = generate()
        ensure_dir(paths.certs_dir, 0o755, owner="root", group="root")
        write_file(paths.node_key, private, 0o600, owner=FLOWER_USER, group=FLOWER_USER)
        result.changes.append(Change(shown, "created", "SuperNode key (never printed; its public key is "
                                     "`flower-ctx node key`)"))
    result.facts["node_public_key"] = public.line
    return result


@dataclass
class AdmissionReport:
    admitted: int = 0  # admitted keys registered in Flower
    registered: list[str] = field(default_factory=list)  # names/keys registered now
    unregistered: list[str] = field(default_factory=list)
    burned: list[str] = field(default_factory=list)  # admitted, but Flower refuses them (unregistered before)
    problems: list[str] = field(default_factory=list)
    skipped: str = ""

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"admission: {self.skipped}"]
        out = [f"admission: {self.admitted} SuperNode key(s) admitted"]
        out += [f"admission: registered {k}" for k in self.registered]
        out += [f"admission: unregistered {k} (no longer admitted)" for k in self.unregistered]
        out += [f"admission: {k} was unregistered before and Flower will not take it again: the SuperNode needs a "
                "new key (flower-ctx node key --new on it), then admit that one" for k in self.burned]
        out += [f"admission: {p}" for p in self.problems]
        return out


def _short(key: PublicKey) -> str:
    return f"{key.name or 'key'} ({key.line.split()[1][-12:]})"


def reconcile(config: Config, paths: Paths, *, onegate_client: Any = None, control: Any = None) -> AdmissionReport:
    """Make Flower's registrations match the admitted keys (see admission.plan)."""
    from .control import ControlClient, ControlError
    from .plan import from_service, plan

    report = AdmissionReport()
    if config.role is not Role.SUPERLINK:
        report.skipped = "not a SuperLink"
        return report
    if not config.tls_enabled:
        report.skipped = "TLS is off: Flower has no SuperNode authentication without it"
        return report
    state = agentstate.read_or_none(paths, STATE) or {}
    ours = {x for x in state.get("ours", []) if isinstance(x, str)}
    onegate_keys = [x for x in state.get("onegate", []) if isinstance(x, str)]
    desired = list(config.admitted_keys)
    if config.auth_onegate:
        if onegate_client is not None:
            try:
                found = from_service(onegate_client.get_service(extended=True), config.onegate.vmid)
                onegate_keys = [str(k) for k in found.keys]
                report.problems += found.ignored
            except OneGateError as exc:  # keep what was known: an outage must not lock anyone out
                report.problems.append(f"OneGate: {exc}; keeping the {len(onegate_keys)} key(s) learnt before")
        for text in onegate_keys:
            try:
                desired.append(parse_line(text))
            except ValueError:
                continue
    if control is None:
        from ..health import runtime_doc

        http = (runtime_doc(paths, "superlink") or {}).get("http_api") or {}
        try:
            ca = read_file(paths.ca_cert)
        except (OSError, FlowerCtxError):
            report.skipped = f"no CA at {paths.ca_cert} yet"
            return report
        control = ControlClient(str(http.get("host", "127.0.0.1")), int(http.get("port", 8000)), ca)
    try:
        nodes = control.list_nodes()
    except ControlError as exc:
        report.skipped = f"Flower's Control API is not available yet ({exc})"
        return report
    todo = plan(desired, nodes, ours)
    report.admitted = len(todo.admitted)
    report.burned = [_short(k) for k in todo.burned]
    for key in todo.register:
        try:
            control.register(key.pem(), key.name)
        except ControlError as exc:
            if exc.code == 23:  # registered and unregistered before (a race with the list)
                report.burned.append(_short(key))
                continue
            report.problems.append(f"registering {_short(key)}: {exc}")
            continue
        ours.add(key.line)
        report.registered.append(_short(key))
        report.admitted += 1
    for node_id, line in todo.unregister:
        try:
            control.unregister(node_id)
        except ControlError as exc:
            report.problems.append(f"unregistering node {node_id}: {exc}")
            continue
        ours.discard(line)
        report.unregistered.append(f"node {node_id}")
    new_state = {"ours": sorted(ours), "onegate": sorted(onegate_keys)}
    if new_state != {"ours": sorted(state.get("ours", [])), "onegate": sorted(state.get("onegate", []))}:
        try:
            agentstate.write(paths, STATE, new_state)
        except FlowerCtxError as exc:
            report.problems.append(f"cannot record the admitted keys: {exc}")
    return report
