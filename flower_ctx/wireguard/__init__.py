"""The WireGuard step of configure: wg0 from FL_WG_*, reconciled, never recreated.

``apply`` ensures the private key (operator's, or generated once and kept in wg0.key), writes
wg0.conf, then (unless staging) makes the live interface match: kernel WireGuard through netlink
when the module exists, else wireguard-go over its UAPI socket; MTU, address, link state and routes
through pyroute2. Only differences are applied, so a re-run touches nothing. Heavy modules
(pyroute2, cryptography) are imported only when the step runs.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ApplyError
from ..files import Outcome, ensure_dir, exists, list_dir, open_lock, read_file, unlink, write_file
from ..model import Config, HostPort, WgConfig
from ..paths import Paths
from ..plan import Change, StepResult
from . import conf
from .keys import (
    KeyError_,
    clamp,
    decode_key,
    encode_key,
    generate_private_key,
    public_key_from_private,
    short,
)
from .reconcile import (
    DesiredDevice,
    DesiredPeer,
    DevicePlan,
    DeviceState,
    Endpoint,
    LinkPlan,
    LinkState,
    choose_backend,
    desired_routes,
    plan_device,
    plan_link,
)

__all__ = ["apply", "generate_private_key", "public_key_from_private", "status", "IFNAME"]

IFNAME = "wg0"
# Endpoint names are resolved at apply time; at boot DNS may lag, so a few tries (bounded).
RESOLVE_ATTEMPTS = 3
RESOLVE_DELAY = 1.0
# After a wireguard-go restart the old daemon holds the UDP port for ~2 s (research 6.5).
PORT_RETRY_SECONDS = 5.0

DRY = {"created": "would-create", "updated": "would-update", "removed": "would-remove"}


def _on_vm(paths: Paths, p: Path) -> PurePosixPath:
    """The absolute path ``p`` will have on the VM (strips a ``--root`` staging prefix)."""
    return PurePosixPath("/") / p.relative_to(paths.root)


class _Report:
    def __init__(self, result: StepResult, dry_run: bool) -> None:
        self.result, self.dry_run = result, dry_run

    def add(self, what: str, outcome: str, detail: str = "") -> None:
        if self.dry_run:
            outcome = DRY.get(outcome, outcome)
        self.result.changes.append(Change(what, outcome, detail))

    def file(self, path: PurePosixPath, outcome: Outcome, detail: str = "") -> None:
        self.add(str(path), outcome.value, detail)


# --- key and files --------------------------------------------------------------------------


def _secret_to_b64(raw: bytes) -> str:
    """A validated FL_WG_PRIVATE_KEY as canonical base64 (accepts raw 32 bytes or base64 text)."""
    if len(raw) == 32:
        return encode_key(raw)
    return encode_key(decode_key(raw))


def _ensure_key(wg: WgConfig, paths: Paths, report: _Report) -> str | None:
    """The private key wg0 uses (base64). None only under --dry-run with no key yet."""
    key_path = paths.wg_key
    if wg.private_key is not None:
        key = _secret_to_b64(wg.private_key.reveal())
    elif exists(key_path):
        try:
            key = encode_key(decode_key(read_file(key_path)))
        except (KeyError_, OSError) as exc:
            # Never silently replace an identity the other zones have pinned.
            raise ApplyError(
                f"{_on_vm(paths, key_path)} is not a usable WireGuard key ({exc}); "
                "fix or delete it (a new key must then be given to every peer)"
            ) from None
    elif report.dry_run:
        report.add(str(_on_vm(paths, key_path)), "created", "a new key would be generated")
        return None
    else:
        key = generate_private_key()
    _write(paths, key_path, (key + "\n").encode(), 0o600, report, "private key (never printed)")
    return key


def _write(paths: Paths, path: Path, content: bytes, mode: int, report: _Report, detail: str = "") -> None:
    shown = _on_vm(paths, path)
    if report.dry_run:
        try:
            same = read_file(path) == content and (path.lstat().st_mode & 0o7777) == mode
            report.file(shown, Outcome.UNCHANGED if same else Outcome.UPDATED, detail)
        except FileNotFoundError:
            report.file(shown, Outcome.CREATED, detail)
        return
    ensure_dir(path.parent, 0o700)
    change = write_file(path, content, mode, owner="root", group="root")
    report.file(shown, change.outcome, detail)


def _write_files(wg: WgConfig, paths: Paths, report: _Report) -> None:
    wanted_psk: set[str] = set()
    for peer in wg.peers:
        if peer.preshared_key is not None:
            name = conf.psk_name(peer)
            wanted_psk.add(name)
            psk = _secret_to_b64(peer.preshared_key.reveal())
            _write(
                paths,
                paths.wg_dir / name,
                (psk + "\n").encode(),
                0o600,
                report,
                f"preshared key of peer {short(peer.public_key)}",
            )
    for name in list_dir(paths.wg_dir):
        if name.startswith("wg0-") and name.endswith(".psk") and name not in wanted_psk:
            stale = paths.wg_dir / name
            if not report.dry_run:
                unlink(stale)
            report.add(str(_on_vm(paths, stale)), "removed", "peer no longer configured")
    text = conf.render(wg, _on_vm(paths, paths.wg_key), _on_vm(paths, paths.wg_dir))
    _write(paths, paths.wg_conf, text.encode(), 0o600, report, "wg-quick syntax, key by path")


# --- desired state ----------------------------------------------------------------------------


def resolve_endpoint(hp: HostPort, attempts: int = RESOLVE_ATTEMPTS, delay: float = RESOLVE_DELAY) -> Endpoint:
    """``host:port`` to an IP literal endpoint (UAPI and netlink take literals only). IPv4 first."""
    if hp.ip is not None:
        return (hp.ip.compressed, hp.port)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            infos = socket.getaddrinfo(hp.host, hp.port, type=socket.SOCK_DGRAM)
            infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
            import ipaddress

            return (ipaddress.ip_address(infos[0][4][0]).compressed, hp.port)
        except (socket.gaierror, IndexError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(delay)
    raise ApplyError(f"endpoint {hp} does not resolve ({last})")


def desired_device(wg: WgConfig, private_key_b64: str, warnings: list[str]) -> DesiredDevice:
    peers = []
    for p in wg.peers:
        endpoint = None
        if p.endpoint is not None:
            try:
                endpoint = resolve_endpoint(p.endpoint)
            except ApplyError as exc:
                # One unresolvable site must not take the whole tunnel (and the other sites) down.
                warnings.append(
                    f"wg0 peer {short(p.public_key)} ({p.source or 'peer'}): {exc}; its current endpoint is kept"
                )
        psk = decode_key(_secret_to_b64(p.preshared_key.reveal())) if p.preshared_key else None
        peers.append(
            DesiredPeer(
                public_key=p.public_key,
                allowed_ips=frozenset(p.allowed_ips),
                endpoint=endpoint,
                persistent_keepalive=p.persistent_keepalive,
                preshared_key=psk,
            )
        )
    return DesiredDevice(private_key=clamp(decode_key(private_key_b64)), listen_port=wg.listen_port, peers=tuple(peers))


# --- live interface -----------------------------------------------------------------------------


@contextmanager
def _lock(paths: Paths) -> Iterator[None]:
    """Two configure runs racing would both spawn wireguard-go: serialise the live part."""
    ensure_dir(paths.wg_run_dir, 0o755)
    fd = open_lock(paths.wg_run_dir / f".flower-ctx-{IFNAME}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Backend:
    """read()/write() of the device over UAPI (wireguard-go) or netlink (kernel)."""

    def __init__(self, kind: str, paths: Paths) -> None:
        self.kind = kind
        self.sock = paths.wg_run_dir / f"{IFNAME}.sock"
        self.wg: Any = None
        if kind == "kernel":
            from . import kernel

            self.wg = kernel.open_wireguard()
            if self.wg is None:
                raise ApplyError("wg0 is a kernel WireGuard link but the WireGuard netlink family is missing")

    def read(self) -> DeviceState:
        if self.kind == "kernel":
            from . import kernel

            return kernel.read_device(self.wg, IFNAME)
        from . import uapi

        return uapi.get(self.sock)

    def write(self, plan: DevicePlan) -> None:
        if self.kind == "kernel":
            from . import kernel

            kernel.apply_plan(self.wg, IFNAME, plan)
            return
        from . import uapi

        uapi.set_(self.sock, plan)

    def close(self) -> None:
        if self.wg is not None:
            self.wg.close()


def _create_interface(ipr: Any, paths: Paths, report: _Report) -> str:
    from . import kernel, link, uapi

    wg = kernel.open_wireguard()
    if wg is not None:
        wg.close()
        if link.create_kernel_link(ipr, IFNAME):
            report.add(f"{IFNAME} interface", "created", "kernel WireGuard")
            return "kernel"
    uapi.spawn(IFNAME, paths.wg_run_dir / f"{IFNAME}.sock")
    report.add(f"{IFNAME} interface", "created", "wireguard-go (no kernel WireGuard module)")
    return "userspace"


def _report_device(plan: DevicePlan, public_key: str, report: _Report) -> None:
    if plan.private_key is not None:
        report.add(f"{IFNAME} private key", "updated", f"public key {public_key}")
    if plan.listen_port is not None:
        report.add(f"{IFNAME} listen port", "updated", str(plan.listen_port))
    for p in plan.peers:
        outcome = {"create": "created", "update": "updated", "remove": "removed"}[p.action]
        detail = "" if p.action != "update" else ", ".join(p.changed)
        report.add(f"{IFNAME} {p.describe()}", outcome, detail)


def _report_link(plan: LinkPlan, report: _Report) -> None:
    if plan.mtu is not None:
        report.add(f"{IFNAME} mtu", "updated", str(plan.mtu))
    for a in plan.del_addresses:
        report.add(f"{IFNAME} address {a}", "removed")
    for a in plan.add_addresses:
        report.add(f"{IFNAME} address {a}", "created")
    if plan.set_up:
        report.add(f"{IFNAME} link", "updated", "up")
    for r in plan.del_routes:
        report.add(f"{IFNAME} route {r}", "removed")
    for r in plan.add_routes:
        report.add(f"{IFNAME} route {r}", "created")


def _write_device(backend: _Backend, desired: DesiredDevice) -> DevicePlan:
    """Read, diff, send; retry while a just-restarted wireguard-go's old socket holds the port."""
    from .uapi import EADDRINUSE, UapiError

    deadline = time.monotonic() + PORT_RETRY_SECONDS
    first: DevicePlan | None = None
    while True:
        plan = plan_device(desired, backend.read())
        first = first or plan
        try:
            backend.write(plan)
            return first
        except UapiError as exc:
            # A set is not atomic: the next loop re-reads the state and sends only what is left.
            if exc.errno != EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def tunnel_mtu(wg: WgConfig, desired: DesiredDevice, ipr: Any) -> tuple[int, str]:
    """FL_WG_MTU, or the MTU derived from the underlay towards the peers' endpoints (mtu.py)."""
    if wg.mtu is not None:
        return wg.mtu, "FL_WG_MTU"
    from .mtu import derive

    return derive(ipr, [p.endpoint[0] for p in desired.peers if p.endpoint is not None])


