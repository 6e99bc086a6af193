"""Readiness that means ready: what a role publishes to OneGate and when (DESIGN section 8).

Order on every publication: the role's discovery attributes first (a ``straight`` child deployed on
READY must find them), then the health check, then ``FL_READY=YES`` + ``READY=YES`` only if it
passed. On failure ``FL_READY=NO``, a short sanitised ``FL_ERROR`` and ``READY`` withdrawn (deleted:
an empty value is refused by OneGate). The VM is read first and only differences are sent, so
republishing the same values changes nothing on the VM. OneGate trouble never raises out of
:func:`publish_ready`: it is reported in the result (configure's local work stands).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .errors import OneGateError
from .model import Config, HostPort
from .onegate import OneGateClient, check_name, check_value, encode_value, obj
from .variables import all_names

FLEET_PORT = 9092
MAX_ERROR_LEN = 200
# Attributes the builders below may produce: one of them no longer wanted (TLS or WireGuard turned
# off) is deleted from the VM so nobody discovers stale material.
MANAGED_ATTRS = (
    "FL_ROLE",
    "FL_VERSION",
    "FL_ENDPOINT",
    "FL_TLS",
    "FL_CA_CERT",
    "FL_CA_FINGERPRINT",
    "FL_CA_EXPIRES",
    "FL_CERT_EXPIRES",
    "FL_WG_PUBLIC_KEY",
    "FL_WG_TUNNEL_ADDRESS",
    "FL_NODE_PUBLIC_KEY",
    "FL_GRPC_KEEPALIVE_TIME",
    "FL_GRPC_KEEPALIVE_TIMEOUT",
    "FL_SUPERLINK",
)


# Deleted when no longer wanted: ours only. A CONTEXT variable's name (FL_GRPC_KEEPALIVE_TIME, ...)
# is never deleted, even though the SuperLink publishes one: OneFlow copies every answered input
# into the VM's USER_TEMPLATE under that name, and it is the operator's, not stale.
STALE_CANDIDATES = tuple(a for a in MANAGED_ATTRS if a not in all_names())


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str = ""  # why not, in operator terms (sanitised before it is published)


@dataclass(frozen=True)
class PublishResult:
    healthy: bool  # the health check passed
    ready: bool  # READY=YES is on the VM after this call
    sent: dict[str, str] = field(default_factory=dict)  # attributes written (only the differing ones)
    deleted: tuple[str, ...] = ()
    error: str | None = None  # the FL_ERROR text (published if OneGate took it)
    onegate_problem: str | None = None  # set when OneGate failed: the degraded state to report

    @property
    def degraded(self) -> bool:
        return self.onegate_problem is not None

    @property
    def changed(self) -> bool:
        return bool(self.sent or self.deleted)


# -- attribute builders (pure) ------------------------------------------------------------------


def format_endpoint(hp: HostPort) -> str:
    """``host:port`` for OneGate. IPv6 goes without brackets (``[``/``]`` break OneGate's quoting);
    the port is always last, so ``rpartition(':')`` reads it back unambiguously."""
    return f"{hp.host}:{hp.port}"


def primary_endpoint(config: Config, port: int = FLEET_PORT) -> HostPort | None:
    """``ip:port`` on the primary NIC (the lowest-numbered NIC with an address; IPv4 preferred)."""
    for nic in sorted(config.nics, key=lambda n: n.index):
        ip = nic.ip or nic.ip6
        if ip is not None:
            return HostPort(str(ip), port)
    return None


def superlink_attrs(
    config: Config,
    *,
    ca_pem: bytes | None = None,
    wg_public_key: str | None = None,
    endpoint: HostPort | None = None,
    cert_expires: str | None = None,
) -> dict[str, str]:
    """The SuperLink's discovery attributes (DESIGN section 8). ``ca_pem`` is required with TLS.
    ``cert_expires``: the server certificate's end of validity (ISO 8601, UTC)."""
    from .pem import fingerprint, load_certs

    attrs = {"FL_ROLE": "superlink", "FL_VERSION": config.flower_version}
    ep = endpoint or primary_endpoint(config)
    if ep is not None:
        attrs["FL_ENDPOINT"] = format_endpoint(ep)
    attrs["FL_TLS"] = "YES" if config.tls_enabled else "NO"
    if config.tls_enabled:
        if not ca_pem:
            raise ValueError("superlink_attrs: TLS is enabled but no CA certificate was given")
        attrs["FL_CA_CERT"] = encode_value(ca_pem)
        ca = load_certs(ca_pem)[0]
        attrs["FL_CA_FINGERPRINT"] = fingerprint(ca)
        attrs["FL_CA_EXPIRES"] = ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        if cert_expires:
            attrs["FL_CERT_EXPIRES"] = cert_expires
    if config.wg is not None and wg_public_key:
        attrs["FL_WG_PUBLIC_KEY"] = wg_public_key
    if config.wg is not None and not config.wg.unresolved:
        # The hub needs it for this VM's [Peer] AllowedIPs (a pool gives each VM its own).
        attrs["FL_WG_TUNNEL_ADDRESS"] = str(config.wg.address)
    attrs["FL_GRPC_KEEPALIVE_TIME"] = str(config.keepalive_time)
    attrs["FL_GRPC_KEEPALIVE_TIMEOUT"] = str(config.keepalive_timeout)
    return attrs


def supernode_attrs(
    config: Config, *, superlink: HostPort | None = None, wg_public_key: str | None = None,
    node_public_key: str | None = None,
) -> dict[str, str]:
    """The SuperNode's attributes: role, version, the SuperLink address it uses, its WG key, and its
    node key (the SuperLink of the same service admits it from there)."""
    attrs = {"FL_ROLE": "supernode", "FL_VERSION": config.flower_version}
    if node_public_key:
        attrs["FL_NODE_PUBLIC_KEY"] = node_public_key
    target = superlink or config.superlink_address
    if target is not None:
        attrs["FL_SUPERLINK"] = format_endpoint(target)
    if config.wg is not None and wg_public_key:
        attrs["FL_WG_PUBLIC_KEY"] = wg_public_key
    if config.wg is not None and not config.wg.unresolved:
        # The hub needs it for this VM's [Peer] AllowedIPs (a pool gives each VM its own).
        attrs["FL_WG_TUNNEL_ADDRESS"] = str(config.wg.address)
    return attrs


def gateway_attrs(config: Config, *, wg_public_key: str | None = None) -> dict[str, str]:
    """A gateway's attributes: its role, its WireGuard key and tunnel address (what the hub's [Peer]
    for this zone needs), and the SuperLink it checks. No Flower version: it runs no Flower."""
    attrs = {"FL_ROLE": "gateway"}
    if config.superlink_address is not None:
        attrs["FL_SUPERLINK"] = format_endpoint(config.superlink_address)
    if config.wg is not None and wg_public_key:
        attrs["FL_WG_PUBLIC_KEY"] = wg_public_key
    if config.wg is not None:
        attrs["FL_WG_TUNNEL_ADDRESS"] = str(config.wg.address)
    return attrs


# -- FL_ERROR sanitising ------------------------------------------------------------------------

_PEM_RE = re.compile(r"-----BEGIN[^\n]*?-----.*?(?:-----END[^\n]*?-----|\Z)", re.S)
# Long base64-looking runs (keys, tokens). Lowercase hex (fingerprints) is kept: it helps diagnosis.
_B64_RUN_RE = re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}")
_REPLACE = str.maketrans({",": ";", '"': "'", "\\": "/", "[": "(", "]": ")", "\n": " ", "\r": " ", "\t": " "})


