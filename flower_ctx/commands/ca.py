"""``flower-ctx ca export``: print the CA for another zone's ``FL_SSL_CA_CERTFILE``."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from ..errors import FlowerCtxError
from ._common import paths_for, read_root_option


class NoCaError(FlowerCtxError):
    """There is no usable CA on this machine yet (exit 1)."""


@click.group("ca")
def command() -> None:
    """The CA of this SuperLink (export) or the CA a SuperNode pinned from OneGate (forget)."""


@command.command("export")
@read_root_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["base64", "pem"]),
    default="base64",
    show_default=True,
    help="base64: one line to paste into FL_SSL_CA_CERTFILE; pem: the certificate as is.",
)
def export(root: Path | None, fmt: str) -> None:
    """Print the CA certificate (stdout) and its sha256 fingerprint (stderr).

    Paste the base64 line into FL_SSL_CA_CERTFILE of the SuperNodes in other zones, and compare the
    fingerprint with FL_CA_FINGERPRINT or `flower-ctx status` on the SuperLink.
    """
    from .. import pem
    from ..files import read_file

    path = paths_for(root).ca_cert
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise NoCaError(
            f"no CA yet: {path} does not exist; run `flower-ctx configure --role superlink` with "
            "FL_TLS_ENABLED=YES first"
        ) from None
    except OSError as exc:
        raise NoCaError(f"cannot read {path}: {exc.strerror}") from None
    except FlowerCtxError as exc:
        raise NoCaError(str(exc)) from None
    try:
        certs = pem.load_certs(data)
    except pem.PemError as exc:
        raise NoCaError(f"{path} {exc}") from None
    if not pem.is_ca(certs[0]):
        raise NoCaError(f"{path} is not a CA certificate (no basicConstraints CA:TRUE)")
    if fmt == "pem":
        click.echo(data.decode("ascii"), nl=False)
    else:
        click.echo(base64.b64encode(data).decode("ascii"))
    click.echo(f"CA fingerprint: {pem.fingerprint(certs[0])}", err=True)


@command.command("forget")
@read_root_option
def forget(root: Path | None) -> None:
    """SuperNode: forget the CA pinned from OneGate, so the next discovery trusts (and pins) the CA
    the SuperLink of this service publishes now. Only for a SuperLink that really got a new CA:
    a different CA published in OneGate is refused until you run this (or set FL_SSL_CA_CERTFILE),
    because any VM of the service can rewrite the SuperLink's attributes. Compare the new
    fingerprint with `flower-ctx status` on the SuperLink first.
    """
    from .. import pem
    from ..boot import PIN, pinned_ca
    from ..files import read_file, unlink

    paths = paths_for(root)
    pin = pinned_ca(paths)
    if pin is None:
        click.echo("no CA pinned from OneGate on this VM: nothing to forget")
        return
    try:
        installed = pem.fingerprint(pem.load_certs(read_file(paths.ca_cert))[0])
    except (OSError, FlowerCtxError):
        installed = None
    if installed == pin.get("fingerprint"):
        unlink(paths.ca_cert)  # the next bootstrap (or the watch) discovers and installs the new one
    unlink(paths.agent_dir / PIN)
    click.echo(f"forgot the pinned CA {pin.get('fingerprint')}; run `flower-ctx bootstrap --role supernode` to "
               "discover the SuperLink's CA again")
