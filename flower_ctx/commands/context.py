"""``flower-ctx context check|reference``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..reference import markdown, one_apps, user_inputs
from ._common import context_option, echo_warnings, env_option, load_validated, paths_for, read_root_option, role_option


@click.group("context")
def command() -> None:
    """Check a CONTEXT, or print the reference generated from the variable registry."""


def _variables_epilog() -> str:
    from ..variables import REGISTRY

    names = ", ".join(v.name for v in REGISTRY)
    return (f"Variables (each also accepted as ONEAPP_<NAME>): {names}. "
            "Types, defaults and rules: `flower-ctx context reference` or docs/context-variables.md.")


@command.command("check", epilog=_variables_epilog())
@role_option
@context_option
@env_option
@read_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the effective values as JSON.")
def check(role: str, context_file: Path | None, use_env: bool, root: Path | None, as_json: bool) -> None:
    """Validate CONTEXT for ROLE and print each variable's effective value and where it came from.

    Secrets are masked. Exit status 0 when valid, 2 with one `NAME: message` line per problem.
    Nothing on the machine is changed.
    """
    config, src, table = load_validated(role, context_file, use_env, paths_for(root))
    if as_json:
        doc = {
            "role": role,
            "context": str(src.path) if src.path else None,
            "valid": True,
            "variables": {e.name: {"value": e.value, "source": e.source} for e in table},
            "warnings": list(config.warnings),
            "ignored": list(config.ignored),
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(f"{src.path}: valid for {role}")
    width = max(len(e.name) for e in table)
    vwidth = min(48, max(len(e.value) for e in table))
    for e in table:
        click.echo(f"  {e.name:<{width}}  {e.value:<{vwidth}}  {e.source}")
    nics = ", ".join(str(a) for n in config.nics for a in (n.ip, n.ip6) if a is not None)
    click.echo(f"  {'addresses':<{width}}  {nics or '(none in CONTEXT)'}")
    og = config.onegate
    onegate = f"{og.endpoint} (VMID {og.vmid}, token {'present' if og.token else 'missing'})" if og.endpoint else "-"
    click.echo(f"  {'OneGate':<{width}}  {onegate}")
    if config.ignored:
        click.echo(f"  {'ignored':<{width}}  {len(config.ignored)} other CONTEXT variable(s), not flower-ctx's "
                   "(--json lists them)")
    echo_warnings(config.warnings)


@command.command("reference")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "user-inputs", "one-apps"]),
    default="markdown",
    show_default=True,
    help="markdown: docs/context-variables.md; user-inputs: OpenNebula M|type|desc|params|default strings; "
    "one-apps: ONE_SERVICE_PARAMS rows.",
)
@click.option("--role", type=click.Choice(["superlink", "supernode", "gateway"]), default=None,
              help="Only this role's variables.")
def reference(fmt: str, role: str | None) -> None:
    """Print the CONTEXT variable reference generated from the registry."""
    if fmt == "markdown":
        click.echo(markdown(), nl=False)
    elif fmt == "user-inputs":
        click.echo(user_inputs(role), nl=False)
    else:
        click.echo(one_apps(role), nl=False)
