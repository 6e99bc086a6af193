"""OneGate client against the test double: every call shape, the real request bodies, quoting
limits and each status code; plus checks that the double itself behaves like the real server."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_ctx.model import OneGateAccess, Secret
from flower_ctx.onegate import (
    FORBIDDEN_VALUE_CHARS,
    OneGateAuthError,
    OneGateClient,
    OneGateForbidden,
    OneGateNotConfigured,
    OneGateNotFound,
    OneGateNotInService,
    OneGateValueError,
    check_value,
    decode_value,
    encode_value,
)
from tests.onegate_server import OneGateServer, access_for, assert_no_token, make_ca_pem

# Every test here: no issued token in DEBUG logs or in anything printed (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("no_token_in_output")


@pytest.fixture(scope="module")
def gate() -> Iterator[OneGateServer]:
    with OneGateServer() as srv:
        yield srv


def _client(srv: OneGateServer, vm, **kw) -> OneGateClient:  # type: ignore[no-untyped-def]
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.01)
    return OneGateClient(access_for(srv, vm), **kw)


def _form(body: str) -> dict[str, list[str]]:
    return parse_qs(body, keep_blank_values=True)


# -- call shapes ---------------------------------------------------------------------------------


def test_get_vm_sends_both_headers_and_returns_the_filtered_shape(gate: OneGateServer) -> None:
    vm = gate.add_vm("sl", ips=("192.0.2.5", "198.51.100.7"), user_template={"FOO": "bar"})
    doc = _client(gate, vm).get_vm()
    assert doc["VM"]["ID"] == str(vm.id)
    assert doc["VM"]["STATE"] == "3" and isinstance(doc["VM"]["LCM_STATE"], str)
    assert [n["IP"] for n in doc["VM"]["TEMPLATE"]["NIC"]] == ["192.0.2.5", "198.51.100.7"]
    assert doc["VM"]["TEMPLATE"]["NIC_ALIAS"] == []
    assert doc["VM"]["USER_TEMPLATE"]["FOO"] == "bar"
    (rec,) = gate.recorded(vm)
    assert (rec.method, rec.path, rec.status) == ("GET", "/vm", 200)
    assert rec.token_sent and rec.token_ok and rec.vmid == str(vm.id)


def test_single_nic_is_still_an_array(gate: OneGateServer) -> None:
    vm = gate.add_vm(ips=("192.0.2.9",))
    doc = _client(gate, vm).get_vm()
    assert isinstance(doc["VM"]["TEMPLATE"]["NIC"], list) and len(doc["VM"]["TEMPLATE"]["NIC"]) == 1


def test_update_vm_is_one_form_encoded_put_with_newline_separated_lines(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    attrs = {"FL_ROLE": "superlink", "FL_ENDPOINT": "10.0.0.5:9092", "fl_note": "x=y a+b%c&d;e'f$g?h|i/j"}
    _client(gate, vm).update_vm(attrs)
    (rec,) = gate.recorded(vm)
    assert rec.method == "PUT" and rec.path == "/vm" and rec.status == 200
    assert rec.content_type == "application/x-www-form-urlencoded"
    form = _form(rec.body)
    assert form["type"] == ["1"]
    assert form["data"] == ["FL_ROLE=superlink\nFL_ENDPOINT=10.0.0.5:9092\nFL_NOTE=x=y a+b%c&d;e'f$g?h|i/j"]
    # Newline, '+', '%' and '&' are percent-encoded on the wire, so they survive form decoding.
    assert "%0A" in rec.body and "%2B" in rec.body and "%25" in rec.body and "%26" in rec.body
    ut = gate.user_template(vm)
    assert ut["FL_NOTE"] == "x=y a+b%c&d;e'f$g?h|i/j"  # name upper-cased by the server, value intact
    assert ut["FL_ENDPOINT"] == "10.0.0.5:9092"


def test_update_merges_and_keeps_attributes_not_sent(gate: OneGateServer) -> None:
    vm = gate.add_vm(user_template={"KEEP": "me", "FL_TLS": "NO"})
    _client(gate, vm).update_vm({"FL_TLS": "YES"})
    ut = gate.user_template(vm)
    assert ut["KEEP"] == "me" and ut["FL_TLS"] == "YES"


def test_update_with_nothing_sends_nothing(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    _client(gate, vm).update_vm({})
    assert gate.recorded(vm) == []


def test_delete_is_type_2_with_one_name_and_reports_absence(gate: OneGateServer) -> None:
    vm = gate.add_vm(user_template={"READY": "YES"})
    client = _client(gate, vm, retries=3)
    assert client.delete_vm_attr("ready") is True
    assert "READY" not in gate.user_template(vm)
    assert client.delete_vm_attr("READY") is False  # the server's 500 "attribute not found"
    first, second, check = gate.recorded(vm)
    assert _form(first.body) == {"data": ["READY"], "type": ["2"]}
    assert first.status == 200
    assert (second.status, second.answer) == (500, "attribute not found")
    # A 500 is not retried: one read tells "already absent" from a failure (OneGate 7.2+ hides the text).
    assert (check.method, check.path, check.status) == ("GET", "/vm", 200)


def test_get_service_plain_shape(gate: OneGateServer) -> None:
    sl = gate.add_vm("superlink_0", user_template={"FL_ENDPOINT": "192.0.2.1:9092"})
    sn = gate.add_vm("supernode_0")
    gate.add_service("flower", {"superlink": [sl], "supernode": [sn]}, service_id=31)
    doc = _client(gate, sn).get_service()
    svc = doc["SERVICE"]
    assert svc["id"] == "31" and svc["name"] == "flower" and isinstance(svc["state"], int)
    roles = {r["name"]: r for r in svc["roles"]}
    assert roles["superlink"]["cardinality"] == 1 and isinstance(roles["superlink"]["state"], int)
    (node,) = roles["superlink"]["nodes"]
    assert node["deploy_id"] == sl.id and node["running"] is None
    assert set(node["vm_info"]["VM"]) == {"ID", "UID", "GID", "UNAME", "GNAME", "NAME"}
    assert node["vm_info"]["VM"]["ID"] == str(sl.id)
    (rec,) = gate.recorded(sn)
    assert rec.path == "/service" and "extended" not in rec.query


def test_get_service_extended_has_the_full_unnormalised_vm(gate: OneGateServer) -> None:
    sl = gate.add_vm("superlink_0", ips=("192.0.2.1",), user_template={"FL_TLS": "YES"})
    gate.add_service("flower-x", {"superlink": [sl]}, service_id=32)
    doc = _client(gate, sl).get_service(extended=True)
    (node,) = doc["SERVICE"]["roles"][0]["nodes"]
    full = node["vm_info"]["VM"]
    assert full["USER_TEMPLATE"]["FL_TLS"] == "YES"
    assert isinstance(full["TEMPLATE"]["NIC"], dict)  # one NIC: an object, as the real server sends
    (rec,) = gate.recorded(sl)
    assert rec.query == {"extended": ["true"]}


def test_get_vm_by_id_inside_the_service(gate: OneGateServer) -> None:
    sl = gate.add_vm("superlink_0", ips=("192.0.2.44",))
    sn = gate.add_vm("supernode_0")
    gate.add_service("flower-b", {"superlink": [sl], "supernode": [sn]}, service_id=33)
    doc = _client(gate, sn).get_vm_by_id(sl.id)
    assert doc["VM"]["ID"] == str(sl.id)
    assert doc["VM"]["TEMPLATE"]["NIC"][0]["IP"] == "192.0.2.44"
    assert doc["VM"]["USER_TEMPLATE"]["ROLE_NAME"] == "superlink"  # set by "OneFlow"
    (rec,) = gate.recorded(sn)
    assert rec.path == f"/vms/{sl.id}"


def test_vm_id_must_be_numeric(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    with pytest.raises(OneGateValueError):
        _client(gate, vm).get_vm_by_id("1/../vm")
    assert gate.recorded(vm) == []


# -- quoting limits ------------------------------------------------------------------------------

BAD_VALUES = ["", "a,b", 'a"b', "a\\b", "a[b", "a]b", "a\nb", "a\rb", "-----BEGIN CERTIFICATE-----\nMII\n"]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_values_the_server_breaks_on_are_refused_before_sending(gate: OneGateServer, value: str) -> None:
    vm = gate.add_vm()
    client = _client(gate, vm)
    with pytest.raises(OneGateValueError) as err:
        client.update_vm({"FL_OK": "fine", "FL_BAD": value})
    assert "FL_BAD" in str(err.value)
    assert gate.recorded(vm) == []  # all or nothing: the good attribute was not sent either


@pytest.mark.parametrize("value", BAD_VALUES[:6])
def test_the_double_answers_500_for_those_values_like_the_real_server(gate: OneGateServer, value: str) -> None:
    vm = gate.add_vm(user_template={"FL_BAD": "before"})
    resp = requests.put(
        f"{gate.url}/vm",
        data={"data": f"FL_OK=fine\nFL_BAD={value}", "type": "1"},
        headers={"X-ONEGATE-TOKEN": vm.token, "X-ONEGATE-VMID": str(vm.id)},
        timeout=5,
    )
    assert resp.status_code == 500
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert gate.user_template(vm) == {"FL_BAD": "before"}  # nothing applied


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A=B", "A B", "A\nB"])
def test_bad_attribute_names_are_refused(gate: OneGateServer, name: str) -> None:
    vm = gate.add_vm()
    with pytest.raises(OneGateValueError):
        _client(gate, vm).update_vm({name: "x"})
    assert gate.recorded(vm) == []


def test_base64_carries_pem_through_onegate(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    pem = make_ca_pem()
    _client(gate, vm).update_vm({"FL_CA_CERT": encode_value(pem), "FL_LIST": encode_value("a,b,[c]")})
    ut = gate.user_template(vm)
    assert decode_value(ut["FL_CA_CERT"]) == pem
    assert decode_value(ut["FL_LIST"]) == b"a,b,[c]"


def test_decode_value_refuses_junk() -> None:
    with pytest.raises(OneGateValueError):
        decode_value("not base64!!")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))
def test_client_check_agrees_with_the_server(gate: OneGateServer, value: str) -> None:
    """Property: the client refuses a value exactly when the server would break on it."""
    vm = gate.add_vm()
    try:
        check_value("FL_X", value)
        client_ok = True
    except OneGateValueError:
        client_ok = False
    resp = requests.put(
        f"{gate.url}/vm",
        data={"data": f"FL_X={value}", "type": "1"},
        headers={"X-ONEGATE-TOKEN": vm.token, "X-ONEGATE-VMID": str(vm.id)},
        timeout=5,
    )
    server_ok = resp.status_code == 200
    # The client is stricter only on CR/newline (the server splits lines on them).
    if any(c in value for c in "\r\n"):
        assert not client_ok
    else:
        assert client_ok == server_ok, (value, resp.status_code, resp.text)
    assert client_ok == (value != "" and not (set(value) & FORBIDDEN_VALUE_CHARS))


# -- status codes --------------------------------------------------------------------------------


def test_401_wrong_token_is_an_auth_error_without_the_token(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    wrong = "wrong-" + vm.token[:10]
    client = OneGateClient(access_for(gate, vm, token=wrong), timeout=2, retries=3, backoff=0.01)
    with pytest.raises(OneGateAuthError) as err:
        client.get_vm()
    text = str(err.value) + repr(err.value) + repr(client)
    assert "401" in text and f"VMID {vm.id}" in text and "Not authorized" in text
    assert wrong not in text
    assert_no_token(text)
    (rec,) = gate.recorded(vm)  # 4xx is not retried
    assert rec.status == 401 and rec.token_sent and not rec.token_ok


def test_401_unknown_vmid(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    access = OneGateAccess(gate.url, "99999", Secret(vm.token.encode()))
    with pytest.raises(OneGateAuthError):
        OneGateClient(access, timeout=2, retries=0).update_vm({"A": "b"})


def test_401_without_headers_plain_text_body_json_content_type(gate: OneGateServer) -> None:
    resp = requests.get(f"{gate.url}/vm", timeout=5)
    assert resp.status_code == 401 and resp.text == "Not authorized"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize("name", ["SERVICE_ID", "role_name", "SCHED_REQUIREMENTS"])
def test_403_restricted_attribute_update_and_delete(gate: OneGateServer, name: str) -> None:
    vm = gate.add_vm()
    sn = gate.add_vm()
    gate.add_service("flower-r", {"supernode": [vm, sn]}, service_id=40)
    client = _client(gate, vm)
    with pytest.raises(OneGateForbidden) as err:
        client.update_vm({"FL_OK": "x", name: "7"})
    assert f"Attribute ({name.upper()}) cannot be modified" in str(err.value)
    with pytest.raises(OneGateForbidden) as err:
        client.delete_vm_attr(name)
    assert "cannot be deleted" in str(err.value)
    assert gate.user_template(vm)["SERVICE_ID"] == "40" and "FL_OK" not in gate.user_template(vm)
    assert [r.status for r in gate.recorded(vm)] == [403, 403]


def test_403_action_disabled_by_the_administrator(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    gate.disabled.add("vm.update")
    try:
        with pytest.raises(OneGateForbidden) as err:
            _client(gate, vm).update_vm({"A": "b"})
    finally:
        gate.disabled.discard("vm.update")
    assert "Action (update) on resource (vm) not supported" in str(err.value)


def test_400_not_in_a_service(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    with pytest.raises(OneGateNotInService) as err:
        _client(gate, vm).get_service()
    assert err.value.status == 400 and err.value.server_message == "Empty or invalid SERVICE_ID"
    assert "not in a OneFlow service" in str(err.value)
    with pytest.raises(OneGateNotInService) as err:
        _client(gate, vm).get_vm_by_id(vm.id)
    assert "does not belong to any Virtual Router or Service" in err.value.server_message


def test_400_other_vm_not_in_the_same_service(gate: OneGateServer) -> None:
    a, b, other = gate.add_vm(), gate.add_vm(), gate.add_vm()
    gate.add_service("svc-a", {"supernode": [a, b]}, service_id=41)
    gate.add_service("svc-o", {"supernode": [other]}, service_id=42)
    client = _client(gate, a)
    assert client.get_vm_by_id(b.id)["VM"]["ID"] == str(b.id)
    with pytest.raises(OneGateNotInService) as err:
        client.get_vm_by_id(other.id)
    assert err.value.server_message == f"Service 41 does not contain VM {other.id}."


def test_404_vanished_node(gate: OneGateServer) -> None:
    a, gone = gate.add_vm(), gate.add_vm()
    gate.add_service("svc-v", {"supernode": [a, gone]}, service_id=43)
    with gate.lock:
        del gate.vms[gone.id]
    with pytest.raises(OneGateNotFound):
        _client(gate, a).get_vm_by_id(gone.id)
    with pytest.raises(OneGateNotFound):
        _client(gate, a).get_service(extended=True)  # extended fetches every node: 404


def test_unknown_route_is_400_plain_text(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    resp = requests.post(
        f"{gate.url}/service/99/scale",
        headers={"X-ONEGATE-TOKEN": vm.token, "X-ONEGATE-VMID": str(vm.id)},
        timeout=5,
    )
    assert (resp.status_code, resp.text) == (400, "OneGate server doesn't support this feature")


def test_double_accepts_the_raw_curl_form_and_query_type(gate: OneGateServer) -> None:
    vm = gate.add_vm(user_template={"OLD": "1"})
    hdr = {"X-ONEGATE-TOKEN": vm.token, "X-ONEGATE-VMID": str(vm.id), "Content-Type": "text/plain"}
    assert requests.put(f"{gate.url}/vm", data="READY=YES\\nFL_X=1", headers=hdr, timeout=5).status_code == 200
    assert requests.put(f"{gate.url}/vm?type=2", data="OLD", headers=hdr, timeout=5).status_code == 200
    assert gate.user_template(vm) == {"READY": "YES", "FL_X": "1"}


# -- configuration and secrecy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "vmid", "token", "missing"),
    [
        (None, "1", b"t", "ONEGATE_ENDPOINT"),
        ("http://127.0.0.1:1", None, b"t", "VMID"),
        ("http://127.0.0.1:1", "1", None, "token"),
        ("169.254.16.9:5030", "1", b"t", "http(s)://"),
        ("http://127.0.0.1:1", "12a", b"t", "not a number"),
    ],
)
def test_not_configured_says_what_is_missing(endpoint, vmid, token, missing) -> None:  # type: ignore[no-untyped-def]
    access = OneGateAccess(endpoint, vmid, Secret(token) if token else None)
    with pytest.raises(OneGateNotConfigured) as err:
        OneGateClient(access)
    assert missing in str(err.value)


def test_token_whitespace_is_stripped_and_never_shown(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    client = OneGateClient(access_for(gate, vm, token=vm.token + "\n"), timeout=2)
    assert client.get_vm()["VM"]["ID"] == str(vm.id)  # token.txt ends with a newline
    assert vm.token not in repr(client)
    assert client.redact(f"x {vm.token} y") == "x ******** y"


def test_the_token_scan_catches_a_leak(gate: OneGateServer) -> None:
    vm = gate.add_vm()
    with pytest.raises(AssertionError):
        assert_no_token(f"debug: X-ONEGATE-TOKEN={vm.token}")
