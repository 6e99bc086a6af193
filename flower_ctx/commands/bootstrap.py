"""``flower-ctx bootstrap``: start Flower, wait until it really serves, report to OneGate."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import agentstate
from ..errors import EXIT_FAILED, FlowerCtxError
from ..files import ensure_dir, open_for_append, write_file
from ..health import Health, check, runtime_doc, runtime_target, superlink_dial_address
from ..model import Config, HostPort, Role
from ..paths import Paths
from ..supervisor import child_environment, for_machine, proc_start_time, read_pidfile
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
WATCH_MAX_S = 24 * 3600


def say(msg: str) -> None:
    click.echo(f"bootstrap: {msg}")


def wg_public_key(config: Config, paths: Paths) -> str | None:
    if config.wg is None:
        return None
    from ..wireguard.keys import public_key_from_private as public_key_of

    if config.wg.private_key is not None:
        return public_key_of(config.wg.private_key.reveal().decode())
    from ..files import read_file

    try:
        return public_key_of(read_file(paths.wg_key).decode("ascii").strip())
    except (OSError, ValueError, FlowerCtxError):
        return None


def _client(config: Config, paths: Paths) -> Any:
    if paths.staged or not config.onegate.usable:
        return None
    from ..onegate import OneGateClient

    return OneGateClient(config.onegate)


def _discover(config: Config, paths: Paths, client: Any, wait: float) -> HostPort:
    """SuperNode without FL_SUPERLINK_ADDRESS: find the SuperLink of this service through OneGate."""
    from .. import runtime, tls
    from ..discovery import discover_superlink

    ca_only = config.superlink_address is not None  # static address, CA to be taken from OneGate
    if client is None:
        if ca_only:
            raise FlowerCtxError(
                "TLS is on and FL_SSL_CA_CERTFILE is empty, and OneGate is not available to fetch the CA the "
                "SuperLink publishes: set FL_SSL_CA_CERTFILE (`flower-ctx ca export` on the SuperLink)"
            )
        raise FlowerCtxError(
            "FL_SUPERLINK_ADDRESS is empty and OneGate is not available (the VM template needs CONTEXT "
            "TOKEN=YES, and discovery works only inside one OneFlow service): set FL_SUPERLINK_ADDRESS"
        )
    say("discovering the SuperLink through OneGate")
    # 1..5 s backoff: about half the delay of a fixed 10 s poll, one request every few seconds at most.
    found = discover_superlink(client, deadline_s=wait, max_backoff=5.0)
    if config.tls_enabled and not found.tls:
        raise FlowerCtxError(
            f"the SuperLink at {found.endpoint} publishes FL_TLS=NO but this SuperNode has FL_TLS_ENABLED=YES: "
            "set the same FL_TLS_ENABLED on both"
        )
    if config.tls_enabled and config.pki.ca_pem is None:
        if found.ca_pem is None:
            raise FlowerCtxError(f"the SuperLink at {found.endpoint} has not published FL_CA_CERT; "
                                 "set FL_SSL_CA_CERTFILE on this SuperNode")
        tls.install_trusted_ca(found.ca_pem, paths)
    if ca_only:
        assert config.superlink_address is not None
        say(f"CA of the SuperLink VM {found.vm_id or '?'} installed from OneGate ({found.ca_fingerprint})")
        return config.superlink_address
    agentstate.record_discovery(paths, found.endpoint, found.tls, found.ca_fingerprint, found.vm_id)
    runtime.apply(config, paths, superlink_address=found.endpoint)
    say(f"SuperLink found at {found.endpoint} (VM {found.vm_id or '?'})")
    return found.endpoint


def _wait_health(config: Config, paths: Paths, sup: Any, wait: float) -> Health:
    deadline = time.monotonic() + wait
    delay = 0.25
    while True:
        health = check(config, paths, sup)
        if health.ok or time.monotonic() >= deadline:
            return health
        # A CA or name mismatch will not fix itself: stop waiting once Flower has had time to start.
        if health.kind in ("ca_mismatch", "name_mismatch", "expired", "not_yet_valid", "bad_ca") and delay >= 2:
            return health
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def _attrs(config: Config, paths: Paths) -> dict[str, str]:
    from ..readiness import superlink_attrs, supernode_attrs

    wg_pub = wg_public_key(config, paths)
    doc = runtime_doc(paths, config.role.value)
    if config.role is Role.SUPERLINK:
        from ..files import read_file

        try:
            ca = read_file(paths.ca_cert) if config.tls_enabled else None
        except (OSError, FlowerCtxError):
            raise FlowerCtxError(f"no CA at {paths.ca_cert}: run flower-ctx configure --role superlink") from None
        return superlink_attrs(config, ca_pem=ca, wg_public_key=wg_pub, endpoint=superlink_dial_address(config, doc))
    return supernode_attrs(config, superlink=runtime_target(doc), wg_public_key=wg_pub)


def publish(config: Config, paths: Paths, client: Any, health: Health) -> str:
    """Publish attributes then readiness; record the outcome. Returns a one-line summary."""
    from ..readiness import HealthResult, publish_ready

    if paths.staged:
        return "OneGate: skipped (--root)"
    if client is None:
        agentstate.record_publication(paths, {"published": False, "reason": "OneGate not configured"})
        return "OneGate: not configured (no ONEGATE_ENDPOINT/VMID/token: the VM template needs TOKEN=YES)"
    result = publish_ready(client, _attrs(config, paths), lambda: HealthResult(health.ok, health.detail))
    doc = {
        "published": result.onegate_problem is None,
        "ready": result.ready,
        "error": result.error,
        "onegate_problem": result.onegate_problem,
        "sent": sorted(result.sent),
        "deleted": list(result.deleted),
    }
    agentstate.record_publication(paths, doc)
    if result.onegate_problem:
        return f"OneGate: could not publish ({result.onegate_problem}); will retry at the next run"
    if result.ready:
        return "OneGate: READY=YES published" + ("" if result.changed else " (already)")
    return f"OneGate: FL_READY=NO published with FL_ERROR={result.error!r}"


def _spawn_watcher(role: str, context_file: Path | None, paths: Paths) -> None:
    """Keep checking in the background and publish readiness when the SuperLink appears."""
    pidfile = paths.flower_home / "run" / f"{role}.watch.pid"
    try:
        if read_pidfile(pidfile) is not None:
            return  # one watcher is enough (pid and start time match: not a recycled pid)
    except (OSError, ValueError, FlowerCtxError):
        pass
    argv = [sys.executable, "-m", "flower_ctx", "bootstrap", "--role", role, "--watch"]
    if context_file is not None:
        argv += ["--context", str(context_file)]
    if paths.staged:
        argv += ["--root", str(paths.root)]
    ensure_dir(pidfile.parent, 0o755)
    logf = open_for_append(paths.flower_home / "run" / f"{role}.watch.log")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=child_environment(), cwd="/")
    finally:
        os.close(logf)
    write_file(pidfile, f"{proc.pid} {proc_start_time(proc.pid)}\n".encode(), 0o644)


def _runtime_address(paths: Paths, role: str) -> str | None:
    return (runtime_doc(paths, role) or {}).get("superlink_address")


def _watch(config: Config, paths: Paths, client: Any) -> int:
    """Background re-check for a SuperNode waiting for its SuperLink: discover it if needed, start
    Flower once an address is known, and publish READY=YES when the SuperLink answers."""
    from ..discovery import DiscoveryTimeout

    role = config.role.value
    sup = for_machine(paths)
    deadline = time.monotonic() + WATCH_MAX_S
    delay = 1.0
    while time.monotonic() < deadline:
        ca_missing = config.tls_enabled and not paths.ca_cert.exists()
        if not _runtime_address(paths, role) or ca_missing:
            try:
                with machine_lock(paths):
                    _discover(config, paths, client, 60)
            except DiscoveryTimeout:
                continue  # discovery backs off by itself
            except FlowerCtxError as exc:
                say(f"failed: {exc}")
                say(publish(config, paths, client, Health(False, str(exc))))
                return EXIT_FAILED
        if not sup.state(role).running or sup.needs_restart(role):
            say(f"flower-{role} {sup.ensure_running(role)} ({sup.manager})")
        health = check(config, paths, sup)
        if health.ok:
            say(publish(config, paths, client, health))
            return 0
        if not health.waiting:
            say(f"not healthy: {health.detail}")
            say(publish(config, paths, client, health))
            return EXIT_FAILED
        time.sleep(delay)
        delay = min(delay * 1.5, 30.0)
    return EXIT_FAILED


@click.command("bootstrap")
@role_option
@context_option
@env_option
@root_option
@click.option("--wait", type=click.FloatRange(0, 3600), default=90.0, show_default=True,
              help="Seconds to wait for discovery and for health before reporting.")
@click.option("--watch", is_flag=True, hidden=True, help="Internal: keep re-checking until ready, then publish.")
def command(role: str, context_file: Path | None, use_env: bool, root: Path | None, wait: float, watch: bool) -> None:
    """Start the Flower ROLE, wait until it really serves, and report readiness to OneGate.

    SuperLink: ready when its Fleet API completes a TLS handshake verified with its own CA on the
    address SuperNodes dial. SuperNode: ready when Flower runs and the SuperLink's handshake
    verifies with the configured CA. A SuperNode whose SuperLink is not up yet is not a boot
    failure: it reports "waiting for SuperLink" (exit 0) and publishes READY=YES later, when the
    SuperLink appears. Exit 1 when the role cannot become ready (the reason is printed and
    published as FL_ERROR).
    """
    paths = paths_for(root)
    config, _src, _table = load_validated(role, context_file, use_env, paths)
    logging.getLogger("flower_ctx").setLevel(config.log_level)
    echo_warnings(config.warnings)
    if runtime_doc(paths, role) is None:
        raise FlowerCtxError(f"no runtime config at {paths.runtime_config(role)}: run `flower-ctx configure "
                             f"--role {role}` first")
    client = _client(config, paths)
    if watch:
        raise click.exceptions.Exit(_watch(config, paths, client))

    sup = for_machine(paths)
    needs_onegate = config.superlink_address is None or (config.tls_enabled and config.pki.ca_pem is None)
    if config.role is Role.SUPERNODE and needs_onegate:
        from ..discovery import DiscoveryTimeout

        try:
            with machine_lock(paths):
                _discover(config, paths, client, wait)
        except DiscoveryTimeout as exc:
            # The SuperLink is not up yet: not a boot failure. Keep looking in the background.
            waiting = Health(False, f"waiting for SuperLink: {exc}", waiting=True)
            say(waiting.detail)
            say(publish(config, paths, client, waiting))
            _spawn_watcher(role, context_file, paths)
            say("a background check starts Flower and publishes READY=YES when the SuperLink appears")
            return
        except FlowerCtxError as exc:
            say(f"failed: {exc}")
            say(publish(config, paths, client, Health(False, str(exc))))
            raise click.exceptions.Exit(EXIT_FAILED) from None
    action = sup.ensure_running(role)
    say(f"flower-{role} {action} ({sup.manager})")
    health = _wait_health(config, paths, sup, wait)
    say(("ready: " if health.ok else "not ready: ") + health.detail)
    say(publish(config, paths, client, health))
    if health.ok:
        return
    if health.waiting:
        _spawn_watcher(role, context_file, paths)
        say("waiting for SuperLink: a background check publishes READY=YES when it answers")
        return
    raise click.exceptions.Exit(EXIT_FAILED)
