"""Keys: ours against the reference tools (`wg genkey`, `wg pubkey`), and `flower-ctx wg keygen`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flower_ctx.wireguard import generate_private_key, public_key_from_private
from flower_ctx.wireguard.keys import KeyError_, clamp, decode_key
from tests.conftest import requires_wireguard_go

N = 150  # per direction: 300 keys in total


def wg(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=True).stdout.strip()


@requires_wireguard_go
def test_our_public_keys_equal_wg_pubkey_for_random_keys() -> None:
    mismatches = []
    for i in range(N):
        ours = generate_private_key()
        if wg("pubkey", stdin=ours) != public_key_from_private(ours):
            mismatches.append(("ours", i))
        theirs = wg("genkey")
        if wg("pubkey", stdin=theirs) != public_key_from_private(theirs):
            mismatches.append(("wg genkey", i))
    assert mismatches == []


@requires_wireguard_go
def test_unclamped_random_bytes_give_the_same_public_key_as_wg() -> None:
    for _ in range(50):
        raw = os.urandom(32)
        b64 = base64.b64encode(raw).decode()
        assert public_key_from_private(b64) == wg("pubkey", stdin=b64)


def test_generated_keys_look_like_wg_genkey() -> None:
    keys = {generate_private_key() for _ in range(100)}
    assert len(keys) == 100
    for k in keys:
        assert len(k) == 44 and k.endswith("=")
        raw = decode_key(k)
        assert clamp(raw) == raw


@pytest.mark.parametrize(
    "bad", ["", "abc", "!!!!", base64.b64encode(bytes(31)).decode(), base64.b64encode(bytes(33)).decode()]
)
def test_bad_keys_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(KeyError_) as exc:
        public_key_from_private(bad)
    assert bad == "" or bad not in str(exc.value)


@requires_wireguard_go
def test_keygen_command_prints_a_matching_pair_and_says_which_is_which() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flower_ctx.cli", "wg", "keygen"], capture_output=True, text=True, check=True, timeout=60
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("private key") and lines[1].startswith("public key")
    assert "secret" in lines[0]
    private, public = lines[0].split()[2], lines[1].split()[2]
    assert wg("pubkey", stdin=private) == public
    assert out.stderr == ""


def _ctx(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx.cli", *args, "--root", str(root)], capture_output=True,
                          text=True, timeout=60)


def test_wg_key_makes_the_key_on_the_vm_once_and_prints_only_the_public_half(stage: Path, tmp_path: Path) -> None:
    """The hub's key made where it is used (never in CONTEXT, where OneGate's extended service
    document would show it to every VM of the service): `wg key` prints the public half, keeps the
    private one 0600, and configure with FL_WG_ENABLED=YES and no FL_WG_PRIVATE_KEY uses it."""
    first = _ctx("wg", "key", root=stage)
    assert first.returncode == 0, first.stderr
    public = first.stdout.strip()
    key_file = stage / "etc/wireguard/wg0.key"
    private = key_file.read_text().strip()
    assert public == public_key_from_private(private) and private not in first.stdout + first.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.parent.stat().st_mode & 0o777 == 0o700
    again = _ctx("wg", "key", root=stage)
    assert again.stdout.strip() == public and key_file.read_text().strip() == private and again.stderr == ""

    ctx = tmp_path / "context.sh"
    spoke = public_key_from_private(generate_private_key())
    ctx.write_text("ETH0_IP='192.0.2.10'\nFL_WG_ENABLED='YES'\nFL_WG_ADDRESS='10.10.9.1/24'\n"
                   f"FL_WG_PEERS='[Peer]\nPublicKey = {spoke}\nAllowedIPs = 10.10.9.66/32'\n")
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "superlink", "--context",
                          str(ctx), "--root", str(stage)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert key_file.read_text().strip() == private  # the hub kept the key its peers were given
    assert private not in out.stdout + out.stderr
    peer = _ctx("wg", "peer", "--role", "superlink", root=stage)
    assert f"PublicKey = {public}" in peer.stdout


def test_wg_key_never_replaces_a_damaged_key(stage: Path) -> None:
    key_file = stage / "etc/wireguard/wg0.key"
    key_file.parent.mkdir(parents=True, mode=0o700)
    key_file.write_text("not a key\n")
    out = _ctx("wg", "key", root=stage)
    assert out.returncode == 1 and "wg0.key is not a usable WireGuard key; fix or delete it" in out.stderr
    assert key_file.read_text() == "not a key\n" and "not a key" not in out.stderr
