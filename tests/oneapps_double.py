"""A one-apps boot double: a simulated VM (tests/rig) booted the way an appliance image boots on
OpenNebula, through one-contextd, net-90 and net-99 (research: opennebula-upstream-behaviour.md 1,
opennebula-more.md 4, opennebula-contracts.md 3-4). Written from those notes, never from upstream
code. The shell parts are in ``tests/oneapps/``: the one-apps service manager (``service.sh`` and
``lib/``), ``net-90-service-appliance``, ``net-99-report-ready``, an ``onegate`` CLI and the context
package's ``loc-16-gen-env``. The appliance's own files come from the Packer provisioning itself
(``packer/scripts/provision.sh --files-only``), so a VM holds exactly what an image holds, with the
virtualenv linked to this checkout's.

Host-side API (tests and the lab; ``vm`` is a :class:`tests.rig.SimVM`):

``install(vm, role, venv=DEFAULT_VENV, service_install=True) -> str``
    Private ``/var/log`` and ``/usr/local`` for the VM, the context-package and one-apps doubles,
    the appliance files (``provision.sh --files-only --venv``), ``82-configure-context.sh``, then
    ``service install`` as the Packer build's last step (status ``install_success``).
``boot(vm, context, token, timeout=600) -> UnitRun``
    First boot: the context CD (``context.sh`` rendered as OpenNebula writes it, ``token.txt``) and
    the local, online and network stages, as one-context-local/-online/one-context.service.
``reconfigure(vm, context, token=None, force=False, timeout=600, kill_timeout=5.0) -> UnitRun``
    A CONTEXT change (new CD), as one-context-reconfigure.service: stages whose context.sh differs
    re-run (all of them with ``force``); then everything the run left behind is killed.
``stop_unit(vm, kind="boot")``
    Stop the first boot's unit process (what a shutdown does to one-context.service): it kills what
    the boot left behind, the supervised Flower excepted.
``status(vm)``, ``step_log(vm, step)``, ``journal(vm)``: the status file verbatim, a step log, the
    double's one-contextd log. ``write_cdrom(vm, context, token)``: only the CD.
``UnitRun``: ``scripts`` (stage, name, rc, output), ``script(name)``, ``output()``, ``killed``
    (pid, cmdline, signal), ``stages`` (those that ran), ``pid`` (the unit's process), ``seconds``.
A failing script is a result (``rc``), not an exception; ``OneAppsError`` is the double failing.

What is emulated, and how:

- **one-contextd.** Scripts are the regular files (not symlinks) of ``/etc/one-context.d``: the
  local and online stages run ``loc-*``, the network stage runs ``net-*`` and any file named
  neither, in byte order, each as ``script STAGE COMMAND`` (COMMAND empty at boot, ``reconfigure``
  or ``force`` after) with stdout and stderr in a file (one-contextd's SCRIPT_OUTPUT, so a
  leftover holding them cannot hang the run), a failing script not stopping the next. The
  environment is systemd's (PATH only) plus ``LANG=LC_ALL=C``, ``MOUNT_DIR``, ``RUNTIME_DIR``,
  ``CONTEXT_FILE`` and EVERY variable of the stage's context.sh: a bash shim sources it and exports
  each ``NAME=`` name, as one-contextd's export_rc_vars does. TOKENTXT is never in it (it is only
  in one_env, written by the loc-16-gen-env double in the local stage). At boot each stage runs
  once (its ``context.sh.<stage>`` copy, mode 0400, is its ConditionPathExists); at a reconfigure
  only stages whose copy differs from the new CD re-run (all with ``force``), and a reconfigure
  before a boot is refused (Requisite=one-context.service). The CD is a directory the host fills
  (``/run/oneapps-double/cdrom``); its "mount" is a read-only copy in
  ``/var/run/one-context/mount.XXXXXX``, exported as MOUNT_DIR and removed when the run ends. Not
  emulated: the delayed and force units, udev, the one-context lock, systemd-cat.
- **systemd's cgroups.** One process stands for the unit: the driver forks it in its own session
  and makes it a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``). The simulated VMs share the
  host's PID namespace, so without that a step's daemonized leftover (double fork, setsid) would be
  reparented to the host's init and lost; with it, every process the run starts stays in the unit
  process's tree, as in a cgroup, and can be found by PID in /proc and killed by PID.
  At first boot the process stays after the stages (one-context.service has RemainAfterExit=yes):
  leftovers survive, and it reaps them until none is left (SIGTERM to it = stopping the unit: it
  kills them). After a reconfigure (one-context-reconfigure.service: oneshot, no RemainAfterExit)
  it kills every process still in its tree when the stages end, SIGTERM (with SIGCONT) then
  SIGKILL after ``kill_timeout`` (systemd waits TimeoutStopSec, 90 s by default; shortened here),
  and exits. Exempt, as processes of other systemd units: what flower-ctx's built-in supervisor
  runs, which stands for systemd in the simulated VMs (there is no systemd there): every
  ``/opt/flower/run/*.pid`` holding ``pid starttime`` that matches a live process, that process's
  descendants, and every process in its session when it leads one; and wireguard-go daemons, which
  flower-ctx starts as a transient unit of their own (``systemd-run``) on a VM with systemd.
- **Warts kept.** net-99 trusts whatever status the last run left (a stale bootstrap_success is
  reported again); the service manager's ``flock -xn`` descriptor is inherited by everything a step
  starts, so a leftover that does not close it holds the lock and every later ``service`` call
  exits 1 at once, silently; one_env values are not escaped.
- **Private paths.** ``install`` mounts a tmpfs on ``/var/log`` and an overlay on ``/usr/local``
  inside the VM (the rig already covers /etc, /opt, /run, /root), so the step logs, the
  ``onegate`` CLI (``/usr/local/bin``, where the context package puts it in /usr/bin) and the
  operator links never reach the host; a unit run refuses to start without them. From the host,
  read VM files through ``vm.path()`` by their real path: ``/var/run`` is an absolute link to
  ``/run``, which ``/proc/PID/root`` resolves against the host's root (use ``/run/...``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ONEAPPS = HERE / "oneapps"
DEFAULT_VENV = Path(sys.prefix)  # this checkout's virtualenv (/work/main/.venv in the lab)
PROVISION = REPO / "packer" / "scripts" / "provision.sh"
CONFIGURE_CONTEXT = REPO / "packer" / "scripts" / "82-configure-context.sh"

# systemd's default PATH for services; nothing else of the caller's environment reaches a unit.
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNTIME_DIR = Path("/var/run/one-context")
SCRIPTS_DIR = Path("/etc/one-context.d")
STATE_DIR = Path("/run/oneapps-double")
CDROM = STATE_DIR / "cdrom"
MOUNTED_MARK = Path("/run/.oneapps/mounted")
JOURNAL = Path("/var/log/one-context-double.log")
FLOWER_RUN = Path("/opt/flower/run")
STATUS_FILE = "/etc/one-appliance/status"
STAGES = ("local", "online", "network")
UNITS = {"boot": "one-context", "reconfigure": "one-context-reconfigure"}
OUTPUT_CAP = 256 * 1024
PR_SET_CHILD_SUBREAPER = 36

# export_rc_vars: every NAME= name of the file, sourced and exported; then the script itself.
_EXPORT_SHIM = r"""
names=$(grep -E '^[a-zA-Z_0-9-]*=' "$CONTEXT_FILE" | sed 's/=.*$//')
. "$CONTEXT_FILE"
for v in $names; do export "$v" 2>/dev/null; done
unset names v
exec "$@"
"""

_PRIVATE_MOUNTS = r"""
set -e
[ ! -e /run/.oneapps/mounted ] || exit 0
mkdir -p /run/.oneapps/ul-upper /run/.oneapps/ul-work
mount -t overlay oneapps-usr-local \
    -o lowerdir=/usr/local,upperdir=/run/.oneapps/ul-upper,workdir=/run/.oneapps/ul-work /usr/local
