"""The runtime eras (issue 17): the face that picks an era by the installed Flower, the HTTP era's
argv, keepalive mapping, Fleet-only filter and state-database guard as units; then real Flower 1.42
processes started through ``flower-ctx run`` on loopback with TLS: the SuperNode joins through the
public Fleet-only listener, every route that is not Fleet is refused there and answers on loopback,
both ends of the Fleet connection carry the keepalive timers, a `flwr run` completes, and SuperNode
authentication with admission through the Control API works as on 1.39."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from flower_ctx.commands import run as run_cmd
from flower_ctx.runtime import eras, http_keepalive, statedb
from flower_ctx.runtime.http_era import HEALTH, FleetOnlyOnPublic, bind_listener
from tests.flower_envs import ctx_argv, flower_env, flower_python, requires_flower_142
from tests.http_helpers import (
    flwr,
    flwr_home,
    flwr_run,
    https_status,
    probe_routes,
    superlink_routes,
    wait_port,
)
from tests.runtime_helpers import Proc, free_port, make_pki, stage_runtime_config

# ---------------------------------------------------------------- units


def test_the_installed_flower_picks_the_era() -> None:
    assert eras.for_version("1.39.0") is eras.GRPC
    for v in ("1.40.0", "1.41.0", "1.42.0", "1.42.7"):
        assert eras.for_version(v) is eras.HTTP
    for v in ("1.38.2", "1.43.0", "2.0.0"):
        with pytest.raises(eras.UnsupportedFlower, match="1.39.0 to 1.42.x"):
            eras.for_version(v)


def _doc(tmp: Path, role: str, **changes: Any) -> dict[str, Any]:
    return stage_runtime_config(tmp / role, role, make_pki(tmp / "pki"), **changes)


def test_http_era_argv_has_no_grpc_flags_and_keeps_flower_on_loopback(tmp_path: Path) -> None:
    link = _doc(tmp_path, "superlink", supernode_auth=True)
    argv = run_cmd.flower_argv(link, "1.42.0")
    assert argv[0] == "flower-superlink"
    assert not {"--fleet-api-type", "--fleet-api-address", "--grpc-rere"} & set(argv)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8000"
    assert argv[argv.index("--database") + 1] == link["database"] and "--enable-supernode-auth" in argv
    assert argv[argv.index("--ssl-certfile") + 1] == link["tls"]["certfile"]
    grpc = run_cmd.flower_argv(link, "1.39.0")
    assert grpc[grpc.index("--fleet-api-address") + 1] == "0.0.0.0:9092" and "grpc-rere" in grpc

    node = _doc(tmp_path, "supernode", superlink_address="203.0.113.5:9092", node_key="/opt/flower/certs/node.key",
                node_config="partition-id=0", max_retries=3)
    argv = run_cmd.flower_argv(node, "1.42.0")
    assert "--grpc-rere" not in argv and argv[argv.index("--superlink") + 1] == "203.0.113.5:9092"
    assert argv[argv.index("--auth-supernode-private-key") + 1] == "/opt/flower/certs/node.key"
    assert argv[argv.index("--root-certificates") + 1] == node["tls"]["ca_certfile"]
    assert "--grpc-rere" in run_cmd.flower_argv(node, "1.39.0")
    node["superlink_address"] = None
    with pytest.raises(run_cmd.RunError, match="no SuperLink address yet"):
        run_cmd.flower_argv(node, "1.42.0")


def test_runtime_config_refuses_the_fleet_port_on_flowers_own_port(tmp_path: Path) -> None:
    from flower_ctx.paths import Paths
    from flower_ctx.runtime import RuntimeConfigError, read

    _doc(tmp_path, "superlink", fleet_api_address="0.0.0.0:8000")
    with pytest.raises(RuntimeConfigError, match="fleet_api_address: must not use the port"):
        read(Paths(tmp_path / "superlink"), "superlink")


def test_flowers_legacy_grpc_switches_are_removed_from_its_environment(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin", "FLWR_INTERNAL_GRPC_CONTROL_API": "1", "FLWR_INTERNAL_GRPC_FLEET_API": "1"}
    out = run_cmd.prepare_environment(_doc(tmp_path, "superlink"), env)
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in out and "FLWR_INTERNAL_GRPC_FLEET_API" not in out


def test_keepalive_numbers_map_to_socket_options_and_heartbeat() -> None:
    opts = {(level, opt): value for level, opt, value in http_keepalive.socket_options(60, 20)}
    assert opts == {(socket.SOL_SOCKET, socket.SO_KEEPALIVE): 1, (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): 60,
                    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): 20, (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): 1,
                    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT): 20_000}
    # 2H (Flower's offline bound) about T+t, within Flower's [10, 1800] and never slower than its 30 s.
    assert [http_keepalive.heartbeat_interval(t, to) for t, to in ((10, 5), (30, 10), (60, 20), (7200, 600))] \
        == [10, 20, 30, 30]
    with pytest.raises(ValueError):
        http_keepalive.socket_options(0, 1)


def test_listener_options_are_inherited_by_accepted_sockets() -> None:
    opts = http_keepalive.socket_options(7, 3)
    with bind_listener("127.0.0.1", 0, opts) as lsock:
        port = lsock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = lsock.accept()
            with conn:
                got = {opt: conn.getsockopt(level, opt) for level, opt, _ in opts}
    assert got == {opt: value for _, opt, value in opts}
    with bind_listener("0.0.0.0", 0, opts) as wild:  # dual-stack like gRPC's wildcard, where IPv6 exists
        assert wild.family in (socket.AF_INET6, socket.AF_INET)


def test_status_and_doctor_describe_the_keepalive_of_the_installed_era(tmp_path: Path) -> None:
    assert eras.keepalive_summary("1.39.0", 60, 20) == "ping every 60s, timeout 20s"
    text = eras.keepalive_summary("1.42.0", 10, 5)
    assert "TCP keepalive probe after 10s idle" in text and "dropped 15s" in text and "offline after 20s" in text


@requires_flower_142
def test_status_on_142_names_the_http_keepalive(tmp_path: Path) -> None:
    py = flower_python("1.42")
    assert py is not None
    root = tmp_path / "stage"
    root.mkdir()
    ctx = Path(__file__).resolve().parent.parent / "examples" / "superlink.context.sh"
    conf = subprocess.run(ctx_argv(py, "configure", "--role", "superlink", "--context", str(ctx), "--root", str(root)),
                          capture_output=True, text=True, timeout=120)
    assert conf.returncode == 0, conf.stderr
    out = subprocess.run(ctx_argv(py, "status", "--root", str(root)), capture_output=True, text=True, timeout=120)
    assert "1.42.0 installed" in out.stdout and "HTTP Fleet API: TCP keepalive" in out.stdout, out.stdout


def _asgi(filter_app: FleetOnlyOnPublic, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(filter_app(scope, receive, send))
    return sent


def test_fleet_only_filter_passes_exact_fleet_routes_on_the_public_port_only() -> None:
    reached: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope.get("path", scope["type"]))

    fleet = {("POST", "/v1/fleet/pull-messages"), ("POST", "/v1/fleet/push-messages")}
    f = FleetOnlyOnPublic(app, 9092, fleet | HEALTH)

    def http(port: int, method: str, path: str, **extra: Any) -> int | None:
        reached.clear()
        sent = _asgi(f, {"type": "http", "server": ("10.0.0.1", port), "method": method, "path": path, **extra})
        return None if reached else sent[0]["status"]

    assert http(9092, "POST", "/v1/fleet/pull-messages") is None and http(9092, "GET", "/health") is None
    for method, path in (("POST", "/v1/control/list-runs"), ("POST", "/v1/runtime/get-nodes"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), ("GET", "/v1/fleet/pull-messages"),
                         ("POST", "/v1/fleet/../control/list-runs"), ("POST", "/v1/fleet/pull-messages/"),
                         ("POST", "//v1/fleet/pull-messages"), ("POST", "/v1/fleet/"),
                         ("POST", "/V1/FLEET/pull-messages")):
        assert http(9092, method, path) == 404, (method, path)
    assert http(9092, "POST", "/v1/fleet/pull-messages", root_path="/v1/control") == 404
    assert http(8000, "POST", "/v1/control/list-runs") is None  # loopback: the whole application
    ws = _asgi(f, {"type": "websocket", "server": ("10.0.0.1", 9092), "path": "/v1/fleet/pull-messages"})
    assert ws == [{"type": "websocket.close", "code": 1008}]
    reached.clear()
    _asgi(f, {"type": "lifespan"})
    assert reached == ["lifespan"]


def _state_db(path: Path, revision: str) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    con.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    con.execute("CREATE TABLE run (run_id INTEGER)")
    con.execute("INSERT INTO run VALUES (42)")
    con.commit()
    con.close()


def test_state_database_is_copied_before_an_upgrade_and_a_newer_one_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    assert statedb.prepare(db, "1.42.0") == []  # no database yet: Flower creates it
    _state_db(db, statedb.HEADS[(1, 39)])
    assert statedb.prepare(db, "1.40.0") == []  # same schema as 1.39
    lines = statedb.prepare(db, "1.42.0")
    copy = tmp_path / "state.db.before-flwr-1.42.0"
    assert copy.is_file() and str(copy) in lines[0] and "one way" in lines[0]
    assert sqlite3.connect(copy).execute("SELECT run_id FROM run").fetchone() == (42,)
    assert statedb.revision(copy) == statedb.HEADS[(1, 39)]
    db.unlink()
    _state_db(db, statedb.HEADS[(1, 42)])
    assert statedb.prepare(db, "1.42.0") == []
    with pytest.raises(statedb.StateDbError, match=r"upgraded by Flower 1.42.*FLOWER_VERSION back.*before-flwr-1.42.0"):
        statedb.prepare(db, "1.39.0")


# ---------------------------------------------------------------- real Flower 1.42 on loopback

def _ss_keepalive(port: int) -> list[str]:
    """``ss -tno`` lines of established connections to or from ``port`` (timer:(keepalive,...))."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


