"""``flower-ctx watch``: keep this VM's readiness in OneGate current (the watch unit runs it)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ._common import ROLES, context_option, paths_for, read_root_option


@click.command("watch")
@click.option("--role", type=click.Choice(ROLES), required=True, help="The Flower role of this VM.")
@context_option
@read_root_option
@click.option("--interval", type=click.FloatRange(1, 3600), default=5.0, show_default=True,
              help="Seconds between checks.")
@click.option("--once", is_flag=True, help="One check and publication, then exit (0 ready, 1 not).")
def command(role: str, context_file: Path | None, root: Path | None, interval: float, once: bool) -> None:
    """Re-check this VM's health every INTERVAL seconds and publish FL_READY, FL_ERROR and READY to
    OneGate whenever the answer changes (and every 30 s, so a READY set by anything else while the
    VM is not ready is withdrawn). Reads the CONTEXT anew at each check, so a bad CONTEXT is
    reported as such. A SuperNode still waiting for its SuperLink keeps discovering it here and
    starts Flower when it is found.

    Runs as the unit flower-ctx-watch@ROLE (started by `flower-ctx bootstrap`; a unit of its own,
    so it outlives the one-apps reconfigure step). An outage shows in OneGate within about
    INTERVAL + 3 s (the probe) + one OneGate call.
    """
    from ..watch import Watch

    logging.getLogger("flower_ctx").setLevel(logging.INFO)
    w = Watch(role, paths_for(root), context_file, interval, say=lambda m: click.echo(f"watch: {m}"))
    if once:
        w.tick()
        health, _, _ = w.check_once()
        raise click.exceptions.Exit(0 if health.ok else 1)
    w.run()
