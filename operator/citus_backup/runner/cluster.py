"""The nodes a restore changes, and the database operations that must happen on
all of them together: create, swap, rename, drop.

Why: a Citus database exists on the coordinator *and* on every worker (the
shards live in the worker's database of the same name; the coordinator finds
them by that name). PostgreSQL's CREATE/ALTER/DROP DATABASE act on one server,
and Citus propagates them only for databases it created itself with
``citus.enable_create_database_propagation``; so the runner does it on every
node, with DDL propagation off in its own sessions so that nothing is done
twice. Plain PostgreSQL is the same code with no workers.

Determinism, not retries: the Citus maintenance daemon (and any client)
reconnects to a database as long as it accepts connections. Before a rename,
both databases are closed to new connections on every node
(``ALLOW_CONNECTIONS false``, which background workers honour too), their
sessions terminated, and their exit awaited; after that nobody can be on
them, and the renames cannot fail with "being accessed by other users".

Atomic across nodes: the swap runs on the workers as prepared transactions
(``PREPARE TRANSACTION``) and then on the coordinator as a plain transaction,
which is the decision: if anything fails before the coordinator commits, every
worker rolls back and the old database is intact and serving everywhere; once
the coordinator has committed, the workers' prepared transactions are
committed (retried; a worker that stays unreachable is reported with the
statement that finishes it). Workers need ``max_prepared_transactions > 0``,
which Citus requires anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner import pg
from citus_backup.runner.config import PgConfig
from citus_backup.runner.selection import quote_name

log = logging.getLogger("citus_backup.runner")

#: Seconds to wait for terminated sessions to exit (they exit at their next
#: interrupt check: milliseconds, unless a backend is stuck in I/O).
TERMINATE_WAIT = 30.0
#: Attempts to commit a worker's prepared swap after the coordinator committed.
COMMIT_PREPARED_ATTEMPTS = 5
COMMIT_PREPARED_DELAY = 1.0
#: Prefix of the prepared transactions' ids (``pg_prepared_xacts.gid``).
GID_PREFIX = "citus_backup_swap_"
#: Our sessions never propagate DDL, whatever the server's defaults: each
#: statement is run on each node by us. (``set_config`` on a ``citus.*``
#: name also works where Citus is not loaded: it is a placeholder there.)
NO_PROPAGATION = (
    "SELECT set_config('citus.enable_ddl_propagation', 'off', false),"
    " set_config('citus.enable_create_database_propagation', 'off', false)"
)


@dataclass(frozen=True)
class Node:
    """One server: the coordinator, or a worker as the coordinator names it."""

    label: str  # "coordinator" or "worker host:port", for messages
    config: PgConfig
    host: str | None = None
    port: int | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.host is None


def worker_config(config: PgConfig, host: str, port: int) -> PgConfig:
    """The coordinator's settings (user, password, TLS) aimed at a worker."""
    overrides = {**config.overrides, "PGHOST": host, "PGPORT": str(port), "PGHOSTADDR": ""}
    return dataclasses.replace(config, overrides=overrides)


@dataclass(frozen=True)
class Cluster:
    coordinator: Node
    workers: tuple[Node, ...] = ()
    #: (host, port) for ``citus_set_coordinator_host`` (None: not in metadata).
    coordinator_host: tuple[str, int] | None = None

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.coordinator, *self.workers)

    @classmethod
    def single(cls, config: PgConfig) -> Cluster:
        return cls(Node("coordinator", config))

    @classmethod
    def with_workers(
        cls,
        config: PgConfig,
        workers: Sequence[tuple[str, int]],
        coordinator_host: tuple[str, int] | None,
    ) -> Cluster:
        return cls(
            Node("coordinator", config),
            tuple(
                Node(f"worker {host}:{port}", worker_config(config, host, port), host, port)
                for host, port in workers
            ),
            coordinator_host,
        )

    def describe(self) -> str:
        return ", ".join(node.label for node in self.nodes)


# ------------------------------------------------------------ discovery


def citus_available(conn: pg.Connection) -> bool:
    """Whether CREATE EXTENSION citus can work on this server (installed and preloaded)."""
    with pg.errors_as("check for the Citus extension"):
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')"
            " AND current_setting('shared_preload_libraries') ~ '(^|[ ,])citus($|[ ,])'"
        ).fetchone()
    return bool(row and row[0])


def has_citus(conn: pg.Connection) -> bool:
    with pg.errors_as("check for the Citus extension"):
        row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    return row is not None


def topology(conn: pg.Connection) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """Active primary workers and the coordinator's entry of a Citus database."""
    with pg.errors_as("read the Citus node list (pg_dist_node)"):
        rows = conn.execute(
            "SELECT nodename, nodeport, groupid FROM pg_dist_node"
            " WHERE noderole = 'primary' AND isactive ORDER BY groupid, nodeid"
        ).fetchall()
    workers = [(str(r[0]), int(r[1])) for r in rows if int(r[2]) != 0]
    coordinator = next(((str(r[0]), int(r[1])) for r in rows if int(r[2]) == 0), None)
    return workers, coordinator


