"""Issue 14, errors: every input gives a named error with exit 1 or 2, never "unexpected error".

Non-regular ``--context`` files, empty ``--root``/``--context``, huge numbers, read-only and full
filesystems (real mounts in a private ``unshare --mount`` namespace that vanishes with the process),
corrupted local state read by every command, arbitrary JSON as the runtime config, AllowedIPs that
would route the underlay into wg0, and test seams that must not react to a stray environment variable.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_ctx import agentstate, underlay
from flower_ctx.commands.run import flower_argv
from flower_ctx.config import load_config
from flower_ctx.errors import FlowerCtxError, ValidationError
from flower_ctx.paths import Paths
from flower_ctx.runtime import RuntimeConfigError, build_runtime_config
from flower_ctx.runtime import read as read_runtime
from tests.conftest import IS_ROOT, REPO, requires_root

EXAMPLES = REPO / "examples"
PUB = base64.b64encode(bytes(range(32))).decode()
PUB2 = base64.b64encode(bytes(range(1, 33))).decode()
needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_named(proc: subprocess.CompletedProcess[str], codes: tuple[int, ...], *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode in codes, (proc.returncode, text[-1500:])
    assert "unexpected error" not in text and "Traceback" not in text, text[-1500:]
    for needle in needles:
        assert needle in text, (needle, text[-1500:])


def problems(role: str, values: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_config(role, values)
    out: dict[str, str] = {}
    for name, msg in info.value.problems:
        out.setdefault(name, msg)
    return out


def configured(tmp_path: Path, role: str = "superlink", name: str = "root") -> tuple[Path, Path]:
    ctx = EXAMPLES / f"{role}.context.sh"
    root = tmp_path / name
    proc = cli("configure", "--role", role, "--context", str(ctx), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    return root, ctx


# --------------------------------------------------------------------------------------------------
# What --context and --root may be


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory", "2 MB file", "socket", "missing", "unreadable"])
@pytest.mark.parametrize("command", ["context", "configure"])
def test_context_that_is_not_a_context_file(tmp_path: Path, kind: str, command: str) -> None:
    import socket

    target = tmp_path / "ctx"
    sock = None
    if kind == "/dev/zero":
        target = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "2 MB file":
        target.write_bytes(b"FL_LOG_LEVEL='INFO'\n" + b"# padding\n" * 210_000)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    elif kind == "unreadable":
        if IS_ROOT:
            pytest.skip("root reads any file")
        target.write_text("FL_LOG_LEVEL='INFO'\n")
        target.chmod(0)
    try:
        if command == "context":
            proc = cli("context", "check", "--role", "superlink", "--context", str(target), timeout=30)
        else:
            proc = cli("configure", "--role", "superlink", "--context", str(target), "--root", str(tmp_path / "R"),
                       timeout=30)
    finally:
        if sock is not None:
            sock.close()
    assert_named(proc, (2,), str(target))
    assert not (tmp_path / "R" / "opt").exists()  # nothing was changed


@pytest.mark.parametrize("argv", [
    ["configure", "--role", "superlink", "--context", str(EXAMPLES / "superlink.context.sh"), "--root", ""],
    ["configure", "--role", "superlink", "--context", str(EXAMPLES / "superlink.context.sh"), "--root", " "],
    ["configure", "--role", "superlink", "--context", "", "--root", "R"],
    ["context", "check", "--role", "superlink", "--context", ""],
    ["status", "--root", ""], ["status", "--json", "--root", ""], ["doctor", "--root", ""],
    ["ca", "export", "--root", ""], ["run", "superlink", "--root", ""],
    ["bootstrap", "--role", "superlink", "--root", ""],
])
def test_empty_root_or_context_is_an_error_not_the_current_directory(tmp_path: Path, argv: list[str]) -> None:
    before = sorted(os.listdir(REPO))
    proc = subprocess.run([sys.executable, "-m", "flower_ctx.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_named(proc, (2,), "empty")
    assert os.listdir(tmp_path) == [] and sorted(os.listdir(REPO)) == before  # no tree staged into "."


# --------------------------------------------------------------------------------------------------
# Huge numbers

HUGE = "9" * 5000
NUMBER_VARS = ["FL_GRPC_KEEPALIVE_TIME", "FL_GRPC_KEEPALIVE_TIMEOUT", "FL_MAX_RETRIES", "FL_MAX_WAIT_TIME",
               "FL_WG_LISTEN_PORT", "FL_WG_MTU", "FL_WG_PERSISTENT_KEEPALIVE"]
WG = {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.10.9.1/24"}
HUGE_CASES = [
    *[("supernode" if n.startswith("FL_MAX") else "superlink", n, HUGE, WG if "_WG_" in n else {})
      for n in NUMBER_VARS],
    ("superlink", "VMID", HUGE, {"ONEGATE_ENDPOINT": "http://169.254.16.9:5030"}),
    ("supernode", "FL_SUPERLINK_ADDRESS", "192.0.2.1:" + HUGE, {"FL_TLS_ENABLED": "NO"}),
    ("superlink", "FL_WG_PEER_ENDPOINT", "hub.example.org:" + HUGE,
     {**WG, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.8.0/24"}),
    ("superlink", "FL_WG_PEER_ALLOWED_IPS", "10.10.8.0/" + HUGE, {**WG, "FL_WG_PEER_PUBLIC_KEY": PUB}),
    ("superlink", "FL_WG_ADDRESS", "10.10.9.1/" + HUGE, {"FL_WG_ENABLED": "YES"}),
    ("superlink", "FL_WG_PEERS", base64.b64encode(f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.10.8.0/24\n"
                                                  f"PersistentKeepalive = {HUGE}\n".encode()).decode(), WG),
    ("superlink", "FL_WG_PEERS", base64.b64encode(f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.10.8.0/24\n"
                                                  f"Endpoint = 203.0.113.1:{HUGE}\n".encode()).decode(), WG),
    ("superlink", "ETH0_IP", HUGE + ".1.1.1", {}),
    ("superlink", "ETH0_IP6", HUGE + "::1", {}),
    ("superlink", "FL_CERT_EXTRA_SAN", f"IP:{HUGE}", {}),
    ("supernode", "FL_NODE_CONFIG", f"partition-id={HUGE}", {}),
]


@pytest.mark.parametrize(("role", "name", "value", "base"), HUGE_CASES,
                         ids=[f"{n}-{i}" for i, (_, n, _, _) in enumerate(HUGE_CASES)])
def test_huge_numbers_are_named_errors(role: str, name: str, value: str, base: dict[str, str]) -> None:
    found = problems(role, {**base, name: value})
    assert name in found, found
    assert len(found[name]) < 600, "the message quotes the whole value"


@pytest.mark.parametrize("endpoint", ["http://169.254.16.9:" + HUGE, "http://169.254.16.9:99999", "http://[::1"])
def test_huge_onegate_port_is_a_named_error(endpoint: str) -> None:
    assert "ONEGATE_ENDPOINT" in problems("superlink", {"ONEGATE_ENDPOINT": endpoint, "VMID": "7"})


def test_huge_flower_version_is_a_named_error(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx.sh"
    ctx.write_text(f"FLOWER_VERSION='1.{HUGE}.0'\n")
    proc = cli("context", "check", "--role", "superlink", "--context", str(ctx))
    assert_named(proc, (2,), "FLOWER_VERSION")


def test_huge_numbers_through_the_command(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx.sh"
    ctx.write_text("".join(f"{n}='{HUGE}'\n" for n in NUMBER_VARS) + "FL_WG_ENABLED='YES'\nVMID='" + HUGE + "'\n")
    for role in ("superlink", "supernode"):
        proc = cli("configure", "--role", role, "--context", str(ctx), "--root", str(tmp_path / "R"))
        assert_named(proc, (2,), "FL_GRPC_KEEPALIVE_TIME", "FL_WG_MTU", "VMID")
        assert HUGE[:100] not in proc.stderr  # named, not echoed whole
    assert not (tmp_path / "R" / "opt").exists()


# --------------------------------------------------------------------------------------------------
# Read-only and full filesystems (real mounts, private namespace)


def in_mount_namespace(setup: str, tail: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``setup`` (shell, mounts) then ``tail`` in a private mount namespace; every mount vanishes with it."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{setup}\n{tail}"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _configure_sh(ctx: Path, root: Path) -> str:
    return shlex.join([sys.executable, "-m", "flower_ctx.cli", "configure", "--role", "superlink", "--context",
                       str(ctx), "--root", str(root)])


@requires_root
@needs_unshare
def test_read_only_filesystem_is_named(tmp_path: Path) -> None:
    root, _ = configured(tmp_path)
    ctx = tmp_path / "ctx.sh"
    text = (EXAMPLES / "superlink.context.sh").read_text()
    assert "FL_CERT_EXTRA_SAN=" in text
    ctx.write_text("".join(line if not line.startswith("FL_CERT_EXTRA_SAN=") else
                           "FL_CERT_EXTRA_SAN='DNS:changed.example.org'\n" for line in text.splitlines(keepends=True)))
    before = (root / "opt/flower/certs/server.pem").read_bytes()
    home = shlex.quote(str(root / "opt/flower"))
    proc = in_mount_namespace(f"mount --bind {home} {home} && mount -o remount,bind,ro {home} || exit 99",
                              "exec " + _configure_sh(ctx, root))
    assert_named(proc, (1,), str(root / "opt/flower"), "Read-only file system")
    assert (root / "opt/flower/certs/server.pem").read_bytes() == before  # the old certificate stands

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    q = shlex.quote(str(fresh))
    proc = in_mount_namespace(f"mount --bind {q} {q} && mount -o remount,bind,ro {q} || exit 99",
                              "exec " + _configure_sh(EXAMPLES / "superlink.context.sh", fresh))
    assert_named(proc, (1,), str(fresh), "Read-only file system")


@requires_root
@needs_unshare
def test_full_filesystem_is_named_and_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    home = root / "opt/flower"
    home.mkdir(parents=True)
    q = shlex.quote(str(home))
    setup = (f"mount -t tmpfs -o size=64k,mode=0755 tmpfs {q} || exit 99\n"
             f"dd if=/dev/zero of={q}/fill bs=4k 2>/dev/null; mkdir -p {q}/certs")
    tail = (_configure_sh(EXAMPLES / "superlink.context.sh", root) + "; rc=$?; echo '---listing'; "
            f"ls -A {q}/certs; exit $rc")
    proc = in_mount_namespace(setup, tail)
    assert_named(proc, (1,), str(home), "No space left on device")
    listing = proc.stdout.split("---listing", 1)[1].split()
    assert not [n for n in listing if n.endswith(".tmp")], listing  # no half-written key left behind
    assert not os.path.ismount(home) and not (home / "fill").exists()  # the tmpfs was private


# --------------------------------------------------------------------------------------------------
# Corrupted local state, read by every command


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


JSON_DAMAGE: dict[str, bytes] = {
    "garbage": b"\x00\xff\xfegarbage{{ \n",
    "empty": b"",
    "JSON list": b"[1, 2, 3]",
    "wrong types": json.dumps({"schema": "1", "role": 7, "time": "x", "published": 1, "endpoint": ["a"], "tls": "yes",
                               "keepalive": [], "sent": "x"}).encode(),
    "deep nesting": _deep(100_000),
    "over 4 MB": b"[" + b"1," * 2_200_000 + b"1]",
}
PEM_DAMAGE: dict[str, bytes] = {
    "garbage": b"\x00\xff\xfegarbage\n",
    "empty": b"",
    "a PEM of the wrong kind": b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
                               b"-----END PRIVATE KEY-----\n",
    "a truncated PEM": b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n",
    "over 4 MB": b"-----BEGIN CERTIFICATE-----\n" + b"A" * 4_500_000 + b"\n-----END CERTIFICATE-----\n",
}
# which damaged file -> (role of the tree, its path, damages, the commands that read it and must name it)
STATE_FILES: dict[str, tuple[str, str, dict[str, bytes], tuple[str, ...]]] = {
    "publication.json": ("superlink", "etc/flower-ctx/publication.json", JSON_DAMAGE, ("status",)),
    # discovered.json is optional by design: a damaged one means "discover again" (agentstate.read_or_none)
    "discovered.json": ("supernode", "etc/flower-ctx/discovered.json", JSON_DAMAGE, ()),
    "runtime config": ("superlink", "opt/flower/config/superlink.json", JSON_DAMAGE,
                       ("status", "doctor", "run", "configure")),
    "supernode runtime config": ("supernode", "opt/flower/config/supernode.json", JSON_DAMAGE,
                                 ("status", "doctor", "run", "configure")),
    "ca.crt": ("superlink", "opt/flower/certs/ca.crt", PEM_DAMAGE, ("status --json", "doctor", "ca", "configure")),
    "server.pem": ("superlink", "opt/flower/certs/server.pem", PEM_DAMAGE, ("status --json", "doctor", "configure")),
    "server.key": ("superlink", "opt/flower/certs/server.key", PEM_DAMAGE, ("configure",)),
}

# Runs each command in a forked child of one process that imported flower-ctx once (so the matrix
# stays fast; two at a time): every command is still a real process with its own exit status,
# stdout and stderr, and a 30 s alarm.
DRIVER = r"""
import json, os, signal, sys, tempfile
import flower_ctx.cli
for m in ("status", "doctor", "ca", "configure", "run"):
    __import__("flower_ctx.commands." + m)
