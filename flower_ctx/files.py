"""Atomic, change-only file writes: the one way flower-ctx puts a file on disk.

Recipe (research note A5): temp file in the target directory opened O_EXCL with its final mode,
owner set before any content is visible, write, fsync, rename over the target, fsync the directory.
A crash at any point leaves the old file or the new one, never a mix; an identical file is not
touched at all (same mtime), which is what makes re-runs report "unchanged".
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ApplyError

# Test seam: called with (stage, path) at each step of a write ("temp-written", "renamed").
# Crash-safety tests set it to a function that SIGKILLs the process at a chosen write.
FAULT_HOOK: Callable[[str, Path], None] | None = None
if os.environ.get("FLOWER_CTX_FAULT_AT"):
    # "N" kills the process at the N-th write (after the temp file is complete, before rename):
    # lets a test crash a real `flower-ctx configure` run at every write without patching code.
    _fault_n = int(os.environ["FLOWER_CTX_FAULT_AT"])
    _fault_count = 0

    def _env_fault(stage: str, path: Path) -> None:
        global _fault_count
        if stage == "temp-written":
            _fault_count += 1
            if _fault_count == _fault_n:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)

    FAULT_HOOK = _env_fault


class Outcome(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class FileChange:
    path: Path
    outcome: Outcome
    note: str = ""


def _resolve_ids(owner: str | None, group: str | None) -> tuple[int, int]:
    """uid/gid to chown to; -1 leaves it as is (user missing in a staging root or a test, or not root:
    an operator staging a tree as themselves cannot chown, and the owner only matters on the VM)."""
    import grp
    import pwd

    uid = gid = -1
    if os.geteuid() != 0:
        return uid, gid
    if owner is not None:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            uid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            gid = -1
    return uid, gid


def _fault(stage: str, path: Path) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(stage, path)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o755, owner: str | None = None, group: str | None = None) -> bool:
    """Create ``path`` (and parents) with ``mode``; fix mode/owner of an existing one. True if changed."""
    changed = False
    if not path.is_dir():
        # Missing parents are created, existing ones left exactly as they are (e.g. a 1777 /tmp
        # above a --root staging tree): only ``path`` itself is ours to set.
        os.makedirs(path.parent, 0o755, exist_ok=True)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
        changed = True
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        changed = True
    uid, gid = _resolve_ids(owner, group)
    if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
        os.chown(path, uid, gid)
        changed = True
    return changed


def write_file(
    path: Path,
    content: bytes,
    mode: int = 0o644,
    owner: str | None = None,
    group: str | None = None,
) -> FileChange:
    """Write ``content`` to ``path`` atomically, only when it differs. Parents must exist."""
    path = Path(path)
    uid, gid = _resolve_ids(owner, group)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        try:
            same = path.read_bytes() == content
        except OSError:
            same = False
        if same:
            # Content right: still converge mode and owner, which is cheap and needs no rewrite.
            fixed = False
            if st.st_mode & 0o7777 != mode:
                os.chmod(path, mode)
                fixed = True
            if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
                os.chown(path, uid, gid)
                fixed = True
            return FileChange(path, Outcome.UPDATED if fixed else Outcome.UNCHANGED, "permissions" if fixed else "")

    directory = path.parent
    tmp = directory / f".{path.name}.flower-ctx-{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    except FileExistsError:
        # Left by a crashed run of the same PID (PID reuse): it's ours, never the target.
        os.unlink(tmp)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise ApplyError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        try:
            os.fchmod(fd, mode)  # umask may have narrowed the mode given to open()
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            view = memoryview(content)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fault("temp-written", path)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise ApplyError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
    _fault("renamed", path)
    return FileChange(path, Outcome.CREATED if st is None else Outcome.UPDATED)


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files a killed run left behind (they never hold a live target)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".") and ".flower-ctx-" in entry.name and entry.name.endswith(".tmp"):
            try:
                entry.unlink()
            except FileNotFoundError:
                pass
