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
    Leaving FL_WG_PRIVATE_KEY empty is safer: the VM then generates its key and never shows it.
    """
    from ..wireguard import generate_private_key, public_key_from_private

    private = generate_private_key()
    click.echo(f"private key  {private}  (secret: FL_WG_PRIVATE_KEY of the VM that owns it)")
    click.echo(f"public key   {public_key_from_private(private)}  (for its peers: FL_WG_PEER_PUBLIC_KEY)")
