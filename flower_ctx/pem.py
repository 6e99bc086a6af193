"""PEM checks used by validation and TLS: parse, key/certificate match, chain, validity, CA flag.

``cryptography`` is imported inside the functions: validation of a context without PEM values must
not pay for it (``flower-ctx --help`` and ``context check`` stay fast).
"""

from __future__ import annotations

import datetime
import hashlib
from typing import TYPE_CHECKING, Any

from .errors import FlowerCtxError

if TYPE_CHECKING:
    from cryptography import x509


MAX_CHAIN = 16  # certificates in one bundle: chain checks are quadratic in it


class PemError(FlowerCtxError):
    """A PEM value is unusable; the message says why in operator terms (no key material)."""


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, in order. Raises PemError when there is none or one is bad."""
    from cryptography import x509

    if b"-----BEGIN" not in pem:
        raise PemError("is not PEM (no -----BEGIN line)")
    if b"PRIVATE KEY-----" in pem:
        raise PemError("contains a private key where a certificate is expected")
    if pem.count(b"-----BEGIN") > MAX_CHAIN:
        raise PemError(f"holds more than {MAX_CHAIN} PEM blocks; a certificate chain is a handful")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except Exception as exc:  # ValueError, InvalidVersion, ...: all mean "not a usable certificate"
        raise PemError(f"is not a valid PEM certificate ({_short(exc)})") from None
    if not certs:
        raise PemError("contains no certificate")
    for cert in certs:
        # Parsing is lazy: touch what the checks read so a malformed extension, key or date is
        # reported here as bad input, not as a crash later.
        try:
            _ = (cert.extensions, cert.public_key(), cert.not_valid_before_utc, cert.not_valid_after_utc)
            _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string())
        except Exception as exc:
            raise PemError(f"holds a certificate that cannot be used ({_short(exc)})") from None
    return certs


def load_private_key(pem: bytes) -> Any:
    """The private key of a PEM blob (unencrypted PKCS#8, PKCS#1 or SEC1)."""
    from cryptography.hazmat.primitives import serialization

    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise PemError("is not a PEM private key (no -----BEGIN ... PRIVATE KEY----- line)")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise PemError("is an encrypted private key; provide it without a passphrase") from None
    except (ValueError, Exception) as exc:  # cryptography raises several types for junk
        raise PemError(f"is not a valid private key ({_short(exc)})") from None


def public_der(key_or_cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pub = key_or_cert.public_key()
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches_cert(key: Any, cert: x509.Certificate) -> bool:
    return public_der(key) == public_der(cert)


def is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` signed ``cert`` (names match and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # ValueError, TypeError, InvalidSignature: all mean "not this issuer"
        return False
    return True


def chains_to(leaf_and_chain: list[x509.Certificate], ca: x509.Certificate) -> bool:
    """True when the leaf chains to ``ca`` through the intermediates given after it (any order)."""
    current = leaf_and_chain[0]
    pool = list(leaf_and_chain[1:])
    for _ in range(len(pool) + 1):
        if issued_by(current, ca):
            return True
        nxt = next((c for c in pool if issued_by(current, c)), None)
        if nxt is None:
            return False
        pool.remove(nxt)
        current = nxt
    return False


def validity_problem(cert: x509.Certificate, now: datetime.datetime | None = None) -> str | None:
    """``None`` when valid now, else a short message (expired on / not valid before)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:`` + lowercase hex of the DER certificate (the FL_CA_FINGERPRINT format)."""
    from cryptography.hazmat.primitives import serialization

    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def san_entries(cert: x509.Certificate) -> list[str]:
    """The certificate's SANs as ``IP:...`` / ``DNS:...`` strings."""
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
    out += [f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
    return out


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
