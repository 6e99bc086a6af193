"""Issue 14, files: root never follows a link it did not make, and never blocks on a non-file.

The attack is reproduced as it would happen on a VM: ``/opt/flower/state`` belongs to the ``flower``
user (the sandboxed Flower and the app code it runs); that user plants a symbolic link where
configure (root, at the next boot) creates or fixes a directory or a file. Each test first shows the
link is a real weapon (it resolves to the victim, and a naive chown/chmod through it changes the
victim), then runs the real ``flower-ctx configure`` as root and shows the victim untouched, exit 1,
and the link named on stderr.

The ``flower`` user exists only inside a private mount namespace (``unshare --mount`` with bind
mounts over /etc/passwd and /etc/group, as in test_tls_cli), so configure really resolves and chowns
to it; the namespace vanishes with the process. The attacker is a real process running as uid 4893.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from flower_ctx import files
from flower_ctx.errors import ApplyError
from flower_ctx.files import UnsafePathError
from flower_ctx.paths import Paths
from tests.conftest import IS_ROOT, REPO, requires_root

FLOWER_UID = 4893  # what the private /etc/passwd calls "flower" (same id as test_tls_cli)
EXAMPLE = REPO / "examples" / "superlink.context.sh"
TIMEOUT = 60  # seconds any one command may take: a hang on a FIFO fails instead of blocking the suite


# --------------------------------------------------------------------------------------------------
# Helpers


def _users(tmp_path: Path) -> tuple[Path, Path]:
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    if not passwd.exists():
        passwd.write_text(
            Path("/etc/passwd").read_text() + f"flower:x:{FLOWER_UID}:{FLOWER_UID}::/opt/flower:/bin/false\n"
        )
        group.write_text(Path("/etc/group").read_text() + f"flower:x:{FLOWER_UID}:\n")
    return passwd, group


def as_vm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``flower-ctx ARGS`` as root in a private mount namespace whose passwd/group name ``flower``."""
    passwd, group = _users(tmp_path)
    script = (
        f"mount --bind {shlex.quote(str(passwd))} /etc/passwd && mount --bind {shlex.quote(str(group))} /etc/group"
        f" && exec {shlex.join([sys.executable, '-m', 'flower_ctx.cli', *args])}"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
    )


def configure(tmp_path: Path, ctx: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return as_vm(tmp_path, "configure", "--role", "superlink", "--context", str(ctx), "--root", str(root))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flower_ctx.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT)


def context_with(tmp_path: Path, **extra: str) -> Path:
    """A copy of the example SuperLink CONTEXT with ``extra`` variables appended."""
    ctx = tmp_path / "context.sh"
    ctx.write_text(EXAMPLE.read_text() + "".join(f"{k}='{v}'\n" for k, v in extra.items()))
    return ctx


def as_flower(cmd: list[str], cwd: Path) -> None:
    """Run ``cmd`` as the flower user (uid/gid 4893, no supplementary groups) in ``cwd``: the attacker.
    The working directory is entered before the uid changes (the pytest temp tree above is 0700)."""
    subprocess.run(cmd, cwd=cwd, user=FLOWER_UID, group=FLOWER_UID, extra_groups=[], check=True,
                   capture_output=True, timeout=TIMEOUT)


def snapshot(path: Path) -> tuple[int, int, int, bytes | tuple[str, ...]]:
    """Mode, owner, group and content (bytes of a file, names in a directory) of a victim."""
    st = os.lstat(path)
    body: bytes | tuple[str, ...] = tuple(sorted(os.listdir(path))) if stat.S_ISDIR(st.st_mode) else path.read_bytes()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body


def victim_dir(tmp_path: Path, name: str = "victim") -> Path:
    """A root-owned 0755 directory outside the staging root, like /etc or /root would be."""
    d = tmp_path / name
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def victim_file(tmp_path: Path, name: str = "victim-file", mode: int = 0o600) -> Path:
    f = tmp_path / name
    f.write_bytes(b"VICTIM " + os.urandom(16).hex().encode() + b" must never be read, changed or shown\n")
    os.chmod(f, mode)
    return f


def untrusted_link(target: Path, link: Path) -> Path:
    """A symbolic link owned by the flower user (as if flower had made it)."""
    os.symlink(target, link)
    os.lchown(link, FLOWER_UID, FLOWER_UID)
    return link


