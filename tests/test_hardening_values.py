"""Issue 14, values: one validator per kind of value, wherever the value comes from.

- Any text through every address path (host_port, FL_SUPERLINK_ADDRESS, FL_WG_PEER_ENDPOINT, Endpoint
  in FL_WG_PEERS, a published FL_ENDPOINT, discovery's NIC fallback) gives either a HostPort that is
  safe on Flower's command line and re-parses to itself, or a clean error: never anything else.
- IPv6 zone ids are refused wherever an address is taken.
- FL_NODE_CONFIG is judged by Flower's own parser (differential test against flwr 1.39).
- Lookalike Unicode letters and digits are refused where ASCII is meant (exit 2, variable named).
- A WireGuard key pasted into any non-secret variable is never echoed, not even a 10-character piece.
"""

from __future__ import annotations

import base64
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from flower_ctx.config import load_config
from flower_ctx.discovery import Discovered, DiscoveryError, discover_superlink, parse_endpoint
from flower_ctx.errors import ValidationError
from flower_ctx.model import HostPort
from flower_ctx.paths import Paths
from flower_ctx.runtime import build_runtime_config, node_config_ok
from flower_ctx.values import Invalid, host_port
from flower_ctx.variables import REGISTRY
from tests.conftest import HAVE_FLOWER, REPO

PUB = base64.b64encode(bytes(range(32))).decode()
PUB2 = base64.b64encode(bytes(range(1, 33))).decode()
WG_BASE = {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.10.9.1/24"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def problems(role: str, values: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_config(role, values)
    out: dict[str, str] = {}
    for name, msg in info.value.problems:
        out.setdefault(name, msg)
    return out


def assert_clean_error(exc: BaseException) -> None:
    """An operator-facing message: non-empty, and no raw control character from the input."""
    text = str(exc)
    assert text
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


def assert_safe(hp: HostPort) -> None:
    """What may reach Flower's argv and the runtime JSON."""
    text = str(hp)
    assert text.isascii() and text.isprintable(), repr(text)
    assert " " not in text and not text.startswith("-") and len(text) <= 300, repr(text)
    assert 1 <= hp.port <= 65535
    assert host_port(text) == hp  # re-parses to itself


# --------------------------------------------------------------------------------------------------
# Any text through every address path

digits_any = st.text(alphabet="0123456789０１２３４５６７８９٠١٢٣٤٥٦٧٨٩", min_size=1, max_size=7)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    st.sampled_from(["fe80::1%eth0", "fe80::1%25x", "::ffff:192.0.2.1", "-x", "--insecure", "a b", "a\nb", "a\x00b",
                     "linK.example.org", "１９２.0.2.1", "x" * 260, "", "[", "]", "0", "999.1.1.1", "1.2.3"]),
    st.text(max_size=12),
)
ports = st.one_of(st.integers(-5, 70000).map(str), digits_any, st.just("9" * 5000), st.text(max_size=6))


@st.composite
def address_text(draw: st.DrawFn) -> str:
    host, port = draw(hosts), draw(ports)
    form = draw(st.sampled_from(["plain", "brackets", "bare", "host only", "junk around"]))
    if form == "plain":
        return f"{host}:{port}"
    if form == "brackets":
        return f"[{host}]:{port}"
    if form == "bare":
        return host
    if form == "host only":
        return f"{host}:"
    return draw(st.sampled_from(["", " ", "-", "\n", "\t", "--"])) + f"{host}:{port}" + draw(
        st.sampled_from(["", " ", "\n", " --insecure", "\x00"]))


addresses = st.one_of(address_text(), st.text(max_size=60))
EXAMPLES = ["[fe80::1%25eth0]:9092", "fe80::1%eth0:9092", "-superlink:9092", "--insecure:1", "a b:1", "h:0",
            "h:65536", "[192.0.2.1]:1", "h:" + "9" * 5000, "x" * 400 + ":1", "２.2.2.2:1", "[::1]:1", "h\n:1"]


