"""``flower-ctx run superlink|supernode``: Flower's own entry point, in this process, with keepalive.

Reads the runtime configuration written by configure, picks the era of the installed Flower
(``runtime.eras``: 1.39 gRPC, 1.40-1.42 HTTP), builds that era's argv (secrets only by file path),
installs its hooks (keepalive; in the HTTP era also the Fleet-only public listener), puts the
virtualenv's ``bin/`` first on PATH (Flower starts ``flower-superexec`` by name) and calls Flower's
console-script function. systemd runs this as the unprivileged user ``flower``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_BAD_INPUT, FlowerCtxError
from ..flowerversion import installed_version as installed_flower_version
from ..paths import Paths
from ._common import NonEmptyPath

log = logging.getLogger("flower_ctx.run")

ENTRY_POINTS = {"superlink": "flower-superlink", "supernode": "flower-supernode"}
INTERNAL_GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")


class RunError(FlowerCtxError):
    """Flower cannot be started as configured (the message says why and what to do)."""


class RunConfigError(RunError):
    exit_code = EXIT_BAD_INPUT


def load_runtime_config(paths: Paths, role: str) -> dict[str, Any]:
    from ..runtime import RuntimeConfigError, read

    try:
        doc = read(paths, role)
    except RuntimeConfigError as exc:
        raise RunConfigError(str(exc)) from None
    if doc is None:
        raise RunError(f"{paths.runtime_config(role)} not found: run `flower-ctx configure --role {role}` first")
    return doc


def parse_version(text: str) -> tuple[int, ...]:
    from ..runtime.eras import parse_version as parse

    return parse(text)


def check_flower_version(installed: str | None) -> str:
    """The installed flwr version, or RunError when it is missing or not one flower-ctx runs."""
    from ..runtime.eras import UnsupportedFlower, for_version

    try:
        for_version(installed)
    except UnsupportedFlower as exc:
        raise RunError(str(exc)) from None
    assert installed is not None
    return installed


def era_of(version: str | None = None) -> Any:
    """The era of ``version`` (default: the installed flwr); RunError when unsupported."""
    from ..runtime.eras import UnsupportedFlower, for_version

    try:
        return for_version(version if version is not None else installed_flower_version())
    except UnsupportedFlower as exc:
        raise RunError(str(exc)) from None


def flower_argv(doc: dict[str, Any], version: str | None = None) -> list[str]:
    """Flower's command line for the runtime configuration, in the era of ``version`` (default: the
    installed flwr); argv[0] is the console script."""
    from ..runtime.common import NoSuperLinkYet

    try:
        return era_of(version).argv(doc)
    except NoSuperLinkYet as exc:
        raise RunError(str(exc)) from None


def check_files(doc: dict[str, Any]) -> None:
    """Fail with the file named instead of Flower's traceback when TLS material or state is missing
    or damaged: each certificate parses, each key parses and the server key matches its certificate."""
    tls = doc.get("tls") or {}
    problems: list[str] = []
    loaded: dict[str, Any] = {}
    for key in ("ca_certfile", "certfile", "keyfile"):
        if tls.get("enabled") and tls.get(key):
            loaded[key] = _load_tls_file(key, tls[key], problems)
    cert, private = loaded.get("certfile"), loaded.get("keyfile")
    if cert is not None and private is not None:
        from ..pem import key_matches_cert

        if not key_matches_cert(private, cert):
            problems.append(f"keyfile {tls['keyfile']}: not the key of {tls['certfile']} (run `flower-ctx configure`)")
    if doc.get("node_key"):
        _load_node_key(doc["node_key"], problems)
    if doc["role"] == "superlink":
        db_dir = Path(doc["database"]).parent
        if not db_dir.is_dir():
            problems.append(f"database directory {db_dir}: missing (run `flower-ctx configure`)")
    if problems:
        raise RunError("cannot start Flower: " + "; ".join(problems))


def _load_tls_file(key: str, path: str, problems: list[str]) -> Any:
    """The first certificate or the private key in ``path``; None (and a problem) when unusable."""
    from .. import pem
    from ..files import read_file

    fix = "run `flower-ctx configure`"
    try:
        data = read_file(path)
    except FileNotFoundError:
        problems.append(f"{key} {path}: missing ({fix})")
        return None
    except (OSError, FlowerCtxError) as exc:
        problems.append(f"{key} {path}: unreadable ({exc})")
        return None
    try:
        return pem.load_private_key(data) if key == "keyfile" else pem.load_certs(data)[0]
    except pem.PemError as exc:
        problems.append(f"{key} {path} {exc} ({fix})")
        return None


def _load_node_key(path: str, problems: list[str]) -> None:
    from ..admission.keys import public_of
    from ..files import read_file

    try:
        public_of(read_file(path))
    except FileNotFoundError:
        problems.append(f"node_key {path}: missing (run `flower-ctx configure`)")
    except (OSError, FlowerCtxError) as exc:
        problems.append(f"node_key {path}: {exc} (run `flower-ctx configure`)")


def prepare_environment(doc: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    """Flower's environment: venv bin/ first on PATH, log level, no telemetry or update check."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    venv_bin = str(Path(sys.executable).parent)
    rest = [p for p in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if p and p != venv_bin]
    env["PATH"] = os.pathsep.join([venv_bin, *rest])
    env["FLWR_LOG_LEVEL"] = doc.get("log_level", "INFO")
    # An appliance does not phone home; both are read when flwr is imported.
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # Flower's SuperLink would otherwise `uv sync` every app's dependencies from the internet at run
    # time: an appliance runs apps with what its virtualenv provides (FL_APP_DEPENDENCIES) unless the
    # operator opted in with FL_RUNTIME_DEPENDENCY_INSTALL. Set, not defaulted: CONTEXT decides.
    opt_in = doc.get("runtime_dependency_install") is True
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "0" if opt_in else "1"
    # Flower's internal switches for its legacy gRPC servers: the Control one listens on 0.0.0.0:9093
    # by default (the Control API beyond loopback), the Fleet one would take the public Fleet port.
    for name in INTERNAL_GRPC_SWITCHES:
        if env.pop(name, None) is not None:
            log.warning("%s ignored: flower-ctx does not start Flower's legacy gRPC servers", name)
    return env  # type: ignore[return-value]


