"""Who may join (issue 13), against real Flower 1.39 processes on loopback: a SuperNode whose key is
not admitted never joins (so no task can reach it), an admitted one does, and removing a key from
FL_SUPERNODE_PUBLIC_KEYS locks that SuperNode out within seconds, without restarting the SuperLink,
while the others stay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flower_ctx import health
from flower_ctx.admission import reconcile
from flower_ctx.admission.control import ControlClient
from flower_ctx.admission.keys import generate, parse_line
from flower_ctx.admission.plan import plan
from flower_ctx.config import load_config
from flower_ctx.paths import Paths
from tests.conftest import requires_flower
from tests.runtime_helpers import Proc, flower_ctx_argv, free_port, make_pki, stage_runtime_config


def test_plan_registers_admitted_and_unregisters_only_its_own() -> None:
    from flower_ctx.admission.control import Node

    keys = [generate()[1] for _ in range(4)]
    a, b, c, manual = keys
    nodes = [Node(1, "online", b.pem(), "b", 0, 30, "", ""), Node(2, "registered", c.pem(), "c", 0, 30, "", ""),
             Node(3, "online", manual.pem(), "m", 0, 30, "", ""), Node(4, "unregistered", a.pem(), "a", 0, 30, "", "")]
    p = plan([a, b], nodes, ours=[b.line, c.line])
    assert p.register == () and [k.line for k in p.burned] == [a.line]  # a was unregistered before: burned
    assert p.unregister == ((2, c.line),)  # c is no longer admitted; the hand-registered one stays
    assert p.admitted == (b.line,)
    fresh = generate()[1]
    assert plan([fresh], [], ours=[]).register == (fresh,)


def test_key_lines_parse_and_refuse_without_echoing() -> None:
    private, public = generate()
    assert parse_line(f"{public.line} site-b_0") == type(public)(public.line, "site-b_0")
    bad = public.line[:-8] + "AAAAAAA="  # a damaged body: still base64, wrong length
    for text in (public.line.replace("ecdsa-sha2-nistp384", "ssh-rsa"), "ecdsa-sha2-nistp384 !!!", bad):
        with pytest.raises(ValueError) as info:
            parse_line(text)
        assert public.line.split()[1][:16] not in str(info.value)


def _node(tmp: Path, name: str, pki: object, fleet: int) -> tuple[Path, object]:
    from flower_ctx.files import ensure_dir, write_file

    root = tmp / name
    private, public = generate()
    paths = Paths(root)
    stage_runtime_config(root, "supernode", pki, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()}, node_key=str(paths.node_key))
    ensure_dir(paths.certs_dir, 0o755)
    write_file(paths.node_key, private, 0o600)
    return root, public


@requires_flower
@pytest.mark.flower
@pytest.mark.slow
def test_only_admitted_supernodes_join_and_a_removed_key_is_locked_out(tmp_path: Path, procs: list[Proc]) -> None:
    pki = make_pki(tmp_path / "pki")
    fleet, http = free_port(), free_port()
    link_root = tmp_path / "L"
    stage_runtime_config(link_root, "superlink", pki, fleet_api_address=f"127.0.0.1:{fleet}",
                         http_api={"port": http}, supernode_auth=True)
    link = Proc(flower_ctx_argv("run", "superlink", "--root", str(link_root))).start()
    procs.append(link)
    link.wait_for("Starting Fleet API", 60)
    roots = {n: _node(tmp_path, n, pki, fleet) for n in ("a", "b", "rogue")}
    control = ControlClient("127.0.0.1", http, pki.ca.read_bytes())

    def admit(*names: str) -> object:
        keys = "\n".join(f"{roots[n][1].line} {n}" for n in names)
        cfg = load_config("superlink", {"FL_SUPERNODE_PUBLIC_KEYS": keys, "FL_SUPERNODE_AUTH_ONEGATE": "NO"})
        return reconcile(cfg, Paths(link_root), control=control)

    report = admit("a", "b")
    assert sorted(report.registered)[0].startswith("a (") and len(report.registered) == 2
    nodes = {n: Proc(flower_ctx_argv("run", "supernode", "--root", str(roots[n][0]))).start() for n in roots}
    procs.extend(nodes.values())
    for n in ("a", "b"):
        nodes[n].wait_for("SuperNode ID", 60)
    # The rogue has the right CA and address but a key nobody admitted: Flower refuses it at once.
    nodes["rogue"].wait_for("Failed to activate SuperNode", 60)
    assert nodes["rogue"].popen.wait(30) != 0
    listed = {n.name: n.status for n in control.list_nodes()}
    assert listed == {"a": "online", "b": "online"}  # the rogue is not even a node: no task can target it
    # A SuperNode with FL_SUPERNODE_AUTH=NO (no key: Flower registers a throwaway one) is refused too.
    keyless = tmp_path / "keyless"
    stage_runtime_config(keyless, "supernode", pki, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()}, node_key=None)
    lone = Proc(flower_ctx_argv("run", "supernode", "--root", str(keyless))).start()
    procs.append(lone)
    lone.wait_for("All SuperNodes must be registered", 60)
    assert lone.popen.wait(30) != 0
    # What status, doctor and FL_ERROR say, read from each refused SuperNode's real Flower output.
    for root, proc, says in ((roots["rogue"][0], nodes["rogue"], health.NOT_ADMITTED),
                             (keyless, lone, health.REGISTRATION_REFUSED)):
        (root / "opt/flower/run").mkdir(parents=True, exist_ok=True)
        (root / "opt/flower/run/supernode.log").write_text(proc.text())
        assert health.refusal(Paths(root)) == says
    assert "FL_SUPERNODE_AUTH=NO here" in health.NOT_ADMITTED
    assert "FL_SUPERNODE_AUTH=YES here" in health.REGISTRATION_REFUSED

    # Lock-out: "a" removed from the list; reconciled as the watch does, the SuperLink keeps running.
    t0 = time.monotonic()
    report = admit("b")
    assert report.unregistered and report.admitted == 1
    assert nodes["a"].popen.wait(30) is not None
    locked_out = time.monotonic() - t0
    print(f"\nSuperNode 'a' locked out {locked_out:.2f} s after its key left FL_SUPERNODE_PUBLIC_KEYS")
    assert locked_out < 15
    assert link.popen.poll() is None and nodes["b"].popen.poll() is None
    listed = {n.name: n.status for n in control.list_nodes()}
    assert listed["a"] == "unregistered" and listed["b"] == "online"
    # Re-admitting the same key is refused by Flower: reported with the fix, never retried blindly.
    report = admit("a", "b")
    assert report.burned and "new key" in "\n".join(report.lines())
