"""`flower-ctx oneflow template` and `flower-ctx oneflow vm-template`: the templates for OneFlow 7.x
and 6.10, checked against each version's schema as the OneFlow double encodes it (tables A and B of
the research notes), the USER_INPUT grammar, through the real command line, and their defaults
through the real validator. Instantiating them is tests/test_oneflow_double.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_ctx.model import Role
from flower_ctx.oneflow import KINDS, NOT_OFFERED, ROLE_SKIPS, VERSIONS, build, roles_of, service_inputs
from flower_ctx.variables import REGISTRY
from tests.oneflow_double import OneFlowError, parse_template, validate

# list-multiple is Sunstone-only (the CLI rejects it), network is service-level networks only.
INPUT_TYPES = {"text", "text64", "password", "number", "number-float", "range", "range-float", "list", "boolean",
               "fixed"}
OTHER = {"7": "6.10", "6.10": "7"}


def parse_user_input(spec: str) -> dict[str, Any]:
    """OpenNebula's ``M|type|description|params|default`` grammar (one_helper.rb), as a checker."""
    parts = spec.split("|")  # empty fields kept
    assert len(parts) >= 3, spec
    assert len(parts) in (3, 5), f"more than 3 fields must be exactly 5: {spec!r}"
    mandatory, kind, desc = parts[:3]
    params, default = (parts[3], parts[4]) if len(parts) == 5 else ("", "")
    assert mandatory in ("M", "O"), spec
    assert kind in INPUT_TYPES, spec
    assert desc.strip(), f"an input needs a description: {spec!r}"
    if kind == "list":
        options = params.split(",")
        assert all(options), spec
        assert default == "" or default in options, f"list default not among params: {spec!r}"
    if kind in ("range", "range-float"):
        lo, _, hi = params.partition("..")
        assert float(lo) <= float(hi), spec
    if kind == "boolean":
        assert default in ("", "YES", "NO"), spec
    if kind == "number":
        assert default == "" or re.fullmatch(r"-?\d+", default), spec
    if kind == "fixed":
        assert default != "", spec
    return {"mandatory": mandatory == "M", "type": kind, "params": params, "default": default}


def inputs_of(doc: dict[str, Any], version: str) -> dict[str, dict[str, Any]]:
    key = "user_inputs" if version == "7" else "custom_attrs"
    return {k: parse_user_input(v) for k, v in doc[key].items()}


# --- helpers ---------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx", *args], capture_output=True, text=True, timeout=60)


