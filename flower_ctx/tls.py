"""TLS material of a Flower node: generated CA and server certificate, operator PKI, trusted CA.

Lifecycle (DESIGN section 5): the CA is kept while it is valid and its key is present, because
SuperNodes in other zones have pinned it; the server certificate is re-issued under that same CA
when its SAN set changes, when it is within 30 days of expiry, when it does not chain to the CA or
when the key on disk does not belong to it (a crash between the two writes). Otherwise nothing is
written. Keys are always written before the certificate that uses them, so an interrupted run
leaves a pair the next run recognises as mismatched and repairs.

``cryptography`` is imported lazily: this module is imported by ``configure`` at start-up.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import pem
from .errors import ApplyError
from .files import Outcome, ensure_dir, exists, is_dir, read_file, remove_stale_temps, unlink, write_file
from .model import Config, IPAddress, Role, SanEntry
from .paths import Paths
from .plan import Change, StepResult

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

STEP = "tls"
CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
CA_EXPIRY_WARNING = datetime.timedelta(days=365)  # a 10-year CA is warned about during its last year
# Certificates start a little in the past so a peer whose clock lags slightly still accepts them.
BACKDATE = datetime.timedelta(minutes=5)

CERT_MODE = 0o644
KEY_MODE = 0o600
CERTS_DIR_MODE = 0o755
FLOWER_USER = "flower"


class TlsError(ApplyError):
    """TLS material could not be produced or installed (message in operator terms, no key material)."""


# --------------------------------------------------------------------------------------------------
# SANs


def _san(ip: IPAddress) -> SanEntry:
    return SanEntry("IP", str(ip))


def loopback_sans() -> list[SanEntry]:
    return [SanEntry("DNS", "localhost"), SanEntry("IP", "127.0.0.1"), SanEntry("IP", "::1")]


def vm_addresses(config: Config, observed_addresses: Iterable[IPAddress] | None = None) -> list[SanEntry]:
    """The VM's own addresses: NICs from CONTEXT (or the observed ones when there are none), WG."""
    out: list[SanEntry] = []
    if config.nics:
        for nic in config.nics:
            out += [_san(a) for a in (nic.ip, nic.ip6) if a is not None]
    else:
        out += [_san(a) for a in observed_addresses or ()]
    if config.wg is not None:
        out.append(_san(config.wg.address.ip))
    return out


def server_sans(config: Config, observed_addresses: Iterable[IPAddress] | None = None) -> list[SanEntry]:
    """SANs of the generated server certificate, de-duplicated in a stable order. Pure."""
    entries = loopback_sans() + vm_addresses(config, observed_addresses) + list(config.cert_extra_san)
    return list(dict.fromkeys(_normalise(e) for e in entries))


def _normalise(entry: SanEntry) -> SanEntry:
    if entry.kind == "IP":
        return SanEntry("IP", str(ipaddress.ip_address(entry.value)))
    return SanEntry("DNS", entry.value.lower().rstrip("."))


def cert_sans(cert: x509.Certificate) -> list[SanEntry]:
    """A certificate's SANs as normalised entries (same form as ``server_sans``)."""
    out = []
    for text in pem.san_entries(cert):
        kind, _, value = text.partition(":")
        out.append(_normalise(SanEntry(kind, value)))
    return out


def default_route_addresses() -> list[IPAddress]:
    """Global addresses of the interface(s) holding the default route(s); [] when unknown.

    Used only when CONTEXT lists no NIC address. ``ip -j`` keeps pyroute2 out of this path and is
    always present on the images (iproute2).
    """
    ip = shutil.which("ip")
    if ip is None:
        return []
    devices: list[str] = []
    for family in ("-4", "-6"):
        for route in _ip_json([ip, "-j", family, "route", "show", "default"]):
            dev = route.get("dev")
            if isinstance(dev, str) and dev not in devices:
                devices.append(dev)
    out: list[IPAddress] = []
    for dev in devices:
        for link in _ip_json([ip, "-j", "addr", "show", "dev", dev]):
            for info in link.get("addr_info", []):
                if info.get("scope") != "global":
                    continue  # link-local and host addresses are useless as SANs
                try:
                    addr = ipaddress.ip_address(info.get("local", ""))
                except ValueError:
                    continue
                if addr not in out:
                    out.append(addr)
    return out


