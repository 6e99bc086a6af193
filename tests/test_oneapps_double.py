"""The appliance booted the way OpenNebula boots it, through the one-apps double
(tests/oneapps_double.py): simulated VMs (tests/rig) holding exactly the files the Packer
provisioning installs (provision.sh --files-only), a context CD written as oned writes it, the
zone's OneGate double in the rig's router namespace, and one-contextd's stages running the one-apps
net-90 (configure && bootstrap) and net-99 (READY=YES only after bootstrap_success).

First, the framework double itself against the research's transition table (a stub appliance);
then real flower-ctx: a SuperLink boots to bootstrap_success and READY=YES, a bad CONTEXT stops at
configure_failure with nothing reported, files written under umask 0077 keep the modes DESIGN
section 5 gives, a reconfigure kills what a step left behind but not the supervised Flower, net-99
reports only on exactly bootstrap_success, and a SuperNode still waiting for its SuperLink ends as
bootstrap_failure so net-99 stays silent.
"""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import oneapps_double as oa
from tests.conftest import requires_flower, requires_netns
from tests.netns_thread import call_in_netns
from tests.onegate_server import FakeVM, OneGateServer, assert_no_token
from tests.rig import Rig, SimVM


def in_vms(fn):  # type: ignore[no-untyped-def]
    """Tests that boot simulated VMs: root, network namespaces."""
    for mark in (requires_netns, pytest.mark.root, pytest.mark.netns, pytest.mark.slow):
        fn = mark(fn)
    return fn


NET99_BODY = "data=READY%3DYES"  # what `onegate vm update --data READY=YES` sends (and nothing else)
ENV = {"PATH": oa.UNIT_PATH, "LANG": "C"}


def alive(pid: int) -> bool:
    proc = oa._stat(pid)
    return proc is not None and proc.state not in ("Z", "X")


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def net99_puts(og: OneGateServer, fake: FakeVM) -> list:
    return [r for r in og.recorded(fake, "PUT") if r.body == NET99_BODY]


@pytest.fixture(scope="module")
def zone() -> Iterator[tuple[Rig, OneGateServer]]:
    with Rig("fcoa") as rig:
        og = OneGateServer("0.0.0.0", 0)
        call_in_netns(rig.router, og.start)
        try:
            yield rig, og
        finally:
            og.stop()


def base_context(vm: SimVM, og: OneGateServer, fake: FakeVM) -> dict[str, str]:
    """What oned puts in a Flower VM's context.sh (TOKEN=YES gives ONEGATE_ENDPOINT and VMID)."""
    return {
        "ETH0_IP": str(vm.eth0_ip), "ETH0_MASK": "255.255.255.0", "ETH0_GATEWAY": str(vm.gateway),
        "ETH0_MAC": "02:00:c6:12:00:02", "NETWORK": "YES", "TOKEN": "YES", "REPORT_READY": "YES",
        "ONEGATE_ENDPOINT": f"http://{vm.gateway}:{og.port}", "VMID": str(fake.id),
        "SET_HOSTNAME": vm.name, "FL_TLS_ENABLED": "YES", "FL_LOG_LEVEL": "", "FL_SUPERLINK_ADDRESS": "",
    }


# --- the scripts ---------------------------------------------------------------------------------

SCRIPTS = [oa.ONEAPPS / n for n in ("service.sh", "lib/common.sh", "lib/functions.sh", "net-90-service-appliance",
                                    "net-99-report-ready", "onegate", "loc-16-gen-env")]


def test_scripts_parse() -> None:
    for script in SCRIPTS:
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt-get install shellcheck)")
def test_shellcheck_clean() -> None:
    out = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], cwd=oa.REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the framework double (stub appliance) ---------------------------------------------------

STUB = r"""
ONE_SERVICE_RECONFIGURABLE="${STUB_RECONFIGURABLE:-false}"
echo x >>/run/stub/sourced
service_install() { echo "install $*" >>/run/stub/calls; }
service_configure() {
    echo "configure reconfigure=${ONE_SERVICE_RECONFIGURE}" >>/run/stub/calls
    echo "configure output"
    : >/run/stub/made-by-step
    case "${STUB_FAIL:-}" in
        return) return 3 ;;
        false) false; echo "after false" >>/run/stub/calls ;;
        msg) msg error "stub says no"; echo "after msg" >>/run/stub/calls ;;
    esac
}
service_bootstrap() { echo bootstrap >>/run/stub/calls; }
service_cleanup() { echo cleanup >>/run/stub/calls; }
"""