def template(kind: str, *args: str) -> dict[str, Any]:
    out = cli("oneflow", "template", kind, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def role(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [r for r in doc["roles"] if r["name"] == name]
    return found


def registry_names(*role_names: str) -> set[str]:
    """The variables these roles take as OneFlow inputs (not secrets, not VM template constants)."""
    return {v.name for v in REGISTRY if any(r.value in role_names for r in v.roles) and not v.secret and v.input}


def kind_names(kind: str) -> set[str]:
    """The inputs a kind offers: its roles' variables minus what the kind never offers."""
    return registry_names(*[r.value for r in roles_of(kind)]) - NOT_OFFERED.get(kind, frozenset())


TEMPLATE_IDS = {"superlink": 11, "supernode": 12, "gateway": 13}


def ids_for(kind: str) -> list[str]:
    return [*(["--superlink-template-id", "11"] if kind in ("coordinator", "single-site") else []),
            *(["--supernode-template-id", "12"] if kind != "coordinator" else []),
            *(["--gateway-template-id", "13"] if kind == "training-site-gateway" else [])]


# --- both schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_template_passes_its_versions_schema_and_not_the_others(kind: str, version: str) -> None:
    doc = template(kind, "--opennebula", version, *ids_for(kind))
    assert json.loads(json.dumps(doc)) == doc
    checked = validate(version, json.loads(json.dumps(doc)))
    assert [r["name"] for r in checked["roles"]] == [r["name"] for r in doc["roles"]]
    other = OTHER[version]
    if other == "6.10":
        # 6.10 has no template_id/type: its roles require vm_template (table A).
        with pytest.raises(OneFlowError) as err:
            validate("6.10", json.loads(json.dumps(doc)))
        assert (err.value.status, err.value.message) == (400, "KEY: 'vm_template' is required;")
    else:
        # Table B alone requires type (and template_id); 7.x's own server first converts a 6.x
        # template whose every role has vm_template, so it is accepted there, converted.
        with pytest.raises(OneFlowError) as err:
            validate("7", json.loads(json.dumps(doc)), compat=False)
        assert err.value.status == 400
        assert err.value.message.startswith("Mandatory document key 'type (string)' is missing from {")
        converted = validate("7", json.loads(json.dumps(doc)))
        for r in converted["roles"]:
            assert r["type"] == "vm" and r["template_id"] == TEMPLATE_IDS[r["name"]]
            assert "vm_template" not in r
        assert converted["user_inputs"] == doc["custom_attrs"] and "custom_attrs" not in converted


@pytest.mark.parametrize("kind", KINDS)
def test_7_template_has_service_level_inputs_only(kind: str) -> None:
    doc = template(kind, *ids_for(kind))  # --opennebula 7 is the default
    assert doc["ready_status_gate"] is True
    assert set(doc["user_inputs"]) == kind_names(kind)
    for r in doc["roles"]:
        assert r["type"] == "vm" and r["template_id"] == TEMPLATE_IDS[r["name"]]
        # FireEdge 7 never shows role-level user_inputs of a service template.
        assert "user_inputs" not in r and "user_inputs_values" not in r
        own = {"FL_APPLIANCE_ROLE": "gateway"} if r["name"] == "gateway" else {}
        assert r["template_contents"] == {"CONTEXT": {"TOKEN": "YES", "REPORT_READY": "YES", "NETWORK": "YES", **own}}
        assert "vm_template" not in r and "vm_template_contents" not in r
    assert "custom_attrs" not in doc
    assert "TOKEN=YES" in doc["description"] and "REPORT_READY=YES" in doc["description"]
    assert "flower-ctx oneflow vm-template" in doc["description"]


@pytest.mark.parametrize("kind", KINDS)
def test_610_template_passes_inputs_by_text_substitution(kind: str) -> None:
    doc = template(kind, "--opennebula", "6.10", *ids_for(kind))
    assert set(doc["custom_attrs"]) == kind_names(kind)
    assert "user_inputs" not in doc
    for r in doc["roles"]:
        assert type(r["vm_template"]) is int and "template_id" not in r and "type" not in r
        contents = r["vm_template_contents"]
        # Top-level NAME = "$NAME" lines only: no CONTEXT vector (it would replace the VM template's).
        assert "CONTEXT" not in contents and "[" not in contents
        attrs = parse_template(contents)
        # ... after the role's constants (the gateway role says what its VMs are).
        constants = [(name, value) for name, value in attrs if value != f"${name}"]
        assert constants == ([("FL_APPLIANCE_ROLE", "gateway")] if r["name"] == "gateway" else [])
        attrs = [a for a in attrs if a not in constants]
        skipped = {n for role, names in ROLE_SKIPS.get(kind, {}).items() if role.value == r["name"] for n in names}
        assert {name for name, _ in attrs} == (registry_names(r["name"]) & kind_names(kind)) - skipped
        # 6.10 replaces "$NAME" with a plain gsub: a longer name must come before its prefix.
        names = [name for name, _ in attrs]
        for i, name in enumerate(names):
            assert not any(name.startswith(earlier) for earlier in names[:i]), (name, names[:i])
    assert names.index("FL_GRPC_KEEPALIVE_TIMEOUT") < names.index("FL_GRPC_KEEPALIVE_TIME")


@pytest.mark.parametrize("version", VERSIONS)
def test_coordinator_is_a_singleton_superlink_with_tls(version: str) -> None:
    doc = template("coordinator", "--opennebula", version, "--superlink-template-id", "3")
    assert [r["name"] for r in doc["roles"]] == ["superlink"]
    link = role(doc, "superlink")
    assert (link["cardinality"], link["min_vms"], link["max_vms"]) == (1, 1, 1)
    assert "parents" not in link and doc["deployment"] == "none"
    inputs = inputs_of(doc, version)
    # A boolean is offered as a YES/NO list: FireEdge's switch would send "true"/"false".
    assert inputs["FL_TLS_ENABLED"] == {"mandatory": False, "type": "list", "params": "YES,NO", "default": "YES"}
    assert set(inputs) == registry_names("superlink")
    assert "FL_SUPERLINK_ADDRESS" not in inputs and "FL_NODE_CONFIG" not in inputs  # SuperNode-only


@pytest.mark.parametrize("version", VERSIONS)
def test_training_site_needs_address_and_ca(version: str) -> None:
    doc = template("training-site", "--opennebula", version, "--supernode-template-id", "4")
    assert [r["name"] for r in doc["roles"]] == ["supernode"]
    assert "parents" not in role(doc, "supernode")
    inputs = inputs_of(doc, version)
    assert inputs["FL_SUPERLINK_ADDRESS"]["mandatory"] and inputs["FL_SUPERLINK_ADDRESS"]["type"] == "text"
    assert inputs["FL_SSL_CA_CERTFILE"]["mandatory"] and inputs["FL_SSL_CA_CERTFILE"]["type"] == "text64"
    assert inputs["FL_TLS_ENABLED"]["default"] == "YES"
    # Mandatory first: the CLI asks them first.
    assert list(inputs)[:2] == ["FL_SSL_CA_CERTFILE", "FL_SUPERLINK_ADDRESS"]
    assert sorted(k for k, v in inputs.items() if v["mandatory"]) == ["FL_SSL_CA_CERTFILE", "FL_SUPERLINK_ADDRESS"]
    assert set(inputs) == registry_names("supernode")
    assert "FL_CERT_EXTRA_SAN" not in inputs and "FL_SSL_CERTFILE" not in inputs  # SuperLink-only


@pytest.mark.parametrize("version", VERSIONS)
def test_single_site_supernode_is_child_of_superlink(version: str) -> None:
    doc = template("single-site", "--opennebula", version, "--superlink-template-id", "1",
                   "--supernode-template-id", "2", "--supernodes", "3")
    assert [r["name"] for r in doc["roles"]] == ["superlink", "supernode"]
    assert doc["deployment"] == "straight"
    node = role(doc, "supernode")
    assert node["parents"] == ["superlink"] and node["cardinality"] == 3
    # In one zone the SuperNode discovers the SuperLink through OneGate: nothing is mandatory.
    inputs = inputs_of(doc, version)
    assert not any(v["mandatory"] for v in inputs.values())
    assert set(inputs) == registry_names("superlink", "supernode")


@pytest.mark.parametrize("version", VERSIONS)
def test_secrets_are_never_offered(version: str) -> None:
    # Answered inputs land in USER_TEMPLATE, readable by every VM of the service through OneGate.
    secrets = {v.name for v in REGISTRY if v.secret}
    assert secrets  # the registry does have secrets (FL_SSL_KEYFILE, FL_WG_PRIVATE_KEY)
    for kind in KINDS:
        doc = build(kind, opennebula=version)
        inputs = inputs_of(doc, version)
        assert not secrets & set(inputs), kind
        assert not any(v["type"] == "password" for v in inputs.values())
        assert not any(s in json.dumps(doc["roles"]) for s in secrets)
    for r in Role:
        assert not any(s in cli("oneflow", "vm-template", r.value).stdout.split("CONTEXT = [")[1] for s in secrets)


def test_every_number_and_list_input_has_a_default() -> None:
    # The CLI drops an empty answer to an optional number/range/list without default, and OneFlow
    # then refuses the whole request ("Verify that every ... have its corresponding value defined").
    for kind in KINDS:
        for name, spec in service_inputs(kind).items():
            parsed = parse_user_input(spec)
            if parsed["type"] in ("number", "number-float", "range", "range-float", "list"):
                assert parsed["default"] != "", (kind, name)
            assert parsed["type"] != "boolean", (kind, name)  # offered as a YES,NO list


def test_missing_template_id_is_noted_and_wrong_one_refused() -> None:
    out = cli("oneflow", "template", "coordinator")
    assert out.returncode == 0
    assert json.loads(out.stdout)["roles"][0]["template_id"] == 0
    assert "--superlink-template-id not given; using template_id 0" in out.stderr
    out = cli("oneflow", "template", "coordinator", "--opennebula", "6.10")
    assert out.returncode == 0 and json.loads(out.stdout)["roles"][0]["vm_template"] == 0
    assert "using vm_template 0" in out.stderr
    bad = cli("oneflow", "template", "coordinator", "--supernode-template-id", "5")
    assert bad.returncode == 2 and "does not apply to coordinator" in bad.stderr
    neg = cli("oneflow", "template", "training-site", "--supernode-template-id", "-1")
    assert neg.returncode == 2
    unknown = cli("oneflow", "template", "two-sites")
    assert unknown.returncode == 2
    version = cli("oneflow", "template", "coordinator", "--opennebula", "6.8")
    assert version.returncode == 2 and "6.10" in version.stderr


def test_help_names_the_versions_and_the_clients() -> None:
    out = cli("oneflow", "template", "--help").stdout
    for needle in ("--opennebula", "6.10", "oneflow-template create", "oneflow-template instantiate", "Sunstone",
                   "vm-template", "base64"):
        assert needle in out, needle
    out = cli("oneflow", "vm-template", "--help").stdout
    for needle in ("--opennebula", "TOKEN", "REPORT_READY", '"$NAME"', "6.10"):
        assert needle in out, needle
    out = cli("oneflow", "--help").stdout
    assert "vm-template" in out and "template" in out


@pytest.mark.parametrize("role_name", ["superlink", "supernode", "gateway"])
def test_vm_template_passes_every_input_to_context(role_name: str) -> None:
    outs = {v: cli("oneflow", "vm-template", role_name, "--opennebula", v) for v in VERSIONS}
    for out in outs.values():
        assert out.returncode == 0, out.stderr
    attrs = parse_template(outs["7"].stdout)  # the core's own parser accepts it, comments included
    assert [n for n, _ in attrs] == ["CONTEXT"]
    ctx = attrs[0][1]
    assert isinstance(ctx, dict)
    assert (ctx["TOKEN"], ctx["NETWORK"], ctx["REPORT_READY"]) == ("YES", "YES", "YES")
    passed = {k for k, v in ctx.items() if v == f"${k}"}
    if role_name == "supernode":
        # The SuperNode image is also the site gateway: its template passes both roles' inputs, and
        # FL_APPLIANCE_ROLE, which only a training-site-gateway service's gateway role sets.
        assert passed == registry_names("supernode", "gateway") | {"FL_APPLIANCE_ROLE"}
    else:
        assert passed == registry_names(role_name)
    assert ctx.get("FL_APPLIANCE_ROLE") == {"superlink": None, "supernode": "$FL_APPLIANCE_ROLE",
                                            "gateway": "gateway"}[role_name]
    # The same CONTEXT for both versions; only the comment differs.
    body = {v: out.stdout[out.stdout.index("CONTEXT = ["):] for v, out in outs.items()}
    assert body["7"] == body["6.10"]
    assert "6.10" in outs["6.10"].stdout.split("CONTEXT = [")[0]


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS), version=st.sampled_from(VERSIONS), link=st.integers(0, 2**31 - 1),
    node=st.integers(0, 2**31 - 1), n=st.integers(1, 500),
)
def test_any_ids_and_counts_give_valid_templates(kind: str, version: str, link: int, node: int, n: int) -> None:
    doc = build(kind, link, node, supernodes=n, opennebula=version)
    validate(version, json.loads(json.dumps(doc)))
    for r in doc["roles"]:
        assert r["template_id" if version == "7" else "vm_template"] == (link if r["name"] == "superlink" else node)
        if r["name"] == "supernode":
            assert r["cardinality"] == n


