"""Start and watch the Flower service: systemd on a VM, a small built-in supervisor elsewhere.

The built-in one (used when systemd is not PID 1, e.g. inside the test rigs' simulated VMs) runs
``flower-ctx run <role>`` detached, in its own session, with a pid file holding the pid and the
process start time so a recycled pid is never mistaken for ours. Both restart the service only
when what it runs from (runtime config, certificates) changed since it was started: a re-run of
bootstrap with nothing changed leaves the running Flower alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ApplyError, FlowerCtxError
from .files import ensure_dir, exists, open_for_append, read_file, unlink, write_file
from .paths import Paths

# Environment names a child must never inherit: the one-apps hook exports every CONTEXT variable,
# secrets included, and the OneGate token.
_SCRUB = re.compile(r"(FL_|ONEAPP_|FLOWER_VERSION\Z|TOKENTXT\Z|ONEGATE_TOKEN\Z|ETH[0-9]+_)")


# The services flower-ctx starts: Flower itself per role, and per role the watch that keeps the
# VM's readiness in OneGate current (a unit of its own: it must outlive one-apps' reconfigure).
WATCH_PREFIX = "watch-"


def watch_service(role: str) -> str:
    return WATCH_PREFIX + role


def unit_name(service: str) -> str:
    if service.startswith(WATCH_PREFIX):
        return f"flower-ctx-watch@{service[len(WATCH_PREFIX):]}.service"
    return f"flower-{service}.service"


def service_argv(service: str) -> list[str]:
    """What the built-in supervisor runs for ``service`` (systemd runs the unit's ExecStart)."""
    if service.startswith(WATCH_PREFIX):
        return ["watch", "--role", service[len(WATCH_PREFIX):]]
    return ["run", service]


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ServiceState:
    running: bool
    pid: int | None
    detail: str  # "active (pid 123)", "not running", "failed", ...
    manager: str  # "systemd" | "builtin"


def proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the ")" that closes the command name.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def fingerprint_inputs(paths: Paths, role: str) -> str:
    """Hash of what the service reads at start; a change means it must be restarted. The watch
    re-reads everything at each check, so nothing restarts it; the server certificate and key are
    not in it either: the running Flower takes a renewed pair without a restart (certreload)."""
    h = hashlib.sha256()
    if role.startswith(WATCH_PREFIX):
        return h.hexdigest()
    # A SuperLink uses its CA file for nothing a connection needs (no client certificates): a
    # rotation's new bundle needs no restart there. A SuperNode's channel trusts it: it does.
    watched = (paths.runtime_config(role), paths.node_key) if role == "superlink" else \
        (paths.runtime_config(role), paths.ca_cert, paths.node_key)
    for p in watched:
        try:
            h.update(read_file(p))
        except (OSError, FlowerCtxError):
            h.update(b"-")
    return h.hexdigest()


class Supervisor:
    manager = "base"

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    @property
    def run_dir(self) -> Path:
        return self.paths.flower_home / "run"

    def _stamp(self, role: str) -> Path:
        return self.run_dir / f"{role}.inputs"

    def needs_restart(self, role: str) -> bool:
        try:
            return read_file(self._stamp(role)).decode().strip() != fingerprint_inputs(self.paths, role)
        except (OSError, UnicodeDecodeError, FlowerCtxError):
            return True

    def _record_inputs(self, role: str) -> None:
        ensure_dir(self.run_dir, 0o755)
        write_file(self._stamp(role), (fingerprint_inputs(self.paths, role) + "\n").encode(), 0o644)

    def state(self, role: str) -> ServiceState:
        raise NotImplementedError

    def ensure_running(self, role: str, extra: list[str] | None = None) -> str:
        """Start (or restart after a change) the service (a role, or ``watch-<role>``). Returns what
        was done. ``extra`` arguments reach the built-in supervisor's command line only (a systemd
        unit runs its own ExecStart on the VM's defaults)."""
        raise NotImplementedError

    def stop(self, role: str) -> None:
        raise NotImplementedError

    def keep_running(self, role: str) -> str | None:
        """Restart a service that ended on its own (what systemd's Restart= does for units); what was
        done, or None. Called by the watch."""
        return None

    def enable_timer(self, name: str) -> str | None:
        """Enable and start a systemd timer (the built-in supervisor has none: the watch does the job)."""
        return None


class SystemdSupervisor(Supervisor):
    manager = "systemd"

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60, env=child_environment())

    def state(self, role: str) -> ServiceState:
        out = self._systemctl("show", unit_name(role), "--property=ActiveState,SubState,MainPID")
        props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0) or None
        active = props.get("ActiveState") == "active"
        return ServiceState(active, pid, f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})", "systemd")

    def ensure_running(self, role: str, extra: list[str] | None = None) -> str:
        unit = unit_name(role)
        restart = self.needs_restart(role)
        self._systemctl("daemon-reload")
        out = self._systemctl("enable", unit)
        if out.returncode != 0:
            raise ApplyError(f"systemctl enable {unit} failed: {out.stderr.strip()[:200]}")
        running = self.state(role).running
        action = "restarted" if running and restart else "unchanged" if running else "started"
        if action != "unchanged":
            out = self._systemctl("restart" if running else "start", unit)
            if out.returncode != 0:
                raise ApplyError(f"systemctl start {unit} failed: {out.stderr.strip()[:200]} (journalctl -u {unit})")
        self._record_inputs(role)
        return action

    def stop(self, role: str) -> None:
        self._systemctl("stop", unit_name(role))

    def enable_timer(self, name: str) -> str | None:
        unit = f"{name}.timer"
        if self._systemctl("is-enabled", unit).stdout.strip() == "enabled" and \
                self._systemctl("is-active", unit).stdout.strip() == "active":
            return None
        out = self._systemctl("enable", "--now", unit)
        if out.returncode != 0:
            raise ApplyError(f"systemctl enable --now {unit} failed: {out.stderr.strip()[:200]}")
        return f"{unit} enabled"


