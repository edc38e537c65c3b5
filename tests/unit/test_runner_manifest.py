"""The manifest model and the Citus metadata parsing (Citus cannot run here)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from citus_backup.runner.citus import citus_metadata, citus_node, citus_table
from citus_backup.runner.manifest import (
    DatabaseEntry,
    DatabaseProperties,
    Extension,
    Manifest,
    ObjectInfo,
    TableRef,
    TocSummary,
)

SHA = "a" * 64
T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 27, 3, 5, tzinfo=UTC)


def entry(name: str = "app1", size: int = 10) -> DatabaseEntry:
    return DatabaseEntry(
        name=name,
        object=ObjectInfo(name=f"{name}.dump", size=size, sha256=SHA),
        properties=DatabaseProperties(
            owner="postgres", encoding="UTF8", collate="C.UTF-8", ctype="C.UTF-8"
        ),
        toc=TocSummary(
            entries=3,
            counts_by_type={"TABLE": 1, "TABLE DATA": 1, "INDEX": 1},
            tables=(TableRef(schema="public", name="orders"),),
        ),
        extensions=(Extension(name="plpgsql", version="1.0", schema="pg_catalog"),),
        started_at=T0,
        finished_at=T1,
    )


def manifest() -> Manifest:
    return Manifest(
        backup_id="20261127T030000Z",
        tier="daily",
        tiers=("daily", "monthly"),
        started_at=T0,
        finished_at=T1,
        tool_version="0.1.0",
        server_version="15.18",
        server_version_num=150018,
        pg_dump_version="pg_dump (PostgreSQL) 15.18",
        compression="1",
        globals=ObjectInfo(name="globals.sql", size=5, sha256=SHA),
        databases=(entry("app1", 10), entry("app2", 20)),
    )


def test_json_uses_camel_case_and_round_trips() -> None:
    m = manifest()
    data = json.loads(m.to_json())
    assert data["backupId"] == "20261127T030000Z"
    assert data["serverVersionNum"] == 150018
    assert data["startedAt"] == "2026-11-27T03:00:00Z"
    db = data["databases"][0]
    assert db["object"] == {"name": "app1.dump", "size": 10, "sha256": SHA}
    assert db["toc"]["countsByType"]["TABLE DATA"] == 1
    assert db["toc"]["tables"] == [{"schema": "public", "name": "orders"}]
    assert db["properties"]["connectionLimit"] == -1
    assert db["citus"] is None
    assert Manifest.from_json(m.to_json()) == m


def test_lookup_and_total_size() -> None:
    m = manifest()
    assert m.database("app2") is not None
    assert m.database("nope") is None
    assert m.total_size == 35


def test_models_are_frozen() -> None:
    m = manifest()
    with pytest.raises(ValidationError):
        m.backup_id = "other"  # type: ignore[misc]


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = json.loads(manifest().to_json())
    data["futureField"] = {"x": 1}
    data["databases"][0]["object"]["storageClass"] = "GLACIER"
    assert Manifest.from_json(json.dumps(data)).backup_id == "20261127T030000Z"


def test_bad_checksums_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ObjectInfo(name="x", size=1, sha256="not-a-sha")
    with pytest.raises(ValidationError):
        ObjectInfo(name="x", size=-1, sha256=SHA)


def test_citus_rows_are_parsed() -> None:
    table = citus_table(
        {
            "table_name": "public.events",
            "citus_table_type": "distributed",
            "distribution_column": "tenant_id",
            "colocation_id": 4,
            "shard_count": 32,
        }
    )
    assert (table.distribution_column, table.colocation_id, table.shard_count) == (
        "tenant_id",
        4,
        32,
    )
    reference = citus_table(
        {
            "table_name": '"Weird Schema".countries',
            "citus_table_type": "reference",
            "distribution_column": "<none>",
            "colocation_id": 1,
            "shard_count": 1,
        }
    )
    assert reference.distribution_column is None
    node = citus_node(
        {
            "nodeid": 2,
            "groupid": 1,
            "nodename": "worker-0.citus",
            "nodeport": 5432,
            "noderole": "primary",
            "isactive": True,
            "shouldhaveshards": True,
        }
    )
    assert node.node_name == "worker-0.citus"
    meta = citus_metadata(
        "12.1-1",
        [
            {
                "table_name": "t",
                "citus_table_type": "local",
                "distribution_column": None,
                "colocation_id": None,
                "shard_count": None,
            },
        ],
        [],
    )
    assert meta.tables[0].shard_count is None


def test_citus_metadata_serializes_in_the_manifest() -> None:
    meta = citus_metadata(
        "12.1-1",
        [
            {
                "table_name": "events",
                "citus_table_type": "distributed",
                "distribution_column": "id",
                "colocation_id": 2,
                "shard_count": 8,
            }
        ],
        [
            {
                "nodeid": 1,
                "groupid": 0,
                "nodename": "coord",
                "nodeport": 5432,
                "noderole": "primary",
                "isactive": True,
                "shouldhaveshards": False,
            }
        ],
    )
    with_citus = entry().model_copy(update={"citus": meta})
    data = json.loads(with_citus.model_dump_json(by_alias=True))
    assert data["citus"]["tables"][0] == {
        "tableName": "events",
        "citusTableType": "distributed",
        "distributionColumn": "id",
        "colocationId": 2,
        "shardCount": 8,
        "schemaName": None,
        "relationName": None,
    }
    assert meta.tables[0].names == ("public", "events")  # an older manifest's row
    assert data["citus"]["nodes"][0]["shouldHaveShards"] is False
    assert DatabaseEntry.model_validate(data) == with_citus
