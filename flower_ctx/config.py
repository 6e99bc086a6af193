"""Validate raw CONTEXT values into a frozen ``Config`` for one role.

Total validation: every problem of every variable is collected and raised at once as a
``ValidationError`` of ``(NAME, message)`` pairs, named as the operator wrote them (canonical or
``ONEAPP_`` alias). Nothing here touches the machine.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import cdrom
from .errors import ValidationError
from .model import Config, Nic, OneGateAccess, PkiMaterial, Role, Secret, WgConfig, WgPeer
from .peers import parse_peer_sections
from .values import MAX_VALUE_LEN, Invalid, ip_address, onegate_url_ok, show
from .variables import BY_NAME, REGISTRY, Variable, all_names

_NIC_RE = re.compile(r"ETH([0-9]+)_(IP|IP6|MASK)\Z")


@dataclass(frozen=True)
class Effective:
    """One variable's effective value for ``context check``: never the secret itself."""

    name: str
    value: str  # display form; secrets masked
    source: str  # "default", "context", "context (ONEAPP_X)", "environment", "unset", "ignored: ..."


def _installed_flower_by_default(typed: dict[str, Any], table: list[Effective]) -> None:
    """FLOWER_VERSION unset: the Flower this virtualenv has (the image's), when flower-ctx runs it.
    No release is installed at boot unless CONTEXT asks for one."""
    from importlib import metadata

    from .values import flower_version

    try:
        installed = metadata.version("flwr")
        typed["FLOWER_VERSION"] = flower_version(installed)
    except (metadata.PackageNotFoundError, Invalid, ValueError):
        return
    for i, eff in enumerate(table):
        if eff.name == "FLOWER_VERSION":
            table[i] = Effective(eff.name, installed, "default (the installed Flower)")


class _Collector:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []

    def err(self, name: str, msg: str) -> None:
        self.problems.append((name, msg))


def _pick(var: Variable, values: Mapping[str, str], c: _Collector) -> tuple[str | None, str]:
    """The raw value of ``var`` and the name it was given under. Empty means unset (OneFlow)."""
    canon = values.get(var.name, "")
    alias = values.get(var.alias, "")
    if canon and alias and canon != alias and not _same(var, canon, alias):
        c.err(var.name, f"set both as {var.name} and as {var.alias} with different values; keep one")
        return None, var.name
    if canon:
        return canon, var.name
    if alias:
        return alias, var.alias
    return None, var.name


def _same(var: Variable, a: str, b: str) -> bool:
    """Two spellings of one value (``yes``/``YES``, ``info``/``INFO``) are not a conflict."""
    try:
        return bool(var.parse(a) == var.parse(b))
    except Invalid:
        return False