def _apply_live(
    wg: WgConfig, desired: DesiredDevice, public_key: str, report: _Report, paths: Paths, warnings: list[str],
    facts: dict[str, str] | None = None,
) -> str:
    from . import link, uapi

    ipr = link.open_iproute()
    backend: _Backend | None = None
    try:
        _refuse_underlay_routes(wg, desired, ipr, paths)
        mtu, why = tunnel_mtu(wg, desired, ipr)
        if facts is not None:
            facts["wg_mtu"] = f"{mtu} ({why})"
        current_link = link.read_link(ipr, IFNAME)
        alive = (
            current_link is not None and current_link.kind == "tun" and uapi.alive(paths.wg_run_dir / f"{IFNAME}.sock")
        )
        kind = choose_backend(current_link.kind if current_link else None, current_link is not None, alive)
        if kind == "create":
            if report.dry_run:
                return _dry_run_missing(wg, desired, report, warnings, mtu)
            kind = _create_interface(ipr, paths, report)
        backend = _Backend(kind, paths)
        _refuse_learned_endpoints(wg, desired, backend.read())
        if report.dry_run:
            dplan = plan_device(desired, backend.read())
        else:
            dplan = _write_device(backend, desired)
        _report_device(dplan, public_key, report)

        current_link = link.read_link(ipr, IFNAME)
        if current_link is None:
            raise ApplyError(f"{IFNAME} disappeared while being configured")
        routes, route_warnings = desired_routes(wg.address, desired.peers)
        warnings.extend(route_warnings)
        lplan = plan_link(wg.address, mtu, routes, current_link)
        if not report.dry_run:
            link.apply_link_plan(ipr, current_link.ifindex, lplan)
        _report_link(lplan, report)
        if wg.forward and not link.forwarding_enabled():
            if not report.dry_run:
                link.enable_forwarding()
            report.add("ipv4 forwarding", "updated", "on (FL_WG_FORWARD=YES)")
        names = (link.redirecting() if report.dry_run else link.stop_redirects()) if wg.forward else []
        if names:
            report.add("ipv4 redirects", "updated", f"off on {', '.join(names)} (a forwarding VM must not send its "
                                                    "peers to the default gateway while wg0 is down)")
        return "kernel" if kind == "kernel" else "wireguard-go"
    finally:
        if backend is not None:
            backend.close()
        ipr.close()


