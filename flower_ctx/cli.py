"""The ``flower-ctx`` command.

Subcommands live in ``flower_ctx.commands.<name>`` and are imported only when they run (or when
their own ``--help`` is asked for), so ``flower-ctx --help`` never imports grpc, cryptography,
pyroute2 or requests.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

import click

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_FAILED, FlowerCtxError, ValidationError

# name -> (module[:attribute], one-line help; the attribute defaults to ``command``). The help is here
# so the top-level --help needs no imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "configure": ("flower_ctx.commands.configure", "Validate CONTEXT and make this VM match it."),
    "bootstrap": ("flower_ctx.commands.bootstrap", "Start Flower, wait for health, report to OneGate."),
    "run": ("flower_ctx.commands.run", "Run a Flower role in this process with the agent's keepalive."),
    "renew": ("flower_ctx.commands.renew", "Renew the SuperLink's server certificate when due (the daily timer)."),
    "watch": ("flower_ctx.commands.watch", "Keep this VM's readiness in OneGate current (the watch unit)."),
    "status": ("flower_ctx.commands.status", "Show what this VM is and whether it is ready."),
    "metrics": ("flower_ctx.commands.metrics", "Print this VM's metrics for Prometheus (the watch writes them too)."),
    "doctor": ("flower_ctx.commands.doctor", "Diagnose TLS, tunnel, keepalive and OneGate problems."),
    "ca": ("flower_ctx.commands.ca", "Export the CA for other zones; forget a CA pinned from OneGate."),
    "backup": ("flower_ctx.commands.backup:backup", "Save this VM's identity (CA, keys, admissions) to a file."),
    "restore": ("flower_ctx.commands.backup:restore", "Put a saved identity back on a rebuilt VM."),
    "wg": ("flower_ctx.commands.wg", "WireGuard helpers (key generation, the hub's [Peer] of this VM)."),
    "node": ("flower_ctx.commands.node", "This SuperNode's public key, for the SuperLink's admission list."),
    "context": ("flower_ctx.commands.context", "Check CONTEXT and print the variable reference."),
    "oneflow": ("flower_ctx.commands.oneflow", "Print OneFlow service templates."),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module.partition(":")[0]) is not None


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if _available(module)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None or not _available(entry[0]):
            return None
        name, _, attr = entry[0].partition(":")
        cmd: click.Command = getattr(importlib.import_module(name), attr or "command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="flower-ctx", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (INFO) on stderr.")
@click.option("--debug", is_flag=True, help="Log debug details and show tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """Configure this VM as a Flower SuperLink or SuperNode from its OpenNebula CONTEXT.

    Exit status: 0 ok, 1 failed, 2 bad input (the message names the variable and the fix).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: known errors print their message only; exit codes 0/1/2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="flower-ctx", standalone_mode=False)
        # Without standalone mode click returns the code of a raised Exit instead of exiting.
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except ValidationError as exc:
        n = len(exc.problems)
        click.echo(f"flower-ctx: {n} problem{'s' if n != 1 else ''} in CONTEXT, nothing was changed:", err=True)
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except FlowerCtxError as exc:
        click.echo(f"flower-ctx: {exc}" if "\n" not in str(exc) else f"flower-ctx:\n{exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # an unexpected error is a bug: say so, traceback with --debug only
        if debug:
            raise
        click.echo(f"flower-ctx: unexpected error: {type(exc).__name__}: {exc} (run with --debug)", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