import flower_ctx.tls, flower_ctx.pem, flower_ctx.inspect, cryptography.x509  # the heavy imports, once
commands = json.loads(sys.argv[1])
results = [None] * len(commands)
running = {}

def start(i, argv):
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        signal.alarm(30)
        code = 0
        try:
            flower_ctx.cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            print("DRIVER: escaped", type(exc).__name__, exc, file=sys.stderr)
            code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    running[pid] = (i, argv, out, err)

def reap():
    pid, status = os.wait()
    i, argv, out, err = running.pop(pid)
    out.seek(0); err.seek(0)
    results[i] = {"argv": argv, "rc": os.waitstatus_to_exitcode(status),
                  "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace")}

for i, argv in enumerate(commands):
    # configure repairs the root the commands before it read: never run it beside them.
    while len(running) >= (1 if argv[0] == "configure" else 2):
        reap()
    start(i, argv)
while running:
    reap()
print(json.dumps(results))
"""
ISOLATE = IS_ROOT and shutil.which("unshare") is not None and shutil.which("ip") is not None


def run_commands(commands: list[list[str]]) -> list[dict[str, Any]]:
    """As root, in private network and PID namespaces: doctor's probes of 127.0.0.1:9092 meet no other
    test's SuperLink (they are refused at once), and any process a command starts dies with them."""
    argv = [sys.executable, "-c", DRIVER, json.dumps(commands)]
    if ISOLATE:
        argv = ["unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c",
                'ip link set lo up && exec "$@"', "sh", *argv]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _label(argv: list[str]) -> str:
    return "status --json" if argv[:2] == ["status", "--json"] else argv[0]


