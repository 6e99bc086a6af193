"""``flower-ctx doctor``: run every check, one line each, with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..context import load
from ..doctor import PROBLEM, WARNING, run_checks
from ..errors import EXIT_FAILED, FlowerCtxError
from ..inspect import detect_role
from ..variables import all_names
from ._common import ROLES, context_option, env_option, paths_for, read_root_option


@click.command("doctor")
@click.option("--role", type=click.Choice(ROLES), default=None, help="Role to check (default: the one configured).")
@context_option
@env_option
@read_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def command(role: str | None, context_file: Path | None, use_env: bool, root: Path | None, as_json: bool) -> None:
    """Diagnose CONTEXT, certificates, the SuperLink link (CA and SAN mismatches), WireGuard, keepalive
    and OneGate. Exit 0 when no problem was found (warnings allowed), 1 otherwise."""
    from ..config import resolve

    paths = paths_for(root)
    role = role or detect_role(paths)
    if role is None:
        raise FlowerCtxError(f"not configured: no runtime config under {paths.config_dir}; pass --role")
    config = None
    error: FlowerCtxError | None = None
    values: dict[str, str] = {}
    try:
        src = load(context_file, paths=paths, use_env=use_env, env_names=all_names())
        values = src.values
        config, _ = resolve(role, values, token=src.token, env_names=src.env_names)
    except FlowerCtxError as exc:
        error = exc
    checks = run_checks(config, error, paths, role, values)
    if as_json:
        click.echo(json.dumps({"doctor_version": 1, "role": role,
                               "checks": [c.__dict__ for c in checks],
                               "problems": sum(c.level == PROBLEM for c in checks)}, indent=2, sort_keys=True))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.level:<8} {c.name:<{width}}  {c.message}")
            if c.fix and c.level in (PROBLEM, WARNING):
                click.echo(f"{'':<8} {'':<{width}}  fix: {c.fix}")
    if any(c.level == PROBLEM for c in checks):
        raise click.exceptions.Exit(EXIT_FAILED)
