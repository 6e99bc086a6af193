"""The watch: keeps this VM's readiness in OneGate current for as long as the VM runs.

bootstrap reports readiness once, at boot. Afterwards a tunnel goes down, a SuperLink restarts, an
operator breaks the CONTEXT: the watch (``flower-ctx watch``, the ``flower-ctx-watch@ROLE`` unit,
or a service of the built-in supervisor) re-checks every ``interval`` seconds and publishes
``FL_READY``/``FL_ERROR``/``READY`` whenever the answer changes, and again every ``RESYNC_S``
seconds so a READY set behind its back (one-apps' net-99, another VM of the service) is withdrawn.
An outage is therefore in OneGate within about ``interval`` + the probe timeout + one OneGate call.

Every check starts from the CONTEXT as it is now (a reconfigure applies without a restart), so an
invalid CONTEXT is reported with the variables it names. A SuperNode still looking for its
SuperLink keeps discovering it here and starts Flower once it is found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import agentstate
from .boot import (
    CaPinError,
    attributes,
    ca_from_onegate,
    client_for,
    discover,
    needs_discovery,
    pin_check,
    pin_refusal,
    pinned_ca,
    publish,
    publish_failure,
)
from .errors import ContextError, FlowerCtxError, ValidationError
from .health import Health, check, runtime_doc
from .lock import MachineBusy, machine_lock
from .model import Config, OneGateAccess, Role
from .paths import Paths

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
RESYNC_S = 30.0
PROBE_TIMEOUT_S = 3.0
DISCOVERY_S = 10.0  # per check: the watch never blocks long, the next check tries again
RESTART_S = 10.0  # built-in supervisor: an ended Flower is started again at most this often
RECHECK_S = 60.0  # SuperNode: how often what the SuperLink publishes in OneGate is looked at again
RECHECK_REFUSED_S = 10.0  # ... while a CA it refused stands: back to ready soon after the rewrite is undone
RENEW_S = 6 * 3600.0  # SuperLink without systemd: how often the watch does the renewal timer's job
ADMIT_ONEGATE_S = 10.0  # SuperLink: how often the keys published in OneGate are read again
FAILED_CONFIGURE = "configure-failed.json"


def context_problem(exc: FlowerCtxError, role: str) -> str:
    """FL_ERROR for a CONTEXT that does not validate: the variables, never their values."""
    if isinstance(exc, ValidationError):
        names = " ".join(dict.fromkeys(name for name, _ in exc.problems))  # no ',': OneGate cannot hold it
        return f"CONTEXT invalid: {names} (run flower-ctx context check --role {role} on the VM)"
    return f"CONTEXT unreadable: {exc}"


@dataclass
class Watch:
    role: str
    paths: Paths
    context_file: Path | None = None
    interval: float = INTERVAL_S
    say: Callable[[str], None] = print
    # The OneGate client for an access (None: not configured) and the health check; tests hand in
    # their own (a OneGate double on a staging root, a scripted outage).
    client_factory: Callable[[OneGateAccess], Any] | None = None
    health_check: Callable[..., Health] = check

    def __post_init__(self) -> None:
        self._last: tuple[bool, str] | None = None
        self._synced = float("-inf")
        self._looking = False  # this watch is discovering the SuperLink and will start Flower
        self._admitted_from_onegate = float("-inf")
        self._restarted = float("-inf")
        self._rechecked = float("-inf")
        self._renewed = time.monotonic()  # configure has just checked
        self._metrics_at = float("-inf")
        self._wanted: dict[str, str] = {}  # the attributes published last time

    def check_once(self) -> tuple[Health, Config | None, OneGateAccess | None]:
        """One check from the CONTEXT as it is now."""
        from .config import onegate_access, resolve
        from .context import load
        from .supervisor import for_machine

        try:
            src = load(self.context_file, paths=self.paths)
        except ContextError as exc:
            return Health(False, context_problem(exc, self.role)), None, None
        try:
            config, _ = resolve(self.role, src.values, token=src.token)
        except ValidationError as exc:
            return Health(False, context_problem(exc, self.role)), None, onegate_access(src.values, src.token)
        failed = agentstate.read_or_none(self.paths, FAILED_CONFIGURE)
        if failed:
            return Health(False, f"configure failed: {failed.get('error') or 'see its log'}"), config, config.onegate
        sup = for_machine(self.paths)
        if needs_discovery(config, self.paths):
            from .discovery import DiscoveryTimeout

            self._looking = True
            client = self._client(config.onegate, retries=3)
            try:
                with machine_lock(self.paths, wait=False):
                    discover(config, self.paths, client, DISCOVERY_S, self.say)
            except DiscoveryTimeout as exc:
                return Health(False, f"waiting for SuperLink: {exc}", waiting=True), config, config.onegate
            except FlowerCtxError as exc:
                return Health(False, str(exc)), config, config.onegate
        if config.role is Role.GATEWAY:  # no Flower to start or keep running
            return self.health_check(config, self.paths, sup, timeout=PROBE_TIMEOUT_S), config, config.onegate
        if self._looking and not sup.state(self.role).running:
            with machine_lock(self.paths, wait=False):
                self.say(f"flower-{self.role} {sup.ensure_running(self.role)} ({sup.manager})")
        elif time.monotonic() - self._restarted >= RESTART_S:
            # Under the machine lock: bootstrap (re)starting Flower at the same moment would otherwise
            # start a second copy that loses the port while the pid file names it. Busy: next check.
            try:
                with machine_lock(self.paths, wait=False):
                    done = sup.keep_running(self.role)
            except MachineBusy:
                done = None  # configure or bootstrap is on it
            if done:
                self._restarted = time.monotonic()
                self.say(f"flower-{self.role} {done} ({sup.manager}: it had ended)")
        every = RECHECK_REFUSED_S if pin_refusal(config, self.paths) else RECHECK_S
        if config.role is Role.SUPERNODE and time.monotonic() - self._rechecked >= every:
            self._rechecked = time.monotonic()
            self._recheck_publication(config)
        refusal = pin_refusal(config, self.paths)
        if refusal:
            return Health(False, refusal, kind="ca_refused"), config, config.onegate
        health = self.health_check(config, self.paths, sup, timeout=PROBE_TIMEOUT_S)
        if health.ok:
            self._looking = False
            if config.role is Role.SUPERLINK:
                self._admit(config)
                if sup.manager == "builtin" and time.monotonic() - self._renewed >= RENEW_S:
                    self._renewed = time.monotonic()
                    self._renew(config)
        return health, config, config.onegate

    def _recheck_publication(self, config: Config) -> None:
        """A SuperNode that learnt its SuperLink from OneGate looks again now and then: a different CA is
        refused (and reported) against the pin; a new endpoint is taken only when the current one no
        longer answers and the new one proves the pinned CA (a legitimate move, not a redirect)."""
        from . import agentstate, runtime
        from .discovery import DiscoveryError, discover_superlink
        from .health import probe_with_local_ca, runtime_target

        from_onegate_ca = ca_from_onegate(config)
        if not from_onegate_ca and config.superlink_address is not None:
            return
        client = self._client(config.onegate)
        if client is None:
            return
        try:
            found = discover_superlink(client, deadline_s=5.0, max_backoff=2.0)
        except (DiscoveryError, FlowerCtxError):
            return  # nothing usable published right now: what is installed stays
        if from_onegate_ca:
            def refused() -> object:
                return ((pinned_ca(self.paths) or {}).get("refused") or {}).get("fingerprint")

            before = refused()
            try:
                trusted = pin_check(self.paths, found.ca_pem, found.ca_fingerprint, found.vm_id)
            except CaPinError as exc:
                if refused() != before:  # said once per CA refused, not at every look
                    self.say(f"refused: {exc}")
                return
            self._take_bundle(config, trusted)
        current = runtime_target(runtime_doc(self.paths, config.role.value))
        if config.superlink_address is not None or current is None or found.endpoint == current:
            return
        still = probe_with_local_ca(self.paths, current, PROBE_TIMEOUT_S) if config.tls_enabled else None
        if still is not None and still.ok:
            return  # the SuperLink we use answers: a different publication is not a reason to move
        moved = probe_with_local_ca(self.paths, found.endpoint, PROBE_TIMEOUT_S) if config.tls_enabled else None
        if config.tls_enabled and (moved is None or not moved.ok):
            return  # the new endpoint does not prove the pinned CA: never follow it
        with machine_lock(self.paths, wait=False):
            agentstate.record_discovery(self.paths, found.endpoint, found.tls, found.ca_fingerprint, found.vm_id)
            runtime.apply(config, self.paths, superlink_address=found.endpoint)
        self.say(f"the SuperLink moved to {found.endpoint} (it proves the pinned CA); Flower follows")

    def _renew(self, config: Config) -> None:
        """The daily renewal where no systemd timer runs it (the built-in supervisor's stand-in)."""
        from . import tls

        try:
            with machine_lock(self.paths, wait=False):
                result = tls.apply(config, self.paths)
        except FlowerCtxError as exc:
            self.say(f"renewal check failed: {exc}")
            return
        for c in result.changes:
            if c.pending:
                self.say(f"renewed {c.what} ({c.detail})")

    def _take_bundle(self, config: Config, trusted: bytes | None) -> None:
        """A CA rotation on the SuperLink: its new trust bundle (holding the pinned CA) is installed and
        Flower restarted to trust it (its gRPC channel's roots are fixed at start)."""
        from . import tls
        from .files import read_file
        from .pem import fingerprint, load_certs
        from .supervisor import for_machine

        if trusted is None:
            return
        try:
            installed = read_file(self.paths.ca_cert)
        except (OSError, FlowerCtxError):
            installed = b""
        if installed == trusted:
            return
        # The same CAs in another order (--finish puts the next one first): Flower trusts a set, so
        # the file follows without a restart (a restart in the middle of a run loses a reply).
        try:
            same = {fingerprint(c) for c in load_certs(installed)} == {fingerprint(c) for c in load_certs(trusted)}
        except FlowerCtxError:  # nothing (or nothing usable) installed: install, and restart
            same = False
        with machine_lock(self.paths, wait=False):
            tls.install_trusted_ca(trusted, self.paths)
            if same:
                return
            sup = for_machine(self.paths)
            if sup.state(self.role).running:
                self.say(f"the SuperLink's CA bundle changed (rotation): flower-{self.role} "
                         f"{sup.ensure_running(self.role)} to trust it")

    def _admit(self, config: Config) -> None:
        """Admission follows the CONTEXT at every check (a removed key is locked out within one
        interval); OneGate's published keys are read again at each resync only."""
        from .admission import reconcile

        due = time.monotonic() - self._admitted_from_onegate >= ADMIT_ONEGATE_S
        client = self._client(config.onegate) if due and config.auth_onegate else None
        report = reconcile(config, self.paths, onegate_client=client)
        if client is not None:
            self._admitted_from_onegate = time.monotonic()
        if report.registered or report.unregistered or report.burned or report.problems:
            for line in report.lines():
                self.say(line)

    def tick(self) -> None:
        """Check, publish when the answer changed or a resync is due, refresh the metrics file."""
        try:
            health, config, access = self.check_once()
        except FlowerCtxError as exc:  # a damaged file, a busy lock: report, try again next time
            health, config, access = Health(False, str(exc)), None, None
        try:
            self._publish(health, config, access)
        finally:
            self._metrics(health)

    def _metrics(self, health: Health) -> None:
        """node_exporter's textfile collector file, every metrics.EVERY_S seconds."""
        from . import __version__, metrics
        from .inspect import facts

        if time.monotonic() - self._metrics_at < metrics.EVERY_S:
            return
        self._metrics_at = time.monotonic()
        try:
            metrics.write(self.paths, metrics.render(facts(self.paths, self.role), ready=health.ok,
                                                     agent_version=__version__))
        except FlowerCtxError as exc:
            log.warning("metrics file not written: %s", exc)

    def _publish(self, health: Health, config: Config | None, access: OneGateAccess | None) -> None:
        key = (health.ok, health.detail)
        now = time.monotonic()
        if key == self._last and now - self._synced < RESYNC_S:
            return
        if access is None:
            if key != self._last:
                self.say(("ready: " if health.ok else "not ready: ") + health.detail + " (OneGate unknown)")
            self._last, self._synced = key, now
            return
        client = self._client(access)
        wanted = self._wanted_attributes(config)  # None: publish computes them and reports why it cannot
        summary = publish(config, self.paths, client, health, attrs=wanted) if config is not None else \
            publish_failure(client, self.paths, health.detail)
        if key != self._last:
            self.say(("ready: " if health.ok else "not ready: ") + health.detail)
            self.say(summary)
        else:
            self._rewritten(wanted or {})
        self._wanted = wanted or {}
        if "could not publish" not in summary:
            self._last, self._synced = key, now

    def _wanted_attributes(self, config: Config | None) -> dict[str, str] | None:
        if config is None:
            return None
        try:
            return attributes(config, self.paths)
        except FlowerCtxError:
            return None

    def _rewritten(self, wanted: dict[str, str]) -> None:
        """A resync (same health, same attributes wanted as last time) that still had to send some:
        OneGate held other values than this VM published, i.e. someone rewrote them (any VM of the
        service may: PUT /vms/ID). They are ours again now; say which, so the operator can look for
        the writer."""
        # The role's own attributes only: readiness attributes are also written by this VM's bootstrap
        # and one-apps, so a difference there accuses nobody (it is corrected all the same).
        doc = agentstate.read_or_none(self.paths, "publication.json") or {}
        names = [n for n in doc.get("sent") or [] if n in wanted and self._wanted.get(n) == wanted[n]]
        if names:
            self.say(f"OneGate held other values for {', '.join(names)} than this VM published (another VM of "
                     "the service can rewrite them): published this VM's again")

    def _client(self, access: OneGateAccess, retries: int = 1) -> Any:
        if self.client_factory is not None:
            return self.client_factory(access)
        return client_for(access, self.paths, timeout=5.0, retries=retries, deadline=15.0)

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # a bug must not end the watch: say it, try again at the next check
                log.exception("watch: unexpected error in a check (a bug: please report it)")
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))