@pytest.fixture(scope="module")
def templates() -> Any:
    """A configured staging root per role, copied for each case (configure runs twice, not 100 times)."""
    base = Path(tempfile.mkdtemp(prefix="fctx-hardening-"))
    try:
        roots = {role: configured(base, role, role)[0] for role in ("superlink", "supernode")}
        yield roots
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("which", list(STATE_FILES))
def test_corrupted_state_is_named_by_every_command(tmp_path: Path, templates: dict[str, Path], which: str) -> None:
    role, rel, damages, readers = STATE_FILES[which]
    ctx = EXAMPLES / f"{role}.context.sh"
    commands: list[list[str]] = []
    roots = {}
    for name, data in damages.items():
        root = tmp_path / name.replace(" ", "-")
        shutil.copytree(templates[role], root, symlinks=True)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        roots[name] = root
        r = str(root)
        commands += [["status", "--root", r], ["status", "--json", "--root", r],
                     ["doctor", "--root", r, "--context", str(ctx)], ["ca", "export", "--root", r]]
        if "runtime config" in which:
            # run only where it stops before Flower: checked here first, so a damage that still
            # parsed could never start a SuperLink from this test.
            with pytest.raises(FlowerCtxError):
                read_runtime(Paths(root), role)
            commands.append(["run", role, "--root", r])
        commands.append(["configure", "--role", role, "--context", str(ctx), "--root", r])  # last: it repairs
    results = run_commands(commands)
    for name, root in roots.items():
        for res in (x for x in results if str(root) in x["argv"]):
            text = res["stdout"] + res["stderr"]
            label = _label(res["argv"])
            what = (which, name, label)
            assert res["rc"] in (0, 1, 2), (what, res["rc"], text[-1500:])
            assert "unexpected error" not in text and "Traceback" not in text and "DRIVER" not in text, (what, text)
            if label in readers:
                assert Path(rel).name in text, (what, res["rc"], text[-1500:])
        after = cli("status", "--json", "--root", str(root))  # configure repaired what it owns
        if which not in ("publication.json", "discovered.json"):
            assert after.returncode == 0, (which, name, after.stderr)


