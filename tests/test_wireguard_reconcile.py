"""The pure reconcile diff, the UAPI renderer/parser and backend choice: no I/O, no root."""

from __future__ import annotations

import ipaddress

import pytest

from flower_ctx.errors import ApplyError
from flower_ctx.wireguard import uapi
from flower_ctx.wireguard.keys import clamp, decode_key, encode_key, generate_private_key, public_key_from_private
from flower_ctx.wireguard.reconcile import (
    DesiredDevice,
    DesiredPeer,
    DeviceState,
    LinkAddress,
    LinkState,
    PeerState,
    choose_backend,
    desired_routes,
    plan_device,
    plan_link,
)

net = ipaddress.ip_network
iface = ipaddress.ip_interface


def _pub() -> str:
    return public_key_from_private(generate_private_key())


A, B, C = _pub(), _pub(), _pub()
PRIV = decode_key(generate_private_key())


def desired(*peers: DesiredPeer, port: int = 51820, key: bytes = PRIV) -> DesiredDevice:
    return DesiredDevice(private_key=key, listen_port=port, peers=peers)


def peer(key: str, *ips: str, endpoint: tuple[str, int] | None = None, ka: int = 25) -> DesiredPeer:
    return DesiredPeer(key, frozenset(net(i) for i in ips), endpoint, ka)


def state_of(d: DesiredDevice, learned: dict[str, tuple[str, int]] | None = None) -> DeviceState:
    """What a device configured exactly as ``d`` reads back (clamped key, handshake, counters)."""
    learned = learned or {}
    return DeviceState(
        private_key=clamp(d.private_key),
        listen_port=d.listen_port,
        peers={
            p.public_key: PeerState(
                p.public_key,
                p.endpoint or learned.get(p.public_key),
                p.persistent_keepalive,
                p.allowed_ips,
                p.preshared_key,
                1700000000.5,
                1234,
                5678,
            )
            for p in d.peers
        },
    )


def test_fresh_device_gets_everything() -> None:
    d = desired(peer(A, "10.10.9.2/32", endpoint=("192.0.2.1", 51820)), peer(B, "10.10.9.3/32"))
    plan = plan_device(d, DeviceState())
    assert plan.private_key == PRIV and plan.listen_port == 51820
    assert [(p.public_key, p.action) for p in plan.peers] == [(A, "create"), (B, "create")]
    text = uapi.render_set(plan)
    assert "replace_peers" not in text
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    assert f"private_key={PRIV.hex()}" in text
    assert "endpoint=192.0.2.1:51820" in text


def test_same_state_is_an_empty_plan_and_sends_nothing() -> None:
    d = desired(peer(A, "10.10.9.2/32", endpoint=("192.0.2.1", 51820)), peer(B, "10.10.9.3/32"))
    plan = plan_device(d, state_of(d, {B: ("198.51.100.7", 40000)}))
    assert plan.empty
    assert uapi.render_set(plan) == ""


def test_unchanged_listen_port_is_not_resent_but_a_changed_one_is() -> None:
    d = desired(peer(A, "10.10.9.2/32"))
    cur = state_of(d)
    assert "listen_port" not in uapi.render_set(plan_device(desired(peer(A, "10.10.9.2/32", ka=0)), cur))
    moved = plan_device(desired(peer(A, "10.10.9.2/32"), port=51821), cur)
    assert moved.listen_port == 51821 and not moved.peers and moved.private_key is None
    assert uapi.render_set(moved) == "set=1\nlisten_port=51821\n\n"


def test_private_keys_are_compared_clamped() -> None:
    unclamped = bytearray(PRIV)
    unclamped[0] |= 7  # the low bits clamping clears
    unclamped[31] |= 128
    d = desired(peer(A, "10.10.9.2/32"), key=bytes(unclamped))
    assert clamp(bytes(unclamped)) == clamp(PRIV) and bytes(unclamped) != PRIV
    assert plan_device(d, state_of(desired(peer(A, "10.10.9.2/32")))).private_key is None
    other = decode_key(generate_private_key())
    assert plan_device(desired(peer(A, "10.10.9.2/32"), key=other), state_of(d)).private_key == other


