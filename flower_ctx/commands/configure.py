"""``flower-ctx configure``: validate CONTEXT, then make this VM match it, step by step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import EXIT_FAILED, ApplyError, ContextError, FlowerCtxError, ValidationError
from ..files import remove_stale_temps
from ..model import Config
from ..paths import Paths
from ..plan import StepResult
from ..watch import context_problem
from ._common import (
    context_option,
    echo_warnings,
    env_option,
    load_source,
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
    from .. import admission, agentstate, apps, firewall, flowerversion, runtime, tls, wireguard
    from ..gateway import routes as gateway_routes
    from ..model import Role

    def runtime_step(config: Config, paths: Paths, *, dry_run: bool) -> StepResult:
        # A SuperNode that found its SuperLink through OneGate keeps that address across re-runs.
        found = None
        if config.role is Role.SUPERNODE and config.superlink_address is None:
            found = agentstate.discovered_superlink(paths)
        return runtime.apply(config, paths, dry_run=dry_run, superlink_address=found)

    def flower_step(config: Config, paths: Paths, *, dry_run: bool) -> StepResult:
        if config.role is Role.GATEWAY:  # a gateway runs no Flower: its release does not matter
            return StepResult("flower")
        return flowerversion.apply(config, paths, dry_run=dry_run)

    return [
        ("flower", flower_step),
        ("app dependencies", apps.apply),
        ("tls", tls.apply),
        ("node key", admission.ensure_node_key),
        ("wireguard", wireguard.apply),
        ("gateway routes", gateway_routes.apply),
        ("firewall", firewall.apply),
        ("runtime", runtime_step),
    ]


def run_steps(config: Config, paths: Paths, *, dry_run: bool) -> list[StepResult]:
    from .. import identity

    ident = StepResult("identity")
    config, number = identity.apply(config, paths, remember=not dry_run)
    if number is not None:
        ident.facts["vm_number"] = str(number)
    if config.wg is not None and config.wg.pool is not None:
        ident.facts["wg_address"] = f"{config.wg.address} (from the pool {config.wg.pool})"
    results = [ident]
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
    for key in ("vm_number", "ca_fingerprint", "server_sans", "wg_address", "wg_public_key", "wg_mtu", "gateway",
                "superlink_address"):
        if key in facts:
            click.echo(f"  {key.replace('_', ' ')}: {facts[key]}")
    pending = sum(1 for r in results for c in r.changes if c.pending)
    where = f" under {paths.root}" if paths.staged else ""
    if dry_run:
        click.echo(f"{role}: {pending} change(s) pending{where}" if pending else f"{role}: unchanged{where}")
    else:
        click.echo(f"{role}: {pending} change(s) applied{where}" if pending else f"{role}: unchanged{where}")


def _secret_warning(config: Config, paths: Paths) -> list[str]:
    """A private key written in the CONTEXT of a VM that is in a OneFlow service is readable by every
    other VM of the service (OneGate GET /service?extended=true): say so, and how to move it."""
    from ..boot import client_for
    from ..errors import OneGateError
    from ..onegate import obj

    if not config.inline_secrets:
        return []
    service = None
    client = client_for(config.onegate, paths, timeout=3.0, retries=0, deadline=5.0)
    if client is not None:
        try:
            ut = obj(obj(client.get_vm().get("VM"), "VM").get("USER_TEMPLATE"), "VM.USER_TEMPLATE")
            service = ut.get("SERVICE_ID")
            if service is None:
                return []  # not in a service: no other VM reads this CONTEXT through OneGate
        except OneGateError:
            pass
    where = f"OneFlow service {service}" if service is not None else "its OneFlow service, if it is in one,"
    names = ", ".join(config.inline_secrets)
    return [f"{names}: a private key in CONTEXT is readable by every other VM of {where} through OneGate "
            "(GET /service?extended=true). Deliver it as a file of the context CD-ROM instead (VM template "
            "FILES_DS, then NAME=file:<image name>), or leave it empty to have the key generated on the VM"]


def _admission(config: Config, paths: Paths) -> None:
    """A SuperLink whose Flower already runs (a reconfigure) applies a changed admission list now."""
    from ..admission import reconcile
    from ..boot import client_for
    from ..model import Role

    if config.role is not Role.SUPERLINK:
        return
    report = reconcile(config, paths, onegate_client=client_for(config.onegate, paths, retries=1, deadline=15.0))
    if report.registered or report.unregistered or report.burned:
        for line in report.lines():
            click.echo(f"  {line}")


def _record_failure(paths: Paths, error: str | None) -> None:
    """The watch must not report READY for a machine whose configure failed (Flower may still run
    from before): the failure is recorded until a configure succeeds."""
    from .. import agentstate
    from ..files import unlink
    from ..watch import FAILED_CONFIGURE

    try:
        if error is None:
            unlink(paths.agent_dir / FAILED_CONFIGURE)
        else:
            from ..readiness import sanitize_error

            agentstate.write(paths, FAILED_CONFIGURE, {"error": sanitize_error(error)})
    except FlowerCtxError:
        pass  # a full or read-only disk: the failure itself is what the operator sees


def _report_failure(error: str, role: str, context_file: Path | None, use_env: bool, paths: Paths,
                    config: Config | None = None) -> None:
    """FL_READY=NO and FL_ERROR in OneGate, READY withdrawn; OneGate trouble is only reported."""
    from ..boot import client_for, publish_failure
    from ..config import onegate_access

    access = config.onegate if config is not None else None
    if access is None:
        try:
            src = load_source(context_file, use_env, paths)
            access = onegate_access(src.values, src.token)
        except FlowerCtxError:
            click.echo("configure: CONTEXT unreadable, so OneGate cannot be told", err=True)
            return
    try:
        summary = publish_failure(client_for(access, paths, timeout=5.0, retries=1, deadline=20.0), paths, error)
    except FlowerCtxError as exc:
        summary = f"OneGate: could not publish ({exc})"
    click.echo(f"configure: {summary}", err=True)


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
    report = not dry_run and not paths.staged
    try:
        config, _src, _table = load_validated(role, context_file, use_env, paths)
    except (ContextError, ValidationError) as exc:
        if report:  # nothing on the machine changes; OneGate is told, READY withdrawn
            _report_failure(context_problem(exc, role), role, context_file, use_env, paths)
        raise
    if dry_run:
        results = run_steps(config, paths, dry_run=True)
    else:
        if paths.staged:
            paths.root.mkdir(parents=True, exist_ok=True)  # an existing root keeps its mode
        try:
            with machine_lock(paths):
                # Temp files of a run killed mid-write never hold a live file: drop them (keys included).
                for d in (paths.certs_dir, paths.config_dir, paths.wg_dir, paths.agent_dir):
                    remove_stale_temps(d)
                results = run_steps(config, paths, dry_run=False)
        except FlowerCtxError as exc:
            if report:
                _record_failure(paths, str(exc))
                _report_failure(f"configure failed: {exc}", role, context_file, use_env, paths, config)
            raise
        if report:
            _record_failure(paths, None)
            _admission(config, paths)
    warnings = list(config.warnings) + [w for r in results for w in r.warnings]
    if not dry_run and not paths.staged:
        warnings += _secret_warning(config, paths)
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
