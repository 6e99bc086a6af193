"""The OneFlow double (tests/oneflow_double.py) and the generated templates instantiated through it.

First the double's own behaviour, each point a fact of the research notes (schema per version,
the 6.x conversion, the CLI's prompting and text64 encoding, the web form, Hash.to_raw and the
core's template parser, straight deployment gated on READY, VM names, scaling). Then every
generated template kind x OpenNebula version x client, instantiated with realistic answers: each
VM's context.sh, rendered as OpenNebula writes it, is accepted by flower-ctx's validator (and, for
a few, by the real `flower-ctx context check`)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flower_ctx import config
from flower_ctx import context as ctxmod
from flower_ctx.model import OneGateAccess, Secret
from flower_ctx.oneflow import KINDS, build, vm_template
from flower_ctx.onegate import OneGateClient
from tests.oneflow_double import (
    CliError,
    OneFlow,
    OneFlowError,
    TemplateSyntaxError,
    VmRecord,
    WebFormError,
    parse_template,
    to_raw,
    validate,
)
from tests.onegate_server import OneGateServer, access_for

pytestmark = pytest.mark.usefixtures("no_token_in_output")

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ("7", "6.10")
ONEGATE_VERSION = {"7": "7.4.0", "6.10": "6.10.5"}
HARDWARE = 'CPU = "1"\nMEMORY = "2048"\nDISK = [ IMAGE_ID = "7" ]\nNIC = [ NETWORK_ID = "0" ]\n'


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_line(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The coordinator's CA as `flower-ctx ca export` prints it: one base64 line."""
    root = tmp_path_factory.mktemp("coordinator")
    run = [sys.executable, "-m", "flower_ctx"]
    done = subprocess.run([*run, "configure", "--role", "superlink", "--context",
                           str(REPO / "examples" / "superlink.context.sh"), "--root", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = subprocess.run([*run, "ca", "export", "--root", str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line and base64.b64decode(line).startswith(b"-----BEGIN CERTIFICATE-----")
    return line


@pytest.fixture
def sites() -> Iterator[Any]:
    """``make(version, **kw) -> (flow, onegate)``: a started OneGate double and a OneFlow double."""
    made: list[tuple[OneFlow, OneGateServer]] = []

    def make(version: str, gate_version: str | None = None, **kw: Any) -> tuple[OneFlow, OneGateServer]:
        og = OneGateServer(version=gate_version or ONEGATE_VERSION[version])
        og.start()
        flow = OneFlow(og, version, **kw)
        flow.start()
        made.append((flow, og))
        return flow, og

    yield make
    for flow, og in made:
        flow.stop()
        og.stop()


def register(flow: OneFlow, kind: str, version: str, tmp_path: Path, *, supernodes: int = 2,
             extra_context: dict[str, str] | None = None) -> int:
    """VM templates from `flower-ctx oneflow vm-template`, then `oneflow-template create FILE`."""
    ids = {}
    for role in ("superlink", "supernode"):
        text = HARDWARE + vm_template(role, version)
        if extra_context:
            text = text.rstrip().rstrip("]") + ",\n" + ",\n".join(
                f'  {k} = "{v}"' for k, v in extra_context.items()) + " ]\n"
        ids[role] = flow.add_vm_template(text)
    doc = build(kind, ids["superlink"], ids["supernode"], opennebula=version, supernodes=supernodes)
    path = tmp_path / f"{kind}-{version}.json"
    path.write_text(json.dumps(doc, indent=2))
    out = flow.cli(["oneflow-template", "create", str(path)])
    assert out.startswith("ID: ")
    return int(out.split()[1])


def inputs_of(flow: OneFlow, tid: int) -> dict[str, str]:
    body = flow.template(tid)
    return body.get("user_inputs") or body.get("custom_attrs") or {}


def typed_answers(inputs: dict[str, str], values: dict[str, str]) -> list[str]:
    """What an operator types at `oneflow-template instantiate`: a list answer is the option's
    number, Enter keeps the default."""
    out = []
    for key, spec in inputs.items():
        parts = spec.split("|")
        if key not in values:
            out.append("")
        elif parts[1] == "list":
            out.append(str(parts[3].split(",").index(values[key])))
        else:
            out.append(values[key])
    return out


def instantiate(flow: OneFlow, tid: int, client: str, values: dict[str, str]) -> int:
    if client == "cli":
        out = flow.cli(["oneflow-template", "instantiate", str(tid)], typed_answers(inputs_of(flow, tid), values))
        assert out.rstrip().splitlines()[-1].startswith("ID: "), out
        return int(out.split()[-1])
    return flow.web_instantiate(tid, values)


def client_for(rec: VmRecord) -> OneGateClient:
    """The OneGate client the VM itself would build from its CONTEXT and token."""
    access = OneGateAccess(rec.context["ONEGATE_ENDPOINT"], rec.context["VMID"], Secret(rec.token.encode()))
    return OneGateClient(access, timeout=2.0, retries=0)


def report_ready(flow: OneFlow, rec: VmRecord, **extra: str) -> None:
    client_for(rec).update_vm({"FL_READY": "YES", **extra, "READY": "YES"})
    flow.settle()


def accepted(rec: VmRecord) -> config.Config:
    """flower-ctx's validator on the VM's context.sh exactly as OpenNebula writes it."""
    values = ctxmod.parse(rec.context_sh().encode(), rec.name)
    cfg, _ = config.resolve(rec.role, values, token=rec.token)
    return cfg


# --- the schemas ---------------------------------------------------------------------------------


def test_schema_610_falsy_absent_integers_coerced_unknown_keys_kept() -> None:
    doc: dict[str, Any] = {"name": "x", "mystery": {"kept": 1},
                           "roles": [{"name": "a", "vm_template": "5", "cardinality": None, "extra": [1]}]}
    out = validate("6.10", doc)
    role = out["roles"][0]
    assert role["vm_template"] == 5 and role["cardinality"] == 0 and role["extra"] == [1]
    assert out["mystery"] == {"kept": 1} and out["deployment"] == "none" and out["description"] == ""

    def error(role: dict[str, Any], version: str = "6.10", **svc: Any) -> OneFlowError:
        with pytest.raises(OneFlowError) as err:
            validate(version, {"name": "x", "roles": [role], **svc})
        return err.value

    assert error({"name": "a", "vm_template": False}).message == "KEY: 'vm_template' is required;"
    assert error({"name": "a", "vm_template": "5x"}).message == "KEY: 'vm_template' must be an Integer;"
    assert error({"name": "a", "vm_template": True}).status == 500  # Integer(true): TypeError, not rescued
    assert error({"name": "a", "vm_template": 1, "cardinality": -1}).message == \
        "KEY: 'cardinality' must be greater than or equal to 0;"
    assert error({"name": "super-link", "vm_template": 1}).message == "KEY: 'name' must match regexp /^\\w+$/;"
    validate("6.10", {"name": "x", "roles": [{"name": "a\n-", "vm_template": 1}]})  # Ruby's ^$ are per line
    assert error({"name": "a", "vm_template": 1, "cardinality": 1, "min_vms": 2}).message == \
        "Role 'a' 'cardinality' must be greater than or equal to 'min_vms'"
    assert error({"name": "a", "vm_template": 1, "cardinality": 3, "max_vms": 2}).message == \
        "Role 'a' 'cardinality' must be lower than or equal to 'max_vms'"
    assert error({"name": "a", "vm_template": 1}, deployment="fast").message == \
        "KEY: 'deployment' must be one of none, straight;"
    with pytest.raises(OneFlowError, match="Role name 'a' is repeated"):
        validate("6.10", {"name": "x", "roles": [{"name": "a", "vm_template": 1}, {"name": "a", "vm_template": 2}]})


def test_schema_7_type_required_roles_by_type_and_its_error_style() -> None:
    with pytest.raises(OneFlowError) as err:
        validate("7", {"name": "x", "roles": [{"name": "a", "template_id": 1}]})
    assert err.value.message == \
        "Mandatory document key 'type (string)' is missing from {\"name\":\"a\",\"template_id\":1}"
    ok = validate("7", {"name": "x", "roles": [{"name": "a", "type": "vm", "template_id": "2"}], "other": True})
    assert ok["roles"][0]["template_id"] == 2 and ok["roles"][0]["cardinality"] == 0 and ok["other"] is True
    with pytest.raises(OneFlowError, match='Unsupported role type "container"'):
        validate("7", {"name": "x", "roles": [{"name": "a", "type": "container", "template_id": 1}]})
    with pytest.raises(OneFlowError, match="must define a floating IP"):
        validate("7", {"name": "x", "roles": [{"name": "r", "type": "vr", "template_id": 1, "cardinality": 2,
                                               "template_contents": {"NIC": [{"NETWORK_ID": "0"}]}}]})
    with pytest.raises(OneFlowError) as err:
        validate("7", {"name": "x", "ready_status_gate": "yes",
                       "roles": [{"name": "a", "type": "vm", "template_id": 1}]})
    assert err.value.message.startswith("KEY: 'ready_status_gate' is not allowed in {")
    with pytest.raises(OneFlowError) as err:
        validate("7", {"name": "x", "roles": [{"name": "a", "type": "vm", "template_id": 1,
                                               "template_contents": "A=1"}]})
    assert err.value.message == "KEY: 'template_contents' must be an Object;"


def test_7_converts_a_6x_template_with_its_warts() -> None:
    contents = 'NIC = [ NETWORK_ID = "$net", NAME = "n0" ]\nGREETING = "say \\"hi\\", twice"\n'
    doc = {"name": "old", "custom_attrs": {"A": "M|text|a"}, "custom_attrs_values": {"A": "1"},
           "roles": [{"name": "r", "vm_template": "3", "vm_template_contents": contents,
                      "custom_attrs": {"B": "O|text|b"}, "custom_attrs_values": {"B": "2"}}]}
    out = validate("7", doc)
    role = out["roles"][0]
    assert (role["type"], role["template_id"]) == ("vm", 3)
    # Every quote is removed, escaped ones included.
    assert role["template_contents"] == {"NIC": [{"NETWORK_ID": "$net", "NAME": "n0"}], "GREETING": "say \\hi\\, twice"}
    assert role["user_inputs"] == {"B": "O|text|b"} and out["user_inputs"] == {"A": "M|text|a"}
    # The role's own values are gone: only the service's survive.
    assert out["user_inputs_values"] == {"A": "1"} and "custom_attrs_values" not in role
    # A conversion that fails is a crash (Validator::ParseException(...) is not a method): 500.
    with pytest.raises(OneFlowError) as err:
        validate("7", {"name": "x", "roles": [{"name": "r", "vm_template": [1]}]})
    assert (err.value.status, err.value.message) == (500, "undefined method 'ParseException' for module Validator")
    # Only when every role is old: one new role, and the old one is checked as it is.
    with pytest.raises(OneFlowError, match="Mandatory document key 'type"):
        validate("7", {"name": "x", "roles": [{"name": "r", "vm_template": 1},
                                              {"name": "s", "type": "vm", "template_id": 2}]})


# --- template text -------------------------------------------------------------------------------


def test_to_raw_puts_a_comma_before_every_newline_inside_a_vector() -> None:
    raw = to_raw({"CONTEXT": {"K": "a\nb", "Q": 'x"y'}, "TOP": "c\nd", "N": 5, "NIC": [{"A": "1"}, {"A": "2"}]})
    assert raw == ('CONTEXT = [\nK = "a,\nb",\nQ = "x\\"y"\n]\nTOP = "c\nd"\nN = "5"\n'
                   'NIC = [\nA = "1"\n]\nNIC = [\nA = "2"\n]\n')
    attrs = dict(parse_template(raw)[:3])
    assert attrs["CONTEXT"] == {"K": "a,\nb", "Q": 'x"y'} and attrs["TOP"] == "c\nd"
    assert [v for n, v in parse_template(raw) if n == "NIC"] == [{"A": "1"}, {"A": "2"}]


def test_template_parser_like_the_core() -> None:
    attrs = parse_template('# a comment\ncpu = "1"\nempty =\nctx = [ token = "YES", Name = "$NAME" ]\nbare = 5\n')
    assert attrs == [("CPU", "1"), ("EMPTY", ""), ("CTX", {"TOKEN": "YES", "NAME": "$NAME"}), ("BARE", "5")]
    with pytest.raises(TemplateSyntaxError):
        parse_template('FL_NODE_CONFIG = "name="site b""\nFL_MAX_RETRIES = "0"\n')  # 6.10's unescaped quotes
    assert parse_template('A = "x \\"y\\""') == [("A", 'x "y"')]


# --- the two clients -------------------------------------------------------------------------------

PROMPTED = {"T64": "O|text64|a file||hello", "TXT": "M|text|mandatory, not enforced||",
            "L": "O|list|pick|a,b,c|b", "B": "O|boolean|flag||NO", "N": "O|number|count||"}


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_prompts_encodes_text64_and_drops_an_empty_optional_number(sites: Any, version: str,
                                                                      tmp_path: Path) -> None:
    flow, _ = sites(version)
    vt = flow.add_vm_template(HARDWARE)
    key = "user_inputs" if version == "7" else "custom_attrs"
    role: dict[str, Any] = {"name": "r", "cardinality": 1}
    role.update({"type": "vm", "template_id": vt} if version == "7" else {"vm_template": vt})
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": "prompted", key: PROMPTED, "roles": [role]}))
    tid = int(flow.cli(["oneflow-template", "create", str(path)]).split()[1])
    with pytest.raises(CliError) as err:  # N left empty: dropped by the CLI, then refused by the server
        flow.cli(["oneflow-template", "instantiate", str(tid)], ["", "", "2", "YES", ""])
    noun = "User Input" if version == "7" else "custom attribute"
    assert f"Verify that every {noun} have its corresponding value defined" in err.value.output
    assert err.value.status == 400 % 256
    assert "  * (T64) a file" in err.value.output and "Press enter for default (hello)." in err.value.output
    assert "    2  c" in err.value.output
    with pytest.raises(CliError, match="Invalid boolean 'yes'"):
        flow.cli(["oneflow-template", "instantiate", str(tid)], ["", "", "", "yes"])
    typed = ["<<EDITOR>>", "line 1\nline 2\n", "", "9", "", "", "7"]  # 9 is no option: asked again
    out = flow.cli(["oneflow-template", "instantiate", str(tid)], typed)
    sid = int(out.split()[-1])
    values = flow.service(sid).body["user_inputs_values" if version == "7" else "custom_attrs_values"]
    assert values == {"T64": base64.b64encode(b"line 1\nline 2\n").decode(), "TXT": "", "L": "b", "B": "NO", "N": "7"}
    out = flow.cli(["oneflow-template", "instantiate", str(tid)], ["", "", "0", "YES", "3"])
    values = flow.service(int(out.split()[-1])).body["user_inputs_values" if version == "7" else "custom_attrs_values"]
    assert values["T64"] == base64.b64encode(b"hello").decode()  # the default is encoded too
    assert (values["L"], values["B"]) == ("a", "YES")


@pytest.mark.parametrize("version", VERSIONS)
def test_web_form_sends_strings_as_typed_and_a_switch_as_true_false(sites: Any, version: str, tmp_path: Path) -> None:
    flow, _ = sites(version)
    vt = flow.add_vm_template(HARDWARE)
    key = "user_inputs" if version == "7" else "custom_attrs"
    role: dict[str, Any] = {"name": "r", "cardinality": 1}
    role.update({"type": "vm", "template_id": vt} if version == "7" else {"vm_template": vt})
    tid = flow.create_template({"name": "web", key: PROMPTED, "roles": [role]})
    with pytest.raises(WebFormError, match="TXT is a required field"):
        flow.web_instantiate(tid, {"N": "1"})
    with pytest.raises(WebFormError, match="one of the following values"):
        flow.web_instantiate(tid, {"TXT": "x", "L": "d", "N": "1"})
    sid = flow.web_instantiate(tid, {"T64": "  raw text\n", "TXT": "x", "B": "YES", "N": "4"})
    values = flow.service(sid).body["user_inputs_values" if version == "7" else "custom_attrs_values"]
    # No base64, trimmed; the boolean switch is String(true).
    assert values == {"T64": "raw text", "TXT": "x", "L": "b", "B": "true", "N": "4"}


# --- deployment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_straight_deployment_waits_for_the_parents_ready(sites: Any, version: str, tmp_path: Path) -> None:
    flow, og = sites(version)
    tid = register(flow, "single-site", version, tmp_path)
    sid = instantiate(flow, tid, "cli", {})
    flow.settle()
    (link,) = flow.vms(sid)
    assert link.name == f"superlink_0_(service_{sid})" and link.role == "superlink"
    assert flow.service(sid).state == "DEPLOYING"
    # OneGate already shows the service: the SuperNode role is wanted (2) but has no VM.
    doc = client_for(link).get_service()["SERVICE"]
    roles = {r["name"]: r for r in doc["roles"]}
    assert doc["state"] == 1 and roles["supernode"]["cardinality"] == 2 and roles["supernode"]["nodes"] == []
    assert [n["deploy_id"] for n in roles["superlink"]["nodes"]] == [link.id]
    client_for(link).update_vm({"FL_READY": "NO", "FL_ERROR": "waiting"})
    flow.settle()
    assert flow.vms(sid, "supernode") == [] and flow.service(sid).state == "DEPLOYING"
    report_ready(flow, link)
    nodes = flow.vms(sid, "supernode")
    assert [n.name for n in nodes] == [f"supernode_{i}_(service_{sid})" for i in range(2)]
    assert flow.service(sid).state == "DEPLOYING"  # until the SuperNodes report too
    report_ready(flow, nodes[0])
    assert flow.service(sid).state == "DEPLOYING"
    report_ready(flow, nodes[1])
    svc = flow.service(sid)
    assert svc.state == "RUNNING" and {r.state for r in svc.roles.values()} == {"RUNNING"}
    assert client_for(nodes[0]).get_service()["SERVICE"]["state"] == 2


def test_a_parent_that_never_reports_keeps_the_service_deploying(sites: Any, tmp_path: Path) -> None:
    flow, og = sites("7")
    tid = register(flow, "single-site", "7", tmp_path)
    sid = instantiate(flow, tid, "web", {})
    flow.settle()
    time.sleep(1.0)  # no deadline: nothing moves by itself
    flow.settle()
    svc = flow.service(sid)
    assert svc.state == "DEPLOYING" and svc.roles["supernode"].state == "PENDING"
    assert len(flow.vms(sid)) == 1 and svc.log == []


def test_fl_ready_yes_alone_opens_the_gate(sites: Any, tmp_path: Path) -> None:
    # EventManager looks for the text READY=YES in the update (quotes and blanks removed):
    # FL_READY=YES contains it. flower-ctx publishes both together, so this changes nothing for it.
    flow, _ = sites("7")
    tid = register(flow, "single-site", "7", tmp_path)
    sid = instantiate(flow, tid, "cli", {})
    flow.settle()
    (link,) = flow.vms(sid)
    client_for(link).update_vm({"FL_READY": "YES"})
    flow.settle()
    assert flow.service(sid).roles["superlink"].state == "RUNNING" and len(flow.vms(sid, "supernode")) == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_names_count_per_role_and_are_never_reused(sites: Any, version: str, tmp_path: Path, ca_line: str) -> None:
    flow, og = sites(version)
    tid = register(flow, "training-site", version, tmp_path)
    sid = instantiate(flow, tid, "cli", {"FL_SUPERLINK_ADDRESS": "203.0.113.50:9092", "FL_SSL_CA_CERTFILE": ca_line})
    flow.settle()
    first = flow.vms(sid)
    for rec in first:
        report_ready(flow, rec)
    assert flow.service(sid).state == "RUNNING"
    flow.scale(sid, "supernode", 3)
    flow.settle()
    assert flow.service(sid).state == "SCALING"
    third = flow.vms(sid)[-1]
    assert third.name == f"supernode_2_(service_{sid})" and third.id not in {r.id for r in first}
    report_ready(flow, third)
    assert flow.service(sid).state == "RUNNING"
    flow.scale(sid, "supernode", 2)  # the oldest goes
    assert [r.name for r in flow.vms(sid)] == [f"supernode_{i}_(service_{sid})" for i in (1, 2)]
    assert first[0].id not in og.vms
    nodes = client_for(third).get_service()["SERVICE"]["roles"][0]["nodes"]
    assert [n["deploy_id"] for n in nodes] == [first[1].id, third.id]
    flow.scale(sid, "supernode", 3)
    flow.settle()
    assert flow.vms(sid)[-1].name == f"supernode_3_(service_{sid})"


def test_update_context_regenerates_and_calls_reconfigure(sites: Any, tmp_path: Path) -> None:
    seen: list[VmRecord] = []
    flow, _ = sites("7", on_reconfigure=seen.append)
    tid = register(flow, "coordinator", "7", tmp_path)
    sid = instantiate(flow, tid, "web", {})
    flow.settle()
    (link,) = flow.vms(sid)
    rec = flow.update_context(link.id, {"FL_LOG_LEVEL": "DEBUG", "HOST": "$NAME", "FL_CERT_EXTRA_SAN": None})
    assert seen == [rec] and rec.context["FL_LOG_LEVEL"] == "DEBUG" and rec.context["HOST"] == link.name
    assert "FL_CERT_EXTRA_SAN" not in rec.context and "FL_LOG_LEVEL='DEBUG'" in rec.context_sh()
    assert accepted(rec).log_level == "DEBUG"


def test_created_vms_reach_the_callback_and_onegate(sites: Any, tmp_path: Path) -> None:
    created: list[VmRecord] = []
    flow, og = sites("7", on_vm_created=created.append,
                     nic_context=lambda role, name, vmid: {"ETH0_IP": f"10.9.0.{vmid}", "ETH0_MAC": "02:00:0a:09:00:01",
                                                          "ETH0_MASK": "255.255.255.0", "ETH0_GATEWAY": "10.9.0.1"})
    tid = register(flow, "single-site", "7", tmp_path, supernodes=1)
    sid = instantiate(flow, tid, "cli", {})
    flow.settle()
    (link,) = created
    assert link.context["ETH0_IP"] == f"10.9.0.{link.id}" and link.context["VMID"] == str(link.id)
    assert link.context["ONEGATE_ENDPOINT"] == og.url and link.context["TOKEN"] == "YES"
    report_ready(flow, link)
    (node,) = created[1:]
    me = client_for(node).get_vm()["VM"]
    assert me["NAME"] == node.name and me["ID"] == str(node.id)
    assert me["USER_TEMPLATE"]["SERVICE_ID"] == str(sid) and me["USER_TEMPLATE"]["ROLE_NAME"] == "supernode"
    assert me["TEMPLATE"]["NIC"][0]["IP"] == f"10.9.0.{node.id}"
    other = client_for(node).get_vm_by_id(link.id)["VM"]
    assert other["NAME"] == link.name
    # Every VM of the service can read every other VM's whole CONTEXT.
    full = client_for(node).get_service(extended=True)["SERVICE"]["roles"][0]["nodes"][0]["vm_info"]["VM"]
    assert full["TEMPLATE"]["CONTEXT"] == link.context


# --- OneGate 7.2 hides 500 bodies: a delete of an absent attribute is one PUT and one GET ----------


@pytest.mark.parametrize(("version", "answer"), [("7.2.0", "Internal server error"),
                                                 ("6.10.5", "attribute not found")])
def test_delete_of_an_absent_attribute_does_not_loop(version: str, answer: str) -> None:
    with OneGateServer(version=version) as gate:
        vm = gate.add_vm("supernode_0", user_template={"FL_READY": "NO"})
        client = OneGateClient(access_for(gate, vm), timeout=2.0, retries=3, backoff=0.01)
        assert client.delete_vm_attr("READY") is False
        put, get = gate.recorded(vm)
        assert (put.method, put.status, put.answer, put.logged) == ("PUT", 500, answer, "attribute not found")
        assert (get.method, get.path, get.status) == ("GET", "/vm", 200)


# --- every template x version x client, with realistic answers -------------------------------------


HUB_PUBLIC_KEY = "hK1Ylu/8ThP1Yq1gh4bDPHrG1Hgn5H/Nq8+ObRjjaW0="


def answers_for(kind: str, version: str, client: str, ca_line: str) -> dict[str, str]:
    # Flower node config with a quoted string: 6.10 pastes values into template text unescaped,
    # where a double quote breaks the template, so its operators write TOML's single quotes.
    quote = '"' if version == "7" else "'"
    values = {"FL_TLS_ENABLED": "YES"}
    if kind == "coordinator":
        values["FL_CERT_EXTRA_SAN"] = "IP:203.0.113.50,DNS:superlink.example.org"
    if kind in ("training-site", "single-site", "training-site-gateway"):
        values["FL_NODE_CONFIG"] = f"partition-id=0 num-partitions=2 name={quote}site b{quote}"
        values["FL_LOG_LEVEL"] = "DEBUG"
    if kind in ("training-site", "training-site-gateway"):
        values["FL_SUPERLINK_ADDRESS"] = "203.0.113.50:9092"
        # CLI: the line `ca export` prints, which the CLI base64-encodes again. Web UI: the PEM
        # itself, pasted over several lines.
        values["FL_SSL_CA_CERTFILE"] = ca_line if client == "cli" else base64.b64decode(ca_line).decode()
    if kind == "training-site-gateway":
        # The SuperNodes dial the SuperLink's tunnel address, through the zone's gateway.
        values.update({"FL_SUPERLINK_ADDRESS": "10.10.9.1:9092", "FL_WG_ADDRESS": "10.10.9.2/24",
                       "FL_WG_PEER_PUBLIC_KEY": HUB_PUBLIC_KEY, "FL_WG_PEER_ENDPOINT": "203.0.113.50:51820",
                       "FL_WG_PEER_ALLOWED_IPS": "10.10.9.0/24", "FL_GATEWAY_ROUTES": "10.10.9.0/24"})
    return values


PARENT_ROLE = {"single-site": "superlink", "training-site-gateway": "gateway"}


@pytest.mark.parametrize("client", ["cli", "web"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_instantiated_vms_get_a_context_flower_ctx_accepts(sites: Any, kind: str, version: str, client: str,
                                                           tmp_path: Path, ca_line: str) -> None:
    flow, og = sites(version)
    tid = register(flow, kind, version, tmp_path)
    values = answers_for(kind, version, client, ca_line)
    sid = instantiate(flow, tid, client, values)
    flow.settle()
    for rec in list(flow.vms(sid)):
        if rec.role in ("superlink", "gateway"):
            report_ready(flow, rec)
    vms = flow.vms(sid)
    assert len(vms) == {"coordinator": 1, "training-site": 2, "single-site": 3, "training-site-gateway": 3}[kind]
    ca_pem = base64.b64decode(ca_line)
    for rec in vms:
        cfg = accepted(rec)
        assert cfg.tls_enabled is True and rec.context["FL_TLS_ENABLED"] == "YES"
        assert cfg.onegate.endpoint == og.url and cfg.onegate.vmid == str(rec.id)
        if rec.role == "superlink" and kind == "coordinator":
            assert [str(s) for s in cfg.cert_extra_san] == ["IP:203.0.113.50", "DNS:superlink.example.org"]
        if rec.role == "supernode":
            assert cfg.log_level == "DEBUG"
            quote = '"' if version == "7" else "'"
            name = f"{quote}site b{quote}"
            assert cfg.node_config == (("partition-id", "0"), ("num-partitions", "2"), ("name", name))
        if kind == "training-site-gateway":
            assert str(cfg.superlink_address) == "10.10.9.1:9092"
            if rec.role == "gateway":
                assert rec.context["FL_APPLIANCE_ROLE"] == "gateway"
                assert cfg.wg is not None and str(cfg.wg.address) == "10.10.9.2/24" and cfg.wg.forward
            else:  # no tunnel of its own: the route through the gateway, found through OneGate
                assert cfg.wg is None and [str(r) for r in cfg.gateway_routes] == ["10.10.9.0/24"]
                assert cfg.gateway_address is None and not rec.context.get("FL_APPLIANCE_ROLE")
                assert not any("FL_WG" in w for w in cfg.warnings), cfg.warnings
        if kind == "training-site":
            assert str(cfg.superlink_address) == "203.0.113.50:9092"
            assert cfg.pki.ca_pem is not None and cfg.pki.ca_pem.strip() == ca_pem.strip()
            raw = rec.context["FL_SSL_CA_CERTFILE"]
            if client == "cli":  # base64 of the base64 line
                assert base64.b64decode(raw).decode() == ca_line
            else:  # the PEM as pasted (trimmed); an input is a top-level attribute: no ',' added
                assert raw == ca_pem.decode().strip() and ",\n" not in raw
        # Inputs are in USER_TEMPLATE too (7.x: OneFlow puts them there; 6.10: the contents'
        # NAME = "value" lines), readable through OneGate.
        ut = client_for(rec).get_vm()["VM"]["USER_TEMPLATE"]
        if kind == "training-site":
            got = ut["FL_SUPERLINK_ADDRESS"]
            assert (got if isinstance(got, str) else got[0]) == "203.0.113.50:9092"
    # One set of inputs for every VM of a role: only OpenNebula's own per-VM values differ.
    per_vm = {"ETH0_IP", "ETH0_MAC", "VMID"}
    nodes = [r for r in vms if r.role == "supernode"]
    for other in nodes[1:]:
        assert {k: v for k, v in other.context.items() if k not in per_vm} == \
            {k: v for k, v in nodes[0].context.items() if k not in per_vm}


@pytest.mark.parametrize(("kind", "version", "client", "role"), [
    ("training-site", "7", "cli", "supernode"),
    ("single-site", "6.10", "web", "superlink"),
    ("single-site", "7", "web", "supernode"),
])
def test_the_real_context_check_accepts_them(sites: Any, kind: str, version: str, client: str, role: str,
                                             tmp_path: Path, ca_line: str) -> None:
    flow, _ = sites(version)
    tid = register(flow, kind, version, tmp_path)
    sid = instantiate(flow, tid, client, answers_for(kind, version, client, ca_line))
    flow.settle()
    for rec in flow.vms(sid, "superlink"):
        report_ready(flow, rec)
    rec = flow.vms(sid, role)[-1]
    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    (vmdir / "context.sh").write_text(rec.context_sh())
    (vmdir / "token.txt").write_text(rec.token + "\n")
    out = subprocess.run([sys.executable, "-m", "flower_ctx.cli", "context", "check", "--role", role,
                          "--context", str(vmdir / "context.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"valid for {role}" in out.stdout and "token present" in out.stdout


def test_610_a_double_quote_in_a_value_breaks_the_vm(sites: Any, tmp_path: Path, ca_line: str) -> None:
    flow, _ = sites("6.10")
    tid = register(flow, "training-site", "6.10", tmp_path)
    values = {**answers_for("training-site", "6.10", "cli", ca_line), "FL_NODE_CONFIG": 'name="site b"'}
    sid = instantiate(flow, tid, "cli", values)
    flow.settle()
    svc = flow.service(sid)
    assert svc.state == "FAILED_DEPLOYING" and flow.vms(sid) == []
    assert "Parse error: syntax error" in svc.log[0]


def test_610_replaces_dollar_names_as_text_so_order_matters(sites: Any, tmp_path: Path) -> None:
    # gsub("$FL_GRPC_KEEPALIVE_TIME", "60") also rewrites "$FL_GRPC_KEEPALIVE_TIMEOUT" into "60OUT".
    flow, _ = sites("6.10")
    vt = flow.add_vm_template(HARDWARE + vm_template("superlink", "6.10"))
    doc = build("coordinator", vt, opennebula="6.10")
    doc["roles"][0]["vm_template_contents"] = ('FL_GRPC_KEEPALIVE_TIME = "$FL_GRPC_KEEPALIVE_TIME"\n'
                                               'FL_GRPC_KEEPALIVE_TIMEOUT = "$FL_GRPC_KEEPALIVE_TIMEOUT"\n')
    tid = flow.create_template(doc)
    sid = flow.web_instantiate(tid, {})
    flow.settle()
    (rec,) = flow.vms(sid)
    assert rec.context["FL_GRPC_KEEPALIVE_TIMEOUT"] == "60OUT"
    with pytest.raises(Exception, match="FL_GRPC_KEEPALIVE_TIMEOUT"):
        accepted(rec)


def test_610_web_form_flattens_and_repeats_values(sites: Any, tmp_path: Path, ca_line: str) -> None:
    flow, _ = sites("6.10")
    tid = register(flow, "training-site", "6.10", tmp_path, supernodes=1)
    sid = instantiate(flow, tid, "web", answers_for("training-site", "6.10", "web", ca_line))
    flow.settle()
    (rec,) = flow.vms(sid)
    contents = flow.service(sid).body["roles"][0]["vm_template_contents"]
    # Our NAME = "$NAME" line, substituted, and the form's appended copy: the attribute twice.
    assert contents.count('FL_SUPERLINK_ADDRESS = "203.0.113.50:9092"') == 2
    assert rec.user_template["FL_SUPERLINK_ADDRESS"] == ["203.0.113.50:9092"] * 2
    assert rec.context["FL_SUPERLINK_ADDRESS"] == "203.0.113.50:9092"
    assert accepted(rec).superlink_address is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_multi_line_value_written_in_the_vm_template_comes_back_with_commas_on_7(sites: Any, version: str,
                                                                                   tmp_path: Path) -> None:
    # Operator PKI: CA and certificate as inputs (pasted as PEM in the web UI), the key written in
    # the VM template's CONTEXT (a secret is never an input). OneFlow 7 rewrites the whole VM
    # template with Hash.to_raw: a ',' before every newline of the key. flower-ctx takes them off.
    from tests.tls_helpers import build_ca, build_server

    ca = build_ca("operator CA")
    server = build_server(ca, ["IP:203.0.113.50", "DNS:superlink.example.org"])
    flow, og = sites(version)
    key_pem = server.key_pem.decode()
    tid = register(flow, "single-site", version, tmp_path, supernodes=1, extra_context={"FL_SSL_KEYFILE": key_pem})
    sid = flow.web_instantiate(tid, {"FL_SSL_CA_CERTFILE": ca.cert_pem.decode(),
                                     "FL_SSL_CERTFILE": server.cert_pem.decode()})
    flow.settle()
    (link,) = flow.vms(sid)
    key = link.context["FL_SSL_KEYFILE"]
    if version == "7":
        assert key.count(",\n") == key_pem.count("\n") and key.replace(",\n", "\n") == key_pem
    else:
        assert key == key_pem
    assert ",\n" not in link.context["FL_SSL_CERTFILE"]  # an input: a top-level attribute, intact
    cfg = accepted(link)
    assert cfg.operator_pki and cfg.pki.key_pem is not None
    assert cfg.pki.key_pem.reveal().strip() == server.key_pem.strip()
    # ... and that key is readable by the other VMs of the service through OneGate.
    report_ready(flow, link)
    (node,) = flow.vms(sid, "supernode")
    full = client_for(node).get_service(extended=True)["SERVICE"]["roles"][0]["nodes"][0]["vm_info"]["VM"]
    assert full["TEMPLATE"]["CONTEXT"]["FL_SSL_KEYFILE"] == key


@pytest.mark.parametrize("version", VERSIONS)
def test_per_vm_values_come_only_from_opennebula_variables(sites: Any, version: str, tmp_path: Path,
                                                           ca_line: str) -> None:
    # One role, one set of inputs: a per-VM value has to come from $NAME or $VMID in the VM template.
    flow, _ = sites(version)
    tid = register(flow, "training-site", version, tmp_path, supernodes=3,
                   extra_context={"VM_NAME": "$NAME", "IP_GEN": "10.10.9.$VMID"})
    sid = instantiate(flow, tid, "cli", answers_for("training-site", version, "cli", ca_line))
    flow.settle()
    vms = flow.vms(sid)
    assert [r.context["VM_NAME"] for r in vms] == [r.name for r in vms]
    assert [r.context["IP_GEN"] for r in vms] == [f"10.10.9.{r.id}" for r in vms]
    assert len({r.context["FL_NODE_CONFIG"] for r in vms}) == 1


def test_the_6_10_template_also_works_on_7_through_the_conversion(sites: Any, tmp_path: Path, ca_line: str) -> None:
    flow, _ = sites("7")
    tid = register(flow, "training-site", "6.10", tmp_path)  # a 6.10 document on a 7.x server
    body = flow.template(tid)
    assert body["roles"][0]["type"] == "vm" and "user_inputs" in body
    sid = instantiate(flow, tid, "cli", answers_for("training-site", "6.10", "cli", ca_line))
    flow.settle()
    for rec in flow.vms(sid):
        assert str(accepted(rec).superlink_address) == "203.0.113.50:9092"


def test_instantiate_through_the_api_needs_every_input(sites: Any, tmp_path: Path) -> None:
    flow, _ = sites("7")
    tid = register(flow, "coordinator", "7", tmp_path)
    with pytest.raises(OneFlowError) as err:
        flow.instantiate(tid, {"user_inputs_values": {"FL_TLS_ENABLED": "YES"}})
    assert (err.value.status, err.value.message) == (
        400, "Verify that every User Input have its corresponding value defined")
    with pytest.raises(OneFlowError, match="no values have been found"):
        flow.instantiate(tid, {})


@pytest.mark.parametrize(("version", "message"), [
    ("7.0.0", "The Service template specifies user inputs for the role superlink but no values have been found"),
    ("7.4.0", "The Service template specifies User Inputs but no values have been found"),
])
def test_role_level_inputs_are_not_asked_by_sunstone(sites: Any, version: str, message: str) -> None:
    # Why the inputs are at service level: the form shows none of a role's user_inputs, so the
    # request carries no value for them and OneFlow refuses it. The CLI would have asked them.
    flow, _ = sites(version, gate_version=version)
    vt = flow.add_vm_template(HARDWARE + vm_template("superlink"))
    doc = build("coordinator", vt)
    doc["roles"][0]["user_inputs"] = doc.pop("user_inputs")
    tid = flow.create_template(doc)
    with pytest.raises(OneFlowError) as err:
        flow.web_instantiate(tid, {})
    assert (err.value.status, err.value.message) == (400, message)
    answers = [""] * len(doc["roles"][0]["user_inputs"])
    out = flow.cli(["oneflow-template", "instantiate", str(tid)], answers)
    assert '> Please insert the user inputs for the role "superlink"' in out and "ID: " in out


# --- a training site behind one site gateway -------------------------------------------------------


@pytest.mark.parametrize("client", ["cli", "web"])
@pytest.mark.parametrize("version", VERSIONS)
def test_training_site_gateway_deploys_the_supernodes_behind_the_gateway(sites: Any, version: str, client: str,
                                                                         tmp_path: Path, ca_line: str) -> None:
    from flower_ctx.errors import ValidationError
    from flower_ctx.gateway.discover import find_gateway

    flow, og = sites(version)
    # One VM template for both roles (the SuperNode image's): the gateway role says what its VM is.
    tid = register(flow, "training-site-gateway", version, tmp_path)
    body = flow.template(tid)
    assert [(r["name"], r.get("parents")) for r in body["roles"]] == [("gateway", None), ("supernode", ["gateway"])]
    assert body["deployment"] == "straight"
    sid = instantiate(flow, tid, client, answers_for("training-site-gateway", version, client, ca_line))
    flow.settle()
    (gw,) = flow.vms(sid)
    assert gw.role == "gateway" and gw.name == f"gateway_0_(service_{sid})"
    assert gw.context["FL_APPLIANCE_ROLE"] == "gateway"
    cfg = accepted(gw)
    assert cfg.wg is not None and cfg.wg.forward and cfg.wg.mtu is None  # MTU derived from the underlay
    assert [(p.public_key, str(p.endpoint)) for p in cfg.wg.peers] == [(HUB_PUBLIC_KEY, "203.0.113.50:51820")]
    # The same CONTEXT validated as a SuperNode is refused: the VM template says it is a gateway.
    with pytest.raises(ValidationError, match="FL_APPLIANCE_ROLE"):
        config.resolve("supernode", ctxmod.parse(gw.context_sh().encode(), gw.name), token=gw.token)
    # SuperNodes wait for the gateway's READY (straight deployment, readiness gate).
    client_for(gw).update_vm({"FL_READY": "NO", "FL_ERROR": "waiting for SuperLink"})
    flow.settle()
    assert flow.vms(sid, "supernode") == [] and flow.service(sid).state == "DEPLOYING"
    report_ready(flow, gw, FL_ROLE="gateway")
    nodes = flow.vms(sid, "supernode")
    assert [n.name for n in nodes] == [f"supernode_{i}_(service_{sid})" for i in range(2)]
    gw_ip = gw.context["ETH0_IP"]
    import ipaddress

    for node in nodes:
        ncfg = accepted(node)
        assert ncfg.wg is None and [str(r) for r in ncfg.gateway_routes] == ["10.10.9.0/24"]
        # What configure does on the SuperNode: the gateway's NIC address on its own network, from OneGate.
        net = ipaddress.ip_network(f"{node.context['ETH0_IP']}/{node.context['ETH0_MASK']}", strict=False)
        assert find_gateway(client_for(node), [net]) == (ipaddress.ip_address(gw_ip), str(gw.id))
        report_ready(flow, node)
    assert flow.service(sid).state == "RUNNING"
    # A third SuperNode: the gateway's CONTEXT does not change (nor does anything in zone A).
    before = dict(gw.context)
    flow.scale(sid, "supernode", 3)
    flow.settle()
    third = flow.vms(sid, "supernode")[-1]
    assert third.name == f"supernode_2_(service_{sid})" and flow.record(gw.id).context == before
    assert accepted(third).gateway_routes == ncfg.gateway_routes


def test_the_real_context_check_accepts_the_gateway(sites: Any, tmp_path: Path, ca_line: str) -> None:
    flow, _ = sites("7")
    tid = register(flow, "training-site-gateway", "7", tmp_path)
    sid = instantiate(flow, tid, "cli", answers_for("training-site-gateway", "7", "cli", ca_line))
    flow.settle()
    (gw,) = flow.vms(sid)
    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    (vmdir / "context.sh").write_text(gw.context_sh())
    (vmdir / "token.txt").write_text(gw.token + "\n")
    out = subprocess.run([sys.executable, "-m", "flower_ctx.cli", "context", "check", "--role", "gateway",
                          "--context", str(vmdir / "context.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid for gateway" in out.stdout
