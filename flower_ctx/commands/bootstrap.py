"""``flower-ctx bootstrap``: start Flower, wait until it really serves, report to OneGate, and
start the watch that keeps that report current."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..boot import client_for, discover, look_again, needs_discovery, pin_refusal, publish, publish_attributes
from ..errors import EXIT_FAILED, FlowerCtxError
from ..health import Health, check, runtime_doc
from ..model import Config, Role
from ..paths import Paths
from ..supervisor import for_machine, watch_service
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

log = logging.getLogger("flower_ctx.bootstrap")


def say(msg: str) -> None:
    click.echo(f"bootstrap: {msg}")


INTERIM_S = 5.0  # still not ready this long into the wait: say so in OneGate now, not when the wait ends


def _wait_health(config: Config, paths: Paths, sup: Any, wait: float,
                 interim: Callable[[Health], None] | None = None) -> Health:
    """Check until ready or ``wait`` seconds. ``interim`` is called once with the health when it is
    still not ready INTERIM_S seconds in: a READY left by the previous boot must not stand for the
    whole wait (a rebooted SuperNode whose SuperLink is down would show READY=YES for 90 s)."""
    from ..watch import RESTART_S

    start = time.monotonic()
    deadline = start + wait
    delay = 0.25
    restarted = time.monotonic()
    while True:
        refusal = pin_refusal(config, paths)
        health = Health(False, refusal, kind="ca_refused") if refusal else check(config, paths, sup)
        if health.ok or time.monotonic() >= deadline:
            return health
        if interim is not None and time.monotonic() - start >= INTERIM_S:
            interim(health)
            interim = None
        if health.kind == "not_admitted" and time.monotonic() - restarted >= RESTART_S:
            # Not admitted (yet): the SuperLink admits this key from OneGate or its list within
            # seconds; Flower's SuperNode does not retry by itself, so start it again. Under the
            # machine lock: the readiness watch may be restarting it at the same moment.
            with machine_lock(paths):
                done = sup.keep_running(config.role.value)
            restarted = time.monotonic()
            if done:
                say(f"flower-{config.role.value} {done} ({sup.manager}): not admitted yet, trying again")
        # A CA or name mismatch will not fix itself: stop waiting once Flower has had time to start.
        if health.kind == "ca_refused" or (
                health.kind in ("ca_mismatch", "name_mismatch", "expired", "not_yet_valid", "bad_ca") and delay >= 2):
            return health
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def _start_watch(config: Config, paths: Paths, sup: Any, client: Any, context_file: Path | None) -> None:
    """The watch keeps readiness current from now on (nothing to watch without OneGate)."""
    if client is None:
        return
    extra = ["--context", str(context_file)] if context_file is not None else []
    service = watch_service(config.role.value)
    say(f"readiness watch {sup.ensure_running(service, extra)} ({sup.manager})")


@click.command("bootstrap")
@role_option
@context_option
@env_option
@root_option
@click.option("--wait", type=click.FloatRange(0, 3600), default=None,
              help="Seconds to wait for discovery and for health before reporting (default: FL_BOOTSTRAP_WAIT, "
                   "90 unless set).")
def command(role: str, context_file: Path | None, use_env: bool, root: Path | None, wait: float | None) -> None:
    """Start the Flower ROLE, wait until it really serves, report readiness to OneGate, and start
    the readiness watch (flower-ctx watch) that keeps the report current afterwards.

    SuperLink: ready when its Fleet API completes a TLS handshake verified with its own CA on the
    address SuperNodes dial. SuperNode: ready when Flower runs and the SuperLink's handshake
    verifies with the configured CA. Gateway (no Flower): ready when wg0 is up, forwarding is on,
    its routes are present, the hub answered a handshake, and the SuperLink answers through it.
    Exit 0 only when ready (READY=YES is then in OneGate); exit 1
    otherwise, with the reason printed and published as FL_ERROR (READY withdrawn). A SuperNode
    whose SuperLink is not up yet exits 1 too ("waiting for SuperLink"): the watch goes on looking
    and publishes READY=YES when the SuperLink answers, so one-apps never reports READY early.
    """
    paths = paths_for(root)
    config, _src, _table = load_validated(role, context_file, use_env, paths)
    if wait is None:
        wait = float(config.bootstrap_wait)
    logging.getLogger("flower_ctx").setLevel(config.log_level)
    echo_warnings(config.warnings)
    if runtime_doc(paths, role) is None:
        raise FlowerCtxError(f"no runtime config at {paths.runtime_config(role)}: run `flower-ctx configure "
                             f"--role {role}` first")
    client = client_for(config.onegate, paths)
    sup = for_machine(paths)
    if needs_discovery(config, paths):
        from ..discovery import DiscoveryTimeout

        try:
            with machine_lock(paths):
                discover(config, paths, client, wait, say)
        except DiscoveryTimeout as exc:
            # The SuperLink is not up yet: the watch keeps looking, starts Flower and reports READY.
            waiting = Health(False, f"waiting for SuperLink: {exc}", waiting=True)
            say(waiting.detail)
            say(publish(config, paths, client, waiting))
            _start_watch(config, paths, sup, client, context_file)
            say("not ready yet: the readiness watch starts Flower and publishes READY=YES when the SuperLink "
                "appears")
            raise click.exceptions.Exit(EXIT_FAILED) from None
        except FlowerCtxError as exc:
            say(f"failed: {exc}")
            say(publish(config, paths, client, Health(False, str(exc))))
            _start_watch(config, paths, sup, client, context_file)
            raise click.exceptions.Exit(EXIT_FAILED) from None
    else:
        look_again(config, paths, client, say)  # a CA pinned from OneGate: what is published now?
    if config.role is Role.SUPERNODE:
        publish_attributes(config, paths, client)  # its key first: the SuperLink admits it from OneGate
    if config.role is not Role.GATEWAY:  # a gateway runs no Flower: its service is forwarding
        with machine_lock(paths):  # not while the watch restarts an ended Flower (one copy only)
            action = sup.ensure_running(role)
        say(f"flower-{role} {action} ({sup.manager})")
    health = _wait_health(config, paths, sup, wait, interim=lambda h: say(publish(config, paths, client, h)))
    say(("ready: " if health.ok else "not ready: ") + health.detail)
    if health.ok and config.role is Role.SUPERLINK:
        from ..admission import reconcile

        for line in reconcile(config, paths, onegate_client=client).lines():
            say(line)
    say(publish(config, paths, client, health))
    _start_watch(config, paths, sup, client, context_file)
    if config.role is Role.SUPERLINK and config.tls_enabled:
        done = sup.enable_timer("flower-ctx-renew")
        if done:
            say(done)
    if not health.ok:
        if health.waiting:
            say("not ready yet: the readiness watch publishes READY=YES when the SuperLink answers")
        raise click.exceptions.Exit(EXIT_FAILED)