def resolve(
    role: Role | str,
    values: Mapping[str, str],
    *,
    token: str | None = None,
    env_names: frozenset[str] = frozenset(),
    now: datetime.datetime | None = None,
    files: Callable[[str], bytes] | None = None,
) -> tuple[Config, list[Effective]]:
    """Validate ``values`` for ``role``; return the Config and the effective-value table.
    ``files`` reads a ``file:NAME`` value's file from the context CD-ROM (None: not available)."""
    try:
        role = Role(role)
    except ValueError:
        raise ValidationError([("--role", f"must be superlink, supernode or gateway, got {show(str(role))}")]) \
            from None
    c = _Collector()
    typed: dict[str, Any] = {}
    given: dict[str, str] = {}  # canonical -> name used in CONTEXT, for messages
    table: list[Effective] = []
    explicit: set[str] = set()  # canonical names given a value (not left to their default)
    inline_secrets: list[str] = []  # secrets written in CONTEXT itself (readable through OneGate)

    for var in REGISTRY:
        raw, used = _pick(var, values, c)
        given[var.name] = used
        if raw is not None:
            explicit.add(var.name)
        if raw is not None and not var.applies_to(role):
            # A OneFlow template shared by roles (and the CLI filling inputs with their defaults) gives
            # other roles' variables their default values: nothing the operator meant, nothing to say.
            if raw.strip() != (var.default or ""):
                c.warnings.append(f"{used}: ignored, it applies to the {_role_names(var)} only")
            table.append(Effective(var.name, _mask(var, raw), f"ignored (not for {role.value})"))
            raw = None
            typed[var.name] = _parse_default(var)
            continue
        if raw is None:
            typed[var.name] = _parse_default(var)
            shown = var.display(typed[var.name]) if typed[var.name] is not None else ""
            table.append(Effective(var.name, shown, "default" if var.default is not None else "unset"))
            continue
        from_cd = None
        try:
            if len(raw) > MAX_VALUE_LEN:
                raise Invalid(f"is {len(raw)} characters long; at most {MAX_VALUE_LEN} are accepted")
            if var.type in ("text64", "password") and raw.startswith(cdrom.PREFIX):
                from_cd = _from_cdrom(raw, files)
                raw = from_cd[1]
            elif var.secret:
                inline_secrets.append(used)
            typed[var.name] = var.parse(raw)
        except Invalid as exc:
            c.err(used, str(exc))
            typed[var.name] = None
            table.append(Effective(var.name, "(invalid)", _source(var, used, env_names)))
            continue
        shown = "********" if var.secret else var.display(typed[var.name])
        source = _source(var, used, env_names) + (f", context CD-ROM file {from_cd[0]}" if from_cd else "")
        table.append(Effective(var.name, shown, source))

    if "FLOWER_VERSION" not in explicit:
        _installed_flower_by_default(typed, table)
    ignored = _names(values, c)
    nics = _nics(values, c)
    onegate = _onegate(values, token, c)
    _keepalive_rules(typed, given, c)
    pki = _tls_rules(role, typed, given, values, onegate, c, now)
    wg = _wg_rules(role, typed, given, c, onegate, nics, explicit)
    trust = _trust_rules(role, typed, given, nics, wg, c, explicit)
    gateway_routes = _gateway_rules(role, typed, given, nics, wg, onegate, c)
    _appliance_role(role, typed, given, c)

    if c.problems:
        raise ValidationError(c.problems)
    config = Config(
        role=role,
        flower_version=".".join(str(x) for x in typed["FLOWER_VERSION"]),
        tls_enabled=typed["FL_TLS_ENABLED"],
        log_level=typed["FL_LOG_LEVEL"],
        isolation=typed["FL_ISOLATION"],
        keepalive_time=typed["FL_GRPC_KEEPALIVE_TIME"],
        keepalive_timeout=typed["FL_GRPC_KEEPALIVE_TIMEOUT"],
        pki=pki,
        cert_extra_san=typed["FL_CERT_EXTRA_SAN"] or (),
        database=typed["FL_DATABASE"],
        superlink_address=typed["FL_SUPERLINK_ADDRESS"],
        node_config=typed["FL_NODE_CONFIG"] or (),
        max_retries=typed["FL_MAX_RETRIES"],
        max_wait_time=typed["FL_MAX_WAIT_TIME"],
        wg=wg,
        nics=nics,
        onegate=onegate,
        **trust,
        gateway_routes=gateway_routes,
        gateway_address=typed["FL_GATEWAY_ADDRESS"] if gateway_routes else None,
        app_dependencies=typed["FL_APP_DEPENDENCIES"] or (),
        runtime_dependency_install=typed["FL_RUNTIME_DEPENDENCY_INSTALL"],
        warnings=tuple(c.warnings),
        ignored=ignored,
        inline_secrets=tuple(inline_secrets),
        bootstrap_wait=typed["FL_BOOTSTRAP_WAIT"],
    )
    return config, table


def _from_cdrom(raw: str, files: Callable[[str], bytes] | None) -> tuple[str, str]:
    """(file name, content) of a ``file:NAME`` value, or Invalid naming the problem."""
    try:
        name = cdrom.name_of(raw)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    assert name is not None
    if files is None:
        raise Invalid(f"file:{name} is read from the VM's context CD-ROM, which is not available here")
    try:
        data = files(name)
    except cdrom.CdromError as exc:
        raise Invalid(str(exc)) from None
    try:
        return name, data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"file:{name} is not UTF-8 text") from None


def load_config(
    role: Role | str,
    values: Mapping[str, str],
    *,
    token: str | None = None,
    now: datetime.datetime | None = None,
) -> Config:
    """Validate ``values`` for ``role``. Raises ``ValidationError`` listing every problem."""
    return resolve(role, values, token=token, now=now)[0]


