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
  http_api          {"host": str, "port": int}   Flower's own HTTP API (Control, Runtime; 1.40+ also Fleet), loopback
  health_server_address  "host:port" | null      Flower's optional gRPC health server
  wg_address        "10.10.9.66/26" | null        this VM's tunnel address (derived from a pool or given)
  runtime_dependency_install  bool (absent: false)  FL_RUNTIME_DEPENDENCY_INSTALL: Flower may uv-sync app deps
superlink only
  fleet_api_address "0.0.0.0:9092"               the Fleet API, the only non-loopback listener: Flower's gRPC
                                                server (1.39) or flower-ctx's Fleet-only HTTP listener (1.40+)
  state_dir         path                          SuperLink state directory (0700 flower)
  supernode_auth    bool                          Flower's SuperNode authentication (--enable-supernode-auth)
  database          path                          SQLite database (FL_DATABASE under /opt/flower)
supernode only
  superlink_address "host:port" | "[v6]:port" | null (null: OneGate discovery pending)
  node_config       "k=v k2=v2"                   FL_NODE_CONFIG, passed to --node-config as is
  max_retries       int (0 = forever)             FL_MAX_RETRIES
  max_wait_time     int seconds (0 = forever)     FL_MAX_WAIT_TIME
  node_key          path | null                   the SuperNode's identity key (TLS and FL_SUPERNODE_AUTH=YES)
gateway (no Flower runs: only schema, role, log_level, tls, wg_address and these)
  tls               {"enabled": bool, "ca_certfile": path|null}  the CA its SuperLink check trusts
  superlink_address "host:port" | null            what its SuperNodes dial; checked through the gateway
  routes            ["10.10.9.0/24", ...]         the routes its peers' allowed IPs put on wg0
  dials             [public key, ...]             peers with an endpoint (the hub it dials)
  probe_source      "192.168.150.2" | null        its zone address: the SuperLink check starts there
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ApplyError, FlowerCtxError
from ..files import Outcome, ensure_dir, exists, is_dir, read_file, write_file
from ..model import Config, HostPort, Role
from ..paths import Paths
from ..plan import Change, StepResult
from ..values import show

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


def _gateway_config(config: Config, paths: Paths, probe_source: str | None) -> dict[str, Any]:
    from ..underlay import routed

    wg = config.wg
    assert wg is not None  # validation: a gateway always has wg0
    routes = set().union(*(routed(wg.address.network, p.allowed_ips) for p in wg.peers))
    source = probe_source or next((str(n.ip) for n in sorted(config.nics, key=lambda n: n.index)
                                   if n.ip is not None), None)
    has_ca = config.tls_enabled and config.pki.ca_pem is not None
    return {
        "schema": SCHEMA,
        "role": config.role.value,
        "log_level": config.log_level,
        "tls": {"enabled": config.tls_enabled, "ca_certfile": str(paths.ca_cert) if has_ca else None},
        "wg_address": str(wg.address),
        "superlink_address": str(config.superlink_address) if config.superlink_address is not None else None,
        "routes": sorted(str(r) for r in routes),
        "dials": sorted(p.public_key for p in wg.peers if p.endpoint is not None),
        "probe_source": source,
    }


def build_runtime_config(config: Config, paths: Paths, *, superlink_address: HostPort | None = None,
                         probe_source: str | None = None) -> dict:
    """The runtime configuration of ``config.role`` (schema in the module docstring)."""
    if config.role is Role.GATEWAY:
        return _gateway_config(config, paths, probe_source)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "role": config.role.value,
        "flower_version": config.flower_version,
        "log_level": config.log_level,
        "isolation": config.isolation,
        "keepalive": {"time_s": config.keepalive_time, "timeout_s": config.keepalive_timeout},
        "tls": _tls_block(config, paths),
        "health_server_address": None,
        "wg_address": str(config.wg.address) if config.wg is not None and not config.wg.unresolved else None,
        "runtime_dependency_install": config.runtime_dependency_install,
    }
    if config.role is Role.SUPERLINK:
        doc["http_api"] = {"host": LOOPBACK, "port": SUPERLINK_HTTP_PORT}
        doc["fleet_api_address"] = FLEET_API_ADDRESS
        doc["state_dir"] = str(paths.state_dir)
        doc["database"] = str(database_path(config, paths))
        doc["supernode_auth"] = config.supernode_auth
    else:
        address = superlink_address if superlink_address is not None else config.superlink_address
        doc["http_api"] = {"host": LOOPBACK, "port": SUPERNODE_HTTP_PORT}
        doc["superlink_address"] = str(address) if address is not None else None
        doc["node_config"] = " ".join(f"{k}={v}" for k, v in config.node_config)
        doc["max_retries"] = config.max_retries
        doc["max_wait_time"] = config.max_wait_time
        # FL_SUPERNODE_AUTH=NO: no key, so Flower 1.39 registers itself (it never does when given one).
        doc["node_key"] = str(paths.node_key) if config.tls_enabled and config.supernode_auth else None
    return doc


