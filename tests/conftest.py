"""Shared fixtures and capability checks.

Tests that need root, network namespaces, wireguard-go or Flower are marked and skip with a reason
when the capability is missing; CI runs as root with everything installed, where they must run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def _have_netns() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"fctx-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


IS_ROOT = os.geteuid() == 0
HAVE_NETNS = _have_netns()
HAVE_WG_GO = shutil.which("wireguard-go") is not None and shutil.which("wg") is not None
HAVE_NFT = shutil.which("nft") is not None
HAVE_FLOWER = importlib.util.find_spec("flwr") is not None

requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
requires_netns = pytest.mark.skipif(not HAVE_NETNS, reason="needs root and network namespaces (ip netns)")
requires_wireguard_go = pytest.mark.skipif(
    not HAVE_WG_GO, reason="needs wireguard-go and wireguard-tools (apt-get install wireguard-go wireguard-tools)"
)
requires_nft = pytest.mark.skipif(not HAVE_NFT, reason="needs nftables (apt-get install nftables)")
requires_flower = pytest.mark.skipif(not HAVE_FLOWER, reason="needs the flower extra (pip install '.[flower]')")


def pytest_sessionstart(session: pytest.Session) -> None:
    # In CI (root, clean machine after .ci/run installed everything) a missing capability means a
    # broken setup: fail loudly instead of letting the real-network tests skip.
    if os.environ.get("CI") == "true" and os.environ.get("FLOWER_CTX_ALLOW_SKIPS") != "1":
        from tests.flower_envs import flower_python

        missing = [name for name, ok in (
            ("root", IS_ROOT), ("network namespaces", HAVE_NETNS), ("wireguard-go/wg", HAVE_WG_GO),
            ("nftables", HAVE_NFT), ("flwr", HAVE_FLOWER),
            ("a Python with flwr 1.39 (.venv)", flower_python("1.39") is not None),
            ("a Python with flwr 1.42 (.venv-flwr142)", flower_python("1.42") is not None),
        ) if not ok]
        if missing:
            raise pytest.UsageError(f"CI=true but missing: {', '.join(missing)}")


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    """An empty staging root for ``--root``."""
    root = tmp_path / "stage"
    root.mkdir()
    return root


@pytest.fixture(autouse=True)
def _no_onegate_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test: no OneGate token any test double issued may appear in captured log records."""
    yield
    from tests.onegate_server import ISSUED_TOKENS

    text = caplog.text
    assert not any(t in text for t in ISSUED_TOKENS), "a OneGate token appears in the logs"


@pytest.fixture
def no_token_in_output(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """For modules that exercise OneGate: no issued token in DEBUG logs (urllib3's and ours included)
    or in anything printed. Used with ``pytestmark = pytest.mark.usefixtures("no_token_in_output")``."""
    import logging

    from tests.onegate_server import assert_no_token

    caplog.set_level(logging.DEBUG)
    yield
    out, err = capfd.readouterr()
    assert_no_token(caplog.text, out, err)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Processes a test starts (tests.runtime_helpers.Proc), killed in reverse order when it ends."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            p.kill()
