"""Keys: ours against the reference tools (`wg genkey`, `wg pubkey`), and `flower-ctx wg keygen`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

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
