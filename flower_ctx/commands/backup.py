"""``flower-ctx backup FILE`` and ``flower-ctx restore FILE``: a VM's identity across a lost disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ._common import ROLES, NonEmptyPath, machine_lock, paths_for

passphrase_option = click.option(
    "--passphrase-file", "passphrase_file", type=NonEmptyPath(dir_okay=False, exists=True, path_type=Path),
    default=None, help="Encrypt (backup) or decrypt (restore) with the passphrase in this file (first line). "
    "Never asked interactively.")
root_opt = click.option("--root", "root", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
                        help="Work on the tree under DIR (a tree made by `configure --root DIR`).")


def _passphrase(path: Path | None) -> bytes | None:
    from ..errors import FlowerCtxError
    from ..files import read_file

    if path is None:
        return None
    try:
        text = read_file(path.resolve(), limit=4096).split(b"\n", 1)[0].strip()
    except (OSError, FlowerCtxError) as exc:
        raise click.BadParameter(f"cannot read it ({exc})", param_hint="--passphrase-file") from None
    if len(text) < 12:
        raise click.BadParameter("the passphrase must be at least 12 characters", param_hint="--passphrase-file")
    return text


def _role_and_database(paths, role: str | None) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    from ..errors import FlowerCtxError
    from ..health import runtime_doc
    from ..inspect import detect_role

    role = role or detect_role(paths)
    if role is None:
        raise FlowerCtxError(f"not configured: no runtime config under {paths.config_dir} (or pass --role)")
    doc = runtime_doc(paths, role) or {}
    return role, doc.get("database")


@click.command("backup")
@click.argument("file", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option("--role", type=click.Choice(ROLES), default=None, help="Role (default: the one configured).")
@root_opt
@passphrase_option
def backup(file: Path, role: str | None, root: Path | None, passphrase_file: Path | None) -> None:
    """Write this VM's identity to FILE (mode 0600): a SuperLink's CA and key, WireGuard key, admitted
    SuperNodes and Flower's state database (a consistent copy, taken while Flower runs); a
    SuperNode's node key, WireGuard key and pinned CA. With --passphrase-file the file is encrypted
    (AES-256-GCM, key from scrypt). Keep it off the VM: it holds private keys.
    """
    from .. import backup as bk
    from ..files import write_file

    paths = paths_for(root)
    role, database = _role_and_database(paths, role)
    secret = _passphrase(passphrase_file)
    files = bk.collect(role, paths, database)
    data = bk.pack(role, files, secret)
    target = file.resolve()
    write_file(target, data, 0o600)
    click.echo(f"backup: {len(files)} file(s) of this {role} ({', '.join(sorted(files))}) written to {target}"
               f"{' (encrypted)' if secret else ' (not encrypted: it holds private keys)'}")


@click.command("restore")
@click.argument("file", type=NonEmptyPath(dir_okay=False, exists=True, path_type=Path))
@root_opt
@passphrase_option
@click.option("--no-start", is_flag=True, help="Only write the files; do not run configure and bootstrap.")
def restore(file: Path, root: Path | None, passphrase_file: Path | None, no_start: bool) -> None:
    """Put the identity saved by `flower-ctx backup` back on this VM (a rebuilt one): Flower is
    stopped, every file is checked before any is written, then written with its usual mode and
    owner; then `configure` and `bootstrap` run for the role (skipped with --root or --no-start).
    A SuperLink restored this way keeps its CA fingerprint and its SuperNode registrations: the
    other zones need no change.
    """
    from .. import backup as bk
    from ..files import ensure_dir, read_file, unlink, write_file
    from ..supervisor import for_machine, watch_service

    paths = paths_for(root)
    try:
        data = read_file(file.resolve(), limit=bk.MAX_BACKUP)
    except OSError as exc:
        raise bk.BackupError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    meta, files = bk.unpack(data, _passphrase(passphrase_file))
    role = meta["role"]
    database = None
    from ..health import runtime_doc

    doc = runtime_doc(paths, role) or {}
    database = doc.get("database") or str(paths.state_dir / "state.db")
    bk.check(role, files, paths)
    sup = for_machine(paths)
    with machine_lock(paths):
        if not paths.staged:
            for service in (watch_service(role), role):
                sup.stop(service)  # the database and keys change under it
        for item in bk.items(role, paths, database):
            if item.name not in files:
                continue
            target = bk.target_of(item, paths)
            ensure_dir(target.parent, 0o700 if item.owner == "flower" else (0o700 if "/etc/" in item.path else 0o755),
                       owner=item.owner, group=item.owner)
            write_file(target, files[item.name], item.mode, owner=item.owner, group=item.owner)
            if item.kind == "sqlite":
                for extra in ("-wal", "-shm"):  # a journal of the database replaced would corrupt it
                    unlink(Path(str(target) + extra))
            click.echo(f"  restored  {item.path}")
    click.echo(f"restore: {len(files)} file(s) of a {role} from {file} (backup of "
               f"{__import__('time').strftime('%Y-%m-%d %H:%M', __import__('time').gmtime(meta.get('time', 0)))} UTC)")
    if paths.staged or no_start:
        click.echo(f"restore: now run `flower-ctx configure --role {role}` and `flower-ctx bootstrap --role {role}`")
        return
    for step in ("configure", "bootstrap"):
        out = subprocess.run([sys.executable, "-m", "flower_ctx", step, "--role", role], check=False)
        if out.returncode != 0:
            raise click.exceptions.Exit(out.returncode)
