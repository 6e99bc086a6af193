"""Validation: each variable's bad values, cross-field rules, and totality (only ValidationError)."""

from __future__ import annotations

import base64
import datetime
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_ctx.config import load_config, resolve
from flower_ctx.errors import ValidationError
from flower_ctx.model import HostPort, Role
from flower_ctx.variables import BY_NAME, REGISTRY
from tests.tls_helpers import build_ca, build_server

NOW = datetime.datetime.now(datetime.timezone.utc)
PUB1 = base64.b64encode(bytes(range(32))).decode()
PUB2 = base64.b64encode(bytes(range(1, 33))).decode()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def problems(role: str, values: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_config(role, values)
    out: dict[str, str] = {}
    for name, msg in info.value.problems:
        out.setdefault(name, msg)
    return out


def test_defaults_alone_are_valid_for_both_roles() -> None:
    link = load_config("superlink", {})
    assert (link.tls_enabled, link.keepalive_time, link.keepalive_timeout) == (True, 60, 20)
    # FLOWER_VERSION unset: the installed Flower (no release installed at boot), else the image's.
    from flower_ctx.flowerversion import installed_version

    assert link.flower_version == (installed_version() or "1.42.0")
    assert link.database == "state/state.db" and link.wg is None
    node = load_config("supernode", {})
    assert node.superlink_address is None and node.max_retries == 0


def test_empty_value_means_default() -> None:
    cfg = load_config("superlink", {name: "" for name in BY_NAME})
    assert cfg == load_config("superlink", {})


# (variable, bad value, fragment of the message). One row per way a value can be wrong.
BAD = [
    ("FL_TLS_ENABLED", "maybe", "must be YES or NO"),
    ("FL_TLS_ENABLED", " YES ", "must be YES or NO"),
    ("FL_TLS_ENABLED", "1", "must be YES or NO"),
    ("FL_TLS_ENABLED", "true", "must be YES or NO"),
    ("FL_WG_ENABLED", "NO\nFL_X=1", "must be YES or NO"),
    ("FL_GRPC_KEEPALIVE_TIME", "9", "from 10 to 7200"),
    ("FL_GRPC_KEEPALIVE_TIME", "7201", "from 10 to 7200"),
    ("FL_GRPC_KEEPALIVE_TIME", "60s", "whole number"),
    ("FL_GRPC_KEEPALIVE_TIME", "-60", "whole number"),
    ("FL_GRPC_KEEPALIVE_TIME", "6e1", "whole number"),
    ("FL_GRPC_KEEPALIVE_TIMEOUT", "0", "from 1 to 600"),
    ("FL_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR"),
    ("FL_ISOLATION", "docker", "one of subprocess, process"),
    ("FLOWER_VERSION", "1.43.0", "1.39.0 to 1.42.x"),
    ("FLOWER_VERSION", "2.0.0", "1.39.0 to 1.42.x"),
    ("FLOWER_VERSION", "1.38.0", "1.39.0 to 1.42.x"),
    ("FLOWER_VERSION", "1.39", "X.Y.Z"),
    ("FLOWER_VERSION", "1.39.0; rm -rf /", "X.Y.Z"),
    ("FL_DATABASE", "/etc/passwd", "relative"),
    ("FL_DATABASE", "state/../../etc/shadow", "'..'"),
    ("FL_DATABASE", "state/db name", "only letters"),
    ("FL_DATABASE", "venv/x.db", "inside state/"),
    ("FL_DATABASE", "state.db", "inside state/"),
    ("FL_GRPC_KEEPALIVE_TIME", "9" * 5000, "whole number"),
    ("FL_WG_PEER_ENDPOINT", "hub:" + "9" * 5000, "expected host:port"),
    ("FL_WG_PEER_ENDPOINT", "hub:" + "9" * 20, "port must be from 1 to 65535"),
    ("FL_DATABASE", "state/x\n--insecure", "only letters"),
    ("FL_CERT_EXTRA_SAN", "10.0.0.1", "must start with IP: or DNS:"),
    ("FL_CERT_EXTRA_SAN", "IP:10.0.0.300", "is not an IP address"),
    ("FL_CERT_EXTRA_SAN", "DNS:bad_name!", "not a valid DNS name"),
    ("FL_CERT_EXTRA_SAN", "DNS:a,,DNS:b", "empty entry"),
    ("FL_CERT_EXTRA_SAN", "URI:http://x", "must start with IP: or DNS:"),
    ("FL_CERT_EXTRA_SAN", "DNS:x\nIP:1.2.3.4", "control character"),
    ("FL_SSL_CA_CERTFILE", "not base64!", "not valid base64"),
    ("FL_SSL_CA_CERTFILE", b64("hello world"), "not to PEM"),
    ("FL_SSL_CA_CERTFILE", b64(b64("hello world")), "not to PEM"),
    # Raw PEM is accepted (the web UI passes text64 through) and then checked like any PEM.
    ("FL_SSL_CA_CERTFILE", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "not a valid"),
    ("FL_SSL_CA_CERTFILE", b64("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "not a valid"),
    ("FL_WG_ADDRESS", "10.10.9.1", "needs a prefix"),
    ("FL_WG_ADDRESS", "10.10.9.1/33", "not an address with prefix"),
    ("FL_WG_ADDRESS", "wg0", "needs a prefix"),
    ("FL_WG_PRIVATE_KEY", "short", "not valid base64"),
    ("FL_WG_PRIVATE_KEY", b64(b"x" * 31), "32 bytes"),
    ("FL_WG_LISTEN_PORT", "0", "from 1 to 65535"),
    ("FL_WG_LISTEN_PORT", "65536", "from 1 to 65535"),
    ("FL_WG_MTU", "1279", "from 1280 to 9000"),
    ("FL_WG_MTU", "9001", "from 1280 to 9000"),
    ("FL_WG_PERSISTENT_KEEPALIVE", "65536", "from 0 to 65535"),
    ("FL_WG_PEER_ENDPOINT", "hub.example.org", "expected host:port"),
    ("FL_WG_PEER_ENDPOINT", "hub:0", "port must be from 1 to 65535"),
    ("FL_WG_PEER_ENDPOINT", "2001:db8::1:51820", "brackets"),
    ("FL_WG_PEER_ALLOWED_IPS", "10.10.9.1/24", "host bits set; did you mean 10.10.9.0/24"),
    ("FL_WG_PEER_ALLOWED_IPS", "10.10.9.1/32 10.10.9.2/32", "with commas, not spaces"),
    ("FL_FLEET_ALLOWED_SOURCES", "10.10.9.0/24 198.18.3.0/24", "with commas, not spaces"),
    ("FL_WG_PEERS", "%%%", "not valid base64"),
    ("FL_WG_PEERS", b64(b"\xff\xfe"), "not to [Peer] sections"),
    ("FL_WG_PEERS", b64(b"[Peer]\n\xff\xfe"), "not UTF-8"),
    ("FL_WG_PEERS", b64("[Interface]\nPrivateKey = x\n"), "only [Peer] sections"),
    (
        "FL_WG_PEERS",
        b64("[Peer]\nPublicKey = " + PUB1 + "\nAllowedIPs = 10.0.0.0/24\nFoo = bar\n"),
        "unknown key 'Foo'",
    ),
    ("FL_WG_PEERS", b64("[Peer]\nAllowedIPs = 10.0.0.0/24\n"), "section 1: PublicKey is missing"),
    ("FL_WG_PEERS", b64("[Peer]\nPublicKey = " + PUB1 + "\n"), "section 1: AllowedIPs is missing"),
    (
        "FL_WG_PEERS",
        b64(f"[Peer]\nPublicKey={PUB1}\nAllowedIPs=10.0.0.0/24\n[Peer]\nPublicKey=abc\nAllowedIPs=10.1.0.0/24\n"),
        "section 2: PublicKey",
    ),
]
LINK_ONLY = {"FL_CERT_EXTRA_SAN", "FL_DATABASE", "FL_FLEET_ALLOWED_SOURCES"}
WG_BASE = {
    "FL_WG_ENABLED": "YES",
    "FL_WG_ADDRESS": "10.10.9.1/24",
    "FL_WG_PEER_PUBLIC_KEY": PUB2,
    "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/32",
}


@pytest.mark.parametrize(("name", "value", "fragment"), BAD, ids=[f"{n}={v[:20]!r}" for n, v, _ in BAD])
def test_bad_value_names_the_variable(name: str, value: str, fragment: str) -> None:
    role = "superlink" if name in LINK_ONLY or name.startswith("FL_SSL") else "supernode"
    values = dict(WG_BASE) if name.startswith("FL_WG") else {}
    if name == "FL_SSL_CA_CERTFILE":
        values.update({"FL_SUPERLINK_ADDRESS": "10.0.0.1:9092"})
        role = "supernode"
    values[name] = value
    found = problems(role, values)
    assert name in found, found
    assert fragment in found[name], found[name]


def test_bad_value_through_the_alias_is_named_as_written() -> None:
    found = problems("supernode", {"ONEAPP_FL_GRPC_KEEPALIVE_TIME": "3"})
    assert "from 10 to 7200" in found["ONEAPP_FL_GRPC_KEEPALIVE_TIME"]


def test_alias_equal_is_fine_and_conflicting_is_an_error() -> None:
    assert load_config("superlink", {"FL_LOG_LEVEL": "DEBUG", "ONEAPP_FL_LOG_LEVEL": "DEBUG"}).log_level == "DEBUG"
    assert load_config("superlink", {"ONEAPP_FL_LOG_LEVEL": "warning"}).log_level == "WARNING"
    found = problems("superlink", {"FL_LOG_LEVEL": "DEBUG", "ONEAPP_FL_LOG_LEVEL": "INFO"})
    assert "keep one" in found["FL_LOG_LEVEL"]


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        "superlink",
        {"FL_TLS_ENABLED": "x", "FL_WG_MTU": "1", "FL_WG_ENABLED": "YES", "FL_LOG_LEVEL": "y", "ETH0_IP": "1.2.3"},
    )
    assert {"FL_TLS_ENABLED", "FL_WG_MTU", "FL_LOG_LEVEL", "ETH0_IP", "FL_WG_ADDRESS"} <= set(found)


def test_keepalive_timeout_must_be_below_interval() -> None:
    found = problems("supernode", {"FL_GRPC_KEEPALIVE_TIME": "30", "FL_GRPC_KEEPALIVE_TIMEOUT": "30"})
    assert "below FL_GRPC_KEEPALIVE_TIME (30 s)" in found["FL_GRPC_KEEPALIVE_TIMEOUT"]
    cfg = load_config("supernode", {"FL_GRPC_KEEPALIVE_TIME": "10", "FL_GRPC_KEEPALIVE_TIMEOUT": "9"})
    assert (cfg.keepalive_time, cfg.keepalive_timeout) == (10, 9)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.10.9.0:9092", HostPort("10.10.9.0", 9092)),
        ("SuperLink.Example.org:443", HostPort("superlink.example.org", 443)),
        ("[2001:db8::1]:9092", HostPort("2001:db8::1", 9092)),
    ],
)
def test_superlink_address_forms(value: str, expected: HostPort) -> None:
    cfg = load_config("supernode", {"FL_SUPERLINK_ADDRESS": value, "FL_TLS_ENABLED": "NO", "FL_ALLOW_INSECURE": "YES"})
    assert cfg.superlink_address == expected