def prove_naive_root_would_be_fooled(tmp_path: Path, kind: str) -> None:
    """The attack is real: through a link like the planted one, root's plain chown/chmod (what
    files.ensure_dir and the unchanged-content path did before issue 14) changes the target. Shown
    on a throwaway victim, never on the one the test guards."""
    throwaway = victim_dir(tmp_path, "throwaway") if kind == "dir" else victim_file(tmp_path, "throwaway", 0o644)
    link = untrusted_link(throwaway, tmp_path / "throwaway-link")
    os.chown(link, FLOWER_UID, FLOWER_UID)  # follows the link
    os.chmod(link, 0o700)
    st = os.stat(throwaway)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (FLOWER_UID, 0o700)


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, Path]:
    """(root, context): a SuperLink staging root configured once as on the VM (state/ is flower's)."""
    if not (IS_ROOT and shutil.which("unshare")):
        pytest.skip("needs root and unshare")
    root = tmp_path / "root"
    ctx = context_with(tmp_path)
    first = configure(tmp_path, ctx, root)
    assert first.returncode == 0, first.stderr
    return root, ctx


def assert_refused(proc: subprocess.CompletedProcess[str], link: Path) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-800:], proc.stderr[-800:])
    assert str(link) in proc.stderr, proc.stderr
    assert "unexpected error" not in proc.stderr + proc.stdout


# --------------------------------------------------------------------------------------------------
# The attack of the issue: flower replaces state/db with a link, root chowns through it at boot


@pytest.mark.parametrize("layout", ["absolute", "relative", "nested"])
def test_flower_user_symlink_in_state_cannot_make_root_chown_a_victim(
    tmp_path: Path, staged: tuple[Path, Path], layout: str
) -> None:
    root, _ = staged
    state = Paths(root).state_dir
    st = state.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (FLOWER_UID, 0o700)  # configure gave state/ to flower

    victim = victim_dir(tmp_path)
    before = snapshot(victim)
    # The attacker, as flower, plants the link where the next configure creates FL_DATABASE's directory.
    if layout == "absolute":
        as_flower(["ln", "-s", str(victim), "db"], cwd=state)
        link, database = state / "db", "state/db/state.db"
    elif layout == "relative":
        as_flower(["ln", "-s", os.path.relpath(victim, state), "db"], cwd=state)
        link, database = state / "db", "state/db/state.db"
    else:  # a real directory of flower's with the link one level down
        as_flower(["mkdir", "db"], cwd=state)
        as_flower(["ln", "-s", str(victim), "db/sub"], cwd=state)
        link, database = state / "db" / "sub", "state/db/sub/state.db"
    assert os.lstat(link).st_uid == FLOWER_UID and link.is_symlink()
    assert os.path.realpath(link) == str(victim)  # the link really leads to the victim
    prove_naive_root_would_be_fooled(tmp_path, "dir")

    proc = configure(tmp_path, context_with(tmp_path, FL_DATABASE=database), root)
    assert_refused(proc, link)
    assert "symbolic link" in proc.stderr
    assert snapshot(victim) == before  # still root:root 0755, and no state.db made inside it

    # Recovery: with the link gone, the same configure makes a real flower-owned 0700 directory.
    link.unlink()
    again = configure(tmp_path, context_with(tmp_path, FL_DATABASE=database), root)
    assert again.returncode == 0, again.stderr
    made = os.lstat(root / "opt/flower" / Path(database).parent)
    assert stat.S_ISDIR(made.st_mode) and (made.st_uid, stat.S_IMODE(made.st_mode)) == (FLOWER_UID, 0o700)
    assert snapshot(victim) == before


@pytest.mark.parametrize("owner", ["link-owned-by-flower", "directory-writable-by-flower"])
def test_certs_directory_replaced_by_a_link(tmp_path: Path, staged: tuple[Path, Path], owner: str) -> None:
    """A link where certs/ should be: refused whether the link or the directory holding it is not
    root's (a staging tree that belongs to someone else), so no key is written into the victim."""
    root, ctx = staged
    paths = Paths(root)
    victim = victim_dir(tmp_path)
    before = snapshot(victim)
    shutil.rmtree(paths.certs_dir)
    if owner == "link-owned-by-flower":
        untrusted_link(victim, paths.certs_dir)
    else:
        os.symlink(victim, paths.certs_dir)  # root's link, but in a directory flower can change
        os.chown(paths.flower_home, FLOWER_UID, FLOWER_UID)
    prove_naive_root_would_be_fooled(tmp_path, "dir")
    proc = configure(tmp_path, ctx, root)
    assert_refused(proc, paths.certs_dir)
    assert snapshot(victim) == before
    assert not list(victim.iterdir())  # no ca.key, no server.key landed in the victim directory


