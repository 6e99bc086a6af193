"""Site gateways without namespaces: validation of the gateway role and of routes through a gateway,
the underlay rules with the VM's own networks, the route plan, the MTU derivation, gateway discovery
through OneGate, the gateway's nftables table, its runtime record, and configure/status under --root.
The same pieces on real (simulated) VMs: tests/test_site_gateway.py."""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flower_ctx import underlay
from flower_ctx.config import load_config, resolve
from flower_ctx.errors import ValidationError
from flower_ctx.gateway.discover import GatewayDiscoveryError, find_gateway
from flower_ctx.gateway.routes import GwRoute, plan
from flower_ctx.model import Role
from flower_ctx.oneflow import build
from flower_ctx.runtime import build_runtime_config, problems
from flower_ctx.wireguard import mtu as wgmtu
from tests.rig import write_context

HUB = base64.b64encode(bytes(range(32))).decode()
OTHER = base64.b64encode(bytes(range(1, 33))).decode()
CA = None


def n(text: str) -> Any:
    return ipaddress.ip_network(text)


def gateway_values(**extra: str) -> dict[str, str]:
    return {
        "ETH0_IP": "192.168.150.2", "ETH0_MASK": "255.255.255.0",
        "FL_WG_ADDRESS": "10.10.9.2/24", "FL_WG_PEER_PUBLIC_KEY": HUB,
        "FL_WG_PEER_ENDPOINT": "203.0.113.10:51820", "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/24",
        "FL_SUPERLINK_ADDRESS": "10.10.9.1:9092", **extra,
    }


def supernode_values(**extra: str) -> dict[str, str]:
    return {
        "ETH0_IP": "192.168.150.11", "ETH0_MASK": "255.255.255.0", "FL_TLS_ENABLED": "NO",
        "FL_SUPERLINK_ADDRESS": "10.10.9.1:9092", "FL_GATEWAY_ROUTES": "10.10.9.0/24",
        "FL_GATEWAY_ADDRESS": "192.168.150.2", **extra,
    }


