"""``/etc/wireguard/wg0.conf`` in wg-quick syntax, for operators' tools (``wg-quick``, ``wg``).

wg-quick has no "PrivateKeyFile" key and ``wg setconf`` needs the key inline, so the key is applied
by a ``PostUp = wg set %i private-key <file>`` line instead: ``wg-quick up wg0`` then produces the
same tunnel, while the secret lives only in the 0600 key file. Preshared keys are handled the same
way, one 0600 file per peer. No ``SaveConfig``: ``wg-quick save`` would write the key inline.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..model import WgConfig, WgPeer
from .keys import to_hex

HEADER = (
    "# Written by flower-ctx from this VM's CONTEXT (FL_WG_*); edits are replaced at the next boot.\n"
    "# The private key is not inline: PostUp loads it from the key file (wg-quick has no key-file\n"
    "# option), so `wg-quick up wg0` works and the secret stays in one 0600 file.\n"
)


def psk_name(peer: WgPeer) -> str:
    """File name of a peer's preshared key: stable per peer, derived from its public key."""
    return f"wg0-{to_hex(peer.public_key)[:16]}.psk"


def render(wg: WgConfig, key_path: PurePosixPath, wg_dir: PurePosixPath) -> str:
    """The wg0.conf text. ``key_path``/``wg_dir`` are the on-VM paths (not a staging root)."""
    lines = [
        HEADER,
        "[Interface]",
        f"Address = {wg.address}",
        f"ListenPort = {wg.listen_port}",
        f"MTU = {wg.mtu}" if wg.mtu is not None else
        "# No MTU line: FL_WG_MTU is 0, so the MTU is derived from the underlay (the route to the peers'\n"
        "# endpoints, else the default route, minus 80), as wg-quick derives it too.",
        f"PostUp = wg set %i private-key {key_path}",
    ]
    for peer in wg.peers:
        if peer.preshared_key is not None:
            lines.append(f"PostUp = wg set %i peer {peer.public_key} preshared-key {wg_dir / psk_name(peer)}")
    for peer in wg.peers:
        lines.append("")
        lines.append("[Peer]")
        if peer.source:
            lines.append(f"# from {peer.source}")
        lines.append(f"PublicKey = {peer.public_key}")
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {peer.endpoint}")
        lines.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"