def test_doctor_names_a_damaged_server_key(tmp_path: Path) -> None:
    root, ctx = configured(tmp_path)
    (root / "opt/flower/certs/server.key").write_bytes(b"garbage\n")
    res = run_commands([["doctor", "--root", str(root), "--context", str(ctx)]])[0]
    assert res["rc"] == 1 and "server.key" in res["stdout"] + res["stderr"], res


def test_status_text_names_a_damaged_certificate_file(tmp_path: Path) -> None:
    root, _ = configured(tmp_path)
    (root / "opt/flower/certs/ca.crt").write_bytes(b"garbage")
    proc = cli("status", "--root", str(root))
    assert_named(proc, (0, 1), "ca.crt")


@requires_root
@pytest.mark.skipif(shutil.which("ip") is None or shutil.which("unshare") is None, reason="needs ip and unshare")
@pytest.mark.parametrize("name", ["server.key", "ca.crt", "server.pem"])
def test_run_names_a_damaged_certificate_or_key(tmp_path: Path, name: str) -> None:
    """Run in its own network and PID namespaces: Flower's ports are private, and every process it
    might start dies with the namespace."""
    root, _ = configured(tmp_path)
    (root / "opt/flower/certs" / name).write_bytes(b"garbage\n")
    argv = shlex.join([sys.executable, "-m", "flower_ctx.cli", "run", "superlink", "--root", str(root)])
    proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c",
                           f"ip link set lo up; exec {argv}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_named(proc, (1, 2), name)