def _ip_json(argv: list[str]) -> list[dict[str, Any]]:
    try:
        from .supervisor import child_environment  # the hook exports CONTEXT secrets: keep them from `ip`

        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False, env=child_environment())
        data = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


# --------------------------------------------------------------------------------------------------
# Generation (cryptography, imported lazily)


def new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _ski(key: Any) -> Any:
    from cryptography import x509

    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def make_ca(key: Any, now: datetime.datetime, days: int = CA_DAYS) -> x509.Certificate:
    """A self-signed CA (path length 0: it signs server certificates only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    # A random suffix tells two SuperLinks' CAs apart in diagnosis messages.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flower-ctx"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Flower SuperLink CA {os.urandom(4).hex()}"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_server_cert(
    key: Any,
    ca: x509.Certificate,
    ca_key: Any,
    sans: list[SanEntry],
    now: datetime.datetime,
    days: int = SERVER_DAYS,
) -> x509.Certificate:
    """A server certificate for ``sans`` signed by ``ca``; never outlives the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    general: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(s.value)) if s.kind == "IP" else x509.DNSName(s.value) for s in sans
    ]
    not_after = min(now + datetime.timedelta(days=days), ca.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flower SuperLink")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_key)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


# --------------------------------------------------------------------------------------------------
# Reading what is on disk


@dataclass
class _Pair:
    """A certificate (with any chain after it) and its key as found on disk; None when unusable."""

    cert_bytes: bytes | None
    key_bytes: bytes | None
    certs: list[x509.Certificate] | None
    key: Any


def _read(path: Path) -> bytes | None:
    try:
        return read_file(path)
    except FileNotFoundError:
        return None
    except ApplyError as exc:
        raise TlsError(str(exc)) from None
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}") from None


def _load_pair(cert_path: Path, key_path: Path) -> _Pair:
    cert_bytes, key_bytes = _read(cert_path), _read(key_path)
    certs = key = None
    if cert_bytes is not None:
        try:
            certs = pem.load_certs(cert_bytes)
        except pem.PemError:
            certs = None
    if key_bytes is not None:
        try:
            key = pem.load_private_key(key_bytes)
        except pem.PemError:
            key = None
    return _Pair(cert_bytes, key_bytes, certs, key)


def _ca_problem(pair: _Pair, now: datetime.datetime) -> str | None:
    """Why the CA on disk cannot be kept, or None when it must be kept."""
    if pair.cert_bytes is None:
        return "no CA yet"
    if pair.certs is None:
        return "ca.crt is not a readable certificate"
    if pair.key_bytes is None:
        return "ca.key is missing"
    if pair.key is None:
        return "ca.key is not a readable private key"
    ca = pair.certs[0]
    if not pem.key_matches_cert(pair.key, ca):
        return "ca.key does not belong to ca.crt"
    if not pem.is_ca(ca):
        return "ca.crt is not a CA certificate"
    # Only expiry replaces it. "Not valid yet" means this machine's clock is behind (a VM booting
    # before NTP): replacing the CA then would strand every SuperNode that pinned it.
    if now > ca.not_valid_after_utc:
        return f"the CA expired on {ca.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _server_problem(
    pair: _Pair, ca: x509.Certificate, sans: list[SanEntry], now: datetime.datetime, clock_ok: bool = True
) -> str | None:
    """Why the server certificate must be (re-)issued, or None when it is right.

    With ``clock_ok`` False only a broken pair is repaired: a certificate issued under a wrong clock
    would carry wrong dates, so SAN and date changes wait for the clock to be right.
    """
    if pair.cert_bytes is None:
        return "no server certificate yet"
    if pair.certs is None:
        return "server.pem is not a readable certificate"
    if pair.key is None:
        return "server.key is missing or unreadable"
    leaf = pair.certs[0]
    if not pem.key_matches_cert(pair.key, leaf):
        return "server.key does not belong to server.pem"
    if not pem.issued_by(leaf, ca):
        return "server.pem was not issued by the current CA"
    if not clock_ok:
        return None
    have, want = set(cert_sans(leaf)), set(sans)
    if have != want:
        added = ", ".join(str(s) for s in sans if s not in have)
        removed = ", ".join(sorted(str(s) for s in have - want))
        return "SANs changed" + (f": +{added}" if added else "") + (f" -{removed}" if removed else "")
    if now < leaf.not_valid_before_utc:
        return f"server.pem is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    left = leaf.not_valid_after_utc - now
    # Renew within 30 days of expiry, unless the CA itself ends first (a new cert would not last longer).
    if left < RENEW_BEFORE and ca.not_valid_after_utc > leaf.not_valid_after_utc:
        return f"server.pem expires on {leaf.not_valid_after_utc:%Y-%m-%d} (within 30 days)"
    return None