def problems_of(role: str, values: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_config(role, values)
    out: dict[str, str] = {}
    for name, msg in info.value.problems:
        out[name] = out.get(name, "") + msg + "\n"
    return out


# --- the gateway role ---------------------------------------------------------------------------


def test_a_gateway_always_has_its_tunnel_and_forwards() -> None:
    cfg = load_config("gateway", gateway_values())
    assert cfg.role is Role.GATEWAY and cfg.wg is not None and cfg.wg.forward is True
    assert cfg.wg.mtu is None  # derived when applied
    assert str(cfg.superlink_address) == "10.10.9.1:9092"
    assert any("checks its SuperLink with a TCP connection only" in w for w in cfg.warnings)  # TLS, no CA
    for name in ("FL_WG_ENABLED", "FL_WG_FORWARD"):
        assert "a gateway without" in problems_of("gateway", gateway_values(**{name: "NO"}))[name]
        assert load_config("gateway", gateway_values(**{name: "YES"})).wg is not None
    assert "(one per zone)" in problems_of("gateway", gateway_values(FL_WG_ADDRESS="10.10.9.0/24"))["FL_WG_ADDRESS"]
    # A gateway runs no Flower: Flower's variables are ignored there, with a note.
    cfg = load_config("gateway", gateway_values(FL_NODE_CONFIG="partition-id=0"))
    assert "FL_NODE_CONFIG: ignored, it applies to the SuperNode only" in cfg.warnings


def test_appliance_role_must_match_the_role_configured() -> None:
    assert "run flower-ctx with --role gateway" in problems_of(
        "supernode", supernode_values(FL_APPLIANCE_ROLE="gateway"))["FL_APPLIANCE_ROLE"]
    assert "--role supernode" in problems_of("gateway", gateway_values(FL_APPLIANCE_ROLE="supernode"))[
        "FL_APPLIANCE_ROLE"]
    load_config("gateway", gateway_values(FL_APPLIANCE_ROLE="gateway"))
    load_config("supernode", supernode_values(FL_APPLIANCE_ROLE="supernode"))
    assert "must be one of" in problems_of("supernode", {"FL_APPLIANCE_ROLE": "router"})["FL_APPLIANCE_ROLE"]


def test_wg_mtu_zero_means_derived() -> None:
    values = gateway_values()
    assert load_config("gateway", {**values, "FL_WG_MTU": "0"}).wg.mtu is None  # type: ignore[union-attr]
    assert load_config("gateway", {**values, "FL_WG_MTU": "1280"}).wg.mtu == 1280  # type: ignore[union-attr]
    msg = problems_of("gateway", {**values, "FL_WG_MTU": "1279"})["FL_WG_MTU"]
    assert "0 (derived from the underlay) or from 1280 to 9000" in msg


# --- routes through the gateway ------------------------------------------------------------------


def test_supernode_behind_a_gateway() -> None:
    cfg = load_config("supernode", supernode_values())
    assert cfg.gateway_routes == (n("10.10.9.0/24"),) and str(cfg.gateway_address) == "192.168.150.2"
    # The gateway's tunnel inputs, handed to every VM of a OneFlow service, are ignored silently.
    cfg = load_config("supernode", supernode_values(FL_WG_ADDRESS="10.10.9.2/24", FL_WG_PEER_PUBLIC_KEY=HUB))
    assert cfg.wg is None and not any("FL_WG" in w for w in cfg.warnings)
    # Without routes a gateway address means nothing.
    cfg = load_config("supernode", supernode_values(FL_GATEWAY_ROUTES=""))
    assert cfg.gateway_routes == () and cfg.gateway_address is None
    assert any("FL_GATEWAY_ADDRESS: ignored" in w for w in cfg.warnings)
    # A SuperLink address outside the routes does not go through the gateway: said.
    cfg = load_config("supernode", supernode_values(FL_SUPERLINK_ADDRESS="203.0.113.10:9092", FL_TLS_ENABLED="NO",
                                                    FL_ALLOW_INSECURE="YES"))
    assert any("is in none of these networks" in w for w in cfg.warnings)


@pytest.mark.parametrize(("routes", "fragment"), [
    ("0.0.0.0/1,128.0.0.0/1", "cover every IPv4 address"),
    ("10.10.9.0/24,192.168.150.0/24", "this VM's own network on ETH0"),
    ("10.10.9.0/24,192.168.150.128/25", "inside 192.168.150.0/24"),
    ("192.168.0.0/16", "the gateway itself"),
    ("169.254.16.0/24", "the OneGate address"),
])
def test_gateway_routes_that_cut_the_underlay_are_refused(routes: str, fragment: str) -> None:
    values = supernode_values(FL_GATEWAY_ROUTES=routes, ONEGATE_ENDPOINT="http://169.254.16.9:5030", VMID="7")
    assert fragment in problems_of("supernode", values)["FL_GATEWAY_ROUTES"]


def test_gateway_routes_need_an_address_or_onegate_and_must_not_overlap_wg0() -> None:
    no_gw = supernode_values(FL_GATEWAY_ADDRESS="")
    assert "required with FL_GATEWAY_ROUTES" in problems_of("supernode", no_gw)["FL_GATEWAY_ADDRESS"]
    cfg = load_config("supernode", {**no_gw, "ONEGATE_ENDPOINT": "http://169.254.16.9:5030", "VMID": "7"})
    assert cfg.gateway_address is None and cfg.gateway_routes  # found through OneGate when applied
    both = supernode_values(FL_WG_ENABLED="YES", FL_WG_ADDRESS="10.10.9.5/24", FL_WG_PEER_PUBLIC_KEY=HUB,
                            FL_WG_PEER_ALLOWED_IPS="10.10.9.0/24")
    assert "either through this VM's own tunnel or through the zone's gateway" in problems_of(
        "supernode", both)["FL_GATEWAY_ROUTES"]
    far = supernode_values(FL_GATEWAY_ADDRESS="192.168.99.2")
    assert any("on none of this VM's networks" in w for w in load_config("supernode", far).warnings)


def test_hub_admits_a_zone_network_but_not_its_own() -> None:
    hub = {"ETH0_IP": "198.18.1.2", "ETH0_MASK": "255.255.255.0", "FL_WG_ENABLED": "YES",
           "FL_WG_ADDRESS": "10.10.9.1/24"}
    peers = "[Peer]\nPublicKey = {}\nAllowedIPs = 10.10.9.2/32, {}\n"
    zone = base64.b64encode(peers.format(OTHER, "192.168.150.0/24").encode()).decode()
    cfg = load_config("superlink", {**hub, "FL_WG_PEERS": zone})
    assert cfg.wg is not None and n("192.168.150.0/24") in cfg.wg.peers[0].allowed_ips
    own = base64.b64encode(peers.format(OTHER, "198.18.1.0/24").encode()).decode()
    assert "this VM's own network on ETH0" in problems_of("superlink", {**hub, "FL_WG_PEERS": own})["FL_WG_PEERS"]
    # Two zones with the same range (OpenNebula's defaults): refused, a network routes to one peer.
    two = base64.b64encode((peers.format(OTHER, "192.168.150.0/24")
                            + peers.format(HUB, "192.168.150.0/24").replace("10.10.9.2", "10.10.9.3")).encode())
    assert "overlaps" in problems_of("superlink", {**hub, "FL_WG_PEERS": two.decode()})["FL_WG_PEERS"]


def test_underlay_own_networks() -> None:
    own = [("eth0", n("192.168.150.0/24"))]
    assert underlay.problems([n("10.0.0.0/8")], [], own) == []
    assert underlay.problems([n("192.168.0.0/16")], [], own) == []  # contains it: the connected /24 still wins
    assert "is 192.168.150.0/24" in underlay.problems([n("192.168.150.0/24")], [], own)[0]
    assert "inside 192.168.150.0/24" in underlay.problems([n("192.168.150.64/26")], [], own)[0]
    assert underlay.problems([n("fd00::/64")], [], own) == []  # other family
    msg = underlay.problems([n("0.0.0.0/1"), n("128.0.0.0/1")], [], label="FL_GATEWAY_ROUTES", into="the gateway")
    assert msg[0].startswith("FL_GATEWAY_ROUTES ") and "through the gateway" in msg[0] and "Use 0.0.0.0/0" not in msg[0]


def test_route_plan_sends_only_differences() -> None:
    gw1, gw2 = ipaddress.ip_address("192.168.150.2"), ipaddress.ip_address("192.168.150.3")
    a, b = GwRoute(n("10.10.9.0/24"), gw1), GwRoute(n("198.51.100.0/24"), gw1)
    assert plan(frozenset({a, b}), frozenset({a, b})) == ([], [])
    assert plan(frozenset({a}), frozenset({a, b})) == ([], [b])
    assert plan(frozenset({a, b}), frozenset()) == ([a, b], [])
    moved = GwRoute(n("10.10.9.0/24"), gw2)  # the gateway changed: replace, then the old one goes
    assert plan(frozenset({moved}), frozenset({a})) == ([moved], [a])


# --- MTU ------------------------------------------------------------------------------------------


class _Msg(dict):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(**fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class FakeIPRoute:
    """Links by index with an MTU; ``route get`` answers per destination; default routes."""

    def __init__(self, links: dict[int, tuple[str, int]], routes: dict[str, tuple[int, int | None]],
                 default: int | None = None) -> None:
        self.links, self.routes, self.default = links, routes, default

    def get_links(self, index: int) -> list[_Msg]:
        name, mtu = self.links[index]
        return [_Msg({"IFLA_MTU": mtu, "IFLA_IFNAME": name})]

    def route(self, cmd: str, dst: str, family: int) -> list[_Msg]:
        assert cmd == "get"
        if dst not in self.routes:
            raise OSError("no route")
        oif, metric = self.routes[dst]
        metrics = _Msg({"RTAX_MTU": metric}) if metric else None
        return [_Msg({"RTA_OIF": oif, "RTA_METRICS": metrics})]

    def get_routes(self, family: int, table: int) -> list[_Msg]:
        if self.default is None or family != 2:
            return []
        return [_Msg({"RTA_OIF": self.default}, dst_len=0)]


def test_mtu_from_the_route_to_the_endpoints_else_the_default_route() -> None:
    ipr = FakeIPRoute({2: ("eth0", 1450), 3: ("eth1", 1500)}, {"203.0.113.10": (2, None), "198.51.100.1": (3, None)},
                      default=3)
    assert wgmtu.derive(ipr, ["203.0.113.10"]) == (1370, "derived: eth0 MTU 1450 (route to 203.0.113.10) - 80")
    # Several endpoints: the smallest underlay wins (no peer's packets fragment).
    assert wgmtu.derive(ipr, ["198.51.100.1", "203.0.113.10"])[0] == 1370
    # A hub with no endpoints: the default route's interface.
    assert wgmtu.derive(ipr, []) == (1420, "derived: eth1 MTU 1500 (default route) - 80")
    # A route's own mtu (a cached path MTU, or set by the operator) beats the interface's.
    ipr.routes["203.0.113.10"] = (3, 1400)
    assert wgmtu.derive(ipr, ["203.0.113.10"])[0] == 1320
    assert wgmtu.derive(FakeIPRoute({}, {}), ["192.0.2.1"]) == (1420, "derived: no route found, assumed 1500 - 80")
    tiny = FakeIPRoute({2: ("eth0", 1300)}, {"192.0.2.1": (2, None)})
    assert wgmtu.derive(tiny, ["192.0.2.1"]) == (1280, "derived: eth0 MTU 1300 (route to 192.0.2.1) - 80, "
                                                       "raised to the minimum 1280")


def test_wg0_conf_has_no_mtu_line_when_derived() -> None:
    from pathlib import PurePosixPath

    from flower_ctx.wireguard import conf

    cfg = load_config("gateway", gateway_values())
    assert cfg.wg is not None
    text = conf.render(cfg.wg, PurePosixPath("/etc/wireguard/wg0.key"), PurePosixPath("/etc/wireguard"))
    assert "\nMTU =" not in text and "derived from the underlay" in text
    fixed = load_config("gateway", gateway_values(FL_WG_MTU="1400")).wg
    assert fixed is not None and "\nMTU = 1400\n" in conf.render(fixed, PurePosixPath("/k"), PurePosixPath("/"))


# --- discovery, nftables, runtime record ---------------------------------------------------------------


class FakeClient:
    def __init__(self, roles: dict[str, list[int]], nics: dict[int, list[str]]) -> None:
        self.roles, self.nics = roles, nics

    def get_service(self) -> dict[str, Any]:
        return {"SERVICE": {"roles": [{"name": name, "nodes": [{"deploy_id": i} for i in ids]}
                                      for name, ids in self.roles.items()]}}

    def get_vm_by_id(self, vm_id: str) -> dict[str, Any]:
        return {"VM": {"TEMPLATE": {"NIC": [{"IP": ip} for ip in self.nics[int(vm_id)]]}}}


def test_the_gateway_is_its_roles_nic_on_this_vms_network() -> None:
    client = FakeClient({"gateway": [41], "supernode": [42, 43]}, {41: ["198.18.2.2", "192.168.150.2"]})
    assert find_gateway(client, [n("192.168.150.0/24")]) == (ipaddress.ip_address("192.168.150.2"), "41")
    with pytest.raises(GatewayDiscoveryError, match="no VM of the 'gateway' role has an address on"):
        find_gateway(client, [n("10.1.0.0/16")])
    with pytest.raises(GatewayDiscoveryError, match="has no 'gateway' role"):
        find_gateway(FakeClient({"supernode": [42]}, {}), [n("192.168.150.0/24")])


def test_gateway_nftables_table_clamps_the_mss_both_ways() -> None:
    from flower_ctx.firewall.rules import gateway_ruleset

    body, digest = gateway_ruleset(1370)
    assert "hook forward priority mangle; policy accept;" in body and "drop" not in body
    for direction in ("iifname", "oifname"):
        assert (f'meta nfproto ipv4 {direction} "wg0" tcp flags syn / syn,rst tcp option maxseg size > 1330 '
                "tcp option maxseg size set 1330") in body
        assert f'meta nfproto ipv6 {direction} "wg0"' in body and "set 1310" in body
    assert gateway_ruleset(1370)[1] == digest != gateway_ruleset(1420)[1]


def test_gateway_runtime_record() -> None:
    from flower_ctx.paths import Paths

    values = gateway_values(FL_WG_PEER_ALLOWED_IPS="10.10.9.0/24,192.168.10.0/24")
    cfg = load_config("gateway", values)
    doc = build_runtime_config(cfg, Paths(), probe_source="192.168.150.2")
    assert doc["role"] == "gateway" and doc["routes"] == ["192.168.10.0/24"] and doc["dials"] == [HUB]
    assert doc["superlink_address"] == "10.10.9.1:9092" and doc["tls"] == {"enabled": True, "ca_certfile": None}
    assert "flower_version" not in doc and problems(doc, "gateway") == []
    assert problems({**doc, "routes": "10.0.0.0/8"}, "gateway") == ["routes: must be a list of networks"]
    assert problems(doc, "supernode")[0].startswith("written for role 'gateway'")


def test_zone_address_of_a_hub_gateway_is_its_tunnel_address() -> None:
    from flower_ctx.gateway.zone import zone_address
    from flower_ctx.paths import Paths

    hub = {"ETH0_IP": "192.168.10.2", "ETH0_MASK": "255.255.255.0", "FL_WG_ADDRESS": "10.10.9.1/24",
           "FL_WG_PEERS": base64.b64encode(f"[Peer]\nPublicKey = {OTHER}\nAllowedIPs = 10.10.9.2/32, "
                                           "192.168.150.0/24\n".encode()).decode()}
    assert zone_address(load_config("gateway", hub), Paths()) == "10.10.9.1"
    assert zone_address(load_config("gateway", gateway_values()), Paths()) == "192.168.150.2"  # one NIC


# --- configure and status under --root --------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx", *args], capture_output=True, text=True, timeout=120)


def test_configure_a_gateway_into_a_staging_root(tmp_path: Path) -> None:
    from tests.onegate_server import make_ca_pem

    ctx = write_context(tmp_path / "ctx.sh", gateway_values(
        FL_SSL_CA_CERTFILE=base64.b64encode(make_ca_pem("hub CA")).decode()))
    root = tmp_path / "root"
    out = cli("configure", "--role", "gateway", "--context", str(ctx), "--root", str(root), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["flower"]["changes"] == []  # no Flower on a gateway
    skipped = " ".join(steps["wireguard"]["skipped"] + steps["firewall"]["skipped"])
    assert "net.ipv4.ip_forward=1" in skipped and "TCP MSS clamping on wg0" in skipped
    assert (root / "opt/flower/certs/ca.crt").exists() and not (root / "opt/flower/certs/ca.key").exists()
    record = json.loads((root / "opt/flower/config/gateway.json").read_text())
    assert record["probe_source"] == "192.168.150.2"
    assert record["tls"]["ca_certfile"].endswith("/opt/flower/certs/ca.crt")
    again = cli("configure", "--role", "gateway", "--context", str(ctx), "--root", str(root))
    assert again.returncode == 0 and "gateway: unchanged" in again.stdout
    st = cli("status", "--root", str(root), "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["role"] == "gateway"
    human = cli("status", "--root", str(root)).stdout
    assert "gateway (forwards between this zone and the tunnel; no Flower)" in human
    # A SuperNode with gateway routes under --root: the routes are listed, not made.
    sn = write_context(tmp_path / "sn.sh", supernode_values())
    out = cli("configure", "--role", "supernode", "--context", str(sn), "--root", str(tmp_path / "sn"), "--json")
    steps = {s["name"]: s for s in json.loads(out.stdout)["steps"]}
    assert steps["gateway routes"]["skipped"] == ["routes 10.10.9.0/24 via 192.168.150.2"]


def test_training_site_gateway_template_roles_and_inputs() -> None:
    for version in ("7", "6.10"):
        doc = build("training-site-gateway", supernode_template_id=12, opennebula=version, supernodes=4)
        gw, node = doc["roles"]
        assert (gw["name"], gw["cardinality"], gw["min_vms"], gw["max_vms"]) == ("gateway", 1, 1, 1)
        assert node["name"] == "supernode" and node["parents"] == ["gateway"] and node["cardinality"] == 4
        assert doc["deployment"] == "straight" and doc["ready_status_gate"] is True
        key = "template_id" if version == "7" else "vm_template"
        assert gw[key] == node[key] == 12  # one VM template: the SuperNode image's
        inputs = doc["user_inputs" if version == "7" else "custom_attrs"]
        mandatory = sorted(k for k, v in inputs.items() if v.startswith("M|"))
        assert mandatory == sorted(["FL_SUPERLINK_ADDRESS", "FL_SSL_CA_CERTFILE", "FL_WG_ADDRESS",
                                    "FL_WG_PEER_PUBLIC_KEY", "FL_WG_PEER_ENDPOINT", "FL_WG_PEER_ALLOWED_IPS",
                                    "FL_GATEWAY_ROUTES"])
        for never in ("FL_WG_ENABLED", "FL_WG_FORWARD", "FL_WG_PEERS", "FL_GATEWAY_ADDRESS", "FL_APPLIANCE_ROLE",
                      "FL_WG_PRIVATE_KEY"):
            assert never not in inputs
        if version == "6.10":
            assert gw["vm_template_contents"].startswith('FL_APPLIANCE_ROLE = "gateway"\n')
            assert "FL_WG_" not in node["vm_template_contents"]
    out = cli("oneflow", "template", "training-site-gateway", "--superlink-template-id", "3")
    assert out.returncode == 2 and "does not apply to training-site-gateway" in out.stderr
    out = cli("oneflow", "template", "training-site-gateway", "--supernode-template-id", "12",
              "--gateway-template-id", "13")
    assert [r["template_id"] for r in json.loads(out.stdout)["roles"]] == [13, 12] and "not given" not in out.stderr


def test_resolve_role_error_names_the_three_roles() -> None:
    with pytest.raises(ValidationError, match="superlink, supernode or gateway"):
        resolve("router", {})


def test_metrics_of_a_gateway() -> None:
    from flower_ctx import metrics

    probe = {"address": "10.10.9.1:9092", "ok": False}
    facts = {"role": "gateway", "gateway": {"forwarding": True, "superlink": probe},
             "wireguard": {"peers": [{"public_key": HUB, "latest_handshake_age": 12.0}]}}
    text = metrics.render(facts, ready=False, agent_version="x", now=0)
    assert "flower_up" not in text  # no Flower on a gateway
    assert "flower_gateway_forwarding 1" in text
    assert 'flower_gateway_superlink_reachable{superlink="10.10.9.1:9092"} 0' in text
    assert 'flower_ready{role="gateway"} 0' in text


def test_redirects_are_turned_off_where_the_kernel_would_send_them(tmp_path) -> None:
    """The kernel sends an ICMP redirect out of an interface when its own send_redirects or ``all``'s
    is on: every entry on is turned off, the others are left alone, and a second run changes nothing."""
    from flower_ctx.wireguard.link import redirecting, stop_redirects

    for name, value in (("all", "1"), ("default", "1"), ("eth0", "1"), ("lo", "0"), ("wg0", "1")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "send_redirects").write_text(value + "\n")
    assert redirecting(tmp_path) == ["all", "default", "eth0", "wg0"]
    assert stop_redirects(tmp_path) == ["all", "default", "eth0", "wg0"]
    assert {p.name: (p / "send_redirects").read_text() for p in tmp_path.iterdir()} == dict.fromkeys(
        ("all", "default", "eth0", "lo", "wg0"), "0\n")
    assert stop_redirects(tmp_path) == [] and redirecting(tmp_path) == []
