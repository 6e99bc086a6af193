"""A TLS probe that says what went wrong in operator terms (DESIGN section 9).

``probe_tls`` connects to host:port, does a verifying handshake with the configured CA and, when
that fails, a second non-verifying handshake to fetch the chain the server presented, so the
diagnosis can name what was presented: the issuer's fingerprint for a CA mismatch, the
certificate's SANs for a name mismatch, the dates for an expired certificate.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import pem

if TYPE_CHECKING:
    from cryptography import x509

CA_FIX = (
    "set FL_SSL_CA_CERTFILE on this SuperNode to the SuperLink's CA (`flower-ctx ca export` on the SuperLink prints it)"
)


class ProbeKind(str, enum.Enum):
    OK = "ok"
    CA_MISMATCH = "ca_mismatch"
    NAME_MISMATCH = "name_mismatch"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNREACHABLE = "unreachable"
    NOT_TLS = "not_tls"
    BAD_CA = "bad_ca"  # the configured CA itself is unusable
    TLS_ERROR = "tls_error"  # anything else the handshake reported


@dataclass(frozen=True)
class ProbeResult:
    kind: ProbeKind
    message: str  # one paragraph, operator terms, no key material
    address: str  # what was dialled, host:port
    server_name: str  # the name checked against the certificate
    ca_fingerprint: str | None = None  # the configured CA
    issuer: str | None = None  # issuer DN of the presented leaf
    issuer_fingerprint: str | None = None  # when the server presented its issuer
    sans: tuple[str, ...] = ()  # SANs of the presented leaf
    not_after: datetime.datetime | None = None

    @property
    def ok(self) -> bool:
        return self.kind is ProbeKind.OK


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _context(ca_pem: bytes | None) -> ssl.SSLContext:
    if ca_pem is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # What a gRPC client offers (some servers insist on it), and HTTP/1.1 for Flower 1.40+'s Fleet API.
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def _handshake(host: str, port: int, ctx: ssl.SSLContext, server_name: str, timeout: float,
               source: str | None = None) -> list[bytes]:
    """Connect (from ``source`` when given) and handshake; the presented chain as DER (leaf first)."""
    with (
        socket.create_connection((host, port), timeout=timeout,
                                 source_address=(source, 0) if source else None) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return _presented_chain(tls)


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    getter = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
    if getter is not None:
        return [bytes(c) for c in getter() or []]
    sslobj: Any = getattr(tls, "_sslobj", None)
    if sslobj is not None and hasattr(sslobj, "get_unverified_chain"):  # 3.10-3.12: private
        import _ssl

        return [c.public_bytes(_ssl.ENCODING_DER) for c in sslobj.get_unverified_chain() or []]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def probe_tls(
    host: str, port: int, ca_pem: bytes, *, server_name: str | None = None, timeout: float = 5.0,
    source: str | None = None,
) -> ProbeResult:
    """Handshake with host:port trusting only ``ca_pem``; say what happened. ``source``: the local
    address to connect from (a gateway probes from its zone address, as its SuperNodes' packets go)."""
    name = server_name or host
    base = {"address": _address(host, port), "server_name": name}
    try:
        ca_certs = pem.load_certs(ca_pem)
        ctx = _context(ca_pem)
    except (pem.PemError, ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        return ProbeResult(ProbeKind.BAD_CA, f"the configured CA (FL_SSL_CA_CERTFILE) {exc}", **base)
    base["ca_fingerprint"] = pem.fingerprint(ca_certs[0])
    where = base["address"]
    try:
        chain = _handshake(host, port, ctx, name, timeout, source)
    except ssl.SSLCertVerificationError as exc:
        return _diagnose(host, port, name, timeout, ca_certs, exc, base, source)
    except (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        return _not_tls(where, exc, base)
    except TimeoutError:
        return ProbeResult(ProbeKind.UNREACHABLE, f"{where}: no answer within {timeout:g} s", **base)
    except OSError as exc:
        return ProbeResult(ProbeKind.UNREACHABLE, f"{where} is unreachable: {_os_error(exc)}", **base)
    leaf = _leaf_info(chain)
    return ProbeResult(
        ProbeKind.OK,
        f"{where}: TLS handshake verified with the configured CA ({base['ca_fingerprint']})",
        **base,
        **leaf,
    )


def _os_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name ({exc.strerror or exc})"
    return exc.strerror or str(exc) or type(exc).__name__


# OpenSSL reasons meaning "the bytes that came back were not TLS" (or the peer hung up at once).
_NOT_TLS_REASONS = {
    "WRONG_VERSION_NUMBER",
    "UNEXPECTED_EOF_WHILE_READING",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
    "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL",
}


def _not_tls(where: str, exc: BaseException, base: dict[str, Any]) -> ProbeResult:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError) and reason not in _NOT_TLS_REASONS:
        return ProbeResult(ProbeKind.TLS_ERROR, f"{where}: the TLS handshake failed ({reason})", **base)
    return ProbeResult(
        ProbeKind.NOT_TLS,
        f"{where} accepted the connection but did not complete a TLS handshake ({reason}): "
        "is it running without TLS (FL_TLS_ENABLED=NO on the SuperLink) or is it another service?",
        **base,
    )


def _load_der(chain: list[bytes]) -> list[x509.Certificate]:
    from cryptography import x509

    out = []
    for der in chain:
        try:
            out.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return out


def _leaf_info(chain: list[bytes]) -> dict[str, Any]:
    certs = _load_der(chain)
    if not certs:
        return {}
    leaf = certs[0]
    issuer = next((c for c in certs[1:] if pem.issued_by(leaf, c)), None)
    return {
        "issuer": leaf.issuer.rfc4514_string(),
        "issuer_fingerprint": pem.fingerprint(issuer) if issuer is not None else None,
        "sans": tuple(pem.san_entries(leaf)),
        "not_after": leaf.not_valid_after_utc,
    }


def _diagnose(
    host: str,
    port: int,
    name: str,
    timeout: float,
    ca_certs: list[x509.Certificate],
    error: ssl.SSLCertVerificationError,
    base: dict[str, Any],
    source: str | None = None,
) -> ProbeResult:
    """Verification failed: look at what the server presented and classify it ourselves."""
    where, ca_fp = base["address"], base["ca_fingerprint"]
    try:
        chain = _handshake(host, port, _context(None), name, timeout, source)
    except (OSError, ssl.SSLError):
        chain = []
    certs = _load_der(chain)
    if not certs:
        return ProbeResult(
            ProbeKind.TLS_ERROR, f"{where}: certificate verification failed ({error.verify_message})", **base
        )
    info = _leaf_info(chain)
    leaf = certs[0]
    if not any(pem.chains_to(certs, ca) for ca in ca_certs):
        presented = info["issuer_fingerprint"] or "not presented by the server"
        return ProbeResult(
            ProbeKind.CA_MISMATCH,
            f"{where}: CA mismatch: the configured CA is {ca_fp} but the server's certificate was issued "
            f"by '{info['issuer']}' ({presented}); fix: {CA_FIX}",
            **base,
            **info,
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in certs:
        problem = pem.validity_problem(cert, now)
        if problem is None:
            continue
        kind = ProbeKind.EXPIRED if now > cert.not_valid_after_utc else ProbeKind.NOT_YET_VALID
        what = "the server's certificate" if cert is leaf else f"the certificate '{cert.subject.rfc4514_string()}'"
        fix = (
            "re-run `flower-ctx configure` on the SuperLink (it renews generated certificates) or renew FL_SSL_CERTFILE"
            if kind is ProbeKind.EXPIRED
            else "check the clocks of both machines (NTP)"
        )
        return ProbeResult(kind, f"{where}: {what} {problem}; fix: {fix}", **base, **info)
    if not _name_matches(leaf, name):
        sans = ", ".join(info["sans"]) or "none"
        entry = f"IP:{name}" if _is_ip(name) else f"DNS:{name}"
        return ProbeResult(
            ProbeKind.NAME_MISMATCH,
            f"{where}: name mismatch: the address dialled, {name}, is not in the server certificate's "
            f"SANs ({sans}); fix: add {entry} to FL_CERT_EXTRA_SAN on the SuperLink, or dial one of its SANs",
            **base,
            **info,
        )
    return ProbeResult(
        ProbeKind.TLS_ERROR, f"{where}: certificate verification failed ({error.verify_message})", **base, **info
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _name_matches(leaf: x509.Certificate, name: str) -> bool:
    """Whether ``name`` is covered by the leaf's SANs (exact IP; DNS exact or one-label wildcard)."""
    sans = pem.san_entries(leaf)
    if _is_ip(name):
        want = ipaddress.ip_address(name)
        return any(s.startswith("IP:") and ipaddress.ip_address(s[3:]) == want for s in sans)
    name = name.lower().rstrip(".")
    for s in sans:
        if not s.startswith("DNS:"):
            continue
        pattern = s[4:].lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False