def test_changing_one_peers_allowed_ips_touches_only_that_peer() -> None:
    before = desired(peer(A, "10.10.9.2/32"), peer(B, "10.10.9.3/32"))
    after = desired(peer(A, "10.10.9.2/32"), peer(B, "10.10.9.3/32", "198.51.100.0/24"))
    plan = plan_device(after, state_of(before))
    assert plan.private_key is None and plan.listen_port is None
    assert len(plan.peers) == 1
    (pb,) = plan.peers
    assert pb.public_key == B and pb.action == "update" and pb.changed == ("allowed-ips",)
    assert pb.allowed_ips == (net("10.10.9.3/32"), net("198.51.100.0/24"))
    text = uapi.render_set(plan)
    assert text.count("public_key=") == 1 and decode_key(B).hex() in text
    # Debian's wireguard-go has no allowed_ip=-CIDR: the peer's list is replaced as a whole.
    assert "update_only=true\nreplace_allowed_ips=true\nallowed_ip=10.10.9.3/32\nallowed_ip=198.51.100.0/24\n" in text
    assert "endpoint=" not in text and "persistent_keepalive_interval" not in text


def test_removed_peers_are_removed_and_others_untouched() -> None:
    before = desired(peer(A, "10.10.9.2/32"), peer(B, "10.10.9.3/32"), peer(C, "10.10.9.4/32"))
    plan = plan_device(desired(peer(A, "10.10.9.2/32")), state_of(before))
    assert sorted((p.public_key, p.action) for p in plan.peers) == sorted([(B, "remove"), (C, "remove")])
    text = uapi.render_set(plan)
    assert text.count("remove=true") == 2 and decode_key(A).hex() not in text
    assert "replace_peers" not in text


def test_learned_endpoint_kept_when_none_configured_and_fixed_when_configured() -> None:
    d = desired(peer(A, "10.10.9.2/32"))
    cur = state_of(d, {A: ("203.0.113.9", 33333)})
    assert plan_device(d, cur).empty
    d2 = desired(peer(A, "10.10.9.2/32", endpoint=("192.0.2.1", 51820)))
    plan = plan_device(d2, cur)
    assert plan.peers[0].changed == ("endpoint",) and plan.peers[0].endpoint == ("192.0.2.1", 51820)


def test_keepalive_and_preshared_key_drift() -> None:
    psk = bytes(range(32))
    d = DesiredDevice(PRIV, 51820, (DesiredPeer(A, frozenset({net("10.10.9.2/32")}), None, 25, psk),))
    cur = state_of(desired(peer(A, "10.10.9.2/32", ka=0)))
    plan = plan_device(d, cur)
    assert plan.peers[0].changed == ("persistent-keepalive", "preshared-key")
    text = uapi.render_set(plan)
    assert f"preshared_key={psk.hex()}" in text
    # keepalive last: turning it on sends a packet at once
    assert text.rstrip("\n").splitlines()[-1] == "persistent_keepalive_interval=25"
    cleared = plan_device(desired(peer(A, "10.10.9.2/32")), state_of(d))
    assert cleared.peers[0].changed == ("preshared-key",)
    assert "preshared_key=" + "0" * 64 in uapi.render_set(cleared)


def test_ipv6_endpoint_rendering_and_parsing() -> None:
    assert uapi.format_endpoint(("2001:db8::2", 51820)) == "[2001:db8::2]:51820"
    assert uapi.parse_endpoint("[2001:db8:0::2]:51820") == ("2001:db8::2", 51820)
    assert uapi.parse_endpoint("192.0.2.1:1") == ("192.0.2.1", 1)


