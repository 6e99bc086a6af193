"""``flower-ctx wg``: WireGuard helpers for operators."""

from __future__ import annotations

import click


@click.group(name="wg")
def command() -> None:
    """WireGuard helpers."""


@command.command()
def keygen() -> None:
    """Print a new WireGuard key pair (same format as `wg genkey | wg pubkey`).

    The private key goes to standard output only because you asked for it: paste it into
    FL_WG_PRIVATE_KEY of the VM that will own it, and the public key into its peers' CONTEXT.
    Leaving FL_WG_PRIVATE_KEY empty is safer: the VM then generates its key and never shows it
    (`flower-ctx wg key` on it prints only the public key).
    """
    from ..wireguard import generate_private_key, public_key_from_private

    private = generate_private_key()
    click.echo(f"private key  {private}  (secret: FL_WG_PRIVATE_KEY of the VM that owns it)")
    click.echo(f"public key   {public_key_from_private(private)}  (for its peers: FL_WG_PEER_PUBLIC_KEY)")


@command.command()
@click.option("--root", "root", type=click.Path(file_okay=False), default=None,
              help="Use the machine's files under DIR (a tree made by `configure --root DIR`).")
def key(root: str | None) -> None:
    """Print this VM's WireGuard public key on one line (for its peers: FL_WG_PEER_PUBLIC_KEY).

    The private key is made on the VM at the first call (or by configure with FL_WG_ENABLED=YES
    and FL_WG_PRIVATE_KEY empty), kept in /etc/wireguard/wg0.key (0600 root) across reboots and
    used by wg0 from then on; it is never printed and never leaves the VM. Run it on the hub before
    the training sites are instantiated, then enable the tunnel without FL_WG_PRIVATE_KEY.
    """
    from pathlib import Path

    from ..errors import FlowerCtxError
    from ..files import ensure_dir, exists, read_file, write_file
    from ..wireguard import generate_private_key, public_key_from_private
    from ._common import machine_lock, paths_for

    paths = paths_for(Path(root) if root else None)
    with machine_lock(paths):
        if exists(paths.wg_key):
            try:
                private = read_file(paths.wg_key).decode("ascii").strip()
                public = public_key_from_private(private)
            except (OSError, ValueError, UnicodeDecodeError, FlowerCtxError):
                # Never replace an identity the peers may already have: the operator decides.
                raise FlowerCtxError(f"{paths.wg_key} is not a usable WireGuard key; fix or delete it (every peer "
                                     "then needs the new public key)") from None
        else:
            private = generate_private_key()
            ensure_dir(paths.wg_key.parent, 0o700, owner="root", group="root")
            write_file(paths.wg_key, (private + "\n").encode(), 0o600, owner="root", group="root")
            public = public_key_from_private(private)
            click.echo(f"new WireGuard key kept in {paths.wg_key} (never printed)", err=True)
    click.echo(public)


@command.command()
@click.option("--role", type=click.Choice(["superlink", "supernode", "gateway"]), default=None,
              help="Role of this VM (default: the one configured).")
@click.option("--root", "root", type=click.Path(file_okay=False), default=None,
              help="Read the machine's files under DIR (a tree made by `configure --root DIR`).")
def peer(role: str | None, root: str | None) -> None:
    """Print the [Peer] section the hub needs for this VM: its public key and its tunnel address
    as AllowedIPs (/32 or /128). Paste it into the hub's FL_WG_PEERS (one section per VM; with a
    pool, each VM of the role has its own address). On a site gateway the zone's network (the one
    its SuperNodes are on) is added: the hub routes it back through this gateway, one peer per zone.
    Nothing secret is printed.
    """
    from pathlib import Path

    from ..errors import FlowerCtxError
    from ..inspect import detect_role
    from ._common import paths_for

    paths = paths_for(Path(root) if root else None)
    role = role or detect_role(paths)
    if role is None:
        raise FlowerCtxError("not configured: run flower-ctx configure first (or pass --role)")
    from ..files import read_file
    from ..health import runtime_doc
    from ..wireguard import public_key_from_private

    doc = runtime_doc(paths, role) or {}
    address = doc.get("wg_address")
    if not address:
        raise FlowerCtxError("WireGuard is not configured on this VM (FL_WG_ENABLED=YES, then flower-ctx configure)")
    try:
        public = public_key_from_private(read_file(paths.wg_key).decode("ascii").strip())
    except (OSError, ValueError, FlowerCtxError):
        from ..inspect import wg_status  # the key came from CONTEXT: ask the live interface

        live = wg_status(paths)
        if live is None or not live.public_key:
            raise FlowerCtxError(f"no WireGuard key at {paths.wg_key} and no live wg0 to ask") from None
        public = live.public_key
    host = address.split("/")[0]
    allowed = [f"{host}/{32 if ':' not in host else 128}"]
    if role == "gateway":
        from ..gateway.health import zone_network

        zone = zone_network(doc.get("probe_source")) if not paths.staged else None
        if zone is None:
            click.echo("# the zone's network is unknown here (no ETH0_IP in CONTEXT, or --root): add the network "
                       "of this gateway's SuperNodes to AllowedIPs", err=True)
        else:
            allowed.append(zone)
    click.echo(f"[Peer]\nPublicKey = {public}\nAllowedIPs = {', '.join(allowed)}")