@pytest.mark.parametrize(
    "value", ["10.0.0.1", "10.0.0.1:", ":9092", "10.0.0.1:99999", "[::1]", "host name:9092", "a:1\n", "[zz]:1", "h:9x"]
)
def test_superlink_address_rejects(value: str) -> None:
    assert "FL_SUPERLINK_ADDRESS" in problems("supernode", {"FL_SUPERLINK_ADDRESS": value, "FL_TLS_ENABLED": "NO"})


def test_node_config_pairs_and_injection() -> None:
    cfg = load_config("supernode", {"FL_NODE_CONFIG": 'partition-id=0 num-partitions=2  name="site b" tag=\'x y\''})
    assert cfg.node_config == (("partition-id", "0"), ("num-partitions", "2"), ("name", '"site b"'), ("tag", "'x y'"))
    for bad in ["a", "=1", "a=1 a=2", 'a="x"y"', "a=$(id)", "a=`id`", 'a="x\\"', "a=word", "f=conf.toml"]:
        assert "FL_NODE_CONFIG" in problems("supernode", {"FL_NODE_CONFIG": bad}), bad


def test_role_specific_variables_are_ignored_with_a_warning() -> None:
    cfg = load_config("superlink", {"FL_SUPERLINK_ADDRESS": "not even valid", "FL_MAX_RETRIES": "x"})
    assert cfg.superlink_address is None
    assert any("FL_SUPERLINK_ADDRESS: ignored, it applies to the SuperNode and gateway only" in w for w in cfg.warnings)
    assert any(w.startswith("FL_MAX_RETRIES: ignored") for w in cfg.warnings)


