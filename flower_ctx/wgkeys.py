"""WireGuard key derivation with ``cryptography`` X25519 (same format as ``wg genkey``/``wg pubkey``).

Kept apart from the ``wireguard`` package so validation can check keys without importing pyroute2.
"""

from __future__ import annotations

import base64


def public_key_of(private_b64: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def generate_private_key() -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    # wg genkey clamps the scalar; store it clamped so the file is byte-identical in form.
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return base64.b64encode(bytes(b)).decode("ascii")
