"""Health checks behind readiness: is this role really serving? (DESIGN section 8)

SuperLink: the Fleet API completes a TLS handshake verified with its own CA on the address
SuperNodes use (a plain TCP connect without TLS). SuperNode: the Flower process runs and the
SuperLink answers a handshake that verifies with the configured CA.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from .model import Config, HostPort, Role
from .paths import Paths
from .supervisor import Supervisor

FLEET_PORT = 9092


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str  # operator terms
    waiting: bool = False  # SuperNode: the SuperLink is not reachable (yet): not a boot failure
    kind: str = ""  # the probe kind when a handshake was tried


def runtime_doc(paths: Paths, role: str) -> dict[str, Any] | None:
    """The runtime configuration (None before configure); a damaged one raises RuntimeConfigError."""
    from .runtime import read

    return read(paths, role)


def fleet_port(doc: dict[str, Any] | None) -> int:
    addr = (doc or {}).get("fleet_api_address") or f"0.0.0.0:{FLEET_PORT}"
    try:
        return int(str(addr).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return FLEET_PORT


def runtime_target(doc: dict[str, Any] | None) -> HostPort | None:
    """The SuperLink address a SuperNode's runtime config holds (None when unknown or unreadable)."""
    addr = (doc or {}).get("superlink_address")
    if not addr:
        return None
    from .values import Invalid, host_port

    try:
        return host_port(str(addr))
    except Invalid:
        return None


def superlink_dial_address(config: Config, doc: dict[str, Any] | None) -> HostPort:
    """Where SuperNodes reach this SuperLink: the primary NIC address from CONTEXT, else the
    address of the default route's interface, else loopback (a lone test VM)."""
    port = fleet_port(doc)
    for nic in sorted(config.nics, key=lambda n: n.index):
        ip = nic.ip or nic.ip6
        if ip is not None:
            return HostPort(str(ip), port)
    from .tls import default_route_addresses

    for ip in default_route_addresses():
        return HostPort(str(ip), port)
    return HostPort("127.0.0.1", port)


def probe_with_local_ca(paths: Paths, target: HostPort, timeout: float, source: str | None = None) -> Any:
    """Handshake with ``target`` trusting this VM's ca.crt; the ProbeResult, or None without a CA."""
    from .errors import FlowerCtxError
    from .files import read_file
    from .probe import probe_tls

    try:
        ca = read_file(paths.ca_cert)
    except (OSError, FlowerCtxError):
        return None
    return probe_tls(target.host, target.port, ca, timeout=timeout, source=source)


def tcp_error(hp: HostPort, timeout: float, source: str | None = None) -> str | None:
    """None when ``hp`` accepts a TCP connection, else the OS error."""
    try:
        with socket.create_connection((hp.host, hp.port), timeout=timeout,
                                      source_address=(source, 0) if source else None):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _supernode_exit_cause(
    config: Config, doc: dict[str, Any], paths: Paths, timeout: float
) -> tuple[str, str] | None:
    """The TLS problem (CA or name mismatch, expired certificate) the SuperLink shows this SuperNode,
    if any, as (message, probe kind); None when it verifies, cannot be reached, or TLS is off."""
    from .probe import ProbeKind

    target = runtime_target(doc)
    if target is None or not config.tls_enabled:
        return None
    result = probe_with_local_ca(paths, target, timeout)
    if result is None or result.ok or result.kind is ProbeKind.UNREACHABLE:
        return None
    return result.message, result.kind.value


# What Flower's SuperNode logs when the SuperLink does not admit its key (flwr 1.39+: ActivateNode
# refused, self-registration refused under SuperNode authentication, unregistered while connected).
NOT_ADMITTED_MARKERS = (b"Failed to activate SuperNode", b"All SuperNodes must be registered", b"Invalid node ID")
# Flower 1.39 never self-registers a SuperNode given a key: with FL_SUPERNODE_AUTH=YES here, the
# SuperLink must know the key (admission), even when its own FL_SUPERNODE_AUTH is NO.
NOT_ADMITTED = ("SuperNode not admitted: add its key to FL_SUPERNODE_PUBLIC_KEYS on the SuperLink "
                "(`flower-ctx node key` prints it), or set FL_SUPERNODE_AUTH=NO here when the SuperLink runs "
                "with FL_SUPERNODE_AUTH=NO")
# FL_SUPERNODE_AUTH=NO here: Flower registers a throwaway key, which a SuperLink with authentication refuses.
REGISTRATION_REFUSED = ("SuperNode not admitted: the SuperLink requires SuperNode authentication; set "
                        "FL_SUPERNODE_AUTH=YES here and add this SuperNode's key (`flower-ctx node key`) to "
                        "FL_SUPERNODE_PUBLIC_KEYS on the SuperLink")


