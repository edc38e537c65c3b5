"""A restore's progress, advertised in the ``application_name`` of one of its sessions.

Why: a restore writes only into PostgreSQL, its pod has no Kubernetes
credentials (and must not get any to report progress), and it must not write
into the bucket it restores from. The operator can already ask the target
server (its read-only "target exists" guard uses the policy's password). So
the runner keeps one extra session open on the maintenance database and
sets its ``application_name`` to ``citus-backup:<tag>:<done>/<total>:<bytes>``
at the progress interval; the operator reads it from ``pg_stat_activity``.
``tag`` is a hash of the CitusRestore's namespace and name (the Job passes
it as ``--progress-tag``), so one restore's beacon is never read as
another's. Nothing is written anywhere; the session ends with the run.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the operator imports this module for parse_beacon: no psycopg for it
    from citus_backup.runner import pg

log = logging.getLogger("citus_backup.runner")

PREFIX = "citus-backup:"
#: PostgreSQL keeps NAMEDATALEN - 1 bytes of an application_name.
MAX_NAME = 63
_BEACON = re.compile(
    r"^citus-backup:(?P<tag>[0-9a-f]+):(?P<done>\d+)/(?P<total>\d+):(?P<bytes>\d+)$"
)


def beacon_name(tag: str, done: int, total: int, size: int) -> str:
    return f"{PREFIX}{tag}:{done}/{total}:{size}"[:MAX_NAME]


def parse_beacon(name: str, tag: str) -> tuple[int, int, int] | None:
    """(done, total, bytes) if ``name`` is the beacon of ``tag``."""
    match = _BEACON.match(name)
    if match is None or match["tag"] != tag:
        return None
    return int(match["done"]), int(match["total"]), int(match["bytes"])


class Beacon:
    """The session, updated every ``interval`` seconds from ``read()`` -> (done, total, bytes)."""

    def __init__(
        self,
        connect: Callable[[], pg.Connection],
        tag: str,
        read: Callable[[], tuple[int, int, int]],
        interval: float,
    ) -> None:
        self.connect = connect
        self.tag = tag
        self.read = read
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _publish(self, conn: pg.Connection) -> None:
        done, total, size = self.read()
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            (beacon_name(self.tag, done, total, size),),
        )

    def _run(self) -> None:
        try:
            conn = self.connect()
        except Exception as exc:
            log.warning("progress beacon not started: %s", exc)
            return
        try:
            while True:
                try:
                    self._publish(conn)
                except Exception as exc:
                    log.warning("progress beacon stopped: %s", exc)
                    return
                if self._stop.wait(self.interval):
                    return
        finally:
            conn.close()

    def __enter__(self) -> Beacon:
        self._thread = threading.Thread(target=self._run, name="beacon", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
