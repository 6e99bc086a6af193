"""Readiness: discovery attributes before READY=YES (as recorded by the OneGate double), a failed
health check never yields READY=YES, READY withdrawn by delete, republishing is a no-op, and the
DESIGN section 8 attribute sets."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_ctx.model import HostPort, Nic
from flower_ctx.onegate import FORBIDDEN_VALUE_CHARS, OneGateClient, check_value
from flower_ctx.readiness import (
    MAX_ERROR_LEN,
    HealthResult,
    publish_ready,
    sanitize_error,
    superlink_attrs,
    supernode_attrs,
)
from tests.factories import make_config, make_wg
from tests.onegate_server import FakeVM, OneGateServer, access_for, make_ca_pem

WG_PUB = base64.b64encode(bytes(range(32))).decode()


# Every test here: no issued token in DEBUG logs or in anything printed (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("no_token_in_output")


@pytest.fixture(scope="module")
def gate() -> Iterator[OneGateServer]:
    with OneGateServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def ca_pem() -> bytes:
    return make_ca_pem()


def _client(srv: OneGateServer, vm: FakeVM) -> OneGateClient:
    return OneGateClient(access_for(srv, vm), timeout=2.0, backoff=0.01)


# -- builders ------------------------------------------------------------------------------------


def test_superlink_attrs_with_tls_and_wireguard(ca_pem: bytes) -> None:
    cfg = make_config("superlink", wg=make_wg(), keepalive_time=45, keepalive_timeout=15)
    attrs = superlink_attrs(cfg, ca_pem=ca_pem, wg_public_key=WG_PUB)
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    assert attrs == {
        "FL_ROLE": "superlink",
        "FL_VERSION": "1.39.0",
        "FL_ENDPOINT": "192.0.2.10:9092",
        "FL_TLS": "YES",
        "FL_CA_CERT": base64.b64encode(ca_pem).decode(),
        "FL_CA_FINGERPRINT": "sha256:" + hashlib.sha256(der).hexdigest(),
        "FL_CA_EXPIRES": x509.load_pem_x509_certificate(ca_pem).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "FL_WG_PUBLIC_KEY": WG_PUB,
        "FL_WG_TUNNEL_ADDRESS": "10.10.9.0/31",
        "FL_GRPC_KEEPALIVE_TIME": "45",
        "FL_GRPC_KEEPALIVE_TIMEOUT": "15",
    }
    for name, value in attrs.items():
        check_value(name, value)  # every value survives OneGate's quoting


def test_superlink_attrs_without_tls_or_wireguard() -> None:
    cfg = make_config("superlink", tls_enabled=False)
    attrs = superlink_attrs(cfg, wg_public_key=WG_PUB)  # no WG config: the key is not published
    assert attrs["FL_TLS"] == "NO"
    assert not {"FL_CA_CERT", "FL_CA_FINGERPRINT", "FL_WG_PUBLIC_KEY"} & set(attrs)


def test_superlink_attrs_tls_needs_the_ca() -> None:
    with pytest.raises(ValueError):
        superlink_attrs(make_config("superlink"))


def test_primary_nic_is_the_lowest_index_and_ipv6_has_no_brackets(ca_pem: bytes) -> None:
    nics = (
        Nic(1, ipaddress.IPv4Address("198.51.100.2")),
        Nic(0, None, ipaddress.IPv6Address("2001:db8::5")),
    )
    attrs = superlink_attrs(make_config("superlink", nics=nics), ca_pem=ca_pem)
    assert attrs["FL_ENDPOINT"] == "2001:db8::5:9092"
    check_value("FL_ENDPOINT", attrs["FL_ENDPOINT"])


def test_supernode_attrs() -> None:
    cfg = make_config("supernode", superlink_address=HostPort("203.0.113.9", 9092), wg=make_wg())
    assert supernode_attrs(cfg, wg_public_key=WG_PUB) == {
        "FL_ROLE": "supernode",
        "FL_VERSION": "1.39.0",
        "FL_SUPERLINK": "203.0.113.9:9092",
        "FL_WG_PUBLIC_KEY": WG_PUB,
        "FL_WG_TUNNEL_ADDRESS": "10.10.9.0/31",
    }
    discovered = supernode_attrs(dataclasses.replace(cfg, wg=None), superlink=HostPort("192.0.2.1", 9092))
    assert discovered == {"FL_ROLE": "supernode", "FL_VERSION": "1.39.0", "FL_SUPERLINK": "192.0.2.1:9092"}


# -- ordering and readiness ----------------------------------------------------------------------


def test_discovery_attributes_arrive_before_ready(gate: OneGateServer, ca_pem: bytes) -> None:
    vm = gate.add_vm()
    attrs = superlink_attrs(make_config("superlink"), ca_pem=ca_pem)
    seen_at_health: dict[str, str] = {}

    def health() -> HealthResult:
        seen_at_health.update(gate.user_template(vm))
        return HealthResult(True)

    result = publish_ready(_client(gate, vm), attrs, health)
    assert result.ready and result.healthy and not result.degraded
    # While the health check ran, the discovery attributes were on the VM and READY was not.
    assert seen_at_health["FL_ENDPOINT"] == "192.0.2.10:9092" and "READY" not in seen_at_health
    puts = gate.recorded(vm, "PUT")
    ready_at = next(i for i, r in enumerate(puts) if r.attrs.get("READY") == "YES")
    endpoint_at = next(i for i, r in enumerate(puts) if "FL_ENDPOINT" in r.attrs)
    assert endpoint_at < ready_at
    assert puts[ready_at].attrs == {"FL_READY": "YES", "READY": "YES"}
    assert puts[endpoint_at].attrs == attrs  # all discovery attributes in one request
    ut = gate.user_template(vm)
    assert ut["READY"] == "YES" and ut["FL_READY"] == "YES"


def test_republishing_the_same_values_sends_nothing(gate: OneGateServer, ca_pem: bytes) -> None:
    vm = gate.add_vm()
    attrs = superlink_attrs(make_config("superlink"), ca_pem=ca_pem)
    publish_ready(_client(gate, vm), attrs, lambda: HealthResult(True))
    before = gate.user_template(vm)
    n = len(gate.recorded(vm))
    again = publish_ready(_client(gate, vm), attrs, lambda: HealthResult(True))
    assert again.ready and not again.changed
    new = gate.recorded(vm)[n:]
    assert [(r.method, r.path) for r in new] == [("GET", "/vm")]
    assert gate.user_template(vm) == before


def test_only_changed_attributes_are_sent(gate: OneGateServer, ca_pem: bytes) -> None:
    vm = gate.add_vm()
    cfg = make_config("superlink")
    publish_ready(_client(gate, vm), superlink_attrs(cfg, ca_pem=ca_pem), lambda: HealthResult(True))
    n = len(gate.recorded(vm))
    changed = dataclasses.replace(cfg, keepalive_time=90)
    result = publish_ready(_client(gate, vm), superlink_attrs(changed, ca_pem=ca_pem), lambda: HealthResult(True))
    assert result.sent == {"FL_GRPC_KEEPALIVE_TIME": "90"}
    assert [r.attrs for r in gate.recorded(vm, "PUT")[-1:]] == [{"FL_GRPC_KEEPALIVE_TIME": "90"}]
    assert len(gate.recorded(vm)) == n + 2  # GET /vm + one PUT


def test_failed_health_never_sets_ready_and_publishes_a_sanitised_error(gate: OneGateServer, ca_pem: bytes) -> None:
    vm = gate.add_vm()
    detail = f'Fleet API 192.0.2.10:9092: TLS handshake failed, [SSL] "bad"\nkey {vm.token} \\ end'
    result = publish_ready(_client(gate, vm), {"FL_ROLE": "superlink"}, lambda: HealthResult(False, detail))
    assert not result.ready and not result.healthy and not result.degraded
    ut = gate.user_template(vm)
    assert "READY" not in ut and ut["FL_READY"] == "NO"
    assert ut["FL_ERROR"] == result.error
    assert "TLS handshake failed" in ut["FL_ERROR"] and "192.0.2.10:9092" in ut["FL_ERROR"]
    assert vm.token not in ut["FL_ERROR"]
    assert not any(r.attrs.get("READY") for r in gate.recorded(vm, "PUT"))


def test_failure_after_ready_withdraws_ready_by_delete_then_recovery_clears_the_error(
    gate: OneGateServer,
) -> None:
    vm = gate.add_vm()
    attrs = {"FL_ROLE": "supernode", "FL_VERSION": "1.39.0"}
    assert publish_ready(_client(gate, vm), attrs, lambda: HealthResult(True)).ready
    n = len(gate.recorded(vm))
    down = publish_ready(_client(gate, vm), attrs, lambda: HealthResult(False, "SuperLink unreachable"))
    assert not down.ready and down.deleted == ("READY",)
    new = gate.recorded(vm)[n:]
    deletes = [r for r in new if r.type == "2"]
    assert [r.data for r in deletes] == ["READY"]  # deleted, never sent empty
    assert all(r.attrs.get("READY") != "" for r in new)
    # READY is withdrawn before FL_READY=NO is written.
    assert new.index(deletes[0]) < next(i for i, r in enumerate(new) if r.attrs.get("FL_READY") == "NO")
    ut = gate.user_template(vm)
    assert "READY" not in ut and ut["FL_READY"] == "NO" and ut["FL_ERROR"] == "SuperLink unreachable"
    up = publish_ready(_client(gate, vm), attrs, lambda: HealthResult(True))
    assert up.ready and "FL_ERROR" in up.deleted
    ut = gate.user_template(vm)
    assert ut["READY"] == "YES" and ut["FL_READY"] == "YES" and "FL_ERROR" not in ut


def test_a_crashing_health_check_is_a_failure(gate: OneGateServer) -> None:
    vm = gate.add_vm()

    def boom() -> HealthResult:
        raise RuntimeError("probe exploded, see [log]")

    result = publish_ready(_client(gate, vm), {"FL_ROLE": "superlink"}, boom)
    assert not result.ready
    assert gate.user_template(vm)["FL_ERROR"] == "health check crashed: RuntimeError: probe exploded; see (log)"


def test_stale_material_is_removed_when_tls_is_turned_off(gate: OneGateServer, ca_pem: bytes) -> None:
    vm = gate.add_vm()
    cfg = make_config("superlink", wg=make_wg())
    publish_ready(
        _client(gate, vm), superlink_attrs(cfg, ca_pem=ca_pem, wg_public_key=WG_PUB), lambda: HealthResult(True)
    )
    assert "FL_CA_CERT" in gate.user_template(vm)
    plain = dataclasses.replace(cfg, tls_enabled=False, wg=None)
    result = publish_ready(_client(gate, vm), superlink_attrs(plain), lambda: HealthResult(True))
    assert set(result.deleted) == {"FL_CA_CERT", "FL_CA_FINGERPRINT", "FL_CA_EXPIRES", "FL_WG_PUBLIC_KEY",
                                   "FL_WG_TUNNEL_ADDRESS"}
    ut = gate.user_template(vm)
    assert ut["FL_TLS"] == "NO" and not {"FL_CA_CERT", "FL_CA_FINGERPRINT", "FL_WG_PUBLIC_KEY"} & set(ut)


def test_inputs_oneflow_copied_into_the_user_template_are_never_deleted(gate: OneGateServer) -> None:
    # OneFlow 7 copies every answered input into USER_TEMPLATE; a SuperNode does not publish the
    # keepalive attributes the SuperLink publishes under the same names: they are inputs, not stale.
    vm = gate.add_vm(user_template={"FL_GRPC_KEEPALIVE_TIME": "30", "FL_GRPC_KEEPALIVE_TIMEOUT": "10",
                                    "FL_SUPERLINK_ADDRESS": "203.0.113.9:9092", "FL_ENDPOINT": "old:9092"})
    cfg = make_config("supernode", superlink_address=HostPort("203.0.113.9", 9092))
    result = publish_ready(_client(gate, vm), supernode_attrs(cfg), lambda: HealthResult(True))
    ut = gate.user_template(vm)
    assert ut["FL_GRPC_KEEPALIVE_TIME"] == "30" and ut["FL_GRPC_KEEPALIVE_TIMEOUT"] == "10"
    assert ut["FL_SUPERLINK_ADDRESS"] == "203.0.113.9:9092"
    assert result.deleted == ("FL_ENDPOINT",)  # a SuperLink attribute flower-ctx published, now stale


def test_unrelated_user_template_attributes_are_left_alone(gate: OneGateServer) -> None:
    vm = gate.add_vm(user_template={"MY_APP": "x", "USER_INPUTS": {"FL_TLS_ENABLED": "O|boolean||YES"}})
    publish_ready(_client(gate, vm), {"FL_ROLE": "superlink"}, lambda: HealthResult(True))
    ut = gate.user_template(vm)
    assert ut["MY_APP"] == "x" and isinstance(ut["USER_INPUTS"], dict)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=5), preset=st.sampled_from([None, "YES", "NO"]))
def test_property_ready_follows_the_last_health_result(
    gate: OneGateServer, outcomes: list[bool], preset: str | None
) -> None:
    """Whatever the history, READY=YES is on the VM iff the last check passed, and no request made
    during a failing publication ever carries READY=YES."""
    vm = gate.add_vm(user_template={"READY": preset} if preset else {})
    for ok in outcomes:
        n = len(gate.recorded(vm))
        result = publish_ready(_client(gate, vm), {"FL_ROLE": "supernode"}, lambda ok=ok: HealthResult(ok, "no"))
        assert result.ready == ok
        ut = gate.user_template(vm)
        assert (ut.get("READY") == "YES") == ok
        assert ut["FL_READY"] == ("YES" if ok else "NO")
        if not ok:
            assert not any(r.attrs.get("READY") == "YES" for r in gate.recorded(vm)[n:])
            assert "READY" not in ut


# -- FL_ERROR sanitising -------------------------------------------------------------------------


def test_sanitize_removes_pem_keys_and_forbidden_characters(ca_pem: bytes) -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----"
    wg_key = base64.b64encode(b"k" * 32).decode()
    text = f'bad: {key} and {ca_pem.decode()} wg {wg_key}, [x] "y" \\z\r\n' + "sha256:" + "ab" * 32
    out = sanitize_error(text)
    assert "MIGHAgEA" not in out and wg_key not in out and "BEGIN" not in out
    assert "sha256:" + "ab" * 32 in out  # fingerprints stay: they help diagnosis
    check_value("FL_ERROR", out)
    long = sanitize_error("word " * 300)
    assert long.endswith("...") and len(long) <= MAX_ERROR_LEN
    assert sanitize_error("x" * 1000) == "***"  # one long base64-looking run: treated as key material
    assert sanitize_error(" \n ") == "health check failed"


@given(st.text(max_size=400))
def test_property_sanitized_error_is_always_publishable(text: str) -> None:
    out = sanitize_error(text)
    assert 0 < len(out) <= MAX_ERROR_LEN
    assert not set(out) & FORBIDDEN_VALUE_CHARS
    check_value("FL_ERROR", out)


def test_other_result_types_with_ok_are_honoured_and_truthy_junk_is_not_ready(gate: OneGateServer) -> None:
    @dataclasses.dataclass(frozen=True)
    class Health:  # the shape of flower_ctx.health.Health: a dataclass is always truthy
        ok: bool
        detail: str

    vm = gate.add_vm()
    failed = publish_ready(_client(gate, vm), {"FL_ROLE": "supernode"}, lambda: Health(False, "SuperLink down"))  # type: ignore[arg-type,return-value]
    assert not failed.ready and gate.user_template(vm)["FL_ERROR"] == "SuperLink down"
    junk = publish_ready(_client(gate, vm), {"FL_ROLE": "supernode"}, lambda: "yes")  # type: ignore[arg-type,return-value]
    assert not junk.ready and "READY" not in gate.user_template(vm)
    ok = publish_ready(_client(gate, vm), {"FL_ROLE": "supernode"}, lambda: Health(True, ""))  # type: ignore[arg-type,return-value]
    assert ok.ready
