"""Options and loading shared by the subcommands (declared once, as pip-tools does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import Effective, resolve
from ..context import ContextSource, load
from ..lock import MachineBusy, machine_lock  # noqa: F401 - the commands' lock
from ..model import Config
from ..paths import Paths
from ..variables import all_names

ROLES = ("superlink", "supernode", "gateway")

class NonEmptyPath(click.Path):
    """A path option that refuses the empty string: ``--root ''`` is an unset shell variable, not
    the current directory."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("must not be empty (an unset shell variable?); give a path or leave the option out",
                      param, ctx)
        return super().convert(value, param, ctx)


role_option = click.option(
    "--role", "role", type=click.Choice(ROLES), required=True,
    help="Which role this VM plays: a Flower superlink or supernode, or its zone's site gateway.",
)
context_option = click.option(
    "--context",
    "context_file",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="context.sh to read. Default: the newest of /var/run/one-context/context.sh.network, .online, .local "
    "(under --root DIR when given).",
)
env_option = click.option(
    "--env",
    "use_env",
    is_flag=True,
    help="Let process environment variables of the same names override CONTEXT (the one-apps hook uses this).",
)
root_option = click.option(
    "--root",
    "root",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="Staging root: read and write every file under DIR and skip system effects (links, units, OneGate).",
)
read_root_option = click.option(
    "--root",
    "root",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="Read the machine's files under DIR (a tree made by `configure --root DIR`). Changes nothing.",
)


def paths_for(root: Path | None) -> Paths:
    return Paths(root.resolve()) if root is not None else Paths()


def load_source(context_file: Path | None, use_env: bool, paths: Paths) -> ContextSource:
    """Find and parse CONTEXT (ContextError, exit 2)."""
    return load(context_file, paths=paths, use_env=use_env, env_names=all_names())


def load_validated(
    role: str, context_file: Path | None, use_env: bool, paths: Paths
) -> tuple[Config, ContextSource, list[Effective]]:
    """Read CONTEXT and validate it; raises ContextError / ValidationError (exit 2)."""
    import functools

    from ..cdrom import read

    src = load_source(context_file, use_env, paths)
    config, table = resolve(role, src.values, token=src.token, env_names=src.env_names,
                            files=functools.partial(read, may_mount=not paths.staged))
    return config, src, table


def echo_warnings(warnings: Any) -> None:
    for w in dict.fromkeys(warnings):  # de-duplicated, in order
        click.echo(f"warning: {w}", err=True)