@pytest.mark.parametrize("name", ["ca.crt", "ca.key", "server.key", "server.pem"])
def test_key_or_certificate_replaced_by_a_link_to_a_victim_file(
    tmp_path: Path, staged: tuple[Path, Path], name: str
) -> None:
    root, ctx = staged
    paths = Paths(root)
    victim = victim_file(tmp_path)
    before = snapshot(victim)
    planted = paths.certs_dir / name
    planted.unlink()
    untrusted_link(victim, planted)
    prove_naive_root_would_be_fooled(tmp_path, "file")

    outputs = []
    proc = configure(tmp_path, ctx, root)
    assert_refused(proc, planted)
    outputs += [proc.stdout, proc.stderr]
    for args in (["status", "--root", str(root)], ["status", "--json", "--root", str(root)],
                 ["ca", "export", "--root", str(root)], ["doctor", "--root", str(root), "--context", str(ctx)]):
        other = cli(*args)
        assert other.returncode in (0, 1, 2) and "unexpected error" not in other.stderr, (args, other.stderr)
        outputs += [other.stdout, other.stderr]
    if name == "ca.crt":
        export = cli("ca", "export", "--root", str(root))
        assert export.returncode == 1 and str(planted) in export.stderr
    assert snapshot(victim) == before
    secret = victim.read_bytes().decode().split()[1]
    assert not [o for o in outputs if secret in o], "the victim's content was read into an output"
    assert planted.is_symlink()  # nothing replaced it behind the operator's back either


@pytest.mark.parametrize("dangling", [False, True])
def test_lock_file_replaced_by_a_link(tmp_path: Path, staged: tuple[Path, Path], dangling: bool) -> None:
    """configure.lock opened O_CREAT through a link would create or truncate files anywhere."""
    root, ctx = staged
    lock = Paths(root).agent_dir / "configure.lock"
    lock.unlink()
    target = tmp_path / "created-by-root" if dangling else victim_file(tmp_path, mode=0o644)
    before = None if dangling else snapshot(target)
    untrusted_link(target, lock)
    proc = configure(tmp_path, ctx, root)
    assert_refused(proc, lock)
    assert "lock file" in proc.stderr
    if dangling:
        assert not os.path.lexists(target)  # O_CREAT did not make the link's target
    else:
        assert snapshot(target) == before


def test_runtime_config_replaced_by_a_link(tmp_path: Path, staged: tuple[Path, Path]) -> None:
    root, ctx = staged
    paths = Paths(root)
    rt = paths.runtime_config("superlink")
    victim = victim_file(tmp_path, mode=0o644)
    before = snapshot(victim)
    rt.unlink()
    untrusted_link(victim, rt)
    prove_naive_root_would_be_fooled(tmp_path, "file")
    proc = configure(tmp_path, ctx, root)
    assert_refused(proc, rt)
    # Readers refuse it too: never run Flower from a file someone else points at.
    for args in (["status", "--root", str(root)], ["run", "superlink", "--root", str(root)]):
        other = cli(*args)
        assert other.returncode in (1, 2) and str(rt) in other.stderr, (args, other.returncode, other.stderr)
        assert "unexpected error" not in other.stderr
    assert snapshot(victim) == before


@pytest.mark.parametrize("where", ["opt/flower/certs/server.pem", "opt/flower/certs/ca.crt",
                                   "opt/flower/config/superlink.json"])
def test_fifo_where_a_file_is_expected_never_blocks(tmp_path: Path, staged: tuple[Path, Path], where: str) -> None:
    """Opening a FIFO for reading blocks until a writer comes: every command must refuse it at once
    (each has TIMEOUT seconds; a hang fails the test through subprocess.TimeoutExpired)."""
    root, ctx = staged
    fifo = root / where
    fifo.unlink()
    os.mkfifo(fifo)
    proc = configure(tmp_path, ctx, root)
    assert_refused(proc, fifo)
    assert "not a regular file" in proc.stderr
    for args in (["status", "--root", str(root)], ["ca", "export", "--root", str(root)]):
        other = cli(*args)
        assert other.returncode in (0, 1, 2) and "unexpected error" not in other.stderr, (args, other.stderr)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# --------------------------------------------------------------------------------------------------
