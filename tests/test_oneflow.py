"""`flower-ctx oneflow template`: OneFlow 7.x service templates checked against the schema facts of
research note 6 (roles, types, names, cardinality bounds, parents and deployment) and the USER_INPUT
grammar of 6.2, through the real command line, and their defaults through the real validator."""

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

from flower_ctx.oneflow import KINDS, build
from flower_ctx.variables import REGISTRY

# --- the rules, written from the research note (not from the code under test) -----------------

TOP_LEVEL = {
    "name",
    "deployment",
    "description",
    "shutdown_action",
    "roles",
    "user_inputs",
    "user_inputs_values",
    "ready_status_gate",
    "automatic_deletion",
    "networks",
    "networks_values",
    "on_hold",
}
VM_ROLE = {
    "name",
    "type",
    "template_id",
    "cardinality",
    "template_contents",
    "user_inputs",
    "user_inputs_values",
    "parents",
    "shutdown_action",
    "min_vms",
    "max_vms",
    "cooldown",
    "on_hold",
    "elasticity_policies",
    "scheduled_policies",
}
# list-multiple is Sunstone-only (the CLI rejects it), network is service-level only.
ROLE_INPUT_TYPES = {
    "text",
    "text64",
    "password",
    "number",
    "number-float",
    "range",
    "range-float",
    "list",
    "boolean",
    "fixed",
}


def parse_user_input(spec: str) -> dict[str, Any]:
    """OpenNebula's ``M|type|description|params|default`` grammar (one_helper.rb), as a checker."""
    parts = spec.split("|")  # empty fields kept
    assert len(parts) >= 3, spec
    assert len(parts) in (3, 5), f"more than 3 fields must be exactly 5: {spec!r}"
    mandatory, kind, desc = parts[:3]
    params, default = (parts[3], parts[4]) if len(parts) == 5 else ("", "")
    assert mandatory in ("M", "O"), spec
    assert kind in ROLE_INPUT_TYPES, spec
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


def validate_service_template(doc: dict[str, Any]) -> None:
    """The 7.x SCHEMA / VM_ROLE_SCHEMA facts and validate_vmvalues, plus straight-for-parents."""
    assert set(doc) <= TOP_LEVEL, set(doc) - TOP_LEVEL
    assert isinstance(doc["name"], str) and doc["name"]
    assert doc.get("deployment", "none") in ("none", "straight")
    assert isinstance(doc.get("ready_status_gate", False), bool)
    roles = doc["roles"]
    assert isinstance(roles, list) and roles
    names = [r["name"] for r in roles]
    assert len(names) == len(set(names)), "role names must be unique"
    for role in roles:
        assert set(role) <= VM_ROLE, set(role) - VM_ROLE
        assert re.fullmatch(r"\w+", role["name"]), role["name"]
        assert role["type"] == "vm"
        assert type(role["template_id"]) is int and role["template_id"] >= 0
        card = role.get("cardinality", 0)
        assert type(card) is int and card >= 0
        if "min_vms" in role:
            assert role["min_vms"] <= card
        if "max_vms" in role:
            assert card <= role["max_vms"]
        assert isinstance(role.get("template_contents", {}), dict), "7.x template_contents is an object"
        for parent in role.get("parents", []):
            assert parent in names and parent != role["name"]
        for key, spec in role.get("user_inputs", {}).items():
            assert re.fullmatch(r"[A-Z0-9_]+", key), key
            parse_user_input(spec)
    if any(r.get("parents") for r in roles):
        assert doc["deployment"] == "straight", "parents only wait for each other with deployment straight"


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


def registry_names(role_name: str) -> set[str]:
    return {v.name for v in REGISTRY if any(r.value == role_name for r in v.roles) and not v.secret}


# --- the three templates ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_templates_validate_and_round_trip(kind: str) -> None:
    doc = template(
        kind,
        *(["--superlink-template-id", "11"] if kind != "training-site" else []),
        *(["--supernode-template-id", "12"] if kind != "coordinator" else []),
    )
    validate_service_template(doc)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["ready_status_gate"] is True
    # Every role VM gets OneGate access and the readiness report (research note 2).
    for r in doc["roles"]:
        assert r["template_contents"]["CONTEXT"]["TOKEN"] == "YES"
        assert r["template_contents"]["CONTEXT"]["REPORT_READY"] == "YES"
        assert r["template_id"] == {"superlink": 11, "supernode": 12}[r["name"]]
    assert "TOKEN=YES" in doc["description"] and "REPORT_READY=YES" in doc["description"]


def test_coordinator_is_a_singleton_superlink_with_tls() -> None:
    doc = template("coordinator", "--superlink-template-id", "3")
    assert [r["name"] for r in doc["roles"]] == ["superlink"]
    link = role(doc, "superlink")
    assert (link["cardinality"], link["min_vms"], link["max_vms"]) == (1, 1, 1)
    assert "parents" not in link and doc["deployment"] == "none"
    inputs = {k: parse_user_input(v) for k, v in link["user_inputs"].items()}
    assert inputs["FL_TLS_ENABLED"] == {"mandatory": False, "type": "boolean", "params": "", "default": "YES"}
    assert set(inputs) == registry_names("superlink")
    assert "FL_SUPERLINK_ADDRESS" not in inputs and "FL_NODE_CONFIG" not in inputs  # SuperNode-only


