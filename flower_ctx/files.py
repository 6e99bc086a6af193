"""Every file operation flower-ctx makes, done so that root never follows a link it did not make.

Part of the tree flower-ctx writes is writable by other users: ``/opt/flower/state`` belongs to the
``flower`` user that runs Flower and the app code Flower runs, and a ``--root`` staging tree may
belong to anyone. A path is therefore never handed to the kernel whole: it is walked one component
at a time from ``/`` with ``O_NOFOLLOW`` (``openat`` on the directory opened before), and every
change is made on what was opened (``fchmod``/``fchown`` on the descriptor, ``renameat`` inside the
directory descriptor). A symbolic link on the way is followed only when it is trusted: owned by
root (or by the user running flower-ctx) in a directory nobody else can change, such as Debian's
``/var/run -> /run``. Any other link, where a directory or a file is expected, is refused with the
path named; so are FIFOs, devices and sockets where a file is expected (reading them could block
or never end).

Writes (research note A5): temp file in the target directory, created ``O_EXCL`` with its final
mode and owner, written, fsynced, renamed over the target, directory fsynced. A crash at any point
leaves the old file or the new one, never a mix; an identical file is not touched at all (same
mtime), which is what makes re-runs report "unchanged".
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ApplyError

# Test seam, set only by Python code (tests import this module and assign it; no environment
# variable can switch it on): called with (stage, path) at each step of a write
# ("temp-written", "renamed").
FAULT_HOOK: Callable[[str, Path], None] | None = None

# Largest file flower-ctx reads whole (certificates, keys, JSON state): anything bigger is not one
# of its files, and reading it would only cost memory.
READ_LIMIT = 4 * 1024 * 1024
_MAX_LINK_HOPS = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePathError(ApplyError):
    """A path holds a link flower-ctx will not follow, or the wrong kind of file. Nothing was changed
    through it; the message names the path and what to do."""


class Outcome(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class FileChange:
    path: Path
    outcome: Outcome
    note: str = ""


def _trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _fault(stage: str, path: Path) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(stage, path)


def _os_error(what: str, path: Path | str, exc: OSError) -> ApplyError:
    return ApplyError(f"cannot {what} {path}: {exc.strerror or exc}")


# --------------------------------------------------------------------------------------------------
# Walking a path without following links


def _link_trusted(parent_fd: int, name: str) -> tuple[bool, os.stat_result]:
    """Is the link ``name`` in ``parent_fd`` one root may follow? Owned by a trusted user, in a
    directory only a trusted user can change (or a sticky one, where only its owner can replace it)."""
    lst = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    parent = os.fstat(parent_fd)
    trusted = _trusted_uids()
    parent_safe = parent.st_uid in trusted and (
        not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(parent.st_mode & stat.S_ISVTX)
    )
    return lst.st_uid in trusted and parent_safe, lst


def _refuse_link(shown: str, lst: os.stat_result) -> UnsafePathError:
    return UnsafePathError(
        f"{shown} is a symbolic link (owner uid {lst.st_uid}) where flower-ctx expects a real directory or "
        "file; it is not followed and nothing was changed through it. Remove the link and run again"
    )


def open_dir(path: Path | str, *, create: bool = False, create_mode: int = 0o755) -> int:
    """A descriptor of the directory ``path`` (absolute), reached without following untrusted links.

    With ``create``, missing directories are made with ``create_mode`` (existing ones are left
    exactly as they are). The caller closes the descriptor.
    """
    text = os.fspath(path)
    if not text.startswith("/"):
        text = os.path.abspath(text)
    todo = [p for p in text.split("/") if p not in ("", ".")]
    fd = os.open("/", _DIR_FLAGS)
    done: list[str] = []
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                nfd = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                if done:
                    done.pop()
                continue
            shown = "/" + "/".join([*done, name])
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                made = False
                try:
                    os.mkdir(name, create_mode, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass  # made by someone else meanwhile: opened (and checked) below
                except OSError as exc:
                    raise _os_error("create directory", shown, exc) from None
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                if made:
                    os.fchmod(nfd, create_mode)  # the umask (0077 under one-apps) must not narrow it
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise _os_error("open directory", shown, exc) from None
                trusted, lst = _link_trusted(fd, name)
                if not stat.S_ISLNK(lst.st_mode):
                    raise UnsafePathError(f"{shown} is not a directory") from None
                if not trusted:
                    raise _refuse_link(shown, lst) from None
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise UnsafePathError(f"{shown}: too many levels of symbolic links") from None
                target = os.readlink(name, dir_fd=fd)
                rest = [p for p in target.split("/") if p not in ("", ".")]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                    done = []
                todo = rest + todo
                continue
            os.close(fd)
            fd = nfd
            done.append(name)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _parent(path: Path, create: bool = False) -> Iterator[int]:
    fd = open_dir(path.parent, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_existing(dir_fd: int, path: Path) -> int | None:
    """``path``'s file opened read-only without following a link; None when absent."""
    try:
        fd = os.open(path.name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(str(path), os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)) from None
        raise _os_error("open", path, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UnsafePathError(f"{path} is {kind} where flower-ctx expects a file; remove it and run again")
    return fd


def _read_fd(fd: int, limit: int, path: Path) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(65536, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ApplyError(f"{path} is larger than {limit} bytes: not a file flower-ctx wrote")


# --------------------------------------------------------------------------------------------------
# Reading


def read_file(path: Path | str, limit: int = READ_LIMIT) -> bytes:
    """The bytes of a regular file, opened without following links. FileNotFoundError when absent
    (also when a directory on the way is missing); UnsafePathError for a link or a non-file."""
    path = Path(path)
    try:
        with _parent(path) as dfd:
            fd = _open_existing(dfd, path)
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            try:
                return _read_fd(fd, limit, path)
            finally:
                os.close(fd)
    except NotADirectoryError:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path)) from None