def _trust_rules(
    role: Role, typed: dict[str, Any], given: dict[str, str], nics: tuple[Nic, ...], wg: WgConfig | None,
    c: _Collector, explicit: set[str],
) -> dict[str, Any]:
    """SuperNode authentication, the firewall, and TLS off only where nothing crosses a public network."""
    tls, insecure_ok = typed["FL_TLS_ENABLED"], typed["FL_ALLOW_INSECURE"]
    if role is Role.GATEWAY:  # forwards what its SuperNodes send; TLS is theirs (it only probes)
        return {"firewall": bool(typed["FL_FIREWALL"])}
    if tls is False and not insecure_ok:
        fix = "set FL_TLS_ENABLED=YES, or FL_ALLOW_INSECURE=YES if you mean it"
        if role is Role.SUPERLINK:
            public = [(f"ETH{n.index}_IP" if a == n.ip else f"ETH{n.index}_IP6", a)
                      for n in nics for a in (n.ip, n.ip6) if a is not None and a.is_global]
            if public:
                name, addr = public[0]
                c.err(given["FL_TLS_ENABLED"], f"is NO but the Fleet API listens on every address of this VM, "
                      f"and {name} {addr} is public: models would cross it unencrypted and anyone could join; {fix}")
        else:
            target = typed["FL_SUPERLINK_ADDRESS"]
            if target is not None and (target.ip is None or target.ip.is_global):
                what = "a DNS name, not provably private" if target.ip is None else "a public address"
                c.err(given["FL_SUPERLINK_ADDRESS"], f"{target} is {what} and FL_TLS_ENABLED=NO: models would cross "
                      f"it unencrypted; {fix}")
    if role is not Role.SUPERLINK:
        # Without TLS the SuperNode presents no key (Flower needs TLS for it): nothing to warn about.
        return {"allow_insecure": bool(insecure_ok), "supernode_auth": bool(typed["FL_SUPERNODE_AUTH"]) and tls}
    auth = bool(typed["FL_SUPERNODE_AUTH"])
    if auth and not tls:
        if "FL_SUPERNODE_AUTH" in explicit:
            c.err(given["FL_SUPERNODE_AUTH"], "needs TLS (Flower refuses SuperNode authentication without it): set "
                  "FL_TLS_ENABLED=YES or FL_SUPERNODE_AUTH=NO")
        else:
            c.warnings.append("FL_SUPERNODE_AUTH: off because FL_TLS_ENABLED=NO (it needs TLS): any SuperNode that "
                              "reaches the Fleet port can join")
        auth = False
    tunnel_only = bool(typed["FL_FLEET_ON_TUNNEL_ONLY"])
    if tunnel_only and wg is None and not any(n.startswith(("FL_WG", "ONEAPP_FL_WG")) for n, _ in c.problems):
        c.err(given["FL_FLEET_ON_TUNNEL_ONLY"], "is YES but wg0 is off: set FL_WG_ENABLED=YES (or this to NO)")
    if tunnel_only and typed["FL_FIREWALL"] is False:
        c.err(given["FL_FLEET_ON_TUNNEL_ONLY"], "is enforced by the appliance's firewall: set FL_FIREWALL=YES")
    if typed["FL_FLEET_ALLOWED_SOURCES"] and typed["FL_FIREWALL"] is False:
        c.warnings.append("FL_FLEET_ALLOWED_SOURCES: not enforced because FL_FIREWALL=NO")
    return {
        "supernode_auth": auth,
        "admitted_keys": typed["FL_SUPERNODE_PUBLIC_KEYS"] or (),
        "auth_onegate": bool(typed["FL_SUPERNODE_AUTH_ONEGATE"]),
        "firewall": bool(typed["FL_FIREWALL"]),
        "fleet_sources": tuple(typed["FL_FLEET_ALLOWED_SOURCES"] or ()),
        "fleet_tunnel_only": tunnel_only,
        "allow_insecure": bool(insecure_ok),
    }


def _role_names(var: Variable) -> str:
    names = [r.label for r in Role if r in var.roles]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def _source(var: Variable, used: str, env_names: frozenset[str]) -> str:
    base = "environment" if used in env_names else "context"
    return base if used == var.name else f"{base} ({used})"


def _mask(var: Variable, raw: str) -> str:
    return "********" if var.secret else show(raw, 60)


def _parse_default(var: Variable) -> Any:
    return None if var.default is None else var.parse(var.default)