def test_training_site_needs_address_and_ca() -> None:
    doc = template("training-site", "--supernode-template-id", "4")
    assert [r["name"] for r in doc["roles"]] == ["supernode"]
    node = role(doc, "supernode")
    assert "parents" not in node
    inputs = {k: parse_user_input(v) for k, v in node["user_inputs"].items()}
    assert inputs["FL_SUPERLINK_ADDRESS"]["mandatory"] and inputs["FL_SUPERLINK_ADDRESS"]["type"] == "text"
    assert inputs["FL_SSL_CA_CERTFILE"]["mandatory"] and inputs["FL_SSL_CA_CERTFILE"]["type"] == "text64"
    assert inputs["FL_TLS_ENABLED"]["default"] == "YES"
    assert sorted(k for k, v in inputs.items() if v["mandatory"]) == ["FL_SSL_CA_CERTFILE", "FL_SUPERLINK_ADDRESS"]
    assert set(inputs) == registry_names("supernode")
    assert "FL_CERT_EXTRA_SAN" not in inputs and "FL_SSL_CERTFILE" not in inputs  # SuperLink-only


def test_single_site_supernode_is_child_of_superlink() -> None:
    doc = template("single-site", "--superlink-template-id", "1", "--supernode-template-id", "2", "--supernodes", "3")
    assert [r["name"] for r in doc["roles"]] == ["superlink", "supernode"]
    assert doc["deployment"] == "straight"
    node = role(doc, "supernode")
    assert node["parents"] == ["superlink"]
    assert node["cardinality"] == 3
    # In one zone the SuperNode discovers the SuperLink through OneGate: nothing is mandatory.
    for r in doc["roles"]:
        assert not any(parse_user_input(v)["mandatory"] for v in r["user_inputs"].values())
        assert set(r["user_inputs"]) == registry_names(r["name"])


def test_secrets_are_never_offered() -> None:
    # Answered inputs land in USER_TEMPLATE, readable by every VM of the service through OneGate.
    secrets = {v.name for v in REGISTRY if v.secret}
    assert secrets  # the registry does have secrets (FL_SSL_KEYFILE, FL_WG_PRIVATE_KEY)
    for kind in KINDS:
        for r in build(kind)["roles"]:
            assert not secrets & set(r["user_inputs"]), (kind, r["name"])
            assert not any(parse_user_input(v)["type"] == "password" for v in r["user_inputs"].values())


def test_missing_template_id_is_noted_and_wrong_one_refused() -> None:
    out = cli("oneflow", "template", "coordinator")
    assert out.returncode == 0
    assert json.loads(out.stdout)["roles"][0]["template_id"] == 0
    assert "--superlink-template-id not given" in out.stderr
    bad = cli("oneflow", "template", "coordinator", "--supernode-template-id", "5")
    assert bad.returncode == 2 and "does not apply to coordinator" in bad.stderr
    neg = cli("oneflow", "template", "training-site", "--supernode-template-id", "-1")
    assert neg.returncode == 2
    unknown = cli("oneflow", "template", "two-sites")
    assert unknown.returncode == 2


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(KINDS), link=st.integers(0, 2**31 - 1), node=st.integers(0, 2**31 - 1), n=st.integers(1, 500)
)
def test_any_ids_and_counts_give_valid_templates(kind: str, link: int, node: int, n: int) -> None:
    doc = build(kind, link, node, supernodes=n)
    validate_service_template(doc)
    for r in doc["roles"]:
        assert r["template_id"] == (link if r["name"] == "superlink" else node)
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
    link = role(build("coordinator"), "superlink")
    out = _check(tmp_path, "superlink", _context_from_inputs(link["user_inputs"], nic))
    assert out.returncode == 0, out.stdout + out.stderr
    # The training site with its two mandatory answers: a CA (any PEM certificate) and an address.
    ca_pem = _self_signed_ca()
    node = role(build("training-site"), "supernode")
    answers = {
        **nic,
        "FL_SUPERLINK_ADDRESS": "203.0.113.50:9092",
        "FL_SSL_CA_CERTFILE": base64.b64encode(ca_pem).decode(),
    }
    out = _check(tmp_path, "supernode", _context_from_inputs(node["user_inputs"], answers))
    assert out.returncode == 0, out.stdout + out.stderr
    # Without the mandatory answers the validator refuses the training site, as the template says.
    out = _check(
        tmp_path,
        "supernode",
        _context_from_inputs(node["user_inputs"], {**nic, "FL_SUPERLINK_ADDRESS": "203.0.113.50:9092"}),
    )
    assert out.returncode == 2 and "FL_SSL_CA_CERTFILE" in out.stderr
