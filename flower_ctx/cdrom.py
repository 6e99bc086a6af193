"""Files of the context CD-ROM: how a private key reaches a VM without being in its CONTEXT.

Every VM of a OneFlow service can read the CONTEXT of every other through OneGate
(``GET /service?extended=true``), so a key written there is not private. OpenNebula's FILES_DS
puts files of a file datastore on the context CD-ROM instead (under their image name, next to
context.sh): the VM document only shows their datastore path. A secret variable set to
``file:NAME`` (e.g. ``FL_SSL_KEYFILE=file:server.key``) is read from there.

While one-context runs (at boot, and when the one-apps hook runs configure), the CD is mounted
read-only and ``MOUNT_DIR`` names the mount point (research: one-contextd). At other times, when an
operator runs configure by hand, the CD labelled CONTEXT is mounted read-only for the read, in a
private directory, and unmounted again.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from .errors import FlowerCtxError

PREFIX = "file:"
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")  # a file at the CD's top level, nothing else
MAX_BYTES = 1024 * 1024
LABEL = "CONTEXT"


class CdromError(FlowerCtxError):
    """A ``file:`` value could not be read from the context CD-ROM."""


def name_of(value: str) -> str | None:
    """The CD file a ``file:NAME`` value names; None for an ordinary value. Raises ValueError for a
    name that is not a plain file name (no directories, no '..')."""
    if not value.startswith(PREFIX):
        return None
    name = value[len(PREFIX):].strip()
    if not NAME_RE.match(name):
        raise ValueError("file: must name a file of the context CD-ROM (FILES_DS image name: letters, digits, "
                         "'.', '_', '-'), not a path")
    return name


def read(name: str, mount_dir: str | None = None, may_mount: bool = True) -> bytes:
    """The content of CD file ``name`` (raises CdromError). ``may_mount`` False (staging with --root):
    only an already mounted CD (MOUNT_DIR) is read."""
    from .files import read_file

    mount_dir = mount_dir if mount_dir is not None else os.environ.get("MOUNT_DIR")
    if mount_dir and os.path.isdir(mount_dir):
        return _read_in(Path(mount_dir), name, read_file)
    if not may_mount:
        raise CdromError(f"{name}: with --root, file: values are read only from the mounted context CD-ROM "
                         "(MOUNT_DIR), which is not set")
    device = _device()
    if device is None:
        raise CdromError(f"the context CD-ROM (label {LABEL}) that should hold {name} is not mounted and no such "
                         "device was found; is the file in the VM template's FILES_DS?")
    with tempfile.TemporaryDirectory(prefix="flower-ctx-cd-", dir="/run") as tmp:
        out = _run(["mount", "-o", "ro,nodev,nosuid,noexec", device, tmp])
        if out.returncode != 0:
            raise CdromError(f"cannot mount the context CD-ROM {device} to read {name}: {out.stderr.strip()[:200]}")
        try:
            return _read_in(Path(tmp), name, read_file)
        finally:
            _run(["umount", tmp])


def _read_in(directory: Path, name: str, read_file: object) -> bytes:
    try:
        return read_file(directory / name, limit=MAX_BYTES)  # type: ignore[operator]
    except FileNotFoundError:
        raise CdromError(f"{name} is not on the context CD-ROM (add it to the VM template's FILES_DS)") from None
    except (OSError, FlowerCtxError) as exc:
        raise CdromError(f"cannot read {name} from the context CD-ROM: {exc}") from None


def _device() -> str | None:
    by_label = Path(f"/dev/disk/by-label/{LABEL}")
    if by_label.exists():
        return str(by_label.resolve())
    try:
        out = _run(["blkid", "-t", f"LABEL={LABEL}", "-o", "device"])
    except CdromError:
        return None
    found = out.stdout.split()
    return found[0] if out.returncode == 0 and found else None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    from .supervisor import child_environment

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=child_environment())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CdromError(f"{argv[0]} failed: {exc}") from None