def _refuse_underlay_routes(wg: WgConfig, desired: DesiredDevice, ipr: Any, paths: Paths) -> None:
    """Before any change: the routes wg0 would get must leave the peers' (resolved) endpoints and the
    VM's default gateways on the underlay (validation checked what CONTEXT gave as addresses)."""
    import ipaddress

    from .. import underlay
    from . import link

    routes, _ = desired_routes(wg.address, desired.peers)
    keep = [(f"the endpoint of peer {short(p.public_key)}", ipaddress.ip_address(p.endpoint[0]))
            for p in desired.peers if p.endpoint is not None]
    keep += [("the VM's default gateway", gw) for gw in link.default_gateways(ipr)]
    found = underlay.problems(routes, keep)
    if found:
        raise ApplyError(f"{IFNAME}: nothing changed: " + "; ".join(found))


def _refuse_learned_endpoints(wg: WgConfig, desired: DesiredDevice, current: DeviceState) -> None:
    """A hub learns its spokes' endpoints from their handshakes. An AllowedIP that contains one (a
    zone's network that holds its gateway's own underlay address) routes the tunnel's packets to that
    peer into the tunnel itself: refused before anything changes, naming the peer."""
    import ipaddress

    from .. import underlay

    routes, _ = desired_routes(wg.address, desired.peers)
    keep = []
    for p in desired.peers:
        have = current.peers.get(p.public_key)
        if p.endpoint is None and have is not None and have.endpoint is not None:
            keep.append((f"the address peer {short(p.public_key)} sends its tunnel from (learned endpoint)",
                         ipaddress.ip_address(have.endpoint[0])))
    found = underlay.problems(routes, keep)
    if found:
        raise ApplyError(f"{IFNAME}: nothing changed: " + "; ".join(found))


