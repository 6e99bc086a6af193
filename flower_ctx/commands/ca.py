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
    for extra in certs[1:]:  # a rotation's bundle: the next (or the previous) CA rides along
        click.echo(f"also trusted (rotation): {pem.fingerprint(extra)}", err=True)


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


@command.command("rotate")
@click.option("--finish", is_flag=True, help="Switch to the next CA (once every SuperNode online trusts it).")
@click.option("--drop-old", "drop_old", is_flag=True, help="After a finished rotation: drop the previous CA from the "
              "trust bundle.")
@click.option("--force", is_flag=True, help="With --finish: switch even though some SuperNodes online do not trust "
              "the next CA yet (they lose the connection until they do).")
@click.option("--context", "context_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="context.sh (default: the VM's; --finish re-issues the server certificate from it).")
@click.option("--root", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work on the tree under DIR (a tree made by `configure --root DIR`).")
def rotate(finish: bool, drop_old: bool, force: bool, context_file: Path | None, root: Path | None) -> None:
    """Rotate the SuperLink's generated CA while the federation runs, in three steps.

    \b
    flower-ctx ca rotate            make the next CA; publish the bundle (current + next):
                                    SuperNodes of this service take it from OneGate, those of
                                    other zones through FL_SSL_CA_CERTFILE = `ca export`
    flower-ctx ca rotate --finish   once `status` shows every SuperNode trusts the next CA:
                                    it becomes the CA, the server certificate is re-issued and
                                    served without a restart
    flower-ctx ca rotate --drop-old later, drop the previous CA from the bundle
    """
    from .. import rotation, tls
    from ..lock import machine_lock
    from ._common import load_validated

    paths = paths_for(root)
    if finish and drop_old:
        raise click.UsageError("--finish and --drop-old are separate steps")
    with machine_lock(paths):
        if drop_old:
            click.echo(f"dropped the previous CA {rotation.drop_old(paths)} from the bundle")
            return
        if not finish:
            fp = rotation.start(paths)
            click.echo(f"next CA {fp} made; the bundle (current + next) is published (`flower-ctx ca export` "
                       "prints it). SuperNodes of this service take it from OneGate; set it as FL_SSL_CA_CERTFILE "
                       "in the other zones. Then: flower-ctx ca rotate --finish")
            return
        st = rotation.state(paths) or {}
        from ..admission.control import ControlClient, ControlError
        from ..health import runtime_doc

        doc = runtime_doc(paths, "superlink") or {}
        http = doc.get("http_api") or {}
        try:
            nodes = ControlClient(str(http.get("host", "127.0.0.1")), int(http.get("port", 8000)),
                                  read_file_or_none(paths.ca_cert), timeout=5.0).list_nodes()
        except ControlError as exc:
            if not force:
                raise FlowerCtxError(f"cannot list the SuperNodes to check their trust ({exc}); "
                                     "start Flower (flower-ctx bootstrap) or use --force") from None
            nodes = []
        behind = rotation.laggards(paths, str(st.get("next", "")), nodes)
        if behind and not force:
            lines = [f"  {b.name or '-'} (node {b.node_id}): trusts "
                     f"{', '.join(b.trusts) if b.trusts else 'nothing announced recently'}" for b in behind]
            raise FlowerCtxError(f"{len(behind)} SuperNode(s) online do not trust the next CA {st.get('next')} yet:\n"
                                 + "\n".join(lines)
                                 + "\ngive them the bundle (`flower-ctx ca export` into FL_SSL_CA_CERTFILE), then run "
                                   "this again (or --force)")
        new, previous = rotation.finish(paths)
        config, _src, _table = load_validated("superlink", context_file, False, paths)
        result = tls.apply(config, paths)
        reissued = any(c.pending for c in result.changes if c.what.endswith("server.pem"))
        click.echo(f"the CA is now {new} (previous {previous} stays in the bundle until --drop-old); "
                   f"server certificate {'re-issued under it and served without a restart' if reissued else 'kept'}")


def read_file_or_none(path: Path) -> bytes | None:
    from ..files import read_file

    try:
        return read_file(path)
    except (OSError, FlowerCtxError):
        return None