def _with_examples(test: Any) -> Any:
    for e in EXAMPLES:
        test = example(e)(test)
    return test


@settings(max_examples=300, deadline=None)
@_with_examples
@given(addresses)
def test_host_port_any_text(text: str) -> None:
    try:
        hp = host_port(text)
    except Invalid as exc:
        assert_clean_error(exc)
    else:
        assert_safe(hp)


@settings(max_examples=300, deadline=None)
@_with_examples
@given(addresses)
def test_parse_endpoint_any_text(text: str) -> None:
    """A SuperLink's published FL_ENDPOINT (unbracketed v6:port, bare host) is a foreign value."""
    try:
        hp = parse_endpoint(text)
    except ValueError as exc:
        assert isinstance(exc, Invalid)
        assert_clean_error(exc)
    else:
        assert_safe(hp)


def _config_or_problem(role: str, values: dict[str, str], names: tuple[str, ...]) -> Any:
    try:
        return load_config(role, values)
    except ValidationError as exc:
        assert {n for n, _ in exc.problems} & set(names), exc.problems
        assert_clean_error(exc)
        return None


@settings(max_examples=200, deadline=None)
@_with_examples
@given(addresses)
def test_superlink_address_any_text(text: str) -> None:
    assume(text != "")  # empty means "not set"
    cfg = _config_or_problem("supernode", {"FL_SUPERLINK_ADDRESS": text, "FL_TLS_ENABLED": "NO"},
                             ("FL_SUPERLINK_ADDRESS",))
    if cfg is not None:
        assert_safe(cfg.superlink_address)
        doc = build_runtime_config(cfg, Paths(Path("/nonexistent")))
        assert host_port(doc["superlink_address"]) == cfg.superlink_address


@settings(max_examples=200, deadline=None)
@_with_examples
@given(addresses)
def test_wg_peer_endpoint_any_text(text: str) -> None:
    assume(text.strip() != "")
    values = {**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.8.0/24",
              "FL_WG_PEER_ENDPOINT": text}
    cfg = _config_or_problem("superlink", values, ("FL_WG_PEER_ENDPOINT", "FL_WG_PEER_ALLOWED_IPS"))
    if cfg is not None:
        assert_safe(cfg.wg.peers[0].endpoint)


@settings(max_examples=200, deadline=None)
@_with_examples
@given(addresses)
def test_endpoint_inside_peer_sections_any_text(text: str) -> None:
    section = f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.10.8.0/24\nEndpoint = {text}\n"
    cfg = _config_or_problem("superlink", {**WG_BASE, "FL_WG_PEERS": b64(section)}, ("FL_WG_PEERS",))
    if cfg is not None and cfg.wg.peers[0].endpoint is not None:
        assert_safe(cfg.wg.peers[0].endpoint)


class _FakeOneGate:
    """Duck-typed OneGateClient serving one SuperLink VM document (no network: this is about values)."""

    deadline = None

    def __init__(self, user_template: dict[str, Any], nic: dict[str, Any]) -> None:
        self.vm = {"VM": {"ID": "7", "USER_TEMPLATE": user_template, "TEMPLATE": {"NIC": [nic]}}}

    def get_service(self, extended: bool = False, *, deadline: float | None = None) -> dict[str, Any]:
        return {"SERVICE": {"roles": [{"name": "superlink", "nodes": [{"deploy_id": 7}]}]}}

    def get_vm_by_id(self, vmid: int | str, *, deadline: float | None = None) -> dict[str, Any]:
        return self.vm


def _discover(client: _FakeOneGate) -> Discovered | None:
    try:
        return discover_superlink(client, deadline_s=0, sleep=lambda s: None)  # type: ignore[arg-type]
    except DiscoveryError as exc:
        assert_clean_error(exc)
        return None