def _dry_run_missing(wg: WgConfig, desired: DesiredDevice, report: _Report, warnings: list[str], mtu: int) -> str:
    report.add(f"{IFNAME} interface", "created", "kernel WireGuard or wireguard-go")
    _report_device(plan_device(desired, DeviceState()), "", report)
    routes, route_warnings = desired_routes(wg.address, desired.peers)
    warnings.extend(route_warnings)
    _report_link(plan_link(wg.address, mtu, routes, LinkState(None, 0, 0, False)), report)
    if wg.forward:
        report.add("ipv4 forwarding", "updated", "on (FL_WG_FORWARD=YES)")
    return "none yet"


SKIPPED = [
    "wg0: create the interface (kernel WireGuard, else start wireguard-go)",
    "wg0: set private key, listen port and peers",
    "wg0: MTU (FL_WG_MTU, or derived from the underlay), address, link up, routes for the peers' allowed IPs",
]


def apply(config: Config, paths: Paths, *, dry_run: bool = False) -> StepResult:
    """Make wg0 match ``config.wg``. See the module docstring."""
    result = StepResult("wireguard")
    report = _Report(result, dry_run)
    wg = config.wg
    if wg is None:
        result.changes.append(Change("wireguard", "skipped", "disabled (FL_WG_ENABLED=NO)"))
        return result

    key = _ensure_key(wg, paths, report)
    _write_files(wg, paths, report)
    if key is not None:
        public_key = public_key_from_private(key)
        result.facts["wg_public_key"] = public_key
    else:
        public_key = ""
    result.facts["wg_address"] = str(wg.address)

    if paths.staged:
        result.skipped.extend(SKIPPED)
        if wg.forward:
            result.skipped.append("net.ipv4.ip_forward=1 (FL_WG_FORWARD=YES)")
            result.skipped.append("net.ipv4.conf.*.send_redirects=0 (a forwarding VM)")
        return result
    if key is None:  # dry run on a VM with no key yet: the live diff needs one
        key = generate_private_key()
    desired = desired_device(wg, key, result.warnings)
    with _lock(paths) if not dry_run else _nolock():
        result.facts["wg_backend"] = _apply_live(wg, desired, public_key, report, paths, result.warnings,
                                                 result.facts)
    if not any(c.pending for c in result.changes if c.what.startswith(IFNAME) or c.what.startswith("ipv4")):
        report.add(IFNAME, "unchanged", f"{len(wg.peers)} peer(s), nothing to change")
    return result