# Names OpenNebula and one-context put in every CONTEXT that flower-ctx reads itself.
_PLATFORM = re.compile(r"(ETH[0-9]+_(IP|IP6)|ONEGATE_ENDPOINT|VMID)\Z")
_OURS = ("FL_", "FLOWER_", "ONEAPP_FL_", "ONEAPP_FLOWER_")


def _names(values: Mapping[str, str], c: _Collector) -> tuple[str, ...]:
    """Only the registry's own names are validated. Anything else is ignored: a name that is a
    registry name in another case is an error (it would silently not apply); a name that looks
    like one of ours (a typo) gets a warning; the rest is other software's CONTEXT."""
    import difflib

    known = all_names()
    ignored: list[str] = []
    for name in values:
        if name in known or _PLATFORM.match(name):
            continue
        up = name.upper() if name.isascii() else name
        if up in known:
            c.err(name, f"names are upper-case: write {up} (as {name} it would not be read)")
            continue
        ignored.append(name)
        if up.startswith(_OURS) and values[name]:
            close = difflib.get_close_matches(up, sorted(known), n=1)
            c.warnings.append(f"{name}: not a flower-ctx variable, ignored"
                              + (f" (did you mean {close[0]}?)" if close else ""))
    return tuple(sorted(ignored))


def _nics(values: Mapping[str, str], c: _Collector) -> tuple[Nic, ...]:
    found: dict[int, dict[str, Any]] = {}
    masks: dict[int, str] = {}
    for name, raw in values.items():
        m = _NIC_RE.match(name)
        if not m or not raw:
            continue
        idx, kind = int(m.group(1)), m.group(2)
        if kind == "MASK":  # never validated before: a mask that does not parse is left out, not an error
            masks[idx] = raw
            continue
        try:
            addr = ip_address(raw)
        except Invalid:
            addr = None
        want = 4 if kind == "IP" else 6
        if addr is None or addr.version != want:
            c.err(name, f"{show(raw)} is not an IPv{want} address")
            continue
        found.setdefault(idx, {})[kind] = addr
    return tuple(Nic(i, found[i].get("IP"), found[i].get("IP6"), _nic_network(found[i].get("IP"), masks.get(i)))
                 for i in sorted(found))


def _nic_network(ip: Any, mask: str | None) -> Any:
    """The IPv4 network of ``ETHn_IP``/``ETHn_MASK`` (None when either is missing or the mask is odd)."""
    import ipaddress

    if ip is None or mask is None or ip.version != 4:
        return None
    try:
        return ipaddress.ip_network(f"{ip}/{mask}", strict=False)
    except ValueError:
        return None


def onegate_access(values: Mapping[str, str], token: str | None) -> OneGateAccess:
    """The VM's OneGate access from raw CONTEXT values, also when other variables are invalid (a
    failed configure still reports itself); invalid endpoint or VMID give no access."""
    return _onegate(values, token, _Collector())


def _onegate(values: Mapping[str, str], token: str | None, c: _Collector) -> OneGateAccess:
    endpoint = values.get("ONEGATE_ENDPOINT") or None
    vmid = values.get("VMID") or None
    if endpoint is not None and not onegate_url_ok(endpoint):
        c.err("ONEGATE_ENDPOINT", f"{show(endpoint)} is not an http(s) URL such as http://169.254.16.9:5030")
        endpoint = None
    if vmid is not None and not re.fullmatch(r"[0-9]{1,12}", vmid):
        c.err("VMID", f"must be the numeric VM id, got {show(vmid)}")
        vmid = None
    return OneGateAccess(endpoint, vmid, Secret(token.encode()) if token else None)


def _keepalive_rules(typed: dict[str, Any], given: dict[str, str], c: _Collector) -> None:
    t, to = typed["FL_GRPC_KEEPALIVE_TIME"], typed["FL_GRPC_KEEPALIVE_TIMEOUT"]
    if t is not None and to is not None and to >= t:
        c.err(
            given["FL_GRPC_KEEPALIVE_TIMEOUT"],
            f"must be below {given['FL_GRPC_KEEPALIVE_TIME']} ({t} s), got {to}; "
            "the ping must be answered before the next one is due",
        )