# Trusted links are followed (Debian's /var/run -> /run); the rest are refused, in files.open_dir


def _debian_like(tmp_path: Path, target: str) -> tuple[Path, Path, Path]:
    """T/run/flower (the real directory) and T/var/run -> TARGET, all root-owned 0755 as on Debian."""
    top = tmp_path / "T"
    real = top / "run" / "flower"
    real.mkdir(parents=True)
    (top / "var").mkdir()
    for d in (top, top / "run", real, top / "var"):
        os.chmod(d, 0o755)
    link = top / "var" / "run"
    os.symlink(target.replace("@", str(top)), link)
    return top, real, link


@pytest.mark.parametrize("target", ["../run", "@/run"])
def test_trusted_link_is_followed(tmp_path: Path, target: str) -> None:
    top, real, link = _debian_like(tmp_path, target)
    fd = files.open_dir(top / "var" / "run" / "flower")
    try:
        assert (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == (real.stat().st_dev, real.stat().st_ino)
    finally:
        os.close(fd)
    change = files.write_file(top / "var" / "run" / "flower" / "x.pid", b"1\n", 0o644)
    assert change.outcome is files.Outcome.CREATED and (real / "x.pid").read_bytes() == b"1\n"
    assert files.read_file(top / "var" / "run" / "flower" / "x.pid") == b"1\n"
    assert files.is_dir(top / "var" / "run") and files.list_dir(top / "var" / "run") == ["flower"]


@requires_root
@pytest.mark.parametrize("how", ["link-owned-by-flower", "parent-world-writable", "parent-owned-by-flower"])
def test_untrusted_link_on_the_way_is_refused(tmp_path: Path, how: str) -> None:
    top, real, link = _debian_like(tmp_path, "../run")
    if how == "link-owned-by-flower":
        os.lchown(link, FLOWER_UID, FLOWER_UID)
    elif how == "parent-world-writable":
        os.chmod(top / "var", 0o777)
    else:
        os.chown(top / "var", FLOWER_UID, FLOWER_UID)
    with pytest.raises(UnsafePathError, match="symbolic link") as info:
        files.open_dir(top / "var" / "run" / "flower")
    assert str(link) in str(info.value)
    with pytest.raises(UnsafePathError):
        files.write_file(top / "var" / "run" / "flower" / "x.pid", b"1\n")
    with pytest.raises(UnsafePathError):
        files.ensure_dir(top / "var" / "run" / "flower" / "sub", 0o700)
    assert not files.is_dir(top / "var" / "run")
    assert list(real.iterdir()) == []  # nothing was written through the link


def test_sticky_world_writable_directory_keeps_its_owners_links(tmp_path: Path) -> None:
    """/tmp-like (1777): only a link's owner can replace it, so root's own link there is trusted."""
    top, real, link = _debian_like(tmp_path, "../run")
    os.chmod(top / "var", 0o1777)
    fd = files.open_dir(top / "var" / "run" / "flower")
    os.close(fd)


def test_link_loops_end_with_an_error(tmp_path: Path) -> None:
    top = tmp_path / "loop"
    top.mkdir()
    os.chmod(top, 0o755)
    os.symlink("b", top / "a")
    os.symlink("a", top / "b")
    with pytest.raises(UnsafePathError, match="too many levels"):
        files.open_dir(top / "a" / "x")


# --------------------------------------------------------------------------------------------------
# Unit level: each file operation of flower_ctx.files refuses links and non-regular files


def _bounded(fn: Callable[[], object], fifo: Path | None = None, seconds: float = 10.0) -> BaseException | None:
    """Run ``fn`` in a thread; fail (after unblocking a FIFO reader) if it does not end in time."""
    box: dict[str, BaseException | None] = {"exc": None}

    def work() -> None:
        try:
            fn()
        except BaseException as exc:  # handed back to the test
            box["exc"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if fifo is not None:  # unblock the reader so no thread outlives the test
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        t.join(5)
        pytest.fail(f"{fn} blocked for more than {seconds} s")
    return box["exc"]


def test_write_file_refuses_a_link_even_with_identical_content(tmp_path: Path) -> None:
    """The old unchanged-content path chmodded (and chowned) through the link: same bytes, other mode."""
    d = tmp_path / "d"
    d.mkdir()
    victim = victim_file(tmp_path, mode=0o644)
    before = snapshot(victim)
    os.symlink(victim, d / "server.key")
    for content in (victim.read_bytes(), b"new content"):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            files.write_file(d / "server.key", content, mode=0o600, owner="root", group="root")
        assert snapshot(victim) == before
    assert (d / "server.key").is_symlink() and [p.name for p in d.iterdir()] == ["server.key"]  # no temp left


def test_write_file_refuses_non_regular_targets(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "fifo")
    (d / "dir").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(d / "sock"))
        for name in ("fifo", "dir", "sock"):
            exc = _bounded(lambda n=name: files.write_file(d / n, b"x"), d / "fifo")  # type: ignore[misc]
            # UnsafePathError for what opens (FIFO, directory); a socket cannot even be opened (ENXIO):
            # either way a named ApplyError, and nothing replaced.
            assert isinstance(exc, ApplyError) and str(d / name) in str(exc), (name, exc)
    finally:
        sock.close()
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode) and stat.S_ISSOCK(os.lstat(d / "sock").st_mode)


