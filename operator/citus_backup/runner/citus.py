"""Citus distribution metadata for the manifest, parsed without I/O.

pg_dump on a Citus coordinator dumps distributed tables as plain tables: the
facts that make them distributed (distribution column, colocation, shard
count, reference tables) and the worker topology live in Citus' catalogs and
are not restorable by pg_restore. The manifest records them so that a restore
into a Citus cluster can redistribute tables between the pre-data and data
sections (see the hook point in :mod:`.restore`).

The queries only run when the database has the ``citus`` extension; the row
parsing below is unit-tested because Citus cannot be installed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from citus_backup.runner.manifest import CitusMetadata, CitusNode, CitusTable

CITUS_TABLES_QUERY = (
    "SELECT table_name::text AS table_name, citus_table_type, distribution_column,"
    " colocation_id, shard_count FROM citus_tables ORDER BY 1"
)
DIST_NODE_QUERY = (
    "SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole,"
    " isactive, shouldhaveshards FROM pg_dist_node ORDER BY nodeid"
)
#: What ``citus_tables`` shows for tables without a distribution column.
NO_DISTRIBUTION_COLUMN = "<none>"


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
    version: str, tables: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]]
) -> CitusMetadata:
    return CitusMetadata(
        version=version,
        tables=tuple(citus_table(row) for row in tables),
        nodes=tuple(citus_node(row) for row in nodes),
    )
