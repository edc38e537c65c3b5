"""Verification: prove a stored backup restores, without touching a real database.

``citus-backup restore --verify`` restores every database of a set into a
scratch database (all sections, checksums verified while streaming, the
Citus distribution rebuilt where the server has Citus), compares the restored
tables' row counts (and distribution) with the manifest, runs the user's SQL
checks, and drops the scratch database, on every node. Nothing else on the
server is created, renamed or dropped: roles are never restored (they are
server-wide), and the only databases it drops are its own scratch databases.

Scratch names are reserved and deterministic: ``citus_backup_verify_`` + a
hash of the source name + as much of the name as fits. A verification killed
with SIGKILL (no ``finally`` runs) leaves its scratch database behind; the
next verification on that server drops every database with the reserved
prefix before it starts, so a leftover lives at most until then. SIGTERM (a
deleted pod, the Job's deadline) is turned into an error and the scratch
database is dropped on the way out.

User checks come from a directory (the policy's ConfigMap, mounted by the
Job): a file ``<database>.<check>.sql`` holds one query run in the scratch
copy of ``<database>``; it must return exactly one row whose first column
is true. Anything else (false, NULL, no row, an error) fails the check, named
in the error. Files for databases that are not in the backup fail the run:
a check that silently never runs is worse than none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from citus_backup.errors import PermanentError

#: Prefix of every scratch database; never used for anything else.
SCRATCH_PREFIX = "citus_backup_verify_"
#: PostgreSQL's identifier limit in bytes (NAMEDATALEN - 1).
MAX_NAME = 63
#: Hex digits of the source-name hash in a scratch name (unique per database).
HASH_CHARS = 8
#: A check file: ``<database>.<check>.sql`` (ConfigMap keys allow [-._a-zA-Z0-9]).
CHECK_FILE = re.compile(r"^(?P<database>[A-Za-z0-9_-]+)\.(?P<check>[A-Za-z0-9_.-]+)\.sql$")
#: Largest check file read (a query, not a script).
MAX_CHECK_BYTES = 64 * 1024


def scratch_name(database: str) -> str:
    """The scratch database for ``database``: reserved prefix, hash, readable tail."""
    digest = hashlib.sha256(database.encode()).hexdigest()[:HASH_CHARS]
    head = f"{SCRATCH_PREFIX}{digest}_"
    tail = database.encode()[: MAX_NAME - len(head)].decode("utf-8", "ignore")
    return head + tail


def is_scratch(name: str) -> bool:
    return name.startswith(SCRATCH_PREFIX)


@dataclass(frozen=True)
class Check:
    database: str
    name: str
    query: str


def load_checks(directory: Path | None) -> list[Check]:
    """The checks in ``directory`` (sorted), or none; PermanentError for a bad file."""
    if directory is None:
        return []
    if not directory.is_dir():
        raise PermanentError(
            f"checks directory {directory} does not exist", reason="InvalidArgument"
        )
    checks = []
    for path in sorted(directory.iterdir()):
        # ConfigMap volumes hold ..data and timestamped folders next to the keys.
        if path.name.startswith(".") or path.is_dir():
            continue
        match = CHECK_FILE.match(path.name)
        if match is None:
            raise PermanentError(
                f"check {path.name!r}: the name must be <database>.<check>.sql",
                reason="InvalidCheck",
            )
        if path.stat().st_size > MAX_CHECK_BYTES:
            raise PermanentError(
                f"check {path.name!r} is larger than {MAX_CHECK_BYTES} bytes",
                reason="InvalidCheck",
            )
        query = path.read_text().strip()
        if not query:
            raise PermanentError(f"check {path.name!r} is empty", reason="InvalidCheck")
        checks.append(Check(match["database"], match["check"], query))
    return checks


def check_databases(checks: list[Check], databases: set[str]) -> None:
    """Every check names a database of the backup, or PermanentError."""
    unknown = sorted({c.database for c in checks} - databases)
    if unknown:
        have = ", ".join(sorted(databases)) or "none"
        raise PermanentError(
            f"checks name database(s) not in the backup: {', '.join(unknown)} (it has: {have})",
            reason="InvalidCheck",
        )


def check_result(check: Check, rows: list[tuple[object, ...]]) -> str | None:
    """Why the check failed, or ``None`` if it passed (one row, first column true)."""
    label = f"check {check.database}.{check.name}"
    if len(rows) != 1 or not rows[0]:
        return f"{label} returned {len(rows)} rows, expected one row with true"
    value = rows[0][0]
    if value is not True:
        return f"{label} returned {value!r}, expected true"
    return None