# ------------------------------------------------------------- sessions


class Sessions:
    """One maintenance-database session per node, DDL propagation off."""

    def __init__(self, cluster: Cluster, maintenance_db: Callable[[Node], str]) -> None:
        self.cluster = cluster
        self._maintenance_db = maintenance_db
        self._conns: dict[str, pg.Connection] = {}

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, node: Node) -> pg.Connection:
        conn = self._conns.get(node.label)
        if conn is None or conn.closed:
            conn = pg.Pg(node.config).connect(self._maintenance_db(node))
            try:
                with pg.errors_as(f"{node.label}: session settings"):
                    conn.execute(NO_PROPAGATION)
            except BaseException:
                conn.close()
                raise
            self._conns[node.label] = conn
        return conn

    def forget(self, node: Node) -> None:
        conn = self._conns.pop(node.label, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        for label in list(self._conns):
            with contextlib.suppress(Exception):
                self._conns.pop(label).close()


def database_exists(conn: pg.Connection, name: str) -> bool:
    return name in pg.all_database_names(conn)


def close_database(conn: pg.Connection, node: Node, name: str) -> None:
    """No new connection to ``name`` on ``node``, and no session left on it."""
    if not database_exists(conn, name):
        return
    pg.set_allow_connections(conn, name, False)
    terminated = pg.terminate_backends(conn, name)
    if terminated:
        log.info(
            "%s: database %s closed to connections, terminated %d session(s)",
            node.label,
            quote_name(name),
            terminated,
        )
    deadline = time.monotonic() + TERMINATE_WAIT
    while pg.sessions(conn, name):
        if time.monotonic() > deadline:
            raise TransientError(
                f"{node.label}: database {quote_name(name)} still has sessions "
                f"{TERMINATE_WAIT:.0f} s after they were terminated; nothing was changed",
                reason="DatabaseInUse",
            )
        time.sleep(0.05)


def open_database(conn: pg.Connection, name: str) -> None:
    if database_exists(conn, name):
        pg.set_allow_connections(conn, name, True)


# ------------------------------------------------------ swap and rename


def _renames(conn: pg.Connection, pairs: Sequence[tuple[str, str]]) -> None:
    for old, new in pairs:
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)
            )
        )


def rename_all(
    sessions: Sessions,
    renames: Callable[[Node, pg.Connection], Sequence[tuple[str, str]]],
    what: str,
    before_decision: Callable[[], None] = lambda: None,
) -> None:
    """Apply each node's renames atomically across the nodes (module docstring)."""
    cluster = sessions.cluster
    gid = GID_PREFIX + secrets.token_hex(6)
    prepared: list[Node] = []
    try:
        for node in cluster.workers:
            conn = sessions.get(node)
            pairs = renames(node, conn)
            with pg.errors_as(f"{what} on {node.label}"):
                conn.execute("BEGIN")
                try:
                    _renames(conn, pairs)
                    conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                    raise
            prepared.append(node)
        before_decision()
        conn = sessions.get(cluster.coordinator)
        pairs = renames(cluster.coordinator, conn)
        with pg.errors_as(f"{what} on the coordinator"), conn.transaction():
            _renames(conn, pairs)
    except BaseException:
        for node in prepared:
            _finish_prepared(sessions, node, gid, commit=False)
        raise
    failed = [node for node in prepared if not _finish_prepared(sessions, node, gid, commit=True)]
    if failed:
        raise PermanentError(
            f"{what}: done on the coordinator, but not yet on "
            f"{', '.join(n.label for n in failed)}: the prepared transaction {gid!r} there "
            f"must be committed (COMMIT PREPARED '{gid}') once the node is reachable",
            reason="SwapIncomplete",
        )


def _finish_prepared(sessions: Sessions, node: Node, gid: str, *, commit: bool) -> bool:
    verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
    for attempt in range(1, COMMIT_PREPARED_ATTEMPTS + 1):
        try:
            sessions.get(node).execute(sql.SQL(verb + " {}").format(sql.Literal(gid)))
            return True
        except (psycopg.Error, CitusBackupError) as exc:
            log.warning("%s: %s %r failed (attempt %d): %s", node.label, verb, gid, attempt, exc)
            sessions.forget(node)
            time.sleep(COMMIT_PREPARED_DELAY)
    return False


@contextlib.contextmanager
def closed(sessions: Sessions, *names: str) -> Iterator[None]:
    """``names`` closed to connections on every node for the block; reopened
    afterwards only if the block failed (on success the caller opens what now
    carries the final names)."""
    done: list[tuple[Node, str]] = []
    try:
        for node in sessions.cluster.nodes:
            conn = sessions.get(node)
            for name in names:
                close_database(conn, node, name)
                done.append((node, name))
        yield
    except BaseException:
        for node, name in done:
            with contextlib.suppress(Exception):
                open_database(sessions.get(node), name)
        raise
