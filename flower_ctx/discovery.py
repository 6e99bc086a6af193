"""SuperLink discovery through OneGate, for a SuperNode in the same OneFlow service (DESIGN section 8).

``GET /service`` gives the ``superlink`` role's node ids (``deploy_id`` / ``vm_info.VM.ID``; the
non-extended answer has no USER_TEMPLATE), then ``GET /vms/<id>`` gives ``FL_ENDPOINT``, ``FL_TLS``,
``FL_CA_CERT``. Polls with exponential backoff (jittered downwards, so a publication is seen within
one step) until found or the deadline passes. Once the node ids are known, a poll is one request.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import FlowerCtxError, OneGateError
from .model import HostPort
from .onegate import (
    OneGateAuthError,
    OneGateClient,
    OneGateForbidden,
    OneGateNotConfigured,
    OneGateNotFound,
    OneGateNotInService,
    OneGateValueError,
    decode_value,
    items,
    obj,
    text,
)
from .values import Invalid, ip_address, show

SUPERLINK_ROLE = "superlink"
FLEET_PORT = 9092
MAX_CA_TEXT = 64 * 1024  # base64 of a CA certificate is ~1 KB; a published bundle far beyond is not one
FINAL_POLL_S = 0.5  # discover_superlink returns or raises within deadline_s + this


class DiscoveryError(FlowerCtxError):
    """The SuperLink could not be discovered; the message names what was missing."""


class DiscoveryTimeout(DiscoveryError):
    """Nothing usable was published before the deadline: the SuperLink may still be on its way."""


@dataclass(frozen=True)
class Discovered:
    endpoint: HostPort
    tls: bool
    ca_pem: bytes | None
    ca_fingerprint: str | None
    vm_id: str = ""  # the SuperLink VM it came from (for reports)


class _NotYet(Exception):
    """This poll did not find a usable SuperLink; the message says what is missing."""


def parse_endpoint(text: str, default_port: int = FLEET_PORT) -> HostPort:
    """A published endpoint, through the validator of FL_SUPERLINK_ADDRESS: ``host:port``,
    ``[v6]:port``, or the unbracketed ``v6:port`` flower-ctx publishes (``[ ]`` break OneGate's
    quoting); a bare host gets ``default_port``. Raises ValueError (``values.Invalid``)."""
    from .values import host_port

    if not isinstance(text, str) or len(text) > 300:
        raise Invalid("is not host:port")
    if not text.startswith("[") and text.count(":") > 1:
        host, _, port = text.rpartition(":")
        text = f"[{host}]:{port}"
    elif ":" not in text:
        text = f"{text}:{default_port}"
    return host_port(text)


def discover_superlink(
    client: OneGateClient,
    *,
    deadline_s: float,
    initial_backoff: float = 1.0,
    max_backoff: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Discovered:
    """Poll OneGate until the SuperLink of this VM's service has published, or ``deadline_s`` passes."""
    end = clock() + deadline_s
    backoff = initial_backoff
    state = _State()
    while True:
        try:
            return _poll(client, state, remaining=end - clock())
        except _NotYet as exc:
            reason = str(exc)
        remaining = end - clock()
        if remaining <= 0:
            raise DiscoveryTimeout(
                f"no SuperLink found through OneGate within {deadline_s:g} s: {reason}. "
                "Check the SuperLink VM, or set FL_SUPERLINK_ADDRESS"
            )
        # Jitter downwards only: SuperNodes of one service spread out, and a publication is still
        # seen within one backoff step.
        sleep(min(backoff * random.uniform(0.8, 1.0), remaining))
        backoff = min(backoff * 2, max_backoff)


@dataclass
class _State:
    node_ids: list[str] | None = None  # the superlink role's VM ids, once known
    polls: int = 0


def _poll(client: OneGateClient, state: _State, remaining: float) -> Discovered:
    state.polls += 1
    # Each call gets what is left of the deadline (at least FINAL_POLL_S, so the poll made right at
    # the deadline is a real one); the client's own deadline still applies when smaller.
    budget = max(remaining, FINAL_POLL_S)
    call_budget = {"deadline": min(budget, client.deadline) if client.deadline else budget}
    try:
        if not state.node_ids:
            state.node_ids = _superlink_ids(client.get_service(**call_budget))
        reasons = []
        for vm_id in state.node_ids:
            try:
                doc = client.get_vm_by_id(vm_id, **call_budget)
            except (OneGateNotInService, OneGateNotFound):
                # The node left the service (replaced, scaled down): look the role up again.
                state.node_ids = None
                raise _NotYet(f"SuperLink VM {vm_id} is no longer in the service") from None
            try:
                return _evaluate(vm_id, doc)
            except _NotYet as exc:
                reasons.append(str(exc))
        raise _NotYet("; ".join(reasons))
    except (OneGateAuthError, OneGateForbidden, OneGateNotConfigured) as exc:
        raise DiscoveryError(f"SuperLink discovery through OneGate is impossible: {exc}") from None
    except OneGateNotInService as exc:
        msg = exc.server_message
        if "SERVICE_ID" in msg or "does not belong" in msg:
            raise DiscoveryError(
                "this VM is not part of a OneFlow service, so OneGate cannot find its SuperLink: "
                "set FL_SUPERLINK_ADDRESS (and FL_SSL_CA_CERTFILE with TLS)"
            ) from None
        state.node_ids = None
        raise _NotYet(f"OneGate: {msg or 'not in the service yet'}") from None
    except OneGateError as exc:  # unreachable, 5xx, 404 from OneFlow: transient
        raise _NotYet(str(exc)) from None