@settings(max_examples=200, deadline=None)
@_with_examples
@given(addresses)
def test_published_fl_endpoint_any_text(text: str) -> None:
    found = _discover(_FakeOneGate({"FL_TLS": "NO", "FL_ENDPOINT": text}, {"IP": "192.0.2.10"}))
    if found is not None:
        assert_safe(found.endpoint)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["IP", "IP6_GLOBAL", "IP6_ULA", "IP6"]), st.one_of(hosts, addresses))
@example("IP", "192.0.2.10 --insecure")
@example("IP6", "fe80::1%eth0")
@example("IP", "-1.2.3.4")
def test_nic_fallback_any_text(key: str, text: str) -> None:
    found = _discover(_FakeOneGate({"FL_TLS": "NO"}, {key: text}))
    if found is not None:
        assert_safe(found.endpoint)
        assert found.endpoint.port == 9092


# --------------------------------------------------------------------------------------------------
# IPv6 zone ids

ZONED = [
    ("supernode", {"FL_SUPERLINK_ADDRESS": "[fe80::1%eth0]:9092"}, "FL_SUPERLINK_ADDRESS"),
    ("supernode", {"FL_SUPERLINK_ADDRESS": "[fe80::1%25x]:9092"}, "FL_SUPERLINK_ADDRESS"),
    ("supernode", {"FL_SUPERLINK_ADDRESS": "fe80::1%eth0"}, "FL_SUPERLINK_ADDRESS"),
    ("supernode", {"FL_SUPERLINK_ADDRESS": "[fe80::1%eth0 --insecure]:9092"}, "FL_SUPERLINK_ADDRESS"),
    ("superlink", {"FL_CERT_EXTRA_SAN": "IP:fe80::1%eth0"}, "FL_CERT_EXTRA_SAN"),
    ("superlink", {"FL_CERT_EXTRA_SAN": "DNS:fl.example.org,IP:fe80::1%2"}, "FL_CERT_EXTRA_SAN"),
    ("superlink", {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "fe80::1%eth0/64", "FL_WG_PEER_PUBLIC_KEY": PUB,
                   "FL_WG_PEER_ALLOWED_IPS": "fd00:9::/64"}, "FL_WG_ADDRESS"),
    ("superlink", {**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": "fe80::1%eth0/128"},
     "FL_WG_PEER_ALLOWED_IPS"),
    ("superlink", {**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.8.0/24,fe80::%1/64"},
     "FL_WG_PEER_ALLOWED_IPS"),
    ("superlink", {**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.8.0/24",
                   "FL_WG_PEER_ENDPOINT": "[fe80::1%eth0]:51820"}, "FL_WG_PEER_ENDPOINT"),
    ("superlink", {**WG_BASE, "FL_WG_PEERS": b64(f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = fe80::1%eth0/128\n")},
     "FL_WG_PEERS"),
    ("superlink", {**WG_BASE, "FL_WG_PEERS": b64(f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.10.8.0/24\n"
                                                 "Endpoint = [fe80::1%eth0]:51820\n")}, "FL_WG_PEERS"),
    ("superlink", {"ETH0_IP6": "fe80::1%eth0"}, "ETH0_IP6"),
    ("supernode", {"ETH1_IP6": "fe80::abcd%25enp0s3"}, "ETH1_IP6"),
]


@pytest.mark.parametrize(("role", "values", "name"), ZONED, ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(ZONED)])
def test_ipv6_zone_ids_are_refused(role: str, values: dict[str, str], name: str) -> None:
    found = problems(role, values)
    assert name in found, found


def test_a_scoped_san_changes_nothing_on_disk(tmp_path: Path) -> None:
    """Before issue 14 a scoped SAN passed and re-issued the server key and certificate at every run."""
    ctx = tmp_path / "ctx.sh"
    ctx.write_text((REPO / "examples" / "superlink.context.sh").read_text()
                   + "FL_CERT_EXTRA_SAN='IP:fe80::1%eth0'\n")
    root = tmp_path / "root"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "flower_ctx.cli", "configure", "--role", "superlink",
                               "--context", str(ctx), "--root", str(root)], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and "FL_CERT_EXTRA_SAN" in proc.stderr, proc.stderr
        assert not (root / "opt" / "flower" / "certs").exists()


# --------------------------------------------------------------------------------------------------
# FL_NODE_CONFIG: Flower's own rules (differential against flwr.common.config.parse_config_args)

node_keys = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True),
    st.sampled_from(["partition-id", "num-partitions", "lr", "a.b", "x.y.z", '"q"', "'lit'", "1", "-", "é"]),
    st.text(max_size=4),
)
node_values = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "True", "FALSE", "inf", "nan", "+1", "0x1F", "1_000", "1e5", "01",
                     "1979-05-27", "[1,2]", "{a=1}", "word", "conf.toml", '"conf.toml"', '"site b"', "'site b'",
                     '"a b c"', "''", '""', '"unbalanced', "'unbalanced", 'x"y', '"a"b"', '"a\\"b"', '"a\\nb"',
                     "'a\"b'", '"é"', "$(id)", "`id`", "a=b", "=", "０"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6).map(lambda s: f'"{s}"'),
    st.text(max_size=6),
)
separators = st.sampled_from([" ", "  ", "\t", "\n", " \n ", ""])