# --------------------------------------------------------------------------------------------------
# Hypothesis: any JSON as the runtime config (and the agent's records)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.sampled_from(["superlink", "supernode", "INFO", "subprocess", "/opt/flower/x", "127.0.0.1", "h:1", "-x", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)


def _real(role: str) -> dict[str, Any]:
    values = {"FL_SUPERLINK_ADDRESS": "192.0.2.10:9092", "FL_TLS_ENABLED": "NO",
              "FL_NODE_CONFIG": 'partition-id=0 name="a b"'} if role == "supernode" else {}
    return build_runtime_config(load_config(role, values), Paths(Path("/")))


REAL = {role: _real(role) for role in ("superlink", "supernode")}


def _leaf_paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _leaf_paths(v, (*here, k))
    return out


@st.composite
def runtime_documents(draw: st.DrawFn, role: str) -> Any:
    kind = draw(st.sampled_from(["almost", "almost", "any", "real"]))
    if kind == "any":
        return draw(json_values)
    doc = copy.deepcopy(REAL[role])
    if kind == "real":
        return doc
    path = draw(st.sampled_from(_leaf_paths(doc)[1:]))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        parent[path[-1]] = draw(json_values)
    else:
        del parent[path[-1]]
    return doc


@pytest.fixture(scope="module")
def runtime_root() -> Any:
    base = Path(tempfile.mkdtemp(prefix="fctx-runtime-"))
    (base / "opt/flower/config").mkdir(parents=True)
    try:
        yield base
    finally:
        shutil.rmtree(base)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["superlink", "supernode"]), st.data())
