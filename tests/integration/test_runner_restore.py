"""``citus-backup restore`` against real PostgreSQL 15 and MinIO.

Every test checks that databases not being restored are untouched: the
checksum of every table's rows and the database OID are equal before and
after.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Iterator

import psycopg
import pytest
from test_runner_support import (
    Runner,
    admin,
    checksums,
    create_database,
    database_names,
    drop_databases,
    new_bucket,
    scalar,
)

from citus_backup.runner import restore as restore_module
from citus_backup.runner.config import pg_config, s3_config
from citus_backup.runner.restore import RestoreOptions, SectionEvent, run_restore
from citus_backup.runner.summary import RunSummary
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo

APP1, APP2, APP3 = "rr_app1", "rr_app2", "rr_app3"
WEIRD = "Rr We\"ird 'Näme-ü =x"
ALL = (APP1, APP2, APP3, WEIRD)
ROLE = "rr_reader"
BACKUP_ID = "20261127T030000Z"


def seed(postgres: PostgresInfo) -> None:
    with admin(postgres) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE} LOGIN")
    create_database(
        postgres,
        APP1,
        "CREATE TABLE orders (id serial PRIMARY KEY, v text)",
        "INSERT INTO orders (v) SELECT md5(g::text) FROM generate_series(1, 200) g",
        "CREATE INDEX orders_v ON orders (v)",
        "CREATE SCHEMA sales",
        "CREATE TABLE sales.items (id int PRIMARY KEY, o int REFERENCES orders)",
        "INSERT INTO sales.items SELECT g, g FROM generate_series(1, 40) g",
        "CREATE TABLE sales.notes (t text)",
        "INSERT INTO sales.notes VALUES ('a'), ('b')",
        f"GRANT SELECT ON orders TO {ROLE}",
    )
    create_database(
        postgres, APP2, "CREATE TABLE t (x int)", "INSERT INTO t SELECT generate_series(1, 50)"
    )
    create_database(postgres, APP3, "CREATE TABLE u (y text)", "INSERT INTO u VALUES ('three')")
    create_database(
        postgres, WEIRD, 'CREATE TABLE "T ü" (x text)', "INSERT INTO \"T ü\" VALUES ('ok')"
    )
    with admin(postgres) as conn:
        conn.execute(f"ALTER DATABASE {APP1} SET work_mem = '5MB'")
        conn.execute(f'ALTER DATABASE {APP1} SET search_path = "$user", public, sales')
        conn.execute(f"COMMENT ON DATABASE {APP1} IS 'the app'")
        conn.execute(f"REVOKE CONNECT ON DATABASE {APP1} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {APP1} TO {ROLE}")


@pytest.fixture(scope="module")
def runner(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Runner]:
    seed(postgres)
    runner = Runner(postgres, minio, new_bucket(minio, "rrestore"), "restore-tests")
    args = ["backup", "--backup-id", BACKUP_ID]
    for name in ALL:
        args += ["--include-database", name]
    result = runner.run(*args)
    assert result.code == 0, result.stderr
    yield runner
    leftovers = [n for n in database_names(postgres) if n.startswith(("rr_", "Rr ", "citus_"))]
    drop_databases(postgres, *leftovers)
    with admin(postgres) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


def contents(postgres: PostgresInfo, name: str) -> dict[str, str] | None:
    if name not in database_names(postgres):
        return None
    result = checksums(postgres, name)
    result.pop("<oid>")
    return result


@pytest.fixture(scope="module")
def baseline(runner: Runner, postgres: PostgresInfo) -> dict[str, dict[str, str] | None]:
    return {name: contents(postgres, name) for name in ALL}


@pytest.fixture
def fresh(
    runner: Runner, postgres: PostgresInfo, baseline: dict[str, dict[str, str] | None]
) -> Runner:
    """Each test starts from the backed-up state: changed databases are restored."""
    for name in ALL:
        if contents(postgres, name) != baseline[name]:
            result = runner.run(
                "restore", "--backup-id", BACKUP_ID, "--database", name, "--replace"
            )
            assert result.code == 0, result.stderr
    return runner


def others(postgres: PostgresInfo, *names: str) -> dict[str, dict[str, str]]:
    return {name: checksums(postgres, name) for name in names}


def no_temporary_databases(postgres: PostgresInfo) -> bool:
    return not [n for n in database_names(postgres) if n.startswith("citus_backup_")]


def test_restore_one_database_in_place_on_a_live_server(
    fresh: Runner, postgres: PostgresInfo
) -> None:
    original = checksums(postgres, APP1)
    untouched = others(postgres, APP2, APP3, WEIRD)
    with admin(postgres, APP1) as conn:
        conn.execute("DROP TABLE sales.items")
        conn.execute("DELETE FROM orders WHERE id > 100")
    # A live client: idle in an open transaction holding a lock on the table.
    client = psycopg.connect(
        host=postgres.host,
        port=postgres.port,
        user=postgres.user,
        password=postgres.password,
        dbname=APP1,
    )
    client.execute("SELECT count(*) FROM orders")
    try:
        result = fresh.run("restore", "--backup-id", BACKUP_ID, "--database", APP1, "--replace")
        assert result.code == 0, result.stderr
        assert re.search(r"terminated [1-9][0-9]* session\(s\)", result.stderr)
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
    finally:
        client.close()
    restored = checksums(postgres, APP1)
    assert restored.pop("<oid>") != original.pop("<oid>")
    assert restored == original
    assert others(postgres, APP2, APP3, WEIRD) == untouched
    assert no_temporary_databases(postgres)
    # Database properties came back with it.
    assert scalar(postgres, APP1, "SHOW work_mem") == "5MB"
    assert scalar(postgres, APP1, "SHOW search_path") == '"$user", public, sales'
    comment = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
    assert scalar(postgres, "postgres", comment, APP1) == "the app"
    can_connect = "SELECT has_database_privilege(%s, %s, 'CONNECT')"
    assert scalar(postgres, "postgres", can_connect, ROLE, APP1) is True
    assert scalar(postgres, "postgres", can_connect, "public", APP1) is False
    summary = result.summary
    assert summary["status"] == "succeeded"
    assert list(summary["databases"]) == [APP1]


def test_restore_side_by_side_leaves_the_original_alone(
    fresh: Runner, postgres: PostgresInfo
) -> None:
    with admin(postgres, APP1) as conn:
        conn.execute("DELETE FROM sales.notes")
    before = others(postgres, APP1, APP2, APP3, WEIRD)
    copy = "rr_app1 recovered"
    location = f"s3://{fresh.bucket}/{fresh.prefix}/daily/{BACKUP_ID}/"
    result = fresh.run(
        "restore",
        "--location",
        location,
        "--database",
        APP1,
        "--target-database",
        copy,
        S3_BUCKET="",
        S3_PREFIX="",
    )
    assert result.code == 0, result.stderr
    try:
        assert others(postgres, APP1, APP2, APP3, WEIRD) == before
        assert scalar(postgres, copy, "SELECT count(*) FROM sales.notes") == 2
        assert scalar(postgres, copy, "SELECT count(*) FROM orders") == 200
    finally:
        drop_databases(postgres, copy)


def test_restore_a_dropped_table_into_the_live_database(
    fresh: Runner, postgres: PostgresInfo
) -> None:
    expected = checksums(postgres, APP1)
    with admin(postgres, APP1) as conn:
        conn.execute("DROP TABLE sales.items")
        conn.execute("INSERT INTO sales.notes VALUES ('written after the backup')")
    notes = scalar(postgres, APP1, "SELECT count(*) FROM sales.notes")
    untouched = others(postgres, APP2, APP3, WEIRD)
    oid = checksums(postgres, APP1)["<oid>"]
    result = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", APP1, "--table", "sales.items"
    )
    assert result.code == 0, result.stderr
    after = checksums(postgres, APP1)
    assert after["<oid>"] == oid  # same database, not replaced
    assert after["sales.items"] == expected["sales.items"]
    assert scalar(postgres, APP1, "SELECT count(*) FROM sales.notes") == notes  # untouched
    # Indexes and constraints came with the table.
    assert (
        scalar(
            postgres,
            APP1,
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sales.items'::regclass",
        )
        == 2
    )
    assert others(postgres, APP2, APP3, WEIRD) == untouched
    assert no_temporary_databases(postgres)


def test_existing_table_needs_replace(fresh: Runner, postgres: PostgresInfo) -> None:
    with admin(postgres, APP1) as conn:
        conn.execute("DELETE FROM sales.notes")
    refused = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", APP1, "--table", "sales.notes"
    )
    assert refused.code == 1
    assert refused.summary["reason"] == "TargetExists"
    assert 'table "sales.notes" already exists' in refused.summary["error"]
    assert scalar(postgres, APP1, "SELECT count(*) FROM sales.notes") == 0
    replaced = fresh.run(
        "restore",
        "--backup-id",
        BACKUP_ID,
        "--database",
        APP1,
        "--table",
        "sales.notes",
        "--replace",
    )
    assert replaced.code == 0, replaced.stderr
    assert scalar(postgres, APP1, "SELECT count(*) FROM sales.notes") == 2


def test_restore_a_schema_into_another_database(fresh: Runner, postgres: PostgresInfo) -> None:
    target = "rr_schema_target"
    create_database(postgres, target, "CREATE TABLE keep (x int)", "INSERT INTO keep VALUES (7)")
    try:
        result = fresh.run(
            "restore",
            "--backup-id",
            BACKUP_ID,
            "--database",
            APP1,
            "--schema",
            "sales",
            "--target-database",
            target,
        )
        # sales.items references public.orders, which the target lacks.
        assert result.code == 1
        assert "orders" in result.summary["error"]
        assert (
            scalar(postgres, target, "SELECT count(*) FROM pg_namespace WHERE nspname = 'sales'")
            == 0
        )
        with admin(postgres, target) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
            conn.execute("INSERT INTO orders SELECT generate_series(1, 200)")
        result = fresh.run(
            "restore",
            "--backup-id",
            BACKUP_ID,
            "--database",
            APP1,
            "--schema",
            "sales",
            "--target-database",
            target,
        )
        assert result.code == 0, result.stderr
        assert scalar(postgres, target, "SELECT count(*) FROM sales.items") == 40
        assert scalar(postgres, target, "SELECT x FROM keep") == 7
    finally:
        drop_databases(postgres, target)


def test_existing_database_needs_replace(fresh: Runner, postgres: PostgresInfo) -> None:
    with admin(postgres, APP2) as conn:
        conn.execute("INSERT INTO t VALUES (999)")
    before = others(postgres, *ALL)
    result = fresh.run("restore", "--backup-id", BACKUP_ID, "--database", APP2)
    assert result.code == 1
    assert result.summary["reason"] == "TargetExists"
    assert result.summary["error"] == (
        'database(s) "rr_app2" already exist; pass --replace to replace them '
        "(or --target-database to restore side by side)"
    )
    everything = fresh.run("restore", "--backup-id", BACKUP_ID, "--no-globals")
    assert everything.code == 1
    assert everything.summary["reason"] == "TargetExists"
    assert others(postgres, *ALL) == before
    assert no_temporary_databases(postgres)


def test_database_not_in_the_set(fresh: Runner) -> None:
    result = fresh.run("restore", "--backup-id", BACKUP_ID, "--database", "rr_nope")
    assert result.code == 1
    assert result.summary["reason"] == "DatabaseNotInBackup"
    assert '"rr_nope" is not in backup 20261127T030000Z' in result.summary["error"]
    table = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", APP1, "--table", "public.nope"
    )
    assert table.summary["reason"] == "TableNotInBackup"
    missing_set = fresh.run("restore", "--backup-id", "20200101T000000Z")
    assert missing_set.summary["reason"] == "BackupNotFound"


def test_weird_names_in_place_and_side_by_side(fresh: Runner, postgres: PostgresInfo) -> None:
    with admin(postgres, WEIRD) as conn:
        conn.execute('DELETE FROM "T ü"')
    untouched = others(postgres, APP1, APP2, APP3)
    result = fresh.run("restore", "--backup-id", BACKUP_ID, "--database", WEIRD, "--replace")
    assert result.code == 0, result.stderr
    assert scalar(postgres, WEIRD, 'SELECT x FROM "T ü"') == "ok"
    copy = "Rr copy; DROP DATABASE rr_app2; --'\""
    side = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", WEIRD, "--target-database", copy
    )
    assert side.code == 0, side.stderr
    try:
        assert scalar(postgres, copy, 'SELECT x FROM "T ü"') == "ok"
        assert others(postgres, APP1, APP2, APP3) == untouched
    finally:
        drop_databases(postgres, copy)


def test_corrupted_object_is_detected_and_nothing_changes(
    fresh: Runner, postgres: PostgresInfo
) -> None:
    key = f"{fresh.prefix}/daily/{BACKUP_ID}/{APP2}.dump"
    original = fresh.read(key)
    with admin(postgres, APP2) as conn:
        conn.execute("INSERT INTO t VALUES (12345)")
    before = others(postgres, *ALL)
    corrupted = bytearray(original)
    corrupted[-10] ^= 0xFF  # inside the compressed table data, at the end
    fresh.s3().put_object(fresh.bucket, key, io.BytesIO(bytes(corrupted)), len(corrupted))
    try:
        result = fresh.run("restore", "--backup-id", BACKUP_ID, "--database", APP2, "--replace")
        assert result.code == 1
        assert result.summary["reason"] == "ChecksumMismatch"
        assert "checksum mismatch" in result.summary["error"]
        assert "nothing was changed" in result.summary["error"]
        assert others(postgres, *ALL) == before
        assert no_temporary_databases(postgres)
    finally:
        fresh.s3().put_object(fresh.bucket, key, io.BytesIO(original), len(original))


def test_silent_corruption_of_uncompressed_data_is_detected(
    runner: Runner, postgres: PostgresInfo
) -> None:
    """pg_restore would load the wrong row without complaint; the hash catches it."""
    runner = dataclasses.replace(runner, prefix="restore-tests-plain")
    create_database(
        postgres, "rr_plain", "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('original-value')"
    )
    try:
        backup = runner.run(
            "backup", "--include-database", "rr_plain", "--compress", "0", "--backup-id", "plain-1"
        )
        assert backup.code == 0, backup.stderr
        key = f"{runner.prefix}/daily/plain-1/rr_plain.dump"
        data = runner.read(key)
        assert data.count(b"original-value") == 1
        tampered = data.replace(b"original-value", b"tampered-value")
        runner.s3().put_object(runner.bucket, key, io.BytesIO(tampered), len(tampered))
        before = checksums(postgres, "rr_plain")
        result = runner.run(
            "restore", "--backup-id", "plain-1", "--database", "rr_plain", "--replace"
        )
        assert result.summary["reason"] == "ChecksumMismatch"
        assert checksums(postgres, "rr_plain") == before
        assert no_temporary_databases(postgres)
    finally:
        drop_databases(postgres, "rr_plain")


def test_restore_everything_with_globals(fresh: Runner, postgres: PostgresInfo) -> None:
    expected = others(postgres, *ALL)
    for name in expected.values():
        name.pop("<oid>")
    with admin(postgres) as conn:
        conn.execute(f"REVOKE ALL ON DATABASE {APP1} FROM {ROLE}")
    with admin(postgres, APP1) as conn:
        conn.execute(f"REVOKE ALL ON orders FROM {ROLE}")
    with admin(postgres) as conn:
        conn.execute(f"DROP ROLE {ROLE}")
    drop_databases(postgres, APP3)
    with admin(postgres, APP2) as conn:
        conn.execute("DELETE FROM t")
    result = fresh.run("restore", "--latest", "--replace", "--jobs", "2")
    assert result.code == 0, result.stderr
    assert "restored globals" in result.stderr
    assert (
        scalar(postgres, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = %s", ROLE) == 1
    )
    restored = others(postgres, *ALL)
    for name in restored.values():
        name.pop("<oid>")
    assert restored == expected
    assert scalar(postgres, APP1, "SELECT has_table_privilege(%s, 'orders', 'SELECT')", ROLE)
    # The connecting role keeps its password (globals.sql would have set the old one).
    assert scalar(postgres, "postgres", "SELECT 1") == 1
    assert sorted(result.summary["databases"]) == sorted(ALL)


def test_keep_old_keeps_the_replaced_database(fresh: Runner, postgres: PostgresInfo) -> None:
    with admin(postgres, APP3) as conn:
        conn.execute("INSERT INTO u VALUES ('newer')")
    result = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", APP3, "--replace", "--keep-old"
    )
    assert result.code == 0, result.stderr
    old = f"{APP3}_old_{BACKUP_ID}"
    try:
        assert result.summary["keptDatabases"] == [old]
        assert scalar(postgres, old, "SELECT count(*) FROM u") == 2
        assert scalar(postgres, APP3, "SELECT count(*) FROM u") == 1
    finally:
        drop_databases(postgres, old)


def test_sections_run_in_order_with_hooks(fresh: Runner, postgres: PostgresInfo) -> None:
    events: list[SectionEvent] = []
    tables_seen: list[int] = []

    class Recorder:
        def after_section(self, event: SectionEvent) -> None:
            events.append(event)
            # The hook sees the temporary database between sections.
            with admin(postgres, event.database) as conn:
                row = conn.execute("SELECT count(*) FROM orders").fetchone()
                tables_seen.append(int(row[0]) if row else -1)

    env = {**os.environ, **fresh.env()}
    summary = RunSummary("restore")
    run_restore(
        pg_config(env),
        s3_config(env),
        RestoreOptions(
            backup_id=BACKUP_ID, databases=[APP1], target_database="rr_hooked", hooks=Recorder()
        ),
        summary,
    )
    try:
        assert [e.section for e in events] == list(restore_module.SECTIONS)
        assert {e.target for e in events} == {"rr_hooked"}
        assert all(e.database.startswith("citus_backup_tmp_") for e in events)
        assert tables_seen == [0, 200, 200]  # empty after pre-data, filled after data
        assert scalar(postgres, "rr_hooked", "SELECT count(*) FROM orders") == 200
    finally:
        drop_databases(postgres, "rr_hooked")


def test_missing_owner_role_is_a_clear_error(runner: Runner, postgres: PostgresInfo) -> None:
    runner = dataclasses.replace(runner, prefix="restore-tests-owned")
    with admin(postgres) as conn:
        conn.execute("DROP ROLE IF EXISTS rr_owner")
        conn.execute("CREATE ROLE rr_owner")
    create_database(postgres, "rr_owned", "CREATE TABLE t (x int)")
    with admin(postgres) as conn:
        conn.execute("ALTER DATABASE rr_owned OWNER TO rr_owner")
    try:
        backup = runner.run("backup", "--include-database", "rr_owned", "--backup-id", "owned-1")
        assert backup.code == 0, backup.stderr
        drop_databases(postgres, "rr_owned")
        with admin(postgres) as conn:
            conn.execute("DROP ROLE rr_owner")
        result = runner.run("restore", "--backup-id", "owned-1", "--database", "rr_owned")
        assert result.summary["reason"] == "RoleNotFound"
        assert "--no-owner" in result.summary["error"]
        result = runner.run(
            "restore", "--backup-id", "owned-1", "--database", "rr_owned", "--no-owner"
        )
        assert result.code == 0, result.stderr
    finally:
        drop_databases(postgres, "rr_owned")
        with admin(postgres) as conn:
            conn.execute("DROP ROLE IF EXISTS rr_owner")


def test_restore_several_databases(fresh: Runner, postgres: PostgresInfo) -> None:
    with admin(postgres, APP2) as conn:
        conn.execute("DELETE FROM t")
    with admin(postgres, APP3) as conn:
        conn.execute("DELETE FROM u")
    untouched = others(postgres, APP1, WEIRD)
    result = fresh.run(
        "restore", "--backup-id", BACKUP_ID, "--database", APP2, "--database", APP3, "--replace"
    )
    assert result.code == 0, result.stderr
    assert sorted(result.summary["databases"]) == [APP2, APP3]
    assert scalar(postgres, APP2, "SELECT count(*) FROM t") == 50
    assert scalar(postgres, APP3, "SELECT count(*) FROM u") == 1
    assert others(postgres, APP1, WEIRD) == untouched
    both = fresh.run(
        "restore",
        "--backup-id",
        BACKUP_ID,
        "--database",
        APP2,
        "--database",
        APP3,
        "--target-database",
        "rr_x",
    )
    assert both.summary["reason"] == "InvalidArgument"