@requires_flower_142
@pytest.mark.flower
@pytest.mark.slow
def test_superlink_and_supernode_on_142_fleet_only_public_port_keepalive_and_a_run(
        tmp_path: Path, procs: list[Proc]) -> None:
    py = flower_python("1.42")
    assert py is not None
    pki = make_pki(tmp_path / "pki")
    fleet, control = free_port(), free_port()
    stage_runtime_config(tmp_path / "L", "superlink", pki, fleet_api_address=f"127.0.0.1:{fleet}",
                         http_api={"port": control}, keepalive={"time_s": 7, "timeout_s": 3})
    stage_runtime_config(tmp_path / "N", "supernode", pki, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()}, keepalive={"time_s": 7, "timeout_s": 3})
    env = flower_env(py)
    link = Proc(ctx_argv(py, "run", "superlink", "--root", str(tmp_path / "L")), env=env).start()
    procs.append(link)
    link.wait_for("public Fleet API on", 90)
    wait_port("127.0.0.1", fleet)
    node = Proc(ctx_argv(py, "run", "supernode", "--root", str(tmp_path / "N")), env=env).start()
    procs.append(node)
    node.wait_for("SuperNode ID", 90)
    assert "http era" in link.text() and "heartbeat interval 10s" in node.text()

    # Every route that is not Fleet or /health: 404 on the public port, answered on loopback.
    routes = superlink_routes(py)
    others = [(m, p) for m, p, _ in routes if not p.startswith("/v1/fleet/") and p != "/health"]
    assert {p for _, p in others} >= {"/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node",
                                      "/v1/runtime/get-nodes", "/docs", "/openapi.json"}
    public = probe_routes([], py, "127.0.0.1", fleet, pki.ca, others)
    assert [(m, p, s) for m, p, s, _ in public if s != 404] == []
    assert https_status("127.0.0.1", control, pki.ca, "POST", "/v1/control/list-runs") == 200
    assert https_status("127.0.0.1", control, pki.ca, "GET", "/openapi.json") == 200
    assert https_status("127.0.0.1", fleet, pki.ca, "GET", "/health") == 200
    assert https_status("127.0.0.1", fleet, pki.ca, "POST", "/v1/fleet/pull-messages") == 401  # Flower's own check
    # Readiness's SuperLink check (a verified TLS handshake on the Fleet address) holds on the HTTP listener.
    from flower_ctx.probe import probe_tls

    assert probe_tls("127.0.0.1", fleet, pki.ca.read_bytes()).ok

    # Both ends of the SuperNode's Fleet connection run the kernel keepalive timer.
    deadline = time.monotonic() + 15
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = _ss_keepalive(fleet)
        if len([x for x in lines if "keepalive" in x]) >= 2:
            break
        time.sleep(0.3)
    assert len([x for x in lines if "timer:(keepalive" in x]) >= 2, lines

    # A federated run through the public listener (GetFab, messages, objects), Control on loopback.
    home = flwr_home(tmp_path / "flwr", f"127.0.0.1:{control}", pki.ca)
    out = flwr_run(py, home, tmp_path, rounds=2)
    assert "[ROUND 2/2]" in out
    # The flwr CLI pointed at the public port cannot reach the Control API.
    public_home = flwr_home(tmp_path / "flwr-public", f"127.0.0.1:{fleet}", pki.ca)
    ls = flwr(py, public_home, "ls")
    assert ls.returncode != 0, ls.stdout