def test_runtime_read_returns_a_usable_document_or_its_own_error(runtime_root: Path, role: str, data: Any) -> None:
    doc = data.draw(runtime_documents(role))
    paths = Paths(runtime_root)
    paths.runtime_config(role).write_text(json.dumps(doc))
    try:
        got = read_runtime(paths, role)
    except RuntimeConfigError as exc:
        assert str(paths.runtime_config(role)) in str(exc)
        return
    assert isinstance(got, dict)
    if role == "supernode" and not got.get("superlink_address"):
        return  # run refuses it with its own message
    argv = flower_argv(got)  # what reaches Flower's command line: only checked values
    assert all(isinstance(a, str) and a.isprintable() and a for a in argv), argv


@pytest.mark.parametrize("kind", ["over 4 MB", "fifo"])
def test_runtime_read_names_any_damage_with_its_own_error(tmp_path: Path, kind: str) -> None:
    paths = Paths(tmp_path)
    path = paths.runtime_config("superlink")
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b" " * (5 * 1024 * 1024))
    with pytest.raises(RuntimeConfigError, match="superlink.json"):
        read_runtime(paths, "superlink")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["publication.json", "discovered.json"]), json_values)
def test_agent_records_return_a_dict_or_their_own_error(runtime_root: Path, name: str, doc: Any) -> None:
    paths = Paths(runtime_root)
    paths.agent_dir.mkdir(parents=True, exist_ok=True)
    (paths.agent_dir / name).write_text(json.dumps(doc))
    try:
        got = agentstate.read(paths, name)
    except agentstate.StateFileError as exc:
        assert name in str(exc)
        assert agentstate.read_or_none(paths, name) is None
    else:
        assert isinstance(got, dict)
    agentstate.discovered_superlink(paths)  # never raises


# --------------------------------------------------------------------------------------------------
# Routing that cannot cut the VM off

ONEGATE = {"ONEGATE_ENDPOINT": "http://169.254.16.9:5030", "VMID": "42"}


def peers(*sections: str) -> str:
    return base64.b64encode("".join(sections).encode()).decode()


def peer(key: str, allowed: str, endpoint: str | None = None) -> str:
    return f"[Peer]\nPublicKey = {key}\nAllowedIPs = {allowed}\n" + (f"Endpoint = {endpoint}\n" if endpoint else "")


