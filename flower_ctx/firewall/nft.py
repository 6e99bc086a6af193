"""The only code that touches nftables: read our table's comment, replace or delete our table.

``nft`` is run with a scrubbed environment; every change is one ``nft -f`` transaction (delete and
re-create in one batch), so the table is never seen half-written.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ..errors import ApplyError
from .rules import COMMENT_PREFIX, TABLE_FAMILY, TABLE_NAME, table_text


def available() -> bool:
    return shutil.which("nft") is not None


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    from ..supervisor import child_environment

    try:
        return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, timeout=30,
                              env=child_environment())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApplyError(f"nft failed to run: {exc}") from None


def current_digest() -> str | None:
    """The hash our table carries ("" for a table without our comment); None when there is none.
    (Read from the text listing: nft 1.0's JSON output leaves table comments out.)"""
    out = _nft("list", "table", TABLE_FAMILY, TABLE_NAME)
    if out.returncode != 0:
        return None  # no such table
    m = re.search(r'^\s*comment "' + re.escape(COMMENT_PREFIX) + r'([0-9a-f]+)"\s*$', out.stdout, re.M)
    return m.group(1) if m else ""


def replace(body: str, digest: str, exists: bool) -> None:
    batch = (f"delete table {TABLE_FAMILY} {TABLE_NAME}\n" if exists else "") + table_text(body, digest)
    out = _nft("-f", "-", stdin=batch)
    if out.returncode != 0:
        raise ApplyError(f"nft refused the appliance's table: {out.stderr.strip()[:300]}")


def delete() -> None:
    out = _nft("delete", "table", TABLE_FAMILY, TABLE_NAME)
    if out.returncode != 0 and "No such file" not in out.stderr:
        raise ApplyError(f"nft could not delete the appliance's table: {out.stderr.strip()[:300]}")
