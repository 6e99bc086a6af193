"""The project's figures in one run, each beside its baseline as a ratio. Nothing is asserted.

1. `flower-ctx configure` (the command an operator or the boot hook runs, interpreter start
   included), fresh and no-op, per role, into a staging root (--root: no system effects).
2. TLS generation: the SuperLink's TLS step (CA + server certificate, ECDSA P-256, atomic writes)
   against the shell + openssl RSA script typical of appliance hooks (RSA-4096 CA and server key).
3. SuperLink publication to SuperNode discovery through OneGate (the real discovery code and OneGate
   double on loopback, fake clock; from bench/discovery.py) against the fixed 10 s poll.
4. Dead-peer detection with real Flower 1.39 in a network namespace (needs root, ip netns, nftables;
   the approach of tests/test_run_deadpeer.py): agent SuperNodes at the default keepalive (60/20 s)
   and at 2/1 s, against a stock Flower SuperNode, after the Fleet port is blackholed.
5. The same on Flower 1.42's HTTP Fleet API (tests/test_run_http_deadlink.py): agents at 10/5 s and
   60/20 s against stock 1.42; the SuperNode side ("Connection attempt failed") and the SuperLink
   side (the node listed offline by the Control API).

    python bench/figures.py [--runs N] [--observe S] [--skip-deadpeer | --only-deadpeer] [--flower 1.39|1.42|both]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.rig import write_context  # noqa: E402

OPENSSL_SCRIPT = r"""
set -e
cd "$1"
openssl req -x509 -newkey rsa:4096 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=Flower CA" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -keyout server.key -out server.csr -subj "/CN=superlink" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,IP:192.0.2.10,DNS:localhost\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem -days 365 \
  -extfile san.ext 2>/dev/null
