"""``flower-ctx node key``: this SuperNode's public key, for FL_SUPERNODE_PUBLIC_KEYS on the SuperLink."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import NonEmptyPath, paths_for


@click.group("node")
def command() -> None:
    """This SuperNode's identity (the key the SuperLink admits)."""


@command.command("key")
@click.option("--root", "root", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Read (or, with --new, write) the key under DIR (a tree made by `configure --root DIR`).")
@click.option("--new", "new", is_flag=True,
              help="Replace the key pair with a new one (after this SuperNode was removed from a SuperLink: "
                   "Flower never admits a key again once it was unregistered). Restart with `flower-ctx bootstrap`.")
def key(root: Path | None, new: bool) -> None:
    """Print this SuperNode's public key on one line (ecdsa-sha2-nistp384 AAAA...).

    Paste it into FL_SUPERNODE_PUBLIC_KEYS of the SuperLink in another zone (one key per line); in
    the SuperLink's own OneFlow service it is admitted from OneGate (FL_NODE_PUBLIC_KEY). The key
    pair is made by `flower-ctx configure` on a SuperNode with TLS; the private key never leaves
    the VM and is never printed.
    """
    from ..admission import node_public_key
    from ..admission.keys import generate
    from ..errors import FlowerCtxError
    from ..files import ensure_dir, write_file

    paths = paths_for(root)
    if new:
        private, public = generate()
        ensure_dir(paths.certs_dir, 0o755, owner="root", group="root")
        write_file(paths.node_key, private, 0o600, owner="flower", group="flower")
        click.echo("new key pair written; admit the key below on the SuperLink, then run flower-ctx bootstrap",
                   err=True)
        click.echo(public.line)
        return
    public = node_public_key(paths)
    if public is None:
        raise FlowerCtxError(f"no SuperNode key at {paths.node_key}: run `flower-ctx configure --role supernode` "
                             "(with FL_TLS_ENABLED=YES) first")
    click.echo(public.line)