@st.composite
def node_config_text(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(node_keys, node_values), min_size=1, max_size=4))
    sep = draw(separators)
    text = sep.join(f"{k}={v}" for k, v in pairs)
    around = draw(st.sampled_from(["", "", " ", "junk ", " trailing", "\n"]))
    return around + text if draw(st.booleans()) else text + around


# Why flower-ctx may refuse what Flower accepts (deliberate, documented in values.node_config):
# text Flower silently drops (no key=), a value Flower would read as a TOML file name, and the size
# limits that keep validation linear.
DELIBERATE = ("Flower would ignore it", ".toml", "longer than", "more than")


@pytest.mark.skipif(not HAVE_FLOWER, reason="needs the flower extra (flwr)")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(node_config_text())
@example('partition-id=0 num-partitions=2 name="site b" tag=\'x y\'')
@example("a=word")
@example("a=1 a=2")
@example("f=conf.toml")
@example("a=1 b")
@example("a.b=1 a=2")
@example('a="x" y=1')
def test_node_config_is_judged_by_flowers_own_parser(value: str) -> None:
    from flwr.common.config import parse_config_args

    assume(value.strip() != "")
    try:
        cfg = load_config("supernode", {"FL_NODE_CONFIG": value})
    except ValidationError as exc:
        ours: str | None = dict(exc.problems).get("FL_NODE_CONFIG")
        assert ours is not None, exc.problems
        cfg = None
    else:
        ours = None

    if value.endswith(".toml") or value.rstrip().endswith(".toml"):
        # Flower would open a file of that name on the VM: never reaches Flower.
        assert cfg is None and ".toml" in (ours or "")
        event("a .toml value")
        return
    try:
        theirs: dict[str, Any] | None = parse_config_args([value])
        flower_error = None
    except Exception as exc:  # ClickException (TOML error), ValueError
        theirs, flower_error = None, exc

    if flower_error is not None:
        assert cfg is None, f"flower-ctx accepted {value!r}, which Flower refuses: {flower_error}"
        event("both refuse")
        return
    if cfg is None:
        assert any(reason in (ours or "") for reason in DELIBERATE), (value, ours, theirs)
        event("flower-ctx stricter, deliberately")
        return
    event("both accept")
    # Accepted by both: what configure writes for Flower reads the same as what the operator wrote.
    written = build_runtime_config(cfg, Paths(Path("/nonexistent")))["node_config"]
    assert node_config_ok(written), written  # `run` accepts what configure wrote
    assert repr(parse_config_args([written])) == repr(theirs)  # repr: nan == nan
    keys = [k for k, _ in cfg.node_config]
    if all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys):  # bare keys: Flower names them alike
        assert set(keys) == {k.split(".")[0] for k in theirs or {}}  # {b=1} under a is Flower's "a.b"