def load_entry_point(name: str) -> Any:
    from importlib import metadata

    found = metadata.entry_points(group="console_scripts", name=name)
    for ep in found:
        return ep.load()
    raise RunError(f"Flower's console script {name!r} is not installed")


def install_keepalive(doc: dict[str, Any], era: Any = None) -> str:
    """Install the era's hooks (keepalive; the Fleet-only listener on an HTTP-era SuperLink)."""
    era = era if era is not None else era_of()
    try:
        return str(era.install(doc))
    except FlowerCtxError as exc:
        raise RunError(f"cannot start Flower: {exc}") from None



def _quiet_foreign_logs(level: str) -> None:
    """Flower logs through its own handler: stop its records reaching ours too (each line twice),
    and keep libraries that log through the root logger (alembic) at the configured level."""
    logging.getLogger("flower_ctx").setLevel(level)
    logging.getLogger("flwr").propagate = False
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def run_role(role: str, paths: Paths) -> Any:
    doc = load_runtime_config(paths, role)
    installed = check_flower_version(installed_flower_version())
    if doc.get("flower_version") and doc["flower_version"] != installed:
        log.warning("FLOWER_VERSION is %s but Flower %s is installed: running %s",
                    doc["flower_version"], installed, installed)
    era = era_of(installed)
    argv = flower_argv(doc, installed)
    check_files(doc)
    _quiet_foreign_logs(doc.get("log_level", "INFO"))
    if doc["role"] == "superlink":
        from ..runtime import statedb

        try:
            for line in statedb.prepare(Path(doc["database"]), installed):
                log.warning("%s", line)
        except statedb.StateDbError as exc:
            raise RunError(str(exc)) from None
    prepare_environment(doc)
    install_keepalive(doc, era)
    log.info("Flower %s, %s era: %s", installed, era.name, era.summary)
    tls = doc.get("tls") or {}
    if doc["role"] == "superlink" and tls.get("enabled"):
        from .. import certreload

        certreload.install(tls["certfile"], tls["keyfile"])  # a renewed certificate without a restart
    if doc["role"] == "supernode" and tls.get("enabled"):
        from ..runtime import giveup

        giveup.install()  # Flower stops retrying after a TLS failure: exit, the supervisor restarts it
    entry = load_entry_point(argv[0])
    log.info("starting %s", " ".join(argv))  # paths only: no secret is ever on this command line
    sys.argv = argv
    return entry()


@click.command(name="run")
@click.argument("role", type=click.Choice(sorted(ENTRY_POINTS)))
@click.option("--root", "root", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Read the runtime configuration from this staging tree (written by configure --root).")
def command(role: str, root: Path | None) -> None:
    """Run the Flower ROLE (superlink or supernode) in this process with the agent's keepalive.

    Reads /opt/flower/config/ROLE.json written by `flower-ctx configure`.
    """
    result = run_role(role, Paths(root.resolve()) if root is not None else Paths())
    if isinstance(result, int) and result:
        sys.exit(result)
