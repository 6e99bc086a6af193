"""``flower-ctx status``: what this VM is and whether it is ready. No secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..errors import FlowerCtxError
from ..inspect import detect_role, facts
from ._common import ROLES, paths_for, read_root_option


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _wg_rows(wg: dict[str, Any] | None, rows: list[tuple[str, str]]) -> None:
    if not wg:
        return
    rows.append(("wireguard", f"{wg['interface']} {'up' if wg['up'] else 'down'} ({wg['backend']}), "
                              f"{','.join(wg['addresses'])}, port {wg['listen_port']}, mtu {wg['mtu']}"))
    rows.append(("wg public key", str(wg["public_key"])))
    for p in wg["peers"]:
        rows.append(("wg peer", f"{p['public_key']} {p['endpoint'] or '-'} handshake "
                                f"{_age(p['latest_handshake_age'])} rx {p['rx_bytes']} tx {p['tx_bytes']}"))


def _onegate_row(og: dict[str, Any] | None, rows: list[tuple[str, str]]) -> None:
    if og:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(og.get("time", 0)))
        if og.get("onegate_problem") or not og.get("published", False):
            text = f"{when}: not published ({og.get('onegate_problem') or og.get('reason')})"
        else:
            text = f"{when}: {'READY=YES' if og.get('ready') else 'FL_READY=NO ' + repr(og.get('error'))}"
        rows.append(("onegate", text))
    else:
        rows.append(("onegate", "nothing published yet"))


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def render_gateway(f: dict[str, Any]) -> list[str]:
    """A gateway: the tunnel, forwarding, routes, the hub's handshake, the SuperLink through it."""
    g = f["gateway"]
    rows: list[tuple[str, str]] = [("role", "gateway (forwards between this zone and the tunnel; no Flower)")]
    if not f["configured"]:
        rows.append(("configured", "no: run flower-ctx configure --role gateway"))
    _wg_rows(f.get("wireguard"), rows)
    if f.get("wireguard") is None:
        rows.append(("wireguard", "wg0 is not up"))
    rows.append(("forwarding", "on" if g["forwarding"] else "OFF"))
    routes = g["routes"]
    missing = set(routes["missing"])
    rows.append(("routes", ", ".join(f"{r}{' (MISSING)' if r in missing else ''}" for r in routes["expected"])
                 or "none"))
    for hub in g["hub"]:
        rows.append(("hub", f"{hub['public_key']} {hub['endpoint'] or '-'} handshake {_age(hub['handshake_age'])}"))
    sl = g.get("superlink")
    if sl:
        rows.append(("superlink", f"{'ok' if sl['ok'] else 'FAILED'}: {sl['message']}"
                                  + (f" (from {sl['from']})" if sl.get("from") else "")))
    else:
        rows.append(("superlink", "not checked (FL_SUPERLINK_ADDRESS is empty)"))
    ca = f["tls"].get("ca")
    if ca:
        rows.append(("ca", f"{ca['fingerprint']} expires {ca['not_after']}" if not ca["problem"]
                     else f"{ca['path']}: {ca['problem']}"))
    for p in g["problems"]:
        rows.append(("problem", f"{p['problem']}; fix: {p['fix']}"))
    _onegate_row(f.get("onegate"), rows)
    return _aligned(rows)