@requires_flower_142
@pytest.mark.flower
@pytest.mark.slow
def test_supernode_auth_and_admission_through_the_control_api_on_142(tmp_path: Path, procs: list[Proc]) -> None:
    from flower_ctx.admission.control import ControlClient, ControlError
    from flower_ctx.admission.keys import generate
    from flower_ctx.files import ensure_dir, write_file
    from flower_ctx.paths import Paths

    py = flower_python("1.42")
    assert py is not None
    pki = make_pki(tmp_path / "pki")
    fleet, control = free_port(), free_port()
    stage_runtime_config(tmp_path / "L", "superlink", pki, fleet_api_address=f"127.0.0.1:{fleet}",
                         http_api={"port": control}, supernode_auth=True)
    env = flower_env(py)
    link = Proc(ctx_argv(py, "run", "superlink", "--root", str(tmp_path / "L")), env=env).start()
    procs.append(link)
    link.wait_for("public Fleet API on", 90)
    wait_port("127.0.0.1", control)

    def node(name: str) -> tuple[Proc, Any]:
        root = tmp_path / name
        private, public = generate()
        paths = Paths(root)
        stage_runtime_config(root, "supernode", pki, superlink_address=f"127.0.0.1:{fleet}",
                             http_api={"port": free_port()}, node_key=str(paths.node_key))
        ensure_dir(paths.certs_dir, 0o755)
        write_file(paths.node_key, private, 0o600)
        return Proc(ctx_argv(py, "run", "supernode", "--root", str(root)), env=env), public

    admitted, key_a = node("A")
    stranger, _ = node("S")
    client = ControlClient("127.0.0.1", control, pki.ca.read_bytes())
    node_id = client.register(key_a.pem(), "site-a")  # flower_ctx.admission's client, 1.39 protobufs
    procs += [admitted.start(), stranger.start()]
    admitted.wait_for("SuperNode ID", 90)
    stranger.wait_for("Failed to activate SuperNode", 90)  # health.NOT_ADMITTED_MARKERS, 1.42 wording
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stranger.popen.poll() is None:
        time.sleep(0.2)
    assert stranger.popen.poll() not in (None, 0), "an unregistered key must not stay connected"
    nodes = {n.node_id: n for n in client.list_nodes()}
    assert nodes[node_id].status == "online" and nodes[node_id].name == "site-a"
    assert nodes[node_id].heartbeat_interval == 30  # keepalive 60/20 -> Flower's own 30 s

    # The same Control API is not reachable on the Fleet port.
    with pytest.raises(ControlError, match="HTTP 404"):
        ControlClient("127.0.0.1", fleet, pki.ca.read_bytes()).list_nodes()

    # Unregistering locks the connected SuperNode out within seconds.
    t0 = time.monotonic()
    client.unregister(node_id)
    while time.monotonic() < t0 + 30 and admitted.popen.poll() is None:
        time.sleep(0.1)
    assert admitted.popen.poll() is not None, "the unregistered SuperNode is still running"
    print(f"\n1.42: unregistered SuperNode exited after {time.monotonic() - t0:.1f}s (rc {admitted.popen.returncode})")
    assert json.dumps([n.status for n in client.list_nodes() if n.node_id == node_id]) == '["unregistered"]'
