"""SuperNode identity keys, in the format Flower 1.39+ expects (read in the flwr wheel):
the SuperNode loads an unencrypted OpenSSH EC private key (``--auth-supernode-private-key``,
``load_ssh_private_key``); the SuperLink registers the public key as PEM SubjectPublicKeyInfo
(Control API ``RegisterNode``). Operators handle the public key as one OpenSSH line,
``ecdsa-sha2-nistp384 AAAA... [name]``, as ``flower-ctx node key`` prints it.

``cryptography`` is imported inside the functions: validation of a CONTEXT without keys stays light.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from ..errors import FlowerCtxError

# NIST curves Flower accepts; keys generated here are P-384, as Flower's own.
KEY_TYPES = ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
_LINE = re.compile(
    r"(?P<type>ecdsa-sha2-nistp(?:256|384|521))[ \t]+(?P<blob>[A-Za-z0-9+/]+={0,2})(?:[ \t]+(?P<name>\S.*))?\Z"
)
MAX_KEYS = 1024


class NodeKeyError(FlowerCtxError):
    """A SuperNode key is unusable (the message never contains private material)."""


@dataclass(frozen=True)
class PublicKey:
    """A SuperNode public key: ``line`` is ``type base64`` (the canonical form, no comment)."""

    line: str
    name: str = ""  # the comment after the key, used as Flower's node name

    def __str__(self) -> str:
        return f"{self.line} {self.name}".rstrip()

    def pem(self) -> bytes:
        """PEM SubjectPublicKeyInfo: what Flower's RegisterNode takes and ListNodes returns."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_ssh_public_key(self.line.encode())
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_line(text: str) -> PublicKey:
    """One OpenSSH public key line; raises ValueError with a message that echoes no key."""
    m = _LINE.match(text.strip())
    if m is None:
        raise ValueError("is not an OpenSSH ECDSA public key line (ecdsa-sha2-nistp384 AAAA... [name], as "
                         "`flower-ctx node key` prints it)")
    try:
        blob = base64.b64decode(m.group("blob"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("has a key body that is not base64") from None
    # The blob starts with the key type as an SSH string: a cheap check that it is what it says.
    kind = m.group("type").encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4 : 4 + len(kind)] != kind:
        raise ValueError(f"has a body that is not an {m.group('type')} key")
    name = (m.group("name") or "").strip()
    if name and not re.fullmatch(r"[A-Za-z0-9._@:()/-]{1,64}", name):
        raise ValueError("has a name (after the key) with characters other than letters, digits and ._@:()/-")
    line = f"{m.group('type')} {m.group('blob')}"
    from cryptography.hazmat.primitives import serialization  # only when a key is given

    try:
        serialization.load_ssh_public_key(line.encode())
    except (ValueError, TypeError):
        raise ValueError(f"has a body that is not a valid {m.group('type')} key (damaged in the copy?)") from None
    return PublicKey(line, name)


def from_pem(pem: bytes, name: str = "") -> PublicKey:
    """The OpenSSH line of a PEM SubjectPublicKeyInfo key (as ListNodes returns it)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    except (ValueError, TypeError) as exc:
        raise NodeKeyError(f"a registered key is not an EC public key ({type(exc).__name__})") from None
    return PublicKey(line, name)


def generate() -> tuple[bytes, PublicKey]:
    """A new P-384 key pair: the OpenSSH private key file content and its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, PublicKey(line.decode())


def public_of(private: bytes) -> PublicKey:
    """The public key of an OpenSSH private key file; NodeKeyError when it is not one Flower takes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_private_key(private, None)
    except (ValueError, TypeError, binascii.Error):
        raise NodeKeyError("is not an unencrypted OpenSSH private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NodeKeyError("is not an EC (ECDSA) key; Flower's SuperNode authentication needs one")
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return PublicKey(line.decode())


def parse_list(text: str) -> tuple[PublicKey, ...]:
    """Keys one per line (authorized_keys style, '#' comments), or separated by commas."""
    keys: list[PublicKey] = []
    seen: set[str] = set()
    items = [x for line in text.splitlines() for x in line.split(",")]
    for n, item in enumerate(items, start=1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        try:
            key = parse_line(item)
        except ValueError as exc:
            raise ValueError(f"entry {n} {exc}") from None
        if key.line in seen:
            raise ValueError(f"entry {n} repeats a key given before; each key once")
        seen.add(key.line)
        keys.append(key)
        if len(keys) > MAX_KEYS:
            raise ValueError(f"holds more than {MAX_KEYS} keys")
    return tuple(keys)