def _tls_rules(
    role: Role,
    typed: dict[str, Any],
    given: dict[str, str],
    values: Mapping[str, str],
    onegate: OneGateAccess,
    c: _Collector,
    now: datetime.datetime | None,
) -> PkiMaterial:
    from . import pem  # cryptography is imported only when a PEM value is actually set

    ca_n, cert_n, key_n = (given[n] for n in ("FL_SSL_CA_CERTFILE", "FL_SSL_CERTFILE", "FL_SSL_KEYFILE"))
    ca_raw, cert_raw, key_raw = (typed[n] for n in ("FL_SSL_CA_CERTFILE", "FL_SSL_CERTFILE", "FL_SSL_KEYFILE"))
    raw_set = {
        n: bool(values.get(n) or values.get("ONEAPP_" + n))
        for n in ("FL_SSL_CA_CERTFILE", "FL_SSL_CERTFILE", "FL_SSL_KEYFILE")
    }
    tls = typed["FL_TLS_ENABLED"]

    if role is not Role.SUPERLINK:
        ca_cert = None
        if ca_raw is not None:
            ca_cert = _load_ca(ca_raw, ca_n, c, now)
        if role is Role.GATEWAY:
            if tls and typed["FL_SUPERLINK_ADDRESS"] is not None and ca_raw is None and ca_n not in dict(c.problems):
                c.warnings.append(f"{ca_n}: not set; the gateway checks its SuperLink with a TCP connection only "
                                  "(set it to check the TLS handshake its SuperNodes make)")
        elif tls and typed["FL_SUPERLINK_ADDRESS"] is not None and not raw_set["FL_SSL_CA_CERTFILE"]:
            if onegate.endpoint:
                c.warnings.append(
                    f"{ca_n}: not set; the SuperNode will trust the CA the SuperLink of its own OneFlow service "
                    "publishes in OneGate. Across zones that does not exist: set FL_SSL_CA_CERTFILE"
                )
            else:
                c.err(
                    ca_n,
                    "required: TLS is on and FL_SUPERLINK_ADDRESS is set, so the SuperNode must be told which CA "
                    "to trust (base64 of the SuperLink's ca.crt: run `flower-ctx ca export` on the SuperLink)",
                )
        if not tls and ca_raw is not None:
            c.warnings.append(f"{ca_n}: ignored because FL_TLS_ENABLED=NO")
        return PkiMaterial(ca_pem=ca_raw if ca_cert is not None else None)

    present = [n for n in ("FL_SSL_CA_CERTFILE", "FL_SSL_CERTFILE", "FL_SSL_KEYFILE") if raw_set[n]]
    if not present:
        return PkiMaterial()
    if not tls:
        c.warnings.append(f"{', '.join(given[n] for n in present)}: ignored because FL_TLS_ENABLED=NO")
        return PkiMaterial()
    if len(present) != 3:
        missing = [given[n] for n in ("FL_SSL_CA_CERTFILE", "FL_SSL_CERTFILE", "FL_SSL_KEYFILE") if not raw_set[n]]
        for name in missing:
            c.err(
                name,
                f"required because {' and '.join(given[n] for n in present)} "
                f"{'is' if len(present) == 1 else 'are'} set: operator PKI needs the CA, the certificate and its "
                "key (or none of them, to let flower-ctx generate its own)",
            )
        # Still check what was given, so every problem is reported in one run.
        if ca_raw is not None:
            _load_ca(ca_raw, ca_n, c, now)
        if cert_raw is not None:
            _load(pem.load_certs, cert_raw, cert_n, c)
        if key_raw is not None:
            _load(pem.load_private_key, key_raw, key_n, c)
        return PkiMaterial()
    if ca_raw is None or cert_raw is None or key_raw is None:
        return PkiMaterial()  # their own errors are already reported
    ca_cert = _load_ca(ca_raw, ca_n, c, now)
    chain = _load(pem.load_certs, cert_raw, cert_n, c)
    key = _load(pem.load_private_key, key_raw, key_n, c)
    if chain is not None:
        problem = pem.validity_problem(chain[0], now)
        if problem:
            c.err(cert_n, f"the server certificate is {problem}; issue a new one")
        if key is not None and not pem.key_matches_cert(key, chain[0]):
            c.err(key_n, f"does not match the certificate in {cert_n} (it is the key of another certificate)")
        if ca_cert is not None and not any(pem.chains_to(chain, ca) for ca in ca_cert):
            c.err(
                cert_n,
                f"does not chain to the CA in {ca_n} (issuer {chain[0].issuer.rfc4514_string()!r}, CA "
                f"{ca_cert[0].subject.rfc4514_string()!r}); include intermediates after the certificate",
            )
    if typed["FL_CERT_EXTRA_SAN"]:
        c.warnings.append(
            f"{given['FL_CERT_EXTRA_SAN']}: ignored under operator PKI (the certificate's own SANs apply)"
        )
    return PkiMaterial(ca_pem=ca_raw, cert_pem=cert_raw, key_pem=Secret(key_raw))