def sanitize_error(text: str, secrets: Iterable[str] = ()) -> str:
    """A one-line FL_ERROR: no key material, nothing OneGate cannot store, at most MAX_ERROR_LEN."""
    out = text
    for s in secrets:
        if s:
            out = out.replace(s, "***")
    out = _PEM_RE.sub("<pem>", out)
    out = _B64_RUN_RE.sub(lambda m: m.group(0) if re.fullmatch(r"[0-9a-f]+", m.group(0)) else "***", out)
    out = out.translate(_REPLACE)
    out = "".join(c for c in out if c.isprintable())
    out = " ".join(out.split())
    if len(out) > MAX_ERROR_LEN:
        out = out[: MAX_ERROR_LEN - 3].rstrip() + "..."
    return out or "health check failed"


# -- publishing ----------------------------------------------------------------------------------


def publish_ready(
    client: OneGateClient,
    attrs: Mapping[str, str],
    health: Callable[[], HealthResult],
    stale: Iterable[str] | None = None,
) -> PublishResult:
    """Publish ``attrs``, run ``health``, then report ready or not (see the module doc).
    ``stale``: attributes to delete when present (default: the managed ones not in ``attrs``)."""
    wanted = {check_name(k): check_value(check_name(k), v) for k, v in attrs.items()}
    sent: dict[str, str] = {}
    deleted: list[str] = []
    current: dict[str, str] | None = None
    problem: str | None = None
    try:
        current = _user_template(client)
        if stale is None:
            stale = [k for k in STALE_CANDIDATES if k not in wanted]
        _apply(client, current, wanted, stale=stale, sent=sent, deleted=deleted)
    except OneGateError as exc:
        problem = client.redact(str(exc))

    result = _run_health(health)
    error = None if result.ok else sanitize_error(client.redact(result.detail or "health check failed"))
    ready = False
    if current is not None and problem is None:
        try:
            if result.ok:
                _apply(
                    client, current, {"FL_READY": "YES", "READY": "YES"}, stale=["FL_ERROR"], sent=sent, deleted=deleted
                )
                ready = True
            else:
                # Withdraw READY first: a reader must never see READY=YES next to FL_READY=NO.
                _apply(client, current, {}, stale=["READY"], sent=sent, deleted=deleted)
                _apply(
                    client,
                    current,
                    {"FL_READY": "NO", "FL_ERROR": error or "health check failed"},
                    stale=[],
                    sent=sent,
                    deleted=deleted,
                )
        except OneGateError as exc:
            problem = client.redact(str(exc))
    return PublishResult(
        healthy=result.ok,
        ready=ready,
        sent=sent,
        deleted=tuple(deleted),
        error=error,
        onegate_problem=problem,
    )