# --------------------------------------------------------------------------------------------------
# Writing


def _mode_owner_ok(path: Path, mode: int, owner: str | None) -> bool:
    import pwd

    st = path.lstat()
    if st.st_mode & 0o7777 != mode:
        return False
    if owner is not None and os.geteuid() == 0:  # only root can chown: files.write_file skips it too
        try:
            return st.st_uid == pwd.getpwnam(owner).pw_uid
        except KeyError:
            return True  # user missing (staging root, test machine): owner is not managed
    return True


def _put(
    result: StepResult,
    path: Path,
    content: bytes,
    mode: int,
    owner: str | None,
    *,
    detail: str,
    dry_run: bool,
) -> None:
    """Write (or, dry-run, plan) one file and record the Change."""
    if dry_run:
        if not exists(path):
            outcome = "would-create"
        elif _read(path) != content:
            outcome = "would-update"
        elif not _mode_owner_ok(path, mode, owner):
            outcome, detail = "would-update", "permissions"
        else:
            outcome = "unchanged"
        result.changes.append(Change(str(path), outcome, detail if outcome != "unchanged" else ""))
        return
    change = write_file(path, content, mode=mode, owner=owner, group=owner)
    if change.outcome is Outcome.UNCHANGED:
        result.changes.append(Change(str(path), "unchanged"))
    else:
        result.changes.append(Change(str(path), change.outcome.value, change.note or detail))
        log.info("%s: %s (%s)", path, change.outcome.value, change.note or detail)


def _remove(result: StepResult, path: Path, *, detail: str, dry_run: bool) -> None:
    if not exists(path):
        return
    if dry_run:
        result.changes.append(Change(str(path), "would-remove", detail))
        return
    if not unlink(path):
        return
    result.changes.append(Change(str(path), "removed", detail))
    log.info("%s: removed (%s)", path, detail)


def _prepare_dir(result: StepResult, paths: Paths, dry_run: bool) -> None:
    if dry_run:
        if not is_dir(paths.certs_dir):
            result.changes.append(Change(str(paths.certs_dir), "would-create"))
        return
    existed = is_dir(paths.certs_dir)
    if ensure_dir(paths.certs_dir, CERTS_DIR_MODE, owner="root", group="root"):
        result.changes.append(Change(str(paths.certs_dir), "updated" if existed else "created"))
    # A killed run may have left a complete temp file (possibly a key): never keep it around.
    remove_stale_temps(paths.certs_dir)


# --------------------------------------------------------------------------------------------------
# Public entry points


