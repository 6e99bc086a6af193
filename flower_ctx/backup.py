"""Backup and restore of a VM's identity: what other zones pinned must survive a lost disk.

A SuperLink's identity is its CA (every zone's SuperNodes trust it), its WireGuard key (every spoke
lists its public key), the SuperNodes it admitted (admission records and Flower's state database,
which holds the registrations, so every SuperNode reconnects with its node id) and the CA of an
unfinished rotation. A SuperNode's is its node key, WireGuard key and pinned CA. Nothing else is
needed: configure rebuilds the rest from CONTEXT.

The file: a first line ``FLOWER-CTX-BACKUP 1``, one line of JSON metadata (role, time, what it
holds, encryption), then a tar archive of the files, plain or, with a passphrase, sealed with
AES-256-GCM under a key derived by scrypt (the metadata line is authenticated too). Written 0600.
Restore accepts only the paths it knows (no path in the archive is trusted), checks every key and
certificate before writing anything, and writes each file with its usual mode and owner.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import FlowerCtxError
from .paths import Paths

MAGIC = b"FLOWER-CTX-BACKUP 1\n"
MAX_BACKUP = 512 * 1024 * 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class BackupError(FlowerCtxError):
    """A backup cannot be written or read (the message says which file and why)."""


@dataclass(frozen=True)
class Item:
    name: str  # the name inside the archive
    path: str  # the path on the VM, under the root; the database: its path as the runtime config has it
    mode: int
    owner: str  # user and group
    kind: str  # "cert", "key", "ssh-key", "wg-key", "json", "sqlite"


def items(role: str, paths: Paths, database: str | None = None) -> list[Item]:
    """What makes up ``role``'s identity on this machine (the allowlist of restore too)."""
    rel = lambda p: "/" + str(p.relative_to(paths.root)).lstrip("/")  # noqa: E731
    common = [Item("wg0.key", rel(paths.wg_key), 0o600, "root", "wg-key")]
    if role == "superlink":
        out = [Item("ca.crt", rel(paths.ca_cert), 0o644, "root", "cert"),
               Item("ca.key", rel(paths.ca_key), 0o600, "root", "key"),
               Item("ca-next.crt", rel(paths.certs_dir / "ca-next.crt"), 0o644, "root", "cert"),
               Item("ca-next.key", rel(paths.certs_dir / "ca-next.key"), 0o600, "root", "key"),
               Item("admission.json", rel(paths.agent_dir / "admission.json"), 0o600, "root", "json")]
        if database:
            out.append(Item("state.db", database, 0o600, "flower", "sqlite"))
        return out + common
    return [Item("node.key", rel(paths.node_key), 0o600, "flower", "ssh-key"),
            Item("ca.crt", rel(paths.ca_cert), 0o644, "root", "cert"),
            Item("ca-pin.json", rel(paths.agent_dir / "ca-pin.json"), 0o600, "root", "json")] + common


def target_of(item: Item, paths: Paths) -> Path:
    """Where ``item`` lives on this machine (the database path is already complete)."""
    return Path(item.path) if item.kind == "sqlite" else paths.root / item.path.lstrip("/")


def _sqlite_snapshot(path: Path) -> bytes | None:
    """A consistent copy of a live SQLite database (the backup API), or None when there is none."""
    import sqlite3
    import tempfile

    if not path.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="flower-ctx-backup-") as tmp:
        copy = Path(tmp) / "state.db"
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        return copy.read_bytes()


def collect(role: str, paths: Paths, database: str | None) -> dict[str, bytes]:
    """The identity files present on this machine, read without following links."""
    from .files import read_file

    out: dict[str, bytes] = {}
    for item in items(role, paths, database):
        path = target_of(item, paths)
        if item.kind == "sqlite":
            data = _sqlite_snapshot(path)
        else:
            try:
                data = read_file(path)
            except FileNotFoundError:
                data = None
        if data is not None:
            out[item.name] = data
    return out


