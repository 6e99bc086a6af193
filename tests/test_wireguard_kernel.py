"""Kernel backend at its boundary: the netlink messages it would send and how it reads dumps.

No kernel module here, so a fake stands in for pyroute2's ``WireGuard`` socket, but the messages
are built, encoded and decoded by pyroute2's own ``wgmsg`` code: what is asserted is what the kernel
would receive.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flower_ctx.errors import ApplyError
from flower_ctx.wireguard import kernel
from flower_ctx.wireguard.keys import clamp, decode_key, encode_key, generate_private_key, public_key_from_private
from flower_ctx.wireguard.reconcile import DesiredDevice, DesiredPeer, DeviceState, plan_device

wgmod = pytest.importorskip("pyroute2.netlink.generic.wireguard")
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY = 1, 2, 4

net = ipaddress.ip_network


class FakeWireGuard:
    """Records decoded WG_CMD_SET_DEVICE messages; answers ``info`` with prepared dump messages."""

    def __init__(self, dump: list[Any] | None = None, fail: Exception | None = None) -> None:
        self.sent: list[Any] = []
        self.dump = dump or []
        self.fail = fail
        self._real = object.__new__(wgmod.AsyncWireGuard)  # only its pure message-building helpers

    def set(
        self,
        interface: str,
        listen_port: int | None = None,
        fwmark: int | None = None,
        private_key: str | None = None,
        peer: dict | None = None,
    ) -> None:
        if self.fail:
            raise self.fail
        msg = wgmod.wgmsg()
        msg["cmd"] = wgmod.WG_CMD_SET_DEVICE
        msg["version"] = 1
        msg["attrs"].append(["WGDEVICE_A_IFNAME", interface])
        if private_key is not None:
            self._real._wg_test_key(private_key)
            msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", private_key])
        if listen_port is not None:
            msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", listen_port])
        if peer is not None:
            self._real._wg_set_peer(msg, peer)
        msg.encode()
        decoded = wgmod.wgmsg(msg.data)
        decoded.decode()
        self.sent.append(decoded)

    def info(self, interface: str) -> list[Any]:
        return self.dump

    def close(self) -> None:
        pass


def _pub() -> str:
    return public_key_from_private(generate_private_key())


A, B, C = _pub(), _pub(), _pub()
PRIV = decode_key(generate_private_key())


def _peer_nla(key: str, ips: list[tuple[int, str, int]], **extra: Any) -> dict:
    attrs: list[Any] = [["WGPEER_A_PUBLIC_KEY", key]]
    allowed = [
        {
            "attrs": [
                ["WGALLOWEDIP_A_FAMILY", fam],
                ["WGALLOWEDIP_A_IPADDR", _packed(addr)],
                ["WGALLOWEDIP_A_CIDR_MASK", mask],
            ]
        }
        for fam, addr, mask in ips
    ]
    if allowed:
        attrs.append(["WGPEER_A_ALLOWEDIPS", allowed])
    for k, v in extra.items():
        attrs.append([k, v])
    return {"attrs": attrs}


def _packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def _dump_msg(peers: list[dict], private_key: str | None = None, port: int | None = None) -> Any:
    msg = wgmod.wgmsg()
    msg["cmd"] = wgmod.WG_CMD_GET_DEVICE
    msg["version"] = 1
    if private_key:
        msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", private_key])
    if port is not None:
        msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", port])
    if peers:
        msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
    msg.encode()
    out = wgmod.wgmsg(msg.data)
    out.decode()
    return out


def _peers_sent(fake: FakeWireGuard) -> list[Any]:
    return [p for m in fake.sent for p in (m.get_attr("WGDEVICE_A_PEERS") or [])]


def test_read_device_merges_a_peer_split_over_two_dump_messages() -> None:
    first = _dump_msg(
        [
            _peer_nla(
                A,
                [(2, "10.10.9.2", 32)],
                WGPEER_A_ENDPOINT={"family": 2, "port": 51820, "addr": "192.0.2.7"},
                WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL=25,
                WGPEER_A_RX_BYTES=100,
                WGPEER_A_TX_BYTES=200,
                WGPEER_A_LAST_HANDSHAKE_TIME={"tv_sec": 1700000000, "tv_nsec": 0},
            )
        ],
        private_key=encode_key(clamp(PRIV)),
        port=51820,
    )
    second = _dump_msg([_peer_nla(A, [(10, "fd00:9::", 64)]), _peer_nla(B, [(2, "198.51.100.0", 24)])])
    st = kernel.read_device(FakeWireGuard([first, second]), "wg0")
    assert st.private_key == clamp(PRIV) and st.listen_port == 51820
    assert st.peers[A].allowed_ips == {net("10.10.9.2/32"), net("fd00:9::/64")}
    assert st.peers[A].endpoint == ("192.0.2.7", 51820) and st.peers[A].persistent_keepalive == 25
    assert (st.peers[A].rx_bytes, st.peers[A].tx_bytes, st.peers[A].last_handshake) == (100, 200, 1700000000.0)
    assert st.peers[B].allowed_ips == {net("198.51.100.0/24")} and st.peers[B].last_handshake is None


def test_fresh_plan_sends_device_once_then_one_set_per_peer_without_replace_peers() -> None:
    d = DesiredDevice(
        PRIV,
        51820,
        (
            DesiredPeer(A, frozenset({net("10.10.9.2/32")}), ("192.0.2.1", 51820), 25),
            DesiredPeer(B, frozenset({net("10.10.9.3/32"), net("fd00:9::/64")}), None, 0, bytes(range(32))),
        ),
    )
    fake = FakeWireGuard()
    kernel.apply_plan(fake, "wg0", plan_device(d, DeviceState()))
    assert len(fake.sent) == 3
    dev = fake.sent[0]
    assert dev.get_attr("WGDEVICE_A_PRIVATE_KEY").decode() == encode_key(PRIV)
    assert dev.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    for m in fake.sent:
        assert (m.get_attr("WGDEVICE_A_FLAGS") or 0) == 0  # no WGDEVICE_F_REPLACE_PEERS, ever
    pa, pb = _peers_sent(fake)
    assert pa.get_attr("WGPEER_A_PUBLIC_KEY").decode() == A
    assert pa.get_attr("WGPEER_A_ENDPOINT")["addr"] == "192.0.2.1"
    assert pa.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    assert [a["addr"] for a in pa.get_attr("WGPEER_A_ALLOWEDIPS")] == ["10.10.9.2/32"]
    assert pb.get_attr("WGPEER_A_PRESHARED_KEY").decode() == encode_key(bytes(range(32)))
    assert sorted(a["addr"] for a in pb.get_attr("WGPEER_A_ALLOWEDIPS")) == ["10.10.9.3/32", "fd00:9::/64"]


def test_change_and_removal_send_only_those_peers_and_no_device_fields() -> None:
    before = DesiredDevice(
        PRIV,
        51820,
        (
            DesiredPeer(A, frozenset({net("10.10.9.2/32")})),
            DesiredPeer(B, frozenset({net("10.10.9.3/32")})),
            DesiredPeer(C, frozenset({net("10.10.9.4/32")})),
        ),
    )
    current = DeviceState(clamp(PRIV), 51820, {p.public_key: _state(p) for p in before.peers})
    after = DesiredDevice(
        PRIV,
        51820,
        (
            DesiredPeer(A, frozenset({net("10.10.9.2/32")})),
            DesiredPeer(B, frozenset({net("10.10.9.3/32"), net("198.51.100.0/24")})),
        ),
    )
    fake = FakeWireGuard()
    kernel.apply_plan(fake, "wg0", plan_device(after, current))
    assert len(fake.sent) == 2
    for m in fake.sent:
        assert m.get_attr("WGDEVICE_A_PRIVATE_KEY") is None and m.get_attr("WGDEVICE_A_LISTEN_PORT") is None
    pb, pc = _peers_sent(fake)
    assert pb.get_attr("WGPEER_A_PUBLIC_KEY").decode() == B
    assert pb.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY | WGPEER_F_REPLACE_ALLOWEDIPS
    assert pb.get_attr("WGPEER_A_ENDPOINT") is None and pb.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") is None
    assert pc.get_attr("WGPEER_A_PUBLIC_KEY").decode() == C and pc.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME


def test_no_op_plan_sends_nothing() -> None:
    d = DesiredDevice(PRIV, 51820, (DesiredPeer(A, frozenset({net("10.10.9.2/32")}), ("192.0.2.1", 51820), 25),))
    current = DeviceState(clamp(PRIV), 51820, {A: _state(d.peers[0])})
    fake = FakeWireGuard()
    kernel.apply_plan(fake, "wg0", plan_device(d, current))
    assert fake.sent == []


def test_kernel_errors_become_apply_errors_without_key_material() -> None:
    class NetlinkError(Exception):
        code = 22

    d = DesiredDevice(PRIV, 51820, ())
    with pytest.raises(ApplyError) as exc:
        kernel.apply_plan(FakeWireGuard(fail=NetlinkError(22, encode_key(PRIV))), "wg0", plan_device(d, DeviceState()))
    assert "errno 22" in str(exc.value) and encode_key(PRIV) not in str(exc.value)


def _state(p: DesiredPeer) -> Any:
    from flower_ctx.wireguard.reconcile import PeerState

    return PeerState(p.public_key, p.endpoint, p.persistent_keepalive, p.allowed_ips, p.preshared_key)