def apply(config: Config, paths: Paths, *, dry_run: bool = False, now: datetime.datetime | None = None) -> StepResult:
    """Make the TLS material on disk match ``config`` (see the module docstring)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    result = StepResult(STEP)
    if not config.tls_enabled:
        # Existing material is left alone: the CA must survive TLS being switched off and on again.
        result.facts["tls"] = "disabled"
        return result
    result.facts["tls"] = "enabled"
    if config.role is not Role.SUPERLINK:
        return _apply_supernode(config, paths, result, dry_run)
    if config.operator_pki:
        return _apply_operator(config, paths, result, dry_run, now)
    return _apply_generated(config, paths, result, dry_run, now)


def install_trusted_ca(pem_bytes: bytes, paths: Paths, *, dry_run: bool = False) -> StepResult:
    """Install the CA a SuperNode trusts (from CONTEXT or published by its SuperLink) as ca.crt."""
    result = StepResult(STEP)
    _install_ca(result, pem_bytes, paths, dry_run, source="the CA to trust")
    return result


def _install_ca(result: StepResult, pem_bytes: bytes, paths: Paths, dry_run: bool, source: str) -> None:
    try:
        certs = pem.load_certs(pem_bytes)
    except pem.PemError as exc:
        raise TlsError(f"{source} {exc}") from None
    if not any(pem.is_ca(c) for c in certs):
        raise TlsError(f"{source} is not a CA certificate (no basicConstraints CA:TRUE)")
    _prepare_dir(result, paths, dry_run)
    # Re-encoded so a CA given with other whitespace or line endings yields the same file.
    _put(result, paths.ca_cert, cert_pem(*certs), CERT_MODE, None, detail="CA to trust", dry_run=dry_run)
    result.facts["ca_fingerprint"] = pem.fingerprint(certs[0])


def _apply_supernode(config: Config, paths: Paths, result: StepResult, dry_run: bool) -> StepResult:
    if config.pki.ca_pem is None:
        # Same-service discovery: the SuperLink publishes its CA on OneGate; installed later. A gateway
        # without a CA checks its SuperLink with TCP only.
        result.facts["ca_source"] = "OneGate" if config.role is Role.SUPERNODE else "none"
        return result
    result.facts["ca_source"] = "FL_SSL_CA_CERTFILE"
    _install_ca(result, config.pki.ca_pem, paths, dry_run, source="FL_SSL_CA_CERTFILE")
    return result


def _observed(config: Config) -> list[IPAddress]:
    return [] if config.nics else default_route_addresses()


def _apply_operator(
    config: Config, paths: Paths, result: StepResult, dry_run: bool, now: datetime.datetime
) -> StepResult:
    """Install the operator's CA, certificate chain and key (validated by config.load_config)."""
    assert config.pki.ca_pem is not None and config.pki.cert_pem is not None and config.pki.key_pem
    result.facts["ca_source"] = "operator PKI"
    try:
        ca_certs = pem.load_certs(config.pki.ca_pem)
        chain = pem.load_certs(config.pki.cert_pem)
    except pem.PemError as exc:
        raise TlsError(f"operator PKI: {exc}") from None
    leaf = chain[0]
    # config.load_config may already have said so; one warning is enough.
    if config.cert_extra_san and not any("FL_CERT_EXTRA_SAN" in w for w in config.warnings):
        result.warnings.append(
            "FL_CERT_EXTRA_SAN is ignored with operator PKI (FL_SSL_CERTFILE): "
            "the names must be in the operator's certificate"
        )
    have = cert_sans(leaf)
    mine = vm_addresses(config, _observed(config)) + [_normalise(s) for s in config.cert_extra_san]
    if mine and not set(mine) & set(have):
        result.warnings.append(
            "FL_SSL_CERTFILE: the certificate's SANs ("
            + (", ".join(map(str, have)) or "none")
            + ") contain none of this VM's addresses or names ("
            + ", ".join(map(str, dict.fromkeys(mine)))
            + "): SuperNodes must dial a name the certificate has"
        )
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        result.warnings.append(
            f"FL_SSL_CERTFILE expires on {leaf.not_valid_after_utc:%Y-%m-%d}: renew it in CONTEXT soon"
        )
    _prepare_dir(result, paths, dry_run)
    key_bytes = config.pki.key_pem.reveal()
    # Key first: a crash after it leaves a mismatched pair, never a certificate without its key.
    _put(result, paths.server_key, key_bytes, KEY_MODE, FLOWER_USER, detail="operator key", dry_run=dry_run)
    _put(result, paths.server_cert, cert_pem(*chain), CERT_MODE, None, detail="operator cert", dry_run=dry_run)
    _put(result, paths.ca_cert, cert_pem(*ca_certs), CERT_MODE, None, detail="operator CA", dry_run=dry_run)
    # A generated CA key left from before would belong to no certificate on disk: drop the secret.
    _remove(result, paths.ca_key, detail="generated CA key not used with operator PKI", dry_run=dry_run)
    result.facts["ca_fingerprint"] = pem.fingerprint(ca_certs[0])
    result.facts["server_sans"] = ",".join(map(str, have))
    return result


