"""``flower-ctx metrics``: this VM's metrics in Prometheus' text format."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import ROLES, paths_for, read_root_option


@click.command("metrics")
@click.option("--role", type=click.Choice(ROLES), default=None, help="Role to report (default: the one configured).")
@read_root_option
def command(role: str | None, root: Path | None) -> None:
    """Print this VM's metrics in Prometheus' text format: Flower up and ready, SuperNodes registered
    and connected with their last heartbeat (SuperLink), certificate and CA expiry, WireGuard
    handshake age per peer, the last OneGate publication. The readiness watch writes the same to
    /var/lib/prometheus/node-exporter/flower_ctx.prom every 15 s for node_exporter's textfile
    collector (no port of its own: see docs/operator-guide.md).
    """
    from .. import __version__
    from ..errors import FlowerCtxError
    from ..inspect import detect_role, facts
    from ..metrics import render

    paths = paths_for(root)
    role = role or detect_role(paths)
    if role is None:
        raise FlowerCtxError(f"not configured: no runtime config under {paths.config_dir} (or pass --role)")
    f = facts(paths, role)
    og = f.get("onegate") or {}
    ready = og.get("ready") if isinstance(og, dict) and og.get("published") else None
    click.echo(render(f, ready=ready, agent_version=__version__), nl=False)
