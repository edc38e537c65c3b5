"""Citus distribution metadata: what a backup captures and how a restore rebuilds
it, as queries, parsing and SQL composition without I/O.

Why: pg_dump on a Citus coordinator dumps distributed tables as plain tables
(their rows read through the coordinator, from the shards), plus ``CREATE
EXTENSION citus`` with empty metadata. What makes the tables distributed —
type, distribution column, shard count, colocation — lives in Citus'
catalogs, which pg_dump does not dump. The manifest records it (this module's
capture queries, run in the dump's own session), and a restore into a Citus
cluster replays it between pg_restore's ``pre-data`` and ``data`` sections, so
the data is loaded straight into the shards and ``post-data`` (primary keys,
indexes, foreign keys, triggers) is created on the distributed tables and
propagated to their shards.

Order of the rebuild (:func:`distribution_statements`), each step on the
coordinator of the restored database:

1. reference tables (``create_reference_table``): they may be referenced by
   foreign keys of every other kind, so they come first;
2. distributed tables, one colocation group at a time: the group's first
   table (by name) opens a new group with the recorded shard count
   (``colocate_with => 'none'``), the others join it
   (``colocate_with => <first>``), so the groups are the same as at backup
   time even where the recorded colocation ids differ from the new ones;
3. distributed schemas (``citus_schema_distribute``): schema-based sharding
   moves each schema's tables into a group of their own;
4. Citus-local tables (``citus_add_local_table_to_metadata``).

Foreign keys need no ordering: pg_dump puts them in ``post-data``, after every
table is distributed. :func:`compare` checks the rebuilt metadata against the
manifest (types, columns, shard counts, colocation partition).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from citus_backup.runner.manifest import CitusMetadata, CitusNode, CitusSchema, CitusTable

#: Every Citus table with its exact names. Partitions are left out: they
#: follow their parent (create_distributed_table distributes them with it).
CITUS_TABLES_QUERY = (
    "SELECT t.table_name::text AS table_name, t.citus_table_type,"
    " t.distribution_column, t.colocation_id, t.shard_count,"
    " n.nspname::text AS schema_name, c.relname::text AS relation_name"
    " FROM citus_tables t JOIN pg_class c ON c.oid = t.table_name"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE NOT c.relispartition ORDER BY 6, 7"
)
CITUS_SCHEMAS_QUERY = (
    "SELECT schema_name::text AS schema_name, colocation_id FROM citus_schemas ORDER BY 1"
)
DIST_NODE_QUERY = (
    "SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole,"
    " isactive, shouldhaveshards FROM pg_dist_node ORDER BY nodeid"
)
#: Settings that change what a restore must do, recorded for the record and
#: for a DBA restoring by hand: whether CREATE DATABASE / DDL propagate,
#: schema-based sharding, the defaults for new distributed tables.
SETTINGS = (
    "citus.enable_create_database_propagation",
    "citus.enable_ddl_propagation",
    "citus.enable_schema_based_sharding",
    "citus.shard_count",
    "citus.shard_replication_factor",
    "citus.use_citus_managed_tables",
)
SETTINGS_QUERY = "SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY 1"
#: What ``citus_tables`` shows for tables without a distribution column.
NO_DISTRIBUTION_COLUMN = "<none>"
#: Extensions a restore into PostgreSQL without Citus leaves out of the dump.
CITUS_EXTENSIONS = frozenset({"citus", "citus_columnar"})
#: Settings for the pg_restore sessions of a Citus rebuild: schema-based
#: sharding must not distribute the dump's schemas on CREATE SCHEMA (the
#: manifest says which were distributed: step 3 does it after the tables
#: exist), and DDL must not try to reach workers before they are registered.
RESTORE_SESSION_SETTINGS = (("citus.enable_schema_based_sharding", "off"),)

DISTRIBUTED, REFERENCE, LOCAL, SCHEMA = "distributed", "reference", "local", "schema"


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def citus_table(row: Mapping[str, Any]) -> CitusTable:
    column = row.get("distribution_column")
    if column in (None, "", NO_DISTRIBUTION_COLUMN):
        column = None
    return CitusTable(
        table_name=str(row["table_name"]),
        citus_table_type=str(row["citus_table_type"]),
        distribution_column=column,
        colocation_id=_optional_int(row.get("colocation_id")),
        shard_count=_optional_int(row.get("shard_count")),
        schema_name=row.get("schema_name"),
        relation_name=row.get("relation_name"),
    )


def citus_node(row: Mapping[str, Any]) -> CitusNode:
    return CitusNode(
        node_id=int(row["nodeid"]),
        group_id=int(row["groupid"]),
        node_name=str(row["nodename"]),
        node_port=int(row["nodeport"]),
        node_role=str(row["noderole"]),
        is_active=bool(row["isactive"]),
        should_have_shards=bool(row["shouldhaveshards"]),
    )


def citus_metadata(
    version: str,
    tables: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    *,
    schemas: Iterable[Mapping[str, Any]] = (),
    settings: Mapping[str, str] | None = None,
    build: str | None = None,
) -> CitusMetadata:
    return CitusMetadata(
        version=version,
        tables=tuple(citus_table(row) for row in tables),
        nodes=tuple(citus_node(row) for row in nodes),
        schemas=tuple(
            CitusSchema(schema_name=str(r["schema_name"]), colocation_id=int(r["colocation_id"]))
            for r in schemas
        ),
        settings=dict(settings or {}),
        build=build,
    )


# ------------------------------------------------------------------ rebuild


def _regclass(table: CitusTable) -> sql.Composed:
    """``'"schema"."name"'::regclass``: exact names, any characters."""
    schema, name = table.names
    return sql.SQL("{}::regclass").format(sql.Literal(qualified(schema, name)))


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``, quoted as Citus' and PostgreSQL's name parsers expect."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


def colocation_groups(tables: Iterable[CitusTable]) -> list[list[CitusTable]]:
    """Distributed tables by recorded colocation id, each group sorted by name,
    groups in order of their first table (deterministic)."""
    groups: dict[int | None, list[CitusTable]] = defaultdict(list)
    for table in tables:
        if table.citus_table_type == DISTRIBUTED:
            groups[table.colocation_id].append(table)
    ordered = [sorted(group, key=lambda t: t.names) for group in groups.values()]
    return sorted(ordered, key=lambda group: group[0].names)


@dataclass(frozen=True)
class Step:
    """One statement of the rebuild and what it is, for logs and errors."""

    statement: sql.Composed
    what: str


def distribution_statements(
    metadata: CitusMetadata,
    *,
    only: set[tuple[str, str]] | None = None,
    colocate_with: Mapping[int, str] | None = None,
) -> list[Step]:
    """The rebuild, in order (module docstring). ``only``: just these tables
    (a table restore), with ``colocate_with`` naming, per recorded colocation
    id, a table already distributed in the target to join instead of opening a
    new group."""
    steps: list[Step] = []

    def wanted(table: CitusTable) -> bool:
        return only is None or table.names in only

    for table in metadata.tables:
        if table.citus_table_type == REFERENCE and wanted(table):
            steps.append(
                Step(
                    sql.SQL("SELECT create_reference_table({})").format(_regclass(table)),
                    f"make {qualified(*table.names)} a reference table",
                )
            )
    joins = dict(colocate_with or {})
    for group in colocation_groups(metadata.tables):
        leader: str | None = joins.get(group[0].colocation_id or -1)
        for table in group:
            if not wanted(table):
                continue
            name = qualified(*table.names)
            if leader is None:
                statement = sql.SQL(
                    "SELECT create_distributed_table({}, {}, shard_count => {},"
                    " colocate_with => 'none')"
                ).format(
                    _regclass(table),
                    sql.Literal(table.distribution_column),
                    sql.Literal(table.shard_count or 32),
                )
                leader = name
            else:
                statement = sql.SQL(
                    "SELECT create_distributed_table({}, {}, colocate_with => {})"
                ).format(
                    _regclass(table), sql.Literal(table.distribution_column), sql.Literal(leader)
                )
            steps.append(Step(statement, f"distribute {name} by {table.distribution_column!r}"))
    if only is None:
        for schema in metadata.schemas:
            steps.append(
                Step(
                    sql.SQL("SELECT citus_schema_distribute({})").format(
                        sql.Literal('"' + schema.schema_name.replace('"', '""') + '"')
                    ),
                    f"distribute schema {schema.schema_name!r}",
                )
            )
    for table in metadata.tables:
        if table.citus_table_type == LOCAL and wanted(table):
            steps.append(
                Step(
                    sql.SQL("SELECT citus_add_local_table_to_metadata({})").format(
                        _regclass(table)
                    ),
                    f"add {qualified(*table.names)} to Citus' metadata",
                )
            )
    return steps


def schema_tables(metadata: CitusMetadata, schemas: Sequence[str]) -> set[tuple[str, str]]:
    return {t.names for t in metadata.tables if t.names[0] in schemas}


# ---------------------------------------------------------------- verifying


def compare(
    expected: CitusMetadata,
    actual_tables: Sequence[CitusTable],
    actual_schemas: Sequence[CitusSchema],
    *,
    only: set[tuple[str, str]] | None = None,
) -> list[str]:
    """Differences between the recorded and the rebuilt distribution, one
    sentence each naming the table (empty: the same)."""
    problems: list[str] = []
    want = {t.names: t for t in expected.tables if only is None or t.names in only}
    have = {t.names: t for t in actual_tables}
    for names, table in sorted(want.items()):
        name = qualified(*names)
        got = have.get(names)
        if got is None:
            problems.append(
                f"table {name} is not a Citus table ({table.citus_table_type} expected)"
            )
            continue
        if got.citus_table_type != table.citus_table_type:
            problems.append(
                f"table {name} is {got.citus_table_type}, {table.citus_table_type} expected"
            )
        if got.distribution_column != table.distribution_column:
            problems.append(
                f"table {name} is distributed by {got.distribution_column!r}, "
                f"{table.distribution_column!r} expected"
            )
        if table.shard_count is not None and got.shard_count != table.shard_count:
            problems.append(
                f"table {name} has {got.shard_count} shards, {table.shard_count} expected"
            )
    if only is None:
        extra = sorted(set(have) - set(want))
        problems += [
            f"table {qualified(*n)} is a Citus table, not one in the backup" for n in extra
        ]
        want_schemas = {s.schema_name for s in expected.schemas}
        have_schemas = {s.schema_name for s in actual_schemas}
        problems += [
            f"schema {s!r} is not distributed" for s in sorted(want_schemas - have_schemas)
        ]
    problems += _colocation_problems(want, have)
    return problems


def _colocation_problems(
    want: Mapping[tuple[str, str], CitusTable], have: Mapping[tuple[str, str], CitusTable]
) -> list[str]:
    """Tables colocated at backup time must be colocated now, and vice versa
    (ids differ between clusters: only the partition into groups counts)."""
    problems: list[str] = []
    kinds = (DISTRIBUTED, SCHEMA)
    names = sorted(n for n, t in want.items() if t.citus_table_type in kinds and n in have)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            was = want[first].colocation_id == want[second].colocation_id
            now = have[first].colocation_id == have[second].colocation_id
            if was != now:
                verb = "are not" if was else "are"
                problems.append(
                    f"tables {qualified(*first)} and {qualified(*second)} {verb} colocated "
                    f"({'colocated' if was else 'not colocated'} at backup time)"
                )
    return problems


def is_citus_toc_line(line: str) -> bool:
    """A ``pg_restore --list`` line that a server without Citus cannot restore:
    ``EXTENSION - citus`` and its comment (likewise citus_columnar)."""
    body = line.split(";", 1)[-1].split()
    # "<id>; <catalog> <oid> EXTENSION - citus" or "... COMMENT - EXTENSION citus"
    if len(body) >= 5 and body[2] == "EXTENSION" and body[4] in CITUS_EXTENSIONS:
        return True
    return (
        len(body) >= 6
        and body[2] == "COMMENT"
        and body[4] == "EXTENSION"
        and body[5] in CITUS_EXTENSIONS
    )
