"""``flower-ctx oneflow template KIND`` and ``flower-ctx oneflow vm-template ROLE``."""

from __future__ import annotations

import json

import click

from ..oneflow import DEFAULT_SUPERNODES, DEFAULT_VERSION, KINDS, VERSIONS, build, vm_template

# Which template-id options a kind uses; giving another one is a mistake worth stopping on.
USES = {
    "coordinator": ("superlink",),
    "training-site": ("supernode",),
    "single-site": ("superlink", "supernode"),
    "training-site-gateway": ("supernode", "gateway"),
}
OPTIONAL = {"gateway"}  # defaults to the SuperNode's VM template (the gateway is a role of that image)

version_option = click.option(
    "--opennebula",
    type=click.Choice(VERSIONS),
    default=DEFAULT_VERSION,
    show_default=True,
    help="OpenNebula release the output is for: 7 (7.0 and later) or 6.10.",
)


@click.group("oneflow")
def command() -> None:
    """OneFlow service templates and role VM templates for the Flower appliances.

    Both work from the CLI (oneflow-template create/instantiate) and from Sunstone, on
    OpenNebula 7.x (--opennebula 7, the default) and 6.10 (--opennebula 6.10).
    """


@command.command("template")
@click.argument("kind", type=click.Choice(KINDS))
@version_option
@click.option("--superlink-template-id", type=click.IntRange(min=0), default=None, help="VM template of the SuperLink.")
@click.option("--supernode-template-id", type=click.IntRange(min=0), default=None, help="VM template of the SuperNode.")
@click.option("--gateway-template-id", type=click.IntRange(min=0), default=None,
              help="VM template of the site gateway (training-site-gateway; default: the SuperNode's).")
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
    opennebula: str,
    superlink_template_id: int | None,
    supernode_template_id: int | None,
    gateway_template_id: int | None,
    name: str | None,
    supernodes: int,
) -> None:
    """Print a OneFlow service template for KIND as JSON.

    \b
    coordinator            SuperLink only, one VM, TLS on (the zone that runs the federation)
    training-site          SuperNodes only; FL_SUPERLINK_ADDRESS and FL_SSL_CA_CERTFILE mandatory
    single-site            SuperLink and SuperNodes in one service; SuperNodes find it through OneGate
    training-site-gateway  a site gateway (the zone's one WireGuard tunnel) and SuperNodes behind it,
                           deployed once the gateway is READY; the hub lists one peer for the zone

    \b
    Register it with `oneflow-template create FILE`, then instantiate it with
    `oneflow-template instantiate ID` (asks every input) or Sunstone's Instantiate form.
    The inputs are service-level (user_inputs on 7, custom_attrs on 6.10): both clients
    ask them, and every VM of the service gets them. text64 inputs (a CA, peers) take
    raw PEM, its base64 or base64 twice: the CLI encodes what is typed, Sunstone does not.

    The role VM templates must carry the CONTEXT printed by `flower-ctx oneflow vm-template ROLE`
    (TOKEN=YES, REPORT_READY=YES, and each input passed as NAME="$NAME": 6.10 needs that to see
    any input in CONTEXT).
    """
    ids = {"superlink": superlink_template_id, "supernode": supernode_template_id, "gateway": gateway_template_id}
    for role, value in ids.items():
        if value is not None and role not in USES[kind]:
            raise click.UsageError(f"--{role}-template-id does not apply to {kind} (it has no {role} role)")
    for role in USES[kind]:
        if ids[role] is None and role not in OPTIONAL:
            field = "template_id" if opennebula == "7" else "vm_template"
            click.echo(f"note: --{role}-template-id not given; using {field} 0 (edit it before use)", err=True)
    doc = build(
        kind,
        superlink_template_id=superlink_template_id or 0,
        supernode_template_id=supernode_template_id or 0,
        name=name,
        supernodes=supernodes,
        opennebula=opennebula,
        gateway_template_id=gateway_template_id,
    )
    click.echo(json.dumps(doc, indent=2))


@command.command("vm-template")
@click.argument("role", type=click.Choice(["superlink", "supernode", "gateway"]))
@version_option
def vm_template_command(role: str, opennebula: str) -> None:
    """Print the CONTEXT section ROLE's VM template needs (OpenNebula template text).

    TOKEN, NETWORK and REPORT_READY set to YES, your SSH key, and NAME = "$NAME" for every
    variable a OneFlow service can ask for this role, so the answers reach the VM's CONTEXT on
    6.10 and 7.x alike (an unanswered one is empty, i.e. unset). Add it to the role's VM
    template with `onetemplate update ID FILE --append` (it replaces the template's CONTEXT). The
    output is the same for both versions apart from its comment. No secret is listed: see
    docs/appliance.md. The SuperNode image's template also serves as the site gateway of a
    training-site-gateway service (that service's gateway role says so); `gateway` prints a
    template whose VMs are always gateways (FL_APPLIANCE_ROLE = "gateway").
    """
    click.echo(vm_template(role, opennebula), nl=False)
