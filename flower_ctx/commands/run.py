"""``flower-ctx run superlink|supernode``: Flower's own entry point, in this process, with keepalive.

Reads the runtime configuration written by configure, builds Flower 1.39's argv (secrets only by
file path), installs the gRPC keepalive patch, puts the virtualenv's ``bin/`` first on PATH (Flower
starts ``flower-superexec`` by name) and calls Flower's console-script function. systemd runs this
as the unprivileged user ``flower``.
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
# Flower 1.40+ serves Fleet, Control and Runtime on one HTTP port (DESIGN section 6).
FIRST_UNSUPPORTED = (1, 40)


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
    """Leading numeric release components: "1.39.0" -> (1, 39, 0), "1.40.0rc1" -> (1, 40, 0)."""
    import re

    match = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if match is None:
        return ()
    return tuple(int(g) for g in match.groups() if g is not None)


def check_flower_version(installed: str | None) -> str:
    """The installed flwr version, or RunError when it is missing or 1.40 and later."""
    if installed is None:
        raise RunError("Flower (flwr) is not installed in this virtualenv: pip install 'flower-ctx[flower]'")
    if parse_version(installed)[:2] >= FIRST_UNSUPPORTED:
        raise RunError(
            f"installed Flower {installed} is not supported: Flower 1.40 and later serve Fleet, Control and "
            "Runtime APIs on one HTTP port, which would expose the Control API (it runs submitted code) to "
            "every SuperNode network, and their Fleet link is not gRPC so keepalive cannot apply. "
            "Install flwr==1.39.0 (FLOWER_VERSION below 1.40)."
        )
    return installed


def _tls_args(doc: dict[str, Any], role: str) -> list[str]:
    tls = doc.get("tls") or {}
    if not tls.get("enabled"):
        return ["--insecure"]
    if role == "superlink":
        return ["--ssl-ca-certfile", tls["ca_certfile"], "--ssl-certfile", tls["certfile"],
                "--ssl-keyfile", tls["keyfile"]]
    return ["--root-certificates", tls["ca_certfile"]]


def flower_argv(doc: dict[str, Any]) -> list[str]:
    """Flower 1.39's command line for the runtime configuration (argv[0] is the console script)."""
    role = doc["role"]
    http = doc.get("http_api") or {}
    argv = [ENTRY_POINTS[role], *_tls_args(doc, role), "--isolation", doc["isolation"]]
    if role == "superlink":
        argv += ["--fleet-api-type", "grpc-rere", "--fleet-api-address", doc["fleet_api_address"],
                 "--database", doc["database"]]
        if doc.get("supernode_auth"):
            argv += ["--enable-supernode-auth"]
    else:
        if not doc.get("superlink_address"):
            raise RunError("no SuperLink address yet: set FL_SUPERLINK_ADDRESS, or wait until OneGate "
                           "discovery finds the SuperLink of this service and configure writes it")
        argv += ["--grpc-rere", "--superlink", doc["superlink_address"]]
        if doc.get("node_key"):
            argv += ["--auth-supernode-private-key", doc["node_key"]]
        if doc.get("node_config"):
            argv += ["--node-config", doc["node_config"]]
        if doc.get("max_retries"):
            argv += ["--max-retries", str(doc["max_retries"])]
        if doc.get("max_wait_time"):
            argv += ["--max-wait-time", str(doc["max_wait_time"])]
        if doc.get("runtime_dependency_install") is True:  # a SuperNode installs nothing unless asked
            argv += ["--allow-runtime-dependency-installation"]
    argv += ["--host", str(http.get("host", "127.0.0.1"))]
    if http.get("port") is not None:
        argv += ["--port", str(http["port"])]
    if doc.get("health_server_address"):
        argv += ["--health-server-address", doc["health_server_address"]]
    return argv


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
    return env  # type: ignore[return-value]


def load_entry_point(name: str) -> Any:
    from importlib import metadata

    found = metadata.entry_points(group="console_scripts", name=name)
    for ep in found:
        return ep.load()
    raise RunError(f"Flower's console script {name!r} is not installed")


def install_keepalive(doc: dict[str, Any]) -> str:
    from .. import grpc_patch, keepalive

    ka = doc["keepalive"]
    t, timeout = int(ka["time_s"]), int(ka["timeout_s"])
    client, interceptors = keepalive.client_options(t, timeout), []
    tls = doc.get("tls") or {}
    if tls.get("enabled"):
        from .. import trust

        if doc["role"] == "supernode":
            client = [*client, ("grpc.primary_user_agent", _trust_agent(tls["ca_certfile"]))]
        else:
            interceptors.append(trust.interceptor(Path(doc["state_dir"]) / trust.REPORT))
    layer = grpc_patch.install(client, keepalive.server_options(t, timeout), server_interceptors=interceptors)
    log.info("gRPC keepalive %ss/%ss installed on the %s layer (self-test passed)", t, timeout, layer)
    return layer


def _trust_agent(ca_file: str) -> str:
    """The user agent that tells the SuperLink which CAs this SuperNode trusts (a CA rotation waits
    for it); empty when the file cannot be read (check_files names that)."""
    from .. import trust
    from ..files import read_file

    try:
        return trust.user_agent(read_file(ca_file))
    except (OSError, FlowerCtxError):
        return ""


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
    argv = flower_argv(doc)
    check_files(doc)
    _quiet_foreign_logs(doc.get("log_level", "INFO"))
    prepare_environment(doc)
    install_keepalive(doc)
    tls = doc.get("tls") or {}
    if doc["role"] == "superlink" and tls.get("enabled"):
        from .. import certreload

        certreload.install(tls["certfile"], tls["keyfile"])  # a renewed certificate without a restart
    entry = load_entry_point(argv[0])
    log.info("starting %s", " ".join(argv))  # paths only: no secret is ever on this command line
    sys.argv = argv
    return entry()


@click.command(name="run")
@click.argument("role", type=click.Choice(sorted(ENTRY_POINTS)))
@click.option("--root", "root", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Read the runtime configuration from this staging tree (written by configure --root).")
def command(role: str, root: Path | None) -> None:
    """Run the Flower ROLE (superlink or supernode) in this process with the agent's gRPC keepalive.

    Reads /opt/flower/config/ROLE.json written by `flower-ctx configure`.
    """
    result = run_role(role, Paths(root.resolve()) if root is not None else Paths())
    if isinstance(result, int) and result:
        sys.exit(result)