mount -t tmpfs -o mode=0755,size=64m oneapps-var-log /var/log
touch /run/.oneapps/mounted
"""


class OneAppsError(AssertionError):
    """The double could not do what was asked (not: a script of the boot failed)."""


@dataclass(frozen=True)
class ScriptRun:
    stage: str
    name: str
    rc: int
    output: str


@dataclass(frozen=True)
class Killed:
    pid: int
    cmdline: str
    signal: str  # the last signal sent: SIGTERM, or SIGKILL when it outlived kill_timeout


@dataclass(frozen=True)
class UnitRun:
    unit: str
    pid: int
    stages: tuple[str, ...]
    scripts: tuple[ScriptRun, ...]
    killed: tuple[Killed, ...]
    seconds: float

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> UnitRun:
        return cls(
            unit=doc["unit"],
            pid=doc["pid"],
            stages=tuple(doc["stages"]),
            scripts=tuple(ScriptRun(**s) for s in doc["scripts"]),
            killed=tuple(Killed(**k) for k in doc["killed"]),
            seconds=doc["seconds"],
        )

    def script(self, name: str) -> ScriptRun:
        """The last run of script NAME (e.g. ``net-99-report-ready``)."""
        for run in reversed(self.scripts):
            if run.name == name:
                return run
        raise KeyError(f"{name} did not run in {self.unit} (ran: {[s.name for s in self.scripts]})")

    def output(self) -> str:
        return "".join(f"--- {s.stage} {s.name} (exit {s.rc})\n{s.output}" for s in self.scripts)


# ---------------------------------------------------------------------------------------------
# Host side


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(vm: Any, role: str, *, venv: Path | str = DEFAULT_VENV, service_install: bool = True) -> str:
    """Make ``vm`` an appliance image of ROLE: what the Packer build installs, in the same order.

    Returns the output of provision.sh and of ``service install``.
    """
    vm.run(["sh", "-c", _PRIVATE_MOUNTS])
    # The context package's share: its hook directory, loc-16-gen-env and the onegate CLI.
    vm.run(["install", "-d", "-m", "0755", str(SCRIPTS_DIR)])
    vm.run(["install", "-m", "0755", str(ONEAPPS / "loc-16-gen-env"), f"{SCRIPTS_DIR}/loc-16-gen-env"])
    vm.run(["install", "-m", "0755", str(ONEAPPS / "onegate"), "/usr/local/bin/onegate"])
    # The one-apps framework, as the service directory's provisioners put it in place.
    vm.run(["install", "-o", "0", "-g", "0", "-m", "u=rwx,g=rx,o=", "-d",
            "/etc/one-appliance", "/etc/one-appliance/service.d", "/etc/one-appliance/lib"])
    vm.run(["install", "-o", "0", "-g", "0", "-m", "u=rwx,g=rx,o=rx", "-d", "/opt/one-appliance",
            "/opt/one-appliance/bin"])
    vm.run(["install", "-m", "0644", str(ONEAPPS / "net-90-service-appliance"),
            str(ONEAPPS / "net-99-report-ready"), "/etc/one-appliance/"])
    vm.run(["install", "-m", "0755", str(ONEAPPS / "service.sh"), "/etc/one-appliance/service"])
    vm.run(["install", "-m", "0644", str(ONEAPPS / "lib" / "common.sh"), str(ONEAPPS / "lib" / "functions.sh"),
            "/etc/one-appliance/lib/"])
    # The appliance's own files (83-install-flower.sh's job, without apt and pip), then net-90/99.
    env = {"PATH": UNIT_PATH, "LANG": "C"}
    out = vm.run(["bash", str(PROVISION), "--role", role, "--files-only", "--venv", str(venv)], env=env).stdout
    vm.run(["bash", str(CONFIGURE_CONTEXT)], env=env)
    if service_install:
        out += vm.run(["/etc/one-appliance/service", "install"], env=env, timeout=120).stdout
    return out


def write_cdrom(vm: Any, context: Mapping[str, str], token: str | None) -> None:
    """The context CD OpenNebula attaches: context.sh as oned writes it, token.txt with TOKEN=YES."""
    from flower_ctx.context import render

    cd = vm.path(str(CDROM))
    _write(cd / "context.sh", render(context).encode(), 0o444)
    if token is not None:
        _write(cd / "token.txt", token.encode(), 0o444)
    elif (cd / "token.txt").exists():
        (cd / "token.txt").unlink()


def _run_unit(vm: Any, kind: str, args: Sequence[str], timeout: float) -> UnitRun:
    env = {"PATH": UNIT_PATH, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "tests.oneapps_double", "unit", kind, *args]
    try:
        proc = vm.run(cmd, check=False, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        stop_unit(vm, kind)
        raise OneAppsError(f"[{vm.name}] {UNITS[kind]} did not finish within {timeout:g} s") from None
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise OneAppsError(f"[{vm.name}] {UNITS[kind]}: no result (exit {proc.returncode})\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
    if not doc.get("ok"):
        raise OneAppsError(f"[{vm.name}] {UNITS[kind]} failed:\n{doc.get('error')}")
    return UnitRun.from_doc(doc)


def boot(vm: Any, context: Mapping[str, str], token: str | None, *, timeout: float = 600) -> UnitRun:
    """First boot of ``vm`` with CONTEXT (and the OneGate token on the CD when given)."""
    write_cdrom(vm, context, token)
    return _run_unit(vm, "boot", [], timeout)


def reconfigure(vm: Any, context: Mapping[str, str], token: str | None = None, *, force: bool = False,
                timeout: float = 600, kill_timeout: float = 5.0) -> UnitRun:
    """A CONTEXT change: a new CD (the token kept when ``token`` is None), then the reconfigure unit."""
    if token is None:
        old = vm.path(str(CDROM / "token.txt"))
        token = old.read_text() if old.exists() else None
    write_cdrom(vm, context, token)
    args = ["--kill-timeout", str(kill_timeout)] + (["--force"] if force else [])
    return _run_unit(vm, "reconfigure", args, timeout)


def stop_unit(vm: Any, kind: str = "boot") -> None:
    """Stop the process standing for a unit (SIGTERM: it kills what is left in its tree first)."""
    pidfile = vm.path(str(STATE_DIR / f"{kind}.pid"))
    try:
        pid, start = pidfile.read_text().split()[:2]
    except (OSError, ValueError):
        return
    if _starttime(int(pid)) == start:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def status(vm: Any) -> str | None:
    """The one-apps status file, verbatim (``bootstrap_success\\n``), or None when absent."""
    path = vm.path(STATUS_FILE)
    return path.read_text() if path.exists() else None


def step_log(vm: Any, step: str) -> str:
    path = vm.path(f"/var/log/one-appliance/{step}.log")
    return path.read_text(errors="replace") if path.exists() else ""


def journal(vm: Any) -> str:
    path = vm.path(str(JOURNAL))
    return path.read_text(errors="replace") if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# Inside the VM: the process that stands for a one-context unit


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    starttime: str


def _stat(pid: int) -> _Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return _Proc(pid, int(fields[1]), int(fields[3]), fields[0], fields[19])


def _starttime(pid: int) -> str | None:
    proc = _stat(pid)
    return proc.starttime if proc else None


def _proc_table() -> dict[int, _Proc]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = _stat(int(name))
            if proc is not None:
                table[proc.pid] = proc
    return table


def _descendants(table: Mapping[int, _Proc], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    out: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


def _unit_members(table: Mapping[int, _Proc]) -> set[int]:
    """Processes of "systemd units": the built-in supervisor's services and what belongs to them."""
    units = set()
    for pidfile in FLOWER_RUN.glob("*.pid") if FLOWER_RUN.is_dir() else ():
        try:
            pid_text, start = pidfile.read_text().split()[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        proc = table.get(pid)
        if proc is not None and proc.starttime == start:
            units.add(pid)
    # wireguard-go: on a VM with systemd, flower-ctx runs it as its own transient unit (systemd-run in
    # flower_ctx/wireguard/uapi.py spawn); here, without systemd, it is a plain daemon in our tree.
    units |= {pid for pid in table if _cmdline(pid).split(" ")[0].endswith("/wireguard-go")}
    members = set(units)
    sessions = {pid for pid in units if table[pid].sid == pid}
    for pid in units:
        members |= _descendants(table, pid)
    members |= {p.pid for p in table.values() if p.sid in sessions}
    return members


def _leftovers() -> dict[int, _Proc]:
    table = _proc_table()
    members = _unit_members(table)
    return {pid: table[pid] for pid in _descendants(table, os.getpid())
            if pid not in members and table[pid].state not in ("Z", "X")}


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:300]


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_leftovers(kill_timeout: float) -> list[dict[str, Any]]:
    """What systemd does when a unit without RemainAfterExit goes inactive: kill its cgroup."""
    killed: dict[int, dict[str, Any]] = {}
    deadline: float | None = None
    while True:
        _reap()
        left = _leftovers()
        if not left:
            break
        now = time.monotonic()
        if deadline is None:
            deadline = now + kill_timeout
        for pid, proc in left.items():
            seen = killed.get(pid)
            if seen is not None and seen["starttime"] != proc.starttime:
                seen = None  # a recycled pid: a new process
            try:
                if seen is None:
                    killed[pid] = {"pid": pid, "cmdline": _cmdline(pid), "signal": "SIGTERM",
                                   "starttime": proc.starttime}
                    os.kill(pid, signal.SIGTERM)
                    os.kill(pid, signal.SIGCONT)
                elif now >= deadline and seen["signal"] != "SIGKILL":
                    seen["signal"] = "SIGKILL"
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    _reap()
    return [{k: v for k, v in doc.items() if k != "starttime"} for doc in killed.values()]