def test_another_roles_variable_at_its_default_is_ignored_quietly() -> None:
    """What OneFlow's CLI sends for a shared template's unanswered inputs: the defaults. Not a mistake."""
    cfg = load_config("superlink", {"FL_MAX_RETRIES": "0", "FL_NODE_CONFIG": "", "FL_MAX_WAIT_TIME": "7"})
    assert not any(w.startswith("FL_MAX_RETRIES") for w in cfg.warnings), cfg.warnings
    assert any(w.startswith("FL_MAX_WAIT_TIME: ignored") for w in cfg.warnings), cfg.warnings


def test_nic_addresses_collected_in_natural_order() -> None:
    cfg = load_config(
        "superlink",
        {
            "ETH10_IP": "10.0.0.10",
            "ETH2_IP": "10.0.0.2",
            "ETH2_IP6": "2001:db8::2",
            "ETH0_IP": "",
            "ETH0_ALIAS0_IP": "10.9.9.9",
        },
    )
    assert [(n.index, str(n.ip), str(n.ip6) if n.ip6 else None) for n in cfg.nics] == [
        (2, "10.0.0.2", "2001:db8::2"),
        (10, "10.0.0.10", None),
    ]
    assert "ETH1_IP6" in problems("superlink", {"ETH1_IP6": "10.0.0.1"})