def _load(loader: Any, raw: bytes, name: str, c: _Collector) -> Any:
    """``loader(raw)``, or None with the PEM problem recorded against ``name``."""
    from . import pem

    try:
        return loader(raw)
    except pem.PemError as exc:
        c.err(name, str(exc))
        return None


MAX_TRUST_BUNDLE = 3  # a CA, the next one during a rotation, the previous one after it


def _load_ca(raw: bytes, name: str, c: _Collector, now: datetime.datetime | None) -> Any:
    """The CA (the first certificate); a trust bundle of up to MAX_TRUST_BUNDLE CAs (a rotation's
    current and next CA) is accepted, each a valid CA certificate. Returns the list of CAs."""
    from . import pem

    certs = _load(pem.load_certs, raw, name, c)
    if certs is None:
        return None
    if len(certs) > MAX_TRUST_BUNDLE:
        c.err(name, f"holds {len(certs)} certificates; give the CA certificate (or, during a CA rotation, the "
                    f"bundle `flower-ctx ca export` prints: at most {MAX_TRUST_BUNDLE})")
        return None
    for i, ca in enumerate(certs, start=1):
        which = "" if len(certs) == 1 else f" (certificate {i} of the bundle)"
        if not pem.is_ca(ca):
            c.err(name, f"is not a CA certificate{which} (no basicConstraints CA:TRUE); give the CA that signed the "
                        "server certificate, not the server certificate itself")
            return None
        problem = pem.validity_problem(ca, now)
        if problem:
            c.err(name, f"the CA certificate{which} is {problem}")
            return None
    return certs


def is_pool(address: Any) -> bool:
    """FL_WG_ADDRESS given as a network (host part all zero, room for hosts): a pool from which each
    VM of a role takes its own address (identity.py). 10.10.9.0/31 and /32 stay host addresses."""
    net = address.network
    return address.ip == net.network_address and net.num_addresses >= 4