def service_log_tail(paths: Paths, role: str, size: int = 200_000) -> bytes:
    """The end of the Flower service's log: the journal under systemd, else the built-in log file."""
    from .errors import FlowerCtxError
    from .files import read_tail
    from .supervisor import SystemdSupervisor, child_environment, for_machine, unit_name

    if isinstance(for_machine(paths), SystemdSupervisor):
        import subprocess

        try:
            out = subprocess.run(["journalctl", "-u", unit_name(role), "-n", "2000", "--no-pager", "-o", "cat"],
                                 capture_output=True, timeout=20, env=child_environment())
            return out.stdout[-size:]
        except (OSError, subprocess.TimeoutExpired):
            return b""
    try:
        return read_tail(paths.flower_home / "run" / f"{role}.log", size)
    except (OSError, FlowerCtxError):
        return b""


def _since_start(paths: Paths) -> bytes:
    tail = service_log_tail(paths, "supernode", 50_000)
    last_start = tail.rfind(b"Starting Flower SuperNode")
    return tail[last_start:] if last_start >= 0 else tail


def not_admitted(paths: Paths) -> bool:
    """The SuperNode's last Flower run ended because the SuperLink does not admit its key."""
    return refusal(paths) is not None


def refusal(paths: Paths) -> str | None:
    """Why the SuperLink refused this SuperNode's last Flower run (the fix included), or None."""
    recent = _since_start(paths)
    if b"All SuperNodes must be registered" in recent:
        return REGISTRATION_REFUSED
    return NOT_ADMITTED if any(m in recent for m in NOT_ADMITTED_MARKERS) else None


def activated(paths: Paths) -> bool:
    """The SuperNode's current Flower run was accepted by the SuperLink (Flower logs its node id)."""
    return b"SuperNode ID:" in _since_start(paths)


def check(config: Config, paths: Paths, supervisor: Supervisor, *, timeout: float = 3.0) -> Health:
    from .probe import ProbeKind

    if config.role is Role.GATEWAY:  # no Flower: the tunnel, forwarding and the SuperLink behind it
        from .gateway.health import check as gateway_check

        return gateway_check(config, paths, timeout=timeout)
    role = config.role.value
    doc = runtime_doc(paths, role)
    if doc is None:
        return Health(False, f"no runtime config at {paths.runtime_config(role)}: run flower-ctx configure first")
    state = supervisor.state(role)
    if not state.running:
        down = f"the Flower {role} is not running ({state.detail}); see its log"
        # A SuperNode that exits at once failed its TLS handshake or was not admitted: name the cause.
        cause = _supernode_exit_cause(config, doc, paths, timeout) if config.role is Role.SUPERNODE else None
        refused = refusal(paths) if cause is None and config.role is Role.SUPERNODE else None
        if refused is not None:
            cause = (refused, "not_admitted")
        if cause is None:
            return Health(False, down)
        return Health(False, f"{cause[0]}; {down}", kind=cause[1])
    if config.role is Role.SUPERLINK:
        target = superlink_dial_address(config, doc)
    else:
        found = runtime_target(doc)
        if found is None:
            return Health(False, "no SuperLink address yet (OneGate discovery has not found one)", waiting=True)
        target = found
    if not config.tls_enabled:
        err = tcp_error(target, timeout)
        if err is None and config.role is Role.SUPERNODE and not activated(paths):
            return Health(False, f"SuperLink {target} reachable; waiting for it to accept this SuperNode",
                          waiting=True, kind="connecting")
        if err is None:
            return Health(True, f"{role} up; Fleet API {target} accepts connections (TLS off)")
        who = "Fleet API" if config.role is Role.SUPERLINK else "SuperLink"
        return Health(False, f"{who} {target} unreachable: {err}", waiting=config.role is Role.SUPERNODE)
    result = probe_with_local_ca(paths, target, timeout)
    if result is None:
        return Health(False, f"no CA at {paths.ca_cert}: run flower-ctx configure (or set FL_SSL_CA_CERTFILE)")
    if result.ok:
        if config.role is Role.SUPERLINK:
            return Health(True, f"Fleet API {target} answers TLS verified with its own CA", kind=result.kind.value)
        if not activated(paths):
            # Flower's SuperNode is up but the SuperLink has not accepted it (yet): it is admitted, or
            # it exits within seconds and the watch names why.
            return Health(False, f"SuperLink {target} verified; waiting for it to accept this SuperNode",
                          waiting=True, kind="connecting")
        return Health(True, f"SuperNode running; SuperLink {target} verified with the configured CA",
                      kind=result.kind.value)
    waiting = config.role is Role.SUPERNODE and result.kind is ProbeKind.UNREACHABLE
    prefix = "waiting for SuperLink: " if waiting else ""
    return Health(False, prefix + result.message, waiting=waiting, kind=result.kind.value)