class BuiltinSupervisor(Supervisor):
    manager = "builtin"

    def keep_running(self, role: str) -> str | None:
        """The built-in stand-in for Restart=on-failure: a service that was started and has ended is
        started again (a SuperNode not admitted yet exits at once and must retry)."""
        if not exists(self._stamp(role)) or self.state(role).running:
            return None  # never started here (bootstrap's job), or running
        return self.ensure_running(role)

    def _pidfile(self, role: str) -> Path:
        return self.run_dir / f"{role}.pid"

    def log_file(self, role: str) -> Path:
        return self.run_dir / f"{role}.log"

    def _read_pid(self, role: str) -> int | None:
        try:
            return read_pidfile(self._pidfile(role))
        except (OSError, ValueError, FlowerCtxError):
            return None

    def state(self, role: str) -> ServiceState:
        pid = self._read_pid(role)
        if pid is None:
            return ServiceState(False, None, "not running", self.manager)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return ServiceState(False, None, "not running", self.manager)
        if state == "Z":
            return ServiceState(False, pid, "exited", self.manager)
        return ServiceState(True, pid, f"running (pid {pid})", self.manager)

    def ensure_running(self, role: str, extra: list[str] | None = None) -> str:
        st = self.state(role)
        if st.running and not self.needs_restart(role):
            return "unchanged"
        action = "restarted" if st.running else "started"
        if st.running:
            self.stop(role)
        ensure_dir(self.run_dir, 0o755)
        argv = [sys.executable, "-m", "flower_ctx", *service_argv(role), *(extra or [])]
        if self.paths.staged:
            argv += ["--root", str(self.paths.root)]
        log = open_for_append(self.log_file(role))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=child_environment(),  # `run` puts the virtualenv bin/ first on PATH itself
                cwd="/",
            )
        finally:
            os.close(log)
        start = None
        for _ in range(50):  # /proc entry appears at once, but be patient under load
            start = proc_start_time(proc.pid)
            if start:
                break
            time.sleep(0.01)
        write_file(self._pidfile(role), f"{proc.pid} {start}\n".encode(), 0o644)
        self._record_inputs(role)
        return action

    def stop(self, role: str, timeout: float = 10.0) -> None:
        pid = self._read_pid(role)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc_start_time(pid) is not None:
            try:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        unlink(self._pidfile(role))


def read_pidfile(path: Path) -> int | None:
    """The pid a ``pid starttime`` file names, when that process still runs (not a recycled pid)."""
    text = read_file(path, limit=256).decode("ascii")
    pid_s, start = text.split()
    if not (pid_s.isascii() and pid_s.isdigit() and len(pid_s) < 10):
        return None
    pid = int(pid_s)
    return pid if proc_start_time(pid) == start else None


def systemd_is_init() -> bool:
    try:
        init = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return False
    return init == "systemd" and os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def for_machine(paths: Paths) -> Supervisor:
    """systemd when it runs this machine (and we are not staging), else the built-in supervisor.

    Decided from the machine alone (no environment variable can switch it): a simulated VM of the
    test rigs has its own empty /run, so it has no /run/systemd/system either.
    """
    if not paths.staged and systemd_is_init():
        return SystemdSupervisor(paths)
    return BuiltinSupervisor(paths)
