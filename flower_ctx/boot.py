"""What bootstrap and the watch both do at run time: find the SuperLink through OneGate, build the
attributes a role publishes, and publish readiness (DESIGN section 8).

The rule every path here keeps: OneGate never shows ``READY=YES`` for a VM whose ``FL_READY`` is
not ``YES``. Readiness is only ever published by :func:`publish` (attributes, then the health check,
then ``FL_READY`` + ``READY`` together, READY withdrawn first on failure) or withdrawn by
:func:`publish_failure`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import agentstate
from .errors import FlowerCtxError
from .files import read_file
from .health import Health, runtime_doc, runtime_target, superlink_dial_address
from .model import Config, HostPort, OneGateAccess, Role
from .paths import Paths

log = logging.getLogger(__name__)


def wg_public_key(config: Config, paths: Paths) -> str | None:
    if config.wg is None:
        return None
    from .wireguard.keys import public_key_from_private as public_key_of

    if config.wg.private_key is not None:
        return public_key_of(config.wg.private_key.reveal().decode())
    try:
        return public_key_of(read_file(paths.wg_key).decode("ascii").strip())
    except (OSError, ValueError, FlowerCtxError):
        return None


def client_for(access: OneGateAccess, paths: Paths, **kw: Any) -> Any:
    """A OneGate client, or None when staging or when the VM has no OneGate access."""
    if paths.staged or not access.usable:
        return None
    from .onegate import OneGateClient

    return OneGateClient(access, **kw)


PIN = "ca-pin.json"


class CaPinError(FlowerCtxError):
    """OneGate now publishes another CA than the one this SuperNode pinned: refused."""


def pinned_ca(paths: Paths) -> dict[str, Any] | None:
    """The CA this SuperNode pinned when it first learnt it from OneGate (and any refusal since)."""
    return agentstate.read_or_none(paths, PIN)


def refusal_message(pinned: str, offered: str, vm: str) -> str:
    # Both fingerprints first: FL_ERROR keeps the first 200 characters.
    return (f"pinned CA {pinned}, refused CA {offered} that the SuperLink VM {vm or '?'} now publishes in OneGate "
            "(this SuperNode pinned the first CA it found there; any VM of the service can rewrite those "
            "attributes). If the SuperLink really has a new CA: set FL_SSL_CA_CERTFILE, or run `flower-ctx ca "
            "forget` on this VM")


def pin_check(paths: Paths, ca_pem: bytes | None, fingerprint: str | None, vm_id: str) -> bytes | None:
    """Trust on first use. The first time, only the CA FL_CA_FINGERPRINT names is taken and pinned
    (exactly one certificate, whatever else rides along). Later, what is published is accepted
    only when it holds a pinned CA: a rotation's bundle (current and next CA) then becomes the pin,
    anything else is refused (CaPinError, recorded for status and doctor). Returns the PEM to
    install (None: nothing to install)."""
    import time

    from .pem import fingerprint as fp_of
    from .pem import load_certs
    from .tls import cert_pem

    certs = load_certs(ca_pem) if ca_pem else []
    offered = [fp_of(c) for c in certs]
    pin = pinned_ca(paths)
    now = int(time.time())
    if pin is None:
        if not certs:
            return None
        agentstate.write(paths, PIN, {"fingerprint": offered[0], "fingerprints": [offered[0]], "vm": vm_id,
                                      "time": now})
        return cert_pem(certs[0])
    pinned = set(pin.get("fingerprints") or [pin.get("fingerprint")])
    if pinned & set(offered):
        if pin.get("refused") or set(offered) != pinned or pin.get("fingerprint") != offered[0]:
            agentstate.write(paths, PIN, {"fingerprint": offered[0], "fingerprints": offered, "vm": vm_id,
                                          "time": int(pin.get("time", now))})
        return cert_pem(*certs)
    refused = {"fingerprint": fingerprint or (offered[0] if offered else "?"), "vm": vm_id, "time": now}
    if (pin.get("refused") or {}).get("fingerprint") != refused["fingerprint"]:
        agentstate.write(paths, PIN, {**pin, "refused": refused})
    raise CaPinError(refusal_message(str(pin.get("fingerprint")), refused["fingerprint"], vm_id))


def ca_from_onegate(config: Config) -> bool:
    """A SuperNode with TLS and no FL_SSL_CA_CERTFILE: its CA is the one it learnt (and pinned) from OneGate."""
    return config.role is Role.SUPERNODE and config.tls_enabled and config.pki.ca_pem is None


def pin_refusal(config: Config, paths: Paths) -> str | None:
    """Why a SuperNode whose CA came from OneGate is not ready while a CA it refused stands (None:
    no refusal). Bootstrap and the readiness watch both ask, so neither reports READY past it."""
    if not ca_from_onegate(config):
        return None
    pin = pinned_ca(paths) or {}
    refused = pin.get("refused")
    if not refused:
        return None
    return refusal_message(str(pin.get("fingerprint")), str(refused.get("fingerprint")), str(refused.get("vm", "")))


def look_again(config: Config, paths: Paths, client: Any, say: Callable[[str], None]) -> None:
    """At boot, a SuperNode whose CA came from OneGate looks at what its SuperLink publishes now: the
    pin decides (a different CA is refused and recorded, see ``pin_refusal``). Nothing is installed
    here (the watch takes a rotation's bundle); nothing published now is no reason to fail."""
    if client is None or not ca_from_onegate(config) or pinned_ca(paths) is None:
        return  # nothing pinned: the CA was not learnt from OneGate
    from .discovery import DiscoveryError, discover_superlink

    try:
        found = discover_superlink(client, deadline_s=5.0, max_backoff=2.0)
    except (DiscoveryError, FlowerCtxError):
        return
    try:
        pin_check(paths, found.ca_pem, found.ca_fingerprint, found.vm_id)
    except CaPinError as exc:
        say(f"refused: {exc}")
    except FlowerCtxError as exc:  # the pin record not writable (a full disk): the boot goes on, the watch retries
        log.warning("could not check the published CA against the pin: %s", exc)


def discover(config: Config, paths: Paths, client: Any, wait: float, say: Callable[[str], None]) -> HostPort:
    """SuperNode without FL_SUPERLINK_ADDRESS (or without a CA): find the SuperLink of this
    service through OneGate, install its CA, and write the runtime config. Run under the machine
    lock. Raises DiscoveryTimeout when nothing was published in ``wait`` seconds."""
    from . import runtime, tls
    from .discovery import discover_superlink

    ca_only = config.superlink_address is not None  # static address, CA to be taken from OneGate
    if client is None:
        if ca_only:
            raise FlowerCtxError(
                "TLS is on and FL_SSL_CA_CERTFILE is empty, and OneGate is not available to fetch the CA the "
                "SuperLink publishes: set FL_SSL_CA_CERTFILE (`flower-ctx ca export` on the SuperLink)"
            )
        raise FlowerCtxError(
            "FL_SUPERLINK_ADDRESS is empty and OneGate is not available (the VM template needs CONTEXT "
            "TOKEN=YES, and discovery works only inside one OneFlow service): set FL_SUPERLINK_ADDRESS"
        )
    say("discovering the SuperLink through OneGate")
    # 1..5 s backoff: about half the delay of a fixed 10 s poll, one request every few seconds at most.
    found = discover_superlink(client, deadline_s=wait, max_backoff=5.0)
    if config.tls_enabled and not found.tls:
        raise FlowerCtxError(
            f"the SuperLink at {found.endpoint} publishes FL_TLS=NO but this SuperNode has FL_TLS_ENABLED=YES: "
            "set the same FL_TLS_ENABLED on both"
        )
    if config.tls_enabled and config.pki.ca_pem is None:
        if found.ca_pem is None:
            raise FlowerCtxError(f"the SuperLink at {found.endpoint} has not published FL_CA_CERT; "
                                 "set FL_SSL_CA_CERTFILE on this SuperNode")
        trusted = pin_check(paths, found.ca_pem, found.ca_fingerprint, found.vm_id)
        if trusted is not None:
            tls.install_trusted_ca(trusted, paths)
    if ca_only:
        assert config.superlink_address is not None
        say(f"CA of the SuperLink VM {found.vm_id or '?'} installed from OneGate ({found.ca_fingerprint})")
        return config.superlink_address
    agentstate.record_discovery(paths, found.endpoint, found.tls, found.ca_fingerprint, found.vm_id)
    runtime.apply(config, paths, superlink_address=found.endpoint)
    say(f"SuperLink found at {found.endpoint} (VM {found.vm_id or '?'})")
    return found.endpoint


def needs_discovery(config: Config, paths: Paths) -> bool:
    """A SuperNode that must still learn its SuperLink's address or CA through OneGate."""
    from .files import exists

    if config.role is not Role.SUPERNODE:
        return False
    if config.superlink_address is None:
        return not (runtime_doc(paths, config.role.value) or {}).get("superlink_address")
    return config.tls_enabled and config.pki.ca_pem is None and not exists(paths.ca_cert)


def attributes(config: Config, paths: Paths) -> dict[str, str]:
    """What this role publishes besides readiness (discovery attributes, versions, keys)."""
    from . import identity
    from .readiness import superlink_attrs, supernode_attrs

    try:
        config = identity.apply(config, paths, ask_onegate=False)[0]  # the address configure derived
    except FlowerCtxError:
        pass  # not derived yet: the tunnel address is left out
    wg_pub = wg_public_key(config, paths)
    if config.role is Role.GATEWAY:
        from .readiness import gateway_attrs

        return gateway_attrs(config, wg_public_key=wg_pub)
    doc = runtime_doc(paths, config.role.value)
    if config.role is Role.SUPERLINK:
        try:
            ca = read_file(paths.ca_cert) if config.tls_enabled else None
        except (OSError, FlowerCtxError):
            raise FlowerCtxError(f"no CA at {paths.ca_cert}: run flower-ctx configure --role superlink") from None
        return superlink_attrs(config, ca_pem=ca, wg_public_key=wg_pub, endpoint=superlink_dial_address(config, doc),
                               cert_expires=_cert_expires(paths) if config.tls_enabled else None)
    from .admission import node_public_key

    node_key = node_public_key(paths) if config.tls_enabled else None
    return supernode_attrs(config, superlink=runtime_target(doc), wg_public_key=wg_pub,
                           node_public_key=node_key.line if node_key else None)


def _cert_expires(paths: Paths) -> str | None:
    from .inspect import cert_info

    info = cert_info(paths.server_cert)
    if info is None or info.problem or not info.not_after_iso:
        return None
    return info.not_after_iso


def publish(config: Config, paths: Paths, client: Any, health: Health, attrs: dict[str, str] | None = None) -> str:
    """Publish attributes then readiness; record the outcome. Returns a one-line summary. ``attrs``:
    the role's attributes when the caller has computed them already (default: computed here)."""
    from .readiness import HealthResult, publish_ready

    if client is None and paths.staged:
        return "OneGate: skipped (--root)"
    if client is None:
        agentstate.record_publication(paths, {"published": False, "reason": "OneGate not configured"})
        return "OneGate: not configured (no ONEGATE_ENDPOINT/VMID/token: the VM template needs TOKEN=YES)"
    if attrs is None:
        try:
            attrs = attributes(config, paths)
        except FlowerCtxError as exc:
            attrs, health = {}, Health(False, str(exc))
    result = publish_ready(client, attrs, lambda: HealthResult(health.ok, health.detail))
    return _record(paths, result)


def publish_attributes(config: Config, paths: Paths, client: Any) -> None:
    """The role's attributes alone, before Flower starts (a SuperNode's key must be in OneGate for
    its SuperLink to admit it). Readiness is untouched; OneGate trouble is only logged."""
    from .errors import OneGateError
    from .onegate import obj

    if client is None:
        return
    try:
        wanted = attributes(config, paths)
        ut = obj(obj(client.get_vm().get("VM"), "VM").get("USER_TEMPLATE"), "VM.USER_TEMPLATE")
        client.update_vm({k: v for k, v in wanted.items() if ut.get(k) != v})  # only what differs
    except (OneGateError, FlowerCtxError) as exc:
        log.warning("OneGate: attributes not published yet (%s)", exc)


def publish_failure(client: Any, paths: Paths, error: str) -> str:
    """Withdraw READY and publish FL_READY=NO with ``error`` (a failed configure: the CONTEXT or
    the machine is not usable). Nothing else is touched. Returns a one-line summary."""
    from .readiness import HealthResult, publish_ready

    if client is None:
        return "OneGate: not configured, nothing published"
    result = publish_ready(client, {}, lambda: HealthResult(False, error), stale=())
    return _record(paths, result)


def _record(paths: Paths, result: Any) -> str:
    doc = {
        "published": result.onegate_problem is None,
        "ready": result.ready,
        "error": result.error,
        "onegate_problem": result.onegate_problem,
        "sent": sorted(result.sent),
        "deleted": list(result.deleted),
    }
    try:
        agentstate.record_publication(paths, doc)
    except FlowerCtxError as exc:  # a full disk must not hide what was published
        log.warning("cannot record the publication: %s", exc)
    if result.onegate_problem:
        return f"OneGate: could not publish ({result.onegate_problem}); will retry"
    if result.ready:
        return "OneGate: READY=YES published" + ("" if result.changed else " (already)")
    return f"OneGate: FL_READY=NO published with FL_ERROR={result.error!r}"
