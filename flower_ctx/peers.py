"""Parse wg-quick ``[Peer]`` sections (the decoded FL_WG_PEERS) into ``WgPeer`` values. Pure."""

from __future__ import annotations

from .model import Secret, WgPeer
from .values import Invalid, host_port, integer, network_cidr, show, wg_key

KNOWN_KEYS = ("PublicKey", "Endpoint", "AllowedIPs", "PersistentKeepalive", "PresharedKey")
MAX_PEERS = 256  # a hub with a peer per site and gateway; keeps the pairwise overlap check small
MAX_ALLOWED_IPS = 64  # per peer


def parse_peer_sections(text: str, default_keepalive: int) -> tuple[list[WgPeer], list[str]]:
    """Return the peers and a list of problems (``section N: ...``); never raises for bad input."""
    problems: list[str] = []
    sections: list[tuple[int, int, list[tuple[int, str, str]]]] = []  # (number, line, entries)
    current: list[tuple[int, str, str]] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(";"):
            continue
        if line.startswith("["):
            if line.lower() != "[peer]":
                found = show(line[:40].split("=")[0])
                problems.append(f"line {lineno}: only [Peer] sections belong here, found {found}")
                current = None
                continue
            current = []
            sections.append((len(sections) + 1, lineno, current))
            continue
        if current is None:
            # Only the key name is echoed: the value may be a private key ([Interface] pasted in).
            problems.append(f"line {lineno}: {show(line.partition('=')[0].strip())} is outside a [Peer] section")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            # The line is not echoed: it may hold a key.
            problems.append(f"section {len(sections)} line {lineno}: expected Key = Value (no '=' found)")
            continue
        current.append((lineno, key.strip(), value.strip()))
    if not sections and not problems:
        problems.append("contains no [Peer] section")
    if len(sections) > MAX_PEERS:
        return [], [f"has {len(sections)} [Peer] sections; at most {MAX_PEERS} are supported"]
    peers: list[WgPeer] = []
    for number, _, entries in sections:
        peer, errs = _peer(number, entries, default_keepalive)
        problems.extend(errs)
        if peer is not None:
            peers.append(peer)
    return peers, problems


def _peer(number: int, entries: list[tuple[int, str, str]], default_keepalive: int) -> tuple[WgPeer | None, list[str]]:
    where = f"section {number}"
    errs: list[str] = []
    seen: dict[str, str] = {}
    for lineno, key, value in entries:
        canon = next((k for k in KNOWN_KEYS if key.isascii() and k.lower() == key.lower()), None)
        if canon is None:
            errs.append(f"{where} line {lineno}: unknown key {show(key)} (allowed: {', '.join(KNOWN_KEYS)})")
            continue
        if canon in seen and canon != "AllowedIPs":
            errs.append(f"{where} line {lineno}: {canon} is given twice")
            continue
        # wg-quick allows AllowedIPs on several lines: they add up.
        seen[canon] = f"{seen[canon]},{value}" if canon in seen else value
    public_key = endpoint = preshared = None
    allowed = []
    keepalive = default_keepalive
    if "PublicKey" not in seen:
        errs.append(f"{where}: PublicKey is missing")
    else:
        try:
            public_key = wg_key(seen["PublicKey"])
        except Invalid as exc:
            errs.append(f"{where}: PublicKey {exc}")
    if "Endpoint" in seen:
        try:
            endpoint = host_port(seen["Endpoint"])
        except Invalid as exc:
            errs.append(f"{where}: Endpoint {exc}")
    if "AllowedIPs" not in seen or not seen["AllowedIPs"].strip(", "):
        errs.append(f"{where}: AllowedIPs is missing (e.g. AllowedIPs = 10.10.9.0/24)")
    else:
        if seen["AllowedIPs"].count(",") >= MAX_ALLOWED_IPS:
            errs.append(f"{where}: AllowedIPs has more than {MAX_ALLOWED_IPS} entries")
            return None, errs
        for item in seen["AllowedIPs"].split(","):
            if not item.strip():
                continue
            try:
                allowed.append(network_cidr(item))
            except Invalid as exc:
                errs.append(f"{where}: AllowedIPs {exc}")
    if "PersistentKeepalive" in seen:
        v = seen["PersistentKeepalive"]
        if v.lower() == "off":
            keepalive = 0
        else:
            try:
                keepalive = integer(v, 0, 65535)
            except Invalid as exc:
                errs.append(f"{where}: PersistentKeepalive {exc}")
    if "PresharedKey" in seen:
        try:
            preshared = wg_key(seen["PresharedKey"])
        except Invalid as exc:
            errs.append(f"{where}: PresharedKey {str(exc)}")
    if errs or public_key is None:
        return None, errs
    return (
        WgPeer(
            public_key=public_key,
            allowed_ips=tuple(allowed),
            endpoint=endpoint,
            persistent_keepalive=keepalive,
            preshared_key=Secret(preshared.encode()) if preshared else None,
            source=f"FL_WG_PEERS {where}",
        ),
        [],
    )