chmod 600 ca.key server.key
"""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def configure_figures(runs: int, tmp: Path) -> None:
    from tests.tls_helpers import build_ca

    ca = base64.b64encode(build_ca("bench CA").cert_pem).decode()
    contexts = {
        "superlink": {"ETH0_IP": "192.0.2.10", "FL_TLS_ENABLED": "YES", "FL_CERT_EXTRA_SAN": "IP:203.0.113.10"},
        "supernode": {"ETH0_IP": "192.0.2.20", "FL_SUPERLINK_ADDRESS": "203.0.113.10:9092",
                      "FL_SSL_CA_CERTFILE": ca},
    }
    print("1. flower-ctx configure --role R --root STAGE (CLI, interpreter start included)")
    for role, values in contexts.items():
        ctx = write_context(tmp / f"{role}.sh", values)
        fresh, noop = [], []
        for i in range(runs):
            stage = tmp / f"{role}-{i}"
            stage.mkdir()
            argv = [sys.executable, "-m", "flower_ctx", "configure", "--role", role, "--context", str(ctx),
                    "--root", str(stage)]
            fresh.append(timed(argv))
            noop.append(timed(argv))
        f, n = statistics.median(fresh), statistics.median(noop)
        print(f"   {role:9} fresh {ms(f)}   no-op {ms(n)}   ratio no-op/fresh {n / f:.2f}")


def tls_figures(runs: int, tmp: Path) -> None:
    from flower_ctx import tls
    from flower_ctx.paths import Paths
    from tests.factories import make_config, make_wg

    config = make_config(wg=make_wg())
    tls.apply(config, Paths(tmp / "tls-warm"))  # imports and OpenSSL initialisation paid once
    ours = []
    for i in range(runs):
        t0 = time.perf_counter()
        tls.apply(config, Paths(tmp / f"tls-{i}"))
        ours.append(time.perf_counter() - t0)
    shell = []
    if shutil.which("openssl"):
        for i in range(max(1, runs // 3)):
            d = tmp / f"openssl-{i}"
            d.mkdir()
            shell.append(timed(["sh", "-c", OPENSSL_SCRIPT, "sh", str(d)]))
    o = statistics.median(ours)
    print("2. TLS generation, CA + server certificate")
    print(f"   flower-ctx (ECDSA P-256, in process)   {ms(o)}")
    if shell:
        s = statistics.median(shell)
        print(f"   shell + openssl (RSA-4096, baseline)   {ms(s)}   ratio flower-ctx/baseline {o / s:.4f} "
              f"({s / o:.0f}x faster)")
    else:
        print("   shell + openssl baseline: openssl not installed")


def discovery_figures() -> None:
    spec = importlib.util.spec_from_file_location("bench_discovery", REPO / "bench" / "discovery.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from tests.onegate_server import OneGateServer

    strategies = {"flower-ctx backoff 1..15 s (default)": ({"initial_backoff": 1.0, "max_backoff": 15.0}, None),
                  "flower-ctx backoff 1..5 s": ({"initial_backoff": 1.0, "max_backoff": 5.0}, None),
                  "fixed 10 s poll (baseline)": ({"initial_backoff": 10.0, "max_backoff": 10.0}, 10.0)}
    publish = [t / 2 for t in range(1, 121)]  # publication at 0.5 .. 60 s
    rows = {}
    with OneGateServer() as gate:
        for name, (strategy, fixed) in strategies.items():
            delays = [d for t in publish if (d := mod._run(gate, strategy, t, fixed)[0]) is not None]
            load = mod._run(gate, strategy, mod.WAIT_S, fixed)[1] - 1  # requests while nothing is published
            rows[name] = (statistics.mean(delays), max(delays), load)
    bm, bx, bl = rows["fixed 10 s poll (baseline)"]
    print("3. SuperLink publication -> SuperNode finds it through OneGate (publication at 0.5..60 s; requests "
          f"during a {mod.WAIT_S:g} s wait)")
    for name, (m, x, n) in rows.items():
        ratio = "" if name.startswith("fixed") else \
            f"   ratio mean {m / bm:.2f}, worst {x / bx:.2f}, requests {n / bl:.2f}"
        print(f"   {name:38} mean {m:5.2f} s  worst {x:5.2f} s  requests {n:3d}{ratio}")


CONTROL_SCRIPT = """
import sys
from flower_ctx.admission.control import ControlClient
c = ControlClient("127.0.0.1", 8000, open(sys.argv[1], "rb").read())
print(" ".join(f"{n.node_id}={n.status}" for n in c.list_nodes()))
"""


def deadpeer_figures(observe: float, minor: str, agents_ka: tuple[tuple[int, int], ...], label: str) -> None:
    """Blackhole the Fleet port of real Flower ``minor`` in a namespace; SuperNode agents at each
    keepalive pair and a stock SuperNode report "Connection attempt failed" (the SuperNode side);
    the SuperLink's node list shows each go offline (its side)."""
    from flower_ctx.commands.run import flower_argv
    from tests.flower_envs import flower_python
    from tests.runtime_helpers import Proc, kill_tree, make_pki, stage_runtime_config

    print(f"{label}: Fleet port blackholed (real Flower {minor}, TLS, one network namespace)")
    if os.geteuid() != 0 or not shutil.which("nft"):
        print("   skipped: needs root, ip netns and nftables")
        return
    py = flower_python(minor)
    if py is None:
        print(f"   skipped: no Python with flwr {minor} (.venv-flwr{minor.replace('.', '')}, made by test.sh)")
        return
    version = f"{minor}.0"
    ns = f"fclabbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs: list[Proc] = []
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True, input=(
            "table inet fclabbench {\n chain in { type filter hook input priority 0; policy accept; }\n}\n"))
        tmp = Path(tempfile.mkdtemp(prefix="fclab-bench-"))
        pki = make_pki(tmp / "pki")
        stage_runtime_config(tmp / "L", "superlink", pki, fleet_api_address="127.0.0.1:9092")
        for i, (t_s, to_s) in enumerate(agents_ka):
            stage_runtime_config(tmp / f"A{i}", "supernode", pki, superlink_address="127.0.0.1:9092",
                                 keepalive={"time_s": t_s, "timeout_s": to_s}, http_api={"port": 9094 + 2 * i})
        stock_doc = stage_runtime_config(tmp / "K", "supernode", pki, superlink_address="127.0.0.1:9092",
                                         http_api={"port": 9095})
        venv_bin = str(Path(py).parent)
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        cli = ["ip", "netns", "exec", ns, py, "-m", "flower_ctx.cli", "run"]
        link = Proc([*cli, "superlink", "--root", str(tmp / "L")], env=env)
        agents = {f"{t_s}/{to_s} s": Proc([*cli, "supernode", "--root", str(tmp / f"A{i}")], env=env)
                  for i, (t_s, to_s) in enumerate(agents_ka)}
        stock = Proc(["ip", "netns", "exec", ns, f"{venv_bin}/flower-supernode",
                      *flower_argv(stock_doc, version)[1:]], env=env)
        procs = [link, *agents.values(), stock]
        link.start()
        time.sleep(2)
        for p in (*agents.values(), stock):
            p.start()
        for p in (*agents.values(), stock):
            p.wait_for("SuperNode ID", 90)
        members = {**agents, "stock": stock}
        ids = {name: p.text().split("SuperNode ID: ")[1].split()[0] for name, p in members.items()}
        time.sleep(3)
        for rule in ("tcp dport 9092 drop", "tcp sport 9092 drop"):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "fclabbench", "in",
                            *rule.split()], check=True)
        dropped = time.monotonic()
        lost = "Connection attempt failed"
        offline: dict[str, float] = {}
        deadline = dropped + observe
        while time.monotonic() < deadline:
            if all(p.first(lost, dropped) for p in procs[1:]) and (version < "1.40" or len(offline) == len(ids)):
                break
            if version >= "1.40":  # the node list through the Control API on the namespace's loopback
                out = subprocess.run(["ip", "netns", "exec", ns, py, "-c", CONTROL_SCRIPT, str(pki.ca)],
                                     capture_output=True, text=True, cwd=REPO, timeout=30).stdout
                status = dict(x.split("=") for x in out.split())
                for name, node_id in ids.items():
                    if status.get(node_id) == "offline" and name not in offline:
                        offline[name] = time.monotonic() - dropped
            time.sleep(0.5)

        def took(p: Proc) -> float | None:
            t = p.first(lost, dropped)
            return t - dropped if t else None

        def fmt(x: float | None) -> str:
            return f"{x:6.1f} s" if x is not None else f"not within {observe:.0f} s"

        stock_t, stock_off = took(stock), offline.get("stock")
        for name, p in agents.items():
            t = took(p)
            ratio = (f"ratio {t / stock_t:.2f}" if t and stock_t else f"ratio <= {t / observe:.2f}" if t else "")
            line = f"   agent keepalive {name:9} SuperNode notices {fmt(t)}   stock Flower: {fmt(stock_t)}  {ratio}"
            if version >= "1.40":
                off = offline.get(name)
                oratio = f"ratio {off / stock_off:.2f}" if off and stock_off else ""
                line += f"\n   {'':25} SuperLink marks offline {fmt(off)}   stock: {fmt(stock_off)}  {oratio}"
            print(line)
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for p in procs:
            p.kill()
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                kill_tree(int(pid))
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--observe", type=float, default=90.0, help="seconds to watch stock Flower after the blackhole")
    ap.add_argument("--skip-deadpeer", action="store_true")
    ap.add_argument("--only-deadpeer", action="store_true", help="only figures 4 and 5")
    ap.add_argument("--flower", choices=("1.39", "1.42", "both"), default="both",
                    help="which Flower's dead-peer figure (1.42 needs .venv-flwr142, made by test.sh)")
    args = ap.parse_args()
    if not args.only_deadpeer:
        with tempfile.TemporaryDirectory(prefix="fclab-figures-") as d:
            tmp = Path(d)
            configure_figures(args.runs, tmp)
            tls_figures(args.runs * 3, tmp)
        discovery_figures()
    if args.skip_deadpeer:
        return
    if args.flower in ("1.39", "both"):
        deadpeer_figures(args.observe, "1.39", ((60, 20), (2, 1)), "4. Dead-peer detection, gRPC Fleet API")
    if args.flower in ("1.42", "both"):
        deadpeer_figures(args.observe, "1.42", ((10, 5), (60, 20)), "5. Dead-link detection, HTTP Fleet API")


if __name__ == "__main__":
    main()