class RuntimeConfigError(FlowerCtxError):
    """The runtime configuration on disk is missing a key or holds a value of the wrong kind:
    damaged or not written by this flower-ctx. The message names the file and the fix."""


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_ISOLATIONS = ("subprocess", "process")
_MAX_PATH = 4096


def _path_ok(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("/") and 0 < len(v) <= _MAX_PATH and "\0" not in v and "\n" not in v


def _int_ok(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _address_ok(v: Any) -> bool:
    from ..values import Invalid, host_port

    if not isinstance(v, str):
        return False
    try:
        host_port(v)
    except Invalid:
        return False
    return True


def problems(doc: Any, role: str) -> list[str]:
    """What is wrong with a runtime configuration read from disk ([] when it is usable). Every value
    that reaches Flower's command line is checked here, so a damaged or planted file is refused
    instead of being passed on."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    out: list[str] = []

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            out.append(f"{key}: {what}")

    if doc.get("schema") != SCHEMA:
        return [f"schema must be {SCHEMA} (written by another flower-ctx version?)"]
    if doc.get("role") != role:
        return [f"written for role {show(str(doc.get('role')))}, not {role!r}"]
    if role == "gateway":
        return _gateway_problems(doc)
    need("flower_version", isinstance(doc.get("flower_version"), str) and len(doc["flower_version"]) < 40,
         "must be a version string")
    need("log_level", doc.get("log_level") in _LOG_LEVELS, "must be one of " + ", ".join(_LOG_LEVELS))
    need("isolation", doc.get("isolation") in _ISOLATIONS, "must be one of " + ", ".join(_ISOLATIONS))
    ka = doc.get("keepalive")
    need("keepalive", isinstance(ka, dict) and _int_ok(ka.get("time_s"), 1, 7200)
         and _int_ok(ka.get("timeout_s"), 1, 7200), "must hold time_s and timeout_s in seconds")
    tls = doc.get("tls")
    tls_ok = isinstance(tls, dict) and isinstance(tls.get("enabled"), bool)
    if tls_ok and tls["enabled"]:
        keys = ("ca_certfile", "certfile", "keyfile") if role == "superlink" else ("ca_certfile",)
        tls_ok = all(_path_ok(tls.get(k)) for k in keys)
    need("tls", tls_ok, "must hold enabled and the certificate paths")
    http = doc.get("http_api")
    need("http_api", isinstance(http, dict) and http.get("host") in ("127.0.0.1", "::1", "localhost")
         and _int_ok(http.get("port"), 1, 65535), "must be a loopback host and a port")
    wa = doc.get("wg_address")
    need("wg_address", wa is None or (isinstance(wa, str) and len(wa) < 64), "must be null or an address")
    need("runtime_dependency_install", isinstance(doc.get("runtime_dependency_install", False), bool),
         "must be true or false")
    hs = doc.get("health_server_address")
    need("health_server_address", hs is None or _address_ok(hs), "must be null or host:port")
    if role == "superlink":
        need("fleet_api_address", _address_ok(doc.get("fleet_api_address")), "must be host:port")
        if _address_ok(doc.get("fleet_api_address")) and isinstance(http, dict):
            port = str(doc["fleet_api_address"]).rsplit(":", 1)[1]
            need("fleet_api_address", port != str(http.get("port")),
                 "must not use the port of Flower's loopback HTTP API (http_api)")
        need("state_dir", _path_ok(doc.get("state_dir")), "must be an absolute path")
        need("database", _path_ok(doc.get("database")), "must be an absolute path")
        need("supernode_auth", isinstance(doc.get("supernode_auth", False), bool), "must be true or false")
    else:
        sa = doc.get("superlink_address")
        need("superlink_address", sa is None or _address_ok(sa), "must be null or host:port")
        nc = doc.get("node_config")
        need("node_config", isinstance(nc, str) and node_config_ok(nc), "must be Flower node config text")
        need("max_retries", _int_ok(doc.get("max_retries"), 0, 1_000_000), "must be a whole number")
        need("max_wait_time", _int_ok(doc.get("max_wait_time"), 0, 31_536_000), "must be a whole number")
        nk = doc.get("node_key")
        need("node_key", nk is None or _path_ok(nk), "must be null or an absolute path")
    return out


def _gateway_problems(doc: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            out.append(f"{key}: {what}")

    def strings(v: Any) -> bool:
        return isinstance(v, list) and len(v) <= 4096 and all(isinstance(x, str) and len(x) < 128 for x in v)

    need("log_level", doc.get("log_level") in _LOG_LEVELS, "must be one of " + ", ".join(_LOG_LEVELS))
    tls = doc.get("tls")
    need("tls", isinstance(tls, dict) and isinstance(tls.get("enabled"), bool)
         and (tls.get("ca_certfile") is None or _path_ok(tls.get("ca_certfile"))), "must hold enabled and ca_certfile")
    wa = doc.get("wg_address")
    need("wg_address", isinstance(wa, str) and len(wa) < 64, "must be an address")
    sa = doc.get("superlink_address")
    need("superlink_address", sa is None or _address_ok(sa), "must be null or host:port")
    need("routes", strings(doc.get("routes")), "must be a list of networks")
    need("dials", strings(doc.get("dials")), "must be a list of public keys")
    ps = doc.get("probe_source")
    need("probe_source", ps is None or (isinstance(ps, str) and len(ps) < 64), "must be null or an address")
    return out


def node_config_ok(text: str) -> bool:
    from ..values import Invalid, node_config

    if not text:
        return True
    try:
        node_config(text)
    except Invalid:
        return False
    return True


def read(paths: Paths, role: str) -> dict[str, Any] | None:
    """The runtime configuration of ``role`` on this machine; None when configure has not written
    one. A damaged file raises RuntimeConfigError naming it (a re-run of configure rewrites it)."""
    from ..files import read_file

    path = paths.runtime_config(role)
    fix = f"run `flower-ctx configure --role {role}` to rewrite it"
    try:
        data = read_file(path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise RuntimeConfigError(f"{path}: permission denied (it is 0640 root:flower; run as root or flower)")
    except OSError as exc:
        raise RuntimeConfigError(f"{path}: cannot read it ({exc.strerror or exc})")
    except FlowerCtxError as exc:  # a link, a FIFO, a file far too large: not what configure writes
        raise RuntimeConfigError(f"{exc}: {fix}") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RuntimeConfigError(f"{path} is not valid JSON (damaged?): {fix}") from None
    found = problems(doc, role)
    if found:
        raise RuntimeConfigError(f"{path} is damaged or not from this flower-ctx ({'; '.join(found[:3])}): {fix}")
    return doc


def render(doc: dict) -> bytes:
    """Stable bytes: sorted keys, so an unchanged configuration rewrites nothing."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _planned_dir(path: Path, dry_run: bool, mode: int, owner: str | None) -> Change:
    if dry_run:
        return Change(str(path), "unchanged" if is_dir(path) else "would-create", f"dir {mode:o}")
    existed = is_dir(path)
    changed = ensure_dir(path, mode, owner=owner)
    outcome = "created" if not existed else ("updated" if changed else "unchanged")
    return Change(str(path), outcome, f"dir {mode:o} {owner or ''}".strip())


def _planned_file(path: Path, content: bytes, dry_run: bool) -> Change:
    if dry_run:
        if not exists(path):
            return Change(str(path), "would-create", "runtime config")
        try:
            same = read_file(path) == content
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
    probe_source = None
    if config.role is Role.GATEWAY:
        from ..gateway.zone import zone_address

        probe_source = zone_address(config, paths)
        result.facts["zone_address"] = str(probe_source)
    doc = build_runtime_config(config, paths, superlink_address=superlink_address, probe_source=probe_source)
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
    if config.role is not Role.GATEWAY:
        result.facts["keepalive"] = f"{config.keepalive_time}s/{config.keepalive_timeout}s"
    if config.role is Role.SUPERNODE:
        if doc["superlink_address"] is None:
            result.warnings.append("no SuperLink address yet (OneGate discovery pending): "
                                   "`flower-ctx run supernode` refuses to start until one is written")
        else:
            result.facts["superlink_address"] = doc["superlink_address"]
    return result