@requires_root
def test_write_file_refuses_an_untrusted_link_in_the_parents(tmp_path: Path) -> None:
    victim = victim_dir(tmp_path)
    before = snapshot(victim)
    untrusted_link(victim, tmp_path / "certs")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        files.write_file(tmp_path / "certs" / "ca.key", b"key", 0o600)
    with pytest.raises(UnsafePathError):
        files.ensure_dir(tmp_path / "certs" / "sub" / "deeper")
    assert snapshot(victim) == before


def test_ensure_dir_refuses_a_link_and_a_file(tmp_path: Path) -> None:
    victim = victim_dir(tmp_path)
    before = snapshot(victim)
    os.symlink(victim, tmp_path / "db")
    with pytest.raises(UnsafePathError, match="symbolic link") as info:
        files.ensure_dir(tmp_path / "db", 0o700, owner="root", group="root")
    assert str(tmp_path / "db") in str(info.value)
    assert snapshot(victim) == before
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UnsafePathError, match="not a directory"):
        files.ensure_dir(tmp_path / "plain", 0o700)
    # A real directory is fixed in place, on what was opened.
    (tmp_path / "real").mkdir(mode=0o777)
    os.chmod(tmp_path / "real", 0o777)
    assert files.ensure_dir(tmp_path / "real", 0o700) is True
    assert stat.S_IMODE(os.stat(tmp_path / "real").st_mode) == 0o700


def test_read_file_refuses_links_fifos_devices_and_oversize(tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    os.symlink(victim, tmp_path / "link")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        files.read_file(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    exc = _bounded(lambda: files.read_file(tmp_path / "fifo"), tmp_path / "fifo")
    assert isinstance(exc, UnsafePathError) and "not a regular file" in str(exc)
    exc = _bounded(lambda: files.read_file("/dev/zero"))
    assert isinstance(exc, UnsafePathError)
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(ApplyError, match="larger than 1024"):
        files.read_file(tmp_path / "big", limit=1024)
    with pytest.raises(FileNotFoundError):
        files.read_file(tmp_path / "missing" / "x")


def test_unlink_removes_the_link_never_its_target(tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    before = snapshot(victim)
    os.symlink(victim, tmp_path / "pid")
    assert files.unlink(tmp_path / "pid") is True
    assert not os.path.lexists(tmp_path / "pid") and snapshot(victim) == before
    assert files.unlink(tmp_path / "pid") is False


@pytest.mark.parametrize("opener", ["open_lock", "open_for_append"])
def test_lock_and_log_openers_refuse_links_and_non_files(tmp_path: Path, opener: str) -> None:
    open_fn = getattr(files, opener)
    victim = victim_file(tmp_path, mode=0o644)
    before = snapshot(victim)
    os.symlink(victim, tmp_path / "existing")
    os.symlink(tmp_path / "would-be-created", tmp_path / "dangling")
    for name in ("existing", "dangling"):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            open_fn(tmp_path / name)
    assert snapshot(victim) == before and not os.path.lexists(tmp_path / "would-be-created")
    os.mkfifo(tmp_path / "fifo")
    exc = _bounded(lambda: open_fn(tmp_path / "fifo"), tmp_path / "fifo")
    assert isinstance(exc, ApplyError), exc
    (tmp_path / "dir").mkdir()
    with pytest.raises(ApplyError):
        open_fn(tmp_path / "dir")
    fd = open_fn(tmp_path / "real.log")  # the normal case still works, with the mode asked for
    try:
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