def _key(passphrase: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def pack(role: str, files: dict[str, bytes], passphrase: bytes | None) -> bytes:
    """The backup file's bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o600, 0
            tar.addfile(info, io.BytesIO(files[name]))
    payload = buf.getvalue()
    meta = {"role": role, "time": int(time.time()), "files": sorted(files), "encrypted": passphrase is not None}
    if passphrase is not None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        salt, nonce = os.urandom(16), os.urandom(12)
        meta.update({"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
                     "nonce": nonce.hex(), "cipher": "AES-256-GCM"})
        line = json.dumps(meta, sort_keys=True).encode() + b"\n"
        payload = AESGCM(_key(passphrase, salt)).encrypt(nonce, payload, MAGIC + line)
        return MAGIC + line + payload
    return MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n" + payload


def unpack(data: bytes, passphrase: bytes | None) -> tuple[dict, dict[str, bytes]]:
    """(metadata, {name: content}) of a backup; BackupError for anything unexpected."""
    if not data.startswith(MAGIC):
        raise BackupError("is not a flower-ctx backup (no FLOWER-CTX-BACKUP 1 header)")
    head, sep, payload = data[len(MAGIC):].partition(b"\n")
    try:
        meta = json.loads(head) if sep else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("role") not in ("superlink", "supernode"):
        raise BackupError("has a damaged header")
    if meta.get("encrypted"):
        if passphrase is None:
            raise BackupError("is encrypted: give --passphrase-file")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            salt, nonce = bytes.fromhex(str(meta["salt"])), bytes.fromhex(str(meta["nonce"]))
            if (meta.get("n"), meta.get("r"), meta.get("p")) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):
                raise ValueError
            payload = AESGCM(_key(passphrase, salt)).decrypt(nonce, payload, MAGIC + head + b"\n")
        except InvalidTag:
            raise BackupError("cannot be decrypted: wrong passphrase, or the file was changed") from None
        except (KeyError, ValueError):
            raise BackupError("has a damaged encryption header") from None
    elif passphrase is not None:
        raise BackupError("is not encrypted, but a passphrase was given: is this the right file?")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            for member in tar.getmembers():
                if not member.isfile() or "/" in member.name or member.name in files or member.size > MAX_BACKUP:
                    raise BackupError(f"holds an unexpected entry {member.name[:40]!r}")
                extracted = tar.extractfile(member)
                files[member.name] = extracted.read() if extracted is not None else b""
    except tarfile.TarError:
        raise BackupError("has a damaged archive") from None
    return meta, files


def check(role: str, files: dict[str, bytes], paths: Paths) -> None:
    """Every entry is one restore knows, and every key and certificate parses (before any write)."""
    from . import pem
    from .admission.keys import public_of

    known = {i.name: i for i in items(role, paths, "/db")}
    for name, data in files.items():
        item = known.get(name)
        if item is None:
            raise BackupError(f"holds {name!r}, which is not part of a {role}'s identity")
        try:
            if item.kind == "cert":
                pem.load_certs(data)
            elif item.kind == "key":
                pem.load_private_key(data)
            elif item.kind == "ssh-key":
                public_of(data)
            elif item.kind == "wg-key":
                from .wireguard.keys import decode_key

                decode_key(data)
            elif item.kind == "json":
                json.loads(data)
            elif item.kind == "sqlite" and not data.startswith(b"SQLite format 3\x00"):
                raise ValueError("not an SQLite database")
        except (FlowerCtxError, ValueError) as exc:
            raise BackupError(f"{name} in the backup is unusable ({exc})") from None
    if role == "superlink" and ("ca.crt" in files) != ("ca.key" in files):
        raise BackupError("holds only half of the CA (ca.crt and ca.key go together)")
    if "ca.crt" in files and "ca.key" in files and not pem.key_matches_cert(
            pem.load_private_key(files["ca.key"]), pem.load_certs(files["ca.crt"])[0]):
        raise BackupError("holds a CA key that does not belong to its CA certificate")