def single(allowed: str, endpoint: str | None = None, **extra: str) -> dict[str, str]:
    values = {**WG, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": allowed, **extra}
    if endpoint:
        values["FL_WG_PEER_ENDPOINT"] = endpoint
    return values


REFUSED = [
    ("two /1 halves", single("0.0.0.0/1,128.0.0.0/1"), "FL_WG_PEER_ALLOWED_IPS", "every IPv4"),
    ("four /2", single("0.0.0.0/2,64.0.0.0/2,128.0.0.0/2,192.0.0.0/2"), "FL_WG_PEER_ALLOWED_IPS", "every IPv4"),
    ("a /1 and two /2", single("0.0.0.0/1,128.0.0.0/2,192.0.0.0/2"), "FL_WG_PEER_ALLOWED_IPS", "every IPv4"),
    ("v6 halves", single("::/1,8000::/1"), "FL_WG_PEER_ALLOWED_IPS", "every IPv6"),
    ("halves split over two peers", {**WG, "FL_WG_PEERS": peers(peer(PUB, "0.0.0.0/1"), peer(PUB2, "128.0.0.0/1"))},
     "FL_WG_PEERS", "every IPv4"),
    ("v6 halves split over two peers", {**WG, "FL_WG_PEERS": peers(peer(PUB, "::/1"), peer(PUB2, "8000::/1"))},
     "FL_WG_PEERS", "every IPv6"),
    ("OneGate address", single("169.254.0.0/16", **ONEGATE), "FL_WG_PEER_ALLOWED_IPS", "169.254.16.9"),
    ("OneGate address, /32", single("169.254.16.9/32", **ONEGATE), "FL_WG_PEER_ALLOWED_IPS", "OneGate"),
    ("OneGate in a peer section", {**WG, **ONEGATE, "FL_WG_PEERS": peers(peer(PUB, "169.254.16.0/24"))},
     "FL_WG_PEERS", "OneGate"),
    ("OneGate over IPv6", single("fd00::/8", ONEGATE_ENDPOINT="http://[fd00::9]:5030", VMID="42"),
     "FL_WG_PEER_ALLOWED_IPS", "fd00::9"),
    ("its own endpoint", single("203.0.113.0/24", "203.0.113.5:51820"), "FL_WG_PEER_ALLOWED_IPS", "203.0.113.5"),
    ("its own v6 endpoint", single("2001:db8::/32", "[2001:db8::5]:51820"), "FL_WG_PEER_ALLOWED_IPS", "2001:db8::5"),
    ("another peer's endpoint", {**WG, "FL_WG_PEERS": peers(peer(PUB, "10.20.0.0/16", "203.0.113.5:51820"),
                                                             peer(PUB2, "203.0.113.0/24"))}, "FL_WG_PEERS",
     "203.0.113.5"),
]


@pytest.mark.parametrize(("values", "name", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_allowed_ips_that_would_route_the_underlay_are_refused(values: dict[str, str], name: str,
                                                               fragment: str) -> None:
    found = problems("superlink", values)
    assert name in found and fragment in found[name], found


ACCEPTED = [
    ("0.0.0.0/0 alone (never routed)", single("0.0.0.0/0", **ONEGATE)),
    ("::/0 alone", single("::/0", **ONEGATE)),
    ("0.0.0.0/0 and the peer's endpoint", single("0.0.0.0/0", "203.0.113.5:51820")),
    ("one /1 only", single("0.0.0.0/1")),
    ("three /2 of four", single("0.0.0.0/2,64.0.0.0/2,128.0.0.0/2")),
    ("networks beside OneGate", single("10.20.0.0/16,169.254.17.0/24", **ONEGATE)),
    ("an endpoint by name (resolved at apply time)", single("203.0.113.0/24", "hub.example.org:51820")),
    ("OneGate by name", single("10.20.0.0/16", ONEGATE_ENDPOINT="http://onegate.example.org:5030", VMID="42")),
]


@pytest.mark.parametrize("values", [r[1] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_allowed_ips_that_keep_the_underlay_are_accepted(values: dict[str, str]) -> None:
    cfg = load_config("superlink", values)
    assert cfg.wg is not None and cfg.wg.peers


def test_routing_refusal_through_the_command(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx.sh"
    ctx.write_text((EXAMPLES / "superlink.context.sh").read_text().replace("FL_WG_ENABLED='NO'", "")
                   + "".join(f"{k}='{v}'\n" for k, v in single("0.0.0.0/1,128.0.0.0/1").items()))
    proc = cli("configure", "--role", "superlink", "--context", str(ctx), "--root", str(tmp_path / "R"))
    assert_named(proc, (2,), "FL_WG_PEER_ALLOWED_IPS", "every IPv4")
    assert not (tmp_path / "R" / "etc" / "wireguard").exists()


def test_underlay_problems_unit() -> None:
    n = ipaddress.ip_network
    gw = ipaddress.ip_address("192.0.2.1")
    assert underlay.problems([n("10.0.0.0/8")], [("the gateway", gw)]) == []
    assert underlay.problems([], [("the gateway", gw)]) == []
    both = underlay.problems([n("0.0.0.0/1"), n("128.0.0.0/1")], [("the gateway", gw)])
    assert len(both) == 2 and "every IPv4" in both[0] and "the gateway" in both[1] and "192.0.2.1" in both[1]
    assert underlay.problems([n("::/1"), n("8000::/1")], []) and not underlay.problems([n("::/1")], [])
    # A v4 route never covers a v6 address and the reverse.
    assert underlay.problems([n("0.0.0.0/1")], [("x", ipaddress.ip_address("::1"))]) == []
    # routed(): /0 and the tunnel's own prefix are not routes.
    connected = n("10.10.9.0/24")
    assert underlay.routed(connected, [n("0.0.0.0/0"), n("::/0"), n("10.10.9.0/25"), n("10.20.0.0/16")]) == {
        n("10.20.0.0/16")}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 4)), max_size=10),
       st.lists(st.integers(0, 2**32 - 1), max_size=3))
def test_underlay_problems_against_an_independent_oracle(nets: list[tuple[int, int]], keep: list[int]) -> None:
    """Routes of prefix 1..4: they cover everything exactly when each of the 16 /4 blocks is inside one;
    an address is cut off exactly when its integer falls in a route's range."""
    routes = [ipaddress.ip_network(((first << 24) & ~((1 << (32 - p)) - 1) & 0xFFFFFFFF, p)) for first, p in nets]
    keep_list = [(f"address {i}", ipaddress.IPv4Address(a)) for i, a in enumerate(keep)]
    found = underlay.problems(routes, keep_list)

    def inside(addr: int, net: ipaddress.IPv4Network) -> bool:
        lo = int(net.network_address)
        return lo <= addr < lo + net.num_addresses

    covers = all(any(inside(block << 28, r) for r in routes) for block in range(16))
    assert any("every IPv4" in p for p in found) == covers
    for what, addr in keep_list:
        assert any(f", {what}:" in p for p in found) == any(inside(int(addr), r) for r in routes)


# --------------------------------------------------------------------------------------------------
# Test seams do not react to the environment


def test_stray_fault_and_supervisor_variables_change_nothing(tmp_path: Path) -> None:
    env = {"FLOWER_CTX_FAULT_AT": "1", "FLOWER_CTX_SUPERVISOR": "systemd"}
    root = tmp_path / "root"
    proc = cli("configure", "--role", "superlink", "--context", str(EXAMPLES / "superlink.context.sh"), "--root",
               str(root), env=env)
    assert_named(proc, (0,))  # not killed at the first write
    paths = Paths(root)
    for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key, paths.runtime_config("superlink")):
        assert p.is_file() and p.stat().st_size > 0, p
    assert not [p for p in paths.certs_dir.iterdir() if p.name.endswith(".tmp")]
    status = cli("status", "--json", "--root", str(root), env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["service"]["manager"] == "builtin"
    text = cli("status", "--root", str(root), env={**env, "FLOWER_CTX_SUPERVISOR": "builtin"})
    assert "(builtin)" in text.stdout
