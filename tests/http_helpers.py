"""Helpers for the tests of the HTTP era (Flower 1.40+): Flower's route table, requests to every
route, `flwr run` of the era test app, and Control API clients. Flower runs from the era's Python
(tests/flower_envs.py); nothing here imports flwr into the test process."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from tests.flower_envs import bin_dir, flower_env

APP = Path(__file__).resolve().parent / "apps" / "erasapp"

ROUTES_SCRIPT = r"""
import json, os
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
from fastapi.routing import iter_route_contexts
from flwr.superlink.main import create_app
rows = []
for r in iter_route_contexts(create_app().routes):
    for m in sorted(getattr(r, "methods", None) or []):
        rows.append([m, r.path, ",".join(getattr(r, "tags", None) or [])])
print(json.dumps(sorted(rows)))
"""


def superlink_routes(python: str) -> list[tuple[str, str, str]]:
    """(method, path, tag) of every route of that Flower's SuperLink application, read from it."""
    out = subprocess.run([python, "-c", ROUTES_SCRIPT], capture_output=True, text=True, timeout=120,
                         env=flower_env(python))
    assert out.returncode == 0, out.stderr
    return [tuple(r) for r in json.loads(out.stdout)]  # type: ignore[misc]


PROBE_SCRIPT = r"""
import http.client, json, socket, ssl, sys
host, port, ca, routes = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
out = []
for method, path in routes:
    try:
        c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
        c.request(method, path, body=b"" if method == "POST" else None,
                  headers={"Content-Type": "application/protobuf"})
        r = c.getresponse()
        out.append([method, path, r.status, r.read(200).decode("utf-8", "replace")])
        c.close()
    except (OSError, http.client.HTTPException) as exc:
        out.append([method, path, None, type(exc).__name__ + ": " + str(exc)])
print(json.dumps(out))
"""


def probe_routes(prefix: list[str], python: str, host: str, port: int, ca: Path,
                 routes: list[tuple[str, str]]) -> list[tuple[str, str, int | None, str]]:
    """Send every (method, path) with an empty protobuf body over TLS, from where ``prefix`` runs
    (e.g. inside a simulated VM); (method, path, status or None when refused, body or error)."""
    out = subprocess.run([*prefix, python, "-c", PROBE_SCRIPT, host, str(port), str(ca),
                          json.dumps([list(r) for r in routes])], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [tuple(r) for r in json.loads(out.stdout)]  # type: ignore[misc]


def https_status(host: str, port: int, ca: Path, method: str, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        c.request(method, path, body=b"" if method == "POST" else None,
                  headers={"Content-Type": "application/protobuf"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_port(host: str, port: int, timeout: float = 60, prefix: list[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prefix:
            code = f"import socket; socket.create_connection(('{host}', {port}), 1)"
            ok = subprocess.run([*prefix, "python3", "-c", code], capture_output=True).returncode == 0
        else:
            try:
                with socket.create_connection((host, port), timeout=1):
                    ok = True
            except OSError:
                ok = False
        if ok:
            return
        time.sleep(0.2)
    raise AssertionError(f"{host}:{port} does not accept connections after {timeout}s")


def flwr_home(home: Path, address: str, ca: Path | None) -> Path:
    """A FLWR_HOME whose config.toml names one SuperLink connection ``t`` (Control API address)."""
    home.mkdir(parents=True, exist_ok=True)
    tls = f'root-certificates = "{ca}"' if ca is not None else "insecure = true"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "t"\n\n[superlink.t]\naddress = "{address}"\n{tls}\n')
    return home


def flwr_run(python: str, home: Path, tmp: Path, *, rounds: int = 1, timeout: float = 240,
             prefix: list[str] | None = None, config: str = "", stream: bool = True) -> str:
    """`flwr run` of the era test app (a copy) against connection ``t``; its output. Raises on failure.
    ``stream=False`` returns once the run is submitted."""
    app = tmp / "erasapp"
    if not app.exists():
        shutil.copytree(APP, app)
    argv = [*(prefix or []), str(bin_dir(python) / "flwr"), "run", str(app), "t",
            *(["--stream"] if stream else []), "--run-config", f"num-server-rounds={rounds} {config}".strip()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(tmp),
                         env=flower_env(python, FLWR_HOME=str(home)))
    text = out.stdout + out.stderr
    ok = out.returncode == 0 and ("ERASAPP final weights" in text if stream else "Successfully started run" in text)
    assert ok, f"flwr run failed ({out.returncode}):\n{text[-4000:]}"
    return text


def run_ids(text: str) -> list[str]:
    import re

    return re.findall(r"Successfully started run (\d+)", text)


def flwr(python: str, home: Path, *args: str, prefix: list[str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), str(bin_dir(python) / "flwr"), *args], capture_output=True, text=True,
                          timeout=timeout, env=flower_env(python, FLWR_HOME=str(home)))
