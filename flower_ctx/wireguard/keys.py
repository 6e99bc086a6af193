"""WireGuard keys: the same format as ``wg genkey`` / ``wg pubkey`` (base64 of 32 raw bytes).

``cryptography`` is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import FlowerCtxError


class KeyError_(FlowerCtxError):
    """A WireGuard key is malformed (the message never contains the key)."""


def decode_key(b64: str | bytes) -> bytes:
    """32 raw bytes from a base64 key (surrounding whitespace ignored)."""
    text = b64.decode("ascii", "replace") if isinstance(b64, bytes) else b64
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_("is not valid base64") from None
    if len(raw) != 32:
        raise KeyError_(f"decodes to {len(raw)} bytes, a WireGuard key has 32")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def clamp(raw: bytes) -> bytes:
    """Curve25519 clamping, as ``wg genkey`` and wireguard-go apply it to private keys."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key() -> str:
    """A new private key, base64, clamped: identical in format to ``wg genkey``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return encode_key(clamp(raw))


def public_key_from_private(b64: str) -> str:
    """The public key of a base64 private key, as ``wg pubkey`` prints it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    priv = X25519PrivateKey.from_private_bytes(decode_key(b64))
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return encode_key(pub)


def to_hex(b64: str) -> str:
    """UAPI form of a key: lowercase hex of the same 32 bytes."""
    return decode_key(b64).hex()


def from_hex(hex_key: str) -> str:
    raw = bytes.fromhex(hex_key)
    if len(raw) != 32:
        raise KeyError_("hex key is not 32 bytes")
    return encode_key(raw)


def short(public_key_b64: str) -> str:
    """A short, non-secret label of a public key for messages (like ``wg show`` truncation)."""
    return public_key_b64[:8] + "…"
