"""``flower-ctx configure``: validate CONTEXT, then make this VM match it, step by step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import EXIT_FAILED, ApplyError
from ..files import remove_stale_temps
from ..model import Config
from ..paths import Paths
from ..plan import StepResult
from ._common import (
    context_option,
    echo_warnings,
    env_option,
    load_validated,
    machine_lock,
    paths_for,
    role_option,
    root_option,
)

Step = Callable[..., StepResult]


def _steps() -> list[tuple[str, Step]]:
    """The steps in the order they are safe to apply: Flower release, TLS and keys, tunnel, runtime config.

    Imported here, not at module level, so `configure --help` stays light.
    """
    from .. import agentstate, flowerversion, runtime, tls, wireguard
    from ..model import Role

    def runtime_step(config: Config, paths: Paths, *, dry_run: bool) -> StepResult:
        # A SuperNode that found its SuperLink through OneGate keeps that address across re-runs.
        found = None
        if config.role is Role.SUPERNODE and config.superlink_address is None:
            found = agentstate.discovered_superlink(paths)
        return runtime.apply(config, paths, dry_run=dry_run, superlink_address=found)

    return [
        ("flower", flowerversion.apply),
        ("tls", tls.apply),
        ("wireguard", wireguard.apply),
        ("runtime", runtime_step),
    ]


def run_steps(config: Config, paths: Paths, *, dry_run: bool) -> list[StepResult]:
    results = []
    for name, step in _steps():
        try:
            results.append(step(config, paths, dry_run=dry_run))
        except ApplyError as exc:
            raise ApplyError(f"{name}: {exc}") from exc
    return results


def _print(results: list[StepResult], dry_run: bool, role: str, paths: Paths) -> None:
    rows = [(r.name, c.outcome, c.what, c.detail) for r in results for c in r.changes]
    w_out = max((len(o) for _, o, _, _ in rows), default=0)
    w_what = min(60, max((len(w) for _, _, w, _ in rows), default=0))
    for _name, outcome, what, detail in rows:
        click.echo(f"  {outcome:<{w_out}}  {what:<{w_what}}  {detail}".rstrip())
    for r in results:
        for s in r.skipped:
            click.echo(f"  {'skipped':<{w_out}}  {s}  (--root: system effect not performed)")
    facts = {k: v for r in results for k, v in r.facts.items()}
    for key in ("ca_fingerprint", "server_sans", "wg_public_key", "superlink_address"):
        if key in facts:
            click.echo(f"  {key.replace('_', ' ')}: {facts[key]}")
    pending = sum(1 for r in results for c in r.changes if c.pending)
    where = f" under {paths.root}" if paths.staged else ""
    if dry_run:
        click.echo(f"{role}: {pending} change(s) pending{where}" if pending else f"{role}: unchanged{where}")
    else:
        click.echo(f"{role}: {pending} change(s) applied{where}" if pending else f"{role}: unchanged{where}")


@click.command("configure")
@role_option
@context_option
@env_option
@root_option
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing; exit 1 if changes are pending.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (stable keys).")
def command(
    role: str, context_file: Path | None, use_env: bool, root: Path | None, dry_run: bool, as_json: bool
) -> None:
    """Validate CONTEXT and make this VM a Flower ROLE: Flower release, TLS material, WireGuard,
    runtime config. Starting Flower and reporting to OneGate is `flower-ctx bootstrap`.

    Nothing changes when any variable is invalid (exit 2, one `NAME: message` line each; the
    variables are listed by `flower-ctx context reference`). A re-run with the same CONTEXT changes
    nothing and says "unchanged". --dry-run exits 0 when nothing would change and 1 when changes are
    pending. With --root DIR every file is written under DIR and system effects (the wg0 link,
    IP forwarding, pip) are listed, not done.
    """
    paths = paths_for(root)
    config, _src, _table = load_validated(role, context_file, use_env, paths)
    if dry_run:
        results = run_steps(config, paths, dry_run=True)
    else:
        if paths.staged:
            paths.root.mkdir(parents=True, exist_ok=True)  # an existing root keeps its mode
        with machine_lock(paths):
            # Temp files of a run killed mid-write never hold a live file: drop them (keys included).
            for d in (paths.certs_dir, paths.config_dir, paths.wg_dir, paths.agent_dir):
                remove_stale_temps(d)
            results = run_steps(config, paths, dry_run=False)
    warnings = list(config.warnings) + [w for r in results for w in r.warnings]
    pending = any(c.pending for r in results for c in r.changes)
    if as_json:
        doc = {
            "role": role,
            "root": str(paths.root),
            "dry_run": dry_run,
            "changed": pending,
            "steps": [
                {
                    "name": r.name,
                    "changes": [{"what": c.what, "outcome": c.outcome, "detail": c.detail} for c in r.changes],
                    "skipped": r.skipped,
                    "warnings": r.warnings,
                    "facts": r.facts,
                }
                for r in results
            ],
            "warnings": list(dict.fromkeys(warnings)),
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print(results, dry_run, role, paths)
    echo_warnings(warnings)
    if dry_run and pending:
        raise click.exceptions.Exit(EXIT_FAILED)