def _log(text: str) -> None:
    with open(JOURNAL, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")


def _scripts(stage: str) -> list[Path]:
    found = []
    for path in SCRIPTS_DIR.iterdir() if SCRIPTS_DIR.is_dir() else ():
        if path.is_symlink() or not path.is_file():
            continue  # find -type f
        name = path.name
        wanted = name.startswith("loc-") if stage in ("local", "online") else not name.startswith("loc-")
        if wanted:
            found.append(path)
    return sorted(found, key=lambda p: p.name.encode())


def _run_script(path: Path, stage: str, command: str, context_file: Path, mount_dir: Path) -> dict[str, Any]:
    env = {"PATH": UNIT_PATH, "LANG": "C", "LC_ALL": "C", "MOUNT_DIR": str(mount_dir),
           "RUNTIME_DIR": str(RUNTIME_DIR), "CONTEXT_FILE": str(context_file)}
    _log(f"Script {path.name}: Starting ...")
    with tempfile.TemporaryFile(dir=STATE_DIR) as out:
        proc = subprocess.Popen(["bash", "-c", _EXPORT_SHIM, "one-contextd", str(path), stage, command],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/")
        rc = proc.wait()
        out.seek(0)
        output = out.read(OUTPUT_CAP).decode(errors="replace")
    _log(f"Script {path.name}: Finished with exit code {rc}\n{output}")
    return {"stage": stage, "name": path.name, "rc": rc, "output": output}


def _write_copy(path: Path, data: bytes) -> None:
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _run_stages(kind: str, force: bool) -> tuple[list[str], list[dict[str, Any]]]:
    RUNTIME_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    if kind == "reconfigure" and not (RUNTIME_DIR / "context.sh.network").exists():
        raise OneAppsError("one-context-reconfigure: one-context.service has not run (Requisite=, "
                           "ConditionPathExists=/var/run/one-context/context.sh.network): boot first")
    cd_context = (CDROM / "context.sh").read_bytes()
    command = "" if kind == "boot" else ("force" if force else "reconfigure")
    mount_dir = Path(tempfile.mkdtemp(prefix="mount.", dir=RUNTIME_DIR))
    stages: list[str] = []
    scripts: list[dict[str, Any]] = []
    try:
        for src in CDROM.iterdir():
            if src.is_file():
                shutil.copyfile(src, mount_dir / src.name)
                os.chmod(mount_dir / src.name, 0o444)
        os.chmod(mount_dir, 0o555)
        for stage in STAGES:
            stored = RUNTIME_DIR / f"context.sh.{stage}"
            if kind == "boot" and stored.exists():
                continue  # ConditionPathExists=!...: each stage once per boot
            if kind == "reconfigure" and not force and stored.exists() and stored.read_bytes() == cd_context:
                continue  # unchanged CONTEXT: this stage does not re-run
            _write_copy(stored, cd_context)
            stages.append(stage)
            _log(f"Processing {stage} scripts ({UNITS[kind]})")
            for script in _scripts(stage):
                scripts.append(_run_script(script, stage, command, stored, mount_dir))
    finally:
        os.chmod(mount_dir, 0o700)
        shutil.rmtree(mount_dir, ignore_errors=True)
    return stages, scripts


def _linger(kill_timeout: float) -> None:
    """RemainAfterExit=yes: the unit stays active and its leftovers live; reap them as they end."""

    def stop(_signum: int, _frame: object) -> None:
        _kill_leftovers(kill_timeout)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _unit_process(kind: str, force: bool, kill_timeout: float, result_fd: int) -> None:
    """The forked process standing for the unit (never returns)."""
    try:
        os.setsid()
        os.chdir("/")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        pidfile = STATE_DIR / f"{kind}.pid"
        pidfile.write_text(f"{os.getpid()} {_starttime(os.getpid())}\n")
        t0 = time.monotonic()
        ok = True
        try:
            stages, scripts = _run_stages(kind, force)
            killed = _kill_leftovers(kill_timeout) if kind == "reconfigure" else []
            for doc in killed:
                _log(f"{UNITS[kind]}: killed {doc['pid']} ({doc['signal']}): {doc['cmdline']}")
            doc = {"ok": True, "unit": UNITS[kind], "pid": os.getpid(), "stages": stages, "scripts": scripts,
                   "killed": killed, "seconds": round(time.monotonic() - t0, 3)}
        except BaseException:  # reported to the host, which raises it
            ok = False
            doc = {"ok": False, "error": traceback.format_exc()}
        data = json.dumps(doc).encode()
        while data:
            data = data[os.write(result_fd, data):]
        os.close(result_fd)
        if kind == "boot" and ok:
            _linger(kill_timeout)
        elif not ok:
            _kill_leftovers(kill_timeout)
    finally:
        os._exit(0)


def _in_vm_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.oneapps_double")
    sub = parser.add_subparsers(dest="command", required=True)
    unit = sub.add_parser("unit", help="run one-context (boot) or one-context-reconfigure")
    unit.add_argument("kind", choices=sorted(UNITS))
    unit.add_argument("--force", action="store_true")
    unit.add_argument("--kill-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not MOUNTED_MARK.exists():
        print(json.dumps({"ok": False, "error": "no private /var/log and /usr/local here: run "
                          "tests.oneapps_double.install(vm, role) first (or this is not a simulated VM)"}))
        return 1
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _unit_process(args.kind, args.force, args.kill_timeout, write_end)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    if args.kind != "boot":
        os.waitpid(child, 0)  # it exits right after its result; the boot unit stays (not ours to wait)
    data = b"".join(chunks)
    sys.stdout.write(data.decode() if data else json.dumps({"ok": False, "error": "the unit process died"}))
    return 0 if data else 1


if __name__ == "__main__":
    sys.exit(_in_vm_main(sys.argv[1:]))
