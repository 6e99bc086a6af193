"""The appliance lifecycle end to end: a SuperLink "VM" and two SuperNode "VMs" (network + mount
namespaces, DESIGN section 11), each configured and bootstrapped only by `flower-ctx configure` +
`bootstrap` from the one-context files OpenNebula leaves in /var/run/one-context, with a OneGate
test double serving the zone. The SuperNodes find the SuperLink and its CA through OneGate, register
over TLS, and OneGate sees the discovery attributes before READY=YES. A second boot changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import requires_flower, requires_netns
from tests.netns_thread import call_in_netns
from tests.onegate_server import OneGateServer, assert_no_token
from tests.rig import Rig, SimVM, write_context

pytestmark = [requires_netns, requires_flower, pytest.mark.root, pytest.mark.netns, pytest.mark.flower,
              pytest.mark.slow]

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def flower_ctx(vm: SimVM, *args: str, check: bool = True, timeout: float = 180) -> str:
    import sys

    out = vm.run([sys.executable, "-m", "flower_ctx", *args], check=check, timeout=timeout, env=ENV)
    return out.stdout + out.stderr


def boot_files(vm: SimVM, values: dict[str, str], token: str) -> None:
    """What one-context leaves behind: context.sh.network (0400) and one_env with TOKENTXT."""
    ctx = vm.path("/run/one-context/context.sh.network")
    write_context(ctx, values)
    ctx.chmod(0o400)
    env = vm.path("/run/one-context/one_env")
    env.write_text(f'export TOKENTXT="{token}"\nexport VMID="{values["VMID"]}"\n'
                   f'export ONEGATE_ENDPOINT="{values["ONEGATE_ENDPOINT"]}"\n')
    env.chmod(0o400)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def zone() -> Iterator[tuple[Rig, OneGateServer]]:
    with Rig("fclc") as rig:
        for name, z in (("link", 1), ("node1", 2), ("node2", 3)):
            rig.add_vm(name, z)
        # The zone's OneGate listens inside the router namespace, reachable from every VM at its gateway.
        double = OneGateServer("0.0.0.0", 0)
        call_in_netns(rig.router, double.start)
        try:
            yield rig, double
        finally:
            double.stop()


def test_superlink_and_two_supernodes_boot_from_context(zone: tuple[Rig, OneGateServer]) -> None:
    rig, og = zone
    vms = rig.vms
    link_vm = og.add_vm("superlink_0", ips=[str(vms["link"].eth0_ip)], vm_id=7)
    node_vms = [og.add_vm(f"supernode_{i}", ips=[str(vms[f"node{i + 1}"].eth0_ip)], vm_id=8 + i) for i in range(2)]
    og.add_service("flower", {"superlink": [link_vm], "supernode": node_vms}, service_id=21)

    def context_for(vm: SimVM, fake_id: int) -> dict[str, str]:
        # OneFlow passes every declared but unanswered input as ''.
        return {
            "ETH0_IP": str(vm.eth0_ip), "ETH0_MAC": "02:00:c6:12:00:02", "NETWORK": "YES",
            "ONEGATE_ENDPOINT": f"http://{vm.gateway}:{og.port}", "VMID": str(fake_id),
            "TOKEN": "YES", "REPORT_READY": "YES",
            "FL_TLS_ENABLED": "YES", "FL_SUPERLINK_ADDRESS": "", "FL_SSL_CA_CERTFILE": "", "FL_LOG_LEVEL": "INFO",
            "FL_GRPC_KEEPALIVE_TIME": "60", "FL_GRPC_KEEPALIVE_TIMEOUT": "20", "FL_WG_ENABLED": "",
        }

    boot_files(vms["link"], context_for(vms["link"], 7), link_vm.token)
    for i in range(2):
        boot_files(vms[f"node{i + 1}"], context_for(vms[f"node{i + 1}"], 8 + i), node_vms[i].token)

    outputs = []
    outputs.append(flower_ctx(vms["link"], "configure", "--role", "superlink"))
    outputs.append(flower_ctx(vms["link"], "bootstrap", "--role", "superlink", "--wait", "90"))
    assert "ready: Fleet API" in outputs[-1] and "READY=YES published" in outputs[-1], outputs[-1]
    for i in (1, 2):
        outputs.append(flower_ctx(vms[f"node{i}"], "configure", "--role", "supernode"))
        outputs.append(flower_ctx(vms[f"node{i}"], "bootstrap", "--role", "supernode", "--wait", "90"))
        assert f"SuperLink found at {vms['link'].eth0_ip}:9092" in outputs[-1], outputs[-1]
        assert "ready: SuperNode running" in outputs[-1], outputs[-1]

    # Both SuperNodes registered with the SuperLink over TLS.
    link_log = vms["link"].path("/opt/flower/run/superlink.log")
    wait_for(lambda: link_log.read_text(errors="replace").count("Activated node_id") >= 2, 60, "two registrations")

    # OneGate: discovery attributes first, READY=YES only after, for every VM.
    for fake in (link_vm, *node_vms):
        puts = [r for r in og.recorded(fake, "PUT") if r.type == "1" and r.status == 200]
        ready_at = next(i for i, r in enumerate(puts) if r.attrs.get("READY") == "YES")
        before = {k for r in puts[:ready_at] for k in r.attrs}
        expected = {"FL_ROLE", "FL_VERSION", "FL_ENDPOINT", "FL_TLS", "FL_CA_CERT", "FL_CA_FINGERPRINT"} \
            if fake is link_vm else {"FL_ROLE", "FL_VERSION", "FL_SUPERLINK"}
        assert expected <= before, (fake.name, before)
        assert og.user_template(fake)["READY"] == "YES"
    ut = og.user_template(node_vms[0])
    assert ut["FL_SUPERLINK"] == f"{vms['link'].eth0_ip}:9092"
    # The CA the SuperNodes trust is the SuperLink's own, byte for byte.
    assert vms["node1"].path("/opt/flower/certs/ca.crt").read_bytes() == \
        vms["link"].path("/opt/flower/certs/ca.crt").read_bytes()

    # Second boot: nothing changes, nothing restarts, nothing new is published.
    pids = {n: sorted(vms[n].pids()) for n in vms}
    puts_before = len(og.recorded(method="PUT"))
    for name, role in (("link", "superlink"), ("node1", "supernode"), ("node2", "supernode")):
        again = flower_ctx(vms[name], "configure", "--role", role)
        assert f"{role}: unchanged" in again, again
        boot = flower_ctx(vms[name], "bootstrap", "--role", role, "--wait", "60")
        assert f"flower-{role} unchanged" in boot and "READY=YES published (already)" in boot, boot
        outputs += [again, boot]
    assert {n: sorted(vms[n].pids()) for n in vms} == pids
    assert len(og.recorded(method="PUT")) == puts_before

    status = flower_ctx(vms["node1"], "status")
    assert "READY=YES" in status and f"{vms['link'].eth0_ip}:9092" in status
    # The SuperLink lists its SuperNodes through its Control API: admitted from OneGate, connected.
    link_status = flower_ctx(vms["link"], "status")
    assert "2 connected of 2 registered (SuperNode authentication on)" in link_status, link_status
    assert link_status.count("admitted onegate") == 2 and "heartbeat never" not in link_status
    # The watch's metrics file, scraped with Prometheus' own parser.
    from tests.test_metrics import families

    prom = vms["link"].path("/var/lib/prometheus/node-exporter/flower_ctx.prom")
    wait_for(lambda: prom.exists() and "flower_supernodes_connected 2" in prom.read_text(), 60, "the metrics file")
    scraped = families(prom.read_text())
    assert scraped["flower_up"][0].value == 1 and scraped["flower_ready"][0].value == 1
    assert len(scraped["flower_supernode_last_heartbeat_age_seconds"]) == 2
    doctor = flower_ctx(vms["node1"], "doctor")
    assert "problem" not in doctor.split("\n")[0] and "ok       superlink" in doctor, doctor
    assert_no_token(*outputs, status, doctor, link_log.read_text(errors="replace"))




def test_supernode_booted_before_its_superlink_becomes_ready_when_it_appears(zone: tuple[Rig, OneGateServer]) -> None:
    rig, og = zone
    vms = rig.vms
    link_vm = og.add_vm("superlink_0", ips=[str(vms["link"].eth0_ip)], vm_id=7)
    node_vm = og.add_vm("supernode_0", ips=[str(vms["node1"].eth0_ip)], vm_id=8)
    og.add_service("flower", {"superlink": [link_vm], "supernode": [node_vm]}, service_id=21)
    for name, fake in (("link", link_vm), ("node1", node_vm)):
        vm = vms[name]
        boot_files(vm, {"ETH0_IP": str(vm.eth0_ip), "ONEGATE_ENDPOINT": f"http://{vm.gateway}:{og.port}",
                        "VMID": str(fake.id), "TOKEN": "YES", "REPORT_READY": "YES", "FL_SUPERLINK_ADDRESS": ""},
                   fake.token)

    flower_ctx(vms["node1"], "configure", "--role", "supernode")
    # Not ready is not success: exit 1, so one-apps' net-99 never sends READY=YES for it.
    out = flower_ctx(vms["node1"], "bootstrap", "--role", "supernode", "--wait", "3", check=False)
    assert "waiting for SuperLink" in out and "readiness watch started" in out, out
    ut = og.user_template(node_vm)
    assert ut.get("FL_READY") == "NO" and "READY" not in ut and "waiting for SuperLink" in ut.get("FL_ERROR", "")

    flower_ctx(vms["link"], "configure", "--role", "superlink")
    t0 = time.monotonic()
    flower_ctx(vms["link"], "bootstrap", "--role", "superlink", "--wait", "90")
    wait_for(lambda: og.user_template(node_vm).get("READY") == "YES", 90, "the SuperNode's READY=YES")
    print(f"\nSuperNode ready {time.monotonic() - t0:.1f} s after the SuperLink's bootstrap started")
    ut = og.user_template(node_vm)
    assert ut["FL_READY"] == "YES" and "FL_ERROR" not in ut
    link_log = vms["link"].path("/opt/flower/run/superlink.log")
    wait_for(lambda: "Activated node_id" in link_log.read_text(errors="replace"), 60, "the registration")
