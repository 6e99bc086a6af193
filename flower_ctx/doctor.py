"""``doctor``'s checks: each returns ok / warning / problem with the fix in operator terms."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import FlowerCtxError
from .health import (
    probe_with_local_ca,
    refusal,
    runtime_doc,
    service_log_tail,
    superlink_dial_address,
    tcp_error,
)
from .inspect import EXPIRY_WARN_DAYS, cert_info, wg_status
from .model import Config, HostPort, Role
from .paths import Paths

OK, WARNING, PROBLEM = "ok", "warning", "problem"
STALE_HANDSHAKE_S = 180  # WireGuard re-handshakes every 2 minutes while traffic flows


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    message: str
    fix: str = ""


def _target(doc: dict | None) -> HostPort | None:
    from .health import runtime_target

    return runtime_target(doc)


def run_checks(config: Config | None, context_error: FlowerCtxError | None, paths: Paths, role: str,
               values: dict[str, str] | None = None) -> list[Check]:
    return list(_checks(config, context_error, paths, role, values or {}))


def _checks(config: Config | None, context_error: FlowerCtxError | None, paths: Paths, role: str,
            values: dict[str, str]) -> Iterator[Check]:
    if context_error is not None:
        yield Check("context", PROBLEM, str(context_error).replace("\n", "; "),
                    "correct the variables named above in the VM's CONTEXT, then run flower-ctx configure")
    else:
        yield Check("context", OK, f"CONTEXT valid for {role}")
    if config is not None:
        yield from _template_checks(values, paths)
    doc = runtime_doc(paths, role)
    if doc is None:
        yield Check("configured", PROBLEM, f"no runtime config at {paths.runtime_config(role)}",
                    f"run flower-ctx configure --role {role}")
        return
    if role == "gateway":
        if config is not None:
            yield from _watch_check(config, paths, role)
        yield from _gateway_checks(paths)
        if config is not None:
            yield from _onegate(config, paths)
        return
    yield from _service_check(paths, role)
    if config is None:
        return
    yield from _watch_check(config, paths, role)
    if config.role is Role.SUPERNODE:
        yield from _pin_check(config, paths)
    if config.role is Role.SUPERLINK:
        yield from _superlink_tls(config, paths, doc)
    else:
        yield from _supernode_link(config, paths, doc)
    yield from _wireguard(config, paths, doc)
    yield from _gateway_routes(config, paths)
    yield from _keepalive(config, paths, role)
    yield from _onegate(config, paths)
    yield from _app_dependencies(config, paths)


def _app_dependencies(config: Config, paths: Paths) -> Iterator[Check]:
    if not config.app_dependencies or paths.staged:
        return
    from .apps import missing

    absent = missing(config.app_dependencies)
    if not absent:
        yield Check("app dependencies", OK, f"{len(config.app_dependencies)} pinned package(s) installed")
        return
    from . import agentstate

    record = agentstate.read_or_none(paths, "app-dependencies.json") or {}
    why = f": {record['failed']}" if record.get("failed") else ""
    yield Check("app dependencies", PROBLEM,
                "FL_APP_DEPENDENCIES: not installed: " + ",".join(f"{n}=={v}" for n, v in absent) + why,
                "fix the pins or the VM's access to the package index, then run flower-ctx configure")


NET99 = "/etc/one-context.d/net-99-report-ready"


def _template_checks(values: dict[str, str], paths: Paths) -> Iterator[Check]:
    """VM template settings that break readiness: no OneGate, or READY reported before Flower serves."""
    from .files import read_file

    if values.get("TOKEN", "").lower() != "yes":
        yield Check("vm template", PROBLEM, "CONTEXT has no TOKEN=YES: no OneGate, so READY can neither be "
                    "reported nor withdrawn", "set CONTEXT TOKEN=YES in the VM template")
    for name in ("READY_SCRIPT", "READY_SCRIPT_PATH"):
        if values.get(name):
            yield Check("vm template", WARNING, f"CONTEXT sets {name}: the stock one-context net-99 reports "
                        "READY=YES as soon as that script passes, whether Flower serves or not",
                        f"remove {name}; flower-ctx publishes READY itself when Flower really serves")
    if values.get("REPORT_READY", "") != "YES":
        return
    try:
        net99 = read_file(paths.root / NET99.lstrip("/"), limit=256 * 1024).decode("utf-8", "replace")
    except (OSError, FlowerCtxError):
        return  # no net-99 on this VM: nothing reports READY but flower-ctx
    if "bootstrap_success" not in net99:
        yield Check("vm template", PROBLEM, f"REPORT_READY=YES and {NET99} is not the one-apps one: it reports "
                    "READY=YES when contextualization ends, before Flower is ready",
                    "install the appliance image's net-99 (one-apps: waits for bootstrap_success), or set "
                    "REPORT_READY=NO in the VM template (flower-ctx publishes READY itself)")


def _service_check(paths: Paths, role: str) -> Iterator[Check]:
    from .supervisor import for_machine

    state = for_machine(paths).state(role)
    if state.running:
        yield Check("service", OK, f"flower-{role} {state.detail} ({state.manager})")
    elif role == "supernode" and (refused := refusal(paths)) is not None:
        yield Check("admission", PROBLEM, "the SuperLink refused this SuperNode (Flower: not registered)",
                    refused + "; in the SuperLink's own service it is admitted from OneGate")
    else:
        where = "journalctl -u flower-" + role if state.manager == "systemd" else f"{paths.flower_home}/run/{role}.log"
        yield Check("service", PROBLEM, f"flower-{role} is {state.detail}",
                    f"run flower-ctx bootstrap --role {role}; its log: {where}")


def _pin_check(config: Config, paths: Paths) -> Iterator[Check]:
    from .boot import pinned_ca, refusal_message

    pin = pinned_ca(paths)
    if pin is None or config.pki.ca_pem is not None:
        return
    refused = pin.get("refused")
    if refused:
        yield Check("ca pin", PROBLEM, refusal_message(str(pin["fingerprint"]), str(refused.get("fingerprint")),
                                                       str(refused.get("vm", ""))).split(". If")[0],
                    "if the SuperLink really has a new CA (compare `flower-ctx status` on it): set FL_SSL_CA_CERTFILE "
                    "or run `flower-ctx ca forget` here; otherwise find the VM that rewrote its attributes")
    else:
        yield Check("ca pin", OK, f"{pin['fingerprint']} pinned from OneGate (SuperLink VM {pin.get('vm') or '?'})")


def _watch_check(config: Config, paths: Paths, role: str) -> Iterator[Check]:
    from .supervisor import for_machine, unit_name, watch_service

    if paths.staged or not config.onegate.usable:
        return
    state = for_machine(paths).state(watch_service(role))
    if state.running:
        yield Check("readiness watch", OK, f"{unit_name(watch_service(role))} {state.detail}")
    else:
        yield Check("readiness watch", PROBLEM, f"{unit_name(watch_service(role))} is {state.detail}: FL_READY in "
                    "OneGate is not kept current", f"run flower-ctx bootstrap --role {role}")


def _cert_checks(label: str, path: Path, now: datetime.datetime) -> Iterator[Check]:
    info = cert_info(path, now)
    if info is None:
        yield Check(label, PROBLEM, f"missing: {path}", "run flower-ctx configure")
        return
    if info.problem:
        problem = info.problem if info.problem.startswith(("is ", "unreadable", "contains", "holds")) \
            else f"is {info.problem}"
        yield Check(label, PROBLEM, f"{path} {problem}",
                    "run flower-ctx configure to re-issue it (generated PKI) or provide a valid one")
    elif info.days_left is not None and info.days_left < EXPIRY_WARN_DAYS:
        yield Check(label, WARNING, f"{path} expires in {info.days_left} days ({info.not_after})",
                    "run flower-ctx configure (re-issues generated certificates within 30 days of expiry)")
    else:
        yield Check(label, OK, f"{info.fingerprint}, valid until {info.not_after}")


def _server_key_check(paths: Paths) -> Iterator[Check]:
    """The server key parses and belongs to the server certificate (Flower cannot start otherwise)."""
    from . import pem
    from .files import read_file

    fix = "run flower-ctx configure (a generated key and certificate are made again as a pair)"
    try:
        key = pem.load_private_key(read_file(paths.server_key))
    except FileNotFoundError:
        yield Check("server key", PROBLEM, f"missing: {paths.server_key}", fix)
        return
    except (OSError, FlowerCtxError) as exc:
        yield Check("server key", PROBLEM, f"{paths.server_key} {exc}", fix)
        return
    try:
        cert = pem.load_certs(read_file(paths.server_cert))[0]
    except (OSError, FlowerCtxError):
        return  # the certificate's own check names it
    if not pem.key_matches_cert(key, cert):
        yield Check("server key", PROBLEM, f"{paths.server_key} is not the key of {paths.server_cert}", fix)
    else:
        yield Check("server key", OK, "matches the server certificate")


def _superlink_tls(config: Config, paths: Paths, doc: dict) -> Iterator[Check]:
    now = datetime.datetime.now(datetime.timezone.utc)
    target = superlink_dial_address(config, doc)
    if not config.tls_enabled:
        yield Check("tls", WARNING, "TLS is off on the Fleet API",
                    "set FL_TLS_ENABLED=YES for anything crossing a zone")
        return
    yield from _cert_checks("ca", paths.ca_cert, now)
    yield from _cert_checks("server cert", paths.server_cert, now)
    yield from _server_key_check(paths)
    info = cert_info(paths.server_cert, now)
    if info is not None and not info.problem:
        want = {f"IP:{target.host}"} | {str(s) for s in config.cert_extra_san}
        missing = sorted(w for w in want if w not in info.sans) if not config.operator_pki else []
        if missing:
            yield Check("server sans", PROBLEM, f"the certificate lacks {', '.join(missing)}",
                        "run flower-ctx configure (it re-issues the certificate when the SAN set changes)")
        else:
            yield Check("server sans", OK, ",".join(info.sans))
    result = probe_with_local_ca(paths, target, 3.0)
    if result is None:
        return
    if result.ok:
        yield Check("fleet api", OK, f"{target} answers TLS verified with this SuperLink's CA")
    else:
        yield Check("fleet api", PROBLEM, result.message, "check the service log; flower-ctx bootstrap restarts it")


def _supernode_link(config: Config, paths: Paths, doc: dict) -> Iterator[Check]:
    from .probe import ProbeKind

    target = _target(doc)
    if target is None:
        yield Check("superlink", PROBLEM, "no SuperLink address: FL_SUPERLINK_ADDRESS is empty and OneGate discovery "
                    "has found none", "set FL_SUPERLINK_ADDRESS=host:9092, or run the SuperNode in the SuperLink's "
                    "OneFlow service with TOKEN=YES")
        return
    if not config.tls_enabled:
        err = tcp_error(target, 3.0)
        yield (Check("superlink", OK, f"{target} accepts connections (TLS off)") if err is None else
               Check("superlink", PROBLEM, f"{target} unreachable: {err}", _unreachable_fix(config, paths)))
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    yield from _cert_checks("ca", paths.ca_cert, now)
    result = probe_with_local_ca(paths, target, 3.0)
    if result is None:
        return
    if result.ok:
        yield Check("superlink", OK, f"{target} verified with the configured CA")
        return
    fixes = {
        ProbeKind.CA_MISMATCH: "set FL_SSL_CA_CERTFILE on this SuperNode to the SuperLink's CA "
                               "(`flower-ctx ca export` on the SuperLink)",
        ProbeKind.NAME_MISMATCH: f"set FL_CERT_EXTRA_SAN=IP:{target.host} on the SuperLink"
        if target.ip is not None else f"set FL_CERT_EXTRA_SAN=DNS:{target.host} on the SuperLink",
        ProbeKind.EXPIRED: "run flower-ctx configure on the SuperLink (it re-issues an expiring certificate)",
        ProbeKind.NOT_YET_VALID: "check the clocks of both VMs (NTP)",
        ProbeKind.UNREACHABLE: _unreachable_fix(config, paths),
    }
    yield Check("superlink", PROBLEM, result.message, fixes.get(result.kind, "see the message"))


def _unreachable_fix(config: Config, paths: Paths) -> str:
    base = "check that the SuperLink VM runs (flower-ctx status there) and that TCP 9092 is open between the VMs"
    if config.gateway_routes:
        from .gateway.routes import status as routes_status

        via = (routes_status(paths) or {}).get("address") or config.gateway_address or "the zone's gateway"
        return base + f"; this VM reaches it through the site gateway {via}: run flower-ctx doctor there"
    if config.wg is None:
        return base
    wg = wg_status(paths)
    if wg is None:
        return base + "; wg0 is not up here: run flower-ctx configure"
    ages = [p.latest_handshake_age for p in wg.peers]
    if all(a is None for a in ages):
        return base + "; the WireGuard hub has never completed a handshake (see the wireguard check)"
    age = min(a for a in ages if a is not None)
    return base + f"; last WireGuard handshake {int(age)}s ago"


def _wireguard(config: Config, paths: Paths, doc: dict) -> Iterator[Check]:
    if config.wg is None:
        return
    if paths.staged:
        yield Check("wireguard", WARNING, "not inspected under --root", "")
        return
    wg = wg_status(paths)
    if wg is None:
        yield Check("wireguard", PROBLEM, "FL_WG_ENABLED=YES but there is no wg0", "run flower-ctx configure")
        return
    yield Check("wireguard", OK, f"wg0 {'up' if wg.up else 'down'} ({wg.backend}), {', '.join(wg.addresses)}, "
                                 f"public key {wg.public_key}")
    for p in wg.peers:
        short = p.public_key[:10] + "..."
        if p.latest_handshake_age is None:
            yield Check("wg peer", PROBLEM, f"peer {short} ({p.endpoint or 'no endpoint'}) never completed a handshake",
                        f"check the endpoint and that UDP {config.wg.listen_port} is open, and that each side "
                        "has the other's public key (flower-ctx status shows this VM's)")
        elif p.latest_handshake_age > STALE_HANDSHAKE_S:
            yield Check("wg peer", WARNING, f"peer {short}: last handshake {int(p.latest_handshake_age)}s ago",
                        "the tunnel is idle or the peer is gone; PersistentKeepalive keeps NAT state alive")
        else:
            yield Check("wg peer", OK, f"peer {short}: handshake {int(p.latest_handshake_age)}s ago")


def _keepalive(config: Config, paths: Paths, role: str) -> Iterator[Check]:
    t, to = config.keepalive_time, config.keepalive_timeout
    from .flowerversion import installed_version
    from .runtime.eras import HTTP, UnsupportedFlower, for_version, keepalive_summary

    installed = installed_version()
    try:
        era = for_version(installed)
    except UnsupportedFlower:
        era = None
    if era is HTTP:
        yield Check("keepalive", OK, keepalive_summary(installed, t, to))
        return
    tail = service_log_tail(paths, role)
    if b"too_many_pings" in tail or b"ENHANCE_YOUR_CALM" in tail:
        yield Check("keepalive", PROBLEM, "the SuperLink closed the connection with GOAWAY too_many_pings",
                    f"the SuperLink does not accept pings every {t}s: run it with flower-ctx (allows 10 s) or "
                    "raise FL_GRPC_KEEPALIVE_TIME")
        return
    note = ""
    if role == "supernode":
        from . import agentstate

        disc = agentstate.read_or_none(paths, "discovered.json")
        note = ("SuperLink found through OneGate (configured by flower-ctx: accepts pings every 10 s)" if disc else
                "assumes the SuperLink runs flower-ctx (accepts pings every 10 s); a stock SuperLink answers "
                "frequent pings with GOAWAY too_many_pings")
    yield Check("keepalive", OK, f"ping every {t}s, timeout {to}s" + (f"; {note}" if note else ""))


def _onegate(config: Config, paths: Paths) -> Iterator[Check]:
    if paths.staged:
        return
    if not config.onegate.usable:
        missing = [n for n, v in (("ONEGATE_ENDPOINT", config.onegate.endpoint), ("VMID", config.onegate.vmid),
                                  ("token", config.onegate.token)) if not v]
        yield Check("onegate", WARNING, f"not configured (missing {', '.join(missing)})",
                    "set CONTEXT TOKEN=YES in the VM template; readiness cannot be reported without it")
        return
    from .errors import OneGateError
    from .onegate import OneGateClient

    client = OneGateClient(config.onegate, timeout=3.0, retries=1)
    try:
        client.get_vm()
    except OneGateError as exc:
        yield Check("onegate", PROBLEM, f"{config.onegate.endpoint}: {client.redact(str(exc))}",
                    "check the OneGate service and the VM's token (TOKEN=YES)")
        return
    yield Check("onegate", OK, f"{config.onegate.endpoint} answers")


def _gateway_routes(config: Config, paths: Paths) -> Iterator[Check]:
    """A VM behind a site gateway: its routes through the gateway are in place."""
    from .gateway.routes import status as routes_status

    if not config.gateway_routes or paths.staged:
        return
    st = routes_status(paths)
    if st is None or not st.get("address"):
        yield Check("gateway routes", PROBLEM, f"FL_GATEWAY_ROUTES {', '.join(map(str, config.gateway_routes))} "
                    "are not in place", "run flower-ctx configure (it finds the gateway and adds them)")
        return
    missing = [r for r, ok in (st.get("present") or {}).items() if not ok]
    if missing:
        yield Check("gateway routes", PROBLEM, f"missing: {', '.join(missing)} via {st['address']}",
                    "run flower-ctx configure (it adds them)")
    else:
        yield Check("gateway routes", OK, f"{', '.join(st['routes'])} via {st['address']} ({st.get('source')})")


def _gateway_checks(paths: Paths) -> Iterator[Check]:
    """A gateway: wg0, forwarding, the routes on wg0, the hub, the SuperLink through it."""
    from .gateway.health import inspect as inspect_gateway

    st = inspect_gateway(paths)
    fixes = dict(st.problems)
    if not st.configured:
        yield Check("configured", PROBLEM, "no runtime record for the gateway",
                    "run flower-ctx configure --role gateway")
        return
    if st.wg is None:
        yield Check("wireguard", PROBLEM, "wg0 is not up", "run flower-ctx configure --role gateway")
        return
    yield Check("wireguard", OK if st.wg.up else PROBLEM,
                f"wg0 {'up' if st.wg.up else 'down'} ({st.wg.backend}), {', '.join(st.wg.addresses)}, "
                f"mtu {st.wg.mtu}, public key {st.wg.public_key}", fixes.get("wg0 is down", ""))
    yield (Check("forwarding", OK, "IPv4 forwarding on") if st.forwarding else
           Check("forwarding", PROBLEM, "IPv4 forwarding is off: nothing reaches the SuperNodes",
                 "run flower-ctx configure --role gateway (it turns it on)"))
    if st.missing_routes:
        yield Check("routes", PROBLEM, f"missing on wg0: {', '.join(st.missing_routes)}",
                    "run flower-ctx configure --role gateway (it adds them)")
    else:
        yield Check("routes", OK, ", ".join(st.expected_routes) + " on wg0" if st.expected_routes else "none needed")
    for hub in st.dialled:
        short = hub["public_key"][:10] + "..."
        age = hub["handshake_age"]
        if age is None:
            yield Check("hub", PROBLEM, f"peer {short} ({hub['endpoint']}) never completed a handshake",
                        "check the hub's endpoint and UDP port, and that the hub lists this gateway's public key "
                        "(flower-ctx status here shows it)")
        elif age > STALE_HANDSHAKE_S:
            yield Check("hub", WARNING, f"peer {short}: last handshake {int(age)}s ago",
                        "the hub is gone or UDP is blocked between the zones")
        else:
            yield Check("hub", OK, f"peer {short} ({hub['endpoint']}): handshake {int(age)}s ago")
    sl = st.superlink
    if sl is None:
        yield Check("superlink", WARNING, "not checked: FL_SUPERLINK_ADDRESS is empty",
                    "set FL_SUPERLINK_ADDRESS (what the SuperNodes behind this gateway dial)")
    elif sl["ok"]:
        yield Check("superlink", OK, f"{sl['message']} (from {sl.get('from') or 'this VM'}, as the SuperNodes' "
                    "packets go)")
    else:
        key = f"SuperLink through this gateway: {sl['message']}"
        yield Check("superlink", PROBLEM, sl["message"], fixes.get(key, "check the SuperLink and the hub"))
