"""How long the SuperLink's TLS step takes: a fresh generation (CA + server certificate, ECDSA P-256,
written atomically) and a no-change re-run, against generating one RSA-4096 key in the same run (the
approach common in appliance scripts). Figures and ratios only; nothing is asserted.

    python bench/tls.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flower_ctx import tls  # noqa: E402
from flower_ctx.paths import Paths  # noqa: E402
from tests.factories import make_config, make_wg  # noqa: E402


def timed_ms(fn, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000


def crypto_only() -> None:
    """The cryptographic work of a fresh generation, without the file writes (fsyncs)."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, srv_key = tls.new_key(), tls.new_key()
    ca = tls.make_ca(ca_key, now)
    sans = tls.server_sans(make_config(wg=make_wg()))
    tls.cert_pem(tls.make_server_cert(srv_key, ca, ca_key, sans, now), ca)
    tls.key_pem(ca_key), tls.key_pem(srv_key)


def rsa4096() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa.generate_private_key(public_exponent=65537, key_size=4096)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rsa-runs", type=int, default=3)
    args = parser.parse_args()
    config = make_config(wg=make_wg())
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: imports (cryptography, OpenSSL init) are paid once per process, reported apart.
        cold = timed_ms(tls.apply, config, Paths(Path(tmp) / "cold"))
        fresh, rerun, dry = [], [], []
        for i in range(args.runs):
            paths = Paths(Path(tmp) / f"run-{i}")
            fresh.append(timed_ms(tls.apply, config, paths))
            rerun.append(timed_ms(tls.apply, config, paths))
            dry.append(timed_ms(tls.apply, config, paths, dry_run=True))
        crypto = [timed_ms(crypto_only) for _ in range(args.runs)]
        rsa = [timed_ms(rsa4096) for _ in range(args.rsa_runs)]
    f, r, d, c, k = (statistics.median(x) for x in (fresh, rerun, dry, crypto, rsa))
    print(f"first run in a process (imports included): {cold:8.2f} ms")
    print(f"fresh generation, CA + server (median of {args.runs}): {f:8.2f} ms")
    print(f"  of which keys + certificates (no writes):      {c:8.2f} ms")
    print(f"no-change re-run (median of {args.runs}):            {r:8.2f} ms")
    print(f"dry-run on a configured tree (median of {args.runs}): {d:8.2f} ms")
    print(f"baseline: one RSA-4096 key (median of {args.rsa_runs}):     {k:8.2f} ms")
    print(f"ratio fresh / RSA-4096 key: {f / k:.4f}  (RSA-4096 is {k / f:.0f}x slower)")
    print(f"ratio keys+certificates / RSA-4096 key: {c / k:.5f}")
    print(f"ratio re-run / fresh:       {r / f:.3f}")


if __name__ == "__main__":
    main()
