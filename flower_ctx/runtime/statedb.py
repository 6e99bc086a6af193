"""The SuperLink's state database across Flower releases (docs/flower-eras.md section 6).

Flower keeps its SQLite database in WAL mode (``state.db-wal``, ``state.db-shm`` beside it) and
migrates it with Alembic every time it opens it (``command.upgrade(...,
"heads")``, flwr/supercore/state/alembic/utils.py), silently and one way: a database upgraded by 1.41
or 1.42 cannot be opened by 1.39 or 1.40 ("Can't locate revision"). Before Flower starts on a
database that it is about to upgrade, flower-ctx copies it (SQLite backup API, consistent) to
``<database>.before-flwr-<release>``; a database that is newer than the installed Flower is refused
with the way back named, instead of Flower's traceback. Reading uses only the standard library.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import FlowerCtxError

# The Alembic revision chain of flwr's state database, oldest first, from each wheel's
# flwr/supercore/state/alembic/versions/ (35 files in 1.39.0 and 1.40.0, 38 in 1.41.0, 39 in 1.42.0).
CHAIN = ("8f4785e2dc47", "70dd3c19bc7a", "6e5225b231fc", "d90a2f91f23c", "d9bd9d502cf9")
HEADS = {(1, 39): "8f4785e2dc47", (1, 40): "8f4785e2dc47", (1, 41): "d90a2f91f23c", (1, 42): "d9bd9d502cf9"}
RELEASE_OF = {"8f4785e2dc47": "1.39/1.40", "d90a2f91f23c": "1.41", "d9bd9d502cf9": "1.42"}


class StateDbError(FlowerCtxError):
    """The state database cannot be used by the installed Flower."""


def revision(path: Path) -> str | None:
    """The database's Alembic revision; None when the file, the table or a row is missing."""
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(str(path), timeout=5)  # read-write: a WAL left by a crash is then readable
    except sqlite3.Error:
        return None
    try:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return str(row[0]) if row else None


def _minor(version: str) -> tuple[int, int]:
    from .eras import parse_version

    parts = parse_version(version)
    return (parts[0], parts[1]) if len(parts) >= 2 else (0, 0)


def backup_path(path: Path, installed: str) -> Path:
    return path.with_name(f"{path.name}.before-flwr-{installed}")


def prepare(path: Path, installed: str) -> list[str]:
    """Make ``path`` safe to open with Flower ``installed``: copy it when Flower will upgrade it,
    refuse when it is newer than Flower. Returns lines for the log."""
    head = HEADS.get(_minor(installed))
    current = revision(path)
    if head is None or current is None or current == head:
        return []
    if current not in CHAIN:  # a revision this flower-ctx does not know: leave it to Flower
        return [f"state database {path} is at Alembic revision {current}, unknown to flower-ctx"]
    if CHAIN.index(current) > CHAIN.index(head):
        backups = sorted(path.parent.glob(f"{path.name}.before-flwr-*"))
        hint = (f", or restore the copy taken before the upgrade: cp {backups[-1]} {path} and remove "
                f"{path.name}-wal and {path.name}-shm (they belong to the upgraded database)") if backups else ""
        raise StateDbError(
            f"state database {path} was upgraded by Flower {RELEASE_OF.get(current, 'newer')} (revision {current}); "
            f"Flower {installed} cannot open it and Flower has no downgrade: set FLOWER_VERSION back to that "
            f"release{hint}"
        )
    target = backup_path(path, installed)
    if not target.exists():
        src = sqlite3.connect(str(path), timeout=30)  # the backup API includes what is still in the WAL
        try:
            dst = sqlite3.connect(str(target))
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        target.chmod(0o600)
    return [f"Flower {installed} upgrades the state database {path} from revision {current} "
            f"({RELEASE_OF.get(current, '?')}) to {head}, one way; the copy {target} is the way back"]