@contextmanager
def _nolock() -> Iterator[None]:
    yield


# --- status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake_age: float | None  # seconds since the last handshake; None = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int = 0


@dataclass(frozen=True)
class WgStatus:
    interface: str
    backend: str  # "kernel" or "wireguard-go"
    public_key: str | None
    listen_port: int
    mtu: int
    up: bool
    addresses: tuple[str, ...]
    peers: tuple[PeerStatus, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


def status(paths: Paths | None = None, *, now: float | None = None) -> WgStatus | None:
    """The live wg0 (None when there is none). Never includes a private or preshared key."""
    from . import link, uapi

    paths = paths or Paths()
    ipr = link.open_iproute()
    try:
        current = link.read_link(ipr, IFNAME)
    finally:
        ipr.close()
    if current is None:
        return None
    sock = paths.wg_run_dir / f"{IFNAME}.sock"
    if current.kind == "wireguard":
        backend = _Backend("kernel", paths)
    elif current.kind == "tun" and uapi.alive(sock):
        backend = _Backend("userspace", paths)
    else:
        return None
    try:
        dev = backend.read()
    finally:
        backend.close()
    now = time.time() if now is None else now
    from .uapi import format_endpoint

    peers = tuple(
        PeerStatus(
            public_key=p.public_key,
            endpoint=format_endpoint(p.endpoint) if p.endpoint else None,
            allowed_ips=tuple(str(n) for n in sorted(p.allowed_ips, key=str)),
            latest_handshake_age=max(0.0, now - p.last_handshake) if p.last_handshake else None,
            rx_bytes=p.rx_bytes,
            tx_bytes=p.tx_bytes,
            persistent_keepalive=p.persistent_keepalive,
        )
        for p in sorted(dev.peers.values(), key=lambda p: p.public_key)
    )
    pub = public_key_from_private(encode_key(dev.private_key)) if dev.private_key else None
    return WgStatus(
        interface=IFNAME,
        backend="kernel" if current.kind == "wireguard" else "wireguard-go",
        public_key=pub,
        listen_port=dev.listen_port,
        mtu=current.mtu,
        up=current.up,
        addresses=tuple(str(a.address) for a in current.addresses if a.scope == 0),
        peers=peers,
    )
