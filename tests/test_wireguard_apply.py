"""The WireGuard step under --root (files only) and --dry-run: key, wg0.conf, PSK files, reporting."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from flower_ctx.model import HostPort, Secret, WgPeer
from flower_ctx.paths import Paths
from flower_ctx.wireguard import apply, generate_private_key, public_key_from_private
from tests.factories import make_config, make_wg

net = ipaddress.ip_network


def _peer(n: int, psk: bytes | None = None, endpoint: HostPort | None = None) -> WgPeer:
    pub = public_key_from_private(generate_private_key())
    secret = Secret(__import__("base64").b64encode(psk)) if psk else None
    return WgPeer(pub, (net(f"10.10.9.{n}/32"),), endpoint, 25, secret, f"FL_WG_PEERS section {n}")


def _all_text(result: object) -> str:
    return repr(result)


def test_disabled_reports_and_changes_nothing(stage: Path) -> None:
    result = apply(make_config("superlink"), Paths(stage))
    assert [(c.what, c.outcome) for c in result.changes] == [("wireguard", "skipped")]
    assert "disabled" in result.changes[0].detail
    assert list(stage.iterdir()) == []


def test_staged_generates_a_key_once_and_keeps_it(stage: Path) -> None:
    peers = (_peer(2, endpoint=HostPort("hub.example.org", 51820)), _peer(3))
    cfg = make_config("superlink", wg=make_wg(peers=peers))
    paths = Paths(stage)
    first = apply(cfg, paths)
    key_file = stage / "etc/wireguard/wg0.key"
    key = key_file.read_text().strip()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert (stage / "etc/wireguard").stat().st_mode & 0o777 == 0o700
    assert first.facts["wg_public_key"] == public_key_from_private(key)
    if shutil.which("wg"):
        assert (
            first.facts["wg_public_key"]
            == subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True, check=True).stdout.strip()
        )
    assert {c.what: c.outcome for c in first.changes} == {
        "/etc/wireguard/wg0.key": "created",
        "/etc/wireguard/wg0.conf": "created",
    }
    assert first.skipped and any("wireguard-go" in s for s in first.skipped)
    assert key not in _all_text(first)

    mtime = key_file.stat().st_mtime_ns
    again = apply(cfg, paths)  # a reboot: same CONTEXT, key file present
    assert key_file.read_text().strip() == key and key_file.stat().st_mtime_ns == mtime
    assert all(c.outcome == "unchanged" for c in again.changes)
    assert again.facts["wg_public_key"] == first.facts["wg_public_key"]
    assert key not in _all_text(again)


def test_conf_is_wg_quick_syntax_with_the_key_by_path(stage: Path) -> None:
    psk = bytes(range(32))
    peers = (_peer(2, psk=psk, endpoint=HostPort("2001:db8::1", 51820)), _peer(3))
    cfg = make_config("supernode", wg=make_wg(peers=peers, mtu=1380, listen_port=51999))
    apply(cfg, Paths(stage))
    conf = (stage / "etc/wireguard/wg0.conf").read_text()
    key = (stage / "etc/wireguard/wg0.key").read_text().strip()
    assert key not in conf and "PrivateKey" not in conf and "PresharedKey" not in conf
    assert str(stage) not in conf  # on-VM paths, not the staging root
    assert "PostUp = wg set %i private-key /etc/wireguard/wg0.key" in conf
    assert "Address = 10.10.9.0/31\nListenPort = 51999\nMTU = 1380\n" in conf
    assert "Endpoint = [2001:db8::1]:51820" in conf and conf.count("[Peer]") == 2
    psk_files = sorted((stage / "etc/wireguard").glob("wg0-*.psk"))
    assert len(psk_files) == 1 and (psk_files[0].stat().st_mode & 0o777) == 0o600
    assert f"preshared-key /etc/wireguard/{psk_files[0].name}" in conf
    assert __import__("base64").b64decode(psk_files[0].read_text().strip()) == psk
    if shutil.which("wg-quick"):
        # wg-quick's own parser accepts it and leaves a config `wg setconf` takes (no key inline).
        stripped = subprocess.run(
            ["wg-quick", "strip", str(stage / "etc/wireguard/wg0.conf")], capture_output=True, text=True
        )
        assert stripped.returncode == 0, stripped.stderr
        assert stripped.stdout.count("[Peer]") == 2 and "PostUp =" not in stripped.stdout
    # the peer with the PSK is removed: its key file goes too
    apply(dataclasses.replace(cfg, wg=make_wg(peers=peers[1:], mtu=1380, listen_port=51999)), Paths(stage))
    assert list((stage / "etc/wireguard").glob("wg0-*.psk")) == []


def test_operator_key_is_used_and_written_for_wg_quick(stage: Path) -> None:
    key = generate_private_key()
    cfg = make_config("superlink", wg=make_wg(private_key=Secret(key.encode()), peers=(_peer(2),)))
    result = apply(cfg, Paths(stage))
    assert result.facts["wg_public_key"] == public_key_from_private(key)
    assert (stage / "etc/wireguard/wg0.key").read_text().strip() == key
    assert key not in _all_text(result)


def test_dry_run_writes_nothing(stage: Path) -> None:
    cfg = make_config("superlink", wg=make_wg(peers=(_peer(2),)))
    result = apply(cfg, Paths(stage), dry_run=True)
    assert not (stage / "etc").exists()
    assert {c.outcome for c in result.changes} == {"would-create"}
    assert "wg_public_key" not in result.facts  # no key exists yet, none is invented for display


def test_a_corrupt_key_file_is_an_error_not_a_new_identity(stage: Path) -> None:
    from flower_ctx.errors import ApplyError

    (stage / "etc/wireguard").mkdir(parents=True)
    (stage / "etc/wireguard/wg0.key").write_text("garbage\n")
    with pytest.raises(ApplyError, match="not a usable WireGuard key"):
        apply(make_config("superlink", wg=make_wg(peers=(_peer(2),))), Paths(stage))
    assert (stage / "etc/wireguard/wg0.key").read_text() == "garbage\n"
