"""``flower-ctx renew``: the daily certificate check (flower-ctx-renew.timer runs it)."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import context_option, echo_warnings, load_validated, machine_lock, paths_for, role_option, root_option


@click.command("renew")
@role_option
@context_option
@root_option
@click.option("--dry-run", is_flag=True, help="Say what would be renewed; exit 1 when something would.")
def command(role: str, context_file: Path | None, root: Path | None, dry_run: bool) -> None:
    """Renew the SuperLink's server certificate when it is within 30 days of expiry (or its SANs
    changed), under the same CA, and warn about a CA in its last year. The running Flower takes the
    new certificate for new TLS handshakes without a restart. Run daily by flower-ctx-renew.timer
    (by the readiness watch where systemd does not run); `flower-ctx configure` does the same.
    """
    from .. import identity, tls
    from ..errors import EXIT_FAILED

    paths = paths_for(root)
    config, _src, _table = load_validated(role, context_file, False, paths)
    config, _ = identity.apply(config, paths, ask_onegate=False)
    if dry_run:
        result = tls.apply(config, paths, dry_run=True)
    else:
        with machine_lock(paths):
            result = tls.apply(config, paths)
    changed = [c for c in result.changes if c.pending]
    for c in changed:
        click.echo(f"  {c.outcome:<13} {c.what}  {c.detail}".rstrip())
    click.echo(f"renew: {len(changed)} change(s){' pending' if dry_run else ''}" if changed else "renew: nothing due")
    echo_warnings(list(result.warnings))
    if dry_run and changed:
        raise click.exceptions.Exit(EXIT_FAILED)
