"""`configure --root` on the example contexts shipped in the repo produces a pinned tree (modulo keys
and timestamps), and bad CONTEXT changes no file of an already configured tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flower_ctx.context import render
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.context.sh"))
GOLDEN = REPO / "tests" / "golden"


def configure(root: Path, ctx: Path, role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", role, "--context", str(ctx),
                           "--root", str(root)], capture_output=True, text=True, timeout=120)


def describe(root: Path) -> dict[str, Any]:
    """The tree with what varies between runs (keys, serials, dates, the root path) abstracted."""
    from cryptography import x509

    from flower_ctx.pem import san_entries

    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = "/" + str(p.relative_to(root))
        if rel.endswith("configure.lock"):
            continue
        entry: dict[str, Any] = {"mode": oct(p.stat().st_mode & 0o7777)}
        if p.is_dir():
            entry["type"] = "dir"
        elif p.suffix in (".crt", ".pem"):
            certs = x509.load_pem_x509_certificates(p.read_bytes())
            entry["certs"] = [
                {"subject": _unid(c.subject.rfc4514_string()), "issuer": _unid(c.issuer.rfc4514_string()),
                 "days": (c.not_valid_after_utc - c.not_valid_before_utc).days, "sans": sorted(san_entries(c)),
                 "key": type(c.public_key()).__name__}
                for c in certs
            ]
        elif p.suffix == ".key":
            entry["type"] = "private key"
        elif p.suffix == ".json":
            entry["json"] = json.loads(p.read_text().replace(str(root), "<root>"))
        else:
            entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        out[rel] = entry
    return out


def _unid(name: str) -> str:
    return re.sub(r"CA [0-9a-f]{8}\b", "CA <id>", name)  # the generated CA's name carries a random id


def _role(example: Path) -> str:
    return "superlink" if "superlink" in example.name else "supernode"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_tree_matches_golden(example: Path, stage: Path) -> None:
    out = configure(stage, example, _role(example))
    assert out.returncode == 0, out.stderr
    got = describe(stage)
    golden = GOLDEN / (example.name.replace(".context.sh", "") + ".json")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text()), f"{golden.name} differs: rerun with UPDATE_GOLDEN=1 if intended"


def tree_hash(root: Path) -> dict[str, tuple[str, int, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", p.stat().st_mode,
                     p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


BAD = [
    {"FL_TLS_ENABLED": "perhaps"},
    {"FL_GRPC_KEEPALIVE_TIME": "20", "FL_GRPC_KEEPALIVE_TIMEOUT": "20"},
    {"FL_CERT_EXTRA_SAN": "IP:10.0.0.1,10.0.0.2"},
    {"FL_WG_ENABLED": "YES"},
    {"FL_SSL_CERTFILE": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="},
    {"FL_DATABASE": "../../etc/shadow"},
    {"FLOWER_VERSION": "1.43.0"},
    {"ETH0_IP": "10.0.0.300"},
    {"ONEAPP_FL_LOG_LEVEL": "DEBUG", "FL_LOG_LEVEL": "INFO"},
]


def test_bad_context_changes_no_file(tmp_path: Path, stage: Path) -> None:
    good = REPO / "examples" / "superlink.context.sh"
    assert configure(stage, good, "superlink").returncode == 0
    before = tree_hash(stage)
    from flower_ctx.context import read_file

    base = read_file(good)
    for i, bad in enumerate(BAD):
        ctx = tmp_path / f"bad{i}.sh"
        ctx.write_text(render({**base, **bad}))
        out = configure(stage, ctx, "superlink")
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
        named = {line.split(":")[0] for line in out.stderr.splitlines() if ": " in line}
        expect = {"FL_WG_ADDRESS", "FL_WG_PEERS"} if bad == {"FL_WG_ENABLED": "YES"} else set(bad)
        assert expect & named, (bad, out.stderr)
        assert tree_hash(stage) == before, bad
    # A context that is not even parseable.
    ctx = tmp_path / "broken.sh"
    ctx.write_text(good.read_text() + "FL_TLS_ENABLED='YES\n")
    assert configure(stage, ctx, "superlink").returncode == 2
    assert tree_hash(stage) == before
