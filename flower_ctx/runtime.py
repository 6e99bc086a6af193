"""The resolved runtime configuration that ``flower-ctx run <role>`` reads.

configure writes it to ``/opt/flower/config/<role>.json`` (0640 root:flower). It holds no secret:
TLS material is referenced by path. Schema 1 (stable; add keys, never change their meaning):

common keys
  schema            1
  role              "superlink" | "supernode"
  flower_version    "1.39.0"
  log_level         "DEBUG" | "INFO" | "WARNING" | "ERROR"
  isolation         "subprocess" | "process"
  keepalive         {"time_s": int, "timeout_s": int}          FL_GRPC_KEEPALIVE_TIME / _TIMEOUT
  tls               {"enabled": bool, "ca_certfile": path|null, "certfile": path|null, "keyfile": path|null}
                    (SuperNode: only ca_certfile, the CA it trusts)
  http_api          {"host": str, "port": int}   Flower's own HTTP API (Runtime/Control), loopback
  health_server_address  "host:port" | null      Flower's optional gRPC health server
superlink only
  fleet_api_address "0.0.0.0:9092"               the Fleet API (gRPC), the only non-loopback listener
  state_dir         path                          SuperLink state directory (0700 flower)
  database          path                          SQLite database (FL_DATABASE under /opt/flower)
supernode only
  superlink_address "host:port" | "[v6]:port" | null (null: OneGate discovery pending)
  node_config       "k=v k2=v2"                   FL_NODE_CONFIG, passed to --node-config as is
  max_retries       int (0 = forever)             FL_MAX_RETRIES
  max_wait_time     int seconds (0 = forever)     FL_MAX_WAIT_TIME
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ApplyError
from .files import Outcome, ensure_dir, write_file
from .model import Config, HostPort, Role
from .paths import Paths
from .plan import Change, StepResult

SCHEMA = 1
FLEET_API_ADDRESS = "0.0.0.0:9092"
LOOPBACK = "127.0.0.1"
SUPERLINK_HTTP_PORT = 8000  # Flower 1.39 defaults, kept on loopback
SUPERNODE_HTTP_PORT = 9094
FLOWER_USER = "flower"


def _tls_block(config: Config, paths: Paths) -> dict[str, Any]:
    if not config.tls_enabled:
        return {"enabled": False, "ca_certfile": None, "certfile": None, "keyfile": None}
    if config.role is Role.SUPERLINK:
        return {
            "enabled": True,
            "ca_certfile": str(paths.ca_cert),
            "certfile": str(paths.server_cert),
            "keyfile": str(paths.server_key),
        }
    return {"enabled": True, "ca_certfile": str(paths.ca_cert), "certfile": None, "keyfile": None}


def database_path(config: Config, paths: Paths) -> Path:
    """FL_DATABASE is relative to /opt/flower (validated: no '..', safe characters)."""
    return paths.flower_home / config.database


def build_runtime_config(config: Config, paths: Paths, *, superlink_address: HostPort | None = None) -> dict:
    """The runtime configuration of ``config.role`` (schema in the module docstring)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "role": config.role.value,
        "flower_version": config.flower_version,
        "log_level": config.log_level,
        "isolation": config.isolation,
        "keepalive": {"time_s": config.keepalive_time, "timeout_s": config.keepalive_timeout},
        "tls": _tls_block(config, paths),
        "health_server_address": None,
    }
    if config.role is Role.SUPERLINK:
        doc["http_api"] = {"host": LOOPBACK, "port": SUPERLINK_HTTP_PORT}
        doc["fleet_api_address"] = FLEET_API_ADDRESS
        doc["state_dir"] = str(paths.state_dir)
        doc["database"] = str(database_path(config, paths))
    else:
        address = superlink_address if superlink_address is not None else config.superlink_address
        doc["http_api"] = {"host": LOOPBACK, "port": SUPERNODE_HTTP_PORT}
        doc["superlink_address"] = str(address) if address is not None else None
        doc["node_config"] = " ".join(f"{k}={v}" for k, v in config.node_config)
        doc["max_retries"] = config.max_retries
        doc["max_wait_time"] = config.max_wait_time
    return doc


def render(doc: dict) -> bytes:
    """Stable bytes: sorted keys, so an unchanged configuration rewrites nothing."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _planned_dir(path: Path, dry_run: bool, mode: int, owner: str | None) -> Change:
    if dry_run:
        return Change(str(path), "unchanged" if path.is_dir() else "would-create", f"dir {mode:o}")
    existed = path.is_dir()
    changed = ensure_dir(path, mode, owner=owner)
    outcome = "created" if not existed else ("updated" if changed else "unchanged")
    return Change(str(path), outcome, f"dir {mode:o} {owner or ''}".strip())


def _planned_file(path: Path, content: bytes, dry_run: bool) -> Change:
    if dry_run:
        if not path.exists():
            return Change(str(path), "would-create", "runtime config")
        try:
            same = path.read_bytes() == content
        except OSError:
            same = False
        return Change(str(path), "unchanged" if same else "would-update", "runtime config")
    ensure_dir(path.parent, 0o755)
    result = write_file(path, content, mode=0o640, owner="root", group=FLOWER_USER)
    outcome = {Outcome.CREATED: "created", Outcome.UPDATED: "updated"}.get(result.outcome, "unchanged")
    return Change(str(path), outcome, "runtime config 0640 root:flower")


def apply(config: Config, paths: Paths, *, dry_run: bool = False,
          superlink_address: HostPort | None = None) -> StepResult:
    """Write the runtime configuration (and the SuperLink state directory)."""
    result = StepResult("runtime")
    doc = build_runtime_config(config, paths, superlink_address=superlink_address)
    try:
        if config.role is Role.SUPERLINK:
            result.changes.append(_planned_dir(paths.state_dir, dry_run, 0o700, FLOWER_USER))
            db_dir = database_path(config, paths).parent
            if db_dir != paths.state_dir:
                result.changes.append(_planned_dir(db_dir, dry_run, 0o700, FLOWER_USER))
        path = paths.runtime_config(config.role.value)
        result.changes.append(_planned_file(path, render(doc), dry_run))
    except OSError as exc:
        raise ApplyError(f"runtime config: {exc}") from exc
    result.facts["runtime_config"] = str(paths.runtime_config(config.role.value))
    result.facts["keepalive"] = f"{config.keepalive_time}s/{config.keepalive_timeout}s"
    if config.role is Role.SUPERNODE:
        if doc["superlink_address"] is None:
            result.warnings.append("no SuperLink address yet (OneGate discovery pending): "
                                   "`flower-ctx run supernode` refuses to start until one is written")
        else:
            result.facts["superlink_address"] = doc["superlink_address"]
    return result