def render(f: dict[str, Any]) -> list[str]:
    if f["role"] == "gateway":
        return render_gateway(f)
    rows: list[tuple[str, str]] = [("role", f["role"])]
    fv = f["flower_version"]
    rows.append(("flower", f"{fv['configured'] or '?'} configured, {fv['installed'] or 'not installed'} installed"))
    svc = f["service"]
    rows.append(("service", f"{svc['detail']} ({svc['manager']})"))
    if f["role"] == "superlink":
        rows.append(("fleet api", str(f.get("fleet_api_address"))))
    else:
        rows.append(("superlink", str(f.get("superlink_address") or "not known yet (OneGate discovery)")))
    fed = f.get("federation")
    if fed is not None:
        if "error" in fed:
            rows.append(("supernodes", f"unknown ({fed['error']})"))
        else:
            registered = [n for n in fed["supernodes"] if n["status"] != "unregistered"]
            rows.append(("supernodes", f"{fed['connected']} connected of {len(registered)} registered "
                                       f"(SuperNode authentication {'on' if f.get('supernode_auth') else 'off'})"))
            for n in fed["supernodes"]:
                beat = _age(n["last_heartbeat_age"]) if n["status"] == "online" else n["status"]
                rows.append(("supernode", f"{n['name'] or '-'} {n['node_id']} {n['status']}, heartbeat {beat}, "
                                          f"admitted {n['admitted']}"))
            for r in fed["runs"]:
                rows.append(("run", f"{r['run_id']} {r['app']} {r['status']}"))
    ka = f.get("keepalive") or {}
    if ka:
        from ..runtime.eras import HTTP, UnsupportedFlower, for_version, keepalive_summary

        try:
            http = for_version(fv["installed"]) is HTTP
        except UnsupportedFlower:
            http = False
        rows.append(("keepalive", keepalive_summary(fv["installed"], int(ka["time_s"]), int(ka["timeout_s"])) if http
                     else f"ping every {ka.get('time_s')}s, dead after {ka.get('timeout_s')}s without ACK"))
    tls = f["tls"]
    if not tls["enabled"]:
        rows.append(("tls", "off"))
    for key, label in (("ca", "ca"), ("server", "server cert")):
        info = tls.get(key)
        if info:
            text = (f"{info['fingerprint']} expires {info['not_after']}" if not info["problem"]
                    else f"{info['path']}: {info['problem']}")
            rows.append((label, text))
            if key == "server" and info["sans"]:
                rows.append(("server sans", ",".join(info["sans"])))
    bundle = tls.get("trust_bundle") or []
    if len(bundle) > 1:
        rows.append(("trust bundle", ", ".join(bundle)))
    rot = tls.get("rotation")
    if rot:
        if rot.get("phase") == "started":
            online = [n for n in (f.get("federation") or {}).get("supernodes", []) if n["status"] == "online"]
            behind = [n["name"] or str(n["node_id"]) for n in online if rot.get("next") not in n.get("trusts", [])]
            rows.append(("ca rotation", f"started: next CA {rot.get('next')}; " + (
                f"not trusted yet by {', '.join(behind)}" if behind else
                "every SuperNode online trusts it: flower-ctx ca rotate --finish")))
        else:
            rows.append(("ca rotation", f"finished: previous CA {rot.get('previous')} still in the bundle "
                                        "(flower-ctx ca rotate --drop-old)"))
    pin = tls.get("pinned_ca")
    if pin:
        rows.append(("pinned ca", f"{pin['fingerprint']} (learnt from OneGate, SuperLink VM {pin.get('vm') or '?'})"))
        if pin.get("refused"):
            r = pin["refused"]
            rows.append(("refused ca", f"{r.get('fingerprint')} published by VM {r.get('vm') or '?'}: not trusted "
                                       "(FL_SSL_CA_CERTFILE or `flower-ctx ca forget` if it is genuine)"))
    _wg_rows(f.get("wireguard"), rows)
    gr = f.get("gateway_routes")
    if gr and gr.get("address"):
        present = gr.get("present") or {}
        shown = ", ".join(f"{r}{'' if present.get(r, True) else ' (MISSING)'}" for r in gr["routes"])
        rows.append(("site gateway", f"{gr['address']} ({gr.get('source') or '?'}): {shown}"))
    _onegate_row(f.get("onegate"), rows)
    return _aligned(rows)


@click.command("status")
@click.option("--role", type=click.Choice(ROLES), default=None, help="Role to show (default: the one configured).")
@read_root_option
@click.option("--json", "as_json", is_flag=True, help="Print stable JSON (see docs/json-output.md).")
def command(role: str | None, root: Path | None, as_json: bool) -> None:
    """Show role, Flower version, service state, endpoint, TLS, WireGuard, keepalive and the last OneGate report.

    On a gateway: wg0, forwarding, the routes on wg0, the hub's handshake age and the SuperLink checked
    through the gateway (a TLS handshake with the CA from the gateway's zone address)."""
    paths = paths_for(root)
    role = role or detect_role(paths)
    if role is None:
        raise FlowerCtxError(f"not configured: no runtime config under {paths.config_dir} "
                             "(run flower-ctx configure --role ROLE, or pass --role)")
    f = facts(paths, role)
    if as_json:
        click.echo(json.dumps({"status_version": 1, **f}, indent=2, sort_keys=True))
    else:
        for line in render(f):
            click.echo(line)
