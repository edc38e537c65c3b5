"""Split backups of a large database (runner/split.py) against real PostgreSQL 15 and MinIO.

The threshold is lowered to 1 byte so a small database is split the way a
large one is: one part per table, the rest (small tables, sequences, large
objects), the schema archive. Restores in place, side by side, one table, a
corrupted part and a missing part; the by-hand procedure of docs/split.md,
run literally; and an older one-archive set next to it keeps restoring.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_runner_support import (
    REPO,
    Runner,
    admin,
    checksums,
    create_database,
    database_names,
    drop_databases,
    new_bucket,
    scalar,
)

from citus_backup.runner import layout, pg
from localenv.binaries import binary
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo
from localenv.process import StartError

BIG, SMALL = "rs_big", "rs_small"
BACKUP_ID = "20261204T030000Z"
#: The same data as an older-style set (no split), in the same bucket.
PLAIN_ID = "20261204T020000Z"
SPLIT_ARGS = ("--split-threshold", "1", "--split-jobs", "2", "--also-tier", "monthly")


def seed(postgres: PostgresInfo) -> None:
    create_database(
        postgres,
        BIG,
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL)",
        "INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 3000) g",
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " customer int NOT NULL REFERENCES customers, note text)",
        "INSERT INTO orders (customer, note) SELECT 1 + g % 3000, md5(g::text)"
        " FROM generate_series(1, 20000) g",
        "CREATE INDEX orders_customer ON orders (customer)",
        "CREATE SCHEMA sales",
        'CREATE TABLE sales."Line Items" (o bigint REFERENCES orders, qty int CHECK (qty > 0))',
        'INSERT INTO sales."Line Items" SELECT g, 1 + g % 5 FROM generate_series(1, 5000) g',
        "CREATE TABLE nothing (x int PRIMARY KEY)",
        "CREATE TABLE events (at date NOT NULL, v int) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2025 PARTITION OF events"
        " FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "CREATE TABLE events_2026 PARTITION OF events"
        " FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "INSERT INTO events SELECT date '2025-06-01' + g % 400, g FROM generate_series(1, 2000) g",
        "CREATE SEQUENCE free_seq",
        "SELECT setval('free_seq', 4242)",
        "SELECT lo_from_bytea(424242, 'a large object')",
        "CREATE VIEW big_customers AS SELECT customer, count(*) FROM orders GROUP BY 1",
    )
    create_database(postgres, SMALL, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1), (2)")


def state(postgres: PostgresInfo, name: str) -> dict[str, Any]:
    """Rows of every table, sequence values, the large object, constraints and indexes."""
    result: dict[str, Any] = checksums(postgres, name)
    result.pop("<oid>")
    with admin(postgres, name) as conn:
        result["sequences"] = conn.execute(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"
        ).fetchall()
        result["lo"] = conn.execute(
            "SELECT lo_get(oid) FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()
        result["constraints"] = conn.execute(
            "SELECT conrelid::regclass::text, conname, contype FROM pg_constraint"
            " WHERE connamespace <> 'pg_catalog'::regnamespace ORDER BY 1, 2"
        ).fetchall()
        result["indexes"] = conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c"
            " ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'pg_toast') ORDER BY 1"
        ).fetchall()
        result["view"] = conn.execute("SELECT count(*) FROM big_customers").fetchone()
    return result


@pytest.fixture(scope="module")
def runner(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Runner]:
    seed(postgres)
    runner = Runner(postgres, minio, new_bucket(minio, "rsplit"), "split-tests")
    for backup_id, extra in ((BACKUP_ID, SPLIT_ARGS), (PLAIN_ID, ())):
        result = runner.run(
            "backup",
            "--backup-id",
            backup_id,
            "--include-database",
            BIG,
            "--include-database",
            SMALL,
            *extra,
        )
        assert result.code == 0, result.stderr
    yield runner
    leftovers = [n for n in database_names(postgres) if n.startswith(("rs_", "citus_"))]
    drop_databases(postgres, *leftovers)


@pytest.fixture(scope="module")
def baseline(runner: Runner, postgres: PostgresInfo) -> dict[str, Any]:
    return state(postgres, BIG)


@pytest.fixture
def fresh(runner: Runner, postgres: PostgresInfo, baseline: dict[str, Any]) -> Runner:
    if BIG not in database_names(postgres) or state(postgres, BIG) != baseline:
        result = runner.run(
            "restore", "--backup-id", PLAIN_ID, "--database", BIG, "--replace", "--no-globals"
        )
        assert result.code == 0, result.stderr
    return runner


def set_prefix(runner: Runner, backup_id: str = BACKUP_ID) -> str:
    return f"{runner.prefix}/daily/{backup_id}/"


def no_temporary_databases(postgres: PostgresInfo) -> bool:
    return not [n for n in database_names(postgres) if n.startswith("citus_backup_")]


def test_a_large_database_is_split_into_parts(runner: Runner) -> None:
    manifest = runner.manifest(BACKUP_ID)
    assert manifest["formatVersion"] == 2
    big = big_entry(runner, BACKUP_ID)
    parts = big["parts"]
    tables = [tuple((t["schema"], t["name"]) for t in p["tables"]) for p in parts]
    # One part per table with rows (partitions, not their parent), the rest last
    # among equals; largest first.
    assert sorted(t for t in tables if t) == sorted(
        [
            (("public", "customers"),),
            (("public", "orders"),),
            (("sales", "Line Items"),),
            (("public", "nothing"),),
            (("public", "events_2025"),),
            (("public", "events_2026"),),
        ]
    )
    assert () in tables
    sizes = [p["estimatedSize"] for p in parts]
    assert sizes == sorted(sizes, reverse=True)
    assert tables[0] == (("public", "orders"),)
    keys = runner.keys(f"daily/{BACKUP_ID}/")
    prefix = set_prefix(runner)
    assert big["object"]["name"] == "rs_big.dump"
    for part in parts:
        assert re.fullmatch(r"rs_big\.dump\.\d{4}", part["object"]["name"])
        assert keys[prefix + part["object"]["name"]] == part["object"]["size"]
    # Every part is in the other tier too (server-side copies).
    monthly = runner.keys(f"monthly/{BACKUP_ID}/")
    for part in parts:
        name = part["object"]["name"]
        assert monthly[f"{runner.prefix}/monthly/{BACKUP_ID}/{name}"] == part["object"]["size"]
    # The small database is below any threshold but 1 byte too: split as well;
    # in the other set nothing is split.
    plain = runner.manifest(PLAIN_ID)
    assert plain["formatVersion"] == 1
    assert all(not d.get("parts") for d in plain["databases"])
    # The row counts come from the snapshot, for every table.
    counts = {(c["schema"], c["name"]): c["rows"] for c in big["rowCounts"]}
    assert counts[("public", "orders")] == 20000
    assert counts[("public", "nothing")] == 0
    assert big["toc"]["countsByType"]["TABLE DATA"] == 6


def test_restore_in_place_with_replace(
    fresh: Runner, postgres: PostgresInfo, baseline: dict[str, Any]
) -> None:
    with admin(postgres, BIG) as conn:
        conn.execute("TRUNCATE orders CASCADE")
        conn.execute("SELECT setval('free_seq', 1)")
    small = checksums(postgres, SMALL)
    result = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", BIG, "--replace", "--split-jobs", "2"
    )
    assert result.code == 0, result.stderr
    assert state(postgres, BIG) == baseline
    assert checksums(postgres, SMALL) == small
    assert no_temporary_databases(postgres)
    assert "rows" in result.summary["verified"][BIG]


def test_restore_side_by_side(
    fresh: Runner, postgres: PostgresInfo, baseline: dict[str, Any]
) -> None:
    before = checksums(postgres, BIG)
    result = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", BIG, "--target-database", "rs_copy"
    )
    assert result.code == 0, result.stderr
    assert state(postgres, "rs_copy") == baseline
    assert checksums(postgres, BIG) == before
    drop_databases(postgres, "rs_copy")


def test_restore_one_table(fresh: Runner, postgres: PostgresInfo) -> None:
    with admin(postgres, BIG) as conn:
        conn.execute('DROP TABLE sales."Line Items"')
    result = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", BIG, "--table", 'sales."Line Items"'
    )
    assert result.code == 0, (result.stderr, result.stdout, big_entry(fresh, BACKUP_ID))
    assert scalar(postgres, BIG, 'SELECT count(*) FROM sales."Line Items"') == 5000
    assert scalar(postgres, BIG, "SELECT count(*) FROM orders") == 20000
    # Its foreign key came along (validated against the live orders).
    assert scalar(
        postgres,
        BIG,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sales.\"Line Items\"'::regclass"
        " AND contype = 'f'",
    )
    # Only the rest and the parts of Line Items and of the tables it references
    # (orders, and customers through orders) were read; not events or nothing.
    assert result.summary["splitParts"][BIG] == "4/7"


def big_entry(runner: Runner, backup_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(
        d for d in runner.manifest(backup_id)["databases"] if d["name"] == BIG
    )
    return entry


def _copy_set(runner: Runner, backup_id: str) -> str:
    """A copy of the split set under another id (to damage it)."""
    s3 = runner.s3()
    from minio.commonconfig import CopySource  # noqa: PLC0415

    for key in runner.keys(f"daily/{BACKUP_ID}/"):
        name = key.rsplit("/", 1)[1]
        s3.copy_object(
            runner.bucket,
            f"{set_prefix(runner, backup_id)}{name}",
            CopySource(runner.bucket, key),
        )
    return set_prefix(runner, backup_id)


def test_a_corrupted_part_fails_before_the_swap(fresh: Runner, postgres: PostgresInfo) -> None:
    prefix = _copy_set(fresh, "20261204T040000Z")
    part = next(p for p in big_entry(fresh, "20261204T040000Z")["parts"] if p["tables"])
    key = prefix + part["object"]["name"]
    data = bytearray(fresh.read(key))
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    import io  # noqa: PLC0415

    fresh.s3().put_object(fresh.bucket, key, io.BytesIO(bytes(data)), len(data))
    before = checksums(postgres, BIG)
    result = fresh.run("restore", "--backup-id", "20261204T040000Z", "--database", BIG, "--replace")
    assert result.code != 0
    assert part["object"]["name"] in result.stderr
    assert result.summary["reason"] in ("ChecksumMismatch", "ToolFailed")
    assert checksums(postgres, BIG) == before
    assert no_temporary_databases(postgres)


def test_a_missing_part_fails_before_anything_is_created(
    fresh: Runner, postgres: PostgresInfo
) -> None:
    prefix = _copy_set(fresh, "20261204T050000Z")
    part = big_entry(fresh, "20261204T050000Z")["parts"][-1]
    fresh.s3().remove_object(fresh.bucket, prefix + part["object"]["name"])
    before = checksums(postgres, BIG)
    result = fresh.run("restore", "--backup-id", "20261204T050000Z", "--database", BIG, "--replace")
    assert result.code != 0
    assert result.summary["reason"] == "ObjectMissing"
    assert part["object"]["name"] in result.summary["error"]
    assert checksums(postgres, BIG) == before
    assert no_temporary_databases(postgres)


def test_verify_restores_a_split_set(fresh: Runner, postgres: PostgresInfo) -> None:
    result = fresh.run("restore", "--backup-id", BACKUP_ID, "--verify")
    assert result.code == 0, result.stderr
    assert set(result.summary["verified"]) == {BIG, SMALL}


def _by_hand_block() -> str:
    text = (REPO / "docs" / "split.md").read_text()
    match = re.search(
        r"<!-- by-hand: begin[^>]*-->\s*```sh\n(.*?)```\s*<!-- by-hand: end -->", text, re.S
    )
    assert match, "docs/split.md has no by-hand block"
    return match.group(1)


def test_the_documented_by_hand_restore_works(
    runner: Runner, postgres: PostgresInfo, baseline: dict[str, Any], tmp_path: Path
) -> None:
    """docs/split.md's block, run as it is, with SET/DB/N set and the database
    name free (the documented procedure creates it)."""
    try:
        mc = binary("mc", build=False)
    except StartError:  # pragma: no cover - mc is built with the local environment
        pytest.skip("mc is not built")
    drop_databases(postgres, "rs_by_hand")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mc").symlink_to(mc)
    pg_bin = os.path.dirname(pg.tool("pg_restore"))
    path = os.pathsep.join(p for p in (str(bindir), pg_bin, os.environ["PATH"]) if p)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        **postgres.env(),
        **runner.minio.mc_env("backup"),
        "MC_CONFIG_DIR": str(tmp_path / "mc"),
        "PATH": path,
        "SET": f"backup/{runner.bucket}/{runner.prefix}/daily/{BACKUP_ID}",
        # The documented commands restore under the backup's name; here it is
        # a copy next to the live database: the objects of rs_big, named rs_by_hand.
        "DB": "rs_by_hand",
        "N": "2",
    }
    work = tmp_path / "work"
    work.mkdir()
    # The set's objects of rs_big under the name rs_by_hand (a side by side copy).
    s3 = runner.s3()
    from minio.commonconfig import CopySource  # noqa: PLC0415

    source = layout.dump_object_name(BIG)
    for key in runner.keys(f"daily/{BACKUP_ID}/"):
        name = key.rsplit("/", 1)[1]
        if name == source or name.startswith(source + "."):
            s3.copy_object(
                runner.bucket,
                set_prefix(runner) + "rs_by_hand" + name[len(BIG) :],
                CopySource(runner.bucket, key),
            )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _by_hand_block()],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert state(postgres, "rs_by_hand") == baseline
    assert not list(work.iterdir())  # the schema archive was removed
    drop_databases(postgres, "rs_by_hand")
    for key in runner.keys(f"daily/{BACKUP_ID}/"):
        if "/rs_by_hand" in key:
            s3.remove_object(runner.bucket, key)