def test_parse_get_transcript() -> None:
    pub_hex = decode_key(A).hex()
    text = (
        f"private_key={clamp(PRIV).hex()}\nlisten_port=51820\npublic_key={pub_hex}\n"
        f"preshared_key={'0' * 64}\nprotocol_version=1\nendpoint=[2001:db8::2]:51820\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\ntx_bytes=10\nrx_bytes=20\n"
        "persistent_keepalive_interval=25\nallowed_ip=10.10.9.1/32\nallowed_ip=fd00:9::/64\n"
        f"public_key={decode_key(B).hex()}\npreshared_key={'11' * 32}\nallowed_ip=198.51.100.0/24\n"
        "errno=0\n\n"
    )
    st = uapi.parse_get(text)
    assert st.private_key == clamp(PRIV) and st.listen_port == 51820
    pa, pb = st.peers[A], st.peers[B]
    assert pa.endpoint == ("2001:db8::2", 51820) and pa.persistent_keepalive == 25
    assert pa.allowed_ips == {net("10.10.9.1/32"), net("fd00:9::/64")}
    assert pa.preshared_key is None and pa.last_handshake == pytest.approx(1700000000.5)
    assert (pa.rx_bytes, pa.tx_bytes) == (20, 10)
    assert pb.preshared_key == bytes([0x11]) * 32 and pb.last_handshake is None and pb.endpoint is None
    with pytest.raises(ApplyError, match="Invalid argument"):
        uapi.parse_get("errno=-22\n\n")


def _link(*addrs: LinkAddress, mtu: int = 1420, up: bool = True, routes: tuple[str, ...] = ()) -> LinkState:
    return LinkState("tun", 7, mtu, up, addrs, frozenset(net(r) for r in routes))


def test_link_plan_ignores_kernel_link_local_addresses() -> None:
    cur = _link(
        LinkAddress(iface("10.10.9.1/24")), LinkAddress(iface("fe80::1234/64"), 253), routes=("198.51.100.0/24",)
    )
    plan = plan_link(iface("10.10.9.1/24"), 1420, frozenset({net("198.51.100.0/24")}), cur)
    assert plan.empty
    # even if a link-local one appears with scope 0 (some kernels), it is not ours to delete
    cur2 = _link(LinkAddress(iface("10.10.9.1/24")), LinkAddress(iface("fe80::1/64"), 0))
    assert plan_link(iface("10.10.9.1/24"), 1420, frozenset(), cur2).empty


def test_link_plan_fixes_drift_only() -> None:
    cur = _link(
        LinkAddress(iface("10.10.9.1/24")),
        LinkAddress(iface("10.99.0.1/24")),
        mtu=1500,
        up=False,
        routes=("203.0.113.0/24",),
    )
    plan = plan_link(iface("10.10.9.1/24"), 1380, frozenset({net("198.51.100.0/24")}), cur)
    assert plan.mtu == 1380 and plan.set_up
    assert plan.add_addresses == () and plan.del_addresses == (iface("10.99.0.1/24"),)
    assert plan.add_routes == (net("198.51.100.0/24"),) and plan.del_routes == (net("203.0.113.0/24"),)


def test_desired_routes_skip_connected_prefix_and_default_route() -> None:
    peers = [peer(A, "10.10.9.2/32", "198.51.100.0/24"), peer(B, "0.0.0.0/0"), peer(C, "fd00:9::/64")]
    routes, warnings = desired_routes(iface("10.10.9.1/24"), peers)
    assert routes == {net("198.51.100.0/24"), net("fd00:9::/64")}
    assert len(warnings) == 1 and "0.0.0.0/0" in warnings[0] and "not routed" in warnings[0]


def test_choose_backend() -> None:
    assert choose_backend(None, False, False) == "create"
    assert choose_backend(None, False, True) == "create"  # stale socket, no link: spawn again
    assert choose_backend("wireguard", True, False) == "kernel"
    assert choose_backend("tun", True, True) == "userspace"
    for kind in ("veth", "tun", "bridge", None):
        with pytest.raises(ApplyError, match="not a WireGuard interface") as exc:
            choose_backend(kind, True, False)
        assert "will not touch" in str(exc.value)


def test_key_helpers_roundtrip() -> None:
    k = generate_private_key()
    raw = decode_key(k)
    assert encode_key(raw) == k and clamp(raw) == raw  # generated keys are stored clamped
    assert uapi.render_set(plan_device(desired(key=raw), DeviceState())).startswith(f"set=1\nprivate_key={raw.hex()}")