def _apply_generated(
    config: Config, paths: Paths, result: StepResult, dry_run: bool, now: datetime.datetime
) -> StepResult:
    result.facts["ca_source"] = "generated"
    observed = _observed(config)
    sans = server_sans(config, observed)
    if not config.nics and not observed:
        result.warnings.append(
            "no ETHn_IP/ETHn_IP6 in CONTEXT and no address found on the default route's interface: "
            "the server certificate names only loopback"
            + (", the WireGuard address" if config.wg else "")
            + " and FL_CERT_EXTRA_SAN"
        )
    ca_pair = _load_pair(paths.ca_cert, paths.ca_key)
    server_pair = _load_pair(paths.server_cert, paths.server_key)
    _prepare_dir(result, paths, dry_run)

    ca_reason = _ca_problem(ca_pair, now)
    if ca_reason is None:
        assert ca_pair.certs is not None and ca_pair.cert_bytes is not None and ca_pair.key_bytes is not None
        ca, ca_key = ca_pair.certs[0], ca_pair.key
        ca_bytes, ca_key_bytes = ca_pair.cert_bytes, ca_pair.key_bytes
        left = ca.not_valid_after_utc - now
        if now < ca.not_valid_before_utc:
            result.warnings.append(
                f"the system clock ({now:%Y-%m-%d %H:%M} UTC) is before the CA's start "
                f"({ca.not_valid_before_utc:%Y-%m-%d %H:%M} UTC): the CA is kept and certificates are not "
                "re-issued until the clock is right (check NTP)"
            )
        elif left < CA_EXPIRY_WARNING:
            result.warnings.append(
                f"the CA expires on {ca.not_valid_after_utc:%Y-%m-%d} ({left.days} days): rotate it while the "
                "federation runs (flower-ctx ca rotate, then ca rotate --finish) before SuperNodes lose trust"
            )
    else:
        if ca_pair.certs is not None and ca_pair.cert_bytes is not None:
            result.warnings.append(
                f"a new CA replaces {paths.ca_cert} ({pem.fingerprint(ca_pair.certs[0])}) because {ca_reason}: "
                "SuperNodes that trust the old CA must be given the new one (flower-ctx ca export)"
            )
        ca_key = new_key()
        ca = make_ca(ca_key, now)
        ca_bytes, ca_key_bytes = cert_pem(ca), key_pem(ca_key)
    ca_detail = ca_reason or ""
    _put(result, paths.ca_key, ca_key_bytes, KEY_MODE, "root", detail=ca_detail, dry_run=dry_run)
    _put(result, paths.ca_cert, ca_bytes, CERT_MODE, None, detail=ca_detail, dry_run=dry_run)

    server_reason = _server_problem(server_pair, ca, sans, now, clock_ok=now >= ca.not_valid_before_utc)
    if server_reason is None:
        assert server_pair.cert_bytes is not None and server_pair.key_bytes is not None
        srv_bytes, srv_key_bytes = server_pair.cert_bytes, server_pair.key_bytes
    else:
        srv_key = new_key()
        # The CA travels after the leaf so a client with the wrong CA can still name the issuer.
        srv_bytes = cert_pem(make_server_cert(srv_key, ca, ca_key, sans, now), ca)
        srv_key_bytes = key_pem(srv_key)
    srv_detail = server_reason or ""
    _put(result, paths.server_key, srv_key_bytes, KEY_MODE, FLOWER_USER, detail=srv_detail, dry_run=dry_run)
    _put(result, paths.server_cert, srv_bytes, CERT_MODE, None, detail=srv_detail, dry_run=dry_run)

    if not (dry_run and ca_reason):  # a dry run's new CA is a throwaway: its fingerprint means nothing
        result.facts["ca_fingerprint"] = pem.fingerprint(ca)
    result.facts["server_sans"] = ",".join(map(str, sans))
    return result
