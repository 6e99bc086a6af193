"""How long the WireGuard step takes on one interface with two peers: fresh (key generated, files
written, wireguard-go started, keys/peers/MTU/address/routes set) and no-op (a re-run that reads the
state and changes nothing). Runs the real code inside a simulated VM (network + mount namespace,
needs root, wireguard-go). Figures and ratios only; nothing is asserted.

    python bench/wireguard.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.rig import Rig  # noqa: E402

# Runs inside the VM: one process, so interpreter start and imports are reported apart.
INSIDE = r"""
import ipaddress, json, os, signal, statistics, sys, time
from pathlib import Path
from flower_ctx.model import HostPort, WgPeer
from flower_ctx.paths import Paths
from flower_ctx.wireguard import apply, generate_private_key, public_key_from_private, uapi
from tests.factories import make_config, make_wg

runs = int(sys.argv[1])
peers = tuple(
    WgPeer(public_key_from_private(generate_private_key()), (ipaddress.ip_network(f"10.10.9.{n}/32"),
           ipaddress.ip_network(f"198.51.{n}.0/24")), HostPort(f"198.18.{n}.2", 51820), 25)
    for n in (2, 3)
)

def config(port):
    return make_config("superlink", wg=make_wg(address=ipaddress.ip_interface("10.10.9.1/24"), mtu=1380,
                                                  listen_port=port, peers=peers))

def reset():
    # SIGKILL frees the tun and the port at once (a graceful stop holds the port ~2 s).
    for pid in uapi.daemon_pids("wg0"):
        os.kill(pid, signal.SIGKILL)
    while Path("/sys/class/net/wg0").exists():
        time.sleep(0.005)
    for f in Path("/etc/wireguard").iterdir():
        f.unlink()

def timed(fn, *a, **k):
    t0 = time.perf_counter(); r = fn(*a, **k); return (time.perf_counter() - t0) * 1000, r

t0 = time.perf_counter()
cold, _ = timed(apply, config(51820), Paths())
fresh, noop, dry = [], [], []
for i in range(runs):
    reset()
    ms, r = timed(apply, config(51821 + i), Paths())
    assert r.changed
    fresh.append(ms)
    for _ in range(3):
        ms, r = timed(apply, config(51821 + i), Paths())
        assert not r.changed, r.changes
        noop.append(ms)
    dry.append(timed(apply, config(51821 + i), Paths(), dry_run=True)[0])
reset()
print(json.dumps({"cold": cold, "fresh": statistics.median(fresh), "noop": statistics.median(noop),
                  "dry": statistics.median(dry), "nfresh": len(fresh), "nnoop": len(noop)}))
"""


def main() -> None:
    import json
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with Rig("fcwg") as rig:
        vm = rig.add_vm("bench", 1)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        out = vm.run([sys.executable, "-c", INSIDE, str(args.runs)], env=env, timeout=300).stdout
        total = (time.perf_counter() - t0) * 1000
        r = json.loads(out.strip().splitlines()[-1])
        # A whole `python -c` process that only imports the step: what a CLI run pays before any work.
        t1 = time.perf_counter()
        vm.run([sys.executable, "-c", "import flower_ctx.wireguard, pyroute2, cryptography"], env=env)
        imports = (time.perf_counter() - t1) * 1000
    print("wg0 with 2 peers, wireguard-go, inside a simulated VM")
    print(f"first apply in a process (imports included):   {r['cold']:8.2f} ms")
    print(f"fresh apply (median of {r['nfresh']}):                   {r['fresh']:8.2f} ms")
    print(f"no-op re-run (median of {r['nnoop']}):                   {r['noop']:8.2f} ms")
    print(f"dry-run on a configured VM (median of {r['nfresh']}):    {r['dry']:8.2f} ms")
    print(f"process start + imports (one run):              {imports:8.2f} ms")
    print(f"ratio no-op / fresh: {r['noop'] / r['fresh']:.3f}")
    print(f"(whole benchmark inside the VM: {total / 1000:.1f} s)")


if __name__ == "__main__":
    main()
