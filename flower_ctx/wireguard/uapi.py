"""wireguard-go backend: the cross-platform UAPI text protocol over ``/run/wireguard/<if>.sock``.

Protocol facts (research/wireguard.md section 2): ``get=1`` returns ``key=value`` lines, device keys
first, each ``public_key=`` starting a peer; ``set=1`` applies lines in order and stops at the first
error; errno is sent negative by wireguard-go. A ``listen_port`` line always rebinds the UDP socket
and ``replace_peers`` drops every session, so the renderer emits neither unless needed (the latter
never).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..errors import ApplyError
from .keys import encode_key
from .reconcile import DevicePlan, DeviceState, Endpoint, PeerState, parse_network

EADDRINUSE = 98
ZERO_KEY = "0" * 64


class UapiError(ApplyError):
    def __init__(self, errno: int, what: str) -> None:
        self.errno = abs(errno)
        super().__init__(f"wireguard-go refused {what}: {os.strerror(self.errno)} (errno {self.errno})")


def _exchange(sock_path: Path, request: str, timeout: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(request.encode("ascii"))
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            # A response ends with an empty line after errno=N.
            if b"".join(chunks[-2:]).endswith(b"\n\n"):
                break
    return b"".join(chunks).decode("ascii", "replace")


def _errno(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("errno="):
            return int(line.split("=", 1)[1])
    raise ApplyError("wireguard-go sent a reply without errno")


def alive(sock_path: Path) -> bool:
    """True when a wireguard-go answers on the socket (a stale socket after a crash refuses)."""
    try:
        return _errno(_exchange(sock_path, "get=1\n\n", timeout=2.0)) == 0
    except (OSError, ApplyError, ValueError):
        return False


def parse_endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    import ipaddress

    return (ipaddress.ip_address(host).compressed, int(port))


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_get(text: str) -> DeviceState:
    """Turn a ``get=1`` reply into a DeviceState (keys converted from hex to base64)."""
    private_key: bytes | None = None
    listen_port = 0
    peers: dict[str, PeerState] = {}
    cur: dict | None = None

    def flush() -> None:
        if cur is not None:
            hs = cur["hs_sec"] + cur["hs_nsec"] / 1e9
            peers[cur["public_key"]] = PeerState(
                public_key=cur["public_key"],
                endpoint=cur["endpoint"],
                persistent_keepalive=cur["keepalive"],
                allowed_ips=frozenset(cur["allowed"]),
                preshared_key=cur["psk"],
                last_handshake=hs if hs > 0 else None,
                rx_bytes=cur["rx"],
                tx_bytes=cur["tx"],
            )

    for line in text.splitlines():
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key == "errno":
            if int(value) != 0:
                raise UapiError(int(value), "get")
            continue
        if key == "public_key":
            flush()
            cur = {
                "public_key": encode_key(bytes.fromhex(value)),
                "endpoint": None,
                "keepalive": 0,
                "allowed": [],
                "psk": None,
                "hs_sec": 0,
                "hs_nsec": 0,
                "rx": 0,
                "tx": 0,
            }
            continue
        if cur is None:
            if key == "private_key":
                private_key = None if value == ZERO_KEY else bytes.fromhex(value)
            elif key == "listen_port":
                listen_port = int(value)
            continue
        if key == "endpoint":
            cur["endpoint"] = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            cur["keepalive"] = int(value)
        elif key == "allowed_ip":
            cur["allowed"].append(parse_network(value))
        elif key == "preshared_key":
            cur["psk"] = None if value == ZERO_KEY else bytes.fromhex(value)
        elif key == "last_handshake_time_sec":
            cur["hs_sec"] = int(value)
        elif key == "last_handshake_time_nsec":
            cur["hs_nsec"] = int(value)
        elif key == "rx_bytes":
            cur["rx"] = int(value)
        elif key == "tx_bytes":
            cur["tx"] = int(value)
    flush()
    return DeviceState(private_key=private_key, listen_port=listen_port, peers=peers)


def render_set(plan: DevicePlan) -> str:
    """The ``set=1`` request for a plan. Empty string for an empty plan (nothing is sent)."""
    if plan.empty:
        return ""
    lines = ["set=1"]
    if plan.private_key is not None:
        lines.append(f"private_key={plan.private_key.hex()}")
    if plan.listen_port is not None:
        lines.append(f"listen_port={plan.listen_port}")
    for p in plan.peers:
        lines.append(f"public_key={_hex(p.public_key)}")
        if p.action == "remove":
            lines.append("remove=true")
            continue
        if p.action == "update":
            lines.append("update_only=true")
        if p.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(p.endpoint)}")
        if p.set_preshared_key:
            lines.append(f"preshared_key={p.preshared_key.hex() if p.preshared_key else ZERO_KEY}")
        if p.allowed_ips is not None:
            # No allowed_ip=-CIDR in Debian's wireguard-go 0.0.20220316: replace this peer's list.
            lines.append("replace_allowed_ips=true")
            lines.extend(f"allowed_ip={net}" for net in p.allowed_ips)
        if p.persistent_keepalive is not None:
            # Last: turning keepalive on sends a packet at once, which should go to the new endpoint.
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
    return "\n".join(lines) + "\n\n"


def _hex(b64: str) -> str:
    from .keys import to_hex

    return to_hex(b64)


def get(sock_path: Path) -> DeviceState:
    try:
        return parse_get(_exchange(sock_path, "get=1\n\n"))
    except OSError as exc:
        raise ApplyError(f"cannot talk to wireguard-go at {sock_path}: {exc.strerror or exc}") from exc


def set_(sock_path: Path, plan: DevicePlan) -> None:
    request = render_set(plan)
    if not request:
        return
    try:
        reply = _exchange(sock_path, request)
    except OSError as exc:
        raise ApplyError(f"cannot talk to wireguard-go at {sock_path}: {exc.strerror or exc}") from exc
    code = _errno(reply)
    if code != 0:
        raise UapiError(code, "the configuration")


def _under_systemd() -> bool:
    """True on a real VM with systemd: wireguard-go then runs as its own transient unit.

    Started from the configure unit it would otherwise die with that unit's cgroup. Only when this
    process shares PID 1's network namespace (a simulated VM inside a namespace has no systemd).
    """
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemd-run") is None:
        return False
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return False


def spawn(ifname: str, sock_path: Path, timeout: float = 10.0) -> None:
    """Start wireguard-go for ``ifname`` and wait until its socket answers."""
    binary = shutil.which("wireguard-go")
    if binary is None:
        raise ApplyError(
            "the kernel has no WireGuard module and wireguard-go is not installed (apt-get install wireguard-go)"
        )
    # No secrets ever reach wireguard-go's environment or command line; LOG_LEVEL is dropped
    # because a chatty daemon keeps our pipes open (research pitfall 7).
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if _under_systemd():
        cmd = ["systemd-run", "--quiet", "--collect", f"--unit=flower-ctx-wireguard-go-{ifname}", binary, "-f", ifname]
    else:
        cmd = [binary, ifname]
    proc = subprocess.run(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        start_new_session=True,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ApplyError(f"wireguard-go {ifname} failed to start: {err[-1] if err else proc.returncode}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive(sock_path):
            return
        time.sleep(0.02)
    raise ApplyError(f"wireguard-go {ifname} started but {sock_path} does not answer")


def daemon_pids(ifname: str) -> list[int]:
    """PIDs of wireguard-go serving ``ifname`` in this network namespace (for status and tests)."""
    try:
        my_net = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return []
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not argv or not argv[0].endswith(b"wireguard-go") or ifname.encode() not in argv[1:]:
                continue
            if os.stat(entry / "ns" / "net").st_ino == my_net:
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)