def _wg_rules(
    role: Role, typed: dict[str, Any], given: dict[str, str], c: _Collector, onegate: OneGateAccess,
    nics: tuple[Nic, ...] = (), explicit: frozenset[str] | set[str] = frozenset(),
) -> WgConfig | None:
    wg_names = [var.name for var in REGISTRY if var.group == "wireguard" and var.name != "FL_WG_ENABLED"]
    if role is Role.GATEWAY:
        # A gateway is a WireGuard node that forwards: both are what it is, not options.
        for name, what in (("FL_WG_ENABLED", "its tunnel"), ("FL_WG_FORWARD", "forwarding")):
            if name in explicit and typed[name] is False:
                c.err(given[name], f"is NO, but a gateway without {what} is no gateway: leave it empty (or YES), "
                      "or run this VM as a SuperNode (FL_APPLIANCE_ROLE=supernode)")
        typed = {**typed, "FL_WG_ENABLED": True, "FL_WG_FORWARD": True}
    if not typed["FL_WG_ENABLED"]:
        set_names = [given[n] for n in wg_names if typed[n] is not None and BY_NAME[n].default is None]
        # Behind a site gateway, a OneFlow service hands every VM the gateway's tunnel inputs: expected.
        if set_names and not (role is Role.SUPERNODE and typed["FL_GATEWAY_ROUTES"]):
            c.warnings.append(f"{', '.join(set_names)}: ignored because FL_WG_ENABLED=NO")
        return None
    address = typed["FL_WG_ADDRESS"]
    if address is None and given["FL_WG_ADDRESS"] not in [p[0] for p in c.problems]:
        c.err(given["FL_WG_ADDRESS"], "required when FL_WG_ENABLED=YES: this VM's tunnel address, e.g. 10.10.9.1/24")
    keepalive = typed["FL_WG_PERSISTENT_KEEPALIVE"]
    peers: list[WgPeer] = []
    peers_n = given["FL_WG_PEERS"]
    if typed["FL_WG_PEERS"] is not None and keepalive is not None:
        parsed, problems = parse_peer_sections(typed["FL_WG_PEERS"], keepalive)
        for p in problems:
            c.err(peers_n, p)
        peers.extend(parsed)
    pk, ep, aips = (typed[n] for n in ("FL_WG_PEER_PUBLIC_KEY", "FL_WG_PEER_ENDPOINT", "FL_WG_PEER_ALLOWED_IPS"))
    pk_n, ep_n, aips_n = (given[n] for n in ("FL_WG_PEER_PUBLIC_KEY", "FL_WG_PEER_ENDPOINT", "FL_WG_PEER_ALLOWED_IPS"))
    if pk is None and (ep is not None or aips is not None):
        if pk_n not in [p[0] for p in c.problems]:
            c.err(pk_n, f"required when {ep_n if ep is not None else aips_n} is set (the peer's public key)")
    elif pk is not None:
        if aips is None:
            if aips_n not in [p[0] for p in c.problems]:
                c.err(aips_n, f"required with {pk_n}: the networks reached through that peer, e.g. 10.10.9.0/24")
        else:
            peers.append(WgPeer(pk, tuple(aips), ep, keepalive or 0, None, "FL_WG_PEER_*"))
    no_peer_problem = not any(name in (peers_n, pk_n, ep_n, aips_n) for name, _ in c.problems)
    if not peers and no_peer_problem:
        c.err(peers_n, f"at least one peer is required when FL_WG_ENABLED=YES (set {peers_n} or {pk_n} with {aips_n})")
    _peer_conflicts(peers, peers_n, c)
    private = typed["FL_WG_PRIVATE_KEY"]
    if private is not None and peers:
        from .wireguard.keys import public_key_from_private as public_key_of  # cryptography only when a key is set

        own = public_key_of(private)
        for p in peers:
            if p.public_key == own:
                c.err(peers_n if p.source != "FL_WG_PEER_*" else pk_n,
                      f"{p.source}: PublicKey is this VM's own public key; give the other side's key")
    pool = None
    if address is not None and is_pool(address):
        pool = address.network
        if role is not Role.SUPERNODE:
            who = "the SuperLink hub" if role is Role.SUPERLINK else "a gateway (one per zone)"
            c.err(given["FL_WG_ADDRESS"], f"{address} is a network (a pool for the VMs of a SuperNode role); "
                  f"{who} needs its own address, e.g. " + str(next(pool.hosts())) + f"/{pool.prefixlen}")
    if address is not None and peers:
        _underlay_rules(address, peers, onegate, peers_n, aips_n, c, nics)
    if address is None or any(n.startswith(("FL_WG", "ONEAPP_FL_WG")) for n, _ in c.problems):
        return None
    return WgConfig(
        address=address,
        private_key=Secret(private.encode()) if private else None,
        listen_port=typed["FL_WG_LISTEN_PORT"],
        mtu=typed["FL_WG_MTU"] or None,  # 0: derived from the underlay when applied
        peers=tuple(peers),
        forward=typed["FL_WG_FORWARD"],
        pool=pool,
    )


def _onegate_keep(onegate: OneGateAccess) -> list[tuple[str, Any]]:
    """OneGate's address when CONTEXT gives it as a literal (a name is checked once resolved, at apply)."""
    from urllib.parse import urlsplit

    if onegate.endpoint:
        try:
            host = urlsplit(onegate.endpoint).hostname or ""
            return [("the OneGate address (ONEGATE_ENDPOINT)", ip_address(host))]
        except (Invalid, ValueError):
            pass
    return []


def _own_networks(nics: tuple[Nic, ...]) -> list[tuple[str, Any]]:
    return [(f"this VM's own network on ETH{n.index} (ETH{n.index}_IP/ETH{n.index}_MASK)", n.network)
            for n in nics if n.network is not None]