def test_onegate_values_checked() -> None:
    found = problems("supernode", {"ONEGATE_ENDPOINT": "ftp://x", "VMID": "12a"})
    assert set(found) == {"ONEGATE_ENDPOINT", "VMID"}
    cfg = load_config("supernode", {"ONEGATE_ENDPOINT": "http://169.254.16.9:5030", "VMID": "12"}, token="dG9r")
    assert cfg.onegate.usable and "dG9r" not in repr(cfg)


# ---------------------------------------------------------------------------------------- WireGuard


def test_wireguard_single_peer_and_sections_combined() -> None:
    peers = b64(
        f"# hub\n[Peer]\nPublicKey = {PUB1}\nEndpoint = hub.example.org:51820\n"
        f"AllowedIPs = 10.10.9.0/24, fd00:9::/64\nAllowedIPs = 10.20.0.0/16\nPersistentKeepalive = 15\n"
    )
    cfg = load_config(
        "supernode",
        {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.10.9.2/24", "FL_WG_PEERS": peers, "FL_TLS_ENABLED": "NO"},
    )
    assert cfg.wg is not None and len(cfg.wg.peers) == 1
    p = cfg.wg.peers[0]
    assert (p.public_key, str(p.endpoint), p.persistent_keepalive) == (PUB1, "hub.example.org:51820", 15)
    assert [str(n) for n in p.allowed_ips] == ["10.10.9.0/24", "fd00:9::/64", "10.20.0.0/16"]
    cfg = load_config("supernode", {**WG_BASE, "FL_WG_PERSISTENT_KEEPALIVE": "7"})
    assert cfg.wg is not None and cfg.wg.peers[0].persistent_keepalive == 7 and cfg.wg.listen_port == 51820


@pytest.mark.parametrize(
    ("values", "name", "fragment"),
    [
        (
            {"FL_WG_ENABLED": "YES", "FL_WG_PEER_PUBLIC_KEY": PUB1, "FL_WG_PEER_ALLOWED_IPS": "10.0.0.0/24"},
            "FL_WG_ADDRESS",
            "required when FL_WG_ENABLED=YES",
        ),
        ({"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.0.0.2/24"}, "FL_WG_PEERS", "at least one peer"),
        ({**WG_BASE, "FL_WG_PEER_PUBLIC_KEY": ""}, "FL_WG_PEER_PUBLIC_KEY", "required when FL_WG_PEER_ALLOWED_IPS"),
        ({**WG_BASE, "FL_WG_PEER_ALLOWED_IPS": ""}, "FL_WG_PEER_ALLOWED_IPS", "required with FL_WG_PEER_PUBLIC_KEY"),
        (
            {**WG_BASE, "FL_WG_PEERS": b64(f"[Peer]\nPublicKey={PUB2}\nAllowedIPs=10.1.0.0/24\n")},
            "FL_WG_PEERS",
            "same PublicKey",
        ),
        (
            {**WG_BASE, "FL_WG_PEERS": b64(f"[Peer]\nPublicKey={PUB1}\nAllowedIPs=10.10.0.0/16\n")},
            "FL_WG_PEERS",
            "overlaps",
        ),
    ],
)
def test_wireguard_cross_field_rules(values: dict[str, str], name: str, fragment: str) -> None:
    found = problems("supernode", values)
    assert fragment in found.get(name, ""), found


def test_wireguard_own_public_key_as_peer_is_refused() -> None:
    wg_pubkey = subprocess.run(["wg", "pubkey"], input=b64(bytes(32)) + "\n", capture_output=True, text=True)
    own = wg_pubkey.stdout.strip() if wg_pubkey.returncode == 0 else None
    if own is None:
        pytest.skip("needs wireguard-tools (wg) to derive the reference public key")
    found = problems("supernode", {**WG_BASE, "FL_WG_PRIVATE_KEY": b64(bytes(32)), "FL_WG_PEER_PUBLIC_KEY": own})
    assert "own public key" in found["FL_WG_PEER_PUBLIC_KEY"]


def test_wireguard_vars_ignored_when_disabled() -> None:
    cfg = load_config("supernode", {"FL_WG_ADDRESS": "10.0.0.1/24", "FL_WG_PEER_PUBLIC_KEY": PUB1})
    assert cfg.wg is None
    assert any("FL_WG_ADDRESS, FL_WG_PEER_PUBLIC_KEY: ignored because FL_WG_ENABLED=NO" in w for w in cfg.warnings)
    # Still parsed, so an invalid value is reported even while disabled: enabling later must not surprise.
    assert "FL_WG_ADDRESS" in problems("supernode", {"FL_WG_ADDRESS": "garbage"})


def test_secrets_never_in_messages() -> None:
    key = b64(b"k" * 31)
    with pytest.raises(ValidationError) as info:
        load_config("supernode", {"FL_WG_PRIVATE_KEY": key, **{k: v for k, v in WG_BASE.items()}})
    assert key not in str(info.value)
    psk = b64(b"p" * 32)
    cfg, table = resolve(
        "supernode",
        {
            **WG_BASE,
            "FL_WG_PRIVATE_KEY": b64(b"k" * 32),
            "FL_WG_PEERS": b64(f"[Peer]\nPublicKey={PUB1}\nAllowedIPs=10.3.0.0/24\nPresharedKey={psk}\n"),
        },
    )
    text = repr(cfg) + repr(table)
    assert psk not in text and b64(b"k" * 32) not in text


# ---------------------------------------------------------------------------------------- TLS / PKI


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    root = build_ca("Root")
    inter = build_ca("Intermediate", issuer=root)
    server = build_server(inter, ["IP:10.0.0.5", "DNS:superlink.example.org"])
    other = build_ca("Other")
    return root, inter, server, other


def _pki_values(ca: bytes, cert: bytes, key: bytes) -> dict[str, str]:
    return {"FL_SSL_CA_CERTFILE": b64(ca), "FL_SSL_CERTFILE": b64(cert), "FL_SSL_KEYFILE": b64(key)}


def test_operator_pki_with_intermediate_is_accepted(pki) -> None:  # type: ignore[no-untyped-def]
    root, inter, server, _ = pki
    cfg = load_config("superlink", _pki_values(root.cert_pem, server.cert_pem + inter.cert_pem, server.key_pem))
    assert cfg.operator_pki and cfg.pki.key_pem is not None
    assert server.key_pem.decode() not in repr(cfg)


def test_operator_pki_mismatches_name_the_variable(pki) -> None:  # type: ignore[no-untyped-def]
    root, inter, server, other = pki
    chain = server.cert_pem + inter.cert_pem
    assert "does not match" in problems("superlink", _pki_values(root.cert_pem, chain, other.key_pem))["FL_SSL_KEYFILE"]
    assert (
        "does not chain" in problems("superlink", _pki_values(other.cert_pem, chain, server.key_pem))["FL_SSL_CERTFILE"]
    )
    assert (
        "does not chain"
        in problems("superlink", _pki_values(root.cert_pem, server.cert_pem, server.key_pem))["FL_SSL_CERTFILE"]
    )  # the intermediate is missing
    expired = build_server(
        root, ["IP:10.0.0.5"], not_before=NOW - datetime.timedelta(days=30), not_after=NOW - datetime.timedelta(days=1)
    )
    assert (
        "expired"
        in problems("superlink", _pki_values(root.cert_pem, expired.cert_pem, expired.key_pem))["FL_SSL_CERTFILE"]
    )
    two = _pki_values(root.cert_pem, chain, server.key_pem)
    del two["FL_SSL_KEYFILE"]
    assert "operator PKI needs" in problems("superlink", two)["FL_SSL_KEYFILE"]
    swapped = _pki_values(root.cert_pem, chain, server.key_pem)
    swapped["FL_SSL_KEYFILE"] = b64(chain)
    assert "not a PEM private key" in problems("superlink", swapped)["FL_SSL_KEYFILE"]


def test_supernode_ca_must_be_a_ca(pki) -> None:  # type: ignore[no-untyped-def]
    root, _, server, _ = pki
    base = {"FL_SUPERLINK_ADDRESS": "10.0.0.5:9092"}
    assert (
        "not a CA certificate"
        in problems("supernode", {**base, "FL_SSL_CA_CERTFILE": b64(server.cert_pem)})["FL_SSL_CA_CERTFILE"]
    )
    cfg = load_config("supernode", {**base, "FL_SSL_CA_CERTFILE": b64(root.cert_pem)})
    assert cfg.pki.ca_pem == root.cert_pem


def test_supernode_static_address_with_tls_needs_ca_unless_onegate() -> None:
    found = problems("supernode", {"FL_SUPERLINK_ADDRESS": "203.0.113.5:9092"})
    assert "flower-ctx ca export" in found["FL_SSL_CA_CERTFILE"]
    cfg = load_config(
        "supernode",
        {"FL_SUPERLINK_ADDRESS": "203.0.113.5:9092", "ONEGATE_ENDPOINT": "http://169.254.16.9:5030", "VMID": "3"},
    )
    assert any("FL_SSL_CA_CERTFILE" in w for w in cfg.warnings)
    assert load_config("supernode", {"FL_SUPERLINK_ADDRESS": "203.0.113.5:9092", "FL_TLS_ENABLED": "NO"})


# ---------------------------------------------------------------------------------------- totality

any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
interesting = st.sampled_from(
    [
        "",
        "YES",
        "NO",
        "yes",
        "0",
        "10",
        "60",
        "7200",
        "65535",
        "-1",
        "1.39.0",
        "1.40.0",
        "10.10.9.1/24",
        "10.0.0.0/8",
        "::1",
        "[::1]:9092",
        "h:1",
        "IP:1.2.3.4",
        "DNS:x",
        PUB1,
        b64("[Peer]\n"),
        b64("-----BEGIN x"),
        "a=1 b=2",
        "state/x.db",
        "\n",
        "'",
        '"',
        "\\",
        "$(id)",
    ]
)
context_dicts = st.dictionaries(
    st.sampled_from(
        sorted(
            {v.name for v in REGISTRY}
            | {v.alias for v in REGISTRY}
            | {"ETH0_IP", "ETH1_IP6", "VMID", "ONEGATE_ENDPOINT"}
        )
    ),
    st.one_of(interesting, any_text),
    max_size=14,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([r.value for r in Role]), context_dicts)
def test_validator_raises_only_its_own_error(role: str, values: dict[str, str]) -> None:
    try:
        cfg = load_config(role, values)
    except ValidationError as exc:
        assert exc.problems and all(isinstance(n, str) and m for n, m in exc.problems)
    else:
        assert cfg.role.value == role


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**6), max_value=10**6), st.integers(min_value=-(10**4), max_value=10**4))
def test_keepalive_bounds_property(t: int, to: int) -> None:
    values = {"FL_GRPC_KEEPALIVE_TIME": str(t), "FL_GRPC_KEEPALIVE_TIMEOUT": str(to)}
    ok = 10 <= t <= 7200 and 1 <= to <= 600 and to < t
    try:
        cfg = load_config("supernode", values)
    except ValidationError:
        assert not ok
    else:
        assert ok and (cfg.keepalive_time, cfg.keepalive_timeout) == (t, to)


def test_peers_errors_never_echo_key_material() -> None:
    key = b64(bytes(range(100, 132)))
    text = f"[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.9.0.0/24\n"
    found = problems("supernode", {**WG_BASE, "FL_WG_PEERS": b64(text)})
    assert "outside a [Peer] section" in found["FL_WG_PEERS"] or "only [Peer]" in found["FL_WG_PEERS"]
    with pytest.raises(ValidationError) as info:
        load_config("supernode", {**WG_BASE, "FL_WG_PEERS": b64(text)})
    assert key[:8] not in str(info.value)


def test_same_value_spelled_differently_under_both_names_is_fine() -> None:
    cfg = load_config("superlink", {"FL_TLS_ENABLED": "yes", "ONEAPP_FL_TLS_ENABLED": "YES"})
    assert cfg.tls_enabled is True