# --- the defaults the templates offer pass the real validator ---------------------------------


def _self_signed_ca() -> bytes:
    from tests.onegate_server import make_ca_pem

    return make_ca_pem("test CA")


def _context_from_inputs(inputs: dict[str, str], extra: dict[str, str]) -> str:
    """What OneFlow puts in context.sh when every input keeps its default (empty if none)."""
    values = {k: parse_user_input(v)["default"] for k, v in inputs.items()}
    values.update(extra)
    lines = ["# Context variables generated by OpenNebula"]
    lines += [f"{k}='{v}'" for k, v in sorted(values.items())]
    return "\n".join(lines) + "\n"


def _check(tmp_path: Path, role_name: str, text: str) -> subprocess.CompletedProcess[str]:
    ctx = tmp_path / f"{role_name}.context.sh"
    ctx.write_text(text)
    return cli("context", "check", "--role", role_name, "--context", str(ctx))


def test_defaults_offered_are_valid(tmp_path: Path) -> None:
    nic = {"ETH0_IP": "192.0.2.10", "ETH0_MAC": "02:00:c0:00:02:0a"}
    out = _check(tmp_path, "superlink", _context_from_inputs(service_inputs("coordinator"), nic))
    assert out.returncode == 0, out.stdout + out.stderr
    # The training site with its two mandatory answers: a CA (any PEM certificate) and an address.
    ca_pem = _self_signed_ca()
    answers = {
        **nic,
        "FL_SUPERLINK_ADDRESS": "203.0.113.50:9092",
        "FL_SSL_CA_CERTFILE": base64.b64encode(ca_pem).decode(),
    }
    out = _check(tmp_path, "supernode", _context_from_inputs(service_inputs("training-site"), answers))
    assert out.returncode == 0, out.stdout + out.stderr
    # Without the mandatory answers the validator refuses the training site, as the template says.
    out = _check(
        tmp_path,
        "supernode",
        _context_from_inputs(service_inputs("training-site"), {**nic, "FL_SUPERLINK_ADDRESS": "203.0.113.50:9092"}),
    )
    assert out.returncode == 2 and "FL_SSL_CA_CERTFILE" in out.stderr
    # Single site: both roles get every input (service level); each accepts the defaults.
    for r in ("superlink", "supernode"):
        out = _check(tmp_path, r, _context_from_inputs(service_inputs("single-site"), nic))
        assert out.returncode == 0, out.stdout + out.stderr