def _underlay_rules(
    address: Any, peers: list[WgPeer], onegate: OneGateAccess, peers_n: str, aips_n: str, c: _Collector,
    nics: tuple[Nic, ...] = (),
) -> None:
    """AllowedIPs must not route the tunnel's own endpoints, OneGate, the VM's own networks or
    everything into wg0. A zone's network behind a zone gateway is fine (it is another network)."""
    from . import underlay

    keep = [("the peer endpoint " + ("FL_WG_PEER_ENDPOINT" if p.source == "FL_WG_PEER_*" else f"of {p.source}"),
             p.endpoint.ip) for p in peers if p.endpoint and p.endpoint.ip]
    keep += _onegate_keep(onegate)
    routes = set().union(*(underlay.routed(address.network, p.allowed_ips) for p in peers))
    for problem in underlay.problems(routes, keep, _own_networks(nics)):
        name = peers_n if any(p.source != "FL_WG_PEER_*" for p in peers) else aips_n
        c.err(name, problem)


def _gateway_rules(
    role: Role, typed: dict[str, Any], given: dict[str, str], nics: tuple[Nic, ...], wg: WgConfig | None,
    onegate: OneGateAccess, c: _Collector,
) -> tuple[Any, ...]:
    """FL_GATEWAY_ROUTES / FL_GATEWAY_ADDRESS: routes through this zone's site gateway. They must not
    cut the underlay (the same rules as wg0's), lead to the gateway itself, or overlap wg0's routes."""
    from . import underlay

    if role is Role.GATEWAY:
        return ()
    routes, gw = typed["FL_GATEWAY_ROUTES"], typed["FL_GATEWAY_ADDRESS"]
    routes_n, gw_n = given["FL_GATEWAY_ROUTES"], given["FL_GATEWAY_ADDRESS"]
    if not routes:
        if gw is not None:
            c.warnings.append(f"{gw_n}: ignored because {routes_n} is empty (nothing is routed through the gateway)")
        return ()
    if gw is None and not onegate.endpoint and gw_n not in dict(c.problems):
        c.err(gw_n, f"required with {routes_n} when the VM has no OneGate to find the gateway of its OneFlow "
              "service: the gateway's address on this VM's network, e.g. 192.168.150.2")
    keep = _onegate_keep(onegate)
    if gw is not None:
        keep.append((f"the gateway itself ({gw_n})", gw))
        known = [n.network for n in nics if n.network is not None and n.network.version == gw.version]
        if known and not any(gw in net for net in known):
            c.warnings.append(f"{gw_n}: {gw} is on none of this VM's networks (ETHn_IP/ETHn_MASK); the gateway "
                              "must be on the same segment as this VM")
    for problem in underlay.problems(routes, keep, _own_networks(nics), label=routes_n, into="the gateway"):
        c.err(routes_n, problem)
    if wg is not None:
        tunnel = set().union(*(underlay.routed(wg.address.network, p.allowed_ips) for p in wg.peers),
                             {wg.address.network})
        for r in routes:
            clash = [t for t in tunnel if t.version == r.version and t.overlaps(r)]
            if clash:
                c.err(routes_n, f"{r} overlaps {clash[0]}, which wg0 routes: a network goes either through this "
                      "VM's own tunnel or through the zone's gateway, not both")
    target = typed["FL_SUPERLINK_ADDRESS"] if role is Role.SUPERNODE else None
    if target is not None and target.ip is not None and not any(target.ip in r for r in routes):
        c.warnings.append(f"{routes_n}: FL_SUPERLINK_ADDRESS {target} is in none of these networks, so the "
                          "SuperNode does not reach its SuperLink through the gateway")
    return tuple(routes)


def _appliance_role(role: Role, typed: dict[str, Any], given: dict[str, str], c: _Collector) -> None:
    wanted = typed["FL_APPLIANCE_ROLE"]
    if wanted is not None and wanted != role.value:
        c.err(given["FL_APPLIANCE_ROLE"], f"says this VM is a {wanted} but it is being configured as a {role.value}: "
              f"run flower-ctx with --role {wanted} (the appliance does), or fix the VM template")


def _peer_conflicts(peers: list[WgPeer], name: str, c: _Collector) -> None:
    seen: dict[str, str] = {}
    for p in peers:
        if p.public_key in seen:
            c.err(name, f"{p.source} has the same PublicKey as {seen[p.public_key]}; each peer once")
        else:
            seen[p.public_key] = p.source
    for i, a in enumerate(peers):
        for b in peers[i + 1 :]:
            for na in a.allowed_ips:
                for nb in b.allowed_ips:
                    if na.version == nb.version and na.overlaps(nb):
                        c.err(
                            name,
                            f"AllowedIPs {na} of {a.source} overlaps {nb} of {b.source}; "
                            "a tunnel address can route to one peer only",
                        )