@pytest.mark.skipif(not HAVE_FLOWER, reason="needs the flower extra (flwr)")
@pytest.mark.parametrize("value", ["a=[1,2]", "a=[]", "a=1979-05-27", "a=07:32:00", "a=1979-05-27T07:32:00Z",
                                   "a={b=[1]}", "partition-id=0 when=2024-01-01"])
def test_node_config_values_flower_cannot_type(value: str) -> None:
    from flwr.common.config import parse_config_args

    with pytest.raises(ValueError, match="needs to be of type"):
        parse_config_args([value])
    assert "FL_NODE_CONFIG" in problems("supernode", {"FL_NODE_CONFIG": value})


def test_node_config_quoted_strings_with_spaces_pass_and_reach_flower_whole() -> None:
    cfg = load_config("supernode", {"FL_NODE_CONFIG": 'name="site b" motto=\'a b  c\' lr=0.1 on=true'})
    assert dict(cfg.node_config) == {"name": '"site b"', "motto": "'a b  c'", "lr": "0.1", "on": "true"}


# --------------------------------------------------------------------------------------------------
# Lookalike Unicode where ASCII is meant

KELVIN, LONG_S, DOTLESS_I = "\u212a", "\u017f", "\u0131"
LOOKALIKES = [
    ("superlink", "FL_TLS_ENABLED", f"YE{LONG_S}", {}),
    ("superlink", "FL_WG_ENABLED", f"YE{LONG_S}", {}),
    ("superlink", "FL_WG_FORWARD", "ΝΟ", WG_BASE),  # Greek capital Nu, Omicron
    ("superlink", "FL_GRPC_KEEPALIVE_TIME", "６０", {}),
    ("superlink", "FL_GRPC_KEEPALIVE_TIME", "٦٠", {}),
    ("supernode", "FL_MAX_RETRIES", "３", {}),
    ("supernode", "FL_MAX_WAIT_TIME", "१०", {}),  # Devanagari
    ("superlink", "FL_WG_LISTEN_PORT", "５１８２０", WG_BASE),
    ("superlink", "FL_WG_MTU", "١٤٢٠", WG_BASE),
    ("superlink", "FL_WG_PERSISTENT_KEEPALIVE", "２５", WG_BASE),
    ("supernode", "FL_SUPERLINK_ADDRESS", "192.0.2.1:９０９２", {}),
    ("supernode", "FL_SUPERLINK_ADDRESS", "１９２.0.2.1:9092", {}),
    ("supernode", "FL_SUPERLINK_ADDRESS", f"lin{KELVIN}.example.org:9092", {}),
    ("superlink", "FL_WG_PEER_ENDPOINT", "hub.example.org:５１８２０",
     {**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": PUB, "FL_WG_PEER_ALLOWED_IPS": "10.10.8.0/24"}),
    ("superlink", "FL_WG_PEER_ALLOWED_IPS", "10.10.8.0/２４", {**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": PUB}),
    ("superlink", "FL_WG_ADDRESS", "１0.10.9.1/24", {"FL_WG_ENABLED": "YES"}),
    ("superlink", "VMID", "４２", {"ONEGATE_ENDPOINT": "http://169.254.16.9:5030"}),
    ("superlink", "ETH0_IP", "１９２.0.2.10", {}),
    ("superlink", "ETH0_IP", "192.0.2.١٠", {}),
    ("superlink", "ETH0_IP6", "２001:db8::1", {}),
    ("superlink", "FL_CERT_EXTRA_SAN", "IP:１９２.0.2.1", {}),
    ("superlink", "FL_CERT_EXTRA_SAN", f"DNS:lin{KELVIN}.example.org", {}),
    ("superlink", "FL_LOG_LEVEL", f"{DOTLESS_I}nfo", {}),
    ("superlink", "FL_ISOLATION", f"{LONG_S}ubprocess", {}),
    ("superlink", "FL_ISOLATION", f"proce{LONG_S}{LONG_S}", {}),
    ("superlink", "FLOWER_VERSION", "1.３9.0", {}),
    ("supernode", "FL_NODE_CONFIG", "partition-id=０", {}),
    ("superlink", "FL_WG_PEERS", b64(f"[Peer]\nPublic{KELVIN}ey = {PUB}\nAllowedIPs = 10.10.8.0/24\n"), WG_BASE),
    ("superlink", "FL_WG_PEERS", b64(f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.10.8.0/24\n"
                                     f"Persistent{KELVIN}eepalive = 25\n"), WG_BASE),
    ("superlink", "FL_WG_PEERS", b64(f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.10.8.0/24\n"
                                     "PersistentKeepalive = ２５\n"), WG_BASE),
]


@pytest.mark.parametrize(("role", "name", "value", "base"), LOOKALIKES,
                         ids=[f"{n}={v[:12]!r}" for _, n, v, _ in LOOKALIKES])
def test_lookalike_unicode_is_refused(role: str, name: str, value: str, base: dict[str, str]) -> None:
    found = problems(role, {**base, name: value})
    assert name in found, found


@pytest.mark.parametrize(("role", "name", "value"), [
    ("superlink", "FL_TLS_ENABLED", f"YE{LONG_S}"),
    ("superlink", "FL_GRPC_KEEPALIVE_TIME", "٦٠"),
    ("supernode", "FL_SUPERLINK_ADDRESS", f"lin{KELVIN}.example.org:9092"),
    ("superlink", "ETH0_IP", "１９２.0.2.10"),
])
def test_lookalike_unicode_exits_2_naming_the_variable(tmp_path: Path, role: str, name: str, value: str) -> None:
    ctx = tmp_path / "ctx.sh"
    ctx.write_text(f"{name}='{value}'\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "flower_ctx.cli", "context", "check", "--role", role, "--context",
                           str(ctx)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{name}:" in proc.stderr, (proc.returncode, proc.stderr)
    assert "unexpected error" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# No secret, not even most of one

NON_SECRET = [v for v in REGISTRY if not v.secret]


def wg_genkey() -> str:
    """What `wg genkey` prints: base64 of 32 random bytes (clamping does not matter here)."""
    return base64.b64encode(os.urandom(32)).decode()


def variants(key: str) -> list[str]:
    return [key, key[:20] + " " + key[20:], key + "!", "IP:" + key, key + ":51820", key[:22] + "," + key[22:],
            "DNS:" + key, f"[{key}]:9092", key + "/24", "state/" + key, "a=" + key, f'a="{key}" b', key.rstrip("="),
            key[::-1], "fe80::1%" + key, key + "\n" + key, "--" + key, key.lower()]


def pieces(key: str, n: int = 10) -> set[str]:
    return {key[i : i + n] for i in range(len(key) - n + 1)}


def leaked(key: str, *texts: str) -> list[str]:
    blob = "\n".join(texts)
    return sorted(p for p in pieces(key) if p in blob)


def _message(role: str, values: dict[str, str]) -> str:
    try:
        load_config(role, values)
    except ValidationError as exc:
        return str(exc)
    return ""


def _in_context(var: Any, value: str) -> dict[str, str]:
    values = {var.name: value}
    if var.group == "wireguard" and var.name != "FL_WG_ENABLED":
        values["FL_WG_ENABLED"] = "YES"
    return values


def test_a_key_in_any_non_secret_variable_is_never_echoed() -> None:
    key = wg_genkey()
    for var in NON_SECRET:
        for role in var.roles:
            for value in variants(key):
                message = _message(role.value, _in_context(var, value))
                assert not leaked(key, message), (var.name, value, message)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64), st.sampled_from(NON_SECRET), st.integers(0, 17))
def test_no_piece_of_any_key_in_any_message(seed: int, var: Any, which: int) -> None:
    """Keys with the entropy of `wg genkey`: drawn from a seeded generator, so that shrinking keeps them
    random (32 zero bytes, "AAAA...A=", is not key material and is rightly shown)."""
    key = base64.b64encode(random.Random(seed).randbytes(32)).decode()
    value = variants(key)[which]
    for role in var.roles:
        assert not leaked(key, _message(role.value, _in_context(var, value))), (var.name, value)


def test_fl_database_never_echoes_a_key() -> None:
    for _ in range(20):
        key = wg_genkey()
        for value in (key.rstrip("="), "db/" + key.rstrip("=")):
            assert not leaked(key, _message("superlink", {"FL_DATABASE": value})), value


def peer_sections(key: str) -> list[str]:
    good = PUB2
    return [
        f"[Peer]\nPublicKey = {key}!\nAllowedIPs = 10.1.0.0/24\n",
        f"[Peer]\nPublicKey = {key[:30]} {key[30:]}\nAllowedIPs = 10.1.0.0/24\n",
        f"[Peer]\nPublicKey = {good}\nEndpoint = {key}\nAllowedIPs = 10.1.0.0/24\n",
        f"[Peer]\nPublicKey = {good}\nEndpoint = {key}:51820\nAllowedIPs = 10.1.0.0/24\n",
        f"[Peer]\nPublicKey = {good}\nAllowedIPs = {key}\n",
        f"[Peer]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\n{key}\n",
        f"[Peer]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\n{key} = 1\n",
        f"[Peer]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\nPresharedKey = {key}x\n",
        f"[Peer]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\nPersistentKeepalive = {key}\n",
        f"[{key}]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\n",
        f"{key}\n[Peer]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\n",
        f"[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {good}\nAllowedIPs = 10.1.0.0/24\n",
        f"PrivateKey = {key}\n",
    ]


def test_a_key_in_a_malformed_peer_section_is_never_echoed() -> None:
    key = wg_genkey()
    for section in peer_sections(key):
        for encoded in (b64(section), section):
            message = _message("superlink", {**WG_BASE, "FL_WG_PEERS": encoded})
            assert message, section  # every one of these is malformed
            assert not leaked(key, message), (section, message)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("role", "name", "variant"), [
    ("superlink", "FL_CERT_EXTRA_SAN", 3),
    ("superlink", "FL_LOG_LEVEL", 0),
    ("supernode", "FL_SUPERLINK_ADDRESS", 4),
    ("supernode", "FL_NODE_CONFIG", 10),
    ("superlink", "FL_WG_PEER_ENDPOINT", 7),
    ("superlink", "FL_DATABASE", 9),
    ("superlink", "FL_WG_PEERS", -1),
])
def test_context_check_never_echoes_a_pasted_key(tmp_path: Path, role: str, name: str, variant: int) -> None:
    key = wg_genkey()
    value = b64(peer_sections(key)[0]) if variant == -1 else variants(key)[variant]
    values = _in_context(next(v for v in REGISTRY if v.name == name), value)
    ctx = tmp_path / "ctx.sh"
    ctx.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    outputs = []
    for extra in ([], ["--json"]):
        proc = _cli("context", "check", "--role", role, "--context", str(ctx), *extra)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        outputs += [proc.stdout, proc.stderr]
    proc = _cli("configure", "--role", role, "--context", str(ctx), "--root", str(tmp_path / "root"))
    assert proc.returncode == 2
    outputs += [proc.stdout, proc.stderr]
    assert not leaked(key, *outputs), outputs