@dataclass
class Framework:
    vm: SimVM

    def reset(self, status: str | None) -> None:
        self.vm.run(["sh", "-c", "rm -rf /run/stub /var/log/one-appliance /etc/one-appliance/status; mkdir /run/stub"])
        if status is not None:
            self.vm.path(oa.STATUS_FILE).write_text(status + "\n")

    def service(self, *args: str, **env: str) -> tuple[int, str]:
        out = self.vm.run(["/etc/one-appliance/service", *args], check=False, env={**ENV, **env}, timeout=30)
        return out.returncode, out.stdout + out.stderr

    def calls(self) -> list[str]:
        path = self.vm.path("/run/stub/calls")
        return path.read_text().splitlines() if path.exists() else []

    def status(self) -> str | None:
        text = oa.status(self.vm)
        return None if text is None else text.rstrip("\n")


@pytest.fixture(scope="module")
def framework(zone: tuple[Rig, OneGateServer]) -> Framework:
    rig, _ = zone
    vm = rig.add_vm("fw", 9)
    oa.install(vm, "superlink", service_install=False)
    vm.path("/etc/one-appliance/service.d/appliance.sh").write_text(STUB)
    return Framework(vm)


# (status before, step, reconfigurable) -> (exit status, status after, whether the step ran)
RUN, SKIP = True, False
TRANSITIONS = [
    ("", "install", False, 0, "install_success", RUN),
    ("install_success", "install", False, 0, "install_success", SKIP),
    ("install_started", "install", False, 1, "install_failure", SKIP),
    ("install_failure", "install", False, 1, "install_failure", SKIP),
    ("configure_success", "install", True, 1, "configure_success", SKIP),
    ("", "configure", True, 1, "", SKIP),
    ("install_success", "configure", False, 0, "configure_success", RUN),
    ("configure_success", "configure", False, 0, "configure_success", SKIP),
    ("configure_success", "configure", True, 0, "configure_success", RUN),
    ("configure_started", "configure", False, 1, "configure_failure", SKIP),
    ("configure_started", "configure", True, 0, "configure_success", RUN),
    ("configure_failure", "configure", False, 1, "configure_failure", SKIP),
    ("configure_failure", "configure", True, 0, "configure_success", RUN),
    ("bootstrap_success", "configure", False, 1, "bootstrap_success", SKIP),
    ("bootstrap_success", "configure", True, 0, "configure_success", RUN),
    ("bootstrap_failure", "configure", False, 1, "bootstrap_failure", SKIP),
    ("bootstrap_failure", "configure", True, 0, "configure_success", RUN),
    ("bootstrap_started", "configure", True, 0, "configure_success", RUN),
    # Aborted, and the exit trap turns any *_started status into *_failure, another step's included.
    ("install_started", "configure", True, 1, "install_failure", SKIP),
    ("bootstrap_started", "configure", False, 1, "bootstrap_failure", SKIP),
    ("", "bootstrap", True, 1, "", SKIP),
    ("configure_success", "bootstrap", False, 0, "bootstrap_success", RUN),
    ("bootstrap_success", "bootstrap", False, 0, "bootstrap_success", SKIP),
    ("bootstrap_success", "bootstrap", True, 0, "bootstrap_success", RUN),
    ("bootstrap_started", "bootstrap", False, 1, "bootstrap_failure", SKIP),
    ("bootstrap_started", "bootstrap", True, 0, "bootstrap_success", RUN),
    ("bootstrap_failure", "bootstrap", False, 1, "bootstrap_failure", SKIP),
    ("bootstrap_failure", "bootstrap", True, 0, "bootstrap_success", RUN),
    ("configure_failure", "bootstrap", True, 1, "configure_failure", SKIP),
    ("install_success", "bootstrap", True, 1, "install_success", SKIP),
]


