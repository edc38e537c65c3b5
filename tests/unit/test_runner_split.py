"""Which tables of a database get a data part, and which parts a --table restore reads."""

from __future__ import annotations

import pytest

from citus_backup.errors import PermanentError
from citus_backup.runner import layout, split
from citus_backup.runner.manifest import (
    MAX_FORMAT_VERSION,
    DataPart,
    ForeignKey,
    Manifest,
    ObjectInfo,
    TableRef,
)
from citus_backup.runner.split import TableSize, plan_split

GiB = 1024**3
MiB = 1024**2


def tables() -> list[TableSize]:
    return [
        TableSize("public", "small", 10 * MiB),
        TableSize("public", "huge", 2 * GiB),
        TableSize("s", "mid", 300 * MiB),
        TableSize("public", "parent", 0, "p"),
        TableSize("public", "tiny", 0),
    ]


def test_a_small_database_is_not_split() -> None:
    assert plan_split([TableSize("public", "t", 100 * MiB)], split.DEFAULT_THRESHOLD) is None


def test_threshold_zero_never_splits() -> None:
    assert plan_split(tables(), 0) is None


def test_large_tables_get_parts_largest_first_and_the_rest_keeps_the_others() -> None:
    plan = plan_split(tables(), split.DEFAULT_THRESHOLD)
    assert plan is not None
    assert [(p.index, [t.name for t in p.tables]) for p in plan.parts] == [
        (1, ["huge"]),
        (2, ["mid"]),
        (0, []),
    ]
    rest = plan.parts[-1]
    assert rest.is_rest
    assert rest.estimated_size == 10 * MiB
    assert plan.total_size == 2 * GiB + 310 * MiB


def test_the_parts_are_capped_and_need_a_table_above_the_floor() -> None:
    many = [TableSize("public", f"t{i}", GiB // 8) for i in range(20)]
    plan = plan_split(many, GiB, max_parts=3)
    assert plan is not None
    assert len(plan.parts) == 4
    # The rest (17 tables) is the largest: dumped first.
    assert plan.parts[0].is_rest
    assert plan.parts[0].estimated_size == 17 * (GiB // 8)
    # Many tables below the floor (threshold / 16): nothing to split.
    crumbs = [TableSize("public", f"t{i}", GiB // 32) for i in range(64)]
    assert plan_split(crumbs, GiB) is None


def test_partitioned_parents_are_never_parts() -> None:
    plan = plan_split([TableSize("public", "p", 5 * GiB, "p")], GiB)
    assert plan is None


def test_pg_dump_arguments_of_the_parts() -> None:
    plan = plan_split([*tables(), TableSize('we"ird', "a.b", GiB)], GiB)
    assert plan is not None
    by_index = {p.index: p for p in plan.parts}
    assert split.part_args(by_index[1], plan) == ["--data-only", "-t", '"public"."huge"']
    assert split.part_args(by_index[2], plan) == ["--data-only", "-t", '"we""ird"."a.b"']
    assert split.part_args(by_index[0], plan) == [
        "--data-only",
        '--exclude-table-data="public"."huge"',
        '--exclude-table-data="we""ird"."a.b"',
        '--exclude-table-data="s"."mid"',
    ]
    assert split.schema_args() == ["--schema-only"]


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(PermanentError, match="split threshold"):
        split.validate_threshold(-1)


def test_parts_for_a_table_restore_follow_the_foreign_keys() -> None:
    a, b, c, d, small = ("p", "a"), ("p", "b"), ("p", "c"), ("p", "d"), ("p", "small")
    parts = [[a], [b], [c], [d], []]
    everything = {a, b, c, d, small}
    # a -> b -> c; d alone; small (in the rest) references nothing.
    keys = [(a, b), (b, c)]
    assert split.parts_for_tables(parts, everything, [a], [], keys) == [0, 1, 2, 4]
    assert split.parts_for_tables(parts, everything, [d], [], keys) == [3, 4]
    # A table of the rest referencing a part's table needs that part.
    assert split.parts_for_tables(parts, everything, [d], [], [*keys, (small, c)]) == [2, 3, 4]
    # A schema selects all its tables.
    assert split.parts_for_tables(parts, everything, [], ["p"], []) == [0, 1, 2, 3, 4]
    # Cycles end.
    assert split.parts_for_tables(parts, everything, [a], [], [(a, b), (b, a)]) == [0, 1, 4]


def test_part_object_names() -> None:
    assert layout.part_object_name("app1", 0) == "app1.dump.0000"
    assert layout.part_object_name("my db", 12) == "my%20db.dump.0012"
    assert layout.database_from_object_name("app1.dump.0001") is None
    with pytest.raises(PermanentError):
        layout.part_object_name("app1", 10000)


SHA = "b" * 64


def test_manifest_with_parts_round_trips_and_an_old_one_has_none() -> None:
    from test_runner_manifest import entry, manifest  # noqa: PLC0415

    base = entry("big", 5)
    part = DataPart(
        object=ObjectInfo(name="big.dump.0001", size=100, sha256=SHA),
        tables=(TableRef(schema="public", name="orders"),),
        estimated_size=1000,
    )
    rest = DataPart(object=ObjectInfo(name="big.dump.0000", size=7, sha256=SHA))
    keys = (
        ForeignKey(
            table=TableRef(schema="public", name="a"),
            references=TableRef(schema="public", name="orders"),
        ),
    )
    split_entry = base.model_copy(update={"parts": (part, rest), "foreign_keys": keys})
    m = manifest().model_copy(update={"databases": (split_entry,), "format_version": 2})
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.databases[0].split
    assert again.databases[0].size == 112
    assert [o.name for o in again.databases[0].objects] == [
        "big.dump",
        "big.dump.0001",
        "big.dump.0000",
    ]
    assert not part.is_rest
    assert rest.is_rest
    assert b'"estimatedSize": 1000' in m.to_json()
    assert m.total_size == 112 + 5
    old = manifest()
    assert all(not e.split and e.foreign_keys is None for e in old.databases)
    assert MAX_FORMAT_VERSION == 2


def test_a_negative_threshold_fails_the_backup_before_anything_runs() -> None:
    from citus_backup.runner.backup import BackupOptions, run_backup  # noqa: PLC0415
    from citus_backup.runner.config import PgConfig, S3Config  # noqa: PLC0415
    from citus_backup.runner.summary import RunSummary  # noqa: PLC0415

    with pytest.raises(PermanentError, match="split threshold"):
        run_backup(
            PgConfig(base_env={}),
            S3Config(endpoint="localhost:1", secure=False, bucket="b"),
            BackupOptions(backup_id="x1", split_threshold=-5),
            RunSummary("backup"),
        )