def _superlink_ids(doc: dict[str, Any]) -> list[str]:
    service = obj(doc.get("SERVICE"), "SERVICE")
    roles = [obj(r, "SERVICE.roles[]") for r in items(service.get("roles"), "SERVICE.roles")]
    roles = [r for r in roles if (text(r.get("name"), "role name") or "").lower() == SUPERLINK_ROLE]
    if not roles:
        raise _NotYet(f"the service has no role named {SUPERLINK_ROLE!r}")
    ids: list[str] = []
    for role in roles:
        for node in items(role.get("nodes"), "role nodes"):
            node = obj(node, "role node")
            vm_id = text(node.get("deploy_id"), "deploy_id")
            if vm_id is None:
                vm = obj(obj(node.get("vm_info"), "vm_info").get("VM"), "vm_info.VM")
                vm_id = text(vm.get("ID"), "vm_info.VM.ID")
            vm_id = (vm_id or "").strip()
            if re.fullmatch(r"[0-9]{1,12}", vm_id) and vm_id not in ids:
                ids.append(vm_id)
    if not ids:
        raise _NotYet(f"the {SUPERLINK_ROLE!r} role has no VM yet")
    return ids


def _evaluate(vm_id: str, doc: dict[str, Any]) -> Discovered:
    """A Discovered from one SuperLink VM's OneGate view, or _NotYet naming what is missing."""
    vm = obj(doc.get("VM"), "VM")
    ut = obj(vm.get("USER_TEMPLATE"), "VM.USER_TEMPLATE")
    tls_text = (text(ut.get("FL_TLS"), "FL_TLS") or "").strip()
    tls_text = tls_text.upper() if tls_text.isascii() else tls_text
    if tls_text not in ("YES", "NO"):
        what = "has not published FL_TLS yet" if not tls_text else f"published FL_TLS={show(tls_text)}"
        raise _NotYet(f"SuperLink VM {vm_id} {what}")
    endpoint = _endpoint(vm_id, vm, ut)
    if tls_text == "NO":
        return Discovered(endpoint, False, None, None, vm_id)
    ca_pem, fp = _ca(vm_id, ut)
    return Discovered(endpoint, True, ca_pem, fp, vm_id)


def _endpoint(vm_id: str, vm: dict[str, Any], ut: dict[str, Any]) -> HostPort:
    """FL_ENDPOINT, else the first NIC address with the Fleet port: both through the validators an
    operator's FL_SUPERLINK_ADDRESS goes through (it ends up on Flower's command line)."""
    published = text(ut.get("FL_ENDPOINT"), "FL_ENDPOINT")
    if published is not None and published.strip():
        try:
            return parse_endpoint(published.strip())
        except ValueError:
            raise _NotYet(
                f"SuperLink VM {vm_id} published FL_ENDPOINT={show(published)}, which is not host:port"
            ) from None
    nics = items(obj(vm.get("TEMPLATE"), "VM.TEMPLATE").get("NIC"), "VM.TEMPLATE.NIC")
    for nic in nics:
        nic = obj(nic, "NIC")
        for key in ("IP", "IP6_GLOBAL", "IP6_ULA", "IP6"):
            ip = text(nic.get(key), f"NIC {key}")
            if ip:
                try:
                    return HostPort(str(ip_address(ip.strip())), FLEET_PORT)
                except Invalid:
                    raise _NotYet(f"SuperLink VM {vm_id} has NIC {key}={show(ip)}, which is not an address") from None
    raise _NotYet(f"SuperLink VM {vm_id} has no FL_ENDPOINT and no NIC address")


MAX_BUNDLE = 3  # the CA, and during a rotation the next (or the previous) one


def _ca(vm_id: str, ut: dict[str, Any]) -> tuple[bytes, str]:
    """The published CA (the first certificate, the one FL_CA_FINGERPRINT names) or, during a CA
    rotation, the trust bundle it heads (at most MAX_BUNDLE CA certificates), re-encoded. Which of
    them a SuperNode takes is decided against its pin (boot.pin_check)."""
    from .pem import PemError, fingerprint, is_ca, load_certs
    from .tls import cert_pem

    encoded = text(ut.get("FL_CA_CERT"), "FL_CA_CERT")
    if not encoded or not encoded.strip():
        raise _NotYet(f"SuperLink VM {vm_id} has TLS but has not published FL_CA_CERT yet")
    if len(encoded) > MAX_CA_TEXT:
        raise _NotYet(f"SuperLink VM {vm_id} published an FL_CA_CERT of {len(encoded)} characters, too long for a CA")
    try:
        certs = load_certs(decode_value(encoded))
    except (OneGateValueError, PemError) as exc:
        raise _NotYet(f"SuperLink VM {vm_id} published an unusable FL_CA_CERT ({exc})") from None
    if len(certs) > MAX_BUNDLE or not all(is_ca(c) for c in certs):
        what = f"{len(certs)} certificates" if len(certs) > MAX_BUNDLE else "a certificate that is not a CA"
        raise _NotYet(f"SuperLink VM {vm_id} published {what} in FL_CA_CERT; only a CA (or a rotation's bundle of "
                      f"up to {MAX_BUNDLE} CAs) is accepted")
    cert = certs[0]
    pem = cert_pem(*certs)
    actual = fingerprint(cert)
    published = text(ut.get("FL_CA_FINGERPRINT"), "FL_CA_FINGERPRINT")
    if published and published.strip() and published.strip().lower() != actual:
        raise _NotYet(
            f"SuperLink VM {vm_id}: FL_CA_CERT has fingerprint {actual} but FL_CA_FINGERPRINT says "
            f"{show(published, 80)}"
        )
    return pem, actual