@in_vms
def test_framework_status_transitions(framework: Framework) -> None:
    for before, step, reconf, rc, after, ran in TRANSITIONS:
        case = f"{before or '(none)'} + {step} (reconfigurable={reconf})"
        framework.reset(before or None)
        code, out = framework.service(step, STUB_RECONFIGURABLE="yes" if reconf else "no")
        assert (code, framework.status() or "") == (rc, after), f"{case}: {out}"
        calls = framework.calls()
        assert any(c.startswith(step) for c in calls) is ran, f"{case}: {calls}"
        # The exit trap runs service_cleanup on every invocation, skips and aborts included.
        assert calls[-1:] == ["cleanup"], f"{case}: {calls}"
        assert not framework.vm.path("/run/one-appliance-service.pid").exists(), case


@in_vms
@pytest.mark.parametrize("value,reconfigurable", [
    ("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("y", True), ("Y", True),
    ("0", False), ("false", False), ("no", False), ("n", False), ("on", False), ("", False), ("yes ", False),
])
def test_framework_is_true(framework: Framework, value: str, reconfigurable: bool) -> None:
    framework.reset("configure_success")
    code, out = framework.service("configure", STUB_RECONFIGURABLE=value)
    assert code == 0, out
    assert ("configure reconfigure=false" in framework.calls()) is reconfigurable


@in_vms
def test_framework_step_semantics(framework: Framework) -> None:
    vm = framework.vm
    # umask 0077 for the step; its output in the step log (dir 0700, file 0600) and passed on.
    framework.reset(None)
    assert framework.service("install")[0] == 0
    code, out = framework.service("configure")
    assert code == 0 and "configure output" in out
    assert stat.S_IMODE(vm.path("/run/stub/made-by-step").stat().st_mode) == 0o600
    assert stat.S_IMODE(vm.path(oa.STATUS_FILE).stat().st_mode) == 0o600  # created by the framework
    wait_for(lambda: "configure output" in oa.step_log(vm, "configure"), 5, "the step log")
    assert stat.S_IMODE(vm.path("/var/log/one-appliance").stat().st_mode) == 0o700
    assert stat.S_IMODE(vm.path("/var/log/one-appliance/configure.log").stat().st_mode) == 0o600
    # set -e holds inside the step: a failing command, a bare `msg error`, a non-zero return abort it.
    for how, rc in (("false", 1), ("msg", 1), ("return", 3)):
        framework.reset("install_success")
        code, out = framework.service("configure", STUB_FAIL=how)
        assert (code, framework.status()) == (rc, "configure_failure"), (how, out)
        assert not any(c.startswith("after") for c in framework.calls()), how
    # Arguments: `install VERSION` reaches the step; `configure reconfigure` sets ONE_SERVICE_RECONFIGURE.
    framework.reset(None)
    assert framework.service("install", "9.9")[0] == 0
    assert framework.calls()[0] == "install 9.9"
    framework.reset("install_success")
    assert framework.service("configure", "reconfigure")[0] == 0
    assert framework.calls()[0] == "configure reconfigure=true"
    # The appliance script is sourced in the same shell by every invocation, help included.
    framework.reset("install_success")
    framework.service("help")
    framework.service("configure")
    framework.service("bootstrap")
    assert len(vm.path("/run/stub/sourced").read_text().split()) >= 3
    # Another instance running (a live pid in the pidfile): exit 0, nothing done.
    sleeper = vm.popen(["sleep", "30"])
    try:
        framework.reset("install_success")
        vm.path("/run/one-appliance-service.pid").write_text(f"{sleeper.pid}\n")
        code, out = framework.service("configure")
        assert code == 0 and framework.calls() == [] and framework.status() == "install_success", out
    finally:
        sleeper.kill()
        sleeper.wait()
        vm.path("/run/one-appliance-service.pid").unlink(missing_ok=True)


@in_vms
def test_context_hooks_see_every_context_variable_but_not_the_token(zone: tuple[Rig, OneGateServer]) -> None:
    rig, og = zone
    vm = rig.add_vm("env", 9)
    oa.install(vm, "superlink", service_install=False)
    # A network hook that records its environment (one-contextd runs every regular file).
    vm.path("/etc/one-context.d/net-50-record").write_text(
        "#!/bin/sh\nenv >/run/hook-env\necho \"args=$*\" >>/run/hook-env\n")
    vm.path("/etc/one-context.d/net-50-record").chmod(0o755)
    fake = og.add_vm("env_0", ips=[str(vm.eth0_ip)], vm_id=99)
    ctx = {**base_context(vm, og, fake), "ODD_VALUE": "it's $HOME `x` \"q\"\nline two", "lower_case": "kept"}
    run = oa.boot(vm, ctx, fake.token)
    env = dict(line.split("=", 1) for line in vm.path("/run/hook-env").read_text().splitlines() if "=" in line)
    assert env["ODD_VALUE"] == "it's $HOME `x` \"q\"", env  # the first line; `env` splits the rest
    assert env["lower_case"] == "kept" and env["ONEGATE_ENDPOINT"] == ctx["ONEGATE_ENDPOINT"]
    assert env["LANG"] == "C" and env["CONTEXT_FILE"] == "/var/run/one-context/context.sh.network"
    assert env["MOUNT_DIR"].startswith("/var/run/one-context/mount.") and env["args"] == "network "
    assert "TOKENTXT" not in env
    assert fake.token not in vm.path("/run/hook-env").read_text()
    # The token is in one_env (0400), written in the local stage; the CD mount is gone.
    one_env = vm.path("/run/one-context/one_env")
    assert stat.S_IMODE(one_env.stat().st_mode) == 0o400
    assert f'export TOKENTXT="{fake.token}"' in one_env.read_text()
    assert stat.S_IMODE(vm.path("/run/one-context/context.sh.network").stat().st_mode) == 0o400
    assert not list(vm.path("/run/one-context").glob("mount.*"))
    assert [s.name for s in run.scripts] == ["loc-16-gen-env", "loc-16-gen-env", "net-50-record",
                                              "net-90-service-appliance", "net-99-report-ready"]
    # The same CONTEXT again: no stage re-runs; force re-runs them all.
    assert oa.reconfigure(vm, ctx).stages == ()
    forced = oa.reconfigure(vm, ctx, force=True)
    assert forced.stages == ("local", "online", "network")
    assert "args=network force" in vm.path("/run/hook-env").read_text()


# --- real flower-ctx -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def link(zone: tuple[Rig, OneGateServer]) -> tuple[SimVM, FakeVM, oa.UnitRun]:
    """A SuperLink VM booted once through one-contextd, net-90 and net-99."""
    rig, og = zone
    vm = rig.add_vm("link", 1)
    fake = og.add_vm("superlink_0", ips=[str(vm.eth0_ip)], vm_id=7)
    installed = oa.install(vm, "superlink")
    assert "done (files only)" in installed and "install: done" in installed, installed
    run = oa.boot(vm, base_context(vm, og, fake), fake.token)
    return vm, fake, run


@in_vms
@requires_flower
def test_superlink_boots_to_bootstrap_success_and_ready(zone: tuple[Rig, OneGateServer],
                                                        link: tuple[SimVM, FakeVM, oa.UnitRun]) -> None:
    _, og = zone
    vm, fake, run = link
    assert oa.status(vm) == "bootstrap_success\n", run.output()
    assert run.script("net-90-service-appliance").rc == 0, run.output()
    net99 = run.script("net-99-report-ready")
    assert (net99.rc, net99.output) == (0, "Reported READY\n"), run.output()
    ut = og.user_template(fake)
    assert ut["READY"] == "YES" and ut["FL_READY"] == "YES"
    # flower-ctx published READY itself, after FL_ENDPOINT; net-99's single PUT came after that.
    puts = og.recorded(fake, "PUT")
    own = next(i for i, r in enumerate(puts) if r.attrs.get("READY") == "YES" and r.body != NET99_BODY)
    endpoint = next(i for i, r in enumerate(puts) if "FL_ENDPOINT" in r.attrs)
    assert endpoint < own
    assert [i for i, r in enumerate(puts) if r.body == NET99_BODY] == [len(puts) - 1]
    assert "configure --role superlink --env" in oa.step_log(vm, "configure")
    wait_for(lambda: "READY=YES published" in oa.step_log(vm, "bootstrap"), 5, "the bootstrap log")
    # The operator's commands are on PATH.
    out = vm.run(["sh", "-c", "flower-ctx --version && flwr --version"], env=ENV)
    assert "flower-ctx" in out.stdout and "1.39.0" in out.stdout, out.stdout + out.stderr
    assert_no_token(run.output(), oa.journal(vm), oa.step_log(vm, "configure"), oa.step_log(vm, "bootstrap"),
                    vm.path("/etc/one-appliance/config").read_text())


@in_vms
@requires_flower
def test_files_written_under_umask_0077_keep_design_modes(link: tuple[SimVM, FakeVM, oa.UnitRun]) -> None:
    vm, _, _ = link
    flower = next(line.split(":") for line in vm.path("/etc/passwd").read_text().splitlines()
                  if line.startswith("flower:"))
    fuid, fgid = int(flower[2]), int(flower[3])
    design = {  # DESIGN section 5
        "/opt/flower/certs/ca.crt": (0o644, 0, None),
        "/opt/flower/certs/ca.key": (0o600, 0, None),
        "/opt/flower/certs/server.pem": (0o644, None, None),
        "/opt/flower/certs/server.key": (0o600, fuid, None),
        "/opt/flower/state": (0o700, fuid, None),
        "/opt/flower/config/superlink.json": (0o640, 0, fgid),
    }
    for path, (mode, uid, gid) in design.items():
        st = vm.path(path).stat()
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
        assert uid is None or st.st_uid == uid, (path, st.st_uid)
        assert gid is None or st.st_gid == gid, (path, st.st_gid)
    # What the flower user must read, it can; the CA key it must not.
    readable = ["/opt/flower/certs/ca.crt", "/opt/flower/certs/server.pem", "/opt/flower/certs/server.key",
                "/opt/flower/config/superlink.json", "/opt/flower/venv/bin/flower-ctx"]
    script = " && ".join(f"test -r {shlex.quote(p)}" for p in readable)
    script += " && test -w /opt/flower/state && test -x /opt/flower/state && ! test -r /opt/flower/certs/ca.key"
    out = vm.run(["runuser", "-u", "flower", "--", "sh", "-c", script], check=False, env=ENV)
    assert out.returncode == 0, out.stderr
    # And what the framework itself wrote kept its own umask 0077.
    for path in (oa.STATUS_FILE, "/etc/one-appliance/config", "/var/log/one-appliance/bootstrap.log"):
        assert stat.S_IMODE(vm.path(path).stat().st_mode) == 0o600, path


@pytest.fixture(scope="module")
def failed(zone: tuple[Rig, OneGateServer]) -> tuple[SimVM, FakeVM, oa.UnitRun, str | None]:
    """A SuperLink VM whose CONTEXT is bad (keepalive below its range)."""
    rig, og = zone
    vm = rig.add_vm("bad", 2)
    fake = og.add_vm("superlink_1", ips=[str(vm.eth0_ip)], vm_id=17)
    oa.install(vm, "superlink")
    run = oa.boot(vm, {**base_context(vm, og, fake), "FL_GRPC_KEEPALIVE_TIME": "5"}, fake.token)
    return vm, fake, run, oa.status(vm)


@in_vms
def test_bad_context_stops_at_configure_failure_and_reports_nothing(
        zone: tuple[Rig, OneGateServer], failed: tuple[SimVM, FakeVM, oa.UnitRun, str | None]) -> None:
    _, og = zone
    vm, fake, run, status_after_boot = failed
    assert status_after_boot == "configure_failure\n", run.output()
    assert run.script("net-90-service-appliance").rc != 0
    assert "FL_GRPC_KEEPALIVE_TIME" in oa.step_log(vm, "configure")
    assert oa.step_log(vm, "bootstrap") == ""  # bootstrap never ran
    net99 = run.script("net-99-report-ready")
    assert (net99.rc, net99.output) == (0, ""), run.output()
    assert net99_puts(og, fake) == []
    # flower-ctx's own report: not ready, and why, naming the variable.
    ut = og.user_template(fake)
    assert ut.get("READY") != "YES" and ut.get("FL_READY") == "NO", ut
    assert "FL_GRPC_KEEPALIVE_TIME" in ut.get("FL_ERROR", ""), ut


@in_vms
@pytest.mark.parametrize("content,reports", [
    ("bootstrap_success\n", True),
    ("bootstrap_success", True),
    ("bootstrap_success \n", False),
    (" bootstrap_success\n", False),
    ("Bootstrap_success\n", False),
    ("bootstrap_success\nconfigure_success\n", False),
    ("bootstrap_successful\n", False),
    ("bootstrap_started\n", False),
    ("bootstrap_failure\n", False),
    ("configure_success\n", False),
    ("configure_failure\n", False),
    ("install_success\n", False),
    ("", False),
    (None, False),
])
def test_net99_reports_only_on_exactly_bootstrap_success(
        zone: tuple[Rig, OneGateServer], failed: tuple[SimVM, FakeVM, oa.UnitRun, str | None],
        content: str | None, reports: bool) -> None:
    _, og = zone
    vm, fake, _, _ = failed
    status_file = vm.path(oa.STATUS_FILE)
    status_file.unlink(missing_ok=True)
    if content is not None:
        status_file.write_text(content)
    before = len(net99_puts(og, fake))
    out = vm.run(["/etc/one-context.d/net-99-report-ready", "network", ""], check=False,
                 env={**ENV, "REPORT_READY": "YES"})
    assert len(net99_puts(og, fake)) - before == (1 if reports else 0), out
    if reports:
        assert (out.returncode, out.stdout) == (0, "Reported READY\n")
    else:
        # Silent; exit 0, or 1 when the status file is missing (its `cat` fails under errexit).
        assert (out.returncode, out.stdout, out.stderr) == (0 if content is not None else 1, "", "")


@in_vms
def test_net99_rules_besides_the_status(zone: tuple[Rig, OneGateServer],
                                        failed: tuple[SimVM, FakeVM, oa.UnitRun, str | None]) -> None:
    _, og = zone
    vm, fake, _, _ = failed
    vm.path(oa.STATUS_FILE).write_text("bootstrap_success\n")

    def net99(env: dict[str, str]) -> tuple[int, str, int]:
        before = len(og.recorded(fake, "PUT"))
        out = vm.run(["/etc/one-context.d/net-99-report-ready", "network", ""], check=False, env=env)
        return out.returncode, out.stdout + out.stderr, len(og.recorded(fake, "PUT")) - before

    # REPORT_READY must be exactly YES.
    for value in ("yes", "YES ", "NO", ""):
        assert net99({**ENV, "REPORT_READY": value}) == (0, "", 0), value
    assert net99(dict(ENV)) == (0, "", 0)
    # No onegate command: exit 1, nothing sent.
    rc, out, sent = net99({"PATH": "/usr/bin:/bin", "REPORT_READY": "YES"})
    assert (rc, sent) == (1, 0) and "onegate binary not found" in out
    # One attempt, no retry: a failing OneGate means exit 1 and exactly one request.
    og.fail_next(1, 503)
    rc, out, sent = net99({**ENV, "REPORT_READY": "YES"})
    assert (rc, sent) == (1, 1) and "ERROR: Failed to report READY" in out
    # Without an executable service manager (not an appliance image), the status is not looked at.
    service = vm.path("/etc/one-appliance/service")
    vm.path(oa.STATUS_FILE).write_text("configure_failure\n")
    service.chmod(0o600)
    try:
        assert net99({**ENV, "REPORT_READY": "YES"})[::2] == (0, 1)
    finally:
        service.chmod(0o700)
    assert_no_token(out)


LEFTOVER_WRAPPER = """#!/bin/bash
# A flower-ctx that leaves a daemon behind (double fork, own session) when it bootstraps. Like a
# careful daemon it closes the descriptors it inherited, unless LEFTOVER_KEEPS_FDS=YES: then it
# keeps the service manager's flock on /etc/one-appliance/service too, as `cmd &` would.
if [ "$1" = bootstrap ]; then
    setsid -f bash -c '
        if [ "${LEFTOVER_KEEPS_FDS:-}" != YES ]; then
            for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
        fi
        echo $$ >>/run/leftover/pids
        exec "${LEFTOVER_EXEC:-sleep}" 3600' </dev/null >/dev/null 2>&1
fi
exec /opt/flower/venv/bin/flower-ctx "$@"
"""


@dataclass
class LeftoverVM:
    vm: SimVM
    fake: FakeVM
    context: dict[str, str]

    def leftovers(self) -> list[int]:
        path = self.vm.path("/run/leftover/pids")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def service_pid(self, service: str) -> int | None:
        path = self.vm.path(f"/opt/flower/run/{service}.pid")
        return int(path.read_text().split()[0]) if path.exists() else None


def leftover_vm(zone: tuple[Rig, OneGateServer], name: str, zone_no: int, vm_id: int,
                keep_fds: bool = False) -> LeftoverVM:
    rig, og = zone
    vm = rig.add_vm(name, zone_no)
    fake = og.add_vm(f"superlink_{vm_id}", ips=[str(vm.eth0_ip)], vm_id=vm_id)
    oa.install(vm, "superlink")
    wrapper = vm.path("/run/leftover/flower-ctx")
    wrapper.parent.mkdir()
    wrapper.write_text(LEFTOVER_WRAPPER)
    wrapper.chmod(0o755)
    # The hook honours FLOWER_CTX from the environment, and one-contextd exports every CONTEXT variable.
    ctx = {**base_context(vm, og, fake), "FLOWER_CTX": "/run/leftover/flower-ctx",
           "LEFTOVER_KEEPS_FDS": "YES" if keep_fds else "NO"}
    return LeftoverVM(vm, fake, ctx)


@in_vms
@requires_flower
def test_reconfigure_kills_what_a_step_left_behind_but_not_flower(zone: tuple[Rig, OneGateServer]) -> None:
    lv = leftover_vm(zone, "recon", 3, 27)
    vm = lv.vm
    first = oa.boot(vm, lv.context, lv.fake.token)
    assert oa.status(vm) == "bootstrap_success\n", first.output()
    [boot_leftover] = lv.leftovers()
    # First boot (RemainAfterExit=yes): the daemon a step left survives, inside the unit's tree.
    assert alive(boot_leftover) and alive(first.pid)
    assert boot_leftover in oa._descendants(oa._proc_table(), first.pid)
    link_pid, watch_pid = lv.service_pid("superlink"), lv.service_pid("watch-superlink")
    assert link_pid is not None and alive(link_pid)

    # A CONTEXT change that Flower does not depend on: the reconfigure unit re-runs net-90 and net-99.
    again = oa.reconfigure(vm, {**lv.context, "SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3Nza test@example"})
    assert again.stages == ("local", "online", "network")
    assert again.script("net-90-service-appliance").rc == 0, again.output()
    assert oa.status(vm) == "bootstrap_success\n", again.output()
    assert again.script("net-99-report-ready").output == "Reported READY\n"
    assert len(lv.leftovers()) == 2, again.output()
    reconf_leftover = lv.leftovers()[-1]
    # What this run left behind was killed when the unit ended, and nothing else.
    assert [k.pid for k in again.killed] == [reconf_leftover], again.killed
    assert again.killed[0].signal == "SIGTERM" and "sleep 3600" in again.killed[0].cmdline
    assert not alive(reconf_leftover)
    # The supervised Flower (a systemd unit on a VM) kept running, same process; so did the watch.
    assert lv.service_pid("superlink") == link_pid and alive(link_pid)
    if watch_pid is not None:
        assert lv.service_pid("watch-superlink") == watch_pid and alive(watch_pid)
    # The first boot's unit is still active, with its leftover.
    assert alive(first.pid) and alive(boot_leftover)
    # Stopping that unit kills its leftover, not Flower.
    oa.stop_unit(vm, "boot")
    wait_for(lambda: not alive(boot_leftover) and not alive(first.pid), 15, "one-context.service to stop")
    assert alive(link_pid)


@in_vms
@requires_flower
def test_reconfigure_spares_wireguard_go(zone: tuple[Rig, OneGateServer]) -> None:
    """On a VM with systemd flower-ctx runs wireguard-go as a transient unit of its own (systemd-run),
    out of one-context-reconfigure's cgroup; without systemd it is a daemon in the unit's tree, which
    the double spares like the supervised services (a hub switched on by updateconf keeps wg0)."""
    lv = leftover_vm(zone, "wgspare", 6, 47)
    vm = lv.vm
    first = oa.boot(vm, lv.context, lv.fake.token)
    assert oa.status(vm) == "bootstrap_success\n", first.output()
    vm.run(["cp", "/bin/sleep", "/run/leftover/wireguard-go"])  # a daemon named like wireguard-go
    again = oa.reconfigure(vm, {**lv.context, "LEFTOVER_EXEC": "/run/leftover/wireguard-go"})
    assert again.script("net-90-service-appliance").rc == 0, again.output()
    daemon = lv.leftovers()[-1]
    assert alive(daemon) and again.killed == (), again.killed
    # Anything else a reconfigure step leaves behind is still killed.
    last = oa.reconfigure(vm, {**lv.context, "LEFTOVER_EXEC": "sleep", "FL_LOG_LEVEL": "DEBUG"})
    assert [k.pid for k in last.killed] == [lv.leftovers()[-1]] and alive(daemon)


@in_vms
@requires_flower
def test_a_leftover_holding_the_service_lock_blocks_later_runs_yet_net99_reports(
        zone: tuple[Rig, OneGateServer]) -> None:
    """An upstream wart the double keeps: service.sh re-runs itself under `flock -xn` on its own
    file, and flock(1) leaves the lock's descriptor open in the command. A process a step leaves
    behind without closing it holds the lock for as long as it lives (at first boot: for good), so
    every later `service configure` exits 1 at once, the status stays bootstrap_success, and net-99
    reports READY=YES again without anything having been re-checked."""
    _, og = zone
    lv = leftover_vm(zone, "locked", 5, 37, keep_fds=True)
    vm = lv.vm
    first = oa.boot(vm, lv.context, lv.fake.token)
    assert oa.status(vm) == "bootstrap_success\n", first.output()
    [holder] = lv.leftovers()
    configure_log = oa.step_log(vm, "configure")
    before = len(net99_puts(og, lv.fake))
    blocked = oa.reconfigure(vm, {**lv.context, "FL_LOG_LEVEL": "DEBUG"})
    net90 = blocked.script("net-90-service-appliance")
    assert (net90.rc, net90.output) == (1, ""), blocked.output()
    assert oa.step_log(vm, "configure") == configure_log  # configure never ran: FL_LOG_LEVEL not applied
    assert oa.status(vm) == "bootstrap_success\n"
    assert blocked.script("net-99-report-ready").output == "Reported READY\n"
    assert len(net99_puts(og, lv.fake)) == before + 1
    assert blocked.killed == () and alive(holder)
    # Once the holder is gone (the boot unit stopped), the next change is applied again.
    oa.stop_unit(vm, "boot")
    wait_for(lambda: not alive(holder), 15, "the lock holder to die")
    freed = oa.reconfigure(vm, {**lv.context, "FL_LOG_LEVEL": "DEBUG", "LEFTOVER_KEEPS_FDS": "NO"})
    assert freed.script("net-90-service-appliance").rc == 0, freed.output()
    assert "DEBUG" in vm.path("/opt/flower/config/superlink.json").read_text()


@in_vms
@requires_flower
def test_waiting_supernode_ends_as_bootstrap_failure_and_net99_stays_silent(
        zone: tuple[Rig, OneGateServer]) -> None:
    rig, og = zone
    vm = rig.add_vm("node", 4)
    link_fake = og.add_vm("superlink_9", ips=["198.18.4.250"], vm_id=90)  # never boots: nothing published
    fake = og.add_vm("supernode_9", ips=[str(vm.eth0_ip)], vm_id=91)
    og.add_service("waiting", {"superlink": [link_fake], "supernode": [fake]}, service_id=41)
    oa.install(vm, "supernode")
    # FL_BOOTSTRAP_WAIT: the boot gives up waiting after 10 s instead of 90 (the watch carries on).
    t0 = time.monotonic()
    run = oa.boot(vm, {**base_context(vm, og, fake), "FL_BOOTSTRAP_WAIT": "10"}, fake.token, timeout=400)
    assert time.monotonic() - t0 < 60, run.output()
    assert oa.status(vm) == "bootstrap_failure\n", run.output()
    assert "waiting for SuperLink" in oa.step_log(vm, "bootstrap")
    net99 = run.script("net-99-report-ready")
    assert (net99.rc, net99.output) == (0, ""), run.output()
    assert net99_puts(og, fake) == []
    ut = og.user_template(fake)
    assert ut.get("READY") != "YES" and ut.get("FL_READY") == "NO", ut
    # It keeps looking: the watch is a supervised service, not a leftover of the boot.
    assert vm.path("/opt/flower/run/watch-supernode.pid").exists()
