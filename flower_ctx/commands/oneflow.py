"""``flower-ctx oneflow template coordinator|training-site|single-site``."""

from __future__ import annotations

import json

import click

from ..oneflow import DEFAULT_SUPERNODES, KINDS, build

# Which template-id options a kind uses; giving another one is a mistake worth stopping on.
USES = {
    "coordinator": ("superlink",),
    "training-site": ("supernode",),
    "single-site": ("superlink", "supernode"),
}


@click.group("oneflow")
def command() -> None:
    """OneFlow service templates for the Flower appliances."""


@command.command("template")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--superlink-template-id", type=click.IntRange(min=0), default=None, help="VM template of the SuperLink.")
@click.option("--supernode-template-id", type=click.IntRange(min=0), default=None, help="VM template of the SuperNode.")
@click.option("--name", default=None, help="Service template name (default: flower-KIND).")
@click.option(
    "--supernodes",
    type=click.IntRange(min=1),
    default=DEFAULT_SUPERNODES,
    show_default=True,
    help="Initial number of SuperNode VMs.",
)
def template(
    kind: str,
    superlink_template_id: int | None,
    supernode_template_id: int | None,
    name: str | None,
    supernodes: int,
) -> None:
    """Print a OneFlow 7.x service template for KIND as JSON.

    \b
    coordinator    SuperLink only, one VM, TLS on (the zone that runs the federation)
    training-site  SuperNodes only; FL_SUPERLINK_ADDRESS and FL_SSL_CA_CERTFILE mandatory
    single-site    SuperLink and SuperNodes in one service; SuperNodes find it through OneGate

    Register it with `oneflow-template create FILE`. The role VM templates must set CONTEXT
    TOKEN=YES and REPORT_READY=YES.
    """
    ids = {"superlink": superlink_template_id, "supernode": supernode_template_id}
    for role, value in ids.items():
        if value is not None and role not in USES[kind]:
            raise click.UsageError(f"--{role}-template-id does not apply to {kind} (it has no {role} role)")
    for role in USES[kind]:
        if ids[role] is None:
            click.echo(f"note: --{role}-template-id not given; using template_id 0 (edit it before use)", err=True)
    doc = build(
        kind,
        superlink_template_id=superlink_template_id or 0,
        supernode_template_id=supernode_template_id or 0,
        name=name,
        supernodes=supernodes,
    )
    click.echo(json.dumps(doc, indent=2))