def _user_template(client: OneGateClient) -> dict[str, str]:
    doc = client.get_vm()
    ut = obj(obj(doc.get("VM"), "VM").get("USER_TEMPLATE"), "VM.USER_TEMPLATE")
    # Vector attributes come back as objects; only string scalars can equal what we publish.
    return {str(k).upper(): v for k, v in ut.items() if isinstance(v, str)}


def _apply(
    client: OneGateClient,
    current: dict[str, str],
    wanted: Mapping[str, str],
    *,
    stale: Iterable[str],
    sent: dict[str, str],
    deleted: list[str],
) -> None:
    """Make ``current`` (the VM's view, kept in step) hold ``wanted`` and none of ``stale``:
    one PUT for the differing values, one delete per stale attribute present."""
    diff = {k: v for k, v in wanted.items() if current.get(k) != v}
    if diff:
        client.update_vm(diff)
        current.update(diff)
        sent.update(diff)
    for name in stale:
        if name in current:
            client.delete_vm_attr(name)  # absent on the server (raced away) is fine too
            current.pop(name, None)
            deleted.append(name)


def _run_health(health: Callable[[], HealthResult]) -> HealthResult:
    try:
        result = health()
    except Exception as exc:  # a crashing check is a failed check, reported, never READY
        return HealthResult(False, f"health check crashed: {type(exc).__name__}: {exc}")
    if isinstance(result, HealthResult):
        return result
    # Any result with ``ok``/``detail`` (e.g. health.Health) counts; anything else must be a bool.
    if hasattr(result, "ok"):
        return HealthResult(result.ok is True, str(getattr(result, "detail", "") or ""))
    if isinstance(result, bool):
        return HealthResult(result, "" if result else "health check failed")
    return HealthResult(False, f"health check returned {type(result).__name__}, not a result")
