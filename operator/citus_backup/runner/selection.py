"""Which databases to back up or restore, and how many at a time.

Kept free of I/O: the caller passes what it discovered (database names, CPU
affinity, the cgroup's ``cpu.max``), so every rule is unit-tested.

Names are matched exactly (no patterns): database names may contain ``*``,
``[`` or ``?``, and a backup that silently matches more or fewer databases
than asked for is worse than an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from citus_backup.errors import PermanentError

#: More parallel pg_dumps than this mostly adds contention on the server.
JOBS_CAP = 8


def quote_name(name: str) -> str:
    """A database/table name quoted for messages: ``"we\\"ird db"``."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def select_databases(
    available: Sequence[str], include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[str]:
    """Databases to process, in ``available`` order.

    ``include`` empty means all; an included name that does not exist is an
    error (a typo must not produce a backup without the database). Excluding a
    name that does not exist is fine (it is already not backed up).
    """
    include = list(dict.fromkeys(include))
    excluded = set(exclude)
    missing = [name for name in include if name not in available]
    if missing:
        names = ", ".join(quote_name(name) for name in missing)
        raise PermanentError(
            f"database(s) {names} not found on the server", reason="DatabaseNotFound"
        )
    wanted = set(include) if include else set(available)
    selected = [name for name in available if name in wanted and name not in excluded]
    if not selected:
        raise PermanentError(
            "no database left to back up after --include-database/--exclude-database",
            reason="NothingToBackUp",
        )
    return selected


def effective_cpus(affinity: int, cpu_max: str | None = None) -> int:
    """CPUs this process may use: its affinity, limited by a cgroup v2 quota.

    ``cpu_max`` is the content of ``/sys/fs/cgroup/cpu.max`` (``"max 100000"``
    or ``"200000 100000"``): a pod with a CPU limit sees all of the node's CPUs
    in its affinity mask but may only use its quota.
    """
    cpus = max(1, affinity)
    if cpu_max:
        fields = cpu_max.split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                return cpus
            if quota > 0 and period > 0:
                cpus = min(cpus, max(1, math.ceil(quota / period)))
    return cpus


def default_jobs(cpus: int, databases: int) -> int:
    """Parallel databases: one per CPU, at most :data:`JOBS_CAP` and the count."""
    return max(1, min(cpus, JOBS_CAP, max(1, databases)))