def read_tail(path: Path | str, size: int) -> bytes:
    """The last ``size`` bytes of a regular file (logs), opened without following links."""
    path = Path(path)
    with _parent(path) as dfd:
        fd = _open_existing(dfd, path)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        try:
            end = os.fstat(fd).st_size
            os.lseek(fd, max(0, end - size), os.SEEK_SET)
            return _read_fd(fd, size, path)
        finally:
            os.close(fd)


def exists(path: Path | str) -> bool:
    """True when ``path`` names something (a link counts: it is there, whatever it points to)."""
    path = Path(path)
    try:
        with _parent(path) as dfd:
            os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
            return True
    except (FileNotFoundError, NotADirectoryError):
        return False


def is_dir(path: Path | str) -> bool:
    """True when ``path`` is a real directory reached without untrusted links."""
    try:
        os.close(open_dir(path))
        return True
    except (FileNotFoundError, NotADirectoryError, UnsafePathError):
        return False


# --------------------------------------------------------------------------------------------------
# Changing


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


def _converge(fd: int, mode: int, uid: int, gid: int) -> bool:
    """Set mode and owner on an open descriptor; True if anything changed."""
    st = os.fstat(fd)
    changed = False
    if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
        os.fchown(fd, uid, gid)  # before the mode: chown clears set-id bits
        changed = True
    if st.st_mode & 0o7777 != mode:
        os.fchmod(fd, mode)
        changed = True
    return changed


def fsync_dir(directory: Path) -> None:
    fd = open_dir(directory)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o755, owner: str | None = None, group: str | None = None) -> bool:
    """Create ``path`` with ``mode`` (missing parents 0755, existing ones untouched); fix mode and
    owner of an existing one. True if changed. A link where the directory should be is refused."""
    path = Path(path)
    uid, gid = _resolve_ids(owner, group)
    try:
        with _parent(path, create=True) as pfd:
            created = False
            try:
                os.mkdir(path.name, mode, dir_fd=pfd)
                created = True
            except FileExistsError:
                pass
            try:
                fd = os.open(path.name, _DIR_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    lst = os.stat(path.name, dir_fd=pfd, follow_symlinks=False)
                    if stat.S_ISLNK(lst.st_mode):
                        raise _refuse_link(str(path), lst) from None
                    raise UnsafePathError(f"{path} is not a directory; remove it and run again") from None
                raise
            try:
                return _converge(fd, mode, uid, gid) or created
            finally:
                os.close(fd)
    except ApplyError:
        raise
    except OSError as exc:
        raise _os_error("set up directory", path, exc) from None


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
        with _parent(path) as dfd:
            return _write_in(dfd, path, content, mode, uid, gid)
    except ApplyError:
        raise
    except OSError as exc:
        raise _os_error("write", path, exc) from None


def _write_in(dfd: int, path: Path, content: bytes, mode: int, uid: int, gid: int) -> FileChange:
    existing = _open_existing(dfd, path)
    if existing is not None:
        try:
            try:
                same = _read_fd(existing, len(content), path) == content
            except ApplyError:
                same = False  # longer than the new content: different
            if same:
                # Content right: still converge mode and owner, on the file that was opened.
                fixed = _converge(existing, mode, uid, gid)
                return FileChange(path, Outcome.UPDATED if fixed else Outcome.UNCHANGED, "permissions" if fixed else "")
        finally:
            os.close(existing)

    tmp = f".{path.name}.flower-ctx-{os.getpid()}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode, dir_fd=dfd)
    except FileExistsError:
        # Left by a crashed run of the same PID (PID reuse): ours, never the target (unlink does not
        # follow a link either).
        os.unlink(tmp, dir_fd=dfd)
        fd = os.open(tmp, flags, mode, dir_fd=dfd)
    try:
        try:
            os.fchmod(fd, mode)  # umask may have narrowed the mode given to open()
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fault("temp-written", path)
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    os.fsync(dfd)
    _fault("renamed", path)
    return FileChange(path, Outcome.CREATED if existing is None else Outcome.UPDATED)


def unlink(path: Path | str) -> bool:
    """Remove ``path`` (a link is removed, never followed). False when it was not there."""
    path = Path(path)
    try:
        with _parent(path) as dfd:
            os.unlink(path.name, dir_fd=dfd)
            return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except ApplyError:
        raise
    except OSError as exc:
        raise _os_error("remove", path, exc) from None


def list_dir(path: Path | str) -> list[str]:
    """Names in a directory reached without untrusted links; [] when it does not exist."""
    try:
        fd = open_dir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def open_for_append(path: Path | str, mode: int = 0o644) -> int:
    """A write-only, appending descriptor of a log file (created with ``mode``), never through a link."""
    path = Path(path)
    try:
        with _parent(path, create=True) as dfd:
            fd = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, mode, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symbolic link; flower-ctx does not write through it: remove it") \
                from None
        raise _os_error("open", path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file; remove it and run again")
    os.set_blocking(fd, True)
    return fd


def open_lock(path: Path | str) -> int:
    """A descriptor for ``flock`` on a lock file (created 0600), never through a link."""
    path = Path(path)
    try:
        with _parent(path, create=True) as dfd:
            fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600,
                         dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"lock file {path} is a symbolic link; remove it and run again") from None
        raise _os_error("open lock file", path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"lock file {path} is not a regular file; remove it and run again")
    return fd


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files a killed run left behind (they never hold a live target)."""
    try:
        fd = open_dir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        for name in os.listdir(fd):
            if name.startswith(".") and ".flower-ctx-" in name and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
