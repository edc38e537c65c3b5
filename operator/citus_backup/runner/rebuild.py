"""Rebuilding a Citus database during a restore, and checking the result: the
I/O around :mod:`.citus`'s plan (which composes the SQL without I/O).

For a database whose backup has Citus metadata, restored into a cluster whose
coordinator has Citus (:mod:`.restore` decides):

1. the temporary database is created on the coordinator and on every worker,
   with ``CREATE EXTENSION citus`` on the workers (the dump brings it on the
   coordinator) — :func:`create_on_workers`;
2. after ``pre-data``: the coordinator (if it was in the metadata) and the
   workers are registered (``citus_set_coordinator_host``,
   ``citus_add_node``), then the tables are distributed in the plan's order —
   :func:`distribute`; the ``data`` section then goes straight to the shards;
3. after ``post-data``: the distribution is read back and compared with the
   manifest, and every table's rows are counted and compared with the counts
   recorded at backup time — :func:`verify`. A difference fails the restore
   before the swap, naming the table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from psycopg import sql

from citus_backup.errors import PermanentError
from citus_backup.runner import citus, pg
from citus_backup.runner.cluster import Cluster, Sessions
from citus_backup.runner.manifest import CitusMetadata, CitusSchema, CitusTable, DatabaseEntry
from citus_backup.runner.selection import quote_name

log = logging.getLogger("citus_backup.runner")


def create_on_workers(
    sessions: Sessions, temp: str, create: sql.Composed, owner: str | None
) -> None:
    """``temp`` on every worker, with the Citus extension (module docstring, 1)."""
    for node in sessions.cluster.workers:
        conn = sessions.get(node)
        if owner is not None and not pg.role_exists(conn, owner):
            raise PermanentError(
                f"{node.label}: role {quote_name(owner)} (owner of the database) does not "
                "exist there; Citus propagates roles created on the coordinator: create it "
                "there, or restore with --no-owner",
                reason="RoleNotFound",
            )
        pg.execute(conn, create, f"{node.label}: create temporary database {quote_name(temp)}")
        with pg.Pg(node.config).session(temp) as db:
            pg.execute(
                db,
                sql.SQL("CREATE EXTENSION IF NOT EXISTS citus"),
                f"{node.label}: CREATE EXTENSION citus in {quote_name(temp)}",
            )


def register_nodes(conn: pg.Connection, cluster: Cluster) -> None:
    """Register the coordinator (if it was in the metadata) and the workers."""
    if cluster.coordinator_host is not None:
        host, port = cluster.coordinator_host
        pg.execute(
            conn,
            sql.SQL("SELECT citus_set_coordinator_host({}, {})").format(
                sql.Literal(host), sql.Literal(port)
            ),
            f"register the coordinator {host}:{port}",
        )
    for node in cluster.workers:
        pg.execute(
            conn,
            sql.SQL("SELECT citus_add_node({}, {})").format(
                sql.Literal(node.host), sql.Literal(node.port)
            ),
            f"register {node.label}",
        )


def distribute(conn: pg.Connection, steps: Sequence[citus.Step]) -> None:
    for step in steps:
        pg.execute(conn, step.statement, step.what)
    log.info("rebuilt the distribution: %d step(s)", len(steps))


def read_distribution(conn: pg.Connection) -> tuple[list[CitusTable], list[CitusSchema]]:
    with pg.errors_as("read the restored Citus metadata"):
        tables = [citus.citus_table(r) for r in pg.rows_as_dicts(conn, citus.CITUS_TABLES_QUERY)]
        schemas = [
            CitusSchema(schema_name=str(r["schema_name"]), colocation_id=int(r["colocation_id"]))
            for r in pg.rows_as_dicts(conn, citus.CITUS_SCHEMAS_QUERY)
        ]
    return tables, schemas


@dataclass
class Verification:
    """What a restore checked, for the summary and the CitusRestore status."""

    tables_counted: int = 0
    rows: int = 0
    approximate: list[str] = field(default_factory=list)
    citus_tables: int | None = None
    citus_schemas: int = 0

    def describe(self) -> str:
        parts = []
        if self.tables_counted:
            parts.append(
                f"row counts of {self.tables_counted} table(s) ({self.rows} rows) match the backup"
            )
        else:
            parts.append("no row counts recorded in the backup: none checked")
        if self.citus_tables is not None:
            parts.append(
                f"distribution of {self.citus_tables} Citus table(s) and {self.citus_schemas} "
                "distributed schema(s) matches the backup (types, distribution columns, shard "
                "counts, colocation)"
            )
        if self.approximate:
            parts.append(
                "counts taken during concurrent writes differ (not an error): "
                + "; ".join(self.approximate)
            )
        return "; ".join(parts)


def verify(
    conn: pg.Connection,
    entry: DatabaseEntry,
    *,
    metadata: CitusMetadata | None,
    only: set[tuple[str, str]] | None = None,
    counted: Mapping[tuple[str, str], int] | None = None,
) -> Verification:
    """Compare the restored database (``conn``) with the manifest; raise
    PermanentError (reason VerificationFailed) naming the first tables that
    differ. ``metadata``: check the distribution too; ``only``: these tables;
    ``counted``: rows already counted in this database (a split restore
    counts each part's table as soon as its data is in, in parallel)."""
    result = Verification()
    problems: list[str] = []
    if metadata is not None:
        tables, schemas = read_distribution(conn)
        problems += citus.compare(metadata, tables, schemas, only=only)
        wanted = [t for t in metadata.tables if only is None or t.names in only]
        result.citus_tables = len(wanted)
        result.citus_schemas = len(metadata.schemas) if only is None else 0
    counts = [c for c in entry.row_counts if only is None or (c.schema_name, c.name) in only]
    if counts:
        known = dict(counted or {})
        missing = [(c.schema_name, c.name) for c in counts if (c.schema_name, c.name) not in known]
        with pg.errors_as("count the restored rows"):
            have = {**known, **dict(pg.count_rows(conn, missing))}
        for count in counts:
            got = have[(count.schema_name, count.name)]
            name = citus.qualified(count.schema_name, count.name)
            if got == count.rows:
                continue
            text = f"table {name} has {got} rows, the backup recorded {count.rows}"
            if count.exact:
                problems.append(text)
            else:
                result.approximate.append(text)
        result.tables_counted = len(counts)
        result.rows = sum(have[(c.schema_name, c.name)] for c in counts)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise PermanentError(
            f"restored database {quote_name(entry.name)} does not match its backup: {shown}; "
            "nothing was changed",
            reason="VerificationFailed",
        )
    return result
